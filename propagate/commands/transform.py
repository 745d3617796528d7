"""``propagate transform``: DKS / TAT activation transforms for a plain network of given depth."""

from __future__ import annotations

import argparse

from propagate.commands._args import int_in, positive_float, refuse_unused
from propagate.io import to_json

NAME = "transform"
HELP = "Deep Kernel Shaping / Tailored Activation Transformation of an activation for a given depth"
DESCRIPTION = """\
Transform an activation so that a plain (no skip connections, no normalization)
network of --depth layers keeps its kernel well shaped, printing the equations
solved, the parameters (mpmath, --digits) and the achieved values. Local maps at
unit weight variance: Q(q) = E[phi_hat(sqrt(q) x)^2], C(c) = E[phi_hat(u)
phi_hat(v)] with corr(u, v) = c; C_f is C composed --depth times.

  --method dks (Martens et al. 2021): phi_hat = gamma (phi(a x + b) + d) with
      Q(1) = 1, Q'(1) = 1, C(0) = 0 and C_f'(1) = zeta (default 1.5).
  --method tat (Zhang et al. 2022): for leaky_relu the negative slope with
      C_f(0) = eta (default 0.9) and gamma = sqrt(2/(1+s^2)) (Q(1) = 1); for
      smooth activations Q(1) = 1, Q'(1) = 1, C'(1) = 1 and C_f''(1) = tau
      (default 0.3).

The activation string works with --activation of theory, simulate and train.
--zeta goes with dks, --eta with tat on leaky_relu/relu, --tau with tat on a smooth
activation; any of them elsewhere is refused. Each run is bounded to about a minute:
--digits at most 80, and for tat on leaky_relu depth x (digits + 15) at most 1.5e6.

examples:
  propagate transform --method dks --activation gelu --depth 50
  propagate transform --method tat --activation leaky_relu --depth 50 --eta 0.9 --json
  propagate transform --method tat --activation softplus --depth 100 --tau 0.3
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", choices=["dks", "tat"], required=True, help="dks or tat")
    parser.add_argument("--activation", required=True, metavar="NAME", help="base activation (gelu, tanh, softplus, leaky_relu, ...)")
    parser.add_argument("--depth", type=int_in(1, 100_000, "composed maps"), default=50, help="nonlinear layers in the network (default 50)")
    parser.add_argument("--zeta", type=positive_float, default=1.5, help="DKS: the network's C_f'(1), > 1 (default 1.5)")
    parser.add_argument("--eta", type=positive_float, default=0.9, help="TAT leaky_relu: the network's C_f(0), in (0, 1) (default 0.9)")
    parser.add_argument("--tau", type=positive_float, default=0.3, help="TAT smooth: the network's C_f''(1) (default 0.3)")
    parser.add_argument("--digits", type=int_in(1, 80, "the quadrature's cost grows faster than digits^2; 80 take up "
                                                        "to a minute"),
                        default=20, help="significant digits, 1-80 (default 20)")
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="every number as a string at full precision")
    out.add_argument("--activation-only", action="store_true", help="print only the activation string")


def _text(res) -> str:
    from tabulate import tabulate

    f = res.fmt
    parts = [
        f"{res.method.upper()} transform of {res.base} for depth {res.depth} ({res.digits} digits)",
        "equations solved:\n" + "\n".join("  " + e for e in res.equations),
        "parameters\n" + tabulate([[k, f(v)] for k, v in res.parameters.items()], tablefmt="simple", disable_numparse=True),
        "achieved\n" + tabulate([[k, f(v), f(res.targets[k]) if k in res.targets else ""] for k, v in res.achieved.items()],
                                headers=["", "value", "target"], tablefmt="simple", disable_numparse=True),
        "activation: " + res.activation,
    ]
    return "\n\n".join(parts) + "\n"


def _refuse_unused(args: argparse.Namespace) -> None:
    """--zeta is DKS's, --eta TAT's for leaky_relu, --tau TAT's for smooth activations: any other is ignored."""
    from propagate.gaussian import base_activation

    leaky = base_activation(args.activation).family in ("leaky_relu", "relu")
    refuse_unused(args, {"--zeta": ("--method dks", args.method == "dks"),
                         "--eta": ("--method tat and a leaky_relu or relu activation", args.method == "tat" and leaky),
                         "--tau": ("--method tat and a smooth activation", args.method == "tat" and not leaky)})


def run(args: argparse.Namespace) -> int:
    from propagate.transforms import dks_transform, tat_transform

    _refuse_unused(args)
    if args.method == "dks":
        res = dks_transform(args.activation, args.depth, zeta=args.zeta, digits=args.digits)
    else:
        res = tat_transform(args.activation, args.depth, eta=args.eta, tau=args.tau, digits=args.digits)
    if args.activation_only:
        print(res.activation)
    elif args.json:
        print(to_json(res.to_dict()), end="")
    else:
        print(_text(res), end="")
    return 0
