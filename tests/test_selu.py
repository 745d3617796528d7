"""Library tests for propagate.selu: constants, closed forms, Jacobian, dropout, Monte Carlo."""

from __future__ import annotations

from pathlib import Path

import mpmath as mp
import pytest

from propagate import selu
from propagate.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sol01():
    return selu.solve_selu(0, 1, digits=30)


def _digits_agree(x, published: str, digits: int) -> bool:
    with mp.workdps(digits + 20):
        return mp.nstr(mp.mpf(x), digits) == mp.nstr(mp.mpf(published), digits)


def test_published_constants_to_30_digits(sol01):
    assert _digits_agree(sol01.lambda_, selu.PUBLISHED_LAMBDA, 30)
    assert _digits_agree(sol01.alpha, selu.PUBLISHED_ALPHA, 30)
    assert sol01.to_dict()["lambda"] == "1.05070098735548049341933498529"
    assert sol01.to_dict()["alpha"] == "1.67326324235437728481704299167"


def test_100_digits_agree_with_30_and_with_published(sol01):
    s100 = selu.solve_selu(0, 1, digits=100)
    assert _digits_agree(s100.lambda_, selu.PUBLISHED_LAMBDA, 32)
    assert _digits_agree(s100.alpha, selu.PUBLISHED_ALPHA, 32)
    assert mp.nstr(s100.lambda_, 30) == mp.nstr(sol01.lambda_, 30)
    assert mp.nstr(s100.alpha, 30) == mp.nstr(sol01.alpha, 30)
    with mp.workdps(110):
        assert all(abs(r) < mp.mpf(10) ** -100 for r in s100.residuals)


def test_closed_forms_match_numeric_solution(sol01):
    with mp.workdps(50):
        assert abs(mp.mpf(sol01.closed_form_alpha.evalf(45)) - sol01.alpha) < mp.mpf(10) ** -40
        assert abs(mp.mpf(sol01.closed_form_lambda.evalf(45)) - sol01.lambda_) < mp.mpf(10) ** -40
    text = str(sol01.closed_form_alpha)
    assert "erfc" in text and "pi" in text


def test_moment_maps_are_built_from_integrals_in_erfc_and_exp():
    maps = selu.selu_moment_maps()
    import sympy as sp

    assert maps["mean"].has(sp.erfc) and maps["mean"].has(sp.exp)
    # mean map at the published constants is 0 and the variance 1 (omega = 0, tau = 1)
    at = {maps["mu"]: 0, maps["omega"]: 0, maps["nu"]: 1, maps["tau"]: 1}
    lam, alpha = sp.Float(selu.PUBLISHED_LAMBDA, 40), sp.Float(selu.PUBLISHED_ALPHA, 40)
    at.update({maps["lambda"]: lam, maps["alpha"]: alpha})
    assert abs(maps["mean"].subs(at).evalf(35)) < 1e-30
    assert abs(maps["variance"].subs(at).evalf(35) - 1) < 1e-30


def test_moment_maps_match_quadrature_off_the_fixed_point():
    """mu~ and nu~ at a generic (mu, omega, nu, tau) agree with numerical integration."""
    maps = selu.selu_moment_maps()
    mu, omega, nu, tau, lam, alpha = 0.7, 0.4, 1.3, 0.9, 1.2, 1.5
    m, s = mu * omega, mp.sqrt(nu * tau)

    def f(z, power):
        y = lam * z if z > 0 else lam * alpha * (mp.exp(z) - 1)
        return y**power * mp.npdf(z, m, s)

    e1 = mp.quad(lambda z: f(z, 1), [-mp.inf, 0, mp.inf])
    e2 = mp.quad(lambda z: f(z, 2), [-mp.inf, 0, mp.inf])
    at = dict(zip([maps[k] for k in ("mu", "omega", "nu", "tau", "lambda", "alpha")], (mu, omega, nu, tau, lam, alpha)))
    assert abs(float(maps["mean"].subs(at)) - float(e1)) < 1e-12
    assert abs(float(maps["variance"].subs(at)) - float(e2 - e1**2)) < 1e-12


def test_torch_selu_constants_agree_to_float64(sol01):
    torch = pytest.importorskip("torch")
    x = torch.tensor([1.0, 2.5, -1000.0], dtype=torch.float64)
    y = torch.nn.functional.selu(x)
    lam_torch = (y[1] / x[1]).item()
    alpha_torch = -y[2].item() / lam_torch
    assert lam_torch == pytest.approx(float(sol01.lambda_), rel=4e-16, abs=0)
    assert y[0].item() == pytest.approx(float(sol01.lambda_), rel=4e-16, abs=0)
    assert alpha_torch == pytest.approx(float(sol01.alpha), rel=4e-16, abs=0)


def test_jacobian_matches_paper(sol01):
    for i in range(2):
        for j in range(2):
            # the paper truncates to 6 decimals (0.0888347... is printed 0.088834)
            assert float(sol01.jacobian[i][j]) == pytest.approx(selu.PAPER_JACOBIAN[i][j], abs=1e-6)
    assert round(float(sol01.spectral_norm), 4) == 0.7877
    assert sol01.attracting
    assert float(sol01.spectral_radius) == pytest.approx(float(sol01.jacobian[1][1]), rel=1e-12)


def test_jacobian_function_agrees_with_finite_differences(sol01):
    J = selu.jacobian(0.05, 0.08, 1.1, 1.02, sol01.lambda_, sol01.alpha, digits=20)
    g, _, _ = selu._mp_functions()
    h = mp.mpf("1e-12")
    with mp.workdps(40):
        for j, (dm, dn) in enumerate(((h, 0), (0, h))):
            hi = g(0.05 + dm, 0.08, 1.1 + dn, 1.02, sol01.lambda_, sol01.alpha)
            lo = g(0.05 - dm, 0.08, 1.1 - dn, 1.02, sol01.lambda_, sol01.alpha)
            for i in range(2):
                assert abs((hi[i] - lo[i]) / (2 * h) - J[i, j]) < 1e-10


def test_other_fixed_point_satisfies_its_equations():
    s = selu.solve_selu(0, 2, digits=40)
    g, _, _ = selu._mp_functions()
    with mp.workdps(60):
        mean, var = g(0, 0, 2, 1, s.lambda_, s.alpha)
        assert abs(mean) < mp.mpf(10) ** -45
        assert abs(var - 2) < mp.mpf(10) ** -45


@pytest.mark.parametrize("mean,var", [(0.3, 1.0), (-0.3, 1.0), (0.5, 3.0)])
def test_nonzero_mean_fixed_points(mean, var):
    s = selu.solve_selu(mean, var, digits=30)
    assert s.lambda_ > 0 and s.alpha > 0
    g, _, _ = selu._mp_functions()
    with mp.workdps(50):
        # the solver reads 0.3 as the decimal 0.3, not the nearest binary float
        mu, nu = mp.mpf(repr(mean)), mp.mpf(repr(var))
        m, v = g(mu, 0, nu, 1, s.lambda_, s.alpha)
        assert abs(m - mu) < 1e-35 and abs(v - nu) < 1e-35
        assert abs(mp.mpf(s.closed_form_alpha.evalf(40)) - s.alpha) < 1e-30


def test_feasibility_boundary():
    b = selu.feasibility_bounds(1.0)
    assert float(b["positive"]) == pytest.approx(1 / mp.pi, rel=1e-14)
    limit = float(mp.sqrt(1 / (mp.pi - 1)))
    selu.solve_selu(limit * 0.999, 1)
    with pytest.raises(UserError, match="no SELU has this fixed point"):
        selu.solve_selu(limit * 1.001, 1)
    with pytest.raises(UserError, match="no SELU has this fixed point"):
        selu.solve_selu(5, 1)
    with pytest.raises(UserError, match="no SELU has this fixed point"):
        selu.solve_selu(-2, 1)


@pytest.mark.parametrize("kwargs", [{"var": 0}, {"var": -1}, {"digits": 0}, {"mean": float("nan")}])
def test_bad_input_raises_user_error(kwargs):
    with pytest.raises(UserError):
        selu.solve_selu(**kwargs)


def test_dropout_matches_paper_formula(sol01):
    rate = 0.1
    d = selu.alpha_dropout_params(rate, sol01.lambda_, sol01.alpha)
    with mp.workdps(45):
        q, ap = 1 - mp.mpf("0.1"), -sol01.lambda_ * sol01.alpha
        a = (q + ap**2 * q * (1 - q)) ** mp.mpf(-0.5)
        b = -a * (1 - q) * ap
        assert abs(d["alpha_prime"] - ap) < 1e-28
        assert abs(d["a"] - a) < 1e-28 and abs(d["b"] - b) < 1e-28


def test_dropout_keeps_general_fixed_point():
    d = selu.alpha_dropout_params(0.2, 1.1, 1.7, mean=0.3, var=2.0)
    q, ap, a, b = d["q"], d["alpha_prime"], d["a"], d["b"]
    with mp.workdps(45):
        mu, nu = mp.mpf("0.3"), mp.mpf(2)
        mean = q * mu + (1 - q) * ap
        var = q * (nu + mu**2) + (1 - q) * ap**2 - mean**2
        assert abs(a * mean + b - mu) < 1e-25
        assert abs(a**2 * var - nu) < 1e-25


def test_dropout_agrees_with_torch_alpha_dropout(sol01):
    torch = pytest.importorskip("torch")
    rate = 0.05
    d = selu.alpha_dropout_params(rate, sol01.lambda_, sol01.alpha)
    drop = torch.nn.AlphaDropout(rate).train()
    torch.manual_seed(0)
    # constants: outputs for x = 0 are b (kept) or a*alpha' + b (dropped); x = 1 gives a + b when kept
    zeros = torch.unique(drop(torch.zeros(10_000, dtype=torch.float64)))
    ones = torch.unique(drop(torch.ones(10_000, dtype=torch.float64)))
    a, b, ap = float(d["a"]), float(d["b"]), float(d["alpha_prime"])
    assert sorted(zeros.tolist()) == pytest.approx(sorted([a * ap + b, b]), rel=1e-14)
    assert sorted(ones.tolist()) == pytest.approx(sorted([a * ap + b, a + b]), rel=1e-14)
    # moments: SELU outputs at the fixed point keep mean 0, variance 1 through alpha dropout
    z = torch.randn(1_000_000, dtype=torch.float64)
    y = drop(torch.nn.functional.selu(z))
    assert abs(y.mean().item()) < 4 * (1 / 1000)
    assert abs(y.var().item() - 1) < 4 * 0.0015


def test_monte_carlo_within_four_standard_errors(sol01):
    check = selu.monte_carlo_check(sol01.lambda_, sol01.alpha, samples=1_000_000, seed=0)
    assert abs(check["mean_z"]) < 4 and abs(check["var_z"]) < 4
    assert 0.0009 < check["mean_se"] < 0.0011


def test_monte_carlo_other_fixed_point():
    s = selu.solve_selu(0.3, 1.5)
    check = selu.monte_carlo_check(s.lambda_, s.alpha, 0.3, 1.5, samples=400_000, seed=1)
    assert abs(check["mean_z"]) < 4 and abs(check["var_z"]) < 4


def test_stability_box_theorem1(sol01):
    box = selu.stability_box(sol01.lambda_, sol01.alpha, grid=7, refine=4)
    assert box["max_spectral_norm"] < 1
    assert box["max_spectral_norm"] >= box["grid_max"] > float(sol01.spectral_norm)
    for k, v in box["argmax"].items():
        lo, hi = selu.THEOREM1_BOX[k]
        assert lo <= v <= hi
    # refinement of a coarse grid reaches the same corner maximum as the default grid
    assert box["max_spectral_norm"] == pytest.approx(0.8976083584, abs=1e-6)


def test_stability_box_bad_ranges(sol01):
    with pytest.raises(UserError):
        selu.stability_box(sol01.lambda_, sol01.alpha, box={**selu.THEOREM1_BOX, "nu": (-1.0, 1.0)})


def test_derivation_file_is_up_to_date():
    committed = (ROOT / "derivations" / "selu.md").read_text()
    assert selu.derivation_markdown() == committed, "regenerate: propagate derive selu > derivations/selu.md"


def test_derivation_is_github_friendly():
    md = selu.derivation_markdown()
    assert "\\begin{align}" not in md
    for line in md.splitlines():
        if "$$" in line:
            assert line.strip() == "$$"
    assert md.count("$$") % 2 == 0
