"""Fused training kernels for the batched (ensemble) layer ops: fewer passes over memory, fewer temporaries.

The layer kernels take tensors stacked over seeds, ``[S, B, N]`` (``S``
networks, ``B`` samples, ``N`` units). They exist for speed only:
``tests/test_kernels.py`` checks values and gradients against torch autograd
of the plain expressions in float64, the optimizer against torch's RMSprop,
and the fused training step against the per-op modules (bit for bit) and the
plain expressions (gradients in float64). :func:`disabled` switches them all
back to the plain expressions (benchmarks compare both in one process).

Two levels:

1. Per-op kernels, drop-ins the layer ops' torch forward calls
   (:mod:`propagate.layers`), differentiable twice (Hessian-vector products
   go through them):

   - :func:`dense` (``baddbmm(b, x, W^T)``): autograd of the transposed weight
     returns the weight gradient transposed (non-contiguous), which torch then
     zero-fills and copies into a contiguous buffer (two extra passes over
     every weight per step). The backward here writes ``g^T x`` contiguous, in
     the weight's own layout, in one ``bmm``.
   - :func:`selu`: ``torch.selu`` forward (one vectorized pass), backward from
     the *output* ``y`` (``lambda`` where ``y > 0``, ``y + lambda alpha``
     elsewhere) so only ``y``, which the next layer keeps anyway, is saved.

2. The training step as one chain (:func:`training_forward`): every op of
   the network contributes a *piece* (``Op.train_piece``: a forward that
   returns what its backward needs, and a hand-written backward), and the
   whole network runs as one autograd node. Per layer this removes the
   autograd graph (three to eight nodes, their Python trampolines and view
   nodes), the module calls, the activation's output buffer (ReLU, SELU,
   tanh and sigmoid act in place on the matmul's output and differentiate
   from it) and, with an optimizer that supports it (:func:`rmsprop`), the
   optimizer's separate pass over memory: the parameters are updated inside
   the backward pass as soon as their gradients exist, while those are still
   in cache (a weight matrix with the small parameters next to it, one fused
   call per about 128k elements, after the layers' input gradients, the last
   use of their weights), and the gradient buffers are freed layer by layer.
   Where the time goes is in ``benchmarks/bench_train.py --profile``. The pieces
   call exactly the aten ops the per-op modules' autograd calls (BatchNorm:
   ``native_batch_norm`` and its backward on the ``[B, S N]`` view, each
   seed's units separate channels), so the chain equals the per-op path bit
   for bit; with :func:`disabled` training uses the per-op modules with the
   plain torch expressions. The chain is differentiable once only (it is
   the training step; probes and Hessian-vector products use the modules).

:func:`rmsprop`: Keras' RMSprop (``v = rho v + (1 - rho) g^2``,
``p -= lr g / (sqrt(v) + eps)``, eps outside the root) in one pass over
memory. torch's RMSprop takes five (``mul_``, ``addcmul_``, ``sqrt``,
``add_``, ``addcdiv_``: about 13 reads and writes of every parameter-sized
tensor per step, and for the lecture demo's 3.8 M weights this memory traffic, not
arithmetic, is the cost). The rule is Adam's with ``beta1 = 0`` and without
bias correction, so torch's fused single-pass Adam kernel computes it exactly
when given ``beta1 = 0`` and a step count so large that ``beta2^t`` is 0
(both bias corrections are then exactly 1): ``v`` comes out bit-identical to
torch's RMSprop and ``p`` within one float32 rounding. Adam's first moment is
then ``g`` itself, so the gradient's buffer is passed as it (no scratch
buffer: one stream of parameter-sized memory fewer per step). The step
counts torch's RMSprop keeps per parameter (its ``state_dict``) live in one
tensor, counted in one operation per step.

:func:`activation` maps an :class:`propagate.activations.Activation` to the
fastest torch callable for it: the fused SELU, else its forward in
:func:`propagate.activations.torch_forms` (the one activation-to-torch table).

BatchNorm has no kernel of its own: torch's (on the ``[B, S N]`` view the
layer op uses) was as fast as a fused one in our measurements, and it
computes each channel identically whatever the number of channels, so seed
``k`` of an ensemble normalizes bit for bit as its single run does (a fused
kernel changed that at round-off level).
"""

from __future__ import annotations

import collections
import contextlib
import functools
import weakref

from propagate.activations import get_activation, selu_constants, torch_forms

__all__ = ["ENABLED", "CHAIN", "disabled", "dense", "selu", "activation", "rmsprop", "SELU_LAMBDA", "SELU_ALPHA",
           "training_forward", "dense_piece", "batchnorm_piece", "activation_piece", "mask_piece", "identity_piece"]


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
#: Whether :func:`training_forward` may run the network as one chain (``False``: the per-op modules).
CHAIN = True


@contextlib.contextmanager
def disabled(what: str = "all"):
    """Use the plain torch expressions inside the block (benchmarks compare both in one process).

    ``what="chain"``: only the training chain is off (the per-op modules with
    their fused kernels train instead), so its own effect can be measured.
    """
    global ENABLED, CHAIN
    if what not in ("all", "chain"):
        raise ValueError(f"what must be 'all' or 'chain', got {what!r}")
    old = ENABLED, CHAIN
    if what == "all":
        ENABLED = False
    CHAIN = False
    try:
        yield
    finally:
        ENABLED, CHAIN = old


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


# ---------------------------------------------------------------------------- the training chain


class _Piece:
    """One op of the chain: ``forward(x, free) -> (y, saved)``, ``backward(g, saved, need_input) -> (g_in, grads)``.

    ``free``: nothing reads ``x`` after this piece (it may be overwritten).
    ``params``: the parameters ``grads`` belong to, in order.
    ``output_free``: the piece's backward does not read its output; None: its
    output is its input (as free as that was). Methods import torch (a
    dictionary lookup once imported): this module loads without it.
    """

    params: tuple = ()
    output_free: bool | None = True


class _DensePiece(_Piece):
    def __init__(self, mod):
        self.params = (mod.weight, mod.bias)

    def forward(self, x, free):
        import torch

        w, b = self.params
        return torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2)), x

    def backward(self, g, x, need_input):
        import torch

        w = self.params[0]
        gx = torch.bmm(g, w) if need_input else None  # before the weight may be updated
        return gx, (torch.bmm(g.transpose(1, 2), x), g.sum(1))


class _BatchNormPiece(_Piece):
    def __init__(self, mod, eps, momentum):
        import torch

        self.params = (mod.weight, mod.bias)
        self.mod, self.eps, self.momentum = mod, float(eps), float(momentum)
        self._flat, self._of = None, None
        self._backward = torch.ops.aten.native_batch_norm_backward.default

    def flat(self):
        """``(weight, bias, running mean, running variance)`` as ``[S N]`` views, made again if one was replaced."""
        bufs = self.mod._buffers
        tensors = (*self.params, bufs["running_mean"], bufs["running_var"])
        of = tuple(t.data_ptr() for t in tensors)
        if of != self._of:
            self._flat, self._of = tuple(t.view(-1) for t in tensors), of
        return self._flat

    def forward(self, x, free):
        import torch

        S, B, n = x.shape
        # the layer op's [B, S N] view (a copy when S > 1)
        xt = x.reshape(B, n) if S == 1 else x.transpose(0, 1).reshape(B, S * n)
        w, b, rm, rv = self.flat()
        y, mean, invstd = torch.native_batch_norm(xt, w, b, rm, rv, True, self.momentum, self.eps)
        return (y.view(1, B, n) if S == 1 else y.view(B, S, n).transpose(0, 1)), (xt, mean, invstd)

    def backward(self, g, saved, need_input):
        xt, mean, invstd = saved
        S, B, n = g.shape
        w, _, rm, rv = self.flat()
        gt = g.reshape(B, n) if S == 1 else g.transpose(0, 1).reshape(B, S * n)
        gx, gw, gb = self._backward(gt, xt, w, rm, rv, mean, invstd, True, self.eps, [need_input, True, True])
        if need_input:
            gx = gx.view(1, B, n) if S == 1 else gx.view(B, S, n).transpose(0, 1)
        return gx, (gw.view(S, n), gb.view(S, n))


class _OutputActivation(_Piece):
    """An activation differentiated from its output (in place on a free input)."""

    output_free = False

    def __init__(self, fn, fn_, grad):
        self.fn, self.fn_, self.grad = fn, fn_, grad

    def forward(self, x, free):
        y = self.fn_(x) if free else self.fn(x)
        return y, y

    def backward(self, g, y, need_input):
        return self.grad(g, y), ()


class _InputActivation(_Piece):
    """Any other activation: autograd of its torch forward, on the saved input, in the backward pass."""

    def __init__(self, fn):
        self.fn = fn

    def forward(self, x, free):
        return self.fn(x), x

    def backward(self, g, x, need_input):
        import torch

        with torch.enable_grad():
            h = x.detach().requires_grad_(True)
            (gx,) = torch.autograd.grad(self.fn(h), h, g)
        return gx, ()


class _Identity(_Piece):
    output_free = None

    def forward(self, x, free):
        return x, None

    def backward(self, g, saved, need_input):
        return g, ()


class _MaskPiece(_Piece):
    """``x scale + shift`` with ``(scale, shift) = draw(x)`` (a dropout's mask; ``shift`` may be None)."""

    def __init__(self, draw):
        self.draw = draw

    def forward(self, x, free):
        scale, shift = self.draw(x)
        y = x * scale
        return (y if shift is None else y.add_(shift)), scale

    def backward(self, g, scale, need_input):
        return g * scale, ()


@functools.lru_cache(maxsize=None)
def _chain_function():
    """The autograd Function that runs a :class:`_Plan` (built on first use, like :func:`_functions`)."""
    import torch
    from torch.autograd.function import once_differentiable

    class Chain(torch.autograd.Function):
        """The network as one autograd node: the pieces' forwards, then their backwards in reverse."""

        @staticmethod
        def forward(ctx, x, plan, update, *params):
            saved, free = [], False  # the network input is the caller's
            for pc in plan.pieces:
                x, s = pc.forward(x, free)
                saved.append(s)
                free = free if pc.output_free is None else pc.output_free
            ctx.plan, ctx.saved, ctx.update = plan, saved, update
            return x

        @staticmethod
        @once_differentiable
        def backward(ctx, g):
            grads = _chain_backward(ctx.plan, ctx.saved, g, ctx.update)
            ctx.saved = None
            return (None, None, None, *grads)

    return Chain


def _chain_backward(plan, saved, g, update) -> list:
    """The pieces' backwards in reverse; the parameters' gradients, or Nones where ``update`` consumed them."""
    grads: list = [None] * len(plan.params)
    params, pending, size = [], [], 0  # gradients waiting for the optimizer
    for i in range(len(plan.pieces) - 1, -1, -1):
        pc = plan.pieces[i]
        g, pg = pc.backward(g, saved[i], i > 0)  # the network input needs no gradient
        saved[i] = None  # freed as the pass goes down
        if not pg:
            continue
        if update is None:
            grads[plan.offsets[i] : plan.offsets[i] + len(pg)] = pg
            continue
        params += pc.params
        pending += pg
        size += plan.sizes[i]
        if size >= _UPDATE_ELEMENTS:  # the optimizer's rule while the gradients are in cache
            update(params, pending)
            params, pending, size = [], [], 0
    if pending:
        update(params, pending)
    return grads


def dense_piece(mod):
    """The chain's piece of a Dense module (``weight`` ``[S, out, in]``, ``bias`` ``[S, out]``): :func:`dense`'s numbers."""
    return _DensePiece(mod)


def batchnorm_piece(mod, eps: float, momentum: float):
    """The chain's piece of a train-mode BatchNorm module (``weight``, ``bias``, ``running_mean``, ``running_var`` ``[S, n]``)."""
    return _BatchNormPiece(mod, eps, momentum)


@functools.lru_cache(maxsize=None)
def _output_derivatives():
    """torch forward -> (in-place form, derivative from the output): the activations whose autograd uses the output."""
    import torch

    aten = torch.ops.aten
    return {
        torch.relu: (torch.relu_, lambda g, y: aten.threshold_backward(g, y, 0)),
        torch.selu: (torch.selu_, lambda g, y: aten.elu_backward(g, SELU_ALPHA, SELU_LAMBDA, 1.0, True, y)),
        torch.tanh: (torch.tanh_, aten.tanh_backward),
        torch.sigmoid: (torch.sigmoid_, aten.sigmoid_backward),
    }


def activation_piece(act):
    """The chain's piece of an activation (an Activation or a name).

    ReLU, SELU (the solved constants), tanh and sigmoid act in place and
    differentiate from their output as their autograd does (SELU as
    :func:`selu`); linear is the identity; any other activation runs its torch
    forward and differentiates it by autograd from the saved input.
    """
    act = get_activation(act)
    if act.family == "linear":
        return _Identity()
    fn = torch_forms(act).forward
    known = _output_derivatives().get(fn)
    if known is not None:
        return _OutputActivation(fn, *known)
    return _InputActivation(fn)


def mask_piece(draw):
    """The chain's piece of a masked affine map (dropout): ``y = x scale + shift``, ``(scale, shift) = draw(x)``."""
    return _MaskPiece(draw)


def identity_piece():
    """The chain's piece of an op that passes its input through (dropout at rate 0, a linear activation)."""
    return _Identity()


#: Gradient elements the chain's backward collects before it calls the optimizer (one fused call for a few
#: layers' small parameters and a weight matrix: 512 KiB of float32 gradients, well inside a core's L2 cache).
_UPDATE_ELEMENTS = 1 << 17


class _Plan:
    """A model's chain: its pieces, their parameters (flat, in order), where each piece's start, their sizes."""

    def __init__(self, pieces, modules):
        self.pieces = tuple(pieces)
        self.modules = tuple(modules)
        self.offsets, self.sizes, params = [], [], []
        for pc in self.pieces:
            self.offsets.append(len(params))
            self.sizes.append(sum(p.numel() for p in pc.params))
            params += pc.params
        self.params = tuple(params)

    def training(self) -> bool:
        return all(m.training for m in self.modules)


_PLANS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _plan(model):
    """The chain of ``model`` (its ``layers``' ops' ``train_piece``), or None where an op has no piece; cached."""
    try:
        return _PLANS[model]
    except KeyError:
        pass
    pieces = []
    for m in getattr(model, "layers", ()):
        piece = m.op.train_piece(m) if hasattr(m, "op") else None
        if piece is None:
            pieces = None
            break
        pieces.append(piece)
    # the plan holds the model's submodules, never the model itself: a cached value that referred to its weak
    # key would keep every model ever trained alive (each trainability point's network stayed in memory)
    plan = _Plan(pieces, [m for m in model.modules() if m is not model]) if pieces else None
    _PLANS[model] = plan
    return plan


def training_forward(model, x, optimizer=None):
    """``model(x)`` for a training step: the logits ``[S, B, out]`` of ``x`` ``[S, B, in]`` (each seed its own batch).

    With the kernels enabled, every module in train mode, gradients on, and a
    piece for every op (``op.train_piece``: built-in ops; a composite such as
    a residual block, LayerNorm, or dropout without per-seed generators has
    none), the network runs as one chain (module docstring); otherwise this
    is ``model(x)``. With an ``optimizer`` that can (:func:`rmsprop`'s
    ``backward_update``), the chain's backward updates each layer's parameters
    as soon as their gradients exist and leaves ``.grad`` unset: call
    ``optimizer.step()`` after ``backward()`` as usual (it completes the step:
    the step counts, and any parameter the backward did not reach). Meant for
    one forward and one backward (it is differentiable once).
    """
    import torch

    plan = _plan(model) if ENABLED and CHAIN else None
    if plan is None or not torch.is_grad_enabled() or x.dim() != 3 or not (model.training and plan.training()):
        return model(x)
    update = getattr(optimizer, "backward_update", None)
    update = update(plan.params) if update is not None else None
    return _chain_function().apply(x, plan, update, *plan.params)


# ---------------------------------------------------------------------------- the optimizer


class _VersionedState(collections.defaultdict):
    """An optimizer's ``state`` mapping that counts assignments (so cached lookups into it know when to refresh)."""

    version = 0

    def __setitem__(self, key, value):
        self.version += 1
        super().__setitem__(key, value)

    def __delitem__(self, key):
        self.version += 1
        super().__delitem__(key)


#: A member slice of this many float32 entries (a multiple of 64-byte cache lines and of any vector width) never
#: meets the fused kernel's scalar tail: torch cuts its work into cache-line-aligned units and each unit into whole
#: vectors, so only slices of other sizes (a readout's 10 biases) need to be tensors of their own.
_WHOLE_LINES = 64


class _FusedRule:
    """torch's RMSprop whose plain case (no momentum, not centered, no weight decay, CPU) takes one fused pass.

    Mixed into a ``torch.optim.RMSprop`` subclass (:func:`_rmsprop_class`).
    Each parameter's step count (``state[p]["step"]``, as torch's RMSprop
    keeps it) is a view into one tensor, so a step counts them all in one
    operation; a state put in from outside (a checkpoint) is linked again on
    its parameter's next update.
    """

    # beta2 ** this underflows to 0 for every beta2 < 1, so Adam's bias corrections are exactly 1
    _NEVER = 2.0**40

    #: Members stacked on the parameters' first dimension (a seed ensemble), each updated as a tensor of its own.
    members = 1

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._fast: dict = {}
        self._fast_key = None
        self._pending: list = []

    def _rule_ok(self) -> bool:
        import torch

        if not (ENABLED and hasattr(torch, "_fused_adam_")):
            return False
        for group in self.param_groups:
            if group["momentum"] or group["centered"] or group["weight_decay"] or group.get("maximize") \
                    or group.get("differentiable") or group.get("capturable"):
                return False
        return True

    def _fused_ok(self) -> bool:
        if not self._rule_ok():
            return False
        for group in self.param_groups:
            for p in group["params"]:
                g = p.grad
                if g is not None and (not p.is_cpu or g.is_sparse or not p.is_contiguous()
                                      or not g.is_contiguous() or g.dtype != p.dtype):
                    return False
        return True

    def backward_update(self, params):
        """``update(params, grads)``: this step's rule applied at once (inside a backward pass), or None.

        None where the fused rule does not apply (settings, a parameter not on
        the CPU or not contiguous, one this optimizer does not hold, several
        parameter groups). The update reads the group's learning rate when it
        runs; :meth:`step` afterwards completes the step (the step counts of
        the parameters updated).
        """
        if len(self.param_groups) != 1 or not self._rule_ok():
            return None
        slots = self._slots()
        if not all(p in slots and p.is_cpu and p.is_contiguous() for p in params):
            return None
        group = self.param_groups[0]
        return lambda ps, gs: self._apply(group, list(ps), list(gs))

    def step(self, closure=None):
        import torch

        if not self._fused_ok():
            self._count_steps()
            return super().step(closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with torch.no_grad():
            for group in self.param_groups:
                params = [p for p in group["params"] if p.grad is not None]
                if params:
                    self._apply(group, params, [p.grad for p in params])
            self._count_steps()
        return loss

    def _apply(self, group, params: list, grads: list) -> None:
        """The rule on ``params`` with ``grads`` (contiguous, like the parameters; overwritten by the kernel)."""
        import torch

        entries = self._entries(params)
        avgs = [e[0] for e in entries]
        m = self.members
        if m > 1:
            # every member's slice on its own: the kernel cuts each tensor into its vector loop and a scalar tail
            # (and, on several threads, into chunks), which round differently; cut alike for every member, a
            # seed's update does not depend on where it sits in the stack or on the seeds beside it
            ps, gs, vs = [], [], []
            for p, g, e in zip(params, grads, entries):
                if e[2]:
                    ps.extend(e[2])
                    gs.extend(g.unbind(0))
                    vs.extend(e[3])
                else:
                    ps.append(p)
                    gs.append(g)
                    vs.append(e[0])
            params, grads, avgs = ps, gs, vs
        # Adam's first moment with beta1 = 0 is g itself: the gradient's own buffer serves as it
        # (the kernel writes g back unchanged), so no scratch buffer is read or written
        torch._fused_adam_(params, grads, grads, avgs, [], self._never(len(params)),
                           lr=float(group["lr"]), beta1=0.0, beta2=float(group["alpha"]),
                           weight_decay=0.0, eps=float(group["eps"]), amsgrad=False, maximize=False)
        self._pending.extend(e[1] for e in entries)

    def _entries(self, params: list) -> list:
        """Per parameter ``(square average, step-count slot, its members' slices, theirs)``, cached by ``id``.

        The slices (``unbind(0)`` of the parameter and of its square average)
        only where the optimizer holds :attr:`members` stacked members, the
        parameter's first dimension is theirs and a member's size is not a
        multiple of :data:`_WHOLE_LINES`; else empty. Cached until the state
        changes.

        A dict keyed by tensors calls ``Tensor.__hash__`` (Python) per lookup;
        a step looks up every parameter, so the entries are kept under their
        ids (the parameters stay alive in them). Any assignment into the state
        (a new parameter, a checkpoint's state put in) or a new state mapping
        (``load_state_dict``) drops the cache.
        """
        state = self.state
        if type(state) is not _VersionedState:
            state = self.state = _VersionedState(dict, state)
        if (id(state), state.version) != self._fast_key:
            self._fast.clear()
        fast, out = self._fast, []
        for p in params:
            e = fast.get(id(p))
            if e is None:
                slot = self._slots()[p]
                avg = self._square_avg(p, slot)
                split = (self.members > 1 and p.dim() > 0 and p.shape[0] == self.members
                         and (p.numel() // self.members) % _WHOLE_LINES)
                e = fast[id(p)] = (avg, slot, p.unbind(0) if split else (), avg.unbind(0) if split else (), p)
            out.append(e)
        self._fast_key = (id(self.state), self.state.version)
        return out

    def _slots(self) -> dict:
        """Parameter -> its index into the one step-count tensor (rebuilt when the parameters change)."""
        import torch

        slots = self.__dict__.get("_slot_of")
        n = sum(len(g["params"]) for g in self.param_groups)
        if slots is None or len(slots) != n:
            params = [p for g in self.param_groups for p in g["params"]]
            old = {p: self.state[p]["step"] for p in params if "step" in self.state.get(p, {})}
            self._counts = torch.zeros(len(params), dtype=torch.float32)
            self._views = [self._counts[j] for j in range(len(params))]
            slots = self.__dict__["_slot_of"] = {p: j for j, p in enumerate(params)}
            for p, step in old.items():
                self._views[slots[p]].copy_(step)
                self.state[p]["step"] = self._views[slots[p]]
        return slots

    def _square_avg(self, p, slot: int):
        import torch

        st = self.state[p]
        view = self._views[slot]
        if len(st) == 0:
            view.zero_()
            st["step"] = view
            st["square_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        elif st.get("step") is not view:  # a state put in from outside (a checkpoint): count on from its step
            if st.get("step") is not None:
                view.copy_(st["step"])
            st["step"] = view
        return st["square_avg"]

    def _count_steps(self) -> None:
        """Add 1 to the step count of every parameter updated since the last call."""
        import torch

        pending = self._pending
        if not pending:
            return
        if len(pending) == len(self._counts) and len(set(pending)) == len(pending):
            self._counts.add_(1.0)
        else:
            self._counts.index_add_(0, torch.tensor(pending), torch.ones(len(pending)))
        pending.clear()

    def _never(self, n: int) -> list:
        """``n`` step-count tensors of :attr:`_NEVER` (made once; the kernel only reads them)."""
        import torch

        cache = self.__dict__.setdefault("_never_steps", [])
        while len(cache) < n:
            cache.append(torch.tensor(self._NEVER, dtype=torch.float32))
        return cache[:n]


@functools.lru_cache(maxsize=None)
def _rmsprop_class():
    import torch

    class FusedRMSprop(_FusedRule, torch.optim.RMSprop):
        __doc__ = _FusedRule.__doc__

    return FusedRMSprop


def rmsprop(params, lr: float, rho: float, eps: float, members: int = 1):
    """Keras' RMSprop over ``params`` (a ``torch.optim.RMSprop``, fused on CPU; module docstring).

    ``rho`` is Keras' decay (torch's ``alpha``), ``eps`` is added outside the
    square root. Elementwise, so on parameters stacked over seeds it is each
    seed's own update; with ``members`` (the number stacked on the parameters'
    first dimension) it is that update bit for bit, wherever the seed sits in
    the stack (the fused kernel takes each member's slice as a tensor of its own).
    """
    opt = _rmsprop_class()(params, lr=lr, alpha=rho, eps=eps)
    opt.members = int(members)
    return opt
