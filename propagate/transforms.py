"""Activation transforms that shape a deep plain network's kernel: DKS and TAT.

Deep Kernel Shaping (Martens et al. 2021, "Rapid training of deep neural
networks without skip connections or normalization layers using Deep Kernel
Shaping") and Tailored Activation Transformations (Zhang et al. 2022, "Deep
Learning without Shortcuts: Shaping the Kernel with Tailored Rectifiers")
choose ``phi_hat(x) = gamma * (phi(a x + b) + d)`` (or a leaky ReLU's slope) so
that a network of ``depth`` layers without skip connections or normalization
keeps a well-shaped kernel.

Conventions: the local maps of a layer with unit weight variance are ``Q(q) =
E[phi_hat(sqrt(q) x)^2]`` and ``C(c) = E[phi_hat(u) phi_hat(v)]`` with ``(u, v)
~ N(0, [[1, c], [c, 1]])``, ``x ~ N(0, 1)``; the network's maps are the
``depth``-fold compositions ``C_f = C o ... o C``. ``q`` is a second moment,
``c`` an uncentered correlation (those of :mod:`propagate.theory`). Roots are
found in float64 from several starts (theory's quadrature) and polished by
``mpmath.findroot`` at ``digits + GUARD_DIGITS`` digits
(:mod:`propagate.gaussian`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import mpmath as mp
import numpy as np
from scipy import optimize

from propagate.activations import transformed_activation
from propagate.errors import UserError
from propagate.selu import DigitsRecord
from propagate.gaussian import (
    GUARD_DIGITS,
    BaseActivation,
    NumpyArithmetic,
    ShiftedActivation,
    base_activation,
    check_digits,
    exact,
)
from propagate.theory import gaussian_expectation

__all__ = ["MAX_DIGITS", "MAX_LEAKY_WORK", "TransformResult", "dks_transform", "tat_transform", "leaky_relu_cmap",
           "local_maps"]


def leaky_relu_cmap(c, slope):
    """Local C map of ``sqrt(2 / (1 + s^2)) * leaky_relu(x; s)`` (so ``Q(1) = 1``), mpmath.

    ``leaky_relu = s h + (1 - s) relu(h)`` gives ``E[phi(u) phi(v)] = s c + (1 -
    s)^2 (sqrt(1 - c^2) + (pi - arccos c) c) / (2 pi)`` (arc-cosine kernel of
    degree 1, Cho & Saul 2009), divided by ``Q(1) = (1 + s^2) / 2``.
    """
    c, s = mp.mpf(c), mp.mpf(slope)
    k1 = (mp.sqrt(1 - c * c) + (mp.pi - mp.acos(c)) * c) / (2 * mp.pi)
    return (s * c + (1 - s) ** 2 * k1) * 2 / (1 + s * s)


@dataclasses.dataclass
class TransformResult(DigitsRecord):
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

    def to_dict(self) -> dict[str, Any]:
        """Every number as a string at ``digits`` digits (JSON-ready)."""
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


def local_maps(base: BaseActivation, gamma, a, b, d, shape: ShiftedActivation | None = None) -> dict:
    """``Q(1), Q'(1), C(0), C'(1)`` and (no kinks) ``C''(1)`` of ``gamma (phi(a x + b) + d)``, mpmath, ``x ~ N(0, 1)``."""
    u = shape if shape is not None else ShiftedActivation(base, a, b)
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


def _float_local(base: BaseActivation, a: float, b: float, d: float | None) -> tuple[dict, float, float]:
    """Float64 local maps with gamma (and d when None: C(0) = 0) solved; returns (maps, gamma, d)."""
    f = base.f
    kinks = [(k - b) / a for k in base.kinks]
    F = NumpyArithmetic

    def E(g):
        return gaussian_expectation(g, 1.0, kinks=kinks)

    e1 = E(lambda z: f(a * z + b, F))
    if d is None:
        d = -e1
    e2 = E(lambda z: (f(a * z + b, F) + d) ** 2)
    g2 = 1.0 / e2
    out = {
        "Q'(1)": g2 * a * E(lambda z: (f(a * z + b, F) + d) * f(a * z + b, F, 1) * z),
        "C'(1)": g2 * a * a * E(lambda z: f(a * z + b, F, 1) ** 2),
    }
    if not base.kinks:
        out["C''(1)"] = g2 * a**4 * E(lambda z: f(a * z + b, F, 2) ** 2)
    return out, math.sqrt(g2), d


#: Most significant digits of a transform. The Newton steps of DKS and smooth TAT evaluate Gaussian
#: expectations by quadrature whose cost grows faster than digits^2, and with the depth (DKS at depth 100000:
#: gelu 22 s at 80 digits and 86 s at 100, tanh 49 s at 80; depth 50: 7 s at 50 digits; minutes at 200;
#: measured on 2 busy cores).
MAX_DIGITS = 80
#: Most ``depth x (digits + GUARD_DIGITS)`` of TAT's leaky ReLU: every step of its solve composes the c-map
#: ``depth`` times at that precision (about 30 us a unit: 35 s at depth 5000 and 200 digits; a minute here).
MAX_LEAKY_WORK = 1.5e6


def _check_depth(depth) -> int:
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
        raise UserError(f"depth must be a whole number >= 1, got {depth!r}")
    return depth


def _check_digits(digits) -> None:
    check_digits(digits)
    if digits > MAX_DIGITS:
        raise UserError(f"a transform is solved to at most {MAX_DIGITS} digits (the quadrature's cost grows faster "
                        f"than digits^2: {MAX_DIGITS} digits take up to a minute), got {digits}")


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


def _polish(equations: Callable, start: Sequence[float]) -> list:
    """``mpmath.findroot`` (multidimensional Newton) from a float64 root, at the working precision."""
    x = mp.findroot(equations, [exact(v) for v in start], maxsteps=30)
    return [x[i] for i in range(len(start))] if len(start) > 1 else [x]


#: The equations each transform solves, as printed (``{depth}``: the network's depth).
EQUATIONS = {
    "dks": ("d = -E[phi(a x + b)]                       (C(0) = 0)",
            "gamma = Var[phi(a x + b)]^(-1/2)           (Q(1) = 1)",
            "gamma^2 a E[(phi(a x + b) + d) phi'(a x + b) x] = 1        (Q'(1) = 1)",
            "gamma^2 a^2 E[phi'(a x + b)^2] = zeta^(1/{depth})          (C_f'(1) = C'(1)^{depth} = zeta)"),
    "tat": ("gamma = E[(phi(a x + b) + d)^2]^(-1/2)       (Q(1) = 1)",
            "gamma^2 a E[(phi(a x + b) + d) phi'(a x + b) x] = 1        (Q'(1) = 1)",
            "gamma^2 a^2 E[phi'(a x + b)^2] = 1                         (C'(1) = 1)",
            "{depth} gamma^2 a^4 E[phi''(a x + b)^2] = tau              (C_f''(1) = {depth} C''(1) = tau)"),
}


def _result(method: str, base: BaseActivation, depth: int, digits: int, params: dict, targets: dict,
            achieved: dict) -> TransformResult:
    """A :class:`TransformResult` of ``gamma (phi(a x + b) + d)`` with its activation string (float64 parameters)
    and the equations of ``method`` (:data:`EQUATIONS`) at ``depth``."""
    act = transformed_activation(base.name, **{k: float(v) for k, v in params.items()}).name
    eqs_text = [e.format(depth=depth) for e in EQUATIONS[method]]
    return TransformResult(method, base.name, depth, digits, params, act, eqs_text, targets, achieved)


def dks_transform(activation, depth: int, *, zeta: float = 1.5, digits: int = 20) -> TransformResult:
    """Deep Kernel Shaping (Martens et al. 2021): ``gamma (phi(a x + b) + d)`` for a plain network of ``depth`` layers.

    Solves ``Q(1) = 1``, ``Q'(1) = 1``, ``C(0) = 0`` and ``C_f'(1) = C'(1)^depth
    = zeta`` (``zeta > 1``; DKS's default 1.5): ``d = -E[phi(a x + b)]`` and
    ``gamma = Var(phi(a x + b))^(-1/2)`` in closed form, ``(a, b)`` by Newton's
    method from a float64 multistart. Positively homogeneous activations (relu,
    leaky_relu, linear) are refused: their ``a`` is absorbed into ``gamma``.
    ``digits`` at most :data:`MAX_DIGITS` (up to a minute at 80 digits and depth 100000).
    """
    depth = _check_depth(depth)
    _check_digits(digits)
    if not (isinstance(zeta, (int, float)) and math.isfinite(zeta) and zeta > 1):
        raise UserError(f"DKS needs zeta > 1 (the network's C_f'(1)), got {zeta!r}")
    base = base_activation(activation)
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
    with mp.workdps(digits + GUARD_DIGITS):
        z = exact(zeta)
        target = z ** (mp.mpf(1) / depth)

        def scale_shift(u):  # C(0) = 0 and Q(1) = 1 in closed form
            e1, e2 = u.mp_moments(1)
            return 1 / mp.sqrt(e2 - e1 * e1), -e1

        def eqs(a, b):
            u = ShiftedActivation(base, a, b)
            g, d = scale_shift(u)
            m = local_maps(base, g, a, b, d, u)
            return [m["Q'(1)"] - 1, m["C'(1)"] - target]

        a, b = _polish(eqs, roots[0])
        gamma, d = scale_shift(ShiftedActivation(base, a, b))
        achieved = local_maps(base, gamma, a, b, d)
        achieved["C_f'(1)"] = achieved["C'(1)"] ** depth
        params = {"gamma": gamma, "a": a, "b": b, "d": d}
        targets = {"Q(1)": mp.mpf(1), "Q'(1)": mp.mpf(1), "C(0)": mp.mpf(0), "C'(1)": target, "C_f'(1)": z}
    return _result("dks", base, depth, digits, params, targets, achieved)


def tat_transform(activation, depth: int, *, eta: float = 0.9, tau: float = 0.3, digits: int = 20) -> TransformResult:
    """Tailored Activation Transformations (Zhang et al. 2022) for a plain network of ``depth`` layers.

    leaky_relu (and relu): the negative slope ``s`` with ``C_f(0) = C^depth(0)
    = eta`` for the leaky ReLU c-map (:func:`leaky_relu_cmap`), output scale
    ``gamma = sqrt(2 / (1 + s^2))`` so that ``Q(1) = 1``; ``eta`` in (0, 1).
    Smooth activations (no kinks): ``gamma (phi(a x + b) + d)`` with ``Q(1) = 1``
    (``gamma`` in closed form), ``Q'(1) = 1``, ``C'(1) = 1`` and ``C_f''(1) =
    depth C''(1) = tau`` (the second derivative of a composition of maps with
    slope 1 at 1 adds up), ``(a, b, d)`` by Newton's method.

    ``digits`` at most :data:`MAX_DIGITS`; for leaky_relu ``depth x (digits +
    15)`` at most :data:`MAX_LEAKY_WORK` (each bounds the run to about a minute).
    """
    depth = _check_depth(depth)
    _check_digits(digits)
    base = base_activation(activation)
    if base.family in ("leaky_relu", "relu"):
        if not (isinstance(eta, (int, float)) and 0 < eta < 1):
            raise UserError(f"TAT for leaky_relu needs 0 < eta < 1 (the network's C_f(0)), got {eta!r}")
        work = depth * (digits + GUARD_DIGITS)
        if work > MAX_LEAKY_WORK:
            raise UserError(f"TAT for leaky_relu composes the c-map depth times at digits + {GUARD_DIGITS} digits "
                            f"per step: depth x (digits + {GUARD_DIGITS}) = {work:.3g} is more than the limit "
                            f"{MAX_LEAKY_WORK:.3g} (about a minute); use a smaller depth or fewer digits")
        return _tat_leaky_relu(depth, eta, digits)
    if base.kinks:
        raise UserError(f"TAT's smooth transform needs an activation without kinks, got {base.name!r} (use leaky_relu)")
    if not (isinstance(tau, (int, float)) and math.isfinite(tau) and tau > 0):
        raise UserError(f"TAT needs tau > 0 (the network's C_f''(1)), got {tau!r}")
    return _tat_smooth(base, depth, tau, digits)


def _float_cf0(slope: float, depth: int) -> float:
    """``C^depth(0)`` of :func:`leaky_relu_cmap` in float64 (the start of the mpmath solve)."""
    scale, kink, c = 2.0 / (1.0 + slope * slope), (1.0 - slope) ** 2, 0.0
    for _ in range(depth):
        c = min(c, 1.0)  # rounding must not push c past 1 (acos)
        c = scale * (slope * c + kink * (math.sqrt(1.0 - c * c) + (math.pi - math.acos(c)) * c) / (2.0 * math.pi))
    return c


def _tat_leaky_relu(depth: int, eta: float, digits: int) -> TransformResult:
    """TAT's leaky ReLU: the slope ``s`` with ``C^depth(0) = eta``, ``gamma = sqrt(2 / (1 + s^2))``.

    ``C_f(0)`` falls from ReLU's value at ``s = 0`` to 0 at ``s = 1`` (the
    identity); the root is bracketed and found in float64 (Brent), then polished
    by the secant method at the working precision: a handful of ``depth``-fold
    compositions in mpmath instead of hundreds (depth 5000: 16 s before, 1 s now).
    """
    with mp.workdps(digits + GUARD_DIGITS):
        e = exact(eta)

        def cf0(s):
            c = mp.mpf(0)
            for _ in range(depth):
                c = leaky_relu_cmap(c, s)
            return c

        top = 1.0 - 1e-12  # slope 1 is the identity (C_f(0) = 0); closer to it the slope has no digits left
        relu_value, near_linear = _float_cf0(0.0, depth), _float_cf0(top, depth)
        if relu_value <= eta:
            raise UserError(f"TAT cannot reach C_f(0) = {eta!r} at depth {depth}: even ReLU (slope 0) gives "
                            f"{relu_value:.6g}")
        if near_linear >= eta:
            raise UserError(f"TAT cannot reach C_f(0) = {eta!r} at depth {depth}: slopes up to 1 - 1e-12 give "
                            f"C_f(0) >= {near_linear:.3g}; use a larger eta")
        start = optimize.brentq(lambda s: _float_cf0(s, depth) - eta, 0.0, top, xtol=1e-15, rtol=1e-15)
        s = mp.findroot(lambda s: cf0(s) - e, (mp.mpf(start), mp.mpf(start) * (1 - mp.mpf(10) ** -9)),
                        solver="secant", maxsteps=50)
        gamma = mp.sqrt(2 / (1 + s * s))
        lb = BaseActivation(f"leaky_relu:slope={float(s)!r}", "leaky_relu", {"slope": s}, (0.0,))
        achieved = local_maps(lb, gamma, mp.mpf(1), mp.mpf(0), mp.mpf(0))
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


def _tat_smooth_start(base: BaseActivation, depth: int, tau: float) -> np.ndarray:
    """The float64 ``(a, b, d)`` Newton starts from: the smallest root with a moderate input-output gain."""
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
    return roots[0]


def _tat_smooth(base: BaseActivation, depth: int, tau: float, digits: int) -> TransformResult:
    """TAT for a smooth activation: ``Q(1) = Q'(1) = C'(1) = 1`` and ``C_f''(1) = depth C''(1) = tau``."""
    start = _tat_smooth_start(base, depth, tau)
    with mp.workdps(digits + GUARD_DIGITS):
        t = exact(tau)

        def gamma_of(a, b, d, u=None):
            u = u or ShiftedActivation(base, a, b)
            return 1 / mp.sqrt(u.mp_expect(lambda z, f0, f1, f2: (f0 + d) ** 2))

        def eqs(a, b, d):
            u = ShiftedActivation(base, a, b)
            m = local_maps(base, gamma_of(a, b, d, u), a, b, d, u)
            return [m["Q'(1)"] - 1, m["C'(1)"] - 1, m["C''(1)"] - t / depth]

        a, b, d = _polish(eqs, start)
        gamma = gamma_of(a, b, d)
        achieved = local_maps(base, gamma, a, b, d)
        achieved["C_f''(1)"] = depth * achieved["C''(1)"]
        params = {"gamma": gamma, "a": a, "b": b, "d": d}
        targets = {"Q(1)": mp.mpf(1), "Q'(1)": mp.mpf(1), "C'(1)": mp.mpf(1), "C_f''(1)": t}
    return _result("tat", base, depth, digits, params, targets, achieved)
