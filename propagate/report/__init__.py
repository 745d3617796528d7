"""``propagate report``: one command from derivation to training, as a readable report.

:func:`build_report` computes every section's data (SELU solve, mean-field
theory, simulation, phase diagram, training), writes the tables as CSV, draws
the figures (:mod:`propagate.report.figures`, PNG and SVG) and writes a
``README.md`` that reads as a short paper, with the findings generated from
the measured numbers (:mod:`propagate.report.findings`).

The report folder is built in a temporary sibling and swapped into place at
the end, so an interrupted report leaves the previous one intact. Training runs
go to a separate, resumable work folder (``work_dir``), so an interrupted
report does not lose finished epochs either.
"""

from __future__ import annotations

import importlib
import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

from propagate.errors import UserError
from propagate.io import (
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
from propagate.selu import derivation_markdown as selu_derivation_markdown
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
    (a seed ensemble trained as one batched model; every training number is a
    mean with its 95% Student t interval over these seeds); ``sim_seeds`` the
    number of random networks simulated per configuration. ``sections``: which
    of :data:`SECTIONS` to add after the lecture demo's story.
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


def _is_report_folder(path: Path) -> bool:
    """A report folder written before :data:`propagate.io.FOLDER_MARKER` existed: README.md and report.json."""
    try:
        data = json.loads((path / "report.json").read_text())
    except (OSError, ValueError):
        return False
    return (path / "README.md").is_file() and isinstance(data, dict) and {"facts", "timings_s"} <= set(data)


def work_dir_of(out_dir: str | Path, options: ReportOptions) -> Path:
    """The resumable training folder: ``options.work_dir``, else the hidden sibling ``.<name>.work`` of the report."""
    if options.work_dir:
        return Path(options.work_dir)
    out = Path(os.path.abspath(out_dir))
    return out.parent / f".{out.name}.work"


def check_report_folders(out_dir: str | Path, options: ReportOptions | None = None) -> None:
    """Refuse, before any work, a report folder that is not ours to replace or a work folder we cannot write.

    ``out_dir`` may be new, empty, or a folder a previous report made; a file,
    a link or a folder of the user's is left alone (:class:`UserError`).
    """
    check_replaceable_dir(out_dir, "--out", adopt=_is_report_folder)
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

    def figure(self, fig, name: str) -> None:
        from propagate.report.style import save_figure

        save_figure(fig, self.figures / name)


def _selu_part(run: _Run) -> dict:
    """1. SELU: the solved constants, moment-map trajectories and the derivation."""
    from propagate.report.compute import selu_summary, selu_trajectories
    from propagate.report.figures import plot_selu_flow

    selu = selu_summary()
    traj = selu_trajectories()
    run.table(traj, "selu_trajectories.csv")
    write_json(selu, run.data / "selu_solution.json", run.meta)
    atomic_write_text(run.folder / "selu_derivation.md", selu_derivation_markdown())
    run.figure(plot_selu_flow(traj, box=(-0.1, 0.1, 0.8, 1.5)), "selu_flow.png")
    run.step("SELU fixed point")
    return selu


def _simulation_part(run: _Run, dataset, x_train):
    """2-3. Simulation and theory of the lecture demo's network on real inputs; returns (sims, inputs description)."""
    from propagate.report.compute import simulate_configs
    from propagate.report.figures import plot_grad_norms, plot_layer_moments

    opts = run.opts
    n_sim = min(opts.sim_samples, len(x_train))
    sims = simulate_configs(x_train[:n_sim], samples=n_sim, seeds=opts.sim_seeds, seed=opts.seed,
                            progress=run.progress)
    run.table(sims.sim, "simulation_layers.csv")
    run.table(sims.theory, "theory_layers.csv")
    inputs_desc = f"{n_sim} {dataset.name} training images ([0, 1] pixels)"
    run.figure(plot_layer_moments(sims.sim, sims.theory), "layer_moments.png")
    run.figure(plot_grad_norms(sims.sim, sims.theory), "grad_norms.png")
    run.step("simulation")
    return sims, inputs_desc


def _phase_part(run: _Run) -> dict:
    """4. Phase diagrams of tanh and SELU with their critical lines and the initializers' marks."""
    import numpy as np

    from propagate.report.compute import init_marks, phase_grid
    from propagate.report.figures import plot_phase_diagram

    grids, lines = {}, {}
    sw = np.linspace(0.1, 4.0, 14 if run.opts.quick else 40)
    sb = np.linspace(0.0, 0.5, 8 if run.opts.quick else 26)
    for act in ("tanh", "selu"):
        grids[act], lines[act] = phase_grid(act, sw, sb)
        run.table(grids[act], f"phase_{act}.csv")
        run.table(lines[act], f"critical_line_{act}.csv")
    marks = init_marks(256, 256)
    run.table(marks, "init_sigma_w2.csv")
    run.figure(plot_phase_diagram(grids, lines, marks), "phase_diagram.png")
    run.step("phase diagram")
    return lines


def _work_dir_refusal(exc) -> Exception:
    """The report has no --no-resume: name the option it has."""
    if isinstance(exc, FolderBusy):
        return UserError(f"{exc.folder} is in use by {exc.holder}; wait for it to finish or use another --work-dir")
    return UserError(f"{exc.detail}; use another --work-dir, or delete {exc.folder} to train again")


def _check_work_dir_data(work: Path, train_ds) -> None:
    """Refuse, before any computation, a work folder holding runs on other data (e.g. another --train-subset)."""
    from propagate.reproduce import reproduce_identity

    try:
        check_folder(work, reproduce_identity(train_ds), option="--work-dir")
    except (IdentityMismatch, FolderBusy) as exc:
        raise _work_dir_refusal(exc) from None


def _train_in_work_dir(run: _Run, train_ds, work: Path):
    """Train every preset into the resumable work folder, with the report's options in the messages."""
    from propagate.reproduce import reproduce

    opts = run.opts
    try:
        return reproduce(presets=list(opts.presets) if opts.presets else None, lrs=opts.lrs, dataset=train_ds,
                         out_dir=work, resume=True, epochs=opts.epochs, seed=opts.seed, seeds=opts.seeds,
                         device=opts.device, progress=run.progress, notify=run.say)
    except (IdentityMismatch, FolderBusy) as exc:
        raise _work_dir_refusal(exc) from None


def _training_part(run: _Run, dataset, work: Path):
    """5. Training: every preset at every learning rate (a seed ensemble each), curves and per-layer drift."""
    from propagate.report.compute import collect_training, drift_runs, reported_table
    from propagate.reproduce import long_summary
    from propagate.report.figures_training import plot_layer_drift_bands, plot_training_bands

    opts = run.opts
    train_ds = _subset(dataset, opts.train_subset)
    summary = _train_in_work_dir(run, train_ds, work)
    history, layers = collect_training(work, summary)
    run.table(long_summary(summary), "training_summary.csv")  # long: one row per (preset, lr, epoch)
    run.table(history, "training_history.csv")
    run.table(layers, "training_layers.csv")
    reported = reported_table(summary)
    for lr in opts.lrs:
        h = history[history["lr"] == lr]
        run.figure(plot_training_bands(
            h, reported, title=f"Training the 52-layer network, RMSprop lr {lr:g}: mean of {opts.seeds} seeds, "
                               "band 95% t interval (dashed: with batch normalization; squares: the lecture demo's numbers)"),
                   f"training_curves_lr{lr:g}.png")
    drift = drift_runs(summary, opts.lrs)
    run.figure(plot_layer_drift_bands(layers, drift), "training_layer_drift.png")
    run.step("training")
    return train_ds, summary, history, layers, drift


def _trainability_dir(run: _Run, dataset, work: Path) -> Path | None:
    """Full reports: the trainability map's grid, trained (resumably) in the work folder; quick: None (the section's own grid)."""
    if run.opts.quick:
        return None
    from propagate.presets import get_preset

    from propagate.report.section_trainability import SETTINGS_FULL, configs_with_warmup

    opts = run.opts
    configs = configs_with_warmup([(name, get_preset(name).spec()) for name in TRAINABILITY_PRESETS],
                                  SETTINGS_FULL["warmup_presets"], SETTINGS_FULL["warmup"])
    topts = TrainabilityOptions(seeds=tuple(opts.seed + k for k in range(3)), epochs=opts.epochs, refine=2,
                                device=opts.device)
    folder = work / "trainability"
    try:
        trainability(configs, TRAINABILITY_LRS, _subset(dataset, opts.trainability_subset), topts, out_dir=folder,
                     progress=run.say)
    except (IdentityMismatch, FolderBusy) as exc:
        raise _work_dir_refusal(exc) from None
    return folder


def _sections_part(run: _Run, dataset, train_ds, work: Path) -> str:
    """7-: the extra sections (:data:`SECTIONS`), each writing its own data and figures; their markdown, numbered."""
    opts = run.opts
    ctx = {"quick": opts.quick, "seed": opts.seed, "dataset": dataset.name, "dataset_obj": train_ds,
           "train_seeds": opts.seeds, "work_dir": None if opts.quick else str(work)}
    parts = []
    for number, name in enumerate(opts.sections, start=7):
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


def _page_part(run: _Run, dataset, selu, sims, inputs_desc, lines, training, sections_md: str = "") -> None:
    """6. Findings from the numbers, then README.md and report.json."""
    from propagate.report.findings import collect_facts
    from propagate.report.page import render

    train_ds, summary, history, layers, drift = training
    facts = collect_facts(selu, sims, summary, history, layers, lines, run.opts)
    elapsed = time.perf_counter() - run.t_start
    text = render(run.opts, dataset, facts, summary, run.timings, elapsed, inputs_desc, train_ds, drift, sections_md)
    atomic_write_text(run.folder / "README.md", text)
    atomic_write_json(run.folder / "report.json", {"meta": run.meta, "timings_s": run.timings, "elapsed_s": elapsed,
                                                   "facts": facts})


def build_report(out_dir: str | Path, options: ReportOptions | None = None, *, progress: bool = False,
                 notify: Callable[[str], None] | None = None) -> Path:
    """Compute, draw and write the whole report into ``out_dir``; return its path.

    ``notify(message)`` receives one line per finished step (the CLI prints it
    on stderr). See :class:`ReportOptions` for what is computed. ``out_dir``
    must be new, empty or a previous report (:func:`check_report_folders`,
    checked before any work); it is replaced as a whole at the end.
    """
    import matplotlib

    matplotlib.use("Agg")  # a report is files; never needs (or opens) a display
    from propagate.data import load_dataset

    opts = (options or ReportOptions()).effective()
    check_report_folders(out_dir, opts)
    work = work_dir_of(out_dir, opts)
    say = notify or (lambda m: None)
    run_meta = run_metadata(seed=opts.seed, options=asdict(opts))
    t_start = time.perf_counter()
    dataset = load_dataset(opts.dataset, opts.data_dir, download=True, progress=progress, notify=say)
    _check_work_dir_data(work, _subset(dataset, opts.train_subset))
    x_train, _ = dataset.arrays("train")

    with atomic_directory(out_dir, adopt=_is_report_folder) as tmp:
        run = _Run(opts, run_meta, tmp, progress, say, t_start=t_start)
        selu = _selu_part(run)
        sims, inputs_desc = _simulation_part(run, dataset, x_train)
        lines = _phase_part(run)
        training = _training_part(run, dataset, work)
        sections_md = _sections_part(run, dataset, training[0], work)
        _page_part(run, dataset, selu, sims, inputs_desc, lines, training, sections_md)
    return Path(out_dir)
