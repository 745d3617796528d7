"""Weight initializers by name, with Keras' semantics, and their weight variance.

Every initializer reports ``sigma_w^2 = fan_in * Var(w)``, the quantity
mean-field theory works with (``sigma_w^2 = 1`` is LeCun, ``2`` is He), for a
layer with ``fan_in`` inputs and ``fan_out`` outputs. Weight matrices have shape
``(fan_out, fan_in)`` as in ``torch.nn.Linear``.

Names and semantics follow Keras (so the lecture demo's Keras code translates one to one):

==================  =====================================================
``glorot_uniform``  U(-l, l), l = sqrt(6 / (fan_in + fan_out))
``glorot_normal``   truncated normal (|w| < 2 std), Var = 2 / (fan_in + fan_out)
``lecun_uniform``   U(-l, l), l = sqrt(3 / fan_in)
``lecun_normal``    truncated normal, Var = 1 / fan_in
``he_uniform``      U(-l, l), l = sqrt(6 / fan_in)
``he_normal``       truncated normal, Var = 2 / fan_in
``random_uniform``  U(-0.05, 0.05) (Keras default range), Var = 0.01/12
``random_normal``   N(0, 0.05^2) (Keras default std)
``orthogonal``      Haar-random (semi-)orthogonal, gain 1
``torch_default``   what ``nn.Linear`` does: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
                    for weights (sigma_w^2 = 1/3) and for biases
``normal:S``        N(0, S / fan_in), i.e. sigma_w^2 = S
``uniform:S``       uniform with Var = S / fan_in
``orthogonal:S``    Haar orthogonal times sqrt(S) (gain^2 = S; square layers: sigma_w^2 = S)
``delta_orthogonal``  convolutions: Haar orthogonal ``(C_out, C_in)`` matrix at the
                    kernel's spatial centre, zeros elsewhere (Xiao et al. 2018,
                    Algorithm 2); a dense layer (kernel 1) gets ``orthogonal``;
                    ``delta_orthogonal:S`` scales by sqrt(S)
==================  =====================================================

Convolution kernels (:meth:`Init.sample_kernel`) follow PyTorch's and Keras'
fans: ``fan_in = C_in x kernel area`` (per group), ``fan_out = C_out x kernel
area``; ``sigma_w^2 = fan_in * Var(w)`` as for dense layers (Xiao et al. 2018:
for the variance map a convolution is a dense layer with that fan-in).

Keras' "normal" variance-scaling initializers draw from a normal truncated at
two standard deviations and divide the scale by 0.8796256610342398 (the std of
a standard normal truncated to [-2, 2]), so the variance is exact; so do we.
Biases are zero except for ``torch_default``; a spec can set ``sigma_b^2``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from propagate.errors import UserError, name_key

__all__ = ["Init", "get_init", "list_inits", "TRUNC_STD"]

#: Standard deviation of N(0, 1) truncated to [-2, 2] (Keras' correction constant).
TRUNC_STD = 0.87962566103423978


@dataclass(frozen=True)
class Init:
    """A weight initializer.

    ``distribution`` is ``uniform``, ``truncated_normal``, ``normal`` or
    ``orthogonal``. For variance-scaling initializers ``Var(w) = scale / n``
    with ``n`` the fan given by ``mode`` (``fan_in``, ``fan_out``, ``fan_avg``);
    for fixed ones (``mode = "fixed"``) ``Var(w) = scale``.
    """

    name: str
    distribution: str
    scale: float
    mode: str
    torch_bias: bool = False  # torch_default also draws biases U(-1/sqrt(fan_in), ...)

    def weight_var(self, fan_in: int, fan_out: int) -> float:
        """Var(w) of one weight in a ``fan_out x fan_in`` matrix."""
        if self.distribution in ("orthogonal", "delta_orthogonal"):
            # rows (fan_out <= fan_in) or columns are orthonormal: sum of squares = min(fan_in, fan_out)
            return self.scale * min(fan_in, fan_out) / (fan_in * fan_out)
        if self.mode == "fixed":
            return self.scale
        n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[self.mode]
        return self.scale / n

    def sigma_w2(self, fan_in: int, fan_out: int) -> float:
        """Effective ``sigma_w^2 = fan_in * Var(w)``."""
        return fan_in * self.weight_var(fan_in, fan_out)

    def bias_var(self, fan_in: int) -> float:
        """Default bias variance ``sigma_b^2`` (zero but for ``torch_default``)."""
        return 1.0 / (3.0 * fan_in) if self.torch_bias else 0.0

    def sample(self, fan_out: int, fan_in: int, *, batch: tuple[int, ...] = (), generator=None, dtype=None, device=None):
        """Draw a weight tensor of shape ``(*batch, fan_out, fan_in)`` with torch."""
        import torch

        dtype = dtype or torch.float32
        shape = (*batch, fan_out, fan_in)
        var = self.weight_var(fan_in, fan_out)
        if self.distribution == "uniform":
            limit = math.sqrt(3.0 * var)
            w = torch.empty(shape, dtype=dtype, device=device)
            return w.uniform_(-limit, limit, generator=generator)
        if self.distribution == "normal":
            return torch.randn(shape, dtype=dtype, device=device, generator=generator) * math.sqrt(var)
        if self.distribution == "truncated_normal":
            # inverse CDF of N(0, std^2) restricted to [-2 std, 2 std]: one pass, no rejection
            std = math.sqrt(var) / TRUNC_STD
            lo = 0.5 * math.erfc(math.sqrt(2.0))  # Phi(-2)
            u = torch.empty(shape, dtype=torch.float64, device=device).uniform_(lo, 1.0 - lo, generator=generator)
            return u.mul_(2.0).sub_(1.0).erfinv_().mul_(math.sqrt(2.0) * std).to(dtype)
        if self.distribution in ("orthogonal", "delta_orthogonal"):  # a dense layer is a 1-tap kernel
            return self._orthogonal(fan_out, fan_in, batch, generator, dtype, device)
        raise AssertionError(self.distribution)  # pragma: no cover

    def kernel_weight_var(self, c_out: int, c_in: int, kernel_size) -> float:
        """Mean square of one weight of a ``(c_out, c_in, *kernel_size)`` convolution kernel (``c_in`` per group)."""
        area = math.prod(int(k) for k in kernel_size)
        if self.distribution == "delta_orthogonal":
            # only the centre tap is nonzero: a (c_out, c_in) orthogonal matrix times sqrt(scale)
            return self.scale * min(c_in, c_out) / (c_out * c_in * area)
        if self.distribution == "orthogonal":  # the (c_out, c_in x area) matrix is orthogonal
            return self.weight_var(c_in * area, c_out)
        return self.weight_var(c_in * area, c_out * area)

    def kernel_sigma_w2(self, c_out: int, c_in: int, kernel_size) -> float:
        """``sigma_w^2 = fan_in * Var(w)`` of a convolution, ``fan_in = c_in x kernel area``."""
        return c_in * math.prod(int(k) for k in kernel_size) * self.kernel_weight_var(c_out, c_in, kernel_size)

    def sample_kernel(self, c_out: int, c_in: int, kernel_size, *, generator=None, dtype=None, device=None):
        """A convolution kernel ``(c_out, c_in, *kernel_size)`` (``c_in`` per group), fans as in the module docstring.

        ``orthogonal`` makes the ``(c_out, c_in x area)`` matrix (semi-)orthogonal;
        ``delta_orthogonal`` needs odd kernel sizes (a centre tap).
        """
        import torch

        kernel_size = tuple(int(k) for k in kernel_size)
        area = math.prod(kernel_size)
        if self.distribution == "delta_orthogonal":
            if any(k % 2 == 0 for k in kernel_size):
                raise UserError(f"delta_orthogonal needs odd kernel sizes (a centre tap), got {kernel_size}")
            w = torch.zeros((c_out, c_in, *kernel_size), dtype=dtype or torch.float32, device=device)
            w[(slice(None), slice(None), *(k // 2 for k in kernel_size))] = self._orthogonal(
                c_out, c_in, (), generator, w.dtype, device)
            return w
        w = self.sample(c_out, c_in * area, generator=generator, dtype=dtype, device=device)
        if self.mode in ("fan_out", "fan_avg") and self.distribution != "orthogonal":
            # sample() counted c_out rows as fan_out; a kernel's fan_out is c_out x area
            w = w * math.sqrt(self.weight_var(c_in * area, c_out * area) / self.weight_var(c_in * area, c_out))
        return w.reshape(c_out, c_in, *kernel_size)

    def _orthogonal(self, fan_out, fan_in, batch, generator, dtype, device):
        import torch

        rows, cols = max(fan_out, fan_in), min(fan_out, fan_in)
        g = torch.randn((*batch, rows, cols), dtype=torch.float64, device=device, generator=generator)
        q, r = torch.linalg.qr(g)
        # sign fix makes the distribution Haar (Mezzadri 2007)
        q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)
        if fan_out < fan_in:
            q = q.transpose(-2, -1)
        return (q * math.sqrt(self.scale)).to(dtype)

    def sample_bias(self, fan_out: int, fan_in: int, *, batch=(), generator=None, dtype=None, device=None, bias_var=None):
        """Bias vector(s) of shape ``(*batch, fan_out)``: zero, torch's uniform, or N(0, bias_var)."""
        import torch

        dtype = dtype or torch.float32
        shape = (*batch, fan_out)
        if bias_var is None:
            if not self.torch_bias:
                return torch.zeros(shape, dtype=dtype, device=device)
            bound = 1.0 / math.sqrt(fan_in)
            return torch.empty(shape, dtype=dtype, device=device).uniform_(-bound, bound, generator=generator)
        if bias_var == 0:
            return torch.zeros(shape, dtype=dtype, device=device)
        return torch.randn(shape, dtype=dtype, device=device, generator=generator) * math.sqrt(bias_var)


_NAMED = {
    "glorot_uniform": Init("glorot_uniform", "uniform", 1.0, "fan_avg"),
    "glorot_normal": Init("glorot_normal", "truncated_normal", 1.0, "fan_avg"),
    "lecun_uniform": Init("lecun_uniform", "uniform", 1.0, "fan_in"),
    "lecun_normal": Init("lecun_normal", "truncated_normal", 1.0, "fan_in"),
    "he_uniform": Init("he_uniform", "uniform", 2.0, "fan_in"),
    "he_normal": Init("he_normal", "truncated_normal", 2.0, "fan_in"),
    "random_uniform": Init("random_uniform", "uniform", 0.1**2 / 12, "fixed"),
    "random_normal": Init("random_normal", "normal", 0.05**2, "fixed"),
    "orthogonal": Init("orthogonal", "orthogonal", 1.0, "fixed"),
    "torch_default": Init("torch_default", "uniform", 1.0 / 3.0, "fan_in", torch_bias=True),
    "delta_orthogonal": Init("delta_orthogonal", "delta_orthogonal", 1.0, "fixed"),
}

_ALIASES = {"xavier_uniform": "glorot_uniform", "xavier_normal": "glorot_normal", "kaiming_uniform": "he_uniform", "kaiming_normal": "he_normal"}


def _scale(name: str, head: str, arg: str, what: str, example: str) -> float:
    """The positive finite number after ``head:`` in an init name, or :class:`UserError` naming ``what`` it is."""
    try:
        s = float(arg)
    except ValueError:
        raise UserError(f"malformed init {name!r}: expected {head}:{what} with a number, e.g. {head}:{example}") from None
    if not math.isfinite(s) or s <= 0:
        raise UserError(f"malformed init {name!r}: {what} must be a positive number")
    return s


def get_init(name: str | Init) -> Init:
    """Look up an initializer: a Keras name, ``torch_default``, ``normal:S`` or ``uniform:S``."""
    if isinstance(name, Init):
        return name
    key = name_key(name, "init")
    key = _ALIASES.get(key, key)
    if key in _NAMED:
        return _NAMED[key]
    head, sep, arg = key.partition(":")
    if sep and head in ("normal", "uniform"):
        s = _scale(name, head, arg, "SIGMA_W2", "1.0")
        return Init(f"{head}:{s:g}", head, s, "fan_in")
    if sep and head in ("orthogonal", "delta_orthogonal"):
        # orthogonal:S = Haar orthogonal times sqrt(S) (gain^2 = S): sigma_w^2 = S for square layers (ReLU: S = 2)
        s = _scale(name, head, arg, "GAIN2", "2")
        return Init(f"{head}:{s:g}", head, s, "fixed")
    raise UserError(f"unknown init {name!r}; known: {', '.join(list_inits())}")


def list_inits() -> list[str]:
    """Names of the known initializers (``normal:S`` and ``uniform:S`` take a sigma_w^2)."""
    return [*_NAMED, "normal:S", "uniform:S", "orthogonal:S", "delta_orthogonal:S"]
