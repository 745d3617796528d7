"""Training figures over seed ensembles: the mean over seeds with its 95% t interval as a band.

Each function takes the per-seed tables a training run writes (one row per
seed and epoch in ``history``, per seed, epoch and layer in ``layers``; see
:mod:`propagate.train`) and returns a ``matplotlib.figure.Figure``. The
configuration of a run (colour, line style) is read from its
``activation``/``init``/``normalization`` columns (:mod:`propagate.report.style`),
never from its label; a table without them is drawn in matplotlib's colour cycle.

Bands are Student t intervals of the mean over seeds on each quantity's
scale (:func:`propagate.confidence.interval_of`: accuracies on the logit
scale, so a band stays inside [0, 1]); with one seed there is no band, only
the line. Quantities drawn on a log scale (losses, variances) are averaged as
``log10`` values, so their line is the geometric mean over seeds and the band
its interval, always above 0 (an arithmetic interval of a positive, skewed
quantity can reach below 0).
"""

from __future__ import annotations

import math

import numpy as np

from propagate.confidence import LEVEL, interval_of, t_interval
from propagate.report.style import colour, line_style, plt, styled

__all__ = ["seed_band", "plot_training_bands", "plot_layer_drift_bands"]


def seed_band(table, x: str, column: str, *, log: bool = False, level: float = LEVEL):
    """Mean over seeds of ``column`` at each value of ``x``, with its t interval.

    ``table`` holds one configuration: one row per (seed, ``x``). Returns a
    table ``x, mean, low, high, n`` sorted by ``x`` (``low``/``high`` NaN where
    fewer than 2 seeds have a value). With ``log=True`` the mean and interval are
    those of ``log10(column)`` transformed back (geometric mean); non-positive
    values are left out. Otherwise the interval is on ``column``'s own scale
    (:func:`propagate.confidence.interval_of`: logit for accuracies).
    """
    import pandas as pd

    rows = []
    for xv, t in table.groupby(x, sort=True):
        v = t[column].to_numpy(float)
        if log:
            v = np.log10(np.where(v > 0, v, np.nan))
        iv = t_interval(v, level) if log else interval_of(column, v, level)
        back = (lambda u: 10.0 ** u) if log else (lambda u: u)
        rows.append({x: xv, "mean": back(iv.mean), "low": back(iv.low), "high": back(iv.high), "n": iv.n})
    return pd.DataFrame(rows, columns=[x, "mean", "low", "high", "n"])


def _look(t) -> dict:
    """Colour and line style of a one-configuration table, from its configuration columns."""
    out = {}
    if "activation" in t and "init" in t:
        out["color"] = colour(str(t["activation"].iloc[0]), str(t["init"].iloc[0]))
    out["ls"] = line_style(str(t["normalization"].iloc[0])) if "normalization" in t else "-"
    return out


def _draw(ax, band, x, label=None, **look):
    line, = ax.plot(band[x], band["mean"], marker="o", ms=3.5, lw=1.6, label=label, **look)
    ok = band["low"].notna() & band["high"].notna()
    if ok.any():
        ax.fill_between(band[x][ok], band["low"][ok], band["high"][ok], color=line.get_color(), alpha=0.18, lw=0)
    return line


def _n_text(ns) -> str:
    ns = sorted(set(int(n) for n in ns))
    return f"N = {ns[0]} seeds" if len(ns) == 1 else f"N = {ns[0]}-{ns[-1]} seeds"


@styled
def plot_training_bands(history, reported=None, *, chance: float | None = 0.1, title=None, level: float = LEVEL):
    """Training accuracy, test accuracy and training loss per epoch: mean over seeds and its band, one line per run.

    ``history``: per-seed rows with ``run`` (label), ``seed``, ``epoch``,
    ``acc``, ``val_acc`` (fractions), ``loss`` (cross-entropy, nats), and the
    configuration columns for the look. ``reported``: optional table
    (``preset``, ``epoch``, ``acc``, ``val_acc``, optional ``lr``) of the lecture
    demo's single-run numbers, drawn as hollow squares (needs a ``preset`` column in
    ``history``); where both tables have ``lr``, only the rows measured at the
    learning rate of ``history`` are drawn (a point measured at another step size
    is no reference for these curves). ``chance``: dotted line at chance accuracy (None: none).
    Replaces ``figures.plot_training_curves`` for ensembles.
    """
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    reported = _same_lr(reported, history)
    ns = []
    for run, h in history.groupby("run", sort=False):
        look = _look(h)
        for ax, col in zip(axes, ("acc", "val_acc", "loss")):
            # the loss spans decades (diverging runs) and is positive: geometric mean, interval in log space
            band = seed_band(h, "epoch", col, level=level, log=(col == "loss"))
            line = _draw(ax, band, "epoch", label=run if col == "acc" else None, **look)
            look.setdefault("color", line.get_color())
            ns += list(band["n"])
        if reported is not None and "preset" in h:
            r = reported[(reported["preset"] == h["preset"].iloc[0]) & (reported["epoch"] <= history["epoch"].max())]
            for ax, col in zip(axes[:2] if len(r) else (), ("acc", "val_acc")):
                ax.plot(r["epoch"], r[col], marker="s", ls="none", mfc="none", color=look["color"], ms=7)
    last = int(history["epoch"].max())
    names = ("training accuracy (fraction)", "test accuracy (fraction)",
             "training loss (cross-entropy, nats; geometric mean)")
    for ax, name in zip(axes, names):
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.set_xticks(range(1, last + 1))
        ax.set_xlim(0.7, last + 0.3)
    axes[2].set_yscale("log")
    from matplotlib.ticker import FuncFormatter

    # 3, not 3 x 10^0; between the decades only the 2s and 5s are labelled, so a wide range stays readable
    axes[2].yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axes[2].yaxis.set_minor_formatter(FuncFormatter(
        lambda v, _: f"{v:g}" if f"{v:g}".lstrip("0.")[:1] in ("2", "5") else ""))
    for ax in axes[:2]:
        ax.set_ylim(0, 1.02)
        if chance is not None:
            ax.axhline(chance, color="k", lw=0.7, ls=":", alpha=0.6)
    if chance is not None:
        axes[0].text(0.02, chance + 0.005, "chance", fontsize=7, transform=axes[0].get_yaxis_transform())
    from matplotlib.lines import Line2D

    handles, labels = axes[0].get_legend_handles_labels()
    if reported is not None and len(reported) and "preset" in history:
        handles.append(Line2D([], [], marker="s", ls="none", mfc="none", color="k"))
        labels.append("lecture demo's reported value (one run, lr 0.001)" if "lr" in reported
                      else "lecture demo's reported value (one run)")
    fig.legend(handles, labels, loc="center right", frameon=False, fontsize=7.5)
    band_note = f"bands: {100 * level:g}% t interval of the mean over seeds, {_n_text(ns)}" if ns else ""
    fig.suptitle((title or "Training the network (dashed: batch normalization)") + f"\n{band_note}", fontsize=11)
    fig.tight_layout(rect=(0, 0, 0.84, 0.95))
    return fig


def _same_lr(reported, history):
    """The rows of ``reported`` measured at the learning rate of ``history`` (all rows when either has no ``lr``)."""
    if reported is None or "lr" not in reported or "lr" not in history:
        return reported
    lrs = set(history["lr"].astype(float))
    return reported[reported["lr"].astype(float).isin(lrs)]


@styled
def plot_layer_drift_bands(layers, runs, column: str = "pre_var", mode: str = "train", *, log: bool = True,
                           ylabel: str = r"variance of $h^l$ on a fixed probe batch (unitless)", title=None,
                           level: float = LEVEL):
    """Per-layer ``column`` at initialization and after each epoch: geometric mean over seeds and its band.

    ``layers``: per-seed per-layer table (``run``, ``seed``, ``epoch``,
    ``mode``, ``layer``, ``column``); one panel per run in ``runs``; one line
    per epoch (0 = at initialization). ``mode`` picks train-mode (batch
    statistics) or eval-mode rows where both exist. ``log``: log scale, with
    log-space averaging (module docstring). Replaces ``figures.plot_training_layers``.
    """
    runs = list(runs)
    ncols = len(runs) if len(runs) <= 3 else 2
    nrows = max(1, math.ceil(len(runs) / ncols))
    fig, axes = plt.subplots(nrows, max(1, ncols), figsize=(5.6 * max(1, ncols), 4.0 * nrows), squeeze=False)
    for ax in axes.ravel()[len(runs):]:
        ax.set_visible(False)
    cmap = plt.get_cmap("plasma")
    ns = []
    for ax, run in zip(axes.ravel(), runs):
        sub = layers[(layers["run"] == run) & (layers["layer"] >= 1)]
        if "mode" in sub and sub["mode"].notna().any():
            m = mode if (sub["mode"] == mode).any() else sub["mode"].dropna().iloc[0]
            sub = sub[sub["mode"] == m]
        epochs = sorted(sub["epoch"].unique())
        for i, ep in enumerate(epochs):
            band = seed_band(sub[sub["epoch"] == ep], "layer", column, log=log, level=level)
            ns += list(band["n"])
            _draw(ax, band, "layer", label="at initialization" if ep == 0 else f"after epoch {ep}",
                  color=cmap(i / max(1, len(epochs) - 1) * 0.85))
        for line in ax.get_lines():
            line.set_marker("")
        if log:
            ax.set_yscale("log")
        ax.set_title(run, fontsize=10)
        ax.set_xlabel("layer $l$ (hidden weight layer)")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7.5)
    band_note = (f"lines: {'geometric ' if log else ''}mean over seeds; bands: {100 * level:g}% t interval, "
                 f"{_n_text(ns)}") if ns else ""
    fig.suptitle((title or "How per-layer statistics drift as the weights leave their initialization")
                 + f"\n{band_note}", fontsize=11)
    fig.tight_layout()
    return fig
