"""``propagate scaling``: the largest stable learning rate over width, depth, batch size and rho, measured and predicted."""

from __future__ import annotations

import argparse
import sys

from propagate.cluster import check_where
from propagate.commands._args import (data_dir, name_list, nonneg_int, output_dir, positive_int, probability, refine_steps,
                                      scheduler_address, seed, threads, workers)
from propagate.commands._output import add_output_arguments, check_outputs, emit, to_stdout
from propagate.errors import UserError
from propagate.limits import check_seeds
from propagate.io import run_metadata
from propagate.scaling import AXES, CONFIGS, ScalingOptions, check_scaling_dir, scaling_grid

NAME = "scaling"
HELP = "the scaling law of the largest stable lr over width, depth, batch and rho: measured vs predicted"
DESCRIPTION = """\
One factor at a time around a base cell (width 256, depth 50, batch 128, RMSprop
rho 0.9): width 64..1024, depth 6..50, batch 32..512, rho 0.9/0.99, for plain
stacks 784 -> depth x Dense(width) -> 10 of four configurations
(selu-lecun-normal, selu-bn-lecun-uniform, tanh-glorot-uniform, relu-he-normal).
At every (configuration, cell): the largest learning rate whose seed ensemble
trains (--epochs, default 1, and at least the base cell's optimizer steps, so
batch 512 trains 4 epochs: --no-equal-steps turns that off; the lower 95% bound
of the last epoch's running training accuracy above --level, default 0.3),
extended --extend grid steps above the top where it still trains, bisected
--refine times, and the one predicted from the optimizer's own first steps
(propagate.lr_limit). Writes

  DIR/cells.csv   one row per (config, cell): max_lr_measured, max_lr_bad,
                  max_lr_predicted with its 95% interval, ratio, within_2x
  DIR/fits.csv    d ln lr* / d ln width and / d ln depth per config, measured
                  and predicted, with 95% intervals, beside the sign-step
                  picture's exponents (derivations/trainability.md)
  DIR/trainability/  every point (resumable), as `propagate trainability` writes

The grid is one set of points: in this process, or on Dask with --workers N (a
local cluster) or --scheduler ADDRESS. The full grid is about 50 configurations
x 12 ensembles; on 2 cores expect an hour or more (width 1024 dominates).

examples:
  propagate scaling --dataset mnist-5k --workers 2 --out runs/scaling
  propagate scaling --configs selu-lecun-normal --axes width,depth --dataset mnist-5k --out runs/scaling-selu
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("grid")
    g.add_argument("--configs", type=name_list, help="comma-separated configurations (default: all four)")
    g.add_argument("--axes", type=name_list, help="comma-separated axes of width, depth, batch_size, rho (default all)")
    g.add_argument("--seeds", type=positive_int, default=3, help="random seeds per ensemble (default 3)")
    g.add_argument("--seed", type=seed, default=0, help="first seed (default 0)")
    g.add_argument("--epochs", type=positive_int, default=1, help="epochs per run (default 1)")
    g.add_argument("--level", type=probability, default=0.3,
                   help="'trains' when the lower 95%% bound of the running training accuracy exceeds this (default 0.3)")
    g.add_argument("--refine", type=refine_steps, default=2, help="bisection steps per (config, cell) (default 2)")
    g.add_argument("--extend", type=nonneg_int, default=3,
                   help="grid steps tried above the top where it still trains (default 3)")
    g.add_argument("--equal-steps", action=argparse.BooleanOptionalAction, default=True,
                   help="give every cell at least the base cell's optimizer steps: larger batches train more "
                        "epochs (default on)")
    g.add_argument("--threads", type=threads, help="torch threads per run (default 1 on Dask, all cores in process)")
    e = parser.add_argument_group("where it runs (default: in this process)")
    e.add_argument("--workers", type=workers, metavar="N", help="a local Dask cluster of N single-threaded workers")
    e.add_argument("--scheduler", type=scheduler_address, metavar="ADDRESS", help="an existing Dask cluster")
    d = parser.add_argument_group("data and output")
    d.add_argument("--dataset", choices=["mnist", "mnist-5k", "fashion-mnist", "auto"], default="mnist-5k",
                   help="default mnist-5k")
    d.add_argument("--data-dir", type=data_dir, help="folder with the IDX files")
    d.add_argument("--out", type=output_dir, default="results/scaling", help="results folder (default results/scaling)")
    d.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="reuse finished points found in --out (default on)")
    d.add_argument("--no-progress", action="store_true", help="no progress lines")
    add_output_arguments(d, what="the cells table (one row per configuration and cell)")


def setup(args) -> tuple:
    """``(configs, axes, ScalingOptions)`` of the parsed flags; UserError on bad input (before any work)."""

    configs = args.configs or list(CONFIGS)
    bad = [c for c in configs if c not in CONFIGS]
    if bad or len(set(configs)) != len(configs):
        raise UserError(f"--configs takes distinct names of {', '.join(CONFIGS)}; got {', '.join(configs)}")
    names = args.axes or list(AXES)
    if any(a not in AXES for a in names) or len(set(names)) != len(names):
        raise UserError(f"--axes takes distinct names of {', '.join(AXES)}; got {', '.join(names)}")
    options = ScalingOptions(seeds=tuple(range(args.seed, args.seed + args.seeds)), epochs=args.epochs,
                             level=args.level, refine=args.refine, extend=args.extend,
                             equal_steps=args.equal_steps, threads=args.threads)
    return configs, {a: AXES[a] for a in names}, options


def run(args) -> int:
    check_outputs(args)
    configs, axes, options = setup(args)
    check_seeds(args.seed, args.seeds)
    check_where(args.workers, args.scheduler)
    check_scaling_dir(args.out)  # before the data is loaded: a folder that is not a scaling run's is refused

    from tabulate import tabulate

    from propagate.data import load_dataset

    def say(msg):
        if not args.no_progress:
            print(f"propagate: {msg}", file=sys.stderr, flush=True)

    dataset = load_dataset(args.dataset, args.data_dir, download=args.data_dir is None, progress=not args.no_progress,
                           notify=lambda m: print(f"propagate: {m}", file=sys.stderr))
    res = scaling_grid(dataset, configs, axes=axes, options=options, out_dir=args.out, resume=args.resume,
                       workers=args.workers, scheduler=args.scheduler, progress=say)
    cols = ["config", "cell", "max_lr_measured", "max_lr_predicted", "ratio", "within_2x"]
    if not to_stdout(args):
        print(tabulate(res.cells[cols], headers="keys", showindex=False, floatfmt=".3g"))
        fits = res.fits[~res.fits["source"].str.startswith("sign-step")]
        print(tabulate(fits[["config", "axis", "source", "slope", "slope_ci_low", "slope_ci_high", "n_points"]],
                       headers="keys", showindex=False, floatfmt=".2f"))
    written = emit(args, res.cells, run_metadata(kind="scaling", configs=configs, axes=list(axes),
                                                 seeds=list(options.seeds), dataset=dataset.name, out=str(args.out)))
    within = res.cells["within_2x"].dropna()
    print(f"{int(within.sum())} of {len(within)} cells with a measured limit are within 2x of the prediction; "
          f"tables in {args.out}: cells.csv, fits.csv" + "".join(f"; wrote {p}" for p in written), file=sys.stderr)
    return 0
