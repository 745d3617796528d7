"""Finite-width spread across networks: closed forms, the Hanin-Nica constant, theory against simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import special

from propagate.errors import UserError
from propagate.finite_width import (HANIN_NICA_CONSTANT, chi2_log_variance, measured_spread, predict_spread,
                                    relu_layer_variance, sample_spread, spread_gap)
from propagate.spec import NetworkSpec


def uniform(act, init, n, depth, **kw):
    return NetworkSpec(widths=(n,) * (depth + 1), activation=act, init=init, **kw)


def test_chi2_log_variance_is_trigamma_and_matches_sampling():
    rng = np.random.default_rng(1)
    for n in (3, 40):
        sample = np.log(rng.chisquare(n, size=200_000))
        v = chi2_log_variance(n)
        assert v == pytest.approx(float(special.polygamma(1, n / 2)), rel=1e-14)
        # relative SE of a sample variance of a near-Gaussian: sqrt(2 / N) = 0.3%
        assert np.var(sample, ddof=1) == pytest.approx(v, rel=0.02)


def test_relu_layer_variance_exact_against_sampling_and_hanin_nica_constant():
    # one ReLU layer: ln chi^2_K with K ~ Binomial(n, 1/2) active units (K >= 1)
    rng = np.random.default_rng(2)
    n = 12
    K = rng.binomial(n, 0.5, size=400_000)
    K = K[K > 0]
    sample = np.log(rng.chisquare(K))
    assert np.var(sample, ddof=1) == pytest.approx(relu_layer_variance(n), rel=0.02)
    # leading order: n V(n) -> 5 (Hanin & Nica 2019: Var ln||J u|| = 5 beta / 4, i.e. 5 beta for the squared norm)
    assert HANIN_NICA_CONSTANT == 5.0
    for n in (1000, 20000):
        assert n * relu_layer_variance(n) == pytest.approx(5.0, rel=10.0 / n)
    # and the next order is visible at small width (the exact formula is not just 5/n)
    assert abs(20 * relu_layer_variance(20) - 5.0) > 0.05


def test_relu_exact_prediction_is_the_sum_of_layer_terms():
    spec = uniform("relu", "normal:2", 50, 10)
    th = predict_spread(spec)
    assert (th["method"] == "exact").all()
    v = relu_layer_variance(50)
    for l in (1, 5, 10):
        row = th[th["layer"] == l].iloc[0]
        assert row["var_log_norm"] == pytest.approx((l - 1) * v + chi2_log_variance(50), rel=1e-12)
        assert row["var_log_grad"] == pytest.approx((10 - l + 1) * v, rel=1e-12)
    assert th["var_log_norm"].iloc[0] == 0.0


def test_delta_method_reduces_to_leading_order_for_relu_and_linear():
    # truncated-normal He weights take the general (delta-method) path: per layer 5/n exactly
    spec = uniform("relu", "he_normal", 64, 8)
    th = predict_spread(spec)
    assert (th["method"] == "delta").all()
    last = th.iloc[-1]
    assert last["var_log_norm"] == pytest.approx(7 * 5 / 64 + chi2_log_variance(64), rel=1e-6)
    assert th.iloc[1]["var_log_grad"] == pytest.approx(8 * 5 / 64, rel=1e-6)
    # linear activation: Var[z^2] / E[z^2]^2 = 2 per unit; the gradient factor Var[xi^2] = 2 as well
    lin = predict_spread(uniform("linear", "normal:1", 64, 8))
    assert lin.iloc[-1]["var_log_norm"] == pytest.approx(7 * 2 / 64 + chi2_log_variance(64), rel=1e-6)
    assert lin.iloc[1]["var_log_grad"] == pytest.approx(8 * 2 / 64, rel=1e-6)


def test_orthogonal_relu_exact_and_leading_order_three_over_n():
    # ||W x|| fixed and W x uniform on a sphere: the active units' share is Beta(K/2, (n-K)/2),
    # Var ln = V(n) - psi_1(n/2) per layer, 3/n at leading order (5/4 - 1/2 over 1/4)
    n = 64
    th = predict_spread(uniform("relu", "orthogonal:2", n, 6))
    per = relu_layer_variance(n) - chi2_log_variance(n)
    assert th.iloc[-1]["var_log_norm"] == pytest.approx(5 * per, rel=1e-12)
    assert th.iloc[1]["var_log_grad"] == pytest.approx(5 * per + relu_layer_variance(n), rel=1e-12)
    big = 4000
    assert big * (relu_layer_variance(big) - chi2_log_variance(big)) == pytest.approx(3.0, rel=0.005)
    # sampling check of one layer's Beta share
    rng = np.random.default_rng(4)
    u = rng.normal(size=(100_000, n))
    share = np.sum(np.where(u > 0, u * u, 0.0), axis=1) / np.sum(u * u, axis=1)
    assert np.var(np.log(share), ddof=1) == pytest.approx(per, rel=0.03)
    # with a bias the delta method takes over; its leading order is still 3/n per layer
    thb = predict_spread(uniform("relu", "orthogonal:2", 4096, 3, bias_var=1e-12))
    assert thb["method"].iloc[0] == "delta"
    assert thb.iloc[-1]["var_log_norm"] == pytest.approx(2 * 3 / 4096, rel=1e-3)


@pytest.mark.parametrize("act,init,sb2", [("relu", "normal:2", 0.0), ("relu", "orthogonal:2", 0.0),
                                          ("tanh", "normal:1.4242", 0.01), ("selu", "orthogonal:1", 0.0)])
def test_simulation_agrees_with_prediction_at_two_widths(act, init, sb2):
    for n in (32, 64):
        spec = uniform(act, init, n, 12, bias_var=sb2)
        th = predict_spread(spec)
        ms = sample_spread(spec, networks=160, inputs=2, seed=n)
        for col, layer in (("var_log_norm", 12), ("var_log_grad", 1)):
            t = th.loc[th["layer"] == layer, col].item()
            m = ms.loc[ms["layer"] == layer, col].item()
            se = ms.loc[ms["layer"] == layer, col + "_se"].item()
            # 4 SE, plus 5% for the delta method's first-order error (none for ReLU's exact norm)
            allow = 4 * se + (0.0 if (act == "relu" and col == "var_log_norm") else 0.05 * t)
            assert abs(m - t) < allow, (act, n, col, m, t, se)


def test_measured_spread_removes_the_input_norm_and_estimates_the_variance():
    rng = np.random.default_rng(3)
    S, J = 4000, 3
    x = rng.normal(0, 1.0, size=(S, J))  # per-input log input norm
    net = rng.normal(0, math.sqrt(0.5), size=(S, 1))  # shared by a network's inputs
    y = 0.7 * x + net + rng.normal(0, math.sqrt(0.25), size=(S, J))
    var, se = measured_spread(y, x)
    assert var == pytest.approx(0.75, abs=4 * se)
    assert se == pytest.approx(0.75 * math.sqrt(2 / S), rel=0.3)
    raw, _ = measured_spread(y)
    assert raw == pytest.approx(0.75 + 0.49, rel=0.05)
    # a dead network (-inf) is dropped, too few networks give NaN
    y[0, 0] = -np.inf
    assert np.isfinite(measured_spread(y, x)[0])
    assert math.isnan(measured_spread(y[:2])[0])


def test_unsupported_specs_are_user_errors_that_say_why():
    with pytest.raises(UserError, match="does not cover BatchNorm"):
        predict_spread(uniform("relu", "he_normal", 32, 4, batchnorm=True))
    with pytest.raises(UserError, match="orthogonal weights on a non-square layer"):
        predict_spread(NetworkSpec(widths=(64, 32, 32), activation="relu", init="orthogonal"))
    assert spread_gap(uniform("relu", "he_normal", 32, 4)) is None
    gap = spread_gap(uniform("relu", "he_normal", 32, 4, layernorm=True, residual=0.5, dropout=0.1))
    assert gap == ("the finite-width spread theory (propagate.finite_width) does not cover a residual block, "
                   "dropout, LayerNorm")  # the ops' phrases in network order, each once


def test_simulate_reports_the_spread_next_to_theory():
    from propagate.simulate import simulate

    spec = uniform("relu", "normal:2", 64, 12)
    res = simulate(spec, seeds=48, samples=32, seed=3, threads=1)
    t = res.table
    for col in ("var_log_norm", "var_log_norm_se", "var_log_grad", "var_log_grad_se", "theory_var_log_norm",
                "theory_var_log_grad"):
        assert col in t.columns, col
    last = t[t["layer"] == 12].iloc[0]
    # exact ReLU prediction; the input-norm regression leaves the fixed-input variance
    assert last["theory_var_log_norm"] == pytest.approx(11 * relu_layer_variance(64) + chi2_log_variance(64))
    assert abs(last["var_log_norm"] - last["theory_var_log_norm"]) < 4 * last["var_log_norm_se"]
    first = t[t["layer"] == 1].iloc[0]
    assert abs(first["var_log_grad"] - first["theory_var_log_grad"]) < 4 * first["var_log_grad_se"] + 0.05 * first["theory_var_log_grad"]
    assert res.theory_notes == {}


def test_simulate_states_why_the_spread_theory_is_empty():
    from propagate.simulate import simulate

    res = simulate(NetworkSpec.stack(3, 32, input_dim=32, first_width=None, activation="selu", init="lecun_normal",
                                     batchnorm=True), seeds=4, samples=64, threads=1)
    t = res.table
    assert t["theory_var_log_norm"].isna().all() and t["theory_var_log_grad"].isna().all()
    assert (t["var_log_norm"].iloc[1:] > 0).all() and (t["var_log_grad"].iloc[1:] > 0).all()
    assert list(res.theory_notes.values()) == [
        "the finite-width spread theory (propagate.finite_width) does not cover BatchNorm"]


def test_theory_cli_finite_width_columns(capsys):
    import json

    from propagate.cli import main

    assert main(["theory", "--activation", "relu", "--sigma-w2", "2", "--width", "100", "--depth", "50",
                 "--finite-width", "--json"]) == 0
    last = json.loads(capsys.readouterr().out)["layers"][-1]
    assert last["var_log_norm"] == pytest.approx(49 * relu_layer_variance(100) + chi2_log_variance(100), rel=1e-9)
    assert last["var_log_grad"] == pytest.approx(relu_layer_variance(100), rel=1e-9)


@pytest.mark.parametrize("flags, what", [(["--batchnorm"], "BatchNorm"), (["--residual", "0.5"], "a residual block")])
def test_theory_cli_samples_the_spread_where_the_theory_does_not_reach(flags, what, capsys):
    import json

    from propagate.cli import main

    argv = ["theory", "--activation", "selu", "--init", "lecun_normal", "--depth", "4", "--width", "32", "--input-dim",
            "32", "--finite-width", "--networks", "12", *flags]
    assert main(argv + ["--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert what in d["theory_note"] and "finite-width" in d["theory_note"]
    for row in d["layers"][1:]:
        assert row["var_log_norm"] is None and row["var_log_grad"] is None  # the theory's columns: empty
        assert 0 < row["sampled_var_log_norm"] < 1 and row["sampled_var_log_norm_se"] > 0
        assert row["sampled_var_log_grad"] > 0
    # the same numbers as the library's sampler for that seed
    ms = sample_spread(NetworkSpec.stack(4, 32, input_dim=32, first_width=None, activation="selu",
                                         init="lecun_normal", batchnorm="--batchnorm" in flags,
                                         residual=0.5 if "--residual" in flags else 0.0), networks=12, inputs=4)
    assert d["layers"][4]["sampled_var_log_norm"] == pytest.approx(ms["var_log_norm"].iloc[4], rel=1e-12)
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "sampled_var_log_norm" in out
    assert sum(line.startswith("(var_log_norm, var_log_grad empty: ") and what in line for line in out.splitlines()) == 1


def test_sample_spread_of_a_plain_stack_is_the_old_samplers():
    """Pinned: the numbers of the hand-written sampler this one replaced, for the same seed.

    ``var_log_norm`` is equal to round-off; ``var_log_grad`` to 1e-6 (the old backward pass rounded the weights
    to float32 to save memory, a relative error of 6e-8 in every gradient).
    """
    spec = NetworkSpec(widths=(16,) * 6, activation="tanh", init="normal:1.4242", bias_var=0.01)
    ms = sample_spread(spec, networks=8, inputs=3, seed=4)
    np.testing.assert_allclose(ms["var_log_norm"].iloc[1:], [0.11482408256562819, 0.1971208932129485,
                               0.14562710476026922, 0.3116808615212896, 0.3971579287176356], rtol=1e-12)
    np.testing.assert_allclose(ms["var_log_grad"].iloc[1:], [1.1177174711104154, 0.8704578877403468,
                               0.8043333541018594, 0.7658808290826951, 0.16848119102299522], rtol=1e-6)
    ms = sample_spread(NetworkSpec(widths=(10, 24, 16, 16), activation="selu", init="lecun_normal"), networks=8,
                       inputs=3, seed=4)
    np.testing.assert_allclose(ms["var_log_norm"].iloc[1:], [0.05571408792150071, 0.1516463800527504,
                                                             0.2955241163965556], rtol=1e-12)
    np.testing.assert_allclose(ms["var_log_grad"].iloc[1:], [0.7189713170790308, 0.398402236251868,
                                                             0.31005087753267846], rtol=1e-6)


@pytest.mark.parametrize("kw", [dict(activation="relu", init="glorot_uniform", batchnorm=True),
                                dict(activation="selu", init="lecun_normal", batchnorm=True),
                                dict(activation="tanh", init="glorot_normal", layernorm=True, bias_var=0.05),
                                dict(activation="relu", init="glorot_uniform", residual=0.5),
                                dict(activation="relu", init="he_normal", dropout=0.2)],
                         ids=["relu-bn", "selu-bn", "tanh-ln", "relu-residual", "relu-dropout"])
def test_sampled_log_norms_agree_with_simulate(kw):
    """The sampler's mean log squared norms against the simulator's q and grad_norm of the same spec.

    For a log-normal ``X``, ``E[ln X] = ln E[X] - Var[ln X] / 2``; ``E ||h^l||^2 = n pre_q`` and
    ``E ||g^l||^2 ~ grad_norm^2``. Allowed: 4 standard errors plus 0.1 (norms) and 0.2 (gradients, whose
    spread across one network's inputs the variance across networks leaves out) for the log-normal approximation;
    a missing factor (BatchNorm's 1/sigma, the residual R, dropout's 1/keep) moves them by 0.2 to 1 per layer.
    """
    import warnings

    from propagate.simulate import simulate

    spec = NetworkSpec.stack(6, 64, input_dim=64, first_width=None, **kw)
    ms = sample_spread(spec, networks=48, inputs=4, seed=1).set_index("layer")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        st = simulate(spec, samples=128, seeds=16, grad_samples=64, seed=1, threads=1, dtype="float64").table
    st = st.set_index("layer")
    for l in (1, 3, 6):
        m = ms.loc[l]
        pred = math.log(64 * st.loc[l, "pre_q"]) - m["var_log_norm"] / 2
        se = math.hypot(m["mean_log_norm_se"], st.loc[l, "pre_q_se"] / st.loc[l, "pre_q"])
        assert abs(m["mean_log_norm"] - pred) < 4 * se + 0.1, (l, m["mean_log_norm"], pred, se)
        gpred = math.log(st.loc[l, "grad_norm"] ** 2) - m["var_log_grad"] / 2
        gse = math.hypot(m["mean_log_grad_se"], 2 * st.loc[l, "grad_norm_se"] / st.loc[l, "grad_norm"])
        assert abs(m["mean_log_grad"] - gpred) < 4 * gse + 0.2, (l, m["mean_log_grad"], gpred, gse)
