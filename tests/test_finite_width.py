"""Finite-width spread across networks: closed forms, the Hanin-Nica constant, theory against simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import special

from propagate.errors import UserError
from propagate.finite_width import (HANIN_NICA_CONSTANT, chi2_log_variance, measured_spread, predict_spread,
                                    relu_layer_variance, sample_spread)
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


def test_unsupported_specs_are_user_errors():
    with pytest.raises(UserError):
        predict_spread(uniform("relu", "he_normal", 32, 4, batchnorm=True))
    with pytest.raises(UserError):
        predict_spread(NetworkSpec(widths=(64, 32, 32), activation="relu", init="orthogonal"))


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


def test_theory_cli_finite_width_columns(capsys):
    import json

    from propagate.cli import main

    assert main(["theory", "--activation", "relu", "--sigma-w2", "2", "--width", "100", "--depth", "50",
                 "--finite-width", "--json"]) == 0
    last = json.loads(capsys.readouterr().out)["layers"][-1]
    assert last["var_log_norm"] == pytest.approx(49 * relu_layer_variance(100) + chi2_log_variance(100), rel=1e-9)
    assert last["var_log_grad"] == pytest.approx(relu_layer_variance(100), rel=1e-9)
    assert main(["theory", "--activation", "tanh", "--init", "he_normal", "--batchnorm", "--finite-width"]) == 2
    assert capsys.readouterr().err.startswith("propagate: error:")
