"""What mean-field theory can read from a torch model's modules: activations, weight variances, MLP layouts.

- :func:`activation_of`: the registry name (:mod:`propagate.activations`) of an
  activation module (``nn.ReLU`` -> ``relu``, ``nn.LeakyReLU(0.2)`` ->
  ``leaky_relu:0.2``, ``nn.SELU``, ``nn.ELU``, ``nn.Tanh``, ``nn.Sigmoid``,
  ``nn.GELU`` (exact form), ``nn.SiLU``, ``nn.Softplus`` (beta 1), and the
  modules of :meth:`propagate.activations.Activation.torch_module`).
- :func:`weight_stats`: ``fan_in`` and the measured ``sigma_w^2 = fan_in x
  mean(w^2)`` (the weights' variance about zero, which is what enters the
  variance map) and ``sigma_b^2 = mean(b^2)`` of a ``Linear`` or ``Conv1d/2d/3d``
  (``fan_in = C_in / groups x kernel area``), summed in the weights' dtype.
- :func:`mlp_coverage`: how much of a sequence of modules a
  :class:`~propagate.spec.NetworkSpec` describes, and which module stops it and
  why; :func:`spec_fields` the spec's fields for a whole model
  (:meth:`NetworkSpec.from_module`).

The layout a spec compiles to (:func:`propagate.layers.compile_spec`):
``Linear, act, [Dropout | AlphaDropout]`` for layer 1, then for layers
``2..depth`` ``[BatchNorm1d | LayerNorm], Linear, act, [dropout]``, and an
optional readout ``[norm], Linear`` last; one activation, one dropout kind and
rate after every hidden layer, one normalization kind (affine at identity) on
the inputs of layers 2.. and of the readout. Dropout in eval mode is the
identity (rate 0); BatchNorm in eval mode is not covered (the theory models
batch statistics).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from propagate.activations import get_activation
from propagate.errors import UserError

__all__ = ["activation_of", "weight_stats", "mlp_coverage", "MlpCoverage", "spec_fields", "leaf_modules"]


def leaf_modules(model) -> list:
    """``[(qualified name, module)]`` of the modules without children, in registration order (the root if it has none)."""
    leaves = [(name, m) for name, m in model.named_modules() if not any(True for _ in m.children())]
    return leaves or [("", model)]


def activation_of(module) -> str | None:
    """The registry name of an activation module, or None (module docstring)."""
    import torch.nn as nn

    if type(module).__module__ == "propagate.activations":  # Activation.torch_module(): extra_repr is the name
        return get_activation(module.extra_repr()).name
    simple = {nn.ReLU: "relu", nn.SELU: "selu", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid", nn.SiLU: "silu"}
    for cls, name in simple.items():
        if type(module) is cls:
            return name
    if type(module) is nn.LeakyReLU:
        return get_activation(f"leaky_relu:slope={float(module.negative_slope)!r}").name
    if type(module) is nn.ELU:
        return get_activation(f"elu:alpha={float(module.alpha)!r}").name
    if type(module) is nn.GELU and module.approximate == "none":
        return "gelu"
    if type(module) is nn.Softplus and module.beta == 1:
        return "softplus"  # torch returns x above `threshold` (20): log(1 + e^x) - x < 2e-9 there
    return None


def weight_stats(module) -> dict | None:
    """``{"fan_in", "sigma_w2", "sigma_b2"}`` of a Linear or ConvNd module (float64 sums), else None."""
    import torch
    import torch.nn as nn

    if not isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return None
    w = module.weight.detach().reshape(-1)
    fan_in = int(math.prod(module.weight.shape[1:]))
    b = module.bias.detach().reshape(-1) if module.bias is not None else None
    with torch.no_grad():  # sums of squares as BLAS dot products (the fastest reduction; float32 is precise enough)
        ms = float(torch.dot(w, w)) / max(w.numel(), 1)
        bs = float(torch.dot(b, b)) / b.numel() if b is not None and b.numel() else 0.0
    return {"fan_in": fan_in, "sigma_w2": fan_in * ms, "sigma_b2": bs}


# ----------------------------------------------------------------------------
# MLP layouts


def _kind(m) -> str | None:
    import torch.nn as nn

    if type(m) is nn.Linear:
        return "linear"
    if type(m) is nn.BatchNorm1d:
        return "batchnorm"
    if type(m) is nn.LayerNorm:
        return "layernorm"
    if type(m) is nn.AlphaDropout:
        return "alpha_dropout"
    if type(m) is nn.Dropout:
        return "dropout"
    if activation_of(m) is not None:
        return "activation"
    return None


def _norm_problem(m, training: bool) -> str | None:
    """Why a normalization module is outside the theory (eval-mode BN, affine away from identity), or None."""
    import torch

    if _kind(m) == "batchnorm" and not training and m.track_running_stats:
        return "BatchNorm1d in eval mode (the theory models train-mode batch statistics)"
    w = getattr(m, "weight", None)
    b = getattr(m, "bias", None)
    if (w is not None and not bool(torch.all(w == 1))) or (b is not None and not bool(torch.all(b == 0))):
        return "normalization with an affine transform away from identity (the theory has gamma 1, beta 0)"
    if _kind(m) == "layernorm" and len(m.normalized_shape) != 1:
        return "LayerNorm over more than the last dimension"
    return None


def _drop_rate(m, training: bool) -> tuple[str, float]:
    """``(kind, rate)`` of a dropout module; eval mode (or p = 0) is the identity: ``("none", 0)``."""
    if not training or m.p == 0:
        return "none", 0.0
    return _kind(m), float(m.p)


@dataclass
class MlpCoverage:
    """How much of a module sequence a spec describes (:func:`mlp_coverage`).

    ``fields``: the :class:`~propagate.spec.NetworkSpec` keyword arguments of
    the covered hidden layers (and readout), None when not even one layer is
    covered; ``roles``: per covered module ``(role, layer)`` with role
    ``dense``, ``act``, ``norm``, ``dropout``, ``identity`` (eval-mode
    dropout) or ``readout`` (layer ``depth + 1``); ``stop``: ``""`` when every
    module is covered (or, with ``fields`` None, when there was no hidden
    layer to cover: :data:`NO_LAYER`), else ``"<name> (<Type>): why"``.
    """

    fields: dict | None
    roles: list = field(default_factory=list)
    stop: str = ""


#: Why a module sequence without one hidden layer has no spec.
NO_LAYER = "no hidden layer (Linear + activation) to describe"


class _Parse:
    """The state of :func:`mlp_coverage` walking the modules (one hidden layer per :meth:`layer`)."""

    def __init__(self, mods, names, training):
        self.mods, self.names, self.training = mods, names, training
        self.layers: list[dict] = []
        self.readout: dict | None = None
        self.act = self.norm = self.drop = None
        self.seen: set[int] = set()

    def where(self, i, why) -> str:
        m = self.mods[i]
        name = self.names[i] or "(model)"
        return f"{name} ({type(m).__name__}): {why}"

    def layer(self, i) -> tuple[dict | None, int, str]:
        """One hidden layer (or the readout) from module ``i``: ``(parts, next index, why it stops or "")``."""
        mods, n = self.mods, len(self.mods)
        parts: dict = {}
        j = i
        if self.layers and j < n and _kind(mods[j]) in ("batchnorm", "layernorm"):
            parts["norm"], j = j, j + 1
        if j >= n or _kind(mods[j]) != "linear":
            what = "a Linear layer" if j < n else "a Linear layer after the normalization"
            return None, min(j, n - 1), f"the theory expected {what} here"
        parts["dense"], j = j, j + 1
        if j == n:
            return {**parts, "readout": True}, j, ""
        if _kind(mods[j]) != "activation":
            return None, j, "not an activation of the registry after a Linear layer"
        parts["act"], j = j, j + 1
        if j < n and _kind(mods[j]) in ("dropout", "alpha_dropout"):
            parts["drop"], j = j, j + 1
        return parts, j, ""

    def check(self, parts) -> tuple[int, str]:
        """``(module index, why)`` where ``parts`` breaks the spec's uniform layout, or ``(-1, "")``."""
        mods = self.mods
        d = mods[parts["dense"]]
        if id(d) in self.seen:
            return parts["dense"], "a Linear layer called twice (shared weights are not independent layers)"
        prev = self.layers[-1] if self.layers else None
        if prev is not None and d.in_features != mods[prev["dense"]].out_features:
            return parts["dense"], "its input width does not match the previous Linear layer's output"
        norm = _kind(mods[parts["norm"]]) if "norm" in parts else "none"
        why = _norm_problem(mods[parts["norm"]], self.training[parts["norm"]]) if "norm" in parts else None
        if why:
            return parts["norm"], why
        if self.norm is not None and norm != self.norm:
            return parts.get("norm", parts["dense"]), f"normalization {norm}, unlike the earlier layers' {self.norm}"
        if parts.get("readout"):
            return -1, ""
        act = activation_of(mods[parts["act"]])
        if self.act is not None and act != self.act:
            return parts["act"], f"activation {act}, unlike the first layer's {self.act} (a spec has one activation)"
        drop = self.drop_of(parts)
        if self.drop is not None and drop != self.drop:
            return parts.get("drop", parts["act"]), "dropout differs from the first layer's (a spec has one rate)"
        return -1, ""

    def accept(self, parts) -> None:
        self.seen.add(id(self.mods[parts["dense"]]))
        if self.layers or "norm" in parts:
            self.norm = _kind(self.mods[parts["norm"]]) if "norm" in parts else "none"
        if parts.get("readout"):
            self.readout = parts
            return
        self.act = activation_of(self.mods[parts["act"]])
        self.drop = self.drop_of(parts)
        self.layers.append(parts)

    def drop_of(self, parts) -> tuple[str, float]:
        i = parts.get("drop")
        return _drop_rate(self.mods[i], self.training[i]) if i is not None else ("none", 0.0)


def mlp_coverage(modules, names=None, training=None) -> MlpCoverage:
    """How much of ``modules`` (in execution order) a :class:`~propagate.spec.NetworkSpec` describes.

    Walks the layout of the module docstring one hidden layer at a time and
    stops at the first module that breaks it (with the reason); the layers
    before it are covered. ``names`` (qualified names) only label the reason;
    ``training`` (per module) is the mode each ran in (default: its mode now).
    """
    mods = list(modules)
    names = list(names) if names is not None else [""] * len(mods)
    training = list(training) if training is not None else [m.training for m in mods]
    p = _Parse(mods, names, training)
    i, stop = 0, ""
    while i < len(mods):
        parts, j, why = p.layer(i)
        if parts is None:
            stop = p.where(j, why)
            break
        bad, why = p.check(parts)
        if bad >= 0:
            stop = p.where(bad, why)
            break
        p.accept(parts)
        i = j
    if not p.layers:
        return MlpCoverage(None, [], stop)
    return MlpCoverage(_fields(p), _roles(p), stop)


def _roles(p: _Parse) -> list:
    roles = []
    for l, parts in enumerate(p.layers, start=1):
        for key in ("norm", "dense", "act", "drop"):
            if key in parts:
                role = "identity" if key == "drop" and p.drop[0] == "none" else {"drop": "dropout"}.get(key, key)
                roles.append((parts[key], role, l))
    if p.readout is not None:
        if "norm" in p.readout:
            roles.append((p.readout["norm"], "norm", len(p.layers) + 1))
        roles.append((p.readout["dense"], "readout", len(p.layers) + 1))
    return [(role, layer) for _, role, layer in sorted(roles)]


def _fields(p: _Parse) -> dict:
    """NetworkSpec keyword arguments of the parsed layers, with each layer's measured sigma_w^2 and sigma_b^2."""
    mods = p.mods
    dense = [mods[parts["dense"]] for parts in p.layers]
    stats = [weight_stats(d) for d in dense]
    sw2 = [s["sigma_w2"] for s in stats]
    sb2 = [s["sigma_b2"] for s in stats]
    mean_sw2 = sum(sw2) / len(sw2)
    norms = [mods[parts["norm"]] for parts in [*p.layers, p.readout or {}] if "norm" in parts]
    fields = {
        "widths": (dense[0].in_features, *(d.out_features for d in dense)),
        "activation": p.act,
        # what simulate/train would draw; the theory reads layer_sigma_w2/_b2
        "init": f"normal:{mean_sw2:.3g}" if math.isfinite(mean_sw2) and mean_sw2 > 0 else "lecun_normal",
        "bias_var": sum(sb2) / len(sb2),
        "batchnorm": p.norm == "batchnorm",
        "layernorm": p.norm == "layernorm",
        "dropout": p.drop[1] if p.drop[0] == "dropout" else 0.0,
        "alpha_dropout": p.drop[1] if p.drop[0] == "alpha_dropout" else 0.0,
        "out_features": mods[p.readout["dense"]].out_features if p.readout is not None else None,
        "layer_sigma_w2": tuple(sw2),
        "layer_sigma_b2": tuple(sb2),
    }
    if norms:
        fields["bn_eps"] = float(norms[0].eps)
        mom = getattr(norms[0], "momentum", None)
        if mom is not None:
            fields["bn_momentum"] = float(mom)
    return fields


def spec_fields(model) -> dict:
    """:class:`~propagate.spec.NetworkSpec` keyword arguments for the whole ``model`` (leaves in registration order).

    Raises :class:`UserError` naming the first module the spec cannot represent.
    """
    import torch.nn as nn

    if not isinstance(model, nn.Module):
        raise UserError(f"from_module needs a torch.nn.Module, got {type(model).__name__}")
    leaves = leaf_modules(model)
    cov = mlp_coverage([m for _, m in leaves], [n for n, _ in leaves])
    if cov.stop or cov.fields is None:
        raise UserError(f"a NetworkSpec cannot describe this model: {cov.stop or NO_LAYER}")
    return cov.fields
