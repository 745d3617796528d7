"""Report section: beyond the infinite-width mean, the spread across networks and the Jacobian's spectrum.

Two figures for ReLU (He: sigma_w^2 = 2), tanh (on the critical line at
sigma_b^2 = 0.01, started at its fixed point q*) and SELU (sigma_w^2 = 1, at its
fixed point (0, 1)), each with Gaussian and orthogonal weights of the same
``sigma_w^2``:

- :func:`spread_figure`: ``Var[ln ||z^l||^2]`` and ``Var[ln ||g^l||^2]`` across
  networks for one fixed input (:mod:`propagate.finite_width`) against
  ``layer / width``, for several widths: theory lines, Monte Carlo points with
  standard errors.
- :func:`spectrum_figure`: the density of the squared singular values of the
  input-output Jacobian from free probability (:mod:`propagate.spectrum`),
  per decade of ``s^2``, over histograms of sampled networks' values.

The tables come from :func:`compute_spread` and :func:`compute_spectrum`; the
prose is ``propagate/templates/section_spectrum.md``, filled by
:func:`section_markdown`.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np

from propagate.io import run_metadata, write_table
from propagate.templates import render

__all__ = ["section", "start", "CONFIGS", "spread_figure", "spectrum_figure", "spectrum_figure_png", "section_specs",
           "compute_spread", "compute_spectrum", "section_markdown"]

#: (activation, sigma_w2, sigma_b2, label of the operating point).
CONFIGS = (
    ("relu", 2.0, 0.0, "He, sigma_w^2 = 2"),
    ("tanh", None, 0.01, "critical, sigma_b^2 = 0.01"),
    ("selu", 1.0, 0.0, "LeCun, fixed point (0, 1)"),
)
WEIGHTS = ("gaussian", "orthogonal")

#: (widths, depth, networks, inputs) of the spread figure; (depth, width, networks) of the spectrum.
SPREAD_FULL = ((32, 64, 128), 32, 200, 2)
SPREAD_QUICK = ((32, 64), 16, 48, 2)
SPECTRUM_FULL = (16, 256, 8)
SPECTRUM_QUICK = (8, 128, 4)
#: density grid points (quick, full).
DENSITY_POINTS = (150, 300)


def section_specs(activation: str, weights: str, width: int, depth: int):
    """The uniform-width spec of one configuration (input dimension = width; input variance at the fixed point)."""
    from propagate.spec import NetworkSpec
    from propagate.theory import critical_sigma_w2

    for act, sw2, sb2, _ in CONFIGS:
        if act == activation:
            break
    else:
        raise KeyError(activation)
    input_var = 1.0
    if sw2 is None:
        sw2, q_star = critical_sigma_w2(act, sb2)
        input_var = (q_star - sb2) / sw2  # so that layer 1 starts at q*
    init = f"orthogonal:{sw2!r}" if weights == "orthogonal" else f"normal:{sw2!r}"
    return NetworkSpec(widths=(width,) * (depth + 1), activation=act, init=init, bias_var=sb2, input_var=input_var)


# ----------------------------------------------------------------------------
# figures


def spread_figure(results: dict, *, title: str = ""):
    """``results[(activation, weights, width)] = (theory_df, measured_df)`` -> a 2 x A figure.

    Rows: ``var_log_norm``, ``var_log_grad``; columns: activations. x axis:
    ``layer / width`` (depth over width, the parameter of the spread). Colour:
    width; solid lines / circles: Gaussian weights; dashed / squares: orthogonal.
    """
    import matplotlib.pyplot as plt

    acts = list(dict.fromkeys(k[0] for k in results))
    widths = sorted({k[2] for k in results})
    cmap = plt.get_cmap("viridis")
    colours = {w: cmap(0.15 + 0.7 * i / max(len(widths) - 1, 1)) for i, w in enumerate(widths)}
    fig, axes = plt.subplots(2, len(acts), figsize=(4.2 * len(acts), 6.6), squeeze=False)
    for j, act in enumerate(acts):
        for i, (col, name) in enumerate((("var_log_norm", r"Var$[\ln\|z^l\|^2]$"), ("var_log_grad", r"Var$[\ln\|g^l\|^2]$"))):
            ax = axes[i, j]
            for (a, wt, n), (th, ms) in results.items():
                if a != act:
                    continue
                ls, mk = ("-", "o") if wt == "gaussian" else ("--", "s")
                t = th[th["layer"] >= 1]
                ax.plot(t["layer"] / n, t[col], ls, color=colours[n], lw=1.4,
                        label=f"n={n}, {wt}" if (i == 0 and j == 0) else None)
                m = ms[ms["layer"] >= 1]
                step = max(1, len(m) // 8)
                m = m.iloc[::step]
                ax.errorbar(m["layer"] / n, m[col], yerr=m[col + "_se"], fmt=mk, ms=3.5, color=colours[n],
                            mfc="none" if wt == "orthogonal" else colours[n], lw=0.8, capsize=1.5)
            ax.set_xlabel("layer / width  (depth over width)")
            ax.set_ylabel(name + "  (natural log)")
            if i == 0:
                ax.set_title(act)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8,
               title="lines: theory; points: simulation ± SE (filled: Gaussian, open: orthogonal)", title_fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def _per_decade(x, p):
    """Density per decade of ``x``: ``p(x) x ln 10``."""
    return p * x * math.log(10.0)


def spectrum_figure(panels: list, *, title: str = ""):
    """``panels = [(title, [(label, spectrum, s2, colour), ...]), ...]`` -> one panel per entry.

    Each curve is the predicted density of ``log10 s^2`` (the continuous part;
    the atom at zero is stated in the legend); each histogram the sampled
    nonzero squared singular values, normalized to the same mass.
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.6), squeeze=False)
    for ax, (ptitle, curves) in zip(axes[0], panels):
        lo_all, hi_all, data_lo = [], [], []
        for label, spec_res, s2, col in curves:
            x, p = spec_res.x, spec_res.density
            dens = _per_decade(x, p)
            # products of square random matrices have a power-law tail of tiny singular values
            # (x^(-L/(L+1)) near 0) that finite width cuts off; show where the density is >= 2% of its peak
            keep = dens > 2e-2 * dens.max()
            if keep.any():
                lo_all.append(np.log10(x[keep]).min())
                hi_all.append(np.log10(x[keep]).max())
            atom = f", atom {spec_res.atom:.2g} at 0" if spec_res.atom > 0 else ""
            pre = f"{label}: " if label else ""
            ax.plot(np.log10(x), dens, color=col, lw=1.6, label=f"{pre}free probability{atom}")
            if s2 is not None:
                v = np.asarray(s2, dtype=float).reshape(-1, np.shape(s2)[-1])
                top = v.max(axis=1, keepdims=True)
                nz = v[v > 1e-12 * top]
                frac = nz.size / v.size
                if nz.size:
                    data_lo.append(float(np.log10(nz).min()))
                    # density of log10 s^2 over the nonzero values, scaled to their share (the rest is the atom)
                    h, edges = np.histogram(np.log10(nz), bins=60, density=True)
                    ax.stairs(h * frac, edges, fill=True, alpha=0.25, color=col,
                              label=f"{pre}simulated ({v.shape[0]} Jacobians)")
        if lo_all:
            lo = min(lo_all)
            if data_lo:
                # finite width cuts the theory's power-law tail of tiny values off; show 3 decades below the data
                lo = max(lo, min(data_lo) - 3.0)
            ax.set_xlim(lo - 0.3, max(hi_all) + 0.3)
        ax.set_xlabel(r"$\log_{10} s^2$  (squared singular value of $J$)")
        ax.set_ylabel("density per decade")
        ax.set_title(ptitle)
        ax.legend(fontsize=6.5, loc="upper left")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def spectrum_figure_png(spec_res, s2, *, title: str = "") -> bytes:
    """PNG bytes of one spectrum panel (used by ``propagate spectrum --plot``)."""
    from propagate.report.style import report_style

    with report_style():
        fig = spectrum_figure([(title, [("", spec_res, s2, "#1f77b4")])])
        buf = io.BytesIO()
        fig.savefig(buf, format="png", bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


# ----------------------------------------------------------------------------
# the section


def compute_spread(widths, depth: int, networks: int, inputs: int, seed: int = 0, progress=None):
    """Spread across networks of every configuration x weights x width: ``(results, table)``.

    ``results[(activation, weights, width)] = (theory, measured)`` (the
    :func:`spread_figure` input); ``table`` one row per configuration and
    layer with the theory's and the simulation's ``var_log_norm`` /
    ``var_log_grad`` (and standard errors) side by side.
    """
    import pandas as pd

    from propagate.finite_width import predict_spread, sample_spread

    results, rows = {}, []
    for act, *_ in CONFIGS:
        for wt in WEIGHTS:
            for n in widths:
                if progress is not None:
                    progress(f"spread: {act} {wt} width {n}")
                spec = section_specs(act, wt, n, depth)
                th = predict_spread(spec)
                ms = sample_spread(spec, networks=networks, inputs=inputs, seed=seed)
                results[(act, wt, n)] = (th, ms)
                for (_, t), (_, m) in zip(th.iterrows(), ms.iterrows()):
                    rows.append({"activation": act, "weights": wt, "width": n, "layer": int(t["layer"]),
                                 "theory_var_log_norm": t["var_log_norm"], "theory_var_log_grad": t["var_log_grad"],
                                 "var_log_norm": m["var_log_norm"], "var_log_norm_se": m["var_log_norm_se"],
                                 "var_log_grad": m["var_log_grad"], "var_log_grad_se": m["var_log_grad_se"],
                                 "method": t["method"]})
    return results, pd.DataFrame(rows)


def compute_spectrum(depth: int, width: int, networks: int, points: int, seed: int = 0, progress=None):
    """Predicted and sampled Jacobian spectra of every configuration x weights: ``(panels, moments, densities)``.

    ``panels``: the :func:`spectrum_figure` input; ``moments``: one row per
    configuration with the moments ``m1..m4`` measured on the sampled networks
    (and ``m1_se``..), the predicted ``theory_m1..theory_m4``, the measured
    share of zero singular values ``zero_frac``, the predicted atom at zero
    ``theory_atom`` and the predicted density's mass ``theory_mass``;
    ``densities[(activation, weights)]``: the predicted density on its grid (``x``, ``density``).
    """
    import pandas as pd

    from propagate.spectrum import jacobian_spectrum, sample_jacobian_spectrum, summarize_singular_values

    panels, mrows, densities = [], [], {}
    colours = {"gaussian": "#1f77b4", "orthogonal": "#d62728"}
    for act, _, _, point in CONFIGS:
        curves = []
        for wt in WEIGHTS:
            if progress is not None:
                progress(f"spectrum: {act} {wt}")
            spec = section_specs(act, wt, width, depth)
            res = jacobian_spectrum(spec, points=points)
            s2 = sample_jacobian_spectrum(spec, networks=networks, inputs=1, seed=seed)
            mc = summarize_singular_values(s2)
            curves.append((wt, res, s2, colours[wt]))
            rec = {"activation": act, "weights": wt, "depth": depth, "width": width}
            for k in range(1, 5):  # measured m_k (with its standard error) beside the predicted theory_m_k
                rec[f"m{k}"] = mc["moments"][f"m{k}"]
                rec[f"m{k}_se"] = mc["moments_se"][f"m{k}"]
                rec[f"theory_m{k}"] = res.moments[f"m{k}"]
            rec["zero_frac"], rec["theory_atom"], rec["theory_mass"] = mc["zero_frac"], res.atom, res.total_mass()
            mrows.append(rec)
            densities[(act, wt)] = pd.DataFrame({"x": res.x, "density": res.density})
        panels.append((f"{act} ({point})", curves))
    return panels, pd.DataFrame(mrows), densities


def _sizes(ctx: dict):
    quick = bool(ctx.get("quick", False))
    return (SPREAD_QUICK if quick else SPREAD_FULL), (SPECTRUM_QUICK if quick else SPECTRUM_FULL), \
        (DENSITY_POINTS[0] if quick else DENSITY_POINTS[1])


def start(ctx: dict, progress=None):
    """The section's two computations as tasks of ``ctx["runner"]`` (in process without one):
    ``(spread task, spectrum task)``, their ``result()`` :func:`compute_spread`'s and :func:`compute_spectrum`'s.
    The report calls it early (on Dask they run on workers from then on); :func:`section` gets the same tasks."""
    from propagate.report.tasks import ReportRunner

    runner = ctx.get("runner") or ReportRunner()
    say = None if runner.on_dask else progress
    seed = int(ctx.get("seed", 0))
    (widths, depth, networks, inputs), (sdepth, swidth, snets), points = _sizes(ctx)
    return (runner.task("spread", compute_spread, widths, depth, networks, inputs, seed, say),
            runner.task("spectrum", compute_spectrum, sdepth, swidth, snets, points, seed, say))


def section(out_dir: Path, ctx: dict, progress=None) -> str:
    """Compute, write CSVs and figures, return the markdown of the section."""
    from propagate.report.tasks import ReportRunner

    out_dir = Path(out_dir)
    (out_dir / "data").mkdir(parents=True, exist_ok=True)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    runner = ctx.get("runner") or ReportRunner()
    seed = int(ctx.get("seed", 0))
    (widths, depth, networks, inputs), (sdepth, swidth, snets), _ = _sizes(ctx)
    spread_task, spectrum_task = start({**ctx, "runner": runner}, progress)

    meta = run_metadata(seed=seed, kind="spectrum section", spread={"widths": list(widths), "depth": depth,
                        "networks": networks, "inputs": inputs}, spectrum={"depth": sdepth, "width": swidth,
                        "networks": snets}, configs=[list(c) for c in CONFIGS])
    results, spread = spread_task.result()
    write_table(spread, out_dir / "data" / "spread.csv", meta)
    runner.figure(out_dir / "figures" / "spread.png", spread_figure, results, style=True,
                  title=f"spread across {networks} networks, one fixed input, depth {depth}")

    panels, moments, densities = spectrum_task.result()
    for (act, wt), dens in densities.items():
        write_table(dens, out_dir / "data" / f"spectrum_{act}_{wt}.csv", meta)
    write_table(moments, out_dir / "data" / "spectrum_moments.csv", meta)
    runner.figure(out_dir / "figures" / "spectrum.png", spectrum_figure, panels, style=True,
                  title=f"input-output Jacobian, depth {sdepth}, width {swidth}")
    return section_markdown(spread, moments, depth, networks, sdepth, swidth, snets)


def _spread_rows(spread, depth: int) -> list[str]:
    """The last layer's norm spread and the first layer's gradient spread, theory and simulation, per configuration."""
    last, first = spread[spread["layer"] == depth], spread[spread["layer"] == 1]
    rows = []
    for _, r in last.iterrows():
        g1 = first[(first["activation"] == r["activation"]) & (first["weights"] == r["weights"])
                   & (first["width"] == r["width"])].iloc[0]
        rows.append(f"| {r['activation']} | {r['weights']} | {int(r['width'])} | {r['theory_var_log_norm']:.3g} | "
                    f"{r['var_log_norm']:.3g} ± {r['var_log_norm_se']:.2g} | {g1['theory_var_log_grad']:.3g} | "
                    f"{g1['var_log_grad']:.3g} ± {g1['var_log_grad_se']:.2g} |")
    return rows


def _moment_rows(moments) -> list[str]:
    return [f"| {r['activation']} | {r['weights']} | {r['theory_m1']:.4g} | {r['m1']:.4g} ± {r['m1_se']:.2g} | "
            f"{r['theory_m2']:.4g} | {r['m2']:.4g} ± {r['m2_se']:.2g} | {r['theory_m2'] / r['theory_m1'] ** 2 - 1:.3g} | "
            f"{r['theory_atom']:.2g} |" for _, r in moments.iterrows()]


def section_markdown(spread, moments, depth: int, networks: int, sdepth: int, swidth: int, snets: int) -> str:
    """The section's markdown: ``templates/section_spectrum.md`` filled from the spread and moment tables."""
    return render("section_spectrum.md", {
        "depth": depth, "networks": networks, "spread_rows": "\n".join(_spread_rows(spread, depth)),
        "spectrum_depth": sdepth, "spectrum_width": swidth, "spectrum_networks": snets,
        "moment_rows": "\n".join(_moment_rows(moments)),
    })
