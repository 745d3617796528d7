"""Grids of runs: every point of a sweep file run on Dask, one result file per point, one Parquet table.

A sweep file (TOML) names a *lens* (a ``propagate`` command whose result is a
table) and a grid of its options::

    lens = "simulate"              # theory | simulate | train | trainability
    [fixed]                        # options shared by every point
    depth = 10
    inputs = 200
    [grid]                         # the product of these lists
    activation = ["relu", "tanh"]
    init = ["normal:1", "normal:2"]
    sigma_b2 = "0:0.2:3"           # a range START:STOP:N (N points, both ends), or START:STOP:N:log
    [zip.shape]                    # a zipped group: these fields vary together (one axis of the product)
    width = [400, 200, 100]
    seed = [0, 1, 2]

Field names are the command's own option names with dashes as underscores
(``--sigma-b2`` -> ``sigma_b2``; an alias such as ``bias_var`` works too), so
anything the command accepts can be swept.
Each point becomes the command line it stands for and is parsed by the
command's own argparse parser, so names, value checks and defaults are exactly
the command's. Every point is checked before any work starts.

Execution: :func:`run_sweep` hands the points that have no result yet to
:mod:`propagate.runner` on Dask (:class:`propagate.runner.OnDask`): by default
a ``LocalCluster`` on 127.0.0.1 with one single-threaded worker process per
core, or an existing cluster (``scheduler="tcp://host:8786"``, or a
``distributed.Client``). Torch runs with one thread per task unless the point
sets ``threads``.

Results: ``OUT/points/<key>.json`` per point (a :class:`propagate.runner.PointStore`;
the point's tables under ``value``, where it ran under ``meta``), written
atomically, where ``<key>`` (:func:`propagate.runner.point_key`) is a SHA-256
of the point's full parsed configuration (every option of the command,
defaults included), the lens, the package version and the identity of the
dataset it reads (name, file sizes and SHA-256). A rerun skips points whose
file exists (files written before the runner, with the tables at their top,
are read as well); a point that fails leaves ``<key>.failed.json`` (its error
and traceback) and is tried again by the next run. At the end all
results are gathered into ``OUT/results.parquet``: one row per (point, layer)
(theory, simulate), (point, seed, epoch) (train) or (point, configuration,
learning rate) (trainability; ``configs.parquet`` and ``seeds.parquet``
beside it), with columns ``point`` (index in
grid order), ``key``, the swept fields, then the lens's own columns (a lens
column named like a swept field is dropped where it repeats the field's
value, else kept as ``lens_<name>``).
``OUT/sweep.json`` records the plan. ``OUT`` is locked while a sweep runs.
A point file that is damaged or holds no point's tables is refused with one
line when it is gathered (move it away to compute the point again), and a
folder where a results table goes is refused before any work; neither is
touched.

The module sits beside the CLI: it reads the commands' parsers
(``propagate.commands.<lens>.add_arguments``) and calls the library below them.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import itertools
import json
import math
import os
import re
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from propagate.cluster import check_where
from propagate.commands import theory as theory_command, train as train_command, trainability as trainability_command
from propagate.commands._args import DeprecatedOption
from propagate.commands.simulate import build_spec as simulate_build_spec
from propagate.errors import UserError
from propagate.io import atomic_write_json, meta_path, run_metadata, write_table
from propagate.limits import check_grid, linear_range
from propagate.runfolder import claim
from propagate.runner import (OnDask, Point as RunnerPoint, PointStore, ProgressBar, call, check_record, point_key,
                              run_points)
from propagate.trainability import trainability as trainability_of
from propagate.inits import get_init

__all__ = [
    "Lens",
    "LENSES",
    "Point",
    "SweepPlan",
    "SweepResult",
    "load_plan",
    "plan_from_dict",
    "expand_range",
    "compute_point",
    "point_value",
    "runner_point",
    "point_store",
    "run_point",
    "run_sweep",
    "gather",
]


# ----------------------------------------------------------------------------- lenses


def _theory_compute(args, threads: int | None, dataset: str | None):
    from propagate.theory import analyze

    spec, sw2, sb2 = theory_command.build(args)
    res = analyze(spec.activation, sw2, sb2, spec.depth, spec=spec, input_corr=args.input_corr)
    table = res.table.copy()
    _add_weight_variances(table, spec)
    # the fixed-point scalars on every row, so a map of chi_1 or xi_c is one groupby away
    for k, v in res.summary().items():
        if k not in table.columns:
            table[k] = v
    return {"results": table}, {"config": res.config}


def _theory_check(args) -> None:
    theory_command.build(args)


def _simulate_compute(args, threads: int | None, dataset: str | None):
    from propagate.simulate import simulate

    spec = simulate_build_spec(args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # divergence is a result here (column `diverged`), not a warning
        res = simulate(spec, samples=args.inputs, seeds=args.networks, seed=args.seed, dtype=args.dtype,
                       device=args.device, jacobian=False, input=dataset or args.dataset, threads=threads,
                       progress=False)
    table = res.table.copy()
    _add_weight_variances(table, spec)
    return {"results": table}, {"diverged_at": res.diverged_at, "seconds": res.meta.get("seconds")}


def _add_weight_variances(table, spec) -> None:
    """The weight and bias variance of each row's layer as numbers, so maps over inits need no parsing of `init`.

    Layer ``l >= 1`` gets its own ``sigma_w2``/``sigma_b2``; layer 0 (the
    input, which has no weights) gets the network's, the last hidden layer's
    (the values ``propagate theory`` summarizes a network by), so every row of
    a point carries the numbers its point was run at.
    """
    sw2, sb2 = [float(v) for v in spec.sigma_w2()], [float(v) for v in spec.sigma_b2()]
    table["sigma_w2"] = [sw2[int(l) - 1] if int(l) >= 1 else sw2[-1] for l in table["layer"]]
    table["sigma_b2"] = [sb2[int(l) - 1] if int(l) >= 1 else sb2[-1] for l in table["layer"]]
    _add_init_columns(table, spec)


def _add_init_columns(table, spec) -> None:
    """The initializer's parameters as columns: ``init_distribution`` (normal, uniform, truncated_normal,
    orthogonal), ``init_scale`` (Var(w) = scale / fan, or the gain^2 of an orthogonal init) and ``init_mode``
    (the fan: fan_in, fan_out, fan_avg, or fixed), so a sweep over inits is grouped without parsing ``init``."""

    init = get_init(spec.init)
    table["init_distribution"], table["init_scale"], table["init_mode"] = init.distribution, float(init.scale), init.mode


def _simulate_dataset(args) -> tuple[str, str | None] | None:
    return (args.dataset, None) if args.dataset != "gaussian" else None


def _train_check(args) -> None:
    _, spec, options = train_command.spec_and_options(args)
    train_command.check_training_size(spec, options)


def _train_compute(args, threads: int | None, dataset: str | None):
    from propagate.data import load_dataset, validate_dataset
    from propagate.train import train

    preset, spec, options = train_command.spec_and_options(args)
    if options.threads is None:
        options = options.with_(threads=threads)
    data = load_dataset(dataset or args.dataset, args.data_dir, progress=False, download=False)
    validate_dataset(data, input_dim=spec.widths[0])
    res = train(spec, options, data, progress=False, preset=preset)
    history = res.history.copy()
    history["status"] = res.status
    _add_init_columns(history, spec)
    return {"results": history, "layers": res.layers}, {"status": res.status, "dataset": data.name}


def _train_dataset(args) -> tuple[str, str | None] | None:
    return (args.dataset, args.data_dir)


def _trainability_setup(args):
    """The (configs, lrs, options) of ``propagate trainability``'s flags, by the command's own rules."""
    return trainability_command.setup(args)


def _trainability_compute(args, threads: int | None, dataset: str | None):
    from propagate.data import load_dataset

    configs, lrs, options = _trainability_setup(args)
    if options.threads is None:
        options = replace(options, threads=threads)
    data = load_dataset(dataset or args.dataset, args.data_dir, progress=False, download=False)
    res = trainability_of(configs, lrs, data, options)
    return {"results": res.points, "configs": res.configs, "seeds": res.seeds}, {"dataset": data.name}


@dataclass(frozen=True)
class Lens:
    """One kind of point a sweep can run.

    Attributes:
        name: the name a sweep file gives (``lens = "..."``).
        command: module under :mod:`propagate.commands` whose ``add_arguments``
            defines the fields (the command's options).
        compute: ``(args, threads, dataset) -> ({table name: DataFrame}, meta)``;
            table ``"results"`` goes to ``results.parquet``, any other ``NAME``
            to ``NAME.parquet``.
        check: ``(args) -> None``; raises :class:`UserError` for a point that
            parses but cannot run (conflicting options, unknown names).
        excluded: options a sweep cannot set (output and display options).
        rows: what one row of ``results.parquet`` is, per point (``"layer"``, ``"seed and epoch"``, ...).
        dataset: ``(args) -> (name, data_dir)`` of the dataset a point reads, or
            ``None``; its identity goes into the point's key.
        tables: the names of the tables ``compute`` returns (``"results"`` first).
    """

    name: str
    command: str
    compute: Callable
    check: Callable
    excluded: frozenset = frozenset()
    rows: str = "layer"
    dataset: Callable | None = None
    tables: tuple = ("results",)


#: The lenses by name. A new lens (e.g. trainability) is one entry here.
LENSES: dict[str, Lens] = {
    "theory": Lens("theory", "theory", _theory_compute, _theory_check,
                   frozenset({"rows", "json", "csv"})),
    "simulate": Lens("simulate", "simulate", _simulate_compute, simulate_build_spec,
                     frozenset({"csv", "json", "plot", "quiet", "jacobian"}), dataset=_simulate_dataset),
    "train": Lens("train", "train", _train_compute, _train_check,
                  frozenset({"list_presets", "out", "resume", "no_progress", "json", "csv", "log_every", "tensorboard"}),
                  rows="seed and epoch", dataset=_train_dataset, tables=("results", "layers")),
    "trainability": Lens("trainability", "trainability", _trainability_compute, _trainability_setup,
                         frozenset({"out", "resume", "no_progress", "workers", "scheduler", "json", "csv"}),
                         rows="configuration and learning rate",
                         dataset=_train_dataset, tables=("results", "configs", "seeds")),
}

#: Lenses planned but not built yet, with what to say.
_PLANNED: dict[str, str] = {}


def _lens(name) -> Lens:
    if name in LENSES:
        return LENSES[name]
    if name in _PLANNED:
        raise UserError(f"lens {name!r}: {_PLANNED[name]}; use one of {', '.join(LENSES)}")
    raise UserError(f"unknown lens {name!r}; use one of {', '.join(LENSES)}")


class _RaisingParser:
    """A command's argparse parser whose errors raise :class:`UserError` instead of exiting."""

    def __init__(self, lens: Lens):
        class Parser(argparse.ArgumentParser):
            def error(self, message):  # noqa: D401 - argparse API
                raise UserError(message)

        mod = importlib.import_module(f"propagate.commands.{lens.command}")
        self.parser = Parser(prog=f"propagate {lens.command}", add_help=False)
        mod.add_arguments(self.parser)
        # Field name -> (option, action), for every long option and alias (--sigma-b2 and --bias-var).
        # argparse has no public list of its options; _actions is the stable way to read them.
        self.options: dict[str, tuple[str, Any]] = {}
        self.renamed: dict[str, str] = {}  # old field name -> new (deprecated options, kept for one release)
        for action in self.parser._actions:
            for opt in action.option_strings:
                if not opt.startswith("--") or (isinstance(action, argparse.BooleanOptionalAction)
                                                and opt.startswith("--no-")):
                    continue
                name = opt[2:].replace("-", "_")
                if isinstance(action, DeprecatedOption):  # an old spelling: the point is run with the new one
                    self.renamed[name] = action.new[2:].replace("-", "_")
                    opt = action.new
                if name != "help":
                    self.options[name] = (opt, action)
        self.lens = lens

    def fields(self) -> list[str]:
        return sorted(n for n, (_, a) in self.options.items() if a.dest not in self.lens.excluded)

    def dest(self, name: str) -> str:
        """The option a field sets (its argparse ``dest``; aliases share one); UserError for an unknown field."""
        if name not in self.options:
            raise UserError(f"unknown field {name!r} for lens {self.lens.name!r}; fields are the options of "
                            f"'propagate {self.lens.command}' with dashes as underscores: {', '.join(self.fields())}")
        dest = self.options[name][1].dest
        if dest in self.lens.excluded:
            raise UserError(f"field {name!r} is an output option of 'propagate {self.lens.command}'; "
                            "a sweep writes its own results")
        return dest

    def argv(self, values: dict[str, Any]) -> list[str]:
        """The command line of one point (options only)."""
        out = []
        for name, value in values.items():
            self.dest(name)
            opt, action = self.options[name]
            if name in self.renamed:
                warnings.warn(f"sweep field {name!r} is deprecated, use {self.renamed[name]!r}", FutureWarning,
                              stacklevel=2)
            if action.nargs == 0:  # a flag: store_true/store_false/--x/--no-x
                if not isinstance(value, bool):
                    raise UserError(f"field {name!r} takes true or false, got {value!r}")
                if isinstance(action, argparse.BooleanOptionalAction):
                    out.append(opt if value else "--no-" + opt[2:])
                elif value == (action.const if isinstance(action.const, bool) else True):
                    out.append(opt)  # store_true given true, store_false given false
                continue
            if isinstance(value, bool):
                raise UserError(f"field {name!r} takes a value, not {str(value).lower()}")
            out.append(f"{opt}={_fmt(value)}")
        return out

    def parse(self, argv: list[str]):
        return self.parser.parse_args(argv)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _fmt(value) -> str:
    if isinstance(value, float):
        return repr(value)
    return str(value)


# ----------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Point:
    """One run of a sweep.

    ``fields``: the swept fields' values (grid and zip); ``argv``: the full
    command line of options (fixed and swept); ``key``: the content hash that
    names its result file; ``options``: every option of the command after
    parsing (defaults included), the configuration the key is computed from.
    """

    index: int
    fields: dict
    argv: tuple
    key: str
    options: dict
    dataset: str | None = None  # the concrete dataset name (``auto`` resolved), if the lens reads one

    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.fields.items())


@dataclass
class SweepPlan:
    """A validated sweep: its lens, fixed fields, axes and every point."""

    lens: str
    fixed: dict
    axes: list  # list of dicts {field: [values]}, one per axis of the product (a zip group is one axis)
    points: list
    source: str = ""

    @property
    def swept(self) -> list[str]:
        return [f for axis in self.axes for f in axis]

    def to_dict(self) -> dict:
        return {"lens": self.lens, "fixed": self.fixed, "axes": self.axes, "source": self.source,
                "points": [{"index": p.index, "key": p.key, "fields": p.fields, "argv": list(p.argv)}
                           for p in self.points]}


_NUM = r"\s*[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?\s*"
_RANGE = re.compile(rf"^({_NUM}):({_NUM}):\s*(\d+)\s*(?::\s*(log|lin)\s*)?$")


def expand_range(text: str) -> list:
    """The values of a range ``START:STOP:N`` (N evenly spaced points, both ends) or ``START:STOP:N:log``.

    Whole-number ends with whole-number steps give ints (``"10:50:5"`` ->
    10, 20, 30, 40, 50); values are rounded to 12 significant digits so that
    ``"0:0.3:4"`` gives 0.1, not 0.1000000000000000055...
    """
    m = _RANGE.match(text)
    if not m:
        raise UserError(f"bad range {text!r}: write START:STOP:N (N points, both ends included) or "
                        "START:STOP:N:log, or a list [a, b, ...]")
    a, b, n, scale = float(m.group(1)), float(m.group(2)), int(m.group(3)), m.group(4) or "lin"
    if not (math.isfinite(a) and math.isfinite(b)):
        raise UserError(f"bad range {text!r}: START and STOP must be finite numbers")
    if scale == "log" and (a <= 0 or b <= 0):
        raise UserError(f"bad range {text!r}: a log range needs START and STOP > 0")
    # the count is checked before anything is built (limits.MAX_LIST): "0:1:10000000000" is one line, not swap
    if scale == "log":
        vals = [math.exp(u) for u in linear_range(math.log(a), math.log(b), n, f"the range {text!r}")]
    else:
        vals = linear_range(a, b, n, f"the range {text!r}")
    vals = [float(f"{v:.12g}") for v in vals]
    ints = all(re.fullmatch(r"\s*[-+]?\d+\s*", g) for g in (m.group(1), m.group(2)))
    if ints and scale == "lin" and all(v == int(v) for v in vals):
        return [int(v) for v in vals]
    return vals


_SCALARS = (str, int, float, bool)


def _values(where: str, name: str, raw) -> list:
    if isinstance(raw, str):  # one string is a range; a single value is a list of one, [value]
        vals = expand_range(raw)
    elif isinstance(raw, list):
        vals = raw
    else:
        raise UserError(f"{where} field {name!r}: give a list [a, b, ...] or a range \"START:STOP:N\", got {raw!r}")
    if not vals:
        raise UserError(f"{where} field {name!r} has no values")
    for v in vals:
        if not isinstance(v, _SCALARS) or (isinstance(v, float) and not math.isfinite(v)):
            raise UserError(f"{where} field {name!r}: values must be strings, numbers or true/false, got {v!r}")
    return list(vals)


def _read_toml(path: Path) -> dict:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            raise UserError("reading sweep files needs Python 3.11+ or the tomli package (pip install tomli)") from None
    where = repr(str(path))  # quoted: a name with a newline stays on the error's one line
    try:
        if path.exists() and not path.is_dir() and not path.is_file():  # a FIFO or /dev/zero would never end
            raise UserError(f"sweep file {where} is not a regular file")
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise UserError(f"sweep file not found: {where}") from None
    except IsADirectoryError:
        raise UserError(f"sweep file is a folder: {where}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{where}: not valid TOML: {' '.join(str(exc).split())}") from None
    except UnicodeDecodeError:
        raise UserError(f"{where}: not valid TOML (not UTF-8 text)") from None
    except OSError as exc:  # unreadable, a name too long, ...
        raise UserError(f"cannot read the sweep file {where}: {exc.strerror or exc}") from None


def load_plan(path: str | os.PathLike) -> SweepPlan:
    """Read and check a sweep file (TOML, format in the module docstring); every point is parsed.

    Raises :class:`UserError` for an unreadable file, an unknown lens or field,
    an empty grid, a bad range or a point the command would reject.
    """
    path = Path(path)
    return plan_from_dict(_read_toml(path), source=str(path))


def _file_lens(data: dict) -> Lens:
    """The lens a parsed sweep file names, after checking its top-level keys (UserError)."""
    unknown = set(data) - {"lens", "fixed", "grid", "zip"}
    if unknown:
        raise UserError(f"unknown top-level key(s) {', '.join(sorted(map(repr, unknown)))} in the sweep file; "
                        "use lens, [fixed], [grid] and [zip.NAME]")
    if "lens" not in data:
        raise UserError(f"the sweep file names no lens; add lens = \"{'|'.join(LENSES)}\"")
    if not isinstance(data["lens"], str):  # a list or a table would reach a dict lookup (unhashable)
        raise UserError(f"lens must be one name in quotes, lens = \"{'|'.join(LENSES)}\", got "
                        f"{type(data['lens']).__name__} {_short(data['lens'])}")
    return _lens(data["lens"])


def plan_from_dict(data: dict, source: str = "") -> SweepPlan:
    """:func:`load_plan` for an already parsed sweep file (a dict of ``lens``, ``fixed``, ``grid``, ``zip``).

    The grid's size is checked (:func:`propagate.limits.check_grid`) before any point is built.
    """
    lens = _file_lens(data)
    parser = _RaisingParser(lens)
    fixed, grid, zips = data.get("fixed", {}), data.get("grid", {}), data.get("zip", {})
    for what, tbl in (("[fixed]", fixed), ("[grid]", grid), ("[zip]", zips)):
        if not isinstance(tbl, dict):
            raise UserError(f"{what} must be a table of fields")
    seen: dict[str, tuple[str, str]] = {}

    def claim(name, where):
        dest = parser.dest(name)
        if dest in seen:
            other, first = seen[dest]
            same = f"field {name!r}" if other == name else f"fields {other!r} and {name!r} (the same option)"
            raise UserError(f"{same} appear{'s' if other == name else ''} in both {first} and {where}")
        seen[dest] = (name, where)

    for name, v in fixed.items():
        claim(name, "[fixed]")
        if not isinstance(v, _SCALARS):
            raise UserError(f"[fixed] field {name!r}: give one value (lists go in [grid]), got {v!r}")
    axes = []
    for name, raw in grid.items():
        claim(name, "[grid]")
        axes.append({name: _values("[grid]", name, raw)})
    for group, tbl in zips.items():
        where = f"[zip.{group}]"
        if not isinstance(tbl, dict) or not tbl:
            raise UserError(f"{where} must be a table of fields with lists of equal length")
        axis = {}
        for name, raw in tbl.items():
            claim(name, where)
            axis[name] = _values(where, name, raw)
        lengths = {len(v) for v in axis.values()}
        if len(lengths) > 1:
            raise UserError(f"{where}: the fields of a zipped group need lists of equal length, got "
                            + ", ".join(f"{k}: {len(v)}" for k, v in axis.items()))
        axes.append(axis)
    if not axes:
        raise UserError("empty grid: name at least one field with a list of values in [grid] or [zip.NAME]")
    check_grid([len(next(iter(axis.values()))) for axis in axes], "the sweep grid")  # before any point is built

    datasets: dict = {}
    points, keys = [], set()
    for combo in itertools.product(*[list(zip(*axis.values())) for axis in axes]):
        fields = {}
        for axis, vals in zip(axes, combo):
            fields.update(dict(zip(axis, vals)))
        values = {**fixed, **fields}
        label = ", ".join(f"{k}={v}" for k, v in fields.items())
        try:
            argv = parser.argv(values)
            args = parser.parse(argv)
            # the key hashes the parsed options as they are (checks may fill in derived values)
            options = {k: v for k, v in sorted(vars(args).items()) if k not in lens.excluded}
            lens.check(argparse.Namespace(**vars(args)))
        except UserError as exc:
            raise UserError(f"point {len(points) + 1} ({label}): {exc}") from None
        ds = lens.dataset(args) if lens.dataset else None
        identity = None
        if ds is not None:
            if ds not in datasets:
                datasets[ds] = _dataset_identity(*ds)
            identity = datasets[ds]
        key = _point_key(lens.name, options, identity)
        if key in keys:  # the same configuration twice (e.g. 1 and 1.0): one run
            continue
        keys.add(key)
        points.append(Point(index=len(points), fields=fields, argv=tuple(argv), key=key, options=options,
                            dataset=None if identity is None else identity["name"]))
    return SweepPlan(lens=lens.name, fixed=dict(fixed), axes=axes, points=points, source=source)


def _dataset_identity(name: str, data_dir) -> dict:
    """The identity of the dataset a point reads (``auto`` resolved here, once, as the command would).

    Nothing is downloaded: a sweep's points must all read the same files, so a
    missing dataset is fetched first (``propagate data fetch``).
    """
    from propagate.data import dataset_identity, load_dataset

    return dataset_identity(load_dataset(name, data_dir, download=False, notify=lambda message: None))


def _point_key(lens: str, options: dict, dataset: dict | None) -> str:
    # the key of sweeps made before propagate.runner existed: their folders resume
    return point_key({"lens": lens, "options": options}, dataset)


# ----------------------------------------------------------------------------- running one point


def _lens_tables(lens: str, argv, dataset: str | None, threads: int) -> tuple[dict, dict]:
    """``({table name: DataFrame}, what the lens reports)`` of one point; raises if the point fails."""
    ln = _lens(lens)
    args = _RaisingParser(ln).parse(list(argv))
    return ln.compute(args, getattr(args, "threads", None) or threads, dataset)


def point_value(lens: str, argv, dataset: str | None = None, threads: int = 1) -> dict:
    """What a worker sends back for one point: ``{"tables": {name: [row dicts]}, "info": {...}}`` (JSON-ready).

    The function a sweep's :class:`propagate.runner.Point` runs; raises if the
    point fails (the runner records the error). ``threads``: torch's thread
    count when the point does not set one.
    """
    tables, info = _lens_tables(lens, argv, dataset, threads)
    return {"tables": {name: _records(df) for name, df in tables.items()}, "info": info}


def compute_point(lens: str, argv, dataset: str | None = None, threads: int = 1) -> dict:
    """Run one point in this process; never raises for a failing point.

    Returns ``{"status": "ok", "tables": {name: DataFrame}, "meta": {...}}`` or
    ``{"status": "failed", "error": "Type: message", "traceback": text}``;
    ``meta`` holds the host, process id, seconds and what the lens reports.
    ``threads`` is torch's thread count when the point does not set one.
    """
    env = call(_lens_tables, (lens, list(argv), dataset, threads))
    if not env["ok"]:
        return {"status": "failed", "error": env["error"], "traceback": env["traceback"], "meta": env["meta"]}
    tables, info = env["value"]
    return {"status": "ok", "tables": tables, "meta": {**info, **env["meta"]}}


def run_point(plan: SweepPlan, point: Point | int, threads: int = 1) -> dict:
    """The tables of one point, computed in this process (what a worker computes); raises if it fails."""
    p = plan.points[point] if isinstance(point, int) else point
    res = compute_point(plan.lens, p.argv, p.dataset, threads)
    if res["status"] != "ok":
        raise RuntimeError(f"point {p.index} ({p.label()}) failed: {res['error']}")
    return res["tables"]


def runner_point(plan: SweepPlan, point: Point) -> RunnerPoint:
    """The sweep point as a :class:`propagate.runner.Point` (one thread for torch unless the point sets one)."""
    meta = {"lens": plan.lens, "index": point.index, "fields": point.fields, "argv": list(point.argv),
            "options": point.options, "dataset": point.dataset}
    return RunnerPoint(point.key, point_value, (plan.lens, list(point.argv), point.dataset, 1), meta=meta,
                       check=_check_point_record)


# ----------------------------------------------------------------------------- running a sweep


@dataclass
class SweepResult:
    """What :func:`run_sweep` did.

    ``points``: points in the plan; ``computed``: points computed by this run
    (finished now); ``skipped``: finished before this run; ``failed``: list of
    ``(Point, error line)``; ``results``: path of ``results.parquet`` (``None``
    when no point has a result).
    """

    out: Path
    points: int
    computed: int
    skipped: int
    failed: list = field(default_factory=list)
    results: Path | None = None
    seconds: float = 0.0


def point_store(out: str | os.PathLike) -> PointStore:
    """The store of a sweep folder's finished points (``OUT/points/KEY.json``)."""
    return PointStore(Path(out) / "points")


def _claim(out: Path):
    """Lock ``out`` for this run (a second sweep into it stops at once with one line).

    The identity is only the kind: points are content-addressed, so sweeps that
    share points can share a folder (an extended grid reuses what is done).
    """
    return claim(out, {"kind": "sweep"}, option="--out", hint="choose another --out")


def run_sweep(
    plan: SweepPlan | str | os.PathLike,
    out: str | os.PathLike,
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    client=None,
    progress: bool = True,
    callback: Callable[[Point, dict], None] | None = None,
) -> SweepResult:
    """Run every point of ``plan`` (a :class:`SweepPlan` or a sweep file) that has no result in ``out``.

    Args:
        plan: the sweep; a path is read with :func:`load_plan`.
        out: the sweep folder (``points/``, ``sweep.json``, ``results.parquet``).
        workers: worker processes of the default ``LocalCluster`` (default: one per core).
        scheduler: address of an existing Dask scheduler (``tcp://host:8786``) instead.
        client: an existing ``distributed.Client`` instead (it is not closed).
        progress: a tqdm bar of points done on stderr.
        callback: ``callback(point, record)`` after each point's file is written
            (``record["status"]`` is ``"ok"`` or ``"failed"``; the record as
            :meth:`propagate.runner.Result.record` writes it).

    No cluster is started when every point is already done. Scripts that call
    this with the default cluster need the usual ``if __name__ == "__main__":``
    guard (Dask starts worker processes by spawning).
    """
    check_where(workers, scheduler, client)
    if not isinstance(plan, SweepPlan):
        plan = load_plan(plan)
    out = Path(out)
    t0 = time.perf_counter()
    with _claim(out):
        _check_table_paths(plan, out)  # before any work: a folder in the way of a result is refused, never removed
        before = _gathered(out)
        atomic_write_json(out / "sweep.json", run_metadata(sweep=plan.to_dict()))
        store = point_store(out)
        todo = [p for p in plan.points if not store.has(p.key)]
        result = SweepResult(out=out, points=len(plan.points), computed=0, skipped=len(plan.points) - len(todo))
        if todo:
            with OnDask(workers, scheduler, client, label="sweep") as engine:
                _compute(plan, todo, store, engine, result, progress, callback)
        # results.parquet is rewritten unless it already holds exactly these points (a rerun with nothing to do)
        now = _fingerprint(plan, store)
        result.results = gather(plan, out, write=now != before)
        atomic_write_json(out / "sweep.json", run_metadata(sweep=plan.to_dict(), gathered=now))
    result.seconds = time.perf_counter() - t0
    return result


def _compute(plan: SweepPlan, todo: list, store: PointStore, engine, result: SweepResult, progress: bool,
             callback) -> None:
    """Compute the points ``todo`` on ``engine`` into ``store``, counting them in ``result``."""
    by_key = {p.key: p for p in todo}
    points = [runner_point(plan, p) for p in todo]
    with ProgressBar(len(plan.points), len(plan.points) - len(todo), enabled=progress) as bar, \
            contextlib.closing(run_points(points, store=store, engine=engine, progress=bar)) as results:
        for res in results:
            point = by_key[res.point.key]
            if res.ok:
                result.computed += 1
            else:
                result.failed.append((point, res.error))
            if callback is not None:
                callback(point, res.record())


def _fingerprint(plan: SweepPlan, store: PointStore) -> str:
    """A hash of what ``results.parquet`` holds for ``plan``: its finished points and their swept fields."""
    done = [(p.index, p.key, p.fields) for p in plan.points if store.has(p.key)]
    return hashlib.sha256(json.dumps([plan.swept, done], default=str).encode()).hexdigest()


def _gathered(out: Path) -> str | None:
    try:
        with open(out / "sweep.json") as fh:
            return json.load(fh).get("gathered")
    except (OSError, ValueError, AttributeError):
        return None


def _records(df) -> list:
    """Rows as JSON-ready dicts with every float exact (Python's JSON writes floats by repr)."""
    rows = df.to_dict(orient="records")
    for row in rows:
        for k, v in row.items():
            if hasattr(v, "item"):  # numpy scalar
                row[k] = v.item()
    return rows


def _check_point_record(record: dict) -> None:
    """The reader's check of a stored sweep point (:attr:`propagate.runner.Point.check`): raise :class:`ValueError`
    unless the record holds ``{table name: rows}`` with a ``results`` table, each row an object, as
    :func:`point_value` returns it (under ``value``; a sweep made before the runner wrote them at its top)."""
    if "value" in record:
        check_record(record)
        value = record["value"]
        if not isinstance(value, dict) or "tables" not in value:
            raise ValueError("its value has no tables")
        tables = value["tables"]
    elif record.get("status", "ok") != "ok" or "tables" not in record:
        raise ValueError("no value and no tables")
    else:
        tables = record["tables"]
    if not isinstance(tables, dict) or "results" not in tables:
        raise ValueError("no results table")
    for name, rows in tables.items():
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise ValueError(f"table {name!r} is not a list of rows")


def _point_tables(record: dict) -> dict:
    """``{table name: rows}`` of a point's record checked by :func:`_check_point_record` (a record of a sweep made
    before the runner has them at its top)."""
    return record["value"]["tables"] if "value" in record else record["tables"]


def _check_table_paths(plan: SweepPlan, out: Path) -> None:
    """Refuse (:class:`UserError`, before any work) a sweep whose ``NAME.parquet`` or its ``.meta.json`` is in ``out``
    as something other than a file (a folder): it is not the sweep's to replace, and is left untouched; and one
    into a folder holding a table an earlier sweep gathered that this sweep's lens does not write (it would
    describe other points beside this sweep's results)."""
    tables = _lens(plan.lens).tables
    for name in tables:
        table = out / f"{name}.parquet"
        for path in (table, meta_path(table)):
            if os.path.lexists(path) and not path.is_file():
                what = "a folder" if path.is_dir() else "not a regular file"
                raise UserError(f"{str(path)!r} is {what}, where the sweep writes its results; it is left untouched: "
                                f"move it away or choose another --out")
    # a table an earlier sweep (of another lens) gathered here, which this one does not write: it would stay beside
    # this sweep's results.parquet, describing other points
    for path in sorted(out.glob("*.parquet")) if out.is_dir() else ():
        name = path.name[: -len(".parquet")]
        if name == "results" or name in tables or not path.is_file():
            continue
        try:
            meta = json.loads(meta_path(path).read_text())
        except (OSError, ValueError):
            continue  # not a sweep's table: not ours to judge
        if isinstance(meta, dict) and meta.get("kind") == "sweep":
            raise UserError(f"{str(out)!r} holds {path.name}, gathered by an earlier sweep of the "
                            f"{meta.get('lens', '?')!r} lens, which this {plan.lens!r} sweep does not write: it would "
                            f"be left beside this sweep's results.parquet, describing other points; choose another "
                            f"--out, or move {path.name} (and its .meta.json) away")


def gather(plan: SweepPlan, out: str | os.PathLike, *, write: bool = True) -> Path | None:
    """Collect the finished points' files of ``plan`` into ``out/results.parquet`` (and ``NAME.parquet``).

    One row per row of each point's table, in grid order, with columns
    ``point``, ``key``, the swept fields, then the lens's columns. Returns the
    path, or ``None`` when no point has a result yet. ``write=False`` keeps an
    existing ``results.parquet`` (and its ``.meta.json``) as it is.
    """
    import pandas as pd

    out = Path(out)
    main = out / "results.parquet"
    if not write and main.is_file() and meta_path(main).is_file():
        return main
    frames: dict[str, list] = {}
    swept = plan.swept
    store = point_store(out)
    for p in plan.points:
        rec = store.record(p.key, check=_check_point_record)
        if rec is None:
            continue
        for name, rows in _point_tables(rec).items():
            df = pd.DataFrame(rows)
            df = df.rename(columns={c: f"lens_{c}" for c in df.columns if c in swept or c in ("point", "key")})
            n = len(df)
            head = pd.DataFrame({"point": [p.index] * n, "key": [p.key] * n, **{f: [p.fields[f]] * n for f in swept}})
            frames.setdefault(name, []).append(pd.concat([head, df.reset_index(drop=True)], axis=1))
    if "results" not in frames:
        return None
    meta = run_metadata(kind="sweep", lens=plan.lens, sweep=plan.to_dict(), points=len(plan.points))
    for name, parts in frames.items():
        _write_parquet(pd.concat(parts, ignore_index=True), swept, main if name == "results" else out / f"{name}.parquet",
                       meta)
    return main


def _write_parquet(df, swept: list, path: Path, meta: dict) -> None:
    for f in swept:  # a lens column that only repeats a swept field (e.g. activation) is dropped
        lc = f"lens_{f}"
        if lc in df.columns and all(a == b for a, b in zip(df[lc].tolist(), df[f].tolist())):
            df = df.drop(columns=lc)
    for col in df.columns:
        if df[col].dtype == object and len({type(v) for v in df[col].dropna()}) > 1:
            df[col] = df[col].astype(str)  # Parquet columns hold one type (e.g. an init swept over 1 and "he_normal")
    write_table(df, path, meta)
