"""``propagate self-normalize``: parameters that make any activation self-normalizing."""

from __future__ import annotations

import argparse

from propagate.commands._args import finite_float, int_in, positive_float, refuse_unused, split_list
from propagate.io import to_json

NAME = "self-normalize"
HELP = "SELU's derivation for any activation: gamma*(phi(a x + b) + d) with (mean, var) an attracting fixed point"
DESCRIPTION = """\
Solve for the parameters of phi_hat(x) = gamma * (phi(a x + b) + d) (family
affine) or of scale * elu(x; alpha) (family scale_alpha, the default for elu and
selu) that make (mean, var) a fixed point of the layer's mean/variance map at
normalized weights (omega = 0, tau = 1), to --digits significant digits
(mpmath: closed forms for relu/leaky_relu/elu, otherwise quadrature). Prints
the Jacobian of (mu, nu) -> (mu~, nu~), its spectral norm, whether the fixed
point attracts (checked again by iterating the map from nearby points), chi_1
(slope of the correlation map at c = 1) and the activation string for
--activation of theory, simulate and train. --var is a variance.

By default gamma and d are solved and the input shift b is chosen at each local
minimum of the Jacobian's spectral norm over b in [-2, 3] (a = 1): several
solutions are listed, the most contracting first (recommended). --b fixes b;
--solve gamma,b or gamma,a solves for that parameter instead of d (the others
fixed by --a, --b, --d; default a=1, b=0, d=0). See derivations/self-normalize.md.

examples:
  propagate self-normalize --activation elu            # SELU's lambda, alpha
  propagate self-normalize --activation gelu --json
  propagate self-normalize --activation tanh --b 0 --digits 50
  propagate self-normalize --activation gelu --solve gamma,b --mean 0 --var 1
  propagate simulate --activation "$(propagate self-normalize --activation gelu --activation-only)" --depth 50
"""


def _pair(text: str) -> tuple[str, str]:
    items = tuple(t.lower() for t in split_list(text, "need two parameter names like gamma,d; got {text!r}"))
    if len(items) != 2:
        raise argparse.ArgumentTypeError(f"need two parameter names like gamma,d; got {text!r}")
    return items


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--activation", required=True, metavar="NAME", help="base activation (gelu, silu, tanh, elu, relu, ...)")
    parser.add_argument("--family", choices=["affine", "scale_alpha"],
                        help="affine: gamma*(phi(a x + b) + d); scale_alpha: scale*elu(x; alpha) (default for elu/selu)")
    parser.add_argument("--mean", type=finite_float, default=0.0, help="fixed-point mean, |mean| <= 1e6 (default 0)")
    parser.add_argument("--var", type=positive_float, default=1.0, help="fixed-point variance, 1e-6 to 100 (default 1)")
    parser.add_argument("--digits", type=int_in(1, 200), default=30, help="significant digits, 1-200 (default 30)")
    parser.add_argument("--solve", type=_pair, metavar="P,Q", help="affine: the two parameters solved, gamma and one of d, b, a (default gamma,d)")
    for name, what in (("a", "input scale, 1e-6 <= |a| and |a| sqrt(var) <= 10"),
                       ("b", "input shift, |b| <= 1e6 (default: chosen)"), ("d", "output shift, |d| <= 1e6")):
        parser.add_argument(f"--{name}", type=finite_float, metavar="X", help=f"affine: fix the {what}")
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="every number as a string at full precision")
    out.add_argument("--latex", action="store_true", help="the equations and the recommended solution as LaTeX")
    out.add_argument("--activation-only", action="store_true", help="print only the recommended activation string")


def _text(res, check) -> str:
    from tabulate import tabulate

    parts = [f"{res.base}, family {res.family}: fixed point mean={res.mean:g}, var={res.var:g} (omega=0, tau=1), {res.digits} digits"]
    for i, s in enumerate(res.solutions):
        f = s.fmt
        rows = [[k + (" (solved)" if k in s.solved else " (chosen)" if k in s.chosen else ""), f(v)] for k, v in s.parameters.items()]
        rows += [
            ["J[mu~, nu]", f(s.jacobian[0][1])],
            ["J[nu~, nu]", f(s.jacobian[1][1])],
            ["spectral radius", f(s.spectral_radius)],
            ["spectral norm", f(s.spectral_norm)],
            ["fixed point", "attracting" if s.attracting else "not attracting (spectral radius >= 1)"],
            ["chi_1 (c-map slope at 1)", f(s.chi_1)],
            ["residuals (mu~-mean, nu~-var)", ", ".join(s.fmt_small(r) for r in s.residuals)],
            ["activation", s.activation],
        ]
        head = f"solution {i + 1}" + (" (recommended: smallest spectral norm)" if i == 0 and len(res.solutions) > 1 else "")
        parts.append(head + "\n" + tabulate(rows, tablefmt="simple", disable_numparse=True))
    if check is not None:
        parts.append(
            f"iterating the map {check['steps']} steps from {len(check['starts'])} nearby points: "
            f"largest distance left {check['distance']:.3g}, per-step shrink {check['rate']:.4f} "
            f"({'converges' if check['converges'] else 'does not converge'})"
        )
    parts += res.notes
    return "\n\n".join(parts) + "\n"


def _latex(res) -> str:
    s = res.recommended
    f = s.fmt
    p = s.parameters
    if res.family == "scale_alpha":
        act = rf"\hat\phi(x) = {f(p['scale'])}\,\mathrm{{elu}}(x;\ {f(p['alpha'])})"
    else:
        act = (rf"\hat\phi(x) = \gamma\left(\mathrm{{{res.base}}}(a x + b) + d\right),\quad "
               rf"\gamma = {f(p['gamma'])},\ a = {f(p['a'])},\ b = {f(p['b'])},\ d = {f(p['d'])}")
    lines = [
        act,
        rf"\mathbb{{E}}_{{z\sim\mathcal{{N}}(0,\nu^*)}}[\hat\phi(z)] = \mu^* = {res.mean:g},\quad "
        rf"\mathrm{{Var}}_{{z\sim\mathcal{{N}}(0,\nu^*)}}[\hat\phi(z)] = \nu^* = {res.var:g}",
        r"\mathcal{J} = \begin{pmatrix} " + r" \\ ".join(" & ".join(f(v) for v in row) for row in s.jacobian)
        + r" \end{pmatrix},\quad \|\mathcal{J}\|_2 = " + f(s.spectral_norm),
    ]
    return "\n\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    from propagate.selfnorm import attraction_check, self_normalize

    affine = args.family != "scale_alpha"  # elu and selu default to scale_alpha: the library refuses --solve there
    refuse_unused(args, {"--solve": ("--family affine", affine)})
    fixed = {k: getattr(args, k) for k in ("a", "b", "d") if getattr(args, k) is not None}
    res = self_normalize(args.activation, family=args.family, mean=args.mean, var=args.var,
                         digits=args.digits, solve=args.solve, fixed=fixed)
    if args.activation_only:
        print(res.recommended.activation)
        return 0
    if args.latex:
        print(_latex(res), end="")
        return 0
    check = attraction_check(res.recommended.activation, args.mean, args.var)
    if args.json:
        out = res.to_dict()
        out["iteration"] = {"steps": check["steps"], "distance": repr(check["distance"]), "rate": repr(check["rate"]),
                            "converges": check["converges"]}
        print(to_json(out), end="")
    else:
        print(_text(res, check), end="")
    return 0
