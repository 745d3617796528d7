"""The ``propagate`` command.

Each subcommand lives in ``propagate/commands/<name>.py`` and exposes ``NAME``,
``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``. Command
modules import only the standard library at module level, so ``propagate --help``
answers at once; the library (torch, sympy, matplotlib) is imported inside ``run``.

Errors a user can cause end in one line ``propagate: error: ...`` and exit 2.
Python warnings raised while a command runs (numpy's ``overflow encountered``,
torch's and Dask's notices) never reach the terminal raw: they are collected
and, if the command succeeds, printed after its output as one line each,
``propagate: warning: ...`` (each distinct message once, at most
:data:`MAX_WARNINGS`); after an error the error line alone is printed. Warnings
the user configured (``python -W``, ``PYTHONWARNINGS``) are left to Python.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from propagate.commands import COMMAND_MODULES
from propagate.commands._args import NEGATIVE_NUMBER
from propagate.errors import UserError
from propagate.io import set_command

PROG = "propagate"
#: Most distinct warnings printed after a command (the rest are counted in one more line).
MAX_WARNINGS = 5


class _Parser(argparse.ArgumentParser):
    """argparse, but every error is one line (no usage block) and exit status 2.

    Values that look like negative numbers, lists or ranges of them (``--nu-range
    -1,1``, ``--mean -0.5``) are taken as values: argparse's own test knows only
    plain ``-1`` and ``-0.5``, and would read ``-1,1`` as an unknown option.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = NEGATIVE_NUMBER

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{PROG}: error: {message}\n")


class _TopHelp(argparse.HelpFormatter):
    """The top-level help: every command name and its one-line summary on one line.

    argparse measures the command names one indentation level shallower than it
    prints them, so the longest name (``self-normalize``) ran into its summary
    and was wrapped; the names are measured here at the depth they are printed.
    """

    def __init__(self, prog):
        super().__init__(prog, max_help_position=24, width=130)

    def add_argument(self, action):
        super().add_argument(action)
        if isinstance(action, argparse._SubParsersAction):
            for name in action.choices:
                self._action_max_length = max(self._action_max_length, len(name) + self._current_indent + 4)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        formatter_class=_TopHelp,
        description="Statistics of signal propagation in deep neural networks.",
        epilog="Run 'propagate COMMAND --help' for a command's options.",
    )
    from propagate import __version__

    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for modname in COMMAND_MODULES:
        mod = importlib.import_module(f"propagate.commands.{modname}")
        p = sub.add_parser(
            mod.NAME,
            help=mod.HELP,
            description=getattr(mod, "DESCRIPTION", mod.HELP),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args._argv = tuple(argv)  # which options were given (commands refuse ones that would have no effect)
    set_command([PROG, *argv])
    if not getattr(args, "_run", None):  # no command: the help (stdout), and the usual error line and status
        parser.print_help()
        sys.stdout.flush()
        print(f"{PROG}: error: a command is required: {PROG} COMMAND [OPTIONS] ('{PROG} --help' lists the "
              f"commands)", file=sys.stderr)
        return 2
    # `kill` (SIGTERM) unwinds like Ctrl-C, so temporary files and folders are removed
    # and no half-written result is left behind
    import signal

    def _terminate(signum, frame):
        raise KeyboardInterrupt

    import threading

    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminate)
    caught: list = []
    try:
        rc = int(_run_collecting_warnings(args, caught) or 0)
        _print_warnings(caught)
        return rc
    except UserError as exc:
        print(f"{PROG}: error: {one_line(str(exc)) or 'invalid input'}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `propagate theory | head`
        return 0


def one_line(text: str) -> str:
    """``text`` on one line: its lines joined by spaces (a message is never cut short, nor split)."""
    return " ".join(line.strip() for line in str(text).strip().splitlines() if line.strip())


def _run_collecting_warnings(args, caught: list):
    """Run the command with Python's warnings appended to ``caught`` instead of printed (see the module docstring)."""
    import warnings

    if sys.warnoptions:  # the user chose how warnings are shown
        return args._run(args)
    with warnings.catch_warnings(record=True) as recorded:
        warnings.simplefilter("default")  # each distinct warning once per place, as Python shows them
        try:
            return args._run(args)
        finally:
            caught.extend(recorded)


def _print_warnings(caught: list) -> None:
    """Each distinct warning once, as ``propagate: warning: MESSAGE (file:line)``, after the command's output."""
    seen: dict = {}
    for w in caught:
        seen.setdefault((w.category.__name__, one_line(str(w.message))), w)
    for (category, message), w in list(seen.items())[:MAX_WARNINGS]:
        where = f" ({w.filename.rsplit('/', 1)[-1]}:{w.lineno})" if category == "RuntimeWarning" else ""
        print(f"{PROG}: warning: {message}{where}", file=sys.stderr)
    if len(seen) > MAX_WARNINGS:
        print(f"{PROG}: warning: and {len(seen) - MAX_WARNINGS} more", file=sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
