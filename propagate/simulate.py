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
- ``jacobian=True``: singular values of the input-output Jacobian
  ``d x^depth / d x^0`` of network 0 at a few inputs (``result.jacobian``).

BatchNormalization (seed placement, see :mod:`propagate.spec`) uses train-mode
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

from propagate.errors import UserError
from propagate.spec import NetworkSpec

__all__ = ["simulate", "SimulationResult", "DivergenceWarning", "compare_with_theory", "finite_width_allowance", "DATASET_INPUTS", "seed_stream"]

#: ``input=`` names that load a real dataset (pixels scaled to [0, 1]).
DATASET_INPUTS = ("mnist-5k", "mnist", "fashion-mnist")

#: Statistics compared with theory, with the scale their finite-width allowance is relative to.
_COMPARED = ("pre_mean", "pre_var", "pre_q", "post_mean", "post_var", "post_q", "corr", "grad_norm")

#: torch's alpha-dropout saturation constant ``lambda * alpha`` of SELU (Dropout.cpp).
_ALPHA_DROPOUT_ALPHA = 1.7580993408473766

_CORR_SAMPLES = 2048
_SAT_SAMPLES = 1024


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
# subnormals


def _flush_is_on() -> bool:
    """Whether float32 subnormals are currently flushed to zero (probed, torch has no getter)."""
    import torch

    tiny = torch.tensor([1.1754944e-38], dtype=torch.float32)
    return bool((tiny * 0.5).item() == 0.0)


# ----------------------------------------------------------------------------
# activations: in-place forward and derivative


def _inplace_activation(act):
    """A function applying ``act`` to a tensor in place (saves an 80 MB allocation per layer)."""
    import torch
    import torch.nn.functional as F

    from propagate.activations import selu_constants

    fam, p = act.family, dict(act.params)
    if fam == "linear":
        return lambda h: h
    if fam == "relu":
        return torch.relu_
    if fam == "leaky_relu":
        return lambda h: F.leaky_relu_(h, p["slope"])
    if fam == "selu":
        if (p["lambda"], p["alpha"]) == selu_constants():
            return torch.selu_
        return lambda h: F.elu_(h, p["alpha"]).mul_(p["lambda"])
    if fam == "elu":
        return lambda h: F.elu_(h, p["alpha"])
    if fam in ("tanh", "sigmoid", "erf"):
        return lambda h: getattr(h, fam + "_")()
    if act.torch is None:
        raise UserError(f"activation {act.name!r} has no torch form; register one with torch=...")
    return lambda h: h.copy_(act.torch(h))


def _derivative(act, h):
    """``phi'(h)`` elementwise (autograd on the activation's torch form; ``h`` is small here)."""
    import torch

    with torch.enable_grad():
        hh = h.detach().clone().requires_grad_(True)
        y = act.torch(hh)
        (d,) = torch.autograd.grad(y.sum(), hh, allow_unused=True)
    return torch.zeros_like(h) if d is None else d.detach()


def _saturation_rule(act):
    """``(lower, upper, zero_rel)``: thresholds for saturated outputs (see module docstring)."""
    lo, hi = act.bounds
    low = high = None
    if math.isfinite(lo) and math.isfinite(hi):
        tol = 0.01 * (hi - lo)
        return lo + tol, hi - tol, None
    if math.isfinite(lo):
        low = lo + 0.01 * abs(lo) if lo != 0 else 0.0
    if math.isfinite(hi):
        high = hi - 0.01 * abs(hi) if hi != 0 else 0.0
    if low is None and high is None:
        return None, None, 1e-6
    return low, high, None


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


def _moments(t, cnt):
    """Per-network mean and second moment of ``t`` (S, N, n), and whether all its entries are finite.

    The fast float32 reductions are exact enough for a healthy signal but fail
    at both ends: the squares of a vanishing signal underflow (RMS below ~1e-19
    gives q = 0 while every entry is still a normal number) and the sums of an
    exploding one overflow while every entry is finite. In those two cases
    (q below 1e-30 or not finite) the moments are recomputed in float64, so q
    is right down to the smallest entries and divergence means an inf/NaN entry.
    """
    import torch

    mean = t.sum(dim=(1, 2)) / cnt
    q = torch.linalg.vector_norm(t, dim=(1, 2)) ** 2 / cnt
    total = float((q + mean.abs()).sum())  # one sync, no extra pass
    if math.isfinite(total) and float(q.min()) > 1e-30:
        return mean, q, True
    if not bool(torch.isfinite(t).all()):
        return mean, q, False
    return (t.sum(dim=(1, 2), dtype=torch.float64) / cnt,
            torch.linalg.vector_norm(t, dim=(1, 2), dtype=torch.float64) ** 2 / cnt, True)


def _layer0_rows(x):
    """Per-network statistics of the input (post_* columns)."""
    import torch

    S, N, d = x.shape
    cnt = N * d
    mean = x.sum(dim=(1, 2)) / cnt
    q = torch.linalg.vector_norm(x, dim=(1, 2)) ** 2 / cnt
    return {"post_mean": mean, "post_q": q, "post_var": q - mean * mean, "corr": _pair_corr(x)}


def _pair_corr(h):
    """Cosine similarity of pairs (2i, 2i+1) of the first samples, averaged over pairs: shape (S,)."""
    import torch

    k = min(h.shape[1], _CORR_SAMPLES) // 2
    if k == 0:
        return torch.full((h.shape[0],), float("nan"), dtype=h.dtype, device=h.device)
    v = h[:, : 2 * k].reshape(h.shape[0], k, 2, h.shape[2])
    num = torch.linalg.vecdot(v[:, :, 0], v[:, :, 1])
    norms = torch.linalg.vector_norm(v, dim=-1)
    den = norms[:, :, 0] * norms[:, :, 1]
    c = num / den
    c = torch.where(den > 0, c, torch.full_like(c, float("nan")))
    return torch.nanmean(c, dim=1)


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
    act = spec.act
    if act.torch is None:
        raise UserError(f"activation {act.name!r} has no torch form; register one with torch=...")

    if threads is not None and (not isinstance(threads, (int, np.integer)) or threads < 1):
        raise UserError(f"threads must be a whole number >= 1, got {threads!r}")
    threads_before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    flush_before = _flush_is_on()
    flush_active = False
    if flush_denormal:
        flush_active = bool(torch.set_flush_denormal(True))
    else:
        torch.set_flush_denormal(False)
    t0 = time.perf_counter()
    try:
        with torch.no_grad():
            out = _run(spec, act, samples, int(seeds), int(seed), dt, dev, jacobian, int(jacobian_inputs),
                       int(grad_samples), input, progress)
    finally:
        torch.set_flush_denormal(flush_before)
        torch.set_num_threads(threads_before)
    elapsed = time.perf_counter() - t0

    per_seed, table, diverged_at, extras = out
    tiny = float(torch.finfo(dt).tiny)
    thr = (1e6 * tiny) ** 2
    pq = per_seed.dropna(subset=["pre_q"])
    sub_layers = sorted(int(l) for l in pq.loc[pq["pre_q"] < thr, "layer"].unique())
    flushed = {
        "requested": bool(flush_denormal),
        "active": bool(flush_active) if dev == "cpu" else False,
        "subnormal_layers": sub_layers,
        "mattered": bool(sub_layers) and bool(flush_active) and dev == "cpu",
    }
    warn = []
    if diverged_at is not None:
        msg = f"signal diverged (inf/NaN) at layer {diverged_at}; table stops there"
        warn.append(msg)
        warnings.warn(msg, DivergenceWarning, stacklevel=2)
    meta = {
        "spec": spec.to_dict(),
        "config": spec.label(),
        "samples": extras["samples"],
        "seeds": int(seeds),
        "seed": int(seed),
        "network_seeds": [seed_stream(seed, s) for s in range(int(seeds))],
        "dtype": str(dt).replace("torch.", ""),
        "device": dev,
        "input": extras["input"],
        "input_stats": extras["input_stats"],
        "grad_samples": extras["grad_samples"],
        "corr_pairs": min(extras["samples"], _CORR_SAMPLES) // 2,
        "saturation_samples": min(extras["samples"], _SAT_SAMPLES),
        "readout_simulated": False,
        "diverged_at": diverged_at,
        "flush_denormal": flushed,
        "seconds": round(elapsed, 4),
        "threads": int(threads) if threads is not None else threads_before,
    }
    theory_df = None
    if theory:
        theory_df = _theory_table(spec, extras["input_stats"])
        if theory_df is not None:
            table = compare_with_theory(table, theory_df, spec)
    meta["theory"] = theory_df is not None
    if extras.get("jacobian") is not None:
        meta["jacobian"] = extras["jacobian"]
    return SimulationResult(spec=spec, table=table, per_seed=per_seed, diverged_at=diverged_at, flushed=flushed,
                            meta=meta, theory=theory_df, jacobian=extras.get("jacobian"), warnings=warn)


def _run(spec, act, samples, S, seed, dt, dev, want_jac, jac_inputs, grad_samples, input, progress):
    import torch
    from tqdm import tqdm

    gens = _generators(seed, S)
    _check_memory(spec, samples if samples is not None else 0, S, dt, dev, grad_samples)
    x0, desc, in_stats = _make_inputs(spec, input, samples, gens, dt, dev, seed, progress)
    N = x0.shape[1]
    if N < 2:
        raise UserError("need at least 2 samples")
    G = min(N, grad_samples)
    widths = spec.widths
    D = spec.depth
    init = spec.initializer
    bias_var = spec.bias_var
    has_bias = (bias_var is not None and bias_var > 0) or (bias_var is None and init.torch_bias)
    act_ = _inplace_activation(act)
    sat_lo, sat_hi, sat_zero = _saturation_rule(act)
    nS = min(N, _SAT_SAMPLES)
    p_drop, p_adrop = spec.dropout, spec.alpha_dropout
    # readout vector of the gradient probe, drawn first so it doesn't depend on depth
    r = torch.stack([torch.randn(widths[-1], dtype=dt, generator=g) for g in gens]).to(dev)

    rows = [_layer0_rows(x0)]
    # two ping-pong buffers for the hidden layers; x0 stays separate (BN may normalize it in place? no:
    # BN never acts on x0, it starts at layer 2)
    maxw = max(widths[1:])
    bufs = [torch.empty(S * N * maxw, dtype=dt, device=dev) for _ in range(min(2, D))]
    weights, bn_scales, derivs = [], [], []
    x = x0
    diverged_at = None
    bar = tqdm(range(1, D + 1), desc="layers", file=sys.stderr, disable=not progress, leave=False)
    for l in bar:
        n_in, n_out = widths[l - 1], widths[l]
        W = _sample_weights(init, n_out, n_in, gens, dt).to(dev)
        if has_bias:
            b = torch.stack([init.sample_bias(n_out, n_in, generator=g, dtype=dt, bias_var=bias_var)
                             for g in gens]).to(dev)
        scale = None
        if spec.batchnorm and l > 1:
            # train-mode BN on the layer input, per unit over the batch (biased variance)
            mu = x.mean(dim=1, keepdim=True)
            x.sub_(mu)
            var = torch.linalg.vector_norm(x, dim=1, keepdim=True) ** 2 / N
            scale = torch.rsqrt(var + spec.bn_eps)
            x.mul_(scale)
        weights.append(W)
        bn_scales.append(scale)
        h = bufs[(l - 1) % 2][: S * N * n_out].view(S, N, n_out)
        torch.bmm(x, W.transpose(1, 2), out=h)
        if has_bias:
            h.add_(b.unsqueeze(1))
        cnt = N * n_out
        row = {}
        row["pre_mean"], row["pre_q"], ok_pre = _moments(h, cnt)
        row["pre_var"] = row["pre_q"] - row["pre_mean"] ** 2
        row["corr"] = _pair_corr(h)
        h_g = h[:, :G].clone()
        x = act_(h)
        row["post_mean"], row["post_q"], ok_post = _moments(x, cnt)
        row["post_var"] = row["post_q"] - row["post_mean"] ** 2
        zero_units = x.amax(dim=1) == 0
        if bool(zero_units.any()):
            zero_units &= x.amin(dim=1) == 0
        row["dead_frac"] = zero_units.sum(dim=1).to(dt) / n_out
        xs = x[:, :nS]
        if sat_zero is not None:
            thr = (sat_zero * torch.sqrt(row["post_q"])).view(S, 1, 1)
            sat = (xs.abs() <= thr).sum(dim=(1, 2))
        else:
            sat = torch.zeros(S, dtype=torch.int64, device=dev)
            if sat_lo is not None:
                sat = sat + (xs <= sat_lo).sum(dim=(1, 2))
            if sat_hi is not None:
                sat = sat + (xs >= sat_hi).sum(dim=(1, 2))
        row["saturated_frac"] = sat.to(dt) / (nS * n_out)
        d = _derivative(act, h_g)
        if p_drop or p_adrop:
            mask = torch.stack([torch.empty((N, n_out), dtype=dt).bernoulli_(1 - (p_drop or p_adrop), generator=g)
                                for g in gens]).to(dev)
            if p_drop:
                mask.mul_(1.0 / (1.0 - p_drop))
                x.mul_(mask)
                d.mul_(mask[:, :G])
            else:
                p = p_adrop
                a = 1.0 / math.sqrt((_ALPHA_DROPOUT_ALPHA**2 * p + 1) * (1 - p))
                # torch semantics: a * (x * m + alpha' (1 - m)) + b, alpha' = -lambda*alpha, b = -a alpha' p
                shift = (mask - 1.0).mul_(_ALPHA_DROPOUT_ALPHA * a).add_(_ALPHA_DROPOUT_ALPHA * a * p)
                x.mul_(mask).mul_(a).add_(shift)
                d.mul_(mask[:, :G] * a)
            del mask
        derivs.append(d)
        rows.append(row)
        if not (ok_pre and ok_post):
            diverged_at = l
            break
    bar.close()

    grad = [None] * (D + 1)
    jac = None
    if diverged_at is None:
        # backward: g^D = phi'(h^D) r / sqrt(n_D); g^l = (g^{l+1} W^{l+1} * bn_scale^{l+1}) * phi'(h^l)
        g = derivs[-1] * (r / math.sqrt(widths[-1])).unsqueeze(1)
        k = min(jac_inputs, G)
        A = torch.diag_embed(derivs[-1][0, :k]) if want_jac else None
        for l in range(D, 0, -1):
            grad[l] = torch.linalg.vector_norm(g, dim=(1, 2), dtype=torch.float64) / math.sqrt(G)
            Wl = weights[l - 1]
            if l == 1:
                if want_jac:
                    A = A @ Wl[0]
                break
            g = torch.bmm(g, Wl)
            if bn_scales[l - 1] is not None:
                g.mul_(bn_scales[l - 1])
            g.mul_(derivs[l - 2])
            if want_jac:
                Wj = Wl[0] if bn_scales[l - 1] is None else Wl[0] * bn_scales[l - 1][0]
                A = (A @ Wj) * derivs[l - 2][0, :k].unsqueeze(1)
        if want_jac:
            jac = _jacobian_summary(A)
    del derivs, weights

    per_seed = _per_seed_table(spec, rows, grad, diverged_at, S)
    table = _aggregate(per_seed, spec)
    extras = {"samples": int(N), "input": desc, "input_stats": in_stats, "grad_samples": int(G), "jacobian": jac}
    return per_seed, table, diverged_at, extras


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


def _sample_weights(init, n_out, n_in, gens, dt):
    """``(S, n_out, n_in)`` weights, network ``s`` drawn from its own stream ``gens[s]``."""
    import torch

    return torch.stack([init.sample(n_out, n_in, generator=g, dtype=dt) for g in gens])


def _jacobian_summary(J) -> dict:
    """Singular-value statistics of a batch of Jacobians ``(k, n_out, n_in)`` (float64 SVD)."""
    import torch

    s = torch.linalg.svdvals(J.double().cpu()).numpy()  # (k, min(n_out, n_in)), descending
    smax, smin = s[:, 0], s[:, -1]
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
    }


def _per_seed_table(spec, rows, grad, diverged_at, S):
    from propagate.stats import layer_table

    out = []
    for l, row in enumerate(rows):
        vals = {k: v.detach().double().cpu().numpy() for k, v in row.items()}
        gl = grad[l].detach().double().cpu().numpy() if l > 0 and grad[l] is not None else None
        for s in range(S):
            rec = {"layer": l, "width": spec.widths[l], "seed": s}
            for k, v in vals.items():
                rec[k] = float(v[s])
            rec["grad_norm"] = float(gl[s]) if gl is not None else float("nan")
            rec["diverged"] = diverged_at is not None and l >= diverged_at
            out.append(rec)
    return layer_table(out, source="simulation", config=spec.label())


_STAT_COLS = ("pre_mean", "pre_var", "pre_q", "post_mean", "post_var", "post_q", "corr", "grad_norm",
              "dead_frac", "saturated_frac")
_SE_COLS = ("pre_mean", "pre_var", "pre_q", "post_mean", "post_var", "post_q", "corr", "grad_norm")


def _aggregate(per_seed, spec):
    """Mean over networks and standard error across networks, per layer."""
    from propagate.stats import layer_table

    rows = []
    for l, grp in per_seed.groupby("layer", sort=True):
        rec = {"layer": int(l), "width": int(grp["width"].iloc[0])}
        S = len(grp)
        for c in _STAT_COLS:
            v = grp[c].to_numpy(dtype=float)
            with np.errstate(invalid="ignore", over="ignore"):
                rec[c] = float(np.mean(v)) if not np.all(np.isnan(v)) else float("nan")
                if c in _SE_COLS:
                    rec[c + "_se"] = float(np.std(v, ddof=1) / math.sqrt(S)) if S > 1 else float("nan")
        rec["diverged"] = bool(grp["diverged"].any())
        rows.append(rec)
    return layer_table(rows, source="simulation", config=spec.label())


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


def finite_width_allowance(widths, layer: int) -> float:
    """Relative allowance for finite-width bias at ``layer``: ``sum_{k<=layer} 1 / n_k``.

    Mean-field theory is exact at infinite width. At width ``n`` each layer's
    moments get a systematic relative correction of order ``1/n`` (the
    pre-activation variance of a unit fluctuates by ``O(1/sqrt(n))`` around
    ``q`` and the moment map is curved, so its average shifts by
    ``O(var(q)) = O(1/n)``); corrections carry forward through the layers, so
    we allow their sum with unit constant. The random part of the
    finite-width spread (which grows like ``sqrt(layer / n)``) is not in this
    allowance: it is in the standard error across networks.
    """
    layer = max(0, min(int(layer), len(widths) - 1))
    return float(sum(1.0 / widths[k] for k in range(1, layer + 1)))


def compare_with_theory(table, theory_df, spec, n_se: float = 4.0):
    """Add ``theory_<stat>`` columns, ``ratio = pre_var / theory_pre_var`` and ``disagree``.

    A statistic disagrees at a layer when ``|measured - theory| > n_se * SE +
    allowance``, where SE is the standard error across networks and the
    allowance is :func:`finite_width_allowance` times a scale: ``|theory|`` for
    variances, second moments and gradient norms (for ``grad_norm`` the sum
    runs over all layers, since the backward pass crosses every layer), the
    RMS ``sqrt(theory q)`` for means, and 1 for ``corr``. ``disagree_in``
    lists the statistics that disagree. With one network (no SE) only the
    allowance applies. An SE from a handful of networks is itself uncertain,
    so each layer's SE is floored by the median SE of the layers within 3 of
    it (SEs change smoothly with depth); otherwise a per-layer 4 SE test over
    50 layers and 8 statistics flags by chance.
    """
    import pandas as pd

    th = theory_df.set_index("layer")
    out = table.copy()
    widths = spec.widths
    flags = [[] for _ in range(len(out))]
    for c in _COMPARED:
        if c not in th.columns:
            continue
        t = out["layer"].map(th[c]).astype(float)
        out["theory_" + c] = t
        se = out[c + "_se"] if c + "_se" in out.columns else pd.Series(0.0, index=out.index)
        # an SE estimated from a few networks is itself noisy (and sometimes far too small);
        # SEs vary smoothly with depth, so floor each by the median of its neighbours (+-3 layers)
        se = np.maximum(se.fillna(0.0), se.rolling(7, center=True, min_periods=1).median().fillna(0.0))
        for i, (lay, m, tv, s) in enumerate(zip(out["layer"], out[c], t, se)):
            if not (np.isfinite(tv) and np.isfinite(m)):
                continue
            if c == "grad_norm":
                allow = finite_width_allowance(widths, len(widths) - 1) * abs(tv)
            elif c.endswith("_mean"):
                qcol = "pre_q" if c.startswith("pre") else "post_q"
                qt = th[qcol].get(lay, np.nan) if qcol in th.columns else np.nan
                scale = math.sqrt(qt) if np.isfinite(qt) and qt > 0 else abs(tv)
                allow = finite_width_allowance(widths, lay) * scale
            elif c == "corr":
                allow = finite_width_allowance(widths, lay)
            else:
                allow = finite_width_allowance(widths, lay) * abs(tv)
            if abs(m - tv) > n_se * s + allow + 1e-12 * abs(tv):
                flags[i].append(c)
    if "theory_pre_var" in out.columns:
        with np.errstate(divide="ignore", invalid="ignore"):
            out["ratio"] = out["pre_var"] / out["theory_pre_var"]
    out["disagree"] = [bool(f) for f in flags]
    out["disagree_in"] = [",".join(f) for f in flags]
    return out
