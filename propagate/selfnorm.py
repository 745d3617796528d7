"""Self-normalizing constants for any activation: SELU's derivation, generalized.

SELU (Klambauer et al. 2017) is ``lambda * elu(x; alpha)`` with ``(lambda,
alpha)`` chosen so that ``(mean, var) = (0, 1)`` is an attracting fixed point of
the layer's moment map. This module asks the same question of any activation
``phi`` of :mod:`propagate.activations`, for the affine transform

    ``phi_hat(x) = gamma * (phi(a x + b) + d)``

(or a named two-parameter family: ``scale_alpha``, SELU's ``scale *
elu(x; alpha)``), and writes the derivation ``derivations/self-normalize.md``
(prose in ``propagate/templates/self_normalize.md``).

Conventions (those of :mod:`propagate.selu`): the moment map ``g: (mu, nu) ->
(mu~, nu~)`` sends a layer input's mean ``mu`` and **variance** ``nu`` to those
of ``y = phi_hat(z)``, with ``z ~ N(mu omega, nu tau)``; fixed points are solved
at normalized weights ``omega = 0``, ``tau = 1``, where ``z ~ N(0, nu)``. The
Jacobian's first column is then exactly 0, its eigenvalues are 0 and ``d
nu~/d nu``; the fixed point attracts when ``|d nu~/d nu| < 1``. At mean 0 this
is also the mean-field length-map slope of a network with ``sigma_w^2 = 1``
(LeCun init), so the same number says whether the per-layer variance of such a
network returns to ``var``.

Numbers are computed by mpmath at ``digits`` significant digits (15 guard
digits carried) with the Gaussian expectations of :mod:`propagate.gaussian`;
candidate roots are found in float64 (theory's quadrature) and then polished
by ``mpmath.findroot``. The DKS and TAT transforms live in
:mod:`propagate.transforms` (re-exported here under their old names).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import mpmath as mp
import numpy as np
from scipy import optimize

from propagate.activations import PARAMETER_RANGES, Activation, selu_constants, transformed_activation
from propagate.errors import UserError
from propagate.gaussian import (
    GUARD_DIGITS,
    MAX_DIGITS,
    PIECEWISE,
    SMOOTH_FORMS,
    BaseActivation,
    ShiftedActivation,
    base_activation,
    check_digits,
    exact,
)
from propagate.selu import PUBLISHED_ALPHA, PUBLISHED_LAMBDA, DigitsRecord, spectral_summary
from propagate.templates import render
from propagate.theory import snn_moment_map
from propagate.transforms import TransformResult, dks_transform, leaky_relu_cmap, tat_transform

__all__ = [
    "FAMILIES",
    "SHIFT_RANGE",
    "VAR_RANGE",
    "MEAN_LIMIT",
    "INPUT_SCALE_LIMIT",
    "SMOOTH_FORMS",
    "MAX_DIGITS",
    "SelfNormSolution",
    "SelfNormResult",
    "self_normalize",
    "iterate_moment_map",
    "attraction_check",
    "derivation_markdown",
    "DERIVATION_ACTIVATIONS",
    # moved to propagate.transforms; kept here for existing callers
    "TransformResult",
    "dks_transform",
    "tat_transform",
    "leaky_relu_cmap",
]

#: The two-parameter families beside ``affine``: name -> (base families, parameter names, description).
FAMILIES = {
    "affine": (None, ("gamma", "a", "b", "d"), "gamma * (phi(a x + b) + d); two of gamma, a, b, d are solved"),
    "scale_alpha": (("elu", "selu"), ("scale", "alpha"), "scale * elu(x; alpha), SELU's family"),
}
#: Where the shape parameter is searched for roots / contraction (float64 scan, then mpmath).
_RANGES = {"b": (-4.0, 4.0), "a": (0.05, 6.0), "alpha": (1e-3, 30.0)}
#: Where b is chosen for ("gamma", "d"): beyond it the input sits in phi's far tail (gelu, silu: gamma > 10).
SHIFT_RANGE = (-2.0, 3.0)
#: The fixed point's variance. Below 1e-6 the float64 scans that find the candidates lose the spread of
#: phi(a z + b) to rounding (relu: a complex square root); above 100 the input spreads over so much of phi
#: that the quadrature needs minutes (gelu at 200 digits: 77 s at var 100, measured on 2 busy cores).
VAR_RANGE = (1e-6, 1e2)
#: Largest |mean| of the fixed point: the output shift it needs is of that size, and |d| <= 1e6 (PARAMETER_RANGES).
MEAN_LIMIT = 1e6
#: Largest |a| sqrt(var), the standard deviation of the input a z: the quadrature's cost grows with it
#: (gelu, 30 digits: 5 s at 10, 15 s at 30, over a minute at 1000).
INPUT_SCALE_LIMIT = 10.0
_SCAN = 161


# --------------------------------------------------------------------------- #
# Results
# --------------------------------------------------------------------------- #


@dataclasses.dataclass
class SelfNormSolution(DigitsRecord):
    """One parameter set making ``(mean, var)`` a fixed point of the moment map.

    ``parameters`` maps names (``gamma, a, b, d`` or ``scale, alpha``) to mpmath
    numbers with guard digits; ``solved`` names the two that were solved for
    (the others were given, or chosen: ``chosen``). ``activation`` is the
    string to pass to ``--activation`` (float64 parameters). ``jacobian`` is the
    2x2 Jacobian of ``g: (mu, nu) -> (mu~, nu~)`` at ``omega = 0, tau = 1``
    (rows ``mu~, nu~``; columns ``d/dmu, d/dnu``); ``attracting`` when the
    spectral radius is below 1. ``chi_1 = E[phi_hat'(z)^2]``, ``z ~ N(0, var)``,
    is the slope of the correlation map at ``c = 1`` for ``sigma_w^2 = 1``
    (above 1: nearby inputs decorrelate with depth). ``residuals`` are ``mu~ -
    mean`` and ``nu~ - var`` at the solution.
    """

    base: str
    family: str
    mean: float
    var: float
    digits: int
    parameters: dict
    solved: tuple
    chosen: tuple
    activation: str
    jacobian: list
    eigenvalues: list
    spectral_radius: Any
    spectral_norm: Any
    attracting: bool
    chi_1: Any
    residuals: list
    method: str

    def to_dict(self) -> dict[str, Any]:
        """Every number as a string at ``digits`` digits (JSON-ready)."""
        f = self.fmt
        return {
            "activation": self.activation,
            "parameters": {k: f(v) for k, v in self.parameters.items()},
            "solved": list(self.solved),
            "chosen": list(self.chosen),
            **self.stability_dict(),
            "chi_1": f(self.chi_1),
            "method": self.method,
        }

    def __str__(self) -> str:
        ps = ", ".join(f"{k} = {self.fmt(v)}" for k, v in self.parameters.items())
        return (f"{self.base} ({self.family}) with fixed point (mean {self.mean}, var {self.var}): {ps}; "
                f"spectral norm {self.fmt(self.spectral_norm)}, {'attracting' if self.attracting else 'not attracting'}")


@dataclasses.dataclass
class SelfNormResult:
    """All solutions found, most contracting (smallest spectral norm) first; ``recommended`` is ``solutions[0]``."""

    base: str
    family: str
    mean: float
    var: float
    digits: int
    solutions: list
    notes: list

    @property
    def recommended(self) -> SelfNormSolution:
        return self.solutions[0]

    def to_dict(self) -> dict[str, Any]:
        rec = self.recommended.to_dict()
        return {
            "base": self.base,
            "family": self.family,
            "mean": repr(float(self.mean)),
            "var": repr(float(self.var)),
            "digits": self.digits,
            **rec,
            "solutions": [s.to_dict() for s in self.solutions],
            "notes": list(self.notes),
        }


# --------------------------------------------------------------------------- #
# The problem: which family, which parameters solved, which fixed
# --------------------------------------------------------------------------- #


def _validate(mean, var, digits) -> None:
    check_digits(digits)
    for name, v in (("mean", mean), ("var", var)):
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            raise UserError(f"{name} must be a finite number, got {v!r}")
    if not VAR_RANGE[0] <= var <= VAR_RANGE[1]:
        raise UserError(f"the variance must be from {VAR_RANGE[0]:g} to {VAR_RANGE[1]:g}, got {var:g} (below, "
                        f"float64 scans lose the spread to rounding; above, the quadrature takes minutes)")
    if abs(mean) > MEAN_LIMIT:
        raise UserError(f"the mean must be within +-{MEAN_LIMIT:g} (the output shift d's range), got {mean:g}")


def _check_fixed(name: str, value, var: float) -> None:
    """A fixed ``a``, ``b`` or ``d``: finite, in :data:`propagate.activations.PARAMETER_RANGES`, ``|a| sqrt(var)`` bounded."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise UserError(f"parameter {name}={value!r} is not a finite number")
    low, high, _ = PARAMETER_RANGES["@"][name]  # |value| bounds, as the activation string is read
    if not (low <= abs(value) <= high or (value == 0 and name != "a")):
        bounds = f"{low:g} <= |{name}| <= {high:g}" if low else f"|{name}| <= {high:g}"
        raise UserError(f"parameter {name} = {value:g} is outside its range {bounds}")
    if name == "a" and abs(value) * math.sqrt(var) > INPUT_SCALE_LIMIT:
        raise UserError(f"|a| sqrt(var) = {abs(value) * math.sqrt(var):.3g}: the input a x spreads over more than "
                        f"{INPUT_SCALE_LIMIT:g} of phi's scale and the quadrature would take minutes; use |a| <= "
                        f"{INPUT_SCALE_LIMIT / math.sqrt(var):.3g}")


def _family_of(base: BaseActivation, family: str | None) -> str:
    if family is None:
        return "scale_alpha" if base.family in ("elu", "selu") and base.name in ("elu", "selu") else "affine"
    if family not in FAMILIES:
        raise UserError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")
    allowed = FAMILIES[family][0]
    if allowed is not None and base.family not in allowed:
        raise UserError(f"family {family!r} needs an elu activation, got {base.name!r}")
    return family


def _elu(alpha) -> BaseActivation:
    return BaseActivation("elu", "elu", {"alpha": alpha}, (0.0,))


@dataclasses.dataclass(frozen=True)
class _Problem:
    """One request: base, family, the fixed point ``(mean, var)`` (as given), the two solved names, the fixed values."""

    base: BaseActivation
    family: str
    mean: float
    var: float
    digits: int
    solve: tuple
    fixed: dict

    @property
    def unknown(self) -> str:
        """The parameter solved beside the scale: ``alpha``, or one of ``d, b, a``."""
        return "alpha" if self.family == "scale_alpha" else next(s for s in self.solve if s != "gamma")

    @property
    def d_explicit(self) -> bool:
        """Solving for the output shift ``d``: explicit, one solution per input shift ``b``."""
        return self.family == "affine" and self.unknown == "d"

    def shape(self, t, num: Callable) -> ShiftedActivation:
        """``u`` with the unknown (``alpha``, ``b`` or ``a``) at ``t``; fixed values as ``num(value)`` (float or exact)."""
        if self.family == "scale_alpha":
            return ShiftedActivation(_elu(t), num(1), num(0))
        p = {"a": num(self.fixed.get("a", 1.0)), "b": num(self.fixed.get("b", 0.0)), self.unknown: t}
        return ShiftedActivation(self.base, p["a"], p["b"])

    def fixed_d(self, num: Callable):
        """The output shift when it is not solved (0 for ``scale_alpha``)."""
        return num(self.fixed.get("d", 0.0)) if self.family == "affine" else num(0)


def _problem(activation, family, mean, var, digits, solve, fixed) -> _Problem:
    """Check the family, the solved names and the fixed values (:class:`UserError` on any misuse)."""
    base = base_activation(activation)
    fam = _family_of(base, family)
    names = FAMILIES[fam][1]
    fixed = dict(fixed or {})
    for k, v in fixed.items():
        if k not in names:
            raise UserError(f"family {fam!r} has parameters {', '.join(names)}; got {k!r}")
        if k == "gamma":
            raise UserError("gamma (the output scale) is always solved; fix a, b or d")
        _check_fixed(k, v, var)
    if fam == "scale_alpha":
        if fixed:
            raise UserError("family 'scale_alpha' solves both scale and alpha; nothing can be fixed")
        if solve is not None:
            raise UserError("family 'scale_alpha' solves scale and alpha; --solve applies to the affine family")
        return _Problem(base, fam, mean, var, digits, ("scale", "alpha"), fixed)
    solve = tuple(solve or ("gamma", "d"))
    if len(solve) != 2 or len(set(solve)) != 2 or any(s not in names for s in solve):
        raise UserError(f"--solve needs two different names from {', '.join(names)}, got {','.join(solve)!r}")
    if "gamma" not in solve:
        raise UserError("--solve must include gamma (the output scale), e.g. gamma,d or gamma,b")
    clash = set(solve) & set(fixed)
    if clash:
        raise UserError(f"parameter {sorted(clash)[0]} is both solved and fixed")
    if fixed.get("a", 1.0) == 0:
        raise UserError("the input scale a must be non-zero")
    return _Problem(base, fam, mean, var, digits, solve, fixed)


# --------------------------------------------------------------------------- #
# Float64 candidates: input shifts at the most contracting points, or brackets of the shape parameter
# --------------------------------------------------------------------------- #


def _float_norm(u: ShiftedActivation, mean: float, var: float, d_free: bool, d: float) -> float:
    """Spectral norm of the Jacobian in float64 (for scans), with gamma (and d) solved."""
    e1, e2, d1, d2 = u.np_stats(var)
    sd = math.sqrt(max(e2 - e1 * e1, 1e-300))
    g = math.sqrt(var) / sd
    if d_free:
        d = mean / g - e1
    m = g * (e1 + d)
    j12 = g * d1
    j22 = g * g * (d2 + 2 * d * d1) - 2 * m * j12
    return float(np.linalg.norm([[0.0, j12], [0.0, j22]], 2))


def _scan_roots(R: Callable[[float], float], lo: float, hi: float, n: int = _SCAN) -> tuple[list, tuple]:
    """Brackets ``(t0, t1)`` where the float function ``R`` changes sign on a grid; also ``R``'s range."""
    ts = np.linspace(lo, hi, n)
    vals = np.array([R(t) for t in ts])
    ok = np.isfinite(vals)
    out = []
    for i in range(n - 1):
        if ok[i] and ok[i + 1] and vals[i] == 0:
            out.append((ts[i], ts[i]))
        elif ok[i] and ok[i + 1] and vals[i] * vals[i + 1] < 0:
            out.append((ts[i], ts[i + 1]))
    rng = (float(np.nanmin(vals[ok])), float(np.nanmax(vals[ok]))) if ok.any() else (math.nan, math.nan)
    return out, rng


def _found_interior(vals) -> bool:
    return any(vals[i] <= vals[i - 1] and vals[i] <= vals[i + 1] for i in range(1, len(vals) - 1))


def _auto_shift(base: BaseActivation, a, mean: float, var: float, lo: float, hi: float) -> list[float]:
    """Input shifts ``b`` at local minima of the Jacobian's spectral norm (gamma, d solved), rounded to 3 decimals."""
    def N(b):
        return _float_norm(ShiftedActivation(base, float(a), float(b)), mean, var, True, 0.0)

    bs = np.linspace(lo, hi, 81)
    vals = np.array([N(b) for b in bs])
    if not np.all(np.isfinite(vals)) or vals.max() - vals.min() < 1e-9:
        return [0.0]
    if not _found_interior(vals):
        # monotone over the range: take the better end
        return [round(float(bs[int(np.argmin(vals))]), 3)]
    found = []
    for i in range(1, len(bs) - 1):  # interior minima only: one at an end of the range is the range's choice
        if vals[i] <= vals[i - 1] and vals[i] <= vals[i + 1]:
            x0, x1 = bs[max(i - 1, 0)], bs[min(i + 1, len(bs) - 1)]
            r = optimize.minimize_scalar(N, bounds=(x0, x1), method="bounded", options={"xatol": 1e-5})
            found.append((float(r.fun), round(float(r.x), 3)))
    found.sort()
    out = []
    for _, b in found:
        if all(abs(b - c) > 1e-3 for c in out):
            out.append(b)
    return out[:4]


def _shifts(p: _Problem, shift_range) -> tuple[list, tuple, list]:
    """``(shifts, chosen, notes)``: the given ``b``, or those :func:`_auto_shift` chooses over ``shift_range``."""
    if "b" in p.fixed:
        return [p.fixed["b"]], (), []
    lo, hi = shift_range
    a = p.fixed.get("a", 1.0)
    note = ("b (input shift) chosen at the local minima of the Jacobian's spectral norm over b in "
            f"[{lo:g}, {hi:g}] with a = {a:g}, rounded to 3 decimals")
    return _auto_shift(p.base, a, float(p.mean), float(p.var), lo, hi), ("b",), [note]


def _brackets(p: _Problem) -> list[tuple]:
    """Sign changes of the ratio equation ``(E[u] + d)/sd(u) = mean/sqrt(var)`` over the unknown's range (float64)."""
    lo, hi = _RANGES[p.unknown]
    nu_f = float(p.var)
    rho = float(p.mean) / math.sqrt(nu_f)
    dfix = p.fixed_d(float)

    def R(t):
        e1, e2, _, _ = p.shape(t, float).np_stats(nu_f)
        v = e2 - e1 * e1
        return (e1 + dfix) / math.sqrt(v) - rho if v > 0 else math.nan

    brackets, rng = _scan_roots(R, lo, hi)
    if not brackets:
        what = "scale * elu(x; alpha)" if p.family == "scale_alpha" else f"gamma * ({p.base.name}(a x + b) + d)"
        raise UserError(
            f"{what} cannot reach mean {p.mean:g}, var {p.var:g}: (E[u] + d)/sd(u) - mean/sqrt(var) stays in "
            f"[{rng[0]:.4g}, {rng[1]:.4g}] for {p.unknown} in [{lo:g}, {hi:g}]"
        )
    return brackets


# --------------------------------------------------------------------------- #
# Exact (mpmath) parameters and what they give
# --------------------------------------------------------------------------- #


def _scale(var, e1, e2):
    """``gamma > 0`` with ``gamma^2 Var(u) = var``."""
    return mp.sqrt(var) / mp.sqrt(e2 - e1 * e1)


def _params_at_shift(p: _Problem, b) -> dict:
    """``gamma, a, b, d`` with ``d`` explicit: ``gamma (E[u] + d) = mean`` (working precision)."""
    mu, nu = exact(p.mean), exact(p.var)
    a, b = exact(p.fixed.get("a", 1.0)), exact(b)
    e1, e2 = ShiftedActivation(p.base, a, b).mp_moments(nu)
    gamma = _scale(nu, e1, e2)
    return {"gamma": gamma, "a": a, "b": b, "d": mu / gamma - e1}


def _params_at_root(p: _Problem, bracket) -> dict:
    """The shape parameter polished from a float64 ``bracket`` by ``mpmath.findroot``, then the scale."""
    mu, nu = exact(p.mean), exact(p.var)
    dfix = p.fixed_d(exact)

    def F(t):
        e1, e2 = p.shape(t, exact).mp_moments(nu)
        return (e1 + dfix) / mp.sqrt(e2 - e1 * e1) - mu / mp.sqrt(nu)

    t0, t1 = bracket
    if t0 == t1:
        t = exact(t0)
    else:
        # bracketed first (a sign change is a root), then secant; mpmath's default
        # tolerance stops at steps below ~1e3 eps of the working precision
        t = mp.findroot(F, (exact(t0), exact(t1)), solver="anderson", maxsteps=200, verify=False)
        t = mp.findroot(F, t, solver="secant", maxsteps=50)
    e1, e2 = p.shape(t, exact).mp_moments(nu)
    gamma = _scale(nu, e1, e2)
    if p.family == "scale_alpha":
        return {"scale": gamma, "alpha": t}
    params = {"gamma": gamma, "a": exact(p.fixed.get("a", 1.0)), "b": exact(p.fixed.get("b", 0.0)), "d": dfix}
    params[p.unknown] = t
    return params


def _activation_string(family: str, base: BaseActivation, params: dict) -> str:
    if family == "scale_alpha":
        lam, alpha = float(params["scale"]), float(params["alpha"])
        if (lam, alpha) == selu_constants():
            return "selu"
        return f"selu:lambda={lam!r},alpha={alpha!r}"
    vals = {k: float(params[k]) for k in ("gamma", "a", "b", "d")}
    try:
        return transformed_activation(base.name, **vals).name
    except UserError as exc:  # e.g. phi(a x + b) has (almost) no spread there, so gamma is huge or infinite
        shown = ", ".join(f"{k}={v:.4g}" for k, v in vals.items())
        raise UserError(f"the solution for {base.name} ({shown}) is outside what an activation may hold "
                        f"({exc}); try another --b, --mean or --var") from None


def _unscaled(family: str, base: BaseActivation, params: dict) -> ShiftedActivation:
    """``u`` with ``phi_hat = scale * (u + d)``: ``phi(a x + b)`` or ``elu(x; alpha)``."""
    if family == "scale_alpha":
        return ShiftedActivation(_elu(params["alpha"]), 1, 0)
    return ShiftedActivation(base, params["a"], params["b"])


def _solution(p: _Problem, params: dict, chosen: tuple) -> SelfNormSolution:
    """Evaluate the Jacobian, spectral quantities, chi_1 and residuals at ``params`` (working precision)."""
    mu, nu = exact(p.mean), exact(p.var)
    sc = params["scale"] if p.family == "scale_alpha" else params["gamma"]
    d = params.get("d", mp.mpf(0))
    u = _unscaled(p.family, p.base, params)
    e1, e2 = u.mp_moments(nu)
    d1, d2 = u.mp_moment_slopes(nu)
    m_out = sc * (e1 + d)
    s_out = sc * sc * (e2 + 2 * d * e1 + d * d)
    j12 = sc * d1
    j22 = sc * sc * (d2 + 2 * d * d1) - 2 * m_out * j12
    # an entry that vanishes by symmetry (tanh at b = 0) is guard-digit noise
    j12, j22 = (mp.mpf(0) if abs(x) < mp.mpf(10) ** (-(p.digits + 3)) else x for x in (j12, j22))
    J = mp.matrix([[0, j12], [0, j22]])
    eig, radius, norm = spectral_summary(J)
    g1 = u.mp_expect(lambda z, f0, f1, f2: f1 * f1, nu)
    return SelfNormSolution(
        base=p.base.name, family=p.family, mean=p.mean, var=p.var, digits=p.digits, parameters=dict(params),
        solved=tuple(p.solve), chosen=tuple(chosen), activation=_activation_string(p.family, p.base, params),
        jacobian=[[J[i, j] for j in range(2)] for i in range(2)], eigenvalues=eig, spectral_radius=radius,
        spectral_norm=norm, attracting=bool(radius < 1), chi_1=sc * sc * u.a * u.a * g1,
        residuals=[m_out - mu, s_out - m_out**2 - nu],
        method="closed form" if u.base.family in PIECEWISE else "mpmath quadrature",
    )


def _without_noise(params: dict, digits: int) -> dict:
    """A parameter that vanishes by symmetry (tanh's d) comes out as guard-digit noise: make it 0."""
    return {k: (mp.mpf(0) if abs(v) < mp.mpf(10) ** (-(digits + 3)) else v) for k, v in params.items()}


def self_normalize(
    activation: str | Activation,
    *,
    family: str | None = None,
    mean: float = 0.0,
    var: float = 1.0,
    digits: int = 30,
    solve: Sequence[str] | None = None,
    fixed: dict | None = None,
    shift_range: tuple[float, float] = SHIFT_RANGE,
) -> SelfNormResult:
    """Parameters that make ``(mean, var)`` a fixed point of the moment map of ``activation``.

    ``family="affine"`` (default, except elu/selu): ``phi_hat(x) = gamma *
    (phi(a x + b) + d)``; ``solve`` names two parameters solved for, one of them
    ``gamma`` (default ``("gamma", "d")``); the others come from ``fixed``
    (defaults ``a = 1, b = 0, d = 0``). With ``("gamma", "d")`` and no ``b`` in
    ``fixed``, ``b`` is chosen: every local minimum of the Jacobian's spectral
    norm over ``b`` in ``shift_range`` (default [-2, 3]; rounded to 3 decimals)
    gives a solution.
    ``family="scale_alpha"`` (default for elu and selu): ``scale * elu(x;
    alpha)``, SELU's family, both solved.

    ``mean`` and ``var`` (a variance) are the fixed point, ``digits`` the
    significant digits wanted: ``var`` in :data:`VAR_RANGE`, ``|mean|`` at most
    :data:`MEAN_LIMIT`, fixed ``a, b, d`` in the ranges of
    :data:`propagate.activations.PARAMETER_RANGES` with ``|a| sqrt(var)`` at most
    :data:`INPUT_SCALE_LIMIT` (beyond them the answer loses its digits or takes
    minutes). Returns every solution found, most contracting first. Raises
    :class:`UserError` (one line, before any work where the arguments are at
    fault) when the family cannot reach the point, for an unknown family or
    parameter, a value outside its range, ``solve`` with ``scale_alpha``, or an
    activation without an arbitrary-precision form.
    """
    _validate(mean, var, digits)
    p = _problem(activation, family, mean, var, digits, solve, fixed)
    if p.d_explicit:
        shifts, chosen, notes = _shifts(p, shift_range)
    else:
        brackets, chosen, notes = _brackets(p), (), []
    with mp.workdps(digits + GUARD_DIGITS):
        if p.d_explicit:
            candidates = [_params_at_shift(p, b) for b in shifts]
        else:
            candidates = [_params_at_root(p, br) for br in brackets]
        solutions = [_solution(p, _without_noise(params, digits), chosen) for params in candidates]
    solutions.sort(key=lambda s: s.spectral_norm)
    if len(solutions) > 1:
        notes.append(f"{len(solutions)} solutions; the first (smallest spectral norm) is recommended")
    if not solutions[0].attracting:
        notes.append("no solution found attracts (spectral radius >= 1)")
    return SelfNormResult(base=p.base.name, family=p.family, mean=mean, var=var, digits=digits, solutions=solutions,
                          notes=notes)


def iterate_moment_map(activation, mean: float, var: float, steps: int = 50) -> list[tuple[float, float]]:
    """Iterate ``g: (mu, nu) -> (mu~, nu~)`` (omega = 0, tau = 1) in float64 from ``(mean, var)``.

    Uses :func:`propagate.theory.snn_moment_map` (theory's closed forms or
    quadrature, independent of the mpmath solver). Returns the ``steps + 1``
    points visited; ``var`` is a variance.
    """
    path = [(float(mean), float(var))]
    mu, nu = path[0]
    for _ in range(int(steps)):
        mu, nu = snn_moment_map(activation, mu, nu)
        path.append((mu, nu))
        if not (math.isfinite(mu) and math.isfinite(nu)) or nu <= 0 or nu > 1e12:
            break
    return path


def attraction_check(activation, mean: float = 0.0, var: float = 1.0, *, steps: int = 80,
                     offsets: Sequence[tuple[float, float]] = ((0.1, 0.3), (-0.1, -0.3), (0.05, -0.5), (-0.05, 1.0))) -> dict:
    """Iterate the moment map from points near ``(mean, var)`` and report where they end.

    Each start is ``(mean + dm, var * (1 + dv))`` for ``(dm, dv)`` in
    ``offsets``. Returns ``starts``, ``final`` (last point), ``distance`` (the
    largest final distance from ``(mean, var)``), ``rate`` (the per-step
    shrink factor of the variance error over the last tenth of the steps,
    which approaches the spectral radius) and ``converges`` (distance below 1e-6).
    """
    starts, finals, rates = [], [], []
    for dm, dv in offsets:
        st = (float(mean) + dm, float(var) * (1 + dv))
        path = iterate_moment_map(activation, st[0], st[1], steps)
        starts.append(st)
        finals.append(path[-1])
        errs = [abs(p[1] - var) for p in path]
        k = max(1, len(errs) // 10)
        tail = [e for e in errs[-k - 1:] if e > 1e-13]
        if len(tail) >= 2:
            rates.append((tail[-1] / tail[0]) ** (1 / (len(tail) - 1)))
    dist = max(math.hypot(f[0] - mean, f[1] - var) if all(map(math.isfinite, f)) else math.inf for f in finals)
    rate = max(rates) if rates else 0.0
    return {"starts": starts, "final": finals, "distance": dist, "rate": rate, "converges": bool(dist < 1e-6), "steps": steps}


# --------------------------------------------------------------------------- #
# The derivation document
# --------------------------------------------------------------------------- #


#: Activations tabulated in ``derivations/self-normalize.md``.
DERIVATION_ACTIVATIONS = ("gelu", "silu", "tanh", "softplus", "relu")
#: The depth the derivation's DKS/TAT table is solved for.
DERIVATION_DEPTH = 50


def _activation_rows(digits: int) -> str:
    """Section 5's table rows: every solution of each of :data:`DERIVATION_ACTIVATIONS` at mean 0, variance 1."""
    def f(x):
        return mp.nstr(x, 10)

    rows = []
    for name in DERIVATION_ACTIVATIONS:
        for i, sol in enumerate(self_normalize(name, digits=digits).solutions):
            p = sol.parameters
            rows.append(
                f"| {name}{'' if i == 0 else ' (alt.)'} | {f(p['gamma'])} | {mp.nstr(p['b'], 4)} | {f(p['d'])} | "
                f"{f(sol.jacobian[1][1])} | {f(sol.spectral_norm)} | {f(sol.chi_1)} | {'yes' if sol.attracting else 'no'} |"
            )
    return "\n".join(rows)


def _transform_rows(depth: int, digits: int) -> str:
    """Section 6's table rows: DKS of GELU, TAT of leaky ReLU and of GELU at the papers' defaults."""
    rows = []
    for res in (dks_transform("gelu", depth, digits=digits), tat_transform("leaky_relu", depth, digits=digits),
                tat_transform("gelu", depth, digits=digits)):
        ps = ", ".join(f"{k} = {mp.nstr(v, 10)}" for k, v in res.parameters.items())
        ach = ", ".join(f"{k} = {mp.nstr(v, 10)}" for k, v in res.achieved.items())
        rows.append(f"| {res.method.upper()} | {res.base} | {ps} | {ach} |")
    return "\n".join(rows)


def derivation_markdown(digits: int = 30, table_digits: int = 16) -> str:
    """``derivations/self-normalize.md``: the general derivation, SELU as its special case, DKS and TAT.

    The prose is the template ``propagate/templates/self_normalize.md``; every
    number is computed here: SELU's constants at ``digits`` digits, the other
    tables at ``table_digits``. Deterministic, so a test compares it with the
    committed file (``propagate derive self-normalize``).
    """
    selu = self_normalize("elu", digits=digits).recommended
    n = selu.fmt
    return render("self_normalize.md", {
        "digits": digits,
        "table_digits": table_digits,
        "shift_range": f"[{SHIFT_RANGE[0]:g}, {SHIFT_RANGE[1]:g}]",
        "lambda": n(selu.parameters["scale"]),
        "alpha": n(selu.parameters["alpha"]),
        "published_lambda": PUBLISHED_LAMBDA,
        "published_alpha": PUBLISHED_ALPHA,
        "jacobian": r" \\ ".join(" & ".join(n(v) for v in row) for row in selu.jacobian),
        "spectral_norm": n(selu.spectral_norm),
        "chi_1": mp.nstr(selu.chi_1, 8),
        "activation_rows": _activation_rows(table_digits),
        "depth": DERIVATION_DEPTH,
        "transform_rows": _transform_rows(DERIVATION_DEPTH, table_digits),
    })
