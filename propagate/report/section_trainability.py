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
sharpness, and the seed's 1e-3) and :func:`figure_dynamics` (layers x steps,
log10 of the pre-activation variance).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

__all__ = ["section", "figure_trainability_map", "figure_dynamics", "SETTINGS_FULL", "SETTINGS_QUICK", "SEED_LR"]

#: The seed's learning rate (Keras RMSprop default).
SEED_LR = 1e-3
#: The section's own grid when no finished ``propagate trainability`` folder is given (``ctx["trainability_dir"]``):
#: small enough for a report build on one core (full: about 2.5 min of CPU, quick: about 20 s), so it
#: trains on a subset (``n_train`` images) for ``epochs`` epochs and calls a cell 'trains' at a lower
#: ``level`` of the running training accuracy than the command's default 0.5 (chance is 0.1).
SETTINGS_FULL = dict(presets=("selu-lecun-normal", "selu-bn-lecun-uniform", "relu", "relu-bn"),
                     lrs=(1e-4, 1e-3, 1e-2), seeds=(0, 1, 2), epochs=2, n_train=2000, n_test=1000, level=0.3,
                     dyn_presets=("selu-lecun-normal", "relu"), dyn_lrs=(1e-4, 1e-3, 1e-2), dyn_steps=None,
                     sharpness_batch=256, lanczos_iters=15)
SETTINGS_QUICK = dict(presets=("selu-lecun-normal", "relu"), lrs=(1e-4, 1e-3, 1e-2), seeds=(0, 1), epochs=1,
                      n_train=512, n_test=256, level=0.3, dyn_presets=("selu-lecun-normal", "relu"),
                      dyn_lrs=(1e-4, 1e-2), dyn_steps=4, sharpness_batch=128, lanczos_iters=8)


def _lr_label(lr: float) -> str:
    """``1e-4`` for powers of ten, else two significant digits in the same form (``3.2e-4``)."""
    e = math.log10(lr)
    if abs(e - round(e)) < 1e-9:
        return f"1e{int(round(e))}"
    k = math.floor(e)
    return f"{lr / 10**k:.2g}e{k}"


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
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    grid = points[~points["refined"].astype(bool)] if "refined" in points.columns else points
    names = list(dict.fromkeys(configs["config"])) if len(configs) else list(dict.fromkeys(grid["config"]))
    lrs = sorted(grid["lr"].unique())
    # one column per grid learning rate; other learning rates (refined points, predictions) are placed by
    # interpolating log10(lr) between the columns, which is the log scale itself on an evenly spaced grid
    x = np.arange(len(lrs), dtype=float)
    edges = np.arange(len(lrs) + 1) - 0.5
    step = 1.0
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
    A = np.full((len(names), len(lrs)), np.nan)
    if ax is None:
        _, ax = plt.subplots(figsize=(1.3 * len(lrs) + 3.5, 0.75 * len(names) + 1.8), constrained_layout=True)
    cmap = plt.get_cmap("viridis").with_extremes(bad="0.85")
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
    mesh = ax.pcolormesh(edges, np.arange(len(names) + 1) - 0.5, np.ma.masked_invalid(A), cmap=cmap, vmin=0, vmax=1)
    plt.colorbar(mesh, ax=ax, label=f"final training accuracy ({criterion}, mean over seeds)")
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
            lp = xpos(p)
            if lp < edges[0]:
                ax.annotate(f"pred. {p:.1g}", xy=(edges[0], i + 0.33), xytext=(edges[0] + 0.45 * step, i + 0.33),
                            fontsize=7, va="center", color="white",
                            arrowprops=dict(arrowstyle="->", color="white", lw=1.2), zorder=6)
            elif lp > edges[-1]:
                ax.annotate(f"pred. {p:.1g}", xy=(edges[-1], i + 0.33), xytext=(edges[-1] - 0.45 * step, i + 0.33),
                            fontsize=7, va="center", ha="right", color="white",
                            arrowprops=dict(arrowstyle="->", color="white", lw=1.2), zorder=6)
            else:
                ax.plot(lp, i + 0.33, marker="D", ms=7, color="white", mec="black", zorder=6)
        pg = c.get("max_lr_predicted_gd", np.nan)
        if np.isfinite(pg) and pg > 0 and edges[0] <= xpos(pg) <= edges[-1]:  # drawn only when on the grid
            ax.plot(xpos(pg), i + 0.33, marker="o", ms=8, mfc="none", mec="white", mew=1.6, ls="", zorder=6)
    if edges[0] <= xpos(seed_lr) <= edges[-1]:
        ax.axvline(xpos(seed_lr), color="red", ls="--", lw=1.2)
    ax.set_xticks(x, [_lr_label(v) for v in lrs])
    ax.set_yticks(range(len(names)), names)
    ax.set_xlim(edges[0], edges[-1])
    ax.set_ylim(len(names) - 0.5, -0.5)
    ax.set_xlabel("learning rate (one column per grid value)")
    ax.grid(False)
    handles = [Line2D([], [], marker="v", color="black", ls="", label="largest lr that trains (measured)"),
               Line2D([], [], marker="D", color="white", mec="black", ls="",
                      label="predicted: 2 / preconditioned sharpness at init"),
               Line2D([], [], marker="o", mfc="none", mec="black", ls="", label="GD bound 2 / sharpness (if on grid)"),
               Line2D([], [], color="red", ls="--", label=f"the seed's lr {seed_lr:g}"),
               Patch(facecolor="white", edgecolor="0.35", hatch="xx", label="diverged (inf/NaN loss)")]
    if level is not None:
        handles.append(Line2D([], [], ls="", label=f"trains: lower 95% bound > {level:g}"))
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3, fontsize=7, frameon=False)
    return ax


def figure_dynamics(dyn, lrs, *, title: str = "", axes=None):
    """One panel per learning rate: layers (rows) x recorded steps (columns), colour log10 pre-activation variance.

    ``dyn``: a DataFrame with ``lr`` plus :func:`propagate.trainability.first_epoch_dynamics`'s
    columns. Steps are columns in recorded order (0, 1, 2, 4, ...: log-spaced);
    white cells: the variance was not finite (divergence) or the run had stopped.
    The colour scale is centred on log10 1 = 0 (SELU's fixed point).
    """
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.ticker import MaxNLocator

    if axes is None:
        _, axes = plt.subplots(1, len(lrs), figsize=(4.2 * len(lrs), 4.2), squeeze=False, constrained_layout=True)
        axes = axes[0]
    finite = np.log10(dyn["pre_var"].where(dyn["pre_var"] > 0)).replace([np.inf, -np.inf], np.nan).dropna()
    lim = float(np.clip(np.nanmax(np.abs(finite)) if len(finite) else 1.0, 0.5, 30))
    norm = TwoSlopeNorm(vmin=-lim, vcenter=0.0, vmax=lim)
    mesh = None
    for ax, lr in zip(axes, lrs):
        d = dyn[np.isclose(dyn["lr"], lr)]
        steps = sorted(d["step"].unique())
        layers = sorted(d["layer"].unique())
        M = np.full((len(layers), len(steps)), np.nan)
        for j, s in enumerate(steps):
            ds = d[d["step"] == s].set_index("layer")["pre_var"]
            with np.errstate(divide="ignore", invalid="ignore"):
                M[:, j] = np.log10(ds.reindex(layers).to_numpy(float))
        M[~np.isfinite(M)] = np.nan
        mesh = ax.pcolormesh(np.arange(len(steps) + 1), np.arange(len(layers) + 1) + 0.5, np.ma.masked_invalid(M),
                             cmap="RdBu_r", norm=norm)
        ax.set_xticks(np.arange(len(steps)) + 0.5, [str(s) for s in steps], fontsize=7)
        ax.set_xlabel("training step (log-spaced, first epoch)")
        ax.set_ylabel("hidden layer")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(len(layers) + 0.5, 0.5)
        div = bool(d["diverged"].any())
        ax.set_title(f"{title} lr {lr:g}" + (" (diverged)" if div else ""), fontsize=10)
        ax.grid(False)
    if mesh is not None:
        plt.colorbar(mesh, ax=list(axes), label="log10 pre-activation variance (0 = variance 1)")
    return axes


def _subset(dataset, n_train, n_test):
    from dataclasses import replace

    if n_train is None or (n_train >= dataset.n_train and (n_test is None or n_test >= dataset.n_test)):
        return dataset
    nt = dataset.n_test if n_test is None else min(n_test, dataset.n_test)
    return replace(dataset, name=f"{dataset.name}[:{n_train}]", x_train=dataset.x_train[:n_train],
                   y_train=dataset.y_train[:n_train], x_test=dataset.x_test[:nt], y_test=dataset.y_test[:nt])


def _fmt_lr(v) -> str:
    return "none" if v is None or not np.isfinite(v) else f"{v:.3g}"


def section(out_dir: Path, ctx: dict, progress=None) -> str:
    """Trainability map, first-epoch heat maps and the sharpness prediction; writes data and figures.

    ``ctx``: ``quick``, ``seed``, ``dataset`` (a name for
    :func:`propagate.data.load_dataset`, or a loaded Dataset as
    ``ctx["dataset_obj"]``), optionally ``trainability_dir`` (a finished
    ``propagate trainability --out`` folder whose ``points.csv`` /
    ``configs.csv`` are used instead of computing the map), optionally
    ``trainability_settings`` (overrides of :data:`SETTINGS_FULL` /
    :data:`SETTINGS_QUICK`; ``specs``: ``{name: NetworkSpec}`` for names that
    are not presets). ``progress``: a callable(message) or None.
    """
    import matplotlib.pyplot as plt
    import pandas as pd

    from propagate.io import read_table, write_table
    from propagate.presets import get_preset
    from propagate.report.style import report_style, save_figure
    from propagate.trainability import TrainabilityOptions, first_epoch_dynamics, trainability

    out_dir = Path(out_dir)
    S = dict(SETTINGS_QUICK if ctx.get("quick") else SETTINGS_FULL)
    S.update(ctx.get("trainability_settings") or {})  # e.g. tests: smaller grids, {"specs": {name: NetworkSpec}}

    def spec_of(name):
        return S.get("specs", {}).get(name) or get_preset(name).spec()
    seed = int(ctx.get("seed", 0))
    say = progress if callable(progress) else (lambda m: None)
    dataset = ctx.get("dataset_obj")
    if dataset is None:
        from propagate.data import load_dataset

        dataset = load_dataset(ctx.get("dataset", "mnist-5k"))
    full_dataset_name = dataset.name
    sub = _subset(dataset, S["n_train"], S["n_test"])

    tdir = ctx.get("trainability_dir")
    if tdir:
        points, configs = read_table(Path(tdir) / "points.csv"), read_table(Path(tdir) / "configs.csv")
        import json

        meta = json.loads((Path(tdir) / "points.csv.meta.json").read_text())
        topt = meta.get("options", {})
        criterion, level = topt.get("criterion", "acc"), float(topt.get("level", 0.5))
        n_seeds, epochs = len(topt.get("seeds", [])), topt.get("epochs", "?")
        used = meta.get("dataset", {})
        n_used = used.get("n_train", "?")
        if isinstance(n_used, int) and n_used < dataset.n_train:
            data_note = (f"the first {n_used:,} of the {dataset.n_train:,} training images of {full_dataset_name} "
                         f"(a stated subset: the whole grid on all images would take hours on the build machine; "
                         f"test accuracy on all {used.get('n_test', '?'):,} test images)")
        else:
            data_note = (f"{used.get('name', '?')} ({n_used} training images), from "
                         f"`{meta.get('command', 'propagate trainability')}`")
    else:
        opts = TrainabilityOptions(seeds=tuple(seed + s for s in S["seeds"]), epochs=S["epochs"], level=S["level"],
                                   sharpness_batch=S["sharpness_batch"], lanczos_iters=S["lanczos_iters"],
                                   threads=1, probe_size=64)
        configs_in = [(p, spec_of(p)) for p in S["presets"]]
        res = trainability(configs_in, S["lrs"], sub, opts, progress=say)
        points, configs = res.points, res.configs
        criterion, level, n_seeds, epochs = opts.criterion, opts.level, len(opts.seeds), opts.epochs
        data_note = (f"the first {sub.n_train} training images of {full_dataset_name} (a subset, so the section "
                     f"builds in minutes; test accuracy on {sub.n_test} test images)")
    write_table(points, out_dir / "data" / "trainability_points.csv")
    write_table(configs, out_dir / "data" / "trainability_configs.csv")

    # first-epoch dynamics
    from propagate.train import TrainOptions

    frames = []
    for p in S["dyn_presets"]:
        for lr in S["dyn_lrs"]:
            say(f"first-epoch dynamics: {p} lr {lr:g}")
            d = first_epoch_dynamics(spec_of(p), TrainOptions(lr=lr, seed=seed, threads=1), sub,
                                     probe_size=128, max_steps=S["dyn_steps"])
            d.insert(0, "lr", lr)
            d.insert(0, "config", p)
            frames.append(d)
    dyn = pd.concat(frames, ignore_index=True)
    write_table(dyn, out_dir / "data" / "trainability_dynamics.csv")

    with report_style():
        names = list(dict.fromkeys(configs["config"]))
        lrs = sorted(points["lr"].unique())
        fig, ax = plt.subplots(figsize=(1.25 * len(lrs) + 4.5, 0.8 * len(names) + 2.2), constrained_layout=True)
        figure_trainability_map(points, configs, criterion=criterion, ax=ax, level=level)
        ax.set_title(f"Where each configuration trains ({n_seeds} seeds, {epochs} epoch(s))")
        save_figure(fig, out_dir / "figures" / "trainability_map.png")
        for p in S["dyn_presets"]:
            fig, axes = plt.subplots(1, len(S["dyn_lrs"]), figsize=(4.0 * len(S["dyn_lrs"]) + 1, 4.3), squeeze=False,
                                     constrained_layout=True)
            figure_dynamics(dyn[dyn["config"] == p], S["dyn_lrs"], title=p, axes=axes[0])
            save_figure(fig, out_dir / "figures" / f"trainability_dynamics_{p}.png")

    # findings from the numbers
    lines = []
    cfg = configs.set_index("config")
    for n in names:
        c = cfg.loc[n]
        m, bad, pred = c.get("max_lr_measured", np.nan), c.get("max_lr_bad", np.nan), c.get("max_lr_predicted", np.nan)
        if np.isfinite(m):
            meas = f"trains up to lr {_fmt_lr(m)}" + (f" (not at {_fmt_lr(bad)})" if np.isfinite(bad)
                                                     else " (the top of the grid: a lower bound)")
        else:
            meas = "does not train at any learning rate tried"
        s = f"- **{n}** {meas}; predicted from its preconditioned sharpness: {_fmt_lr(pred)}"
        if np.isfinite(c.get("ratio", np.nan)):
            s += f" (measured / predicted = {c['ratio']:.3g})"
        at = points[(points["config"] == n) & np.isclose(points["lr"], SEED_LR)]
        if len(at):
            r = at.iloc[0]
            s += (f". At the seed's lr 1e-3: {r['outcome']}, final {criterion} {r[f'{criterion}_mean']:.3f} "
                  f"[{r[f'{criterion}_ci_low']:.3f}, {r[f'{criterion}_ci_high']:.3f}]")
        lines.append(s + ".")
    # does the verdict at the seed's lr hold at the others? (grid points only; intervals of the criterion)
    flips = []
    for n in names:
        g = points[(points["config"] == n) & ~points["refined"].astype(bool)].set_index("lr")
        at_seed = g[np.isclose(g.index, SEED_LR)]
        if not len(at_seed):
            continue
        o0 = at_seed["outcome"].iloc[0]
        other = g[(g["outcome"] != o0) & ~np.isclose(g.index, SEED_LR)]
        if not len(other):
            continue
        best = other.loc[other[f"{criterion}_mean"].idxmax()] if other[f"{criterion}_mean"].notna().any() else None
        txt = (f"{n}: {o0} at 1e-3 ({criterion} {at_seed[f'{criterion}_mean'].iloc[0]:.3f} "
               f"[{at_seed[f'{criterion}_ci_low'].iloc[0]:.3f}, {at_seed[f'{criterion}_ci_high'].iloc[0]:.3f}]), "
               + "; ".join(f"{o} at {', '.join(_lr_label(v) for v in grp.index)}"
                           for o, grp in other.groupby("outcome", sort=False)))
        if best is not None:
            txt += (f" (best {best[f'{criterion}_mean']:.3f} [{best[f'{criterion}_ci_low']:.3f}, "
                    f"{best[f'{criterion}_ci_high']:.3f}] at {_lr_label(best.name)})")
        flips.append(txt)
    ratios = configs["ratio"].to_numpy(float) if "ratio" in configs.columns else np.array([])
    ratios = ratios[np.isfinite(ratios)]
    pred_gd = configs.get("max_lr_predicted_gd", pd.Series(dtype=float)).to_numpy(float)
    pred_txt = ""
    ws = configs["warmup_steps"].dropna() if "warmup_steps" in configs.columns else []
    warm = f"{int(ws.iloc[0])}" if len(ws) else "a few"
    if len(ratios):
        span = f"{ratios[0]:.3g}" if len(ratios) == 1 else f"{ratios.min():.3g} to {ratios.max():.3g}"
        pred_txt = f"Where both exist, the measured largest learning rate is {span} times the predicted one. "
    pred_txt += (
        "The prediction is the frozen-preconditioner bound of Cohen et al. (2022): RMSprop with its second-moment "
        "average $v$ held fixed is gradient descent on $P^{-1/2} H P^{-1/2}$, stable for "
        f"$\\eta < 2/\\lambda_1(P^{{-1}}H)$, with $P = \\sqrt{{v}} + \\epsilon$ after {warm} warm-up minibatches at the "
        "initial weights. " + ("It errs low here; likely reasons: " if len(ratios) and (ratios > 1).all() else
                                "Why it can err low: ") +
        "$v$ is not frozen; a step that starts to oscillate "
        "along a sharp direction enlarges that direction's gradient, hence $v$, hence $P$, and shrinks the next "
        "step (the adaptive edge of stability); coordinates whose mean minibatch gradient nearly cancels get a "
        "tiny $P$ and an enormous $\\lambda_1(P^{-1}H)$ although their per-step moves stay of size $\\eta$. "
        f"The measured boundary is also set by what {epochs} epoch(s) of training can reach, not only by "
        "stability: too small a step 'fails' without diverging.")
    if len(pred_gd[np.isfinite(pred_gd)]):
        pred_txt += (" For comparison, plain gradient descent's bound $2/\\lambda_1(H)$ (no preconditioner) is "
                     + ", ".join(f"{n}: {_fmt_lr(v)}" for n, v in zip(configs["config"], pred_gd)) + ".")
        rg = configs["ratio_gd"].to_numpy(float) if "ratio_gd" in configs.columns else np.array([])
        ok = np.isfinite(rg)
        if ok.any():
            pred_txt += (" Measured / $2/\\lambda_1(H)$: "
                         + ", ".join(f"{n}: {v:.3g}" for n, v in zip(configs["config"][ok], rg[ok]))
                         + (" - within a factor of 3 for every configuration that trains, although RMSprop is not "
                            "gradient descent; with this few configurations that is an observation, not a law."
                            if (np.abs(np.log10(rg[ok])) < math.log10(3)).all() else "."))

    md = [
        "## The learning rate as an axis",
        "",
        f"Each configuration trained at each learning rate as an ensemble of {n_seeds} seeds for {epochs} epoch(s) on "
        f"{data_note}, with the seed's RMSprop (rho 0.9, eps 1e-7, batch 128). A cell *trains* when the lower bound "
        f"of the 95% Student t interval over seeds of the final training accuracy (`{criterion}`) exceeds {level:g}; "
        "*diverged* when any seed's loss became inf/NaN. The triangle marks the largest learning rate that trains, "
        "the diamond (or arrow, when off the grid) the one predicted at initialization from the preconditioned "
        "sharpness, the open circle plain gradient descent's bound $2/\\lambda_1(H)$ where it falls on the grid, "
        "the red line the seed's 1e-3.",
        "",
        "![trainability map](figures/trainability_map.png)",
        "",
        *lines,
        "",
        ("The verdict at the seed's learning rate changes with the learning rate for: " + "; ".join(flips) + "."
         if flips else "No configuration's outcome at the seed's learning rate differs at the other learning rates."),
        "",
        pred_txt,
        "",
        "### The first steps",
        "",
        "Per-layer log10 variance of the pre-activations on a fixed probe batch during the first epoch, at steps "
        "0, 1, 2, 4, 8, ... (one seed): blue below variance 1, red above; white where the variance is not finite.",
        "",
    ]
    for p in S["dyn_presets"]:
        d = dyn[dyn["config"] == p]
        md.append(f"![first-epoch pre-activation variance, {p}](figures/trainability_dynamics_{p}.png)")
        md.append("")
        summ = []
        for lr in S["dyn_lrs"]:
            dl = d[np.isclose(d["lr"], lr)]
            last = dl[dl["step"] == dl["step"].max()]
            v0 = dl[dl["step"] == 0]["pre_var"].to_numpy(float)
            v1 = last["pre_var"].to_numpy(float)
            ur = dl[dl["step"] == 1]["update_ratio"].to_numpy(float)
            if bool(dl["diverged"].any()):
                summ.append(f"lr {lr:g}: diverged at step {int(dl['step'].max())}")
            else:
                summ.append(f"lr {lr:g}: last-layer variance {v0[-1]:.3g} at step 0, {v1[-1]:.3g} at step "
                            f"{int(last['step'].iloc[0])}; first update moves the weights by "
                            f"{np.nanmedian(ur):.2g} of their norm (median over layers)")
        md.append(f"{p}: " + "; ".join(summ) + ".")
        # RMSprop divides by sqrt(v) + eps (eps 1e-7): gradients far below eps get steps of lr * g / eps, not ~lr
        fans = [fi * fo for fi, fo in spec_of(p).fans()]
        d1 = d[(d["step"] == 1) & np.isclose(d["lr"], S["dyn_lrs"][0])].sort_values("layer")
        if len(d1) == len(fans):
            rms = float(np.nanmedian(d1["weight_grad_norm"].to_numpy(float) / np.sqrt(fans)))
            if np.isfinite(rms):
                md.append("")
                md.append(f"At the first step the root-mean-square entry of a weight matrix's minibatch gradient is "
                          f"{rms:.2g} (median over layers), " + (
                              "far below RMSprop's $\\epsilon = 10^{-7}$: its steps are then "
                              "$\\eta g / \\epsilon$, not of size $\\eta$, which is why the weights hardly move."
                              if rms < 1e-8 else
                              "comparable to RMSprop's $\\epsilon = 10^{-7}$, which then shrinks the first steps."
                              if rms < 1e-6 else
                              "above RMSprop's $\\epsilon = 10^{-7}$: each weight moves by about "
                              "$\\eta / \\sqrt{1 - \\rho} \\approx 3.2\\,\\eta$ in its first step."))
        md.append("")
    md += ["Data: `data/trainability_points.csv` (one row per configuration and learning rate), "
           "`data/trainability_configs.csv` (largest learning rates, measured and predicted, sharpness), "
           "`data/trainability_dynamics.csv` (one row per configuration, learning rate, step and layer).", ""]
    return "\n".join(md)
