"""``propagate reproduce``: run every preset (the lecture demo's five runs and two recipes) at each learning rate."""

from __future__ import annotations

import argparse
import sys
import time

from propagate.commands._args import (
    add_ensemble_arguments,
    check_device,
    data_dir,
    name_list,
    output_dir,
    positive_float_list,
    positive_int,
)
from propagate.commands._output import add_output_arguments, check_outputs, emit, to_stdout
from propagate.commands.train import check_training_size
from propagate.io import check_files_in, run_metadata
from propagate.limits import check_seeds
from propagate.runfolder import check_run_folder

NAME = "reproduce"
HELP = "run all training presets (the lecture demo's five MNIST runs + SNN and He recipes), compared with the demo"
DESCRIPTION = """\
Train every preset (default: all, see 'propagate train --list-presets') at each learning
rate and write a results folder: one subfolder <preset>_lr<lr>/ per run (history.csv,
layers.csv, spec.json, checkpoint.pt) and summary.csv (one row per preset, lr and epoch) +
summary.md, a markdown table of measured train/val accuracy per epoch next to what the
lecture demo reported (the 2017 demo: one run each at lr 1e-3 on the full MNIST, with the
demo's network of 51 hidden layers, Dense(512) then 50 x Dense(256)). The summary goes to
stdout as markdown, or as --json [FILE] / --csv FILE.

Every finished epoch is saved; an interrupted reproduction continues where it stopped
(--resume, the default) and finished runs are skipped.

examples:
  propagate reproduce --dataset mnist-5k --out results/reproduce
  propagate reproduce --presets relu,selu-lecun-normal --lr 1e-3,1e-4
  propagate reproduce --dataset mnist-5k --seeds 5 --out results/reproduce-5
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--presets", type=name_list, help="comma-separated preset names (default: all)")
    parser.add_argument("--lr", type=positive_float_list, default=[1e-3],
                        help="learning rates, e.g. 1e-3,1e-4 (default 1e-3, the demo's)")
    parser.add_argument("--dataset", choices=["mnist", "mnist-5k", "fashion-mnist", "auto"], default="auto",
                        help="default auto: full MNIST if present or downloadable, else mnist-5k")
    parser.add_argument("--data-dir", type=data_dir,
                        help="folder with the IDX files (read, never downloaded into; default: the cache folder)")
    parser.add_argument("--out", type=output_dir, default="results/reproduce", help="results folder (default results/reproduce)")
    parser.add_argument("--epochs", type=positive_int, default=3, help="default 3 (the demo's)")
    add_ensemble_arguments(parser, "random seeds per run (--seed .. --seed+N-1), trained together as one batched "
                                   "ensemble; the summary gives each number's mean with its 95%% Student t interval "
                                   "(default 1)")
    parser.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                        help="continue runs found in --out and skip finished ones (default on)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_output_arguments(parser, what="the summary (one row per preset, lr and epoch)")


#: The files ``reproduce --out DIR`` writes at the top of DIR (:func:`propagate.reproduce.reproduce`).
OUT_FILES = ("summary.csv", "summary.csv.meta.json", "summary.md")


def run(args) -> int:
    from propagate.presets import get_preset
    from propagate.reproduce import check_runs, long_summary, reproduce, summary_markdown
    from propagate.train import TrainOptions, format_epoch_line

    from pathlib import Path

    # --json/--csv may not name the summary the run writes in --out (nor its sidecar)
    check_outputs(args, [(f"the run's {name!r} in --out", Path(args.out) / name) for name in OUT_FILES])
    presets, _ = check_runs(args.presets, args.lr)  # unknown or repeated presets and learning rates
    check_seeds(args.seed, args.seeds)
    check_device(args.device)
    # in use by another process, another kind of run, or not a run folder: refuse now (its data: once loaded)
    check_run_folder(args.out, "reproduce", None, resume=args.resume)
    check_files_in(args.out, OUT_FILES)  # a folder where the summary goes: refused before any training

    # every preset is the demo's network: one size check, before any data is loaded
    check_training_size(get_preset(presets[0]).spec(), TrainOptions(seeds=args.seeds, probe_size=args.probe_size))
    t0 = time.perf_counter()
    summary = reproduce(
        presets=presets, lrs=args.lr, dataset=args.dataset, out_dir=args.out, resume=args.resume,
        epochs=args.epochs, seed=args.seed, seeds=args.seeds, data_dir=args.data_dir, device=args.device, threads=args.threads,
        probe_size=args.probe_size, progress=not args.no_progress,
        callback=lambda row: print(format_epoch_line(row), file=sys.stderr, flush=True),
        notify=lambda m: print(f"propagate: {m}", file=sys.stderr),
    )
    if not to_stdout(args):
        print(summary_markdown(summary, args.epochs), end="")
    written = emit(args, long_summary(summary, args.epochs),
                   run_metadata(seed=args.seed, kind="reproduce", presets=presets, lrs=args.lr, epochs=args.epochs,
                                seeds=args.seeds, out=str(args.out)))
    print(f"done in {time.perf_counter() - t0:.1f}s; results in {args.out}" + "".join(f"; wrote {p}" for p in written),
          file=sys.stderr)
    return 0
