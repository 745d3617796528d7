"""Results as files: atomic writes, run metadata, tidy tables.

Every file ``propagate`` writes goes through :func:`atomic_write_bytes` (write a
temporary file in the same folder, flush, ``os.replace``), so an interrupted run
leaves either the previous file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

__all__ = [
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_directory",
    "run_metadata",
    "write_table",
    "read_table",
]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; create parent folders as needed.

    The file gets the usual permissions (0666 less the umask), not the
    owner-only mode of a temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


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


def to_json(obj: Any) -> str:
    """JSON text for results (numpy scalars and arrays converted; NaN/inf kept as JS literals)."""
    return json.dumps(obj, indent=2, default=_json_default) + "\n"


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically."""
    return atomic_write_text(path, to_json(obj))


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Build a folder in a temporary sibling and swap it into place at the end.

    Yields the temporary folder to write into. On success the previous folder at
    ``path`` (if any) is replaced as a whole; on an exception or interruption the
    previous folder is left untouched and the temporary one removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        yield tmp
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


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for pkg in ("propagate", "numpy", "scipy", "sympy", "mpmath", "torch", "pandas", "matplotlib"):
        # Only report what this run actually imported (torch may not be loaded for theory).
        mod = pkg if pkg != "propagate" else "propagate"
        if mod in sys.modules or pkg == "propagate":
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


def _command_line() -> str:
    import shlex

    if _COMMAND is not None:
        return shlex.join(_COMMAND)
    # library use (script, notebook): the interpreter's own command line
    return shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else ""


def run_metadata(seed: int | None = None, **extra: Any) -> dict[str, Any]:
    """What produced a result: command line, seed, time, platform and package versions."""
    meta: dict[str, Any] = {
        "command": _command_line(),
        "seed": seed,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "versions": _versions(),
    }
    meta.update(extra)
    return meta


def write_table(df, path: str | os.PathLike, meta: dict[str, Any] | None = None) -> Path:
    """Write a tidy table (pandas DataFrame) to ``.csv`` or ``.json``, atomically.

    CSV gets its metadata in a sidecar ``<name>.meta.json`` so the CSV stays plain
    for pandas, R and spreadsheets. JSON holds ``{"meta": ..., "rows": [...]}``.
    """
    path = Path(path)
    meta = meta if meta is not None else run_metadata()
    if path.suffix.lower() == ".json":
        rows = json.loads(df.to_json(orient="records", double_precision=15))
        atomic_write_json(path, {"meta": meta, "rows": rows})
    else:
        atomic_write_text(path, df.to_csv(index=False, float_format="%.10g"))
        atomic_write_json(path.with_name(path.name + ".meta.json"), meta)
    return path


def read_table(path: str | os.PathLike):
    """Read a table written by :func:`write_table` back into a DataFrame."""
    import pandas as pd

    path = Path(path)
    if path.suffix.lower() == ".json":
        with open(path) as fh:
            return pd.DataFrame(json.load(fh)["rows"])
    return pd.read_csv(path)
