"""The lecture demo's runs: every preset at every learning rate, a seed ensemble each, next to the demo's numbers.

:func:`reproduce` trains each preset (:mod:`propagate.presets`: the demo's five
MNIST runs and the recipes it left out) at each learning rate with
:func:`propagate.train.train`, one run folder per run (``<preset>_lr<lr>/``,
see :mod:`propagate.runstore`), and keeps ``summary.csv`` and ``summary.md``
(per run and epoch, the mean over seeds of each metric with its 95% Student t
interval, next to what the demo reported) up to date after every run, so an
interrupted reproduction resumes where it stopped.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Callable

from propagate.errors import UserError
from propagate.io import atomic_write_text, run_metadata, write_table
from propagate.presets import Preset, get_preset, list_presets
from propagate.runfolder import claim
from propagate.train import TrainOptions, TrainResult, check_memory, resolve_device, train

__all__ = ["reproduce", "check_runs", "reproduce_identity", "run_name", "summary_row", "summary_markdown",
           "long_summary", "SUMMARY_METRICS"]


def reproduce_identity(dataset) -> dict:
    """What a reproduction folder records: its data (each run's settings are checked by :func:`train`)."""
    from propagate.data import dataset_identity

    return {"kind": "reproduce", "dataset": dataset_identity(dataset)}


def _claim_reproduce_dir(out: Path, dataset, resume: bool):
    """Lock a reproduction folder and check its data (:func:`reproduce_identity`)."""
    return claim(out, reproduce_identity(dataset), resume=resume)


def _lr_tag(lr: float) -> str:
    # 6 digits (the names of existing folders) when they are the number; else every digit, so that two learning
    # rates (1e-3 and 1.0000001e-3) never share a run folder
    short = f"{lr:g}"
    return f"lr{short if float(short) == lr else repr(float(lr))}"


def run_name(preset: str, lr: float) -> str:
    """Folder name of one ``reproduce`` run, e.g. ``relu-bn_lr0.001``."""
    return f"{preset}_{_lr_tag(lr)}"


#: The per-epoch metrics of a run's summary (mean over seeds with the 95% t interval, on each metric's scale).
SUMMARY_METRICS = ("acc", "val_acc", "train_eval_acc", "loss", "val_loss")


def summary_row(preset: Preset, lr: float, result: TrainResult, epochs: int) -> dict:
    """One row per run (in memory; :func:`long_summary` makes it one row per epoch): per epoch and metric the mean
    over seeds and its 95% t interval (``<metric>_<epoch>_mean`` ...), the final epoch's as ``<metric>_mean`` ...,
    next to the lecture demo's reported numbers (``reported_acc_<epoch>`` ...)."""
    h, summ = result.history, result.summary
    nan = float("nan")
    row: dict[str, Any] = {"preset": preset.name, "demo_run": preset.demo_run, "lr": lr, "status": result.status,
                           "n_seeds": len(result.seeds), "diverged_seeds": len(result.diverged_seeds),
                           "epochs_done": int(h["epoch"].max()) if len(h) else 0}
    rep = preset.reported or {}
    for e in range(1, epochs + 1):
        sel = summ[summ["epoch"] == e]
        for key in SUMMARY_METRICS:
            for part in ("mean", "ci_low", "ci_high"):
                row[f"{key}_{e}_{part}"] = float(sel[f"{key}_{part}"].iloc[0]) if len(sel) else nan
        for key in ("acc", "val_acc"):
            vals = rep.get(key, [])
            row[f"reported_{key}_{e}"] = vals[e - 1] if e <= len(vals) else nan
    last = summ.iloc[-1] if len(summ) else None
    for key in ("loss", "val_loss"):
        for part in ("mean", "ci_low", "ci_high"):
            row[f"{key}_{part}"] = float(last[f"{key}_{part}"]) if last is not None else nan
    row["reported_loss"] = rep.get("loss", nan)
    row["reported_val_loss"] = rep.get("val_loss", nan)
    row["seconds"] = float(h.groupby("epoch")["seconds"].first().sum()) if len(h) else 0.0
    return row


def long_summary(summary, epochs: int | None = None):
    """The run summary as a tidy table: one row per (preset, lr, epoch), what ``summary.csv`` holds.

    ``summary``: one row per run (:func:`reproduce`'s return value). Columns:
    ``preset``, ``demo_run``, ``lr``, ``epoch``, the run's ``status``,
    ``n_seeds``, ``diverged_seeds``, ``epochs_done`` and ``seconds`` (the run's),
    each metric of :data:`SUMMARY_METRICS` as ``<metric>_mean``,
    ``<metric>_ci_low``, ``<metric>_ci_high`` (95% Student t interval over the
    seeds, logit scale for accuracies, log scale for losses), and the lecture
    demo's reported ``reported_acc``, ``reported_val_acc`` (per epoch) and
    ``reported_loss``, ``reported_val_loss`` (after its last epoch, 3; empty on
    other epochs). ``epochs``: how many epochs (default: as many as the columns hold).
    """
    import re

    import pandas as pd

    if epochs is None:
        found = [int(m.group(1)) for c in summary.columns if (m := re.fullmatch(r"acc_(\d+)_mean", c))]
        epochs = max(found, default=0)
    run_cols = ["preset", "demo_run", "lr", "status", "n_seeds", "diverged_seeds", "epochs_done", "seconds"]
    nan = float("nan")
    rows = []
    for _, r in summary.iterrows():
        for e in range(1, epochs + 1):
            row = {c: r[c] for c in run_cols[:3] if c in r}
            row["epoch"] = e
            row.update({c: r[c] for c in run_cols[3:] if c in r})
            for key in SUMMARY_METRICS:
                for part in ("mean", "ci_low", "ci_high"):
                    row[f"{key}_{part}"] = r.get(f"{key}_{e}_{part}", nan)
            for key in ("acc", "val_acc"):
                row[f"reported_{key}"] = r.get(f"reported_{key}_{e}", nan)
            final = e == 3  # the demo reported its losses after its third and last epoch
            row["reported_loss"] = r.get("reported_loss", nan) if final else nan
            row["reported_val_loss"] = r.get("reported_val_loss", nan) if final else nan
            rows.append(row)
    return pd.DataFrame(rows)


def _fmt(x, digits=4):
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _fmt_ci(r, key: str) -> str:
    """``mean`` or ``mean [low, high]`` (95% t interval over seeds) of column family ``key``."""
    mean, lo, hi = r[f"{key}_mean"], r[f"{key}_ci_low"], r[f"{key}_ci_high"]
    if lo != lo or hi != hi:
        return _fmt(mean)
    return f"{_fmt(mean, 3)} [{_fmt(lo, 3)}, {_fmt(hi, 3)}]"


def summary_markdown(summary, epochs: int) -> str:
    """A markdown table: per run and epoch, measured train acc / val acc (mean over seeds, 95% t interval) and the
    lecture demo's reported numbers."""
    head = ["run", "lr", "seeds", "status"]
    for e in range(1, epochs + 1):
        head += [f"ep{e} acc / val (measured)", f"ep{e} acc / val (demo, reported)"]
    head += ["final loss / val (measured)", "final loss / val (demo, reported)", "train acc, eval-mode BN", "seconds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in summary.iterrows():
        run = r.get("demo_run")
        name = r["preset"] + (f" (demo run {int(run)})" if run is not None and run == run else "")
        status = r["status"] + (f" ({int(r['diverged_seeds'])} diverged)" if r.get("diverged_seeds", 0) else "")
        cells = [name, f"{r['lr']:g}", str(int(r["n_seeds"])), status]
        for e in range(1, epochs + 1):
            cells.append(f"{_fmt_ci(r, f'acc_{e}')} / {_fmt_ci(r, f'val_acc_{e}')}")
            reported = r[f"reported_acc_{e}"]
            cells.append("-" if reported != reported else f"{_fmt(reported)} / {_fmt(r[f'reported_val_acc_{e}'])}")
        cells.append(f"{_fmt_ci(r, 'loss')} / {_fmt_ci(r, 'val_loss')}")
        cells.append("-" if r["reported_loss"] != r["reported_loss"]
                     else f"{_fmt(r['reported_loss'])} / {_fmt(r['reported_val_loss'])}")
        last = r["epochs_done"]
        cells.append(_fmt_ci(r, f"train_eval_acc_{last}") if last else "-")
        cells.append(f"{r['seconds']:.1f}")
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def check_runs(presets=None, lrs=(1e-3,)) -> tuple[list[str], list[float]]:
    """The preset names (default all) and learning rates of a reproduction, checked before any data loads.

    :class:`UserError` for an unknown preset, none at all, a learning rate that
    is not finite and > 0, and a preset or learning rate given twice (it would
    be trained and listed twice).
    """
    names = list_presets() if presets is None else [get_preset(p).name for p in presets]
    if not names:
        raise UserError("no presets to run")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UserError(f"the presets list {twice[0]!r} twice; give each preset once")
    lrs = [float(lr) for lr in lrs]
    if not lrs or any(not (math.isfinite(lr) and lr > 0) for lr in lrs):
        raise UserError(f"learning rates must be > 0, got {lrs}")
    twice_lr = sorted({lr for lr in lrs if lrs.count(lr) > 1})
    if twice_lr:
        raise UserError(f"the learning rates list {twice_lr[0]:g} twice; give each once")
    return names, lrs


def reproduce(
    presets=None,
    lrs=(1e-3,),
    dataset="auto",
    out_dir: str | os.PathLike = "results/reproduce",
    resume: bool = True,
    epochs: int = 3,
    seed: int = 0,
    *,
    seeds: int = 1,
    data_dir=None,
    device: str = "cpu",
    threads: int | None = None,
    probe_size: int = 512,
    progress: bool = False,
    callback: Callable[[dict], None] | None = None,
    notify: Callable[[str], None] | None = None,
):
    """Run every preset at every learning rate, ``seeds`` seeds each, into ``out_dir``; return the summary DataFrame.

    ``presets``: names (default all, :func:`list_presets`); ``lrs``: learning
    rates (the demo's 1e-3 by default); ``dataset``: a name for
    :func:`propagate.data.load_dataset` or a loaded Dataset; ``seeds``: seeds
    ``seed .. seed + seeds - 1``, trained together as one ensemble per run.
    Each run writes ``out_dir/<preset>_lr<lr>/`` (see :func:`train`);
    ``summary.csv`` (:func:`long_summary`: per run and epoch, each metric's mean
    over seeds with its 95% Student t interval, ``<metric>_mean``/``_ci_low``/
    ``_ci_high``, ``n_seeds``, beside the demo's reported numbers) and
    ``summary.md`` (the same as a table) are
    rewritten after every run, so an interrupted reproduction keeps every
    finished epoch and resumes where it stopped (``resume``).
    """
    import pandas as pd

    names, lrs = check_runs(presets, lrs)
    base = TrainOptions(epochs=epochs, seed=seed, seeds=seeds, device=device, threads=threads, probe_size=probe_size)
    if isinstance(dataset, str):
        from propagate.data import load_dataset

        # a folder the user names is read, never downloaded into (propagate data fetch does that)
        dataset = load_dataset(dataset, data_dir, download=data_dir is None, progress=progress, notify=notify)
    check_memory(get_preset(names[0]).spec(), base, seeds, dataset.n_train, dataset.n_test, resolve_device(device))
    out = Path(out_dir)
    folder_lock = _claim_reproduce_dir(out, dataset, resume)  # noqa: F841 - held until the last run is written
    rows = []
    summary = pd.DataFrame()
    for lr in lrs:
        for pname in names:
            preset = get_preset(pname)
            rname = run_name(pname, lr)
            res = train(preset.spec(), base.with_(lr=lr), dataset, progress=progress, callback=callback,
                        run_dir=out / rname, resume=resume, name=rname, preset=preset)
            rows.append(summary_row(preset, lr, res, epochs))
            summary = pd.DataFrame(rows)
            meta = run_metadata(seed=seed, kind="reproduce", presets=names, lrs=lrs, epochs=epochs, seeds=base.seed_list,
                                dataset={"name": dataset.name, "n_train": dataset.n_train, "n_test": dataset.n_test})
            write_table(long_summary(summary, epochs), out / "summary.csv", meta)
            atomic_write_text(out / "summary.md", _summary_header(dataset, epochs, base.seed_list) + summary_markdown(summary, epochs))
    return summary


def _summary_header(dataset, epochs: int, seeds: list[int]) -> str:
    which = f"seed {seeds[0]}" if len(seeds) == 1 else f"{len(seeds)} seeds ({seeds[0]}..{seeds[-1]})"
    return (
        f"# Reproduction of the lecture demo's MNIST runs\n\n"
        f"Dataset: {dataset.name} ({dataset.n_train} train / {dataset.n_test} test images); {epochs} epochs; "
        f"{which}. The demo trained on the full MNIST (60,000 / 10,000), one run each at lr 1e-3.\n"
        f"`acc` is Keras' running training accuracy (train-mode BN), `val` the test accuracy "
        f"(eval-mode BN); 'train acc, eval-mode BN' is the training accuracy after the last epoch in eval mode. "
        f"With several seeds a cell is the mean over seeds and its 95% Student t interval [low, high].\n\n"
    )
