"""Report section: a deep plain network against the same network with residual blocks and with LayerNorm.

:func:`section` simulates three ReLU/glorot_uniform networks of 200 hidden
layers (plain, ``--residual 0.5``, ``--layernorm``), lays the mean-field theory
over the simulation, writes the per-layer tables to ``data/`` and the figure
``figures/residual_layernorm.png`` (and ``.svg``), and returns the markdown
(``propagate/templates/section_residual.md``, filled by :func:`section_markdown`
from :func:`residual_summary`). :func:`plot_residual_layernorm` draws the
figure from the tables (usable in a notebook).
"""

from __future__ import annotations

from pathlib import Path

from propagate.io import write_table
from propagate.report.tasks import ReportRunner
from propagate.templates import render

__all__ = ["section", "start", "compute_residual_tables", "residual_summary", "section_markdown", "plot_residual_layernorm",
           "VARIANTS"]

#: (name, spec changes) of the three networks compared.
VARIANTS = (("plain", {}), ("residual 0.5", {"residual": 0.5}), ("layernorm", {"layernorm": True}))
_COLOURS = {"plain": "#d62728", "residual 0.5": "#1f77b4", "layernorm": "#2ca02c"}
_LABELS = {"plain": "plain", "residual 0.5": "residual, R = 0.5", "layernorm": "LayerNorm"}


def compute_residual_tables(*, depth=200, width=256, samples=256, seeds=8, seed=0, activation="relu",
                            init="glorot_uniform", progress=None):
    """Simulation (with theory columns) and per-network tables of the three variants.

    Returns ``(table, per_seed)``: the :mod:`propagate.stats` tables of all
    variants stacked, with a ``variant`` column.
    """
    import warnings

    import pandas as pd

    from propagate.simulate import simulate
    from propagate.spec import NetworkSpec

    base = NetworkSpec.stack(depth, width, input_dim=width, first_width=None, activation=activation, init=init)
    tables, per_seed = [], []
    for i, (name, changes) in enumerate(VARIANTS):
        if progress:
            progress(f"residual section: simulating {name} ({i + 1}/{len(VARIANTS)})")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a vanishing plain network is a result, not a warning here
            res = simulate(base.with_(**changes), samples=samples, seeds=seeds, seed=seed, grad_samples=min(samples, 128),
                           threads=1)
        tables.append(res.table.assign(variant=name))
        per_seed.append(res.per_seed.assign(variant=name))
    return pd.concat(tables, ignore_index=True), pd.concat(per_seed, ignore_index=True)


def plot_residual_layernorm(table, per_seed, title=None, width=None):
    """Pre-activation variance and gradient norm per layer: simulation mean with its 95% t interval over networks
    (log scale, :func:`propagate.report.figures_training.seed_band`), mean-field theory dashed.

    ``table``/``per_seed``: from :func:`compute_residual_tables` (columns
    ``variant``, ``layer``, ``pre_var``, ``grad_norm``, ``theory_pre_var``,
    ``theory_grad_norm``; ``per_seed`` one row per network (``seed``) and layer).
    """
    import numpy as np

    from propagate.report.figures_training import seed_band
    from propagate.report.style import plt, report_style

    n_nets = int(per_seed.groupby("variant")["seed"].nunique().min())
    with report_style():
        fig, axes = plt.subplots(1, 2, figsize=(11.5, 4.6))
        panels = (("pre_var", "variance of the pre-activations $h^l$\n(per unit, over inputs; input variance 1)"),
                  ("grad_norm", "gradient norm $\\|\\partial y / \\partial h^l\\|$\n"
                                "of a random linear readout $y$ of the last layer"))
        for ax, (col, ylabel) in zip(axes, panels):
            for name, _ in VARIANTS:
                c = _COLOURS[name]
                ps = per_seed[(per_seed["variant"] == name) & (per_seed["layer"] >= 1)]
                band = seed_band(ps, "layer", col)  # positive: t interval on the log scale, never below 0
                ok = band["low"].notna() & band["high"].notna() & (band["low"] > 0)
                ax.fill_between(band["layer"][ok], band["low"][ok], band["high"][ok], color=c, alpha=0.25, lw=0)
                t = table[(table["variant"] == name) & (table["layer"] >= 1)]
                ax.plot(t["layer"], t[col], color=c, lw=1.4, label=f"{_LABELS[name]}: simulation")
                th = t["theory_" + col]
                if col == "grad_norm" and "theory_grad_norm_signal" in t:
                    ax.plot(t["layer"], th.where(th > 0), color=c, lw=1.0, ls=":")
                    th = np.sqrt(th**2 + t["theory_grad_norm_signal"].fillna(0.0) ** 2)
                ax.plot(t["layer"], th.where(th > 0), color=c, lw=1.0, ls="--", label=f"{_LABELS[name]}: theory")
            ax.axhline(1.0, color="0.3", lw=0.7, ls="-", alpha=0.5)
            ax.set_yscale("log")
            ax.set_xlabel("hidden layer $l$")
            ax.set_ylabel(ylabel)
        axes[0].legend(loc="lower left", fontsize=7)
        (dotted,) = axes[1].plot([], [], color="k", lw=1.0, ls=":")
        axes[1].legend([dotted], ["mean-field gradient alone (no signal direction)"], loc="lower right", fontsize=7)
        depth = int(table["layer"].max())
        width = width or int(table.loc[table["layer"] == depth, "width"].iloc[0])
        fig.suptitle(title or (f"ReLU, glorot_uniform, {depth} hidden layers of {width} units: without normalization "
                               "the variance shrinks (plain) or grows (residual) geometrically; LayerNorm holds it at 1"
                               f"\nsolid: mean over {n_nets} networks, band: its 95% t interval (log scale); "
                               "dashed: mean-field theory"), fontsize=10)
        fig.tight_layout()
    return fig


def _flag_counts(t) -> dict:
    """Layers flagged (the ``disagree`` column) in all, in a forward statistic, and in the gradient norm."""
    stats = [set(filter(None, str(f).split(","))) for f in t["disagree_in"].fillna("")]
    return {"flags": int(t["disagree"].astype(bool).sum()), "forward_flags": sum(bool(s - {"grad_norm"}) for s in stats),
            "grad_flags": sum("grad_norm" in s for s in stats)}


def residual_summary(table) -> dict:
    """Per variant: layers flagged (:func:`_flag_counts`, counted on every layer of the data file), theory's
    per-layer variance factor over the first 10 layers, the first and last layers' simulated and predicted
    variance and gradient norm, and the gradient's growth factor per layer towards the input (``grad_rate``)."""
    out = {}
    for name, _ in VARIANTS:
        every = table[table["variant"] == name]
        t = every[every["layer"] >= 1].set_index("layer")
        first, last = t.index.min(), t.index.max()
        upto = min(first + 10, last)
        rate = float((t.loc[upto, "theory_pre_var"] / t.loc[first, "theory_pre_var"]) ** (1.0 / max(1, upto - first)))
        g_first, g_last = float(t.loc[first, "grad_norm"]), float(t.loc[last, "grad_norm"])
        out[name] = {**_flag_counts(every), "rate": rate,
                     "q_first": float(t.loc[first, "pre_q"]), "q_last": float(t.loc[last, "pre_q"]),
                     "var_last": float(t.loc[last, "pre_var"]), "theory_var_last": float(t.loc[last, "theory_pre_var"]),
                     "grad_first": g_first, "theory_grad_first": float(t.loc[first, "theory_grad_norm"]),
                     "grad_last": g_last, "grad_rate": (g_first / g_last) ** (1.0 / max(1, last - first)),
                     "signal_first": float(t.loc[first, "theory_grad_norm_signal"])}
    return out


def section_markdown(summary: dict, sizes: dict) -> str:
    """The section's markdown: ``templates/section_residual.md`` filled from :func:`residual_summary` and the sizes
    (``depth``, ``width``, ``seeds``, ``samples``)."""
    values = {"depth": sizes["depth"], "width": sizes["width"], "seeds": sizes["seeds"], "samples": sizes["samples"]}
    keys = {"plain": ("rate", "theory_var_last", "var_last", "grad_first", "grad_last", "flags"),
            "residual": ("rate", "var_last", "theory_var_last", "forward_flags", "theory_grad_first", "signal_first",
                         "grad_first", "grad_last", "grad_flags"),
            "layernorm": ("var_last", "theory_var_last", "forward_flags", "grad_flags", "grad_first", "grad_last",
                          "grad_rate")}
    for prefix, variant in (("plain", "plain"), ("residual", "residual 0.5"), ("layernorm", "layernorm")):
        for k in keys[prefix]:
            v = summary[variant][k]
            values[f"{prefix}_{k}"] = v if k.endswith("flags") else f"{v:.3g}"
    return render("section_residual.md", values)


def _settings(ctx: dict) -> dict:
    return dict(depth=200, width=128, samples=128, seeds=4) if ctx.get("quick") else dict(depth=200, width=256,
                                                                                          samples=256, seeds=8)


def start(ctx: dict, progress=None):
    """The section's simulations as one task of ``ctx["runner"]`` (in process without one); its ``result()`` is
    :func:`compute_residual_tables`'. The report calls it early (on Dask it runs on a worker from then on);
    :func:`section` gets the same task."""
    runner = ctx.get("runner") or ReportRunner()
    return runner.task("residual", compute_residual_tables, seed=int(ctx.get("seed", 0)),
                       progress=None if runner.on_dask else progress, **_settings(ctx))


def section(out_dir: Path, ctx: dict, progress=None) -> str:
    """Compute, write data and figure, and return the markdown of the residual/LayerNorm section."""
    out_dir = Path(out_dir)
    runner = ctx.get("runner") or ReportRunner()
    kw = _settings(ctx)
    table, per_seed = start({**ctx, "runner": runner}, progress).result()
    meta = {"kind": "residual_layernorm", **kw, "seed": int(ctx.get("seed", 0)), "activation": "relu",
            "init": "glorot_uniform"}
    (out_dir / "data").mkdir(parents=True, exist_ok=True)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    write_table(table, out_dir / "data" / "residual_layernorm.csv", meta)
    write_table(per_seed, out_dir / "data" / "residual_layernorm_per_seed.csv", meta)
    runner.figure(out_dir / "figures" / "residual_layernorm", plot_residual_layernorm, table, per_seed)
    return section_markdown(residual_summary(table), kw)
