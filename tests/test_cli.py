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
    # every command is listed on one line with its one-line summary, in the order of COMMAND_MODULES,
    # the summaries in one column
    lines = out.splitlines()
    positions, columns = [], set()
    for mod in COMMAND_MODULES:
        cmd = __import__(f"propagate.commands.{mod}", fromlist=["NAME"])
        hits = [i for i, line in enumerate(lines) if line.split()[:1] == [cmd.NAME]]
        assert len(hits) == 1, cmd.NAME
        line = lines[hits[0]]
        assert " ".join(line.split()[1:]) == " ".join(cmd.HELP.split()), line
        positions.append(hits[0])
        columns.add(line.index(cmd.HELP.split()[0], len(line) - len(line.lstrip()) + len(cmd.NAME)))
    assert positions == sorted(positions) and len(columns) == 1


def test_python_dash_m_and_unknown_command():
    ok = subprocess.run([sys.executable, "-m", "propagate", "--version"], capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.startswith("propagate ")
    bad = subprocess.run([sys.executable, "-m", "propagate", "nosuch"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and bad.stderr.startswith("propagate: error:")
    assert "Traceback" not in bad.stderr
