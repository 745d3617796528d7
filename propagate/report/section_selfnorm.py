"""Report section: self-normalized GELU and a TAT leaky ReLU against SELU and plain GELU.

:func:`section` solves the transforms (:mod:`propagate.selfnorm`), simulates
50-layer networks of each with the mean-field theory alongside (per-layer
variance and correlation), trains the lecture demo's network with each on the report's
dataset at the demo's settings (RMSprop, batch 128; lr 1e-3 and 1e-4) as an
ensemble of seeds, writes the tables to ``data/`` and the figures
``figures/selfnorm_depth50`` and ``figures/selfnorm_training`` (PNG and SVG), and
returns the markdown. :func:`plot_selfnorm_simulation` and
:func:`plot_selfnorm_training` draw the figures from the tables (usable in a
notebook).

Training claims rest on several seeds: every final number is the mean over
the seeds with its 95% Student t interval on the quantity's scale
(:func:`propagate.confidence.interval_of`: accuracies on the logit scale, losses
on the log scale, so no interval leaves [0, 1] or reaches below 0), and
each sentence comparing networks is decided from those intervals by
:func:`training_verdicts` and :func:`training_comparisons`, never written by hand.
"""

from __future__ import annotations

from dataclasses import replace
from itertools import combinations
from pathlib import Path

import numpy as np

from propagate.confidence import format_number, interval_of, kind_of, paired_difference, summarize_seeds
from propagate.errors import UserError
from propagate.io import write_table
from propagate.report.tasks import PRIORITY, ReportRunner, run_frames, train_point
from propagate.runner import PointStore
from propagate.templates import render

__all__ = ["section", "configurations", "training_configurations", "compute_simulation", "compute_training",
           "final_per_seed", "summarize_training", "chance_accuracy", "training_verdicts", "training_comparisons",
           "simulation_summary", "section_markdown", "plot_selfnorm_simulation", "plot_selfnorm_training",
           "selfnorm_j22", "start", "SETTINGS_FULL", "SETTINGS_QUICK"]

#: lr 1e-3 is the lecture demo's step size; at it RMSprop knocks even SELU's network of depth 51 off its fixed point
#: (reports/mnist-5k), so 1e-4 is trained as well.
#: ``seeds``: simulated networks per activation; ``train_seeds``: trained networks (seeds) per activation and
#: learning rate, overridden by ``ctx["train_seeds"]``.
SETTINGS_FULL = {"depth": 50, "width": 256, "seeds": 4, "samples": 512, "epochs": 3, "n_train": None, "n_test": None,
                 "lrs": (1e-3, 1e-4), "train_seeds": 5}
SETTINGS_QUICK = {"depth": 50, "width": 64, "seeds": 2, "samples": 200, "epochs": 2, "n_train": 640, "n_test": 500,
                  "lrs": (1e-4,), "train_seeds": 2}
#: final-epoch metrics summarized over seeds (``train_eval_acc``: accuracy of the final weights on the training images)
_FINAL_METRICS = ("val_acc", "train_eval_acc", "val_loss", "loss")
_COLOURS = {"SELU": "#1f77b4", "self-normalized GELU": "#2ca02c", "TAT leaky ReLU": "#9467bd", "GELU": "#d62728"}


def configurations(depth: int = 50, digits: int = 16) -> list[dict]:
    """The four activations compared: name, activation string, and how it was obtained.

    ``depth`` is the number of nonlinear layers TAT shapes the correlation map
    for (C_f(0) = 0.9 at that depth).
    """
    from propagate.selfnorm import self_normalize
    from propagate.transforms import tat_transform

    sn = self_normalize("gelu", digits=digits).recommended
    tat = tat_transform("leaky_relu", depth, eta=0.9, digits=digits)
    return [
        {"name": "SELU", "activation": "selu", "how": "Klambauer et al. 2017"},
        {"name": "self-normalized GELU", "activation": sn.activation,
         "how": f"self-normalize: spectral norm {float(sn.spectral_norm):.4f}, chi_1 {float(sn.chi_1):.4f}"},
        {"name": "TAT leaky ReLU", "activation": tat.activation,
         "how": f"TAT, C_f(0) = 0.9 at depth {depth}: slope {float(tat.parameters['slope']):.4f}"},
        {"name": "GELU", "activation": "gelu", "how": "untransformed"},
    ]


def compute_simulation(configs, *, depth=50, width=256, seeds=4, samples=512, seed=0, progress=None):
    """Simulated 50-layer networks (LeCun normal, Gaussian inputs) with theory columns; ``(table, per_seed)``."""
    import warnings

    import pandas as pd

    from propagate.simulate import simulate
    from propagate.spec import NetworkSpec

    tables, per_seed = [], []
    for i, c in enumerate(configs):
        if progress:
            progress(f"selfnorm section: simulating {c['name']} ({i + 1}/{len(configs)})")
        spec = NetworkSpec.stack(depth, width, input_dim=width, first_width=None, activation=c["activation"],
                                 init="lecun_normal")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = simulate(spec, samples=samples, seeds=seeds, seed=seed, grad_samples=min(samples, 128), threads=1)
        tables.append(res.table.assign(config=c["name"]))
        per_seed.append(res.per_seed.assign(config=c["name"]))
    return pd.concat(tables, ignore_index=True), pd.concat(per_seed, ignore_index=True)


def compute_training(configs, dataset, *, epochs=3, seed=0, lrs=(1e-3,), seeds=5, progress=None, runner=None,
                     store_dir=None):
    """Train the lecture demo's network (784-512-50x256-10, LeCun normal) with each activation at each learning rate.

    Each (activation, lr) is an ensemble of ``seeds`` networks, seeds ``seed ..
    seed + seeds - 1``, trained as one batched model
    (:func:`propagate.train.train`, one thread); every activation and learning
    rate uses the same seeds, so a seed's initial weights and shuffles are
    shared and differences can be paired. Each ensemble is one point of
    ``runner`` (:class:`propagate.report.tasks.ReportRunner`; default in
    process), kept in ``store_dir`` when given (a stopped build resumes).
    Returns the per-seed history (one row per seed and epoch, columns of
    :data:`propagate.train.HISTORY_COLUMNS`) with ``config`` and ``lr`` columns.
    """
    import pandas as pd

    from propagate.data import dataset_identity
    from propagate.spec import NetworkSpec
    from propagate.train import TrainOptions, seed_list

    runner = runner or ReportRunner()
    data_id = dataset_identity(dataset) if store_dir else None
    plan = []
    for lr in lrs:
        for c in configs:
            spec = NetworkSpec.seed(c["activation"], "lecun_normal", False, name=c["name"])
            plan.append((lr, c["name"], train_point([spec], TrainOptions(epochs=epochs, seed=seed, lr=lr, threads=1),
                                                    seed_list(seed, seeds), dataset, data_id=data_id,
                                                    what=f"{c['name']} at lr {lr:g}, {seeds} seed(s)")))
    values = runner.run([p for _, _, p in plan], store=PointStore(store_dir) if store_dir else None,
                        label="selfnorm section", priority=PRIORITY["selfnorm"], say=progress)
    return pd.concat([run_frames(values[p.key][0])[0].assign(config=name, lr=lr) for lr, name, p in plan],
                     ignore_index=True)


def simulation_and_rates(configs, *, depth, width, seeds, samples, seed=0, progress=None):
    """:func:`compute_simulation`'s ``(table, per_seed)`` and the per-layer shrink factors ``{name: j22}``
    (:func:`selfnorm_j22`) of SELU and the self-normalized GELU: the section's computations besides training."""
    table, per_seed = compute_simulation(configs, depth=depth, width=width, seeds=seeds, samples=samples, seed=seed,
                                         progress=progress)
    return table, per_seed, {"SELU": selfnorm_j22("elu"), "self-normalized GELU": selfnorm_j22("gelu")}


def _simulation_task(ctx: dict, progress=None):
    """:func:`simulation_and_rates` as one task of ``ctx["runner"]`` (on Dask: on a worker, from the report's start)."""
    runner = ctx.get("runner") or ReportRunner()
    S, seed, configs, _, _ = runner.memo("selfnorm setup", _setup, ctx)
    return runner.task("selfnorm simulation", simulation_and_rates, configs, depth=S["depth"], width=S["width"],
                       seeds=S["seeds"], samples=S["samples"], seed=seed,
                       progress=None if runner.on_dask else progress)


def start(ctx: dict, progress=None):
    """The section's training runs as one part of ``ctx["runner"]`` (in process without one); its ``result()`` is
    :func:`compute_training`'s history. The report calls it early (on Dask the runs train from then on);
    :func:`section` calls it again and gets the same part."""
    runner = ctx.get("runner") or ReportRunner()
    S, seed, _, data_sub, train_configs = runner.memo("selfnorm setup", _setup, ctx)
    _simulation_task({**ctx, "runner": runner}, progress)
    work = ctx.get("work_dir")
    return runner.part("selfnorm", compute_training, train_configs, data_sub, epochs=S["epochs"], seed=seed,
                       lrs=S["lrs"], seeds=S["train_seeds"], progress=progress, runner=runner,
                       store_dir=Path(work) / "selfnorm" if work else None)


def _setup(ctx: dict):
    """``(settings, seed, configs, training data, training configs)`` of the section (``ctx`` as :func:`section`'s)."""
    S = dict(SETTINGS_QUICK if ctx.get("quick") else SETTINGS_FULL)
    seed = int(ctx.get("seed", 0))
    S["train_seeds"] = _train_seeds(ctx, S)
    dataset = ctx.get("dataset_obj")
    if dataset is None:
        from propagate.data import load_dataset

        dataset = load_dataset(ctx.get("dataset", "mnist-5k"))
    configs = configurations(S["depth"])
    return S, seed, configs, _subset(dataset, S["n_train"], S["n_test"]), training_configurations(configs)


def final_per_seed(history):
    """Each seed's last history row per (``lr``, ``config``): the final epoch, or the epoch a diverged seed stopped in.

    A diverged seed's weights are those from before its failing batch
    (:func:`propagate.train.train`), so its last evaluation is a real one and
    counts; ``diverged`` says which seeds stopped early.
    """
    h = history.sort_values(["lr", "config", "seed", "epoch"], kind="stable")
    last = h.groupby(["lr", "config", "seed"], sort=False).tail(1)
    out = last[["lr", "config", "seed", "epoch", *_FINAL_METRICS]].copy()
    out["diverged"] = h.groupby(["lr", "config", "seed"], sort=False)["diverged"].any().to_numpy(bool)
    return out.reset_index(drop=True)


def chance_accuracy(y) -> float:
    """Accuracy of the best constant prediction on labels ``y``: the commonest class's frequency (fraction)."""
    counts = np.bincount(np.asarray(y).astype(int).ravel())
    return float(counts.max() / counts.sum())


def training_verdicts(finals, chance: float) -> dict:
    """Per (lr, config): does the final validation accuracy's 95% t interval clear ``chance``?

    ``"trains"``: the interval lies above ``chance`` (the best constant
    prediction's accuracy); ``"does not train"``: it lies at or below it;
    ``"unresolved"``: it contains it, or there is no interval (one seed).
    Returns ``{(lr, config): (verdict, Interval)}``.
    """
    out = {}
    for (lr, name), t in finals.groupby(["lr", "config"], sort=False):
        iv = interval_of("val_acc", t["val_acc"].to_numpy(float))
        # tolerance: a mean of equal accuracies (e.g. five collapsed networks at exactly chance) can differ from
        # chance in the last bit
        if iv.has_interval and iv.low > chance + 1e-9:
            verdict = "trains"
        elif iv.has_interval and iv.high <= chance + 1e-9:
            verdict = "does not train"
        else:
            verdict = "unresolved"
        out[(float(lr), name)] = (verdict, iv)
    return out


def training_comparisons(finals, names, metric: str = "val_acc") -> list[dict]:
    """Every pair of networks at each lr: paired difference of the final ``metric`` over the seeds both have.

    Returns rows ``{"lr", "a", "b", "diff": Interval}`` ordered so that
    ``diff.mean >= 0`` (``a`` is the one ahead on average); ``a`` beats ``b``
    when ``diff`` excludes 0 (:meth:`propagate.confidence.Interval.excludes`); the two are
    tied within the interval when it contains 0. Differences of accuracies get
    their interval on the atanh scale (they lie in [-1, 1]).
    """
    rows = []
    for lr, t in finals.groupby("lr", sort=False):
        by = {n: t[t["config"] == n].set_index("seed")[metric].astype(float) for n in names}
        for a, b in combinations([n for n in names if len(by[n])], 2):
            d = paired_difference(by[a], by[b], kind=kind_of(metric))
            if d.mean < 0:
                a, b = b, a
                d = paired_difference(by[a], by[b], kind=kind_of(metric))
            rows.append({"lr": float(lr), "a": a, "b": b, "diff": d})
    return rows


def summarize_training(finals, chance: float):
    """Per (lr, config): mean, 95% t interval (on each metric's scale: logit for accuracies, log for losses) and
    ``n_seeds`` of each final metric, ``diverged_seeds`` and ``verdict``."""
    summ = summarize_seeds(finals, keys=["lr", "config"], metrics=list(_FINAL_METRICS), kinds="auto")
    div = finals.groupby(["lr", "config"], sort=False)["diverged"].sum()
    verdicts = training_verdicts(finals, chance)
    summ["diverged_seeds"] = [int(div.loc[(lr, n)]) for lr, n in zip(summ["lr"], summ["config"])]
    summ["chance_acc"] = chance
    summ["verdict"] = [verdicts[(float(lr), n)][0] for lr, n in zip(summ["lr"], summ["config"])]
    return summ


def plot_selfnorm_simulation(table, per_seed):
    """Per-layer pre-activation variance and correlation: simulation mean with its 95% t interval over networks
    (:func:`propagate.report.figures_training.seed_band`: the variance's on the log scale), theory dashed."""
    from propagate.report.figures_training import seed_band
    from propagate.report.style import plt, report_style

    with report_style():
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        for ax, (col, label) in zip(axes, (("pre_var", "variance of the pre-activations $h^l$ (input variance 1)"),
                                           ("corr", "correlation of two inputs at layer $l$"))):
            for name, colour in _COLOURS.items():
                t = table[(table["config"] == name) & (table["layer"] >= 1)]
                if t.empty:
                    continue
                band = seed_band(per_seed[(per_seed["config"] == name) & (per_seed["layer"] >= 1)], "layer", col)
                ax.fill_between(band["layer"], band["low"], band["high"], color=colour, alpha=0.2, lw=0)
                ax.plot(t["layer"], t[col], color=colour, lw=1.3, label=f"{name}: simulation")
                ax.plot(t["layer"], t["theory_" + col], color=colour, lw=1.0, ls="--", label=f"{name}: theory")
            ax.set_xlabel("hidden layer $l$")
            ax.set_ylabel(label)
        # linear: the three normalized networks sit at 1; plain GELU's variance falls to 0 within a few layers
        axes[0].set_ylim(0, 2.2)
        axes[1].set_ylim(-0.05, 1.05)
        axes[1].legend(fontsize=7, loc="upper left", ncol=2)
        n_nets = int(per_seed.groupby("config")["seed"].nunique().min())
        fig.suptitle(f"50 layers, LeCun normal, Gaussian inputs: simulation (solid: mean over {n_nets} networks, band: "
                     "its 95% t interval) vs mean field (dashed)", fontsize=9)
        fig.tight_layout()
    return fig


def plot_selfnorm_training(history, chance: float | None = None):
    """Per epoch, one row of panels per learning rate: validation accuracy, training accuracy and training loss.

    ``history``: per-seed rows (``seed``, ``epoch``, ``config``, ``lr`` and the
    metrics). Lines are the mean over seeds, bands its 95% Student t interval on the
    metric's scale (logit for accuracies, log for the loss: never below 0; none with one seed); ``chance`` (fraction) is drawn as a dotted line on the
    accuracy panels. Training accuracy is the final weights' accuracy on the
    training images (``train_eval_acc``), training loss the running mean over
    the epoch's batches (nats per sample).
    """
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    from propagate.report.style import plt, report_style

    metrics = (("val_acc", "validation accuracy (fraction)"), ("train_eval_acc", "training accuracy (fraction)"),
               ("loss", "training loss (nats per sample)"))
    summ = summarize_seeds(history, keys=["lr", "config", "epoch"], metrics=[m for m, _ in metrics], kinds="auto")
    lrs = sorted(summ["lr"].unique(), reverse=True)
    n_seeds = int(history.groupby(["lr", "config"])["seed"].nunique().max())
    with report_style():
        fig, axes = plt.subplots(len(lrs), 3, figsize=(12, 3.3 * len(lrs) + 0.6), squeeze=False)
        for row, lr in zip(axes, lrs):
            for name, colour in _COLOURS.items():
                t = summ[(summ["lr"] == lr) & (summ["config"] == name)].sort_values("epoch")
                if t.empty:
                    continue
                for ax, (m, _) in zip(row, metrics):
                    mean, lo, hi = (t[f"{m}_{k}"].to_numpy(float) for k in ("mean", "ci_low", "ci_high"))
                    ax.fill_between(t["epoch"], lo, hi, color=colour, alpha=0.18, lw=0)
                    ax.plot(t["epoch"], mean, "o-", color=colour, lw=1.3, ms=3.5, label=name)
            for ax, (m, label) in zip(row, metrics):
                ax.set_xlabel("epoch")
                ax.set_ylabel(label)
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
                ax.set_title(f"lr {lr:g}", fontsize=9)
                if m == "loss":
                    ax.set_yscale("log")
                    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
                    ax.yaxis.set_minor_formatter(FuncFormatter(  # label the 2s and 5s of each decade (0.2, 0.5, 2, 5, 20, ...)
                        lambda v, _: f"{v:g}" if f"{v:g}".lstrip("0.")[:1] in ("2", "5") else ""))
                    means = summ.loc[summ["lr"] == lr, "loss_mean"].to_numpy(float)
                    means = means[np.isfinite(means) & (means > 0)]
                    if len(means):
                        ax.set_ylim(max(means.min() / 3, 1e-3), means.max() * 3)
                else:
                    ax.set_ylim(0, 1)
                    if chance is not None:
                        ax.axhline(chance, color="0.4", ls=":", lw=1.0, label="best constant prediction")
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=5, frameon=False)
        band = ("band = 95% t interval of the mean (accuracies: logit scale, loss: log scale)" if n_seeds > 1
                else "1 seed: no band")
        fig.suptitle(f"Training the lecture demo's network: mean over {n_seeds} seed{'s' * (n_seeds != 1)} ({band})", fontsize=9)
        fig.tight_layout(rect=(0, 0.04 if len(lrs) > 1 else 0.07, 1, 1))
    return fig


def selfnorm_j22(activation: str) -> float:
    """``d nu~ / d nu`` at the recommended (0, 1) solution: the per-layer shrink factor of a variance error."""
    from propagate.selfnorm import self_normalize

    return float(self_normalize(activation, digits=16).recommended.jacobian[1][1])


def _subset(dataset, n_train, n_test):
    if n_train is None:
        return dataset
    return replace(dataset, name=f"{dataset.name}[:{n_train}]", x_train=dataset.x_train[:n_train],
                   y_train=dataset.y_train[:n_train], x_test=dataset.x_test[:n_test], y_test=dataset.y_test[:n_test])


def _names(names) -> str:
    names = list(names)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _verdict_parts(verdicts: dict, names, lr, chance: float, n_seeds: int) -> list[str]:
    """The clauses "X trains", "Y does not", "for Z the interval contains chance" at one learning rate."""
    v = {n: verdicts[(float(lr), n)] for n in names if (float(lr), n) in verdicts}
    groups = {k: [n for n in names if n in v and v[n][0] == k] for k in ("trains", "does not train", "unresolved")}
    parts = []
    if groups["trains"]:
        parts.append(f"{_names(groups['trains'])} train{'s' if len(groups['trains']) == 1 else ''} (interval of "
                     f"final validation accuracy above {format_number(chance)})")
    if groups["does not train"]:
        parts.append(f"{_names(groups['does not train'])} do{'es' if len(groups['does not train']) == 1 else ''} not "
                     f"(interval at or below {format_number(chance)})")
    if groups["unresolved"]:
        parts.append(f"for {_names(groups['unresolved'])} the interval contains {format_number(chance)} or "
                     f"there is none, so {n_seeds} seed{'s do' if n_seeds != 1 else ' does'} not decide")
    return parts


def _comparison_text(pairs: list, lr, n_seeds: int) -> str:
    """Which networks beat which at one learning rate (paired intervals excluding 0), or that none is resolved."""
    at = [p for p in pairs if p["lr"] == float(lr)]
    wins = [p for p in at if p["diff"].excludes(0.0)]
    if wins:
        s = " Paired over the same seeds, " + "; ".join(
            f"{p['a']} beats {p['b']} by {format_number(p['diff'].mean)} "
            f"[{format_number(p['diff'].low)}, {format_number(p['diff'].high)}]" for p in wins) + \
            " in final validation accuracy (95% t interval of the per-seed difference, atanh scale)"
        ties = [p for p in at if p["diff"].has_interval and not p["diff"].excludes(0.0)]
        return s + (f"; {_tie_text(ties)}." if ties else ".")
    if at and n_seeds >= 2:
        return (" No network beats another: every paired difference's 95% interval of final validation accuracy "
                f"contains 0, so {_tie_text(at)}.")
    return ""


def _tie_text(pairs: list) -> str:
    """``"tied within the interval: A and B (0.004 [-0.01, 0.02]), ..."``"""
    return "tied within the interval: " + "; ".join(
        f"{p['a']} and {p['b']} ({format_number(p['diff'].mean)} [{format_number(p['diff'].low)}, "
        f"{format_number(p['diff'].high)}])" for p in pairs)


def _training_prose(finals, names, lrs, chance: float, n_seeds: int) -> str:
    """The sentences about training, every claim decided from the seeds' intervals (none typed in)."""
    verdicts = training_verdicts(finals, chance)
    pairs = training_comparisons(finals, names)
    out = []
    if n_seeds < 2:
        out.append("One seed per network: no interval, so no network is said to train or to beat another.")
    for lr in lrs:
        parts = _verdict_parts(verdicts, names, lr, chance, n_seeds)
        s = (f"At lr {lr:g}, against {format_number(chance)}, the validation accuracy of always predicting the "
             f"commonest class, over N = {n_seeds} seed{'s' * (n_seeds != 1)}: " + "; ".join(parts) + ".")
        out.append(s + _comparison_text(pairs, lr, n_seeds))
    return "\n\n".join(out)


def simulation_summary(table, configs, depth: int) -> list[dict]:
    """Per network: mean simulated and theoretical Var(h) beyond layer ``depth // 2``, the largest relative
    variance error, correlation at the last layer (simulated, theory), the largest correlation error, and
    the layers flagged (``disagree``)."""
    out = []
    for c in configs:
        every = table[table["config"] == c["name"]]
        t = every[every["layer"] >= 1]
        deep = t[t["layer"] > depth // 2]
        out.append({"name": c["name"], "deep_var": float(deep["pre_var"].mean()),
                    "deep_theory_var": float(deep["theory_pre_var"].mean()),
                    "var_error": float(np.nanmax(np.abs(t["pre_var"] / t["theory_pre_var"] - 1))),
                    "corr_last": float(t["corr"].iloc[-1]), "theory_corr_last": float(t["theory_corr"].iloc[-1]),
                    "corr_error": float(np.nanmax(np.abs(t["corr"] - t["theory_corr"]))),
                    # every layer of the data file, as its ``disagree`` column counts them
                    "flagged": int(every["disagree"].astype(bool).sum()) if "disagree" in every.columns else 0})
    return out


def training_configurations(configs, depth: int | None = None) -> list[dict]:
    """``configs`` for the lecture demo's network: TAT's leaky ReLU solved again for its depth (default its 51 hidden layers)."""
    from propagate.spec import SEED_DEPTH
    from propagate.transforms import tat_transform

    out = [dict(c) for c in configs]
    tat = tat_transform("leaky_relu", SEED_DEPTH if depth is None else depth, eta=0.9, digits=16)
    out[2]["activation"] = tat.activation
    return out


def _ci(r, m: str) -> str:
    mean, lo, hi = (float(r[f"{m}_{k}"]) for k in ("mean", "ci_low", "ci_high"))
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return f"{format_number(mean)} (no interval)"
    return f"{format_number(mean)} [{format_number(lo)}, {format_number(hi)}]"


def _training_rows(summary, lrs, train_configs) -> list[str]:
    rows = []
    for lr in lrs:
        for c in train_configs:
            r = summary[(summary["lr"] == lr) & (summary["config"] == c["name"])]
            if not r.empty:
                r = r.iloc[0]
                rows.append(f"| {c['name']} | {lr:g} | {int(r['n_seeds'])} | {_ci(r, 'val_acc')} | "
                            f"{_ci(r, 'train_eval_acc')} | {_ci(r, 'val_loss')} | {_ci(r, 'loss')} | "
                            f"{int(r['diverged_seeds'])} |")
    return rows


def section_markdown(S: dict, seed: int, configs, sim: list[dict], j22: dict, data_name: str, train_configs,
                     summary, finals, chance: float) -> str:
    """The section's markdown: ``templates/section_selfnorm.md`` filled from the tables (``S``: the settings)."""
    n_seeds = S["train_seeds"]
    return render("section_selfnorm.md", {
        "config_rows": "\n".join(f"| {c['name']} | `{c['activation']}` | {c['how']} |" for c in configs),
        "sim_seeds": S["seeds"], "width": S["width"], "samples": S["samples"], "half_depth": S["depth"] // 2,
        "depth": S["depth"],
        "simulation_rows": "\n".join(
            f"| {r['name']} | {r['deep_var']:.3g} | {r['deep_theory_var']:.3g} | {r['var_error']:.2f} | "
            f"{r['corr_last']:.3f} | {r['theory_corr_last']:.3f} | {r['corr_error']:.3f} | {r['flagged']} |" for r in sim),
        "flag_sentence": _flag_sentence(sim),
        "j22_selu": f"{float(j22['SELU']):.3f}", "j22_gelu": f"{float(j22['self-normalized GELU']):.3f}",
        "epochs": S["epochs"], "dataset": data_name, "lrs": ", ".join(f"{lr:g}" for lr in S["lrs"]),
        "n_seeds": n_seeds, "first_seed": seed, "last_seed": seed + n_seeds - 1,
        "training_rows": "\n".join(_training_rows(summary, S["lrs"], train_configs)),
        "training_prose": _training_prose(finals, [c["name"] for c in train_configs], S["lrs"], chance, n_seeds),
    })


def _flag_sentence(sim: list[dict]) -> str:
    """How many layers the table flags, in words (the count of ``disagree`` in ``data/selfnorm_simulation.csv``)."""
    flagged = [r for r in sim if r["flagged"]]
    if not flagged:
        return "No layer of any network is flagged: the test finds no layer where simulation and theory differ."
    return (f"{sum(r['flagged'] for r in flagged)} layer(s) are flagged ("
            + ", ".join(f"{r['name']}: {r['flagged']}" for r in flagged)
            + "; column `disagree` of [`data/selfnorm_simulation.csv`](data/selfnorm_simulation.csv), the statistics "
              "in `disagree_in`): at those layers the simulation does not confirm the theory.")


def _train_seeds(ctx: dict, S: dict) -> int:
    """``ctx["train_seeds"]`` (default: the settings'), refused unless a whole number >= 1."""
    n_seeds = ctx.get("train_seeds")
    if n_seeds is None:
        n_seeds = S["train_seeds"]
    if isinstance(n_seeds, bool) or not isinstance(n_seeds, (int, np.integer)) or n_seeds < 1:
        raise UserError(f"train seeds must be a whole number >= 1, got {n_seeds!r}")
    return int(n_seeds)


def _write_tables(out_dir: Path, S: dict, seed: int, configs, train_configs, data_name: str, table, history,
                  summary, chance: float) -> None:
    (out_dir / "data").mkdir(parents=True, exist_ok=True)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    meta = {"settings": S, "seed": seed, "configs": configs}
    write_table(table, out_dir / "data" / "selfnorm_simulation.csv", meta)
    train_meta = {**meta, "dataset": data_name, "train_configs": train_configs,
                  "seeds": list(range(seed, seed + S["train_seeds"])), "level": 0.95, "interval": "Student t over seeds"}
    write_table(history, out_dir / "data" / "selfnorm_training.csv", train_meta)
    write_table(summary, out_dir / "data" / "selfnorm_training_summary.csv",
                {**train_meta, "chance_acc": chance, "final": "each seed's last epoch"})


def section(out_dir: Path, ctx: dict, progress=None) -> str:
    """Compute, write ``data/selfnorm_*.csv`` and the two figures, return the markdown.

    ``ctx``: ``quick`` (smaller simulated networks, two epochs on 640 images),
    ``seed`` (the first training seed), ``train_seeds`` (networks trained per
    activation and learning rate: default 5, quick 2), ``dataset`` (a name for
    :func:`propagate.data.load_dataset`, or a loaded Dataset as
    ``ctx["dataset_obj"]``), optionally ``runner`` (where the training runs go,
    :func:`start`) and ``work_dir`` (they are kept in its ``selfnorm/``).
    ``progress``: callable(message) or None.

    Writes ``data/selfnorm_simulation.csv``, ``data/selfnorm_training.csv``
    (one row per seed and epoch, ``seed`` column) and
    ``data/selfnorm_training_summary.csv`` (per lr and network: final metrics'
    mean, 95% t interval, ``n_seeds``, ``diverged_seeds``, ``verdict``).
    """
    out_dir = Path(out_dir)
    say = progress if callable(progress) else None
    ctx = {**ctx, "runner": ctx.get("runner") or ReportRunner()}
    runner = ctx["runner"]
    S, seed, configs, data_sub, train_configs = runner.memo("selfnorm setup", _setup, ctx)
    table, per_seed, j22 = _simulation_task(ctx, say).result()
    history = start(ctx, say).result()
    chance = chance_accuracy(data_sub.y_test)
    finals = final_per_seed(history)
    summary = summarize_training(finals, chance)
    _write_tables(out_dir, S, seed, configs, train_configs, data_sub.name, table, history, summary, chance)
    runner.figure(out_dir / "figures" / "selfnorm_depth50", plot_selfnorm_simulation, table, per_seed)
    runner.figure(out_dir / "figures" / "selfnorm_training", plot_selfnorm_training, history, chance)
    return section_markdown(S, seed, configs, simulation_summary(table, configs, S["depth"]), j22, data_sub.name,
                            train_configs, summary, finals, chance)
