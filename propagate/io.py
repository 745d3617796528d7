"""Results as files: atomic writes, run metadata, tidy tables.

Every file ``propagate`` writes goes through :func:`atomic_write_bytes` (write a
temporary file in the same folder, flush, ``os.replace``), so an interrupted run
leaves either the previous file or the new one, never half of one. Files that
form one result (a table and its ``.meta.json`` sidecar, a command's ``--json``
and ``--csv``) go through :func:`atomic_write_files`: all of them are written
to temporary files first and renamed into place only then, so a failure leaves
every previous file as it was.

Output paths a user gives are checked before any work starts
(:func:`check_output_file`, with ``sidecar=True`` its ``.meta.json`` too,
:func:`check_output_dir`, :func:`check_replaceable_dir`,
:func:`check_files_in` for the files a run writes into its folder; the CLI's
argument types call them at parse time), and two outputs of one command that
are the same file (a sidecar included) are refused
(:func:`check_distinct_outputs`); the writers raise
:class:`~propagate.errors.UserError` with one line
when the operating system refuses a write anyway (full disk, read-only
folder), never a bare ``OSError``. A folder is replaced as a whole only when it
was made by ``propagate`` (a marker file, :data:`FOLDER_MARKER`, inside it).

JSON is strict (RFC 8259, which has no NaN or infinity): :func:`to_json` writes
NaN as ``null`` and +-infinity as the strings ``"inf"`` and ``"-inf"``, which
``float()`` reads back (tables from pandas have ``null`` for both).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import glob
import json
import os
import platform
import re
import shutil
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator
from propagate.errors import UserError

__all__ = [
    "Closing",
    "FOLDER_MARKER",
    "check_output_file",
    "check_output_dir",
    "check_replaceable_dir",
    "check_distinct_outputs",
    "check_files_in",
    "strict_json_value",
    "to_json",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_write_files",
    "atomic_directory",
    "run_metadata",
    "meta_path",
    "write_meta",
    "write_table",
    "write_json",
    "table_files",
    "json_files",
    "read_table",
]


class Closing:
    """A ``with`` block closes it: ``__enter__`` returns the object, ``__exit__`` calls its ``close()``
    (the runners, the progress bar and the run store share this)."""

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: The file inside every folder that ``propagate`` builds and may later replace as a whole.
FOLDER_MARKER = ".propagate-folder"


def _user_error(message: str):

    return UserError(message)


def _why(exc: OSError) -> str:
    return exc.strerror or exc.__class__.__name__


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists (what a ``mkdir -p`` would start from)."""
    p = path
    while not os.path.lexists(p) and p.parent != p:
        p = p.parent
    return p


def _probe_writable(folder: Path, path: Path, label: str) -> None:
    """Create and remove a temporary file in ``folder``: the only sure test of writability (root, ACLs, /proc)."""
    if not folder.is_dir():
        raise _user_error(f"{label}{_q(path)}: {_q(folder)} is not a folder")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".propagate-probe.", dir=folder)
    except OSError as exc:
        raise _user_error(f"{label}cannot write {_q(path)}: {_why(exc)} in {_q(folder)}") from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(tmp)


def _label(option: str | None) -> str:
    return f"{option} " if option else ""


def _q(path) -> str:
    """A path for a message: quoted by ``repr``, so a newline or other control character in it stays on one line."""
    return repr(os.fspath(path)) if isinstance(path, (str, os.PathLike)) else repr(path)


#: Longest path (bytes) and file name (bytes) assumed where the OS does not say (Linux: PATH_MAX, NAME_MAX).
PATH_MAX, NAME_MAX = 4096, 255


def _name_max(path: Path) -> int:
    try:
        return int(os.pathconf(_nearest_existing(path.parent), "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        return NAME_MAX


def check_path_text(path: str | os.PathLike, option: str | None = None, what: str = "file") -> Path:
    """The text of a path the user typed, as a Path (``~`` expanded), or :class:`~propagate.errors.UserError`.

    Refused, before anything looks at the file system: an empty name, a control
    character (a newline, a tab, ...: it would split messages and is almost
    always a quoting mistake), a path longer than :data:`PATH_MAX` bytes and a
    file or folder name longer than the file system allows (usually 255 bytes).
    ``what`` (``"file"`` or ``"folder"``) is for the message.
    """
    label = _label(option)
    if not isinstance(path, (str, os.PathLike)):
        raise _user_error(f"{label}needs a {what} name, got {path!r}")
    text = os.fspath(path)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if not text.strip():
        raise _user_error(f"{label}needs a {what} name, got an empty string")
    bad = next((c for c in text if ord(c) < 32 or ord(c) == 127), None)
    if bad is not None:
        raise _user_error(f"{label}{_q(text)} contains the control character {bad!r}; give a {what} name without one")
    size = len(os.fsencode(text))
    if size > PATH_MAX:
        raise _user_error(f"{label}the path is {size} bytes long, more than the limit of {PATH_MAX}: {_q(text[:60] + '...')}")
    p = Path(text).expanduser()
    longest = max(p.parts, key=lambda part: len(os.fsencode(part)), default="")
    limit = _name_max(p)
    if len(os.fsencode(longest)) > limit:
        raise _user_error(f"{label}the name {_q(longest[:40] + '...')} is {len(os.fsencode(longest))} bytes long, "
                          f"more than this file system's limit of {limit}")
    return p


def check_output_path(path: str | os.PathLike, option: str | None = None, *, kind: str = "file") -> Path:
    """The one check of an output path a user gives: return it as a Path, or raise one-line :class:`UserError`.

    ``kind="file"``: a file to be written atomically; ``kind="dir"``: a folder to
    write into (created with its parents when missing). Refused, naming
    ``option`` (``--csv``, ``--out``) and quoting the path with ``repr``:
    everything :func:`check_path_text` refuses; for a file, an existing folder
    (or a name ending in ``/``), something that is not a regular file (a
    device, a pipe); for a folder, an existing non-folder; and a place where
    nothing can be created (the nearest existing ancestor must be a folder we
    can write into: tested by creating and removing a temporary file). A
    missing parent folder is fine when it can be created (the writers make it).
    Any error the operating system gives while looking is reported the same way.
    """
    if kind not in ("file", "dir"):
        raise ValueError(f"kind must be 'file' or 'dir', got {kind!r}")
    label = _label(option)
    p = check_path_text(path, option, "file" if kind == "file" else "folder")
    text = os.fspath(path)
    try:
        if kind == "file":
            if p.is_dir() or str(text).endswith(os.sep) or p.name in ("", ".", ".."):
                raise _user_error(f"{label}{_q(text)} is a folder; give a file name")
            if os.path.lexists(p) and not p.is_file():
                raise _user_error(f"{label}{_q(text)} exists and is not a regular file")
            _probe_writable(_nearest_existing(p.parent), p, label)
        else:
            if os.path.lexists(p) and not p.is_dir():
                raise _user_error(f"{label}{_q(text)} exists and is not a folder")
            _probe_writable(_nearest_existing(p), p, label)
    except OSError as exc:
        raise _user_error(f"{label}cannot use {_q(text)}: {_why(exc)}") from None
    return p


def check_output_file(path: str | os.PathLike, option: str | None = None, *, sidecar: bool = False) -> Path:
    """Check that a file can be written at ``path`` (atomically), before any work; return it as a Path.

    :func:`check_output_path` with ``kind="file"``. ``sidecar=True``: the
    file gets its ``.meta.json`` beside it (:func:`write_table`,
    :func:`write_json`), and that path is checked too (a folder or a device
    there, a name too long for the file system), so neither is written when
    the other could not be.
    """
    p = check_output_path(path, option, kind="file")
    if sidecar:
        check_sidecar(p, option, shown=path)
    return p


def check_sidecar(path: str | os.PathLike, option: str | None = None, *, shown=None) -> Path:
    """Check that the ``.meta.json`` beside the data file ``path`` can be written; return its path.

    ``shown`` is the data file's name as the user typed it (for the message).
    The folder is the data file's, so only the sidecar's own name and whatever
    is at that path now are checked.
    """
    label = _label(option)
    side = meta_path(Path(path).expanduser())
    where = f"{label}{_q(shown if shown is not None else path)}: its metadata file {_q(side)}"
    try:
        check_path_text(side, None)
    except UserError as exc:
        raise _user_error(f"{where} cannot be written: {exc}") from None
    try:
        if side.is_dir():
            raise _user_error(f"{where} is a folder; move it away or choose another name")
        if os.path.lexists(side) and not side.is_file():
            raise _user_error(f"{where} exists and is not a regular file; move it away or choose another name")
    except OSError as exc:
        raise _user_error(f"{where} cannot be used: {_why(exc)}") from None
    return side


def check_files_in(folder: str | os.PathLike, names, option: str | None = "--out") -> list[Path]:
    """Refuse (one-line :class:`UserError`), before any work, a folder where a command's files cannot go.

    ``names``: the files (paths relative to ``folder``, sidecars included) the
    command will write there (a run folder's tables and checkpoint). Refused:
    one of them is a folder, or exists and is not a regular file (a device, a
    pipe, a dangling link); the writer would fail only after the work. A
    ``folder`` that does not exist yet is fine. Returns the paths.
    """
    label = _label(option)
    base = Path(folder).expanduser()
    paths = [base / n for n in names]
    for name, p in zip(names, paths):
        try:
            if p.is_dir():
                raise _user_error(f"{label}{_q(folder)} holds a folder {_q(name)} where the run writes a file of "
                                  f"that name; move it away or choose another folder")
            if os.path.lexists(p) and not p.is_file():
                raise _user_error(f"{label}{_q(folder)} holds {_q(name)}, which is not a regular file, where the "
                                  f"run writes a file of that name; move it away or choose another folder")
        except OSError as exc:
            raise _user_error(f"{label}cannot use {_q(p)}: {_why(exc)}") from None
    return paths


def _same_file_key(path: Path):
    """What two paths share when they name the same file: its inode if it exists, else its resolved path."""
    try:
        st = os.stat(path)
        return ("inode", st.st_dev, st.st_ino)
    except OSError:
        return ("path", os.path.normcase(os.path.realpath(path)))


def check_distinct_outputs(outputs, reserved=()) -> None:
    """Refuse (one-line :class:`UserError`), before any work, two outputs of one command that are the same file.

    ``outputs``: ``(option, path, sidecar)`` triples (``path`` ``None`` or
    ``"-"``: not a file, skipped; ``sidecar``: the file gets a ``.meta.json``
    beside it, which counts as an output too: ``--csv a.csv --json
    a.csv.meta.json`` would have the CSV's metadata overwrite the JSON).
    ``reserved``: ``(what, path)`` pairs of files the command writes anyway
    (the files of its ``--out`` folder), which no option may name either.
    Paths are compared after ``~``, links and ``..`` are resolved (an existing
    file by its inode, so a hard link counts).
    """
    seen: dict = {}

    def add(what: str, path: Path) -> None:
        key = _same_file_key(path)
        if key in seen:
            raise _user_error(f"{seen[key]} and {what} would both be {_q(path)} (one would overwrite the other); "
                              f"give them different names")
        seen[key] = what

    for what, path in reserved:
        add(what, Path(path).expanduser())
    for option, path, sidecar in outputs:
        if path is None or (isinstance(path, str) and path == "-"):
            continue
        p = Path(path).expanduser()
        add(f"{option} {_q(path)}", p)
        if sidecar:
            add(f"the metadata file of {option} {_q(path)}", meta_path(p))


def check_output_dir(path: str | os.PathLike, option: str | None = None) -> Path:
    """Check that ``path`` is (or can be made) a folder we can write into; return it as a Path.

    :func:`check_output_path` with ``kind="dir"``.
    """
    return check_output_path(path, option, kind="dir")


def _folder_is_ours(path: Path, adopt=None) -> bool:
    if (path / FOLDER_MARKER).is_file():
        return True
    return bool(adopt is not None and adopt(path))


def _manifest(folder: Path) -> set[str] | None:
    """The files (paths relative to ``folder``) its :data:`FOLDER_MARKER` lists as propagate's, or ``None``.

    Markers written before the list existed (plain text) give ``None``: nothing
    can be told apart there, and such a folder is replaced as before.
    """
    try:
        data = json.loads((folder / FOLDER_MARKER).read_text())
    except (OSError, ValueError):
        return None
    files = data.get("files") if isinstance(data, dict) else None
    return set(files) if isinstance(files, list) else None


def _files_below(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if not p.is_dir() or p.is_symlink())


def _user_added(folder: Path) -> list[str]:
    """Files in a folder propagate made that its marker does not list: the user put them there."""
    listed = _manifest(folder)
    if listed is None:
        return []
    return [f for f in _files_below(folder) if f not in listed and f != FOLDER_MARKER]


def check_replaceable_dir(path: str | os.PathLike, option: str | None = None, *, adopt=None) -> Path:
    """Check that ``path`` may be replaced as a whole by a folder ``propagate`` builds; return it (absolute).

    Allowed: nothing there yet, an empty folder, or a folder holding
    :data:`FOLDER_MARKER` (one ``propagate`` made) and no file the marker does
    not list (a file the user added since is refused by name, so it is never
    deleted by a rebuild). ``adopt(path) -> bool`` may accept folders made
    before the marker existed. Anything else (a file, a link, a folder of the
    user's) is refused, so nothing a user put there is lost.
    """
    label = _label(option)
    p = check_output_dir(path, option)
    p = Path(os.path.abspath(p))  # '.' and '..' resolved without following links
    if p.parent == p:
        raise _user_error(f"{label}{_q(path)}: cannot replace the root folder")
    if os.path.islink(p):
        raise _user_error(f"{label}{_q(path)} is a symbolic link; give the real folder or a new name")
    try:
        if p.is_dir() and any(p.iterdir()) and not _folder_is_ours(p, adopt):
            raise _user_error(f"{label}{_q(path)} is a folder that propagate did not make (no {FOLDER_MARKER} "
                              f"inside); choose a new or empty folder, or move its contents away")
        added = _user_added(p) if p.is_dir() else []
    except OSError as exc:
        raise _user_error(f"{label}cannot use {_q(path)}: {_why(exc)}") from None
    if added:
        raise _user_error(f"{label}{_q(path)} holds {len(added)} file{'s' * (len(added) > 1)} propagate did not "
                          f"write ({', '.join(map(repr, added[:3]))}{', ...' if len(added) > 3 else ''}); a rebuild "
                          f"replaces the folder as a whole: move them away or choose another folder")
    return p


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; create parent folders as needed.

    The file gets the usual permissions (0666 less the umask), not the
    owner-only mode of a temporary file. A write the operating system refuses
    (no permission, no space, a folder in the way) raises
    :class:`~propagate.errors.UserError` naming ``path``.
    """
    path = Path(path)
    _refuse_target(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _user_error(f"cannot write {_q(path)}: {_why(exc)}") from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise _user_error(f"cannot write {_q(path)}: {_why(exc)}") from None
        raise
    return path


def _refuse_target(path: Path) -> None:
    """The refusals of :func:`atomic_write_bytes` for a target ``path``, before anything is written."""
    if path.is_dir():
        raise _user_error(f"cannot write {_q(path)}: it is a folder")
    if os.path.lexists(path) and not path.is_file():
        raise _user_error(f"cannot write {_q(path)}: it exists and is not a regular file")
    base = _nearest_existing(path.parent)
    if not base.is_dir():
        raise _user_error(f"cannot write {_q(path)}: {_q(base)} is not a folder")


def _backup(path: Path) -> Path | None:
    """A hard link to the file now at ``path`` (to put it back if a later rename of a group fails), or ``None``."""
    if not path.is_file():
        return None
    for _ in range(100):
        name = path.with_name(f".{path.name}.{os.urandom(4).hex()}.bak")
        try:
            os.link(path, name)
            return name
        except FileExistsError:
            continue
        except OSError:  # no hard links here (some network and FUSE file systems)
            return None
    return None


def atomic_write_files(files) -> list[Path]:
    """Write several files as one result: all of them, or (on any failure) none.

    ``files``: ``(path, bytes)`` pairs (a data file and its ``.meta.json``, the
    ``--json`` and ``--csv`` of one command). Every file is first written in
    full to a temporary file beside its target (after the refusals of
    :func:`atomic_write_bytes`: a folder or device in the way, a parent that is
    a file), and only then are they renamed into place, one after another. If
    writing any of them fails, or is interrupted, no target has been touched;
    if a rename fails (the file system changed meanwhile), the targets already
    replaced get their previous content back (kept as hard links) or, where
    there was none, are removed. The same path twice is refused. Returns the
    paths, in order.
    """
    items = [(Path(p), bytes(data)) for p, data in files]
    keys = [_same_file_key(p) for p, _ in items]
    if len(set(keys)) != len(keys):
        raise ValueError(f"the same file twice in one write: {[str(p) for p, _ in items]}")
    for path, _ in items:
        _refuse_target(path)
    staged: list[tuple[Path, str]] = []
    backups: list[tuple[Path, Path | None, bool]] = []  # (target, backup, existed)
    try:
        for path, data in items:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            except OSError as exc:
                raise _user_error(f"cannot write {_q(path)}: {_why(exc)}") from None
            staged.append((path, tmp))
            try:
                with os.fdopen(fd, "wb") as fh:
                    os.fchmod(fh.fileno(), 0o666 & ~_umask())
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
            except OSError as exc:
                raise _user_error(f"cannot write {_q(path)}: {_why(exc)}") from None
        for path, tmp in staged:
            existed = os.path.lexists(path)
            backups.append((path, _backup(path) if existed else None, existed))
            try:
                os.replace(tmp, path)
            except OSError as exc:
                _, backup, _ = backups.pop()  # this target was not replaced
                if backup is not None:
                    with contextlib.suppress(OSError):
                        os.unlink(backup)
                raise _user_error(f"cannot write {_q(path)}: {_why(exc)}") from None
    except BaseException:
        for path, tmp in staged:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        for path, backup, existed in reversed(backups):  # put back what was replaced
            with contextlib.suppress(OSError):
                if backup is not None:
                    os.replace(backup, path)
                elif not existed:
                    os.unlink(path)
        raise
    for _, backup, _ in backups:
        if backup is not None:
            with contextlib.suppress(OSError):
                os.unlink(backup)
    return [p for p, _ in items]


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def _json_default(obj: Any) -> Any:
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    return str(obj)


def strict_json_value(obj: Any) -> Any:
    """``obj`` with every float made strict-JSON-safe: NaN -> ``None``, +-inf -> ``"inf"``/``"-inf"``.

    Walks dicts, lists and tuples; numpy scalars and arrays become Python
    numbers and lists first. Anything else is returned as is.
    """
    if isinstance(obj, float):  # numpy.float64 included (a float subclass)
        if obj != obj:
            return None
        if obj in (float("inf"), float("-inf")):
            return "inf" if obj > 0 else "-inf"
        return float(obj)
    if isinstance(obj, dict):
        return {k: strict_json_value(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json_value(v) for v in obj]
    np = sys.modules.get("numpy")
    if np is not None and isinstance(obj, (np.generic, np.ndarray)):
        return strict_json_value(obj.tolist())
    return obj


def to_json(obj: Any) -> str:
    """Strict JSON text for results (numpy converted; NaN as ``null``, +-inf as ``"inf"``/``"-inf"``)."""
    return json.dumps(strict_json_value(obj), indent=2, allow_nan=False,
                      default=lambda o: strict_json_value(_json_default(o))) + "\n"


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically."""
    return atomic_write_text(path, to_json(obj))


_MARKER_NOTE = ("made by propagate; this folder is replaced as a whole when rebuilt, "
                "unless it holds a file not listed here")


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, *, adopt=None) -> Iterator[Path]:
    """Build a folder in a temporary sibling and swap it into place at the end.

    Yields the temporary folder to write into; it already holds
    :data:`FOLDER_MARKER`, which at the end lists every file built (JSON
    ``{"note": ..., "files": [...]}``), so a later run may replace the result
    but refuses to while the folder holds a file the user added. On success the
    previous folder at ``path`` (if any) is replaced as a whole; on an exception
    or interruption the previous folder is left untouched and the temporary one
    removed. Only a folder that propagate made may be replaced
    (:func:`check_replaceable_dir`, checked before anything is built and again
    before the swap); anything else raises :class:`~propagate.errors.UserError`.
    """
    path = check_replaceable_dir(path, adopt=adopt)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_dead_builds(path)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    except OSError as exc:
        raise _user_error(f"cannot create {_q(path)}: {_why(exc)}") from None
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        atomic_write_json(tmp / FOLDER_MARKER, {"note": _MARKER_NOTE, "files": [], "builder": _builder()})
        yield tmp
        # the marker lists what was built, so a file added later is known to be the user's
        built = [f for f in _files_below(tmp) if f != FOLDER_MARKER]
        atomic_write_json(tmp / FOLDER_MARKER, {"note": _MARKER_NOTE, "files": built})
        check_replaceable_dir(path, adopt=adopt)  # something may have appeared there meanwhile
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _builder() -> dict:
    """Who builds a temporary folder of :func:`atomic_directory`: this process on this machine."""
    return {"pid": os.getpid(), "host": socket.gethostname()}


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's process, or the question cannot be asked: alive, as far as we know
    return True


def _remove_dead_builds(path: Path) -> list[str]:
    """Remove the temporary folders of :func:`atomic_directory` for ``path`` whose builder was killed.

    A build killed outright (SIGKILL, a crash) leaves its temporary sibling
    ``.NAME.XXXXXXXX.tmp/``. Its marker names the process that built it; a
    folder whose builder ran on this machine and no longer runs is half of a
    build that will never finish, and goes. One whose builder still runs (a
    build beside this one), ran elsewhere, or that has no such marker, stays.
    Returns the names removed.
    """
    gone = []
    host = socket.gethostname()
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        if not tmp.is_dir() or tmp.is_symlink() or not re.fullmatch(r"\.[^/]*\.[a-z0-9_]{8}\.tmp", tmp.name):
            continue
        try:
            marker = json.loads((tmp / FOLDER_MARKER).read_text())
            builder = marker["builder"]
            pid, where = int(builder["pid"]), str(builder["host"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if marker.get("note") == _MARKER_NOTE and where == host and pid != os.getpid() and not _process_alive(pid):
            shutil.rmtree(tmp, ignore_errors=True)
            gone.append(tmp.name)
    return gone


def _versions(uses: tuple[str, ...] = ()) -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for pkg in ("propagate", "numpy", "scipy", "sympy", "mpmath", "torch", "pandas", "matplotlib"):
        # Only report what this run imported (torch may not be loaded for theory), and what its work used
        # elsewhere (``uses``: torch in Dask workers while this process only collected their results).
        if pkg in sys.modules or pkg == "propagate" or pkg in uses:
            try:
                out[pkg] = metadata.version(pkg)
            except metadata.PackageNotFoundError:
                pass
    return out


_COMMAND: list[str] | None = None


def set_command(argv: list[str] | None) -> None:
    """Record the command line being run (the CLI calls this), for :func:`run_metadata`."""
    global _COMMAND
    _COMMAND = None if argv is None else list(argv)


def command_line() -> str:
    """The command line being run: the one the CLI recorded (:func:`set_command`), else the interpreter's."""
    import shlex

    if _COMMAND is not None:
        return shlex.join(_COMMAND)
    # library use (script, notebook): the interpreter's own command line
    return shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else ""


def run_metadata(seed: int | None = None, uses: tuple[str, ...] = (), **extra: Any) -> dict[str, Any]:
    """What produced a result: command line, seed, time, platform and package versions (those imported here,
    and ``uses``: packages the work ran with elsewhere, such as torch on Dask workers)."""
    meta: dict[str, Any] = {
        "command": command_line(),
        "seed": seed,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "versions": _versions(tuple(uses)),
    }
    meta.update(extra)
    return meta


def meta_path(path: str | os.PathLike) -> Path:
    """The metadata file beside a data file: ``<name>.meta.json`` (``table.csv`` -> ``table.csv.meta.json``)."""
    path = Path(path)
    return path.with_name(path.name + ".meta.json")


def write_meta(path: str | os.PathLike, meta: dict[str, Any] | None = None) -> Path:
    """Write ``meta`` (default :func:`run_metadata`) as the ``.meta.json`` beside the data file ``path``."""
    return atomic_write_json(meta_path(path), meta if meta is not None else run_metadata())


def _table_bytes(df, path: Path, meta: dict[str, Any]) -> bytes:
    suffix = path.suffix.lower()
    if suffix == ".json":
        rows = json.loads(df.to_json(orient="records", double_precision=15))
        return to_json({"meta": meta, "rows": rows}).encode("utf-8")
    if suffix == ".parquet":
        import io as _io

        buf = _io.BytesIO()
        df.to_parquet(buf, index=False)
        return buf.getvalue()
    return df.to_csv(index=False, float_format="%.10g").encode("utf-8")


def table_files(df, path: str | os.PathLike, meta: dict[str, Any] | None = None) -> list[tuple[Path, bytes]]:
    """The files :func:`write_table` writes, as ``(path, bytes)`` pairs: the table, then its ``.meta.json``
    (for :func:`atomic_write_files`, to write them with other files as one result)."""
    path = Path(path)
    meta = meta if meta is not None else run_metadata()
    return [(path, _table_bytes(df, path, meta)), (meta_path(path), to_json(meta).encode("utf-8"))]


def json_files(obj: Any, path: str | os.PathLike, meta: dict[str, Any] | None = None) -> list[tuple[Path, bytes]]:
    """The files :func:`write_json` writes, as ``(path, bytes)`` pairs: the document, then its ``.meta.json``."""
    path = Path(path)
    meta = meta if meta is not None else run_metadata()
    return [(path, to_json(obj).encode("utf-8")), (meta_path(path), to_json(meta).encode("utf-8"))]


def write_table(df, path: str | os.PathLike, meta: dict[str, Any] | None = None) -> Path:
    """Write a tidy table (pandas DataFrame) to ``.csv``, ``.json`` or ``.parquet``, atomically, with its metadata.

    Every format gets the sidecar ``<name>.meta.json`` (:func:`meta_path`): the
    one place a reader (:func:`propagate.load`) finds what produced the file.
    CSV stays plain for pandas, R and spreadsheets (floats to 10 significant
    digits); JSON holds ``{"meta": ..., "rows": [...]}`` (strict: NaN as
    ``null``); Parquet keeps every digit and the column types. The table and
    its sidecar are written as one (:func:`atomic_write_files`): if either
    cannot be written, neither file is replaced.
    """
    atomic_write_files(table_files(df, path, meta))
    return Path(path)


def write_json(obj: Any, path: str | os.PathLike, meta: dict[str, Any] | None = None) -> Path:
    """Write a JSON result that is not a table (a solution, a document) atomically, with its ``.meta.json``
    (the two as one: :func:`atomic_write_files`)."""
    atomic_write_files(json_files(obj, path, meta))
    return Path(path)


def read_table(path: str | os.PathLike):
    """Read a table written by :func:`write_table` back into a DataFrame."""
    import pandas as pd

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".json":
        with open(path) as fh:
            return pd.DataFrame(json.load(fh)["rows"])
    if suffix == ".parquet":
        return pd.read_parquet(path)
    return pd.read_csv(path)
