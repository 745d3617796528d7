"""The report's heavy work as points of the shared runner, and the one place that decides where they run.

A report's heavy parts are its training ensembles (every preset at every
learning rate), the self-normalization section's training runs, the
trainability grid and the scaling grid. Each is a set of points of
:mod:`propagate.runner`, kept in the report's work folder (a
:class:`propagate.runner.PointStore` per part; the grids keep theirs in their
own folders), so a stopped build computes again only the points it had not
finished. A training ensemble is one point: :func:`train_point` trains
configurations of one architecture (presets that differ only in their
initializer) as one batched model (:func:`propagate.train.train_group`) and
returns each configuration's tables as data (:func:`run_frames` reads them
back), so the result does not depend on where the point ran.

:class:`ReportRunner` decides where, once for the whole build:

- in process (no ``workers``, ``scheduler`` or ``client``): a part is computed
  when the page first asks for it (:meth:`ReportRunner.part`), one point after
  another, in the order the page reads them;
- on Dask: one client for the build (a local cluster of ``workers``
  single-threaded processes, a running ``scheduler``, or the caller's
  ``client``). Every heavy part is started at the beginning, each in a
  background thread of this process that submits its points and waits for
  them, so the points of all parts wait in one queue; the page's light
  computations (the SELU solve, the phase diagram, the residual, spectrum and
  sweep sections' simulations, the self-normalization section's simulation,
  the first-epoch traces) are single tasks (:meth:`ReportRunner.task`) in the
  same queue, and every figure is drawn on a worker too
  (:meth:`ReportRunner.figure`), so this process only waits, writes tables
  and assembles the page in order, each section waiting only for its own
  part. Figures go first, then the short tasks and simulation points the page
  waits for in its order, then the training ensembles (the longest points, so
  none is left for the end), the self-normalization runs and the grids'
  points (:data:`PRIORITY`).

Points carry their torch thread count (:attr:`ReportRunner.threads`: 1 on
Dask, where this process also computes its own parts with one thread, so
that it does not slow the workers on the same cores); at the same thread count
a report's numbers are the same in process and on any cluster, bit for bit.
Run folders (per-epoch checkpoints of each training configuration, beside the
point store) are written only where the points run on this machine (in process
or on a local cluster); on a scheduler's workers a stopped ensemble restarts
from its beginning.

An interrupted build (an exception, or Ctrl-C) cancels what is queued: the
engines' futures, then the client it opened (a local cluster is closed); with a
caller's ``client`` the grids stop at their next finished point.
"""

from __future__ import annotations

import contextlib
import json
import math
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

from propagate.cluster import check_where, dask_client
from propagate.errors import UserError
from propagate.io import to_json
from propagate.runner import InProcess, OnDask, Point, PointStore, Shared, point_key, run_points
from propagate.runstore import HISTORY_COLUMNS, summarize_history
from propagate.stats import layer_table

__all__ = ["ReportRunner", "Aborted", "train_point", "train_configurations", "run_frames", "run_result",
           "PRIORITY"]

#: Dask priorities of the report's points: a figure as soon as its data is there, then the short tasks and
#: simulation points the page needs early (the page waits for them in its order, and draws nothing until
#: they are done), then the longest points (training ensembles, self-normalization runs), then the grids'
#: points (which trainability and scaling submit at Dask's default priority 0).
PRIORITY = {"figure": 4, "task": 3, "simulation": 3, "training": 2, "selfnorm": 1, "grid": 0}
#: Training options that change no number of a point (not in its key, as :mod:`propagate.trainability` keys).
_NOT_IN_KEY = ("device", "threads")


class Aborted(RuntimeError):
    """The build stopped: a background part's progress callback ends its grid at the next finished point."""


class _Deferred:
    """A part computed in this thread when its result is first asked for (the in-process runner's job)."""

    def __init__(self, fn: Callable, args: tuple, kwargs: dict):
        self._call = (fn, args, kwargs)
        self._done = False
        self._value = None

    def result(self):
        if not self._done:
            fn, args, kwargs = self._call
            self._value = fn(*args, **kwargs)
            self._done = True
        return self._value


class ReportRunner:
    """Where a report's heavy parts run (module docstring): in process, or all at once on one Dask client.

    ``workers``/``scheduler``/``client``: as :func:`propagate.cluster.dask_client`
    (checked by :func:`propagate.cluster.check_where`); none of them: in
    process. ``threads``: torch threads of every point and, on Dask, of this
    process while the build runs (default: ``None`` in process, i.e. one per
    core for training as :class:`propagate.train.TrainOptions` has it, and 1 on
    Dask). Use it as a context manager: the client (and the background
    threads) live for the ``with`` block.
    """

    def __init__(self, workers: int | None = None, scheduler: str | None = None, client=None, *,
                 threads: int | None = None):
        check_where(workers, scheduler, client)
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise UserError(f"threads must be a whole number >= 1, got {threads!r}")
        self.on_dask = workers is not None or bool(scheduler) or client is not None
        self.threads = threads if threads is not None else (1 if self.on_dask else None)
        #: whether the points' files (run folders) are on this machine: in process or a local cluster
        self.local = not scheduler and client is None
        #: processes of the local cluster sharing this machine's memory (``None``: its default, one per core)
        self.local_workers = workers
        self.client = None
        self._where = (workers, scheduler, client)
        self._stack = contextlib.ExitStack()
        self._pool: ThreadPoolExecutor | None = None
        self._engines: list[OnDask] = []
        self._parts: dict[str, Any] = {}
        self._memo: dict[str, Any] = {}
        self._shared: dict[str, Any] = {}
        self._figures: list[tuple[Path, Any]] = []
        self._aborted = threading.Event()

    def describe(self) -> str:
        """Where the points run, in words (for the page)."""
        workers, scheduler, client = self._where
        if not self.on_dask:
            return "in process"
        if scheduler:
            return f"on the Dask cluster at {scheduler}"
        if client is not None:
            return "on the caller's Dask cluster"
        return f"on a local Dask cluster of {workers} single-threaded worker{'s' * (workers != 1)}"

    def __enter__(self) -> "ReportRunner":
        if self.on_dask:
            self.client = self._stack.enter_context(dask_client(*self._where))
            self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="propagate-report")
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._aborted.set()
            self._cancel_tasks()
        for engine in list(self._engines):  # what is still queued is cancelled (an interrupted build)
            engine.close()
        try:
            self._stack.close()  # our client, or the local cluster: background parts waiting on it stop
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)

    # -- where points go

    def engine(self, label: str, priority: int = 0) -> InProcess | OnDask:
        """A :mod:`propagate.runner` engine on this runner's client (in process: :class:`InProcess`)."""
        if not self.on_dask:
            return InProcess()
        engine = OnDask(client=self.client, label=label, priority=priority)
        self._engines.append(engine)
        return engine

    def where(self) -> dict:
        """Keyword arguments that put a library function's points (:func:`propagate.trainability.trainability`,
        :func:`propagate.scaling.scaling_grid`) on this runner: ``{"client": ...}`` on Dask, else none."""
        return {"client": self.client} if self.on_dask else {}

    def guard(self, say: Callable[[str], None] | None) -> Callable[[str], None]:
        """``say`` that raises :class:`Aborted` once the build stopped (a grid's progress callback: it ends the grid)."""

        def guarded(message: str) -> None:
            if self._aborted.is_set():
                raise Aborted("the report build stopped")
            if say is not None:
                say(message)

        return guarded

    def run(self, points: Sequence[Point], *, store: PointStore | None = None, label: str = "points",
            priority: int = 0, say: Callable[[str], None] | None = None) -> dict[str, Any]:
        """Compute ``points`` (or read them from ``store``); ``{key: value}``, each value as JSON gives it back.

        The values are normalized through strict JSON (:func:`_canonical`), so a
        point read from the store, computed here or computed on a worker gives
        the same objects. A failed point raises its error (its record stays in
        the store, and the next build tries it again). ``say(message)`` is called
        for every point computed.
        """
        out: dict[str, Any] = {}
        with self.engine(label, priority) as engine:
            for res in run_points(points, store=store, engine=engine):
                res.raise_for_failure()
                out[res.point.key] = _canonical(res.value)
                if say is not None and not res.cached:
                    say(f"{label}: {res.point.meta.get('what', res.point.key)} done "
                        f"({res.meta.get('seconds', float('nan')):.0f}s)")
        return out

    # -- parts

    def part(self, name: str, fn: Callable, *args, **kwargs):
        """The job ``name`` (its ``result()`` is ``fn(*args, **kwargs)``), started at the first call, the same later.

        In process it is computed when ``result()`` is first called; on Dask it
        starts now in a background thread. Later calls with the same ``name``
        return the same job (their arguments are not used).
        """
        if name not in self._parts:
            if self._pool is None:
                self._parts[name] = _Deferred(fn, args, kwargs)
            else:
                self._parts[name] = self._pool.submit(fn, *args, **kwargs)
        return self._parts[name]

    def task(self, name: str, fn: Callable, *args, priority: int = PRIORITY["task"], **kwargs):
        """The job ``name``: ``fn(*args, **kwargs)`` as one task (its ``result()``), started at the first call.

        For the page's light computations (a SELU solve, a phase grid, a
        section's simulations, a first-epoch trace): in process it is computed
        here when ``result()`` is first called (as :meth:`part`); on Dask it is
        submitted now as one task that runs on a worker with this runner's
        torch threads, so this process only waits for it and the numbers are the
        in-process ones at the same thread count. ``fn`` and the arguments must
        pickle (module-level functions; large inputs through :meth:`share`).
        Later calls with the same ``name`` return the same job.
        """
        if name not in self._parts:
            if self._pool is None:
                self._parts[name] = _Deferred(fn, args, kwargs)
            else:
                self._parts[name] = self.client.submit(_call_with_threads, fn, self.threads, args, kwargs,
                                                       key=_task_key(name), pure=False, priority=priority)
        return self._parts[name]

    def share(self, name: str, value):
        """``value`` as task arguments should carry it: on Dask scattered once per ``name`` to the workers (a
        dataset is sent once, not with every task); in process ``value`` itself."""
        if self._pool is None:
            return value
        if name not in self._shared:
            self._shared[name] = self.client.scatter(value, hash=False)
        return self._shared[name]

    def figure(self, path: str | Path, plot: Callable, *args, style: bool = False, **kwargs) -> None:
        """Draw ``plot(*args, **kwargs)`` (a function returning a matplotlib figure; under the report's style if
        ``style``) into ``path`` as PNG and SVG (:func:`propagate.report.style.save_figure`).

        In process it is drawn and written now; on Dask it is drawn on a worker
        (:func:`propagate.report.style.draw`, a task of the highest priority) while
        this process goes on, and written by :meth:`write_figures`, which the
        page calls before it is finished.
        """
        from propagate.report.style import draw, write_figure_files

        if self._pool is None:
            write_figure_files(draw(plot, args, kwargs, style=style, headless=False), path)
            return
        future = self.client.submit(draw, plot, args, kwargs, style=style, key=_task_key(f"figure {Path(path).name}"),
                                    pure=False, priority=PRIORITY["figure"])
        self._figures.append((Path(path), future))

    def write_figures(self) -> list[Path]:
        """Write the figures drawn on workers (:meth:`figure`) into their files; the paths written."""
        from propagate.report.style import write_figure_files

        written = []
        while self._figures:
            path, future = self._figures.pop(0)
            written += write_figure_files(future.result(), path)
        return written

    def _cancel_tasks(self) -> None:
        futures = [f for f in self._parts.values() if hasattr(f, "cancel") and not isinstance(f, _Deferred)]
        futures += [f for _, f in self._figures]
        self._figures.clear()
        for f in futures:
            with contextlib.suppress(Exception):
                f.cancel()

    def memo(self, name: str, fn: Callable, *args, **kwargs):
        """``fn(*args, **kwargs)`` computed here once per ``name`` (a part's inputs, shared by its start and its section)."""
        if name not in self._memo:
            self._memo[name] = fn(*args, **kwargs)
        return self._memo[name]


def _task_key(name: str) -> str:
    import uuid

    return f"propagate-report-{name.replace(' ', '-')}-{uuid.uuid4().hex}"


def _call_with_threads(fn: Callable, threads: int | None, args: tuple, kwargs: dict):
    """``fn(*args, **kwargs)`` with ``threads`` torch threads (a :meth:`ReportRunner.task` on a worker)."""
    from propagate.cluster import release_memory
    from propagate.torch_settings import torch_settings

    try:
        with torch_settings(threads=threads):
            return fn(*args, **kwargs)
    finally:
        release_memory()


# ----------------------------------------------------------------------------- values


def _decode(obj):
    """What :func:`propagate.io.to_json` wrote, as numbers again: ``null`` -> NaN, ``"inf"``/``"-inf"`` -> floats."""
    if obj is None:
        return math.nan
    if isinstance(obj, str) and obj in ("inf", "-inf"):
        return float(obj)
    if isinstance(obj, list):
        return [_decode(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _decode(v) for k, v in obj.items()}
    return obj


def _canonical(value):
    """``value`` as the point store gives it back (strict JSON), with its NaNs and infinities restored.

    The report's point values hold no ``None`` and no string ``"inf"`` of their own.
    """
    return _decode(json.loads(to_json(value)))


# ----------------------------------------------------------------------------- training points


def train_configurations(specs: Sequence, options, seeds: Sequence[int], dataset, *, run_dirs=None, names=None,
                         presets=None, progress: bool = False) -> list[dict]:
    """A runner point: ``specs`` (one architecture) with ``seeds`` each, trained as one model; their tables as data.

    :func:`propagate.train.train_group` with ``(spec, seeds)`` per spec;
    ``run_dirs``/``names``/``presets`` (preset names) per spec as there.
    Returns per spec ``{"seeds", "status", "seed_status": [[seed, status], ...],
    "history": rows, "layers": rows}`` (the rows of ``TrainResult.history`` and
    ``.layers``; :func:`run_frames` makes the tables again).
    """
    from propagate.presets import get_preset
    from propagate.train import train_group

    results = train_group([(spec, list(seeds)) for spec in specs], options, dataset, progress,
                          run_dirs=None if run_dirs is None else [Path(d) for d in run_dirs], names=names,
                          presets=None if presets is None else [get_preset(p) for p in presets])
    return [{"seeds": list(r.seeds), "status": r.status, "seed_status": [[s, st] for s, st in r.seed_status.items()],
             "history": r.history.to_dict(orient="records"), "layers": r.layers.to_dict(orient="records")}
            for r in results]


def train_point(specs: Sequence, options, seeds: Sequence[int], dataset, *, data_id: dict | None = None,
                run_dirs=None, names=None, presets=None, progress: bool = False, what: str = "") -> Point:
    """The :class:`propagate.runner.Point` of :func:`train_configurations` (its key: the specs, the options that
    change numbers, the seeds, the package version and ``data_id``, the dataset's identity)."""
    config = {"kind": "report training", "specs": [s.to_dict() for s in specs], "seeds": [int(s) for s in seeds],
              "train": {k: v for k, v in options.to_dict().items() if k not in _NOT_IN_KEY}}
    kwargs = {"run_dirs": None if run_dirs is None else [str(d) for d in run_dirs], "names": names,
              "presets": presets, "progress": progress}
    return Point(point_key(config, data_id), train_configurations,
                 (list(specs), options, [int(s) for s in seeds], Shared("dataset")), kwargs,
                 shared={"dataset": dataset}, meta={"kind": "report training", "what": what or ", ".join(
                     s.label() for s in specs)})


def run_frames(data: dict):
    """``(history, layers)`` of one configuration's :func:`train_configurations` data, as :func:`propagate.train.train`
    gives them (sorted by seed and epoch)."""
    import pandas as pd

    history = pd.DataFrame(data["history"], columns=HISTORY_COLUMNS)
    history = history.sort_values(["seed", "epoch"], kind="stable").reset_index(drop=True)
    layers = layer_table(data["layers"])
    if len(layers):
        layers = layers.sort_values(["seed", "epoch"], kind="stable").reset_index(drop=True)
    return history, layers


def run_result(spec, options, data: dict):
    """A :class:`propagate.train.TrainResult` (no model) of one configuration's :func:`train_configurations` data."""
    from propagate.train import TrainResult

    history, layers = run_frames(data)
    status = {int(s): st for s, st in data["seed_status"]}
    return TrainResult(spec=spec, options=options, history=history, layers=layers, meta={}, status=data["status"],
                       seeds=[int(s) for s in data["seeds"]], seed_status=status, summary=summarize_history(history))
