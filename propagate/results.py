"""Read any output of ``propagate`` back: :func:`load` gives its tables as DataFrames, with their metadata.

One call for every kind of result::

    import propagate
    run = propagate.load("runs/snn")              # a `train --out` folder
    run["history"], run["summary"], run.meta["history"]["command"]
    rep = propagate.load("reports/mnist-5k")      # a report: its data/ folder
    rep["simulation_layers"].groupby("config")["pre_var"].last()
    propagate.load("runs/sim/results.parquet").table

What is read:

- **a file** (``.csv``, ``.parquet``, ``.json``): one table, named by the
  file's stem. A JSON table (``{"meta": ..., "rows": [...]}``, as
  :func:`propagate.io.write_table` and every ``--json`` write) gives its rows;
  a command's richer JSON document gives each list of records in it as a table
  (``theory --json``: ``layers``) and its scalars as a one-row table named by
  the stem; any other JSON object (``selu_solution.json``) becomes one row
  (nested keys joined by ``.``).
- **a folder**: every data file in it as above (a ``.json`` that repeats a
  ``.csv`` of the same stem is skipped), and the data files one level down
  (the runs of a ``reproduce`` folder, the ``trainability/`` grid of a
  ``scaling`` folder) concatenated per stem with a ``run`` column naming the
  subfolder; such a table is named by its stem, or ``run_<stem>`` where the
  folder itself has a table of that name (``reproduce``: ``summary`` is the
  folder's, ``run_summary`` the runs' own). A report folder is read through
  its ``data/``. Folders of finished points (``points/``), checkpoints,
  figures and hidden files are not data and are left out.

Metadata: ``Loaded.meta[name]`` is what was written beside the table (its
``.meta.json``, or the ``meta`` inside a JSON table; for a table gathered from
runs, ``{run: meta}``); ``Loaded.kind`` the kind of folder (its marker,
``identity.json`` or layout: ``train``, ``reproduce``, ``trainability``,
``sweep``, ``scaling``, ``report``, ``data``, or ``file``);
``Loaded.identity`` its ``identity.json`` (configuration and dataset
identity) when it has one. Metadata is kept beside the DataFrames, not in
``DataFrame.attrs``, so tables concatenate freely.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from propagate.errors import UserError

__all__ = ["Loaded", "load", "DATA_SUFFIXES"]

#: Suffixes of data files.
DATA_SUFFIXES = (".csv", ".parquet", ".json")
#: JSON files in result folders that are records about the folder, not data.
_NOT_DATA = {"identity.json", "spec.json", "sweep.json", "report.json"}
#: Folders that hold no tables: the runner's finished points, a report's figures.
_NOT_DATA_DIRS = {"points", "figures"}


@dataclass
class Loaded:
    """Tables read by :func:`load`: ``tables[name]`` DataFrames, ``meta[name]`` their metadata (module docstring)."""

    path: Path
    kind: str
    tables: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    identity: dict | None = None

    def __getitem__(self, name: str):
        try:
            return self.tables[name]
        except KeyError:
            raise KeyError(f"{self.path} has no table {name!r}; it has {', '.join(self.tables) or 'none'}") from None

    def __contains__(self, name) -> bool:
        return name in self.tables

    def __iter__(self) -> Iterator[str]:
        return iter(self.tables)

    def __len__(self) -> int:
        return len(self.tables)

    def keys(self):
        return self.tables.keys()

    def items(self):
        return self.tables.items()

    @property
    def table(self):
        """The one table of a file, or a folder's main table (``results``, ``summary``, ``history``, ``configs``,
        ``cells``: the first of these it has; else its first table)."""
        for name in ("results", "summary", "history", "configs", "cells"):
            if name in self.tables:
                return self.tables[name]
        if not self.tables:
            raise KeyError(f"{self.path} holds no table")
        return next(iter(self.tables.values()))

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k} {v.shape[0]}x{v.shape[1]}" for k, v in self.tables.items())
        return f"Loaded({str(self.path)!r}, kind={self.kind!r}: {shapes or 'no tables'})"


def load(path: str | os.PathLike) -> Loaded:
    """Read a result of ``propagate`` (a file or a folder; module docstring) into DataFrames with their metadata.

    :class:`~propagate.errors.UserError` for a path that does not exist, a
    file that is not CSV, Parquet or JSON, or a file that cannot be read.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"{str(path)!r} does not exist")
    if p.is_file():
        if p.suffix.lower() not in DATA_SUFFIXES or p.name.endswith(".meta.json"):
            raise UserError(f"{str(path)!r} is not a data file (.csv, .parquet or .json)")
        out = Loaded(p, "file")
        _add_file(out, p, p.stem)
        return out
    if (p / "data").is_dir() and (p / "README.md").is_file():  # a report: its tables are in data/
        inner = load(p / "data")
        inner.path, inner.kind = p, "report"
        return inner
    out = Loaded(p, _kind(p), identity=_read_json(p / "identity.json", {}).get("identity"))
    for f in _data_files(p):
        _add_file(out, f, f.stem)
    _add_runs(out, p)
    return out


def _kind(folder: Path) -> str:
    """The kind of a result folder: its run marker's, its identity's, or ``data`` for a plain folder of tables."""
    marker = _read_json(folder / ".propagate-run", {})
    if isinstance(marker, dict) and marker.get("kind"):
        return str(marker["kind"])
    ident = _read_json(folder / "identity.json", {})
    kind = ident.get("identity", {}).get("kind") if isinstance(ident, dict) else None
    if kind:
        return str(kind)
    if (folder / "results.parquet").exists() and (folder / "sweep.json").exists():
        return "sweep"
    return "data"


def _read_json(path: Path, default: Any) -> Any:
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return default


def _data_files(folder: Path) -> list[Path]:
    """The data files directly in ``folder``, sorted; a ``.json`` beside a table of the same stem is skipped."""
    files = [f for f in sorted(folder.iterdir()) if f.is_file() and not f.name.startswith(".")
             and f.suffix.lower() in DATA_SUFFIXES and not f.name.endswith(".meta.json") and f.name not in _NOT_DATA]
    tables = {f.stem for f in files if f.suffix.lower() != ".json"}
    return [f for f in files if not (f.suffix.lower() == ".json" and f.stem in tables)]


def _meta_beside(path: Path) -> dict | None:
    meta = _read_json(path.with_name(path.name + ".meta.json"), None)
    return meta if isinstance(meta, dict) else None


def _add_file(out: Loaded, path: Path, name: str) -> None:
    """Add the table(s) of one data file to ``out`` under ``name`` (a JSON document may give several)."""
    for key, (df, meta) in _read_file(path).items():
        full = name if key is None else key
        out.tables[full] = df
        out.meta[full] = meta


def _read_file(path: Path) -> dict:
    """``{table name or None (the file's own): (DataFrame, meta)}`` of one data file."""
    import pandas as pd

    sidecar = _meta_beside(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return {None: (pd.read_csv(path), sidecar)}
        if suffix == ".parquet":
            return {None: (pd.read_parquet(path), sidecar)}
        with open(path) as fh:
            obj = json.load(fh)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {str(path)!r}: {exc}") from None
    return _json_tables(obj, sidecar)


def _is_records(v) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(r, dict) for r in v)


def _json_tables(obj, sidecar: dict | None) -> dict:
    """Tables of a JSON result: its ``rows``, each other list of records, and its scalars as one row."""
    import pandas as pd

    if not isinstance(obj, dict):
        return {None: (pd.DataFrame(obj if _is_records(obj) else {"value": [obj]}), sidecar)}
    meta = sidecar if sidecar is not None else obj.get("meta")
    body = {k: v for k, v in obj.items() if k != "meta"}
    out = {}
    if "rows" in body and isinstance(body["rows"], list):
        out[None] = (pd.DataFrame(body.pop("rows")), meta)
    for k in [k for k, v in body.items() if _is_records(v)]:
        out[k] = (pd.DataFrame(body.pop(k)), meta)
    scalars = {k: v for k, v in body.items() if not isinstance(v, list)}
    if scalars and None not in out:
        out[None] = (pd.json_normalize(scalars), meta)
    return out


def _add_runs(out: Loaded, folder: Path) -> None:
    """Tables one folder down (runs), concatenated per stem with a ``run`` column (module docstring)."""
    import pandas as pd

    gathered: dict[str, list] = {}
    metas: dict[str, dict] = {}
    for sub in sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")
                      and d.name not in _NOT_DATA_DIRS):
        for f in _data_files(sub):
            for key, (df, meta) in _read_file(f).items():
                stem = f.stem if key is None else key
                gathered.setdefault(stem, []).append(df.assign(run=sub.name))
                metas.setdefault(stem, {})[sub.name] = meta
    for stem, frames in gathered.items():
        name = stem if stem not in out.tables else f"run_{stem}"
        out.tables[name] = pd.concat(frames, ignore_index=True)
        out.meta[name] = metas[stem]
