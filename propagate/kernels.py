"""Fused training kernels for the batched (ensemble) layer ops: fewer passes over memory, fewer temporaries.

The layer kernels take tensors stacked over seeds, ``[S, B, N]`` (``S``
networks, ``B`` samples, ``N`` units), and are drop-ins for the plain torch
expression they name, with the same numbers (``tests/test_kernels.py`` checks
values and gradients against torch autograd in float64, and the optimizer
against torch's RMSprop). They exist for speed only; the layer ops
(:mod:`propagate.layers`) call them from their torch forward, and training
builds :func:`rmsprop` through :func:`propagate.optim.make_optimizer`.
:func:`disabled` switches them all back to the plain expressions (benchmarks
compare both in one process).

Why each one is faster than the autograd of the plain expression:

- :func:`dense` (``baddbmm(b, x, W^T)``): autograd of the transposed weight
  returns the weight gradient transposed (non-contiguous), which torch then
  zero-fills and copies into a contiguous buffer (two extra passes over every
  weight per step). The backward here writes ``g^T x`` contiguous, in the
  weight's own layout, in one ``bmm``.
- :func:`selu`: ``torch.selu`` forward (one vectorized pass), backward from the
  *output* ``y`` (``lambda`` where ``y > 0``, ``y + lambda alpha`` elsewhere) so
  only ``y``, which the next layer keeps anyway, is saved.
- :func:`rmsprop`: Keras' RMSprop (``v = rho v + (1 - rho) g^2``,
  ``p -= lr g / (sqrt(v) + eps)``, eps outside the root) in one pass over
  memory. torch's RMSprop takes five (``mul_``, ``addcmul_``, ``sqrt``, ``add_``,
  ``addcdiv_``: about 13 reads and writes of every parameter-sized tensor per
  step, and for the seed's 3.8 M weights this memory traffic, not arithmetic,
  is the cost). The rule is Adam's with ``beta1 = 0`` and without bias
  correction, so torch's fused single-pass Adam kernel computes it exactly
  when given ``beta1 = 0`` and a step count so large that ``beta2^t`` is 0
  (both bias corrections are then exactly 1): ``v`` comes out bit-identical to
  torch's RMSprop and ``p`` within one float32 rounding. Adam's first moment
  is then ``g`` itself, so the gradient's buffer is passed as it (no scratch
  buffer: one stream of parameter-sized memory fewer per step).

:func:`activation` maps an :class:`propagate.activations.Activation` to the
fastest torch callable for it: the fused SELU, else its forward in
:func:`propagate.activations.torch_forms` (the one activation-to-torch table).

BatchNorm has no kernel here: torch's own (on the ``[B, S N]`` view the layer
op uses, each seed's units separate channels) was as fast as a fused one in
our measurements, and it computes each channel identically whatever the number
of channels, so seed ``k`` of an ensemble normalizes bit for bit as its single
run does (a fused kernel changed that at round-off level).
"""

from __future__ import annotations

import contextlib
import functools

from propagate.activations import get_activation, selu_constants, torch_forms

__all__ = ["ENABLED", "disabled", "dense", "selu", "activation", "rmsprop", "SELU_LAMBDA", "SELU_ALPHA"]


SELU_LAMBDA, SELU_ALPHA = selu_constants()


@functools.lru_cache(maxsize=None)
def _functions():
    """The autograd Functions (built on first use, so importing this module does not import torch)."""
    import torch

    class Dense(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, weight, bias):
            ctx.save_for_backward(x, weight)
            ctx.has_bias = bias is not None
            if bias is None:
                return torch.bmm(x, weight.transpose(1, 2))
            return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))

        @staticmethod
        def backward(ctx, g):
            x, weight = ctx.saved_tensors
            gx = gw = gb = None
            if ctx.needs_input_grad[0]:
                gx = torch.bmm(g, weight)
            if ctx.needs_input_grad[1]:
                gw = torch.bmm(g.transpose(1, 2), x)  # [S, out, in], contiguous like the weight
            if ctx.has_bias and ctx.needs_input_grad[2]:
                gb = g.sum(1)
            return gx, gw, gb

    class Selu(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            y = torch.selu(x)
            ctx.save_for_backward(y)
            return y

        @staticmethod
        def backward(ctx, g):
            (y,) = ctx.saved_tensors
            # d selu / dx from the output: lambda for x > 0 (y > 0), y + lambda alpha otherwise
            return torch.ops.aten.elu_backward(g, SELU_ALPHA, SELU_LAMBDA, 1.0, True, y)

    return Dense, Selu


#: Whether the fused kernels are used (``False``: the plain torch expressions; see :func:`disabled`).
ENABLED = True


@contextlib.contextmanager
def disabled():
    """Use the plain torch expressions inside the block (benchmarks compare both in one process)."""
    global ENABLED
    old, ENABLED = ENABLED, False
    try:
        yield
    finally:
        ENABLED = old


def dense(x, weight, bias=None):
    """``x W^T + b`` per seed: ``x`` ``[S, B, in]``, ``weight`` ``[S, out, in]``, ``bias`` ``[S, out]`` or None."""
    if ENABLED:
        return _functions()[0].apply(x, weight, bias)
    import torch

    if bias is None:
        return torch.bmm(x, weight.transpose(1, 2))
    return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))


def selu(x):
    """SELU with the solved constants (``torch.selu``), its gradient computed from the output."""
    if ENABLED:
        return _functions()[1].apply(x)
    import torch

    return torch.selu(x)


def _resolve(act):
    p = dict(act.params)
    if act.family == "selu" and (p.get("lambda"), p.get("alpha")) == (SELU_LAMBDA, SELU_ALPHA):
        return selu  # (checks ENABLED itself)
    return torch_forms(act).forward


@functools.lru_cache(maxsize=None)
def _builtin_activation(name: str):
    """:func:`activation` of a built-in family's name, resolved once (a built-in name cannot be re-registered)."""
    return _resolve(get_activation(name))


_CACHED_FAMILIES = ("selu", "relu", "tanh")


def activation(act):
    """The fastest torch callable for ``act`` (an Activation or a name).

    SELU with the solved constants maps to :func:`selu` (the fused kernel);
    every other activation to its forward in
    :func:`propagate.activations.torch_forms` (ReLU is ``torch.relu``, tanh
    ``torch.tanh``). SELU, ReLU and tanh are resolved once per name; any other
    name is looked up on every call, so a re-registered user activation is
    honoured.
    """
    name = act if isinstance(act, str) else act.name
    if name.split(":", 1)[0].strip().lower() in _CACHED_FAMILIES:
        return _builtin_activation(name)
    return _resolve(get_activation(act))


@functools.lru_cache(maxsize=None)
def _rmsprop_class():
    import torch

    class FusedRMSprop(torch.optim.RMSprop):
        """torch's RMSprop whose plain case (no momentum, not centered, no weight decay, CPU) takes one fused pass."""

        # beta2 ** this underflows to 0 for every beta2 < 1, so Adam's bias corrections are exactly 1
        _NEVER = 2.0**40

        def _fused_ok(self) -> bool:
            if not (ENABLED and hasattr(torch, "_fused_adam_")):
                return False
            for group in self.param_groups:
                if group["momentum"] or group["centered"] or group["weight_decay"] or group.get("maximize") \
                        or group.get("differentiable") or group.get("capturable"):
                    return False
                for p in group["params"]:
                    g = p.grad
                    if g is not None and (p.device.type != "cpu" or g.is_sparse or not p.is_contiguous()
                                          or not g.is_contiguous() or g.dtype != p.dtype):
                        return False
            return True

        @torch.no_grad()
        def step(self, closure=None):
            if not self._fused_ok():
                return super().step(closure)
            loss = None
            if closure is not None:
                with torch.enable_grad():
                    loss = closure()
            for group in self.param_groups:
                params, grads, squares, counts = [], [], [], []
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    st = self.state[p]
                    if len(st) == 0:
                        st["step"] = torch.tensor(0.0)
                        st["square_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    params.append(p)
                    grads.append(p.grad)
                    squares.append(st["square_avg"])
                    counts.append(st["step"])
                if params:
                    torch._foreach_add_(counts, 1.0)  # torch's RMSprop step counts (its state_dict), in one call
                    # Adam's first moment with beta1 = 0 is g itself: the gradient's own buffer serves as it
                    # (the kernel writes g back unchanged), so no scratch buffer is read or written
                    torch._fused_adam_(params, grads, grads, squares, [], self._never(len(params)),
                                       lr=float(group["lr"]), beta1=0.0, beta2=float(group["alpha"]),
                                       weight_decay=0.0, eps=float(group["eps"]), amsgrad=False, maximize=False)
            return loss

        def _never(self, n: int) -> list:
            """``n`` step-count tensors of :attr:`_NEVER` (made once; the kernel only reads them)."""
            cache = self.__dict__.setdefault("_never_steps", [])
            while len(cache) < n:
                cache.append(torch.tensor(self._NEVER, dtype=torch.float32))
            return cache[:n]

    return FusedRMSprop


def rmsprop(params, lr: float, rho: float, eps: float):
    """Keras' RMSprop over ``params`` (a ``torch.optim.RMSprop``, fused on CPU; module docstring).

    ``rho`` is Keras' decay (torch's ``alpha``), ``eps`` is added outside the
    square root. Elementwise, so on parameters stacked over seeds it is exactly
    each seed's own update.
    """
    return _rmsprop_class()(params, lr=lr, alpha=rho, eps=eps)
