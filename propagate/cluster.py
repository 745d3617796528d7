"""The Dask cluster a grid of runs goes to: a local one (one single-threaded worker process per core) or an existing one.

:func:`dask_client` is what :class:`propagate.runner.OnDask` runs on (every
sweep and trainability grid), and :func:`check_where` is the one check of the
``--workers``/``--scheduler`` arguments (and ``client=``) that every command
and library function taking them calls, before any work: the same three ways
to name where work runs, in one place.

- ``client``: an existing ``distributed.Client`` (used as is, not closed);
- ``scheduler``: the address of a running scheduler (``tcp://host:8786``; a
  cluster started by hand with ``dask scheduler`` / ``dask worker``, or by
  dask-jobqueue on SLURM);
- otherwise a ``LocalCluster`` on 127.0.0.1 with ``workers`` single-threaded
  worker processes (default: one per core this process may use). Each worker
  starts with ``OMP_NUM_THREADS=1`` (torch and BLAS use one thread), because
  two multi-threaded torch processes on the same cores spin-wait on each
  other and run many times slower.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

from propagate.errors import UserError

__all__ = ["cores", "check_where", "dask_client", "release_memory", "ONE_THREAD_ENV", "WORKER_CONFIG"]

#: Environment of a local worker process: one thread for OpenMP, MKL and OpenBLAS.
ONE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}

#: Dask configuration under which the local cluster starts its workers (measured with
#: ``benchmarks/bench_sweep.py``, 8 ``simulate`` points of 1.3 s on 2 idle cores):
#:
#: - without the ``MALLOC_TRIM_THRESHOLD_=65536`` that Dask puts into every worker's environment by
#:   default (``distributed.nanny.pre-spawn-environ``, to return freed memory to the system early).
#:   Setting that variable at all switches off glibc's dynamic mmap threshold, so every tensor above
#:   128 KiB is a fresh ``mmap`` whose pages the kernel zeroes again on first touch: one point took
#:   1.58 s with it and 1.23 s without, and a 1-worker sweep 1.27-1.30x the plain loop's time with it.
#:   A value the user's own environment sets is still passed on (Dask's rule);
#: - without the worker's statistical profiler (``distributed.worker.profile``), which walks the
#:   running task's stack every 10 ms in the worker's event-loop thread: switching it off took the
#:   2-worker speed-up over the plain loop from 1.44x to 1.80x (1 worker: 1.06x -> 0.99x the loop).
#: - without pausing a worker whose process memory passes 80% of its limit
#:   (``distributed.worker.memory.pause``): a worker's memory here is its points' own working memory and
#:   the C heap they leave behind, not Dask data that pausing lets it spill or hand on, so a pause frees
#:   nothing, and with every worker paused the cluster waits forever. Seen: the scaling grid's width-1024
#:   cells left two workers at 9.9 GB of their 12 GB each, both paused, and the grid stood still for 15
#:   minutes. Workers now give their freed heap back after every point (:func:`release_memory`); a worker
#:   that really runs out of memory is still restarted by its nanny at 95% (Dask's ``terminate``).
WORKER_CONFIG = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
                 "distributed.worker.profile.enabled": False,
                 "distributed.worker.memory.pause": False}


def release_memory() -> bool:
    """Give the C heap's free memory back to the system (glibc's ``malloc_trim(0)``); ``False`` without glibc.

    A worker lives for many points of very different sizes, and without
    ``MALLOC_TRIM_THRESHOLD_`` (see :data:`WORKER_CONFIG`) glibc keeps the
    memory the large ones freed, so the process's resident memory only grows.
    Called after every point that runs on a worker; takes milliseconds.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim this way
        return False
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    trim(0)
    return True


def cores() -> int:
    """Cores this process may run on (its CPU affinity, which a container or batch job may narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def check_where(workers: int | None = None, scheduler: str | None = None, client=None) -> None:
    """Refuse (:class:`UserError`, one line) a contradictory or impossible choice of where work runs.

    ``workers`` (processes of a local cluster) goes with neither a
    ``scheduler`` address nor a ``client``, and must be a whole number >= 1;
    ``scheduler`` and ``client`` exclude each other, and an empty ``scheduler``
    is refused (it is not "no scheduler"). ``None`` everywhere is the
    caller's default (in process, or a local cluster of :func:`cores` workers).
    """
    if scheduler is not None and not (isinstance(scheduler, str) and scheduler.strip()):
        # an empty address would otherwise mean "no scheduler" and silently start a local cluster
        raise UserError(f"the scheduler address must be [PROTOCOL://]HOST:PORT such as tcp://127.0.0.1:8786, "
                        f"got {scheduler!r}")
    if workers is not None and (scheduler or client is not None):
        raise UserError("--workers applies to the local cluster; drop it with --scheduler")
    if scheduler and client is not None:
        raise UserError("give a scheduler address or a client, not both")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise UserError(f"workers must be a whole number >= 1, got {workers!r}")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or exc.__class__.__name__


@contextlib.contextmanager
def dask_client(workers: int | None = None, scheduler: str | None = None, client=None) -> Iterator[Any]:
    """A ``distributed.Client`` for the block: ``client`` as is, one connected to ``scheduler``, or a new local cluster.

    A local cluster (``workers`` processes, default :func:`cores`) is closed at
    the end of the block; an unreachable ``scheduler`` raises
    :class:`propagate.errors.UserError` with one line.
    """
    check_where(workers, scheduler, client)
    if client is not None:
        yield client
        return
    import logging

    from distributed import Client, LocalCluster

    if scheduler:
        from distributed.comm.addressing import get_address_host_port

        try:
            # parsed first, without a client: Client() starts an IO loop before it parses, and that loop may
            # not come up within distributed's 10 s on a loaded machine (an AssertionError, not this message)
            get_address_host_port(scheduler)
            c = Client(scheduler, timeout="10s")
        except ValueError as exc:  # Dask's word for an address it cannot parse ('not an address', 'http://...')
            raise UserError(f"{scheduler!r} is not a Dask scheduler address ({_one_line(exc)}); give "
                            f"[PROTOCOL://]HOST:PORT, e.g. tcp://127.0.0.1:8786") from None
        except (OSError, TimeoutError) as exc:
            raise UserError(f"cannot reach the Dask scheduler at {scheduler!r}: {_one_line(exc)}") from None
        try:
            yield c
        finally:
            c.close()
        return
    import dask

    n = workers or cores()
    # Dask's own log lines stay quiet (a lost worker or a closing connection is handled, and a failed
    # task is reported by the caller). Workers start with WORKER_CONFIG.
    with dask.config.set(WORKER_CONFIG):
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address=":0", silence_logs=logging.CRITICAL, env=dict(ONE_THREAD_ENV))
    try:
        c = Client(cluster)
        try:
            yield c
        finally:
            c.close()
    finally:
        cluster.close()
