"""Activation functions by name: numpy and torch forms, derivatives, Gaussian moments.

Names follow the ML literature; parameters go after a colon::

    relu, linear, tanh, sigmoid, erf, softplus, gelu, silu (= swish)
    leaky_relu:slope=0.01      (or leaky_relu:0.01, the first parameter)
    elu:alpha=1.0
    selu                       (the solved constants, see propagate.selu)
    selu:lambda=1.05,alpha=1.67
    gelu@gamma=1.2,a=1,b=0.5,d=-0.3   (an affine transform, below)

``BASE@gamma=G,a=A,b=B,d=D`` is ``phi_hat(x) = G * (phi(A x + B) + D)`` for any
``BASE`` above (its own parameters after a colon as usual); omitted ones default
to ``gamma = 1, a = 1, b = 0, d = 0``. Each parameter may be given once, and
must lie in its range (:data:`PARAMETER_RANGES`: ``|slope| <= 1e6``,
``0 <= alpha <= 1e6``, ``1e-6 <= lambda <= 1e6``, ``1e-6 <= |gamma|, |a| <= 1e6``,
``|b|, |d| <= 1e6``); anything else is refused when the name is read. ``propagate self-normalize`` and
``propagate transform`` print such strings; theory, simulate and train accept them.

Closed-form Gaussian moments ``E[phi(h)]``, ``E[phi(h)^2]`` and ``E[phi'(h)^2]``
for ``h ~ N(mean, var)`` (``var`` is a variance, not a standard deviation) are
provided where they exist (linear, relu, leaky_relu, elu, selu, and erf at mean
0); the theory falls back to quadrature elsewhere, splitting at ``kinks``.

Users add their own with :func:`register_activation`.
"""

from __future__ import annotations

import functools

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np
from scipy import special

from propagate.errors import UserError, name_key

__all__ = [
    "Activation",
    "builtin_torch_form",
    "get_activation",
    "list_activations",
    "register_activation",
    "selu_constants",
    "torch_forms",
    "TorchForms",
    "transformed_activation",
]


@functools.lru_cache(maxsize=None)
def selu_constants() -> tuple[float, float]:
    """SELU's ``(lambda, alpha)`` for the fixed point (mean 0, variance 1), float64.

    Cached: the mpmath evaluation costs about 100 us, and torch forms call this
    on every forward pass.

    Evaluated at 30 digits from the closed forms that :mod:`propagate.selu`
    derives symbolically (SNN paper eq. 14) and rounded once to float64;
    ``tests/test_activations.py`` checks them against the arbitrary-precision
    solver.
    """
    import mpmath

    with mpmath.workdps(30):
        e, pi = mpmath.e, mpmath.pi
        c = mpmath.erfc(1 / mpmath.sqrt(2))
        alpha = -mpmath.sqrt(2 / pi) / (c * mpmath.sqrt(e) - 1)
        lam = (1 - c * mpmath.sqrt(e)) * mpmath.sqrt(2 * pi) / mpmath.sqrt(
            2 * mpmath.erfc(mpmath.sqrt(2)) * e**2 + pi * c**2 * e - 2 * (2 + pi) * c * mpmath.sqrt(e) + pi + 2
        )
        return float(lam), float(alpha)


@dataclass(frozen=True)
class Activation:
    """An elementwise activation ``phi`` with what theory and simulation need.

    ``numpy``/``grad`` act on numpy arrays, ``torch`` on tensors (autograd-safe).
    ``moments(mean, var)`` returns ``(E[phi(h)], E[phi(h)^2])`` and
    ``grad_moment(mean, var)`` returns ``E[phi'(h)^2]`` for ``h ~ N(mean, var)``
    in closed form, or ``None`` when there is none (theory then integrates).
    ``kinks`` are points where ``phi`` or ``phi'`` is not smooth. ``bounds`` is
    the output range, for the saturation statistics.
    """

    name: str
    family: str
    params: Mapping[str, float]
    numpy: Callable[[np.ndarray], np.ndarray]
    grad: Callable[[np.ndarray], np.ndarray]
    torch: Callable | None = None
    moments: Callable[[float, float], tuple[float, float]] | None = None
    grad_moment: Callable[[float, float], float] | None = None
    kinks: tuple[float, ...] = ()
    bounds: tuple[float, float] = (-math.inf, math.inf)
    torch_gain: tuple[str, float | None] | None = None
    doc: str = field(default="", compare=False)

    def __call__(self, x):
        return self.numpy(np.asarray(x, dtype=float))

    def torch_module(self):
        """An ``nn.Module`` applying this activation (for building torch models)."""
        import torch.nn as nn

        if self.torch is None:
            raise UserError(f"activation {self.name!r} has no torch form; register one with torch=...")
        fn = self.torch
        label = self.name

        class _Act(nn.Module):
            def forward(self, x):
                return fn(x)

            def extra_repr(self):
                return label

        return _Act()


# ----------------------------------------------------------------------------
# closed-form Gaussian moments (h ~ N(m, v))


def _ndtr(x):
    return special.ndtr(x)


def _pdf(x):
    return np.exp(-0.5 * np.square(x)) / math.sqrt(2 * math.pi)


def _relu_moments(m, v):
    s = math.sqrt(v)
    if s == 0:
        return max(m, 0.0), max(m, 0.0) ** 2
    a = m / s
    m1 = m * _ndtr(a) + s * _pdf(a)
    m2 = (m * m + v) * _ndtr(a) + m * s * _pdf(a)
    return float(m1), float(m2)


def _neg_part_moments(m, v):
    """E[min(h,0)], E[min(h,0)^2] for h ~ N(m, v)."""
    r1, r2 = _relu_moments(-m, v)
    return -r1, r2


def _elu_core(m, v, alpha):
    """E[elu], E[elu^2], E[elu'^2] for h ~ N(m, v), via log-space normal tails."""
    s = math.sqrt(v)
    pos1, pos2 = _relu_moments(m, v)
    if s == 0:
        h = m
        val = h if h > 0 else alpha * math.expm1(h)
        der = 1.0 if h > 0 else alpha * math.exp(h)
        return val, val * val, der * der
    # E[e^{k h} 1{h<=0}] = exp(k m + k^2 v / 2) Phi(-(m + k v)/s). For m + k v >= 0
    # the two exponents cancel: it equals exp(-m^2/(2v)) erfcx((m + k v)/(s sqrt 2)) / 2,
    # which stays finite for huge v where the naive product overflows.
    def tail(k):
        x = m + k * v
        if x >= 0:
            return 0.5 * math.exp(-m * m / (2 * v)) * float(special.erfcx(x / (s * math.sqrt(2))))
        return math.exp(k * m + 0.5 * k * k * v + float(special.log_ndtr(-x / s)))

    p_neg = float(_ndtr(-m / s))
    e1, e2 = tail(1.0), tail(2.0)
    mean = pos1 + alpha * (e1 - p_neg)
    if v < 1e-10 and abs(m) < 1e-5:
        # e2 - 2 e1 + p_neg = E[(e^h - 1)^2; h <= 0] is O(v) but each term is O(1): it
        # cancels to rounding noise. Near h = 0, (e^h - 1)^2 = h^2 (1 + O(h)), so use
        # E[min(h, 0)^2] (relative error O(sqrt v + |m|) < 1e-5).
        neg2 = _neg_part_moments(m, v)[1]
    else:
        neg2 = e2 - 2 * e1 + p_neg
    # Jensen's E[phi^2] >= E[phi]^2 bounds what rounding is left
    second = max(pos2 + alpha * alpha * neg2, mean * mean)
    grad2 = float(_ndtr(m / s)) + alpha * alpha * e2
    return mean, second, grad2


# ----------------------------------------------------------------------------
# the families

_Factory = Callable[..., Activation]
_FAMILIES: dict[str, tuple[_Factory, dict[str, float], str]] = {}


def _family(name: str, defaults: dict[str, float] | None = None, doc: str = ""):
    def deco(factory):
        _FAMILIES[name] = (factory, dict(defaults or {}), doc)
        return factory

    return deco


def _label(name, params, defaults):
    if not params or params == defaults:
        return name
    return name + ":" + ",".join(f"{k}={v:g}" for k, v in params.items())


@_family("linear", doc="identity, phi(h) = h")
def _linear(name):
    return Activation(
        name=name,
        family="linear",
        params={},
        numpy=lambda x: x,
        grad=lambda x: np.ones_like(x),
        torch=_TableForward("linear"),
        moments=lambda m, v: (m, v + m * m),
        grad_moment=lambda m, v: 1.0,
        torch_gain=("linear", None),
    )


@_family("relu", doc="max(h, 0)")
def _relu(name):
    return Activation(
        name=name,
        family="relu",
        params={},
        numpy=lambda x: np.maximum(x, 0.0),
        grad=lambda x: (x > 0).astype(float),
        torch=_TableForward("relu"),
        moments=_relu_moments,
        grad_moment=lambda m, v: float(_ndtr(m / math.sqrt(v))) if v > 0 else float(m > 0),
        kinks=(0.0,),
        bounds=(0.0, math.inf),
        torch_gain=("relu", None),
    )


@_family("leaky_relu", {"slope": 0.01}, doc="h for h > 0, slope * h otherwise")
def _leaky_relu(name, slope):
    def moments(m, v):
        p1, p2 = _relu_moments(m, v)
        n1, n2 = _neg_part_moments(m, v)
        return p1 + slope * n1, p2 + slope * slope * n2

    def grad_moment(m, v):
        p = float(_ndtr(m / math.sqrt(v))) if v > 0 else float(m > 0)
        return p + slope * slope * (1 - p)

    return Activation(
        name=name,
        family="leaky_relu",
        params={"slope": slope},
        numpy=lambda x: np.where(x > 0, x, slope * x),
        grad=lambda x: np.where(x > 0, 1.0, slope),
        torch=_TableForward("leaky_relu", slope=slope),
        moments=moments,
        grad_moment=grad_moment,
        kinks=(0.0,),
        torch_gain=("leaky_relu", slope),
    )


def _elu_like(name, family, lam, alpha, gain):
    def numpy_fn(x):
        return lam * np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0.0)))

    def grad_fn(x):
        return lam * np.where(x > 0, 1.0, alpha * np.exp(np.minimum(x, 0.0)))

    def moments(m, v):
        a, b, _ = _elu_core(m, v, alpha)
        return lam * a, lam * lam * b

    def grad_moment(m, v):
        return lam * lam * _elu_core(m, v, alpha)[2]

    params = {"alpha": alpha} if family == "elu" else {"lambda": lam, "alpha": alpha}
    return Activation(
        name=name,
        family=family,
        params=params,
        numpy=numpy_fn,
        grad=grad_fn,
        torch=_TableForward(family, **{"lambda": lam, "alpha": alpha}),
        moments=moments,
        grad_moment=grad_moment,
        kinks=(0.0,),
        bounds=(-lam * alpha, math.inf),
        torch_gain=gain,
    )


@_family("elu", {"alpha": 1.0}, doc="h for h > 0, alpha (e^h - 1) otherwise")
def _elu(name, alpha):
    return _elu_like(name, "elu", 1.0, alpha, None)


_SELU_LAMBDA, _SELU_ALPHA = selu_constants()


@_family("selu", {"lambda": _SELU_LAMBDA, "alpha": _SELU_ALPHA}, doc="lambda * elu(h; alpha), default the solved (0, 1) constants")
def _selu(name, **kw):
    return _elu_like(name, "selu", kw["lambda"], kw["alpha"], ("selu", None))


@_family("tanh", doc="tanh(h)")
def _tanh(name):
    return Activation(
        name=name,
        family="tanh",
        params={},
        numpy=np.tanh,
        grad=lambda x: 1.0 - np.tanh(x) ** 2,
        torch=_TableForward("tanh"),
        bounds=(-1.0, 1.0),
        torch_gain=("tanh", None),
    )


@_family("sigmoid", doc="1 / (1 + e^-h)")
def _sigmoid(name):
    return Activation(
        name=name,
        family="sigmoid",
        params={},
        numpy=special.expit,
        grad=lambda x: special.expit(x) * (1 - special.expit(x)),
        torch=_TableForward("sigmoid"),
        bounds=(0.0, 1.0),
        torch_gain=("sigmoid", None),
    )


@_family("erf", doc="erf(h); closed-form Gaussian moments at mean 0 (Williams 1997)")
def _erf(name):
    def moments(m, v):
        if m != 0:
            return None
        return 0.0, (2 / math.pi) * math.asin(2 * v / (1 + 2 * v))

    def grad_moment(m, v):
        if m != 0:
            return None
        # E[(2/sqrt(pi))^2 e^{-2h^2}] = (4/pi) / sqrt(1 + 4 v)
        return (4 / math.pi) / math.sqrt(1 + 4 * v)

    return Activation(
        name=name,
        family="erf",
        params={},
        numpy=special.erf,
        grad=lambda x: 2 / math.sqrt(math.pi) * np.exp(-np.square(x)),
        torch=_TableForward("erf"),
        moments=moments,
        grad_moment=grad_moment,
        bounds=(-1.0, 1.0),
    )


@_family("softplus", doc="log(1 + e^h)")
def _softplus(name):
    return Activation(
        name=name,
        family="softplus",
        params={},
        numpy=lambda x: np.logaddexp(0.0, x),
        grad=special.expit,
        torch=_TableForward("softplus"),
        bounds=(0.0, math.inf),
    )


@_family("gelu", doc="h * Phi(h), the exact (erf) form")
def _gelu(name):
    return Activation(
        name=name,
        family="gelu",
        params={},
        numpy=lambda x: x * special.ndtr(x),
        grad=lambda x: special.ndtr(x) + x * _pdf(x),
        torch=_TableForward("gelu"),
        bounds=(-0.17, math.inf),
    )


@_family("silu", doc="h * sigmoid(h), also called swish")
def _silu(name):
    def grad(x):
        s = special.expit(x)
        return s * (1 + x * (1 - s))

    return Activation(
        name=name,
        family="silu",
        params={},
        numpy=lambda x: x * special.expit(x),
        grad=grad,
        torch=_TableForward("silu"),
        bounds=(-0.28, math.inf),
    )


_ALIASES = {"swish": "silu", "identity": "linear", "lrelu": "leaky_relu"}


# ----------------------------------------------------------------------------
# torch forms: the one mapping from an activation to torch


@dataclass(frozen=True)
class TorchForms:
    """An activation's torch callables: ``forward(h)`` (a new tensor, autograd-safe) and ``inplace(h)`` (into ``h``).

    :meth:`derivative` is ``phi'(h)`` from autograd of ``forward``, so every
    activation's derivative comes from the same form its values do. The
    simulator applies ``inplace`` (no allocation per layer), training the
    forward (or :mod:`propagate.kernels`' fused SELU, which computes the same
    values).
    """

    forward: Callable
    inplace: Callable

    def derivative(self, h):
        """``phi'(h)`` elementwise, a new tensor (autograd of :attr:`forward`; zero where it is constant)."""
        import torch

        with torch.enable_grad():
            hh = h.detach().clone().requires_grad_(True)
            (d,) = torch.autograd.grad(self.forward(hh).sum(), hh, allow_unused=True)
        return torch.zeros_like(hh) if d is None else d.detach()


def _torch_table(family: str, p: dict) -> tuple[Callable, Callable]:
    """``(forward, inplace)`` of a built-in family with parameters ``p``: native torch functions wherever they exist."""
    import torch
    import torch.nn.functional as F

    if family == "linear":
        return (lambda h: h), (lambda h: h)
    if family in ("relu", "tanh", "sigmoid", "erf"):
        return getattr(torch, family), getattr(torch, family + "_")
    if family == "leaky_relu":
        s = p["slope"]
        return (lambda h: F.leaky_relu(h, s)), (lambda h: F.leaky_relu_(h, s))
    if family in ("selu", "elu"):
        lam, alpha = p["lambda"], p["alpha"]
        if family == "selu" and (lam, alpha) == selu_constants():
            return torch.selu, torch.selu_
        return (lambda h: lam * F.elu(h, alpha)), (lambda h: F.elu_(h, alpha).mul_(lam))
    fn = getattr(F, family)  # softplus, gelu, silu
    return fn, (lambda h: h.copy_(fn(h)))


@functools.lru_cache(maxsize=None)
def _table_forms(family: str, params: tuple) -> TorchForms:
    return TorchForms(*_torch_table(family, dict(params)))


class _TableForward:
    """The ``torch`` field of a built-in family: its table forward (torch is imported on the first call)."""

    def __init__(self, family: str, **params):
        self.key = (family, tuple(params.items()))

    def __call__(self, x):
        return _table_forms(*self.key).forward(x)


def builtin_torch_form(act: "str | Activation") -> bool:
    """Whether ``act``'s torch forms are the built-in table's (elementwise torch kernels), not a user's function."""
    return isinstance(get_activation(act).torch, _TableForward)


def torch_forms(act: "str | Activation") -> TorchForms:
    """The torch forms of ``act``: the table's for built-in families, else built from its ``torch`` function.

    Raises :class:`UserError` for an activation without a torch form.
    """
    act = get_activation(act)
    if isinstance(act.torch, _TableForward):
        return _table_forms(*act.torch.key)
    if act.torch is None:
        raise UserError(f"activation {act.name!r} has no torch form; register one with torch=...")
    fn = act.torch
    return TorchForms(fn, lambda h: h.copy_(fn(h)))


# ----------------------------------------------------------------------------
# lookup

_USER: dict[str, Activation] = {}


#: Valid range of each parameter: ``(low, high, magnitude)``; with ``magnitude`` the bounds apply to ``|value|``.
#: One rule behind the numbers: scale parameters lie within 1e-6..1e6 (or are 0 where 0 is meaningful), so
#: their squares and the moments they scale stay far inside float64; outside it the activation is, to the
#: precision of the theory, another one (linear, zero or a step), and the user means that one.
PARAMETER_RANGES: dict[str, dict[str, tuple[float, float, bool]]] = {
    "leaky_relu": {"slope": (0.0, 1e6, True)},
    "elu": {"alpha": (0.0, 1e6, False)},
    "selu": {"lambda": (1e-6, 1e6, False), "alpha": (0.0, 1e6, False)},
    "@": {"gamma": (1e-6, 1e6, True), "a": (1e-6, 1e6, True), "b": (0.0, 1e6, True), "d": (0.0, 1e6, True)},
}


def _range_text(low: float, high: float, magnitude: bool) -> str:
    if magnitude:
        return f"|value| <= {high:g}" if low == 0 else f"{low:g} <= |value| <= {high:g}"
    return f"{low:g} <= value <= {high:g}"


def _parse_params(text: str, where: str, rest: str, names: list[str], positional: bool,
                  ranges: Mapping[str, tuple[float, float, bool]]) -> dict[str, float]:
    """``k=v,k=v`` (or, with ``positional``, bare values in the order of ``names``) as floats, each checked.

    Refused (:class:`UserError` naming ``text``): an unknown key, a key given
    twice (``gamma=1,gamma=2``, ``0.1,slope=0.3``: the last would silently win),
    a value that is not a finite number, and a value outside its ``ranges``
    entry (from :data:`PARAMETER_RANGES`; the range is in the message).
    """
    params: dict[str, float] = {}
    items = [item for item in rest.split(",") if item.strip()]
    for i, item in enumerate(items):
        key, eq, val = item.partition("=")
        if not eq:
            if not names:
                raise UserError(f"activation {text!r}: {where} takes no parameters")
            if not positional or i >= len(names):
                raise UserError(f"activation {text!r}: {where} takes parameters {names} as key=value, "
                                f"got {item.strip()!r}")
            key, val = names[i], item
        key = key.strip().lower()
        if key not in names:
            raise UserError(f"activation {text!r}: {where} has no parameter {key!r}; it takes {names or 'none'}")
        if key in params:
            raise UserError(f"activation {text!r} gives {key} twice; give each parameter once")
        try:
            value = float(val)
        except ValueError:
            raise UserError(f"activation parameter {key}={val.strip()!r} is not a number") from None
        if not math.isfinite(value):
            raise UserError(f"activation parameter {key}={val.strip()!r} is not finite")
        low, high, magnitude = ranges.get(key, (0.0, math.inf, True))
        size = abs(value) if magnitude else value
        if 0 < abs(value) < 1e-300:
            raise UserError(f"activation {text!r}: {key} = {val.strip()} is subnormal (below 1e-300); use 0")
        if not low <= size <= high:
            raise UserError(f"activation {text!r}: {key} = {val.strip()} is outside its range "
                            f"{_range_text(low, high, magnitude).replace('value', key)}")
        params[key] = value
    return params


def _parse(text: str) -> tuple[str, dict[str, float]]:
    name, colon, rest = text.strip().partition(":")
    name = _ALIASES.get(name.strip().lower(), name.strip().lower())
    params: dict[str, float] = {}
    if colon and not rest.strip():
        raise UserError(f"activation {text!r}: nothing after ':' (leave the ':' out for the defaults)")
    if rest.strip():
        if name not in _FAMILIES:
            raise UserError(f"unknown activation {name!r}; known: {', '.join(list_activations())}")
        params = _parse_params(text, name, rest, list(_FAMILIES[name][1]), True, PARAMETER_RANGES.get(name, {}))
    return name, params


def get_activation(name: str | Activation) -> Activation:
    """Look up an activation by name (``"tanh"``, ``"leaky_relu:0.2"``, ...)."""
    if isinstance(name, Activation):
        return name
    key = name_key(name, "activation")
    if key in _USER:
        return _USER[key]
    if "@" in key:
        return _parse_transformed(name)
    family, params = _parse(name)
    if family not in _FAMILIES:
        raise UserError(f"unknown activation {family!r}; known: {', '.join(list_activations())}")
    factory, defaults, _ = _FAMILIES[family]
    full = {**defaults, **params}
    label = _label(family, {k: full[k] for k in defaults}, defaults)
    return factory(label, **full)


# ----------------------------------------------------------------------------
# affine transforms phi_hat(x) = gamma * (phi(a x + b) + d)

_TRANSFORM_DEFAULTS = {"gamma": 1.0, "a": 1.0, "b": 0.0, "d": 0.0}


def transformed_activation(base: str | Activation, gamma: float = 1.0, a: float = 1.0, b: float = 0.0, d: float = 0.0) -> Activation:
    """``phi_hat(x) = gamma * (phi(a x + b) + d)`` with everything theory, simulation and training need.

    ``a`` scales the input (a standard-deviation factor: ``a x`` has variance
    ``a^2 Var(x)``), ``b`` shifts it, ``d`` shifts the output before the output
    scale ``gamma``. Gaussian moments come from the base's closed forms at
    ``N(a m + b, a^2 v)`` when it has them, else theory integrates (kinks moved to
    ``(k - b) / a``). The name is ``BASE@gamma=...,a=...,b=...,d=...`` with
    ``repr`` floats (defaults left out), so it parses back to the same numbers.
    """
    base = get_activation(base)
    if base.family == "affine":
        raise UserError(f"cannot transform an already transformed activation {base.name!r}")
    vals = {"gamma": float(gamma), "a": float(a), "b": float(b), "d": float(d)}
    for k, v in vals.items():
        if not math.isfinite(v):
            raise UserError(f"transform parameter {k}={v!r} is not finite")
    if vals["gamma"] == 0 or vals["a"] == 0:
        raise UserError("transform parameters gamma and a must be non-zero")
    g, sa, sb, sd = vals["gamma"], vals["a"], vals["b"], vals["d"]
    extra = ",".join(f"{k}={v!r}" for k, v in vals.items() if v != _TRANSFORM_DEFAULTS[k])
    label = base.name
    if base.family in _FAMILIES and base.params:
        # the family label rounds parameters to 6 digits; the name must parse back exactly
        defaults = _FAMILIES[base.family][1]
        changed = {k: v for k, v in base.params.items() if defaults.get(k) != v}
        label = base.family + (":" + ",".join(f"{k}={float(v)!r}" for k, v in changed.items()) if changed else "")
    name = label + "@" + (extra or "gamma=1.0")
    f0, g0, t0 = base.numpy, base.grad, base.torch

    def moments(m, v):
        if base.moments is None:
            return None
        r = base.moments(sa * m + sb, sa * sa * v)
        if r is None:
            return None
        e1, e2 = r
        return g * (e1 + sd), g * g * (e2 + 2 * sd * e1 + sd * sd)

    def grad_moment(m, v):
        if base.grad_moment is None:
            return None
        r = base.grad_moment(sa * m + sb, sa * sa * v)
        return None if r is None else g * g * sa * sa * r

    def torch_fn(x):
        return g * (t0(x * sa + sb) + sd)

    lo, hi = (g * (base.bounds[0] + sd), g * (base.bounds[1] + sd))
    return Activation(
        name=name,
        family="affine",
        params={"base": label, **vals},
        numpy=lambda x: g * (f0(sa * np.asarray(x, dtype=float) + sb) + sd),
        grad=lambda x: g * sa * g0(sa * np.asarray(x, dtype=float) + sb),
        torch=torch_fn if t0 is not None else None,
        moments=moments if base.moments is not None else None,
        grad_moment=grad_moment if base.grad_moment is not None else None,
        kinks=tuple(sorted((k - sb) / sa for k in base.kinks)),
        bounds=(min(lo, hi), max(lo, hi)),
        doc=f"{g!r} * ({base.name}({sa!r} x + {sb!r}) + {sd!r})",
    )


def _parse_transformed(text: str) -> Activation:
    base, _, rest = text.strip().partition("@")
    if "@" in rest:
        raise UserError(f"activation {text!r}: one '@' at most (BASE@gamma=G,a=A,b=B,d=D)")
    if not rest.strip():
        raise UserError(f"activation {text!r}: nothing after '@' (BASE@gamma=G,a=A,b=B,d=D)")
    vals = _parse_params(text, "the transform", rest, list(_TRANSFORM_DEFAULTS), False, PARAMETER_RANGES["@"])
    return transformed_activation(base, **vals)


def list_activations() -> list[str]:
    """Names of all known activations (built-in families, then user-registered)."""
    return sorted(_FAMILIES) + sorted(_USER)


def register_activation(
    name: str,
    numpy: Callable[[np.ndarray], np.ndarray],
    *,
    torch: Callable | None = None,
    grad: Callable[[np.ndarray], np.ndarray] | None = None,
    kinks: tuple[float, ...] = (),
    bounds: tuple[float, float] = (-math.inf, math.inf),
    doc: str = "",
) -> Activation:
    """Register a new activation from Python; theory integrates it by quadrature.

    ``numpy`` maps a float array elementwise. ``torch`` (optional) does the same
    for tensors with autograd; without it the activation serves theory only.
    ``grad`` defaults to a central finite difference (step 1e-5), fine for
    ``chi_1`` to about 1e-9; give the exact derivative when you have it.
    """
    key = name.strip().lower()
    if not key or ":" in key:
        raise UserError(f"activation name must be non-empty and contain no ':', got {name!r}")
    if key in _FAMILIES:
        raise UserError(f"{name!r} is a built-in activation; choose another name")
    if grad is None:
        eps = 1e-5

        def grad(x, _f=numpy):
            x = np.asarray(x, dtype=float)
            return (_f(x + eps) - _f(x - eps)) / (2 * eps)

    act = Activation(
        name=key,
        family=key,
        params={},
        numpy=lambda x, _f=numpy: np.asarray(_f(np.asarray(x, dtype=float)), dtype=float),
        grad=grad,
        torch=torch,
        kinks=tuple(kinks),
        bounds=bounds,
        doc=doc,
    )
    _USER[key] = act
    return act


def unregister_activation(name: str) -> None:
    """Remove a user-registered activation (for tests and notebooks)."""
    _USER.pop(name.strip().lower(), None)
