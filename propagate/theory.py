"""Mean-field theory of wide random networks, for any activation and initialization.

In the infinite-width limit the pre-activations ``h^l = W^l x^{l-1} + b^l`` of
a network with i.i.d. zero-mean weights (``Var(w) = sigma_w^2 / fan_in``) and
biases (``Var(b) = sigma_b^2``) are Gaussian with mean 0, whatever the mean of
``x^{l-1}``. Their second moment and the pair correlation of two inputs obey
(Poole et al. 2016; Schoenholz et al. 2017, "Deep Information Propagation")::

    q^l   = sigma_w^2 E[phi(h)^2] + sigma_b^2,          h ~ N(0, q^{l-1})   (length map)
    q_ab  = sigma_w^2 E[phi(u_a) phi(u_b)] + sigma_b^2,  (u_a, u_b) ~ N(0, q [[1, c], [c, 1]])
    c^l   = q_ab / q^l                                                       (correlation map)

``q`` is a second moment (a variance, since the mean is 0), never a standard
deviation. Derived quantities, all at the fixed point ``q*``:

- ``chi_1 = sigma_w^2 E[phi'(h)^2]``: slope of the c-map at ``c = 1`` and the
  per-layer factor of the squared gradient norm. ``chi_1 < 1`` ordered,
  ``> 1`` chaotic, ``= 1`` critical (the edge of chaos).
- ``xi_q = -1 / log(chi_q)`` with ``chi_q = dq^l/dq^{l-1} = sigma_w^2
  E[phi'(h)^2 + phi(h) phi''(h)]``. We take the derivative of the length map by a
  Richardson-extrapolated central difference, which also covers non-smooth
  ``phi`` (relu, elu, selu) where ``phi''`` has a delta.
- ``xi_c = -1 / log(chi_c)`` with ``chi_c = sigma_w^2 E[phi'(u_a) phi'(u_b)]``
  at ``(q*, c*)``; at ``c* = 1`` this is ``chi_1``.

Gaussian expectations come from closed forms where they exist (relu, leaky
relu, linear, elu, selu, erf) and otherwise from quadrature
(:func:`gaussian_expectation`): Gauss-Hermite for smooth integrands at moderate
scale, composite Gauss-Legendre split at the kinks (and graded around ``h = 0``)
otherwise. Both agree with the closed forms to 1e-10.

:func:`predict_layers` turns a :class:`~propagate.spec.NetworkSpec` into the
per-layer table of :mod:`propagate.stats` (``source = "theory"``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable, Iterable, Sequence

import numpy as np
from scipy import optimize, special

from propagate.activations import Activation, get_activation
from propagate.errors import UserError
from propagate.layers import OVERFLOW_Q, Moments, fold_moments, moment_gradients, signal_gradients
from propagate.limits import check_depth
from propagate.stats import layer_table

__all__ = [
    "gaussian_expectation",
    "gaussian_pair_expectation",
    "length_map",
    "correlation_map",
    "fixed_point_q",
    "fixed_point_c",
    "chi_1",
    "chi_c",
    "depth_scales",
    "phase",
    "critical_sigma_w2",
    "critical_line",
    "variance_preserving_gain",
    "grad_moment",
    "snn_moment_map",
    "predict_layers",
    "TheoryResult",
    "analyze",
]

#: |chi_1 - 1| below this is reported as "critical".
CRITICAL_TOL = 1e-6

_SQRT2PI = math.sqrt(2 * math.pi)

# ----------------------------------------------------------------------------
# quadrature rules (standard normal weight folded into the weights)

_Z_MAX = 9.0  # P(|z| > 9) ~ 2e-19
_N_GH = 80  # 1-D Gauss-Hermite nodes
_N_GH2 = 24  # inner rule of pair expectations (conditional sd <= 0.5)
_N_GL = 8  # Gauss-Legendre nodes per panel
_GH_MAX_SCALE = 0.5  # Gauss-Hermite only while the standard deviation (in h) is below this (tanh: poles at +-i pi/2)
# Breakpoints in h-space: the activation's kinks are added; grading around h = 0
# resolves near-steps (tanh, erf, sigmoid at large q) and the softened kinks of gelu/silu/softplus.
_H_BREAKS = np.array([0.0, -0.5, 0.5, -1.0, 1.0, -2.0, 2.0, -4.0, 4.0, -8.0, 8.0, -16.0, 16.0, -32.0, 32.0, -64.0, 64.0])
_Z_GRID = np.linspace(-_Z_MAX, _Z_MAX, 13)


@lru_cache(maxsize=None)
def _gh(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Probabilists' Gauss-Hermite nodes and weights normalized to N(0, 1)."""
    x, w = np.polynomial.hermite_e.hermegauss(n)
    return x, w / math.sqrt(2 * math.pi)


@lru_cache(maxsize=None)
def _gl(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.polynomial.legendre.leggauss(n)


def _composite(breaks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Composite Gauss-Legendre nodes/weights (N(0,1) density included) on sorted breakpoints.

    ``breaks`` has shape ``(..., P + 1)``; returns arrays of shape ``(..., P * n)``.
    Zero-length panels (clipped breakpoints) get zero weight.
    """
    x, w = _gl(_N_GL)
    a, b = breaks[..., :-1, None], breaks[..., 1:, None]
    half = 0.5 * (b - a)
    z = (a + b) * 0.5 + half * x
    wz = half * w * np.exp(-0.5 * z * z) / _SQRT2PI
    shape = breaks.shape[:-1] + (-1,)
    return z.reshape(shape), wz.reshape(shape)


def _breakpoints(mean, sd, kinks: Sequence[float]) -> np.ndarray:
    """Sorted z-breakpoints for h = mean + sd z (mean may be an array), clipped to [-Z_MAX, Z_MAX]."""
    mean = np.asarray(mean, dtype=float)
    hb = np.concatenate([_H_BREAKS, np.asarray(kinks, dtype=float)])
    zb = (hb - mean[..., None]) / sd
    grid = np.broadcast_to(_Z_GRID, mean.shape + _Z_GRID.shape)
    allb = np.clip(np.concatenate([grid, zb], axis=-1), -_Z_MAX, _Z_MAX)
    return np.sort(allb, axis=-1)


def _nodes_1d(mean: float, sd: float, kinks: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Nodes ``h`` and weights for E[f(h)], h ~ N(mean, sd^2) (cached: a layer asks thrice)."""
    return _nodes_1d_cached(float(mean), float(sd), tuple(float(k) for k in kinks))


@lru_cache(maxsize=512)
def _nodes_1d_cached(mean: float, sd: float, kinks: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    if not kinks and sd <= _GH_MAX_SCALE:
        z, w = _gh(_N_GH)
    else:
        z, w = _composite(np.unique(_breakpoints(mean, sd, kinks)))
    h = mean + sd * z
    h.flags.writeable = False
    w.flags.writeable = False
    return h, w


def gaussian_expectation(f: Callable[[np.ndarray], np.ndarray], var: float, mean: float = 0.0, kinks: Sequence[float] = ()) -> float:
    """``E[f(h)]`` for ``h ~ N(mean, var)`` (``var`` a variance) by quadrature.

    ``f`` must accept a numpy array. Smooth integrands at moderate scale
    (``sqrt(var) <= 0.5``, no ``kinks``) use 80-node Gauss-Hermite; otherwise
    composite 10-node Gauss-Legendre panels on ``|z| <= 9`` split at every kink
    and graded around ``h = 0``. Accurate to about 1e-12 relative for the
    built-in activations; ``var = 0`` returns ``f(mean)``.
    """
    var = float(var)
    mean = float(mean)
    if not (var >= 0) or not math.isfinite(var) or not math.isfinite(mean):
        raise UserError(f"gaussian_expectation needs a finite variance >= 0 and a finite mean, got var={var}, mean={mean}")
    if var == 0:
        return float(np.asarray(f(np.array([mean])), dtype=float)[0])
    h, w = _nodes_1d(mean, math.sqrt(var), tuple(kinks))
    return float(np.dot(w, np.asarray(f(h.copy()), dtype=float)))


# ----------------------------------------------------------------------------
# vectorized closed forms for the inner integral of pair expectations


def _inner_mean(act: Activation, derivative: bool = False):
    """``(m, v) -> E[phi(h)]`` (or ``E[phi'(h)]``), h ~ N(m, v), vectorized over ``m``; or None."""
    fam, p = act.family, act.params
    if fam in ("relu", "leaky_relu", "linear"):
        slope = {"relu": 0.0, "leaky_relu": p.get("slope", 0.0), "linear": 1.0}[fam]

        def inner(m, v):
            s = math.sqrt(v)
            a = m / s
            cdf, pdf = special.ndtr(a), np.exp(-0.5 * a * a) / _SQRT2PI
            if derivative:
                return cdf + slope * (1 - cdf)
            pos = m * cdf + s * pdf
            return pos + slope * (m - pos)

        return inner
    if fam in ("elu", "selu"):
        lam = p.get("lambda", 1.0)
        alpha = p["alpha"]

        def inner(m, v):
            s = math.sqrt(v)
            a = m / s
            cdf = special.ndtr(a)
            # E[e^h 1{h<=0}] = exp(m + v/2) Phi(-(m + v)/s), in log space
            e1 = np.exp(m + 0.5 * v + special.log_ndtr(-(m + v) / s))
            if derivative:
                return lam * (cdf + alpha * e1)
            pos = m * cdf + s * np.exp(-0.5 * a * a) / _SQRT2PI
            return lam * (pos + alpha * (e1 - (1 - cdf)))

        return inner
    return None


def _pair_closed_form(act: Activation, q: float, c: float, derivative: bool):
    """Closed-form ``E[phi(u_a) phi(u_b)]`` (or of ``phi'``), or None."""
    fam, p = act.family, act.params
    c = min(1.0, max(-1.0, c))
    if fam in ("relu", "leaky_relu", "linear"):
        a = {"relu": 0.0, "leaky_relu": p.get("slope", 0.0), "linear": 1.0}[fam]
        theta = math.acos(c)
        # phi = a h + (1 - a) relu(h); arc-cosine kernels of degree 0 and 1 (Cho & Saul 2009)
        k0 = (math.pi - theta) / (2 * math.pi)
        if derivative:
            return a * a + a * (1 - a) + (1 - a) ** 2 * k0
        k1 = q / (2 * math.pi) * (math.sqrt(max(0.0, 1 - c * c)) + (math.pi - theta) * c)
        return a * a * q * c + a * (1 - a) * q * c + (1 - a) ** 2 * k1
    if fam == "erf":
        if derivative:
            r = 2 * q * c / (1 + 2 * q)  # factored so that q up to 1e300 does not overflow when squared
            return (4 / math.pi) / ((1 + 2 * q) * math.sqrt((1 - r) * (1 + r)))
        return (2 / math.pi) * math.asin(2 * q * c / (1 + 2 * q))
    return None


def gaussian_pair_expectation(act: Activation | str, q: float, c: float, *, derivative: bool = False) -> float:
    """``E[phi(u_a) phi(u_b)]`` for ``(u_a, u_b) ~ N(0, q [[1, c], [c, 1]])``.

    With ``derivative=True`` the expectation of ``phi'(u_a) phi'(u_b)``. Closed
    forms for relu/leaky_relu/linear (arc-cosine kernels) and erf (Williams
    1997); otherwise an outer 1-D rule over ``u_a`` (as in
    :func:`gaussian_expectation`) of the conditional mean of ``phi(u_b)`` given
    ``u_a``: closed form for elu/selu, a shared 24-node Gauss-Hermite rule when
    the conditional standard deviation ``sqrt(q (1 - c^2)) <= 0.5`` and ``phi``
    is smooth, else a composite Gauss-Legendre rule per outer node split where
    ``u_b`` crosses a kink.
    """
    act = get_activation(act)
    q, c = float(q), float(c)
    f = act.grad if derivative else act.numpy
    if q == 0:
        v = float(np.asarray(f(np.zeros(1)))[0])
        return v * v
    c = min(1.0, max(-1.0, c))
    closed = _pair_closed_form(act, q, c, derivative)
    if closed is not None:
        return float(closed)
    s = math.sqrt(q)
    if c >= 1 - 1e-13 or c <= -1 + 1e-13:
        h, w = _nodes_1d(0.0, s, act.kinks)
        return float(np.dot(w, f(h) * f(math.copysign(1.0, c) * h)))
    r = math.sqrt(1 - c * c)
    inner = _inner_mean(act, derivative)
    if inner is not None:
        h, w = _nodes_1d(0.0, s, act.kinks)
        return float(np.dot(w, f(h) * inner(c * h, q * r * r)))
    # u_b | u_a ~ N(c u_a, q (1 - c^2)): outer rule on u_a, inner rule on the conditional
    h1, w1 = _nodes_1d(0.0, s, act.kinks)
    cond_mean = c * h1
    sd2 = s * r
    if not act.kinks and sd2 <= _GH_MAX_SCALE:
        # smooth at the inner scale: one shared Gauss-Hermite rule for every row
        z2, w2 = _gh(_N_GH2)
        h2 = cond_mean[:, None] + sd2 * z2[None, :]
        return float(np.dot(w1 * f(h1), f(h2) @ w2))
    # wide or kinked: a composite rule per row, split where u_b crosses a kink or grading point
    z2, w2 = _composite(_breakpoints(cond_mean, sd2, act.kinks))
    h2 = cond_mean[:, None] + sd2 * z2
    return float(np.dot(w1 * f(h1), np.sum(w2 * f(h2), axis=1)))


# ----------------------------------------------------------------------------
# single-layer moments


def _moments(act: Activation, q: float, mean: float = 0.0) -> tuple[float, float]:
    """(E[phi(h)], E[phi(h)^2]), h ~ N(mean, q)."""
    if q == 0:
        v = float(act.numpy(np.array([mean]))[0])
        return v, v * v
    if act.moments is not None:
        m = act.moments(mean, q)
        if m is not None:
            return float(m[0]), float(m[1])
    h, w = _nodes_1d(mean, math.sqrt(q), act.kinks)
    y = act.numpy(h)
    return float(np.dot(w, y)), float(np.dot(w, y * y))


def grad_moment(act: Activation, q: float, mean: float = 0.0) -> float:
    """E[phi'(h)^2], h ~ N(mean, q); at ``q = 0`` on a kink, the limit (mean of the squared one-sided slopes)."""
    if q == 0 and float(mean) in act.kinks:
        q = 1e-300
    if q == 0:
        g = float(act.grad(np.array([mean]))[0])
        return g * g
    if act.grad_moment is not None:
        g = act.grad_moment(mean, q)
        if g is not None:
            return float(g)
    h, w = _nodes_1d(mean, math.sqrt(q), act.kinks)
    g = act.grad(h)
    return float(np.dot(w, g * g))


def _layer_moments(act: Activation, q: float, c: float) -> tuple[float, float, float, float]:
    """(E[phi], E[phi^2], E[phi'^2], E[phi(u_a) phi(u_b)]) at pre-activation second moment ``q``, correlation ``c``.

    One layer of :func:`predict_layers`; shares the quadrature nodes and the
    values of ``phi`` between the four expectations where no closed form exists.
    """
    closed = q == 0 or (act.moments is not None and act.moments(0.0, q) is not None)
    if closed or _inner_mean(act) is not None or _pair_closed_form(act, q, c, False) is not None or act.kinks:
        m1, m2 = _moments(act, q)
        g2 = grad_moment(act, q)
        pab = m2 if c >= 1.0 else gaussian_pair_expectation(act, q, c)
        return m1, m2, g2, pab
    s = math.sqrt(q)
    h, w = _nodes_1d(0.0, s, ())
    y, g = act.numpy(h), act.grad(h)
    wy = w * y
    m1, m2, g2 = float(np.sum(wy)), float(np.dot(wy, y)), float(np.dot(w * g, g))
    if c >= 1.0:
        return m1, m2, g2, m2
    r = math.sqrt(max(0.0, 1 - c * c))
    sd2 = s * r
    if sd2 <= _GH_MAX_SCALE and c > -1 + 1e-13:
        z2, w2 = _gh(_N_GH2)
        pab = float(np.dot(wy, act.numpy(c * h[:, None] + sd2 * z2[None, :]) @ w2))
    else:
        pab = gaussian_pair_expectation(act, q, c)
    return m1, m2, g2, pab


def layer_expectations(activation, q: float, c: float) -> tuple[float, float, float, float]:
    """``(E[phi], E[phi^2], E[phi'^2], E[phi(u_a) phi(u_b)])`` for ``h ~ N(0, q)`` and a pair with correlation ``c``.

    The four Gaussian expectations of one activation layer that
    :func:`predict_layers` uses (``q`` a second moment, not a standard
    deviation), for callers that fold their own layers (the position-resolved
    CNN map of :mod:`propagate.model_theory`).
    """
    return _layer_moments(get_activation(activation), float(q), float(c))


def _check_var(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise UserError(f"{name} must be a finite number >= 0, got {value}")
    return value


def length_map(activation, sigma_w2: float, sigma_b2: float, q):
    """The length map ``q -> sigma_w^2 E[phi(sqrt(q) z)^2] + sigma_b^2`` (``q`` scalar or array)."""
    act = get_activation(activation)
    sw2, sb2 = _check_var("sigma_w2", sigma_w2), _check_var("sigma_b2", sigma_b2)
    qa = np.asarray(q, dtype=float)
    out = np.array([sw2 * _moments(act, float(x))[1] + sb2 for x in qa.ravel()]).reshape(qa.shape)
    return float(out) if out.ndim == 0 else out


def correlation_map(activation, sigma_w2: float, sigma_b2: float, q: float, c):
    """The correlation map ``c -> (sigma_w^2 E[phi(u_a) phi(u_b)] + sigma_b^2) / q'``.

    ``(u_a, u_b) ~ N(0, q [[1, c], [c, 1]])`` and ``q' = length_map(q)``, so the
    result is the next layer's correlation (at ``q = q*`` the usual c-map).
    ``c`` may be a scalar or an array.
    """
    act = get_activation(activation)
    sw2, sb2 = _check_var("sigma_w2", sigma_w2), _check_var("sigma_b2", sigma_b2)
    q = float(q)
    qn = sw2 * _moments(act, q)[1] + sb2
    ca = np.asarray(c, dtype=float)
    out = np.array([(sw2 * gaussian_pair_expectation(act, q, float(x)) + sb2) / qn for x in ca.ravel()]).reshape(ca.shape)
    return float(out) if out.ndim == 0 else out


def _check_bounded_overflow(act, sw2: float, sb2: float) -> float:
    """The cap ``sigma_w^2 sup phi^2 + sigma_b^2`` of ``q`` (``inf`` for an unbounded activation).

    A bounded activation always has a finite ``q*`` below it; a sigma_w2 that puts
    the cap beyond :data:`OVERFLOW_Q` (where rows count as overflow) is refused (UserError)."""
    lo, hi = act.bounds
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return math.inf
    cap = sw2 * max(lo * lo, hi * hi) + sb2
    if cap > OVERFLOW_Q:
        raise UserError(f"sigma_w2 = {sw2:g} with the bounded {act.name} puts q* near {cap:.3g}, beyond {OVERFLOW_Q:g} "
                        f"where float64 arithmetic on q counts as overflow; use sigma_w2 <= {OVERFLOW_Q:g}")
    return cap


def _homogeneous_fixed_point(act, sw2: float, sb2: float, q0: float) -> float:
    """``q*`` of a positively homogeneous activation (relu, leaky relu, linear), exactly.

    Its length map is the line ``q -> s q + sigma_b^2`` with slope ``s = sigma_w^2 E[phi(z)^2]``,
    so ``q* = sigma_b^2 / (1 - s)`` for ``s < 1``; for ``s = 1`` every ``q`` is a fixed point
    when ``sigma_b^2 = 0`` (``q0`` is returned) and none is finite otherwise (``q`` grows by
    ``sigma_b^2`` a layer); for ``s > 1`` none is finite (``q = 0`` stays 0 without bias).
    A slope within 4 ulps of 1 counts as 1: that is how ``sigma_w^2 = 2 / (1 + slope^2)`` rounds.
    """
    s = sw2 * _moments(act, 1.0)[1]
    if abs(s - 1.0) <= 4 * np.finfo(float).eps:
        return q0 if sb2 == 0 else math.inf
    if s < 1:
        q = sb2 / (1.0 - s)
        return q if q <= OVERFLOW_Q else math.inf
    return 0.0 if (sb2 == 0 and q0 == 0) else math.inf


def fixed_point_q(activation, sigma_w2: float, sigma_b2: float, q0: float = 1.0, *, tol: float = 1e-13, max_iter: int = 400) -> float:
    """The fixed point ``q*`` reached by iterating the length map from ``q0``.

    Returns ``math.inf`` when ``q`` grows without bound (e.g. relu with
    ``sigma_w^2 > 2``, or ``= 2`` with ``sigma_b^2 > 0``: there is no finite
    fixed point, whatever float64 rounding of ``q + sigma_b^2`` suggests) and
    ``0.0`` when it decays to zero (e.g. relu with ``sigma_w^2 < 2``,
    ``sigma_b^2 = 0``). Positively homogeneous activations use the exact line
    (:func:`_homogeneous_fixed_point`). Others iterate while that converges (a
    step below ``tol`` relative that is also shorter than the step before) and
    then bracket the fixed point in the direction of travel (a sign change of
    ``L(q) - q`` that is not a tie of rounding) and solve it with Brent's
    method (the length map is increasing in ``q`` for the usual activations,
    so iteration from ``q0`` ends at the nearest fixed point that way).
    """
    act = get_activation(activation)
    sw2, sb2 = _check_var("sigma_w2", sigma_w2), _check_var("sigma_b2", sigma_b2)
    q = _check_var("q0", q0)
    if act.family in _HOMOGENEOUS:
        return _homogeneous_fixed_point(act, sw2, sb2, q)
    cap = _check_bounded_overflow(act, sw2, sb2)

    def L(x):  # quadrature may round E[phi^2] above sup phi^2; the bound is exact
        return min(sw2 * _moments(act, x)[1] + sb2, cap)

    step = math.inf
    for _ in range(40):
        qn = L(q)
        if not math.isfinite(qn) or qn > OVERFLOW_Q:
            return math.inf
        if qn == q or (abs(qn - q) <= tol * max(q, 1e-300) and abs(qn - q) < step):
            return qn
        step, q = abs(qn - q), qn
    g = lambda x: L(x) - x  # noqa: E731
    if L(q) > q:
        return _bracket_up(g, q, cap, max_iter)
    lo = q
    for _ in range(2000):
        lo *= 0.5
        if lo < 1e-300 or g(lo) >= 0:
            break
    if lo < 1e-300:
        return 0.0
    return float(optimize.brentq(g, lo, q, xtol=1e-300, rtol=4 * np.finfo(float).eps, maxiter=max_iter))


def _bracket_up(g, q: float, cap: float, max_iter: int) -> float:
    """The fixed point above ``q`` where ``g = L - id`` turns negative; ``inf`` if it does not below :data:`OVERFLOW_Q`.

    ``g(x) == 0`` at a doubling point counts as a root only when ``g`` is negative
    beyond it (``g(2x) < 0``): where ``sigma_b^2`` is below the rounding of ``q``,
    ``L(x) - x`` is 0 for every large ``x`` and there is no fixed point at all.
    """
    hi = q
    for _ in range(2000):
        hi *= 2.0
        if hi > OVERFLOW_Q:
            break
        gh = g(hi)
        if gh < 0 or (gh == 0 and g(2.0 * hi) < 0):
            break
    if hi > OVERFLOW_Q and math.isfinite(cap):
        hi = cap  # L(cap) <= cap: the bound is an upper bracket
    if hi > OVERFLOW_Q:
        return math.inf
    if g(hi) == 0:
        return float(hi)
    return float(optimize.brentq(g, q, hi, xtol=1e-300, rtol=4 * np.finfo(float).eps, maxiter=max_iter))


def _q_at(act, sw2: float, sb2: float, q: float | None) -> float:
    """``q`` if given, else ``q*``; for ``q* = inf`` the scale of the last finite iterate."""
    if q is None:
        q = fixed_point_q(act, sw2, sb2)
    return q if math.isfinite(q) else _large_q(act, sw2, sb2)


def chi_1(activation, sigma_w2: float, sigma_b2: float = 0.0, q: float | None = None) -> float:
    """``chi_1 = sigma_w^2 E[phi'(sqrt(q) z)^2]`` at ``q`` (default: ``q*`` from ``q0 = 1``).

    For ``q* = inf`` it is evaluated at the last finite iterate's scale (for
    positively homogeneous activations such as relu it does not depend on ``q``).
    """
    act = get_activation(activation)
    sw2 = _check_var("sigma_w2", sigma_w2)
    q = _q_at(act, sw2, sigma_b2, q)
    return sw2 * grad_moment(act, float(q))


def _large_q(act, sw2, sb2, q0=1.0, steps=200):
    """The last finite iterate of a length map that grows without bound (for slopes there)."""
    q = q0
    for _ in range(steps):
        qn = sw2 * _moments(act, q)[1] + sb2
        if not math.isfinite(qn) or qn > 1e100:
            break
        q = qn
    return q


#: Where the large-q limit is evaluated when q grows without bound (q* = inf).
LIMIT_Q = 1e100


def fixed_point_c(activation, sigma_w2: float, sigma_b2: float = 0.0, q: float | None = None) -> float:
    """The stable fixed point ``c*`` of the correlation map at ``q`` (default ``q*``).

    ``c = 1`` is always a fixed point; it is the stable one when ``chi_1 <= 1``.
    In the chaotic phase (``chi_1 > 1``) ``c*`` is the fixed point in ``[0, 1)``,
    found by Brent's method. ``nan`` when ``q* = 0`` (no signal left). For
    ``q = inf`` (no finite fixed point) the limit of large ``q`` (at :data:`LIMIT_Q`).
    """
    act = get_activation(activation)
    sw2, sb2 = _check_var("sigma_w2", sigma_w2), _check_var("sigma_b2", sigma_b2)
    if q is None:
        q = fixed_point_q(act, sw2, sb2)
    if not math.isfinite(q):
        # q grows without bound: the c-map's large-q limit. The map is a ratio, so sigma_w2 is scaled out
        # of it and no second moment overflows, however large sigma_w2 is.
        q, sw2, sb2 = LIMIT_Q, 1.0, sb2 / sw2
    if q == 0:
        return math.nan
    x1 = sw2 * grad_moment(act, q) * q / (sw2 * _moments(act, q)[1] + sb2)  # c-map slope at c = 1
    if x1 <= 1 + CRITICAL_TOL:
        return 1.0
    f = lambda c: correlation_map(act, sw2, sb2, q, c) - c  # noqa: E731
    lo = 0.0
    if f(lo) < 0:
        lo = -1.0 + 1e-12
        if f(lo) < 0:
            return math.nan
    # f is convex on [0, 1] with f(1) = 0 and slope x1 > 1 there, so it is >= 0 below c* and < 0 between c* and 1:
    # bracket c* from below. (Probing only next to 1 is wrong at large q: there the pair quadrature cannot
    # resolve 1 - c << 1, e.g. tanh at sigma_w2 = 1e20 gave c* = 1 instead of 0.)
    for k in range(1, 8):
        hi = 1.0 - 10.0 ** -k
        if hi > lo and f(hi) < 0:
            return float(optimize.brentq(f, lo, hi, xtol=1e-15, rtol=1e-14))
        lo = max(lo, hi)
    return 1.0


def chi_c(activation, sigma_w2: float, sigma_b2: float = 0.0, q: float | None = None, c: float | None = None) -> float:
    """``chi_c = sigma_w^2 E[phi'(u_a) phi'(u_b)]`` at ``(q, c)`` (default ``(q*, c*)``; for ``q = inf`` the large-q limit)."""
    act = get_activation(activation)
    sw2, sb2 = _check_var("sigma_w2", sigma_w2), _check_var("sigma_b2", sigma_b2)
    if q is None:
        q = fixed_point_q(act, sw2, sb2)
    if c is None:
        c = fixed_point_c(act, sw2, sb2, q)
    if not math.isfinite(c):
        return math.nan
    if not math.isfinite(q):
        q = LIMIT_Q  # as fixed_point_c: the large-q limit
    return sw2 * gaussian_pair_expectation(act, q, c, derivative=True)


def _chi_q(act, sw2, sb2, q):
    """``dq'/dq`` at ``q``: Richardson-extrapolated central difference of the length map."""
    if q == 0:
        return sw2 * grad_moment(act, 0.0)  # d/dq E[phi(sqrt q z)^2] -> phi'(0)^2 + phi(0) phi''(0); phi''(0) = 0 here
    L = lambda x: sw2 * _moments(act, x)[1]  # noqa: E731

    def d(hrel):
        dq = q * hrel
        return (L(q + dq) - L(q - dq)) / (2 * dq)

    d1, d2 = d(2e-3), d(1e-3)
    return (4 * d2 - d1) / 3


def depth_scales(activation, sigma_w2: float, sigma_b2: float = 0.0, q: float | None = None, c: float | None = None) -> tuple[float, float]:
    """``(xi_q, xi_c)``: the depths over which ``q`` and ``c`` approach their fixed points.

    ``xi_q^-1 = -log chi_q`` with ``chi_q = sigma_w^2 E[phi'(h)^2 + phi(h) phi''(h)]``
    (the slope of the length map at ``q*``, computed numerically) and
    ``xi_c^-1 = -log chi_c`` with ``chi_c = sigma_w^2 E[phi'(u_a) phi'(u_b)]`` at
    ``c*`` (Schoenholz et al. 2017, eqs. 6 and 9). ``inf`` where the slope is
    >= 1 (critical, or no finite fixed point); ``nan`` when undefined.
    """
    act = get_activation(activation)
    sw2, sb2 = _check_var("sigma_w2", sigma_w2), _check_var("sigma_b2", sigma_b2)
    if q is None:
        q = fixed_point_q(act, sw2, sb2)
    if not math.isfinite(q):
        return math.inf, math.inf
    xq = _chi_q(act, sw2, sb2, q)
    if c is None:
        c = fixed_point_c(act, sw2, sb2, q)
    xc = chi_c(act, sw2, sb2, q, c) if math.isfinite(c) else math.nan
    return _xi(xq), _xi(xc)


def _xi(chi: float) -> float:
    if not math.isfinite(chi):
        return math.nan
    if chi >= 1 or chi <= 0:
        return math.inf if chi >= 1 else 0.0
    return -1.0 / math.log(chi)


def phase(activation, sigma_w2: float, sigma_b2: float = 0.0, *, tol: float = CRITICAL_TOL) -> str:
    """``"ordered"`` (chi_1 < 1), ``"chaotic"`` (chi_1 > 1) or ``"critical"`` (|chi_1 - 1| <= tol)."""
    return _phase_of(chi_1(activation, sigma_w2, sigma_b2), tol)


def _phase_of(x1: float, tol: float = CRITICAL_TOL) -> str:
    if not math.isfinite(x1):
        return "undefined"
    if abs(x1 - 1) <= tol:
        return "critical"
    return "ordered" if x1 < 1 else "chaotic"


# ----------------------------------------------------------------------------
# the critical line and gains

_HOMOGENEOUS = ("relu", "leaky_relu", "linear")


def _check_critical_sigma_b2(act: Activation, sigma_b2: float) -> float:
    """``sigma_b2`` as a float if :func:`critical_sigma_w2` answers for it, else UserError with the range."""
    sb2 = _check_var("sigma_b2", sigma_b2)
    limit = MAX_CRITICAL_SIGMA_B2 if all(map(math.isfinite, act.bounds)) else MAX_CRITICAL_SIGMA_B2_UNBOUNDED
    if sb2 > limit and act.family not in _HOMOGENEOUS:
        raise UserError(f"sigma_b2 = {sb2:g} is beyond {limit:g}, the largest bias variance whose critical point "
                        f"float64 resolves for the {'bounded' if limit == MAX_CRITICAL_SIGMA_B2 else 'unbounded'} "
                        f"{act.name}")
    return sb2


def critical_sigma_w2(activation, sigma_b2: float = 0.0) -> tuple[float, float]:
    """``(sigma_w^2, q*)`` on the edge of chaos (``chi_1 = 1``) for a bias variance ``sigma_b^2``.

    Parametrized by ``q*``: ``chi_1 = 1`` gives ``sigma_w^2 = 1 / E[phi'(sqrt(q*) z)^2]``
    and the fixed-point condition then fixes ``sigma_b^2 = q* - sigma_w^2 E[phi(sqrt(q*) z)^2]``;
    we solve that for ``q*`` by bracketing and Brent's method (only 1-D
    expectations). For positively homogeneous activations (relu, leaky relu,
    linear) ``chi_1`` does not depend on ``q``: ``sigma_w^2 = 1 / E[phi'^2]``,
    every ``q`` is a fixed point at ``sigma_b^2 = 0`` (``q*`` reported from
    ``q0 = 1``, i.e. ``1.0``) and none is finite for ``sigma_b^2 > 0`` (``inf``).
    At ``sigma_b^2 = 0`` with ``phi(0) = 0`` (tanh, erf, elu, selu, gelu, ...)
    the critical point is ``q* = 0`` with ``sigma_w^2 = 1 / lim_{q->0} E[phi'^2]``
    (``1/phi'(0)^2``; the mean of the squared one-sided slopes at a kink).
    Returns ``(nan, nan)`` when no critical point exists. Answers for every
    ``0 <= sigma_b^2 <= MAX_CRITICAL_SIGMA_B2`` (1e250) for a bounded activation,
    ``<= MAX_CRITICAL_SIGMA_B2_UNBOUNDED`` (1e6) for an unbounded one; larger is
    refused (UserError) rather than answered "none".
    """
    act = get_activation(activation)
    sb2 = _check_critical_sigma_b2(act, sigma_b2)
    if act.family in _HOMOGENEOUS:
        sw2 = 1.0 / grad_moment(act, 1.0)
        return sw2, (1.0 if sb2 == 0 else math.inf)

    def h(q):
        return q - _moments(act, q)[1] / grad_moment(act, q) - sb2

    if sb2 == 0 and float(act.numpy(np.zeros(1))[0]) == 0.0:
        # q = 0 is a fixed point; chi_1 there is sigma_w^2 lim_{q->0} E[phi'^2] (both one-sided slopes at a kink)
        g0 = grad_moment(act, 1e-24)
        if g0 > 0:
            return 1.0 / g0, 0.0
    lo = 1e-12
    if h(lo) > 0:
        return math.nan, math.nan
    hi = _critical_upper_bracket(h, max(1.0, sb2))
    if hi is None:
        return math.nan, math.nan
    # the smallest root: scan geometrically below hi for the first sign change that float64 resolves
    grid = np.geomspace(lo, hi, 48 + 4 * int(math.log10(hi / lo) // 12))
    vals = [h(x) for x in grid]
    for i in range(len(grid) - 1):
        if vals[i] <= 0 < vals[i + 1] and vals[i + 1] > _RESOLVED * grid[i + 1]:
            lo, hi = grid[i], grid[i + 1]
            break
    qs = float(optimize.brentq(h, lo, hi, xtol=1e-300, rtol=1e-15))
    return 1.0 / grad_moment(act, qs), qs


#: Largest bias variance :func:`critical_sigma_w2` answers for with a bounded activation (tanh, erf,
#: sigmoid): there ``q* - E[phi^2]/E[phi'^2]`` has no cancellation (the ratio grows like sqrt(q*)), and
#: ``q* >= sigma_b^2`` must stay far below :data:`propagate.layers.OVERFLOW_Q`.
MAX_CRITICAL_SIGMA_B2 = 1e250
#: The same for an unbounded activation (gelu, silu, softplus, elu, selu, ...): ``E[phi^2]/E[phi'^2]``
#: approaches ``q`` itself, and the difference that decides the critical point falls below float64's
#: resolution (:data:`_RESOLVED` of ``q``) for larger bias variances (elu: near sigma_b2 = 1e9).
MAX_CRITICAL_SIGMA_B2_UNBOUNDED = 1e6
#: A value of ``h(q) = q - E[phi^2]/E[phi'^2] - sigma_b^2`` counts as a sign only above this share of ``q``:
#: the quadrature is good to about 1e-12 relative, so a smaller ``h`` is rounding, not a crossing.
_RESOLVED = 1e-9


def _critical_upper_bracket(h, start: float) -> float | None:
    """A ``q >= start`` with ``h(q)`` resolved positive (doubling), or ``None`` where none is found.

    ``q*`` exceeds ``sigma_b^2`` (the fixed-point condition adds ``sigma_w^2 E[phi^2] >= 0``),
    so the search starts there: for tanh at ``sigma_b^2 = 1e50``, ``q*`` is about ``1e50``. It
    stops (no critical point) below :data:`OVERFLOW_Q` or where ``h`` is no longer resolved (three
    doublings in a row within :data:`_RESOLVED` of ``q``: softplus, whose ``h`` stays negative
    like ``-sqrt(q)``, would otherwise show a rounding "root" near ``q = 3e24``).
    """
    hi, unresolved = start, 0
    while hi <= OVERFLOW_Q / 1e40:
        v = h(hi)
        if v > _RESOLVED * hi:
            return hi
        unresolved = unresolved + 1 if v >= -_RESOLVED * hi else 0
        if unresolved >= 3:
            return None
        hi *= 2.0
    return None


def critical_line(activation, sigma_b2_values: Iterable[float]):
    """The edge of chaos at many bias variances: a DataFrame ``sigma_b2, sigma_w2, q_star``."""
    import pandas as pd

    act = get_activation(activation)
    sigma_b2_values = [_check_critical_sigma_b2(act, v) for v in sigma_b2_values]  # every value before any work
    rows = []
    for sb2 in sigma_b2_values:
        sw2, qs = critical_sigma_w2(act, sb2)
        rows.append({"sigma_b2": float(sb2), "sigma_w2": sw2, "q_star": qs})
    return pd.DataFrame(rows, columns=["sigma_b2", "sigma_w2", "q_star"])


def variance_preserving_gain(activation) -> float:
    """The ``sigma_w^2`` with ``q* = 1`` at ``sigma_b^2 = 0``: ``1 / E[phi(z)^2]``, ``z ~ N(0, 1)``.

    This is a weight *variance* scale (``Var(w) = sigma_w^2 / fan_in``); the
    matching standard-deviation gain, in ``torch.nn.init.calculate_gain``'s
    sense, is its square root. selu gives 1 (LeCun), relu 2 (He).
    """
    act = get_activation(activation)
    m2 = _moments(act, 1.0)[1]
    if not m2 > 0:
        return math.nan
    return 1.0 / m2


def snn_moment_map(activation, mu: float, nu: float, omega: float = 0.0, tau: float = 1.0) -> tuple[float, float]:
    """The SNN paper's mean/variance map (Klambauer et al. 2017, eq. 4 and 5), numerically.

    Inputs with mean ``mu`` and variance ``nu`` through weights with
    ``omega = sum_i w_i`` and ``tau = sum_i w_i^2`` give ``z ~ N(mu omega, nu tau)``;
    returns ``(mu_tilde, nu_tilde) = (E[phi(z)], Var[phi(z)])`` for any
    activation (closed forms where they exist, otherwise quadrature). For selu
    with ``omega = 0, tau = 1``, ``(0, 1)`` maps to itself.
    """
    act = get_activation(activation)
    nu = _check_var("nu", nu)
    tau = _check_var("tau", tau)
    mean, var = float(mu) * float(omega), nu * tau
    m1, m2 = _moments(act, var, mean)
    return m1, m2 - m1 * m1


# ----------------------------------------------------------------------------
# per-layer predictions for a whole spec


def predict_layers(spec, *, input_q: float | None = None, input_mean: float | None = None, input_corr: float | None = None, config: str | None = None):
    """Mean-field prediction of every layer of ``spec``: the :mod:`propagate.stats` table.

    Row 0 is the input (``post_mean``, ``post_var``, ``post_q``, ``corr``);
    rows ``l = 1..depth`` give ``pre_mean = 0`` (zero-mean weights), ``pre_var =
    pre_q`` (``sigma_w2_l`` times the second moment of the layer's input plus
    ``sigma_b2_l``), the post-activation moments, the pair correlation
    ``corr`` of the pre-activations of two inputs, and ``grad_norm`` for the
    random readout ``y = r . x^depth / sqrt(n_depth)`` (``E||dy/dx^depth||^2 = 1``),
    plus ``sigma_w2``, ``sigma_b2`` and ``diverged`` columns. Widths enter
    only through each layer's ``sigma_w^2``.

    The table is a fold of the moment state over the spec's layer operations
    (:func:`propagate.layers.fold_moments`): each op's mean-field map and
    gradient factor is documented on its class in :mod:`propagate.layers`
    (Dense, BatchNorm, LayerNorm, Activation, Dropout, AlphaDropout,
    Residual). ``grad_norm^2`` at ``h^l`` is the product of the factors of
    every op after layer ``l``'s Dense (for a residual block, ``s^2 + R^2``
    times its branch's).

    Inputs: ``input_mean`` and variance default to ``spec.input_mean`` /
    ``spec.input_var``; ``input_q`` (second moment) overrides the variance;
    ``input_corr`` (uncentered correlation of two inputs) defaults to
    ``m^2 / (m^2 + v)``, that of two independent inputs.

    Overflow (``q > 1e300``), inf or NaN marks the row and all later rows
    ``diverged`` (their values inf/NaN, ``grad_norm`` NaN); it does not raise.
    """
    state, row0 = _input_state(spec, input_q, input_mean, input_corr)
    rows: dict = {0: row0}
    with np.errstate(all="ignore"):
        final, trace = fold_moments(spec.compile(), state, _LayerExpectations(), rows)
        log_g: dict = {}
        moment_gradients(trace, 0.0, log_g)
        signal: dict = {}
        if not final.diverged:
            signal_gradients(trace, _tangent_expectations, signal)
    diverged = final.diverged or any(r.get("diverged") for r in rows.values())
    ordered = [rows[l] for l in sorted(rows)]
    for r in ordered[1:]:
        r["grad_norm"] = math.nan if diverged else float(np.exp(0.5 * log_g.get(r["layer"], math.nan)))
        n_q = r["width"] * r["pre_q"]
        r["grad_norm_signal"] = (math.sqrt(max(signal[r["layer"]], 0.0) / n_q) if not diverged and n_q > 0
                                 and r["layer"] in signal else math.nan)
    return layer_table(ordered, source="theory", config=config if config is not None else spec.label(), spec=spec)


def _input_state(spec, input_q, input_mean, input_corr) -> tuple[Moments, dict]:
    """The moment state of the network input and its row 0."""
    m0 = float(spec.input_mean if input_mean is None else input_mean)
    if not math.isfinite(m0):
        raise UserError(f"input mean must be finite, got {m0}")
    if input_q is None:
        v0 = float(spec.input_var)
        q0 = m0 * m0 + v0
    else:
        q0 = _check_var("input second moment", input_q)
        v0 = q0 - m0 * m0
        if v0 < -1e-12 * max(q0, 1.0):
            raise UserError(f"input second moment {q0} is below the squared mean {m0 * m0}")
        v0 = max(v0, 0.0)
    if input_corr is None:
        c0 = m0 * m0 / q0 if q0 > 0 else 1.0
    else:
        c0 = float(input_corr)
        if not -1 <= c0 <= 1:
            raise UserError(f"input correlation must be in [-1, 1], got {c0}")
    row0 = {"layer": 0, "width": spec.widths[0], "post_mean": m0, "post_var": v0, "post_q": q0, "corr": c0,
            "sigma_w2": math.nan, "sigma_b2": math.nan, "diverged": False}
    return Moments(m0, q0, c0 * q0), row0


_TANGENT_CACHE: dict = {}


def _tangent_expectations(act: Activation, q: float) -> tuple[float, float, float, float]:
    """``(E[h phi'], E[h phi phi'], k, E[phi'^2])`` for ``h ~ N(0, q)`` (the ops' tangent maps).

    ``k = E[(z^2 - 1) (phi'(h)^2 - E[phi'^2])]`` with ``z = h / sqrt(q)``, so that
    ``E[h^2 phi'^2] - q E[phi'^2] = q k``. It is computed in this centred,
    normalised form because the difference of the two uncentred moments cancels
    to rounding noise and ``k / q`` (the pull-back's coefficient) then divides
    that noise by a vanishing signal (``q`` below ~1e-154 made ``q^2`` zero).
    Where ``phi'^2`` no longer varies over ``h`` in double precision (a smooth
    activation at ``q`` below ~1e-16), ``k`` is 0.
    """
    key = (act.name, float(q))
    if key not in _TANGENT_CACHE:
        if len(_TANGENT_CACHE) > 4096:
            _TANGENT_CACHE.clear()
        sd = math.sqrt(q)
        h, w = _nodes_1d(0.0, sd, act.kinks)
        y, g = act.numpy(h), act.grad(h)
        hg, g2 = h * g, g * g
        mean_g2 = float(np.dot(w, g2))
        z = h / sd
        _TANGENT_CACHE[key] = (float(np.dot(w, hg)), float(np.dot(w, hg * y)),
                               float(np.dot(w, (z * z - 1.0) * (g2 - mean_g2))), mean_g2)
    return _TANGENT_CACHE[key]


class _LayerExpectations:
    """``(act, q, c) -> (E[phi], E[phi^2], E[phi'^2], E[phi(u_a) phi(u_b)])`` for the layer ops, remembering recent answers.

    Converged stacks ask the same ``(q, c)`` again and again (or alternate in
    the last bit), so the last few answers are kept.
    """

    def __init__(self, keep: int = 8):
        self.keep = keep
        self.recent: dict = {}

    def __call__(self, act, q, c):
        key = (act.name, q, c)
        if key not in self.recent:
            if len(self.recent) > self.keep:
                self.recent.pop(next(iter(self.recent)))
            self.recent[key] = _layer_moments(act, q, c)
        return self.recent[key]


# ----------------------------------------------------------------------------
# one-stop analysis (what `propagate theory` prints)


@dataclass
class TheoryResult:
    """Fixed points, slopes, depth scales and phase of one ``(activation, sigma_w^2, sigma_b^2)``, with the per-layer table.

    ``q_star`` is ``inf`` when the length map has no finite fixed point
    (``fixed_point`` False); ``growth`` is then the per-layer factor by which
    ``q`` grows at the end of the predicted stack (else 1).
    """

    activation: str
    sigma_w2: float
    sigma_b2: float
    q_star: float
    c_star: float
    chi_1: float
    chi_c: float
    chi_q: float
    xi_q: float
    xi_c: float
    phase: str
    fixed_point: bool
    growth: float
    table: object = field(repr=False, default=None)
    config: str = ""

    def summary(self) -> dict:
        """The scalars as a dict (JSON-ready)."""
        return {k: getattr(self, k) for k in ("activation", "sigma_w2", "sigma_b2", "q_star", "c_star", "chi_1",
                                              "chi_c", "chi_q", "xi_q", "xi_c", "phase", "fixed_point", "growth", "config")}

    def to_dict(self) -> dict:
        d = self.summary()
        if self.table is not None:
            import json

            d["layers"] = json.loads(self.table.to_json(orient="records", double_precision=15))
        return d


def analyze(activation, sigma_w2: float, sigma_b2: float = 0.0, depth: int = 50, *, spec=None, width: int = 256,
            input_q: float | None = None, input_corr: float | None = None) -> TheoryResult:
    """Everything ``propagate theory`` reports for one ``(activation, sigma_w^2, sigma_b^2)``.

    The per-layer table comes from ``spec`` if given (its own per-layer
    ``sigma_w^2``), else from a uniform stack of ``depth`` layers of ``width``
    units with ``N(0, sigma_w^2 / fan_in)`` weights and bias variance
    ``sigma_b^2``, fed N(0, 1) inputs unless ``input_q``/``input_corr`` say otherwise.
    """
    from propagate.spec import NetworkSpec

    act = get_activation(activation)
    sw2, sb2 = _check_var("sigma_w2", sigma_w2), _check_var("sigma_b2", sigma_b2)
    if sw2 <= 0:
        raise UserError("sigma_w2 must be > 0")
    if spec is None:
        if not isinstance(depth, int) or depth < 1:
            raise UserError(f"depth must be a whole number >= 1, got {depth!r}")
        check_depth(depth)  # before a widths tuple of that length is built
        spec = NetworkSpec(widths=(width,) * (depth + 1), activation=activation if isinstance(activation, str) else act.name,
                           init=f"normal:{sw2!r}", bias_var=sb2)
    table = predict_layers(spec, input_q=input_q, input_corr=input_corr)
    qs = fixed_point_q(act, sw2, sb2)
    finite = math.isfinite(qs)
    growth = 1.0
    if not finite:
        pre = table["pre_q"].to_numpy(dtype=float)
        ok = np.isfinite(pre) & (pre > 0)
        idx = np.flatnonzero(ok)
        growth = float(pre[idx[-1]] / pre[idx[-2]]) if len(idx) >= 2 else math.inf
    q_eval = qs if finite else LIMIT_Q  # no finite fixed point: the slopes' large-q limit
    x1 = sw2 * grad_moment(act, q_eval)
    cs = fixed_point_c(act, sw2, sb2, qs)
    xc = chi_c(act, sw2, sb2, qs, cs) if math.isfinite(cs) else math.nan
    xq = _chi_q(act, sw2, sb2, qs) if finite else growth
    xi_q = _xi(xq) if finite else math.inf
    xi_c = _xi(xc)
    return TheoryResult(activation=act.name, sigma_w2=sw2, sigma_b2=sb2, q_star=qs, c_star=cs, chi_1=x1, chi_c=xc,
                        chi_q=xq, xi_q=xi_q, xi_c=xi_c, phase=_phase_of(x1), fixed_point=finite, growth=growth,
                        table=table, config=spec.label())
