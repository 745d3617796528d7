"""Mean-field theory: closed forms, published values, Monte Carlo, the per-layer table, the CLI."""

import json
import math

import numpy as np
import pytest
from scipy import special

from propagate.activations import get_activation, register_activation, unregister_activation
from propagate.errors import UserError
from propagate.spec import NetworkSpec
from propagate.theory import (
    analyze,
    chi_1,
    chi_c,
    correlation_map,
    critical_line,
    critical_sigma_w2,
    depth_scales,
    fixed_point_c,
    fixed_point_q,
    gaussian_expectation,
    gaussian_pair_expectation,
    grad_moment,
    length_map,
    phase,
    predict_layers,
    snn_moment_map,
    variance_preserving_gain,
)

# ----------------------------------------------------------------------------
# quadrature


def test_gaussian_expectation_polynomials_and_shift():
    assert gaussian_expectation(lambda h: h**4, 2.0) == pytest.approx(3 * 4.0, rel=1e-12)
    assert gaussian_expectation(lambda h: h**2, 0.5, mean=1.5) == pytest.approx(2.75, abs=1e-13)
    assert gaussian_expectation(np.cos, 1.0) == pytest.approx(math.exp(-0.5), abs=1e-14)
    assert gaussian_expectation(np.sin, 0.0, mean=0.3) == pytest.approx(math.sin(0.3), abs=1e-15)
    # a kink far from the mean, and a huge scale
    assert gaussian_expectation(lambda h: np.maximum(h, 0), 1e4, kinks=(0.0,)) == pytest.approx(100 / math.sqrt(2 * math.pi), rel=1e-12)
    with pytest.raises(UserError):
        gaussian_expectation(np.sin, -1.0)


@pytest.mark.parametrize("q", [0.05, 0.7, 3.0, 40.0])
def test_erf_closed_forms_by_quadrature(q):
    act = get_activation("erf")
    m2 = gaussian_expectation(lambda h: special.erf(h) ** 2, q)
    assert m2 == pytest.approx((2 / math.pi) * math.asin(2 * q / (1 + 2 * q)), abs=1e-10)
    g2 = gaussian_expectation(lambda h: act.grad(h) ** 2, q)
    assert g2 == pytest.approx((4 / math.pi) / math.sqrt(1 + 4 * q), abs=1e-10)
    for sw2 in (0.5, 1.7):
        assert chi_1("erf", sw2, 0.1, q=q) == pytest.approx(sw2 * (4 / math.pi) / math.sqrt(1 + 4 * q), rel=1e-12)


@pytest.fixture
def erf_without_closed_form():
    act = register_activation("erf_numeric", special.erf, grad=lambda x: 2 / math.sqrt(math.pi) * np.exp(-x * x))
    yield act
    unregister_activation("erf_numeric")


@pytest.mark.parametrize("q,c", [(0.3, 0.2), (1.0, 0.6), (2.5, 0.95), (0.8, 0.999), (10.0, 0.3), (1.0, -0.4)])
def test_generic_pair_quadrature_matches_erf_kernel(erf_without_closed_form, q, c):
    # Williams (1997): E[erf(u_a) erf(u_b)] = (2/pi) arcsin(2 q c / (1 + 2 q))
    got = gaussian_pair_expectation("erf_numeric", q, c)
    assert got == pytest.approx((2 / math.pi) * math.asin(2 * q * c / (1 + 2 * q)), abs=1e-10)
    gd = gaussian_pair_expectation("erf_numeric", q, c, derivative=True)
    assert gd == pytest.approx((4 / math.pi) / math.sqrt((1 + 2 * q) ** 2 - 4 * q * q * c * c), abs=1e-10)


@pytest.mark.parametrize("name", ["relu", "leaky_relu:0.1", "selu", "elu", "tanh", "gelu"])
def test_pair_expectation_matches_monte_carlo(name):
    act = get_activation(name)
    q, c = 1.3, 0.55
    rng = np.random.default_rng(2024)
    z1, z2 = rng.standard_normal((2, 1_000_000))
    ua = math.sqrt(q) * z1
    ub = math.sqrt(q) * (c * z1 + math.sqrt(1 - c * c) * z2)
    for deriv, f in ((False, act.numpy), (True, act.grad)):
        prod = f(ua) * f(ub)
        se = prod.std() / math.sqrt(prod.size)
        assert abs(prod.mean() - gaussian_pair_expectation(act, q, c, derivative=deriv)) < 4 * se


def test_relu_pair_kernel_against_quadrature_path():
    # elu with alpha -> 0 is relu: the elu path (quadrature of a conditional closed form) vs the arc-cosine kernel
    for q, c in [(1.0, 0.3), (2.0, 0.9)]:
        a = gaussian_pair_expectation("relu", q, c)
        b = gaussian_pair_expectation("elu:alpha=1e-300", q, c)
        assert a == pytest.approx(b, abs=1e-12)


# ----------------------------------------------------------------------------
# maps, fixed points, depth scales, phase


def test_relu_critical_at_two_and_halving_at_one():
    assert critical_sigma_w2("relu", 0.0) == (pytest.approx(2.0, abs=1e-14), 1.0)
    assert critical_sigma_w2("relu", 0.1)[1] == math.inf
    assert chi_1("relu", 2.0, 0.0) == pytest.approx(1.0, abs=1e-15)
    assert phase("relu", 2.0) == "critical"
    assert phase("relu", 1.5) == "ordered" and phase("relu", 2.5) == "chaotic"
    spec = NetworkSpec.stack(40, 256, init="normal:1", activation="relu")
    q = predict_layers(spec)["pre_q"].to_numpy()[1:]
    assert q[0] == pytest.approx(1.0, abs=1e-15)
    np.testing.assert_allclose(q[1:] / q[:-1], 0.5, rtol=1e-14)
    assert length_map("relu", 1.0, 0.0, 3.0) == pytest.approx(1.5, abs=1e-15)


def test_tanh_critical_tends_to_one_as_bias_vanishes():
    sb2s = [0.1, 0.01, 1e-3, 1e-4, 1e-6, 1e-8, 1e-12]
    sw2s = [critical_sigma_w2("tanh", s)[0] for s in sb2s]
    assert all(a > b for a, b in zip(sw2s, sw2s[1:]))
    assert 1.0 < sw2s[-1] < 1.001  # sigma_w2 - 1 shrinks like sigma_b2^(1/3)
    assert critical_sigma_w2("tanh", 0.0) == (1.0, 0.0)
    # on the line: chi_1 = 1 at the fixed point it reports (Schoenholz et al. fig. 1: ~1.76 at sigma_b2 = 0.05)
    sw2, qs = critical_sigma_w2("tanh", 0.05)
    assert sw2 == pytest.approx(1.76, abs=0.01)
    assert fixed_point_q("tanh", sw2, 0.05) == pytest.approx(qs, rel=1e-9)
    assert chi_1("tanh", sw2, 0.05) == pytest.approx(1.0, abs=1e-10)
    assert phase("tanh", sw2, 0.05) == "critical"
    assert phase("tanh", sw2 * 0.9, 0.05) == "ordered" and phase("tanh", sw2 * 1.1, 0.05) == "chaotic"


def test_critical_line_frame():
    df = critical_line("tanh", np.linspace(0, 0.5, 11))
    assert list(df.columns) == ["sigma_b2", "sigma_w2", "q_star"]
    assert df["sigma_w2"].is_monotonic_increasing and df["sigma_w2"].iloc[0] == 1.0
    for _, r in df.iloc[1:].iterrows():
        assert chi_1("tanh", r.sigma_w2, r.sigma_b2, q=r.q_star) == pytest.approx(1.0, abs=1e-10)


def test_selu_lecun_fixed_point_and_snn_map():
    assert fixed_point_q("selu", 1.0, 0.0) == pytest.approx(1.0, abs=1e-14)
    assert fixed_point_q("selu", 1.0, 0.0, q0=5.0) == pytest.approx(1.0, abs=1e-12)
    mu, nu = snn_moment_map("selu", 0.0, 1.0)
    assert mu == pytest.approx(0.0, abs=1e-14) and nu == pytest.approx(1.0, abs=1e-14)
    # the map pulls nearby (mu, nu) towards (0, 1) (omega = 0, tau = 1: mean input does not matter)
    assert abs(snn_moment_map("selu", 0.0, 1.3)[1] - 1) < 0.3
    # generic mean/variance map: any activation, shifted mean; relu's closed form
    m, v = snn_moment_map("relu", 0.5, 2.0, omega=2.0, tau=0.5)
    m1, m2 = get_activation("relu").moments(1.0, 1.0)
    assert (m, v) == (pytest.approx(m1), pytest.approx(m2 - m1 * m1))
    t = predict_layers(NetworkSpec.seed("selu", "lecun_normal"))
    np.testing.assert_allclose(t["pre_q"].to_numpy()[1:], 1.0, atol=1e-12)
    np.testing.assert_allclose(t["post_mean"].to_numpy()[1:], 0.0, atol=1e-12)
    np.testing.assert_allclose(t["post_var"].to_numpy()[1:], 1.0, atol=1e-12)


def test_fixed_points_and_no_finite_fixed_point():
    assert fixed_point_q("relu", 3.0, 0.0) == math.inf
    assert fixed_point_q("relu", 1.0, 0.0) == 0.0
    assert fixed_point_q("relu", 1.0, 0.5) == pytest.approx(1.0, abs=1e-12)  # q = q/2 + 1/2
    assert fixed_point_q("linear", 0.5, 1.0) == pytest.approx(2.0, abs=1e-12)
    q = fixed_point_q("tanh", 2.0, 0.3)
    assert length_map("tanh", 2.0, 0.3, q) == pytest.approx(q, rel=1e-13)
    # chaotic tanh without bias: c* = 0 (odd phi); with bias: the map's fixed point in (0, 1)
    assert fixed_point_c("tanh", 1.5, 0.0) == pytest.approx(0.0, abs=1e-12)
    c = fixed_point_c("tanh", 2.5, 0.05)
    assert 0 < c < 1
    assert correlation_map("tanh", 2.5, 0.05, fixed_point_q("tanh", 2.5, 0.05), c) == pytest.approx(c, abs=1e-12)
    assert fixed_point_c("tanh", 1.2, 0.05) == 1.0  # ordered
    r = analyze("relu", 3.0, 0.0, depth=30)
    assert not r.fixed_point and r.q_star == math.inf
    assert r.growth == pytest.approx(1.5, rel=1e-12)
    assert r.phase == "chaotic"


def test_no_finite_fixed_point_is_reported_as_none():
    """q -> s q + sigma_b^2 with slope s = 1 and sigma_b^2 > 0 grows forever; float64's q + 0.1 == q near 1e15
    once made that look like a fixed point (q* = 1.4e15, fixed_point True)."""
    for act, sw2 in (("linear", 1.0), ("relu", 2.0), ("leaky_relu:0.2", 2 / 1.04)):
        assert fixed_point_q(act, sw2, 0.1) == math.inf
        r = analyze(act, sw2, 0.1, depth=3)
        assert r.q_star == math.inf and not r.fixed_point and r.phase == "critical"
        assert fixed_point_q(act, sw2, 0.0) == 1.0  # without bias every q is fixed: the start
    assert fixed_point_q("linear", 1.0, 1e-20) == math.inf  # the step is below the rounding of q = 1
    # just below the critical slope the line's fixed point is finite and exact: 0.1 / (1 - 0.999)
    assert fixed_point_q("relu", 1.998, 0.1) == pytest.approx(100.0, rel=1e-12)
    # asymptotically linear activations: elu at sigma_w2 = 2 grows like q + 1.1; gelu has a finite q*
    assert fixed_point_q("elu", 2.0, 0.1) == math.inf
    q = fixed_point_q("gelu", 2.0, 0.1)
    assert math.isfinite(q) and length_map("gelu", 2.0, 0.1, q) == pytest.approx(q, rel=1e-12)


def test_critical_point_found_over_the_whole_bias_range():
    """tanh at sigma_b2 = 1e50: q* ~ sigma_b2, sigma_w2 = 1 / E[tanh'(sqrt(q*) z)^2] ~ sqrt(q*) / 0.532 (was nan)."""
    for sb2 in (1e3, 1e50, 1e250):
        sw2, qs = critical_sigma_w2("tanh", sb2)
        assert math.isfinite(sw2) and qs >= sb2
        assert chi_1("tanh", sw2, sb2, q=qs) == pytest.approx(1.0, abs=1e-10)
        assert length_map("tanh", sw2, sb2, qs) == pytest.approx(qs, rel=1e-12)
        # large q: E[tanh'(h)^2] ~ (2/3) * 2 / sqrt(2 pi q) (the integral of sech^4 is 4/3)
        assert sw2 == pytest.approx(math.sqrt(2 * math.pi * qs) * 3 / 4, rel=1e-3 if sb2 > 1e3 else 0.05)
    sw2, qs = critical_sigma_w2("elu", 1e6)  # unbounded: the largest bias answered, q* ~ 6e12
    assert length_map("elu", sw2, 1e6, qs) == pytest.approx(qs, rel=1e-9)
    # softplus has none (h(q) ~ -sqrt(q)); float64's rounding near q = 3e24 is not taken for one
    assert all(math.isnan(v) for v in critical_sigma_w2("softplus", 0.0))
    for act, sb2 in (("tanh", 1e251), ("gelu", 1e7)):
        with pytest.raises(UserError, match="largest bias variance"):
            critical_sigma_w2(act, sb2)
    with pytest.raises(UserError, match="beyond 1e\\+06"):  # the whole list is checked before any point
        critical_line("elu", [0.0, 1.0, 1e7])


def test_depth_scales_match_their_formulas():
    # erf is smooth: chi_q = sigma_w2 E[phi'^2 + phi phi''] with erf'' = -2 h erf'
    sw2, sb2 = 1.6, 0.2
    q = fixed_point_q("erf", sw2, sb2)
    act = get_activation("erf")
    chi_q = sw2 * gaussian_expectation(lambda h: act.grad(h) ** 2 + special.erf(h) * (-2 * h) * act.grad(h), q)
    xi_q, xi_c = depth_scales("erf", sw2, sb2)
    assert xi_q == pytest.approx(-1 / math.log(chi_q), rel=1e-7)
    x1 = chi_1("erf", sw2, sb2)
    assert x1 < 1 and xi_c == pytest.approx(-1 / math.log(x1), rel=1e-12)  # ordered: c* = 1, chi_c = chi_1
    # chaotic: chi_c < 1 at c* < 1
    xc = chi_c("tanh", 2.5, 0.05)
    assert 0 < xc < 1 and depth_scales("tanh", 2.5, 0.05)[1] == pytest.approx(-1 / math.log(xc))
    # critical: xi_c diverges
    sw2c, _ = critical_sigma_w2("tanh", 0.05)
    assert depth_scales("tanh", sw2c * (1 + 1e-9), 0.05)[1] > 1e5


def test_variance_preserving_gains():
    assert variance_preserving_gain("selu") == pytest.approx(1.0, abs=1e-14)
    assert variance_preserving_gain("relu") == pytest.approx(2.0, abs=1e-14)
    assert variance_preserving_gain("linear") == 1.0
    assert variance_preserving_gain("leaky_relu:0.2") == pytest.approx(2 / 1.04, abs=1e-14)
    assert variance_preserving_gain("erf") == pytest.approx(1 / ((2 / math.pi) * math.asin(2 / 3)), abs=1e-12)


def test_bad_input_raises_user_error():
    for call in (lambda: length_map("tanh", -1, 0, 1), lambda: length_map("tanh", 1, -0.1, 1),
                 lambda: critical_sigma_w2("nope", 0), lambda: analyze("tanh", 1.0, 0.0, depth=0),
                 lambda: predict_layers(NetworkSpec.stack(3), input_corr=1.5)):
        with pytest.raises(UserError):
            call()


# ----------------------------------------------------------------------------
# the per-layer table


def test_table_format_and_input_row():
    from propagate.stats import COLUMNS

    spec = NetworkSpec.stack(5, 64, activation="tanh", init="glorot_uniform", bias_var=0.05, input_mean=0.5, input_var=2.0)
    t = predict_layers(spec)
    assert list(t.columns[: len(COLUMNS)]) == COLUMNS
    assert {"sigma_w2", "sigma_b2", "diverged"} <= set(t.columns)
    assert (t["source"] == "theory").all() and (t["config"] == spec.label()).all()
    r0 = t.iloc[0]
    assert (r0.layer, r0.post_mean, r0.post_var, r0.post_q) == (0, 0.5, 2.0, 2.25)
    assert r0["corr"] == pytest.approx(0.25 / 2.25)
    sw2 = spec.sigma_w2()
    assert t.loc[1, "pre_q"] == pytest.approx(sw2[0] * 2.25 + 0.05)
    assert t.loc[1, "corr"] == pytest.approx((sw2[0] * 0.25 + 0.05) / (sw2[0] * 2.25 + 0.05))
    for l in range(2, 6):
        assert t.loc[l, "pre_var"] == pytest.approx(sw2[l - 1] * t.loc[l - 1, "post_q"] + 0.05, rel=1e-14)
    # gradient norms: last layer E[phi'^2]; each layer below times sigma_w2 E[phi'^2]
    act = spec.act
    g2 = [gaussian_expectation(lambda h: act.grad(h) ** 2, t.loc[l, "pre_q"]) for l in range(1, 6)]
    assert t.loc[5, "grad_norm"] ** 2 == pytest.approx(g2[4], rel=1e-10)
    for l in range(1, 5):
        assert t.loc[l, "grad_norm"] ** 2 == pytest.approx(t.loc[l + 1, "grad_norm"] ** 2 * sw2[l] * g2[l - 1], rel=1e-10)
    t2 = predict_layers(spec, input_q=1.0, input_mean=0.0, input_corr=0.3, config="x")
    assert t2.loc[0, "corr"] == 0.3 and (t2["config"] == "x").all()


def test_divergence_is_flagged_not_raised():
    t = predict_layers(NetworkSpec.stack(2000, 32, activation="relu", init="normal:3"))
    assert t["diverged"].any() and not t["diverged"].iloc[:1500].any()
    first = int(t.index[t["diverged"]][0])
    assert t["diverged"].iloc[first:].all()
    assert t.loc[first - 1, "pre_q"] > 1e290 and math.isinf(t.loc[first, "pre_q"])


def test_depth_1000_converges_to_the_fixed_point_and_chi_1():
    sw2, sb2 = 1.7609546396, 0.05
    t = predict_layers(NetworkSpec.stack(1000, activation="tanh", init=f"normal:{sw2}", bias_var=sb2))
    assert len(t) == 1001 and not t["diverged"].any()
    # deep layers sit at the fixed point q* of the length map; this (sigma_w2, sigma_b2) is on the
    # critical line, where c -> c* = 1 only as a power law: 1 - c shrinks, but slowly
    qs = fixed_point_q("tanh", sw2, sb2)
    assert t.loc[1000, "pre_q"] == pytest.approx(qs, rel=1e-9)
    assert fixed_point_c("tanh", sw2, sb2, qs) == 1.0
    one_minus_c = 1 - t["corr"].to_numpy()[[100, 300, 1000]]
    assert (np.diff(one_minus_c) < 0).all() and 0 < one_minus_c[-1] < 0.01
    # and the squared gradient norm shrinks by chi_1 per layer there (1 / E[phi'^2] at the last layer)
    x1 = chi_1("tanh", sw2, sb2)
    g = t["grad_norm"].to_numpy()
    assert g[500] ** 2 / g[501] ** 2 == pytest.approx(x1, rel=1e-9)
    assert x1 == pytest.approx(1.0, abs=1e-8)  # critical: chi_1 = 1
    assert g[1000] ** 2 == pytest.approx(grad_moment(get_activation("tanh"), t.loc[1000, "pre_q"]), rel=1e-12)


def _simulate(spec, batch=600, seed=0, train=True):
    """Pre-activations of a finite torch network of ``spec`` (float64, train mode: BN batch stats, dropout on)."""
    import torch

    from propagate.spec import build_model

    torch.manual_seed(seed)
    model = build_model(spec, seed=seed, dtype=torch.float64)
    model.train(train)
    # inputs from their own stream: the weights' generator is seeded `seed` too, and the same numbers would correlate them
    gen = torch.Generator().manual_seed(10_000 + seed)
    x = spec.input_mean + math.sqrt(spec.input_var) * torch.randn(batch, spec.input_dim, dtype=torch.float64, generator=gen)
    with torch.no_grad():
        _, rec = model(x, record=True)
    return [p[0].numpy() for p in rec["pre"]]


def _check_against_simulation(spec, batch=600, seeds=(0, 1), layers=None, rel_slack=0.0, corr_tol=0.02):
    t = predict_layers(spec)
    runs = [_simulate(spec, batch, s) for s in seeds]
    for l in layers or range(1, spec.depth + 1):
        # per-unit second moments are (nearly) independent across units and networks: SE from their spread
        per_unit = np.concatenate([(r[l - 1] ** 2).mean(axis=0) for r in runs])
        se = per_unit.std() / math.sqrt(per_unit.size)
        q = t.loc[l, "pre_q"]
        assert abs(per_unit.mean() - q) < 4 * se + rel_slack * q, (l, per_unit.mean(), q, se)
        h = runs[0][l - 1]
        hn = h / np.linalg.norm(h, axis=1, keepdims=True)
        gram = hn @ hn.T
        corr = (gram.sum() - np.trace(gram)) / (gram.size - len(gram))
        assert abs(corr - t.loc[l, "corr"]) < corr_tol, (l, corr, t.loc[l, "corr"])


def test_theory_matches_monte_carlo_network_tanh():
    pytest.importorskip("torch")
    spec = NetworkSpec(widths=(400, 800, 800, 800), activation="tanh", init="normal:1.8", bias_var=0.05)
    # finite width shifts q by O(1/n); n = 800 with ~1.3e6 samples per layer
    _check_against_simulation(spec, rel_slack=2 / 800)


def test_theory_matches_monte_carlo_network_selu_uniform_init():
    pytest.importorskip("torch")
    spec = NetworkSpec(widths=(400, 800, 800, 800), activation="selu", init="lecun_uniform", input_mean=0.3)
    _check_against_simulation(spec, rel_slack=2 / 800)


def test_batchnorm_prediction_matches_train_mode_network():
    pytest.importorskip("torch")
    spec = NetworkSpec(widths=(400, 800, 800, 800), activation="relu", init="he_normal", batchnorm=True, bias_var=0.0)
    t = predict_layers(spec)
    # BN standardizes per unit: the input of layers >= 2 has second moment v/(v + eps), pair correlation 0
    assert t.loc[2, "pre_q"] == pytest.approx(2.0 * (1 - 1e-3), rel=2e-3)
    assert t.loc[2, "corr"] == 0.0
    _check_against_simulation(spec, rel_slack=2 / 800, corr_tol=0.01)


def test_dropout_prediction_matches_train_mode_network():
    pytest.importorskip("torch")
    spec = NetworkSpec(widths=(400, 800, 800, 800), activation="tanh", init="normal:1.5", bias_var=0.05, dropout=0.3)
    t = predict_layers(spec)
    # the next layer sees second moment post_q / (1 - p)
    assert t.loc[2, "pre_q"] == pytest.approx(1.5 * t.loc[1, "post_q"] / 0.7 + 0.05, rel=1e-14)
    _check_against_simulation(spec, rel_slack=2 / 800)


def test_alpha_dropout_keeps_selu_fixed_point():
    spec = NetworkSpec.stack(30, activation="selu", init="lecun_normal", alpha_dropout=0.2)
    t = predict_layers(spec)
    np.testing.assert_allclose(t["pre_q"].to_numpy()[1:], 1.0, atol=1e-12)
    # away from the fixed point it changes the moments: compare with a network
    pytest.importorskip("torch")
    spec = NetworkSpec(widths=(400, 800, 800, 800), activation="selu", init="normal:1.4", alpha_dropout=0.2, input_var=2.0)
    _check_against_simulation(spec, rel_slack=2 / 800)


# ----------------------------------------------------------------------------
# CLI


def _cli(capsys, *argv):
    from propagate.cli import main

    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_theory_summary_and_table(capsys):
    rc, out, _ = _cli(capsys, "theory", "--activation", "tanh", "--sigma-w2", "1.5", "--sigma-b2", "0.05", "--depth", "50")
    assert rc == 0
    q = fixed_point_q("tanh", 1.5, 0.05)
    assert f"q*     = {q:.10g}" in out
    assert "phase  = ordered" in out and "xi_c" in out
    assert len([ln for ln in out.splitlines() if ln.strip().startswith(("49 ", "50 "))]) == 2


def test_cli_theory_json_csv(capsys, tmp_path):
    rc, out, _ = _cli(capsys, "theory", "-a", "selu", "--init", "lecun_normal", "--depth", "10", "--json")
    d = json.loads(out)
    assert rc == 0 and d["q_star"] == pytest.approx(1.0) and len(d["layers"]) == 11
    assert d["layers"][1]["width"] == 512 and d["meta"]["spec"]["init"] == "lecun_normal"
    path = tmp_path / "t.csv"
    rc, out, _ = _cli(capsys, "theory", "-a", "relu", "--sigma-w2", "3", "--depth", "1000", "--csv", str(path))
    assert rc == 0 and "no finite fixed point" in out and "x1.5 per layer" in out
    import pandas as pd

    df = pd.read_csv(path)
    assert len(df) == 1001 and (tmp_path / "t.csv.meta.json").exists()
    rc, out, _ = _cli(capsys, "theory", "-a", "relu", "--sigma-w2", "1", "--depth", "3", "--csv", "-")
    assert rc == 0 and out.startswith("source,config,layer")
    assert len(out.strip().splitlines()) == 5


def test_cli_theory_default_network_and_its_precision(capsys):
    """Unset flags take the one default network (lecun_normal weights, the demo's widths); --input-dim counts with
    --sigma-w2 too; a mean that is round-off of 0 prints as 0 while the JSON keeps its digits."""
    rc, out, _ = _cli(capsys, "theory", "--activation", "tanh", "--depth", "10")
    assert rc == 0 and "tanh/lecun_normal: depth 10, widths 784 -> 512 -> ... -> 256" in out
    assert "sigma_w2 = 1, sigma_b2 = 0" in out and "phase  = critical" in out  # tanh at sigma_w2 = 1: chi_1 = 1
    rc, out, _ = _cli(capsys, "theory", "--sigma-w2", "1", "--input-dim", "100", "--width", "64", "--depth", "2",
                      "--json")
    d = json.loads(out)
    assert [r["width"] for r in d["layers"]] == [100, 64, 64] and d["meta"]["spec"]["init"] == "normal:1.0"
    rc, out, _ = _cli(capsys, "theory", "--depth", "4")  # SELU at its fixed point: mean 0 up to round-off
    rows = [ln.split() for ln in out.splitlines() if ln.strip()[:1].isdigit() and len(ln.split()) == 9]
    assert len(rows) == 5 and all(r[4] == "0" for r in rows)
    rc, out, _ = _cli(capsys, "theory", "--depth", "4", "--json")
    means = [r["post_mean"] for r in json.loads(out)["layers"][2:]]
    assert all(m != 0 and abs(m) < 1e-15 for m in means)  # the data keeps the float's own digits


@pytest.mark.parametrize("argv", [
    ["theory", "--activation", "nope", "--sigma-w2", "1"],
    ["theory", "--sigma-w2", "-1"],
    ["theory", "--sigma-w2", "1", "--sigma-b2", "-0.1"],
    ["theory", "--sigma-w2", "1", "--depth", "0"],
    ["theory", "--init", "normal:abc"],
    ["theory", "--init", "nonsense"],
    ["theory", "--init", "he_normal", "--sigma-w2", "2"],  # one way to give the weights
    ["theory", "--json", "out.txt"],  # --json FILE must be a .json file
    ["theory", "--json", "--csv", "-"],  # two outputs on standard output
    ["critical", "--activation", "nope"],
    ["critical", "--sigma-b2", "-1"],
    ["gain", "--activation", "nope"],
])
def test_cli_bad_input_one_line_exit_2(capsys, argv):
    from propagate.cli import main

    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    _, err = capsys.readouterr()
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("propagate: error:")
    if "nope" in argv:
        assert "relu" in err and "tanh" in err  # lists the known ones


def test_cli_critical_and_gain(capsys):
    rc, out, _ = _cli(capsys, "critical", "--activation", "tanh", "--sigma-b2", "0.05")
    sw2, qs = critical_sigma_w2("tanh", 0.05)
    assert rc == 0 and f"{sw2:.10g}" in out
    rc, out, _ = _cli(capsys, "critical", "-a", "tanh", "--sigma-b2", "0:0.2:5", "--csv", "-")
    assert rc == 0 and len(out.strip().splitlines()) == 6
    rc, out, _ = _cli(capsys, "critical", "-a", "relu", "--json")
    assert json.loads(out)["rows"][0]["sigma_w2"] == 2.0
    rc, out, _ = _cli(capsys, "gain", "--activation", "selu")
    assert rc == 0
    row = next(ln for ln in out.splitlines() if ln.startswith("selu"))
    assert row.split()[1:] == ["1", "1", "1.07157", "0.75", "0.5625"]
    rc, out, _ = _cli(capsys, "gain", "-a", "relu", "-a", "tanh", "--json")
    rows = json.loads(out)["rows"]
    assert rows[0]["sigma_w2"] == pytest.approx(2.0) and rows[1]["torch_gain"] == pytest.approx(5 / 3)


def test_a_vanishing_signal_keeps_its_gradient_theory_finite():
    """Below q ~ 1e-154 the pull-back once divided by q^2 = 0. Now, for tanh with sigma_w^2 = s,
    chi_1 = s E[tanh'^2] = s (q -> 0), so the gradient's RMS at layer l of L = 3 is s^((3 - l) / 2)."""
    import json
    import subprocess
    import sys

    for s in (1e-100, 1e-300):
        out = subprocess.run([sys.executable, "-m", "propagate", "theory", "--activation", "tanh", "--sigma-w2", str(s),
                              "--depth", "3", "--json"], capture_output=True, text=True, check=True).stdout
        rows = {r["layer"]: r for r in json.loads(out)["layers"]}
        for layer in (1, 2, 3):
            g = rows[layer]["grad_norm"]
            assert g is not None and math.isfinite(g) and g >= 0
        if s == 1e-100:
            for layer in (1, 2):
                assert rows[layer]["grad_norm"] == pytest.approx(s ** ((3 - layer) / 2), rel=1e-6)
