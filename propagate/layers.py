"""The layer operations of a network: one description per layer kind, read by all three lenses.

:func:`compile_spec` turns a :class:`~propagate.spec.NetworkSpec` into one
ordered list of operations, in the lecture demo's placement (see :mod:`propagate.spec`)::

    layer 1:        Dense, Activation, [Dropout | AlphaDropout]
    layer l >= 2:   [BatchNorm | LayerNorm], Dense, Activation, [Dropout | AlphaDropout]
    residual layer: Residual(branch = the layer's ops above), when ``spec.residual > 0``
                    and the layer's input and output widths match
    readout:        [BatchNorm | LayerNorm], Dense        (training only)

Each operation declares on :class:`Op`, side by side, what every lens needs of
it (after the lesson of neural-tangents' ``stax``: one description gives both
the finite network and its infinite-width statistics):

- theory: ``moments(state, expect, rows) -> (state', log_factor)``, its
  mean-field map on the :class:`Moments` of one unit (mean, second moment
  ``q``, cross moment ``qab`` of two inputs) and the log of its factor on the
  squared gradient norm (``E ||dy/d input||^2 = factor * E ||dy/d output||^2``,
  summed over units); ``tangent(tan, step, texpect)``, how it maps a tangent
  (a small change ``delta`` of its input: ``(E[delta], E[x delta], E[delta^2])``),
  and ``pull_back(v, step, texpect)``, the transpose of that map on the
  quadratic functionals :func:`signal_gradients` walks back;
- simulation: ``forward(x, run) -> (y, cache)`` batched over independent
  networks, ``x`` of shape ``[S, B, N]`` (``S`` networks, ``B`` samples,
  ``N`` units), and ``vjp(g, cache) -> g_in``, its hand-written backward pass
  (vector-Jacobian product); per-sample cache entries are named ``s_*``;
- training: ``torch_state(S, draws, dtype) -> (parameters, buffers)`` and
  ``torch_forward(module, x, rec)``, the same operation as a torch module
  batched over seeds;
- what it is: ``theory_gap(theory)`` (what a theory does not cover of it,
  None where it does; :func:`theory_gap` of a network asks every op),
  ``has_weights`` (:meth:`Dense.draw` is the one weight sampler),
  ``stochastic`` (draws masks) and ``batch_coupled`` (a sample's output
  depends on the rest of its batch: BatchNorm).

The walks themselves are methods too, so the lens loops never ask which op
they hold: ``fold`` (a :class:`Step` of the theory's trace), ``grad_back`` and
``signal_back`` (the two backward theory walks) and ``backward`` (a vjp with
the gradient taps). A leaf op inherits them; the composite :class:`Residual`
(neural-tangents' ``serial(FanOut(2), parallel(Identity, serial(branch)),
FanInSum)``, with the weights ``sqrt(1 - R^2)`` and ``R`` on the two paths)
overrides them to walk its branch.

:func:`fold_moments`/:func:`moment_gradients`/:func:`signal_gradients`
(theory), :func:`forward_ops`/:func:`vjp_ops` (simulation) and
:func:`build_network` (training) are short loops over the list. Adding a layer
kind means one class here and one line in :func:`compile_spec`.

Torch is imported only inside the functions that need it, so the theory
(``propagate theory``) never loads it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import numpy as np

from propagate.activations import Activation as ActivationFn
from propagate.activations import builtin_torch_form, get_activation, selu_constants, torch_forms
from propagate.inits import get_init
from propagate import kernels
from propagate.kernels import activation as torch_activation
from propagate.kernels import dense as torch_dense
from propagate.stats import measure_through

__all__ = [
    "Moments",
    "Step",
    "Op",
    "Dense",
    "BatchNorm",
    "LayerNorm",
    "Activation",
    "Dropout",
    "AlphaDropout",
    "Residual",
    "compile_spec",
    "walk",
    "theory_gap",
    "batch_coupled",
    "MEAN_FIELD",
    "FINITE_WIDTH",
    "FREE_PROBABILITY",
    "fold_moments",
    "moment_gradients",
    "forward_ops",
    "vjp_ops",
    "build_network",
    "dropout_seed",
    "seed_dropout",
    "alpha_dropout_affine",
    "OVERFLOW_Q",
]

#: Values of q beyond this count as overflow (the theory's row is flagged ``diverged``).
OVERFLOW_Q = 1e300

#: Elements per block where the simulator computes a per-sample cache in pieces (a small temporary each).
_BLOCK_ELEMENTS = 1 << 18

#: The theories an op may be covered by (:meth:`Op.theory_gap`), and how a reason names them.
MEAN_FIELD, FINITE_WIDTH, FREE_PROBABILITY = "mean_field", "finite_width", "free_probability"
THEORY_NAMES = {MEAN_FIELD: "mean-field theory",
                FINITE_WIDTH: "the finite-width spread theory (propagate.finite_width)",
                FREE_PROBABILITY: "the free-probability Jacobian spectrum (propagate.spectrum)"}
_PLAIN = frozenset({MEAN_FIELD, FINITE_WIDTH, FREE_PROBABILITY})


def alpha_dropout_affine(rate: float) -> tuple[float, float, float]:
    """torch's alpha dropout at drop rate ``rate``: ``(a, b, alpha')``, the one place these numbers come from.

    A dropped unit is set to ``alpha' = -lambda alpha`` (SELU's negative
    saturation, with the solved constants of :func:`~propagate.activations.selu_constants`,
    whose product is torch's ``1.7580993408473766``), then ``y -> a y + b``
    restores mean 0 and variance 1 (Klambauer et al. 2017, sec. "New Dropout
    Technique"): ``a = (keep (1 + alpha'^2 rate))^(-1/2)``, ``b = -a alpha' rate``
    with ``keep = 1 - rate``. :func:`propagate.selu.alpha_dropout_params`
    derives the same formulas symbolically (tested equal).
    """
    lam, alpha = selu_constants()
    ap = -lam * alpha
    keep = 1.0 - rate
    a = 1.0 / math.sqrt((ap * ap * rate + 1.0) * keep)
    return a, -a * ap * rate, ap


def _log(x: float) -> float:
    return math.log(x) if x > 0 else -math.inf


# ---------------------------------------------------------------------------- theory state


@dataclass(frozen=True)
class Moments:
    """Mean-field state of one unit between operations.

    ``mean``: ``E[x]``; ``q``: second moment ``E[x^2]`` (not a variance);
    ``qab``: cross moment ``E[x_a x_b]`` of two different inputs ``a, b``.
    ``diverged``: an earlier operation overflowed (then the numbers are meaningless).
    """

    mean: float
    q: float
    qab: float
    diverged: bool = False


@dataclass(frozen=True)
class Step:
    """One op's entry in a :func:`fold_moments` trace: what the backward theory walks need of it.

    ``st``: the op's input state; ``log_factor``: the log of its factor on the
    squared gradient norm; for a composite, ``branch`` (its branch's trace)
    and ``branch_out`` (the branch output's state).
    """

    op: "Op"
    st: Moments
    log_factor: float
    branch: tuple = ()
    branch_out: Moments | None = None


class Op:
    """Base of the layer operations: the interface every lens reads (module docstring).

    A leaf op implements ``moments``, ``tangent``, ``forward``, ``vjp`` and
    ``torch_forward`` (and ``torch_state`` if it has parameters) and sets the
    class attributes below; the walks (``fold``, ``grad_back``,
    ``signal_back``, ``backward``) and ``pull_back`` have generic forms here.
    """

    #: hidden layer index (1..depth), ``depth + 1`` for the readout
    layer: int
    #: what the lenses record after this op: "pre" (pre-activation), "post" (activation output) or None
    tap: str | None = None
    #: the theories that cover this op (:data:`MEAN_FIELD`, :data:`FINITE_WIDTH`, :data:`FREE_PROBABILITY`)
    theories: frozenset = frozenset({MEAN_FIELD})
    #: how a reason names this op ("BatchNorm", "a residual block", ...)
    what: str = "this layer"
    #: draws weights (:meth:`Dense.draw`, the one weight sampler of every lens)
    has_weights: bool = False
    #: draws random masks (training: the per-seed dropout streams; simulation: the run's random source)
    stochastic: bool = False
    #: a sample's output depends on the other samples of its batch (probes run the network in train mode)
    batch_coupled: bool = False

    def theory_gap(self, theory: str) -> str | None:
        """What ``theory`` does not cover of this op (a phrase for a reason), or None where it covers it."""
        return None if theory in self.theories else self.what

    def children(self) -> Sequence["Op"]:
        return ()

    def fuses_measure(self, x) -> bool:
        """Whether :meth:`forward` on ``x`` measures ``x`` for a tap in its own pass (:meth:`batched.Run.defer_measure`)."""
        return False

    # theory ----------------------------------------------------------------
    def moments(self, st: Moments, expect, rows: dict) -> tuple[Moments, float]:
        """``(state after this op, log of its factor on the squared gradient norm)``; taps fill ``rows``."""
        raise NotImplementedError

    def tangent(self, tan: tuple, step: Step, texpect) -> tuple:
        """The tangent ``(E[delta], E[x delta], E[delta^2])`` after this op, from the one before it."""
        raise NotImplementedError

    def pull_back(self, v, step: Step, texpect) -> tuple:
        """:func:`_pull_back` of :meth:`tangent` (ops with a written-out form override it)."""
        return _pull_back(v, lambda tan: self.tangent(tan, step, texpect))

    def fold(self, st: Moments, expect, rows: dict) -> tuple[Moments, Step]:
        """:meth:`moments` and this op's :class:`Step` of the trace (a composite folds its branch)."""
        out, log_factor = self.moments(st, expect, rows)
        return out, Step(self, st, log_factor)

    def grad_back(self, step: Step, lg: float, out: dict) -> float:
        """``log E||dy/d input||^2`` from ``lg`` at the output; a "pre" tap records ``out[layer]``."""
        if self.tap == "pre":
            out[self.layer] = lg
        return lg + step.log_factor

    def signal_back(self, step: Step, v, texpect, out: dict):
        """The functional ``v`` at this op's input (:func:`signal_gradients`); Dense records ``out[layer]`` there."""
        return self.pull_back(v, step, texpect)

    # simulation -----------------------------------------------------------
    def forward(self, x, run):
        """``(y, cache)``: the op on ``x`` ``[S, B, N]`` for the ``S`` networks of ``run`` (may work in place)."""
        raise NotImplementedError

    def vjp(self, g, cache):
        """The gradient at the op's input from ``g`` at its output (leading dims of ``g`` broadcast)."""
        raise NotImplementedError

    def backward(self, g, cache, record=None, out=None):
        """:meth:`vjp` with the gradient taps: ``record(op, g)`` at a "pre" tap first; ``out``: see :meth:`vjp_into`."""
        if record is not None and self.tap == "pre":
            record(self, g)
        return self.vjp(g, cache) if out is None else self.vjp_into(g, cache, out)

    def vjp_into(self, g, cache, out):
        """:meth:`vjp`, written where the op can into ``out(shape)``, a buffer the caller reuses (same numbers)."""
        return self.vjp(g, cache)

    # training -------------------------------------------------------------
    def torch_state(self, S: int, draws, dtype) -> tuple[dict, dict]:
        """``(parameters, buffers)`` of this op's torch module for ``S`` seeds."""
        return {}, {}

    def torch_forward(self, mod, x, rec):
        """The op on ``x`` ``[S, B, N]`` in training (``mod``: its module; ``rec``: records of pre/post taps)."""
        raise NotImplementedError

    def train_piece(self, mod):
        """This op's piece of the fused training step (:func:`propagate.kernels.training_forward`), or None.

        None (the default): the step runs the network's modules instead. A
        piece computes :meth:`torch_forward`'s numbers in train mode.
        """
        return None


def _row(rows: dict, layer: int) -> dict:
    return rows.setdefault(layer, {"layer": layer})


_DIVERGED_ROW = dict(pre_mean=0.0, pre_var=math.inf, pre_q=math.inf, post_mean=math.nan, post_var=math.nan,
                     post_q=math.nan, corr=math.nan, diverged=True)


# ---------------------------------------------------------------------------- Dense


@dataclass(frozen=True)
class Dense(Op):
    """``h = W x + b``: ``W`` ``[N_out, N_in]`` drawn by ``init`` (``sigma_w2 = fan_in Var(w)``), ``b`` of variance ``sigma_b2``.

    Mean field: ``h`` is Gaussian with mean 0 and second moment
    ``sigma_w2 E[x^2] + sigma_b2`` (cross moment likewise), whatever the mean
    of ``x``; gradient factor ``sigma_w2``.
    """

    layer: int
    n_in: int
    n_out: int
    init: str
    bias_var: float | None
    sigma_w2: float
    sigma_b2: float
    tap: str | None = "pre"

    theories = _PLAIN
    what = "a dense layer"
    has_weights = True

    def theory_gap(self, theory):
        if self.n_in != self.n_out:
            if theory == FREE_PROBABILITY:
                return f"a non-square layer ({self.n_in} -> {self.n_out}; use a uniform width equal to the input dimension)"
            if theory == FINITE_WIDTH and get_init(self.init).distribution == "orthogonal":
                return (f"orthogonal weights on a non-square layer ({self.n_in} -> {self.n_out}; "
                        f"use a uniform width equal to the input dimension)")
        return super().theory_gap(theory)

    def moments(self, st, expect, rows):
        row = _row(rows, self.layer) if self.tap else {}
        row.update(width=self.n_out, sigma_w2=self.sigma_w2, sigma_b2=self.sigma_b2)
        if st.diverged:
            row.update(_DIVERGED_ROW)
            return st, math.nan
        q = self.sigma_w2 * st.q + self.sigma_b2
        qab = self.sigma_w2 * st.qab + self.sigma_b2
        if not math.isfinite(q) or q > OVERFLOW_Q or not math.isfinite(qab):
            row.update(_DIVERGED_ROW)
            return Moments(0.0, math.inf, math.inf, True), math.nan
        row.update(pre_mean=0.0, pre_var=q, pre_q=q, corr=qab / q if q > 0 else 1.0, diverged=False)
        return Moments(0.0, q, qab), _log(self.sigma_w2)

    def tangent(self, tan, step, texpect):
        a, c, t = tan
        return 0.0, self.sigma_w2 * c, self.sigma_w2 * t

    def pull_back(self, v, step, texpect):
        """:func:`_pull_back` of :meth:`tangent`, written out (the signal pass calls it once per layer)."""
        w = self.sigma_w2
        return 0.0, 0.0, v[2] * w * w, v[3] * w

    def signal_back(self, step, v, texpect, out):
        if self.tap == "pre":
            qh = self.sigma_w2 * step.st.q + self.sigma_b2
            out[self.layer] = v[2] * qh * qh + v[3] * qh  # z at the start: delta = h (a = 0, c = t = q_h)
        return self.pull_back(v, step, texpect)

    @property
    def has_bias(self) -> bool:
        bv = self.bias_var
        return (bv is not None and bv > 0) or (bv is None and get_init(self.init).torch_bias)

    def draw(self, generator, dtype, batch: tuple = ()):
        """``(W, b)`` from ``generator``, shapes ``(*batch, n_out, n_in)`` and ``(*batch, n_out)``: the one weight sampler.

        Weight first, then bias (the order training relies on); without a bias
        ``b`` is zeros and draws nothing. ``batch=(S,)`` draws ``S`` networks'
        weights at once, then their biases.
        """
        init = get_init(self.init)
        w = init.sample(self.n_out, self.n_in, batch=batch, generator=generator, dtype=dtype)
        b = init.sample_bias(self.n_out, self.n_in, batch=batch, generator=generator, dtype=dtype, bias_var=self.bias_var)
        return w, b

    def forward(self, x, run):
        import torch

        W, b = run.weights(self)
        h = run.dense_buffer(self.n_out)
        torch.bmm(x, W.transpose(1, 2), out=h)
        if self.has_bias:
            h.add_(b.unsqueeze(1))
        return h, {"W": W, "b": b}

    def vjp(self, g, cache):
        W = cache["W"]
        # one network's Jacobian rows ([rows, K, n]): one matmul with its W, not W broadcast over the rows
        return g @ (W[0] if W.shape[0] == 1 and g.shape[0] != 1 else W)

    def vjp_into(self, g, cache, out):
        import torch

        W = cache["W"]
        if W.shape[0] != g.shape[0]:
            return self.vjp(g, cache)
        return torch.matmul(g, W, out=out((*g.shape[:-1], W.shape[-1])))

    def torch_state(self, S, draws, dtype):
        import torch

        ws, bs = zip(*draws)
        return {"weight": torch.stack(ws), "bias": torch.stack(bs)}, {}

    def torch_forward(self, mod, x, rec):
        # x W^T + b per seed; the kernel's backward writes the weight gradient contiguously (no extra copy)
        h = torch_dense(x, mod.weight, mod.bias)
        if rec is not None and self.tap:
            rec["pre"].append(h)
        return h

    def train_piece(self, mod):
        return kernels.dense_piece(mod)


# ---------------------------------------------------------------------------- normalizations


@dataclass(frozen=True)
class BatchNorm(Op):
    """Train-mode BatchNormalization of each unit over the batch (biased variance, ``eps``; gamma 1, beta 0 at init).

    Mean field (large batch): the per-unit batch variance averages to
    ``v_w = q - qab`` (the part of the second moment not shared by the
    batch); the output has mean 0, second moment ``v_w / (v_w + eps)`` and
    cross moment 0 (``-1/(B-1)`` times the second moment, ``B -> inf``);
    gradient factor ``1 / (v_w + eps)``. The simulator backpropagates each
    sample with the batch statistics held fixed (``per_sample=True``, the
    quantity the theory predicts; it differs from the full train-mode
    Jacobian by ``O(1/B)``).
    """

    layer: int
    n: int
    eps: float
    momentum: float
    inplace: bool = True

    what = "BatchNorm"
    batch_coupled = True

    def moments(self, st, expect, rows):
        if st.diverged:
            return st, math.nan
        vw = max(st.q - st.qab, 0.0)
        return Moments(0.0, vw / (vw + self.eps), 0.0), -math.log(vw + self.eps)

    def tangent(self, tan, step, texpect):
        # per-sample Jacobian (statistics fixed): delta / sigma; the output is (x - mu_unit) / sigma
        a, c, t = tan
        st = step.st
        vw = max(st.q - st.qab, 0.0)
        s2 = vw + self.eps
        v = st.q - st.mean**2
        gamma = (c - a * st.mean) / v if v > 0 else 0.0  # regression of delta on x
        e_mu_delta = gamma * st.qab + (a - gamma * st.mean) * st.mean  # E[mu_unit delta]
        return a / math.sqrt(s2), (c - e_mu_delta) / s2, t / s2

    def forward(self, x, run):
        import torch

        mu = x.mean(dim=1, keepdim=True)
        y = x.sub_(mu) if self.inplace else torch.sub(x, mu, out=run.scratch(self.n))
        var = torch.linalg.vector_norm(y, dim=1, keepdim=True) ** 2 / y.shape[1]
        scale = torch.rsqrt(var + self.eps)
        y.mul_(scale)
        return y, {"scale": scale, "s_y": y[:, : run.G].clone() if run.exact_bn else None}

    def vjp(self, g, cache, per_sample: bool = True):
        """Per-sample (statistics held fixed): ``g * scale``; ``per_sample=False``: the train-mode vjp of the whole batch.

        The full form needs ``g`` for every sample of the batch and the cached
        normalized output ``s_y``: ``scale (g - mean_B g - y mean_B(g y))``.
        """
        if per_sample:
            return g * cache["scale"]
        y = cache["s_y"]
        return cache["scale"] * (g - g.mean(dim=-2, keepdim=True) - y * (g * y).mean(dim=-2, keepdim=True))

    def torch_state(self, S, draws, dtype):
        import torch

        return ({"weight": torch.ones(S, self.n, dtype=dtype), "bias": torch.zeros(S, self.n, dtype=dtype)},
                {"running_mean": torch.zeros(S, self.n, dtype=dtype), "running_var": torch.ones(S, self.n, dtype=dtype)})

    def torch_forward(self, mod, x, rec):
        import torch.nn.functional as F

        # each seed's units are separate channels of one batch_norm call: statistics per seed, over its batch
        S, B, n = x.shape
        xb = x.transpose(0, 1).reshape(B, S * n)
        y = F.batch_norm(xb, mod.running_mean.view(-1), mod.running_var.view(-1), mod.weight.view(-1),
                         mod.bias.view(-1), mod.training, self.momentum, self.eps)
        return y.view(B, S, n).transpose(0, 1)

    def train_piece(self, mod):
        return kernels.batchnorm_piece(mod, self.eps, self.momentum)


@dataclass(frozen=True)
class LayerNorm(Op):
    """Each sample's vector normalized over its units (biased variance, ``eps``), affine at identity (gamma 1, beta 0).

    Mean field: over the units of one sample, ``x`` has mean ``m`` and
    variance ``q - m^2`` (deterministic at infinite width), so the output has
    mean 0, second moment ``(q - m^2) / (q - m^2 + eps)``, cross moment
    ``(qab - m^2) / (q - m^2 + eps)``; gradient factor ``1 / (q - m^2 + eps)``
    (the projection removes two of ``N`` directions). The simulator's vjp is
    exact (LayerNorm acts on each sample alone).
    """

    layer: int
    n: int
    eps: float
    inplace: bool = True

    what = "LayerNorm"

    def moments(self, st, expect, rows):
        if st.diverged:
            return st, math.nan
        v = max(st.q - st.mean * st.mean, 0.0)
        d = v + self.eps
        return Moments(0.0, v / d, (st.qab - st.mean * st.mean) / d), -math.log(d)

    def tangent(self, tan, step, texpect):
        # exact per-sample Jacobian: removes the unit-mean and the signal directions, divides by sigma
        a, c, t = tan
        st = step.st
        v = max(st.q - st.mean**2, 0.0)
        resid = t - a * a - ((c - st.mean * a) ** 2 / v if v > 0 else 0.0)
        return 0.0, 0.0, resid / (v + self.eps)

    def forward(self, x, run):
        import torch

        mu = x.mean(dim=2, keepdim=True)
        y = x.sub_(mu) if self.inplace else torch.sub(x, mu, out=run.scratch(self.n))
        var = torch.linalg.vector_norm(y, dim=2, keepdim=True) ** 2 / self.n
        rstd = torch.rsqrt(var + self.eps)
        y.mul_(rstd)
        G = run.G
        return y, {"s_rstd": rstd[:, :G].clone(), "s_y": y[:, :G].clone()}

    def vjp(self, g, cache):
        y, rstd = cache["s_y"], cache["s_rstd"]
        return rstd * (g - g.mean(dim=-1, keepdim=True) - y * (g * y).mean(dim=-1, keepdim=True))

    def torch_state(self, S, draws, dtype):
        import torch

        return {"weight": torch.ones(S, self.n, dtype=dtype), "bias": torch.zeros(S, self.n, dtype=dtype)}, {}

    def torch_forward(self, mod, x, rec):
        import torch
        import torch.nn.functional as F

        y = F.layer_norm(x, (self.n,), eps=self.eps)
        return torch.addcmul(mod.bias.unsqueeze(1), y, mod.weight.unsqueeze(1))


# ---------------------------------------------------------------------------- activation


@dataclass(frozen=True)
class Activation(Op):
    """``x = phi(h)`` elementwise.

    Mean field: ``h ~ N(0, q)`` with pair correlation ``c = qab / q`` gives
    ``(E[phi], E[phi^2], E[phi(u_a) phi(u_b)])``; gradient factor
    ``E[phi'(h)^2]``. The Gaussian expectations come from ``expect`` (the
    theory's quadrature), so this module needs no numerics of its own.
    """

    layer: int
    name: str
    tap: str | None = "post"

    theories = _PLAIN
    what = "an activation"

    @property
    def act(self) -> ActivationFn:
        return get_activation(self.name)

    def moments(self, st, expect, rows):
        row = _row(rows, self.layer)
        if st.diverged:
            return st, math.nan
        q = st.q
        c = st.qab / q if q > 0 else 1.0
        m1, m2, g2, pab = expect(self.act, q, c)
        bad = not all(math.isfinite(v) for v in (m1, m2, g2, pab))
        row.update(post_mean=m1, post_var=m2 - m1 * m1, post_q=m2, diverged=bad)
        return Moments(m1, m2, pab, bad), (math.nan if bad else _log(g2))

    def tangent(self, tan, step, texpect):
        # delta_h = beta h + (independent part), beta = E[h delta] / q (jointly Gaussian)
        a, c, t = tan
        q = step.st.q
        if not q > 0:
            return 0.0, 0.0, 0.0
        e1, e2, k, g2 = texpect(self.act, q)
        beta = c / q
        return beta * e1, beta * e2, beta * beta * q * k + t * g2

    def pull_back(self, v, step, texpect):
        """:func:`_pull_back` of :meth:`tangent`, written out (``a`` does not enter; ``c`` enters through beta)."""
        q = step.st.q
        if not q > 0:
            return 0.0, 0.0, 0.0, 0.0
        e1, e2, k, g2 = texpect(self.act, q)
        a2, c2, t2 = e1 / q, e2 / q, k / q  # k: the centred E[h^2 phi'^2] - q E[phi'^2], over q (see texpect)
        return 0.0, 0.0, v[0] * a2 * a2 + v[1] * a2 * c2 + v[2] * c2 * c2 + v[3] * t2, v[3] * g2

    def forward(self, x, run):
        import torch

        forms = torch_forms(self.act)
        # a few networks at a time (elementwise: the same numbers), so autograd's temporaries stay small (the
        # simulator's memory: see propagate.stats._pairs)
        S, G, n = x.shape[0], min(run.G, x.shape[1]), x.shape[2]
        d = torch.empty((S, G, n), dtype=x.dtype, device=x.device)
        step = max(1, _BLOCK_ELEMENTS // (G * n))
        for s in range(0, S, step):
            d[s : s + step] = forms.derivative(x[s : s + step, :G])
        tell = run.take_deferred(x)
        if tell is None:
            return forms.inplace(x), {"s_d": d}
        # a tap asked for x's statistics: they, the activation and its output's statistics in one pass over memory
        before, after = measure_through(x, forms.inplace, self.act)
        tell(before)
        run.know_stats(x, after)
        return x, {"s_d": d}

    def fuses_measure(self, x) -> bool:
        # built-in activations only: their in-place forms are elementwise kernels, so the activation applied a
        # block at a time gives the same numbers (a user's torch function might not be elementwise)
        import torch

        return (builtin_torch_form(self.name) and x.dim() == 3
                and x.is_contiguous() and x.dtype in (torch.float32, torch.float64))

    def vjp(self, g, cache):
        return g * cache["s_d"]

    def vjp_into(self, g, cache, out):
        import torch

        d = cache["s_d"]
        if g.shape != d.shape:  # broadcast (a network's Jacobian rows)
            return self.vjp(g, cache)
        return torch.mul(g, d, out=out(g.shape))

    def torch_state(self, S, draws, dtype):
        return {}, {}

    def torch_forward(self, mod, x, rec):
        # the fastest torch form, resolved once per name (propagate.kernels: SELU's fused backward)
        y = torch_activation(self.name)(x)
        if rec is not None:
            rec["post"].append(y)
        return y

    def train_piece(self, mod):
        return kernels.activation_piece(self.name)


# ---------------------------------------------------------------------------- dropout


def dropout_seed(seed: int, epoch: int = 0) -> int:
    """The torch seed of network ``seed``'s dropout stream in epoch ``epoch`` (63 bits).

    A hash of ``(seed, epoch)`` (numpy ``SeedSequence`` with a tag), so the
    stream is unrelated to the weights' generator (seeded with ``seed``
    itself) and to the shuffles; it depends on nothing else, so member ``k`` of
    an ensemble draws the masks of a single run with seed ``k``, and a run
    resumed at an epoch boundary draws those of an uninterrupted one.
    """
    import numpy as np

    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFFFFFF, int(epoch), 0xD80F]).generate_state(2, np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


def seed_dropout(net, epoch: int = 0) -> None:
    """Restart every seed's dropout generator of ``net`` (from :func:`build_network`) at :func:`dropout_seed` ``(k, epoch)``.

    :func:`propagate.train.train` calls it at the start of every epoch;
    :func:`build_network` at ``epoch=0``. A loop of one's own may call it (or
    not: the streams then simply continue).
    """
    for g, k in zip(net.dropout_generators, net.seeds):
        g.manual_seed(dropout_seed(k, epoch))


def _seed_masks(mod, x, keep: float):
    """Bernoulli(``keep``) masks shaped like ``x`` ``[S, B, N]``, seed ``i``'s from its own generator (None: no generators).

    One draw per seed (a loop over ``S``, each a vectorized ``bernoulli_``):
    seed ``i`` consumes its generator exactly as a single run of that seed does.
    """
    gens = getattr(mod, "dropout_generators", None)
    if gens is None or x.dim() != 3 or x.shape[0] != len(gens):
        return None
    import torch

    dev = gens[0].device
    mask = torch.empty(x.shape, dtype=x.dtype, device=dev)
    for i, g in enumerate(gens):
        mask[i].bernoulli_(keep, generator=g)
    return mask if dev == x.device else mask.to(x.device)


class _MaskedAffine(Op):
    """The dropouts' simulation and training faces: ``y = A m x + C (m - 1) + B``, ``m ~ Bernoulli(1 - p)`` per unit.

    A subclass gives ``p``, :meth:`affine` ``(A, C, B)`` and the torch function
    for a module without per-seed generators (``fallback``).
    """

    p: float
    stochastic = True
    fallback = "dropout"

    def affine(self) -> tuple[float, float, float]:
        raise NotImplementedError

    def forward(self, x, run):
        A, C, B = self.affine()
        mask = run.masks(x.shape[2], 1.0 - self.p)
        shift = (mask - 1.0).mul_(C).add_(B) if (C or B) else None
        x.mul_(mask.mul_(A))  # m is 0 or 1: x (m A) is (x m) A exactly
        if shift is not None:
            x.add_(shift)
        return x, {"s_mask": mask[:, : run.G].clone()}

    def vjp(self, g, cache):
        return g * cache["s_mask"]

    def _scale_shift(self, mod, x):
        """``(m A, C (m - 1) + B or None)`` from this step's per-seed masks ``m`` (None: no per-seed generators)."""
        mask = _seed_masks(mod, x, 1.0 - self.p)
        if mask is None:
            return None
        A, C, B = self.affine()
        shift = (mask - 1.0).mul_(C).add_(B) if (C or B) else None
        return mask.mul_(A), shift

    def torch_forward(self, mod, x, rec):
        if not mod.training or self.p == 0.0:
            return x
        scaled = self._scale_shift(mod, x)
        if scaled is None:  # a module without per-seed generators: torch's global stream, shared by all seeds
            import torch.nn.functional as F

            return getattr(F, self.fallback)(x, self.p, True)
        scale, shift = scaled
        return x * scale if shift is None else x * scale + shift

    def train_piece(self, mod):
        if self.p == 0.0:
            return kernels.identity_piece()
        if getattr(mod, "dropout_generators", None) is None:
            return None  # torch's global stream: the modules draw it
        return kernels.mask_piece(lambda x: self._scale_shift(mod, x))


@dataclass(frozen=True)
class Dropout(_MaskedAffine):
    """Inverted dropout at rate ``p``: ``x m / (1 - p)``, ``m ~ Bernoulli(1 - p)``.

    Mean field: mean and cross moment unchanged (independent masks), second
    moment ``/ (1 - p)``; gradient factor ``1 / (1 - p)``.
    """

    layer: int
    p: float

    what = "dropout"

    def affine(self):
        return 1.0 / (1.0 - self.p), 0.0, 0.0

    def moments(self, st, expect, rows):
        if st.diverged:
            return st, math.nan
        k = 1.0 - self.p
        return Moments(st.mean, st.q / k, st.qab), -math.log(k)

    def tangent(self, tan, step, texpect):
        a, c, t = tan
        k = 1.0 - self.p
        return a, c / k, t / k



@dataclass(frozen=True)
class AlphaDropout(_MaskedAffine):
    """torch's alpha dropout at rate ``p``: ``a (x m + alpha' (1 - m)) + b`` (constants: :func:`alpha_dropout_affine`).

    Mean field, ``keep = 1 - p``: ``E[x~] = a (keep mu + p alpha') + b``,
    ``E[x~^2] = a^2 (keep q + p alpha'^2) + 2 a b s1 + b^2`` with
    ``s1 = keep mu + p alpha'``, cross moment likewise with
    ``keep^2 qab + 2 keep p alpha' mu + p^2 alpha'^2``; at the SELU fixed
    point it keeps (0, 1). Gradient factor ``a^2 keep``.
    """

    layer: int
    p: float

    what = "alpha dropout"
    fallback = "alpha_dropout"

    def affine(self):
        # a (x m + alpha' (1 - m)) + b = a m x + (-alpha' a) (m - 1) + b
        a, b, ap = alpha_dropout_affine(self.p)
        return a, -ap * a, b

    def moments(self, st, expect, rows):
        if st.diverged:
            return st, math.nan
        a, b, ap = alpha_dropout_affine(self.p)
        keep = 1.0 - self.p
        s1 = keep * st.mean + (1 - keep) * ap
        q = a**2 * (keep * st.q + (1 - keep) * ap**2) + 2 * a * b * s1 + b**2
        cross = keep**2 * st.qab + 2 * keep * (1 - keep) * ap * st.mean + (1 - keep) ** 2 * ap**2
        qab = a**2 * cross + 2 * a * b * s1 + b**2
        return Moments(a * s1 + b, q, qab), math.log(a**2 * keep)

    def tangent(self, tan, step, texpect):
        a, c, t = tan
        A, b, _ = alpha_dropout_affine(self.p)
        k = 1.0 - self.p
        return A * k * a, A * A * k * c + A * b * k * a, A * A * k * t



# ---------------------------------------------------------------------------- residual


@dataclass(frozen=True)
class Residual(Op):
    """``y = sqrt(1 - R^2) x + R branch(x)`` for a layer whose input and output widths match.

    Mean field, ``s = sqrt(1 - R^2)`` and ``(m_b, q_b, qab_b)`` the branch
    output's moments: ``h`` of the branch is independent of any single unit
    of ``x`` (it sums ``N`` of them with fresh zero-mean weights), so
    ``E[x phi(h)] = E[x] E[phi(h)]`` and

    - mean ``s m + R m_b``;
    - second moment ``s^2 q + R^2 q_b + 2 s R m m_b`` (the cross term is not zero
      when the activation has a non-zero mean: then ``m`` grows too);
    - cross moment ``s^2 qab + R^2 qab_b + 2 s R m m_b``;
    - gradient factor ``s^2 + R^2 prod(branch factors)`` (the cross term of the
      two paths averages to zero over the fresh weights).

    That gradient factor is mean-field's (backward weights independent of the
    forward ones). With a growing stream mean it misses the component of the
    gradient along the signal itself, which the later layers amplify; see
    :func:`signal_gradients` (``grad_norm_signal`` in the theory's table).

    A composite (neural-tangents' ``serial(FanOut(2), parallel(Identity,
    serial(branch)), FanInSum)`` with weights ``s, R``): its trace :class:`Step`
    holds the branch's trace, and its walks (``fold``, ``grad_back``,
    ``signal_back``, ``backward``) run the module's loops over the branch.
    """

    layer: int
    R: float
    branch: tuple

    what = "a residual block"

    @property
    def skip(self) -> float:
        return math.sqrt(max(0.0, 1.0 - self.R * self.R))

    def children(self):
        return self.branch

    # theory
    def fold(self, st, expect, rows):
        bst, trace = fold_moments(self.branch, st, expect, rows)
        s, R = self.skip, self.R
        log_factor = float(np.logaddexp(2 * _log(s), 2 * _log(R) + sum(t.log_factor for t in trace)))
        step = Step(self, st, log_factor, tuple(trace), bst)
        if bst.diverged or st.diverged:
            return replace(bst, diverged=True), step
        cross = 2 * s * R * st.mean * bst.mean
        out = Moments(s * st.mean + R * bst.mean, s * s * st.q + R * R * bst.q + cross,
                      s * s * st.qab + R * R * bst.qab + cross)
        if not math.isfinite(out.q) or out.q > OVERFLOW_Q:
            out = replace(out, diverged=True)
        return out, step

    def moments(self, st, expect, rows):
        out, step = self.fold(st, expect, rows)
        return out, step.log_factor

    def grad_back(self, step, lg, out):
        lb = moment_gradients(step.branch, lg + 2 * _log(self.R), out)
        return float(np.logaddexp(lg + 2 * _log(self.skip), lb))

    def tangent(self, tan, step, texpect):
        return self.combine(tan, fold_tangent(step.branch, tan, texpect), step.st, step.branch_out)

    def combine(self, tan, tan_b, st, bst):
        """Tangent of ``s x + R branch(x)`` from the stream's and the branch's (``E[x delta_b] = E[x] E[delta_b]``)."""
        (a, c, t), (ab, cb, tb) = tan, tan_b
        s, R = self.skip, self.R
        return (s * a + R * ab, s * s * c + s * R * (st.mean * ab + bst.mean * a) + R * R * cb,
                s * s * t + R * R * tb + 2 * s * R * a * ab)

    def signal_back(self, step, v, texpect, out):
        # a start inside the branch: the stream's tangent is zero
        vb = _pull_back(v, lambda tb: self.combine((0.0, 0.0, 0.0), tb, step.st, step.branch_out))
        signal_gradients(step.branch, texpect, out, vb)
        return self.pull_back(v, step, texpect)

    # simulation
    def forward(self, x, run):
        y, tape = forward_ops(self.branch, x, run)
        if run.stopped:
            return y, {"tape": tape}
        y.mul_(self.R).add_(x, alpha=self.skip)  # in the branch's buffer: no copy of the stream
        return y, {"tape": tape}

    def backward(self, g, cache, record=None, out=None):
        # the branch allocates its own gradients: ``out``'s buffers may hold g, which is read after it
        gb = vjp_ops(cache["tape"], g * self.R, record)
        return gb.add_(g, alpha=self.skip) if gb.shape == g.shape else gb + self.skip * g

    def vjp(self, g, cache):
        return self.backward(g, cache)

    # training
    def torch_forward(self, mod, x, rec):
        y = x
        for m in mod.branch:
            y = m(y, rec)
        return self.skip * x + self.R * y


# ---------------------------------------------------------------------------- compile


def compile_spec(spec, *, readout: bool = False) -> list[Op]:
    """The ordered layer operations of ``spec`` (module docstring); ``readout=True`` appends the readout's."""
    sw2s, sb2s = spec.sigma_w2(), spec.sigma_b2()
    residual, layernorm = float(spec.residual), bool(spec.layernorm)
    ops: list[Op] = []
    for l in range(1, spec.depth + 1):
        n_in, n_out = spec.widths[l - 1], spec.widths[l]
        res = residual > 0 and n_in == n_out
        layer: list[Op] = []
        if l >= 2:
            layer += _norm(spec, l, n_in, layernorm, inplace=not res)
        layer.append(Dense(l, n_in, n_out, spec.init, spec.bias_var, sw2s[l - 1], sb2s[l - 1]))
        layer.append(Activation(l, spec.activation))
        if spec.alpha_dropout:
            layer.append(AlphaDropout(l, float(spec.alpha_dropout)))
        elif spec.dropout:
            layer.append(Dropout(l, float(spec.dropout)))
        ops += [Residual(l, residual, tuple(layer))] if res else layer
    if readout and spec.out_features:
        last, r = spec.widths[-1], spec.depth + 1
        init = get_init(spec.init)
        ops += _norm(spec, r, last, layernorm, inplace=True)
        ops.append(Dense(r, last, spec.out_features, spec.init, spec.bias_var, init.sigma_w2(last, spec.out_features),
                         spec.bias_var if spec.bias_var is not None else init.bias_var(last), tap=None))
    return ops


def _norm(spec, layer, n, layernorm, inplace):
    if layernorm:
        return [LayerNorm(layer, n, float(spec.bn_eps), inplace=inplace)]
    if spec.batchnorm:
        return [BatchNorm(layer, n, float(spec.bn_eps), float(spec.bn_momentum), inplace=inplace)]
    return []


def walk(ops: Sequence[Op]):
    """Every op, depth first (a residual block, then its branch)."""
    for op in ops:
        yield op
        yield from walk(op.children())


def theory_gap(ops: Sequence[Op], theory: str) -> str | None:
    """Why ``theory`` does not cover the network of ``ops`` (a sentence), or None where it does.

    The one place that decides what a theory covers: every op says what of it
    a theory leaves out (:meth:`Op.theory_gap`), and the phrases are joined.
    """
    gaps: list[str] = []
    for op in walk(ops):
        gap = op.theory_gap(theory)
        if gap and gap not in gaps:
            gaps.append(gap)
    if not gaps:
        return None
    return f"{THEORY_NAMES[theory]} does not cover {', '.join(gaps)}"


def batch_coupled(ops: Sequence[Op]) -> bool:
    """Whether a sample's output depends on the other samples of its batch (an op such as BatchNorm)."""
    return any(op.batch_coupled for op in walk(ops))


# ---------------------------------------------------------------------------- theory loops


def fold_moments(ops: Sequence[Op], st: Moments, expect: Callable, rows: dict) -> tuple[Moments, list]:
    """Push the moment state through ``ops``; taps fill ``rows[layer]``. Returns the state and the trace of :class:`Step`.

    ``expect(act, q, c) -> (E[phi], E[phi^2], E[phi'^2], E[phi(u_a) phi(u_b)])``
    for ``h ~ N(0, q)`` with pair correlation ``c`` (the theory's quadrature).
    """
    trace = []
    for op in ops:
        st, step = op.fold(st, expect, rows)
        trace.append(step)
    return st, trace


def moment_gradients(trace: list, log_g_out: float, out: dict) -> float:
    """Walk a :func:`fold_moments` trace backwards from ``log E||dy/dx_out||^2``; ``out[layer]`` = log squared gradient norm at ``h^layer``."""
    lg = log_g_out
    for step in reversed(trace):
        lg = step.op.grad_back(step, lg, out)
    return lg


def fold_tangent(trace: list, tan, texpect) -> tuple:
    """Push a tangent ``(E[delta], E[x delta], E[delta^2])`` through the ops of a :func:`fold_moments` trace."""
    for step in trace:
        tan = step.op.tangent(tan, step, texpect)
    return tan


def _pull_back(v, fn):
    """``v @ M`` for the matrix ``M`` of a tangent map on ``z = (a^2, a c, c^2, t)`` (``v`` a functional on ``z``).

    Every op's tangent map is linear in ``(a, c)`` and its ``t`` is linear in
    ``t`` plus a quadratic form of ``(a, c)``, so ``z`` evolves linearly; four
    evaluations of the map give ``M`` (plain floats: this runs once per op).
    """
    a1, c1, t1 = fn((1.0, 0.0, 0.0))
    a2, c2, t2 = fn((0.0, 1.0, 0.0))
    t3 = fn((1.0, 1.0, 0.0))[2]
    tt = fn((0.0, 0.0, 1.0))[2]
    v0, v1, v2, v3 = v
    return (v0 * a1 * a1 + v1 * a1 * c1 + v2 * c1 * c1 + v3 * t1,
            2 * v0 * a1 * a2 + v1 * (a1 * c2 + a2 * c1) + 2 * v2 * c1 * c2 + v3 * (t3 - t1 - t2),
            v0 * a2 * a2 + v1 * a2 * c2 + v2 * c2 * c2 + v3 * t2,
            v3 * tt)


def signal_gradients(trace: list, texpect, out: dict, v=None) -> None:
    """The signal-direction part of each layer's squared gradient norm: ``out[layer] = E[(dy/dh . h)^2]``.

    Mean-field theory's gradient assumes the backward weights independent of
    the forward ones, which drops the directions the forward pass singles out.
    Along the pre-activation ``h^l`` itself, ``dy/dh . h`` is the response of
    the readout ``y = r . x^depth / sqrt(n)`` to scaling ``h^l``: push the
    tangent ``delta = h^l`` forward through the remaining ops (each op's
    ``tangent``) and ``E[dy^2] = E[delta_depth^2]``. Its share of the squared
    norm is ``out[layer] / (n_l q_l)``, of order ``1/n`` unless the remaining
    layers amplify it (a residual stream whose mean grows). Walked backwards
    with 4x4 matrices on ``z = (a^2, a c, c^2, t)`` (each op's ``signal_back``), in O(depth).
    """
    v = np.array([0.0, 0.0, 0.0, 1.0]) if v is None else v  # functional: E[delta^2] at the trace's end
    for step in reversed(trace):
        if step.st.diverged:
            return
        v = step.op.signal_back(step, v, texpect, out)


# ---------------------------------------------------------------------------- simulation loops


def forward_ops(ops: Sequence[Op], x, run):
    """Run ``ops`` batched over networks; ``run`` measures taps (``run.tap``) and may stop on divergence.

    Returns ``(y, tape)``, the tape a list of ``(op, cache)`` for :func:`vjp_ops`.
    """
    tape = []
    for i, op in enumerate(ops):
        x, cache = op.forward(x, run)
        run.settle()  # statistics deferred to this op and not taken by it (none, when the ops keep their word)
        tape.append((op, cache))
        if op.tap:
            run.next_op = ops[i + 1] if i + 1 < len(ops) else None  # a tap may defer its measurement to it
            try:
                run.tap(op, x)
            finally:
                run.next_op = None
        if run.stopped:
            break
    run.settle()
    return x, tape


def vjp_ops(tape, g, record=None, stop_at_first: bool = False, buffers=None):
    """Backpropagate ``g`` through a tape; ``record(op, g)`` is called with the gradient at each "pre" tap.

    ``stop_at_first``: stop after recording the first layer's gradient (its
    input gradient is not needed; saves the widest matmul). ``buffers(shape)``:
    where ops may write their gradients (:meth:`propagate.batched.Run.grad_buffer`,
    two alternating buffers: an op never writes the one it reads, and
    ``record`` must not keep ``g``); the result may then be one of them.
    """
    for op, cache in reversed(tape):
        if stop_at_first and record is not None and op.tap == "pre" and op.layer == 1:
            record(op, g)
            return None
        g = op.backward(g, cache, record, buffers)
    return g


# ---------------------------------------------------------------------------- training model


def _module_class():
    import torch.nn as nn

    class OpModule(nn.Module):
        """The torch module of one layer op; its parameters are stacked over seeds (leading dim ``S``)."""

        def __init__(self, op: Op, params: dict, buffers: dict, branch=()):
            super().__init__()
            self.op = op
            for k, v in params.items():
                setattr(self, k, nn.Parameter(v))
            for k, v in buffers.items():
                self.register_buffer(k, v)
            self.branch = nn.ModuleList(branch)

        def forward(self, x, rec=None):
            return self.op.torch_forward(self, x, rec)

        def extra_repr(self):
            return type(self.op).__name__ + f"(layer={self.op.layer})"

    class Network(nn.Module):
        """A spec's network for ``S`` seeds at once (see :func:`build_network`)."""

        def __init__(self, spec, seeds, modules):
            super().__init__()
            self.spec = spec
            self.seeds = list(seeds)
            self.layers = nn.ModuleList(modules)

        @property
        def n_seeds(self) -> int:
            return len(self.seeds)

        def forward(self, x, record: bool = False):
            S = len(self.seeds)
            if not (x.dim() == 3 and x.shape[0] == S and x.shape[2] == self.spec.input_dim):
                x = x.flatten(1).unsqueeze(0).expand(S, -1, -1)  # one batch for every seed, no copy
            rec = {"pre": [], "post": []} if record else None
            for m in self.layers:
                x = m(x, rec)
            return (x, rec) if record else x

    return OpModule, Network


def _weighted_ops(weighted: list, member) -> list:
    """``member``'s weighted ops (its initializer's draws), checked to have the shapes of ``weighted``."""
    own = [op for op in walk(compile_spec(member, readout=True)) if op.has_weights]
    if [(o.n_in, o.n_out) for o in own] != [(o.n_in, o.n_out) for o in weighted]:
        raise ValueError(f"{member.label()} has other layers than the model it is a member of")
    return own


def build_network(spec, seeds: Sequence[int], *, specs: Sequence | None = None, dtype=None, device=None):
    """The torch training model of ``spec`` for the seeds ``seeds`` (see :func:`propagate.spec.build_model`).

    Weights: seed ``k``'s from ``torch.Generator().manual_seed(k)``. ``specs``
    (one per seed, default ``spec`` for each): member ``i`` draws its weights
    with ``specs[i]``'s initializer, so member ``i`` is the single network
    ``(specs[i], seeds[i])``; every ``specs[i]`` must have ``spec``'s
    architecture (:func:`propagate.spec.same_architecture`), because the
    members share the model's layers. Dropout
    and alpha dropout masks: seed ``k``'s from its own generator
    ``net.dropout_generators[i]`` (on ``device``), started at
    :func:`dropout_seed` ``(k, 0)`` and restarted per epoch by
    :func:`seed_dropout`; the global torch random state is not used (only a
    dropout module without generators, e.g. built by hand, falls back to
    torch's global stream). CPU and CUDA generators are different algorithms,
    so the masks differ between devices. Moving the model to another device
    afterwards keeps the generators where they are: masks are drawn there and
    copied. ``net.specs`` lists the members' specs.
    """
    import torch

    dtype = dtype or torch.float32
    OpModule, Network = _module_class()
    specs = [spec] * len(seeds) if specs is None else list(specs)
    if len(specs) != len(seeds):
        raise ValueError(f"{len(specs)} specs for {len(seeds)} seeds: give one spec per seed")
    ops = compile_spec(spec, readout=True)
    weighted = [op for op in walk(ops) if op.has_weights]
    # each member draws with its own spec's weighted ops (its initializer), in the shared layers' order
    samplers = {id(s): weighted if s is spec else _weighted_ops(weighted, s) for s in specs}
    draws: dict[Op, list] = {op: [] for op in weighted}
    for k, member in zip(seeds, specs):
        gen = torch.Generator(device="cpu")
        gen.manual_seed(int(k))
        for op, own in zip(weighted, samplers[id(member)]):  # hidden layers in order, weight then bias, readout last
            draws[op].append(own.draw(gen, dtype))

    def make(op):
        params, buffers = op.torch_state(len(seeds), draws.get(op), dtype)
        return OpModule(op, params, buffers, [make(c) for c in op.children()])

    net = Network(spec, seeds, [make(op) for op in ops])
    net.specs = specs
    # Dropout randomness: one generator per seed (on ``device``), seeded by dropout_seed(k, 0), so the masks of
    # seed k do not depend on the other seeds; shared by the network's dropout layers (one stream per seed, as
    # a single run's global stream). train() restarts them every epoch (seed_dropout).
    net.dropout_generators = [torch.Generator(device=device if device is not None else "cpu") for _ in seeds]
    seed_dropout(net, 0)
    for m in net.modules():
        if isinstance(m, OpModule) and m.op.stochastic:
            m.dropout_generators = net.dropout_generators
    return net.to(device) if device is not None else net
