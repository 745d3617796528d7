"""propagate report --quick: every figure and data file the README links to, atomic replacement."""

from __future__ import annotations

import json
import re

import pytest

from propagate.cli import main


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    out = root / "quick"
    rc = main(["report", "--quick", "--out", str(out), "--work-dir", str(root / "work"), "--no-progress"])
    assert rc == 0
    return out


def _links(readme: str) -> list[str]:
    return re.findall(r"\]\(([^)#\s]+)\)", readme)


def test_every_link_resolves(quick_report):
    readme = (quick_report / "README.md").read_text()
    links = _links(readme)
    assert len(links) >= 15
    for link in links:
        assert (quick_report / link).exists(), link


def test_figures_and_data(quick_report):
    figs = {p.name for p in (quick_report / "figures").iterdir()}
    for stem in ("selu_flow", "layer_moments", "grad_norms", "phase_diagram", "training_curves_lr0.001",
                 "training_layer_drift"):
        assert f"{stem}.png" in figs and f"{stem}.svg" in figs
        png = (quick_report / "figures" / f"{stem}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    for name in ("simulation_layers", "theory_layers", "training_summary", "training_layers", "phase_selu"):
        assert (quick_report / "data" / f"{name}.csv").exists()
        meta = json.loads((quick_report / "data" / f"{name}.csv.meta.json").read_text())
        assert meta["seed"] == 0 and "report" in meta["command"]


def test_numbers_in_report(quick_report):
    """The report's numbers are the solver's and the theory's, not placeholders."""
    import pandas as pd

    text = (quick_report / "README.md").read_text()
    assert "1.05070098735548049341933498529" in text and "1.67326324235437728481704299167" in text
    theory = pd.read_csv(quick_report / "data" / "theory_layers.csv")
    relu = theory[(theory["config"] == "relu/glorot_uniform") & (theory["layer"] >= 3)]
    ratios = relu["pre_var"].to_numpy()[1:] / relu["pre_var"].to_numpy()[:-1]
    assert abs(ratios.mean() - 0.5) < 1e-9  # glorot on 256x256: sigma_w^2 = 1, relu halves q


def test_verdicts_are_the_findings_of_the_reported_facts(quick_report):
    """The written verdicts are what the findings' tests give on the facts in report.json (not typed in),
    and each states its statistics (an interval with N, or that one seed gives none)."""
    from propagate.report import findings

    text = (quick_report / "README.md").read_text()
    facts = json.loads((quick_report / "report.json").read_text())["facts"]
    facts["training"] = {p: {float(lr): v for lr, v in d.items()} for p, d in facts["training"].items()}
    assert [c(facts) for c in findings.CLAIMS] == facts["claims"]
    for c in facts["claims"]:
        assert f"- **{c['claim']}** {c['verdict'].capitalize()}." in text
        assert "N = " in c["evidence"] or "1 seed: no interval" in c["evidence"] or c["verdict"] == "undecided"
    runs = [r for d in facts["training"].values() for r in d.values()]
    assert runs and all(r["acc"]["n"] == len(r["seeds"]) for r in runs)


def test_figure_functions_leave_the_callers_matplotlib_settings_alone():
    import matplotlib as mpl

    from propagate.report.style import STYLE, report_style

    before = {k: mpl.rcParams[k] for k in STYLE}
    with report_style():
        inside = {k: mpl.rcParams[k] for k in STYLE}
    assert inside == {k: v for k, v in STYLE.items()}
    assert {k: mpl.rcParams[k] for k in STYLE} == before


def test_fallback_colours_are_the_same_in_every_process():
    """Unlisted configurations get a colour from a CRC-32 of their names, not from the per-process salted hash()."""
    import os
    import subprocess
    import sys
    import zlib

    from propagate.report.style import _FALLBACK, colour

    code = "from propagate.report.style import colour; print(colour('gelu', 'orthogonal'), colour('elu', 'he_normal'))"
    seen = set()
    for salt in ("1", "2", "3"):
        out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": salt},
                             capture_output=True, text=True, check=True).stdout.split()
        seen.add(tuple(out))
    assert seen == {(colour("gelu", "orthogonal"), colour("elu", "he_normal"))}
    assert colour("gelu", "orthogonal") == _FALLBACK[zlib.crc32(b"gelu\0orthogonal") % len(_FALLBACK)]
    assert colour("relu", "glorot_uniform") == "#d62728"  # listed configurations keep their colour


def test_config_fields_come_from_columns():
    import pandas as pd

    from propagate.report.style import config_fields, config_title, line_style

    t = pd.DataFrame({"activation": ["selu"] * 2, "init": ["lecun_normal"] * 2, "normalization": ["batchnorm"] * 2,
                      "residual": [0.5, 0.5], "config": ["not/parsed+BN"] * 2})
    f = config_fields(t)
    assert f == {"activation": "selu", "init": "lecun_normal", "normalization": "batchnorm", "residual": 0.5}
    assert config_title(**f) == "selu / lecun_normal + BN, residual 0.5"
    assert config_title("relu", "he_normal") == "relu / he_normal" and line_style("batchnorm") == "--"
    assert config_fields(t[["activation", "init"]]) == {"activation": "selu", "init": "lecun_normal",
                                                        "normalization": "none", "residual": 0.0}
    with pytest.raises(KeyError):
        config_fields(t[["config"]])
    with pytest.raises(ValueError):
        config_fields(pd.concat([t, t.assign(init="he_normal")]))


def test_templates_are_filled_strictly():
    from propagate.templates import fill, load

    assert fill("a <<x>> b <<x>> $\\frac{1}{2}$", {"x": 3}) == "a 3 b 3 $\\frac{1}{2}$"
    with pytest.raises(KeyError):
        fill("<<x>> <<y>>", {"x": 1})
    with pytest.raises(ValueError):
        fill("<<x>>", {"x": 1, "z": 2})
    assert "<<lambda>>" in load("selu_derivation.md") and "<<verdicts>>" in load("report_page.md")


def test_every_template_is_package_data():
    """Each template file matches the package-data patterns in pyproject.toml, so an installed
    (non-editable) package ships it (checked by hand: the wheel holds propagate/templates/*.md)."""
    import fnmatch
    import tomllib
    from pathlib import Path

    import propagate.templates

    root = Path(__file__).resolve().parents[1]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    folder = Path(propagate.templates.__file__).parent
    files = [p.name for p in folder.iterdir() if p.suffix != ".py" and p.is_file()]
    assert {"selu_derivation.md", "report_page.md"} <= set(files)
    for name in files:
        assert any(fnmatch.fnmatch(name, pat) for pat in patterns.get("propagate.templates", [])), name


def test_page_renders_every_slot_from_its_inputs(monkeypatch):
    """The README text from constructed inputs: every slot filled, the numbers formatted by format_number."""
    from types import SimpleNamespace

    import pandas as pd

    import propagate.train
    from propagate.report import ReportOptions, page

    monkeypatch.setattr(propagate.train, "summary_markdown", lambda summary, epochs: "TRAINING TABLE\n")
    sim = {"relu/glorot_uniform": {"var_first": 0.134, "var_last": 2.4e-16, "theory_var_last": 1.6e-16, "rate": 0.506,
                                   "theory_rate": 0.5, "mean_last": 5.5e-9, "grad_first_over_last": 3.5e-8,
                                   "dead_last": 0.4013}}
    facts = {"selu": {"lambda": "1.0507", "alpha": "1.6733", "spectral_norm": 0.7876733604657156, "attracting": True,
                      "box_max_norm": None},
             "simulation": sim, "step_size": "STEP SIZE NOTE.",
             "claims": [{"claim": "C1.", "verdict": "not supported", "evidence": "E1"}]}
    ds = SimpleNamespace(name="mnist-5k", y_test=[0] * 1000, y_train=[0] * 4000)
    text = page.render(ReportOptions(machine="box"), ds, facts, pd.DataFrame({"seconds": [1.5, 2.0]}), {"SELU": 3.2},
                       90.0, "INPUTS", ds, ["r1", "r2"])
    assert "<<" not in text and ">>" not in text
    assert "(full version) on box; do not edit" in text and "This build took 1.5 minutes: SELU 3 s." in text
    assert "steps took 4 s in all" in text and "- **C1.** Not supported." in text and "**C1.** *Not supported.* E1" in text
    assert "| spectral norm of the Jacobian of g at (0, 1) | 0.787673 |" in text and "theorem's box" in text
    assert "| `relu/glorot_uniform` | 0.134 | 2.4e-16 | 1.6e-16 | 0.506 | 0.500 | 5.5e-09 | 3.5e-08 | 40.1 |" in text
    assert "on 4000 mnist-5k training images (test:\n1000 images), at learning rate(s) 0.001, 0.0001" in text
    assert "TRAINING TABLE" in text and "(runs: r1, r2;" in text and "STEP SIZE NOTE." in text


def test_interrupted_report_keeps_previous(quick_report, tmp_path, monkeypatch):
    import shutil

    from propagate.report import ReportOptions, build_report, compute

    out = tmp_path / "rep"
    shutil.copytree(quick_report, out)
    before = (out / "README.md").read_text()

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(compute, "simulate_configs", boom)  # after the SELU files are written
    with pytest.raises(KeyboardInterrupt):
        build_report(out, ReportOptions(quick=True, work_dir=str(tmp_path / "work")))
    assert (out / "README.md").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp folders left


def test_cli_section_names_are_the_report_sections():
    """commands/report.py keeps its own copy (so --help imports nothing heavy); it must not drift."""
    from propagate.commands.report import SECTION_NAMES
    from propagate.report import SECTIONS

    assert SECTION_NAMES == SECTIONS
