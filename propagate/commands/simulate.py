"""`propagate simulate`: per-layer statistics of deep random networks, theory alongside."""

from __future__ import annotations

import math
import sys
import warnings

from propagate.commands import _args
from propagate.commands._output import add_output_arguments, check_outputs, clean_table, emit, to_stdout
from propagate.commands._spec_args import (DEFAULT_NETWORK, DEMO_DEPTH, DEMO_FIRST, DEMO_INPUT, DEMO_WIDTH,
                                           add_spec_arguments, spec_from_args)
from propagate.errors import UserError
from propagate.io import run_metadata
from propagate.limits import check_seeds, require_memory, simulation_bytes

NAME = "simulate"
HELP = "sample deep random networks and measure per-layer statistics (with theory alongside)"
DESCRIPTION = """\
Sample --networks independent random networks, push --inputs inputs through each
(batched), and print per layer: pre-activation mean and variance (mean +- standard
error across networks), the mean-field theory's variance and the ratio, the
correlation c between input pairs, the gradient norm of a random linear readout,
the share of dead units and a flag where simulation and theory disagree beyond
statistical error plus a finite-width allowance. Inf/NaN is reported (first
layer) and the run still exits 0.

The network: the flags every command shares; unset flags take the default
network's (<<default>>). --width W makes every hidden layer W wide. Inputs:
--dataset gaussian (default; --input-mean, --input-var) or a dataset's
[0,1]-scaled pixels.

examples:
  propagate simulate --depth 50 --init lecun_uniform
  propagate simulate --activation selu --sigma-w2 1 --depth 10 --networks 4 --inputs 200 --dataset mnist-5k --json
  propagate simulate --activation relu --init he_normal --batchnorm --csv relu_bn.csv --plot relu_bn.png
""".replace("<<default>>", str(DEFAULT_NETWORK))

DATASETS = ("gaussian", "mnist-5k", "mnist", "fashion-mnist")
#: Old name of :data:`DATASETS`.
INPUTS = DATASETS


def add_arguments(parser):
    g = add_spec_arguments(parser, inputs=False)
    shape = g.add_argument("--demo-shape", action="store_true",
                           help=f"the lecture demo's shape, {DEMO_INPUT} -> Dense({DEMO_FIRST}) -> "
                                f"{DEMO_DEPTH - 1} x Dense({DEMO_WIDTH}) ({DEMO_DEPTH} hidden layers; the default): "
                                f"refuses --depth/--width")
    _args.deprecated_alias(g, "--seed-shape", shape)
    g = parser.add_argument_group("inputs")
    data = g.add_argument("--dataset", default="gaussian", choices=DATASETS,
                          help="gaussian (default) or a dataset's [0,1]-scaled pixels")
    _args.deprecated_alias(g, "--input", data)
    g.add_argument("--input-mean", type=_args.finite_float, default=None, metavar="M", help="gaussian inputs: per-feature mean (default 0)")
    g.add_argument("--input-var", type=_args.nonneg_float, default=None, metavar="V", help="gaussian inputs: per-feature variance (default 1)")
    g = parser.add_argument_group("sampling")
    _args.add_renamed(g, "--inputs", "--samples", type=_args.positive_int, default=2000, metavar="N",
                      help="inputs per network (default 2000)")
    _args.add_renamed(g, "--networks", "--seeds", type=_args.positive_int, default=4, metavar="S",
                      help="independent random networks (default 4)")
    g.add_argument("--seed", type=_args.seed, default=0, help="random seed, 0 to 2^63 - 1 (default 0)")
    g.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    g.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    g.add_argument("--threads", type=_args.threads, default=None, metavar="T", help="torch CPU threads (default: torch's choice; 1 is faster for small runs on a busy machine)")
    g.add_argument("--jacobian", action="store_true", help="also report the input-output Jacobian's singular value spread (network 0)")
    g = add_output_arguments(parser, what="every layer's statistics")
    g.add_argument("--plot", metavar="FILE.png", type=_args.png_file, help="variance and mean per layer, simulation bands and theory")
    g.add_argument("--quiet", action="store_true", help="no table on stdout (warnings still go to stderr)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def build_spec(args):
    """The NetworkSpec the arguments describe (raises UserError on conflicts)."""
    if args.dataset != "gaussian" and (args.input_mean is not None or args.input_var is not None):
        raise UserError("--input-mean/--input-var apply to gaussian inputs only (--dataset gaussian)")
    if args.demo_shape and (args.depth is not None or args.width is not None or args.first_width is not None
                            or args.input_dim is not None):
        raise UserError("--demo-shape fixes the widths; drop --depth/--width/--first-width/--input-dim")
    return spec_from_args(args)


def _pm(v, se, digits=3):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    s = f"{v:.{digits}g}"
    if se is not None and not (isinstance(se, float) and math.isnan(se)):
        s += f"±{se:.2g}"
    return s


def _g(v, digits=3):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return f"{v:.{digits}g}"


def format_table(table) -> str:
    """The compact per-layer table printed on stdout."""
    from tabulate import tabulate

    has_theory = "theory_pre_var" in table.columns
    has_spread = "var_log_norm" in table.columns
    rows = []
    for r in clean_table(table).to_dict("records"):
        row = [
            int(r["layer"]),
            int(r["width"]),
            _pm(r["pre_mean"], r.get("pre_mean_se")),
            _pm(r["pre_var"], r.get("pre_var_se")),
        ]
        if has_theory:
            row += [_g(r.get("theory_pre_var")), _g(r.get("ratio"))]
        dead = r.get("dead_frac")
        flag = []
        if r.get("diverged"):
            flag.append("DIVERGED")
        if has_theory and r.get("disagree"):
            flag.append("!" + r.get("disagree_in", ""))
        row += [
            _g(r["corr"]),
            _pm(r["grad_norm"], r.get("grad_norm_se")),
        ]
        if has_spread:
            row += [_pm(r.get("var_log_norm"), r.get("var_log_norm_se")), _g(r.get("theory_var_log_norm"))]
        row += [
            "" if dead != dead else f"{100 * dead:.1f}",
            " ".join(flag),
        ]
        rows.append(row)
    headers = ["layer", "width", "pre_mean±se", "pre_var±se"]
    if has_theory:
        headers += ["theory pre_var", "ratio"]
    headers += ["corr", "grad_norm±se"]
    if has_spread:
        headers += ["var ln|h|²±se", "theory"]
    headers += ["dead%", "flag"]
    return tabulate(rows, headers=headers, disable_numparse=True, stralign="right")


def run(args) -> int:
    check_outputs(args)
    spec = build_spec(args)
    check_seeds(args.seed, args.networks)  # every network's seed, seed .. seed + networks - 1
    if args.device == "cpu":  # the library checks too; here the message names this command's flags
        require_memory(simulation_bytes(spec.widths, args.inputs, args.networks, 8 if args.dtype == "float64" else 4),
                       f"simulating {args.networks} networks x {args.inputs} inputs", "use fewer --inputs or --networks")

    from propagate.simulate import simulate

    quiet = args.quiet or to_stdout(args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the divergence warning is printed below as one line
        res = simulate(spec, samples=args.inputs, seeds=args.networks, seed=args.seed, dtype=args.dtype,
                       device=args.device, jacobian=args.jacobian, input=args.dataset, threads=args.threads,
                       progress=not (quiet or args.no_progress))
    table = res.table
    meta = run_metadata(**res.meta)
    if not quiet:
        _print_results(res, spec)
    if res.diverged_at is not None:
        print(f"propagate: warning: signal diverged (inf/NaN) at layer {res.diverged_at}; table stops there",
              file=sys.stderr)
    extra = []
    if args.plot:
        from propagate.simulate_plot import figure_png, plot_layers

        fig = plot_layers(table, title=f"{spec.label()}, {res.meta['seeds']} networks x {res.meta['samples']} inputs")
        extra.append((args.plot, figure_png(fig)))
    emit(args, table, meta, extra=extra)  # the plot, --json and --csv as one: all of them or none
    return 0


def _print_results(res, spec) -> None:
    """The header line, the per-layer table and the notes under it."""
    table, m = res.table, res.meta
    print(f"{spec.label()}: widths {spec.widths[0]} -> {spec.widths[1]}"
          + (f" -> {spec.depth - 1} x {spec.widths[2]}" if spec.depth > 1 else "")
          + f"; {m['samples']} {m['input']} inputs x {m['seeds']} networks, {m['dtype']}, {m['seconds']:.2f} s")
    print(format_table(table))
    if res.theory is None:
        print("(no theory columns: propagate.theory is not available for this spec)")
    elif not bool(table["judged"].all()):
        print("(one network: no standard error across networks, so agreement with theory is not judged; "
              "use --networks 2 or more)")
    else:
        n_dis = int(table["disagree"].sum())
        print(f"flag !: |simulation - theory| > 4 SE + finite-width allowance (sum of 1/width over the layers "
              f"crossed); {n_dis} of {len(table)} layers flagged")
    for cols, why in res.theory_notes.items():
        print(f"({cols} empty: {why})")
    if res.flushed["mattered"]:
        ls = res.flushed["subnormal_layers"]
        print(f"note: the signal fell into {m['dtype']}'s subnormal range (layers {ls[0]}..{ls[-1]}); subnormals "
              f"were flushed to zero (they make CPU arithmetic slow on many CPUs), so those rows are ~0")
    if res.jacobian:
        j = res.jacobian
        print(f"input-output Jacobian (network 0, {j['inputs']} inputs, {j['shape'][0]}x{j['shape'][1]}): "
              f"s_max {j['s_max']:.3g}, s_min {j['s_min']:.3g}, log10(s_max/s_min) {j['log10_spread']:.3g}, "
              f"mean s^2 {j['mean_s2']:.3g}"
              + (f", zero to {m['dtype']} precision {100 * j['zero_frac']:.3g}% of s, "
                 f"smallest other s {j['s_min_nonzero']:.3g}" if "zero_frac" in j else ""))
