"""`propagate simulate`: per-layer statistics of deep random networks, theory alongside."""

from __future__ import annotations

import math
import sys
import warnings

from propagate.commands import _args
from propagate.commands._spec_args import add_spec_arguments, spec_from_args
from propagate.errors import UserError
from propagate.io import atomic_write_bytes, run_metadata, write_table
from propagate.limits import check_seeds

NAME = "simulate"
HELP = "sample deep random networks and measure per-layer statistics (with theory alongside)"
DESCRIPTION = """\
Sample --seeds independent random networks, push --samples inputs through them
(batched), and print per layer: pre-activation mean and variance (mean +- standard
error across networks), the mean-field theory's variance and the ratio, the
correlation c between input pairs, the gradient norm of a random linear readout,
the share of dead units and a flag where simulation and theory disagree beyond
statistical error plus a finite-width allowance. Default shape: input 784, first
hidden layer 512, the rest 256 (--width W: all hidden layers W; --seed-shape: the
seed experiments' 784 -> 512 -> 50 x 256). Inf/NaN is reported (first layer) and the
run still exits 0. Example: propagate simulate --depth 50 --init lecun_uniform
"""

INPUTS = ("gaussian", "mnist-5k", "mnist", "fashion-mnist")


def add_arguments(parser):
    g = add_spec_arguments(parser, activation="selu", init="lecun_normal", depth=50, inputs=False)
    g.add_argument("--seed-shape", action="store_true", help="the seed experiments' hidden stack 784 -> 512 -> 50 x 256 (depth 51)")
    g = parser.add_argument_group("inputs")
    g.add_argument("--input", default="gaussian", choices=INPUTS, help="gaussian (default) or a dataset's [0,1]-scaled pixels")
    g.add_argument("--input-mean", type=_args.finite_float, default=None, metavar="M", help="gaussian inputs: per-feature mean (default 0)")
    g.add_argument("--input-var", type=_args.nonneg_float, default=None, metavar="V", help="gaussian inputs: per-feature variance (default 1)")
    g = parser.add_argument_group("sampling")
    g.add_argument("--samples", type=_args.positive_int, default=2000, metavar="N", help="inputs per network (default 2000)")
    g.add_argument("--seeds", type=_args.positive_int, default=4, metavar="S", help="independent networks (default 4)")
    g.add_argument("--seed", type=_args.seed, default=0, help="random seed, 0 to 2^63 - 1 (default 0)")
    g.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    g.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    g.add_argument("--threads", type=_args.threads, default=None, metavar="T", help="torch CPU threads (default: torch's choice; 1 is faster for small runs on a busy machine)")
    g.add_argument("--jacobian", action="store_true", help="also report the input-output Jacobian's singular value spread (network 0)")
    g = parser.add_argument_group("output")
    g.add_argument("--csv", metavar="FILE", type=_args.output_file, help="write every layer's statistics (+ FILE.meta.json)")
    g.add_argument("--json", metavar="FILE", type=_args.output_file, help="write rows and run metadata as JSON")
    g.add_argument("--plot", metavar="FILE.png", type=_args.png_file, help="variance and mean per layer, simulation bands and theory")
    g.add_argument("--quiet", action="store_true", help="no table on stdout (warnings still go to stderr)")


def build_spec(args):
    """The NetworkSpec the arguments describe (raises UserError on conflicts)."""
    if args.input != "gaussian" and (args.input_mean is not None or args.input_var is not None):
        raise UserError("--input-mean/--input-var apply to gaussian inputs only")
    if args.seed_shape:
        if args.depth != 50 or args.width is not None or args.first_width is not None:
            raise UserError("--seed-shape fixes the widths; drop --depth/--width")
        args.depth = 51
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
    for r in table.to_dict("records"):
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
    spec = build_spec(args)
    check_seeds(args.seed, args.seeds)  # every network's seed, seed .. seed + seeds - 1
    if args.plot and not str(args.plot).lower().endswith(".png"):
        raise UserError(f"--plot expects a .png file name, got {args.plot!r}")
    for opt in ("csv", "json"):
        path = getattr(args, opt)
        if path and not str(path).lower().endswith("." + opt):
            raise UserError(f"--{opt} expects a .{opt} file name, got {path!r}")

    from propagate.simulate import simulate

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the divergence warning is printed below as one line
        res = simulate(spec, samples=args.samples, seeds=args.seeds, seed=args.seed, dtype=args.dtype,
                       device=args.device, jacobian=args.jacobian, input=args.input, threads=args.threads,
                       progress=not args.quiet)
    table = res.table
    meta = run_metadata(**res.meta)

    if not args.quiet:
        m = res.meta
        print(f"{spec.label()}: widths {spec.widths[0]} -> {spec.widths[1]}"
              + (f" -> {spec.depth - 1} x {spec.widths[2]}" if spec.depth > 1 else "")
              + f"; {m['samples']} {m['input']} inputs x {m['seeds']} networks, {m['dtype']}, {m['seconds']:.2f} s")
        print(format_table(table))
        if res.theory is None:
            print("(no theory columns: propagate.theory is not available for this spec)")
        elif not bool(table["judged"].all()):
            print("(one network: no standard error across networks, so agreement with theory is not judged; "
                  "use --seeds 2 or more)")
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
                  + (f", zero to {res.meta['dtype']} precision {100 * j['zero_frac']:.3g}% of s, "
                     f"smallest other s {j['s_min_nonzero']:.3g}" if "zero_frac" in j else ""))
    if res.diverged_at is not None:
        print(f"propagate: warning: signal diverged (inf/NaN) at layer {res.diverged_at}; table stops there",
              file=sys.stderr)
    if args.csv:
        write_table(table, args.csv, meta)
    if args.json:
        write_table(table, args.json, meta)
    if args.plot:
        from propagate.simulate_plot import figure_png, plot_layers

        fig = plot_layers(table, title=f"{spec.label()}, {res.meta['seeds']} networks x {res.meta['samples']} inputs")
        atomic_write_bytes(args.plot, figure_png(fig))
    return 0
