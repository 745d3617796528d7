"""``propagate reproduce``: run every preset (the seed's five runs and two recipes) at each learning rate."""

from __future__ import annotations

import argparse

from propagate.commands._args import nonneg_int, positive_float_list, positive_int

NAME = "reproduce"
HELP = "run all training presets (the seed's five MNIST runs + SNN and He recipes) and compare with the seed"
DESCRIPTION = """\
Train every preset (default: all, see 'propagate train --list-presets') at each learning
rate and write a results folder: one subfolder <preset>_lr<lr>/ per run (history.csv,
layers.csv, spec.json, checkpoint.pt) and summary.csv + summary.md, a markdown table of
measured train/val accuracy per epoch next to what the seed reported.

Every finished epoch is saved; an interrupted reproduction continues where it stopped
(--resume, the default) and finished runs are skipped.

examples:
  propagate reproduce --dataset mnist-5k --out results/reproduce
  propagate reproduce --presets relu,selu-lecun-normal --lr 1e-3,1e-4
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--presets", help="comma-separated preset names (default: all)")
    parser.add_argument("--lr", type=positive_float_list, default=[1e-3],
                        help="learning rates, e.g. 1e-3,1e-4 (default 1e-3, the seed's)")
    parser.add_argument("--dataset", choices=["mnist", "mnist-5k", "fashion-mnist", "auto"], default="auto",
                        help="default auto: full MNIST if present or downloadable, else mnist-5k")
    parser.add_argument("--data-dir", help="folder with the IDX files")
    parser.add_argument("--out", default="results/reproduce", help="results folder (default results/reproduce)")
    parser.add_argument("--epochs", type=positive_int, default=3, help="default 3 (the seed's)")
    parser.add_argument("--seed", type=nonneg_int, default=0, help="default 0")
    parser.add_argument("--probe-size", type=positive_int, default=512, help="probe batch size (default 512)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    parser.add_argument("--threads", type=positive_int, help="torch CPU threads (default: one per core)")
    parser.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                        help="continue runs found in --out and skip finished ones (default on)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args) -> int:
    import sys
    import time

    from propagate.train import format_epoch_line, reproduce, summary_markdown

    presets = [p for p in args.presets.split(",") if p.strip()] if args.presets else None
    if presets is not None and not presets:
        from propagate.errors import UserError

        raise UserError("--presets is empty")
    t0 = time.perf_counter()
    summary = reproduce(
        presets=presets, lrs=args.lr, dataset=args.dataset, out_dir=args.out, resume=args.resume,
        epochs=args.epochs, seed=args.seed, data_dir=args.data_dir, device=args.device, threads=args.threads,
        probe_size=args.probe_size, progress=not args.no_progress,
        callback=lambda row: print(format_epoch_line(row), file=sys.stderr, flush=True),
        notify=lambda m: print(f"propagate: {m}", file=sys.stderr),
    )
    print(summary_markdown(summary, args.epochs), end="")
    print(f"done in {time.perf_counter() - t0:.1f}s; results in {args.out}", file=sys.stderr)
    return 0
