"""Report section: a two-parameter sweep of random tanh networks over (sigma_w^2, sigma_b^2), theory's edge of chaos on top.

What is measured, per grid point (one simulation of ``seeds`` random networks):

- ``chi_1`` measured: the per-layer factor of the squared gradient norm,
  ``(grad_norm[l0] / grad_norm[L])^(2 / (L - l0))`` over the upper two thirds
  of the stack (``l0 = max(1, L // 3)``, after the length ``q`` has settled).
  Mean-field theory says each layer multiplies the squared gradient norm by
  ``chi_1 = sigma_w^2 E[phi'(h)^2]`` (Schoenholz et al. 2017, eq. 5; Poole et
  al. 2016), so ``chi_1 < 1`` (ordered) shrinks gradients and ``> 1``
  (chaotic) grows them.
- ``corr`` at the last layer: the correlation of two inputs' pre-activations
  (Gaussian inputs of mean 1 and variance 1 per feature start at 0.5); it goes to 1 in the ordered phase and to a fixed point
  ``c* < 1`` in the chaotic one.

Over both maps the theory's critical line (``chi_1 = 1``,
:func:`propagate.theory.critical_line`) is drawn. :func:`figure_sweep_map` draws
the same map from any sweep's ``results.parquet`` (``propagate sweep`` with
lens ``simulate``, fields ``init = ["normal:S", ...]`` and ``sigma_b2``: its
rows carry ``sigma_w2`` and ``sigma_b2`` columns).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from propagate.io import run_metadata, write_table
from propagate.templates import render

__all__ = ["section", "start", "sweep_summary", "compute_sweep", "compare_with_theory", "section_markdown", "figure_sweep_map",
           "plot_sweep_phase", "measured_chi_1", "GRID_FULL", "GRID_QUICK"]

#: (sigma_w2 values, sigma_b2 values, depth, width, samples, seeds) of the section.
GRID_FULL = (np.linspace(0.5, 3.5, 13), np.linspace(0.0, 0.5, 6), 30, 256, 256, 2)
GRID_QUICK = (np.linspace(0.5, 3.5, 7), np.linspace(0.0, 0.5, 3), 16, 96, 128, 2)
#: Gaussian inputs with per-feature mean 1 and variance 1: two inputs have (uncentered) correlation 0.5,
#: so the ordered phase (c -> 1) and the chaotic one (c -> c* < 1) both show at sigma_b2 = 0 too.
INPUT_MEAN, INPUT_VAR = 1.0, 1.0


def measured_chi_1(layers) -> float:
    """Per-layer factor of the squared gradient norm of one network's per-layer table (rows = layers 0..L)."""
    t = layers[layers["layer"] >= 1].sort_values("layer")
    g = t["grad_norm"].to_numpy(dtype=float)
    L = len(g)
    l0 = max(1, L // 3)
    if L - l0 < 1 or not (np.isfinite(g[l0 - 1]) and np.isfinite(g[-1])) or g[-1] <= 0 or g[l0 - 1] <= 0:
        return math.nan
    return float((g[l0 - 1] / g[-1]) ** (2.0 / (L - l0)))


def sweep_summary(results, x: str = "sigma_w2", y: str = "sigma_b2"):
    """One row per grid point of a simulate sweep's rows: ``x, y, chi_1_measured, corr_last, pre_q_last``."""
    import pandas as pd

    rows = []
    keys = ["point"] if "point" in results.columns else [x, y]
    for _, g in results[results["layer"] >= 1].groupby(keys, sort=False):
        last = g.loc[g["layer"].idxmax()]
        rows.append({x: float(last[x]), y: float(last[y]), "chi_1_measured": measured_chi_1(g),
                     "corr_last": float(last["corr"]), "pre_q_last": float(last["pre_q"])})
    return pd.DataFrame(rows).sort_values([y, x]).reset_index(drop=True)


def _edges(v):
    v = np.asarray(sorted(set(v)), dtype=float)
    if len(v) == 1:
        return np.array([v[0] - 0.5, v[0] + 0.5])
    mid = (v[1:] + v[:-1]) / 2
    return np.concatenate([[2 * v[0] - mid[0]], mid, [2 * v[-1] - mid[-1]]])


def figure_sweep_map(summary, value: str, *, x: str = "sigma_w2", y: str = "sigma_b2", activation: str | None = None,
                     ax=None, log2: bool = False, label: str | None = None, vmin=None, vmax=None, cmap="viridis"):
    """A heat map of ``value`` over the (``x``, ``y``) grid, with theory's critical line of ``activation`` on top.

    ``summary``: one row per grid point (e.g. :func:`sweep_summary`). With
    ``log2`` the colours show ``log2(value)`` on a scale centred at 0 (value 1).
    Returns the axes.
    """
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm

    from propagate.report.figures import draw_measured_line

    if ax is None:
        _, ax = plt.subplots(figsize=(5.2, 4))
    xs, ys = sorted(set(summary[x])), sorted(set(summary[y]))
    grid = summary.pivot_table(index=y, columns=x, values=value, aggfunc="mean").reindex(index=ys, columns=xs)
    z = grid.to_numpy(dtype=float)
    if log2:
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.log2(z)
        finite = z[np.isfinite(z)]
        span = float(np.max(np.abs(finite))) if finite.size else 1.0
        norm = TwoSlopeNorm(vcenter=0.0, vmin=-span or -1, vmax=span or 1)
        mesh = ax.pcolormesh(_edges(xs), _edges(ys), np.ma.masked_invalid(z), cmap="RdBu_r", norm=norm)
        if finite.size and np.nanmin(z) < 0 < np.nanmax(z) and len(xs) > 1 and len(ys) > 1:
            # the colour map is white where log2 chi_1 = 0: the measured line is dark with a white outline
            draw_measured_line(ax, xs, ys, z, 0.0, "measured $\\chi_1 = 1$")
    else:
        mesh = ax.pcolormesh(_edges(xs), _edges(ys), np.ma.masked_invalid(z), cmap=cmap, vmin=vmin, vmax=vmax)
    cb = ax.figure.colorbar(mesh, ax=ax)
    cb.set_label(label or (f"log2 {value}" if log2 else value))
    if activation is not None:
        from propagate.theory import critical_line

        line = critical_line(activation, np.linspace(min(ys), max(ys), 41))
        ax.plot(line["sigma_w2"], line["sigma_b2"], color="black", lw=2,
                label=f"theory: edge of chaos ($\\chi_1 = 1$), {activation}")
    # variances are >= 0: the first cell is cut at 0 rather than drawn over negative values
    ax.set_xlim(max(_edges(xs)[0], 0.0) if min(xs) >= 0 else _edges(xs)[0], _edges(xs)[-1])
    ax.set_ylim(max(_edges(ys)[0], 0.0) if min(ys) >= 0 else _edges(ys)[0], _edges(ys)[-1])
    ax.set_xlabel("$\\sigma_w^2$ (weight variance x fan-in)")
    ax.set_ylabel("$\\sigma_b^2$ (bias variance)")
    ax.grid(False)
    return ax


def _simulate_grid(sw2s, sb2s, depth, width, samples, seeds, seed, activation, progress):
    """The per-layer rows of every grid point, in the shape of a simulate sweep's ``results.parquet``."""
    import warnings

    import pandas as pd
    from tqdm import tqdm

    from propagate.simulate import simulate
    from propagate.spec import NetworkSpec

    points = [(float(a), float(b)) for b in sb2s for a in sw2s]
    frames = []
    bar = tqdm(total=len(points), desc="sweep section", unit="pt", disable=progress is not True, leave=False)
    for i, (sw2, sb2) in enumerate(points):
        spec = NetworkSpec.stack(depth, width, input_dim=width, first_width=None, activation=activation,
                                 init=f"normal:{sw2!r}", bias_var=sb2, input_mean=INPUT_MEAN, input_var=INPUT_VAR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a divergence is a result (the map shows it)
            res = simulate(spec, samples=samples, seeds=seeds, seed=seed, threads=1, theory=False)
        t = res.table.copy()
        t.insert(0, "point", i)
        t["sigma_w2"], t["sigma_b2"] = sw2, sb2
        frames.append(t)
        bar.update(1)
        if callable(progress) and ((i + 1) % max(1, len(points) // 4) == 0 or i + 1 == len(points)):
            progress(f"sweep section: {i + 1}/{len(points)} grid points")
    bar.close()
    return pd.concat(frames, ignore_index=True)


def compute_sweep(sw2s, sb2s, depth: int, width: int, samples: int, seeds: int, seed: int = 0,
                  activation: str = "tanh", progress=None):
    """The grid's summary (:func:`sweep_summary` with theory's ``chi_1_theory``) and theory's critical line."""
    from propagate.theory import chi_1, critical_line

    rows = _simulate_grid(sw2s, sb2s, depth, width, samples, seeds, seed, activation, progress)
    summary = sweep_summary(rows)
    summary["chi_1_theory"] = [chi_1(activation, a, b) for a, b in zip(summary["sigma_w2"], summary["sigma_b2"])]
    return summary, critical_line(activation, sb2s)


def compare_with_theory(summary, line, sw2s) -> dict:
    """Is the measured growth on the theory's side of the critical line? Counts, and how far off it is.

    ``agree`` of ``measured`` grid points have ``ln chi_1`` of the theory's
    sign; ``near`` says for each other point whether it lies within one grid
    ``step`` in ``sigma_w^2`` of the line. ``median_error``: the median
    relative error of the measured factor where ``|ln chi_1| > 0.2``
    (``far_points`` of them); ``ratio_min``/``ratio_max``: measured / theory over the grid.
    """
    m = summary.dropna(subset=["chi_1_measured"])
    same = (np.sign(np.log(m["chi_1_measured"])) == np.sign(np.log(m["chi_1_theory"])))
    off = m[~same]
    step = float(np.diff(sw2s).mean()) if len(sw2s) > 1 else 0.0
    near = [abs(r.sigma_w2 - float(np.interp(r.sigma_b2, line["sigma_b2"], line["sigma_w2"]))) <= step
            for r in off.itertuples()]
    ratio = (m["chi_1_measured"] / m["chi_1_theory"])
    far = m[np.abs(np.log(m["chi_1_theory"])) > 0.2]
    err = float(np.median(np.abs(far["chi_1_measured"] / far["chi_1_theory"] - 1))) if len(far) else math.nan
    return {"agree": int(same.sum()), "measured": len(m), "near": near, "step": step, "median_error": err,
            "far_points": len(far), "ratio_min": ratio.min(), "ratio_max": ratio.max()}


def _verdict(c: dict) -> str:
    near = c["near"]
    verdict = (f"The measured per-layer gradient factor lies on the theory's side of the critical line at "
               f"{c['agree']} of {c['measured']} grid points")
    if near:
        verdict += (f"; the {len(near)} others are {'all ' if all(near) else ''}within one grid step "
                    f"({c['step']:.2g} in $\\sigma_w^2$) of the line" if all(near) else
                    f"; {sum(near)} of the {len(near)} others are within one grid step of the line")
    return verdict + "."


def section_markdown(summary, line, grid, seed: int, activation: str = "tanh") -> str:
    """The section's markdown: ``templates/section_sweep.md`` filled from the summary, the critical line and the grid
    (``(sigma_w2 values, sigma_b2 values, depth, width, samples, seeds)``, as :data:`GRID_FULL`)."""
    sw2s, sb2s, depth, width, samples, seeds = grid
    c = compare_with_theory(summary, line, sw2s)
    return render("section_sweep.md", {
        "points": len(summary), "sw2_first": f"{sw2s[0]:g}", "sw2_last": f"{sw2s[-1]:g}", "sb2_first": f"{sb2s[0]:g}",
        "sb2_last": f"{sb2s[-1]:g}", "seeds": seeds, "activation": activation, "depth": depth, "width": width,
        "samples": samples, "input_mean": f"{INPUT_MEAN:g}", "input_var": f"{INPUT_VAR:g}",
        "input_corr": f"{INPUT_MEAN**2 / (INPUT_MEAN**2 + INPUT_VAR):g}", "seed": seed, "verdict": _verdict(c),
        "median_error": f"{100 * c['median_error']:.1f}", "far_points": c["far_points"],
        "ratio_min": f"{c['ratio_min']:.3g}", "ratio_max": f"{c['ratio_max']:.3g}",
    })


def plot_sweep_phase(summary, depth: int, activation: str = "tanh"):
    """The section's figure: measured gradient growth (log2 chi_1) and last-layer correlation, critical line on both.

    ``summary``: one row per grid point with ``chi_1_measured`` and ``corr_last`` (:func:`compute_sweep`).
    """
    from propagate.report.style import plt, report_style

    with report_style():
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
        figure_sweep_map(summary, "chi_1_measured", activation=activation, ax=axes[0], log2=True,
                         label="measured $\\log_2 \\chi_1$ (per-layer growth of |grad|$^2$)")
        axes[0].set_title(f"gradient growth per layer, {activation}, depth {depth}")
        figure_sweep_map(summary, "corr_last", activation=activation, ax=axes[1], vmin=0, vmax=1,
                         label=f"correlation of two inputs at layer {depth} (0.5 at the input)")
        axes[1].set_title("input correlation at the last layer")
        axes[0].legend(loc="upper left", fontsize=7, framealpha=0.9)
    return fig


def start(ctx: dict, progress=None):
    """The section's grid of simulations as one task of ``ctx["runner"]`` (in process without one); its
    ``result()`` is :func:`compute_sweep`'s. The report calls it early (on Dask it runs on a worker from then
    on); :func:`section` gets the same task."""
    from propagate.report.tasks import ReportRunner

    runner = ctx.get("runner") or ReportRunner()
    sw2s, sb2s, depth, width, samples, seeds = GRID_QUICK if ctx.get("quick") else GRID_FULL
    return runner.task("sweep", compute_sweep, sw2s, sb2s, depth, width, samples, seeds, int(ctx.get("seed", 0)),
                       "tanh", None if runner.on_dask else progress)


def section(out_dir: Path, ctx: dict, progress=None) -> str:
    """Compute the (sigma_w2, sigma_b2) sweep of tanh networks, write data and figure, return the markdown.

    ``ctx``: ``quick`` (a 7 x 3 grid of 16-layer networks instead of 13 x 6
    of 30 layers) and ``seed``. ``progress``: ``True`` for a bar on stderr, or
    ``callable(message)`` (a line about every quarter of the grid, like the other sections).
    """
    from propagate.report.tasks import ReportRunner

    out_dir = Path(out_dir)
    runner = ctx.get("runner") or ReportRunner()
    grid = GRID_QUICK if ctx.get("quick") else GRID_FULL
    sw2s, sb2s, depth, width, samples, seeds = grid
    seed = int(ctx.get("seed", 0))
    summary, line = start({**ctx, "runner": runner}, progress).result()
    meta = run_metadata(seed=seed, kind="sweep section", activation="tanh", depth=depth, width=width,
                        samples=samples, networks=seeds, sigma_w2=[float(v) for v in sw2s],
                        sigma_b2=[float(v) for v in sb2s], input_mean=INPUT_MEAN, input_var=INPUT_VAR)
    write_table(summary, out_dir / "data" / "sweep_phase.csv", meta)
    write_table(line, out_dir / "data" / "sweep_critical_line.csv", meta)
    runner.figure(out_dir / "figures" / "sweep_phase.png", plot_sweep_phase, summary, depth)
    return section_markdown(summary, line, grid, seed)
