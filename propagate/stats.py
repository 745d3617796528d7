"""The per-layer table that theory, simulation and training all answer in, and the one way to measure it.

:func:`measure` is the one definition of each per-layer statistic (used by the
simulator and by training's probe batch); :func:`aggregate` averages networks;
:func:`compare_with_theory` lays a theory table beside a simulation's.

One row per (source, configuration, layer[, epoch]). Column names are fixed here
so a report can lay prediction, simulation and training over each other with no
glue. Conventions (all three lenses follow them):

- ``layer`` counts weight layers from 1; row ``layer = l`` describes the
  pre-activation ``h^l = W^l x^{l-1} + b^l`` and the post-activation
  ``x^l = phi(h^l)``. Row ``layer = 0`` (optional) describes the network input
  ``x^0`` (its statistics are in the ``post_*`` columns).
- ``*_mean`` is the mean over units and samples; ``*_var`` is the variance
  pooled over units and samples (not a standard deviation); ``*_q`` is the
  second moment ``E[h^2] = var + mean^2`` (mean-field theory's ``q``).
- ``corr`` is the correlation of pre-activations between two different inputs
  (mean-field theory's ``c``), pooled over units.
- ``*_se`` columns are standard errors of the column they extend (simulation:
  across independent networks; training: across the probe batch).
- ``corr`` is the uncentered correlation (cosine similarity) of the
  pre-activation vectors of two different inputs ``a, b``:
  ``mean_i(h_a h_b) / sqrt(mean_i(h_a^2) mean_i(h_b^2))``, averaged over pairs
  (theory: ``q_ab / sqrt(q_aa q_bb)``).
- ``grad_norm`` is the L2 norm over the layer's units of the gradient of a
  scalar with respect to the pre-activation ``h^l``, root-mean-square over
  samples. Simulation and theory use a random linear readout
  ``y = r . x^depth / sqrt(n_depth)``, ``r ~ N(0, I)``, so that
  ``grad_norm^2`` at the last layer is ``E[phi'(h)^2]`` and each layer below
  multiplies it by ``sigma_w^2 E[phi'(h^l)^2]`` (``chi_1`` for equal widths);
  training uses the loss of one sample.
- ``dead_frac`` is the fraction of units whose post-activation is exactly zero
  for every input in the batch; ``saturated_frac`` the share of outputs within
  1% of the activation's range limits (tanh, sigmoid) or numerically zero.
"""

from __future__ import annotations

import math

#: Columns every lens fills where it can (others are left NaN).
COLUMNS = [
    "source",  # "theory" | "simulation" | "training"
    "config",  # a short label of the spec, e.g. "selu/lecun_normal"
    "layer",
    "width",
    "pre_mean",
    "pre_var",
    "pre_q",
    "post_mean",
    "post_var",
    "post_q",
    "corr",
    "grad_norm",
    "dead_frac",
    "saturated_frac",
]

#: Optional columns: standard errors, training context.
OPTIONAL_COLUMNS = [
    "pre_mean_se",
    "pre_var_se",
    "post_mean_se",
    "post_var_se",
    "corr_se",
    "grad_norm_se",
    "epoch",  # training: 0 = at initialization, k = after epoch k
    "mode",  # training with BN: "train" (batch statistics) or "eval" (running statistics)
    "diverged",  # True from the first layer with inf/NaN on
]


#: Configuration columns (one value per row): the report reads a configuration from these, never from labels.
CONFIG_COLUMNS = ["activation", "init", "normalization", "residual"]


def config_columns(spec) -> dict:
    """The :data:`CONFIG_COLUMNS` values of a spec: ``normalization`` is ``none``, ``batchnorm`` or ``layernorm``."""
    norm = "layernorm" if spec.layernorm else ("batchnorm" if spec.batchnorm else "none")
    return {"activation": spec.activation, "init": spec.init, "normalization": norm, "residual": float(spec.residual)}


def layer_table(rows, source: str | None = None, config: str | None = None, spec=None):
    """Build a DataFrame with the canonical columns from a list of row dicts.

    Missing canonical columns are added as NaN; extra keys are kept after them.
    With ``spec``, ``config`` defaults to its label and the :data:`CONFIG_COLUMNS`
    are filled from it.
    """
    import pandas as pd

    df = pd.DataFrame(list(rows))
    if source is not None:
        df["source"] = source
    if config is None and spec is not None:
        config = spec.label()
    if config is not None:
        df["config"] = config
    if spec is not None:
        for k, v in config_columns(spec).items():
            df[k] = v
    for col in COLUMNS:
        if col not in df.columns:
            df[col] = float("nan")
    extra = [c for c in df.columns if c not in COLUMNS]
    ordered = [c for c in OPTIONAL_COLUMNS if c in extra] + [c for c in extra if c not in OPTIONAL_COLUMNS]
    return df[COLUMNS + ordered]


# ----------------------------------------------------------------------------
# the one definition of each per-layer statistic

#: Pair correlation: pairs (2i, 2i+1) of the first this-many samples.
CORR_SAMPLES = 2048
#: Saturated share: estimated on the first this-many samples.
SAT_SAMPLES = 1024
#: Columns that get a standard error (simulation: across networks; training: across samples).
SE_COLUMNS = ("pre_mean", "pre_var", "pre_q", "post_mean", "post_var", "post_q", "corr", "grad_norm")
#: Statistics averaged over networks.
STAT_COLUMNS = SE_COLUMNS + ("dead_frac", "saturated_frac")


def measure(*, pre=None, post=None, grad=None, inputs=None, act=None, sample_se: bool = False) -> tuple[dict, bool]:
    """Per-network statistics of one layer: the one definition simulation and training share.

    Every tensor is ``[S, B, N]`` (``S`` networks, ``B`` samples, ``N`` units);
    each statistic comes back as a tensor of shape ``[S]``, pooled over units
    and samples of that network (module docstring for the definitions):

    - ``pre=h``: ``pre_mean``, ``pre_q``, ``pre_var = pre_q - pre_mean^2`` and
      ``corr`` (cosine similarity of the sample pairs ``(2i, 2i+1)`` among the
      first :data:`CORR_SAMPLES`, averaged over pairs with nonzero norms);
    - ``post=x`` (the activation output, before dropout) with ``act``:
      ``post_*``, ``dead_frac`` (units exactly 0 for every sample) and
      ``saturated_frac`` (on the first :data:`SAT_SAMPLES` samples: within 1% of
      the range of a two-sided bounded activation, within 1% of a nonzero
      one-sided bound (SELU/ELU's ``-lambda alpha``), exactly at a zero bound
      (ReLU's 0); for unbounded activations ``|x| <= 1e-6 rms(x)``);
    - ``inputs=x0``: ``post_*`` and ``corr`` of the network input (row 0);
    - ``grad=g`` (gradient with respect to ``h``): ``grad_norm``, the root mean
      square over samples of the L2 norm over units (float64).

    ``sample_se`` (training) adds ``*_se`` columns: standard errors across the
    batch's samples (of per-sample means, per-sample variances about the pooled
    mean, pair correlations, squared gradient norms by the delta method).
    Returns ``(stats, finite)``; ``finite`` is False when a moment overflowed.
    """
    out: dict = {}
    finite = True
    for prefix, t, pairs in (("post", inputs, True), ("pre", pre, True), ("post", post, False)):
        if t is None:
            continue
        m, q, ok = _moments(t)
        out.update({f"{prefix}_mean": m, f"{prefix}_q": q, f"{prefix}_var": q - m * m})
        finite &= ok
        if pairs:  # the pair correlation of the network input (row 0) or of the pre-activations
            out["corr"] = _pair_corr(t)
        if sample_se:
            out.update(_moment_se(prefix, t, m))
            if pairs:
                out["corr_se"] = _pair_corr_se(t)
        if t is post and act is not None:
            out["dead_frac"] = _dead(post)
            out["saturated_frac"] = _saturated(post, act, q)
    if grad is not None:
        import torch

        G = grad.shape[-2]
        out["grad_norm"] = torch.linalg.vector_norm(grad, dim=(-2, -1), dtype=torch.float64) / math.sqrt(G)
        if sample_se:
            s = (grad.double() ** 2).sum(-1)
            gn = out["grad_norm"]
            se = s.std(dim=1) / math.sqrt(G) / (2 * gn)
            out["grad_norm_se"] = torch.where((gn > 0) & torch.tensor(G > 1), se, torch.full_like(se, math.nan))
    return out, bool(finite)


def _moments(t):
    """Per-network mean and second moment of ``t`` ``[S, B, N]``, and whether the entries are finite.

    The fast reductions in ``t``'s dtype are exact enough for a healthy signal
    but fail at both ends in float32: the squares of a vanishing signal
    underflow (RMS below ~1e-19 gives q = 0 while every entry is still a normal
    number) and the sums of an exploding one overflow while every entry is
    finite. In those two cases (q below 1e-30 or not finite) the moments are
    recomputed in float64, so q is right down to the smallest entries and
    divergence means an inf/NaN entry.
    """
    import torch

    cnt = t.shape[1] * t.shape[2]
    mean = t.sum(dim=(1, 2)) / cnt
    q = _sum_of_squares(t) / cnt
    total = float((q + mean.abs()).sum())  # one sync, no extra pass
    if math.isfinite(total) and float(q.min()) > 1e-30:
        return mean, q, True
    if not bool(torch.isfinite(t).all()):
        return mean, q, False
    return (t.sum(dim=(1, 2), dtype=torch.float64) / cnt,
            torch.linalg.vector_norm(t, dim=(1, 2), dtype=torch.float64) ** 2 / cnt, True)


#: Elements per block of :func:`measure_through` and torch thread (1 MiB of float32 per core: a block stays in
#: the cores' caches between its reads; of 2^16..2^20 per block measured on the development machine, 2^18 was
#: best at 1 thread and 2^19 at 2 threads).
FUSED_BLOCK = 1 << 18
#: The number of networks a block of :func:`measure_through` is sized for (the simulator's default).
BLOCK_NETWORKS = 8
#: Elements per block of :func:`measure_through` with the compiled kernel, whatever the thread count (its sums
#: are grouped by block and chunk, so a block that changed with the threads would change the last bits).
NATIVE_BLOCK = 1 << 19


def measure_through(t, fn_, act, block: int | None = None):
    """:func:`measure` of ``t`` as pre-activation, then ``fn_`` (``act`` in place), then :func:`measure` of its output.

    ``t`` ``[S, B, N]`` is overwritten by ``act(t)``. Returns ``((pre stats,
    finite), (post stats, finite))``, the columns and definitions of
    ``measure(pre=t)`` and ``measure(post=act(t), act=act)``, in one pass
    over memory instead of seven (a sum and a norm before, the pair
    correlations, ``fn_``, a sum and a norm after, the saturation counts):
    ``t`` is taken in blocks of an even number of samples of every network,
    ``block / (BLOCK_NETWORKS N)`` samples (``block``: :data:`FUSED_BLOCK` per
    torch thread), and each block is reduced, transformed
    and reduced again while it is in cache. ``fn_`` must be elementwise (it is
    applied a block at a time: the same numbers as on the whole tensor, but
    where a block ends inside torch's vector loop, whose scalar tail rounds
    some activations one unit in the last place differently).

    Equal to :func:`measure` to float32 round-off: the block sums are added
    in float64 (closer to the exact value than one float32 reduction: a
    whole-tensor float32 norm is off by about 1e-4 relative on 2.5M entries
    per network); the pair correlations and the saturation counts are the
    same numbers. :func:`_moments`' float64 fallback holds block by block for
    the input, which the pass overwrites (a block whose squares underflow or
    overflow is reduced again in float64 before ``fn_`` touches it), and for
    the whole output afterwards.

    Where the compiled kernel of :mod:`propagate.native` has ``act`` (SELU,
    ELU, ReLU, leaky ReLU, the identity; float32 on the CPU), it replaces the
    sums, the norms and ``fn_``: one read and one write of each block, sums in
    float64 (:func:`_measure_through_native`); its activation is within a unit
    in the last place of torch's.
    """
    import torch

    from propagate import native

    S, B, N = t.shape
    cnt = B * N
    form = native.kernel_form(act) if t.dtype == torch.float32 and t.device.type == "cpu" else None
    if form is not None and t.is_contiguous() and native.available():
        # the kernel's blocks do not depend on the thread count: the same numbers at any number of threads
        return _measure_through_native(t, form, act, _block_samples(NATIVE_BLOCK if block is None else block, N))
    block = FUSED_BLOCK * torch.get_num_threads() if block is None else block
    bs = _block_samples(block, N)
    nb = -(-B // bs)
    p = torch.empty((4, nb, S), dtype=t.dtype, device=t.device)
    s_in, n_in, s_out, n_out = (q.unbind(0) for q in p.unbind(0))  # every block's output views at once
    exact: dict = {}
    finite = True
    small = math.sqrt(1e-30 * min(bs, B) * N)  # a block's norm below this: q < 1e-30, its squares underflow
    n_pairs, n_sat = min(B, CORR_SAMPLES), min(B, SAT_SAMPLES)
    lo, hi, zero_rel = saturation_rule(act)
    corr, sat = [], torch.zeros(S, dtype=torch.int64, device=t.device)
    for j, c in enumerate(t.split(bs, dim=1)):
        i = j * bs
        torch.sum(c, dim=(1, 2), out=s_in[j])
        torch.linalg.vector_norm(c, dim=(1, 2), out=n_in[j])
        least, most = torch.aminmax(n_in[j])
        if not (float(least) > small and math.isfinite(float(most))):
            finite &= bool(torch.isfinite(c).all())
            exact[j] = (c.sum(dim=(1, 2), dtype=torch.float64),
                        torch.linalg.vector_norm(c, dim=(1, 2), dtype=torch.float64) ** 2)
        if i < n_pairs:
            corr.append(_pairs(c[:, : n_pairs - i]))
        fn_(c)
        torch.sum(c, dim=(1, 2), out=s_out[j])
        torch.linalg.vector_norm(c, dim=(1, 2), out=n_out[j])
        if i < n_sat and zero_rel is None:
            sat += _sat_count(c[:, : n_sat - i], lo, hi)
    p = p.double()
    p[1].square_()
    p[3].square_()
    for j, (s1, s2) in exact.items():
        p[0, j], p[1, j] = s1, s2
    tot = p.sum(dim=1) / cnt
    m, q, ok = tot[2], tot[3], True
    if not (math.isfinite(float((q + m.abs()).sum())) and float(q.min()) > 1e-30):
        m, q, ok = _moments(t)  # the output as a whole (it is intact): float64 where float32 fails
    return _through_columns(t, act, (tot[0], tot[1]), corr, (m, q), sat, n_sat, finite, ok)


def _through_columns(t, act, pre_moments, corr, post_moments, sat, n_sat, finite, ok):
    """:func:`measure_through`'s ``((pre, finite), (post, ok))`` from its pass's moments, the blocks' pair
    correlations and saturation counts, and the output ``t`` (its dead units, or its saturation where the
    activation's rule needs ``q``)."""
    import torch

    S, N = t.shape[0], t.shape[2]
    pre = moment_columns("pre", *pre_moments)
    pairs = [c for c in corr if c is not None]
    pre["corr"] = (torch.nanmean(torch.cat(pairs, dim=1), dim=1) if pairs
                   else torch.full((S,), math.nan, dtype=t.dtype, device=t.device))
    m, q = post_moments
    post = moment_columns("post", m, q)
    post["dead_frac"] = _dead(t)
    post["saturated_frac"] = (sat.to(t.dtype) / (n_sat * N) if saturation_rule(act)[2] is None
                              else _saturated(t, act, q))
    return (pre, finite), (post, ok)


def _block_samples(block: int, N: int) -> int:
    """Samples per block of :func:`measure_through`: ``block`` entries for :data:`BLOCK_NETWORKS` networks, even.

    From the width only, so that network k's blocks, and so its numbers, are
    the same however many networks run beside it; even, so that the pairs
    ``(2i, 2i + 1)`` never straddle two blocks.
    """
    bs = max(2, block // max(1, BLOCK_NETWORKS * N))
    return bs + bs % 2


def _measure_through_native(t, form, act, bs):
    """:func:`measure_through` with the compiled kernel (:mod:`propagate.native`): one read and one write of ``t``.

    Block by block (``bs`` samples): the pair correlations of the block's first
    samples (pre-activation), then the kernel (the activation in place, and the
    sums and sums of squares before and after it, in float64), then the
    saturation counts of its first samples (post-activation). Sums in float64
    need none of the float32 path's fallbacks: a moment is not finite exactly
    where an entry is not.
    """
    import torch

    from propagate import native

    S, B, N = t.shape
    n_pairs, n_sat = min(B, CORR_SAMPLES), min(B, SAT_SAMPLES)
    lo, hi, zero_rel = saturation_rule(act)
    corr, sat = [], torch.zeros(S, dtype=torch.int64, device=t.device)
    parts = []
    for j, c in enumerate(t.split(bs, dim=1)):
        i = j * bs
        if i < n_pairs:
            corr.append(_pairs(c[:, : n_pairs - i]))
        parts.append(native.act_moments(c, form))
        if i < n_sat and zero_rel is None:
            sat += _sat_count(c[:, : n_sat - i], lo, hi)
    tot = torch.stack(parts).sum(dim=0) / (B * N)  # [S, 4]: sum and sum of squares, before and after
    return _through_columns(t, act, (tot[:, 0], tot[:, 1]), corr, (tot[:, 2], tot[:, 3]), sat, n_sat,
                            bool(torch.isfinite(tot[:, :2]).all()), bool(torch.isfinite(tot[:, 2:]).all()))


#: Entries per network in one block of :func:`_sum_of_squares`.
NORM_BLOCK = 1 << 16


def _sum_of_squares(t):
    """Per network ``sum(t^2)`` of ``t`` ``[S, B, N]``, float64: float32 sums of squared blocks, added in float64.

    Not ``torch.linalg.vector_norm(t) ** 2``: torch's float32 norm is off by
    2 to 3e-7 relative even on 4,096 entries (its square root's rounding,
    squared) and its error grows with the number of entries (measured: 1e-6
    at 6.5e4, 2e-5 at 1e6, 7e-4 at 1e7, 6e-3 at 4e7: as large as a big
    batch's sampling error). A float32 ``sum`` of squares (torch's cascade
    summation) stays near 1e-7 at any size; squaring a block of at most
    :data:`NORM_BLOCK` entries per network at a time keeps the temporary
    small. The blocks depend on ``B`` and ``N`` only, so network ``k`` gets
    the same number however many networks ``t`` holds.
    """
    import torch

    S, B, N = t.shape
    bs, un = max(1, NORM_BLOCK // max(1, N)), min(N, NORM_BLOCK)  # samples (and units, for a huge N) a block
    buf = torch.empty((S, min(bs, B), un), dtype=t.dtype, device=t.device)
    parts = []
    for r in t.split(bs, dim=1):
        for c in r.split(un, dim=2):
            sq = torch.mul(c, c, out=buf[:, : c.shape[1], : c.shape[2]])
            parts.append(sq.sum(dim=(1, 2)))
    return torch.stack(parts, dim=1).double().sum(dim=1)


def moment_columns(prefix: str, mean, q) -> dict:
    """``{prefix}_mean``, ``{prefix}_q`` and ``{prefix}_var = q - mean^2`` of per-network moments."""
    return {f"{prefix}_mean": mean, f"{prefix}_q": q, f"{prefix}_var": q - mean * mean}


#: Samples (or pairs) per block where a statistic needs a temporary as large as its input: blocks keep
#: temporaries small (:func:`_pairs`).
_BLOCK = 128


def _pairs(h):
    import torch

    k = min(h.shape[1], CORR_SAMPLES) // 2
    if k == 0:
        return None
    v = h[:, : 2 * k].reshape(h.shape[0], k, 2, h.shape[2])
    # vecdot is the sum over units of the product; block by block (each pair's sum as in one call), a product
    # of (networks x pairs x units) is never held at once: a large temporary made and freed at every layer
    # fragments the C heap, and the process's memory grew by about its size per layer
    num = torch.empty(v.shape[:2], dtype=h.dtype, device=h.device)
    for i in range(0, k, _BLOCK):
        a, b = v[:, i : i + _BLOCK, 0], v[:, i : i + _BLOCK, 1]
        torch.sum(a * b, dim=-1, out=num[:, i : i + _BLOCK])
    norms = torch.linalg.vector_norm(v, dim=-1)
    den = norms[:, :, 0] * norms[:, :, 1]
    c = num / den
    return torch.where(den > 0, c, torch.full_like(c, float("nan")))


def _pair_corr(h):
    """Cosine similarity of the pairs (2i, 2i+1) of the first samples, averaged over pairs: shape ``[S]``."""
    import torch

    c = _pairs(h)
    if c is None:
        return torch.full((h.shape[0],), float("nan"), dtype=h.dtype, device=h.device)
    return torch.nanmean(c, dim=1)


def _pair_corr_se(h):
    import torch

    c = _pairs(h)
    if c is None:
        return torch.full((h.shape[0],), float("nan"), dtype=h.dtype, device=h.device)
    ok = torch.isfinite(c)
    n = ok.sum(dim=1)
    mean = torch.nanmean(c, dim=1, keepdim=True)
    var = torch.where(ok, (c - mean) ** 2, torch.zeros_like(c)).sum(dim=1) / (n - 1).clamp(min=1)
    se = torch.sqrt(var / n.clamp(min=1))
    return torch.where(n > 1, se, torch.full_like(se, math.nan))


def _moment_se(prefix, t, mean):
    """Standard errors across samples of the pooled mean and variance (training's probe batch)."""
    import torch

    B = t.shape[1]
    per_mean = t.mean(dim=2)
    per_var = ((t - mean.view(-1, 1, 1)) ** 2).mean(dim=2)
    nan = torch.full_like(mean, math.nan)
    if B < 2:
        return {f"{prefix}_mean_se": nan, f"{prefix}_var_se": nan}
    return {f"{prefix}_mean_se": per_mean.std(dim=1) / math.sqrt(B), f"{prefix}_var_se": per_var.std(dim=1) / math.sqrt(B)}


def _dead(x):
    """Share of units that are exactly 0 for every sample, per network.

    Only a unit that is 0 for the first sample can be; where none is (SELU,
    tanh: almost always) the rest of the batch is not read. Max and min are
    exact, so the share is the same however it is found.
    """
    zero = x[:, 0] == 0
    if bool(zero.any()):
        zero &= x.amax(dim=1) == 0
        if bool(zero.any()):
            zero &= x.amin(dim=1) == 0
    return zero.sum(dim=1).to(x.dtype) / x.shape[2]


def saturation_rule(act):
    """``(lower, upper, zero_rel)``: the thresholds of :func:`measure`'s ``saturated_frac`` for ``act``."""
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


def _saturated(x, act, q):
    import torch

    S, _, n = x.shape
    lo, hi, zero_rel = saturation_rule(act)
    xs = x[:, :SAT_SAMPLES]
    thr = (zero_rel * torch.sqrt(q)).view(S, 1, 1).to(xs.dtype) if zero_rel is not None else None
    # counted a block of samples at a time (integer counts: exact in any order), so the masks and the int64
    # copies a sum of booleans makes stay small temporaries (see _pairs)
    sat = torch.zeros(S, dtype=torch.int64, device=x.device)
    for i in range(0, xs.shape[1], _BLOCK):
        b = xs[:, i : i + _BLOCK]
        if thr is not None:
            sat += (b.abs() <= thr).sum(dim=(1, 2))
            continue
        sat += _sat_count(b, lo, hi)
    return sat.to(x.dtype) / (xs.shape[1] * n)


def _sat_count(b, lo, hi):
    """Entries of ``b`` ``[S, b, N]`` at or beyond the bounds ``lo``/``hi`` (None: no bound), per network (int64)."""
    import torch

    out = 0  # int32 sums of a block (at most 2^31 entries per network: exact), half the time of int64 ones
    if lo is not None:
        out = (b <= lo).sum(dim=(1, 2), dtype=torch.int32)
    if hi is not None:
        out = out + (b >= hi).sum(dim=(1, 2), dtype=torch.int32)
    return out


# ----------------------------------------------------------------------------
# across networks, and against theory


def aggregate(per_seed, config: str | None = None, spec=None):
    """Mean over networks and standard error across networks (``*_se``), per layer, of a per-network table."""
    import numpy as np

    rows = []
    for layer, grp in per_seed.groupby("layer", sort=True):
        rec = {"layer": int(layer), "width": int(grp["width"].iloc[0])}
        S = len(grp)
        for c in STAT_COLUMNS:
            v = grp[c].to_numpy(dtype=float)
            with np.errstate(invalid="ignore", over="ignore"):
                rec[c] = float(np.mean(v)) if not np.all(np.isnan(v)) else float("nan")
                if c in SE_COLUMNS:
                    rec[c + "_se"] = float(np.std(v, ddof=1) / math.sqrt(S)) if S > 1 else float("nan")
        rec["diverged"] = bool(grp["diverged"].any())
        rows.append(rec)
    return layer_table(rows, source="simulation", config=config, spec=spec)


#: Statistics compared with theory.
COMPARED = ("pre_mean", "pre_var", "pre_q", "post_mean", "post_var", "post_q", "corr", "grad_norm")


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
    """Add ``theory_<stat>`` columns, ``ratio = pre_var / theory_pre_var``, ``judged`` and ``disagree``.

    A statistic disagrees at a layer when ``|measured - theory| > n_se * SE +
    allowance``, where SE is the standard error across networks and the
    allowance is :func:`finite_width_allowance` times a scale: ``|theory|`` for
    variances, second moments and gradient norms (for ``grad_norm`` the sum
    runs over all layers, since the backward pass crosses every layer), the
    RMS ``sqrt(theory q)`` for means, and 1 for ``corr``. ``disagree_in``
    lists the statistics that disagree. ``grad_norm`` is compared with
    ``sqrt(theory grad_norm^2 + grad_norm_signal^2)`` when the theory has the
    signal-direction column (:func:`propagate.theory.predict_layers`). An SE from a handful of networks is
    itself uncertain, so each layer's SE is floored by the median SE of the
    layers within 3 of it (SEs change smoothly with depth); otherwise a
    per-layer 4 SE test over 50 layers and 8 statistics flags by chance.

    Without a standard error (one network) there is no statistical error to
    judge against: ``judged`` is False and nothing is flagged.
    """
    import numpy as np
    import pandas as pd

    th = theory_df.set_index("layer")
    out = table.copy()
    widths = spec.widths
    flags = [[] for _ in range(len(out))]
    se_cols = [c + "_se" for c in COMPARED if c + "_se" in out.columns]
    judged = bool(se_cols) and bool(np.isfinite(out[se_cols].to_numpy(dtype=float)).any())
    for c in COMPARED:
        if c not in th.columns:
            continue
        t = out["layer"].map(th[c]).astype(float)
        out["theory_" + c] = t
        if c == "grad_norm" and "grad_norm_signal" in th.columns:
            # a width-n network adds the signal-direction component that mean-field theory drops
            sig = out["layer"].map(th["grad_norm_signal"]).astype(float)
            out["theory_grad_norm_signal"] = sig
            t = np.sqrt(t**2 + sig.fillna(0.0) ** 2)
        if not judged:
            continue
        se = out[c + "_se"] if c + "_se" in out.columns else pd.Series(0.0, index=out.index)
        # SEs vary smoothly with depth; floor each by the median of its neighbours (+-3 layers)
        se = np.maximum(se.fillna(0.0), se.rolling(7, center=True, min_periods=1).median().fillna(0.0))
        for i, (lay, m, tv, s) in enumerate(zip(out["layer"], out[c], t, se)):
            if not (np.isfinite(tv) and np.isfinite(m)):
                continue
            allow = _allowance(c, lay, tv, th, widths)
            if abs(m - tv) > n_se * s + allow + 1e-12 * abs(tv):
                flags[i].append(c)
    if "theory_pre_var" in out.columns:
        with np.errstate(divide="ignore", invalid="ignore"):
            out["ratio"] = out["pre_var"] / out["theory_pre_var"]
    out["judged"] = judged
    out["disagree"] = [bool(f) for f in flags]
    out["disagree_in"] = [",".join(f) for f in flags]
    return out


def _allowance(stat, layer, theory_value, th, widths) -> float:
    import numpy as np

    if stat == "grad_norm":
        return finite_width_allowance(widths, len(widths) - 1) * abs(theory_value)
    if stat.endswith("_mean"):
        qcol = "pre_q" if stat.startswith("pre") else "post_q"
        qt = th[qcol].get(layer, np.nan) if qcol in th.columns else np.nan
        scale = math.sqrt(qt) if np.isfinite(qt) and qt > 0 else abs(theory_value)
        return finite_width_allowance(widths, layer) * scale
    if stat == "corr":
        return finite_width_allowance(widths, layer)
    return finite_width_allowance(widths, layer) * abs(theory_value)
