"""Mean-field theory beside :func:`propagate.inspect`'s measured table, where the theory reaches.

:func:`attach_theory` walks the model's leaf-module calls in execution order,
starting from the statistics of what the first module received, while each
module's input is the previous one's output (a functional operation or a
branch between them stops the walk), and reads one of two layouts:

- **MLP-like** (the first module is ``Linear``): the layout a
  :class:`~propagate.spec.NetworkSpec` compiles to
  (:func:`propagate.module_spec.mlp_coverage`), with each layer's measured
  ``sigma_w^2`` and ``sigma_b^2`` (mean over networks) as the spec's per-layer
  values; :func:`propagate.theory.predict_layers` gives the theory and
  :func:`propagate.stats.compare_with_theory` the same disagreement flags as
  ``simulate``. A readout ``Linear`` last gets the Dense map of the last hidden
  layer's output (and multiplies every gradient below it by its factor).
- **Plain CNN** (the first module is ``Conv1d/2d/3d``): convolutions with
  stride 1 and size-preserving padding (``zeros`` or ``circular``), each
  followed by the one activation (the last may have none), no pooling. For
  the variance map a convolution is a dense layer with ``fan_in = C_in x
  kernel area`` (Xiao et al. 2018, "Dynamical Isometry and a Mean Field Theory
  of CNNs", ICML): the pre-activation second moment at position ``p`` is
  ``q(p) = sum_t e_t M(p + t) + sigma_b^2`` over the kernel taps ``t``, with
  ``M`` the input's second moment per position and ``e_t`` the measured
  weight energy of tap ``t`` (sum over input channels, mean over output
  channels, mean over networks; ``sum_t e_t = sigma_w^2``; ``e_t = sigma_w^2 /
  kernel area`` in expectation for i.i.d. weights, the centre tap alone for
  delta-orthogonal kernels). The map is run per position
  (:func:`cnn_theory`), starting from the inputs' own per-position moments.
  With circular padding and inputs whose statistics do not depend on
  position, every position has the dense layer's ``q``: the map is the dense
  one, exact at infinite channels. With zero padding a position within
  ``dilation x (k // 2)`` of a border has only part of its kernel inside the
  image, so its ``q`` is smaller (the taps outside see zeros): at the first
  layer, position ``p`` has ``q(p) = sigma_w^2 q_in f(p) + sigma_b^2``, ``f(p)``
  the share of the kernel's energy inside; deeper layers compound it and the
  deficit spreads inwards by ``k // 2`` positions per layer. The pooled
  ``theory_out_var`` (the mean of ``q(p)`` over positions) includes that
  border deficit. Gradients go back through the transposed window map.

Gradient theory needs the random readout (no ``loss``) and a theory that
reaches the model's output. Anything else keeps its measured rows with empty
theory columns, and the note says which module stopped the theory and why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from propagate.errors import UserError
from propagate.layers import Moments, fold_moments, moment_gradients
from propagate.module_spec import NO_LAYER, activation_of, mlp_coverage
from propagate.spec import NetworkSpec
from propagate.stats import compare_with_theory, layer_table, measure
from propagate.theory import layer_expectations, predict_layers

__all__ = ["Trace", "attach_theory", "cnn_theory", "THEORY_COLUMNS"]

#: Columns :func:`attach_theory` adds (NaN / empty where the theory does not reach).
THEORY_COLUMNS = ["layer", "tap", "theory_out_mean", "theory_out_var", "theory_out_q", "theory_corr",
                  "theory_grad_norm", "theory_grad_norm_signal", "ratio", "judged", "disagree", "disagree_in"]

_PRE = {"pre_mean": "out_mean", "pre_var": "out_var", "pre_q": "out_q", "corr": "corr", "grad_norm": "grad_norm"}
_POST = {"post_mean": "out_mean", "post_var": "out_var", "post_q": "out_q"}


@dataclass
class Trace:
    """What the hooks of network 0 saw, for the theory (:func:`propagate.model_stats.inspect` fills it).

    ``modules``/``names``/``training``: per row (call order); ``chain[i]``: row
    ``i``'s input is row ``i - 1``'s output; ``inputs``: what the first module
    received (the model's input, after any operation the model's ``forward``
    applies before it, such as a flatten); ``reaches_output``: the last row's output is
    the model's output; ``readout``: the gradient is the random readout's;
    ``energy``: per network ``{row: per-tap weight energy}`` of convolutions.
    """

    modules: list
    names: list
    chain: list
    inputs: Any
    reaches_output: bool
    readout: bool
    training: list
    energy: list = field(default_factory=list)


def _where(trace, i, why) -> str:
    return f"{trace.names[i] or '(model)'} ({type(trace.modules[i]).__name__}): {why}"


def attach_theory(table, trace: Trace):
    """Add :data:`THEORY_COLUMNS` to :func:`inspect`'s ``table``: ``(table, theory table or None, spec or None, note)``."""
    import torch.nn as nn

    n = len(trace.modules)
    k = next((i for i in range(1, n) if not trace.chain[i]), n)
    chain_stop = _where(trace, k, "its input is not the previous module's output (a functional operation or a "
                                  "branch between them)") if k < n else ""
    first = trace.modules[0] if n else None
    if isinstance(first, nn.Linear):
        return _mlp_theory(table, trace, k, chain_stop)
    if isinstance(first, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return _cnn_path(table, trace, k, chain_stop)
    why = "no theory: the first module is " + (_where(trace, 0, "neither Linear nor Conv1d/2d/3d") if n else "missing")
    return _empty(table), None, None, why


def _empty(table):
    out = table.copy()
    for c in THEORY_COLUMNS:
        out[c] = math.nan
    out["tap"], out["judged"], out["disagree"], out["disagree_in"] = "", False, False, ""
    return out


def _note(kind, covered, n, stop, grads, trace) -> str:
    where = "every module" if covered == n and not stop else f"rows 0-{covered - 1}; it stops at {stop}"
    note = f"theory ({kind}) covers {where}"
    if not grads:
        why = ("the gradient comes from your loss, not the random readout" if not trace.readout else
               "the theory does not reach the model's output")
        note += f"; no gradient theory ({why})"
    return note


def input_moments(x) -> dict:
    """``input_q``, ``input_mean``, ``input_corr`` of a batch by :func:`propagate.stats.measure` (pooled, pairs)."""
    B = x.shape[0]
    st, _ = measure(inputs=x.detach().double().reshape(1, B, -1))
    return {"input_q": float(st["post_q"][0]), "input_mean": float(st["post_mean"][0]),
            "input_corr": float(np.clip(float(st["corr"][0]), -1.0, 1.0))}


# ----------------------------------------------------------------------------
# MLP-like models: a NetworkSpec


def _mlp_theory(table, trace, k, chain_stop):
    cov = mlp_coverage(trace.modules[:k], trace.names[:k], trace.training[:k])
    stop = cov.stop or chain_stop
    if cov.fields is None:
        return _empty(table), None, None, "no theory: " + (stop or NO_LAYER)
    roles = [(i, role, layer) for i, (role, layer) in enumerate(cov.roles)]
    sw2 = table["sigma_w2"].to_numpy(dtype=float)
    sb2 = table["sigma_b2"].to_numpy(dtype=float)
    dense = [i for i, role, _ in roles if role == "dense"]
    nonfinite = _nonfinite_variances(sw2[dense], sb2[dense])
    if nonfinite:
        return _empty(table), None, None, nonfinite
    spec = NetworkSpec(**{**cov.fields, "layer_sigma_w2": tuple(sw2[dense]), "layer_sigma_b2": tuple(sb2[dense])})
    stats = input_moments(trace.inputs)
    grads = trace.readout and not stop and trace.reaches_output and len(roles) == len(table)
    try:
        th = predict_layers(spec, **stats)
        readout = [i for i, role, _ in roles if role == "readout"]
        if readout:
            th = _with_readout(th, spec, sw2[readout[0]], sb2[readout[0]], stats)
    except UserError as exc:
        return _empty(table), None, spec, f"no theory: {exc}"
    if not grads:
        th["grad_norm"] = math.nan
        th["grad_norm_signal"] = math.nan
    out = _compare(table, roles, th, spec)
    return out, th, spec, _note(f"MLP spec {spec.label()}", len(roles), len(table), stop, grads, trace)


def _nonfinite_variances(sw2, sb2) -> str:
    """The note for a model whose weight or bias variances overflow float64 (a diverged model: no theory), or ""."""
    bad = [i for i, (w, b) in enumerate(zip(sw2, sb2), start=1) if not (math.isfinite(w) and math.isfinite(b))]
    if not bad:
        return ""
    return (f"no theory: the weight or bias variance of layer {bad[0]} is not finite (sigma_w2 {sw2[bad[0] - 1]:g}, "
            f"sigma_b2 {sb2[bad[0] - 1]:g}); the model's signal diverges")


def _expect(act, q, c):
    return layer_expectations(act, q, c)


def _with_readout(th, spec, sw2, sb2, stats):
    """The theory table plus the readout's row (layer ``depth + 1``); gradients below it times the readout's factor.

    The hidden stack is folded once more to the state after its last op, then
    the readout's ops (the spec's normalization, if any, and the Dense map with
    the readout's measured variances): the gradient of the random readout at
    the model output reaches ``x^depth`` multiplied by their factors.
    """
    import pandas as pd

    hidden = spec.compile()
    tail = spec.compile(readout=True)[len(hidden):]
    tail[-1] = replace(tail[-1], sigma_w2=float(sw2), sigma_b2=float(sb2))
    m0, q0, c0 = stats["input_mean"], stats["input_q"], stats["input_corr"]
    with np.errstate(all="ignore"):
        st, _ = fold_moments(hidden, Moments(m0, q0, c0 * q0), _expect, {})
        final, trace = fold_moments(tail, st, _expect, {})
        scale = math.exp(0.5 * moment_gradients(trace, 0.0, {}))
    th = th.copy()
    for c in ("grad_norm", "grad_norm_signal"):
        th.loc[th["layer"] > 0, c] *= scale
    q = final.q
    row = {"layer": spec.depth + 1, "width": spec.out_features, "pre_mean": 0.0, "pre_var": q, "pre_q": q,
           "corr": final.qab / q if q > 0 else 1.0, "grad_norm": 1.0, "sigma_w2": float(sw2), "sigma_b2": float(sb2),
           "diverged": bool(final.diverged)}
    return pd.concat([th, pd.DataFrame([row])], ignore_index=True)


# ----------------------------------------------------------------------------
# the measured table in the layer format, compared, and mapped back to module rows


def _layer_view(table, roles):
    """The measured rows as a :mod:`propagate.stats` layer table: Dense/conv rows give ``pre_*``, activations ``post_*``."""
    import pandas as pd

    by_layer: dict = {}
    for i, role, layer in roles:
        if role in ("dense", "readout", "act"):
            rec = by_layer.setdefault(layer, {"layer": layer})
            names = _POST if role == "act" else _PRE
            for theirs, ours in names.items():
                rec[theirs] = table[ours].iloc[i]
                if ours + "_se" in table.columns:
                    rec[theirs + "_se"] = table[ours + "_se"].iloc[i]
            if role != "act":
                rec["width"] = int(table["units"].iloc[i])
    return pd.DataFrame([by_layer[l] for l in sorted(by_layer)])


def _compare(table, roles, th, spec):
    """``compare_with_theory`` on the layer view, its theory values and flags put back on the module rows."""
    cmp = compare_with_theory(_layer_view(table, roles), th, spec).set_index("layer")
    out = _empty(table)
    judged = bool(cmp["judged"].all()) if len(cmp) else False
    for i, role, layer in roles:
        out.loc[i, "layer"] = layer
        if role not in ("dense", "readout", "act") or layer not in cmp.index:
            continue
        r = cmp.loc[layer]
        names = _POST if role == "act" else _PRE
        out.loc[i, "tap"] = "post" if role == "act" else "pre"
        for theirs, ours in names.items():
            if "theory_" + theirs in cmp.columns:
                out.loc[i, "theory_" + ours] = r["theory_" + theirs]
        if role != "act" and "theory_grad_norm_signal" in cmp.columns:
            out.loc[i, "theory_grad_norm_signal"] = r["theory_grad_norm_signal"]
        flags = [names[f] for f in str(r["disagree_in"]).split(",") if f in names]
        out.loc[i, "judged"] = judged
        out.loc[i, "disagree"] = bool(flags)
        out.loc[i, "disagree_in"] = ",".join(flags)
    with np.errstate(divide="ignore", invalid="ignore"):
        out["ratio"] = out["out_var"] / out["theory_out_var"]
    return out


# ----------------------------------------------------------------------------
# plain CNN stacks


def _pads(m) -> list[tuple[int, int]] | None:
    """``(before, after)`` padding per spatial dimension, or None when the output size differs from the input's."""
    pads = []
    for i, (k, d) in enumerate(zip(m.kernel_size, m.dilation)):
        total = d * (k - 1)
        if isinstance(m.padding, str):
            before = total // 2 if m.padding == "same" else 0
            after = total - before if m.padding == "same" else 0
        else:
            before = after = int(m.padding[i])
        if before + after != total:
            return None
        pads.append((before, after))
    return pads


def _conv_problem(m) -> str | None:
    if any(s != 1 for s in m.stride):
        return f"stride {tuple(m.stride)} (the CNN theory covers stride 1)"
    if m.padding_mode not in ("zeros", "circular"):
        return f"padding_mode {m.padding_mode} (the CNN theory covers zeros and circular)"
    if _pads(m) is None:
        return "its padding does not preserve the spatial size"
    return None


def cnn_coverage(modules, names):
    """``(layers, activation, stop)``: a plain CNN stack's ``[{"conv": i, "act": j}]`` and where and why it ends."""
    import torch.nn as nn

    convs = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
    layers, act, seen, i, n = [], None, set(), 0, len(modules)

    def where(j, why):
        return f"{names[j] or '(model)'} ({type(modules[j]).__name__}): {why}"

    while i < n:
        m = modules[i]
        if not isinstance(m, convs):
            return layers, act, where(i, "not part of a plain CNN stack (convolutions and one activation)")
        why = _conv_problem(m) or ("a convolution called twice (shared weights)" if id(m) in seen else None)
        if why:
            return layers, act, where(i, why)
        seen.add(id(m))
        layer = {"conv": i}
        layers.append(layer)
        if i + 1 == n:
            break
        a = activation_of(modules[i + 1])
        if a is None or (act is not None and a != act):
            what = "not an activation of the registry" if a is None else f"activation {a}, unlike the first {act}"
            return layers, act, where(i + 1, f"{what} after a convolution")
        act, layer["act"] = a, i + 1
        i += 2
    return layers, act, ""


def _cnn_path(table, trace, k, chain_stop):
    layers, act, stop = cnn_coverage(trace.modules[:k], trace.names[:k])
    stop = stop or chain_stop
    if not layers:
        return _empty(table), None, None, "no theory: " + stop
    x = trace.inputs
    if x.dim() != 2 + len(trace.modules[0].kernel_size):
        return _empty(table), None, None, "no theory: the CNN theory needs inputs [B, C, *spatial]"
    act = act or "linear"
    covered = (layers[-1].get("act", layers[-1]["conv"]) + 1) if layers else 0
    grads = trace.readout and not stop and trace.reaches_output and covered == len(table)
    convs = []
    for layer in layers:
        i = layer["conv"]
        m = trace.modules[i]
        energy = np.mean([e[i] for e in trace.energy], axis=0)
        convs.append({"energy": energy, "sigma_b2": float(table["sigma_b2"].iloc[i]), "pads": _pads(m),
                      "circular": m.padding_mode == "circular", "dilation": tuple(m.dilation),
                      "channels": int(m.out_channels), "act": "act" in layer})
    nonfinite = _nonfinite_variances([float(c["energy"].sum()) for c in convs], [c["sigma_b2"] for c in convs])
    if nonfinite:
        return _empty(table), None, None, nonfinite
    th = cnn_theory(convs, act, x, grads=grads)
    roles = [(layer[key], "dense" if key == "conv" else "act", l)
             for l, layer in enumerate(layers, start=1) for key in ("conv", "act") if key in layer]
    widths = (int(x.shape[1]), *(c["channels"] for c in convs))
    # allowance of compare_with_theory: finite-size corrections go with 1 / channels
    spec = NetworkSpec(widths=widths, activation=act, init="normal:1",
                       layer_sigma_w2=tuple(float(c["energy"].sum()) for c in convs),
                       layer_sigma_b2=tuple(c["sigma_b2"] for c in convs))
    out = _compare(table, roles, th, spec)
    kind = f"plain CNN, {act}, {'circular' if all(c['circular'] for c in convs) else 'zero'} padding"
    return out, th, None, _note(kind, covered, len(table), stop, grads, trace)


def _window_map(conv):
    """``M -> sum_t e_t M(p + dilation t - pad)`` (the layer's own padding), a linear map of position maps (float64)."""
    import torch
    import torch.nn.functional as F

    w = torch.as_tensor(conv["energy"], dtype=torch.float64)[None, None]
    fn = (F.conv1d, F.conv2d, F.conv3d)[w.dim() - 3]
    flat = [p for lr in reversed(conv["pads"]) for p in lr]
    pad_mode = "circular" if conv["circular"] else "constant"

    def apply(M):
        return fn(F.pad(M[None, None], flat, mode=pad_mode), w, dilation=conv["dilation"])[0, 0]

    return apply


def _transpose(apply, G):
    """The transpose of the linear map ``apply`` on ``G`` (its vector-Jacobian product)."""
    import torch

    M = torch.zeros_like(G, requires_grad=True)
    with torch.enable_grad():
        return torch.autograd.grad(apply(M), M, G)[0].detach()


def _activation_maps(act, q, qab):
    """Per position ``(E[phi], E[phi^2], E[phi'^2], E[phi(u_a) phi(u_b)])`` at ``(q, qab)``, once per distinct pair."""
    import torch

    qf = q.reshape(-1).numpy()
    cf = np.where(qf > 0, qab.reshape(-1).numpy() / np.where(qf > 0, qf, 1.0), 1.0)
    keys, inv = np.unique(np.stack([qf, cf], axis=1), axis=0, return_inverse=True)
    vals = np.array([layer_expectations(act, a, c) for a, c in keys])[np.asarray(inv).reshape(-1)]
    return [torch.from_numpy(np.ascontiguousarray(vals[:, j])).reshape(q.shape) for j in range(4)]


def cnn_theory(convs, act: str, inputs, *, grads: bool = True, config: str | None = None):
    """Position-resolved mean-field table of a plain CNN stack (:mod:`propagate.stats` format, ``source="theory"``).

    Args:
        convs: per convolution ``{"energy": per-tap weight energy (kernel
            shape; sums to sigma_w^2), "sigma_b2", "pads": [(before, after)]
            per spatial dim, "circular": bool, "dilation", "channels", "act":
            followed by the activation}``.
        act: the activation's registry name.
        inputs: ``[B, C, *spatial]``; the starting state is its per-position
            mean, second moment and pair cross moment (pairs ``2i, 2i+1``),
            pooled over channels.
        grads: add ``grad_norm`` for the random readout of the last output.

    Row ``l`` pools over positions: ``pre_q = pre_var`` the mean of ``q(p)``,
    ``corr`` the ratio of the mean cross moment to it, ``post_*`` the means of
    the activation's moments; ``grad_norm`` is ``sqrt(sum_p G(p))``, ``G`` the
    per-position squared gradient norm pushed back from ``1 / positions`` at
    the output (module docstring).
    """
    import torch

    x = inputs.detach().double().cpu()
    B = x.shape[0]
    k = max(B // 2, 1)
    M, Mab = (x * x).mean(dim=(0, 1)), (x[0:2 * k:2] * x[1:2 * k:2]).mean(dim=(0, 1))
    m0, q0 = float(x.mean()), float(M.mean())
    rows = [{"layer": 0, "width": int(x.shape[1]), "post_mean": m0, "post_q": q0, "post_var": q0 - m0 * m0,
             "corr": float(Mab.mean()) / q0 if q0 > 0 else 1.0}]
    maps = []
    for l, conv in enumerate(convs, start=1):
        apply = _window_map(conv)
        q, qab = apply(M) + conv["sigma_b2"], apply(Mab) + conv["sigma_b2"]
        qm = float(q.mean())
        row = {"layer": l, "width": conv["channels"], "pre_mean": 0.0, "pre_q": qm, "pre_var": qm,
               "corr": float(qab.mean()) / qm if qm > 0 else 1.0, "sigma_w2": float(np.sum(conv["energy"])),
               "sigma_b2": conv["sigma_b2"]}
        g2 = None
        if conv["act"]:
            m1, M, g2, Mab = _activation_maps(act, q, qab)
            pm = float(m1.mean())
            row.update(post_mean=pm, post_q=float(M.mean()), post_var=float(M.mean()) - pm * pm)
        else:
            M, Mab = q, qab
        rows.append(row)
        maps.append((apply, g2))
    if grads:
        G = torch.full_like(M, 1.0 / M.numel())
        for row, (apply, g2) in zip(reversed(rows[1:]), reversed(maps)):
            G = G * g2 if g2 is not None else G
            row["grad_norm"] = math.sqrt(float(G.sum()))
            G = _transpose(apply, G)
    return layer_table(rows, source="theory", config=config or f"cnn/{act}")
