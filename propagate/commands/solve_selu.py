"""``propagate solve-selu``: SELU's lambda and alpha for a fixed point, to any precision."""

from __future__ import annotations

import argparse

from propagate.commands._args import (finite_float, float_list, positive_float, positive_int, probability,
                                      refuse_unused, seed)
from propagate.errors import UserError
from propagate.io import to_json
from propagate.limits import check_mc_samples, check_stability_grid

NAME = "solve-selu"
HELP = "derive SELU's lambda and alpha for a fixed point (mean, var), with Jacobian and checks"
DESCRIPTION = """\
Derive SELU's (lambda, alpha) from the Gaussian moment integrals (sympy) so that
(mean, var) is a fixed point of the layer's mean/variance map at omega = 0,
tau = 1, solve to --digits significant digits (mpmath), and report the closed
forms, the Jacobian of (mu, nu) -> (mu~, nu~), its eigenvalues and spectral norm.
--var is a variance, not a standard deviation.

examples:
  propagate solve-selu                         # (0, 1): the published constants
  propagate solve-selu --mean 0 --var 2 --json
  propagate solve-selu --dropout 0.05          # alpha-dropout a, b
  propagate solve-selu --stability --check     # Theorem 1 box, Monte Carlo
"""


def _range(text: str) -> tuple[float, float]:
    values = float_list(text)
    if len(values) != 2 or values[0] > values[1]:
        raise argparse.ArgumentTypeError(f"need LOW,HIGH with LOW <= HIGH, got {text!r}")
    return values[0], values[1]


def _positive_range(text: str) -> tuple[float, float]:
    lo, hi = _range(text)
    if lo <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return lo, hi


#: selu.VAR_RANGE, repeated so that --help needs no sympy (a test keeps them equal).
VAR_RANGE = (1e-12, 1e12)


def _variance(text: str) -> float:
    """The fixed point's variance, within :data:`VAR_RANGE` (where the solution is accurate to --digits)."""
    value = positive_float(text)
    if not VAR_RANGE[0] <= value <= VAR_RANGE[1]:
        raise argparse.ArgumentTypeError(f"must be from {VAR_RANGE[0]:g} to {VAR_RANGE[1]:g}, got {text}")
    return value


def _digits(text: str) -> int:
    value = positive_int(text)
    if value > 2000:
        raise argparse.ArgumentTypeError(f"must be <= 2000, got {text}")
    return value


def _grid(text: str) -> int:
    """Grid points per axis: the lattice has grid**4 points, bounded by memory."""

    value = positive_int(text)
    try:
        check_stability_grid(value)
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def _samples(text: str) -> int:
    """Monte Carlo samples: at least 2 (a variance needs two), bounded by memory."""

    value = positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"must be >= 2 (a variance and its standard error need two), got {text}")
    try:
        check_mc_samples(value)
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mean", type=finite_float, default=0.0, help="fixed-point mean mu* (default 0)")
    parser.add_argument("--var", type=_variance, default=1.0,
                        help=f"fixed-point variance nu*, {VAR_RANGE[0]:g} to {VAR_RANGE[1]:g} (default 1)")
    parser.add_argument("--digits", type=_digits, default=30, help="significant digits, 1-2000 (default 30)")
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print every number as a string at full precision")
    out.add_argument("--latex", action="store_true", help="print the equations as LaTeX")
    parser.add_argument("--dropout", type=probability, metavar="RATE", help="alpha-dropout constants for this drop rate")
    st = parser.add_argument_group("stability region (Theorem 1 box by default)")
    st.add_argument("--stability", action="store_true", help="largest spectral norm of J over a (mu, omega, nu, tau) box")
    st.add_argument("--mu-range", type=_range, default=(-0.1, 0.1), metavar="LO,HI", help="default -0.1,0.1")
    st.add_argument("--omega-range", type=_range, default=(-0.1, 0.1), metavar="LO,HI", help="default -0.1,0.1")
    st.add_argument("--nu-range", type=_positive_range, default=(0.8, 1.5), metavar="LO,HI", help="default 0.8,1.5")
    st.add_argument("--tau-range", type=_positive_range, default=(0.95, 1.1), metavar="LO,HI", help="default 0.95,1.1")
    st.add_argument("--grid", type=_grid, default=11, help="grid points per axis before refinement (default 11)")
    mc = parser.add_argument_group("Monte Carlo check")
    mc.add_argument("--check", action="store_true", help="push samples of N(0, var) through the solved SELU")
    mc.add_argument("--seed", type=seed, default=0, help="random seed, 0 to 2^63 - 1 (default 0)")
    mc.add_argument("--samples", type=_samples, default=1_000_000, help="number of samples (default 10^6)")


_MAX_FORM = 200  # longer closed forms (mean != 0) are left to --json and --latex


def _short(expr) -> str:
    text = str(expr)
    return text if len(text) <= _MAX_FORM else f"({len(text)} characters: see --json or --latex)"


def _text(sol, dropout, stability, check) -> str:
    from tabulate import tabulate

    f = sol.fmt
    rows = [
        ["lambda", f(sol.lambda_)],
        ["alpha", f(sol.alpha)],
        ["closed form lambda", _short(sol.closed_form_lambda)],
        ["closed form alpha", _short(sol.closed_form_alpha)],
        ["J[mu~, mu]", f(sol.jacobian[0][0])],
        ["J[mu~, nu]", f(sol.jacobian[0][1])],
        ["J[nu~, mu]", f(sol.jacobian[1][0])],
        ["J[nu~, nu]", f(sol.jacobian[1][1])],
        ["eigenvalues", ", ".join(f(e) for e in sol.eigenvalues)],
        ["spectral radius", f(sol.spectral_radius)],
        ["spectral norm", f(sol.spectral_norm)],
        ["fixed point", "attracting" if sol.attracting else "not attracting (spectral radius >= 1)"],
        ["residuals (mu~-mean, nu~-var)", ", ".join(sol.fmt_small(r) for r in sol.residuals)],
    ]
    title = f"SELU with fixed point mean={sol.mean:g}, var={sol.var:g} (omega=0, tau=1), {sol.digits} digits"
    parts = [title, tabulate(rows, tablefmt="simple", disable_numparse=True)]
    if dropout is not None:
        parts.append(
            f"alpha dropout, rate {dropout['rate']:g} (keep q = {f(dropout['q'])})\n"
            + tabulate(
                [["alpha' = -lambda*alpha", f(dropout["alpha_prime"])], ["a", f(dropout["a"])], ["b", f(dropout["b"])]],
                tablefmt="simple",
                disable_numparse=True,
            )
        )
    if stability is not None:
        arg = stability["argmax"]
        box = stability["box"]
        parts.append(
            "stability over the box "
            + ", ".join(f"{k} in [{lo:g}, {hi:g}]" for k, (lo, hi) in box.items())
            + f" ({stability['grid']}^4 grid + L-BFGS-B)\n"
            + tabulate(
                [
                    ["max spectral norm of J", f"{stability['max_spectral_norm']:.6f}"],
                    ["attained at", ", ".join(f"{k}={v:.6g}" for k, v in arg.items())],
                    ["min spectral norm on grid", f"{stability['min_spectral_norm']:.6f}"],
                    ["contracting on the box", "yes" if stability["max_spectral_norm"] < 1 else "no"],
                ],
                tablefmt="simple",
                disable_numparse=True,
            )
        )
    if check is not None:
        parts.append(
            f"Monte Carlo: {check['samples']} samples of N(0, {sol.var:g}) through this SELU (seed {check['seed']})\n"
            + tabulate(
                [
                    ["mean", f"{check['target_mean']:.6g}", f"{check['mean']:.6f}", f"{check['mean_se']:.6f}", f"{check['mean_z']:+.2f}"],
                    ["var", f"{check['target_var']:.6g}", f"{check['var']:.6f}", f"{check['var_se']:.6f}", f"{check['var_z']:+.2f}"],
                ],
                headers=["", "target", "measured", "std. error", "z"],
                tablefmt="simple",
                disable_numparse=True,
            )
        )
    return "\n\n".join(parts) + "\n"


def _latex(sol) -> str:
    import sympy as sp

    from propagate import selu

    maps = selu.selu_moment_maps()
    lines = [
        r"\tilde\mu(\mu,\omega,\nu,\tau) = " + sp.latex(maps["mean"]),
        r"\mathbb{E}[y^2] = " + sp.latex(maps["second_moment"]),
        r"\tilde\nu = \mathbb{E}[y^2] - \tilde\mu^2",
        rf"\tilde\mu(\mu^*, 0, \nu^*, 1) = {sol.mean:g},\quad \tilde\nu(\mu^*, 0, \nu^*, 1) = {sol.var:g}",
        r"\alpha = " + sp.latex(sol.closed_form_alpha) + " = " + sol.fmt(sol.alpha),
        r"\lambda = " + sp.latex(sol.closed_form_lambda) + " = " + sol.fmt(sol.lambda_),
        r"\mathcal{J} = \begin{pmatrix} "
        + r" \\ ".join(" & ".join(sol.fmt(v) for v in row) for row in sol.jacobian)
        + r" \end{pmatrix},\quad \|\mathcal{J}\|_2 = "
        + sol.fmt(sol.spectral_norm),
    ]
    return "\n\n".join(lines) + "\n"


def _json(sol, dropout, stability, check) -> str:

    out = sol.to_dict()
    if dropout is not None:
        out["dropout"] = {k: (v if k == "rate" else sol.fmt(v)) for k, v in dropout.items()}
        out["dropout"]["rate"] = repr(float(dropout["rate"]))
    if stability is not None:
        out["stability"] = {
            "max_spectral_norm": repr(stability["max_spectral_norm"]),
            "argmax": {k: repr(v) for k, v in stability["argmax"].items()},
            "min_spectral_norm": repr(stability["min_spectral_norm"]),
            "grid": stability["grid"],
            "box": {k: [repr(lo), repr(hi)] for k, (lo, hi) in stability["box"].items()},
        }
    if check is not None:
        out["check"] = {k: (v if isinstance(v, int) else repr(v)) for k, v in check.items()}
    return to_json(out)


def check_options(args: argparse.Namespace) -> None:
    """Refuse options that would be ignored: box and grid without --stability, sampling without --check, and
    anything beyond the equations with --latex."""
    stability = ("--stability", args.stability)
    check = ("--check", args.check)
    refuse_unused(args, {"--mu-range": stability, "--omega-range": stability, "--nu-range": stability,
                         "--tau-range": stability, "--grid": stability, "--samples": check, "--seed": check})
    if args.latex:
        extra = [flag for flag, on in (("--stability", args.stability), ("--check", args.check),
                                       ("--dropout", args.dropout is not None)) if on]
        if extra:

            raise UserError(f"--latex prints the equations of lambda, alpha and the Jacobian only; drop {extra[0]} "
                            f"(or use --json, which includes it)")


def run(args: argparse.Namespace) -> int:
    from propagate import selu

    check_options(args)
    sol = selu.solve_selu(mean=args.mean, var=args.var, digits=args.digits)
    dropout = stability = check = None
    if args.dropout is not None:
        dropout = selu.alpha_dropout_params(args.dropout, sol.lambda_, sol.alpha, args.mean, args.var, args.digits)
    if args.stability:
        box = {"mu": args.mu_range, "omega": args.omega_range, "nu": args.nu_range, "tau": args.tau_range}
        stability = selu.stability_box(sol.lambda_, sol.alpha, box=box, grid=args.grid)
    if args.check:
        check = selu.monte_carlo_check(sol.lambda_, sol.alpha, args.mean, args.var, samples=args.samples, seed=args.seed)
    if args.json:
        print(_json(sol, dropout, stability, check), end="")
    elif args.latex:
        print(_latex(sol), end="")
    else:
        print(_text(sol, dropout, stability, check), end="")
    return 0
