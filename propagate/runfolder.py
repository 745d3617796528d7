"""Run folders: one writer at a time, no resumption on different data or settings, and nothing of the user's touched.

A run folder is an output folder written over time (``train --out``, each run of
``reproduce``, the report's work folder, a sweep's result folder, the
trainability grid). Four files make a folder a run folder, and they are created
in one place, :func:`claim_folder`, only after every check of :func:`check_run_folder`
passed, and only in a folder this command made or can prove propagate made:

1. **A marker**, ``DIR/.propagate-run`` (:data:`MARKER_FILE`): JSON with the
   folder's *kind* (one of :data:`KINDS`: ``train``, ``trainability``,
   ``sweep``, ``reproduce``, ``report``). A folder of another kind is refused:
   a training run is never mixed into a sweep's folder.
2. **A lock**, ``DIR/.lock`` (:data:`LOCK_FILE`): an exclusive ``flock`` held
   while the command runs, and JSON inside it that proves it is ours
   (``{"propagate": "run folder lock", "pid", "host", "since", "command"}``).
   A second writer fails at once with one line naming the holder. The kernel
   drops the lock when its process ends, however it ends, so a lock file left
   by a dead process is taken over (no stale-lock cleanup, no pid guessing).
   A ``.lock`` file propagate did not write (the user's own) is refused, never
   overwritten.
3. **An identity**, ``DIR/identity.json`` (:data:`IDENTITY_FILE`): the full
   configuration and the dataset's identity (name, sizes, a SHA-256 of the
   arrays actually used; see :func:`propagate.data.dataset_identity`).
   Resuming with any difference raises :class:`IdentityMismatch`, whose message
   names the first differing field and the option to use instead. An
   ``identity.json`` propagate did not write is refused, whatever ``resume`` says.
4. A non-empty folder with neither marker nor identity is not a run folder: it
   is refused, never written into.

How a folder proves it is propagate's: it holds our marker, or (folders made
before the marker existed) an ``identity.json`` in our format, whose
``identity["kind"]`` then gives the kind. A folder the command is about to
create is ours by construction; if the claim fails after it was made, it is
removed again (only the files the claim itself created).

API (standard library only)::

    state = check_run_folder(out, "train", identity, resume=resume, option="--out")  # pure: no writes
    with claim_folder(out, "train", identity, resume=resume, option="--out") as lock:
        ...  # write results into out

``check_run_folder`` is what a CLI calls before its banner (it raises exactly
what ``claim_folder`` would); ``claim_folder`` checks again under the lock.
The older names stay: :func:`check_folder` and :func:`claim` (the kind taken
from ``identity["kind"]``) and :func:`lock_folder` (a lock alone).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from propagate.errors import UserError
from propagate.io import atomic_write_json, check_output_dir, command_line, strict_json_value

__all__ = ["LOCK_FILE", "IDENTITY_FILE", "MARKER_FILE", "KINDS", "FolderLock", "FolderBusy", "IdentityMismatch",
           "FolderState", "check_run_folder", "claim_folder", "lock_folder", "read_identity", "identity_difference",
           "check_folder", "claim"]

LOCK_FILE = ".lock"
IDENTITY_FILE = "identity.json"
MARKER_FILE = ".propagate-run"
#: The kinds of run folder; a folder of one kind is never used as another.
KINDS = ("train", "trainability", "sweep", "reproduce", "report")

_LOCK_TAG = "run folder lock"
_MARKER_TAG = "run folder"
_IDENTITY_NOTE = "what this run folder holds; propagate refuses to resume it with a different configuration or data"
_OURS = (LOCK_FILE, IDENTITY_FILE, MARKER_FILE)


def _q(path) -> str:
    return repr(os.fspath(path))


class FolderBusy(UserError):
    """Another process holds the folder's lock; ``folder`` and ``holder`` (who, in words) say which."""

    def __init__(self, folder: Path, holder: str, option: str):
        self.folder, self.holder = Path(folder), holder
        super().__init__(f"{_q(folder)} is in use by {holder}; wait for it to finish or choose another {option}")


class IdentityMismatch(UserError):
    """The folder holds a run of a different configuration, dataset or kind (or is not a run folder).

    ``folder``, ``field`` (dotted name of the first difference, ``"kind"`` for a
    folder of another kind, or ``None`` when the folder is not a run folder),
    ``recorded`` and ``requested`` say what differs; ``detail`` is the message
    without the hint, so a caller can give its own option (the report says ``--work-dir``).
    """

    def __init__(self, folder: Path, detail: str, hint: str, field: str | None = None,
                 recorded: Any = None, requested: Any = None):
        self.folder, self.detail, self.field = Path(folder), detail, field
        self.recorded, self.requested = recorded, requested
        super().__init__(f"{detail}; {hint}" if hint else detail)


# ----------------------------------------------------------------------- lock


class FolderLock:
    """An exclusive lock on a folder (see :func:`claim_folder`); release with :meth:`release` or ``with``."""

    def __init__(self, folder: Path, fd: int):
        self.folder, self._fd = folder, fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        # The file stays: unlinking it would let a third process lock a new file while
        # a second still waits on the old one. Closing the descriptor drops the flock.
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __enter__(self) -> "FolderLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self):  # a handle dropped without release() must not keep the folder locked
        with contextlib.suppress(Exception):
            self.release()

    def __repr__(self) -> str:
        return f"FolderLock({str(self.folder)!r}, held={self.held})"


def _read_json(path: Path) -> Any:
    """The JSON in ``path``; ``None`` if it cannot be read or parsed."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def _lock_is_ours(data: Any) -> bool:
    """A lock file's JSON as propagate writes it (or wrote it before the tag existed: pid, host, since)."""
    if not isinstance(data, dict):
        return False
    return data.get("propagate") == _LOCK_TAG or {"pid", "host", "since"} <= set(data)


def _holder_text(path: Path) -> str:
    info = _read_json(path)
    if not isinstance(info, dict):
        return "another process"
    who = f"process {info.get('pid', '?')} on {info.get('host', '?')}"
    if info.get("since"):
        who += f" since {info['since']}"
    if info.get("command"):
        who += f" ({info['command']})"
    return who


def _lock_held_elsewhere(path: Path) -> bool:
    """Whether another open file description holds ``path``'s flock (tested without taking it for long)."""
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def _lock_info() -> bytes:

    info = {"propagate": _LOCK_TAG, "pid": os.getpid(), "host": socket.gethostname(),
            "since": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "command": command_line()}
    return (json.dumps(info) + "\n").encode()


def _take_lock(folder: Path, option: str) -> tuple[FolderLock, bool]:
    """Open (or create, exclusively) ``folder/.lock`` and flock it; ``(lock, created)``. The folder must exist."""
    import fcntl

    path = folder / LOCK_FILE
    created = False
    try:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
            created = True
        except FileExistsError:
            fd = os.open(path, os.O_RDWR)
    except OSError as exc:
        raise UserError(f"cannot use {_q(folder)} as a run folder: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise FolderBusy(folder, _holder_text(path), option) from None
        raise UserError(f"cannot lock {_q(folder)}: {exc.strerror or exc}") from None
    return FolderLock(folder, fd), created


def _write_lock_info(lock: FolderLock) -> None:
    os.ftruncate(lock._fd, 0)
    os.pwrite(lock._fd, _lock_info(), 0)


def lock_folder(folder: str | os.PathLike, option: str = "--out") -> FolderLock:
    """Lock ``folder`` (created if missing) for this process, or raise :class:`FolderBusy` at once.

    A lock alone: no marker, no identity (see :func:`claim_folder` for a run
    folder). A ``.lock`` file that propagate did not write is refused, never
    overwritten. ``option`` names the command's option for the folder, for the message.
    """

    folder = check_output_dir(folder, option)
    path = folder / LOCK_FILE
    if path.exists() and not _lock_is_ours(_read_json(path)) and not _proven_ours(folder):
        raise _foreign_lock(folder, option)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot use {_q(folder)} as a run folder: {exc.strerror or exc}") from None
    lock, _ = _take_lock(folder, option)
    _write_lock_info(lock)
    return lock


# ------------------------------------------------------------------- identity and marker


def _normal(obj: Any) -> Any:
    """``obj`` as it reads back from the identity file (tuples become lists, keys strings, inf "inf"), for comparison."""

    return json.loads(json.dumps(strict_json_value(obj), default=str))


def _identity_is_ours(data: Any) -> bool:
    return isinstance(data, dict) and "identity" in data and str(data.get("note", "")).startswith("what this run folder")


def read_identity(folder: str | os.PathLike) -> dict | None:
    """The identity recorded in ``folder`` (``None`` if there is none); :class:`UserError` if the file is not ours."""
    path = Path(folder) / IDENTITY_FILE
    if not path.is_file():
        return None
    data = _read_json(path)
    if not _identity_is_ours(data):
        raise UserError(f"{_q(path)} was not written by propagate (or is damaged); it is left untouched: "
                        f"move the folder away or choose another output folder")
    return data["identity"]


def _read_marker(folder: Path) -> dict | None:
    data = _read_json(folder / MARKER_FILE)
    return data if isinstance(data, dict) and data.get("propagate") == _MARKER_TAG else None


def _proven_ours(folder: Path) -> bool:
    """The folder holds our marker, or an identity file in our format (folders made before the marker)."""
    return _read_marker(folder) is not None or _identity_is_ours(_read_json(folder / IDENTITY_FILE))


def identity_difference(recorded: Any, requested: Any, prefix: str = "") -> tuple[str, Any, Any] | None:
    """The first field (dotted name) where two identities differ, with both values; ``None`` if equal."""
    if isinstance(recorded, dict) and isinstance(requested, dict):
        for key in list(requested) + [k for k in recorded if k not in requested]:
            name = f"{prefix}.{key}" if prefix else str(key)
            if key not in recorded:
                return name, "(absent)", requested[key]
            if key not in requested:
                return name, recorded[key], "(absent)"
            diff = identity_difference(recorded[key], requested[key], name)
            if diff is not None:
                return diff
        return None
    if recorded != requested:
        return prefix or "identity", recorded, requested
    return None


def _short(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _listing(names: list[str]) -> str:
    return ", ".join(map(repr, names[:3])) + (", ..." if len(names) > 3 else "")


# ------------------------------------------------------------------- check, then claim


@dataclass(frozen=True)
class FolderState:
    """What :func:`check_run_folder` found: ``exists``, the recorded ``kind`` and ``identity`` (or ``None``),
    and whether the folder is ``ours`` (marker or identity; a missing folder is not)."""

    folder: Path
    exists: bool
    ours: bool
    kind: str | None
    identity: dict | None


def _foreign_lock(folder: Path, option: str) -> IdentityMismatch:
    return IdentityMismatch(folder, f"{_q(folder)} holds a {LOCK_FILE} file that propagate did not write, and is "
                                    f"left untouched", f"choose a new or empty {option}")


def _recorded_kind(marker: dict | None, identity: dict | None) -> str | None:
    if marker is not None and marker.get("kind"):
        return str(marker["kind"])
    if isinstance(identity, dict) and isinstance(identity.get("kind"), str):
        return identity["kind"]
    return None


def _inspect(folder: Path, option: str) -> FolderState:
    """The folder's state, refusing what no command may use: foreign files, a foreign lock or identity."""
    if not folder.exists():
        return FolderState(folder, False, False, None, None)
    names = sorted(p.name for p in folder.iterdir())
    marker = _read_marker(folder)
    identity = read_identity(folder)  # a foreign identity.json is refused here
    ours = marker is not None or identity is not None
    if LOCK_FILE in names and not _lock_is_ours(_read_json(folder / LOCK_FILE)):
        # an empty lock file is what a process killed between creating and writing it leaves
        if not (ours and (folder / LOCK_FILE).stat().st_size == 0):
            raise _foreign_lock(folder, option)
    if not ours:
        foreign = [n for n in names if n != LOCK_FILE]
        if foreign:
            raise IdentityMismatch(folder, f"{_q(folder)} holds files that no propagate run recorded "
                                           f"({_listing(foreign)}) and is left untouched",
                                   f"choose a new or empty {option}")
    return FolderState(folder, True, ours, _recorded_kind(marker, identity), identity)


def _refuse_mismatch(state: FolderState, kind: str | None, requested: dict | None, resume: bool,
                     option: str, hint: str) -> None:
    folder = state.folder
    if kind is not None and state.kind is not None and state.kind != kind:
        raise IdentityMismatch(folder, f"{_q(folder)} holds a {state.kind} run, not a {kind} run, and is left "
                                       f"untouched", f"choose another {option}", "kind", state.kind, kind)
    if requested is None or state.identity is None or not resume or state.identity == requested:
        return
    field, old, new = identity_difference(state.identity, requested)
    raise IdentityMismatch(folder, f"{_q(folder)} holds a run with {field} = {_short(old)}, not {_short(new)}",
                           hint, field, old, new)


def _check_kind(kind: str | None) -> None:
    if kind is not None and kind not in KINDS:
        raise ValueError(f"unknown run folder kind {kind!r} (one of {', '.join(KINDS)})")


def check_run_folder(folder: str | os.PathLike, kind: str | None, identity: dict | None = None, *,
                     resume: bool = True, option: str = "--out",
                     hint: str = "use another --out, or --no-resume to start over") -> FolderState:
    """Everything :func:`claim_folder` would refuse, checked without creating or changing anything.

    Refused, in one line (:class:`UserError` and its subclasses): a path
    :func:`propagate.io.check_output_dir` refuses (too long, a control
    character, a file, a read-only place); a folder holding files no
    propagate run recorded, a ``.lock`` or ``identity.json`` propagate did not
    write; a run folder of another ``kind`` (``"kind"`` in :class:`IdentityMismatch`);
    a folder another process holds (:class:`FolderBusy`); and with ``resume``,
    a run folder whose identity differs from ``identity`` (``None``: not
    compared). ``resume=False`` allows a run folder of the same kind with any
    identity (the claim starts it over). Returns the :class:`FolderState`.
    """
    _check_kind(kind)
    return _check(folder, kind, identity, resume, option, hint, test_lock=True)


def _check(folder, kind: str | None, identity: dict | None, resume: bool, option: str, hint: str, *,
           test_lock: bool) -> FolderState:

    folder = check_output_dir(folder, option)
    try:
        state = _inspect(folder, option)
        if test_lock and state.exists and (folder / LOCK_FILE).is_file() and _lock_held_elsewhere(folder / LOCK_FILE):
            raise FolderBusy(folder, _holder_text(folder / LOCK_FILE), option)
    except OSError as exc:
        raise UserError(f"cannot use {_q(folder)} as a run folder: {exc.strerror or exc}") from None
    _refuse_mismatch(state, kind, None if identity is None else _normal(identity), resume, option, hint)
    return state


def _marker_bytes(kind: str | None) -> dict:
    return {"propagate": _MARKER_TAG, "kind": kind,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "note": "a folder propagate writes over time; its kind, identity.json and .lock say whose it is"}


def _made_dirs(folder: Path) -> list[Path]:
    """The folders a ``mkdir -p folder`` is about to create, deepest first."""
    missing = []
    p = folder
    while not p.exists() and p.parent != p:
        missing.append(p)
        p = p.parent
    return missing


def _undo(made: list[Path], created: list[Path]) -> None:
    """Remove what a failed claim created: its files, then the folders it made (only if empty)."""
    for path in created:
        with contextlib.suppress(OSError):
            path.unlink()
    for d in made:
        with contextlib.suppress(OSError):
            d.rmdir()


def claim_folder(folder: str | os.PathLike, kind: str | None, identity: dict | None = None, *,
                 resume: bool = True, option: str = "--out",
                 hint: str = "use another --out, or --no-resume to start over",
                 discard: Iterable[str] = ()) -> FolderLock:
    """Make ``folder`` this run's folder and lock it; return the lock (release it, or use ``with``).

    First :func:`check_run_folder` (nothing is created if it refuses); then the
    folder is created if missing, the lock taken (``.lock`` created exclusively
    if absent, or reused only when it is ours), the check repeated under the
    lock, and the marker (``kind``) and identity written:

    - a new or empty folder: marker and identity are recorded;
    - a run folder of this kind with the same identity: resumed;
    - ``resume=False``: the run starts over: ``discard`` (file names, e.g. the
      checkpoint a resumption would trust) is deleted, the new identity recorded.

    If anything fails after the folder or lock was created, both are removed again.
    ``identity`` is any JSON-able dict (``None``: only the kind is recorded);
    compare the configuration and :func:`propagate.data.dataset_identity` of the data used.
    """
    state = check_run_folder(folder, kind, identity, resume=resume, option=option, hint=hint)
    folder = state.folder
    made = _made_dirs(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _undo(made, [])
        raise UserError(f"cannot create {_q(folder)}: {exc.strerror or exc}") from None
    created: list[Path] = []
    try:
        lock, new_lock = _take_lock(folder, option)
    except BaseException:
        _undo(made, [])
        raise
    if new_lock:
        created.append(folder / LOCK_FILE)
    try:
        _write_lock_info(lock)
        _check(folder, kind, identity, resume, option, hint, test_lock=False)  # again, now that no one else can write
        _record(folder, kind, identity, resume, discard, created)
    except BaseException:
        lock.release()
        _undo(made, created)
        raise
    return lock


def _record(folder: Path, kind: str | None, identity: dict | None, resume: bool, discard: Iterable[str],
            created: list[Path]) -> None:
    """Write the marker and identity of a claimed folder (the lock is held); delete ``discard`` when starting over."""

    _remove_stale_temporaries(folder)
    if (folder / "points").is_dir() and not (folder / "points").is_symlink():
        _remove_stale_temporaries(folder / "points")  # a point store's (propagate.runner.PointStore) files
    marker = _read_marker(folder)
    if marker is None or (kind is not None and marker.get("kind") != kind):
        if marker is None:
            created.append(folder / MARKER_FILE)
        atomic_write_json(folder / MARKER_FILE, _marker_bytes(kind))
    if identity is None:
        return
    recorded, requested = read_identity(folder), _normal(identity)
    if not resume:  # starting over: nothing a resumption would trust may survive
        for name in discard:
            with contextlib.suppress(FileNotFoundError):
                (folder / name).unlink()
    if recorded != requested:
        if recorded is None:
            created.append(folder / IDENTITY_FILE)
        atomic_write_json(folder / IDENTITY_FILE, {"identity": requested, "note": _IDENTITY_NOTE})


#: What :func:`propagate.io`'s atomic writes name their temporaries: ``.NAME.XXXXXXXX.tmp`` (``tempfile.mkstemp``).
_TEMPORARY = re.compile(r"^\.(.+)\.[a-z0-9_]{8}\.tmp$")


def _remove_stale_temporaries(folder: Path) -> list[str]:
    """Delete the temporaries of atomic writes that a killed run left in ``folder`` (ours, its lock held).

    A file named like an atomic write's temporary of a file beside it
    (``.history.csv.k3j2x9_a.tmp``) is half of a write that never finished:
    the run that made it was killed (SIGKILL allows no cleanup) and no other
    run writes here while the lock is held. Only plain files at the top of the
    folder; returns their names.
    """
    gone = []
    for p in folder.iterdir():
        if _TEMPORARY.match(p.name) and p.is_file() and not p.is_symlink():
            with contextlib.suppress(OSError):
                p.unlink()
                gone.append(p.name)
    return gone


# ------------------------------------------------------------------- the older names


def _kind_of(identity: dict | None) -> str | None:
    kind = identity.get("kind") if isinstance(identity, dict) else None
    return kind if kind in KINDS else None


def check_folder(folder: str | os.PathLike, identity: dict | None = None, *, resume: bool = True,
                 option: str = "--out", hint: str = "use another --out, or --no-resume to start over") -> None:
    """:func:`check_run_folder` with the kind taken from ``identity["kind"]`` (``identity=None``: any run folder)."""
    check_run_folder(folder, _kind_of(identity), identity, resume=resume, option=option, hint=hint)


def claim(folder: str | os.PathLike, identity: dict, *, resume: bool = True, option: str = "--out",
          hint: str = "use another --out, or --no-resume to start over",
          discard: Iterable[str] = ()) -> FolderLock:
    """:func:`claim_folder` with the kind taken from ``identity["kind"]``; returns the lock.

    A non-empty folder that is not a run folder (no identity or marker
    recorded) raises :class:`IdentityMismatch` whatever ``resume`` says: its
    files are not ours.
    """
    return claim_folder(folder, _kind_of(identity), identity, resume=resume, option=option, hint=hint,
                        discard=discard)
