"""The `propagate` command as a whole: --help lists every command and imports nothing heavy."""

from __future__ import annotations

import subprocess
import sys

from propagate.commands import COMMAND_MODULES


def test_help_lists_every_command_without_heavy_imports():
    code = (
        "import sys\n"
        "from propagate.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0\n"
        "heavy = [m for m in ('torch', 'sympy', 'matplotlib', 'numpy', 'pandas', 'scipy') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out
    # every command is listed, with its one-line summary, in the order of COMMAND_MODULES
    listing = " ".join(out.split())  # a long name puts its summary on the next line
    positions = []
    for mod in COMMAND_MODULES:
        cmd = __import__(f"propagate.commands.{mod}", fromlist=["NAME"])
        entry = f" {cmd.NAME} {' '.join(cmd.HELP.split())}"
        assert entry in listing, entry
        positions.append(listing.index(entry))
    assert positions == sorted(positions)


def test_python_dash_m_and_unknown_command():
    ok = subprocess.run([sys.executable, "-m", "propagate", "--version"], capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.startswith("propagate ")
    bad = subprocess.run([sys.executable, "-m", "propagate", "nosuch"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and bad.stderr.startswith("propagate: error:")
    assert "Traceback" not in bad.stderr
