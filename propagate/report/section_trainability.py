"""Report section: the learning rate as an axis (trainability map, first-epoch dynamics, sharpness prediction).

Data: :func:`propagate.trainability.trainability` over presets and a log grid
of learning rates (seed ensembles), or the tables of a finished
``propagate trainability --out DIR`` run (``ctx["trainability_dir"]``, so the
committed reports can use a larger grid than a report build can afford), and
:func:`propagate.trainability.first_epoch_dynamics` for the SNN recipe
(``selu-lecun-normal``) and plain ReLU (``relu``) at three learning rates.

Figures: :func:`figure_trainability_map` (configurations x learning rates,
final training accuracy as colour, divergence hatched, the measured largest
learning rate that trains, the one predicted from the preconditioned
sharpness, and the lecture demo's 1e-3) and :func:`figure_dynamics_map` and :func:`figure_dynamics_lines` (layers x steps,
log10 of the pre-activation variance), each drawn on given axes;
:func:`plot_trainability_map` and :func:`plot_dynamics` make the figures the
section saves. The tables come from :func:`compute_trainability_grid` (or
:func:`read_trainability_dir`) and :func:`compute_dynamics`; the prose is
``propagate/templates/section_trainability.md``, filled by
:func:`section_markdown` with sentences decided by the numbers.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from propagate.io import read_table, write_table
from propagate.report.tasks import ReportRunner
from propagate.templates import render
from propagate.trainability import TrainabilityOptions, first_epoch_dynamics, trainability
from propagate.sign_steps import warmup_gain

__all__ = ["section", "figure_trainability_map", "figure_dynamics_map", "figure_dynamics_lines", "plot_trainability_map", "plot_dynamics",
           "TrainabilityGrid", "section_settings", "read_trainability_dir", "compute_trainability_grid",
           "compute_dynamics", "config_lines", "verdict_flips", "prediction_values", "dynamics_text",
           "section_markdown", "start", "start_dynamics", "dynamics_trace", "SETTINGS_FULL", "SETTINGS_QUICK", "DEMO_LR", "SEED_LR"]

#: The lecture demo's learning rate (Keras RMSprop default); ``SEED_LR`` is its old name.
DEMO_LR = SEED_LR = 1e-3
#: The section's own grid when no finished ``propagate trainability`` folder is given (``ctx["trainability_dir"]``):
#: small enough for a report build on one core (full: about 2.5 min of CPU, quick: about 20 s), so it
#: trains on a subset (``n_train`` images) for ``epochs`` epochs and calls a cell 'trains' at a lower
#: ``level`` of the running training accuracy than the command's default 0.5 (chance is 0.1).
SETTINGS_FULL = dict(presets=("selu-lecun-normal", "selu-bn-lecun-uniform", "relu", "relu-bn"),
                     lrs=(1e-4, 1e-3, 1e-2), seeds=(0, 1, 2), epochs=2, n_train=2000, n_test=1000, level=0.3,
                     dyn_presets=("selu-lecun-normal",), dyn_lrs=(1e-4, 1e-3), dyn_steps=None, dyn_seeds=(0, 1, 2),
                     sharpness_batch=256, lanczos_iters=15, warmup=20, warmup_presets=("selu-lecun-normal",))
SETTINGS_QUICK = dict(presets=("selu-lecun-normal", "relu"), lrs=(1e-4, 1e-3, 1e-2), seeds=(0, 1), epochs=1,
                      n_train=512, n_test=256, level=0.3, dyn_presets=("selu-lecun-normal",),
                      dyn_lrs=(1e-4, 1e-3), dyn_steps=4, dyn_seeds=(0, 1), sharpness_batch=128, lanczos_iters=8, warmup=20,
                      warmup_presets=("selu-lecun-normal",), per_decade=2)


def _lr_label(lr: float) -> str:
    """``1e-4`` for powers of ten, else two significant digits in the same form (``3.2e-4``)."""
    e = math.log10(lr)
    if abs(e - round(e)) < 1e-9:
        return f"1e{int(round(e))}"
    k = math.floor(e)
    return f"{lr / 10**k:.2g}e{k}"


def _lr_columns(lrs):
    """``(x, edges, xpos)``: one column per grid learning rate, and where any other learning rate falls.

    Other learning rates (refined points, predictions) are placed by
    interpolating log10(lr) between the columns, which is the log scale itself
    on an evenly spaced grid (and extrapolating beyond its ends).
    """
    x = np.arange(len(lrs), dtype=float)
    edges = np.arange(len(lrs) + 1) - 0.5
    loglrs = np.log10(lrs)

    def xpos(lr):
        v = math.log10(lr)
        if len(lrs) == 1:
            return 0.0 + (v - loglrs[0])
        if v < loglrs[0]:
            return (v - loglrs[0]) / (loglrs[1] - loglrs[0])
        if v > loglrs[-1]:
            return len(lrs) - 1 + (v - loglrs[-1]) / (loglrs[-1] - loglrs[-2])
        return float(np.interp(v, loglrs, x))

    return x, edges, xpos


def _draw_cells(ax, grid, names, lrs, x, edges, criterion: str) -> np.ndarray:
    """Each cell's mean and 95% interval as text; diverged cells hatched with "div". Returns the means (NaN: none)."""
    import matplotlib.pyplot as plt

    A = np.full((len(names), len(lrs)), np.nan)
    for i, n in enumerate(names):
        for j, lr in enumerate(lrs):
            sel = grid[(grid["config"] == n) & np.isclose(grid["lr"], lr)]
            if not len(sel):
                continue
            r = sel.iloc[0]
            if r["outcome"] == "diverged":
                ax.add_patch(plt.Rectangle((edges[j], i - 0.5), edges[j + 1] - edges[j], 1, fill=False, hatch="xx",
                                           edgecolor="0.45", lw=0.5, zorder=3))  # above the mesh's grey
                ax.text(x[j], i, "div", ha="center", va="center", fontsize=8, color="black", zorder=4,
                        bbox=dict(facecolor="white", edgecolor="none", pad=1.5))
                continue
            A[i, j] = r[f"{criterion}_mean"]
            lo, hi = r.get(f"{criterion}_ci_low", np.nan), r.get(f"{criterion}_ci_high", np.nan)
            txt = f"{A[i, j]:.2f}"
            if np.isfinite(lo) and np.isfinite(hi):
                txt += f"\n[{max(lo, 0):.2f}, {min(hi, 1):.2f}]"
            ax.text(x[j], i, txt, ha="center", va="center", fontsize=7,
                    color="white" if A[i, j] < 0.55 else "black")
    return A


def _draw_predicted(ax, i: int, p: float, lo: float, hi: float, xpos, edges, step: float = 1.0) -> None:
    """Row ``i``'s predicted largest learning rate: a diamond with its 95% interval on the grid, an arrow off it."""
    lp = xpos(p)
    if lp < edges[0] or lp > edges[-1]:
        left = lp < edges[0]
        at = edges[0] if left else edges[-1]
        ax.annotate(f"pred. {p:.1g}", xy=(at, i + 0.33), xytext=(at + (0.45 if left else -0.45) * step, i + 0.33),
                    fontsize=7, va="center", ha="left" if left else "right", color="white",
                    arrowprops=dict(arrowstyle="->", color="white", lw=1.2), zorder=6)
        return
    if np.isfinite(lo) and np.isfinite(hi) and lo > 0:
        a, b = max(xpos(lo), edges[0]), min(xpos(hi), edges[-1])
        ax.plot([a, b], [i + 0.33, i + 0.33], color="white", lw=2.2, solid_capstyle="butt", zorder=5)
        ax.plot([a, b], [i + 0.33, i + 0.33], color="black", lw=0.8, zorder=5)
    ax.plot(lp, i + 0.33, marker="D", ms=7, color="white", mec="black", zorder=6)


def _draw_config_marks(ax, configs, names, xpos, edges) -> None:
    """Per row: measured largest lr (triangle) and the one predicted from the first steps (diamond, 95% interval)."""
    cfg = configs.set_index("config") if len(configs) else None
    for i, n in enumerate(names):
        if cfg is None or n not in cfg.index:
            continue
        c = cfg.loc[n]
        m = c.get("max_lr_measured", np.nan)
        if np.isfinite(m):
            ax.plot(xpos(m), i - 0.38, marker="v", ms=9, color="black",
                    mfc="none" if bool(c.get("censored", False)) else "black", clip_on=False, zorder=5)
        p = c.get("max_lr_predicted", np.nan)
        if np.isfinite(p) and p > 0:
            _draw_predicted(ax, i, p, c.get("max_lr_predicted_ci_low", np.nan), c.get("max_lr_predicted_ci_high",
                                                                                       np.nan), xpos, edges)


def _map_legend(ax, seed_lr: float, level: float | None) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [Line2D([], [], marker="v", color="black", ls="", label="largest lr that trains (measured)"),
               Line2D([], [], marker="D", color="white", mec="black", ls="-", mfc="white",
                      label="predicted from the first steps (95% interval)"),
               Line2D([], [], color="red", ls="--", label=f"the lecture demo's lr {seed_lr:g}"),
               Patch(facecolor="white", edgecolor="0.35", hatch="xx", label="diverged (inf/NaN loss)")]
    if level is not None:
        handles.append(Line2D([], [], ls="", label=f"trains: lower 95% bound > {level:g}"))
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3, fontsize=7, frameon=False)


def figure_trainability_map(points, configs, *, criterion: str = "acc", seed_lr: float = SEED_LR, ax=None,
                            level: float | None = None):
    """Configurations (rows) x learning rates (columns, log): mean final ``criterion`` as colour.

    Cells of ``outcome == "diverged"`` are hatched and say "div"; each cell
    shows the mean and, below it, the 95% interval. Per row: a black triangle
    at ``max_lr_measured`` (open when censored at the top of the grid), a
    white diamond at ``max_lr_predicted`` (an arrow at the left edge with its
    value when it lies below the grid), an open circle at gradient descent's
    ``max_lr_predicted_gd`` (only when on the grid), and a dashed line at ``seed_lr``.
    ``points``/``configs``: the tables of :func:`propagate.trainability.trainability`.
    Refined points (``refined``) are not cells; they only move the triangle.
    """
    import matplotlib.pyplot as plt

    grid = points[~points["refined"].astype(bool)] if "refined" in points.columns else points
    names = list(dict.fromkeys(configs["config"])) if len(configs) else list(dict.fromkeys(grid["config"]))
    lrs = sorted(grid["lr"].unique())
    x, edges, xpos = _lr_columns(lrs)
    if ax is None:
        _, ax = plt.subplots(figsize=(1.3 * len(lrs) + 3.5, 0.75 * len(names) + 1.8), constrained_layout=True)
    cmap = plt.get_cmap("viridis").with_extremes(bad="0.85")
    A = _draw_cells(ax, grid, names, lrs, x, edges, criterion)
    mesh = ax.pcolormesh(edges, np.arange(len(names) + 1) - 0.5, np.ma.masked_invalid(A), cmap=cmap, vmin=0, vmax=1)
    plt.colorbar(mesh, ax=ax, label=f"final training accuracy ({criterion}, mean over seeds)")
    _draw_config_marks(ax, configs, names, xpos, edges)
    if edges[0] <= xpos(seed_lr) <= edges[-1]:
        ax.axvline(xpos(seed_lr), color="red", ls="--", lw=1.2)
    ax.set_xticks(x, [_lr_label(v) for v in lrs])
    ax.set_yticks(range(len(names)), names)
    ax.set_xlim(edges[0], edges[-1])
    ax.set_ylim(len(names) - 0.5, -0.5)
    ax.set_xlabel("learning rate (one column per grid value)")
    ax.grid(False)
    _map_legend(ax, seed_lr, level)
    return ax


def _log10_var(d):
    with np.errstate(divide="ignore", invalid="ignore"):
        v = np.log10(d["pre_var"].to_numpy(float))
    return np.where(np.isfinite(v), v, np.nan)


def dynamics_scale(dyn) -> float:
    """The heat maps' colour range in decades: the largest |mean over seeds of log10 variance|, between 0.5 and 3."""
    m = dyn.assign(lv=_log10_var(dyn)).groupby(["lr", "layer", "step"])["lv"].mean().to_numpy(float)
    return float(np.clip(np.nanmax(np.abs(m)) if np.isfinite(m).any() else 1.0, 0.5, 3.0))


def figure_dynamics_map(ax, d, lim: float, title: str = ""):
    """Layers (rows) x recorded steps (columns): log10 of the pre-activation variance, mean over the seeds of ``d``.

    Steps are columns in recorded order (0, 1, 2, 4, ..., the epoch's last:
    log-spaced); white: not finite (the run diverged before). The colour scale
    is centred on log10 1 = 0 and spans ``+-lim`` decades (values beyond it
    take the end colours). Returns the mesh (for a colour bar).
    """
    from matplotlib.colors import TwoSlopeNorm

    d = d.assign(lv=_log10_var(d))
    m = d.groupby(["layer", "step"])["lv"].mean().unstack("step")
    steps, layers = list(m.columns), list(m.index)
    mesh = ax.pcolormesh(np.arange(len(steps) + 1), np.arange(len(layers) + 1) + 0.5,
                         np.ma.masked_invalid(m.to_numpy(float)), cmap="RdBu_r",
                         norm=TwoSlopeNorm(vmin=-lim, vcenter=0.0, vmax=lim))
    every = max(1, len(steps) // 8)
    ax.set_xticks(np.arange(0, len(steps), every) + 0.5, [str(s) for s in steps[::every]], fontsize=7)
    ax.set_xlabel("training step (log-spaced to the end of the first epoch)")
    ax.set_ylabel("hidden layer")
    ax.set_ylim(len(layers) + 0.5, 0.5)
    ax.set_title(title, fontsize=9)
    ax.grid(False)
    return mesh


def _band(ax, x, per_seed, colour, label, ls="-", log=False):
    """Mean over seeds (rows of ``per_seed``) with its 95% t interval as a band; ``log``: both taken on the log
    scale (a positive quantity: the geometric mean, and a band that stays positive)."""
    from scipy import stats as sps

    y = np.asarray(per_seed, float)
    if log:
        with np.errstate(divide="ignore", invalid="ignore"):
            y = np.where(y > 0, np.log(y), np.nan)
    n = np.isfinite(y).sum(0)
    mean = np.nanmean(y, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        half = np.where(n > 1, sps.t.ppf(0.975, np.maximum(n - 1, 1)) * np.nanstd(y, 0, ddof=1) / np.sqrt(n), np.nan)
    lo, hi = mean - half, mean + half
    if log:
        mean, lo, hi = np.exp(mean), np.exp(lo), np.exp(hi)
    ax.plot(x, mean, ls, color=colour, lw=1.4, label=label)
    ax.fill_between(x, lo, hi, color=colour, alpha=0.18, lw=0)


def figure_dynamics_lines(ax_var, ax_loss, d, lrs, layers):
    """Per learning rate (colour): log10 variance of ``layers`` (line styles) and the minibatch loss against the step,
    mean over seeds with its 95% t interval."""
    colours = ["tab:blue", "tab:red", "tab:green", "tab:purple"]
    styles = ["-", "--", ":", "-."]
    for c, lr in zip(colours, lrs):
        dl = d[np.isclose(d["lr"], lr)].assign(lv=lambda t: _log10_var(t))
        for ls, layer in zip(styles, layers):
            t = dl[dl["layer"] == layer].pivot_table(index="seed", columns="step", values="lv")
            _band(ax_var, np.asarray(t.columns, float) + 1, t.to_numpy(float), c, f"lr {lr:g}, layer {layer}", ls)
        loss = dl[dl["layer"] == layers[0]].pivot_table(index="seed", columns="step", values="loss")
        _band(ax_loss, np.asarray(loss.columns, float) + 1, loss.to_numpy(float), c, f"lr {lr:g}", log=True)
    steps = sorted(int(v) for v in d["step"].unique())
    for ax in (ax_var, ax_loss):
        ax.set_xscale("log")
        ax.set_xticks([v + 1 for v in steps], [str(v) for v in steps])
        ax.minorticks_off()
        ax.set_xlabel("training step (log scale)")
        ax.legend(fontsize=6.5)
    ax_loss.set_yscale("log")
    ax_var.axhline(0.0, color="0.5", lw=0.8)
    ax_var.set_ylabel("log10 pre-activation variance")
    ax_loss.set_ylabel("minibatch loss (nats; geometric mean, 95% band)")


# ----------------------------------------------------------------------------
# the figures as the section saves them


def plot_trainability_map(points, configs, *, criterion: str = "acc", level: float | None = None, title: str = ""):
    """The trainability map as a figure of its own (:func:`figure_trainability_map`, sized to the grid)."""
    from propagate.report.style import plt, report_style

    names = list(dict.fromkeys(configs["config"]))
    lrs = sorted(points["lr"].unique())
    with report_style():
        fig, ax = plt.subplots(figsize=(1.25 * len(lrs) + 4.5, 0.8 * len(names) + 2.2), constrained_layout=True)
        figure_trainability_map(points, configs, criterion=criterion, ax=ax, level=level)
        ax.set_title(title)
    return fig


def plot_dynamics(dyn, preset: str, lrs):
    """The first-epoch figure of one configuration: a heat map per learning rate, then the variance of the first,
    middle and last layer and the minibatch loss against the step (bands: 95% t intervals over seeds)."""
    from propagate.report.style import plt, report_style

    d = dyn[dyn["config"] == preset]
    lim = dynamics_scale(d)
    depth = int(d["layer"].max())
    with report_style():
        fig, axes = plt.subplots(2, len(lrs), figsize=(5.0 * len(lrs) + 1, 8.2), squeeze=False,
                                 constrained_layout=True)
        mesh = None
        for ax, lr in zip(axes[0], lrs):
            dl = d[np.isclose(d["lr"], lr)]
            div = int(dl.groupby("seed")["diverged"].any().sum())
            title = f"{preset}, lr {lr:g}: mean over {dl['seed'].nunique()} seeds" + (f" ({div} diverged)" if div else "")
            mesh = figure_dynamics_map(ax, dl, lim, title)
        if mesh is not None:
            fig.colorbar(mesh, ax=list(axes[0]), extend="both",
                         label=f"log10 pre-activation variance (0 = variance 1; scale +-{lim:.2g} decades)")
        figure_dynamics_lines(axes[1][0], axes[1][-1], d, lrs, sorted({1, max(1, depth // 2), depth}))
        for ax in axes[1][1:-1]:
            ax.set_visible(False)
    return fig


# ----------------------------------------------------------------------------
# the data


@dataclass
class TrainabilityGrid:
    """The map's tables and how they were made: ``points``/``configs`` of
    :func:`propagate.trainability.trainability`, the ``criterion`` and
    ``level`` a cell trains at, seeds and epochs per cell, and ``data_note``
    (which images it trained on, as the page states it)."""

    points: Any
    configs: Any
    criterion: str
    level: float
    n_seeds: int
    epochs: Any
    data_note: str
    predictions: Any = None


def section_settings(ctx: dict) -> dict:
    """:data:`SETTINGS_QUICK` or :data:`SETTINGS_FULL` with ``ctx["trainability_settings"]`` over them."""
    S = dict(SETTINGS_QUICK if ctx.get("quick") else SETTINGS_FULL)
    S.update(ctx.get("trainability_settings") or {})  # e.g. tests: smaller grids, {"specs": {name: NetworkSpec}}
    return S


def _spec_of(S: dict, name: str):
    from propagate.presets import get_preset

    return S.get("specs", {}).get(name) or get_preset(name).spec()


def _subset(dataset, n_train, n_test):
    if n_train is None or (n_train >= dataset.n_train and (n_test is None or n_test >= dataset.n_test)):
        return dataset
    nt = dataset.n_test if n_test is None else min(n_test, dataset.n_test)
    return replace(dataset, name=f"{dataset.name}[:{n_train}]", x_train=dataset.x_train[:n_train],
                   y_train=dataset.y_train[:n_train], x_test=dataset.x_test[:nt], y_test=dataset.y_test[:nt])


def read_trainability_dir(folder, dataset) -> TrainabilityGrid:
    """The tables of a finished ``propagate trainability --out`` folder; ``dataset``: the full data it drew from."""
    folder = Path(folder)
    points, configs = read_table(folder / "points.csv"), read_table(folder / "configs.csv")
    meta = json.loads((folder / "points.csv.meta.json").read_text())
    topt = meta.get("options", {})
    used = meta.get("dataset", {})
    n_used = used.get("n_train", "?")
    if isinstance(n_used, int) and n_used < dataset.n_train:
        data_note = (f"the first {n_used:,} of the {dataset.n_train:,} training images of {dataset.name} "
                     f"(a stated subset: the whole grid on all images would take hours on the build machine; "
                     f"test accuracy on all {used.get('n_test', '?'):,} test images)")
    else:
        data_note = (f"{used.get('name', '?')} ({n_used} training images), from "
                     f"`{meta.get('command', 'propagate trainability')}`")
    pred_file = folder / "predictions.csv"
    predictions = read_table(pred_file) if pred_file.is_file() else None
    return TrainabilityGrid(points, configs, topt.get("criterion", "acc"), float(topt.get("level", 0.5)),
                            len(topt.get("seeds", [])), topt.get("epochs", "?"), data_note, predictions)


def configs_with_warmup(configs, presets, warmup: int) -> list:
    """``configs`` and, for each of ``presets`` among them, a twin ``NAME+warmupW`` trained with ``warmup`` steps."""
    twins = [(f"{n}+warmup{warmup}", spec, {"warmup": warmup}) for n, spec in configs if n in presets]
    return list(configs) + twins


def compute_trainability_grid(S: dict, sub, seed: int, full_name: str, progress=None, *, where: dict | None = None,
                              out_dir=None) -> TrainabilityGrid:
    """Train the settings' presets over their learning rates on ``sub`` (a subset of ``full_name``).

    ``where``: :func:`propagate.trainability.trainability`'s ``workers`` /
    ``scheduler`` / ``client`` (default in process); ``out_dir``: its folder
    (resumable points), or ``None``.
    """
    opts = TrainabilityOptions(seeds=tuple(seed + s for s in S["seeds"]), epochs=S["epochs"], level=S["level"],
                               sharpness_batch=S["sharpness_batch"], lanczos_iters=S["lanczos_iters"],
                               lookahead_per_decade=S.get("per_decade", 4), threads=1, probe_size=64)
    res = trainability(configs_with_warmup([(p, _spec_of(S, p)) for p in S["presets"]], S["warmup_presets"],
                                           S["warmup"]), S["lrs"], sub, opts, progress=progress, out_dir=out_dir,
                       **(where or {}))
    data_note = (f"the first {sub.n_train} training images of {full_name} (a subset, so the section "
                 f"builds in minutes; test accuracy on {sub.n_test} test images)")
    return TrainabilityGrid(res.points, res.configs, opts.criterion, opts.level, len(opts.seeds), opts.epochs,
                            data_note, res.predictions)


def start(ctx: dict, progress=None):
    """The section's own grid (no ``ctx["trainability_dir"]``) as one part of ``ctx["runner"]`` (in process
    without one), kept in ``ctx["work_dir"]``'s ``trainability-section/``; its ``result()`` is
    :func:`compute_trainability_grid`'s. The report calls it early; :func:`section` gets the same part."""
    runner = ctx.get("runner") or ReportRunner()
    S, dataset = section_settings(ctx), _dataset(ctx)
    work = ctx.get("work_dir")
    return runner.part("trainability section", compute_trainability_grid, S, _subset(dataset, S["n_train"], S["n_test"]),
                       int(ctx.get("seed", 0)), dataset.name, runner.guard(progress), where=runner.where(),
                       out_dir=Path(work) / "trainability-section" if work else None)


def _dataset(ctx: dict):
    dataset = ctx.get("dataset_obj")
    if dataset is None:
        from propagate.data import load_dataset

        dataset = load_dataset(ctx.get("dataset", "mnist-5k"))
    return dataset


def dynamics_trace(spec, lr: float, seed: int, data, max_steps):
    """One first-epoch trace (:func:`propagate.trainability.first_epoch_dynamics`, one thread, 128 probe images)."""
    from propagate.train import TrainOptions

    return first_epoch_dynamics(spec, TrainOptions(lr=lr, seed=seed, threads=1), data, probe_size=128,
                                max_steps=max_steps)


def _dynamics_tasks(S: dict, data, seed: int, runner) -> list:
    """``[(preset, lr, seed, task)]``: every trace of :func:`compute_dynamics` as one task of ``runner``."""
    shared = runner.share("trainability dynamics data", data)
    return [(p, lr, seed + k, runner.task(f"dynamics {p} lr {lr:g} seed {seed + k}", dynamics_trace, _spec_of(S, p),
                                          lr, seed + k, shared, S["dyn_steps"]))
            for p in S["dyn_presets"] for lr in S["dyn_lrs"] for k in S["dyn_seeds"]]


def compute_dynamics(S: dict, data, seed: int, progress=None, runner=None):
    """First-epoch per-layer statistics of each ``dyn_presets`` at each ``dyn_lrs`` for each of ``dyn_seeds``, one table.

    Each trace is one task of ``runner`` (:meth:`propagate.report.tasks.ReportRunner.task`; default in process):
    on Dask they run on the workers, side by side."""
    import pandas as pd

    runner = runner or ReportRunner()
    say = progress if callable(progress) else (lambda m: None)
    frames = []
    for p, lr, k, task in _dynamics_tasks(S, data, seed, runner):
        say(f"first-epoch dynamics: {p} lr {lr:g} seed {k}")
        frames.append(task.result().assign(config=p, lr=lr, seed=k))
    cols = ["config", "lr", "seed"]
    df = pd.concat(frames, ignore_index=True)
    return df[cols + [c for c in df.columns if c not in cols]]


def start_dynamics(ctx: dict):
    """The section's first-epoch traces as tasks of ``ctx["runner"]`` (the report calls it early: on Dask they
    run on workers from then on); :func:`section` gets the same tasks."""
    runner = ctx.get("runner") or ReportRunner()
    S, dataset = section_settings(ctx), _dataset(ctx)
    return _dynamics_tasks(S, _dynamics_data(ctx, S, dataset), int(ctx.get("seed", 0)), runner)


def _dynamics_data(ctx: dict, S: dict, dataset):
    """The traces' data: the section's subset in a quick report, all of the dataset's training images otherwise."""
    return _subset(dataset, S["n_train"], S["n_test"]) if ctx.get("quick") else dataset


# ----------------------------------------------------------------------------
# the prose: sentences decided by the numbers, placed in templates/section_trainability.md


def _fmt_lr(v) -> str:
    return "none" if v is None or not np.isfinite(v) else f"{v:.3g}"


def _interval_text(r, criterion: str) -> str:
    return f"{r[f'{criterion}_mean']:.3f} [{r[f'{criterion}_ci_low']:.3f}, {r[f'{criterion}_ci_high']:.3f}]"


def config_lines(grid: TrainabilityGrid) -> list[str]:
    """One bullet per configuration: largest lr measured and predicted, and the outcome at the demo's lr."""
    points, criterion = grid.points, grid.criterion
    cfg = grid.configs.set_index("config")
    lines = []
    for n in dict.fromkeys(grid.configs["config"]):
        c = cfg.loc[n]
        m, bad, pred = c.get("max_lr_measured", np.nan), c.get("max_lr_bad", np.nan), c.get("max_lr_predicted", np.nan)
        if np.isfinite(m):
            meas = f"trains up to lr {_fmt_lr(m)}" + (f" (not at {_fmt_lr(bad)})" if np.isfinite(bad)
                                                     else " (the top of the grid: a lower bound)")
        else:
            meas = "does not train at any learning rate tried"
        lo, hi = c.get("max_lr_predicted_ci_low", np.nan), c.get("max_lr_predicted_ci_high", np.nan)
        ci = f" [{_fmt_lr(lo)}, {_fmt_lr(hi)}]" if np.isfinite(lo) and np.isfinite(hi) else ""
        s = f"- **{n}** {meas}; predicted from its first steps: {_fmt_lr(pred)}{ci}"
        if np.isfinite(c.get("ratio", np.nan)):
            s += f" (measured / predicted = {c['ratio']:.2f})"
        note = c.get("prediction_note", "")
        if isinstance(note, str) and note:
            s += f" ({note})"
        at = points[(points["config"] == n) & np.isclose(points["lr"], SEED_LR)] if len(points) else points
        if len(at):
            r = at.iloc[0]
            s += f". At the demo's lr 1e-3: {r['outcome']}, final {criterion} {_interval_text(r, criterion)}"
        lines.append(s + ".")
    return lines


def verdict_flips(grid: TrainabilityGrid) -> list[str]:
    """Configurations whose outcome at the lecture demo's lr differs at other grid learning rates (with the best one)."""
    points, criterion = grid.points, grid.criterion
    flips = []
    for n in dict.fromkeys(grid.configs["config"]):
        g = points[(points["config"] == n) & ~points["refined"].astype(bool)].set_index("lr")
        at_seed = g[np.isclose(g.index, SEED_LR)]
        if not len(at_seed):
            continue
        o0 = at_seed["outcome"].iloc[0]
        other = g[(g["outcome"] != o0) & ~np.isclose(g.index, SEED_LR)]
        if not len(other):
            continue
        best = other.loc[other[f"{criterion}_mean"].idxmax()] if other[f"{criterion}_mean"].notna().any() else None
        txt = (f"{n}: {o0} at 1e-3 ({criterion} {_interval_text(at_seed.iloc[0], criterion)}), "
               + "; ".join(f"{o} at {', '.join(_lr_label(v) for v in grp.index)}"
                           for o, grp in other.groupby("outcome", sort=False)))
        if best is not None:
            txt += f" (best {_interval_text(best, criterion)} at {_lr_label(best.name)})"
        flips.append(txt)
    return flips


def _column(configs, name: str) -> np.ndarray:
    return configs[name].to_numpy(float) if name in configs.columns else np.array([])


def prediction_values(configs) -> dict:
    """The slots of the paragraphs on the predictions: measured / predicted, and the curvature bounds beside them."""
    ratios = _column(configs, "ratio")
    ok = np.isfinite(ratios)
    out = {"measured_over_predicted": "No configuration trains at any learning rate of the grid, so there is no "
                                      "ratio to give.", "sharpness": ""}
    if ok.any():
        r = ratios[ok]
        within = int(((r >= 0.5) & (r <= 2)).sum())
        span = f"{r[0]:.2f}" if len(r) == 1 else f"{r.min():.2f} to {r.max():.2f}"
        out["measured_over_predicted"] = (
            f"Where both exist, the measured largest learning rate is {span} times the predicted one "
            f"({within} of {len(r)} configurations within a factor of 2).")
    parts = []
    for col, what in (("ratio_sharpness", "$2/\\lambda_1(P^{-1}H)$ (RMSprop with its preconditioner frozen, "
                                          "Cohen et al. 2022)"),
                      ("ratio_gd", "$2/\\lambda_1(H)$ (plain gradient descent)")):
        v = _column(configs, col)
        good = np.isfinite(v)
        if good.any():
            parts.append(f"measured / {what}: " + ", ".join(f"{n} {x:.3g}" for n, x in
                                                             zip(configs["config"][good], v[good])))
    if parts:
        out["sharpness"] = (
            "For comparison, the curvature bounds at initialization (secondary columns of "
            "`data/trainability_configs.csv`): " + "; ".join(parts) + ". These bounds describe an optimizer whose "
            "preconditioner is frozen, which RMSprop's is not during its first $1/(1-\\rho)$ steps, and "
            "$2/\\lambda_1(H)$ moves $k$-fold when the loss is multiplied by $k$ while RMSprop's steps do not move "
            "at all (`tests/test_lr_limit.py` checks both): where they come close, it is by coincidence.")
    return out


def warmup_text(configs, warmup: int) -> str:
    """Predicted and measured effect of ``warmup`` steps of linear warmup on each configuration that has a warmup twin."""

    cfg = configs.set_index("config")
    lines = []
    for n in cfg.index:
        if n.endswith(f"+warmup{warmup}") and n[: -len(f"+warmup{warmup}")] in cfg.index:
            base, warm = cfg.loc[n[: -len(f"+warmup{warmup}")]], cfg.loc[n]
            pred = warm["max_lr_predicted"] / base["max_lr_predicted"]
            meas = warm["max_lr_measured"] / base["max_lr_measured"]
            meas_txt = (f"{meas:.2f}x (largest lr that trains {_fmt_lr(base['max_lr_measured'])} without, "
                        f"{_fmt_lr(warm['max_lr_measured'])} with)" if np.isfinite(meas) else
                        "not measurable (no largest learning rate that trains on one side)")
            lines.append(f"- **{n[: -len(f'+warmup{warmup}')]}**: predicted gain {pred:.2f}x (the lookahead, "
                         f"{_fmt_lr(base['max_lr_predicted'])} → {_fmt_lr(warm['max_lr_predicted'])}); "
                         f"measured {meas_txt}.")
    if not lines:
        return ""
    return (f"A linear warmup over {warmup} = 2/(1 - rho) steps shrinks exactly the first steps that are too large. "
            f"The sign-step picture predicts a gain of {warmup_gain(0.9, warmup):.2f}x in the largest stable "
            "learning rate (the displacement of the first steps with and without warmup, "
            "`derivations/trainability.md`); the lookahead runs the warmup itself:\n\n" + "\n".join(lines))


def _dynamics_summary(d, lrs) -> str:
    """Per learning rate: the last layer's variance at step 0 and at the epoch's last step (each seed), divergence,
    and the first update's size relative to the weights."""
    summ = []
    for lr in lrs:
        dl = d[np.isclose(d["lr"], lr)]
        depth = int(dl["layer"].max())
        last = dl[dl["layer"] == depth]
        v0 = last[last["step"] == 0]["pre_var"].to_numpy(float)
        end = last.loc[last.groupby("seed")["step"].idxmax()]
        div = int(dl.groupby("seed")["diverged"].any().sum())
        ur = dl[dl["step"] == 1]["update_ratio"].to_numpy(float)
        ends = ", ".join(f"{v:.3g}" for v in end["pre_var"].to_numpy(float))
        txt = (f"lr {lr:g}: layer {depth}'s variance {np.nanmean(v0):.3g} at step 0 (mean over seeds), "
               f"{ends} at step {int(end['step'].max())} (per seed)")
        if div:
            txt += f"; {div} of {dl['seed'].nunique()} seeds diverged"
        if np.isfinite(ur).any():
            txt += f"; the first update moves the weights by {np.nanmedian(ur):.2g} of their norm (median)"
        summ.append(txt)
    return "; ".join(summ)


def _epsilon_sentence(d, spec, lr) -> str | None:
    """How the first step's gradient compares with RMSprop's epsilon (steps are lr * g / eps when g << eps)."""
    fans = [fi * fo for fi, fo in spec.fans()]
    d1 = d[(d["step"] == 1) & np.isclose(d["lr"], lr)]
    if "seed" in d1.columns and len(d1):
        d1 = d1[d1["seed"] == d1["seed"].min()]  # one network's layers
    d1 = d1.sort_values("layer")
    if len(d1) != len(fans):
        return None
    rms = float(np.nanmedian(d1["weight_grad_norm"].to_numpy(float) / np.sqrt(fans)))
    if not np.isfinite(rms):
        return None
    return (f"At the first step the root-mean-square entry of a weight matrix's minibatch gradient is "
            f"{rms:.2g} (median over layers), " + (
                "far below RMSprop's $\\epsilon = 10^{-7}$: its steps are then "
                "$\\eta g / \\epsilon$, not of size $\\eta$, which is why the weights hardly move."
                if rms < 1e-8 else
                "comparable to RMSprop's $\\epsilon = 10^{-7}$, which then shrinks the first steps."
                if rms < 1e-6 else
                "above RMSprop's $\\epsilon = 10^{-7}$: each weight moves by about "
                "$\\eta / \\sqrt{1 - \\rho} \\approx 3.2\\,\\eta$ in its first step."))


def dynamics_text(dyn, S: dict) -> str:
    """Per configuration of the first-epoch figures: its figure, the summary and the epsilon sentence."""
    blocks = [f"Per-layer variance of the pre-activations on a fixed probe batch through the whole first epoch, at "
              f"steps 0, 1, 2, 4, ... and the epoch's last, for {len(S['dyn_seeds'])} seeds at each learning rate: "
              "top, the mean over seeds of log10 variance per layer and step (blue below variance 1, red above, on "
              "a colour scale fitted to the data); bottom, the first, middle and last layer's variance and the "
              "minibatch loss against the step, mean over seeds with the 95% t interval as a band."]
    for p in S["dyn_presets"]:
        d = dyn[dyn["config"] == p]
        parts = [f"![first-epoch pre-activation variance, {p}](figures/trainability_dynamics_{p}.png)",
                 f"{p}: {_dynamics_summary(d, S['dyn_lrs'])}."]
        eps = _epsilon_sentence(d, _spec_of(S, p), S["dyn_lrs"][0])
        if eps is not None:
            parts.append(eps)
        blocks.append("\n\n".join(parts))
    return "\n\n".join(blocks)


def section_markdown(grid: TrainabilityGrid, dyn, S: dict) -> str:
    """The section's markdown: ``templates/section_trainability.md`` filled from the tables."""
    flips = verdict_flips(grid)
    return render("section_trainability.md", {
        "n_seeds": grid.n_seeds, "epochs": grid.epochs, "data_note": grid.data_note, "criterion": grid.criterion,
        "level": f"{grid.level:g}", "config_lines": "\n".join(config_lines(grid)),
        "flips": ("The verdict at the demo's learning rate changes with the learning rate for: " + "; ".join(flips)
                  + "." if flips else
                  "No configuration's outcome at the demo's learning rate differs at the other learning rates."),
        **prediction_values(grid.configs),
        "warmup": warmup_text(grid.configs, S["warmup"]),
        "dynamics": dynamics_text(dyn, S),
    })


def section(out_dir: Path, ctx: dict, progress=None) -> str:
    """Trainability map, first-epoch heat maps and the sharpness prediction; writes data and figures.

    ``ctx``: ``quick``, ``seed``, ``dataset`` (a name for
    :func:`propagate.data.load_dataset`, or a loaded Dataset as
    ``ctx["dataset_obj"]``), optionally ``trainability_dir`` (a finished
    ``propagate trainability --out`` folder whose ``points.csv`` /
    ``configs.csv`` are used instead of computing the map, or a job whose
    ``result()`` is one), optionally
    ``trainability_settings`` (overrides of :data:`SETTINGS_FULL` /
    :data:`SETTINGS_QUICK`; ``specs``: ``{name: NetworkSpec}`` for names that
    are not presets), optionally ``runner`` and ``work_dir`` (where the grid's
    points run and are kept, :func:`start`). ``progress``: a callable(message) or None.
    """
    out_dir = Path(out_dir)
    S = section_settings(ctx)
    seed = int(ctx.get("seed", 0))
    say = progress if callable(progress) else (lambda m: None)
    dataset = _dataset(ctx)
    # the whole first epoch on the section's data (a full report: all its training images), as tasks of the
    # runner (on Dask beside the grid's points)
    runner = ctx.get("runner") or ReportRunner()
    ctx = {**ctx, "runner": runner}
    dyn = compute_dynamics(S, _dynamics_data(ctx, S, dataset), seed, say, runner)
    write_table(dyn, out_dir / "data" / "trainability_dynamics.csv")
    tdir = ctx.get("trainability_dir")
    tdir = tdir.result() if hasattr(tdir, "result") else tdir  # a part of the report's runner: its folder, when done
    grid = read_trainability_dir(tdir, dataset) if tdir else start(ctx, say).result()
    write_table(grid.points, out_dir / "data" / "trainability_points.csv")
    write_table(grid.configs, out_dir / "data" / "trainability_configs.csv")
    if grid.predictions is not None and len(grid.predictions):
        write_table(grid.predictions, out_dir / "data" / "trainability_predictions.csv")
    title = f"Where each configuration trains ({grid.n_seeds} seeds, {grid.epochs} epoch(s))"
    runner.figure(out_dir / "figures" / "trainability_map.png", plot_trainability_map, grid.points, grid.configs,
                  criterion=grid.criterion, level=grid.level, title=title)
    for p in S["dyn_presets"]:
        runner.figure(out_dir / "figures" / f"trainability_dynamics_{p}.png", plot_dynamics, dyn, p, S["dyn_lrs"])
    return section_markdown(grid, dyn, S)
