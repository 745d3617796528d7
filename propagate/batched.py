"""One batched run of a spec's layer ops over many sampled networks: random draws, buffers, taps, Jacobians.

The simulator (:func:`propagate.simulate.simulate`), the spread across
networks (:func:`propagate.finite_width.sample_spread`) and the sampled
Jacobian spectrum (:func:`propagate.spectrum.sample_jacobian_spectrum`) are
one machine: a :class:`Run` that :func:`propagate.layers.forward_ops` and
:func:`propagate.layers.vjp_ops` drive through the spec's ops. They differ in
where the random numbers come from (:class:`PerNetworkDraws`: one generator
per network; :class:`SharedDraws`: one generator for all, a layer at a time)
and in the taps they put on the run (:class:`LogNorms`: log squared norms of
every layer's pre-activation and gradient; the simulator adds its per-layer
statistics), and the Jacobian products come from the tape
(:func:`jacobians`). Weights come from :meth:`propagate.layers.Dense.draw`
only.

Shapes: ``S`` networks, ``N`` samples each, ``[S, N, units]``; the first
``G`` samples keep the per-sample caches (``s_*``) the backward pass needs.
"""

from __future__ import annotations

from typing import Sequence

from propagate.layers import vjp_ops

__all__ = ["Run", "PerNetworkDraws", "SharedDraws", "LogNorms", "log_sq_norms", "jacobians", "per_sample"]


class PerNetworkDraws:
    """Network ``s`` draws its weights and masks from its own generator ``gens[s]`` (the simulator's streams).

    Per generator the order is the layer order, weight then bias, then the
    layer's masks; so network ``s`` is the same whatever the number of networks.
    """

    def __init__(self, gens: Sequence):
        self.gens = list(gens)

    def weights(self, op, dtype):
        import torch

        ws, bs = zip(*(op.draw(g, dtype) for g in self.gens))
        return torch.stack(ws), torch.stack(bs)

    def masks(self, shape: tuple, keep: float, dtype):
        import torch

        return torch.stack([torch.empty(shape, dtype=dtype).bernoulli_(keep, generator=g) for g in self.gens])


class SharedDraws:
    """All ``S`` networks draw from one generator, a layer at a time: all weights, then all biases, then masks."""

    def __init__(self, gen, S: int):
        self.gen, self.S = gen, int(S)

    def weights(self, op, dtype):
        return op.draw(self.gen, dtype, batch=(self.S,))

    def masks(self, shape: tuple, keep: float, dtype):
        import torch

        return torch.empty((self.S, *shape), dtype=dtype).bernoulli_(keep, generator=self.gen)


class Run:
    """What the layer ops see while they run batched (:func:`propagate.layers.forward_ops`).

    Args:
        S, N, G: networks, samples per network, samples with per-sample caches.
        max_width: the widest layer output (sizes the buffers).
        dtype, device: working precision and device (draws happen on the CPU
            and are moved, so a seed gives the same networks on every device).
        draws: :class:`PerNetworkDraws` or :class:`SharedDraws`.
        taps: objects with ``forward(op, x, run)`` (called at every "pre" and
            "post" tap, before the next op may overwrite ``x``) and
            ``gradient(op, g, run)`` (the gradient at every "pre" tap during
            :func:`propagate.layers.vjp_ops` with ``record=run.record``); a tap
            may set ``run.stopped`` (the forward pass then ends).

    Two ping-pong buffers hold the Dense outputs (a layer's input stays intact
    while its output is written); a scratch buffer serves normalizations that
    must not overwrite a residual stream. ``spare``: the network input, given
    to the run (nothing outside it reads it after the forward pass starts):
    its memory becomes the second buffer when it is large enough, since the
    first layer is done with its input before the second Dense writes.
    """

    exact_bn = False  # BatchNorm backward with statistics held fixed (per-sample gradients)

    def __init__(self, S: int, N: int, G: int, max_width: int, dtype, device, draws, taps: Sequence = (),
                 spare=None):
        self.S, self.N, self.G = int(S), int(N), int(G)
        self.dtype, self.device, self.draws, self.taps = dtype, device, draws, list(taps)
        self.stopped = False
        self._size = self.S * self.N * int(max_width)
        self._bufs: list = []
        self._next = 0
        self._scratch = None
        self._spare = spare if self._fits(spare) else None
        self._buf64, self._f64_of = None, None
        self._grad_bufs: list = []
        self._next_grad = 0
        self.next_op = None  # the op after the one whose taps run (set by forward_ops while they run)
        self._deferred = None  # (tensor, version, callback): statistics the next op measures in its own pass
        self._known = None  # (tensor, version, (stats, finite)) the last such pass left for its output's taps

    def _fits(self, t) -> bool:
        return (t is not None and t.is_contiguous() and t.numel() >= self._size and t.dtype == self.dtype
                and str(t.device) == str(self.device))

    def weights(self, op):
        """``(W, b)`` of ``op`` for every network, ``[S, n_out, n_in]`` and ``[S, n_out]``, on the run's device."""
        W, b = self.draws.weights(op, self.dtype)
        return W.to(self.device), b.to(self.device)

    def masks(self, n: int, keep: float):
        """Bernoulli(``keep``) masks ``[S, N, n]`` on the run's device."""
        return self.draws.masks((self.N, n), keep, self.dtype).to(self.device)

    def dense_buffer(self, n: int):
        import torch

        i = self._next % 2
        self._next += 1
        if i == len(self._bufs):  # allocated on first use: a one-layer network needs one
            spare, self._spare = (self._spare, None) if i == 1 else (None, self._spare)
            self._bufs.append(spare.view(-1) if spare is not None
                              else torch.empty(self._size, dtype=self.dtype, device=self.device))
        return self._bufs[i][: self.S * self.N * n].view(self.S, self.N, n)

    def scratch(self, n: int):
        import torch

        if self._scratch is None:
            self._scratch = torch.empty(self._size, dtype=self.dtype, device=self.device)
        return self._scratch[: self.S * self.N * n].view(self.S, self.N, n)

    def grad_buffer(self, shape):
        """The next of two alternating gradient buffers, ``shape`` ``[S, G, n]`` (:func:`propagate.layers.vjp_ops`).

        Reused at every layer of the backward pass (a new gradient per op,
        freed at the next, fragments the C heap as :meth:`float64` says);
        a shape larger than ``[S, G, max_width]`` gets a new tensor.
        """
        import torch

        n = 1
        for d in shape:
            n *= int(d)
        size = self.S * self.G * (self._size // (self.S * self.N))
        if n > size:
            return torch.empty(shape, dtype=self.dtype, device=self.device)
        i = self._next_grad % 2
        self._next_grad += 1
        if i == len(self._grad_bufs):
            self._grad_bufs.append(torch.empty(size, dtype=self.dtype, device=self.device))
        return self._grad_bufs[i][:n].view(shape)

    def float64(self, t):
        """``t`` in float64 (``t`` itself if it is): a view of one buffer the run reuses, valid until the next call.

        The same numbers as ``t.double()``; a reduction with ``dtype=float64``
        makes such a copy at every call, and a copy made and freed at every
        layer fragments the C heap (the process's memory grew by its size per
        layer).
        """
        import torch

        if t.dtype == torch.float64:
            return t
        if self._f64_of is not None and self._f64_of[0] is t and self._f64_of[1] == t._version:
            return self._f64_of[2]  # the same tensor, unchanged: converted already (two taps of one gradient)
        if self._buf64 is None or self._buf64.numel() < t.numel() or self._buf64.device != t.device:
            self._buf64 = torch.empty(t.numel(), dtype=torch.float64, device=t.device)
        out = self._buf64[: t.numel()].view(t.shape).copy_(t)
        self._f64_of = (t, t._version, out)
        return out

    # statistics fused into the next op's pass over memory (propagate.stats.measure_through)

    def defer_measure(self, t, callback) -> bool:
        """Have the next op measure ``t`` as a pre-activation in its own pass over ``t``.

        ``callback((stats, finite))`` then receives ``measure(pre=t)``'s
        values, before anything overwrites ``t``. True when the next op does
        that (it fuses, see :meth:`propagate.layers.Activation.forward`, and
        hands its output's statistics to the taps: :meth:`known_stats`);
        False: the tap measures now.
        """
        op = self.next_op
        if self._deferred is not None or op is None or not op.fuses_measure(t):
            return False
        self._deferred = (t, t._version, callback)
        return True

    def _take(self, slot: str, t):
        """The payload of ``(tensor, version, payload)`` in attribute ``slot`` if it is ``t`` unchanged (the slot
        is emptied), else None."""
        held = getattr(self, slot)
        if held is None or held[0] is not t or held[1] != t._version:
            return None
        setattr(self, slot, None)
        return held[2]

    def take_deferred(self, t):
        """The callback deferred on ``t`` (unchanged since), or None; the op that calls this must answer it."""
        return self._take("_deferred", t)

    def settle(self) -> None:
        """Answer a deferral that no op took, from the tensor as it still is (an op that fuses always takes it)."""
        from propagate.stats import measure

        d, self._deferred = self._deferred, None
        if d is not None:
            if d[1] != d[0]._version:
                raise RuntimeError("a tensor was changed before the statistics deferred on it were taken")
            d[2](measure(pre=d[0]))

    def know_stats(self, t, stats) -> None:
        """``(stats, finite)`` of ``t`` as it now is, measured in an op's pass, for its taps (:meth:`known_stats`)."""
        self._known = (t, t._version, stats)

    def known_stats(self, t):
        """:meth:`know_stats`' ``(stats, finite)`` of ``t`` if ``t`` is unchanged since, else None."""
        return self._take("_known", t)

    def tap(self, op, x) -> None:
        for t in self.taps:
            t.forward(op, x, self)

    def record(self, op, g) -> None:
        for t in self.taps:
            t.gradient(op, g, self)


def log_sq_norms(t):
    """``ln ||t[..., j, :]||^2`` over the last axis, float64 numpy (``(S, J)`` for ``t`` ``[S, J, n]``).

    ``t`` in float32 is copied to float64 first (the taps pass :meth:`Run.float64`, a reused buffer).
    """
    import torch

    return torch.log(torch.linalg.vector_norm(t, dim=-1, dtype=torch.float64) ** 2).cpu().numpy()


class LogNorms:
    """Tap: ``ln ||h^l||^2`` and ``ln ||dy/dh^l||^2`` per network and sample (the first ``G``) of every layer.

    ``norms[l]`` and ``grads[l]`` are ``(S, G)`` float64 arrays (the finite-width spread's raw data).
    """

    def __init__(self):
        self.norms: dict = {}
        self.grads: dict = {}

    def forward(self, op, x, run) -> None:
        if op.tap == "pre":
            self.norms[op.layer] = log_sq_norms(run.float64(x[:, : run.G]))

    def gradient(self, op, g, run) -> None:
        self.grads[op.layer] = log_sq_norms(run.float64(g))


def per_sample(tape, k: int, networks: slice = slice(None)):
    """The tape of ``networks`` at their first ``k`` samples (per-sample caches are the ``s_*`` entries).

    A composite's cache holds its branch's tape under ``"tape"``.
    """
    out = []
    for op, cache in tape:
        c = {}
        for key, v in cache.items():
            if key == "tape":
                c[key] = per_sample(v, k, networks)
            elif v is None or not hasattr(v, "shape"):
                c[key] = v
            else:
                c[key] = v[networks, :k] if key.startswith("s_") else v[networks]
        out.append((op, c))
    return out


def jacobians(tape, run: Run, k: int, n_out: int, networks: Sequence[int]):
    """Input-output Jacobians ``d x^out / d x^0`` of ``networks`` at their first ``k`` samples, ``[len, k, n_out, n_in]``.

    One vector-Jacobian product per output unit, in the run's dtype, a network
    at a time (``n_out x k x n`` per product). BatchNorm's statistics are held
    fixed (the per-sample Jacobian); ``k`` must not exceed the run's ``G``.
    """
    import torch

    g = torch.eye(n_out, dtype=run.dtype, device=run.device).unsqueeze(1).expand(n_out, k, n_out)
    out = []
    for s in networks:
        rows = vjp_ops(per_sample(tape, k, slice(s, s + 1)), g)  # [n_out, k, n_in]
        out.append(rows.permute(1, 0, 2))
    return torch.stack(out)
