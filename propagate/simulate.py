"""Monte Carlo per-layer statistics of deep random networks, with theory alongside.

:func:`simulate` samples ``seeds`` independent networks of a
:class:`~propagate.spec.NetworkSpec`, pushes ``samples`` inputs through all of
them at once (batched matmuls over a ``(seeds, samples, width)`` tensor) and
measures, per layer and per network, what mean-field theory predicts. The
result's ``table`` follows :mod:`propagate.stats` (``source="simulation"``):
every statistic is first computed per network (pooled over units and samples),
then averaged over networks, with ``*_se`` the standard error across networks.

What is measured at hidden layer ``l`` (``h^l = W^l x^{l-1} + b^l``,
``x^l = phi(h^l)``; row ``layer = 0`` is the input, in the ``post_*`` columns):

- ``pre_mean``, ``pre_var``, ``pre_q`` and ``post_*``: mean, pooled variance
  (a variance, not a standard deviation) and second moment over all units and
  samples. ``post_*`` describe ``phi(h^l)`` before dropout; dropout shows in the
  next layer's ``pre_*``.
- ``corr``: cosine similarity of the pre-activation vectors of the input pairs
  ``(2i, 2i+1)``, averaged over the first ``min(samples, 2048) // 2`` pairs.
- ``dead_frac``: share of units whose output is exactly 0 for every sample.
- ``saturated_frac``: share of outputs at a range limit of the activation,
  estimated on the first ``min(samples, 1024)`` samples: within 1% of the
  range of a two-sided bounded activation (tanh, sigmoid, erf), within 1% of a
  nonzero one-sided bound (SELU/ELU's ``-lambda alpha``), exactly at a zero
  bound (ReLU's 0); for unbounded activations, numerically zero
  (``|x| <= 1e-6 * rms(x)``).
- ``grad_norm``: per :mod:`propagate.stats`, for the random readout
  ``y = r . x^depth / sqrt(n_depth)`` backpropagated by hand on the first
  ``min(samples, grad_samples)`` samples. BatchNormalization is
  backpropagated with its batch statistics held fixed (the per-sample
  Jacobian, which differs from the full train-mode one by ``O(1/samples)``).
- ``var_log_norm``, ``var_log_grad`` (with ``*_se``): the variance across
  networks of ``ln ||h^l||^2`` and ``ln ||grad_h^l||^2`` per sample (the first
  ``min(samples, grad_samples)``), the part linear in the input's
  ``ln ||x^0||^2`` regressed out, averaged over samples
  (:func:`propagate.finite_width.measured_spread`), with ``seeds >= 3``;
  ``theory_var_log_*`` from :func:`propagate.finite_width.predict_spread`,
  empty (NaN) where it does not cover the spec, the reason in
  ``result.theory_notes``.
- ``jacobian=True``: singular values of the input-output Jacobian
  ``d x^depth / d x^0`` of network 0 at a few inputs (``result.jacobian``).

The networks are the spec's layer operations (:mod:`propagate.layers`: each
op's batched forward pass and hand-written vector-Jacobian product), run by
:func:`propagate.layers.forward_ops` on a :class:`propagate.batched.Run`
(network ``s`` draws from its own stream :func:`seed_stream`) and measured at
every layer by :func:`propagate.stats.measure` (a tap on the run, beside the
:class:`propagate.batched.LogNorms` tap of the spread). LayerNorm normalizes each sample over its
units; a residual block adds ``sqrt(1 - R^2) x`` to ``R`` times its branch.
BatchNormalization (the lecture demo's placement, see :mod:`propagate.spec`) uses train-mode
batch statistics over the ``samples`` inputs of each network (biased variance,
``eps = spec.bn_eps``, gamma 1, beta 0). Dropout is inverted dropout; alpha
dropout follows ``torch.nn.functional.alpha_dropout``. The linear readout
``spec.out_features`` (if any) is not simulated.

Numerics: an inf/NaN (or a second moment that overflows the working dtype) is a
result: ``diverged_at`` is the first such layer, the table stops there (its row
has ``diverged=True``) and gradients are not computed. Subnormal floats make
CPU arithmetic very slow; by default they are flushed to zero during the run
(``torch.set_flush_denormal``) and the previous setting is restored after.
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from propagate.batched import LogNorms, PerNetworkDraws, Run, jacobians, log_sq_norms
from propagate.activations import torch_forms
from propagate.errors import UserError
from propagate.finite_width import spread_columns
from propagate.layers import forward_ops, vjp_ops
from propagate.spec import NetworkSpec
from propagate.spectrum import summarize_singular_values
from propagate.stats import (CORR_SAMPLES, SAT_SAMPLES, aggregate, compare_with_theory, finite_width_allowance,
                             layer_table, measure)
from propagate.torch_settings import torch_settings

__all__ = ["simulate", "SimulationResult", "DivergenceWarning", "compare_with_theory", "finite_width_allowance", "DATASET_INPUTS", "seed_stream"]

#: ``input=`` names that load a real dataset (pixels scaled to [0, 1]).
DATASET_INPUTS = ("mnist-5k", "mnist", "fashion-mnist")

class DivergenceWarning(UserWarning):
    """The signal overflowed (inf/NaN) at some layer; the table stops there."""


@dataclass
class SimulationResult:
    """What :func:`simulate` returns.

    Attributes:
        spec: the simulated spec.
        table: per-layer DataFrame (:mod:`propagate.stats` format, mean over
            networks with ``*_se``), with theory columns when available
            (:func:`compare_with_theory`).
        per_seed: long DataFrame, one row per (network, layer); column ``seed``
            is the network index 0..seeds-1.
        diverged_at: first layer with inf/NaN in any network, or ``None``.
        flushed: subnormal handling: ``requested``, ``active`` (flush was on
            during the run), ``subnormal_layers`` (layers where some network's
            pre-activation RMS fell below 1e6 x the dtype's smallest normal, so
            at least ~1e-6 of its values were subnormal) and ``mattered``.
        meta: run parameters, input statistics, timing.
        theory: the theory's table for the same spec, or ``None``.
        jacobian: ``None`` or a dict of singular-value statistics.
        theory_notes: why theory columns are empty, by column group
            (``{"theory_var_log_norm, theory_var_log_grad": reason}`` where the
            finite-width theory does not cover the spec).
    """

    spec: NetworkSpec
    table: Any
    per_seed: Any
    diverged_at: int | None
    flushed: dict
    meta: dict
    theory: Any = None
    jacobian: dict | None = None
    warnings: list = field(default_factory=list)
    theory_notes: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------
# random streams


def seed_stream(seed: int, index: int) -> int:
    """The torch seed of network ``index`` for run seed ``seed``.

    One independent stream per network, so ``seeds=4`` and ``seeds=8`` share
    their first four networks (same inputs, weights, dropout masks).
    """
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFFFFFF, int(index)]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


def _generators(seed: int, count: int):
    import torch

    return [torch.Generator(device="cpu").manual_seed(seed_stream(seed, s)) for s in range(count)]


# ----------------------------------------------------------------------------
# inputs


def _dataset_array(name: str, progress: bool = False) -> np.ndarray:
    from propagate.data import load_dataset

    ds = load_dataset(name, progress=progress)
    x, _ = ds.arrays("train")
    return np.asarray(x, dtype=np.float32)


def _input_stats(x: np.ndarray, seed: int) -> dict:
    """Per-feature-averaged second moment, mean and pair correlation of a data matrix (float64)."""
    x = np.asarray(x, dtype=np.float64)
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(x))[: 2 * min(len(x) // 2, 5000)]
    a, b = x[idx[0::2]], x[idx[1::2]]
    num = np.sum(a * b, axis=1)
    den = np.sqrt(np.sum(a * a, axis=1) * np.sum(b * b, axis=1))
    ok = den > 0
    corr = float(np.mean(num[ok] / den[ok])) if ok.any() else float("nan")
    return {"input_q": float(np.mean(x * x)), "input_mean": float(np.mean(x)), "input_corr": corr}


def _make_inputs(spec, input, samples, gens, dtype, device, seed, progress):
    """``(x0 of shape (S, N, d), description, stats for the theory)``."""
    import torch

    S = len(gens)
    d = spec.input_dim
    if isinstance(input, str) and input.strip().lower() == "gaussian":
        if samples is None:
            samples = 2000
        x = torch.empty((S, samples, d), dtype=dtype)
        for s, g in enumerate(gens):
            x[s].normal_(spec.input_mean, math.sqrt(spec.input_var), generator=g)
        m, v = spec.input_mean, spec.input_var
        q = m * m + v
        stats = {"input_q": q, "input_mean": m, "input_corr": (m * m / q) if q > 0 else 0.0}
        return x.to(device), "gaussian", stats
    if isinstance(input, str):
        name = input.strip().lower()
        if name not in DATASET_INPUTS:
            raise UserError(f"unknown input {input!r}; use gaussian, {', '.join(DATASET_INPUTS)} or an array")
        data = _dataset_array(name, progress)
        desc = name
    else:
        try:
            data = input.detach().cpu().numpy() if hasattr(input, "detach") else np.asarray(input)
        except Exception as exc:  # noqa: BLE001 - anything unconvertible is the user's input
            raise UserError(f"input must be 'gaussian', a dataset name or an (N, {d}) array: {exc}") from None
        data = data.reshape(len(data), -1) if data.ndim > 2 else data
        desc = f"array{tuple(data.shape)}"
    if data.ndim != 2 or data.shape[1] != d:
        raise UserError(f"input data has shape {tuple(data.shape)}, the network expects (N, {d})")
    if len(data) < 2:
        raise UserError("input data needs at least 2 rows")
    if not np.all(np.isfinite(data)):
        raise UserError("input data contains inf or NaN")
    n = len(data) if samples is None else min(samples, len(data))
    src = torch.from_numpy(np.ascontiguousarray(data)).to(dtype)
    # each network sees its own random subset in its own order (pairs 2i, 2i+1 are random pairs)
    x = torch.stack([src[torch.randperm(len(data), generator=g)[:n]] for g in gens])
    return x.to(device), desc, _input_stats(data, seed)


# ----------------------------------------------------------------------------
# the simulation


def simulate(
    spec: NetworkSpec,
    *,
    samples: int | None = 2000,
    seeds: int = 4,
    seed: int = 0,
    dtype: str = "float32",
    device: str = "cpu",
    flush_denormal: bool = True,
    jacobian: bool = False,
    jacobian_inputs: int = 4,
    grad_samples: int = 256,
    input: Any = "gaussian",
    theory: bool = True,
    threads: int | None = None,
    progress: bool = False,
) -> SimulationResult:
    """Sample ``seeds`` networks of ``spec`` and measure per-layer statistics.

    Args:
        spec: the network (hidden layers only; a readout is ignored).
        samples: inputs per network (``None`` with data: all rows).
        seeds: independent networks, run batched.
        seed: run seed; network ``s`` uses the stream :func:`seed_stream` ``(seed, s)``.
        dtype: ``"float32"`` or ``"float64"`` working precision.
        device: ``"cpu"`` or ``"cuda"`` (random numbers are drawn on the CPU,
            so a seed gives the same networks on both).
        flush_denormal: flush subnormal floats to zero during the run (CPU).
        jacobian: also measure the input-output Jacobian's singular values of
            network 0 at ``jacobian_inputs`` inputs.
        grad_samples: samples the gradient is backpropagated for.
        input: ``"gaussian"`` (N(spec.input_mean, spec.input_var) per feature),
            a dataset name from :data:`DATASET_INPUTS` ([0, 1] pixels), or an
            ``(N, input_dim)`` numpy array / torch tensor.
        theory: put :func:`propagate.theory.predict_layers` alongside
            (``compare_with_theory``) when it is available.
        threads: torch intra-op threads during the run (restored after);
            ``None`` keeps torch's setting. On a busy machine small runs are
            much faster with 1 (each parallel op waits for a descheduled thread).
        progress: a tqdm bar over layers on stderr.

    Returns:
        a :class:`SimulationResult`.
    """
    import torch

    dt, dev = _check_arguments(spec, samples, seeds, grad_samples, jacobian_inputs, dtype, device, threads)
    t0 = time.perf_counter()
    with torch_settings(threads=threads, flush_denormal=bool(flush_denormal)) as settings:
        with torch.no_grad():
            gens = _generators(int(seed), int(seeds))  # one stream per network: inputs, then weights, masks
            x0, desc, in_stats = _prepare_inputs(spec, input, samples, gens, int(seed), dt, dev, int(grad_samples),
                                                 progress)
            sampled = _run_networks(spec, x0, gens, dt, dev, int(grad_samples), progress,
                                    int(jacobian_inputs) if jacobian else 0)
    elapsed = time.perf_counter() - t0
    extras = {"samples": int(sampled.N), "input": desc, "input_stats": in_stats, "grad_samples": int(sampled.G),
              "seeds": seeds, "seed": seed, "dtype": dt, "device": dev, "seconds": elapsed,
              "threads": int(threads) if threads is not None else settings["threads_before"],
              "flush": (flush_denormal, settings["flush_active"])}
    return _result(spec, sampled, extras, theory)


def _result(spec, sampled, extras, theory) -> SimulationResult:
    """The :class:`SimulationResult` of a finished run: tables, divergence, metadata, theory alongside."""
    per_seed = _per_seed_table(spec, sampled)
    table = aggregate(per_seed, config=spec.label(), spec=spec)
    diverged_at = sampled.diverged_at
    flushed = _flush_summary(per_seed, extras["dtype"], *extras["flush"], extras["device"])
    warn = []
    if diverged_at is not None:
        msg = f"signal diverged (inf/NaN) at layer {diverged_at}; table stops there"
        warn.append(msg)
        warnings.warn(msg, DivergenceWarning, stacklevel=3)
    meta = _meta(spec, extras, diverged_at, flushed)
    theory_df = _theory_table(spec, extras["input_stats"]) if theory else None
    if theory_df is not None:
        table = compare_with_theory(table, theory_df, spec)
    meta["theory"] = theory_df is not None
    notes = {}
    if sampled.norms.norms and sampled.S >= 3:  # a variance across networks and its standard error need 3 networks
        # spread across networks of ln||z^l||^2 and ln||g^l||^2 (input-norm effect regressed out), theory alongside
        table, note = spread_columns(table, sampled.norms.norms, sampled.norms.grads, sampled.log_inputs,
                                     spec=spec if theory else None, input_q=extras["input_stats"]["input_q"])
        if note:
            notes["theory_var_log_norm, theory_var_log_grad"] = note
    if sampled.jacobian is not None:
        meta["jacobian"] = sampled.jacobian
    return SimulationResult(spec=spec, table=table, per_seed=per_seed, diverged_at=diverged_at, flushed=flushed,
                            meta=meta, theory=theory_df, jacobian=sampled.jacobian, warnings=warn, theory_notes=notes)


def _check_arguments(spec, samples, seeds, grad_samples, jacobian_inputs, dtype, device, threads):
    """Validate :func:`simulate`'s arguments (UserError before any work); returns ``(torch dtype, device)``."""
    import torch

    if not isinstance(spec, NetworkSpec):
        raise UserError(f"spec must be a NetworkSpec, got {type(spec).__name__}")
    for name, val, lo in (("seeds", seeds, 1), ("grad_samples", grad_samples, 1), ("jacobian_inputs", jacobian_inputs, 1)):
        if not isinstance(val, (int, np.integer)) or isinstance(val, bool) or val < lo:
            raise UserError(f"{name} must be a whole number >= {lo}, got {val!r}")
    if samples is not None and (not isinstance(samples, (int, np.integer)) or isinstance(samples, bool) or samples < 2):
        raise UserError(f"samples must be a whole number >= 2, got {samples!r}")
    dt = {"float32": torch.float32, "float64": torch.float64}.get(str(dtype).replace("torch.", ""))
    if dt is None:
        raise UserError(f"dtype must be float32 or float64, got {dtype!r}")
    dev = str(device)
    if dev.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError("device cuda requested but CUDA is not available (use --device cpu)")
    elif dev != "cpu":
        raise UserError(f"device must be cpu or cuda, got {device!r}")
    torch_forms(spec.act)  # UserError for an activation without a torch form
    if threads is not None and (not isinstance(threads, (int, np.integer)) or threads < 1):
        raise UserError(f"threads must be a whole number >= 1, got {threads!r}")
    return dt, dev


def _prepare_inputs(spec, input, samples, gens, seed, dt, dev, grad_samples, progress):
    _check_memory(spec, samples if samples is not None else 0, len(gens), dt, dev, grad_samples)
    x0, desc, in_stats = _make_inputs(spec, input, samples, gens, dt, dev, seed, progress)
    if x0.shape[1] < 2:
        raise UserError("need at least 2 samples")
    return x0, desc, in_stats


def _flush_summary(per_seed, dt, requested, active, dev) -> dict:
    import torch

    tiny = float(torch.finfo(dt).tiny)
    thr = (1e6 * tiny) ** 2
    pq = per_seed.dropna(subset=["pre_q"])
    sub_layers = sorted(int(l) for l in pq.loc[pq["pre_q"] < thr, "layer"].unique())
    return {
        "requested": bool(requested),
        "active": bool(active) if dev == "cpu" else False,
        "subnormal_layers": sub_layers,
        "mattered": bool(sub_layers) and bool(active) and dev == "cpu",
    }


def _meta(spec, extras, diverged_at, flushed) -> dict:
    seeds, seed = int(extras["seeds"]), int(extras["seed"])
    return {
        "spec": spec.to_dict(),
        "config": spec.label(),
        "samples": extras["samples"],
        "seeds": seeds,
        "seed": seed,
        "network_seeds": [seed_stream(seed, s) for s in range(seeds)],
        "dtype": str(extras["dtype"]).replace("torch.", ""),
        "device": extras["device"],
        "input": extras["input"],
        "input_stats": extras["input_stats"],
        "grad_samples": extras["grad_samples"],
        "corr_pairs": min(extras["samples"], CORR_SAMPLES) // 2,
        "saturation_samples": min(extras["samples"], SAT_SAMPLES),
        "readout_simulated": False,
        "diverged_at": diverged_at,
        "flush_denormal": flushed,
        "seconds": round(extras["seconds"], 4),
        "threads": extras["threads"],
    }


# ----------------------------------------------------------------------------
# the run: the spec's layer ops, batched over networks


class _Measure:
    """Tap: :func:`propagate.stats.measure` of every network at every layer; stops the run at the first inf/NaN."""

    def __init__(self, act, depth, progress):
        from tqdm import tqdm

        self.act = act
        self.rows: list[dict] = []
        self.grads: dict = {}
        self.diverged_at = None
        self._ok_pre = True
        self.bar = tqdm(total=depth, desc="layers", file=sys.stderr, disable=not progress, leave=False)

    def forward(self, op, x, run):
        """A "pre" (Dense output) or "post" (activation output) tap.

        The pre-activation is measured by the activation when it can do so in
        its own pass over memory (:meth:`Run.defer_measure`); it then hands
        the "post" tap its output's statistics too.
        """
        if op.tap == "pre":
            row: dict = {}
            self.rows.append(row)
            if not run.defer_measure(x, lambda st: self._pre(row, st)):
                self._pre(row, measure(pre=x))
            return
        known = run.known_stats(x)
        stats, ok_post = known if known is not None else measure(post=x, act=self.act)
        self.rows[-1].update(stats)
        self.bar.update(1)
        if not (self._ok_pre and ok_post):
            self.diverged_at = op.layer
            run.stopped = True

    def _pre(self, row, measured):
        stats, self._ok_pre = measured
        row.update(stats)

    def gradient(self, op, g, run):
        self.grads[op.layer] = measure(grad=run.float64(g))[0]["grad_norm"]  # measure's float64 norm, no copy


@dataclass
class _Sampled:
    """What :func:`_run_networks` measured: per-layer statistics, log norms, the Jacobian summary."""

    S: int
    N: int
    G: int
    rows: list
    grads: dict
    diverged_at: int | None
    norms: LogNorms
    log_inputs: Any
    jacobian: dict | None


def _run_networks(spec, x0, gens, dt, dev, grad_samples, progress, jacobian_inputs=0) -> _Sampled:
    """Forward the spec's ops over all networks (measuring each layer), then backpropagate the readout's gradient."""
    import torch

    S, N = len(gens), x0.shape[1]
    stats, norms = _Measure(spec.act, spec.depth, progress), LogNorms()
    run = Run(S, N, min(N, grad_samples), max(spec.widths[1:]), dt, dev, PerNetworkDraws(gens), taps=(stats, norms),
              spare=x0)  # x0 is read below before the forward pass, and not after
    # readout vector of the gradient probe, drawn first so it doesn't depend on depth
    r = torch.stack([torch.randn(spec.widths[-1], dtype=dt, generator=g) for g in gens]).to(dev)
    stats.rows.append(measure(inputs=x0)[0])
    log_inputs = log_sq_norms(x0[:, : run.G])
    _, tape = forward_ops(spec.compile(), x0, run)
    stats.bar.close()
    jac = None
    if stats.diverged_at is None:
        # y = r . x^depth / sqrt(n_depth) for every sample: dy/dx^depth = r / sqrt(n_depth)
        g = (r / math.sqrt(spec.widths[-1])).unsqueeze(1).expand(S, run.G, -1)
        vjp_ops(tape, g, run.record, stop_at_first=True, buffers=run.grad_buffer)
        if jacobian_inputs:
            J = jacobians(tape, run, min(jacobian_inputs, run.G), spec.widths[-1], networks=[0])[0]
            jac = _jacobian_summary(J)
    return _Sampled(S, N, run.G, stats.rows, stats.grads, stats.diverged_at, norms, log_inputs, jac)


def _check_memory(spec, N, S, dt, dev, grad_samples):
    """Refuse (UserError) a run whose working set clearly exceeds the machine's memory."""
    import os

    import torch

    item = torch.finfo(dt).bits // 8
    maxw = max(spec.widths[1:])
    need = item * S * (N * (spec.widths[0] + 2 * maxw) + sum(a * b for a, b in spec.fans())
                       + min(N, grad_samples) * sum(spec.widths[1:]))
    try:
        if dev == "cpu":
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        else:
            total = torch.cuda.mem_get_info()[1]
    except (ValueError, OSError, AttributeError, RuntimeError):
        return
    if need > total:
        raise UserError(f"this run needs about {need / 2**30:.1f} GiB but the {dev} has {total / 2**30:.1f} GiB; "
                        f"use fewer --samples or --seeds")


def _jacobian_summary(J) -> dict:
    """Singular-value statistics of a batch of Jacobians ``(k, n_out, n_in)`` (float64 SVD)."""
    import torch

    s = torch.linalg.svdvals(J.double().cpu()).numpy()  # (k, min(n_out, n_in)), descending
    smax, smin = s[:, 0], s[:, -1]
    # moments of J J^T (what free probability predicts, propagate.spectrum) and the share of zeros (ReLU) to the
    # precision J was computed in
    spec_stats = summarize_singular_values(s**2, zero_tol=(s.shape[1] * torch.finfo(J.dtype).eps) ** 2)
    with np.errstate(divide="ignore"):
        spread = np.log10(smax) - np.log10(smin)
    return {
        "inputs": int(s.shape[0]),
        "shape": [int(J.shape[1]), int(J.shape[2])],
        "s_max": float(np.mean(smax)),
        "s_min": float(np.mean(smin)),
        "log10_spread": float(np.mean(spread)),
        "mean_s2": float(np.mean(s**2)),
        "median_s": float(np.median(s)),
        "moments": spec_stats["moments"],
        "zero_frac": spec_stats["zero_frac"],
        "s_min_nonzero": spec_stats["s_min_nonzero"],
    }


def _per_seed_table(spec, run):
    """One row per (network, layer): column ``seed`` is the network index 0..seeds-1."""
    S, diverged_at = run.S, run.diverged_at
    out = []
    for l, row in enumerate(run.rows):
        vals = {k: v.detach().double().cpu().numpy() for k, v in row.items()}
        gl = run.grads.get(l) if l > 0 else None
        gl = gl.detach().double().cpu().numpy() if gl is not None else None
        for s in range(S):
            rec = {"layer": l, "width": spec.widths[l], "seed": s}
            for k, v in vals.items():
                rec[k] = float(v[s])
            rec["grad_norm"] = float(gl[s]) if gl is not None else float("nan")
            rec["diverged"] = diverged_at is not None and l >= diverged_at
            out.append(rec)
    return layer_table(out, source="simulation", config=spec.label(), spec=spec)


# ----------------------------------------------------------------------------
# theory alongside


def _theory_table(spec, in_stats):
    """The theory's table for ``spec`` and these input statistics, or None if theory cannot integrate it."""
    from propagate.theory import predict_layers

    try:
        return predict_layers(spec, input_q=in_stats["input_q"], input_mean=in_stats["input_mean"],
                              input_corr=in_stats["input_corr"], config=spec.label())
    except UserError:
        return None  # e.g. an activation the theory cannot integrate: no theory columns
