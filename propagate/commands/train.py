"""``propagate train``: train one preset or a custom network on MNIST, with per-layer statistics."""

from __future__ import annotations

import argparse

from propagate.commands._args import nonneg_int, positive_float, positive_int, probability

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

examples:
  propagate train --list-presets
  propagate train --preset selu-bn-lecun-uniform --dataset mnist-5k --out runs/selu-bn
  propagate train --activation tanh --init glorot_normal --depth 10 --width 128 --epochs 2
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("network")
    g.add_argument("--preset", help="a named recipe (see --list-presets)")
    g.add_argument("--list-presets", action="store_true", help="list the presets and exit")
    g.add_argument("--activation", help="activation name (default relu, or the preset's)")
    g.add_argument("--init", help="kernel initializer for every layer (default glorot_uniform, or the preset's)")
    g.add_argument("--depth", type=positive_int, help="hidden layers incl. the first (default 51, the seed)")
    g.add_argument("--width", type=positive_int, help="width of hidden layers 2..depth (default 256)")
    g.add_argument("--first-width", type=positive_int, help="width of the first hidden layer (default 512)")
    g.add_argument("--batchnorm", action=argparse.BooleanOptionalAction, default=None,
                   help="BatchNormalization before hidden layers 2..depth and the readout (seed placement)")
    g.add_argument("--dropout", type=probability, help="dropout rate after every hidden layer")
    g.add_argument("--alpha-dropout", type=probability, help="alpha-dropout rate after every hidden layer (SELU)")
    o = parser.add_argument_group("training")
    o.add_argument("--optimizer", choices=["rmsprop", "sgd", "adam"], help="default rmsprop (Keras: rho 0.9, eps 1e-7)")
    o.add_argument("--lr", type=positive_float, help="learning rate (default 1e-3)")
    o.add_argument("--epochs", type=positive_int, help="default 3")
    o.add_argument("--batch-size", type=positive_int, help="default 128")
    o.add_argument("--seed", type=nonneg_int, default=0, help="weights, shuffles and dropout (default 0)")
    o.add_argument("--probe-size", type=positive_int, default=512, help="training images in the probe batch (default 512)")
    o.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    o.add_argument("--threads", type=positive_int, help="torch CPU threads (default: one per core)")
    d = parser.add_argument_group("data and output")
    d.add_argument("--dataset", choices=["mnist", "mnist-5k", "fashion-mnist", "auto"], default="auto",
                   help="default auto: full MNIST if present or downloadable, else the embedded mnist-5k")
    d.add_argument("--data-dir", help="folder with the IDX files (default: the cache folder)")
    d.add_argument("--out", help="write the run's files (CSV/JSON + checkpoint) to this folder")
    d.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="continue a run found in --out (default on)")
    d.add_argument("--no-progress", action="store_true", help="no progress bar")


def _spec_and_options(args):
    from propagate.presets import get_preset
    from propagate.spec import SEED_CLASSES, SEED_WIDTH, NetworkSpec
    from propagate.train import TrainOptions

    preset = get_preset(args.preset) if args.preset else None
    base = preset.spec() if preset else NetworkSpec.seed("relu", "glorot_uniform", False)
    custom = any(v is not None for v in (args.activation, args.init, args.depth, args.width, args.first_width,
                                         args.batchnorm, args.dropout, args.alpha_dropout))
    if custom:
        depth = args.depth or base.depth
        width = args.width or (base.widths[-1] if base.depth > 1 else SEED_WIDTH)
        first = args.first_width or base.widths[1]
        spec = NetworkSpec.stack(
            depth, width, input_dim=784, first_width=first,
            activation=args.activation or base.activation, init=args.init or base.init,
            batchnorm=base.batchnorm if args.batchnorm is None else args.batchnorm,
            dropout=base.dropout if args.dropout is None else args.dropout,
            alpha_dropout=base.alpha_dropout if args.alpha_dropout is None else args.alpha_dropout,
            out_features=SEED_CLASSES,
        )
    else:
        spec = base
    opts = {k: v for k, v in (("optimizer", args.optimizer), ("lr", args.lr), ("epochs", args.epochs),
                              ("batch_size", args.batch_size), ("threads", args.threads)) if v is not None}
    options = TrainOptions(seed=args.seed, device=args.device, probe_size=args.probe_size, **opts)
    return preset, spec, options


def _print_presets() -> None:
    from tabulate import tabulate

    from propagate.presets import PRESETS

    rows = []
    for p in PRESETS.values():
        rep = p.reported
        seed = "-" if not rep else " | ".join(f"{a:.4f}/{v:.4f}" for a, v in zip(rep["acc"], rep["val_acc"]))
        rows.append([p.name, p.activation, p.init, "yes" if p.batchnorm else "no", p.seed_run or "-", seed])
    print(tabulate(rows, headers=["preset", "activation", "init", "BN", "seed run", "seed acc/val_acc per epoch"]))


def run(args) -> int:
    import sys

    if args.list_presets:
        _print_presets()
        return 0
    preset, spec, options = _spec_and_options(args)

    from tabulate import tabulate

    from propagate.data import load_dataset
    from propagate.train import format_epoch_line, train

    dataset = load_dataset(args.dataset, args.data_dir, progress=not args.no_progress,
                           notify=lambda m: print(f"propagate: {m}", file=sys.stderr))
    name = preset.name if preset else spec.label()
    print(f"{name}: {spec.depth} hidden layers {spec.widths[1]}->{spec.widths[-1]}, {spec.activation}/{spec.init}"
          f"{' + BN' if spec.batchnorm else ''}; {options.optimizer} lr {options.lr:g}, batch {options.batch_size}, "
          f"{options.epochs} epochs on {dataset.name} ({dataset.n_train} train / {dataset.n_test} test)",
          file=sys.stderr)

    def on_epoch(row):
        print(format_epoch_line(row), file=sys.stderr, flush=True)

    result = train(spec, options, dataset, progress=not args.no_progress, callback=on_epoch,
                   run_dir=args.out, resume=args.resume, name=None, preset=preset)
    print(tabulate(result.history, headers="keys", showindex=False, floatfmt=".4f"))
    status = result.status + (f"; files in {args.out}" if args.out else "")
    print(f"status: {status}", file=sys.stderr)
    return 0
