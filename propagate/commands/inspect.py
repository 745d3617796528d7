"""`propagate inspect`: per-layer statistics of your own torch model, theory alongside where it applies."""

from __future__ import annotations

import argparse
import sys

from propagate.commands import _args
from propagate.commands._output import add_output_arguments, check_outputs, clean_table, emit, to_stdout
from propagate.errors import UserError
from propagate.io import atomic_write_bytes, run_metadata
from propagate.targets import inspect_target

NAME = "inspect"
HELP = "per-layer statistics of any torch model (yours, or torchvision's), with mean-field theory where it applies"
DESCRIPTION = """\
Build your model from TARGET, a callable with no arguments that returns an nn.Module
(package.module:callable or path/to/file.py:callable), --networks times under torch seeds
--seed.. (your own initialization is what gets sampled), run --inputs inputs through each
and print one row per leaf-module call (execution order; a module called twice gives two
rows): output mean, variance and second moment pooled over units, positions and inputs,
the correlation between input pairs, the gradient norm of a random readout of the output
(or --loss cross-entropy on the labels), dead and saturated shares of activations, fan_in
and sigma_w2 = fan_in x mean(w^2) of weight layers, with standard errors across networks.

Mean-field theory goes alongside where it reaches: sequential MLP-like models (Linear,
one activation, Dropout/AlphaDropout, BatchNorm1d/LayerNorm) through their NetworkSpec,
and plain CNN stacks (stride-1 convolutions with size-preserving zero or circular
padding, one activation) through the CNN variance map (Xiao et al. 2018). One line says
which module stops the theory and why. Flag !: |measured - theory| > 4 SE + finite-width
allowance, as in `propagate simulate`.

examples:
  propagate inspect torchvision.models:resnet18 --input-shape 3,64,64 --csv r.csv
  propagate inspect mlp.py:build --dataset mnist-5k --networks 4 --csv m.csv --plot m.png
"""

DATASETS = ("mnist-5k", "mnist", "fashion-mnist")


def shape(text: str) -> tuple[int, ...]:
    """An input shape without the batch dimension, e.g. ``3,64,64`` (whole numbers >= 1)."""
    parts = [t.strip() for t in text.split(",")]
    if not parts or not all(parts):
        raise argparse.ArgumentTypeError(f"expects sizes like 3,64,64, got {text!r}")
    dims = tuple(_args.positive_int(t) for t in parts)
    if len(dims) > 4:
        raise argparse.ArgumentTypeError(f"at most 4 dimensions after the batch, got {text!r}")
    return dims


def add_arguments(parser):
    parser.add_argument("target", metavar="TARGET", help="package.module:callable or path/to/file.py:callable")
    g = parser.add_argument_group("inputs (exactly one)")
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", choices=DATASETS, help="[0,1]-scaled images (flattened when the first layer is Linear)")
    src.add_argument("--input", metavar="FILE.npy", help="a .npy array [N, ...] used as it is (no scaling)")
    src.add_argument("--input-shape", type=shape, metavar="C,H,W", help="standard Gaussian inputs of this shape")
    g.add_argument("--inputs", type=_args.int_in(2, 100_000, "inputs per network"), default=128, metavar="N",
                   help="inputs per network (default 128)")
    g = parser.add_argument_group("networks")
    g.add_argument("--networks", type=_args.int_in(1, 1000), default=1, metavar="N",
                   help="call TARGET N times under torch seeds --seed..--seed+N-1 (default 1)")
    g.add_argument("--seed", type=_args.nonneg_int, default=0, help="first torch seed (default 0)")
    g.add_argument("--reinit", metavar="INIT",
                   help="redraw each network's weights: 'reset' (reset_parameters()) or an initializer, e.g. "
                        "lecun_normal, delta_orthogonal")
    g.add_argument("--mode", choices=("train", "eval"), help="set the model's mode (default: as TARGET returns it)")
    g.add_argument("--loss", choices=("readout", "cross-entropy"), default="readout",
                   help="gradient of a random readout (default) or of the summed cross-entropy on --dataset labels")
    g.add_argument("--device", type=_args.device, default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    g.add_argument("--threads", type=_args.threads, default=None, metavar="T", help="torch CPU threads")
    g = add_output_arguments(parser, what="the table (one row per module call)")
    g.add_argument("--plot", metavar="FILE.png", type=_args.png_file,
                   help="output variance and gradient norm per module, bands over networks, theory overlaid")
    g.add_argument("--quiet", action="store_true", help="no table on stdout")
    g.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def _pm(v, se, digits=3) -> str:
    import math

    if v is None or not math.isfinite(float(v)):
        return ""
    s = f"{v:.{digits}g}"
    return s + (f"±{se:.2g}" if se is not None and math.isfinite(float(se)) else "")


def format_table(table) -> str:
    """The compact per-module table printed on stdout."""
    from tabulate import tabulate

    rows = []
    for r in clean_table(table).to_dict("records"):
        flag = ("!" + r["disagree_in"]) if r.get("disagree") else ""
        dead, sat = r.get("dead_frac"), r.get("saturated_frac")
        rows.append([r["index"], r["module"] or "(model)", r["type"], r["shape"],
                     _pm(r["out_var"], r.get("out_var_se")), _pm(r.get("theory_out_var"), None),
                     _pm(r["corr"], r.get("corr_se"), 2), _pm(r["grad_norm"], r.get("grad_norm_se")),
                     _pm(r.get("theory_grad_norm"), None),
                     "" if dead != dead else f"{100 * dead:.1f}", "" if sat != sat else f"{100 * sat:.1f}",
                     flag + ("" if r.get("finite", True) else " NONFINITE")])
    headers = ["#", "module", "type", "shape", "out_var±se", "theory", "corr", "grad_norm±se", "theory", "dead%",
               "sat%", "flag"]
    return tabulate(rows, headers=headers, disable_numparse=True, stralign="right")


def run(args) -> int:

    check_outputs(args)
    quiet = args.quiet or to_stdout(args)
    if args.loss == "cross-entropy" and not args.dataset:
        raise UserError("--loss cross-entropy needs the labels of --dataset")
    _args.check_device(args.device)
    device = args.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"

    res = inspect_target(args.target, dataset=args.dataset, input_file=args.input, input_shape=args.input_shape,
                         inputs=args.inputs, loss=None if args.loss == "readout" else args.loss,
                         networks=args.networks, seed=args.seed, reinit=args.reinit, mode=args.mode, device=device,
                         threads=args.threads, progress=not (quiet or args.no_progress))
    meta = run_metadata(**res.meta)
    table = res.table
    if not quiet:
        m = res.meta
        print(f"{args.target}: {len(table)} module calls; {m['inputs'][0]} {m['input']} inputs x {m['networks']} "
              f"network{'s' * (m['networks'] > 1)}, {m['device']}, {m['seconds']:.2f} s")
        print(format_table(table))
        print(res.theory_note)
        if table["tap"].ne("").any():
            if not bool(table["judged"].any()):
                print("(one network: no standard error, so agreement with theory is not judged; use --networks 2+)")
            else:
                print(f"flag !: |measured - theory| > 4 SE + finite-width allowance; "
                      f"{int(table['disagree'].sum())} of {int(table['tap'].ne('').sum())} rows with theory flagged")
    if not bool(table["finite"].all()):
        first = int(table.loc[~table["finite"].astype(bool), "index"].min())
        print(f"propagate: warning: non-finite outputs from row {first} on", file=sys.stderr)
    emit(args, table, meta)
    if args.plot:
        from propagate.inspect_plot import plot_inspect
        from propagate.simulate_plot import figure_png

        fig = plot_inspect(table, title=f"{args.target}: {res.meta['networks']} network(s) x {res.meta['inputs'][0]} inputs")
        atomic_write_bytes(args.plot, figure_png(fig))
    return 0
