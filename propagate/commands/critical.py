"""``propagate critical``: the edge of chaos (chi_1 = 1) of an activation."""

from __future__ import annotations

import argparse

from propagate.commands._args import nonneg_float_list
from propagate.commands._output import add_output_arguments, check_outputs, emit, to_stdout
from propagate.commands._spec_args import DEFAULT_ACTIVATION
from propagate.io import run_metadata

#: Most bias variances one call traces: up to ~4 ms each (tanh, quadrature), so 10^4 is about 40 s.
MAX_POINTS = 10_000


def _sigma_b2_list(text: str) -> list[float]:
    values = nonneg_float_list(text)
    if len(values) > MAX_POINTS:
        raise argparse.ArgumentTypeError(f"{len(values)} bias variances would take up to {len(values) * 4e-3:.3g} s "
                                         f"(about 4 ms each); the limit is {MAX_POINTS}")
    return values

NAME = "critical"
HELP = "the critical sigma_w^2 (edge of chaos, chi_1 = 1) and q* there, for one or many sigma_b^2"
DESCRIPTION = """\
The weight variance scale sigma_w2 (= fan_in Var(w)) at which chi_1 =
sigma_w2 E[phi'(h)^2] = 1 at the fixed point q* of the length map, for each
bias variance sigma_b2: the order-chaos boundary of Schoenholz et al. 2017.
A list (0,0.05,0.1) or a range START:STOP:N traces the critical line.

For relu-like (positively homogeneous) activations chi_1 does not depend on q:
the critical sigma_w2 is 1/E[phi'^2] (relu: 2), with q* = inf for sigma_b2 > 0.
"nan" means no critical point exists (e.g. softplus). Bias variances up to
1e250 are answered for bounded activations (tanh, erf, sigmoid: q* is about
sigma_b2 there), up to 1e6 for unbounded ones (gelu, elu, selu, silu, ...:
beyond, the condition that fixes q* cancels below float64's precision);
larger ones are refused.

--activation defaults to the default network's (<<activation>>, as in every command).

examples:
  propagate critical --activation tanh --sigma-b2 0.05
  propagate critical --activation tanh --sigma-b2 0:0.5:11 --csv tanh_critical.csv
  propagate critical --sigma-b2 0:0.1:3 --json
""".replace("<<activation>>", str(DEFAULT_ACTIVATION))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--activation", "-a", default=DEFAULT_ACTIVATION, metavar="NAME",
                        help=f"activation (default {DEFAULT_ACTIVATION}, the default network's)")
    parser.add_argument("--sigma-b2", "--bias-var", dest="sigma_b2", type=_sigma_b2_list, default=[0.0], metavar="LIST",
                        help="bias variance(s): a value, a list a,b,c or a range START:STOP:N (default 0)")
    add_output_arguments(parser, what="the critical line (one row per sigma_b2)")


def run(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from propagate.activations import get_activation
    from propagate.theory import critical_line

    check_outputs(args)
    act = get_activation(args.activation)
    df = critical_line(act, args.sigma_b2)
    df.insert(0, "activation", act.name)
    meta = run_metadata(activation=act.name)
    if not to_stdout(args):
        print(f"edge of chaos of {act.name} (chi_1 = 1); sigma_w2 = fan_in Var(w), gain = sqrt(sigma_w2)")
        show = df.assign(gain=df["sigma_w2"] ** 0.5)[["sigma_b2", "sigma_w2", "q_star", "gain"]]
        print(tabulate(show, headers=["sigma_b2", "sigma_w2", "q*", "gain"], floatfmt=".10g", showindex=False))
    for path in emit(args, df, meta):
        print(f"wrote {path}")
    return 0
