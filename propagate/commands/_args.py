"""argparse value types that reject bad input with one clear line (exit 2).

Every check here runs at parse time, before any work: numbers and ranges,
output paths (:func:`output_file`, :func:`output_file_or_stdout`,
:func:`png_file`, :func:`output_dir`), device names, comma lists, and sizes
bounded by memory or work (:func:`depth`, ``propagate.limits``). Every command
(new ones too) should take its options through these types, so that a bad
value never reaches the library. Standard library (and ``propagate.io``,
``propagate.limits``, both stdlib-only) only.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import re

from propagate import limits
from propagate.errors import UserError
from propagate.io import check_output_dir, check_output_file, check_path_text
from propagate.limits import MAX_WIDTH, check_depth


#: Smallest positive normal float64. A nonzero number below it in magnitude (subnormal, e.g. 1e-320) keeps
#: fewer than 16 significant digits and turns into 0 or inf at the first division or squaring; it is refused.
SMALLEST_NORMAL = 2.2250738585072014e-308


def _number(text: str, kind=float):
    try:
        value = kind(text)
    except (TypeError, ValueError, OverflowError):
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    if isinstance(value, float) and 0 < abs(value) < SMALLEST_NORMAL:
        raise argparse.ArgumentTypeError(f"{text} is below the smallest normal float64 {SMALLEST_NORMAL:.3g} in "
                                         f"magnitude (a subnormal loses its digits); use 0 or a larger value")
    return value


def finite_float(text: str) -> float:
    return _number(text)


def positive_float(text: str) -> float:
    v = _number(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return v


def nonneg_float(text: str) -> float:
    v = _number(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return v


def probability(text: str) -> float:
    """A rate in [0, 1)."""
    v = _number(text)
    if not 0 <= v < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return v


def _whole_number(text: str, smallest: int) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if v < smallest:
        raise argparse.ArgumentTypeError(f"must be >= {smallest}, got {text}")
    return v


def positive_int(text: str) -> int:
    return _whole_number(text, 1)


def nonneg_int(text: str) -> int:
    return _whole_number(text, 0)


#: Most values a list or range may hold (a range is expanded at parse time); commands bound the work further.
MAX_LIST = limits.MAX_LIST


def split_list(text: str, empty: str = "empty list: {text!r}") -> list[str]:
    """The items of a comma-separated list, stripped; the one parser of every list option.

    An empty item (``1,,2``, a comma at either end) is refused, not dropped: it
    is almost always a typo (a missing value), and dropping it would run with a
    list other than the one typed. A list with no item at all raises ``empty``
    (formatted with ``text``). argparse's message names the option.
    """
    items = [t.strip() for t in text.split(",")]
    if not any(items):
        raise argparse.ArgumentTypeError(empty.format(text=text))
    if not all(items):
        raise argparse.ArgumentTypeError(f"{text!r} has an empty item (two commas in a row, or one at an end); "
                                         f"remove the extra comma or add the missing value")
    return items


def float_list(text: str) -> list[float]:
    """'0.1,0.2' or a range 'START:STOP:N' (N points, both ends included; N <= :data:`MAX_LIST`)."""
    text = text.strip()
    if text.count(":") == 2:
        a, b, n = text.split(":")
        start, stop, count = _number(a), _number(b), positive_int(n)
        return _from_user_error(limits.linear_range)(start, stop, count, "a range")
    items = split_list(text)
    if len(items) > MAX_LIST:
        raise argparse.ArgumentTypeError(f"a list of {len(items)} values is more than the limit of {MAX_LIST}")
    return [_number(t) for t in items]


def nonneg_float_list(text: str) -> list[float]:
    vals = float_list(text)
    if any(v < 0 for v in vals):
        raise argparse.ArgumentTypeError(f"values must be >= 0, got {text}")
    return vals


def positive_float_list(text: str) -> list[float]:
    vals = float_list(text)
    if any(v <= 0 for v in vals):
        raise argparse.ArgumentTypeError(f"values must be > 0, got {text}")
    return vals


# ------------------------------------------------------------- checked by the library


def _from_user_error(fn):
    """Turn the library's UserError into argparse's error (so the message names the option)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):

        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return wrapper


def int_in(low: int, high: int, what: str = ""):
    """A whole number in ``[low, high]``; ``what`` says where ``high`` comes from (for the message)."""

    def check(text: str) -> int:
        v = _whole_number(text, low)
        if v > high:
            raise argparse.ArgumentTypeError(f"must be <= {high}{f' ({what})' if what else ''}, got {text}")
        return v

    check.__name__ = f"int_in_{low}_{high}"
    return check


def depth(text: str) -> int:
    """A number of hidden layers, 1 to ``propagate.limits.MAX_DEPTH``."""

    v = positive_int(text)
    _from_user_error(check_depth)(v)
    return v


def width(text: str) -> int:
    """A layer width, 1 to ``propagate.limits.MAX_WIDTH`` (commands that allocate check their memory on top)."""

    v = positive_int(text)
    if v > MAX_WIDTH:
        raise argparse.ArgumentTypeError(
            f"a {v} x {v} float32 weight matrix alone is {4 * v * v / 2**30:.3g} GiB; the limit is {MAX_WIDTH} units")
    return v


@_from_user_error
def output_file(text: str) -> str:
    """A file to write (atomically): not a folder, in a place we can write (checked now, before any work)."""

    return str(check_output_file(text))  # '~' expanded, as the check saw it


def output_file_or_stdout(text: str) -> str:
    """Like :func:`output_file`, or ``-`` for standard output."""
    return text if text == "-" else output_file(text)


def png_file(text: str) -> str:
    """A ``.png`` file to write."""
    if not text.lower().endswith(".png"):
        raise argparse.ArgumentTypeError(f"expects a .png file name, got {text!r}")
    return output_file(text)


@_from_user_error
def output_dir(text: str) -> str:
    """A folder to write into over time (created if missing): not a file, in a place we can write."""

    return str(check_output_dir(text))


_DEVICE = re.compile(r"^(cpu|auto|cuda(:\d+)?)$")


def device(text: str) -> str:
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (whether the GPU exists is checked when the command starts)."""
    t = text.strip().lower()
    if not _DEVICE.match(t):
        raise argparse.ArgumentTypeError(f"unknown device {text!r} (use cpu, cuda, cuda:N or auto)")
    return t


def name_list(text: str) -> list[str]:
    """A comma-separated list of names, at least one."""
    return split_list(text, "needs at least one name, got {text!r}")


#: Matches option values that are negative numbers or lists/ranges of them ('-1', '-1,1', '-0.5:0.5:11',
#: '-1e-3'), so argparse takes them as values, not as unknown options (see ``propagate.cli``).
NEGATIVE_NUMBER = re.compile(r"^-(\d|\.\d|inf\b|nan\b)[\w.+\-,:]*$", re.IGNORECASE)


def check_device(name: str, option: str = "--device") -> None:
    """Raise UserError unless torch can use device ``name`` (call at the start of run(), before any banner)."""
    name = device(name) if name else "cpu"
    if name in ("cpu", "auto"):
        return
    import torch

    if not torch.cuda.is_available():
        raise UserError(f"{option} {name} requested but torch sees no CUDA GPU; use {option} cpu")
    index = int(name.split(":")[1]) if ":" in name else 0
    count = torch.cuda.device_count()
    if index >= count:
        raise UserError(f"{option} {name} requested but torch sees {count} CUDA GPU{'s' * (count != 1)} "
                        f"(cuda:0..cuda:{count - 1})")


#: Most torch CPU threads: beyond the machine's cores threads only contend, and a huge pool can exhaust the OS.
MAX_THREADS = 1024


def threads(text: str) -> int:
    """A number of CPU threads, 1 to :data:`MAX_THREADS`."""
    v = positive_int(text)
    if v > MAX_THREADS:
        raise argparse.ArgumentTypeError(f"must be <= {MAX_THREADS} (this machine has {os.cpu_count()} cores), got {text}")
    return v


# ------------------------------------------------------------- seeds, workers, refinement, time, addresses


def _checked(text: str, parse, check, *args):
    """``parse(text)``, then ``check(value, *args)`` (a :mod:`propagate.limits` check; its UserError becomes
    argparse's message)."""
    v = parse(text)
    _from_user_error(check)(v, *args)
    return v


def seed(text: str) -> int:
    """A random seed, 0 to 2^63 - 1 (:data:`propagate.limits.MAX_SEED`: seeds are stored as signed 64-bit
    integers). An ensemble's last seed ``seed + seeds - 1`` is checked by :func:`propagate.limits.check_seeds`."""
    return _checked(text, lambda t: _whole_number(t, -(2**63)), limits.check_seeds, 1, "seed")


def workers(text: str) -> int:
    """Local Dask worker processes: 1 to one per core (:func:`propagate.limits.max_workers`)."""
    return _checked(text, positive_int, limits.check_workers, "--workers")


def refine_steps(text: str) -> int:
    """Bisection steps of a refinement: 0 to :data:`propagate.limits.MAX_REFINE_STEPS`."""
    return _checked(text, nonneg_int, limits.check_refine, "--refine")


def timeout_seconds(text: str) -> float:
    """A network timeout in seconds, 0.001 to 86400 (:func:`propagate.limits.check_timeout`)."""
    return _checked(text, _number, limits.check_timeout, "--timeout")


def density_points(text: str) -> int:
    """Points of a spectral density, 1 to :data:`propagate.limits.MAX_DENSITY_POINTS`."""
    return int_in(1, limits.MAX_DENSITY_POINTS, "about 4 ms a point")(text)


#: Protocols a Dask scheduler address may name (``distributed.comm``); without one, ``tcp`` is meant.
SCHEDULER_PROTOCOLS = ("tcp", "tls", "ucx", "ws", "wss")
_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?)$")


def scheduler_address(text: str) -> str:
    """The address of a running Dask scheduler: ``[PROTOCOL://]HOST:PORT`` (``tcp://10.0.0.5:8786``).

    Checked here, so that an empty string does not silently start a local
    cluster and a malformed one (``not an address``, ``http://...``) ends in
    one line instead of Dask's ``ValueError``; whether a scheduler answers
    there is found when the command connects.
    """
    t = text.strip()
    if not t:
        raise argparse.ArgumentTypeError("needs a scheduler address such as tcp://HOST:8786, got an empty string")
    protocol, sep, rest = t.partition("://")
    if not sep:
        protocol, rest = "tcp", t
    if protocol.lower() not in SCHEDULER_PROTOCOLS:
        raise argparse.ArgumentTypeError(f"{text!r}: a Dask scheduler speaks {', '.join(SCHEDULER_PROTOCOLS)}, "
                                         f"not {protocol!r}; give tcp://HOST:PORT")
    host, colon, port = rest.rpartition(":")
    if not colon or not _HOST.match(host) or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a scheduler address; give [PROTOCOL://]HOST:PORT, "
                                         f"e.g. tcp://127.0.0.1:8786")
    return t


@_from_user_error
def data_dir(text: str) -> str:
    """A folder that holds a dataset's files (it must exist: a command reads from it and downloads nothing into it)."""

    p = check_path_text(text, None, "folder")
    try:
        if not p.exists():
            raise UserError(f"{text!r} does not exist; give the folder that holds the dataset's files "
                            f"(propagate data fetch NAME --data-dir DIR downloads them there)")
        if not p.is_dir():
            raise UserError(f"{text!r} is not a folder")
    except OSError as exc:
        raise UserError(f"cannot use {text!r}: {exc.strerror or exc}") from None
    return str(p)


# ------------------------------------------------------------- old spellings


def warn(message: str) -> None:
    """One line ``propagate: warning: MESSAGE`` on standard error (for notices at parse time)."""
    import sys

    print(f"propagate: warning: {message}", file=sys.stderr)


class DeprecatedOption(argparse.Action):
    """An old spelling of an option: stores what the new one would, after a one-line notice on stderr."""

    def __init__(self, option_strings, dest, new: str = "", **kwargs):
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        warn(f"{option_string} is deprecated, use {self.new}")
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)


def deprecated_alias(container, old: str, new_action) -> None:
    """Accept ``old`` as a hidden, deprecated spelling of ``new_action`` (the Action ``add_argument`` returned).

    ``old`` stores into the same destination with the same type, choices and
    number of values; using it prints ``propagate: warning: OLD is deprecated,
    use NEW`` on stderr (one line, at parse time). Old spellings are kept for
    one release. ``container`` is the parser or group ``new_action`` was added to.
    """
    kw = dict(dest=new_action.dest, action=DeprecatedOption, new=new_action.option_strings[0], help=argparse.SUPPRESS,
              default=argparse.SUPPRESS)
    if new_action.nargs == 0:  # a flag (store_true, store_const)
        kw.update(nargs=0, const=new_action.const)
    else:
        kw.update(type=new_action.type, nargs=new_action.nargs, const=new_action.const, choices=new_action.choices,
                  metavar=new_action.metavar)
    container.add_argument(old, **kw)


def add_renamed(container, new: str, old: str, **kwargs):
    """``container.add_argument(new, **kwargs)`` with ``old`` as its deprecated spelling (:func:`deprecated_alias`);
    returns the new option's action."""
    action = container.add_argument(new, **kwargs)
    deprecated_alias(container, old, action)
    return action


# ------------------------------------------------------------- options that do not apply


def given(args, option: str) -> bool:
    """Whether the command line named ``option`` (``--grid 5`` or ``--grid=5``).

    The CLI keeps its argument list on ``args`` (``_argv``); a namespace built
    in Python has none, and nothing counts as given.
    """
    return any(tok == option or tok.startswith(option + "=") for tok in getattr(args, "_argv", None) or ())


def refuse_unused(args, needs) -> None:
    """Refuse an option given where it has no effect, naming what it needs.

    ``needs`` maps an option to ``(what it goes with, in words; whether that is
    there)``, e.g. ``{"--grid": ("--stability", args.stability)}``: ``--grid 5``
    without ``--stability`` would otherwise be ignored without a word.
    """

    for option, (partner, present) in needs.items():
        if not present and given(args, option):
            fix = f"add {partner} or drop {option}" if partner.startswith("--") else f"drop {option}"
            raise UserError(f"{option} has no effect without {partner}; {fix}")


def add_ensemble_arguments(group, seeds_help: str) -> None:
    """The options of a command that trains seed ensembles (train, reproduce): ``--seed``, ``--seeds`` (with
    ``seeds_help``), ``--probe-size``, ``--device``, ``--threads``, added to ``group`` (a parser or a group)."""
    group.add_argument("--seed", type=seed, default=0, help="random seed of weights, shuffles and dropout (default 0)")
    group.add_argument("--seeds", type=positive_int, default=1, help=seeds_help)
    group.add_argument("--probe-size", type=positive_int, default=512,
                       help="training images in the probe batch (default 512)")
    group.add_argument("--device", type=device, default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    group.add_argument("--threads", type=threads, help="torch CPU threads (default: one per core)")
