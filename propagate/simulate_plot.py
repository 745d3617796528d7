"""Figures of per-layer tables: variance and mean per layer, simulation bands and theory.

Works on any :mod:`propagate.stats` table (simulation tables with ``*_se`` get
bands of +-2 standard errors; ``theory_*`` columns, or separate theory tables,
are drawn as dashed curves). Uses matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import io

import numpy as np

__all__ = ["plot_layers", "figure_png"]


def _as_list(tables):
    import pandas as pd

    if isinstance(tables, pd.DataFrame):
        return [tables]
    return list(tables)


def plot_layers(tables, ax=None, title: str | None = None):
    """Variance (log scale) and mean (linear scale) of the pre-activations per layer.

    Args:
        tables: a DataFrame or a list of them (:mod:`propagate.stats` format).
            Rows with ``source == "theory"`` are drawn as dashed lines; a
            simulation table's ``theory_pre_var``/``theory_pre_mean`` columns too.
        ax: ``None`` (new figure) or a pair of matplotlib Axes (variance, mean).
        title: figure title.

    Returns:
        the matplotlib Figure.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    if ax is None:
        fig = Figure(figsize=(10, 4.2), layout="constrained")
        ax_var, ax_mean = fig.subplots(1, 2)
    else:
        ax_var, ax_mean = ax
        fig = ax_var.figure
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, df in enumerate(_as_list(tables)):
        df = df[df["layer"] > 0].sort_values("layer")
        color = colors[i % len(colors)]
        label = str(df["config"].iloc[0]) if "config" in df.columns and len(df) else f"table {i}"
        source = str(df["source"].iloc[0]) if "source" in df.columns and len(df) else ""
        x = df["layer"].to_numpy(dtype=float)
        style = "--" if source == "theory" else "-"
        for col, axx in (("pre_var", ax_var), ("pre_mean", ax_mean)):
            y = df[col].to_numpy(dtype=float)
            name = f"{label} ({source})" if source else label
            axx.plot(x, y, style, color=color, lw=1.6, label=name)
            if col + "_se" in df.columns:
                se = df[col + "_se"].to_numpy(dtype=float)
                lo, hi = y - 2 * se, y + 2 * se
                if col == "pre_var":
                    lo = np.where(lo > 0, lo, y / 10)
                axx.fill_between(x, lo, hi, color=color, alpha=0.25, lw=0, label="±2 SE over networks")
            tcol = "theory_" + col
            if tcol in df.columns and np.isfinite(df[tcol].to_numpy(dtype=float)).any():
                axx.plot(x, df[tcol].to_numpy(dtype=float), "--", color="k", lw=1.2, label="mean-field theory")
        if "diverged" in df.columns and df["diverged"].astype(bool).any():
            first = float(df.loc[df["diverged"].astype(bool), "layer"].min())
            for axx in (ax_var, ax_mean):
                axx.axvline(first, color=color, ls=":", lw=1, label=f"diverged at layer {first:.0f}")
    ax_var.set_yscale("log")
    ax_var.set_xlabel("layer l")
    ax_var.set_ylabel("pre-activation variance Var(h^l)")
    ax_var.set_title("variance per layer (log scale)")
    lo, hi = ax_var.get_ylim()
    if hi / lo < 20:  # less than a decade or so: plain tick labels, not 1.02 x 10^0
        from matplotlib.ticker import FormatStrFormatter

        ax_var.yaxis.set_major_formatter(FormatStrFormatter("%.3g"))
        ax_var.yaxis.set_minor_formatter(FormatStrFormatter("%.3g"))
    # a mean fluctuating around 0 reads best on a linear scale (a log scale cannot show the sign)
    ax_mean.axhline(0.0, color="0.6", lw=0.8)
    ax_mean.set_xlabel("layer l")
    ax_mean.set_ylabel("pre-activation mean E[h^l]")
    ax_mean.set_title("mean per layer (linear scale)")
    for axx in (ax_var, ax_mean):
        axx.grid(True, which="major", alpha=0.3)
        handles, labels = axx.get_legend_handles_labels()
        seen = {}
        for h, l in zip(handles, labels):
            seen.setdefault(l, h)
        axx.legend(seen.values(), seen.keys(), fontsize=8, loc="best")
    if title:
        fig.suptitle(title)
    return fig


def figure_png(fig, dpi: int = 120) -> bytes:
    """The figure as PNG bytes (for atomic writing)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()
