"""One way to describe a network on the command line: the flags of ``theory``, ``simulate``, ``train`` (and later commands).

The same quantity has the same flag everywhere: ``--sigma-b2`` is the bias
variance (``--bias-var`` is an alias), ``--depth`` counts hidden layers,
``--width`` is the hidden width (all hidden layers unless ``--first-width`` is
given), ``--residual R`` and ``--layernorm`` add the layer kinds of
:mod:`propagate.layers`. :func:`spec_from_args` turns the parsed flags into a
:class:`~propagate.spec.NetworkSpec`. Standard library only at import.
"""

from __future__ import annotations

import argparse

from propagate.commands import _args

#: The seed experiments' shape: 784 inputs -> 512 -> 256 -> ... (the default without --width).
SEED_INPUT, SEED_FIRST, SEED_WIDTH = 784, 512, 256


def residual_weight(text: str) -> float:
    """R of a residual block, 0 < R <= 1."""
    v = _args.finite_float(text)
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"the residual weight R must satisfy 0 < R <= 1, got {text}")
    return v


def add_spec_arguments(parser, *, activation: str | None = "relu", init: str | None = "glorot_uniform",
                       depth: int | None = 50, init_flag: bool = True, inputs: bool = True, title: str = "network"):
    """Add the network flags to ``parser`` (an argument group titled ``title``); returns the group.

    ``activation``, ``init`` and ``depth`` are this command's defaults (stated
    in ``--help``; ``None``: the flag has no default, e.g. a preset supplies it).
    ``init_flag=False`` leaves ``--init`` to the command (``theory`` pairs it
    with ``--sigma-w2``); ``inputs=False`` omits the Gaussian-input flags.
    """
    g = parser.add_argument_group(title)

    def default(v, what="") -> str:
        return f" (default {v}{what})" if v is not None else ""

    g.add_argument("--activation", "-a", default=activation, metavar="NAME",
                   help="activation, e.g. relu, tanh, selu, leaky_relu:0.2, elu:alpha=1" + default(activation))
    if init_flag:
        g.add_argument("--init", default=init, metavar="NAME",
                       help="weight initializer of every layer (glorot_uniform, lecun_normal, he_normal, normal:S, ...)"
                       + default(init))
    g.add_argument("--depth", type=_args.depth, default=depth, metavar="L", help="hidden layers" + default(depth))
    g.add_argument("--width", type=_args.width, default=None, metavar="N",
                   help=f"hidden width: all hidden layers N unless --first-width is given "
                        f"(default: the seed's {SEED_FIRST} then {SEED_WIDTH})")
    g.add_argument("--first-width", type=_args.width, default=None, metavar="N",
                   help=f"width of the first hidden layer (default {SEED_FIRST}, or --width when given)")
    g.add_argument("--input-dim", type=_args.width, default=None, metavar="N", help=f"input dimension (default {SEED_INPUT})")
    g.add_argument("--sigma-b2", "--bias-var", dest="sigma_b2", type=_args.nonneg_float, default=None, metavar="V",
                   help="bias variance sigma_b^2, a variance independent of fan-in (default: the initializer's, zero)")
    g.add_argument("--batchnorm", action=argparse.BooleanOptionalAction, default=None,
                   help="train-mode BatchNorm on the input of hidden layers 2..depth (and the readout): the seed's placement")
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


def spec_from_args(args, *, base=None, widths=None, init=None, **fixed):
    """The :class:`~propagate.spec.NetworkSpec` the flags of :func:`add_spec_arguments` describe.

    Flags left unset take ``base``'s value (a preset's spec) or the defaults.
    ``widths`` (a full ``(input, n_1, ..., n_depth)`` tuple) and ``init``
    override the shape and initializer (``theory --sigma-w2``); ``fixed`` sets
    other spec fields (e.g. ``out_features``).
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
        activation=pick("activation", "relu"),
        init=init or pick("init", "glorot_uniform"),
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


def _widths(args, base) -> tuple:
    from propagate.errors import UserError

    depth = args.depth if getattr(args, "depth", None) is not None else (base.depth if base is not None else 50)
    if not isinstance(depth, int) or depth < 1:
        raise UserError(f"depth must be a whole number >= 1, got {depth!r}")
    input_dim = getattr(args, "input_dim", None) or (base.widths[0] if base is not None else SEED_INPUT)
    width = getattr(args, "width", None)
    first = getattr(args, "first_width", None)
    if width is None:
        width = base.widths[-1] if base is not None and base.depth > 1 else SEED_WIDTH
        first = first or (base.widths[1] if base is not None else SEED_FIRST)
    else:
        first = first or width
    return (input_dim, first, *([width] * (depth - 1)))
