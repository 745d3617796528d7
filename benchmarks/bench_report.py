"""Wall time of ``propagate report --quick`` and of its heavy parts, in process against a local Dask cluster.

Prints, measured in this one run (each build in fresh temporary folders, so
nothing is resumed):

- the whole quick report (``build_report(ReportOptions(quick=True))``): in
  process at one torch thread (what one core does: the baseline), on a local
  cluster of 1 worker and of 2 workers (cluster start-up included), and the
  speed-ups of 2 workers over the in-process build and over 1 worker (goal:
  >= 1.7x over one worker on 2 idle cores). The in-process build at the
  default thread count (one per core) is printed too, for reference;
- each heavy part alone, in process at one thread against 2 workers (a
  cluster started beforehand, outside the timing): the training ensembles
  (every preset at the quick learning rate, presets of one architecture in one
  model), the self-normalization runs, the trainability section's grid and
  the scaling grid, with the speed-up of each.

Usage: ``python benchmarks/bench_report.py [--report-only | --parts-only]``.
Run it on an idle machine: other processes on the cores make the ratios
meaningless (a busy machine gives a lower bound at best).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # workers get one thread; so does the in-process baseline
os.environ.setdefault("MKL_NUM_THREADS", "1")


def build(mode: str, threads: int | None = 1) -> float:
    """Seconds of one quick report build: ``mode`` "in process" or a number of local workers."""
    from propagate.report import ReportOptions, build_report

    kw = {} if mode == "in process" else {"workers": int(mode)}
    with tempfile.TemporaryDirectory() as tmp:
        opts = ReportOptions(quick=True, threads=threads, work_dir=str(Path(tmp) / "work"))
        t0 = time.perf_counter()
        build_report(Path(tmp) / "report", opts, **kw)
        return time.perf_counter() - t0


def whole_report() -> None:
    here = build("in process")
    print(f"report --quick in process, 1 thread:  {here:8.1f} s", flush=True)
    default = build("in process", threads=None)
    print(f"report --quick in process, default threads ({os.cpu_count()} cores): {default:8.1f} s", flush=True)
    one = build("1")
    print(f"report --quick --workers 1:           {one:8.1f} s", flush=True)
    two = build("2")
    print(f"report --quick --workers 2:           {two:8.1f} s", flush=True)
    print(f"speed-up of 2 workers: {here / two:.2f}x over in process (1 thread), {one / two:.2f}x over 1 worker "
          f"(goal >= 1.7x), {default / two:.2f}x over in process at default threads")


def training_points(dataset, threads):
    """The quick report's training ensembles as runner points (every preset, lr 1e-3, 2 seeds, 1 epoch)."""
    from propagate.presets import get_preset, list_presets
    from propagate.report.compute import preset_groups
    from propagate.report.tasks import train_point
    from propagate.train import TrainOptions

    opts = TrainOptions(epochs=1, seeds=2, lr=1e-3, threads=threads)
    return [train_point([get_preset(p).spec() for p in group], opts, opts.seed_list, dataset)
            for group in preset_groups(list_presets())]


def parts(runner, dataset) -> dict[str, float]:
    """Seconds of each heavy part of the quick report on ``runner`` (nothing stored, nothing resumed)."""
    from propagate.report import section_scaling, section_selfnorm, section_trainability
    from propagate.report.tasks import PRIORITY

    out = {}
    t0 = time.perf_counter()
    runner.run(training_points(dataset, runner.threads), label="training", priority=PRIORITY["training"])
    out["training ensembles"] = time.perf_counter() - t0
    S = dict(section_selfnorm.SETTINGS_QUICK)
    configs = section_selfnorm.training_configurations(section_selfnorm.configurations(S["depth"]))
    sub = replace(dataset, x_train=dataset.x_train[:S["n_train"]], y_train=dataset.y_train[:S["n_train"]],
                  x_test=dataset.x_test[:S["n_test"]], y_test=dataset.y_test[:S["n_test"]])
    t0 = time.perf_counter()
    section_selfnorm.compute_training(configs, sub, epochs=S["epochs"], lrs=S["lrs"], seeds=S["train_seeds"],
                                      runner=runner)
    out["self-normalization runs"] = time.perf_counter() - t0
    ctx = {"quick": True, "dataset_obj": dataset, "runner": runner}
    t0 = time.perf_counter()
    section_trainability.start(ctx).result()
    out["trainability grid"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    section_scaling.start(ctx).result()
    out["scaling grid"] = time.perf_counter() - t0
    return out


def heavy_parts() -> None:
    from propagate.data import load_dataset
    from propagate.report.tasks import ReportRunner

    full = load_dataset("mnist-5k")
    dataset = replace(full, x_train=full.x_train[:1024], y_train=full.y_train[:1024])  # the quick report's subset
    with ReportRunner(threads=1) as runner:
        here = parts(runner, dataset)
    with ReportRunner(workers=2) as runner:
        runner.client.run(lambda: __import__("propagate.train"))  # workers started and torch imported: not timed
        there = parts(runner, dataset)
    for name in here:
        print(f"{name:26s} in process {here[name]:7.1f} s, 2 workers {there[name]:7.1f} s: "
              f"speed-up {here[name] / there[name]:.2f}x")
    print(f"{'all heavy parts':26s} in process {sum(here.values()):7.1f} s, 2 workers {sum(there.values()):7.1f} s: "
          f"speed-up {sum(here.values()) / sum(there.values()):.2f}x (one part at a time)")


def timeline(workers: int = 2) -> None:
    """Where the cores go in one ``report --quick --workers N`` build: each worker's busy share, the gaps in which
    a worker waited for work, and when the page's steps finished in this process (Dask's task stream)."""
    from distributed import get_task_stream

    from propagate.cluster import dask_client
    from propagate.report import ReportOptions, build_report

    steps = []
    with tempfile.TemporaryDirectory() as tmp, dask_client(workers) as client:
        client.run(lambda: __import__("propagate.train"))  # workers up and torch imported: not timed
        opts = ReportOptions(quick=True, work_dir=str(Path(tmp) / "work"))
        t0 = time.time()
        with get_task_stream(client) as ts:
            build_report(Path(tmp) / "report", opts, client=client,
                         notify=lambda m: steps.append((time.time() - t0, m)))
        total = time.time() - t0
    busy: dict[str, list] = {}
    for task in ts.data:
        for s in task["startstops"]:
            if s["action"] == "compute":
                busy.setdefault(task["worker"], []).append((s["start"] - t0, s["stop"] - t0, task["key"]))
    print(f"report --quick on {workers} workers (started beforehand): {total:.1f} s")
    for w, spans in sorted(busy.items()):
        spans.sort()
        used = sum(b - a for a, b, _ in spans)
        gaps, end = [], 0.0
        for a, b, _ in spans:
            if a - end > 1.0:
                gaps.append(f"{end:.0f}-{a:.0f}s")
            end = max(end, b)
        if total - end > 1.0:
            gaps.append(f"{end:.0f}-{total:.0f}s")
        print(f"  worker {w}: busy {used:.1f} s of {total:.1f} s ({used / total:.0%}); idle gaps over 1 s: "
              f"{', '.join(gaps) or 'none'}")
    for t, m in steps:
        if m.startswith("report:"):
            print(f"  {t:6.1f} s  {m}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--report-only", action="store_true", help="time only the whole quick report")
    group.add_argument("--parts-only", action="store_true", help="time only the heavy parts")
    group.add_argument("--timeline", action="store_true",
                       help="one 2-worker quick build: each worker's busy share and idle gaps, the page's steps")
    args = ap.parse_args()
    print(f"cores: {os.cpu_count()}; python {sys.version.split()[0]}", flush=True)
    if args.timeline:
        timeline()
        return
    if not args.parts_only:
        whole_report()
    if not args.report_only:
        heavy_parts()


if __name__ == "__main__":
    main()
