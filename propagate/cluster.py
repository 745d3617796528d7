"""The Dask cluster a grid of runs goes to: a local one (one single-threaded worker process per core) or an existing one.

:func:`dask_client` is shared by :func:`propagate.sweep.run_sweep` (any grid of
command runs) and :func:`propagate.trainability.trainability` (its grid of
learning rates): the same three ways to name where work runs, in one place.

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

__all__ = ["cores", "dask_client", "ONE_THREAD_ENV"]

#: Environment of a local worker process: one thread for OpenMP, MKL and OpenBLAS.
ONE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def cores() -> int:
    """Cores this process may run on (its CPU affinity, which a container or batch job may narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


@contextlib.contextmanager
def dask_client(workers: int | None = None, scheduler: str | None = None, client=None) -> Iterator[Any]:
    """A ``distributed.Client`` for the block: ``client`` as is, one connected to ``scheduler``, or a new local cluster.

    A local cluster (``workers`` processes, default :func:`cores`) is closed at
    the end of the block; an unreachable ``scheduler`` raises
    :class:`propagate.errors.UserError` with one line.
    """
    if client is not None:
        yield client
        return
    import logging

    from distributed import Client, LocalCluster

    if scheduler:
        try:
            c = Client(scheduler, timeout="10s")
        except (OSError, TimeoutError) as exc:
            raise UserError(f"cannot reach the Dask scheduler at {scheduler}: {exc}".splitlines()[0]) from None
        try:
            yield c
        finally:
            c.close()
        return
    n = workers or cores()
    # Dask's own log lines stay quiet (a lost worker or a closing connection is handled, and a failed
    # task is reported by the caller)
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
