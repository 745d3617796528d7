"""``propagate trainability``: where each configuration stops training along the learning-rate axis."""

from __future__ import annotations

import argparse
import math
import sys

from propagate.cluster import check_where
from propagate.commands._args import (check_device, data_dir, device, nonneg_int, output_dir, positive_float,
                                      positive_float_list, positive_int, probability, refine_steps,
                                      scheduler_address, seed, threads, workers)
from propagate.commands._output import add_output_arguments, check_outputs, emit, to_stdout
from propagate.commands._spec_args import (DEFAULT_ACTIVATION, DEFAULT_INIT, DEFAULT_NETWORK, add_spec_arguments,
                                           custom_network, spec_from_args)
from propagate.errors import UserError
from propagate.limits import check_seeds, linear_range
from propagate.runfolder import check_run_folder
from propagate.io import check_files_in, run_metadata
from propagate.trainability import DEFAULT_LRS, TrainabilityOptions, check_out_dir, trainability

NAME = "trainability"
HELP = "train presets over a log grid of learning rates (ensembles of seeds): largest lr that trains, vs predicted"
DESCRIPTION = """\
Train each configuration (presets, or one custom network: the flags every
command shares, unset ones the default network's, <<default>>) at every learning
rate of a log-spaced grid, each (configuration, lr) as an ensemble of --seeds
random seeds, and write:

  DIR/points.csv (.json)   one row per (config, lr): final loss, acc, val_loss,
                           val_acc, train_eval_acc as _mean/_ci_low/_ci_high (95%
                           Student t interval over seeds), n_diverged, outcome
  DIR/configs.csv (.json)  one row per config: max_lr_measured, max_lr_bad,
                           max_lr_predicted (the optimizer's own first steps) with
                           its 95% interval, ratio = measured / predicted, and the
                           curvature bounds max_lr_sharpness, max_lr_sharpness_gd
  DIR/seeds.csv            the per-seed final numbers
  DIR/predictions.csv      the per-seed predictions; DIR/lookahead.csv their curves

Outcome of a (config, lr): 'diverged' if any seed's training loss became inf/NaN;
'trains' if the lower 95% bound of the final training accuracy (--criterion,
default acc: Keras' running training accuracy of the last epoch) is above --level
(default 0.5; with one seed, the value itself); else 'fails'. max_lr_measured is
the largest lr that trains; --refine K bisects K times in log lr between it and
the next lr that does not train.

max_lr_predicted: the optimizer's actual update rule (state, eps, bias
corrections, batch size, warmup) runs for K steps on each seed's network at many
learning rates at once (K = 1/(1 - rho) for RMSprop, at least 10, at most an
epoch); the limit is where the loss after K steps stops improving by at least
half the best improvement (see propagate.lr_limit and derivations/trainability.md).
--predict-only prints it (and the curvature bounds) without training.

The curvature bounds (secondary, --no-sharpness skips them): c / lambda_1, with
lambda_1 the largest eigenvalue of the loss Hessian on a fixed batch (Lanczos),
preconditioned by the optimizer's P after a few warm-up steps for rmsprop/adam
(P^-1 H); c = 2 for GD and RMSprop, 2 + 2 momentum for SGD with momentum, 38 for
Adam (Cohen et al. 2021, 2022). They miss RMSprop's first steps, which are sign
steps of lr / sqrt(1 - rho) whatever the gradient's size.

Runs in this process, one point after another, or on Dask with --workers N (a
local cluster) or --scheduler ADDRESS (a running cluster): every grid point and
prediction at once, then one bisection step of every configuration per --refine
round. Either way each finished point is saved in DIR/points/ at once, so an
interrupted run resumes where it stopped, and the tables do not depend on where
points ran.

examples:
  propagate trainability --presets selu-lecun-normal,relu --lr 1e-4,1e-3 --seeds 2 --epochs 1 \\
      --dataset mnist-5k --out runs/trainability
  propagate trainability --presets relu-bn --lr 1e-5:1e-2:7 --refine 3 --out runs/t-bn
  propagate trainability --presets relu,relu-bn,selu-lecun-normal --workers 2 --out runs/t-dask
  propagate trainability --activation tanh --init glorot_normal --depth 10 --width 128 --out runs/t-tanh
  propagate trainability --presets selu-lecun-normal,selu-bn-lecun-uniform --dataset mnist-5k --predict-only

The printed table is DIR/configs.csv's main columns; --json [FILE] and --csv FILE
give the whole configs table (standard output without FILE, or '-' for --csv).
""".replace("<<default>>", str(DEFAULT_NETWORK))


def lr_list(text: str) -> list[float]:
    """'1e-4,1e-3' or a log-spaced range 'START:STOP:N' (N points, both ends included); distinct values > 0.

    Numbers as every option reads them (:mod:`propagate.commands._args`: finite,
    not subnormal); a range's size is bounded by :func:`propagate.limits.linear_range`.
    A learning rate listed twice is refused here (it would be one point, trained once).
    """
    text = text.strip()
    if text.count(":") == 2:
        a, b, n = text.split(":")
        start, stop, count = positive_float(a), positive_float(b), positive_int(n)
        try:
            logs = linear_range(math.log10(start), math.log10(stop), count, "a range of learning rates")
        except UserError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        vals = [start] if count == 1 else [10**u for u in logs]
    else:
        vals = positive_float_list(text)
    seen = set()
    for v in vals:
        if v in seen:
            raise argparse.ArgumentTypeError(f"lists the learning rate {v:g} twice: {text!r}")
        seen.add(v)
    return vals


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("configurations")
    g.add_argument("--presets", help="comma-separated preset names (see 'propagate train --list-presets')")
    add_spec_arguments(parser, inputs=False,
                       title="a custom network (any of these flags; unset ones: the default network's)")
    t = parser.add_argument_group("grid and training")
    t.add_argument("--lr", type=lr_list, default=None,
                   help="learning rates: a list 1e-4,1e-3 or a log range START:STOP:N (default 1e-5:1e-2:7)")
    t.add_argument("--seeds", type=positive_int, default=3, help="random seeds per ensemble (default 3)")
    t.add_argument("--seed", type=seed, default=0, help="first seed; the ensemble is seed..seed+N-1 (default 0)")
    t.add_argument("--epochs", type=positive_int, default=3, help="epochs per run (default 3, the lecture demo's)")
    t.add_argument("--optimizer", choices=["rmsprop", "sgd", "adam"], default="rmsprop",
                   help="default rmsprop (the lecture demo's: rho 0.9, eps 1e-7)")
    t.add_argument("--batch-size", type=positive_int, default=128, help="default 128")
    t.add_argument("--rho", type=probability, default=0.9, help="RMSprop's decay of the squared-gradient average (default 0.9)")
    t.add_argument("--warmup", type=nonneg_int, default=0, metavar="STEPS",
                   help="linear warmup over STEPS optimizer steps, in training and in the prediction (default 0)")
    t.add_argument("--criterion", choices=["acc", "train_eval_acc", "val_acc"], default="acc",
                   help="the final accuracy that decides 'trains' (default acc)")
    t.add_argument("--level", type=probability, default=0.5,
                   help="'trains' when the lower 95%% bound of the criterion exceeds this (default 0.5)")
    t.add_argument("--refine", type=refine_steps, default=0,
                   help="bisection steps in log lr per config, at most 20 (default 0)")
    t.add_argument("--extend", type=nonneg_int, default=0,
                   help="grid steps tried above the top lr for a config that still trains there (default 0)")
    t.add_argument("--predict-only", action="store_true", help="predict the largest lr of each config; train nothing")
    t.add_argument("--no-predict", action="store_true", help="skip the predictions")
    t.add_argument("--no-sharpness", action="store_true", help="skip the curvature bounds (the secondary prediction)")
    t.add_argument("--sharpness-batch", type=positive_int, default=512,
                   help="training images in the Hessian's fixed batch (default 512)")
    t.add_argument("--device", type=device, default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    t.add_argument("--threads", type=threads,
                   help="torch CPU threads per run (default: one per core in process, 1 on Dask workers)")
    e = parser.add_argument_group("where the grid runs (default: in this process, one point after another)")
    e.add_argument("--workers", type=workers, metavar="N",
                   help="on a local Dask cluster of N single-threaded worker processes, at most one per core")
    e.add_argument("--scheduler", type=scheduler_address, metavar="ADDRESS",
                   help="on an existing Dask cluster, e.g. tcp://127.0.0.1:8786 (see the README: SLURM, by hand)")
    d = parser.add_argument_group("data and output")
    d.add_argument("--dataset", choices=["mnist", "mnist-5k", "fashion-mnist", "auto"], default="auto",
                   help="default auto: full MNIST if present or downloadable, else the embedded mnist-5k")
    d.add_argument("--data-dir", type=data_dir,
                   help="folder with the IDX files (read, never downloaded into; default: the cache folder)")
    d.add_argument("--out", type=output_dir, default="results/trainability",
                   help="results folder (default results/trainability)")
    d.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="reuse finished points found in --out (default on)")
    d.add_argument("--no-progress", action="store_true", help="no progress lines")
    add_output_arguments(d, what="the configs table (one row per configuration)")


def configs_from_args(args) -> list:
    """``[(name, NetworkSpec), ...]`` of the parsed flags: the presets, then the custom network (if any flag is set)."""
    from propagate.presets import get_preset
    from propagate.spec import DEMO_CLASSES, NetworkSpec

    configs = []
    if args.presets is not None:
        names = [p.strip() for p in args.presets.split(",")]
        if not any(names):
            raise UserError("--presets is empty")
        if not all(names):
            raise UserError(f"--presets {args.presets!r} has an empty item (two commas in a row, or one at an end); "
                            f"remove the extra comma or add the missing name")
        for n in names:
            p = get_preset(n)
            configs.append((p.name, p.spec()))
    if custom_network(args):
        base = NetworkSpec.demo(DEFAULT_ACTIVATION, DEFAULT_INIT, False)
        spec = spec_from_args(args, base=base, out_features=DEMO_CLASSES)
        configs.append((spec.label(), spec))
    if not configs:
        raise UserError("give --presets or a custom network (--activation, --init, --depth, ...)")
    return configs


def setup(args) -> tuple:
    """``(configs, lrs, TrainabilityOptions)`` of the parsed flags (for ``run`` and sweeps); UserError on bad input."""

    configs = configs_from_args(args)
    check_seeds(args.seed, args.seeds)
    options = TrainabilityOptions(
        seeds=tuple(range(args.seed, args.seed + args.seeds)), epochs=args.epochs, optimizer=args.optimizer,
        batch_size=args.batch_size, rho=args.rho, warmup=args.warmup, criterion=args.criterion, level=args.level,
        refine=args.refine, extend=args.extend, predict=not args.no_predict or args.predict_only,
        sharpness=not args.no_sharpness,
        sharpness_batch=args.sharpness_batch, device=args.device, threads=args.threads)
    if args.predict_only and args.no_predict:
        raise UserError("--predict-only and --no-predict contradict each other")
    lrs = args.lr or list(DEFAULT_LRS)
    if len(set(lrs)) != len(lrs):
        raise UserError("--lr lists a learning rate twice")
    return configs, lrs, options


#: The tables ``trainability --out DIR`` writes in DIR (:func:`propagate.trainability.trainability`), each with
#: its ``.meta.json``.
OUT_TABLES = ("points.csv", "points.json", "configs.csv", "configs.json", "seeds.csv", "predictions.csv",
              "lookahead.csv")


def out_files() -> list[str]:
    """The files written in --out at the end of a run (sidecars included)."""
    return [n for t in OUT_TABLES for n in (t, t + ".meta.json")]


def run(args) -> int:
    from pathlib import Path

    # --json/--csv may not name a table the run writes in --out (nor its sidecar)
    check_outputs(args, [(f"the run's {name!r} in --out", Path(args.out) / name) for name in out_files()])
    configs, lrs, options = setup(args)
    check_device(args.device)
    check_where(args.workers, args.scheduler)
    # whose the folder is (kind, foreign files, lock) before any data loads; its identity once the data is known
    check_run_folder(args.out, "trainability", None, resume=args.resume)
    check_files_in(args.out, out_files())  # a folder where a table goes: refused before any training

    from tabulate import tabulate

    from propagate.data import load_dataset

    def say(msg):
        if not args.no_progress:
            print(f"propagate: {msg}", file=sys.stderr, flush=True)

    dataset = load_dataset(args.dataset, args.data_dir, download=args.data_dir is None, progress=not args.no_progress,
                           notify=lambda m: print(f"propagate: {m}", file=sys.stderr))
    check_out_dir(args.out, configs, lrs, dataset, options, resume=args.resume)
    if args.predict_only:
        say(f"{len(configs)} configuration(s), predictions from {args.seeds} seeds on {dataset.name}")
    else:
        say(f"{len(configs)} configuration(s) x {len(lrs)} learning rates x {args.seeds} seeds, {args.epochs} "
            f"epoch(s) on {dataset.name} ({dataset.n_train} train / {dataset.n_test} test images)")
    res = trainability(configs, lrs, dataset, options, progress=say, out_dir=args.out, resume=args.resume,
                       workers=args.workers, scheduler=args.scheduler, predict_only=args.predict_only)
    cols = ["config", "max_lr_measured", "max_lr_bad", "max_lr_predicted", "max_lr_predicted_ci_low",
            "max_lr_predicted_ci_high", "ratio", "max_lr_sharpness", "max_lr_sharpness_gd", "first_diverged_lr"]
    if args.predict_only:
        cols = [c for c in cols if "measured" not in c and c not in ("max_lr_bad", "ratio", "first_diverged_lr")]
    if not to_stdout(args):
        print(tabulate(res.configs[[c for c in cols if c in res.configs.columns]], headers="keys", showindex=False,
                       floatfmt=".3g"))
    written = emit(args, res.configs, run_metadata(kind="trainability", lrs=lrs, seeds=list(options.seeds),
                                                   dataset=dataset.name, out=str(args.out)))
    for note in sorted({n for n in res.configs.get("prediction_note", []) if isinstance(n, str) and n}):
        print(f"note: {note}", file=sys.stderr)
    print(f"tables in {args.out}: configs.csv, predictions.csv, lookahead.csv, points.csv, seeds.csv"
          + (" (points.csv and seeds.csv without rows: nothing was trained)" if args.predict_only else "")
          + "".join(f"; wrote {p}" for p in written), file=sys.stderr)
    return 0
