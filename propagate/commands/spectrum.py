"""``propagate spectrum``: the input-output Jacobian's singular-value spectrum at initialization (free probability)."""

from __future__ import annotations

import argparse

from propagate.commands._args import density_points, png_file, positive_int, refuse_unused, seed
from propagate.commands._output import add_output_arguments, check_outputs, emit, to_stdout
from propagate.commands._spec_args import (DEFAULT_NETWORK, DEMO_WIDTH, add_spec_arguments, spec_from_args,
                                           square_widths, weights_of)
from propagate.errors import UserError
from propagate.io import run_metadata
from propagate.limits import require_memory

NAME = "spectrum"
HELP = "singular-value spectrum of the input-output Jacobian at init (free probability), moments and density"
DESCRIPTION = """\
Squared singular values of the input-output Jacobian J = D_L W_L ... D_1 W_1 of a
uniform stack of --depth layers of --width units (input dimension = width), at
initialization, from free probability (Pennington, Schoenholz & Ganguli 2017,
2018): the S-transforms of W W^T (Gaussian: Marchenko-Pastur; orthogonal) and of
D^2 = phi'(z)^2 at the mean-field pre-activation variance of each layer multiply.

Printed: the moments m_k = (1/N) tr (J J^T)^k, k = 1..4 (m1 = chi_1^L at a fixed
point), the relative variance m2/m1^2 - 1, the mass at zero (ReLU: 1/2) and, with
--check, the same moments measured on --networks sampled networks.
--json prints {"moments": {"m1": ...}, "density": [[x, p], ...], ...} (p per unit
of x, the continuous part; "atom_at_zero" holds the rest), or writes it to FILE.
--plot FILE.png draws the density over a histogram of simulated squared
singular values (log x axis).

Free probability covers plain dense stacks. For a network with BatchNorm,
LayerNorm, residual blocks or dropout, --check still samples the spectrum (the
Jacobian of each sampled network at its inputs, BatchNorm's statistics held
fixed), the predicted columns stay empty and a line says why.

The network: the flags every command shares, unset ones the default network's
(<<default>>), but with square layers: every layer, the input included, --width
units (default <<width>>). Weights: --sigma-w2 S (Gaussian N(0, S/N)), --sigma-w2 S
--orthogonal (Haar orthogonal times sqrt(S)), or --init NAME (he_normal,
lecun_normal, orthogonal:2, ...; non-orthogonal ones behave as Gaussian at large
width).

--csv FILE writes the moments as one row: measured m1..m4 (with --check; _se
their standard errors) beside the predicted theory_m1..theory_m4, as every table
puts a measured X beside its prediction theory_X; --json [FILE] the moments,
the density and the metadata.

examples:
  propagate spectrum --depth 10
  propagate spectrum --activation relu --init he_normal --depth 4 --width 400
  propagate spectrum --activation relu --sigma-w2 2 --orthogonal --depth 10 --plot relu_orth.png
  propagate spectrum --activation tanh --sigma-w2 1.4242 --sigma-b2 0.01 --input-var 0.185 --depth 16 --check
  propagate spectrum --activation selu --init lecun_normal --batchnorm --depth 8 --width 128 --check
""".replace("<<default>>", str(DEFAULT_NETWORK)).replace("<<width>>", str(DEMO_WIDTH))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_spec_arguments(parser, square=True)
    parser.add_argument("--orthogonal", action="store_true", help="with --sigma-w2: orthogonal weights scaled to sigma_w^2")
    parser.add_argument("--points", type=density_points, default=300, metavar="N",
                        help="density grid points, at most 10000 (default 300)")
    g = parser.add_argument_group("Monte Carlo (--check, --plot)")
    g.add_argument("--check", action="store_true", help="also measure the moments on sampled networks")
    g.add_argument("--networks", type=positive_int, default=4, metavar="S", help="sampled random networks (default 4)")
    g.add_argument("--inputs", type=positive_int, default=2, metavar="K", help="inputs (Jacobians) per network (default 2)")
    g.add_argument("--seed", type=seed, default=0, help="random seed, 0 to 2^63 - 1 (default 0)")
    out = add_output_arguments(parser, what="the moments", json_help="moments, density and metadata as strict JSON, "
                               "to FILE.json (plus FILE.json.meta.json) or, without FILE, to standard output")
    out.add_argument("--plot", type=png_file, metavar="FILE.png", help="density over a histogram of simulated squared singular values")


def build(args):
    """The square-layer spec the arguments describe (raises UserError on conflicts)."""
    if args.orthogonal and args.sigma_w2 is None:
        raise UserError("--orthogonal goes with --sigma-w2 (or use --init orthogonal:S)")
    sampled = ("--check or --plot", bool(args.check or args.plot))
    refuse_unused(args, {"--networks": sampled, "--inputs": sampled, "--seed": sampled})
    spec = spec_from_args(args, widths=square_widths(args), init=weights_of(args, orthogonal=args.orthogonal))
    check_scale(spec)
    return spec


#: The density is solved for J J^T itself, whose scale is about prod_l sigma_w2_l: where the weight variances
#: (summed over layers in decades) move it by more than 1e30 the solver loses the grid (relu at depth 60,
#: sigma_w2 = 10, measured: no density points) or the mean-field q underflows; so that is refused.
MAX_SCALE_DECADES = 30
SIGMA_W2_RANGE = (1e-3, 1e3)
#: Largest bias variance (and input variance): beyond it saturating activations (tanh, sigmoid) put the
#: squared derivatives' distribution near 0, where the S-transform solver divides by zero (tanh at 1e100).
MAX_SIGMA_B2 = 10.0


def check_scale(spec) -> None:
    """Refuse a spec whose per-layer sigma_w2 leave :data:`SIGMA_W2_RANGE` or move J J^T by > 1e30 in total,
    or whose bias or input variance exceeds :data:`MAX_SIGMA_B2`."""
    import math

    for name, value in (("--sigma-b2", max(spec.sigma_b2())), ("--input-var", spec.input_var)):
        if value > MAX_SIGMA_B2:
            raise UserError(f"spectrum answers for {name} up to {MAX_SIGMA_B2:g}, got {value:g}")
    sw2 = [float(v) for v in spec.sigma_w2()]
    low, high = SIGMA_W2_RANGE
    if any(not low <= v <= high for v in sw2):
        bad = next(v for v in sw2 if not low <= v <= high)
        raise UserError(f"spectrum answers for sigma_w2 from {low:g} to {high:g} per layer, got {bad:g}")
    decades = sum(abs(math.log10(v)) for v in sw2)
    if decades > MAX_SCALE_DECADES:
        raise UserError(f"the weight variances scale J J^T by about 1e{decades:.0f} over {spec.depth} layers "
                        f"(sum of |log10 sigma_w2|); spectrum answers up to 1e{MAX_SCALE_DECADES}: use fewer "
                        f"layers or sigma_w2 nearer 1")


def run(args: argparse.Namespace) -> int:
    check_outputs(args)
    spec = build(args)
    if args.check or args.plot:
        n = spec.widths[0]
        if spec.depth * n ** 3 * args.networks * args.inputs > 2e12:
            raise UserError("this Monte Carlo check would take very long: lower --networks/--inputs, --width or --depth")
        # every sampled Jacobian is a dense float64 n x n matrix, with its product's temporaries (x3)
        require_memory(3 * 8 * n * n * args.networks * args.inputs,
                       f"{args.networks * args.inputs} sampled {n} x {n} Jacobians",
                       "lower --networks/--inputs or --width")

    from propagate.layers import FREE_PROBABILITY, theory_gap
    from propagate.spectrum import analyze_spectrum

    gap = theory_gap(spec.compile(), FREE_PROBABILITY)
    if gap and not args.check:
        raise UserError(f"{gap}; add --check to sample its spectrum")
    if gap and args.plot:
        raise UserError(f"--plot draws the predicted density over the samples, and {gap}")
    res = analyze_spectrum(spec, points=args.points, check=bool(args.check or args.plot), networks=args.networks,
                           inputs=args.inputs, seed=args.seed)
    extra = []
    if args.plot:
        from propagate.report.section_spectrum import spectrum_figure_png

        extra.append((args.plot, spectrum_figure_png(res.theory, res.samples,
                                                     title=f"{spec.label()}, depth {spec.depth}, width {spec.widths[0]}")))
    document = _json(res, spec)
    if not to_stdout(args):
        print("\n".join(format_spectrum(res, spec)))
    # the plot, --json and --csv as one: all of them or none
    written = emit(args, moments_table(res, spec), document["meta"], document, extra=extra)
    if not to_stdout(args):
        for path in ([args.plot] if args.plot else []) + written:
            print(f"wrote {path}")
    return 0


def moments_table(res, spec):
    """One row: the moments ``m1..m4`` of ``J J^T`` measured on the sampled networks (with ``_se``; empty without
    ``--check``) beside the predicted ``theory_m1``.. (empty where free probability does not reach the network)."""
    import pandas as pd

    d = _json(res, spec)
    mc = res.monte_carlo
    nan = float("nan")
    row = {"activation": spec.activation, "init": spec.init, "depth": spec.depth, "width": spec.widths[0]}
    for k in range(1, 5):
        row[f"m{k}"] = mc["moments"][f"m{k}"] if mc else nan
        row[f"m{k}_se"] = mc["moments_se"][f"m{k}"] if mc else nan
        row[f"theory_m{k}"] = d["moments"][f"m{k}"]
    row["zero_frac"] = mc["zero_frac"] if mc else nan
    row["theory_atom_at_zero"] = d["atom_at_zero"]
    row["theory_relative_variance"] = d["relative_variance"]
    return pd.DataFrame([row])


def _json(res, spec) -> dict:
    nan = float("nan")
    if res.theory is not None:
        d = res.theory.to_dict()
        d["relative_variance"] = res.theory.moments["m2"] / res.theory.moments["m1"] ** 2 - 1.0
    else:
        d = {"moments": {f"m{k}": nan for k in range(1, 5)}, "density": [], "atom_at_zero": nan,
             "relative_variance": nan, "theory_note": res.theory_note}
    if res.monte_carlo is not None:
        d["monte_carlo"] = res.monte_carlo
    d["meta"] = run_metadata(spec=spec.to_dict())
    return d


def format_spectrum(res, spec) -> list[str]:
    """The lines ``propagate spectrum`` prints: predicted moments (empty where the theory does not reach) and samples."""
    th, mc = res.theory, res.monte_carlo

    def g(v, fmt=".6g"):
        return "" if v is None else format(v, fmt)

    source = "J J^T from free probability" if th is not None else "J J^T sampled (no prediction)"
    lines = [f"{spec.label()}: depth {spec.depth}, width {spec.widths[0]} (square layers); {source}"]
    for k in range(1, 5):
        line = f"  m{k} = {g(th.moments[f'm{k}'] if th else None)}"
        if mc is not None:
            line += (f"   (Monte Carlo {mc['moments'][f'm{k}']:.6g} ± {mc['moments_se'][f'm{k}']:.2g}, "
                     f"{mc['jacobians']} Jacobians)")
        lines.append(line)
    if th is not None:
        m = th.moments
        lines.append(f"  m2/m1^2 - 1 = {m['m2'] / m['m1'] ** 2 - 1:.6g}   (relative variance of the squared singular values)")
    if mc is not None:
        rel = mc["moments"]["m2"] / mc["moments"]["m1"] ** 2 - 1
        lines.append(f"  Monte Carlo m2/m1^2 - 1 = {rel:.6g}")
    lines.append(f"  mass at zero = {g(th.atom if th else None)}"
                 + (f"   (Monte Carlo: share zero to float64 precision {mc['zero_frac']:.4g})" if mc is not None else ""))
    if th is not None:
        lines.append(f"  density integrates to {th.total_mass():.4f} with the atom (grid {len(th.x)} points)")
    if res.theory_note:
        lines.append(f"(predicted columns empty: {res.theory_note})")
    return lines
