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

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

__all__ = ["ReportOptions", "build_report"]


@dataclass(frozen=True)
class ReportOptions:
    """What goes into a report.

    ``quick`` is a reduced version (about a minute on 2 cores): fewer inputs
    and networks in the simulation, a coarser phase grid, 1 epoch on a
    1,024-image subset of the training split, one learning rate.
    """

    dataset: str = "mnist-5k"
    quick: bool = False
    lrs: tuple[float, ...] = (1e-3, 1e-4)
    epochs: int = 3
    presets: tuple[str, ...] | None = None
    sim_samples: int = 1000
    sim_seeds: int = 4
    seed: int = 0
    data_dir: str | None = None
    work_dir: str | None = None
    device: str = "cpu"
    train_subset: int | None = None
    machine: str = ""

    def effective(self) -> "ReportOptions":
        """The options actually used (``quick`` shrinks the sizes)."""
        if not self.quick:
            return self
        return replace(self, lrs=self.lrs[:1], epochs=1, sim_samples=min(self.sim_samples, 256),
                       sim_seeds=min(self.sim_seeds, 2), train_subset=self.train_subset or 1024)


def _subset(dataset, n):
    """The first ``n`` training images (the splits are class-interleaved, so balanced)."""
    if n is None or n >= len(dataset.y_train):
        return dataset
    return replace(dataset, x_train=dataset.x_train[:n], y_train=dataset.y_train[:n])


def build_report(out_dir: str | Path, options: ReportOptions | None = None, *, progress: bool = False,
                 notify: Callable[[str], None] | None = None) -> Path:
    """Compute, draw and write the whole report into ``out_dir``; return its path.

    ``notify(message)`` receives one line per finished step (the CLI prints it
    on stderr). See :class:`ReportOptions` for what is computed.
    """
    import matplotlib

    matplotlib.use("Agg")  # a report is files; never needs (or opens) a display
    from propagate.data import load_dataset
    from propagate.io import atomic_directory, atomic_write_json, atomic_write_text, run_metadata, write_table
    from propagate.report import compute, figures, findings, page
    from propagate.report.style import save_figure
    from propagate.train import reproduce

    opts = (options or ReportOptions()).effective()
    say = notify or (lambda m: None)
    out_dir = Path(out_dir)
    work = Path(opts.work_dir) if opts.work_dir else out_dir.parent / f".{out_dir.name}.work"
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    meta = run_metadata(seed=opts.seed, options=asdict(opts))

    def step(name):
        timings[name] = time.perf_counter() - t_start - sum(timings.values())
        say(f"report: {name} done ({timings[name]:.1f}s)")

    dataset = load_dataset(opts.dataset, opts.data_dir, download=True, progress=progress, notify=say)
    x_train, _ = dataset.arrays("train")

    with atomic_directory(out_dir) as tmp:
        fig_dir, data_dir = tmp / "figures", tmp / "data"
        # 1. SELU
        selu = compute.selu_summary()
        traj = compute.selu_trajectories()
        write_table(traj, data_dir / "selu_trajectories.csv", meta)
        atomic_write_json(data_dir / "selu_solution.json", selu)
        from propagate.selu import derivation_markdown

        atomic_write_text(tmp / "selu_derivation.md", derivation_markdown())
        save_figure(figures.plot_selu_flow(traj, box=(-0.1, 0.1, 0.8, 1.5)), fig_dir / "selu_flow.png")
        step("SELU fixed point")

        # 2-3. simulation and theory of the seed's network
        n_sim = min(opts.sim_samples, len(x_train))
        sims = compute.simulate_configs(x_train[:n_sim], samples=n_sim, seeds=opts.sim_seeds, seed=opts.seed,
                                        progress=progress)
        write_table(sims.sim, data_dir / "simulation_layers.csv", meta)
        write_table(sims.theory, data_dir / "theory_layers.csv", meta)
        inputs_desc = f"{n_sim} {dataset.name} training images ([0, 1] pixels)"
        save_figure(figures.plot_layer_moments(sims.sim, sims.theory), fig_dir / "layer_moments.png")
        save_figure(figures.plot_grad_norms(sims.sim, sims.theory), fig_dir / "grad_norms.png")
        step("simulation")

        # 4. phase diagram
        grids, lines = {}, {}
        import numpy as np

        sw = np.linspace(0.1, 4.0, 14 if opts.quick else 40)
        sb = np.linspace(0.0, 0.5, 8 if opts.quick else 26)
        for act in ("tanh", "selu"):
            grids[act], lines[act] = compute.phase_grid(act, sw, sb)
            write_table(grids[act], data_dir / f"phase_{act}.csv", meta)
            write_table(lines[act], data_dir / f"critical_line_{act}.csv", meta)
        marks = compute.init_marks(256, 256)
        write_table(marks, data_dir / "init_sigma_w2.csv", meta)
        save_figure(figures.plot_phase_diagram(grids, lines, marks), fig_dir / "phase_diagram.png")
        step("phase diagram")

        # 5. training
        train_ds = _subset(dataset, opts.train_subset)
        summary = reproduce(presets=list(opts.presets) if opts.presets else None, lrs=opts.lrs, dataset=train_ds,
                            out_dir=work, resume=True, epochs=opts.epochs, seed=opts.seed, device=opts.device,
                            progress=progress, notify=say)
        history, layers = compute.collect_training(work, summary)
        write_table(summary, data_dir / "training_summary.csv", meta)
        write_table(history, data_dir / "training_history.csv", meta)
        write_table(layers, data_dir / "training_layers.csv", meta)
        reported = compute.reported_table(summary)
        for lr in opts.lrs:
            h = history[history["lr"] == lr]
            save_figure(figures.plot_training_curves(h, reported, title=f"Training the 52-layer network, RMSprop lr {lr:g} "
                                                     "(dashed: with batch normalization; squares: the seed's numbers)"),
                        fig_dir / f"training_curves_lr{lr:g}.png")
        drift_runs = compute.drift_runs(summary, opts.lrs)
        save_figure(figures.plot_training_layers(layers, drift_runs), fig_dir / "training_layer_drift.png")
        step("training")

        # 6. findings and the page
        facts = findings.collect_facts(selu, sims, summary, history, layers, lines, opts)
        elapsed = time.perf_counter() - t_start
        text = page.render(opts, dataset, facts, summary, timings, elapsed, inputs_desc, train_ds, drift_runs)
        atomic_write_text(tmp / "README.md", text)
        atomic_write_json(tmp / "report.json", {"meta": meta, "timings_s": timings, "elapsed_s": elapsed,
                                                "facts": facts})
    return out_dir
