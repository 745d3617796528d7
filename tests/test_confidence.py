"""Student t intervals over seeds, checked against hand computation with tabulated t quantiles."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from propagate.confidence import format_number, paired_difference, summarize_seeds, t_interval

# two-sided 95% quantiles t_{0.975, df} from any t table
T975 = {1: 12.706204736, 2: 4.302652730, 3: 3.182446305, 4: 2.776445105}


def test_t_interval_of_1_to_5_by_hand():
    # mean 3, s^2 = (4+1+0+1+4)/4 = 2.5, half width = t_{.975,4} * sqrt(2.5/5)
    iv = t_interval([1, 2, 3, 4, 5])
    half = T975[4] * math.sqrt(2.5 / 5)
    assert iv.n == 5 and iv.mean == 3.0
    assert iv.std == pytest.approx(math.sqrt(2.5), rel=1e-14)
    assert iv.low == pytest.approx(3 - half, rel=1e-9) and iv.high == pytest.approx(3 + half, rel=1e-9)
    assert iv.low == pytest.approx(1.0367568, abs=1e-7)


def test_t_interval_two_seeds_is_wide():
    iv = t_interval([0.0, 1.0])
    assert iv.low == pytest.approx(0.5 - T975[1] * 0.5, rel=1e-9)  # s = 1/sqrt 2, s/sqrt 2 = 1/2
    assert iv.high == pytest.approx(0.5 + T975[1] * 0.5, rel=1e-9)


def test_t_interval_other_level():
    # 90%: t_{0.95, 2} = 2.919985580
    iv = t_interval([1.0, 2.0, 4.0], level=0.90)
    s = np.std([1, 2, 4], ddof=1)
    assert iv.high - iv.mean == pytest.approx(2.919985580 * s / math.sqrt(3), rel=1e-8)
    with pytest.raises(ValueError):
        t_interval([1.0, 2.0], level=1.0)


def test_one_seed_has_no_interval_and_says_so():
    iv = t_interval([0.83])
    assert iv.mean == 0.83 and iv.n == 1
    assert math.isnan(iv.low) and math.isnan(iv.high) and not iv.has_interval
    assert not iv.excludes(0.0)
    assert iv.describe() == "0.830 (1 seed: no interval)"


def test_no_values_and_nan_left_out():
    assert t_interval([]).n == 0 and math.isnan(t_interval([]).mean)
    assert t_interval([float("nan")]).describe() == "n/a (no seeds)"
    iv = t_interval([1.0, float("nan"), 3.0])
    assert iv.n == 2 and iv.mean == 2.0


def test_identical_values_give_a_zero_width_interval():
    iv = t_interval([0.1] * 5)
    assert iv.low == pytest.approx(0.1) and iv.high == pytest.approx(0.1) and iv.has_interval


def test_describe_states_level_interval_and_n():
    assert t_interval([1, 2, 3, 4, 5]).describe() == "3.000 (95% t interval 1.037 to 4.963, N = 5 seeds)"


def test_paired_difference_pairs_by_seed():
    a = {0: 0.80, 1: 0.82, 2: 0.81, 3: 0.84, 9: 0.5}
    b = {3: 0.80, 2: 0.78, 1: 0.80, 0: 0.77}  # other order; seed 9 has no partner
    iv = paired_difference(a, b)
    d = np.array([0.03, 0.02, 0.03, 0.04])
    assert iv.n == 4 and iv.mean == pytest.approx(d.mean())
    assert iv.high - iv.mean == pytest.approx(T975[3] * d.std(ddof=1) / 2, rel=1e-8)
    assert iv.excludes(0.0) and iv.low > 0


def test_paired_is_sharper_than_separate_intervals():
    # a large seed-to-seed spread shared by both configurations cancels in the differences
    base = np.array([0.5, 0.7, 0.6, 0.8, 0.55])
    a, b = pd.Series(base + 0.01, index=range(5)), pd.Series(base, index=range(5))
    assert paired_difference(a, b).excludes(0.0)
    ia, ib = t_interval(a), t_interval(b)
    assert ia.low < ib.high  # the separate intervals overlap


def test_summarize_seeds_columns_and_values():
    t = pd.DataFrame({"preset": ["x"] * 5 + ["y"], "lr": [1e-3] * 5 + [1e-4], "seed": [0, 1, 2, 3, 4, 0],
                      "acc": [1, 2, 3, 4, 5, 0.7], "loss": [0.5] * 6})
    s = summarize_seeds(t, ["preset", "lr"], ["acc"])
    assert list(s.columns) == ["preset", "lr", "acc_mean", "acc_ci_low", "acc_ci_high", "n_seeds"]
    x, y = s.iloc[0], s.iloc[1]
    assert x["acc_mean"] == 3 and x["n_seeds"] == 5
    assert x["acc_ci_low"] == pytest.approx(3 - T975[4] * math.sqrt(0.5), rel=1e-9)
    assert y["n_seeds"] == 1 and y["acc_mean"] == 0.7 and math.isnan(y["acc_ci_low"]) and math.isnan(y["acc_ci_high"])
    every = summarize_seeds(t, ["preset", "lr"])
    assert {"acc_mean", "loss_mean", "loss_ci_high"} <= set(every.columns) and "seed_mean" not in every.columns
    with pytest.raises(KeyError):
        summarize_seeds(t.drop(columns="seed"), ["preset"])


def test_format_number():
    assert format_number(0.5) == "0.500" and format_number(2e-5) == "2e-05" and format_number(12345.0) == "1.23e+04"
    assert format_number(None) == "n/a" and format_number(float("nan")) == "n/a" and format_number(3, 1) == "3.0"


# ------------------------------------------------------------------ bounded quantities stay in range


def test_accuracy_interval_on_the_logit_scale_by_hand():
    # 0.90, 0.95, 0.97: mean 0.94, s^2 = (0.04^2 + 0.01^2 + 0.03^2) / 2 = 0.0013; the plain interval reaches 1.0296
    from propagate.confidence import interval

    s = math.sqrt(0.0013)
    assert t_interval([0.90, 0.95, 0.97]).high == pytest.approx(0.94 + T975[2] * s / math.sqrt(3))
    assert t_interval([0.90, 0.95, 0.97]).high > 1  # the defect this guards against
    iv = interval([0.90, 0.95, 0.97], "proportion")
    centre = math.log(0.94 / 0.06)  # logit of the mean
    half = T975[2] * s / math.sqrt(3) / (0.94 * 0.06)  # delta method: se / (m (1 - m))
    expit = lambda u: 1 / (1 + math.exp(-u))  # noqa: E731
    assert iv.mean == pytest.approx(0.94) and iv.kind == "proportion"
    assert iv.low == pytest.approx(expit(centre - half), rel=1e-9) and iv.low == pytest.approx(0.761963, abs=1e-6)
    assert iv.high == pytest.approx(expit(centre + half), rel=1e-9) and iv.high == pytest.approx(0.987126, abs=1e-6)
    assert 0 < iv.low < iv.mean < iv.high < 1
    assert "logit scale" in iv.describe()


def test_loss_interval_on_the_log_scale_by_hand():
    # a diverging seed's loss: the plain interval of (69.3, 1.0, 137.6) reaches -100
    from propagate.confidence import interval

    v = [69.3, 1.0, 137.6]
    m, s = sum(v) / 3, np.std(v, ddof=1)
    assert t_interval(v).low < 0
    iv = interval(v, "positive")
    half = T975[2] * s / math.sqrt(3) / m
    assert iv.low == pytest.approx(m * math.exp(-half), rel=1e-9)
    assert iv.high == pytest.approx(m * math.exp(half), rel=1e-9)
    assert 0 < iv.low < iv.mean < iv.high


def test_difference_of_accuracies_stays_in_minus_one_to_one():
    a, b = {0: 0.9, 1: 0.1, 2: 0.5}, {0: 0.0, 1: 0.95, 2: 0.4}
    d = np.array([0.9, -0.85, 0.1])
    plain = paired_difference(a, b)
    assert plain.low < -1 and plain.high > 1  # what a plain t interval does with 3 seeds
    iv = paired_difference(a, b, kind="proportion")
    half = T975[2] * d.std(ddof=1) / math.sqrt(3) / (1 - d.mean() ** 2)
    assert iv.low == pytest.approx(math.tanh(math.atanh(d.mean()) - half), rel=1e-9)
    assert iv.high == pytest.approx(math.tanh(math.atanh(d.mean()) + half), rel=1e-9)
    assert -1 < iv.low < iv.mean < iv.high < 1 and iv.kind == "difference"


def test_edges_one_seed_equal_values_and_bad_values():
    from propagate.confidence import interval

    for kind, edge in (("proportion", 1.0), ("proportion", 0.0), ("positive", 0.0), ("difference", -1.0)):
        iv = interval([edge] * 4, kind)  # at the edge every value is the edge: the interval is the point
        assert (iv.low, iv.mean, iv.high) == (edge, edge, edge) and iv.has_interval
    iv = interval([0.3] * 5, "proportion")
    assert iv.low == iv.high == pytest.approx(0.3)
    one = interval([0.8], "proportion")
    assert one.mean == 0.8 and math.isnan(one.low) and not one.has_interval
    assert interval([], "positive").n == 0
    nan_left_out = interval([0.5, float("nan"), 0.7], "proportion")
    assert nan_left_out.n == 2 and nan_left_out.mean == pytest.approx(0.6)
    diverged = interval([1.0, float("inf")], "positive")
    assert diverged.mean == math.inf and not diverged.has_interval
    with pytest.raises(ValueError, match="proportion must lie in"):
        interval([0.5, 1.2], "proportion")
    with pytest.raises(ValueError, match="positive must lie in"):
        interval([0.5, -0.1], "positive")
    with pytest.raises(ValueError, match="unknown kind"):
        interval([0.5], "percent")


def test_kind_of_metric_names():
    from propagate.confidence import kind_of

    for name in ("acc", "val_acc", "train_eval_acc", "test_accuracy", "dead_frac"):
        assert kind_of(name) == "proportion", name
    for name in ("loss", "val_loss", "pre_var", "grad_norm", "max_lr", "var_log_norm", "seconds", "acc_var"):
        assert kind_of(name) == "positive", name
    for name in ("post_mean", "corr", "epoch", "diff"):
        assert kind_of(name) == "real", name


def test_summarize_seeds_auto_kinds_keep_every_interval_in_range():
    from propagate.confidence import interval, interval_of

    t = pd.DataFrame({"lr": [1e-3] * 3, "seed": [0, 1, 2], "val_acc": [0.90, 0.95, 0.97],
                      "loss": [69.3, 1.0, 137.6], "post_mean": [-1.0, 0.0, 2.0]})
    s = summarize_seeds(t, ["lr"], kinds="auto").iloc[0]
    acc, loss = interval([0.90, 0.95, 0.97], "proportion"), interval([69.3, 1.0, 137.6], "positive")
    assert (s["val_acc_ci_low"], s["val_acc_ci_high"]) == (acc.low, acc.high) and s["val_acc_ci_high"] < 1
    assert (s["loss_ci_low"], s["loss_ci_high"]) == (loss.low, loss.high) and s["loss_ci_low"] > 0
    plain = t_interval([-1.0, 0.0, 2.0])
    assert (s["post_mean_ci_low"], s["post_mean_ci_high"]) == (plain.low, plain.high)
    assert interval_of("val_acc", [0.90, 0.95, 0.97]) == acc
    explicit = summarize_seeds(t, ["lr"], ["val_acc"], kinds={"val_acc": "real"}).iloc[0]
    assert explicit["val_acc_ci_high"] > 1  # asked for plain
    with pytest.raises(ValueError, match="kinds must be"):
        summarize_seeds(t, ["lr"], kinds="yes")
