"""``propagate theory``: mean-field fixed points, depth scales, phase and per-layer predictions."""

from __future__ import annotations

import argparse
import sys

from propagate.commands._args import (finite_float, nonneg_int, output_file_or_stdout, positive_float, positive_int,
                                      refuse_unused)
from propagate.commands._spec_args import add_spec_arguments, spec_from_args
from propagate.errors import UserError
from propagate.io import run_metadata, to_json, write_table

NAME = "theory"
HELP = "mean-field theory: q*, c*, chi_1, depth scales, phase and the per-layer table"
DESCRIPTION = """\
Mean-field (infinite-width) predictions for a fully connected network.

With --sigma-w2 the network is a uniform stack of --depth layers of --width
units with N(0, sigma_w2/fan_in) weights (sigma_w2 is a weight *variance*
scale: Var(w) = sigma_w2 / fan_in). With --init NAME the seed's widths are used
(--input-dim 784 -> --first-width 512 -> 256 ...; --width N: every hidden layer N) and every layer's
sigma_w2 follows from the initializer and its fan-in/fan-out; the fixed-point
summary then uses the last layer's sigma_w2.

Printed: q* (fixed point of the pre-activation second moment), c* (of the pair
correlation), chi_1 = sigma_w2 E[phi'(h)^2] at q*, the depth scales xi_q, xi_c
(Schoenholz et al. 2017) and the phase (ordered chi_1 < 1, critical, chaotic
chi_1 > 1), then one row per layer (row 0 = the input).

--finite-width adds the spread across networks for one fixed input
(var_log_norm, var_log_grad: variances of ln||z^l||^2 and ln||g^l||^2). Where
the finite-width theory does not reach the network (BatchNorm, LayerNorm,
residual blocks, dropout) those columns are empty, a line says why, and the
spread is sampled instead (sampled_var_log_norm, ... with standard errors, over
--networks networks; --networks also samples where the theory reaches).

examples:
  propagate theory --activation tanh --sigma-w2 1.5 --sigma-b2 0.05 --depth 50
  propagate theory --activation selu --init lecun_normal --depth 50
  propagate theory --activation relu --init glorot_uniform --batchnorm --csv relu_bn.csv
  propagate theory --activation relu --sigma-w2 3 --depth 1000 --csv -
  propagate theory --activation relu --sigma-w2 2 --width 100 --depth 50 --finite-width
  propagate theory --activation selu --init lecun_normal --batchnorm --depth 20 --width 128 --finite-width
  propagate theory --activation relu --init glorot_uniform --depth 100 --width 256 --residual 0.5
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    w = parser.add_mutually_exclusive_group(required=True)
    w.add_argument("--sigma-w2", type=positive_float, metavar="S",
                   help="weight variance scale sigma_w^2 = fan_in Var(w): a uniform stack of --depth layers of --width units")
    w.add_argument("--init", metavar="NAME",
                   help="initializer (glorot_uniform, lecun_normal, he_normal, normal:S, ...), the network's own widths")
    add_spec_arguments(parser, activation="tanh", init=None, depth=50, init_flag=False)
    parser.add_argument("--input-corr", type=finite_float, default=None, metavar="C",
                        help="uncentered correlation of two inputs (default mean^2/(mean^2+var), independent inputs)")
    fw = parser.add_argument_group("finite width")
    fw.add_argument("--finite-width", action="store_true",
                    help="add var_log_norm and var_log_grad: the variance across networks of ln||z^l||^2 and of the "
                         "log squared gradient norm for one fixed input (propagate.finite_width)")
    fw.add_argument("--networks", type=positive_int, default=None, metavar="S",
                    help="with --finite-width: also sample the spread over S networks (default: sample 32 only where "
                         "the theory does not reach the network)")
    fw.add_argument("--seed", type=nonneg_int, default=0, help="random seed of the sampled spread (default 0)")
    parser.add_argument("--rows", type=positive_int, default=None, metavar="N",
                        help="print at most N table rows, evenly spaced (default: all up to 60 layers, else 25)")
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print summary and table as JSON")
    out.add_argument("--csv", type=output_file_or_stdout, metavar="FILE", help="write the per-layer table as CSV (plus FILE.meta.json); '-' for stdout")


def build(args):
    """The (spec, sigma_w2, sigma_b2) the arguments describe."""
    refuse_unused(args, {"--rows": ("a printed table (--json and --csv - print none)", not args.json and args.csv != "-")})
    if args.sigma_w2 is not None:
        n = args.width or 256
        sb2 = 0.0 if args.sigma_b2 is None else args.sigma_b2
        args.sigma_b2 = sb2
        spec = spec_from_args(args, widths=(n,) * (args.depth + 1), init=f"normal:{args.sigma_w2!r}")
        return spec, args.sigma_w2, sb2
    spec = spec_from_args(args, init=args.init)
    return spec, spec.sigma_w2()[-1], spec.sigma_b2()[-1]


def _fmt(x) -> str:
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, float):
        return f"{x:.6g}"
    return str(x)


def run(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from propagate.theory import analyze

    spec, sw2, sb2 = build(args)
    if args.networks is not None and not args.finite_width:
        raise UserError("--networks samples the finite-width spread: add --finite-width")
    res = analyze(spec.activation, sw2, sb2, spec.depth, spec=spec, input_corr=args.input_corr)
    note, sampled, sample_note = None, False, ""
    if args.finite_width:
        from propagate.finite_width import SPREAD_TABLE_INPUTS, SPREAD_TABLE_NETWORKS, spread_table

        spread, note = spread_table(spec, table=res.table, networks=args.networks, seed=args.seed)
        sample_note = (f"(sampled_*: the spread over {args.networks or SPREAD_TABLE_NETWORKS} sampled networks, "
                       f"{SPREAD_TABLE_INPUTS} fixed inputs, seed {args.seed}; standard errors in the CSV/JSON)")
        spread = spread.set_index("layer")
        for col in spread.columns:
            res.table[col] = res.table["layer"].map(spread[col]).astype(float)
        sampled = "sampled_var_log_norm" in spread.columns
    table = res.table
    meta = run_metadata(spec=spec.to_dict(), summary=res.summary(),
                        **({"finite_width": {"theory_note": note, "sampled": sampled, "seed": args.seed}}
                           if args.finite_width else {}))
    if args.json:
        sys.stdout.write(to_json({"meta": meta, **res.to_dict(), **({"theory_note": note} if note else {})}))
        return 0
    if args.csv == "-":
        sys.stdout.write(table.to_csv(index=False, float_format="%.10g"))
        return 0
    print(format_summary(res, spec))
    cols = ["layer", "width", "sigma_w2", "pre_var", "post_mean", "post_var", "post_q", "corr", "grad_norm"]
    if args.finite_width:
        cols += ["var_log_norm", "var_log_grad"] + (["sampled_var_log_norm", "sampled_var_log_grad"] if sampled else [])
    if table["diverged"].any():
        cols.append("diverged")
    n = args.rows or (len(table) if spec.depth <= 60 else 26)
    if n >= len(table):
        shown = table
    else:
        shown = table.iloc[sorted({round(i * (len(table) - 1) / max(n - 1, 1)) for i in range(n)})]
    print()
    print(tabulate(shown[cols], headers=cols, floatfmt=".6g", showindex=False))
    if len(shown) < len(table):
        print(f"({len(shown)} of {len(table)} rows shown; --csv FILE or --rows N for more)")
    if note:
        print(f"(var_log_norm, var_log_grad empty: {note})")
    if sampled:
        print(sample_note)
    if args.csv:
        path = write_table(table, args.csv, meta)
        print(f"wrote {path}")
    return 0


def format_summary(res, spec) -> str:
    """The summary block ``propagate theory`` prints above the table."""
    lines = [f"{spec.label()}: depth {spec.depth}, widths {_widths(spec)}",
             f"fixed-point analysis at sigma_w2 = {res.sigma_w2:.6g}, sigma_b2 = {res.sigma_b2:.6g}"]
    if res.fixed_point:
        lines.append(f"  q*     = {res.q_star:.10g}   (pre-activation second moment)")
    else:
        lines.append(f"  q*     = inf: no finite fixed point; q grows by x{res.growth:.6g} per layer at the end of the stack")
    lines += [
        f"  c*     = {res.c_star:.10g}",
        f"  chi_1  = {res.chi_1:.10g}   (sigma_w2 E[phi'(h)^2]; squared gradient norm factor per layer)",
        f"  chi_c  = {res.chi_c:.10g}   (c-map slope at c*)",
        f"  xi_q   = {res.xi_q:.6g}   xi_c = {res.xi_c:.6g}   (depth scales, layers)",
        f"  phase  = {res.phase}",
    ]
    if spec.batchnorm or spec.layernorm or spec.residual or spec.dropout or spec.alpha_dropout:
        lines.append("  (the fixed-point summary is the plain layer's; the table includes normalization, residual and dropout)")
    return "\n".join(lines)


def _widths(spec) -> str:
    w = spec.widths
    if len(w) <= 6:
        return " -> ".join(map(str, w))
    return f"{w[0]} -> {w[1]} -> ... -> {w[-1]}"
