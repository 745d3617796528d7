"""Self-normalizing constants for any activation, and DKS/TAT activation transforms.

SELU (Klambauer et al. 2017) is ``lambda * elu(x; alpha)`` with ``(lambda,
alpha)`` chosen so that ``(mean, var) = (0, 1)`` is an attracting fixed point of
the layer's moment map. This module asks the same question of any activation
``phi`` of :mod:`propagate.activations`, for the affine transform

    ``phi_hat(x) = gamma * (phi(a x + b) + d)``

(or a named two-parameter family: ``scale_alpha``, SELU's ``scale *
elu(x; alpha)``), and builds the transforms of Deep Kernel Shaping (Martens et
al. 2021, "Rapid training of deep neural networks without skip connections or
normalization layers using Deep Kernel Shaping") and Tailored Activation
Transformations (Zhang et al. 2022, "Deep Learning without Shortcuts: Shaping
the Kernel with Tailored Rectifiers").

Conventions (those of :mod:`propagate.selu`):

- The moment map ``g: (mu, nu) -> (mu~, nu~)`` sends a layer input's mean ``mu``
  and **variance** ``nu`` to those of ``y = phi_hat(z)``, with ``z ~ N(mu omega,
  nu tau)``; fixed points are solved at normalized weights ``omega = 0``,
  ``tau = 1``, where ``z ~ N(0, nu)``. The Jacobian's first column is then
  exactly 0, its eigenvalues are 0 and ``d nu~/d nu``; the fixed point attracts
  when ``|d nu~/d nu| < 1``. At mean 0 this is also the mean-field length-map
  slope of a network with ``sigma_w^2 = 1`` (LeCun init), so the same number
  says whether the per-layer variance of such a network returns to ``var``.
- DKS/TAT use the local maps of a layer with unit weight variance: ``Q(q) =
  E[phi_hat(sqrt(q) x)^2]`` and ``C(c) = E[phi_hat(u) phi_hat(v)]`` with
  ``(u, v) ~ N(0, [[1, c], [c, 1]])``, ``x ~ N(0, 1)``; the network's maps are
  the ``depth``-fold compositions ``C_f = C o ... o C``. ``q`` is a second
  moment, ``c`` an uncentered correlation (those of :mod:`propagate.theory`).

Numbers are computed by mpmath at ``digits`` significant digits (15 guard
digits carried): Gaussian expectations in closed form for the piecewise-linear
and ELU families, otherwise ``mpmath.quad`` split at the kinks. Candidate roots
are found in float64 (quadrature from :mod:`propagate.theory`) and then polished
by ``mpmath.findroot``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Sequence

import numpy as np
from scipy import optimize, special

from propagate.activations import Activation, get_activation, selu_constants, transformed_activation
from propagate.errors import UserError
from propagate.selu import spectral_summary
from propagate.theory import gaussian_expectation, snn_moment_map

__all__ = [
    "FAMILIES",
    "SHIFT_RANGE",
    "SMOOTH_FORMS",
    "SelfNormSolution",
    "SelfNormResult",
    "TransformResult",
    "self_normalize",
    "iterate_moment_map",
    "attraction_check",
    "dks_transform",
    "tat_transform",
    "leaky_relu_cmap",
    "derivation_markdown",
    "DERIVATION_ACTIVATIONS",
]

#: The two-parameter families beside ``affine``: name -> (base families, parameter names, description).
FAMILIES = {
    "affine": (None, ("gamma", "a", "b", "d"), "gamma * (phi(a x + b) + d); two of gamma, a, b, d are solved"),
    "scale_alpha": (("elu", "selu"), ("scale", "alpha"), "scale * elu(x; alpha), SELU's family"),
}
#: Base activation families with an arbitrary-precision form.
SMOOTH_FORMS = ("gelu", "silu", "tanh", "sigmoid", "erf", "softplus")
_PIECEWISE = ("linear", "relu", "leaky_relu", "elu", "selu")
_GUARD = 15
MAX_DIGITS = 200
#: Where the shape parameter is searched for roots / contraction (float64 scan, then mpmath).
_RANGES = {"b": (-4.0, 4.0), "a": (0.05, 6.0), "alpha": (1e-3, 30.0)}
#: Where b is chosen for ("gamma", "d"): beyond it the input sits in phi's far tail (gelu, silu: gamma > 10).
SHIFT_RANGE = (-2.0, 3.0)
_SCAN = 161


# --------------------------------------------------------------------------- #
# The base activations in two arithmetics: numpy arrays (scans) and mpmath scalars
# --------------------------------------------------------------------------- #


class _NP:
    where = staticmethod(np.where)
    exp = staticmethod(np.exp)
    minimum = staticmethod(np.minimum)
    tanh = staticmethod(np.tanh)
    erf = staticmethod(special.erf)
    ncdf = staticmethod(special.ndtr)
    expit = staticmethod(special.expit)

    @staticmethod
    def npdf(x):
        return np.exp(-0.5 * np.square(x)) / math.sqrt(2 * math.pi)

    @staticmethod
    def softplus(x):
        return np.logaddexp(0.0, x)

    @staticmethod
    def num(v):
        return float(v)

    sqrt = staticmethod(np.sqrt)


class _MP:
    @staticmethod
    def where(c, a, b):
        return a if c else b

    @staticmethod
    def exp(x):
        import mpmath as mp

        return mp.exp(x)

    minimum = staticmethod(min)

    @staticmethod
    def tanh(x):
        import mpmath as mp

        return mp.tanh(x)

    @staticmethod
    def erf(x):
        import mpmath as mp

        return mp.erf(x)

    @staticmethod
    def ncdf(x):
        import mpmath as mp

        return mp.ncdf(x)

    @staticmethod
    def npdf(x):
        import mpmath as mp

        return mp.npdf(x)

    @staticmethod
    def expit(x):
        import mpmath as mp

        return 1 / (1 + mp.exp(-x))

    @staticmethod
    def softplus(x):
        import mpmath as mp

        return mp.log1p(mp.exp(x)) if x < 0 else x + mp.log1p(mp.exp(-x))

    @staticmethod
    def num(v):
        import mpmath as mp

        # the decimal the user typed (0.01 stays 1/100), not float64's binary neighbour
        return v if isinstance(v, mp.mpf) else mp.mpf(repr(float(v)))

    @staticmethod
    def sqrt(x):
        import mpmath as mp

        return mp.sqrt(x)


@dataclasses.dataclass(frozen=True)
class _Base:
    """``phi, phi', phi''`` of a base activation for either arithmetic (``B`` = _NP or _MP)."""

    name: str
    family: str
    params: dict
    kinks: tuple

    def f(self, x, B, k: int = 0):
        return self.derivs(x, B)[k]

    def derivs(self, x, B) -> tuple:
        """``(phi(x), phi'(x), phi''(x))`` (``phi''`` without the delta at a kink)."""
        p = {key: B.num(v) for key, v in self.params.items()}
        fam = self.family
        one = x * 0 + 1
        if fam == "linear":
            return (x, one, 0 * x)
        if fam in ("relu", "leaky_relu"):
            s = p.get("slope", 0 * one) if fam == "leaky_relu" else 0 * one
            return (B.where(x > 0, x, s * x), B.where(x > 0, one, s * one), 0 * x)
        if fam in ("elu", "selu"):
            lam, al = p.get("lambda", one), p["alpha"]
            e = B.exp(B.minimum(x, 0 * x))
            return tuple(lam * t for t in (B.where(x > 0, x, al * (e - 1)), B.where(x > 0, one, al * e), B.where(x > 0, 0 * x, al * e)))
        if fam == "tanh":
            t = B.tanh(x)
            return (t, 1 - t * t, -2 * t * (1 - t * t))
        if fam == "sigmoid":
            s = B.expit(x)
            return (s, s * (1 - s), s * (1 - s) * (1 - 2 * s))
        if fam == "erf":
            g = 2 / B.sqrt(math.pi if B is _NP else _mp_pi()) * B.exp(-x * x)  # pi at the working precision
            return (B.erf(x), g, -2 * x * g)
        if fam == "softplus":
            s = B.expit(x)
            return (B.softplus(x), s, s * (1 - s))
        if fam == "gelu":
            c, d = B.ncdf(x), B.npdf(x)
            return (x * c, c + x * d, d * (2 - x * x))
        if fam == "silu":
            s = B.expit(x)
            return (x * s, s * (1 + x * (1 - s)), s * (1 - s) * (2 + x * (1 - 2 * s)))
        raise AssertionError(fam)  # excluded by _base()


def _mp_pi():
    import mpmath as mp

    return +mp.pi


def _base(act: Activation | str) -> _Base:
    act = get_activation(act)
    if act.family not in SMOOTH_FORMS + _PIECEWISE:
        raise UserError(
            f"activation {act.name!r} has no arbitrary-precision form here; "
            f"self-normalize knows {', '.join(sorted(SMOOTH_FORMS + _PIECEWISE))}"
        )
    return _Base(act.name, act.family, dict(act.params), tuple(act.kinks))


# --------------------------------------------------------------------------- #
# Gaussian expectations of u(z) = phi(a z + b), z ~ N(0, v)
# --------------------------------------------------------------------------- #


@functools.lru_cache(maxsize=64)
def _gl(m: int, dps: int):
    """Gauss-Legendre nodes and weights on [-1, 1] at ``dps`` digits (Newton on P_m)."""
    import mpmath as mp

    with mp.workdps(dps + 10):
        xs, ws = [], []
        for i in range(1, m // 2 + 1):
            x = mp.cos(mp.pi * (i - mp.mpf(1) / 4) / (m + mp.mpf(1) / 2))
            for _ in range(100):
                p0, p1 = mp.mpf(1), x
                for k in range(2, m + 1):
                    p0, p1 = p1, ((2 * k - 1) * x * p1 - (k - 1) * p0) / k
                dp = m * (x * p1 - p0) / (x * x - 1)
                dx = p1 / dp
                x -= dx
                if abs(dx) < mp.mpf(10) ** (-dps - 8):
                    break
            w = 2 / ((1 - x * x) * dp * dp)
            xs += [x, -x]
            ws += [w, w]
        if m % 2:
            p0, p1 = mp.mpf(1), mp.mpf(0)
            for k in range(2, m + 1):
                p0, p1 = p1, (-(k - 1) * p0) / k
            xs.append(mp.mpf(0))
            ws.append(2 / (m * p0) ** 2)
        return tuple(xs), tuple(ws)


def _rule(v, zbreaks: Sequence, zscale) -> tuple[list, list]:
    """Nodes ``z`` and weights for ``E[g(z)]``, ``z ~ N(0, v)``, at the working precision.

    Composite Gauss-Legendre in ``x = z / sqrt(v)`` on ``|x| <= L`` (the normal
    tail beyond ``L`` is below ``10^-(dps + 10)``), panels of width ``1 /
    max(1, zscale sqrt(v))`` (``zscale`` = how fast the integrand varies in
    ``z``), split at ``zbreaks`` (kinks), ``dps / 2 + 12`` nodes a panel: each
    piece is analytic, so this converges geometrically and one set of nodes
    serves every expectation at a parameter point (a few thousand function
    values instead of ``mpmath.quad``'s tens of thousands per integral).
    """
    import mpmath as mp

    dps = mp.mp.dps
    s = mp.sqrt(v)
    L = mp.sqrt(2 * mp.log(10) * (dps + 10))
    h = 1 / max(mp.mpf(1), abs(zscale) * s)
    n = int(mp.ceil(2 * L / h))
    cuts = [-L + 2 * L * i / n for i in range(n + 1)]
    cuts += [mp.mpf(zb) / s for zb in zbreaks if abs(mp.mpf(zb) / s) < L]
    cuts = sorted(cuts)
    gx, gw = _gl(dps // 2 + 12, dps)
    zs, ws = [], []
    norm = 1 / mp.sqrt(2 * mp.pi)
    for lo, hi in zip(cuts[:-1], cuts[1:]):
        if hi - lo <= 0:
            continue
        half, mid = (hi - lo) / 2, (hi + lo) / 2
        for x, w in zip(gx, gw):
            t = mid + half * x
            zs.append(s * t)
            ws.append(half * w * norm * mp.exp(-t * t / 2))
    return zs, ws


def _closed_moments(base: _Base, m, s):
    """``(E[phi(h)], E[phi(h)^2])`` for ``h ~ N(m, s^2)``, mpmath, piecewise families only."""
    import mpmath as mp

    p = {k: _MP.num(v) for k, v in base.params.items()}
    P, pdf = mp.ncdf(m / s), mp.npdf(m / s)
    pos1, pos2 = m * P + s * pdf, (m * m + s * s) * P + m * s * pdf
    if base.family == "linear":
        return m, m * m + s * s
    if base.family == "relu":
        return pos1, pos2
    if base.family == "leaky_relu":
        sl = p["slope"]
        n1, n2 = m * (1 - P) - s * pdf, (m * m + s * s) * (1 - P) - m * s * pdf
        return pos1 + sl * n1, pos2 + sl * sl * n2
    lam, al = p.get("lambda", mp.mpf(1)), p["alpha"]

    def ek(k):  # E[e^{k h}; h <= 0]
        return mp.exp(k * m + k * k * s * s / 2) * mp.ncdf(-(m + k * s * s) / s)

    e1, e2 = ek(1), ek(2)
    return lam * (pos1 + al * (e1 - (1 - P))), lam * lam * (pos2 + al * al * (e2 - 2 * e1 + (1 - P)))


class _Shape:
    """``u(z) = phi(a z + b)`` for a base and exact (mpmath) or float ``a, b``."""

    def __init__(self, base: _Base, a, b):
        self.base, self.a, self.b = base, a, b
        self._cache: dict = {}

    def zkinks(self):
        return [(k - self.b) / self.a for k in self.base.kinks]

    def _values(self, v):
        """Nodes, weights and ``phi^(k)(a z + b)``, ``k = 0, 1, 2``, at ``z ~ N(0, v)`` (cached per v and precision)."""
        import mpmath as mp

        key = (mp.mpf(v), mp.mp.prec)
        if key not in self._cache:
            zs, ws = _rule(v, self.zkinks(), self.a)
            a, b = self.a, self.b
            vals = [self.base.derivs(a * z + b, _MP) for z in zs]
            self._cache[key] = (zs, ws, *(list(col) for col in zip(*vals)))
        return self._cache[key]

    def mp_expect(self, g: Callable, v=1):
        """``E[g(z, phi, phi', phi'')]`` at ``z ~ N(0, v)``, the last three evaluated at ``a z + b`` (mpmath)."""
        import mpmath as mp

        zs, ws, F0, F1, F2 = self._values(v)
        return mp.fsum(w * g(z, f0, f1, f2) for z, w, f0, f1, f2 in zip(zs, ws, F0, F1, F2))

    def mp_moments(self, v):
        """``(E[u], E[u^2])`` at ``z ~ N(0, v)``: closed forms for piecewise bases, else quadrature."""
        import mpmath as mp

        if self.base.family in _PIECEWISE:
            return _closed_moments(self.base, mp.mpf(self.b), abs(self.a) * mp.sqrt(v))
        return self.mp_expect(lambda z, f0, f1, f2: f0, v), self.mp_expect(lambda z, f0, f1, f2: f0 * f0, v)

    def mp_moment_slopes(self, v):
        """``(dE[u]/dv, dE[u^2]/dv)``: Gaussian integration by parts, ``d/dv E[g(z)] = E[g(z)(z^2 - v)] / (2 v^2)``."""
        import mpmath as mp

        if self.base.family in _PIECEWISE:
            d1 = mp.diff(lambda t: self.mp_moments(t)[0], v)
            d2 = mp.diff(lambda t: self.mp_moments(t)[1], v)
            return d1, d2
        c = 1 / (2 * v * v)
        d1 = self.mp_expect(lambda z, f0, f1, f2: f0 * (z * z - v) * c, v)
        d2 = self.mp_expect(lambda z, f0, f1, f2: f0 * f0 * (z * z - v) * c, v)
        return d1, d2

    def np_stats(self, v: float):
        """Float64 ``(E[u], E[u^2], dE[u]/dv, dE[u^2]/dv)`` at ``z ~ N(0, v)`` (theory's quadrature)."""
        f, a, b = self.base.f, float(self.a), float(self.b)
        kinks = self.zkinks()

        def E(g):
            return gaussian_expectation(g, v, kinks=[float(k) for k in kinks])

        u = lambda z: f(a * z + b, _NP)  # noqa: E731
        w = lambda z: (z * z - v) / (2 * v * v)  # noqa: E731
        return E(u), E(lambda z: u(z) ** 2), E(lambda z: u(z) * w(z)), E(lambda z: u(z) ** 2 * w(z))


# --------------------------------------------------------------------------- #
# Self-normalizing parameters
# --------------------------------------------------------------------------- #


def _fmt(x, digits) -> str:
    import mpmath as mp

    return mp.nstr(x, digits, min_fixed=-mp.inf, max_fixed=mp.inf) if x != 0 else "0"


@dataclasses.dataclass
class SelfNormSolution:
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

    def fmt(self, x) -> str:
        """``x`` with ``digits`` significant digits."""
        return _fmt(x, self.digits)

    @staticmethod
    def fmt_small(x) -> str:
        """A residual, 3 significant digits."""
        import mpmath as mp

        return mp.nstr(x, 3)

    def to_dict(self) -> dict[str, Any]:
        """Every number as a string at ``digits`` digits (JSON-ready)."""
        import mpmath as mp

        f = self.fmt
        return {
            "activation": self.activation,
            "parameters": {k: f(v) for k, v in self.parameters.items()},
            "solved": list(self.solved),
            "chosen": list(self.chosen),
            "jacobian": [[f(x) for x in row] for row in self.jacobian],
            "eigenvalues": [f(e) for e in self.eigenvalues],
            "spectral_radius": f(self.spectral_radius),
            "spectral_norm": f(self.spectral_norm),
            "attracting": self.attracting,
            "chi_1": f(self.chi_1),
            "residuals": [mp.nstr(r, 3) for r in self.residuals],
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


def _validate(mean, var, digits) -> None:
    if not isinstance(digits, int) or isinstance(digits, bool) or not 1 <= digits <= MAX_DIGITS:
        raise UserError(f"digits must be a whole number from 1 to {MAX_DIGITS}, got {digits!r}")
    for name, v in (("mean", mean), ("var", var)):
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            raise UserError(f"{name} must be a finite number, got {v!r}")
    if var <= 0:
        raise UserError(f"the variance must be > 0, got {var}")


def _exact(v):
    import mpmath as mp

    return mp.mpf(repr(float(v)))


def _activation_string(family: str, base: _Base, params: dict) -> str:
    if family == "scale_alpha":
        lam, alpha = float(params["scale"]), float(params["alpha"])
        if (lam, alpha) == selu_constants():
            return "selu"
        return f"selu:lambda={lam!r},alpha={alpha!r}"
    vals = {k: float(params[k]) for k in ("gamma", "a", "b", "d")}
    return transformed_activation(base.name, **vals).name


def _family_of(base: _Base, family: str | None) -> str:
    if family is None:
        return "scale_alpha" if base.family in ("elu", "selu") and base.name in ("elu", "selu") else "affine"
    if family not in FAMILIES:
        raise UserError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")
    allowed = FAMILIES[family][0]
    if allowed is not None and base.family not in allowed:
        raise UserError(f"family {family!r} needs an elu activation, got {base.name!r}")
    return family


def _unscaled(family: str, base: _Base, params: dict) -> _Shape:
    """``u`` with ``phi_hat = scale * (u + d)``: ``phi(a x + b)`` or ``elu(x; alpha)``."""
    if family == "scale_alpha":
        return _Shape(_Base("elu", "elu", {"alpha": params["alpha"]}, (0.0,)), 1, 0)
    return _Shape(base, params["a"], params["b"])


def _scale_and_shift(mean, var, e1, e2, solve_d: bool, d):
    """``(gamma, d)`` from ``gamma (E[u] + d) = mean`` and ``gamma^2 Var(u + d) = var`` (gamma > 0)."""
    import mpmath as mp

    sd = mp.sqrt(e2 - e1 * e1)
    gamma = mp.sqrt(var) / sd
    if solve_d:
        d = mean / gamma - e1
    return gamma, d


def _solution(family, base, mean, var, digits, params, solved, chosen) -> SelfNormSolution:
    """Evaluate the Jacobian, spectral quantities, chi_1 and residuals at ``params`` (working precision)."""
    import mpmath as mp

    mu, nu = _exact(mean), _exact(var)
    sc = params["scale"] if family == "scale_alpha" else params["gamma"]
    d = params.get("d", mp.mpf(0))
    u = _unscaled(family, base, params)
    e1, e2 = u.mp_moments(nu)
    d1, d2 = u.mp_moment_slopes(nu)
    m_out = sc * (e1 + d)
    s_out = sc * sc * (e2 + 2 * d * e1 + d * d)
    j12 = sc * d1
    j22 = sc * sc * (d2 + 2 * d * d1) - 2 * m_out * j12
    # an entry that vanishes by symmetry (tanh at b = 0) is guard-digit noise
    j12, j22 = (mp.mpf(0) if abs(x) < mp.mpf(10) ** (-(digits + 3)) else x for x in (j12, j22))
    J = mp.matrix([[0, j12], [0, j22]])
    eig, radius, norm = spectral_summary(J)
    a = u.a
    g1 = u.mp_expect(lambda z, f0, f1, f2: f1 * f1, nu)
    chi1 = sc * sc * a * a * g1
    return SelfNormSolution(
        base=base.name, family=family, mean=mean, var=var, digits=digits, parameters=dict(params),
        solved=tuple(solved), chosen=tuple(chosen), activation=_activation_string(family, base, params),
        jacobian=[[J[i, j] for j in range(2)] for i in range(2)], eigenvalues=eig, spectral_radius=radius,
        spectral_norm=norm, attracting=bool(radius < 1), chi_1=chi1,
        residuals=[m_out - mu, s_out - m_out**2 - nu],
        method="closed form" if u.base.family in _PIECEWISE else "mpmath quadrature",
    )


def _float_norm(u: _Shape, mean: float, var: float, d_free: bool, d: float) -> float:
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


def _auto_shift(base: _Base, a, mean: float, var: float, lo: float, hi: float) -> list[float]:
    """Input shifts ``b`` at local minima of the Jacobian's spectral norm (gamma, d solved), rounded to 3 decimals."""
    def N(b):
        return _float_norm(_Shape(base, float(a), float(b)), mean, var, True, 0.0)

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
    significant digits wanted. Returns every solution found, most contracting
    first. Raises :class:`UserError` (one line) when the family cannot reach the
    point, for an unknown family or parameter, or an activation without an
    arbitrary-precision form.
    """
    import mpmath as mp

    _validate(mean, var, digits)
    base = _base(activation)
    fam = _family_of(base, family)
    names = FAMILIES[fam][1]
    fixed = dict(fixed or {})
    for k, v in fixed.items():
        if k not in names:
            raise UserError(f"family {fam!r} has parameters {', '.join(names)}; got {k!r}")
        if not isinstance(v, (int, float)) or not math.isfinite(v):
            raise UserError(f"parameter {k}={v!r} is not a finite number")
    if fam == "scale_alpha":
        solve = ("scale", "alpha")
        if fixed:
            raise UserError("family 'scale_alpha' solves both scale and alpha; nothing can be fixed")
    else:
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
    notes: list[str] = []
    mu_f, nu_f = float(mean), float(var)
    rho = mu_f / math.sqrt(nu_f)

    # candidate values of the shape unknown (float), then exact
    if fam == "scale_alpha":
        shape_name = "alpha"
    else:
        shape_name = next(s for s in solve if s != "gamma")
    candidates: list[dict] = []  # each: params as floats/None for the unknowns
    chosen: tuple = ()
    if fam == "affine" and shape_name == "d":
        if "b" in fixed:
            shifts = [fixed["b"]]
        else:
            lo, hi = shift_range
            shifts = _auto_shift(base, fixed.get("a", 1.0), mu_f, nu_f, lo, hi)
            chosen = ("b",)
            notes.append(
                "b (input shift) chosen at the local minima of the Jacobian's spectral norm over b in "
                f"[{lo:g}, {hi:g}] with a = {fixed.get('a', 1.0):g}, rounded to 3 decimals"
            )
        for b in shifts:
            candidates.append({"a": fixed.get("a", 1.0), "b": b, "d": None})
    else:
        lo, hi = _RANGES[shape_name]

        def shape_of(t):
            if fam == "scale_alpha":
                return _Shape(_Base("elu", "elu", {"alpha": float(t)}, (0.0,)), 1.0, 0.0)
            p = {"a": fixed.get("a", 1.0), "b": fixed.get("b", 0.0), shape_name: t}
            return _Shape(base, float(p["a"]), float(p["b"]))

        dfix = float(fixed.get("d", 0.0)) if fam == "affine" else 0.0

        def R(t):
            e1, e2, _, _ = shape_of(t).np_stats(nu_f)
            v = e2 - e1 * e1
            return (e1 + dfix) / math.sqrt(v) - rho if v > 0 else math.nan

        brackets, rng = _scan_roots(R, lo, hi)
        if not brackets:
            what = "scale * elu(x; alpha)" if fam == "scale_alpha" else f"gamma * ({base.name}(a x + b) + d)"
            raise UserError(
                f"{what} cannot reach mean {mean:g}, var {var:g}: (E[u] + d)/sd(u) - mean/sqrt(var) stays in "
                f"[{rng[0]:.4g}, {rng[1]:.4g}] for {shape_name} in [{lo:g}, {hi:g}]"
            )
        for t0, t1 in brackets:
            candidates.append({"bracket": (t0, t1)})

    solutions = []
    with mp.workdps(digits + _GUARD):
        mu, nu = _exact(mean), _exact(var)
        for cand in candidates:
            if fam == "affine" and shape_name == "d":
                a, b = _exact(cand["a"]), _exact(cand["b"])
                u = _Shape(base, a, b)
                e1, e2 = u.mp_moments(nu)
                gamma, d = _scale_and_shift(mu, nu, e1, e2, True, None)
                params = {"gamma": gamma, "a": a, "b": b, "d": d}
            else:
                t0, t1 = cand["bracket"]

                def exact_shape(t):
                    if fam == "scale_alpha":
                        return _Shape(_Base("elu", "elu", {"alpha": t}, (0.0,)), mp.mpf(1), mp.mpf(0))
                    p = {"a": _exact(fixed.get("a", 1.0)), "b": _exact(fixed.get("b", 0.0)), shape_name: t}
                    return _Shape(base, p["a"], p["b"])

                dfix = _exact(fixed.get("d", 0.0)) if fam == "affine" else mp.mpf(0)

                def F(t):
                    e1, e2 = exact_shape(t).mp_moments(nu)
                    return (e1 + dfix) / mp.sqrt(e2 - e1 * e1) - mu / mp.sqrt(nu)

                if t0 == t1:
                    t = _exact(t0)
                else:
                    # bracketed first (a sign change is a root), then secant; mpmath's default
                    # tolerance stops at steps below ~1e3 eps of the working precision
                    t = mp.findroot(F, (_exact(t0), _exact(t1)), solver="anderson", maxsteps=200, verify=False)
                    t = mp.findroot(F, t, solver="secant", maxsteps=50)
                e1, e2 = exact_shape(t).mp_moments(nu)
                gamma, _ = _scale_and_shift(mu, nu, e1, e2, False, dfix)
                if fam == "scale_alpha":
                    params = {"scale": gamma, "alpha": t}
                else:
                    params = {"gamma": gamma, "a": _exact(fixed.get("a", 1.0)), "b": _exact(fixed.get("b", 0.0)), "d": dfix}
                    params[shape_name] = t
            # a parameter that vanishes by symmetry (tanh's d) comes out as guard-digit noise
            params = {k: (mp.mpf(0) if abs(v) < mp.mpf(10) ** (-(digits + 3)) else v) for k, v in params.items()}
            solutions.append(_solution(fam, base, mean, var, digits, params, solve, chosen))
    solutions.sort(key=lambda s: s.spectral_norm)
    if len(solutions) > 1:
        notes.append(f"{len(solutions)} solutions; the first (smallest spectral norm) is recommended")
    if not solutions[0].attracting:
        notes.append("no solution found attracts (spectral radius >= 1)")
    return SelfNormResult(base=base.name, family=fam, mean=mean, var=var, digits=digits, solutions=solutions, notes=notes)


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
# DKS and TAT
# --------------------------------------------------------------------------- #


def leaky_relu_cmap(c, slope):
    """Local C map of ``sqrt(2 / (1 + s^2)) * leaky_relu(x; s)`` (so ``Q(1) = 1``), any arithmetic.

    ``leaky_relu = s h + (1 - s) relu(h)`` gives ``E[phi(u) phi(v)] = s c + (1 -
    s)^2 (sqrt(1 - c^2) + (pi - arccos c) c) / (2 pi)`` (arc-cosine kernel of
    degree 1, Cho & Saul 2009), divided by ``Q(1) = (1 + s^2) / 2``.
    """
    import mpmath as mp

    c, s = mp.mpf(c), mp.mpf(slope)
    k1 = (mp.sqrt(1 - c * c) + (mp.pi - mp.acos(c)) * c) / (2 * mp.pi)
    return (s * c + (1 - s) ** 2 * k1) * 2 / (1 + s * s)


@dataclasses.dataclass
class TransformResult:
    """A DKS or TAT transform: parameters, the activation string, the equations and what they achieve.

    ``achieved`` maps each quantity (``Q(1)``, ``Q'(1)``, ``C(0)``, ``C'(1)``,
    ``C''(1)``, ``C_f'(1)``, ``C_f''(1)``, ``C_f(0)``) to its value at the
    solution (mpmath), ``targets`` the ones that were imposed.
    """

    method: str
    base: str
    depth: int
    digits: int
    parameters: dict
    activation: str
    equations: list
    targets: dict
    achieved: dict

    def fmt(self, x) -> str:
        return _fmt(x, self.digits)

    def to_dict(self) -> dict[str, Any]:
        f = self.fmt
        return {
            "method": self.method,
            "base": self.base,
            "depth": self.depth,
            "digits": self.digits,
            "activation": self.activation,
            "parameters": {k: f(v) for k, v in self.parameters.items()},
            "equations": list(self.equations),
            "targets": {k: f(v) for k, v in self.targets.items()},
            "achieved": {k: f(v) for k, v in self.achieved.items()},
        }


def _local_maps(base: _Base, gamma, a, b, d, shape=None) -> dict:
    """Q(1), Q'(1), C(0), C'(1), C''(1) of ``gamma (phi(a x + b) + d)`` (mpmath, x ~ N(0, 1))."""
    u = shape if shape is not None else _Shape(base, a, b)
    E = u.mp_expect
    e1 = E(lambda z, f0, f1, f2: f0)
    e2 = E(lambda z, f0, f1, f2: (f0 + d) ** 2)
    q1 = gamma * gamma * e2
    qs = gamma * gamma * a * E(lambda z, f0, f1, f2: (f0 + d) * f1 * z)
    c1 = gamma * gamma * a * a * E(lambda z, f0, f1, f2: f1 * f1) / q1
    out = {"Q(1)": q1, "Q'(1)": qs, "C(0)": (gamma * (e1 + d)) ** 2 / q1, "C'(1)": c1}
    if not base.kinks:
        out["C''(1)"] = gamma**2 * a**4 * E(lambda z, f0, f1, f2: f2 * f2) / q1
    return out


def _float_local(base: _Base, a: float, b: float, d: float | None) -> tuple[dict, float, float]:
    """Float64 local maps with gamma (and d when None: C(0) = 0) solved; returns (maps, gamma, d)."""
    f = base.f
    kinks = [(k - b) / a for k in base.kinks]

    def E(g):
        return gaussian_expectation(g, 1.0, kinks=kinks)

    e1 = E(lambda z: f(a * z + b, _NP))
    if d is None:
        d = -e1
    e2 = E(lambda z: (f(a * z + b, _NP) + d) ** 2)
    g2 = 1.0 / e2
    out = {
        "Q'(1)": g2 * a * E(lambda z: (f(a * z + b, _NP) + d) * f(a * z + b, _NP, 1) * z),
        "C'(1)": g2 * a * a * E(lambda z: f(a * z + b, _NP, 1) ** 2),
    }
    if not base.kinks:
        out["C''(1)"] = g2 * a**4 * E(lambda z: f(a * z + b, _NP, 2) ** 2)
    return out, math.sqrt(g2), d


def _check_depth(depth) -> int:
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
        raise UserError(f"depth must be a whole number >= 1, got {depth!r}")
    return depth


def _multistart(residual: Callable, starts: list, accept: Callable | None = None) -> list[np.ndarray]:
    """Distinct float64 roots of ``residual`` from ``starts`` (scipy hybr)."""
    roots: list[np.ndarray] = []
    for s in starts:
        try:
            r = optimize.root(lambda p: np.asarray(residual(p), dtype=float), np.asarray(s, dtype=float), method="hybr")
        except (ValueError, ZeroDivisionError, FloatingPointError):
            continue
        if not r.success or not np.all(np.isfinite(r.x)) or np.max(np.abs(residual(r.x))) > 1e-9:
            continue
        if accept is not None and not accept(r.x):
            continue
        if all(np.max(np.abs(r.x - q)) > 1e-6 for q in roots):
            roots.append(r.x)
    return roots


def _polish(equations: Callable, start: Sequence[float], digits: int) -> list:
    """``mpmath.findroot`` (multidimensional Newton) from a float64 root, at the working precision."""
    import mpmath as mp

    x = mp.findroot(equations, [_exact(v) for v in start], maxsteps=30)
    return [x[i] for i in range(len(start))] if len(start) > 1 else [x]


def dks_transform(activation, depth: int, *, zeta: float = 1.5, digits: int = 20) -> TransformResult:
    """Deep Kernel Shaping (Martens et al. 2021): ``gamma (phi(a x + b) + d)`` for a plain network of ``depth`` layers.

    Solves ``Q(1) = 1``, ``Q'(1) = 1``, ``C(0) = 0`` and ``C_f'(1) = C'(1)^depth
    = zeta`` (``zeta > 1``; DKS's default 1.5): ``d = -E[phi(a x + b)]`` and
    ``gamma = Var(phi(a x + b))^(-1/2)`` in closed form, ``(a, b)`` by Newton's
    method from a float64 multistart. Positively homogeneous activations (relu,
    leaky_relu, linear) are refused: their ``a`` is absorbed into ``gamma``.
    """
    import mpmath as mp

    depth = _check_depth(depth)
    _digits_ok(digits)
    if not (isinstance(zeta, (int, float)) and math.isfinite(zeta) and zeta > 1):
        raise UserError(f"DKS needs zeta > 1 (the network's C_f'(1)), got {zeta!r}")
    base = _base(activation)
    if base.family in ("relu", "leaky_relu", "linear"):
        raise UserError(f"DKS needs a non-homogeneous activation ({base.name} absorbs a into gamma); try --method tat for leaky_relu")
    slope = zeta ** (1.0 / depth)

    def res(p):
        a, b = p
        if abs(a) < 1e-3:
            return [1e3, 1e3]
        m, _, _ = _float_local(base, float(a), float(b), None)
        return [m["Q'(1)"] - 1.0, m["C'(1)"] - slope]

    starts = [(a, b) for a in (1.0, 0.5, 0.2, 2.0) for b in (0.0, 1.0, -1.0, 0.5)]
    roots = _multistart(res, starts, accept=lambda x: x[0] > 0)
    if not roots:
        raise UserError(f"DKS found no (a, b) for {base.name} with zeta={zeta:g} at depth {depth}")
    roots.sort(key=lambda r: (abs(r[0] - 1) + abs(r[1])))
    with mp.workdps(digits + _GUARD):
        z = _exact(zeta)
        target = z ** (mp.mpf(1) / depth)

        def eqs(a, b):
            u = _Shape(base, a, b)
            e1, e2 = u.mp_moments(1)
            d = -e1
            g = 1 / mp.sqrt(e2 - e1 * e1)
            m = _local_maps(base, g, a, b, d, u)
            return [m["Q'(1)"] - 1, m["C'(1)"] - target]

        a, b = _polish(eqs, roots[0], digits)
        u = _Shape(base, a, b)
        e1, e2 = u.mp_moments(1)
        d = -e1
        gamma = 1 / mp.sqrt(e2 - e1 * e1)
        achieved = _local_maps(base, gamma, a, b, d)
        achieved["C_f'(1)"] = achieved["C'(1)"] ** depth
        params = {"gamma": gamma, "a": a, "b": b, "d": d}
        targets = {"Q(1)": mp.mpf(1), "Q'(1)": mp.mpf(1), "C(0)": mp.mpf(0), "C'(1)": target, "C_f'(1)": z}
    eqs_text = [
        "d = -E[phi(a x + b)]                       (C(0) = 0)",
        "gamma = Var[phi(a x + b)]^(-1/2)           (Q(1) = 1)",
        "gamma^2 a E[(phi(a x + b) + d) phi'(a x + b) x] = 1        (Q'(1) = 1)",
        f"gamma^2 a^2 E[phi'(a x + b)^2] = zeta^(1/{depth})          (C_f'(1) = C'(1)^{depth} = zeta)",
    ]
    return TransformResult("dks", base.name, depth, digits, params,
                           transformed_activation(base.name, **{k: float(v) for k, v in params.items()}).name,
                           eqs_text, targets, achieved)


def _digits_ok(digits) -> None:
    if not isinstance(digits, int) or isinstance(digits, bool) or not 1 <= digits <= MAX_DIGITS:
        raise UserError(f"digits must be a whole number from 1 to {MAX_DIGITS}, got {digits!r}")


def tat_transform(activation, depth: int, *, eta: float = 0.9, tau: float = 0.3, digits: int = 20) -> TransformResult:
    """Tailored Activation Transformations (Zhang et al. 2022) for a plain network of ``depth`` layers.

    leaky_relu: the negative slope ``s`` with ``C_f(0) = C^depth(0) = eta`` for
    the leaky ReLU c-map (:func:`leaky_relu_cmap`), output scale ``gamma =
    sqrt(2 / (1 + s^2))`` so that ``Q(1) = 1``; ``eta`` in (0, 1).
    Smooth activations (no kinks): ``gamma (phi(a x + b) + d)`` with ``Q(1) = 1``
    (``gamma`` in closed form), ``Q'(1) = 1``, ``C'(1) = 1`` and ``C_f''(1) =
    depth C''(1) = tau`` (the second derivative of a composition of maps with
    slope 1 at 1 adds up), ``(a, b, d)`` by Newton's method.
    """
    import mpmath as mp

    depth = _check_depth(depth)
    _digits_ok(digits)
    base = _base(activation)
    if base.family == "leaky_relu" or base.family == "relu":
        if not (isinstance(eta, (int, float)) and 0 < eta < 1):
            raise UserError(f"TAT for leaky_relu needs 0 < eta < 1 (the network's C_f(0)), got {eta!r}")
        with mp.workdps(digits + _GUARD):
            e = _exact(eta)

            def cf0(s):
                c = mp.mpf(0)
                for _ in range(depth):
                    c = leaky_relu_cmap(c, s)
                return c

            if cf0(mp.mpf(0)) <= e:
                raise UserError(
                    f"TAT cannot reach C_f(0) = {eta:g} at depth {depth}: even ReLU (slope 0) gives {mp.nstr(cf0(0), 6)}"
                )
            s = mp.findroot(lambda s: cf0(s) - e, (mp.mpf(0), mp.mpf(1) - mp.mpf(10) ** -12), solver="anderson",
                            maxsteps=400, verify=False)
            s = mp.findroot(lambda s: cf0(s) - e, s, solver="secant", maxsteps=50)
            gamma = mp.sqrt(2 / (1 + s * s))
            lb = _Base(f"leaky_relu:slope={float(s)!r}", "leaky_relu", {"slope": s}, (0.0,))
            achieved = _local_maps(lb, gamma, mp.mpf(1), mp.mpf(0), mp.mpf(0))
            achieved["C_f(0)"] = cf0(s)
            params = {"slope": s, "gamma": gamma}
            targets = {"Q(1)": mp.mpf(1), "C_f(0)": e}
        act = transformed_activation(f"leaky_relu:slope={float(s)!r}", gamma=float(gamma)).name
        eqs_text = [
            "C(c) = [2 s c + (1 - s)^2 (sqrt(1 - c^2) + (pi - arccos c) c) / pi] / (1 + s^2)",
            f"C_f(0) = C^{depth}(0) = eta                  (solved for s)",
            "gamma = sqrt(2 / (1 + s^2))                (Q(1) = 1)",
        ]
        return TransformResult("tat", "leaky_relu", depth, digits, params, act, eqs_text, targets, achieved)
    if base.kinks:
        raise UserError(f"TAT's smooth transform needs an activation without kinks, got {base.name!r} (use leaky_relu)")
    if not (isinstance(tau, (int, float)) and math.isfinite(tau) and tau > 0):
        raise UserError(f"TAT needs tau > 0 (the network's C_f''(1)), got {tau!r}")
    curv = tau / depth

    def res(p):
        a, b, d = p
        if abs(a) < 1e-3:
            return [1e3] * 3
        m, _, _ = _float_local(base, float(a), float(b), float(d))
        return [m["Q'(1)"] - 1.0, m["C'(1)"] - 1.0, m["C''(1)"] - curv]

    starts = [(a, b, d) for a in (0.1, 0.3, 1.0) for b in (0.0, 1.0, -1.0) for d in (0.0, 1.0, -1.0)]

    def accept(x):
        _, g, _ = _float_local(base, float(x[0]), float(x[1]), float(x[2]))
        # as in the TAT paper's code, skip solutions with a large input-output gain (unstable Q maps)
        return x[0] > 0 and x[0] * g < 2.0

    roots = _multistart(res, starts, accept=accept)
    if not roots:
        raise UserError(f"TAT found no (a, b, d) for {base.name} with tau={tau:g} at depth {depth}")
    roots.sort(key=lambda r: abs(r[0]) + abs(r[1]) + abs(r[2]))
    with mp.workdps(digits + _GUARD):
        t = _exact(tau)

        def gamma_of(a, b, d, u=None):
            u = u or _Shape(base, a, b)
            return 1 / mp.sqrt(u.mp_expect(lambda z, f0, f1, f2: (f0 + d) ** 2))

        def eqs(a, b, d):
            u = _Shape(base, a, b)
            m = _local_maps(base, gamma_of(a, b, d, u), a, b, d, u)
            return [m["Q'(1)"] - 1, m["C'(1)"] - 1, m["C''(1)"] - t / depth]

        a, b, d = _polish(eqs, roots[0], digits)
        gamma = gamma_of(a, b, d)
        achieved = _local_maps(base, gamma, a, b, d)
        achieved["C_f''(1)"] = depth * achieved["C''(1)"]
        params = {"gamma": gamma, "a": a, "b": b, "d": d}
        targets = {"Q(1)": mp.mpf(1), "Q'(1)": mp.mpf(1), "C'(1)": mp.mpf(1), "C_f''(1)": t}
    eqs_text = [
        "gamma = E[(phi(a x + b) + d)^2]^(-1/2)       (Q(1) = 1)",
        "gamma^2 a E[(phi(a x + b) + d) phi'(a x + b) x] = 1        (Q'(1) = 1)",
        "gamma^2 a^2 E[phi'(a x + b)^2] = 1                         (C'(1) = 1)",
        f"{depth} gamma^2 a^4 E[phi''(a x + b)^2] = tau              (C_f''(1) = {depth} C''(1) = tau)",
    ]
    return TransformResult("tat", base.name, depth, digits, params,
                           transformed_activation(base.name, **{k: float(v) for k, v in params.items()}).name,
                           eqs_text, targets, achieved)


#: Activations tabulated in ``derivations/self-normalize.md``.
DERIVATION_ACTIVATIONS = ("gelu", "silu", "tanh", "softplus", "relu")


def derivation_markdown(digits: int = 30, table_digits: int = 16) -> str:
    """``derivations/self-normalize.md``: the general derivation, SELU as its special case, DKS and TAT.

    Every number is computed here: SELU's constants at ``digits`` digits, the
    other tables at ``table_digits``. Deterministic, so a test compares it with
    the committed file (``propagate derive self-normalize``).
    """
    import mpmath as mp

    from propagate.selu import PUBLISHED_ALPHA, PUBLISHED_LAMBDA

    selu_sol = self_normalize("elu", digits=digits).recommended
    n = selu_sol.fmt
    J = selu_sol.jacobian

    def block(tex):
        return f"$$\n{tex}\n$$"

    out = [
        "# Self-normalizing activations: SELU's derivation for any activation, and DKS/TAT transforms",
        "",
        "_Generated by `propagate derive self-normalize` from `propagate/selfnorm.py`; do not edit by hand._",
        f"Every number below was computed by mpmath (SELU at {digits} significant digits, the tables at {table_digits}).",
        "",
        "## 1. The question",
        "",
        r"A unit receives inputs of mean $\mu$ and **variance** $\nu$ through weights with $\omega = \sum_i w_i$ and "
        r"$\tau = \sum_i w_i^2$, so its pre-activation is $z \sim \mathcal{N}(\mu\omega, \nu\tau)$ (central limit theorem; "
        r"Klambauer et al. 2017). For an activation $\hat\phi$ the moment map is $g: (\mu, \nu) \mapsto "
        r"(\tilde\mu, \tilde\nu) = (\mathbb{E}[\hat\phi(z)], \mathrm{Var}[\hat\phi(z)])$. At normalized weights "
        r"($\omega = 0$, $\tau = 1$) $z \sim \mathcal{N}(0, \nu)$, and $(\mu^*, \nu^*)$ is a fixed point when",
        "",
        block(r"\mathbb{E}_{z\sim\mathcal{N}(0,\nu^*)}[\hat\phi(z)] = \mu^*,\qquad "
              r"\mathrm{Var}_{z\sim\mathcal{N}(0,\nu^*)}[\hat\phi(z)] = \nu^*."),
        "",
        r"We ask it of the affine transform of any activation $\phi$, and of SELU's own family:",
        "",
        block(r"\hat\phi(x) = \gamma\left(\phi(a x + b) + d\right)\quad\text{(affine)},\qquad "
              r"\hat\phi(x) = s\,\mathrm{elu}_\alpha(x)\quad\text{(scale\_alpha; SELU: } s = \lambda).") ,
        "",
        "## 2. Eliminating the scale",
        "",
        r"Write $\hat\phi = \gamma\,(u + d)$ with $u(z) = \phi(a z + b)$ (or $\mathrm{elu}_\alpha$, $d = 0$). "
        r"Variance and mean give, with $\gamma > 0$,",
        "",
        block(r"\gamma = \sqrt{\nu^* / \mathrm{Var}[u(z)]},\qquad "
              r"\frac{\mathbb{E}[u(z)] + d}{\sqrt{\mathrm{Var}[u(z)]}} = \frac{\mu^*}{\sqrt{\nu^*}}."),
        "",
        r"The second equation has one unknown left. Solving for the output shift it is explicit, "
        r"$d = \mu^*/\gamma - \mathbb{E}[u]$, so every $(a, b)$ gives exactly one fixed point; solving for $b$, $a$ "
        r"or $\alpha$ it is a scalar equation, whose sign changes are found on a grid in float64 and polished by "
        r"`mpmath.findroot`. Several roots mean several solutions; no root means the family cannot reach the point "
        r"(`propagate self-normalize` then exits with status 2).",
        "",
        "## 3. The Jacobian and attraction",
        "",
        r"At $\omega = 0$ the pre-activation does not depend on $\mu$, so the first column of the Jacobian is zero and",
        "",
        block(r"\mathcal{J} = \begin{pmatrix} 0 & \partial_\nu\tilde\mu \\ 0 & \partial_\nu\tilde\nu \end{pmatrix},"
              r"\qquad \partial_\nu\tilde\mu = \gamma\,\partial_\nu\mathbb{E}[u],\quad "
              r"\partial_\nu\tilde\nu = \gamma^2\left(\partial_\nu\mathbb{E}[u^2] + 2d\,\partial_\nu\mathbb{E}[u]\right) "
              r"- 2\tilde\mu\,\partial_\nu\tilde\mu,"),
        "",
        r"with eigenvalues $0$ and $\partial_\nu\tilde\nu$: the fixed point attracts when $|\partial_\nu\tilde\nu| < 1$. "
        r"The derivatives need no derivative of $\phi$ (Gaussian integration by parts): for $z \sim \mathcal{N}(0, v)$,",
        "",
        block(r"\frac{\partial}{\partial v}\,\mathbb{E}[f(z)] = \frac{\mathbb{E}\left[f(z)\,(z^2 - v)\right]}{2 v^2}."),
        "",
        r"At $\mu^* = 0$, $\partial_\nu\tilde\nu$ is also the slope of the mean-field length map of a network with "
        r"$\sigma_w^2 = 1$ (LeCun initialization), so it says whether such a network's per-layer variance returns to "
        r"$\nu^*$. $\chi_1 = \mathbb{E}[\hat\phi'(z)^2]$ is the slope of its correlation map at $c = 1$ "
        r"(Schoenholz et al. 2017): above 1, nearby inputs decorrelate with depth.",
        "",
        r"For the affine family with $d$ solved, $b$ is free. `propagate self-normalize` chooses it at each local "
        r"minimum of $\|\mathcal{J}\|_2$ over $b \in [-2, 3]$ (with $a = 1$; rounded to 3 decimals), lists every "
        r"such solution and recommends the most contracting one.",
        "",
        "## 4. SELU as the special case",
        "",
        r"For $u = \mathrm{elu}_\alpha$ and $z \sim \mathcal{N}(0, \nu)$ the moments are closed forms "
        r"($\Phi$ the normal CDF): $\mathbb{E}[u] = \sqrt{\nu/2\pi} + \alpha\left(e^{\nu/2}\Phi(-\sqrt\nu) - \tfrac12\right)$ and "
        r"$\mathbb{E}[u^2] = \tfrac{\nu}{2} + \alpha^2\left(e^{2\nu}\Phi(-2\sqrt\nu) - 2e^{\nu/2}\Phi(-\sqrt\nu) + \tfrac12\right)$. "
        r"At $(\mu^*, \nu^*) = (0, 1)$ the ratio equation is $\mathbb{E}[u] = 0$, linear in $\alpha$, and the scale "
        r"is $\lambda = 1/\sqrt{\mathbb{E}[u^2]}$:",
        "",
        block(rf"\lambda = {n(selu_sol.parameters['scale'])},\qquad \alpha = {n(selu_sol.parameters['alpha'])}"),
        "",
        f"the published $\\lambda_{{01}} = {PUBLISHED_LAMBDA}$, $\\alpha_{{01}} = {PUBLISHED_ALPHA}$ "
        "(Klambauer et al. 2017; `derivations/selu.md` derives them symbolically). The Jacobian:",
        "",
        block(r"\mathcal{J} = \begin{pmatrix} " + " & ".join(n(v) for v in J[0]) + r" \\ "
              + " & ".join(n(v) for v in J[1]) + r" \end{pmatrix},\quad \|\mathcal{J}\|_2 = " + n(selu_sol.spectral_norm)),
        "",
        f"(the paper: 0.088834, 0.782648 and 0.7877); $\\chi_1 = {mp.nstr(selu_sol.chi_1, 8)}$.",
        "",
        "## 5. Other activations (affine family, mean 0, variance 1)",
        "",
        "| activation | gamma | b (chosen) | d | J[nu~, nu] | spectral norm | chi_1 | attracting |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in DERIVATION_ACTIVATIONS:
        res = self_normalize(name, digits=table_digits)
        for i, sol in enumerate(res.solutions):
            p = sol.parameters
            f = lambda x: mp.nstr(x, 10)  # noqa: E731
            out.append(
                f"| {name}{'' if i == 0 else ' (alt.)'} | {f(p['gamma'])} | {mp.nstr(p['b'], 4)} | {f(p['d'])} | "
                f"{f(sol.jacobian[1][1])} | {f(sol.spectral_norm)} | {f(sol.chi_1)} | {'yes' if sol.attracting else 'no'} |"
            )
    out += [
        "",
        r"`a = 1` throughout. A linear $\phi$ cannot attract ($\partial_\nu\tilde\nu = 1$ for every shift): "
        r"attraction comes from the curvature of $\phi$ where the pre-activations fall, as SELU's from its saturating "
        r"negative branch. The shifted GELU and SiLU behave like a smoothed SELU: nearly linear to the right, saturating to the left.",
        "",
        "## 6. Shaping the kernel of a deep network: DKS and TAT",
        "",
        r"Deep Kernel Shaping (Martens et al. 2021) and Tailored Activation Transformations (Zhang et al. 2022) look at "
        r"the local maps of a layer with unit weight variance, $Q(q) = \mathbb{E}[\hat\phi(\sqrt q\,x)^2]$ and "
        r"$C(c) = \mathbb{E}[\hat\phi(u)\hat\phi(v)]$ with $x \sim \mathcal{N}(0,1)$, $(u, v)$ standard normal with "
        r"correlation $c$, and at the network's correlation map $C_f = C\circ\cdots\circ C$ ($L$ layers). With $Q(1) = 1$: "
        r"$Q'(1) = \mathbb{E}[\hat\phi\hat\phi' x]$, $C(0) = \mathbb{E}[\hat\phi]^2$, $C'(1) = \mathbb{E}[\hat\phi'^2]$, "
        r"$C''(1) = \mathbb{E}[\hat\phi''^2]$, $C_f'(1) = C'(1)^L$ and, when $C'(1) = 1$, $C_f''(1) = L\,C''(1)$.",
        "",
        r"- **DKS**: $Q(1) = 1$, $Q'(1) = 1$, $C(0) = 0$, $C_f'(1) = \zeta$. $d = -\mathbb{E}[\phi(ax+b)]$ and "
        r"$\gamma = \mathrm{Var}[\phi(ax+b)]^{-1/2}$ explicitly; $(a, b)$ by Newton's method.",
        r"- **TAT, leaky ReLU**: $\hat\phi = \sqrt{2/(1+s^2)}\,\mathrm{lrelu}_s$ ($Q(1) = 1$), whose c-map is "
        r"$C(c) = \left[2sc + (1-s)^2\left(\sqrt{1-c^2} + (\pi - \arccos c)\,c\right)/\pi\right]/(1+s^2)$ "
        r"(arc-cosine kernel, Cho & Saul 2009); the slope $s$ solves $C_f(0) = \eta$.",
        r"- **TAT, smooth**: $Q(1) = 1$, $Q'(1) = 1$, $C'(1) = 1$, $C_f''(1) = \tau$; $\gamma$ explicitly, $(a, b, d)$ by Newton's method.",
        "",
        "At depth 50, with the papers' defaults ($\\zeta = 1.5$, $\\eta = 0.9$, $\\tau = 0.3$):",
        "",
        "| method | activation | parameters | achieved |",
        "|---|---|---|---|",
    ]
    for res in (dks_transform("gelu", 50, digits=table_digits), tat_transform("leaky_relu", 50, digits=table_digits),
                tat_transform("gelu", 50, digits=table_digits)):
        ps = ", ".join(f"{k} = {mp.nstr(v, 10)}" for k, v in res.parameters.items())
        ach = ", ".join(f"{k} = {mp.nstr(v, 10)}" for k, v in res.achieved.items())
        out.append(f"| {res.method.upper()} | {res.base} | {ps} | {ach} |")
    out += [
        "",
        "`propagate transform --method dks|tat` prints these with the activation string for `--activation`.",
        "",
    ]
    return "\n".join(out)
