"""The figure of :func:`propagate.inspect`'s table: output variance and gradient norm per module call.

Two panels sharing the x axis (the row index, labelled with module names):
the output variance ``out_var`` and the gradient norm ``grad_norm``, both on
log scales, each with a band of +-2 standard errors across networks, and the
theory's ``theory_out_var`` / ``theory_grad_norm`` as black markers where the
theory reaches. Weight layers (``Linear``, convolutions) are drawn as filled
dots so the stack's structure reads at a glance. A bare ``Figure`` (no pyplot): it
renders to PNG anywhere and leaves the caller's matplotlib backend alone.
"""

from __future__ import annotations

import numpy as np

__all__ = ["plot_inspect"]

#: At most this many module names on the x axis (every k-th row otherwise).
MAX_TICK_LABELS = 48


def _panel(ax, df, col, theory_col, ylabel):
    x = df["index"].to_numpy(dtype=float)
    y = df[col].to_numpy(dtype=float)
    ax.plot(x, y, "-", color="C0", lw=1.2, label=f"measured {col}")
    weight = df["fan_in"].notna().to_numpy()
    ax.plot(x[weight], y[weight], "o", color="C0", ms=3.5, label="weight layers")
    if col + "_se" in df.columns and np.isfinite(df[col + "_se"].to_numpy(dtype=float)).any():
        se = df[col + "_se"].to_numpy(dtype=float)
        lo = np.where(y - 2 * se > 0, y - 2 * se, y / 10)
        ax.fill_between(x, lo, y + 2 * se, color="C0", alpha=0.25, lw=0, label="±2 SE over networks")
    if theory_col in df.columns and np.isfinite(df[theory_col].to_numpy(dtype=float)).any():
        ax.plot(x, df[theory_col].to_numpy(dtype=float), "x", color="k", ms=4, label="mean-field theory")
    pos = y[np.isfinite(y) & (y > 0)]
    if len(pos):
        ax.set_yscale("log")
    ax.set_ylabel(ylabel)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="best")


def plot_inspect(table, title: str | None = None):
    """Output variance and gradient norm per module call (module docstring); returns the matplotlib Figure."""
    from matplotlib.figure import Figure  # no pyplot: the caller's backend (a notebook's inline one) is left alone

    df = table.sort_values("index")
    n = len(df)
    fig = Figure(figsize=(max(8.0, min(20.0, 0.16 * n + 4)), 7.0), layout="constrained")
    ax_var, ax_grad = fig.subplots(2, 1, sharex=True)
    _panel(ax_var, df, "out_var", "theory_out_var", "Var(output), pooled")
    _panel(ax_grad, df, "grad_norm", "theory_grad_norm", "||dy / d output||, RMS")
    step = max(1, int(np.ceil(n / MAX_TICK_LABELS)))
    ticks = df["index"].to_numpy()[::step]
    names = [(m or "(model)") if len(str(m)) <= 24 else "…" + str(m)[-23:] for m in df["module"].to_numpy()[::step]]
    ax_grad.set_xticks(ticks)
    ax_grad.set_xticklabels(names, rotation=90, fontsize=7)
    ax_grad.set_xlabel("module call, in execution order" + (f" (one in {step} labelled)" if step > 1 else ""))
    if title:
        fig.suptitle(title)
    return fig
