"""Cost of running points through ``propagate sweep`` (Dask) against a plain loop in one process.

Prints, measured in this one run:

- the plain loop: every point computed in this process, one after another
  (``propagate.sweep.compute_point``, torch on one thread);
- the sweep on a LocalCluster of 1 worker: its wall time against the loop's
  (goal <= 1.1x), without and with the cluster's start-up (workers started and
  torch imported once before the warm timing; the start-up figure includes
  both);
- the sweep on 2 workers: the speed-up over the loop (goal >= 1.8x for points
  of a few seconds each; needs 2 idle cores);
- for comparison, 1 and 2 workers started with Dask's default worker settings
  (which :func:`propagate.cluster.dask_client` changes; see
  ``propagate.cluster.WORKER_CONFIG``).

Points are ``simulate`` runs (tanh, 40 layers x 512 units, 2000 samples, 2 networks:
a few seconds each on one core), differing in their seed. Results go to
temporary folders; per-point result writing and gathering into Parquet are
inside the sweep's timing.

Usage: ``python benchmarks/bench_sweep.py [--quick] [--points N]``
(``--quick``: small points of ~0.3 s, to check that the script works).
Run on an idle machine: other processes on the cores make both ratios meaningless.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")  # the loop gets the same one thread per point as a worker
os.environ.setdefault("MKL_NUM_THREADS", "1")

FULL = {"activation": "tanh", "init": "normal:1.5", "sigma_b2": 0.05, "depth": 40, "width": 512,
        "samples": 2000, "seeds": 2}
QUICK = {**FULL, "depth": 10, "width": 128, "samples": 500}


def make_plan(fixed: dict, points: int):
    from propagate.sweep import plan_from_dict

    fixed = dict(fixed)
    seed = fixed.pop("seed", 0)
    return plan_from_dict({"lens": "simulate", "fixed": fixed, "grid": {"seed": list(range(seed, seed + points))}})


def plain_loop(plan) -> float:
    from propagate.sweep import compute_point

    t0 = time.perf_counter()
    for p in plan.points:
        res = compute_point(plan.lens, p.argv, p.dataset, threads=1)
        assert res["status"] == "ok", res.get("error")
    return time.perf_counter() - t0


def sweep_on(plan, warm, workers: int, tuned: bool = True) -> tuple[float, float]:
    """(start-up seconds, sweep seconds on warm workers) on a fresh LocalCluster of ``workers``.

    ``tuned``: start the workers as :func:`propagate.cluster.dask_client` does (its ``WORKER_CONFIG``);
    ``False``: with Dask's defaults (``MALLOC_TRIM_THRESHOLD_=65536``, the statistical profiler on).

    ``warm``: a one-point plan run on every worker first (imports and first-call caches), as the loop's warm-up.
    """
    import logging

    import dask
    import pyarrow.parquet  # noqa: F401 - the driver's Parquet writer, loaded outside the timing as for the loop
    from distributed import Client, LocalCluster

    from propagate.cluster import WORKER_CONFIG, ONE_THREAD_ENV

    from propagate.sweep import compute_point, run_sweep

    t0 = time.perf_counter()
    with dask.config.set(WORKER_CONFIG if tuned else {}):
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address=":0", silence_logs=logging.CRITICAL, env=dict(ONE_THREAD_ENV))
    with cluster, Client(cluster) as c:
        p = warm.points[0]
        c.run(compute_point, warm.lens, list(p.argv), p.dataset, 1)  # on every worker: imports, first-call caches
        startup = time.perf_counter() - t0
        with tempfile.TemporaryDirectory() as out:
            t1 = time.perf_counter()
            res = run_sweep(plan, out, client=c, progress=False)
            wall = time.perf_counter() - t1
        assert res.computed == len(plan.points) and not res.failed
    return startup, wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small points, to check the script")
    ap.add_argument("--points", type=int, default=None, help="points in the grid (default 8; quick 4)")
    args = ap.parse_args()
    fixed = QUICK if args.quick else FULL
    n = args.points or (4 if args.quick else 8)
    plan = make_plan(fixed, n)
    print(f"{n} simulate points: {fixed}; cores: {os.cpu_count()}")

    warm = make_plan({**fixed, "seed": 10_000}, 1)  # a point outside the grid
    plain_loop(warm)  # warm-up: imports and first-call costs stay out of the loop's timing
    loop = plain_loop(plan)
    print(f"plain loop in this process:      {loop:8.2f} s  ({loop / n:.2f} s per point)")
    s1, w1 = sweep_on(plan, warm, 1)
    print(f"sweep, 1 worker (warm):          {w1:8.2f} s  = {w1 / loop:.3f}x the loop (goal <= 1.1x)")
    print(f"sweep, 1 worker, with start-up:  {s1 + w1:8.2f} s  = {(s1 + w1) / loop:.3f}x (start-up {s1:.2f} s)")
    s2, w2 = sweep_on(plan, warm, 2)
    print(f"sweep, 2 workers (warm):         {w2:8.2f} s  = speed-up {loop / w2:.2f}x over the loop (goal >= 1.8x)")
    print(f"sweep, 2 workers, with start-up: {s2 + w2:8.2f} s  = speed-up {loop / (s2 + w2):.2f}x (start-up {s2:.2f} s)")
    _, d1 = sweep_on(plan, warm, 1, tuned=False)
    _, d2 = sweep_on(plan, warm, 2, tuned=False)
    print(f"for comparison, with Dask's default worker settings: 1 worker {d1:.2f} s = {d1 / loop:.3f}x the loop, "
          f"2 workers {d2:.2f} s = speed-up {loop / d2:.2f}x")


if __name__ == "__main__":
    main()
