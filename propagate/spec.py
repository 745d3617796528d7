"""The network spec every lens looks at, its layer operations and the torch model built from it.

A :class:`NetworkSpec` describes a fully connected network: input dimension,
hidden widths, activation, initializer, bias variance, batch normalization,
dropout, input statistics and an optional linear readout. Theory predicts its
per-layer statistics, simulation samples it, training builds it with
:func:`build_model`.

Layer convention (see :mod:`propagate.stats`): hidden layer ``l = 1..depth``
computes ``h^l = W^l x^{l-1} + b^l`` and ``x^l = phi(h^l)``. With
``batchnorm=True`` the lecture demo's placement is used: a BatchNormalization on the
*input* of hidden layers ``2..depth`` and of the readout (none before the first
layer), i.e. ``h^l = W^l BN(x^{l-1}) + b^l``. Dropout (or alpha dropout) acts
on every hidden layer's output ``x^l``. With ``layernorm=True`` a LayerNorm
(per sample, over units) takes BatchNorm's place. With ``residual = R > 0``
every hidden layer whose input and output widths match becomes
``x^l = sqrt(1 - R^2) x^{l-1} + R branch(x^{l-1})``, the branch being that
layer's normalization (if on), Dense, activation and dropout.
:meth:`NetworkSpec.compile` gives the ordered layer operations
(:mod:`propagate.layers`) every lens reads.

Training model (:func:`build_model`), the interface ensembles rely on:

- ``build_model(spec, seed=0, *, seeds=None, dtype=None, device=None)``:
  ``seeds`` a sequence of ints (an ensemble of ``S = len(seeds)`` networks);
  ``seed=k`` alone means ``seeds=[k]``. Parameters are stacked along a
  leading seed dimension (weights ``[S, N_out, N_in]``, biases ``[S, N_out]``,
  BN/LN parameters and running statistics ``[S, N]``).
- Member ``k``'s initial weights equal the single run of seed ``k``: a
  ``torch.Generator`` seeded ``k`` draws each hidden layer's weight then bias,
  in layer order, the readout last.
- ``model(x)`` takes ``x`` as ``[B, in]`` (the same batch for every seed; images
  are flattened) or ``[S, B, in]`` and returns logits ``[S, B, out]`` (the last
  hidden layer's output without a readout). ``model(x, record=True)`` returns
  ``(logits, records)``, ``records = {"pre": [h^1..h^depth], "post": [phi(h^1)..]}``,
  each ``[S, B, N_l]`` (what :func:`propagate.stats.measure` takes).
- BatchNorm/LayerNorm statistics are per seed (over that seed's batch);
  dropout masks are independent per seed. Dense layers are ``torch.baddbmm``.
- ``model.seeds`` lists the seeds; ``model.spec`` is the spec.
- ``specs=[...]`` (one per seed): members of one architecture that differ in
  their initializer (:func:`same_architecture`); member ``i`` equals the
  single model ``(specs[i], seeds[i])``; ``model.specs`` lists them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

from propagate.activations import Activation, get_activation
from propagate.errors import UserError
from propagate.inits import Init, get_init
from propagate.layers import build_network, compile_spec

__all__ = ["NetworkSpec", "build_model", "same_architecture", "compile_spec", "SEED_INPUT", "SEED_FIRST", "SEED_WIDTH", "SEED_DEPTH"]

#: The lecture demo's shape (old names; prefer DEMO_*): 784 -> 512 -> 50 x 256 -> 10.
SEED_INPUT, SEED_FIRST, SEED_WIDTH, SEED_DEPTH, SEED_CLASSES = 784, 512, 256, 51, 10
#: The same shape under the name users read (the 2017 lecture demo): 51 hidden layers, Dense(512) then 50 x Dense(256).
DEMO_INPUT, DEMO_FIRST, DEMO_WIDTH, DEMO_DEPTH, DEMO_CLASSES = SEED_INPUT, SEED_FIRST, SEED_WIDTH, SEED_DEPTH, SEED_CLASSES


@dataclass(frozen=True)
class NetworkSpec:
    """A fully connected network, as all three lenses see it.

    Attributes:
        widths: ``(input_dim, n_1, ..., n_depth)``; hidden layer ``l`` maps
            ``widths[l-1]`` to ``widths[l]`` units and applies the activation.
        activation: activation name (see :mod:`propagate.activations`).
        init: initializer name for every weight layer (see :mod:`propagate.inits`).
        bias_var: bias variance ``sigma_b^2`` (a variance, independent of fan-in);
            ``None`` means the initializer's default (zero; torch_default's uniform).
        batchnorm: the lecture demo's placement of BatchNormalization (module docstring).
        dropout: standard dropout rate after each hidden layer.
        alpha_dropout: alpha-dropout rate after each hidden layer (for SELU).
        out_features: width of a linear readout (logits) after the last hidden
            layer, or ``None``; the readout is not counted in ``depth``.
        input_mean, input_var: per-feature mean and variance of Gaussian inputs
            (theory and simulation; training uses real data).
        bn_momentum: torch convention (weight of the new batch), Keras 0.99 = 0.01.
        bn_eps: BatchNormalization (and LayerNorm) epsilon (Keras default 1e-3).
        residual: ``R`` in ``x^l = sqrt(1 - R^2) x^{l-1} + R branch(x^{l-1})`` for
            hidden layers whose input and output widths match; 0 = no residual.
        layernorm: LayerNorm (per sample over units, affine at identity) where
            BatchNorm goes (inputs of layers 2..depth and of the readout).
        layer_sigma_w2, layer_sigma_b2: per-hidden-layer ``sigma_w^2`` and
            ``sigma_b^2`` (``depth`` values each) that replace the initializer's
            in :meth:`sigma_w2` / :meth:`sigma_b2`, hence in the theory (e.g.
            the measured values of an existing model, :meth:`from_module`).
            Simulation and training still draw weights from ``init``.
    """

    widths: tuple[int, ...]
    activation: str = "selu"
    init: str = "lecun_normal"
    bias_var: float | None = None
    batchnorm: bool = False
    dropout: float = 0.0
    alpha_dropout: float = 0.0
    out_features: int | None = None
    input_mean: float = 0.0
    input_var: float = 1.0
    bn_momentum: float = 0.01
    bn_eps: float = 1e-3
    residual: float = 0.0
    layernorm: bool = False
    layer_sigma_w2: tuple[float, ...] | None = None
    layer_sigma_b2: tuple[float, ...] | None = None
    name: str = field(default="", compare=False)

    def __post_init__(self):
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        for f in ("layer_sigma_w2", "layer_sigma_b2"):
            if getattr(self, f) is not None:
                object.__setattr__(self, f, tuple(float(v) for v in getattr(self, f)))
        self.validate()

    # -- construction -------------------------------------------------------
    @classmethod
    def stack(
        cls,
        depth: int,
        width: int = SEED_WIDTH,
        *,
        input_dim: int = SEED_INPUT,
        first_width: int | None = SEED_FIRST,
        **kw,
    ) -> "NetworkSpec":
        """``depth`` hidden layers: the first ``first_width`` wide (``None``: ``width``), the rest ``width``."""
        if not isinstance(depth, int) or depth < 1:
            raise UserError(f"depth must be a whole number >= 1, got {depth!r}")
        first = width if first_width is None else first_width
        return cls(widths=(input_dim, first, *([width] * (depth - 1))), **kw)

    @classmethod
    def demo(cls, activation: str = "selu", init: str = "lecun_normal", batchnorm: bool = False,
             **kw) -> "NetworkSpec":
        """The lecture demo's network: 784 inputs, 51 hidden layers (Dense(512) then 50 x Dense(256)), Dense(10).

        52 weight matrices in all, counting the readout. The defaults are the
        commands' one default network (SELU with ``lecun_normal`` weights, the
        SNN paper's recipe); :meth:`seed` is the same shape under its old name.
        """
        return cls.seed(activation, init, batchnorm, **kw)

    @classmethod
    def seed(cls, activation: str = "relu", init: str = "glorot_uniform", batchnorm: bool = False, **kw) -> "NetworkSpec":
        """The lecture demo's network (old name; prefer :meth:`demo`): 784 -> Dense(512) -> 50 x Dense(256) -> Dense(10).

        51 hidden layers, 52 weight matrices counting the readout; defaults: the
        demo's run 1 (ReLU, ``glorot_uniform``).
        """
        return cls.stack(
            SEED_DEPTH,
            SEED_WIDTH,
            input_dim=SEED_INPUT,
            first_width=SEED_FIRST,
            activation=activation,
            init=init,
            batchnorm=batchnorm,
            out_features=kw.pop("out_features", SEED_CLASSES),
            **kw,
        )

    @classmethod
    def from_module(cls, model) -> "NetworkSpec":
        """The spec of a sequential MLP-like torch model, with its weights' actual per-layer variances.

        Reads the model's leaf modules in registration order: ``Linear`` layers,
        one activation of the registry as modules (``nn.ReLU``, ``nn.SELU``,
        ``nn.Tanh``, ...), optional ``Dropout``/``AlphaDropout`` after each
        activation, optional ``BatchNorm1d``/``LayerNorm`` (affine at identity)
        before layers 2.. and the readout (the lecture demo's placement), and an optional
        readout ``Linear`` last. ``layer_sigma_w2`` is ``fan_in`` times each
        layer's mean squared weight, ``layer_sigma_b2`` its mean squared bias
        (:mod:`propagate.module_spec`). Raises :class:`UserError` naming the
        first module the spec cannot represent.
        """
        from propagate.module_spec import spec_fields

        return cls(**spec_fields(model))

    def with_(self, **changes) -> "NetworkSpec":
        """A copy with some fields changed."""
        return replace(self, **changes)

    # -- derived ------------------------------------------------------------
    @property
    def depth(self) -> int:
        """Number of hidden (activation) layers."""
        return len(self.widths) - 1

    @property
    def input_dim(self) -> int:
        return self.widths[0]

    @property
    def act(self) -> Activation:
        return get_activation(self.activation)

    @property
    def initializer(self) -> Init:
        return get_init(self.init)

    def fans(self) -> list[tuple[int, int]]:
        """``(fan_in, fan_out)`` of every hidden weight layer."""
        return [(self.widths[i], self.widths[i + 1]) for i in range(self.depth)]

    def sigma_w2(self) -> list[float]:
        """Effective ``sigma_w^2 = fan_in Var(w)`` of every hidden weight layer."""
        if self.layer_sigma_w2 is not None:
            return list(self.layer_sigma_w2)
        init = self.initializer
        return [init.sigma_w2(fi, fo) for fi, fo in self.fans()]

    def sigma_b2(self) -> list[float]:
        """Bias variance of every hidden layer."""
        if self.layer_sigma_b2 is not None:
            return list(self.layer_sigma_b2)
        if self.bias_var is not None:
            return [float(self.bias_var)] * self.depth
        init = self.initializer
        return [init.bias_var(fi) for fi, _ in self.fans()]

    def label(self) -> str:
        """A short label, e.g. ``selu/lecun_normal`` or ``relu/glorot_uniform+BN``."""
        if self.name:
            return self.name
        s = f"{self.act.name}/{self.initializer.name}"
        if self.batchnorm:
            s += "+BN"
        if self.dropout:
            s += f"+drop{self.dropout:g}"
        if self.alpha_dropout:
            s += f"+adrop{self.alpha_dropout:g}"
        if self.layernorm:
            s += "+LN"
        if self.residual:
            s += f"+res{self.residual:g}"
        if self.layer_sigma_w2 is not None or self.layer_sigma_b2 is not None:
            s += "+per_layer_sigma"
        return s

    def compile(self, *, readout: bool = False) -> list:
        """The ordered layer operations of this network (:func:`propagate.layers.compile_spec`)."""
        return compile_spec(self, readout=readout)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["widths"] = list(self.widths)
        d["depth"] = self.depth
        d["label"] = self.label()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "NetworkSpec":
        keys = {f for f in cls.__dataclass_fields__}
        return cls(**{k: (tuple(v) if k == "widths" else v) for k, v in d.items() if k in keys})

    def validate(self) -> None:
        """Raise :class:`UserError` on an impossible spec."""
        if len(self.widths) < 2:
            raise UserError("a network needs an input dimension and at least one hidden layer (depth >= 1)")
        if any(w < 1 for w in self.widths):
            raise UserError(f"widths must be >= 1, got {list(self.widths)[:8]}")
        get_activation(self.activation)
        get_init(self.init)
        if self.bias_var is not None and (not math.isfinite(self.bias_var) or self.bias_var < 0):
            raise UserError(f"bias variance must be >= 0, got {self.bias_var}")
        for name in ("dropout", "alpha_dropout"):
            rate = getattr(self, name)
            if not 0 <= rate < 1:
                raise UserError(f"{name.replace('_', ' ')} rate must be in [0, 1), got {rate}")
        if self.dropout and self.alpha_dropout:
            raise UserError("use either dropout or alpha dropout, not both")
        if not (math.isfinite(self.residual) and 0 <= self.residual <= 1):
            raise UserError(f"residual weight R must be in (0, 1] (0 = off), got {self.residual}")
        if self.layernorm and self.batchnorm:
            raise UserError("use either batchnorm or layernorm, not both")
        if not math.isfinite(self.input_var) or self.input_var < 0:
            raise UserError(f"input variance must be >= 0, got {self.input_var}")
        if not math.isfinite(self.input_mean):
            raise UserError(f"input mean must be finite, got {self.input_mean}")
        if self.out_features is not None and self.out_features < 1:
            raise UserError(f"readout width must be >= 1, got {self.out_features}")
        for name in ("layer_sigma_w2", "layer_sigma_b2"):
            vals = getattr(self, name)
            if vals is not None and (len(vals) != self.depth or not all(math.isfinite(v) and v >= 0 for v in vals)):
                raise UserError(f"{name} needs {self.depth} finite values >= 0 (one per hidden layer), got {list(vals)[:8]}")


def same_architecture(a: NetworkSpec, b: NetworkSpec) -> bool:
    """Whether ``a`` and ``b`` describe the same layers and differ at most in ``init`` (and name).

    Such specs can be members of one batched model (:func:`build_model` with
    ``specs``): only how each member's weights are drawn differs.
    """
    return a.with_(init=b.init) == b


def build_model(spec: NetworkSpec, seed: int | None = 0, *, seeds=None, specs=None, dtype=None, device=None):
    """The torch training model of ``spec`` for one seed or an ensemble (module docstring: the interface).

    ``seeds``: a sequence of ints, one network per entry (stacked along a
    leading dimension); without it ``seeds = [seed]``. ``seed=None`` draws a
    fresh random seed. Weights follow ``spec.init``, biases ``spec.bias_var``.

    ``specs``: one spec per seed (default ``spec`` for every one), each of
    ``spec``'s architecture (:func:`same_architecture`; :class:`UserError`
    otherwise): member ``i`` is the network ``(specs[i], seeds[i])``, its
    weights drawn by its own initializer, equal to ``build_model(specs[i],
    seeds[i])``'s. Configurations that differ only in initialization so train
    as one ensemble (:func:`propagate.train.train_group`); seeds may then
    repeat (one per configuration). ``model.specs`` lists the members' specs.
    """
    if seeds is None:
        if seed is None:
            import random

            seed = random.SystemRandom().randrange(2**63)
        seeds = [int(seed)]
    seeds = [int(k) for k in seeds]
    if not seeds:
        raise UserError("an ensemble needs at least one seed")
    if specs is not None:
        specs = list(specs)
        if len(specs) != len(seeds):
            raise UserError(f"give one spec per seed: {len(specs)} specs for {len(seeds)} seeds")
        for s in specs:
            if not same_architecture(spec, s):
                raise UserError(f"{s.label()} cannot be a member of a batched model of {spec.label()}: members "
                                "may differ only in their initializer")
    return build_network(spec, seeds, specs=specs, dtype=dtype, device=device)
