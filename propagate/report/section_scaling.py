"""Report section: the scaling law of the largest stable learning rate, measured against predicted.

Data: :func:`propagate.scaling.scaling_grid` (one factor at a time around a
base cell: width, depth, batch size, RMSprop's rho; four configurations),
computed resumably in the report's work folder (``ctx["work_dir"]``), or read
from a finished ``propagate scaling --out DIR`` folder (``ctx["scaling_dir"]``).

Figure: :func:`figure_scaling` (one panel per axis, log-log: measured largest
learning rate that trains, with its bracket, and the prediction from the
optimizer's first steps with its 95% band; fitted exponents in the legend),
drawn by :func:`plot_scaling`. Prose: ``templates/section_scaling.md``, filled
by :func:`section_markdown` from the tables.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from propagate.io import write_table
from propagate.report.tasks import ReportRunner
from propagate.scaling import AXES, BASE, CONFIGS, ScalingOptions, scaling_grid
from propagate.templates import render

__all__ = ["SETTINGS_FULL", "SETTINGS_QUICK", "budget_text", "censored_text", "figure_scaling", "fit_lines",
           "miss_lines", "plot_scaling", "section", "section_markdown", "start"]

#: The report runs the issue's whole grid: every axis of :data:`propagate.scaling.AXES` (width 1024 included) and
#: every configuration (relu-he-normal too: at 50 hidden layers it barely trains within its step budget, at no
#: rate of the grid on mnist-5k and at the smallest ones on Fashion-MNIST, so most of its limits are missing or
#: measure slowness; the page counts the missing ones and names the misses).
REPORT_AXES = dict(AXES)
#: Learning rates from 1e-5: no cell trains in its step budget below that (the smallest that trains is 1e-5 or more).
REPORT_LRS = tuple(lr for lr in ScalingOptions().lrs if lr > 0.99e-5)
REPORT_CONFIGS = tuple(CONFIGS)
#: The grid is defined on at most 5,000 training images (the first 5,000 of a larger dataset; mnist-5k's training
#: split has 4,000, all used): one epoch of every cell of it on Fashion-MNIST's 60,000 would take hours on 2 cores
#: and measure the same first steps. Three bisections of the half-decade grid resolve each limit to a factor
#: 10^(1/16) = 1.155 (two: 1.33, a third of the 2x band on each side of the prediction): the measured limit is the
#: bracket's lower end, so its resolution is a bias of up to that factor, and a third bisection halves it.
SETTINGS_FULL = dict(configs=REPORT_CONFIGS, axes=REPORT_AXES, base=BASE, seeds=(0, 1, 2), epochs=1, level=0.3,
                     lrs=REPORT_LRS, refine=3, n_train=5000)
SETTINGS_QUICK = dict(configs=("selu-lecun-normal",), axes={"width": (32, 64), "depth": (4, 8)},
                      base={"width": 64, "depth": 8, "batch_size": 128, "rho": 0.9}, seeds=(0, 1), epochs=1,
                      level=0.2, lrs=(1e-4, 1e-3, 1e-2), refine=0, n_train=1024)

_AXIS_LABEL = {"width": "width n (units per hidden layer)", "depth": "depth L (hidden layers)",
               "batch_size": "batch size B", "rho": "1 - rho (RMSprop's decay; 0.1 is the demo's rho 0.9)"}


def _on_axis(cells, axis):
    return cells[cells["axes"].str.split(",").apply(lambda a: axis in a)].sort_values(axis)


def _fit_label(fits, config, axis, note: str = "") -> str:
    parts = []
    if fits is not None and axis in ("width", "depth"):
        f = fits[(fits["config"] == config) & (fits["axis"] == axis)].set_index("source")
        for src, short in (("measured", "meas."), ("predicted", "pred.")):
            if src in f.index and np.isfinite(f.loc[src, "slope"]):
                parts.append(f"{short} {f.loc[src, 'slope']:+.2f}")
    parts += [note] if note else []
    return f" ({', '.join(parts)})" if parts else ""


#: A predicted 95% band wider than this factor (the seeds' limits decades apart) is not drawn (the legend says so).
BAND_MAX = 30.0


def figure_scaling(cells, fits=None, axes=None):
    """One panel per axis of ``cells`` (:attr:`propagate.scaling.ScalingResult.cells`): largest lr against the axis.

    Per configuration (one colour): the measured largest learning rate that
    trains (filled circle, shifted sideways by 3% per configuration so that
    equal values stay visible; a bar up to the smallest rate above it that does
    not; open when the grid's top still trains) and the predicted one (line,
    with its 95% interval over seeds as a band, cut at a factor 4 beyond the
    panel's measured and predicted values, so that one configuration's wide
    band does not flatten the others). Log-log except for rho;
    legend entries carry the fitted exponents ``d ln lr* / d ln x``.
    """
    import matplotlib.pyplot as plt

    names = [a for a in AXES if a in set(",".join(cells["axes"]).split(","))]
    if axes is None:
        _, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 4.0), squeeze=False, constrained_layout=True)
        axes = axes[0]
    colours = dict(zip(dict.fromkeys(cells["config"]), plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for ax, axis in zip(axes, names):
        shown = []  # the measured and predicted values: the y range (a wide band is cut, not the points)
        for k, (config, colour) in enumerate(colours.items()):
            d = _on_axis(cells[cells["config"] == config], axis)
            x = d[axis].to_numpy(float)
            if axis == "rho":
                x = 1.0 - x
            # measured points of different configurations often share a grid rate: a small sideways offset per
            # configuration (3% in x, a log axis) keeps each visible; lines and bands stay at the true x
            xm = x * 1.03 ** (k - (len(colours) - 1) / 2)
            pred, lo, hi = (d[c].to_numpy(float) for c in ("max_lr_predicted", "max_lr_predicted_ci_low",
                                                            "max_lr_predicted_ci_high"))
            lo, hi = np.where(np.isfinite(lo), lo, pred), np.where(np.isfinite(hi), hi, pred)
            # a band wider than BAND_MAX says the seeds disagree by decades: drawn, it would hide every other line
            narrow = hi <= lo * BAND_MAX
            note = "" if narrow.all() else f"band > {BAND_MAX:g}x not drawn"
            ax.plot(x, pred, "-", color=colour, lw=1.4, label=f"{config}{_fit_label(fits, config, axis, note)}")
            ax.fill_between(x, lo, hi, where=narrow, color=colour, alpha=0.15, lw=0)
            m, bad = d["max_lr_measured"].to_numpy(float), d["max_lr_bad"].to_numpy(float)
            shown += [v for v in (*pred, *m, *bad) if np.isfinite(v) and v > 0]
            ok = np.isfinite(m)
            cens = d["censored"].to_numpy(bool)
            ax.errorbar(xm[ok], m[ok], yerr=[np.zeros(ok.sum()), np.where(np.isfinite(bad[ok]), bad[ok] - m[ok], 0)],
                        fmt="none", ecolor=colour, elinewidth=1, capsize=2)
            ax.plot(xm[ok & ~cens], m[ok & ~cens], "o", color=colour, ms=5)
            ax.plot(xm[ok & cens], m[ok & cens], "o", mfc="none", mec=colour, ms=5)
        ax.set_yscale("log")
        if shown:
            ax.set_ylim(min(shown) / 4, max(shown) * 4)
        ax.set_xscale("log", base=10 if axis == "rho" else 2)
        if axis != "rho":  # the grid's own values as plain numbers (not 2^5)
            values = sorted(set(cells[axis].astype(int)) & set(_on_axis(cells, axis)[axis].astype(int)))
            ax.set_xticks(values, [str(v) for v in values])
            ax.minorticks_off()
        ax.set_xlabel(_AXIS_LABEL[axis])
        ax.set_ylabel("largest learning rate that trains")
        ax.legend(fontsize=6.5, loc="best")
    return axes


def plot_scaling(cells, fits, title: str = ""):
    """:func:`figure_scaling` as a figure of its own."""
    from propagate.report.style import plt, report_style

    n = len([a for a in AXES if a in set(",".join(cells["axes"]).split(","))])
    with report_style():
        fig, axes = plt.subplots(1, n, figsize=(4.3 * n, 4.3), squeeze=False, constrained_layout=True)
        figure_scaling(cells, fits, axes=axes[0])
        fig.suptitle(title, fontsize=10)
    return fig


def _ratio_text(r) -> str:
    return "no measured limit" if not np.isfinite(r) else f"{r:.2f}"


def miss_lines(cells) -> list[str]:
    """Each cell whose measured / predicted ratio is outside [0.5, 2], with what the tables say about why."""
    lines = []
    for _, c in cells.iterrows():
        r = c["ratio"]
        if not np.isfinite(r) or 0.5 <= r <= 2:
            continue
        why = []
        if c.get("censored"):
            why.append("the largest learning rate tried still trains, so the measured value is only a lower bound "
                       "and the true ratio is larger still")
        crit = str(c.get("criterion") or "")
        if crit.startswith("no-progress"):
            why.append("the lookahead saw no learning rate make progress and fell back to the edge of stability")
        if r > 2:
            why.append("training recovers from first steps that the lookahead calls too large (the loss after "
                       f"{int(c.get('steps', 0)) or 'K'} steps has not yet come back down)")
            if "-bn-" in str(c["config"]):
                why.append("with BN each hidden layer is invariant to its weights' scale, so large first steps grow "
                           "the weights and shrink the effective step lr / |W|^2 (Arora, Li & Lyu 2019): the "
                           "network limps on to the accuracy level at rates whose first steps undo the initial "
                           "progress")
        else:
            why.append("the first steps are stable but one epoch at that rate does not reach the accuracy level "
                       "(too slow or pushed off its statistics later than the lookahead looks)")
        lines.append(f"- {c['config']} at {c['cell']}: measured / predicted = {r:.2f}; " + "; ".join(why) + ".")
    return lines


def fit_lines(fits) -> list[str]:
    """One bullet per configuration and axis: the measured and predicted exponents with their 95% intervals."""
    out = []
    for (config, axis), f in fits.groupby(["config", "axis"], sort=False):
        f = f.set_index("source")
        parts = []
        for src in ("measured", "predicted"):
            if src not in f.index:
                continue
            s = f.loc[src]
            if not np.isfinite(s["slope"]):
                parts.append(f"{src}: not enough points")
                continue
            ci = (f" [{s['slope_ci_low']:.2f}, {s['slope_ci_high']:.2f}]" if np.isfinite(s["slope_ci_low"]) else "")
            parts.append(f"{src} {s['slope']:.2f}{ci} ({int(s['n_points'])} points)")
        out.append(f"- {config}, d ln lr* / d ln {'n' if axis == 'width' else 'L'}: " + "; ".join(parts))
    return out


def _axis_ratio(cells, axis, values) -> str:
    """Measured and predicted ``lr*(second) / lr*(first)`` along ``axis`` (rho, batch size), per configuration."""
    out = []
    for config, d in cells.groupby("config", sort=False):
        d = _on_axis(d, axis).set_index(axis)
        if not all(v in d.index for v in values):
            continue
        a, b = d.loc[values[0]], d.loc[values[-1]]
        meas = b["max_lr_measured"] / a["max_lr_measured"]
        pred = b["max_lr_predicted"] / a["max_lr_predicted"]
        out.append(f"{config}: measured {_ratio_text(meas)}, predicted {_ratio_text(pred)}")
    return "; ".join(out) if out else "not measured"


def budget_text(cells, S: dict) -> str:
    """How long each cell trains: the epochs per batch size where the equal-steps budget raises them."""
    if "epochs" not in cells:
        return f"{S['epochs']} epoch(s) per run"
    per = cells.groupby("batch_size")["epochs"].max().dropna()
    raised = [f"{int(e)} at batch {b}" for b, e in per.items() if e > S["epochs"]]
    text = f"{S['epochs']} epoch(s) per run"
    if raised:
        text += (", raised so that every cell takes at least the base cell's optimizer steps (its batch size's "
                 f"epoch): {', '.join(raised)}")
    return text


def censored_text(censored) -> str:
    """What the cells whose largest rate tried still trains (``censored``: their rows) count for."""
    if not len(censored):
        return "No cell still trains at the largest rate tried (the grid climbs above its top where that trains)."
    return (f"{len(censored)} cell(s) still train at the largest rate tried, so their measured limit is only a lower "
            "bound: counted as a miss when even that bound is more than 2x the prediction, left out otherwise "
            f"({int(censored['within_2x'].isna().sum())} left out).")


def _resolution(S: dict) -> float:
    """The factor to which a measured limit is known: the grid's spacing, halved in log ``refine`` times."""
    lrs = sorted(S["lrs"])
    step = float(np.median(np.array(lrs[1:]) / np.array(lrs[:-1]))) if len(lrs) > 1 else 10.0
    return step ** (0.5 ** S["refine"])


def section_markdown(cells, fits, S: dict, data_note: str) -> str:
    within = cells["within_2x"].dropna().astype(bool)
    censored = cells[cells["censored"].astype(bool)] if "censored" in cells else cells.iloc[:0]
    misses = miss_lines(cells)
    axes = S["axes"]
    return render("section_scaling.md", {
        "configs": ", ".join(S["configs"]), "base": ", ".join(f"{k} {v:g}" for k, v in S["base"].items()),
        "axes": "; ".join(f"{k} {', '.join(f'{v:g}' for v in vals)}" for k, vals in axes.items()),
        "n_seeds": len(S["seeds"]), "level": f"{S['level']:g}", "data_note": data_note,
        "refine": S["refine"], "resolution": f"{_resolution(S):.3g}", "n_cells": len(within),
        "n_within": int(within.sum()),
        "share_within": f"{within.mean():.0%}" if len(within) else "n/a",
        "n_unmeasured": int(cells["ratio"].isna().sum()), "budget": budget_text(cells, S),
        "censored": censored_text(censored),
        "misses": "\n".join(misses) if misses else "No cell with a measured limit misses by more than 2x.",
        "fits": "\n".join(fit_lines(fits)),
        "rho": _axis_ratio(cells, "rho", axes.get("rho", ())) if "rho" in axes else "not measured",
        "batch": _axis_ratio(cells, "batch_size", axes.get("batch_size", ())) if "batch_size" in axes
        else "not measured",
    })


def _settings(ctx: dict) -> dict:
    S = dict(SETTINGS_QUICK if ctx.get("quick") else SETTINGS_FULL)
    S.update(ctx.get("scaling_settings") or {})
    return S


def _compute(S: dict, dataset, ctx: dict, progress, where: dict | None = None):
    if S["n_train"] is not None and S["n_train"] < dataset.n_train:
        dataset = replace(dataset, name=f"{dataset.name}[:{S['n_train']}]", x_train=dataset.x_train[:S["n_train"]],
                          y_train=dataset.y_train[:S["n_train"]])
    opts = ScalingOptions(seeds=tuple(int(ctx.get("seed", 0)) + s for s in S["seeds"]), epochs=S["epochs"],
                          level=S["level"], lrs=tuple(S["lrs"]), refine=S["refine"], threads=1)
    folder = ctx.get("scaling_dir") or (Path(ctx["work_dir"]) / "scaling" if ctx.get("work_dir") else None)
    res = scaling_grid(dataset, S["configs"], axes=S["axes"], base=S["base"], options=opts, out_dir=folder,
                       progress=progress, **(where or {}))
    note = f"{dataset.name} ({dataset.n_train:,} training images)"
    return res.cells, res.fits, note


def start(ctx: dict, progress=None):
    """The scaling grid as one part of ``ctx["runner"]`` (in process without one); its ``result()`` is
    ``(cells, fits, data note)``. The report calls it early (on Dask the grid's points run from then on);
    :func:`section` gets the same part."""
    runner = ctx.get("runner") or ReportRunner()
    dataset = ctx.get("dataset_obj")
    if dataset is None:
        from propagate.data import load_dataset

        dataset = load_dataset(ctx.get("dataset", "mnist-5k"))
    return runner.part("scaling", _compute, _settings(ctx), dataset, ctx, runner.guard(progress), runner.where())


def section(out_dir: Path, ctx: dict, progress=None) -> str:
    """The scaling grid's tables, figure and text (module docstring); ``ctx`` as the other sections' (its grid
    runs on ``ctx["runner"]``, :func:`start`)."""
    out_dir = Path(out_dir)
    S = _settings(ctx)
    say = progress if callable(progress) else (lambda m: None)
    cells, fits, note = start(ctx, say).result()
    write_table(cells, out_dir / "data" / "scaling_cells.csv")
    write_table(fits, out_dir / "data" / "scaling_fits.csv")
    from propagate.report.style import save_figure

    save_figure(plot_scaling(cells, fits, title="Largest learning rate that trains: measured (dots) and "
                                                "predicted from the first steps (lines, 95% band)"),
                out_dir / "figures" / "scaling.png")
    return section_markdown(cells, fits, S, note)
