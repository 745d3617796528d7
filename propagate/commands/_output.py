"""One way for every command to hand over a table: ``--json [FILE]``, ``--csv FILE``, and printed numbers.

- :func:`add_output_arguments` adds ``--json [FILE]`` (strict JSON; standard
  output without FILE) and ``--csv FILE`` (``-``: standard output), checked at
  parse time (a FILE must end in ``.json``/``.csv`` and be writable).
- :func:`check_outputs` refuses, before any work, two outputs on standard output
  and two output files (a ``.meta.json`` sidecar included) that are one file.
- :func:`emit` writes the table (and its ``.meta.json``) where the flags say,
  every file of the command as one (all of them, or none).
- :func:`at_precision` / :func:`clean_table` print a number at the precision it
  has (the rule below), for the tables a command prints.

**Precision rule.** A float carries about 16 significant digits of the scale
it was computed at. A value smaller in magnitude than :data:`NOISE` =
64 x float64's machine epsilon (1.4e-14) times its *scale* is round-off of a
quantity that is 0 and prints as ``0``: a mean is measured against the
root of its second moment (``post_mean`` against ``sqrt(post_q)``,
``pre_mean`` against ``sqrt(pre_q)``), a correlation against 1, a fixed
point against the input's second moment. So SELU's mean ``-2.78e-17`` at
``q = 1`` prints as ``0``, while a ReLU variance of ``1e-60`` (its own scale)
prints as it is. Files (CSV, JSON) keep every digit: the rule is for reading.

Standard library only (the CLI's ``--help`` imports nothing heavy).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from propagate.commands import _args
from propagate.errors import UserError
from propagate.io import (atomic_write_files, check_distinct_outputs, check_sidecar, json_files, table_files,
                          to_json)

#: Relative size below which a value is round-off of 0 (64 x float64 machine epsilon).
NOISE = 64 * sys.float_info.epsilon


def _file_or_stdout(text: str, suffix: str, stdout_hint: str) -> str:
    if text == "-":
        return text
    if not text.lower().endswith(suffix):
        raise argparse.ArgumentTypeError(f"expects a {suffix} file name {stdout_hint}, got {text!r}")
    path = _args.output_file(text)
    try:  # the .meta.json written beside it is checked now too, not after the work
        check_sidecar(path, shown=text)
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return path


def json_file_or_stdout(text: str) -> str:
    """``-`` (standard output) or a ``.json`` file to write (checked now)."""
    return _file_or_stdout(text, ".json", "(or nothing: standard output)")


def csv_file_or_stdout(text: str) -> str:
    """``-`` (standard output) or a ``.csv`` file to write (checked now)."""
    return _file_or_stdout(text, ".csv", "or '-' (standard output)")


def add_output_arguments(parser, *, what: str = "the table", json_help: str | None = None,
                         csv_help: str | None = None):
    """Add ``--json [FILE]`` and ``--csv FILE`` to ``parser`` (a parser or an argument group); return the group."""
    g = parser.add_argument_group("output") if isinstance(parser, argparse.ArgumentParser) else parser
    g.add_argument("--json", nargs="?", const="-", default=None, type=json_file_or_stdout, metavar="FILE",
                   help=json_help or f"{what} and the run's metadata as strict JSON (NaN: null), to FILE.json "
                                     f"(plus FILE.json.meta.json) or, without FILE, to standard output")
    g.add_argument("--csv", default=None, type=csv_file_or_stdout, metavar="FILE",
                   help=csv_help or f"{what} as CSV to FILE.csv (plus FILE.csv.meta.json); '-' for standard output")
    return g


def to_stdout(args) -> bool:
    """Whether ``--json`` or ``--csv`` writes to standard output (the command then prints nothing else there)."""
    return getattr(args, "json", None) == "-" or getattr(args, "csv", None) == "-"


#: The options of a command that name a file to write, and whether the file gets a ``.meta.json`` beside it.
FILE_OPTIONS = (("--json", "json", True), ("--csv", "csv", True), ("--plot", "plot", False))


def check_outputs(args, reserved=()) -> None:
    """Refuse, before any work, outputs that would clash; call at the start of ``run``.

    Refused: ``--json`` and ``--csv -`` together (both would fill standard
    output); a ``.meta.json`` beside a ``--json``/``--csv`` file that cannot
    be written (a folder there); and two outputs that are the same file,
    sidecars included (``--csv a.csv --json a.csv.meta.json``: the CSV's
    metadata would overwrite the JSON). ``reserved``: ``(what, path)`` of
    the files the command writes anyway (those of its ``--out`` folder), which
    no option may name (:func:`propagate.io.check_distinct_outputs`).
    """

    if getattr(args, "json", None) == "-" and getattr(args, "csv", None) == "-":
        raise UserError("--json without FILE and --csv - both write to standard output; give one of them a file")
    outputs = [(option, getattr(args, dest, None), sidecar) for option, dest, sidecar in FILE_OPTIONS]
    for option, path, sidecar in outputs:
        if sidecar and path is not None and path != "-":
            check_sidecar(path, option)
    check_distinct_outputs(outputs, reserved)


def emit(args, table, meta: dict, document: dict | None = None, extra=()) -> list[str]:
    """Write ``table`` where ``--json``/``--csv`` say; return the files written.

    JSON is ``document`` when given (the command's own richer form; it must
    hold the metadata), else ``{"meta": meta, "rows": [...]}``. Files get their
    ``.meta.json`` beside them (:func:`propagate.io.write_table`). ``extra``:
    more ``(path, bytes)`` of the same result (a ``--plot``). Every file is
    written as one (:func:`propagate.io.atomic_write_files`): if one cannot
    be, none is replaced. Returns the ``--json``/``--csv`` files written.
    """

    written, files = [], []
    js, csv = getattr(args, "json", None), getattr(args, "csv", None)
    if js is not None:
        if document is None:
            import json

            document = {"meta": meta, "rows": json.loads(table.to_json(orient="records", double_precision=15))}
        if js != "-":
            files += json_files(document, js, meta)
            written.append(str(Path(js)))
    if csv is not None and csv != "-":
        files += table_files(table, csv, meta)
        written.append(str(Path(csv)))
    files += [(p, data) for p, data in extra]
    if files:
        atomic_write_files(files)
    if js == "-":
        sys.stdout.write(to_json(document))
    if csv == "-":
        sys.stdout.write(table.to_csv(index=False, float_format="%.10g"))
    return written


# ------------------------------------------------------------------ printed numbers


def at_precision(value, scale=1.0):
    """``value``, or ``0.0`` where it is round-off of 0 at ``scale`` (module docstring: ``|value| < NOISE |scale|``)."""
    try:
        v, s = float(value), abs(float(scale))
    except (TypeError, ValueError):
        return value
    if v != 0 and math.isfinite(v) and math.isfinite(s) and abs(v) < NOISE * s:
        return 0.0
    return value


#: The scale of each per-layer column that can be round-off of 0: ``("sqrt", COLUMN)`` (the root of a
#: second moment in the same row) or a number. Columns not listed are printed as they are.
LAYER_SCALES = {
    "pre_mean": ("sqrt", "pre_q"),
    "post_mean": ("sqrt", "post_q"),
    "theory_pre_mean": ("sqrt", "theory_pre_q"),
    "theory_post_mean": ("sqrt", "theory_post_q"),
    "out_mean": ("sqrt", "out_q"),
    "corr": 1.0,
    "theory_corr": 1.0,
}


def _row_scale(row, rule) -> float:
    if isinstance(rule, tuple):
        _, col = rule
        v = row.get(col) if hasattr(row, "get") else None
        try:
            return math.sqrt(abs(float(v)))
        except (TypeError, ValueError):
            return math.nan
    return float(rule)


def clean_table(table, scales: dict | None = None):
    """A copy of ``table`` whose round-off values (module docstring) are 0.0, for printing.

    ``scales`` maps a column to its scale rule (default :data:`LAYER_SCALES`);
    a rule whose column the table lacks leaves the column as it is.
    """
    scales = LAYER_SCALES if scales is None else scales
    out = table.copy()
    for col, rule in scales.items():
        if col not in out.columns:
            continue
        if isinstance(rule, tuple) and rule[1] not in out.columns:
            continue
        out[col] = [at_precision(v, _row_scale(r, rule)) for v, (_, r) in zip(out[col], out.iterrows())]
    return out
