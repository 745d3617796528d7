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
    facts = json.loads((quick_report / "report.json").read_text())["facts"]
    assert len(facts["claims"]) == 5
    assert all(c["verdict"] in ("supported", "not supported", "partly") for c in facts["claims"])
    for c in facts["claims"]:
        assert c["claim"] in text


def test_agg_backend_without_display(quick_report):
    import matplotlib

    assert matplotlib.get_backend().lower() == "agg"


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
