"""Gaussian expectations of an activation at any precision (mpmath), and the float64 ones they start from.

Every number of :mod:`propagate.selfnorm` and :mod:`propagate.transforms` is
an expectation ``E[g(z, phi(a z + b), phi'(a z + b), phi''(a z + b))]`` over
``z ~ N(0, v)`` (``v`` a **variance**) for a base activation ``phi`` of
:mod:`propagate.activations`. This module evaluates them in two arithmetics:

- **float64**, for scans over a parameter and Newton starting points:
  :meth:`ShiftedActivation.np_stats` calls
  :func:`propagate.theory.gaussian_expectation`, the package's one float64
  quadrature (no second float64 rule here).
- **mpmath at the working precision** (``mp.mp.dps``), for the solved
  constants: closed forms for the piecewise-linear and ELU families
  (:func:`closed_moments`), otherwise a composite Gauss-Legendre rule split
  at the kinks (:func:`normal_rule`).

Why the mpmath rule is not theory's: theory's nodes are float64 (8-node
panels on ``|z| <= 9``, about 1e-12 relative), which caps every result at
float64. The solver promises up to :data:`MAX_DIGITS` significant digits (plus
:data:`GUARD_DIGITS`), so here the nodes and weights are computed at the
working precision, the range grows as ``sqrt(2 ln 10 (dps + 10))`` and the
nodes per panel as ``dps / 2 + 12``. Likewise the closed forms: those of
:mod:`propagate.activations` are float64 with overflow guards (``erfcx``,
``log_ndtr``) for variances up to 1e300; mpmath's exponent range needs none,
so here they are the plain formulas at the working precision.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, Sequence

import mpmath as mp
import numpy as np
from scipy import special

from propagate.activations import Activation, get_activation
from propagate.errors import UserError
from propagate.selu import format_digits  # re-exported: the solvers' one number format
from propagate.theory import gaussian_expectation

__all__ = [
    "GUARD_DIGITS",
    "MAX_DIGITS",
    "SMOOTH_FORMS",
    "PIECEWISE",
    "Arithmetic",
    "NumpyArithmetic",
    "MpmathArithmetic",
    "BaseActivation",
    "base_activation",
    "gauss_legendre",
    "normal_rule",
    "closed_moments",
    "ShiftedActivation",
    "check_digits",
    "exact",
    "format_digits",
]

#: Base activation families with an arbitrary-precision form by quadrature.
SMOOTH_FORMS = ("gelu", "silu", "tanh", "sigmoid", "erf", "softplus")
#: Base activation families with closed-form Gaussian moments (piecewise linear or exponential).
PIECEWISE = ("linear", "relu", "leaky_relu", "elu", "selu")
#: Digits carried beyond those asked for.
GUARD_DIGITS = 15
#: The most significant digits a caller may ask for.
MAX_DIGITS = 200


# --------------------------------------------------------------------------- #
# working precision
# --------------------------------------------------------------------------- #


def check_digits(digits) -> None:
    """Refuse (:class:`UserError`) a ``digits`` that is not a whole number from 1 to :data:`MAX_DIGITS`."""
    if not isinstance(digits, int) or isinstance(digits, bool) or not 1 <= digits <= MAX_DIGITS:
        raise UserError(f"digits must be a whole number from 1 to {MAX_DIGITS}, got {digits!r}")


def exact(v):
    """The decimal a user typed as an mpmath number at the working precision (``0.01`` stays 1/100)."""
    return mp.mpf(repr(float(v)))


# --------------------------------------------------------------------------- #
# the base activations in two arithmetics: numpy arrays (scans) and mpmath scalars
# --------------------------------------------------------------------------- #


class Arithmetic:
    """The elementwise functions the base activations are written in (``where``, ``exp``, ``minimum``, ``tanh``,
    ``erf``, ``ncdf``, ``npdf``, ``expit``, ``softplus``, ``sqrt``, ``num``), bound to one arithmetic."""

    def __init__(self, name: str, **functions: Callable):
        self.name = name
        self.__dict__.update(functions)

    def __repr__(self) -> str:
        return f"Arithmetic({self.name!r})"


def _mp_softplus(x):
    return mp.log1p(mp.exp(x)) if x < 0 else x + mp.log1p(mp.exp(-x))


def _mp_num(v):
    # the decimal the user typed (0.01 stays 1/100), not float64's binary neighbour
    return v if isinstance(v, mp.mpf) else mp.mpf(repr(float(v)))


#: float64 arrays (the arithmetic of scans).
NumpyArithmetic = Arithmetic(
    "numpy", where=np.where, exp=np.exp, minimum=np.minimum, tanh=np.tanh, erf=special.erf, ncdf=special.ndtr,
    npdf=lambda x: np.exp(-0.5 * np.square(x)) / math.sqrt(2 * math.pi), expit=special.expit,
    softplus=lambda x: np.logaddexp(0.0, x), sqrt=np.sqrt, num=float)
#: mpmath scalars at the working precision.
MpmathArithmetic = Arithmetic(
    "mpmath", where=lambda c, a, b: a if c else b, exp=mp.exp, minimum=min, tanh=mp.tanh, erf=mp.erf, ncdf=mp.ncdf,
    npdf=mp.npdf, expit=lambda x: 1 / (1 + mp.exp(-x)), softplus=_mp_softplus, sqrt=mp.sqrt, num=_mp_num)


def _pi(B):
    """pi in arithmetic ``B`` (mpmath: at the working precision, read when called)."""
    return math.pi if B is NumpyArithmetic else +mp.pi


@dataclasses.dataclass(frozen=True)
class BaseActivation:
    """``phi, phi', phi''`` of a base activation in either arithmetic (``B`` = one of the two classes above).

    ``params`` holds the family's parameters (float or mpmath), ``kinks`` the
    points where ``phi'`` jumps.
    """

    name: str
    family: str
    params: dict
    kinks: tuple

    def f(self, x, B, k: int = 0):
        """``phi^(k)(x)``, ``k = 0, 1, 2``."""
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
            return tuple(lam * t for t in (B.where(x > 0, x, al * (e - 1)), B.where(x > 0, one, al * e),
                                           B.where(x > 0, 0 * x, al * e)))
        return self._smooth(x, B)

    def _smooth(self, x, B) -> tuple:
        fam = self.family
        if fam == "tanh":
            t = B.tanh(x)
            return (t, 1 - t * t, -2 * t * (1 - t * t))
        if fam == "sigmoid":
            s = B.expit(x)
            return (s, s * (1 - s), s * (1 - s) * (1 - 2 * s))
        if fam == "erf":
            g = 2 / B.sqrt(_pi(B)) * B.exp(-x * x)
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
        raise AssertionError(fam)  # excluded by base_activation()


def base_activation(act: Activation | str) -> BaseActivation:
    """The :class:`BaseActivation` of a named activation; :class:`UserError` for one without an mpmath form."""
    act = get_activation(act)
    if act.family not in SMOOTH_FORMS + PIECEWISE:
        raise UserError(
            f"activation {act.name!r} has no arbitrary-precision form here; "
            f"self-normalize knows {', '.join(sorted(SMOOTH_FORMS + PIECEWISE))}"
        )
    return BaseActivation(act.name, act.family, dict(act.params), tuple(act.kinks))


# --------------------------------------------------------------------------- #
# quadrature at the working precision
# --------------------------------------------------------------------------- #


@functools.lru_cache(maxsize=64)
def gauss_legendre(m: int, dps: int) -> tuple[tuple, tuple]:
    """Gauss-Legendre nodes and weights on [-1, 1] at ``dps`` digits (Newton on P_m)."""
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


def normal_rule(v, zbreaks: Sequence, zscale) -> tuple[list, list]:
    """Nodes ``z`` and weights for ``E[g(z)]``, ``z ~ N(0, v)``, at the working precision.

    Composite Gauss-Legendre in ``x = z / sqrt(v)`` on ``|x| <= L`` (the normal
    tail beyond ``L`` is below ``10^-(dps + 10)``), panels of width ``1 /
    max(1, zscale sqrt(v))`` (``zscale`` = how fast the integrand varies in
    ``z``), split at ``zbreaks`` (kinks), ``dps / 2 + 12`` nodes a panel: each
    piece is analytic, so this converges geometrically and one set of nodes
    serves every expectation at a parameter point (a few thousand function
    values instead of ``mpmath.quad``'s tens of thousands per integral).
    """
    dps = mp.mp.dps
    s = mp.sqrt(v)
    L = mp.sqrt(2 * mp.log(10) * (dps + 10))
    h = 1 / max(mp.mpf(1), abs(zscale) * s)
    n = int(mp.ceil(2 * L / h))
    cuts = [-L + 2 * L * i / n for i in range(n + 1)]
    cuts += [mp.mpf(zb) / s for zb in zbreaks if abs(mp.mpf(zb) / s) < L]
    cuts = sorted(cuts)
    gx, gw = gauss_legendre(dps // 2 + 12, dps)
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


def closed_moments(base: BaseActivation, m, s):
    """``(E[phi(h)], E[phi(h)^2])`` for ``h ~ N(m, s^2)`` (``s`` a standard deviation), mpmath, :data:`PIECEWISE` only."""
    p = {k: MpmathArithmetic.num(v) for k, v in base.params.items()}
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


# --------------------------------------------------------------------------- #
# u(z) = phi(a z + b), z ~ N(0, v)
# --------------------------------------------------------------------------- #


class ShiftedActivation:
    """``u(z) = phi(a z + b)`` for a base and exact (mpmath) or float ``a, b``; its Gaussian expectations.

    ``v`` is always the **variance** of ``z``. The mpmath methods work at the
    caller's working precision (``mp.workdps``) and cache the quadrature values
    per ``(v, precision)``, so several expectations at one point share them.
    """

    def __init__(self, base: BaseActivation, a, b):
        self.base, self.a, self.b = base, a, b
        self._cache: dict = {}

    def zkinks(self):
        """The kinks of ``phi`` in ``z``: ``(kink - b) / a``."""
        return [(k - self.b) / self.a for k in self.base.kinks]

    def _values(self, v):
        """Nodes, weights and ``phi^(k)(a z + b)``, ``k = 0, 1, 2``, at ``z ~ N(0, v)`` (cached per v and precision)."""
        key = (mp.mpf(v), mp.mp.prec)
        if key not in self._cache:
            zs, ws = normal_rule(v, self.zkinks(), self.a)
            a, b = self.a, self.b
            vals = [self.base.derivs(a * z + b, MpmathArithmetic) for z in zs]
            self._cache[key] = (zs, ws, *(list(col) for col in zip(*vals)))
        return self._cache[key]

    def mp_expect(self, g: Callable, v=1):
        """``E[g(z, phi, phi', phi'')]`` at ``z ~ N(0, v)``, the last three evaluated at ``a z + b`` (mpmath)."""
        zs, ws, F0, F1, F2 = self._values(v)
        return mp.fsum(w * g(z, f0, f1, f2) for z, w, f0, f1, f2 in zip(zs, ws, F0, F1, F2))

    def mp_moments(self, v):
        """``(E[u], E[u^2])`` at ``z ~ N(0, v)``: closed forms for :data:`PIECEWISE` bases, else quadrature."""
        if self.base.family in PIECEWISE:
            return closed_moments(self.base, mp.mpf(self.b), abs(self.a) * mp.sqrt(v))
        return self.mp_expect(lambda z, f0, f1, f2: f0, v), self.mp_expect(lambda z, f0, f1, f2: f0 * f0, v)

    def mp_moment_slopes(self, v):
        """``(dE[u]/dv, dE[u^2]/dv)``: Gaussian integration by parts, ``d/dv E[g(z)] = E[g(z)(z^2 - v)] / (2 v^2)``."""
        if self.base.family in PIECEWISE:
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

        u = lambda z: f(a * z + b, NumpyArithmetic)  # noqa: E731
        w = lambda z: (z * z - v) / (2 * v * v)  # noqa: E731
        return E(u), E(lambda z: u(z) ** 2), E(lambda z: u(z) * w(z)), E(lambda z: u(z) ** 2 * w(z))
