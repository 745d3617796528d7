"""``propagate sweep``: a grid of theory, simulate or train runs on Dask, resumable, into one Parquet table."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from propagate.cluster import check_where
from propagate.commands._args import output_dir, scheduler_address, workers
from propagate.sweep import LENSES, load_plan, point_store, run_sweep

NAME = "sweep"
HELP = "a grid of theory/simulate/train/trainability runs on Dask (here or on a cluster), resumable, into Parquet"
DESCRIPTION = """\
Run every point of a sweep file on Dask and gather the results into
OUT/results.parquet (one row per point and layer for theory and simulate, per
point, seed and epoch for train (per-layer statistics in layers.parquet), per
point, configuration and learning rate for trainability (configs.parquet,
seeds.parquet); columns: point, key, the swept fields, then the command's own).

The sweep file (TOML) names a lens (the command each point runs: theory,
simulate, train or trainability) and the grid. Fields are the command's own
options with dashes as underscores (--sigma-b2 -> sigma_b2; true/false for
flags), so anything the command accepts can be swept; each point is parsed by
the command's own parser, and every point is checked before any work starts.

  lens = "simulate"
  [fixed]                       # one value, shared by every point
  depth = 10
  networks = 2
  [grid]                        # the product of these lists
  activation = ["relu", "tanh"]
  init = ["normal:1", "normal:2"]
  sigma_b2 = "0:0.1:3"          # a range START:STOP:N: N points, both ends (0, 0.05, 0.1)
  # lr = "1e-4:1e-2:3:log"      # a log-spaced range (lens train)
  [zip.size]                    # a zipped group: fields that vary together,
  width = [64, 128, 256]        #   one axis of the product (3 values, not 9)
  inputs = [800, 400, 200]

Each point's result is OUT/points/KEY.json, written atomically; KEY hashes the
point's full configuration (all the command's options, defaults included), the
package version and the dataset's files. A rerun computes only the points
without a result, so an interrupted sweep continues where it stopped. A point
that fails leaves KEY.failed.json (error and traceback), the others go on,
and the next run tries it again; the exit status is 1 and the last line says
how many failed.

Execution: a Dask LocalCluster on 127.0.0.1 with one single-threaded worker
process per core (--workers N to choose), or an existing cluster with
--scheduler tcp://HOST:8786 (started with `dask scheduler` and `dask worker`,
or dask-jobqueue on SLURM; see the README). Workers need propagate installed
and, for train or dataset inputs, the same data files.

examples:
  propagate sweep examples/sweeps/simulate.toml --out runs/sim --workers 2
  propagate sweep examples/sweeps/simulate.toml --out runs/sim --scheduler tcp://127.0.0.1:8786
  propagate sweep examples/sweeps/simulate.toml --out runs/sim --dry-run
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE.toml", help="the sweep file")
    parser.add_argument("--out", required=True, type=output_dir, metavar="DIR",
                        help="the sweep folder (results, per-point files)")
    parser.add_argument("--workers", type=workers, metavar="N",
                        help="worker processes of the local cluster, at most one per core (default: one per core)")
    parser.add_argument("--scheduler", type=scheduler_address, metavar="ADDRESS",
                        help="use an existing Dask cluster, e.g. tcp://127.0.0.1:8786 (not with --workers)")
    parser.add_argument("--dry-run", action="store_true", help="list the points and which are done; compute nothing")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    check_where(args.workers, args.scheduler)
    plan = load_plan(args.file)
    out = Path(args.out)
    if args.dry_run:
        done = 0
        store = point_store(out)
        for p in plan.points:
            finished = store.has(p.key)
            done += finished
            print(f"{p.index:5d}  {p.key}  {'done' if finished else 'todo'}  {p.label()}")
        print(f"sweep: {len(plan.points)} points of lens {plan.lens}, {done} done, {len(plan.points) - done} to compute")
        return 0
    res = run_sweep(plan, out, workers=args.workers, scheduler=args.scheduler, progress=not args.no_progress)
    for point, error in res.failed[:10]:
        print(f"propagate: point {point.index} ({point.label()}) failed: {error}", file=sys.stderr)
    if len(res.failed) > 10:
        print(f"propagate: ... and {len(res.failed) - 10} more (see {out / 'points'}/*.failed.json)", file=sys.stderr)
    rows = f"one row per point and {LENSES[plan.lens].rows}"
    where = f"results in {res.results} ({rows})" if res.results else "no results yet"
    line = (f"sweep: {res.points} points: {res.computed} computed, {res.skipped} already done, "
            f"{len(res.failed)} failed; {where} ({res.seconds:.1f} s)")
    print(line)
    return 1 if res.failed else 0
