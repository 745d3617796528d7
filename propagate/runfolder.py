"""Run folders: one writer at a time, and no resumption on different data or settings.

A run folder is an output folder written over time (``train --out``, each run of
``reproduce``, the report's work folder, a sweep's result folder). Two rules keep
its results from being lost or mixed:

1. **A lock.** :func:`lock_folder` takes an exclusive ``flock`` on ``DIR/.lock``
   and writes the holder's pid, host and command into it. A second writer fails
   at once with one line naming the holder. The kernel drops the lock when its
   process ends, however it ends, so a lock file left by a dead process is simply
   taken over (no stale-lock cleanup, no pid guessing). The lock is held until
   :meth:`FolderLock.release`, the end of a ``with`` block, or until the handle
   is garbage-collected.
2. **An identity.** :func:`claim` records what the run is, ``DIR/identity.json``:
   the full configuration and the dataset's identity (name, sizes, a SHA-256 of
   the arrays actually used, so a training subset differs from the full split;
   see :func:`propagate.data.dataset_identity`). Resuming with any difference
   raises :class:`IdentityMismatch`, whose message names the first differing
   field and the option to use instead (the caller passes one its command has).
   A non-empty folder without ``identity.json`` is not a run folder: it is
   refused, never written into.

Usage, for a new command's result folder::

    from propagate.runfolder import claim
    with claim(out_dir, {"kind": "sweep", "config": cfg, "dataset": dataset_identity(ds)},
               resume=resume, option="--out", hint="use another --out, or --no-resume to start over"):
        ...  # write results into out_dir

Standard library only.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import os
import socket
from pathlib import Path
from typing import Any, Iterable

from propagate.errors import UserError

__all__ = ["LOCK_FILE", "IDENTITY_FILE", "FolderLock", "FolderBusy", "IdentityMismatch", "lock_folder",
           "read_identity", "identity_difference", "check_folder", "claim"]

LOCK_FILE = ".lock"
IDENTITY_FILE = "identity.json"


class FolderBusy(UserError):
    """Another process holds the folder's lock; ``folder`` and ``holder`` (who, in words) say which."""

    def __init__(self, folder: Path, holder: str, option: str):
        self.folder, self.holder = Path(folder), holder
        super().__init__(f"{folder} is in use by {holder}; wait for it to finish or choose another {option}")


class IdentityMismatch(UserError):
    """The folder holds a run of a different configuration or dataset (or is not a run folder).

    ``folder``, ``field`` (dotted name of the first difference, or ``None`` when
    the folder is not a run folder), ``recorded`` and ``requested`` say what
    differs; ``detail`` is the message without the hint, so a caller can give
    its own option (the report says ``--work-dir``).
    """

    def __init__(self, folder: Path, detail: str, hint: str, field: str | None = None,
                 recorded: Any = None, requested: Any = None):
        self.folder, self.detail, self.field = Path(folder), detail, field
        self.recorded, self.requested = recorded, requested
        super().__init__(f"{detail}; {hint}" if hint else detail)


# ----------------------------------------------------------------------- lock


class FolderLock:
    """An exclusive lock on a folder (see :func:`lock_folder`); release with :meth:`release` or ``with``."""

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


def _holder_text(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return "another process"
    who = f"process {info.get('pid', '?')} on {info.get('host', '?')}"
    if info.get("since"):
        who += f" since {info['since']}"
    if info.get("command"):
        who += f" ({info['command']})"
    return who


def lock_folder(folder: str | os.PathLike, option: str = "--out") -> FolderLock:
    """Lock ``folder`` (created if missing) for this process, or raise :class:`FolderBusy` at once.

    ``option`` names the command's option for the folder, for the message.
    """
    import fcntl

    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise UserError(f"cannot use {folder} as a run folder: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise FolderBusy(folder, _holder_text(folder / LOCK_FILE), option) from None
        raise UserError(f"cannot lock {folder}: {exc.strerror or exc}") from None
    from propagate.io import command_line

    info = {"pid": os.getpid(), "host": socket.gethostname(),
            "since": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "command": command_line()}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    return FolderLock(folder, fd)


# ------------------------------------------------------------------- identity


def _normal(obj: Any) -> Any:
    """``obj`` as it reads back from the identity file (tuples become lists, keys strings, inf "inf"), for comparison."""
    from propagate.io import strict_json_value

    return json.loads(json.dumps(strict_json_value(obj), default=str))


def read_identity(folder: str | os.PathLike) -> dict | None:
    """The identity recorded in ``folder`` (``None`` if there is none)."""
    path = Path(folder) / IDENTITY_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())["identity"]
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"{path} is damaged; move the folder away or choose another output folder") from None


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


def _foreign_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in (LOCK_FILE, IDENTITY_FILE)) if folder.is_dir() else []


def _refuse_if_not_resumable(folder: Path, recorded: dict | None, requested: Any, resume: bool,
                             option: str, hint: str) -> None:
    if recorded is None:
        foreign = _foreign_files(folder)
        if foreign:
            raise IdentityMismatch(
                folder, f"{folder} holds files that no propagate run recorded ({', '.join(foreign[:3])}"
                        f"{', ...' if len(foreign) > 3 else ''}) and is left untouched",
                f"choose a new or empty {option}")
    elif resume and recorded != requested:
        field, old, new = identity_difference(recorded, requested)
        raise IdentityMismatch(folder, f"{folder} holds a run with {field} = {_short(old)}, not {_short(new)}",
                               hint, field, old, new)


def check_folder(folder: str | os.PathLike, identity: dict | None = None, *, resume: bool = True,
                 option: str = "--out", hint: str = "use another --out, or --no-resume to start over") -> None:
    """What :func:`claim` would refuse, checked without creating or locking anything (for a CLI, before its banner).

    Raises :class:`FolderBusy` if another process holds the folder, and
    :class:`IdentityMismatch` as :func:`claim` does (``identity=None`` checks
    only that the folder is new, empty or a run folder).
    """
    import fcntl

    folder = Path(folder)
    if not folder.is_dir():
        return
    lock_path = folder / LOCK_FILE
    if lock_path.is_file():
        try:
            fd = os.open(lock_path, os.O_RDONLY)
        except OSError:
            fd = None
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                raise FolderBusy(folder, _holder_text(lock_path), option) from None
            finally:
                os.close(fd)
    recorded = read_identity(folder)
    if identity is None:
        if recorded is None:
            _refuse_if_not_resumable(folder, None, None, resume, option, hint)
        return
    _refuse_if_not_resumable(folder, recorded, _normal(identity), resume, option, hint)


def claim(folder: str | os.PathLike, identity: dict, *, resume: bool = True, option: str = "--out",
          hint: str = "use another --out, or --no-resume to start over",
          discard: Iterable[str] = ()) -> FolderLock:
    """Lock ``folder`` and make sure it holds this run (``identity``); return the lock.

    - A new or empty folder: the identity is recorded.
    - A run folder with the same identity: resumed.
    - A run folder with a different identity: :class:`IdentityMismatch` naming
      the first difference and ``hint``, when ``resume``.
    - ``resume=False``: the run starts over: ``discard`` (file names, e.g. the
      checkpoint a resumption would trust) is deleted, the new identity recorded.
    - A non-empty folder that is not a run folder (no identity recorded):
      :class:`IdentityMismatch`, whatever ``resume`` says: its files are not ours.

    ``identity`` is any JSON-able dict; compare the configuration and
    :func:`propagate.data.dataset_identity` of the data used.
    """
    folder = Path(folder)
    lock = lock_folder(folder, option)
    try:
        recorded = read_identity(folder)
        requested = _normal(identity)
        _refuse_if_not_resumable(folder, recorded, requested, resume, option, hint)
        if not resume:  # starting over: nothing a resumption would trust may survive
            for name in discard:
                with contextlib.suppress(FileNotFoundError):
                    (folder / name).unlink()
        if recorded != requested:
            from propagate.io import atomic_write_json

            atomic_write_json(folder / IDENTITY_FILE, {"identity": requested, "note": (
                "what this run folder holds; propagate refuses to resume it with a different configuration or data")})
    except BaseException:
        lock.release()
        raise
    return lock
