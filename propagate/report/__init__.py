"""``propagate report``: one command from derivation to training, as a readable report.

:func:`build_report` computes every section's data (SELU solve, mean-field
theory, simulation, phase diagram, training), writes the tables as CSV, draws
the figures (:mod:`propagate.report.figures`, PNG and SVG) and writes a
``README.md`` that reads as a short paper, with the findings generated from
the measured numbers (:mod:`propagate.report.findings`).

The report folder is built in a temporary sibling and swapped into place at
the end, so an interrupted report leaves the previous one intact. The heavy
parts (training ensembles, the self-normalization runs, the trainability and
scaling grids) are points of the shared runner (:mod:`propagate.report.tasks`),
in process or on Dask (``workers``, ``scheduler``, ``client``: all parts
submitted at once, the page assembled as they arrive), kept in a separate,
resumable work folder (``work_dir``), so an interrupted report does not lose
finished points (nor, in process or on a local cluster, finished epochs).
"""

from __future__ import annotations

import importlib
import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

from propagate.cluster import cores
from propagate.errors import UserError
from propagate.io import (
    FOLDER_MARKER,
    atomic_directory,
    atomic_write_json,
    atomic_write_text,
    check_output_dir,
    check_replaceable_dir,
    run_metadata,
    write_json,
    write_table,
)
from propagate.limits import format_bytes, memory_limit, require_memory, simulation_bytes
from propagate.runfolder import FolderBusy, IdentityMismatch, check_folder
from propagate.report.tasks import PRIORITY, ReportRunner, run_result, train_point
from propagate.runfolder import claim
from propagate.runner import PointStore
from propagate.selu import derivation_markdown as selu_derivation_markdown
from propagate.torch_settings import torch_settings
from propagate.trainability import TrainabilityOptions, trainability

__all__ = ["ReportOptions", "build_report", "check_report_folders", "work_dir_of", "SECTIONS"]

#: The sections after the lecture demo's story, in page order: name -> module ``propagate.report.section_<name>``,
#: each with ``section(out_dir, ctx, progress) -> markdown`` (it writes its own data and figures).
SECTIONS = ("residual", "spectrum", "selfnorm", "trainability", "scaling", "sweep")
#: Presets and learning rates of the full report's trainability map (``propagate trainability`` in the work folder).
TRAINABILITY_PRESETS = ("selu-lecun-normal", "selu-bn-lecun-uniform", "relu", "relu-bn")
TRAINABILITY_LRS = (1e-5, 10**-4.5, 1e-4, 10**-3.5, 1e-3, 10**-2.5, 1e-2)


@dataclass(frozen=True)
class ReportOptions:
    """What goes into a report.

    ``quick`` is a reduced version (a few minutes on 2 cores): fewer inputs
    and networks in the simulation, a coarser phase grid, 1 epoch on a
    1,024-image subset of the training split, one learning rate, 2 seeds, and
    each extra section's own quick sizes.

    ``trainability_subset``: the trainability map of a full report (4 presets x 7
    learning rates x 3 seeds, plus refinement) trains on the first N training
    images (default 10,000; ``None``: all); the section says which.

    ``seeds`` is the number of independent networks trained per configuration
    (a seed ensemble trained as one batched model, together with the presets of
    the same architecture that differ only in initializer; every training number
    is a mean with its 95% Student t interval over these seeds); ``sim_seeds``
    the number of random networks simulated per configuration. ``sections``:
    which of :data:`SECTIONS` to add after the lecture demo's story.

    ``threads``: torch CPU threads of every training run and of this process's
    own computations. ``None``: in process, training uses one per core (and
    the rest what torch has); on Dask (``build_report(workers=...)``) every
    point and this process use 1. The numbers depend on it (the order of float
    sums), so a build in process with ``threads=1`` equals one on any cluster,
    bit for bit.
    """

    dataset: str = "mnist-5k"
    quick: bool = False
    lrs: tuple[float, ...] = (1e-3, 1e-4)
    epochs: int = 3
    presets: tuple[str, ...] | None = None
    sim_samples: int = 1000
    sim_seeds: int = 4
    seeds: int = 5
    sections: tuple[str, ...] = SECTIONS
    seed: int = 0
    data_dir: str | None = None
    work_dir: str | None = None
    device: str = "cpu"
    train_subset: int | None = None
    trainability_subset: int | None = 10_000
    machine: str = ""
    threads: int | None = None

    def effective(self) -> "ReportOptions":
        """The options actually used (``quick`` shrinks the sizes)."""
        if not self.quick:
            return self
        return replace(self, lrs=self.lrs[:1], epochs=1, sim_samples=min(self.sim_samples, 256),
                       sim_seeds=min(self.sim_seeds, 2), seeds=min(self.seeds, 2),
                       train_subset=self.train_subset or 1024)


def _subset(dataset, n):
    """The first ``n`` training images (the splits are class-interleaved, so balanced)."""
    if n is None or n >= len(dataset.y_train):
        return dataset
    return replace(dataset, x_train=dataset.x_train[:n], y_train=dataset.y_train[:n])


#: What a report writes into its folder: these files at the top, and these folders holding only files that end so
#: (tables with their ``.meta.json``, figures as PNG and SVG). Everything else in a report folder is the user's.
_REPORT_FILES = frozenset({"README.md", "report.json", "selu_derivation.md", FOLDER_MARKER})
_REPORT_DIRS = {"data": (".csv", ".json", ".parquet"), "figures": (".png", ".svg")}


def _not_report_written(path: Path) -> list[str]:
    """The entries of the folder ``path`` (relative paths, sorted) that no report writes: a link, a nested folder,
    a file of another name or kind. A report folder holding any of them is never replaced (it would delete them)."""
    foreign = []
    for entry in sorted(path.iterdir(), key=lambda p: p.name):
        if entry.is_symlink():
            foreign.append(entry.name)
        elif entry.name in _REPORT_DIRS and entry.is_dir():
            suffixes = _REPORT_DIRS[entry.name]
            foreign += [f"{entry.name}/{sub.name}" for sub in sorted(entry.iterdir(), key=lambda p: p.name)
                        if sub.is_symlink() or not sub.is_file() or not sub.name.endswith(suffixes)]
        elif not (entry.name in _REPORT_FILES and entry.is_file()):
            foreign.append(entry.name)
    return foreign


def _refuse_foreign_entries(path: Path) -> None:
    """Raise :class:`UserError` naming ``path`` and its first entries a report does not write, if it has any."""
    try:
        foreign = _not_report_written(path)
    except OSError as exc:
        raise UserError(f"--out {str(path)!r}: cannot list it: {exc.strerror or exc}") from None
    if foreign:
        shown = ", ".join(map(repr, foreign[:3])) + (", ..." if len(foreign) > 3 else "")
        raise UserError(f"--out {str(path)!r} is an earlier report that also holds {len(foreign)} "
                        f"entr{'ies' if len(foreign) > 1 else 'y'} a report does not write ({shown}); a rebuild "
                        f"replaces the folder as a whole, so it is left untouched: move them away or choose "
                        f"another --out")


def _is_report_folder(path: Path) -> bool:
    """A report folder written before :data:`propagate.io.FOLDER_MARKER` existed: README.md and report.json.

    Such a folder is adopted (replaced as a whole by the rebuild) only if everything in it is something a
    report writes (:func:`_not_report_written`); one holding anything else raises :class:`UserError` naming
    it, so nothing of the user's is deleted. :func:`propagate.io.atomic_directory` asks this before any work
    and again just before the swap.
    """
    try:
        data = json.loads((path / "report.json").read_text())
    except (OSError, ValueError):
        return False
    if not ((path / "README.md").is_file() and isinstance(data, dict) and {"facts", "timings_s"} <= set(data)):
        return False
    _refuse_foreign_entries(path)
    return True


def _lists_its_files(path: Path) -> bool:
    """The folder's marker lists the files built (then :func:`propagate.io.check_replaceable_dir` refuses any other)."""
    try:
        data = json.loads((path / FOLDER_MARKER).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and isinstance(data.get("files"), list)


def _check_out_folder(out_dir: str | Path) -> Path:
    """Refuse an ``--out`` that a report may not replace as a whole; return it (absolute).

    New, empty, a report with a marker listing its files (any other file is refused by
    :func:`propagate.io.check_replaceable_dir`), or an older report (no marker, or a marker without
    the list) holding only what a report writes (:func:`_is_report_folder`).
    """
    path = check_replaceable_dir(out_dir, "--out", adopt=_is_report_folder)
    if path.is_dir() and (path / FOLDER_MARKER).is_file() and not _lists_its_files(path):
        _refuse_foreign_entries(path)  # a marker from before the list: nothing else tells the user's files apart
    return path


def work_dir_of(out_dir: str | Path, options: ReportOptions) -> Path:
    """The resumable training folder: ``options.work_dir``, else the hidden sibling ``.<name>.work`` of the report."""
    if options.work_dir:
        return Path(options.work_dir)
    out = Path(os.path.abspath(out_dir))
    return out.parent / f".{out.name}.work"


def check_report_folders(out_dir: str | Path, options: ReportOptions | None = None) -> None:
    """Refuse, before any work, a report folder that is not ours to replace or a work folder we cannot write.

    ``out_dir`` may be new, empty, or a folder a previous report made; a file,
    a link, a folder of the user's, or a previous report that also holds
    anything a report does not write is left alone (:class:`UserError`).
    """
    _check_out_folder(out_dir)
    _check_simulation_size((options or ReportOptions()).effective())
    _check_training_size((options or ReportOptions()).effective())
    work = work_dir_of(out_dir, options or ReportOptions())
    check_output_dir(work, "--work-dir")
    check_folder(work, option="--work-dir")  # not in use by another process, and a run folder if not empty


def _check_simulation_size(opts: ReportOptions) -> None:
    """Refuse --inputs/--networks whose simulation of the lecture demo's network would not fit in memory."""
    widths = [784, 512] + [256] * 50  # the lecture demo's network, simulated by compute.simulate_configs
    require_memory(simulation_bytes(widths, opts.sim_samples, opts.sim_seeds),
                   f"simulating {opts.sim_seeds} networks x {opts.sim_samples} inputs", "use fewer --networks or --inputs")


def _check_training_size(opts: ReportOptions) -> None:
    """Refuse a --seeds whose ensemble of the lecture demo's network would not fit in memory (before loading data)."""
    from propagate.presets import get_preset
    from propagate.train import TrainOptions, estimate_memory

    limit = memory_limit()
    spec = get_preset("relu").spec()  # every preset has the lecture demo's widths
    need = estimate_memory(spec, TrainOptions(), opts.seeds)
    if limit is not None and need > limit:
        raise UserError(f"training {opts.seeds} seeds of the lecture demo's network needs about {format_bytes(need)} of "
                        f"memory, more than this machine allows ({format_bytes(limit)}); use fewer --seeds")


@dataclass
class _Run:
    """What every part of a report shares: options, metadata, where to write, and the step timer."""

    opts: ReportOptions
    meta: dict
    folder: Path
    progress: bool
    say: Callable[[str], None]
    runner: ReportRunner = field(default_factory=ReportRunner)
    t_start: float = field(default_factory=time.perf_counter)
    timings: dict = field(default_factory=dict)

    @property
    def figures(self) -> Path:
        return self.folder / "figures"

    @property
    def data(self) -> Path:
        return self.folder / "data"

    def step(self, name: str) -> None:
        self.timings[name] = time.perf_counter() - self.t_start - sum(self.timings.values())
        self.say(f"report: {name} done ({self.timings[name]:.1f}s)")

    def table(self, df, name: str) -> None:
        write_table(df, self.data / name, self.meta)

    def figure(self, name: str, plot: Callable, *args, **kwargs) -> None:
        """``plot(*args, **kwargs)``'s figure as ``figures/name`` (drawn where the runner draws, :meth:`ReportRunner.figure`)."""
        self.runner.figure(self.figures / name, plot, *args, **kwargs)


def _selu_data():
    """The SELU section's numbers: ``(solved constants, moment-map trajectories)`` (one task of the runner)."""
    from propagate.report.compute import selu_summary, selu_trajectories

    return selu_summary(), selu_trajectories()


def _phase_data(quick: bool):
    """The phase diagrams' numbers: ``(grids, critical lines, initializers' marks)`` (one task of the runner)."""
    import numpy as np

    from propagate.report.compute import init_marks, phase_grid

    grids, lines = {}, {}
    sw = np.linspace(0.1, 4.0, 14 if quick else 40)
    sb = np.linspace(0.0, 0.5, 8 if quick else 26)
    for act in ("tanh", "selu"):
        grids[act], lines[act] = phase_grid(act, sw, sb)
    return grids, lines, init_marks(256, 256)


def _start_tasks(run: _Run) -> None:
    """Start the page's own light computations (SELU, phase diagram) as tasks of the runner (on Dask they run on
    the workers from now on and this process only waits for them; in process, when the page asks)."""
    run.runner.task("selu", _selu_data)
    run.runner.task("phase", _phase_data, run.opts.quick)


def _selu_part(run: _Run) -> dict:
    """1. SELU: the solved constants, moment-map trajectories and the derivation."""
    from propagate.report.figures import plot_selu_flow

    selu, traj = run.runner.task("selu", _selu_data).result()
    run.table(traj, "selu_trajectories.csv")
    write_json(selu, run.data / "selu_solution.json", run.meta)
    atomic_write_text(run.folder / "selu_derivation.md", selu_derivation_markdown())
    run.figure("selu_flow.png", plot_selu_flow, traj, box=(-0.1, 0.1, 0.8, 1.5))
    run.step("SELU fixed point")
    return selu


def _start_simulation(run: _Run, x_train):
    """The simulation of the lecture demo's network as one part of the runner (its points first on Dask)."""
    from propagate.report.compute import simulate_configs

    opts = run.opts
    n_sim = min(opts.sim_samples, len(x_train))
    return run.runner.part("simulation", simulate_configs, x_train[:n_sim], samples=n_sim, seeds=opts.sim_seeds,
                           seed=opts.seed, progress=run.progress, runner=run.runner)


def _simulation_part(run: _Run, dataset, x_train):
    """2-3. Simulation and theory of the lecture demo's network on real inputs; returns (sims, inputs description)."""
    from propagate.report.figures import plot_grad_norms, plot_layer_moments

    n_sim = min(run.opts.sim_samples, len(x_train))
    sims = _start_simulation(run, x_train).result()
    run.table(sims.sim, "simulation_layers.csv")
    run.table(sims.theory, "theory_layers.csv")
    inputs_desc = f"{n_sim} {dataset.name} training images ([0, 1] pixels)"
    run.figure("layer_moments.png", plot_layer_moments, sims.sim, sims.theory)
    run.figure("grad_norms.png", plot_grad_norms, sims.sim, sims.theory)
    run.step("simulation")
    return sims, inputs_desc


def _phase_part(run: _Run) -> dict:
    """4. Phase diagrams of tanh and SELU with their critical lines and the initializers' marks."""
    from propagate.report.figures import plot_phase_diagram

    grids, lines, marks = run.runner.task("phase", _phase_data, run.opts.quick).result()
    for act in ("tanh", "selu"):
        run.table(grids[act], f"phase_{act}.csv")
        run.table(lines[act], f"critical_line_{act}.csv")
    run.table(marks, "init_sigma_w2.csv")
    run.figure("phase_diagram.png", plot_phase_diagram, grids, lines, marks)
    run.step("phase diagram")
    return lines


def _work_dir_refusal(exc) -> Exception:
    """The report has no --no-resume: name the option it has."""
    if isinstance(exc, FolderBusy):
        return UserError(f"{exc.folder} is in use by {exc.holder}; wait for it to finish or use another --work-dir")
    return UserError(f"{exc.detail}; use another --work-dir, or delete {exc.folder} to train again")


def _claim_work_dir(work: Path, train_ds):
    """Lock the work folder for the build and refuse, before any computation, one holding runs on other data."""
    from propagate.reproduce import reproduce_identity

    try:
        return claim(work, reproduce_identity(train_ds), option="--work-dir")
    except (IdentityMismatch, FolderBusy) as exc:
        raise _work_dir_refusal(exc) from None


def _max_group(opts: ReportOptions, train_ds, runner: ReportRunner) -> int | None:
    """The most presets one batched model may hold: their ensembles together within this machine's memory
    (shared by a local cluster's workers); ``None``: no limit known."""
    from propagate.presets import get_preset
    from propagate.train import TrainOptions, estimate_memory

    limit = memory_limit()
    if limit is None or not runner.local:
        return None
    if runner.on_dask:
        limit //= runner.local_workers or cores()
    spec, topts = get_preset("relu").spec(), TrainOptions(seeds=opts.seeds)  # every preset has the lecture demo's widths
    fixed = estimate_memory(spec, topts, 0, train_ds.n_train, train_ds.n_test)
    per_preset = estimate_memory(spec, topts, opts.seeds, train_ds.n_train, train_ds.n_test) - fixed
    return max(1, (limit - fixed) // per_preset)


def _training_plan(run: _Run, train_ds, work: Path) -> list[tuple[list[str], float, object]]:
    """``(presets, lr, point)`` per training ensemble: presets of one architecture at one lr share one model."""
    from propagate.data import dataset_identity
    from propagate.presets import get_preset, list_presets
    from propagate.report.compute import preset_groups
    from propagate.reproduce import run_name
    from propagate.train import TrainOptions

    opts, runner = run.opts, run.runner
    names = [get_preset(p).name for p in opts.presets] if opts.presets else list_presets()
    base = TrainOptions(epochs=opts.epochs, seed=opts.seed, seeds=opts.seeds, device=opts.device,
                        threads=runner.threads)
    data_id = dataset_identity(train_ds)
    plan = []
    for lr in opts.lrs:
        for group in preset_groups(names, _max_group(opts, train_ds, runner)):
            plan.append((group, lr, train_point(
                [get_preset(p).spec() for p in group], base.with_(lr=lr), base.seed_list, train_ds, data_id=data_id,
                run_dirs=[work / run_name(p, lr) for p in group] if runner.local else None,
                names=[run_name(p, lr) for p in group], presets=group, progress=run.progress and not runner.on_dask,
                what=f"{' + '.join(group)} at lr {lr:g}")))
    return plan


def _start_training(run: _Run, train_ds, work: Path):
    """The training ensembles as one part of the runner: ``(plan, job)``, the job's result the points' values."""
    plan = _training_plan(run, train_ds, work)
    order = sorted(plan, key=lambda t: -len(t[0]))  # the biggest models first: none is left for the end
    job = run.runner.part("training", run.runner.run, [point for _, _, point in order], store=PointStore(work / "points"),
                          label="training", priority=PRIORITY["training"], say=run.say)
    return plan, job


def _training_runs(run: _Run, plan, values) -> tuple[object, list]:
    """The summary table (one row per preset and lr, in the order of ``reproduce``) and ``(preset, lr, TrainResult)``.

    A run trained in one model with other presets gets its share of the
    model's time as ``seconds`` (the model's time over the presets in it), so
    the summary's seconds add up to the time spent.
    """
    import pandas as pd

    from propagate.presets import get_preset
    from propagate.reproduce import summary_row

    results, shared = {}, {}
    for group, lr, point in plan:
        for name, data in zip(group, values[point.key]):
            results[(name, lr)] = run_result(get_preset(name).spec(), point.args[1], data)
            shared[(name, lr)] = len(group)
    names = list(dict.fromkeys(name for group, _, _ in plan for name in group))
    runs = [(name, lr, results[(name, lr)]) for lr in run.opts.lrs for name in names]
    rows = []
    for name, lr, res in runs:
        row = summary_row(get_preset(name), lr, res, run.opts.epochs)
        row["seconds"] /= shared[(name, lr)]
        rows.append(row)
    return pd.DataFrame(rows), runs


def _training_part(run: _Run, training):
    """5. Training: every preset at every learning rate (a seed ensemble each), curves and per-layer drift."""
    from propagate.report.compute import DEMO_LR, drift_runs, reported_table, training_tables
    from propagate.report.figures_training import plot_layer_drift_bands, plot_training_bands
    from propagate.reproduce import long_summary

    opts = run.opts
    plan, job = training
    summary, runs = _training_runs(run, plan, job.result())
    history, layers = training_tables(runs)
    run.table(long_summary(summary), "training_summary.csv")  # long: one row per (preset, lr, epoch)
    run.table(history, "training_history.csv")
    run.table(layers, "training_layers.csv")
    reported = reported_table(summary)
    for lr in opts.lrs:
        h = history[history["lr"] == lr]
        squares = "; squares: the lecture demo's numbers, measured at this lr" if lr == DEMO_LR else ""
        run.figure(f"training_curves_lr{lr:g}.png", plot_training_bands, h, reported,
                   title=f"Training the network of depth 51, RMSprop lr {lr:g}: mean of {opts.seeds} seeds, "
                         f"band 95% t interval (dashed: with batch normalization{squares})")
    drift = drift_runs(summary, opts.lrs)
    run.figure("training_layer_drift.png", plot_layer_drift_bands, layers, drift)
    run.step("training")
    return summary, history, layers, drift


def _trainability_map(run: _Run, dataset, work: Path) -> Path:
    """The full report's trainability map, trained (resumably) in the work folder on the runner; its folder."""
    from propagate.presets import get_preset

    from propagate.report.section_trainability import SETTINGS_FULL, configs_with_warmup

    opts, runner = run.opts, run.runner
    configs = configs_with_warmup([(name, get_preset(name).spec()) for name in TRAINABILITY_PRESETS],
                                  SETTINGS_FULL["warmup_presets"], SETTINGS_FULL["warmup"])
    topts = TrainabilityOptions(seeds=tuple(opts.seed + k for k in range(3)), epochs=opts.epochs, refine=2,
                                device=opts.device, threads=runner.threads)
    folder = work / "trainability"
    try:
        trainability(configs, TRAINABILITY_LRS, _subset(dataset, opts.trainability_subset), topts, out_dir=folder,
                     progress=runner.guard(run.say), **runner.where())
    except (IdentityMismatch, FolderBusy) as exc:
        raise _work_dir_refusal(exc) from None
    return folder


def _trainability_dir(run: _Run, dataset, work: Path):
    """Full reports: the job of the trainability map (:func:`_trainability_map`, one part of the runner), its
    ``result()`` the map's folder; quick: None (the section's own grid)."""
    if run.opts.quick:
        return None
    return run.runner.part("trainability map", _trainability_map, run, dataset, work)


def _section_context(run: _Run, dataset, train_ds, work: Path) -> dict:
    """What every extra section reads: options, data, the work folder (resumable points) and the runner."""
    opts = run.opts
    return {"quick": opts.quick, "seed": opts.seed, "dataset": dataset.name, "dataset_obj": train_ds,
            "train_seeds": opts.seeds, "work_dir": str(work), "runner": run.runner}


def _start_sections(run: _Run, ctx: dict, train_ds, work: Path) -> None:
    """Start every extra section's heavy part (on Dask they run from now on; in process, when the section asks)."""
    for name in run.opts.sections:
        module = importlib.import_module(f"propagate.report.section_{name}")
        if name == "trainability":
            module.start_dynamics(ctx)
        if name == "trainability" and not run.opts.quick:
            _trainability_dir(run, train_ds, work)
        elif hasattr(module, "start"):
            module.start(ctx, progress=run.say)


def _sections_part(run: _Run, ctx: dict, train_ds, work: Path) -> str:
    """7-: the extra sections (:data:`SECTIONS`), each writing its own data and figures; their markdown, numbered."""
    parts = []
    for number, name in enumerate(run.opts.sections, start=7):
        module = importlib.import_module(f"propagate.report.section_{name}")
        if name == "trainability":
            ctx = {**ctx, "trainability_dir": _trainability_dir(run, train_ds, work)}
        text = module.section(run.folder, ctx, progress=run.say).strip()
        parts.append(_number_heading(text, number))
        run.step(name)
    return "\n\n".join(parts)


def _number_heading(text: str, number: int) -> str:
    """A section's first ``## Title`` becomes ``## <number>. Title`` (the page numbers its sections)."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("## "):
            lines[i] = f"## {number}. {line[3:]}"
            break
    return "\n".join(lines)


def _page_part(run: _Run, dataset, selu, sims, inputs_desc, lines, train_ds, training, sections_md: str = "") -> None:
    """6. Findings from the numbers, then README.md and report.json."""
    from propagate.report.findings import collect_facts
    from propagate.report.page import render

    summary, history, layers, drift = training
    facts = collect_facts(selu, sims, summary, history, layers, lines, run.opts)
    run.runner.write_figures()  # the figures drawn on workers (on Dask), once all are drawn
    elapsed = time.perf_counter() - run.t_start
    where = run.runner.describe()
    opts = run.opts if not run.runner.on_dask else replace(
        run.opts, machine=f"{run.opts.machine or 'this machine'}, its heavy parts {where}")
    text = render(opts, dataset, facts, summary, run.timings, elapsed, inputs_desc, train_ds, drift, sections_md)
    atomic_write_text(run.folder / "README.md", text)
    atomic_write_json(run.folder / "report.json", {"meta": run.meta, "timings_s": run.timings, "elapsed_s": elapsed,
                                                   "runner": where, "facts": facts})


def build_report(out_dir: str | Path, options: ReportOptions | None = None, *, progress: bool = False,
                 notify: Callable[[str], None] | None = None, workers: int | None = None,
                 scheduler: str | None = None, client=None) -> Path:
    """Compute, draw and write the whole report into ``out_dir``; return its path.

    ``notify(message)`` receives one line per finished step (the CLI prints it
    on stderr). See :class:`ReportOptions` for what is computed. ``out_dir``
    must be new, empty or a previous report (:func:`check_report_folders`,
    checked before any work); it is replaced as a whole at the end.

    Where the heavy parts run (:class:`propagate.report.tasks.ReportRunner`):
    in this process, one after another (the default), or on Dask when
    ``workers`` (a local cluster of that many single-threaded processes),
    ``scheduler`` (the address of a running cluster) or ``client`` is given:
    then every training ensemble, self-normalization run and grid point is
    submitted at the start and the page is assembled as they arrive. Finished
    points are kept in the work folder, so a stopped build resumes. At the same
    ``options.threads`` the report's numbers do not depend on where they ran.
    """
    import matplotlib

    matplotlib.use("Agg")  # a report is files; never needs (or opens) a display
    from propagate.data import load_dataset

    opts = (options or ReportOptions()).effective()
    runner = ReportRunner(workers, scheduler, client, threads=opts.threads)  # checks where, before any work
    check_report_folders(out_dir, opts)
    work = work_dir_of(out_dir, opts)
    say = notify or (lambda m: None)
    run_meta = run_metadata(seed=opts.seed, options=asdict(opts))
    t_start = time.perf_counter()
    # a folder the user names is read, never downloaded into (it is theirs; `propagate data fetch` fills it)
    dataset = load_dataset(opts.dataset, opts.data_dir, download=opts.data_dir is None, progress=progress,
                           notify=say)
    train_ds = _subset(dataset, opts.train_subset)
    x_train, _ = dataset.arrays("train")

    with _claim_work_dir(work, train_ds), runner, torch_settings(threads=runner.threads), \
            atomic_directory(out_dir, adopt=_is_report_folder) as tmp:
        run = _Run(opts, run_meta, tmp, progress, say, runner, t_start=t_start)
        ctx = _section_context(run, dataset, train_ds, work)
        _start_simulation(run, x_train)  # on Dask every heavy part starts here
        _start_tasks(run)
        training = _start_training(run, train_ds, work)
        _start_sections(run, ctx, train_ds, work)
        selu = _selu_part(run)
        sims, inputs_desc = _simulation_part(run, dataset, x_train)
        lines = _phase_part(run)
        training = _training_part(run, training)
        sections_md = _sections_part(run, ctx, train_ds, work)
        _page_part(run, dataset, selu, sims, inputs_desc, lines, train_ds, training, sections_md)
        _check_out_folder(out_dir)  # again before the swap: the user may have put files there meanwhile
    return Path(out_dir)
