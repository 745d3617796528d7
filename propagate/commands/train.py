"""``propagate train``: train one preset or a custom network on MNIST, with per-layer statistics."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from propagate.commands._args import (
    add_ensemble_arguments,
    check_device,
    data_dir,
    nonneg_int,
    output_dir,
    positive_float,
    positive_int,
    probability,
    refuse_unused,
)
from propagate.commands._output import add_output_arguments, check_outputs, emit, to_stdout
from propagate.commands._spec_args import (
    DEFAULT_ACTIVATION,
    DEFAULT_INIT,
    DEFAULT_NETWORK,
    add_spec_arguments,
    custom_network,
    spec_from_args,
)
from propagate.errors import UserError
from propagate.io import check_files_in, run_metadata
from propagate.limits import check_seeds, require_memory
from propagate.runfolder import check_folder
from propagate.runstore import (CHECKPOINT_FILE, HISTORY_FILE, LAYERS_FILE, SPEC_FILE, SUMMARY_FILE, check_checkpoint,
                                run_identity)
from propagate.steplog import StepLog, check_tensorboard, steps_per_epoch

NAME = "train"
HELP = "train a preset (the lecture demo's runs) or a custom deep MLP on MNIST, recording per-layer statistics"
DESCRIPTION = """\
Train a network on MNIST (or Fashion-MNIST) and record per-layer statistics of a fixed
probe batch at initialization and after every epoch. --preset names one of the lecture
demo's recipes (the 2017 demo: 784 inputs, 51 hidden layers Dense(512) then 50 x
Dense(256), readout Dense(10); see --list-presets); flags given with --preset override the
preset's settings. Without --preset every unset flag takes the default network's:
<<default>>. --depth counts hidden layers (the first --first-width wide, the others --width).

Each epoch prints a Keras-like line on stderr; the history table (one row per seed and
epoch) goes to stdout, or as --json [FILE] / --csv FILE. With --out DIR the run writes
history.csv, layers.csv, summary.csv (each with its .meta.json), spec.json and a checkpoint
there after every epoch, and resumes from it unless --no-resume.

--seeds N trains N networks of the same configuration (random seeds --seed .. --seed+N-1,
each with its own initialization, shuffling order and dropout masks) together as one
batched model; seed k of an ensemble is the network of a single run with --seed k, to
float32 round-off at every step (training amplifies round-off over epochs). RMSprop's update
of a seed is bit for bit the same wherever the seed sits in the ensemble.
history.csv and layers.csv get one row per seed (a seed column) and keep every seed
trained in --out; summary.csv and the printed summary give, for the seeds asked for, each
metric's mean with its 95% Student t confidence interval (<metric>_mean, <metric>_ci_low,
<metric>_ci_high, n_seeds), built on the logit scale for accuracies (it stays in [0, 1])
and the log scale for losses (it stays positive). A seed that diverges stops alone; the
others go on.

--log-every K writes steps.csv in --out: every K-th optimizer step, per seed and weight
layer, the step's batch loss and accuracy, learning rate, gradient norm and the layer's
update ratio ||dW|| / ||W|| (propagate.steplog). --tensorboard DIR writes the same as
TensorBoard event files (pip install 'propagate[tensorboard]').

examples:
  propagate train --list-presets
  propagate train --preset selu-bn-lecun-uniform --dataset mnist-5k --out runs/selu-bn
  propagate train --preset selu-lecun-normal --dataset mnist-5k --seeds 4 --epochs 1 --out runs/snn
  propagate train --activation tanh --init glorot_normal --depth 10 --width 128 --epochs 2 --csv tanh.csv
  propagate train --depth 10 --width 128 --epochs 1 --dataset mnist-5k --out runs/steps --log-every 10
""".replace("<<default>>", str(DEFAULT_NETWORK))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("network")
    g.add_argument("--preset", help="a named recipe (see --list-presets)")
    g.add_argument("--list-presets", action="store_true", help="list the presets and exit")
    add_spec_arguments(parser, inputs=False, base="the preset's, else ",
                       title="network (unset flags: the preset's, else the default network's)")
    o = parser.add_argument_group("training")
    o.add_argument("--optimizer", choices=["rmsprop", "sgd", "adam"], help="default rmsprop (Keras: rho 0.9, eps 1e-7)")
    o.add_argument("--lr", type=positive_float, help="learning rate (default 1e-3)")
    o.add_argument("--epochs", type=positive_int, help="default 3")
    o.add_argument("--batch-size", type=positive_int, help="default 128")
    o.add_argument("--rho", type=probability, help="RMSprop's decay of the squared-gradient average, in [0, 1) "
                                                   "(default 0.9)")
    o.add_argument("--warmup", type=nonneg_int, metavar="STEPS",
                   help="linear warmup: step t uses lr * min(1, t / STEPS) (default 0: none)")
    add_ensemble_arguments(o, "train N networks (random seeds --seed .. --seed+N-1) together as one batched ensemble; "
                              "files get a seed column and summary.csv the mean with its 95%% Student t interval "
                              "(default 1)")
    d = parser.add_argument_group("data and output")
    d.add_argument("--dataset", choices=["mnist", "mnist-5k", "fashion-mnist", "auto"], default="auto",
                   help="default auto: full MNIST if present or downloadable, else the embedded mnist-5k")
    d.add_argument("--data-dir", type=data_dir,
                   help="folder with the IDX files (read, never downloaded into; default: the cache folder)")
    d.add_argument("--out", type=output_dir, help="write the run's files (CSV/JSON + checkpoint) to this folder")
    d.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="continue a run found in --out (default on)")
    d.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_output_arguments(d, what="the history (one row per seed and epoch), with the summary over seeds in JSON")
    s = parser.add_argument_group("per-step log")
    s.add_argument("--log-every", type=positive_int, metavar="K",
                   help="write --out/steps.csv: every K-th step's loss, accuracy, lr, gradient norm and per-layer "
                        "update ratio ||dW||/||W||, per seed")
    s.add_argument("--tensorboard", type=output_dir, metavar="DIR",
                   help="write the per-step log (every --log-every steps, default 1) as TensorBoard event files to DIR")


def spec_and_options(args):
    """``(preset or None, NetworkSpec, TrainOptions)`` of the parsed flags (also used by ``propagate sweep``)."""
    from propagate.presets import get_preset
    from propagate.spec import DEMO_CLASSES, NetworkSpec
    from propagate.train import TrainOptions

    check_seeds(args.seed, args.seeds)  # the ensemble's last seed too
    if args.preset is not None and not args.preset.strip():
        raise UserError("--preset needs a name (see --list-presets); leave it out for the default network")
    preset = get_preset(args.preset) if args.preset else None
    base = preset.spec() if preset else NetworkSpec.demo(DEFAULT_ACTIVATION, DEFAULT_INIT, False)
    spec = spec_from_args(args, base=base, out_features=DEMO_CLASSES) if custom_network(args) else base
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
        reported = "-" if not rep else " | ".join(f"{a:.4f}/{v:.4f}" for a, v in zip(rep["acc"], rep["val_acc"]))
        rows.append([p.name, p.activation, p.init, "yes" if p.batchnorm else "no", p.demo_run or "-", reported])
    print(tabulate(rows, headers=["preset", "activation", "init", "BN", "demo run",
                                  "demo's reported acc/val_acc per epoch"]))
    print("(the lecture demo's runs 1-5 and two recipes it left out; every preset is the demo's network: 51 hidden "
          "layers, Dense(512) then 50 x Dense(256); reported numbers: one run each, lr 1e-3, full MNIST)")


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


#: The per-step log's file in --out (:func:`_step_log`).
STEPS_FILE = "steps.csv"


def run_files(args) -> list[str]:
    """The files ``train --out DIR`` writes in DIR (every table's ``.meta.json`` included)."""
    tables = [HISTORY_FILE, LAYERS_FILE, SUMMARY_FILE] + ([STEPS_FILE] if args.log_every else [])
    return [n for t in tables for n in (t, t + ".meta.json")] + [SPEC_FILE, CHECKPOINT_FILE]


def run(args) -> int:
    if args.list_presets:
        _print_presets()
        return 0
    # --json/--csv may not name a file the run writes in --out (nor its sidecar)
    check_outputs(args, [(f"the run's {name!r} in --out", Path(args.out) / name) for name in run_files(args)]
                  if args.out else ())
    refuse_unused(args, {"--log-every": ("--out or --tensorboard (where the log goes)", bool(args.out or args.tensorboard))})
    preset, spec, options = spec_and_options(args)
    check_training_size(spec, options)
    check_device(options.device)
    if args.out:  # whose the folder is (kind, foreign files, lock), before any data loads
        check_folder(args.out, {"kind": "train"}, resume=False)
        check_files_in(args.out, run_files(args))  # a folder where checkpoint.pt goes: refused before training
    if args.tensorboard:

        check_tensorboard()

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
    steps = _step_log(args, options, dataset)
    saved = set()

    def on_epoch(row):
        print(format_epoch_line(row), file=sys.stderr, flush=True)
        if steps is not None and row["epoch"] not in saved:  # every step of the epoch is logged by now
            saved.add(row["epoch"])
            steps.save()

    try:
        result = train(spec, options, dataset, progress=not args.no_progress, callback=on_epoch,
                       run_dir=args.out, resume=args.resume, name=None, preset=preset,
                       on_step=None if steps is None else steps.callback)
    finally:
        if steps is not None:
            steps.close()
    if steps is not None:
        steps.save()
    _report(args, result, run_metadata(seed=options.seed, seeds=result.seeds, spec=spec.to_dict(),
                                       options=options.to_dict(), preset=preset.name if preset else None,
                                       dataset=dataset.name))
    return 0


def _step_log(args, options, dataset):
    """The :class:`~propagate.steplog.StepLog` of --log-every/--tensorboard (``None`` without either)."""
    if not (args.log_every or args.tensorboard):
        return None
    return StepLog(args.log_every or 1, options=options, steps_per_epoch=steps_per_epoch(dataset.n_train, options),
                   path=Path(args.out) / STEPS_FILE if args.out else None, resume=args.resume,
                   tensorboard=args.tensorboard, meta={"dataset": dataset.name, "seeds": options.seed_list})


def _report(args, result, meta: dict) -> None:
    """The history table (stdout, or --json/--csv), the summary over seeds and the status line."""
    from tabulate import tabulate

    summary = result.summary
    document = None
    if args.json is not None:
        import json

        document = {"meta": meta, "rows": json.loads(result.history.to_json(orient="records", double_precision=15)),
                    "summary": json.loads(summary.to_json(orient="records", double_precision=15)),
                    "status": result.status}
    if not to_stdout(args):
        print(tabulate(result.history, headers="keys", showindex=False, floatfmt=".4f"))
        if len(result.seeds) > 1:
            print("\nmean over seeds [95% Student t interval]:")
            print(tabulate(_summary_cells(summary), headers="keys", showindex=False))
    written = emit(args, result.history, meta, document)
    status = result.status
    if result.diverged_seeds and not result.diverged:
        status += f" (diverged: seed{'s' if len(result.diverged_seeds) > 1 else ''} "
        status += f"{', '.join(str(s) for s in result.diverged_seeds)})"
    status += f"; files in {args.out}" if args.out else ""
    status += "".join(f"; wrote {p}" for p in written)
    print(f"status: {status}", file=sys.stderr)
