"""SELU from first principles: moment maps, fixed point, Jacobian, alpha dropout.

Conventions (those of Klambauer et al. 2017, "Self-Normalizing Neural Networks"):

- ``selu(z) = lambda * z`` for ``z > 0`` and ``lambda * alpha * (exp(z) - 1)`` for
  ``z <= 0``; we accept only ``lambda > 0`` and ``alpha > 0`` (the SELU family).
- A layer's inputs ``x_i`` have mean ``mu`` and **variance** ``nu`` (not a standard
  deviation). With weights of sum ``omega = sum_i w_i`` and sum of squares
  ``tau = sum_i w_i**2``, the pre-activation ``z = sum_i w_i x_i`` is taken as
  normal ``N(mu*omega, nu*tau)`` (central limit theorem), again mean and variance.
- The moment maps are ``mu~ = E[selu(z)]`` and ``nu~ = Var[selu(z)] =
  E[selu(z)**2] - mu~**2``; ``g: (mu, nu) -> (mu~, nu~)``.
- A fixed point ``(mu*, nu*)`` is solved at ``omega = 0, tau = 1`` (normalized
  weights), where ``z ~ N(0, nu*)`` whatever ``mu*`` is.

The maps are built by sympy from the Gaussian integrals (nothing below types in
the published closed forms); the numbers come from mpmath at any precision.

Which fixed points exist (derived in :func:`derivation_markdown`): at
``omega = 0`` the mean map is ``lambda * M(alpha)`` and the second moment
``lambda**2 * S(alpha)`` with ``M`` linear and ``S`` quadratic in ``alpha``.
Eliminating ``lambda`` leaves ``r(alpha) = M**2 / S = mu*^2 / (nu* + mu*^2)``;
``r`` falls from ``1/pi`` at ``alpha = 0`` to ``0`` at ``alpha0 = -M0/M1``
and rises towards ``r_inf = M1**2 / S2`` as ``alpha -> inf`` (``M = M0 + M1*alpha``,
``S = S0 + S2*alpha**2``). So every
``(0, nu*)`` with ``nu* > 0`` is feasible, a positive mean needs
``mu*^2 / (nu* + mu*^2) < 1/pi`` (``mu* < sqrt(nu*/(pi-1))``), a negative mean
needs ``mu*^2 / (nu* + mu*^2) < r_inf(nu*)``, and the solution is then unique.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

from propagate.errors import UserError
from propagate.limits import check_mc_samples, check_stability_grid
from propagate.templates import render

__all__ = [
    "PUBLISHED_LAMBDA",
    "PUBLISHED_ALPHA",
    "PAPER_JACOBIAN",
    "THEOREM1_BOX",
    "SeluSolution",
    "selu_moment_maps",
    "fixed_point_maps",
    "feasibility_bounds",
    "closed_forms",
    "solve_selu",
    "jacobian",
    "jacobian_entries",
    "spectral_summary",
    "stability_box",
    "alpha_dropout_formulas",
    "alpha_dropout_params",
    "monte_carlo_check",
    "derivation_markdown",
]

#: Klambauer et al. (2017), eq. (14): the SELU constants for the fixed point (0, 1).
PUBLISHED_LAMBDA = "1.0507009873554804934193349852946"
PUBLISHED_ALPHA = "1.6732632423543772848170429916717"
#: Klambauer et al. (2017), eq. (20): Jacobian of g at (mu, nu) = (0, 1), omega = 0, tau = 1.
PAPER_JACOBIAN = ((0.0, 0.088834), (0.0, 0.782648))
#: Klambauer et al. (2017), Theorem 1: the domain on which g is shown to be contracting.
THEOREM1_BOX = {"mu": (-0.1, 0.1), "omega": (-0.1, 0.1), "nu": (0.8, 1.5), "tau": (0.95, 1.1)}

#: Extra decimal digits carried while solving, dropped when results are reported.
_GUARD_DIGITS = 15
MAX_DIGITS = 2000
#: Fixed-point variances :func:`solve_selu` answers for. Below 1e-12 the moment integrals cancel to a
#: share of ``var`` that needs more working digits than the guard carries; above 1e12 sympy's exact
#: elimination meets ``exp(var/2)`` factors beyond its numeric checks (1e15 finds no root, 1e308 overflows).
VAR_RANGE = (1e-12, 1e12)


# --------------------------------------------------------------------------- #
# Symbolic moment maps
# --------------------------------------------------------------------------- #


@functools.lru_cache(maxsize=None)
def _symbols():
    """The symbols of the maps: mu, omega (real), nu, tau, lambda, alpha (positive)."""
    import sympy as sp

    mu, omega = sp.symbols("mu omega", real=True)
    nu, tau, lam, alpha = sp.symbols("nu tau lambda alpha", positive=True)
    return mu, omega, nu, tau, lam, alpha


@functools.lru_cache(maxsize=None)
def standard_normal_integrals():
    """Half-line integrals of the standard normal density ``phi``, done by sympy.

    Returns ``(a, c, tails, lower_exp)``: ``tails[k] = int_a^inf x**k phi(x) dx``
    for ``k = 0, 1, 2`` and ``lower_exp = int_-inf^a exp(c x) phi(x) dx``, all in
    the generic symbols ``a`` (a bound) and ``c`` (a rate). Every expectation of
    SELU over a Gaussian reduces to these after ``z = m + s x``; integrating them
    once with generic symbols is several times faster than integrating each
    SELU piece against ``N(m, s**2)`` directly.
    """
    import sympy as sp

    x, u, a, b, c = sp.symbols("x u a b c", real=True)
    phi = sp.exp(-(x**2) / 2) / sp.sqrt(2 * sp.pi)
    tails = {k: sp.expand(sp.integrate(x**k * phi, (x, a, sp.oo), conds="none")) for k in (0, 1, 2)}
    # Complete the square: x = c - u turns exp(c x) phi(x) into exp(c**2/2) phi(u),
    # and x in (-inf, a] into u in [c - a, inf).
    shifted = sp.powsimp(sp.expand((sp.exp(c * x) * phi).subs(x, c - u)))
    lower_exp = sp.integrate(shifted, (u, b, sp.oo), conds="none").subs(b, c - a)
    return a, c, tails, sp.powsimp(lower_exp)


@functools.lru_cache(maxsize=None)
def gaussian_selu_pieces():
    """Expectations of the SELU pieces for ``z ~ N(m, s**2)`` (mean m, standard deviation s).

    Returns ``(m, s, pieces)`` with ``pieces`` keyed ``"E[z; z>0]"``,
    ``"E[z^2; z>0]"``, ``"P(z<=0)"``, ``"E[e^z; z<=0]"``, ``"E[e^2z; z<=0]"``
    (``E[f; A]`` is ``E[f 1_A]``).
    """
    import sympy as sp

    a, c, tails, lower_exp = standard_normal_integrals()
    m = sp.Symbol("m", real=True)
    s = sp.Symbol("s", positive=True)
    cut = -m / s  # z > 0  <=>  x > -m/s
    t0, t1, t2 = (tails[k].subs(a, cut) for k in (0, 1, 2))

    def lower(rate):  # E[e^{rate z}; z <= 0] = e^{rate m} E[e^{rate s x}; x <= -m/s]
        return sp.powsimp(sp.exp(rate * m) * lower_exp.subs({a: cut, c: rate * s}))

    pieces = {
        "E[z; z>0]": sp.expand(m * t0 + s * t1),
        "E[z^2; z>0]": sp.expand(m**2 * t0 + 2 * m * s * t1 + s**2 * t2),
        "P(z<=0)": sp.expand(1 - t0),
        "E[e^z; z<=0]": lower(1),
        "E[e^2z; z<=0]": lower(2),
    }
    return m, s, pieces


def _tidy(expr):
    """Cheap cosmetic simplification: erf -> erfc, merged exponentials (no sp.simplify: slow)."""
    import sympy as sp

    expr = expr.rewrite(sp.erfc)
    return sp.powsimp(sp.expand(expr), combine="exp")


@functools.lru_cache(maxsize=None)
def selu_moment_maps():
    """SELU's mean and variance maps as sympy expressions.

    Returns a dict with the symbols ``mu, omega, nu, tau, lambda, alpha`` and
    ``mean`` (``mu~``), ``second_moment`` (``E[selu(z)**2]``) and ``variance``
    (``nu~ = second_moment - mean**2``) for ``z ~ N(mu*omega, nu*tau)``.
    """
    import sympy as sp

    mu, omega, nu, tau, lam, alpha = _symbols()
    m, s, p = gaussian_selu_pieces()
    at = {m: mu * omega, s: sp.sqrt(nu * tau)}
    neg_mean = p["E[e^z; z<=0]"] - p["P(z<=0)"]  # E[e^z - 1; z <= 0]
    neg_second = p["E[e^2z; z<=0]"] - 2 * p["E[e^z; z<=0]"] + p["P(z<=0)"]  # E[(e^z - 1)^2; z <= 0]
    mean = _tidy((lam * (p["E[z; z>0]"] + alpha * neg_mean)).subs(at))
    second = _tidy((lam**2 * (p["E[z^2; z>0]"] + alpha**2 * neg_second)).subs(at))
    return {
        "mu": mu,
        "omega": omega,
        "nu": nu,
        "tau": tau,
        "lambda": lam,
        "alpha": alpha,
        "mean": mean,
        "second_moment": second,
        "variance": second - mean**2,
    }


@functools.lru_cache(maxsize=None)
def fixed_point_maps():
    """The maps at ``omega = 0, tau = 1`` split as ``mean = lambda*M(alpha)``, ``E[y^2] = lambda^2*S(alpha)``.

    Returns a dict with ``M`` and ``S`` (expressions in ``nu`` and ``alpha``) and
    the coefficients ``M0, M1`` (``M = M0 + M1*alpha``) and ``S0, S1, S2``.
    ``S1`` is 0: the positive and negative SELU pieces never overlap.
    """
    import sympy as sp

    maps = selu_moment_maps()
    lam, alpha = maps["lambda"], maps["alpha"]
    at = {maps["omega"]: 0, maps["tau"]: 1}
    M = sp.expand(maps["mean"].subs(at) / lam)
    S = sp.expand(maps["second_moment"].subs(at) / lam**2)
    M1, M0 = (sp.expand(t) for t in sp.Poly(M, alpha).all_coeffs())
    S2, S1, S0 = (sp.expand(t) for t in sp.Poly(S, alpha).all_coeffs())
    return {"nu": maps["nu"], "alpha": alpha, "M": M, "S": S, "M0": M0, "M1": M1, "S0": S0, "S1": S1, "S2": S2}


# --------------------------------------------------------------------------- #
# Feasibility and closed forms
# --------------------------------------------------------------------------- #


def _exact(value):
    """A float or decimal string as an exact sympy Rational (0.1 -> 1/10)."""
    import sympy as sp

    return sp.Rational(str(value))


@functools.lru_cache(maxsize=None)
def _coefficient_functions():
    """mpmath callables ``nu -> (M0, M1, S0, S1, S2)`` of :func:`fixed_point_maps`."""
    import sympy as sp

    f = fixed_point_maps()
    return sp.lambdify([f["nu"]], [f[k] for k in ("M0", "M1", "S0", "S1", "S2")], "mpmath")


def feasibility_bounds(var) -> dict[str, Any]:
    """Bounds on ``rho = mean**2 / (var + mean**2)`` for a SELU fixed point with variance ``var``.

    Returns mpmath numbers ``positive`` (= 1/pi; a positive mean needs
    ``rho < positive``) and ``negative`` (a negative mean needs ``rho <
    negative``), plus ``alpha0``, the alpha of the zero-mean fixed point.
    """
    import mpmath as mp

    M0, M1, S0, _, S2 = _coefficient_functions()(mp.mpf(var))
    return {"positive": M0**2 / S0, "negative": M1**2 / S2, "alpha0": -M0 / M1}


def _check_feasible(mean, var) -> None:
    import mpmath as mp

    if not var > 0:
        raise UserError(f"the variance must be > 0, got {var}")
    if mean == 0:
        return
    bounds = feasibility_bounds(var)
    rho = mp.mpf(mean) ** 2 / (mp.mpf(var) + mp.mpf(mean) ** 2)
    if mean > 0 and rho >= bounds["positive"]:
        limit = mp.sqrt(mp.mpf(var) / (mp.pi - 1))
        raise UserError(
            f"no SELU has this fixed point (mean {mean}, var {var}): with lambda > 0 and alpha > 0 "
            f"a positive mean needs mean < sqrt(var/(pi-1)) = {mp.nstr(limit, 6)}"
        )
    if mean < 0 and rho >= bounds["negative"]:
        r = bounds["negative"]
        limit = -mp.sqrt(mp.mpf(var) * r / (1 - r))
        raise UserError(
            f"no SELU has this fixed point (mean {mean}, var {var}): with lambda > 0 and alpha > 0 "
            f"a negative mean at this variance needs mean > {mp.nstr(limit, 6)}"
        )


def _numeric_root(mean, var):
    """``(root, lambda, alpha)`` from the reduced equations in mpmath at the working precision.

    ``root`` is +1 or -1: which sign of the square root in the quadratic formula
    gives ``alpha > 0`` with ``M(alpha)`` of the mean's sign (0 when mean = 0).
    """
    import mpmath as mp

    mu, nu = mp.mpf(repr(float(mean))), mp.mpf(repr(float(var)))
    M0, M1, S0, S1, S2 = _coefficient_functions()(nu)
    second = nu + mu**2
    if mu == 0:
        alpha, root = -M0 / M1, 0
    else:
        c2 = second * M1**2 - mu**2 * S2
        c1 = 2 * second * M0 * M1 - mu**2 * S1
        c0 = second * M0**2 - mu**2 * S0
        disc = mp.sqrt(c1**2 - 4 * c2 * c0)
        ok = [(sign, (-c1 + sign * disc) / (2 * c2)) for sign in (1, -1)]
        ok = [(sign, a) for sign, a in ok if a > 0 and mp.sign(M0 + M1 * a) == mp.sign(mu)]
        if len(ok) != 1:  # pragma: no cover - excluded by _check_feasible
            raise UserError(f"no SELU has this fixed point (mean {mean}, var {var})")
        root, alpha = ok[0]
    lam = mp.sqrt(second / (S0 + S1 * alpha + S2 * alpha**2))
    return root, lam, alpha


def closed_forms(mean=0, var=1):
    """Closed forms of ``(lambda, alpha)`` for the fixed point ``(mean, var)``, found by sympy.

    Eliminates ``lambda`` (``lambda*M(alpha) = mean``, ``lambda**2*S(alpha) =
    var + mean**2``) and solves the remaining equation in ``alpha`` (linear for
    ``mean = 0``, quadratic otherwise). Returns ``(lambda_expr, alpha_expr)``,
    exact sympy expressions; raises :class:`UserError` if no SELU has this fixed point.
    """
    import mpmath as mp
    import sympy as sp

    _check_feasible(mean, var)
    f = fixed_point_maps()
    mu, nu = _exact(mean), _exact(var)
    alpha = f["alpha"]
    M = f["M"].subs(f["nu"], nu)
    S = f["S"].subs(f["nu"], nu)
    second = nu + mu**2
    if mu == 0:
        (alpha_expr,) = sp.solve(M, alpha)
        return sp.together(sp.sqrt(second / S.subs(alpha, alpha_expr))), alpha_expr
    with mp.workdps(30):
        root, _, _ = _numeric_root(mean, var)
    # second*M**2 - mu**2*S = c2 alpha**2 + c1 alpha + c0; the quadratic formula is instant where
    # sp.solve and assumption queries on these coefficients take seconds, so nothing is evaluated.
    c2, c1, c0 = sp.Poly(sp.expand(second * M**2 - mu**2 * S), alpha).all_coeffs()
    disc = sp.Pow(c1**2 - 4 * c2 * c0, sp.Rational(1, 2), evaluate=False)
    alpha_expr = (-c1 + root * disc) / (2 * c2)
    lam_expr = sp.Pow(second / S.subs(alpha, alpha_expr), sp.Rational(1, 2), evaluate=False)
    return lam_expr, alpha_expr


# --------------------------------------------------------------------------- #
# Numeric solution and Jacobian
# --------------------------------------------------------------------------- #


@functools.lru_cache(maxsize=None)
def _mp_functions():
    """mpmath callables: the maps and their Jacobian in (mu, nu) and in (lambda, alpha)."""
    import sympy as sp

    maps = selu_moment_maps()
    args = [maps[k] for k in ("mu", "omega", "nu", "tau", "lambda", "alpha")]
    mean, var = maps["mean"], maps["variance"]
    g = sp.lambdify(args, [mean, var], modules="mpmath")
    jac_mn = sp.lambdify(args, [[sp.diff(e, v) for v in (maps["mu"], maps["nu"])] for e in (mean, var)], "mpmath")
    jac_la = sp.lambdify(
        args, [[sp.diff(e, v) for v in (maps["lambda"], maps["alpha"])] for e in (mean, var)], "mpmath"
    )
    return g, jac_mn, jac_la


@functools.lru_cache(maxsize=None)
def jacobian_entries():
    """The Jacobian of ``g: (mu, nu) -> (mu~, nu~)`` as a 2x2 nested list of sympy expressions."""
    import sympy as sp

    maps = selu_moment_maps()
    return [[sp.diff(maps[e], maps[v]) for v in ("mu", "nu")] for e in ("mean", "variance")]


def jacobian(mu, omega, nu, tau, lambda_, alpha, digits=30):
    """The Jacobian of ``g`` at ``(mu, omega, nu, tau)`` for SELU ``(lambda_, alpha)``.

    ``nu`` and ``tau`` are a variance and a sum of squared weights. Returns an
    ``mpmath.matrix`` (rows: ``mu~, nu~``; columns: ``d/dmu, d/dnu``).
    """
    import mpmath as mp

    _, jac_mn, _ = _mp_functions()
    with mp.workdps(digits + _GUARD_DIGITS):
        vals = [mp.mpf(v) for v in (mu, omega, nu, tau, lambda_, alpha)]
        return mp.matrix(jac_mn(*vals))


def spectral_summary(J):
    """Eigenvalues (real where the imaginary part is round-off; by modulus), spectral radius and
    spectral norm (largest singular value) of an mpmath matrix (used by ``propagate.selfnorm`` too)."""
    import mpmath as mp

    eig = mp.eig(J, left=False, right=False)
    eig = [mp.re(e) if abs(mp.im(e)) <= mp.eps * 10 * (1 + abs(e)) else e for e in eig]
    eig = sorted(eig, key=lambda e: (abs(e), mp.re(e)))
    singular = mp.svd_r(J, compute_uv=False)
    return eig, max(abs(e) for e in eig), max(singular[i] for i in range(singular.rows))


def format_digits(x, digits: int) -> str:
    """``x`` with ``digits`` significant digits, never in exponent form; ``"0"`` for zero."""
    import mpmath as mp

    return mp.nstr(x, digits, min_fixed=-mp.inf, max_fixed=mp.inf) if x != 0 else "0"


class DigitsRecord:
    """What every solved record (SELU's, any activation's, a DKS/TAT transform) shares: its numbers as
    strings at ``self.digits`` significant digits, and the fixed point's stability fields (``jacobian``,
    ``eigenvalues``, ``spectral_radius``, ``spectral_norm``, ``attracting``, ``residuals``) as JSON-ready
    strings where the record has them."""

    def fmt(self, x) -> str:
        """``x`` with ``digits`` significant digits."""
        return format_digits(x, self.digits)

    @staticmethod
    def fmt_small(x) -> str:
        """A residual, 3 significant digits."""
        import mpmath as mp

        return mp.nstr(x, 3)

    def stability_dict(self) -> dict[str, Any]:
        """The stability fields, every number a string (see the class docstring)."""
        f = self.fmt
        return {"jacobian": [[f(x) for x in row] for row in self.jacobian],
                "eigenvalues": [f(e) for e in self.eigenvalues],
                "spectral_radius": f(self.spectral_radius), "spectral_norm": f(self.spectral_norm),
                "attracting": self.attracting, "residuals": [self.fmt_small(r) for r in self.residuals]}


@dataclasses.dataclass
class SeluSolution(DigitsRecord):
    """The SELU whose moment map has ``(mean, var)`` as fixed point (at omega = 0, tau = 1).

    ``var`` is a variance. Numbers are mpmath ``mpf`` carried with guard digits;
    :meth:`to_dict` gives them as strings with ``digits`` significant digits.
    ``jacobian`` is the 2x2 Jacobian of ``g: (mu, nu) -> (mu~, nu~)`` as a nested
    list (rows ``mu~, nu~``; columns ``d/dmu, d/dnu``). ``attracting`` is True when
    the spectral radius is below 1 (the paper's Theorem 1 uses the spectral norm,
    which bounds it, so both are reported). ``residuals`` are ``mu~ - mean`` and
    ``nu~ - var`` at the solution.
    """

    mean: float
    var: float
    digits: int
    lambda_: Any
    alpha: Any
    closed_form_lambda: Any
    closed_form_alpha: Any
    jacobian: list
    eigenvalues: list
    spectral_radius: Any
    spectral_norm: Any
    attracting: bool
    residuals: list

    def to_dict(self) -> dict[str, Any]:
        """Every number as a string at full precision (JSON-ready)."""
        f = self.fmt
        return {
            "mean": repr(self.mean),
            "var": repr(self.var),
            "digits": self.digits,
            "lambda": f(self.lambda_),
            "alpha": f(self.alpha),
            "closed_form_lambda": str(self.closed_form_lambda),
            "closed_form_alpha": str(self.closed_form_alpha),
            **self.stability_dict(),
        }

    def __str__(self) -> str:
        # mpf's own str() uses mpmath's global precision (15 digits); show the solved digits
        f = self.fmt
        return (f"SELU with fixed point (mean {self.mean}, var {self.var}): lambda = {f(self.lambda_)}, "
                f"alpha = {f(self.alpha)}; Jacobian spectral norm {f(self.spectral_norm)}, "
                f"{'attracting' if self.attracting else 'not attracting'}")


def _validate(mean, var, digits) -> None:
    import math

    if not isinstance(digits, int) or isinstance(digits, bool) or not 1 <= digits <= MAX_DIGITS:
        raise UserError(f"digits must be a whole number from 1 to {MAX_DIGITS}, got {digits!r}")
    for name, v in (("mean", mean), ("var", var)):
        if not isinstance(v, (int, float)) or not math.isfinite(v):
            raise UserError(f"{name} must be a finite number, got {v!r}")
    if not VAR_RANGE[0] <= var <= VAR_RANGE[1]:
        raise UserError(f"the variance must be from {VAR_RANGE[0]:g} to {VAR_RANGE[1]:g}, got {var:g}")


def solve_selu(mean=0, var=1, digits=30) -> SeluSolution:
    """Solve ``mu~(mean, var) = mean``, ``nu~(mean, var) = var`` at omega = 0, tau = 1.

    ``var`` is the fixed point's variance (not a standard deviation), ``digits``
    the number of significant decimal digits wanted (mpmath; 15 guard digits are
    carried). The start comes from the sympy closed form, the root from
    ``mpmath.findroot`` on the unreduced moment equations. Raises
    :class:`UserError` ("no SELU has this fixed point ...") when no
    ``lambda > 0, alpha > 0`` exists.
    """
    import mpmath as mp

    _validate(mean, var, digits)
    lam_expr, alpha_expr = closed_forms(mean, var)
    g, jac_mn, jac_la = _mp_functions()
    # a small variance cancels about log10(1/var) digits in the moments: carry them too
    with mp.workdps(digits + _GUARD_DIGITS + max(0, math.ceil(-math.log10(var)))):
        mu, nu = mp.mpf(repr(float(mean))), mp.mpf(repr(float(var)))
        _, lam0, alpha0 = _numeric_root(mean, var)
        start = (lam0, alpha0)

        def equations(lam, alpha):
            m, v = g(mu, 0, nu, 1, lam, alpha)
            return [m - mu, v - nu]

        lam, alpha = mp.findroot(
            equations, start, J=lambda lam, alpha: jac_la(mu, 0, nu, 1, lam, alpha), tol=mp.mpf(10) ** (-2 * digits - 20)
        )
        residuals = equations(lam, alpha)
        J = mp.matrix(jac_mn(mu, 0, nu, 1, lam, alpha))
        eig, radius, norm = spectral_summary(J)
    return SeluSolution(
        mean=mean,
        var=var,
        digits=digits,
        lambda_=lam,
        alpha=alpha,
        closed_form_lambda=lam_expr,
        closed_form_alpha=alpha_expr,
        jacobian=[[J[i, j] for j in range(2)] for i in range(2)],
        eigenvalues=eig,
        spectral_radius=radius,
        spectral_norm=norm,
        attracting=bool(radius < 1),
        residuals=residuals,
    )


# --------------------------------------------------------------------------- #
# Stability over a box
# --------------------------------------------------------------------------- #


@functools.lru_cache(maxsize=None)
def _np_jacobian():
    """numpy/scipy callable ``J(mu, omega, nu, tau, lambda, alpha) -> 2x2 list`` (broadcasts)."""
    import sympy as sp

    maps = selu_moment_maps()
    args = [maps[k] for k in ("mu", "omega", "nu", "tau", "lambda", "alpha")]
    return sp.lambdify(args, jacobian_entries(), modules=["scipy", "numpy"])


def _spectral_norm_2x2(J):
    """Largest singular value of 2x2 matrices given as nested lists of (broadcast) arrays."""
    import numpy as np

    (a, b), (c, d) = (np.broadcast_arrays(*row) for row in J)
    fro2 = a * a + b * b + c * c + d * d
    det = a * d - b * c
    return np.sqrt((fro2 + np.sqrt(np.maximum(fro2 * fro2 - 4 * det * det, 0.0))) / 2)


def stability_box(lambda_, alpha, box=None, grid=11, refine=8) -> dict[str, Any]:
    """Largest spectral norm of the Jacobian of ``g`` over a box of ``(mu, omega, nu, tau)``.

    ``box`` maps each of ``mu, omega, nu, tau`` to ``(low, high)`` (default: the
    SNN paper's Theorem 1 box, :data:`THEOREM1_BOX`; ``nu`` is a variance). Evaluates
    a ``grid**4`` lattice (float64), then refines the ``refine`` best points with
    bounded L-BFGS-B. Returns ``max_spectral_norm``, ``argmax`` (dict of the four
    coordinates), ``grid_max``, ``min_spectral_norm`` (over the grid) and the box.
    """
    import numpy as np
    from scipy.optimize import minimize

    box = dict(THEOREM1_BOX if box is None else box)
    names = ("mu", "omega", "nu", "tau")
    for k in names:
        lo, hi = box[k]
        if not lo <= hi:
            raise UserError(f"empty {k} range: {lo} > {hi}")
    if (box["nu"][0] <= 0) or (box["tau"][0] <= 0):
        raise UserError("nu and tau ranges must be > 0 (a variance and a sum of squares)")

    check_stability_grid(grid)  # before the grid**4 lattice is allocated
    f = _np_jacobian()
    lam, alp = float(lambda_), float(alpha)
    axes = [np.linspace(*box[k], grid) for k in names]
    mesh = np.meshgrid(*axes, indexing="ij")
    norms = _spectral_norm_2x2(f(*mesh, lam, alp)).ravel()
    best = np.argsort(norms)[::-1][:refine]
    points = np.stack([m.ravel() for m in mesh], axis=1)

    def neg_norm(p):
        return -float(_spectral_norm_2x2(f(*p, lam, alp)))

    bounds = [box[k] for k in names]
    top_value, top_point = float(norms[best[0]]), points[best[0]]
    for i in best:
        res = minimize(neg_norm, points[i], method="L-BFGS-B", bounds=bounds)
        if -res.fun > top_value:
            top_value, top_point = float(-res.fun), res.x
    return {
        "max_spectral_norm": top_value,
        "argmax": {k: float(v) for k, v in zip(names, top_point)},
        "grid_max": float(norms[best[0]]),
        "min_spectral_norm": float(norms.min()),
        "grid": grid,
        "box": {k: tuple(map(float, box[k])) for k in names},
    }


# --------------------------------------------------------------------------- #
# Alpha dropout
# --------------------------------------------------------------------------- #


@functools.lru_cache(maxsize=None)
def alpha_dropout_formulas():
    """Affine correction ``a, b`` of alpha dropout for a general fixed point, by sympy.

    Alpha dropout keeps a unit with probability ``q`` and otherwise sets it to
    ``alpha' = -lambda*alpha`` (SELU's limit for z -> -inf), then applies
    ``y -> a*y + b``. For inputs of mean ``mu`` and variance ``nu``, ``a`` and ``b``
    restore mean ``mu`` and variance ``nu``. Returns a dict of sympy expressions
    (symbols ``q, alpha', mu, nu``) for the mean and variance before the affine
    map and for ``a`` and ``b``.
    """
    import sympy as sp

    q = sp.Symbol("q", positive=True)
    ap = sp.Symbol("alpha'", real=True)
    mu = sp.Symbol("mu", real=True)
    nu = sp.Symbol("nu", positive=True)
    mean = q * mu + (1 - q) * ap  # E[d x + (1-d) alpha'], d ~ Bernoulli(q) independent of x
    second = q * (nu + mu**2) + (1 - q) * ap**2
    var = q * (nu + (1 - q) * (mu - ap) ** 2)
    # sympy checks the tidy form against the definition E[y^2] - E[y]^2
    assert sp.expand(second - mean**2 - var) == 0
    a = sp.sqrt(nu) / sp.sqrt(var)
    b = mu - a * mean
    return {"q": q, "alpha_prime": ap, "mu": mu, "nu": nu, "mean": mean, "variance": var, "a": a, "b": b}


def alpha_dropout_params(rate, lambda_, alpha, mean=0, var=1, digits=30) -> dict[str, Any]:
    """Alpha-dropout constants for SELU ``(lambda_, alpha)`` at fixed point ``(mean, var)``.

    ``rate`` is the drop probability (keep probability ``q = 1 - rate``), ``var`` a
    variance. Returns mpmath numbers ``alpha_prime = -lambda*alpha``, ``a``, ``b``
    and ``q``. For ``(0, 1)`` these equal the paper's ``a = (q + alpha'^2 q (1-q))^(-1/2)``,
    ``b = -a (1-q) alpha'``.
    """
    import mpmath as mp
    import sympy as sp

    if not 0 <= rate < 1:
        raise UserError(f"the dropout rate must be in [0, 1), got {rate}")
    f = alpha_dropout_formulas()
    with mp.workdps(digits + _GUARD_DIGITS):
        q = 1 - mp.mpf(repr(float(rate)))
        ap = -mp.mpf(lambda_) * mp.mpf(alpha)
        vals = {f["q"]: q, f["alpha_prime"]: ap, f["mu"]: mp.mpf(repr(float(mean))), f["nu"]: mp.mpf(repr(float(var)))}
        a_fn = sp.lambdify(list(vals), f["a"], "mpmath")
        b_fn = sp.lambdify(list(vals), f["b"], "mpmath")
        a, b = a_fn(*vals.values()), b_fn(*vals.values())
    return {"rate": rate, "q": q, "alpha_prime": ap, "a": a, "b": b}


# --------------------------------------------------------------------------- #
# Monte Carlo
# --------------------------------------------------------------------------- #


def monte_carlo_check(lambda_, alpha, mean=0, var=1, samples=1_000_000, seed=0) -> dict[str, Any]:
    """Push Gaussian pre-activations through SELU and compare with the fixed point.

    At the fixed point with omega = 0 and tau = 1 the pre-activation is
    ``z ~ N(mean*omega, var*tau) = N(0, var)`` (``var`` a variance); for the default
    ``(0, 1)`` that is the fixed-point input itself. Draws ``samples`` values in
    float64 (numpy, ``seed``) and returns the measured mean and variance of
    ``selu(z)``, their standard errors (the variance's from the fourth central
    moment: ``sqrt((m4 - var**2)/n)``) and z-scores against ``(mean, var)``.
    """
    import numpy as np

    if samples < 2:
        raise UserError(f"need at least 2 samples, got {samples}")

    check_mc_samples(samples)
    lam, alp = float(lambda_), float(alpha)
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, np.sqrt(float(var)), size=samples)
    y = np.where(z > 0, lam * z, lam * alp * np.expm1(np.minimum(z, 0.0)))
    m = y.mean()
    d = y - m
    v = np.mean(d * d) * samples / (samples - 1)
    m4 = np.mean(d**4)
    se_mean = np.sqrt(v / samples)
    se_var = np.sqrt(max(m4 - v * v, 0.0) / samples)
    return {
        "samples": samples,
        "seed": seed,
        "mean": float(m),
        "mean_se": float(se_mean),
        "mean_z": float((m - float(mean)) / se_mean),
        "var": float(v),
        "var_se": float(se_var),
        "var_z": float((v - float(var)) / se_var),
        "target_mean": float(mean),
        "target_var": float(var),
    }


# --------------------------------------------------------------------------- #
# The derivation as a document
# --------------------------------------------------------------------------- #


def _tex(expr) -> str:
    import sympy as sp

    ap = alpha_dropout_formulas()["alpha_prime"]
    return sp.latex(expr, symbol_names={ap: r"\alpha'"})


def _block(tex: str) -> str:
    """Display math for GitHub: ``$$`` on lines of their own."""
    return f"$$\n{tex}\n$$"


#: How each SELU piece of :func:`gaussian_selu_pieces` is written in the derivation.
_PIECE_TEX = {
    "E[z; z>0]": r"\mathbb{E}[z\,;\,z>0]",
    "E[z^2; z>0]": r"\mathbb{E}[z^2\,;\,z>0]",
    "P(z<=0)": r"P(z\le 0)",
    "E[e^z; z<=0]": r"\mathbb{E}[e^{z}\,;\,z\le 0]",
    "E[e^2z; z<=0]": r"\mathbb{E}[e^{2z}\,;\,z\le 0]",
}


def _integral_formulas() -> dict[str, str]:
    """Section 2: the standard-normal half-line integrals and the SELU pieces, as LaTeX."""
    _, _, tails, lower_exp = standard_normal_integrals()
    _, _, pieces = gaussian_selu_pieces()
    return {
        "tail_integrals": "\n\n".join(
            _block(rf"\int_{{a}}^{{\infty}} x^{{{k}}} \varphi(x)\,dx = {_tex(tails[k])}") for k in (0, 1, 2)),
        "lower_exp": _tex(lower_exp),
        "selu_pieces": "\n\n".join(_block(rf"{_PIECE_TEX[key]} = {_tex(expr)}") for key, expr in pieces.items()),
    }


def _moment_map_formulas() -> dict[str, str]:
    """Sections 3-4: the moment maps and their fixed-point reduction ``M``, ``S``, as LaTeX."""
    maps = selu_moment_maps()
    fp = fixed_point_maps()
    return {"mean_map": _tex(maps["mean"]), "second_moment_map": _tex(maps["second_moment"]),
            "M": _tex(fp["M"]), "S": _tex(fp["S"])}


def _solution_numbers(sol: SeluSolution, digits: int) -> dict[str, str]:
    """Section 4: closed forms and the numerical (lambda, alpha) next to the published constants."""
    return {"digits": digits, "closed_form_alpha": _tex(sol.closed_form_alpha),
            "closed_form_lambda": _tex(sol.closed_form_lambda), "lambda": sol.fmt(sol.lambda_),
            "alpha": sol.fmt(sol.alpha), "published_lambda": PUBLISHED_LAMBDA, "published_alpha": PUBLISHED_ALPHA}


def _feasibility_numbers() -> dict[str, str]:
    """Section 5: the bound on a negative fixed-point mean at unit variance."""
    import mpmath as mp

    with mp.workdps(30):
        r_inf = feasibility_bounds(1)["negative"]
    return {"r_inf": mp.nstr(r_inf, 10), "mu_min": mp.nstr(-mp.sqrt(r_inf / (1 - r_inf)), 6)}


def _stability_numbers(sol: SeluSolution) -> dict[str, str]:
    """Section 6: Jacobian, eigenvalues, spectral norm and the worst point of the theorem's box."""
    n = sol.fmt
    J = sol.jacobian
    box = stability_box(sol.lambda_, sol.alpha)
    arg = box["argmax"]
    return {
        "jacobian_rows": " & ".join(n(v) for v in J[0]) + r" \\ " + " & ".join(n(v) for v in J[1]),
        "eigenvalues": ", ".join("$" + n(e) + "$" for e in sol.eigenvalues),
        "spectral_radius": n(sol.spectral_radius),
        "spectral_norm": n(sol.spectral_norm),
        "box_grid": box["grid"],
        "box_max_norm": f"{box['max_spectral_norm']:.4f}",
        **{f"box_{k}": f"{arg[k]:.4g}" for k in ("mu", "omega", "nu", "tau")},
    }


def _alpha_dropout_values(sol: SeluSolution, digits: int) -> dict[str, str]:
    """Section 7: the alpha-dropout affine map in general, at (0, 1), and at rate 0.05 for this SELU."""
    dro = alpha_dropout_formulas()
    at01 = {dro["mu"]: 0, dro["nu"]: 1}
    d05 = alpha_dropout_params(0.05, sol.lambda_, sol.alpha, digits=digits)
    return {
        "dropout_mean": _tex(dro["mean"]), "dropout_var": _tex(dro["variance"]),
        "dropout_a": _tex(dro["a"]), "dropout_b": _tex(dro["b"]),
        "dropout_a01": _tex(dro["a"].subs(at01)), "dropout_b01": _tex(dro["b"].subs(at01)),
        "alpha_prime": sol.fmt(d05["alpha_prime"]), "dropout05_a": sol.fmt(d05["a"]),
        "dropout05_b": sol.fmt(d05["b"]),
    }


def derivation_markdown(digits: int = 30) -> str:
    """``derivations/selu.md``: the derivation step by step, math rendered by GitHub.

    The prose is the template ``propagate/templates/selu_derivation.md``; every
    formula in it is produced by the code above (``sympy.latex``) and every
    number by :func:`solve_selu` at ``digits`` digits. Deterministic (no dates,
    no timings), so a test can compare it with the committed file.
    """

    sol = solve_selu(0, 1, digits)
    values = {**_integral_formulas(), **_moment_map_formulas(), **_solution_numbers(sol, digits),
              **_feasibility_numbers(), **_stability_numbers(sol), **_alpha_dropout_values(sol, digits)}
    return render("selu_derivation.md", values)
