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


# ------------------------------------------------------------------ refusals before any work (fuzzing finds)


def _cli(argv, cwd=None):
    """Run ``propagate ARGV`` in a subprocess: ``(returncode, stdout, stderr)``."""
    res = subprocess.run([sys.executable, "-m", "propagate", *argv], capture_output=True, text=True, cwd=cwd,
                         check=False)
    return res.returncode, res.stdout, res.stderr


def _one_error_line(rc, err):
    assert rc == 2, err
    assert err.count("\n") == 1 and err.startswith("propagate: error:"), err
    assert "Traceback" not in err


def _snapshot(folder):
    """Every path below ``folder`` with its bytes (``None`` for a folder)."""
    from pathlib import Path

    return {str(p.relative_to(folder)): (None if p.is_dir() else p.read_bytes())
            for p in sorted(Path(folder).rglob("*"))}


def test_two_outputs_that_are_one_file_are_refused_before_work(tmp_path):
    # the CSV's sidecar (same.csv.meta.json) is the --json file: the JSON results would be overwritten
    rc, out, err = _cli(["simulate", "--depth", "2", "--width", "4", "--inputs", "8", "--networks", "2",
                         "--no-progress", "--threads", "1", "--csv", str(tmp_path / "same.csv"),
                         "--json", str(tmp_path / "same.csv.meta.json")])
    _one_error_line(rc, err)
    assert "same.csv.meta.json" in err and "--json" in err and "--csv" in err
    assert list(tmp_path.iterdir()) == [] and out == ""
    # theory too (the shared check of every command with --json/--csv), with existing files left alone
    (tmp_path / "t.csv").write_text("mine\n")
    (tmp_path / "t.csv.meta.json").write_text("my json\n")
    before = _snapshot(tmp_path)
    rc, out, err = _cli(["theory", "--depth", "2", "--csv", str(tmp_path / "t.csv"),
                         "--json", str(tmp_path / "t.csv.meta.json")])
    _one_error_line(rc, err)
    assert _snapshot(tmp_path) == before


def test_library_refuses_outputs_that_are_one_file(tmp_path):
    import os

    import pytest

    from propagate.errors import UserError
    from propagate.io import check_distinct_outputs

    a = tmp_path / "a.csv"
    with pytest.raises(UserError, match="would both be"):
        check_distinct_outputs([("--csv", str(a), True), ("--json", str(a) + ".meta.json", False)])
    with pytest.raises(UserError, match="would both be"):  # through '..' and a link
        (tmp_path / "sub").mkdir()
        os.symlink(tmp_path, tmp_path / "link")
        check_distinct_outputs([("--csv", str(tmp_path / "sub" / ".." / "b.csv"), False),
                                ("--other", str(tmp_path / "link" / "b.csv"), False)])
    with pytest.raises(UserError, match="run's"):
        check_distinct_outputs([("--csv", str(a), True)], [("the run's 'a.csv'", a)])
    check_distinct_outputs([("--csv", str(a), True), ("--json", str(tmp_path / "a.json"), True), ("--x", "-", True),
                            ("--y", None, True)])


def test_a_folder_where_a_sidecar_goes_is_refused_before_work(tmp_path):
    (tmp_path / "mm.json").write_text("OLD json\n")
    (tmp_path / "mm.json.meta.json").mkdir()
    (tmp_path / "mm.csv").write_text("OLD csv\n")
    (tmp_path / "mm.csv.meta.json").mkdir()
    before = _snapshot(tmp_path)
    for argv in (["theory", "--depth", "2", "--json", str(tmp_path / "mm.json")],
                 ["theory", "--depth", "2", "--csv", str(tmp_path / "mm.csv")],
                 ["simulate", "--depth", "2", "--width", "4", "--inputs", "8", "--networks", "2", "--no-progress",
                  "--threads", "1", "--json", str(tmp_path / "mm.json")],
                 ["trainability", "--depth", "2", "--width", "4", "--lr", "1e-3", "--seeds", "1", "--epochs", "1",
                  "--dataset", "mnist-5k", "--no-sharpness", "--no-predict", "--threads", "1", "--no-progress",
                  "--out", str(tmp_path / "t"), "--json", str(tmp_path / "mm.json")]):
        rc, _, err = _cli(argv)
        _one_error_line(rc, err)
        assert "meta.json" in err and "is a folder" in err, err
        assert _snapshot(tmp_path) == before, argv  # mm.json not overwritten, no --out folder made


def test_a_table_and_its_sidecar_are_written_as_one(tmp_path, monkeypatch):
    import os

    import pandas as pd
    import pytest

    import propagate.io as pio
    from propagate.errors import UserError

    path = tmp_path / "t.csv"
    path.write_text("old table\n")
    pio.meta_path(path).write_text("old meta\n")
    real = os.replace

    def failing(src, dst):  # the second rename (the sidecar) fails
        if str(dst).endswith(".meta.json"):
            raise PermissionError(13, "Permission denied")
        return real(src, dst)

    monkeypatch.setattr(pio.os, "replace", failing)
    with pytest.raises(UserError, match="cannot write"):
        pio.write_table(pd.DataFrame({"a": [1]}), path, {"k": 1})
    monkeypatch.setattr(pio.os, "replace", real)
    assert path.read_text() == "old table\n" and pio.meta_path(path).read_text() == "old meta\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv", "t.csv.meta.json"]  # no temporary file left
    pio.write_table(pd.DataFrame({"a": [1]}), path, {"k": 1})
    assert path.read_text() == "a\n1\n" and '"k": 1' in pio.meta_path(path).read_text()


def test_train_refuses_a_folder_in_place_of_its_checkpoint_before_training(tmp_path):
    out = tmp_path / "tr"
    argv = ["train", "--dataset", "mnist-5k", "--depth", "1", "--width", "4", "--no-progress", "--threads", "1",
            "--epochs", "1", "--batch-size", "1000", "--probe-size", "16", "--out", str(out)]
    rc, _, err = _cli(argv)
    assert rc == 0, err
    (out / "checkpoint.pt").unlink()
    (out / "checkpoint.pt").mkdir()
    before = _snapshot(tmp_path)
    rc, _, err = _cli(argv)
    _one_error_line(rc, err)
    assert "checkpoint.pt" in err and "epoch" not in err
    assert _snapshot(tmp_path) == before  # nothing retrained, nothing rewritten


def test_report_refuses_one_input_before_any_work(tmp_path):
    rc, _, err = _cli(["report", "--dataset", "mnist-5k", "--quick", "--no-progress", "--out", str(tmp_path / "rep1"),
                       "--inputs", "1"])
    _one_error_line(rc, err)
    assert "samples must be a whole number >= 2, got 1" in err
    assert list(tmp_path.iterdir()) == []  # no report, no work folder


def test_empty_items_in_comma_lists_are_refused(tmp_path):
    for argv, flag in ((["critical", "--sigma-b2", "1,,2"], "--sigma-b2"),
                       (["critical", "--sigma-b2", "1,2,"], "--sigma-b2"),
                       (["trainability", "--presets", "relu", "--lr", "1e-3,,1e-2", "--predict-only",
                         "--out", str(tmp_path / "t")], "--lr"),
                       (["trainability", "--presets", "relu,,relu-bn", "--predict-only", "--out", str(tmp_path / "t")],
                        "--presets"),
                       (["report", "--sections", "spectrum,,sweep", "--out", str(tmp_path / "r")], "--sections")):
        rc, out, err = _cli(argv)
        _one_error_line(rc, err)
        assert flag in err and "empty item" in err and argv[argv.index(flag) + 1] in err, err
        assert out == ""
    assert list(tmp_path.iterdir()) == []


def test_no_command_is_an_error_with_the_help():
    rc, out, err = _cli([])
    _one_error_line(rc, err)
    assert "a command is required" in err
    assert out.startswith("usage: propagate") and "theory" in out


def test_theory_warns_of_a_diverging_signal_and_an_empty_preset_is_refused(tmp_path):
    """theory's table marks divergence and stderr says where, in one warning line (exit 0: a result, as simulate);
    train --preset '' is a one-line error before any work, not the default network trained."""
    code, out, err = _cli(["theory", "--activation", "relu", "--init", "normal:1e300", "--depth", "6", "--width", "2"])
    assert code == 0 and err.strip().splitlines() == [
        "propagate: warning: the predicted signal diverges (inf/NaN) at layer 2; the table shows where"]
    code, out, err = _cli(["theory", "--activation", "tanh", "--depth", "3"])
    assert code == 0 and err == ""
    code, out, err = _cli(["train", "--dataset", "mnist-5k", "--depth", "3", "--width", "16", "--epochs", "1",
                           "--no-progress", "--preset", "", "--out", str(tmp_path / "run")])
    assert code == 2 and err.strip().splitlines() == [
        "propagate: error: --preset needs a name (see --list-presets); leave it out for the default network"]
    assert not (tmp_path / "run").exists()
