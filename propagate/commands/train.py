"""``propagate train``: train one preset or a custom network on MNIST, with per-layer statistics."""

from __future__ import annotations

import argparse
import sys

from propagate.commands._args import (check_device, data_dir, depth, device, nonneg_int, output_dir, positive_float,
                                      positive_int, probability, seed, threads, width)
from propagate.commands._spec_args import add_spec_arguments, spec_from_args
from propagate.limits import check_seeds, require_memory
from propagate.runfolder import check_folder
from propagate.runstore import check_checkpoint, run_identity

NAME = "train"
HELP = "train a preset (the seed's runs) or a custom deep MLP on MNIST, recording per-layer statistics"
DESCRIPTION = """\
Train the seed's 52-layer MNIST network (784 -> Dense(512) -> 50 x Dense(256) -> Dense(10))
with a named preset, or a custom network, and record per-layer statistics of a fixed
probe batch at initialization and after every epoch.

Flags given with --preset override the preset's settings. --depth counts hidden layers
(the first --first-width wide, the others --width): the seed is --depth 51.
Each epoch prints a Keras-like line on stderr; the history table goes to stdout.
With --out DIR the run writes history.csv, layers.csv, spec.json and a checkpoint
there after every epoch, and resumes from it unless --no-resume.

--seeds N trains N networks of the same configuration (seeds --seed .. --seed+N-1, each with
its own initialization, shuffling order and dropout masks) together as one batched model;
seed k of an ensemble is the network of a single run with --seed k. history.csv and
layers.csv get one row per seed (a seed column) and keep every seed trained in --out;
summary.csv and the printed summary give, for the seeds asked for, each metric's mean
with its 95% Student t confidence interval (<metric>_mean, <metric>_ci_low,
<metric>_ci_high, n_seeds), built on the logit scale for accuracies (it stays in [0, 1])
and the log scale for losses (it stays positive). A seed that diverges stops alone; the
others go on.

examples:
  propagate train --list-presets
  propagate train --preset selu-bn-lecun-uniform --dataset mnist-5k --out runs/selu-bn
  propagate train --preset selu-lecun-normal --dataset mnist-5k --seeds 4 --epochs 1 --out runs/snn
  propagate train --activation tanh --init glorot_normal --depth 10 --width 128 --epochs 2
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("network")
    g.add_argument("--preset", help="a named recipe (see --list-presets)")
    g.add_argument("--list-presets", action="store_true", help="list the presets and exit")
    add_spec_arguments(parser, activation=None, init=None, depth=None, inputs=False,
                       title="network (unset flags: the preset's, else the seed's relu/glorot_uniform, depth 51)")
    o = parser.add_argument_group("training")
    o.add_argument("--optimizer", choices=["rmsprop", "sgd", "adam"], help="default rmsprop (Keras: rho 0.9, eps 1e-7)")
    o.add_argument("--lr", type=positive_float, help="learning rate (default 1e-3)")
    o.add_argument("--epochs", type=positive_int, help="default 3")
    o.add_argument("--batch-size", type=positive_int, help="default 128")
    o.add_argument("--rho", type=probability, help="RMSprop's decay of the squared-gradient average, in [0, 1) "
                                                   "(default 0.9)")
    o.add_argument("--warmup", type=nonneg_int, metavar="STEPS",
                   help="linear warmup: step t uses lr * min(1, t / STEPS) (default 0: none)")
    o.add_argument("--seed", type=seed, default=0, help="weights, shuffles and dropout (default 0)")
    o.add_argument("--seeds", type=positive_int, default=1,
                   help="train N networks (seeds --seed .. --seed+N-1) together as one batched ensemble; "
                        "files get a seed column and summary.csv the mean with its 95%% Student t interval (default 1)")
    o.add_argument("--probe-size", type=positive_int, default=512, help="training images in the probe batch (default 512)")
    o.add_argument("--device", type=device, default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    o.add_argument("--threads", type=threads, help="torch CPU threads (default: one per core)")
    d = parser.add_argument_group("data and output")
    d.add_argument("--dataset", choices=["mnist", "mnist-5k", "fashion-mnist", "auto"], default="auto",
                   help="default auto: full MNIST if present or downloadable, else the embedded mnist-5k")
    d.add_argument("--data-dir", type=data_dir,
                   help="folder with the IDX files (read, never downloaded into; default: the cache folder)")
    d.add_argument("--out", type=output_dir, help="write the run's files (CSV/JSON + checkpoint) to this folder")
    d.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="continue a run found in --out (default on)")
    d.add_argument("--no-progress", action="store_true", help="no progress bar")


def spec_and_options(args):
    """``(preset or None, NetworkSpec, TrainOptions)`` of the parsed flags (also used by ``propagate sweep``)."""
    from propagate.presets import get_preset
    from propagate.spec import SEED_CLASSES, NetworkSpec
    from propagate.train import TrainOptions

    check_seeds(args.seed, args.seeds)  # the ensemble's last seed too
    preset = get_preset(args.preset) if args.preset else None
    base = preset.spec() if preset else NetworkSpec.seed("relu", "glorot_uniform", False)
    custom = any(getattr(args, k, None) is not None for k in (
        "activation", "init", "depth", "width", "first_width", "input_dim", "sigma_b2", "batchnorm", "layernorm",
        "residual", "dropout", "alpha_dropout"))
    spec = spec_from_args(args, base=base, out_features=SEED_CLASSES) if custom else base
    opts = {k: v for k, v in (("optimizer", args.optimizer), ("lr", args.lr), ("epochs", args.epochs),
                              ("batch_size", args.batch_size), ("rho", args.rho), ("warmup", args.warmup),
                              ("threads", args.threads)) if v is not None}
    options = TrainOptions(seed=args.seed, seeds=args.seeds, device=args.device, probe_size=args.probe_size, **opts)
    return preset, spec, options


#: Images the size estimate assumes are on the device (the largest dataset, MNIST's 70,000).
_MAX_IMAGES = 70_000


def check_training_size(spec, options) -> None:
    """Refuse (UserError, with the estimate) a network or ensemble whose training would not fit in memory."""
    from propagate.train import estimate_memory

    # every seed of an ensemble has its own weights, optimizer state and activations; the images are shared
    need = estimate_memory(spec, options, options.seeds, _MAX_IMAGES, 0)
    seeds = f"{options.seeds} seeds of " if options.seeds > 1 else ""
    require_memory(need, f"training {seeds}{spec.depth} hidden layers of up to {max(spec.widths[1:])} units",
                   "use fewer --seeds, or a smaller --width/--first-width or --depth")


def _print_presets() -> None:
    from tabulate import tabulate

    from propagate.presets import PRESETS

    rows = []
    for p in PRESETS.values():
        rep = p.reported
        seed = "-" if not rep else " | ".join(f"{a:.4f}/{v:.4f}" for a, v in zip(rep["acc"], rep["val_acc"]))
        rows.append([p.name, p.activation, p.init, "yes" if p.batchnorm else "no", p.seed_run or "-", seed])
    print(tabulate(rows, headers=["preset", "activation", "init", "BN", "seed run", "seed acc/val_acc per epoch"]))


def _summary_cells(summary) -> list[dict]:
    """Rows of ``summary`` as ``mean [low, high]`` cells per metric (mean alone without an interval)."""
    metrics = [c[: -len("_mean")] for c in summary.columns if c.endswith("_mean")]
    rows = []
    for _, r in summary.iterrows():
        row = {"epoch": int(r["epoch"]), "seeds": int(r["n_seeds"])}
        for m in metrics:
            mean, lo, hi = r[f"{m}_mean"], r[f"{m}_ci_low"], r[f"{m}_ci_high"]
            row[m] = f"{mean:.4f}" if lo != lo else f"{mean:.4f} [{lo:.4f}, {hi:.4f}]"
        rows.append(row)
    return rows


def run(args) -> int:
    if args.list_presets:
        _print_presets()
        return 0
    preset, spec, options = spec_and_options(args)
    check_training_size(spec, options)
    check_device(options.device)
    if args.out:  # whose the folder is (kind, foreign files, lock), before any data loads
        check_folder(args.out, {"kind": "train"}, resume=False)

    from tabulate import tabulate

    from propagate.data import load_dataset, validate_dataset
    from propagate.train import format_epoch_line, train

    dataset = load_dataset(args.dataset, args.data_dir, download=args.data_dir is None, progress=not args.no_progress,
                           notify=lambda m: print(f"propagate: {m}", file=sys.stderr))
    validate_dataset(dataset, input_dim=spec.widths[0])
    if args.out:  # refusals (busy, other settings or data, an unreadable checkpoint) come before the banner
        check_folder(args.out, run_identity(spec, options, dataset), resume=args.resume)
        if args.resume:
            check_checkpoint(args.out, spec, options)
    name = preset.name if preset else spec.label()
    print(f"{name}: {spec.depth} hidden layers {spec.widths[1]}->{spec.widths[-1]}, {spec.activation}/{spec.init}"
          f"{' + BN' if spec.batchnorm else ''}; {options.optimizer} lr {options.lr:g}, batch {options.batch_size}, "
          f"{options.epochs} epochs on {dataset.name} ({dataset.n_train} train / {dataset.n_test} test)"
          f"{f'; seeds {options.seed}..{options.seed + options.seeds - 1}' if options.seeds > 1 else ''}",
          file=sys.stderr)

    def on_epoch(row):
        print(format_epoch_line(row), file=sys.stderr, flush=True)

    result = train(spec, options, dataset, progress=not args.no_progress, callback=on_epoch,
                   run_dir=args.out, resume=args.resume, name=None, preset=preset)
    print(tabulate(result.history, headers="keys", showindex=False, floatfmt=".4f"))
    if len(result.seeds) > 1:
        print("\nmean over seeds [95% Student t interval]:")
        print(tabulate(_summary_cells(result.summary), headers="keys", showindex=False))
    status = result.status
    if result.diverged_seeds and not result.diverged:
        status += f" (diverged: seed{'s' if len(result.diverged_seeds) > 1 else ''} "
        status += f"{', '.join(str(s) for s in result.diverged_seeds)})"
    status += f"; files in {args.out}" if args.out else ""
    print(f"status: {status}", file=sys.stderr)
    return 0
