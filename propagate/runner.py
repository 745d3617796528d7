"""One runner for everything that fans out: a resumable store of finished points and an engine that computes the rest.

A *point* is one unit of work, described so that it can run anywhere:
:class:`Point` ``(key, fn, args, kwargs, shared, meta)``. ``key`` names its
result (:func:`point_key`: a hash of the point's full configuration, the
package version and the identity of the dataset it reads), ``fn`` is an
importable function (Dask pickles it by reference), ``shared`` holds large
inputs that many points read (a dataset), referred to in ``args``/``kwargs``
by :class:`Shared` placeholders, and ``meta`` is a JSON-able description saved
beside the result. Nothing here knows what a point computes: sweep points,
trainability ensembles and sharpness predictions are all points.

- :class:`PointStore`: a folder with ``KEY.json`` per finished point and
  ``KEY.failed.json`` (error line and traceback) per point whose last try
  failed; every file is written atomically (:func:`propagate.io.atomic_write_json`),
  so an interruption leaves whole files only. A failed point is tried again
  by the next run; its failure file goes when it succeeds. A file read back
  is checked (:attr:`Point.check`): one that is damaged or of the wrong
  layout is refused with one line (:class:`propagate.errors.UserError`) and
  left where it is, never recomputed over or removed.
- Engines: :class:`InProcess` (one point after another, here) and
  :class:`OnDask` (a local cluster of single-threaded workers, a running
  scheduler or a user's client, see :func:`propagate.cluster.dask_client`;
  each shared input is sent to every worker once, ``client.scatter(...,
  broadcast=True)``, and reused by later rounds; every run submits under fresh
  Dask keys ``propagate-<label>-<point key>-<run token>``; futures still queued
  are cancelled when the run is interrupted). :func:`choose_engine` picks one
  from ``workers``/``scheduler``/``client`` after
  :func:`propagate.cluster.check_where`.
- :func:`run_points`: yields a :class:`Result` for every point, read from the
  store when it holds one, else computed by the engine, saved, reported to a
  progress callback (:class:`ProgressBar`: tqdm on stderr) and yielded as it
  finishes.

A point's result does not depend on where it ran: the engine only moves
arguments and results (pickled exactly); a point that uses torch must carry
its thread count in its arguments (the sum order of floats depends on it), so
that the same point gives the same numbers bit for bit in process and on any
worker.

Standard library only at import time (Dask and tqdm are imported when used).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import platform
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

from propagate import __version__
from propagate.cluster import check_where, dask_client
from propagate.errors import UserError
from propagate.io import Closing, atomic_write_json

__all__ = [
    "Shared",
    "Point",
    "Result",
    "point_key",
    "call",
    "check_record",
    "PointStore",
    "InProcess",
    "OnDask",
    "choose_engine",
    "run_points",
    "ProgressBar",
]

#: Fields of a key's hashed configuration that :func:`point_key` fills in itself.
_RESERVED = ("propagate", "dataset")


def point_key(config: Mapping[str, Any], dataset: Mapping[str, Any] | None = None) -> str:
    """24 hex digits of the SHA-256 of ``config``, the package version and ``dataset`` (its identity).

    ``config``: a JSON-able dict of everything that decides the point's result
    (its keys ``propagate`` and ``dataset`` are reserved); ``dataset``:
    :func:`propagate.data.dataset_identity` of the data it reads, or ``None``.
    Keys are order-free (sorted) and exact for floats (``repr``).
    """
    clash = [k for k in _RESERVED if k in config]
    if clash:
        raise ValueError(f"point configuration fields {clash} are reserved for the version and the dataset")
    blob = json.dumps({**config, "propagate": __version__, "dataset": dataset}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


@dataclass(frozen=True)
class Shared:
    """In a point's ``args`` or ``kwargs`` (top level), the shared input ``Point.shared[name]``."""

    name: str


@dataclass(frozen=True, eq=False)
class Point:
    """One unit of work: ``fn(*args, **kwargs)`` with each :class:`Shared` argument replaced by its input.

    ``key``: the name of its result (:func:`point_key`; points with equal keys
    are computed once). ``fn`` must be importable (a module-level function)
    to run on Dask; its value must be JSON-able to be stored. ``meta``: a
    JSON-able description saved with the result (not sent to the worker).
    ``check``: the reader's check of a stored record of this point,
    ``check(record)``, raising :class:`ValueError` (the reason) when the record
    does not hold what ``fn`` returns (default :func:`check_record`: a finished
    point's record with a value); :meth:`PointStore.record` then refuses the
    file as it refuses a damaged one.
    """

    key: str
    fn: Callable
    args: tuple = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    shared: Mapping[str, Any] = field(default_factory=dict)
    meta: Mapping[str, Any] = field(default_factory=dict)
    check: Callable[[dict], None] | None = None

    def bind(self, values: Mapping[str, Any]) -> tuple[tuple, dict]:
        """``(args, kwargs)`` with each :class:`Shared` placeholder replaced by ``values[name]``."""
        sub = lambda a: values[a.name] if isinstance(a, Shared) else a  # noqa: E731
        return tuple(sub(a) for a in self.args), {k: sub(v) for k, v in self.kwargs.items()}


@dataclass
class Result:
    """A finished point.

    ``ok``: it returned ``value``; else ``error`` (``"Type: message"``, one
    line), ``traceback`` and, when it could travel back, the ``exception``
    itself. ``meta``: where and how long it ran (``host``, ``pid``,
    ``seconds``). ``cached``: read from the store, not computed by this run
    (``meta`` is then the stored one).
    """

    point: Point
    ok: bool
    value: Any = None
    error: str | None = None
    traceback: str | None = None
    exception: BaseException | None = field(default=None, repr=False)
    meta: dict = field(default_factory=dict)
    cached: bool = False

    def record(self) -> dict:
        """What the store writes: ``status``, ``key``, ``meta`` (the point's, the run's and the version),
        then ``value`` (``status="ok"``) or ``error`` and ``traceback`` (``status="failed"``)."""
        meta = {**self.point.meta, "key": self.point.key, "propagate": __version__, **self.meta}
        if self.ok:
            return {"status": "ok", "key": self.point.key, "meta": meta, "value": self.value}
        return {"status": "failed", "key": self.point.key, "meta": meta, "error": self.error,
                "traceback": self.traceback}

    def raise_for_failure(self) -> None:
        """Raise the point's own exception (or a RuntimeError with its error line) if it failed."""
        if self.ok:
            return
        if self.exception is not None:
            raise self.exception
        raise RuntimeError(f"point {self.point.key} failed: {self.error}")


def _travels(exc: BaseException) -> BaseException | None:
    """``exc`` if it survives pickling (a Dask result must), else ``None`` (its error line and traceback still do)."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:  # noqa: BLE001 - any exception type may refuse to pickle or to rebuild
        return None
    return exc


def call(fn: Callable, args: tuple = (), kwargs: Mapping[str, Any] | None = None, *, portable: bool = True) -> dict:
    """Run ``fn(*args, **kwargs)`` here and never raise for a failing point (what an engine runs per point).

    Returns ``{"ok": True, "value": ..., "meta": {...}}`` or ``{"ok": False,
    "error": "Type: message", "traceback": text, "exception": exc or None,
    "meta": {...}}``; ``meta`` holds this process's ``host``, ``pid`` and the
    ``seconds`` the call took. ``portable``: keep the exception only if it
    survives pickling (it travels back from a worker). Interruptions
    (KeyboardInterrupt, SystemExit) pass.
    """
    t0 = time.perf_counter()
    where = {"host": platform.node(), "pid": os.getpid()}
    try:
        value = fn(*args, **(kwargs or {}))
    except Exception as exc:  # a failing point is a result: recorded, reported, retried by the next run
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}".splitlines()[0],
                "traceback": traceback.format_exc(), "exception": _travels(exc) if portable else exc,
                "meta": {**where, "seconds": time.perf_counter() - t0}}
    return {"ok": True, "value": value, "meta": {**where, "seconds": time.perf_counter() - t0}}


def call_on_worker(fn: Callable, args: tuple = (), kwargs: Mapping[str, Any] | None = None) -> dict:
    """:func:`call` on a Dask worker, which then gives the point's freed memory back to the system
    (:func:`propagate.cluster.release_memory`: a long-lived worker's resident memory would otherwise only grow)."""
    from propagate.cluster import release_memory

    try:
        return call(fn, args, kwargs)
    finally:
        release_memory()


def check_record(record: dict) -> None:
    """Raise :class:`ValueError` (the reason) unless ``record`` is a finished point's, as :meth:`Result.record` writes.

    That is: ``status`` ``"ok"`` and a ``value`` (what the point's function
    returned; its layout is the point's own :attr:`Point.check`). The store
    has checked already that the record is a JSON object whose ``meta``, if
    any, is an object.
    """
    if record.get("status") != "ok":
        raise ValueError(f"status {_short(record.get('status'))}, not 'ok'")
    if "value" not in record:
        raise ValueError("no value")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _result(point: Point, envelope: dict) -> Result:
    return Result(point, envelope["ok"], envelope.get("value"), envelope.get("error"), envelope.get("traceback"),
                  envelope.get("exception"), dict(envelope.get("meta", {})))


# ----------------------------------------------------------------------------- the store


class PointStore:
    """A folder of finished points: ``KEY.json`` per finished point, ``KEY.failed.json`` per failed one.

    The folder is created on the first write. Records are :meth:`Result.record`
    dicts (strict JSON: NaN is written as ``null``, infinities as ``"inf"``).
    Locking the folder against a second writer is the caller's (its run
    folder's :func:`propagate.runfolder.claim`).
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.json"

    def failed_path(self, key: str) -> Path:
        return self.folder / f"{key}.failed.json"

    def has(self, key: str) -> bool:
        """Whether the point ``key`` has a result (a failure is not one)."""
        return self.path(key).is_file()

    def record(self, key: str, check: Callable[[dict], None] | None = check_record) -> dict | None:
        """The stored record of a finished point, or ``None``; :class:`UserError` if it is damaged.

        Damaged: not JSON, not a JSON object (or its ``meta`` not one), or a
        record that ``check(record)`` refuses (:class:`ValueError`; default
        :func:`check_record`, see :attr:`Point.check`). Such a file is left
        where it is; the message says to move it away.
        """
        path = self.path(key)
        rec = self._read(path)
        if rec is not None and check is not None:
            try:
                check(rec)
            except ValueError as exc:
                raise _damaged(path, f"wrong layout: {exc}") from None
        return rec

    def failure(self, key: str) -> dict | None:
        """The stored record of the point's last failure, or ``None``."""
        return self._read(self.failed_path(key))

    def keys(self) -> list[str]:
        """Keys of the finished points, sorted."""
        if not self.folder.is_dir():
            return []
        return sorted(p.name[: -len(".json")] for p in self.folder.glob("*.json") if not p.name.endswith(".failed.json"))

    def save(self, result: Result) -> None:
        """Write ``result`` (atomically); a success removes the point's failure record."""
        key = result.point.key
        if result.ok:
            atomic_write_json(self.path(key), result.record())
            with contextlib.suppress(FileNotFoundError):
                self.failed_path(key).unlink()
        else:
            atomic_write_json(self.failed_path(key), result.record())

    @staticmethod
    def _read(path: Path) -> dict | None:
        """The JSON object in ``path`` (``None`` if there is no file); :class:`UserError` for anything else."""
        try:
            with open(path) as fh:
                rec = json.load(fh)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise _damaged(path, type(exc).__name__) from None
        if not isinstance(rec, dict):
            raise _damaged(path, f"wrong layout: a JSON {type(rec).__name__}, not an object")
        if not isinstance(rec.get("meta", {}), dict):
            raise _damaged(path, "wrong layout: its meta is not an object")
        return rec


def _damaged(path: Path, why: str) -> UserError:
    """The one refusal of a point file that cannot be used (unreadable, or of the wrong layout); it is left in place."""
    return UserError(f"cannot read the point file {str(path)!r} ({why}); move it away to compute the point again")


# ----------------------------------------------------------------------------- engines


class InProcess(Closing):
    """Computes points here, one after another, in the order given."""

    name = "in process"

    def run(self, points: Iterable[Point]) -> Iterator[Result]:
        for p in points:
            args, kwargs = p.bind(p.shared)
            yield _result(p, call(p.fn, args, kwargs, portable=False))


class OnDask(Closing):
    """Computes points on Dask and yields them as they finish (see the module docstring).

    ``workers``/``scheduler``/``client``: as :func:`propagate.cluster.dask_client`;
    the cluster is started (or reached) at the first :meth:`run` that has
    points, so a run with nothing to compute starts none. ``label`` goes into
    the Dask keys. ``priority``: Dask's task priority of every point (higher
    runs first when several engines share one client and their points wait
    together; points of equal priority start in the order submitted).
    :meth:`close` (or the end of a ``with`` block) cancels what is still
    queued, releases the shared inputs and closes a cluster it started.
    """

    name = "dask"

    def __init__(self, workers: int | None = None, scheduler: str | None = None, client=None, *,
                 label: str = "points", priority: int = 0):
        check_where(workers, scheduler, client)
        self.priority = int(priority)
        self._where = (workers, scheduler, client)
        self._stack = contextlib.ExitStack()
        self._shared: dict[tuple[str, int], tuple[Any, Any]] = {}  # (name, id) -> (input, its future)
        self._futures: dict = {}
        self.client = None
        self.prefix = f"propagate-{label}"

    def _client(self):
        if self.client is None:
            self.client = self._stack.enter_context(dask_client(*self._where))
        return self.client

    def _scattered(self, point: Point) -> dict:
        """Futures of the point's shared inputs, each sent to every worker the first time it is seen."""
        out = {}
        for name, value in point.shared.items():
            slot = (name, id(value))
            if slot not in self._shared:  # the input is kept, so its id stays its own
                self._shared[slot] = (value, self._client().scatter(value, broadcast=True, hash=False))
            out[name] = self._shared[slot][1]
        return out

    def run(self, points: Iterable[Point]) -> Iterator[Result]:
        points = list(points)
        if not points:
            return
        from distributed import as_completed

        client = self._client()
        # a fresh Dask key per run: a key cancelled by an interrupted run may still be being
        # forgotten by the scheduler when the rerun submits it, and would come back cancelled
        token = os.urandom(4).hex()
        futures = {}
        try:
            for p in points:
                args, kwargs = p.bind(self._scattered(p))
                fut = client.submit(call_on_worker, p.fn, args, kwargs, key=f"{self.prefix}-{p.key}-{token}", pure=False,
                                    priority=self.priority)
                futures[fut] = p
                self._futures[fut] = p
            for fut in as_completed(list(futures)):
                yield self._collect(fut, futures[fut])
        finally:
            self._cancel(futures)

    def _collect(self, fut, point: Point) -> Result:
        try:
            envelope = fut.result()
        except Exception as exc:  # lost beyond Dask's retries (KilledWorker), or not deliverable
            envelope = {"ok": False, "error": f"{type(exc).__name__}: {exc}".splitlines()[0],
                        "traceback": traceback.format_exc(), "exception": _travels(exc)}
        fut.release()
        self._futures.pop(fut, None)
        return _result(point, envelope)

    def _cancel(self, futures) -> None:
        for fut in list(futures):  # an interruption leaves no work queued on a shared cluster
            with contextlib.suppress(Exception):  # the cluster may be gone already
                fut.cancel()
            self._futures.pop(fut, None)

    def close(self) -> None:
        self._cancel(self._futures)
        self._shared.clear()
        self._stack.close()
        self.client = None



def choose_engine(workers: int | None = None, scheduler: str | None = None, client=None, *,
                  default: str = "in process", label: str = "points") -> InProcess | OnDask:
    """The engine for ``workers``/``scheduler``/``client`` (checked by :func:`propagate.cluster.check_where`).

    Any of them given: :class:`OnDask`. None given: ``default``, ``"in process"``
    (:class:`InProcess`) or ``"dask"`` (a local cluster of one worker per core).
    """
    check_where(workers, scheduler, client)
    if default not in ("in process", "dask"):
        raise ValueError(f"default must be 'in process' or 'dask', got {default!r}")
    if workers is None and not scheduler and client is None and default == "in process":
        return InProcess()
    return OnDask(workers, scheduler, client, label=label)


# ----------------------------------------------------------------------------- running


def run_points(points: Iterable[Point], *, store: PointStore | None = None, engine: InProcess | OnDask | None = None,
               reuse: bool = True, progress: Callable[[Result], None] | None = None) -> Iterator[Result]:
    """A :class:`Result` per point key: first those the ``store`` holds, then the others as the engine finishes them.

    ``engine``: default :class:`InProcess`; its lifetime is the caller's (use it
    as a context manager). A computed result is saved to ``store`` (when given)
    before ``progress(result)`` is called and the result yielded, so an
    interruption (an exception from ``progress``, or from the caller's loop)
    loses no finished point; the next run computes only the rest (and what
    failed). ``reuse=False`` computes every point again (and overwrites its
    file). Points with a key seen before are skipped (one result per key).
    """
    engine = engine if engine is not None else InProcess()
    todo, seen = [], set()
    for p in points:
        if p.key in seen:
            continue
        seen.add(p.key)
        rec = store.record(p.key, check=p.check or check_record) if (store is not None and reuse) else None
        if rec is not None:
            yield Result(p, True, rec.get("value"), meta=dict(rec.get("meta", {})), cached=True)
        else:
            todo.append(p)
    with contextlib.closing(engine.run(todo)) as results:
        for res in results:
            if store is not None:
                store.save(res)
            if progress is not None:
                progress(res)
            yield res


class ProgressBar(Closing):
    """A progress callback for :func:`run_points`: a tqdm bar of finished points on stderr (failures counted).

    ``total`` points, ``initial`` of them done before; ``enabled=False`` shows
    nothing. Close it with :meth:`close` or a ``with`` block.
    """

    def __init__(self, total: int, initial: int = 0, desc: str = "points", enabled: bool = True):
        from tqdm import tqdm

        self.failed = 0
        self.bar = tqdm(total=total, initial=initial, desc=desc, unit="pt", file=sys.stderr, disable=not enabled,
                        dynamic_ncols=True)

    def __call__(self, result: Result) -> None:
        self.bar.update(1)
        if not result.ok:
            self.failed += 1
            self.bar.set_postfix(failed=self.failed)

    def close(self) -> None:
        self.bar.close()

