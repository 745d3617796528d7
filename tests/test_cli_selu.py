"""End-to-end tests of ``propagate solve-selu`` and ``propagate derive selu``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from propagate.cli import main

ROOT = Path(__file__).resolve().parents[1]


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_default_prints_published_constants(capsys):
    rc, out, err = run(capsys, "solve-selu")
    assert rc == 0 and err == ""
    assert "1.05070098735548049341933498529" in out
    assert "1.67326324235437728481704299167" in out
    assert "erfc" in out and "attracting" in out


def test_json_other_fixed_point(capsys):
    rc, out, _ = run(capsys, "solve-selu", "--mean", "0", "--var", "2", "--json")
    assert rc == 0
    data = json.loads(out)
    assert data["var"] == "2.0" and data["attracting"] is True
    for key in ("lambda", "alpha", "spectral_norm"):
        assert isinstance(data[key], str) and len(data[key].replace(".", "").lstrip("0")) >= 29
    assert all(isinstance(v, str) for row in data["jacobian"] for v in row)


def test_json_with_all_extras(capsys):
    rc, out, _ = run(capsys, "solve-selu", "--json", "--dropout", "0.05", "--check", "--samples", "20000",
                     "--stability", "--grid", "3")
    assert rc == 0
    data = json.loads(out)
    assert data["dropout"]["alpha_prime"].startswith("-1.758099340847376859940217520")
    assert float(data["stability"]["max_spectral_norm"]) < 1
    assert abs(float(data["check"]["mean_z"])) < 4


def test_dropout_stability_check_text(capsys):
    rc, out, _ = run(capsys, "solve-selu", "--dropout", "0.05", "--stability", "--grid", "5", "--check",
                     "--samples", "100000", "--seed", "3")
    assert rc == 0
    assert "0.954844476005030876386208679097" in out  # a at rate 0.05
    assert "max spectral norm of J" in out and "std. error" in out


def test_latex(capsys):
    rc, out, _ = run(capsys, "solve-selu", "--latex")
    assert rc == 0 and "\\operatorname{erfc}" in out and "\\begin{pmatrix}" in out


def test_digits_100(capsys):
    rc, out, _ = run(capsys, "solve-selu", "--digits", "100", "--json")
    lam = json.loads(out)["lambda"]
    assert lam.startswith("1.0507009873554804934193349852946") and len(lam) == 101


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--var", "0"], "--var"),
        (["--var", "-1"], "--var"),
        (["--digits", "0"], "--digits"),
        (["--mean", "abc"], "not a number"),
        (["--bogus"], "unrecognized"),
        (["--dropout", "1.5"], "--dropout"),
        (["--mean", "5"], "no SELU has this fixed point"),
        (["--mean", "-2"], "no SELU has this fixed point"),
        (["--stability", "--nu-range", "1,0.5"], "--nu-range"),
    ],
)
def test_bad_input_one_line_exit_2(capsys, argv, needle):
    try:
        rc = main(["solve-selu", *argv])
    except SystemExit as exc:  # argparse errors exit from the parser
        rc = exc.code
    out, err = capsys.readouterr()
    assert rc == 2
    assert err.startswith("propagate: error: ") and needle in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_subprocess_error_has_no_traceback():
    proc = subprocess.run([sys.executable, "-m", "propagate", "solve-selu", "--mean", "3"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    assert proc.stderr.startswith("propagate: error: no SELU has this fixed point") and proc.stderr.count("\n") == 1


def test_derive_selu_matches_committed_file(capsys):
    rc, out, _ = run(capsys, "derive", "selu")
    assert rc == 0
    assert out == (ROOT / "derivations" / "selu.md").read_text()


def test_derive_unknown_topic(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["derive", "tanh"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
