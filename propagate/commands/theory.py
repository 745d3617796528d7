"""``propagate theory``: mean-field fixed points, depth scales, phase and per-layer predictions."""

from __future__ import annotations

import argparse
import sys

from propagate.commands._args import finite_float, nonneg_int, positive_int, refuse_unused
from propagate.commands._output import (NOISE, add_output_arguments, at_precision, check_outputs, clean_table, emit,
                                        to_stdout)
from propagate.commands._spec_args import DEFAULT_NETWORK, add_spec_arguments, spec_from_args
from propagate.errors import UserError
from propagate.io import run_metadata

NAME = "theory"
HELP = "mean-field theory: q*, c*, chi_1, depth scales, phase and the per-layer table"
DESCRIPTION = """\
Mean-field (infinite-width) predictions for a fully connected network.

The network is described by the flags every command shares (below; unset flags
take the default network's: <<default>>). Weights: --init NAME (each layer's
sigma_w2 from the initializer and its fan-in/fan-out) or --sigma-w2 S
(N(0, S/fan_in) in every layer: sigma_w2 is a weight *variance* scale,
Var(w) = sigma_w2 / fan_in). The fixed-point summary uses the last hidden
layer's sigma_w2 and sigma_b2.

Printed: q* (fixed point of the pre-activation second moment), c* (of the pair
correlation), chi_1 = sigma_w2 E[phi'(h)^2] at q*, the depth scales xi_q, xi_c
(Schoenholz et al. 2017) and the phase (ordered chi_1 < 1, critical, chaotic
chi_1 > 1), then one row per layer (row 0 = the input). Numbers are printed at
the precision they have: a mean below 1.4e-14 x the root of its second moment,
a correlation below 1.4e-14, is round-off of 0 and prints as 0 (--json/--csv
keep every digit).

--finite-width adds the spread across networks for one fixed input
(var_log_norm, var_log_grad: variances of ln||z^l||^2 and ln||g^l||^2). Where
the finite-width theory does not reach the network (BatchNorm, LayerNorm,
residual blocks, dropout) those columns are empty, a line says why, and the
spread is sampled instead (sampled_var_log_norm, ... with standard errors, over
--networks networks; --networks also samples where the theory reaches).

examples:
  propagate theory                                   # the default network
  propagate theory --activation tanh --depth 10
  propagate theory --activation tanh --sigma-w2 1.5 --sigma-b2 0.05 --depth 50
  propagate theory --activation relu --init glorot_uniform --batchnorm --csv relu_bn.csv
  propagate theory --activation relu --sigma-w2 3 --depth 1000 --csv -
  propagate theory --activation relu --sigma-w2 2 --width 100 --depth 50 --finite-width
  propagate theory --batchnorm --depth 20 --width 128 --finite-width
  propagate theory --activation relu --init glorot_uniform --depth 100 --width 256 --residual 0.5
""".replace("<<default>>", str(DEFAULT_NETWORK))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_spec_arguments(parser)
    parser.add_argument("--input-corr", type=finite_float, default=None, metavar="C",
                        help="uncentered correlation of two inputs (default mean^2/(mean^2+var), independent inputs)")
    fw = parser.add_argument_group("finite width")
    fw.add_argument("--finite-width", action="store_true",
                    help="add var_log_norm and var_log_grad: the variance across networks of ln||z^l||^2 and of the "
                         "log squared gradient norm for one fixed input (propagate.finite_width)")
    fw.add_argument("--networks", type=positive_int, default=None, metavar="S",
                    help="with --finite-width: also sample the spread over S random networks (default: sample 32 "
                         "only where the theory does not reach the network)")
    fw.add_argument("--seed", type=nonneg_int, default=0, help="random seed of the sampled spread (default 0)")
    parser.add_argument("--rows", type=positive_int, default=None, metavar="N",
                        help="print at most N table rows, evenly spaced (default: all up to 60 layers, else 25)")
    add_output_arguments(parser, what="the fixed-point summary and the per-layer table",
                         csv_help="the per-layer table as CSV to FILE.csv (plus FILE.csv.meta.json); '-' for "
                                  "standard output")


def build(args):
    """The (spec, sigma_w2, sigma_b2) the arguments describe: the summary's are the last hidden layer's."""
    refuse_unused(args, {"--rows": ("a printed table (--json and --csv - print none)", not to_stdout(args))})
    spec = spec_from_args(args)
    return spec, spec.sigma_w2()[-1], spec.sigma_b2()[-1]


def run(args: argparse.Namespace) -> int:
    from propagate.theory import analyze

    check_outputs(args)
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
    if "diverged" in table and table["diverged"].astype(bool).any():
        first = int(table.loc[table["diverged"].astype(bool), "layer"].iloc[0])
        print(f"propagate: warning: the predicted signal diverges (inf/NaN) at layer {first}; the table shows "
              f"where", file=sys.stderr)
    meta = run_metadata(spec=spec.to_dict(), summary=res.summary(),
                        **({"finite_width": {"theory_note": note, "sampled": sampled, "seed": args.seed}}
                           if args.finite_width else {}))
    document = {"meta": meta, **res.to_dict(), **({"theory_note": note} if note else {})}
    if to_stdout(args):
        emit(args, table, meta, document)
        return 0
    print(format_summary(res, spec))
    _print_table(table, spec, args, sampled)
    if note:
        print(f"(var_log_norm, var_log_grad empty: {note})")
    if sampled:
        print(sample_note)
    for path in emit(args, table, meta, document):
        print(f"wrote {path}")
    return 0


def _print_table(table, spec, args, sampled: bool) -> None:
    """The per-layer table at the precision of its numbers (:func:`propagate.commands._output.clean_table`)."""
    from tabulate import tabulate

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
    print(tabulate(clean_table(shown)[cols], headers=cols, floatfmt=".6g", showindex=False))
    if len(shown) < len(table):
        print(f"({len(shown)} of {len(table)} rows shown; --csv FILE or --rows N for more)")


def _depth_scale(xi: float) -> str:
    """A depth scale ``-1 / ln chi``: ``inf`` where ``ln chi`` is below the precision of ``chi`` (:data:`NOISE`)."""
    return "inf" if not xi < 1 / NOISE else f"{xi:.6g}"


def format_summary(res, spec) -> str:
    """The summary block ``propagate theory`` prints above the table (numbers at their precision: module ``_output``)."""
    q_scale = spec.input_mean ** 2 + spec.input_var + max(spec.sigma_b2())  # the input's second moment, and the bias's
    lines = [f"{spec.label()}: depth {spec.depth}, widths {_widths(spec)}",
             f"fixed-point analysis at sigma_w2 = {res.sigma_w2:.6g}, sigma_b2 = {res.sigma_b2:.6g}"]
    if res.fixed_point:
        lines.append(f"  q*     = {at_precision(res.q_star, q_scale):.10g}   (pre-activation second moment)")
    else:
        lines.append(f"  q*     = inf: no finite fixed point; q grows by x{res.growth:.6g} per layer at the end of the stack")
    lines += [
        f"  c*     = {at_precision(res.c_star):.10g}",
        f"  chi_1  = {res.chi_1:.10g}   (sigma_w2 E[phi'(h)^2]; squared gradient norm factor per layer)",
        f"  chi_c  = {res.chi_c:.10g}   (c-map slope at c*)",
        f"  xi_q   = {_depth_scale(res.xi_q)}   xi_c = {_depth_scale(res.xi_c)}   (depth scales, layers)",
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
