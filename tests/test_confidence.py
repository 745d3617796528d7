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
