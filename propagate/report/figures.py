"""Figures of the report, each a function from result tables to a matplotlib Figure.

Every function takes tidy tables (the :mod:`propagate.stats` per-layer format,
or the small tables documented in each docstring) and returns a
``matplotlib.figure.Figure``, so the same pictures can be drawn in a notebook::

    from propagate.report import figures
    fig = figures.plot_layer_moments(sim_table, theory_table)
"""

from __future__ import annotations

import numpy as np

from propagate.report.style import colour, config_fields, config_title, plt, styled

#: The look of a measured line drawn over a heat map (see :func:`draw_measured_line`).
MEASURED_LINE = {"color": "#00662e", "ls": "--", "lw": 1.8}

__all__ = [
    "draw_measured_line",
    "MEASURED_LINE",
    "plot_selu_flow",
    "plot_layer_moments",
    "plot_grad_norms",
    "plot_phase_diagram",
]


def _configs(table):
    """``[(label, fields)]`` of the configurations in a per-layer table, read from its configuration columns."""
    return [(label, config_fields(g)) for label, g in table.groupby("config", sort=False)]


def _by_bn(table):
    """Split a per-layer table's configurations into (without BN, with BN) by its ``normalization`` column."""
    configs = _configs(table)
    return ([c for c in configs if c[1]["normalization"] != "batchnorm"],
            [c for c in configs if c[1]["normalization"] == "batchnorm"])


@styled
def plot_selu_flow(trajectories, fixed_point=(0.0, 1.0), box=None, title=None):
    """The SELU moment map iterated from a grid of starting points.

    ``trajectories``: columns ``start`` (id), ``step`` (0, 1, ...), ``mu``
    (mean), ``nu`` (variance) of a unit's input, one row per iterate of
    ``g: (mu, nu) -> (mu~, nu~)``. ``box`` = ``(mu_lo, mu_hi, nu_lo, nu_hi)``
    draws the region of the stability theorem.
    """
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.6), gridspec_kw={"width_ratios": [1.25, 1]})
    steps = int(trajectories["step"].max())
    cmap = plt.get_cmap("viridis")
    for _, tr in trajectories.groupby("start"):
        tr = tr.sort_values("step")
        ax.plot(tr["mu"], tr["nu"], "-", color="0.6", lw=0.8, zorder=1)
        ax.scatter(tr["mu"].iloc[0], tr["nu"].iloc[0], s=14, color="0.25", zorder=2)
        ax.scatter(tr["mu"].iloc[1:], tr["nu"].iloc[1:], s=9, c=tr["step"].iloc[1:], cmap=cmap, vmin=1, vmax=steps, zorder=3)
        dist = np.hypot(tr["mu"] - fixed_point[0], tr["nu"] - fixed_point[1])
        ax2.semilogy(tr["step"], np.maximum(dist, 1e-17), color="0.45", lw=0.8, alpha=0.7)
    if box is not None:
        lo, hi, vlo, vhi = box
        ax.add_patch(plt.Rectangle((lo, vlo), hi - lo, vhi - vlo, fill=False, ls="--", color="tab:red", lw=1.2,
                                   label="stability theorem's box"))
    ax.plot(*fixed_point, marker="*", ms=16, color="tab:red", mec="k", zorder=5, label=f"fixed point ({fixed_point[0]:g}, {fixed_point[1]:g})")
    ax.scatter([], [], s=14, color="0.25", label="start")
    ax.set_xlabel(r"input mean $\mu$ (unitless)")
    ax.set_ylabel(r"input variance $\nu$ (unitless)")
    ax.set_title("SELU moment map $g$ iterated, layer by layer")
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(1, steps))
    fig.colorbar(sm, ax=ax, label="layer (iterate of $g$)")
    ax.legend(loc="upper right")
    ax2.set_xlabel("layer (iterate of $g$)")
    ax2.set_ylabel(r"distance to fixed point $\|(\mu,\nu)-(0,1)\|$")
    ax2.set_title("convergence: geometric, rate ~ spectral radius")
    fig.suptitle(title or r"SELU with $\omega = 0$, $\tau = 1$: every start flows to $(\mu, \nu) = (0, 1)$", fontsize=11)
    fig.tight_layout()
    return fig


def _band(ax, x, y, se, colour, label=None, ls="-", log=False):
    """Line ``y`` with a +-2 standard error band; with ``log`` the band is built on the log scale
    (``y * exp(+-2 se / y)``, the delta method), so a positive quantity's band stays above 0."""
    ax.plot(x, y, ls, color=colour, lw=1.6, label=label)
    if se is not None and np.any(np.isfinite(se)):
        if log:
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                lo, hi = y * np.exp(-2 * se / y), y * np.exp(2 * se / y)
        else:
            lo, hi = y - 2 * se, y + 2 * se
        ax.fill_between(x, lo, hi, color=colour, alpha=0.2, lw=0)


def draw_measured_line(ax, x, y, z, level: float = 0.0, label: str = "measured $\\chi_1 = 1$"):
    """Contour ``z = level`` over the grid ``(x, y)`` drawn so it shows on any colour map: a dark green dashed
    line with a white outline (on a diverging map whose centre is white, a white line vanishes exactly where it
    runs), told apart from theory's solid black line; with its legend entry. Returns the contour set."""
    from matplotlib import patheffects

    outline = [patheffects.withStroke(linewidth=MEASURED_LINE["lw"] + 2.4, foreground="white")]
    cs = ax.contour(x, y, z, levels=[level], colors=MEASURED_LINE["color"], linestyles=MEASURED_LINE["ls"],
                    linewidths=MEASURED_LINE["lw"])
    from matplotlib.collections import Collection

    for artist in [cs] if isinstance(cs, Collection) else cs.collections:  # one collection per level before 3.8
        artist.set_path_effects(outline)
    ax.plot([], [], color=MEASURED_LINE["color"], ls=MEASURED_LINE["ls"], lw=MEASURED_LINE["lw"], path_effects=outline,
            label=label)
    return cs


def _layer_panels(sim, theory, column, se_column, axes, log, ylabel):
    for ax, labels, title in zip(axes, _by_bn(sim), ("without batch normalization", "with batch normalization (the lecture demo's placement)")):
        for label, f in labels:
            col = colour(f["activation"], f["init"])
            s = sim[(sim["config"] == label) & (sim["layer"] >= 1)].sort_values("layer")
            y = s[column].to_numpy(float)
            se = s[se_column].to_numpy(float) if se_column in s else None
            if log:
                y = np.where(y > 0, y, np.nan)
            _band(ax, s["layer"], y, se, col, label=config_title(f["activation"], f["init"], residual=f["residual"]),
                  log=log)
            if theory is not None:
                t = theory[(theory["config"] == label) & (theory["layer"] >= 1)].sort_values("layer")
                ty = t[column].to_numpy(float)
                if log:
                    ty = np.where(ty > 0, ty, np.nan)
                ax.plot(t["layer"], ty, ":", color=col, lw=2.2)
        ax.set_title(title)
        ax.set_xlabel("layer $l$ (hidden weight layer)")
        ax.set_ylabel(ylabel)
        if log:
            ax.set_yscale("log")


@styled
def plot_layer_moments(sim, theory=None, title=None):
    """Variance (log scale) and mean of pre-activations per layer, without and with BN.

    ``sim`` and ``theory`` are per-layer tables (:mod:`propagate.stats`) with
    several ``config`` labels; solid lines with +-2 SE bands are simulation
    (across networks), dotted lines mean-field theory, same colour per
    configuration.
    """
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), sharex=True)
    _layer_panels(sim, theory, "pre_var", "pre_var_se", axes[0], True, r"variance of $h^l$ (pooled, unitless)")
    _layer_panels(sim, theory, "post_mean", "post_mean_se", axes[1], False, r"mean of $x^l=\phi(h^l)$ (unitless)")
    for ax in axes[0]:
        ax.axhline(1.0, color="k", lw=0.6, alpha=0.5)
    for ax in axes[1]:
        ax.axhline(0.0, color="k", lw=0.6, alpha=0.5)
    _shared_legend(fig, axes)
    fig.suptitle(title or "Signal through depth at initialization: simulation (bands: +-2 SE over networks; log scale "
                 "for the variance) vs theory (dotted)", fontsize=11)
    fig.tight_layout(rect=(0, 0, 0.83, 0.97))
    return fig


def _shared_legend(fig, axes):
    handles = {}
    for ax in np.ravel(axes):
        for h, l in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(l, h)
    from matplotlib.lines import Line2D

    items = list(handles.items())
    items.append(("mean-field theory", Line2D([], [], ls=":", color="k", lw=2)))
    fig.legend([h for _, h in items], [l for l, _ in items], loc="center right", title="activation / init", frameon=False)


@styled
def plot_grad_norms(sim, theory=None, title=None):
    """Gradient norm per layer (log scale) for a random linear readout, without and with BN."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4), sharey=False)
    _layer_panels(sim, theory, "grad_norm", "grad_norm_se", axes, True, r"$\|\partial y / \partial h^l\|$ (unitless)")
    _shared_legend(fig, axes)
    fig.suptitle(title or "Backpropagated gradient norm per layer: vanishing (falls towards layer 1) or exploding", fontsize=11)
    fig.tight_layout(rect=(0, 0, 0.83, 0.95))
    return fig


@styled
def plot_phase_diagram(grids, lines, marks, title=None):
    """``chi_1`` over (``sigma_w^2``, ``sigma_b^2``) per activation, critical line, named inits.

    ``grids``: dict activation -> table with ``sigma_w2``, ``sigma_b2``,
    ``chi_1``. ``lines``: dict activation -> table with ``sigma_b2``,
    ``sigma_w2`` (the critical line ``chi_1 = 1``). ``marks``: table with
    ``init`` and ``sigma_w2`` (at ``sigma_b2 = 0``, 256-wide layers).
    """
    from matplotlib.colors import TwoSlopeNorm

    names = list(grids)
    fig, axes = plt.subplots(1, len(names), figsize=(6.2 * len(names), 5), squeeze=False)
    for ax, name in zip(axes[0], names):
        g = grids[name].pivot(index="sigma_b2", columns="sigma_w2", values="chi_1")
        x, y = g.columns.to_numpy(float), g.index.to_numpy(float)
        z = np.log(g.to_numpy(float))
        lim = max(0.5, np.nanmax(np.abs(z[np.isfinite(z)])))
        mesh = ax.pcolormesh(x, y, z, cmap="RdBu_r", norm=TwoSlopeNorm(0.0, -lim, lim), shading="auto")
        fig.colorbar(mesh, ax=ax, label=r"$\log \chi_1$  (<0 ordered, >0 chaotic)")
        ln = lines[name].sort_values("sigma_b2")
        ax.plot(ln["sigma_w2"], ln["sigma_b2"], "k-", lw=2, label=r"critical line $\chi_1 = 1$")
        for _, m in marks.iterrows():
            if x.min() <= m["sigma_w2"] <= x.max():
                ax.axvline(m["sigma_w2"], color="k", ls="--", lw=0.8, alpha=0.7)
                ax.text(m["sigma_w2"], y.max() - 0.02 * (y.max() - y.min()), " " + m["init"], rotation=90, va="top",
                        ha="right", fontsize=7.5, bbox=dict(boxstyle="round,pad=0.1", fc="w", ec="none", alpha=0.75))
        ax.set_xlabel(r"$\sigma_w^2$ = fan-in $\times$ Var(w)")
        ax.set_ylabel(r"$\sigma_b^2$ = Var(b)")
        ax.set_title(f"{name}: order-to-chaos phase diagram")
        ax.set_xlim(x.min(), x.max())
        ax.set_ylim(y.min(), y.max())
        ax.legend(loc="lower right")
    fig.suptitle(title or r"$\chi_1 = \sigma_w^2\,E[\phi'(h)^2]$ at the fixed point $q^*$; dashed: named inits for 256x256 layers ($\sigma_b^2 = 0$)", fontsize=11)
    fig.tight_layout()
    return fig
