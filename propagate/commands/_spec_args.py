"""One way to describe a network on the command line: the flags every command that builds a network shares.

The same quantity has the same flag and the same default everywhere
(``theory``, ``spectrum``, ``simulate``, ``train``, ``trainability``, and
``sweep`` through them):

- ``--activation`` (``-a``);
- the weights: ``--init NAME`` (a Keras-named initializer, per layer from its
  fan-in/fan-out) or ``--sigma-w2 S`` (Gaussian ``N(0, S / fan_in)`` in every
  layer, i.e. ``--init normal:S``); one or the other;
- ``--sigma-b2`` the bias variance (``--bias-var`` is an alias);
- the shape: ``--depth`` counts hidden layers, ``--width`` is the hidden width
  (all hidden layers unless ``--first-width`` is given), ``--input-dim`` the
  input's; ``--residual R``, ``--layernorm``, ``--batchnorm``, dropout.

**The default network** (:data:`DEFAULT_NETWORK`), used by every command for
every flag left unset: SELU with ``lecun_normal`` weights (sigma_w^2 = 1, no
bias), 784 inputs and 51 hidden layers, Dense(512) then 50 x Dense(256): the
lecture demo's shape with the SNN paper's recipe. It is the one network whose
every layer sits at its mean-field fixed point (mean 0, variance 1), so every
lens gives finite, comparable numbers on it without further flags. ``train``
and ``trainability`` start from a preset's network when one is named.

:func:`spec_from_args` turns the parsed flags into a
:class:`~propagate.spec.NetworkSpec`. Standard library only at import.
"""

from __future__ import annotations

import argparse

from propagate.commands import _args
from propagate.errors import UserError

#: The lecture demo's shape: 784 inputs -> Dense(512) -> 50 x Dense(256), 51 hidden layers (the default).
DEMO_INPUT, DEMO_FIRST, DEMO_WIDTH, DEMO_DEPTH = 784, 512, 256, 51
#: Old names of the same numbers (kept for one release).
SEED_INPUT, SEED_FIRST, SEED_WIDTH = DEMO_INPUT, DEMO_FIRST, DEMO_WIDTH
DEFAULT_ACTIVATION, DEFAULT_INIT = "selu", "lecun_normal"
#: The default network in words (every command's --help says it).
DEFAULT_NETWORK = (f"{DEFAULT_ACTIVATION} with {DEFAULT_INIT} weights (sigma_w2 = 1, no bias), {DEMO_INPUT} inputs, "
                   f"{DEMO_DEPTH} hidden layers (Dense({DEMO_FIRST}) then {DEMO_DEPTH - 1} x Dense({DEMO_WIDTH})): "
                   f"the lecture demo's shape with the SNN paper's recipe")


def residual_weight(text: str) -> float:
    """R of a residual block, 0 < R <= 1."""
    v = _args.finite_float(text)
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"the residual weight R must satisfy 0 < R <= 1, got {text}")
    return v


def add_spec_arguments(parser, *, inputs: bool = True, title: str = "network", base: str = "",
                       square: bool = False):
    """Add the network flags to ``parser`` (an argument group titled ``title``); returns the group.

    Every flag defaults to ``None`` (unset); :func:`spec_from_args` fills unset
    flags from a base network (a preset's) or :data:`DEFAULT_NETWORK`. ``base``
    names the base in ``--help`` (e.g. ``"the preset's, else "``). ``square``:
    the command uses square layers (``--width`` everywhere, the input too).
    ``inputs=False`` omits the Gaussian-input flags.
    """
    g = parser.add_argument_group(title)

    def default(v) -> str:
        return f" (default: {base}{v})"

    g.add_argument("--activation", "-a", default=None, metavar="NAME",
                   help="activation, e.g. relu, tanh, selu, leaky_relu:0.2, elu:alpha=1" + default(DEFAULT_ACTIVATION))
    w = g.add_mutually_exclusive_group()
    w.add_argument("--init", default=None, metavar="NAME",
                   help="weight initializer of every layer (glorot_uniform, lecun_normal, he_normal, normal:S, "
                        "orthogonal:S, ...), sigma_w2 from each layer's fan-in/fan-out" + default(DEFAULT_INIT))
    w.add_argument("--sigma-w2", type=_args.positive_float, default=None, metavar="S",
                   help="instead of --init: Gaussian weights of variance S / fan_in in every layer "
                        "(sigma_w^2 = fan_in Var(w) = S; the same as --init normal:S)")
    g.add_argument("--sigma-b2", "--bias-var", dest="sigma_b2", type=_args.nonneg_float, default=None, metavar="V",
                   help="bias variance sigma_b^2, a variance independent of fan-in (default: 0)")
    g.add_argument("--depth", type=_args.depth, default=None, metavar="L",
                   help="hidden layers (weight layers before the readout)" + default(DEMO_DEPTH))
    if square:
        g.add_argument("--width", type=_args.width, default=None, metavar="N",
                       help=f"units of every layer, the input included (square layers){default(DEMO_WIDTH)}")
    else:
        g.add_argument("--width", type=_args.width, default=None, metavar="N",
                       help=f"hidden width: every hidden layer N unless --first-width is given "
                            f"(default: {base}the demo's {DEMO_FIRST} then {DEMO_WIDTH})")
        g.add_argument("--first-width", type=_args.width, default=None, metavar="N",
                       help=f"width of the first hidden layer (default: {base}{DEMO_FIRST}, or --width when given)")
        g.add_argument("--input-dim", type=_args.width, default=None, metavar="N",
                       help="input dimension" + default(DEMO_INPUT))
    g.add_argument("--batchnorm", action=argparse.BooleanOptionalAction, default=None,
                   help="train-mode BatchNorm on the input of hidden layers 2..depth (and the readout): the "
                        "lecture demo's placement")
    g.add_argument("--layernorm", action=argparse.BooleanOptionalAction, default=None,
                   help="LayerNorm (per sample over units, affine at identity) where BatchNorm goes")
    g.add_argument("--residual", type=residual_weight, default=None, metavar="R",
                   help="residual blocks x' = sqrt(1-R^2) x + R branch(x) on every hidden layer whose input and output "
                        "widths match (0 < R <= 1; default off)")
    g.add_argument("--dropout", type=_args.probability, default=None, metavar="P",
                   help="dropout rate after each hidden layer (default 0)")
    g.add_argument("--alpha-dropout", type=_args.probability, default=None, metavar="P",
                   help="alpha-dropout rate after each hidden layer, for SELU (default 0)")
    if inputs:
        g.add_argument("--input-mean", type=_args.finite_float, default=None, metavar="M",
                       help="per-feature mean of Gaussian inputs (default 0)")
        g.add_argument("--input-var", type=_args.nonneg_float, default=None, metavar="V",
                       help="per-feature variance of Gaussian inputs (default 1)")
    return g


#: The flags of :func:`add_spec_arguments` that describe a network (one given: a custom network).
SPEC_FLAGS = ("activation", "init", "sigma_w2", "depth", "width", "first_width", "input_dim", "sigma_b2", "batchnorm",
              "layernorm", "residual", "dropout", "alpha_dropout")


def custom_network(args) -> bool:
    """Whether any network flag is set (``train``/``trainability``: a custom network, or flags over a preset's)."""
    return any(getattr(args, k, None) is not None for k in SPEC_FLAGS)


def weights_of(args, *, orthogonal: bool = False) -> str | None:
    """The initializer the flags name: ``--init``, or ``normal:S`` (``orthogonal:S``) for ``--sigma-w2 S``; ``None``: unset."""
    sw2 = getattr(args, "sigma_w2", None)
    if sw2 is not None:
        return f"{'orthogonal' if orthogonal else 'normal'}:{sw2!r}"
    return getattr(args, "init", None)


def spec_from_args(args, *, base=None, widths=None, init=None, **fixed):
    """The :class:`~propagate.spec.NetworkSpec` the flags of :func:`add_spec_arguments` describe.

    Flags left unset take ``base``'s value (a preset's spec) or the default
    network's (module docstring). ``widths`` (a full ``(input, n_1, ...,
    n_depth)`` tuple) and ``init`` override the shape and initializer;
    ``fixed`` sets other spec fields (e.g. ``out_features``).
    """
    from propagate.spec import NetworkSpec

    def pick(name, fallback):
        v = getattr(args, name, None)
        if v is not None:
            return v
        return getattr(base, name) if base is not None else fallback

    if widths is None:
        widths = _widths(args, base)
    kw = dict(
        activation=pick("activation", DEFAULT_ACTIVATION),
        init=init or weights_of(args) or (base.init if base is not None else DEFAULT_INIT),
        bias_var=args.sigma_b2 if getattr(args, "sigma_b2", None) is not None else (base.bias_var if base else None),
        # --layernorm takes BatchNorm's place: it replaces a preset's BN unless --batchnorm is given too
        batchnorm=bool(pick("batchnorm", False)) and not (getattr(args, "layernorm", None) and getattr(args, "batchnorm", None) is None),
        layernorm=bool(pick("layernorm", False)),
        residual=float(pick("residual", 0.0)),
        dropout=float(pick("dropout", 0.0)),
        alpha_dropout=float(pick("alpha_dropout", 0.0)),
        input_mean=float(pick("input_mean", 0.0)),
        input_var=float(pick("input_var", 1.0)),
    )
    if base is not None:
        kw.setdefault("out_features", base.out_features)
    kw.update(fixed)
    return NetworkSpec(widths=tuple(widths), **kw)


def depth_of(args, base=None) -> int:
    """``--depth``, else the base's, else the default network's (:data:`DEMO_DEPTH`)."""

    depth = args.depth if getattr(args, "depth", None) is not None else (base.depth if base is not None else DEMO_DEPTH)
    if not isinstance(depth, int) or depth < 1:
        raise UserError(f"depth must be a whole number >= 1, got {depth!r}")
    return depth


def square_widths(args) -> tuple:
    """``(N,) * (depth + 1)``: square layers of ``--width`` (default :data:`DEMO_WIDTH`), the input included."""
    n = getattr(args, "width", None) or DEMO_WIDTH
    return (n,) * (depth_of(args) + 1)


def _widths(args, base) -> tuple:
    depth = depth_of(args, base)
    input_dim = getattr(args, "input_dim", None) or (base.widths[0] if base is not None else DEMO_INPUT)
    width = getattr(args, "width", None)
    first = getattr(args, "first_width", None)
    if width is None:
        width = base.widths[-1] if base is not None and base.depth > 1 else DEMO_WIDTH
        first = first or (base.widths[1] if base is not None else DEMO_FIRST)
    else:
        first = first or width
    return (input_dim, first, *([width] * (depth - 1)))
