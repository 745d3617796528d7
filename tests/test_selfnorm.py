"""Self-normalizing constants for any activation (propagate.selfnorm) and DKS/TAT transforms.

Independent checks: SELU's published constants; theory's float64 quadrature and
closed forms (propagate.theory) for the conditions the mpmath solver imposed;
hand-written second derivatives; iteration of the moment map; simulation at depth 50.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import mpmath as mp
import numpy as np
import pytest
from scipy import special

from propagate import selfnorm, theory
from propagate.activations import get_activation, transformed_activation
from propagate.cli import main
from propagate.errors import UserError
from propagate.selu import PUBLISHED_ALPHA, PUBLISHED_LAMBDA

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gelu_sn():
    return selfnorm.self_normalize("gelu", digits=20)


@pytest.fixture(scope="module")
def dks_gelu():
    return selfnorm.dks_transform("gelu", 50, digits=16)


@pytest.fixture(scope="module")
def tat_lrelu():
    return selfnorm.tat_transform("leaky_relu", 50, eta=0.9, digits=16)


def _same_digits(x, published: str, digits: int) -> bool:
    with mp.workdps(digits + 10):
        return abs(x - mp.mpf(published)) <= mp.mpf(10) ** (-digits + 1) * abs(mp.mpf(published)) / 2


# ----------------------------------------------------------------------------- SELU as the special case


def test_selu_from_elu_family_to_30_digits():
    res = selfnorm.self_normalize("elu", digits=30)
    sol = res.recommended
    assert res.family == "scale_alpha" and len(res.solutions) == 1
    assert sol.fmt(sol.parameters["scale"]) == PUBLISHED_LAMBDA[:31]
    assert sol.fmt(sol.parameters["alpha"]) == PUBLISHED_ALPHA[:31]
    assert _same_digits(sol.parameters["scale"], PUBLISHED_LAMBDA, 30)
    assert _same_digits(sol.parameters["alpha"], PUBLISHED_ALPHA, 30)
    assert sol.activation == "selu"
    # the paper's Jacobian (eq. 20, 6 decimals) and spectral norm 0.7877
    assert float(sol.jacobian[0][1]) == pytest.approx(0.088834, abs=1e-6)
    assert float(sol.jacobian[1][1]) == pytest.approx(0.782648, abs=1e-6)
    assert float(sol.spectral_norm) == pytest.approx(0.7877, abs=1e-4)
    assert sol.attracting and all(abs(r) < mp.mpf(10) ** -25 for r in sol.residuals)


def test_scale_alpha_matches_the_symbolic_selu_solver_off_zero_mean():
    from propagate import selu

    sol = selfnorm.self_normalize("elu", mean=0.3, var=1.0, digits=20).recommended
    ref = selu.solve_selu(0.3, 1.0, 20)
    assert sol.fmt(sol.parameters["scale"]) == ref.fmt(ref.lambda_)
    assert sol.fmt(sol.parameters["alpha"]) == ref.fmt(ref.alpha)
    with pytest.raises(UserError, match="cannot reach mean 2"):  # a positive mean needs mean < sqrt(var / (pi - 1))
        selfnorm.self_normalize("elu", mean=2.0, var=1.0, digits=10)


# ----------------------------------------------------------------------------- residuals, attraction


@pytest.mark.parametrize("digits", [12, 20])
def test_residuals_below_tolerance(digits, gelu_sn):
    res = gelu_sn if digits == 20 else selfnorm.self_normalize("tanh", digits=digits, fixed={"b": 0.0})
    for sol in res.solutions:
        assert all(abs(r) < mp.mpf(10) ** -(digits - 5) for r in sol.residuals)
        # an independent float64 evaluation of the map (theory's quadrature) at the activation string
        mu, nu = theory.snn_moment_map(sol.activation, 0.0, 1.0)
        assert abs(mu) < 1e-10 and abs(nu - 1) < 1e-10


def test_gelu_attracts_and_iteration_converges_at_the_eigenvalue(gelu_sn):
    sol = gelu_sn.recommended
    assert sol.attracting and float(sol.spectral_norm) < 0.9
    chk = selfnorm.attraction_check(sol.activation, 0.0, 1.0, steps=80)
    assert chk["converges"]
    # errors shrink per step by the nonzero eigenvalue d nu~/d nu
    assert chk["rate"] == pytest.approx(float(sol.jacobian[1][1]), abs=2e-3)


def test_non_attracting_solution_is_reported_and_iteration_leaves():
    res = selfnorm.self_normalize("gelu", digits=12, solve=("gamma", "b"))
    sol = res.recommended
    assert sol.parameters["d"] == 0 and sol.parameters["b"] < 0
    assert not sol.attracting and float(sol.spectral_radius) > 1
    assert not selfnorm.attraction_check(sol.activation, 0.0, 1.0, steps=40)["converges"]
    assert any("no solution found attracts" in n for n in res.notes)


def test_several_solutions_most_contracting_first():
    res = selfnorm.self_normalize("gelu", digits=12, shift_range=(-4.0, 3.0))
    norms = [float(s.spectral_norm) for s in res.solutions]
    assert len(norms) >= 2 and norms == sorted(norms)
    assert float(res.recommended.parameters["b"]) == 1.191


def test_nonzero_mean_fixed_point():
    res = selfnorm.self_normalize("silu", mean=0.2, var=0.5, digits=15, fixed={"b": 1.0})
    sol = res.recommended
    mu, nu = theory.snn_moment_map(sol.activation, 0.2, 0.5)
    assert mu == pytest.approx(0.2, abs=1e-10) and nu == pytest.approx(0.5, abs=1e-10)


# ----------------------------------------------------------------------------- the activation string


def test_transformed_activation_everywhere():
    import torch

    act = get_activation("gelu@gamma=1.2,a=0.7,b=0.5,d=-0.3")
    assert get_activation(act.name).params == act.params
    x = np.linspace(-4, 4, 41)
    ref = 1.2 * (0.7 * x + 0.5) * special.ndtr(0.7 * x + 0.5) + 1.2 * -0.3
    np.testing.assert_allclose(act(x), ref, rtol=1e-13, atol=1e-15)
    t = torch.tensor(x, requires_grad=True)
    y = act.torch(t)
    (g,) = torch.autograd.grad(y.sum(), t)
    np.testing.assert_allclose(y.detach().numpy(), ref, rtol=1e-12)
    np.testing.assert_allclose(g.numpy(), act.grad(x), rtol=1e-10, atol=1e-13)
    # closed-form moments pass through the transform (elu) and agree with quadrature
    e = get_activation("elu:alpha=1.5@gamma=0.9,a=1.3,b=0.2,d=0.1")
    assert e.kinks == pytest.approx(((0 - 0.2) / 1.3,))
    m1, m2 = e.moments(0.0, 0.8)
    assert m1 == pytest.approx(theory.gaussian_expectation(e.numpy, 0.8, kinks=e.kinks), abs=1e-12)
    assert m2 == pytest.approx(theory.gaussian_expectation(lambda h: e.numpy(h) ** 2, 0.8, kinks=e.kinks), abs=1e-12)
    # a base's own parameters survive in full precision
    lr = transformed_activation("leaky_relu:slope=0.43052294850240268", gamma=1.25)
    assert get_activation(lr.name)(np.array([-1.0]))[0] == pytest.approx(-1.25 * 0.43052294850240268, rel=1e-15)


@pytest.mark.parametrize("bad", ["gelu@gamma=0", "gelu@c=1", "gelu@a=x", "gelu@b=1@d=2", "nope@gamma=1"])
def test_bad_transform_strings(bad):
    with pytest.raises(UserError):
        get_activation(bad)


# ----------------------------------------------------------------------------- DKS and TAT, checked independently


def _E(f, kinks=()):
    return theory.gaussian_expectation(f, 1.0, kinks=kinks)


def test_dks_conditions_by_independent_quadrature(dks_gelu):
    act = get_activation(dks_gelu.activation)
    p = {k: float(v) for k, v in dks_gelu.parameters.items()}
    z = lambda x: x  # noqa: E731
    assert theory.length_map(act, 1.0, 0.0, 1.0) == pytest.approx(1.0, abs=1e-10)  # Q(1)
    assert _E(lambda x: act(x)) ** 2 < 1e-20  # C(0) = E[phi_hat]^2
    assert theory.correlation_map(act, 1.0, 0.0, 1.0, 0.0) == pytest.approx(0.0, abs=1e-10)
    assert _E(lambda x: act(x) * act.grad(x) * z(x)) == pytest.approx(1.0, abs=1e-10)  # Q'(1)
    c1 = _E(lambda x: act.grad(x) ** 2)  # C'(1) at Q(1) = 1
    assert c1**50 == pytest.approx(1.5, abs=1e-10)  # C_f'(1) = C'(1)^depth
    # and the composed map itself: 50 correlation-map steps from c = 1 - h
    h = 1e-4
    c = 1 - h
    for _ in range(50):
        c = theory.correlation_map(act, 1.0, 0.0, 1.0, c)
    assert (1 - c) / h == pytest.approx(1.5, rel=0.01)
    assert p["a"] > 0 and p["gamma"] > 0


def test_tat_leaky_relu_by_composing_theory_maps(tat_lrelu):
    act = get_activation(tat_lrelu.activation)
    s = float(tat_lrelu.parameters["slope"])
    assert 0 < s < 1
    assert float(tat_lrelu.parameters["gamma"]) == pytest.approx(math.sqrt(2 / (1 + s * s)), rel=1e-15)
    assert theory.length_map(act, 1.0, 0.0, 1.0) == pytest.approx(1.0, abs=1e-12)
    c = 0.0
    for _ in range(50):
        c = theory.correlation_map(act, 1.0, 0.0, 1.0, c)  # theory's quadrature of the transformed activation
    assert c == pytest.approx(0.9, abs=1e-10)
    # the closed-form c-map against theory's arc-cosine kernel of the plain leaky relu
    for cc in (-0.5, 0.0, 0.3, 0.9):
        ref = theory.correlation_map(f"leaky_relu:{s!r}", 1.0, 0.0, 1.0, cc)
        assert float(selfnorm.leaky_relu_cmap(cc, s)) == pytest.approx(ref, abs=1e-12)


def test_tat_smooth_by_hand_derivatives():
    res = selfnorm.tat_transform("softplus", 20, tau=0.3, digits=14)
    p = {k: float(v) for k, v in res.parameters.items()}
    g, a, b, d = p["gamma"], p["a"], p["b"], p["d"]
    s = lambda x: special.expit(a * x + b)  # noqa: E731
    phi = lambda x: g * (np.logaddexp(0, a * x + b) + d)  # noqa: E731
    d1 = lambda x: g * a * s(x)  # noqa: E731
    d2 = lambda x: g * a * a * s(x) * (1 - s(x))  # noqa: E731
    assert _E(lambda x: phi(x) ** 2) == pytest.approx(1.0, abs=1e-10)
    assert _E(lambda x: phi(x) * d1(x) * x) == pytest.approx(1.0, abs=1e-10)
    assert _E(lambda x: d1(x) ** 2) == pytest.approx(1.0, abs=1e-10)
    assert 20 * _E(lambda x: d2(x) ** 2) == pytest.approx(0.3, abs=1e-10)
    assert res.achieved["C_f''(1)"] == pytest.approx(0.3, abs=1e-12)


def test_transform_refusals():
    with pytest.raises(UserError, match="zeta > 1"):
        selfnorm.dks_transform("gelu", 10, zeta=0.9)
    with pytest.raises(UserError, match="non-homogeneous"):
        selfnorm.dks_transform("relu", 10)
    with pytest.raises(UserError, match="without kinks"):
        selfnorm.tat_transform("elu", 10)
    with pytest.raises(UserError, match="cannot reach"):
        selfnorm.tat_transform("leaky_relu", 2, eta=0.9)
    with pytest.raises(UserError, match=r"slopes up to 1 - 1e-12 give C_f\(0\) >= .*use a larger eta"):
        selfnorm.tat_transform("leaky_relu", 50, eta=1e-300)  # only slope 1 (the identity) reaches it
    # bounded work: each of these ran for minutes without a word
    from propagate.transforms import MAX_DIGITS, MAX_LEAKY_WORK

    assert MAX_DIGITS == 80 and MAX_LEAKY_WORK == 1.5e6
    with pytest.raises(UserError, match="at most 80 digits"):
        selfnorm.dks_transform("gelu", 50, digits=200)
    with pytest.raises(UserError, match=r"depth x \(digits \+ 15\) = 3.5e\+06 is more than the limit 1.5e\+06"):
        selfnorm.tat_transform("leaky_relu", 100_000)


def test_tat_leaky_relu_deep_solves_its_equation():
    """The float64 start and secant polish: C^depth(0) = eta at the working precision, also deep (depth 3000)."""
    depth, eta, digits = 3000, 0.9, 25
    res = selfnorm.tat_transform("leaky_relu", depth, eta=eta, digits=digits)
    s = res.parameters["slope"]
    with mp.workdps(digits + 15):
        c = mp.mpf(0)
        for _ in range(depth):
            c = selfnorm.leaky_relu_cmap(c, s)
        assert abs(c - mp.mpf("0.9")) < mp.mpf(10) ** -(digits + 5)
    assert 0.9 < float(s) < 1  # deep networks need a nearly linear rectifier (depth 50: 0.43)


def test_self_normalize_ranges_and_options_that_do_not_apply():
    """Each of these crashed or ran for minutes (issue 23): refused in one line, before any work."""
    cases = [(dict(fixed={"b": 1e308}), r"parameter b = 1e\+308 is outside its range \|b\| <= 1e\+06"),
             (dict(var=1e-300), "the variance must be from 1e-06 to 100"),
             (dict(var=1e300), "the variance must be from 1e-06 to 100"),
             (dict(mean=1e300), r"the mean must be within \+-1e\+06"),
             (dict(fixed={"a": 1e-300}), r"1e-06 <= \|a\| <= 1e\+06"),
             (dict(fixed={"a": 1000.0}), r"\|a\| sqrt\(var\) = 1e\+03.*use \|a\| <= 10"),
             (dict(fixed={"a": 4.0}, var=25.0), r"\|a\| sqrt\(var\) = 20.*use \|a\| <= 2"),
             (dict(fixed={"gamma": 2.0}), "gamma .* is always solved")]
    for kw, expected in cases:
        with pytest.raises(UserError, match=expected):
            selfnorm.self_normalize("gelu", **kw)
    with pytest.raises(UserError, match="--solve applies to the affine family"):
        selfnorm.self_normalize("elu", family="scale_alpha", solve=("gamma", "b"))
    assert selfnorm.VAR_RANGE == (1e-6, 1e2)
    # the ends of the ranges are answered
    small = selfnorm.self_normalize("tanh", var=1e-6, digits=12, fixed={"b": 0.0}).recommended
    assert float(small.parameters["gamma"]) == pytest.approx(1.0, abs=1e-5)  # tanh is linear near 0


# ----------------------------------------------------------------------------- CLI


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_elu_json_gives_selu(capsys):
    rc, out, err = run(capsys, "self-normalize", "--activation", "elu", "--json")
    assert rc == 0
    data = json.loads(out)
    assert data["activation"] == "selu"
    assert data["parameters"]["scale"] == PUBLISHED_LAMBDA[:31]
    assert data["parameters"]["alpha"] == PUBLISHED_ALPHA[:31]
    assert data["attracting"] is True and data["iteration"]["converges"] is True


def test_cli_text_and_transform_json(capsys):
    rc, out, _ = run(capsys, "self-normalize", "--activation", "elu", "--digits", "20")
    assert rc == 0 and "1.0507009873554804934" in out and "1.6732632423543772848" in out and "attracting" in out
    rc, out, _ = run(capsys, "transform", "--method", "tat", "--activation", "leaky_relu", "--depth", "30", "--eta", "0.8",
                     "--digits", "15", "--json")
    assert rc == 0
    data = json.loads(out)
    assert data["method"] == "tat" and data["activation"].startswith("leaky_relu:slope=")
    assert float(data["achieved"]["C_f(0)"]) == pytest.approx(0.8, abs=1e-13)
    assert float(data["achieved"]["Q(1)"]) == pytest.approx(1.0, abs=1e-13)
    c = 0.0
    for _ in range(30):
        c = theory.correlation_map(data["activation"], 1.0, 0.0, 1.0, c)
    assert c == pytest.approx(0.8, abs=1e-10)


def test_cli_gelu_activation_only(capsys, gelu_sn):
    rc, out, _ = run(capsys, "self-normalize", "--activation", "gelu", "--digits", "20", "--activation-only")
    assert rc == 0 and out.strip() == gelu_sn.recommended.activation


@pytest.mark.parametrize(
    "argv, msg",
    [
        (["self-normalize", "--activation", "nope"], "unknown activation"),
        (["self-normalize", "--activation", "softplus", "--solve", "gamma,b"], "cannot reach"),
        (["self-normalize", "--activation", "relu", "--family", "scale_alpha"], "needs an elu"),
        (["self-normalize", "--activation", "gelu", "--solve", "a,b"], "must include gamma"),
        (["self-normalize", "--activation", "gelu", "--var", "-1"], "must be > 0"),
        (["transform", "--method", "dks", "--activation", "gelu", "--zeta", "0.5"], "zeta > 1"),
        (["transform", "--method", "tat", "--activation", "leaky_relu", "--eta", "1.5"], "0 < eta < 1"),
    ],
)
def test_cli_errors_exit_2(capsys, argv, msg):
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse's own checks
        rc = exc.code
    assert rc == 2
    err = capsys.readouterr().err
    assert msg in err and "Traceback" not in err and len(err.strip().splitlines()) <= 3


# ----------------------------------------------------------------------------- the derivation


def test_derivation_file_is_up_to_date():
    committed = (ROOT / "derivations" / "self-normalize.md").read_text()
    assert selfnorm.derivation_markdown() == committed, "regenerate: propagate derive self-normalize -o derivations/self-normalize.md"
    assert PUBLISHED_LAMBDA[:31] in committed and PUBLISHED_ALPHA[:31] in committed


# ----------------------------------------------------------------------------- the simulation lens


def test_depth_50_simulation_follows_theory(gelu_sn, tat_lrelu):
    from propagate.simulate import simulate
    from propagate.spec import NetworkSpec

    def run_sim(act, seed):
        spec = NetworkSpec.stack(50, 128, input_dim=128, first_width=None, activation=act, init="lecun_normal")
        return simulate(spec, samples=400, seeds=2, seed=seed, threads=1).table

    # the self-normalized gelu: every statistic as predicted (4 SE + finite-width allowance), and the
    # variance stays at 1: the map contracts, so finite-width fluctuations do not build up over 50 layers
    for seed in (0, 1):
        t = run_sim(gelu_sn.recommended.activation, seed)
        assert not t["disagree"].any(), t.loc[t["disagree"], ["layer", "disagree_in"]]
        assert np.allclose(t["theory_pre_var"].iloc[1:], 1.0, atol=1e-9)
        assert (t["pre_var"].iloc[1:] - 1.0).abs().max() < 0.12
        assert abs(t.loc[t["layer"] > 25, "pre_var"].mean() - 1.0) < 0.05
    # TAT's leaky relu shapes the correlation: from 0 at the input up to C_f(0) = 0.9 at layer 50.
    # Its length map is marginal (Q'(1) = 1 for a homogeneous activation), so a finite network's
    # variance does a random walk in log q (std ~ sqrt(2 L / width) ~ 0.9 here) around the predicted 1;
    # only the correlation is checked per layer.
    t = run_sim(tat_lrelu.activation, 0)
    c = 0.0  # the pre-activations of layer 50 have passed 49 nonlinearities: C^49(0)
    for _ in range(49):
        c = float(selfnorm.leaky_relu_cmap(c, tat_lrelu.parameters["slope"]))
    assert t["theory_corr"].iloc[-1] == pytest.approx(c, abs=2e-3)  # theory starts from the sampled inputs' correlation
    assert (t["corr"] - t["theory_corr"]).abs().max() < 0.08
    assert not t["disagree_in"].str.contains("corr").any()


# ----------------------------------------------------------------------------- the report section


def test_report_section_quick(tmp_path, monkeypatch):
    from propagate.io import read_table
    from propagate.report import section_selfnorm as sec

    tiny = {**sec.SETTINGS_QUICK, "width": 32, "samples": 64, "n_train": 256, "n_test": 128}
    monkeypatch.setattr(sec, "SETTINGS_QUICK", tiny)
    md = sec.section(tmp_path, {"quick": True, "seed": 0, "dataset": "mnist-5k"})
    assert "figures/selfnorm_depth50.png" in md and "figures/selfnorm_training.png" in md
    for name in ("selfnorm_depth50", "selfnorm_training"):
        assert (tmp_path / "figures" / f"{name}.png").stat().st_size > 0
        assert (tmp_path / "figures" / f"{name}.svg").exists()
    sim = read_table(tmp_path / "data" / "selfnorm_simulation.csv")
    hist = read_table(tmp_path / "data" / "selfnorm_training.csv")
    summ = read_table(tmp_path / "data" / "selfnorm_training_summary.csv")
    names = {"SELU", "self-normalized GELU", "TAT leaky ReLU", "GELU"}
    assert set(sim["config"]) == names and set(hist["config"]) == names and set(summ["config"]) == names
    # quick mode trains 2 seeds per network, each for every epoch; the per-seed table keeps them apart
    assert len(hist) == len(names) * 2 * tiny["epochs"]
    assert set(hist["seed"]) == {0, 1}
    assert (hist.groupby("config")["seed"].nunique() == 2).all()
    assert (summ["n_seeds"] == 2).all() and "N seeds" in md and "| 2 |" in md
    # final = each seed's last epoch; the summary is its mean and 95% t interval (t_{0.975,1} = 12.706, n = 2) on
    # the metric's scale: logit for accuracies, log for losses (the delta method: half width / g'(mean));
    # tolerances: the CSVs keep 10 significant digits
    final = hist[hist["epoch"] == tiny["epochs"]]
    scales = {"acc": (lambda m: math.log(m / (1 - m)), lambda m: m * (1 - m), lambda u: 1 / (1 + math.exp(-u))),
              "loss": (math.log, lambda m: m, math.exp)}
    for m in ("val_acc", "train_eval_acc", "val_loss", "loss"):
        g, slope, inverse = scales["acc" if m.endswith("acc") else "loss"]
        assert (summ[f"{m}_ci_low"] <= summ[f"{m}_mean"] + 1e-8).all()
        assert (summ[f"{m}_mean"] <= summ[f"{m}_ci_high"] + 1e-8).all()
        assert (summ[f"{m}_ci_low"] >= 0).all() and (m.endswith("loss") or (summ[f"{m}_ci_high"] <= 1).all())
        for _, r in summ.iterrows():
            v = final.loc[final["config"] == r["config"], m].to_numpy(float)
            assert r[f"{m}_mean"] == pytest.approx(v.mean(), rel=1e-8)
            if v.std() == 0:
                continue
            half = 12.7062047 * v.std(ddof=1) / math.sqrt(2) / slope(v.mean())
            assert r[f"{m}_ci_high"] == pytest.approx(inverse(g(v.mean()) + half), rel=1e-6, abs=1e-9)
    # each verdict follows from its interval and the test split's commonest-class frequency
    from propagate.data import load_dataset

    y = load_dataset("mnist-5k").y_test[: tiny["n_test"]]
    chance = np.bincount(y).max() / len(y)
    assert (summ["chance_acc"] == chance).all()
    for _, r in summ.iterrows():
        want = ("trains" if r["val_acc_ci_low"] > chance + 1e-9 else
                "does not train" if r["val_acc_ci_high"] <= chance + 1e-9 else "unresolved")
        assert r["verdict"] == want
    # every "X beats Y" in the text has a paired-difference interval above 0, and every such pair is stated
    import re

    stated = set(re.findall(r"(?:, |; )([^;,]+?) beats ([^;,]+?) by ", md))
    by = {n: final[final["config"] == n].set_index("seed")["val_acc"] for n in names}
    want = set()
    for a in names:
        for b in names - {a}:
            d = (by[a] - by[b]).to_numpy(float)  # paired differences of accuracies: atanh scale
            if d.std() > 0 and math.atanh(d.mean()) - 12.7062047 * d.std(ddof=1) / math.sqrt(2) / (1 - d.mean()**2) > 0:
                want.add((a, b))
    assert stated == want
    # plain GELU at LeCun init loses its variance (E[gelu(z)^2] < 1); the normalized three keep it
    last = sim[sim["layer"] == 50].set_index("config")
    assert last.loc["GELU", "theory_pre_var"] < 1e-10
    for n in ("SELU", "self-normalized GELU", "TAT leaky ReLU"):
        assert last.loc[n, "theory_pre_var"] == pytest.approx(1.0, abs=1e-9)


def test_report_section_training_claims_from_intervals():
    """Verdicts and "beats" come from t intervals over seeds (hand values: t_{0.975,2} = 4.302653), accuracies on the
    logit scale and their paired differences on the atanh scale (the delta method: half width / g'(mean))."""
    import pandas as pd

    from propagate.report import section_selfnorm as sec

    acc = {"A": [0.5, 0.6, 0.7], "B": [0.1, 0.1, 0.1], "C": [0.05, 0.5, 0.2]}
    finals = pd.DataFrame([{"lr": 1e-3, "config": n, "seed": s, "epoch": 3, "val_acc": v, "train_eval_acc": v,
                            "val_loss": 1.0, "loss": 1.0, "diverged": False}
                           for n, vals in acc.items() for s, v in enumerate(vals)])
    v = sec.training_verdicts(finals, chance=0.1)
    half_a = 4.302653 * 0.1 / math.sqrt(3)
    expit = lambda u: 1 / (1 + math.exp(-u))  # noqa: E731
    assert v[(1e-3, "A")][0] == "trains"
    assert v[(1e-3, "A")][1].low == pytest.approx(expit(math.log(0.6 / 0.4) - half_a / (0.6 * 0.4)), abs=1e-7)
    assert v[(1e-3, "B")][0] == "does not train"  # all three at exactly chance: a zero-width interval
    assert v[(1e-3, "C")][0] == "unresolved"  # mean 0.25, interval reaches below 0.1
    pairs = {(p["a"], p["b"]): p["diff"] for p in sec.training_comparisons(finals, ["B", "A", "C"])}
    assert set(pairs) == {("A", "B"), ("A", "C"), ("C", "B")}  # ordered so the first is ahead on average
    d = pairs[("A", "B")]  # differences 0.4, 0.5, 0.6
    assert d.mean == pytest.approx(0.5) and d.excludes(0.0)
    assert d.low == pytest.approx(math.tanh(math.atanh(0.5) - half_a / 0.75), abs=1e-7)
    assert not pairs[("C", "B")].excludes(0.0)  # differences -0.05, 0.4, 0.1
    text = sec._training_prose(finals, ["A", "B", "C"], (1e-3,), 0.1, 3)
    assert "A trains" in text and "B does not" in text and "for C the interval contains" in text
    assert "A beats B by 0.500 [0.215, 0.707]" in text and "C beats" not in text and "A beats C" not in text
    assert "tied within the interval: A and C (" in text and "C and B (0.150 [" in text
    one = finals[finals["seed"] == 0]  # one seed: no interval, so no claim at all
    assert set(v[0] for v in sec.training_verdicts(one, 0.1).values()) == {"unresolved"}
    text = sec._training_prose(one, ["A", "B", "C"], (1e-3,), 0.1, 1)
    assert "One seed per network" in text and "beats" not in text and "trains" not in text
    with pytest.raises(UserError, match="train seeds"):
        sec.section(Path("/nonexistent"), {"quick": True, "train_seeds": 0})
