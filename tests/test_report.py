"""propagate report --quick: every figure and data file the README links to, atomic replacement."""

from __future__ import annotations

import json
import os
import re

import pytest

from propagate.cli import main


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    """A quick report whose heavy parts ran on a local Dask cluster of 2 workers (one torch thread each; one
    worker on a one-core machine, where --workers allows no more)."""
    from propagate.cluster import cores

    root = tmp_path_factory.mktemp("report")
    out = root / "quick"
    rc = main(["report", "--quick", "--out", str(out), "--work-dir", str(root / "work"), "--no-progress",
               "--workers", str(min(2, cores()))])
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

    import propagate.reproduce
    from propagate.report import ReportOptions, page

    monkeypatch.setattr(propagate.reproduce, "summary_markdown", lambda summary, epochs: "TRAINING TABLE\n")
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
    assert "| `relu/glorot_uniform` | 0.134 | 2.4e-16 | 1.6e-16 | 0.506 | 0.500 | 5.5e-09 | 3.5e-08 | 40.1 | 0 |" in text
    assert "plus the finite-width allowance: at that layer the simulation does not confirm the theory. No layer is " \
           "flagged." in text and "No layer's gradient norm is flagged against theory." in text
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


def _data_tables(folder):
    """Every data CSV of a report, read back, without the wall-clock ``seconds`` columns."""
    import pandas as pd

    out = {}
    for path in sorted((folder / "data").glob("*.csv")):
        df = pd.read_csv(path)
        out[path.name] = df.drop(columns=[c for c in df.columns if c == "seconds"])
    return out


def test_in_process_build_resumes_and_equals_the_two_worker_build(quick_report, tmp_path, monkeypatch):
    """A quick build in process at 1 torch thread, stopped after its first training ensemble and built again,
    computes only the points it had not finished, and its data files equal those of the 2-worker build bit for bit
    (training ensembles, self-normalization runs, the scaling grid, and this process's own parts)."""
    import propagate.report.tasks as tasks
    from propagate.presets import PRESETS
    from propagate.report import ReportOptions, build_report

    opts = ReportOptions(quick=True, threads=1, sections=("selfnorm", "scaling"), work_dir=str(tmp_path / "work"))

    def stop_after_first_ensemble(message):
        if message.startswith("training:") and " done (" in message:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_report(tmp_path / "rep", opts, notify=stop_after_first_ensemble)
    assert len(list((tmp_path / "work" / "points").glob("*.json"))) == 1
    computed = []
    real = tasks.train_configurations

    def counting(specs, *args, **kwargs):
        computed.append(tuple(s.label() for s in specs))
        return real(specs, *args, **kwargs)

    monkeypatch.setattr(tasks, "train_configurations", counting)
    build_report(tmp_path / "rep", opts)
    # the biggest models go first: ReLU with its two initializers was done; 3 ensembles and 4 selfnorm runs remain
    ensembles = [c for c in computed if c[0] in PRESETS]
    assert len(ensembles) == 3 and ("relu", "relu-he-normal") not in ensembles, computed
    assert len(computed) == 3 + 4 and len(list((tmp_path / "work" / "points").glob("*.json"))) == 4
    here, there = _data_tables(tmp_path / "rep"), _data_tables(quick_report)
    assert {"training_history.csv", "training_layers.csv", "selfnorm_training.csv", "scaling_cells.csv",
            "simulation_layers.csv"} <= set(here) <= set(there)
    for name, table in here.items():
        assert table.equals(there[name]), name
    assert "on a local Dask cluster of" in json.loads((quick_report / "report.json").read_text())["runner"]
    assert "its heavy parts on a local Dask cluster" in (quick_report / "README.md").read_text()


def test_report_runner_on_a_callers_client():
    """On a caller's client the runner's parts run in background threads and give the in-process values; the
    client is left open; an interrupted block cancels the points still queued instead of waiting for them."""
    import logging
    import time

    from distributed import Client, LocalCluster

    from propagate.report.tasks import ReportRunner
    from propagate.runner import Point, point_key
    from propagate.theory import chi_1

    from propagate.errors import UserError

    for bad in ({"threads": 0}, {"workers": 2, "scheduler": "tcp://127.0.0.1:1"}):
        with pytest.raises(UserError):  # before any cluster starts
            ReportRunner(**bad)
    points = [Point(point_key({"chi_1": s}), chi_1, ("relu", s, 0.0), meta={"what": f"{s}"}) for s in (0.5, 2.0, 4.0)]
    with ReportRunner() as here:
        assert not here.on_dask and here.threads is None and here.describe() == "in process"
        expected = here.part("chi", here.run, points).result()
    assert sorted(expected.values()) == [0.25, 1.0, 2.0]  # chi_1 of ReLU without bias: sigma_w^2 / 2
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0",
                      silence_logs=logging.CRITICAL) as cluster, Client(cluster) as client:
        with ReportRunner(client=client) as there:
            assert there.on_dask and not there.local and there.threads == 1
            assert there.describe() == "on the caller's Dask cluster" and there.where() == {"client": client}
            job = there.part("chi", there.run, points)
            assert there.part("chi", None) is job and job.result() == expected
        assert client.status == "running"
        slow = [Point(point_key({"sleep": k}), time.sleep, (1.0,)) for k in range(12)]
        t0 = time.perf_counter()
        with pytest.raises(KeyboardInterrupt):
            with ReportRunner(client=client) as there:
                job = there.part("slow", there.run, slow)
                time.sleep(0.5)
                raise KeyboardInterrupt
        assert time.perf_counter() - t0 < 4.0  # not the 6 s that 12 points of 1 s take on 2 workers
        with pytest.raises(Exception):
            job.result()


def _line_figure(ys, *, title=""):
    """A small figure for the runner's figure tasks (module level: a task's function pickles by reference)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot(ys)
    ax.set_title(title)
    return fig


def test_runner_tasks_and_figures_give_the_in_process_values(tmp_path):
    """A runner task computes what the call computes, in process or on a worker; a shared input reaches the tasks;
    a figure drawn on a worker is written only by write_figures, with the bytes the in-process runner writes."""
    import logging

    import numpy as np
    from distributed import Client, LocalCluster

    from propagate.report.tasks import ReportRunner
    from propagate.theory import chi_1

    import matplotlib
    import matplotlib.pyplot as plt

    backend = matplotlib.get_backend()
    with ReportRunner() as here:
        job = here.task("chi", chi_1, "relu", 2.0, 0.0)
        assert here.task("chi", None) is job and job.result() == 1.0  # sigma_w^2 / 2 for ReLU without bias
        assert here.share("x", [1, 2]) == [1, 2]
        plt.switch_backend("pdf")  # the caller's own backend (a notebook's) is left alone in process
        try:
            here.figure(tmp_path / "here", _line_figure, [1.0, 3.0, 2.0], title="t")
            assert matplotlib.get_backend() == "pdf"
        finally:
            plt.switch_backend(backend)
        assert here.write_figures() == []  # in process: written at once
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0",
                      silence_logs=logging.CRITICAL) as cluster, Client(cluster) as client:
        with ReportRunner(client=client) as there:
            assert there.task("chi", chi_1, "relu", 2.0, 0.0).result() == 1.0
            x = there.share("x", np.arange(5.0))
            assert there.share("x", None) is x and there.task("sum", np.sum, x).result() == 10.0
            there.figure(tmp_path / "there", _line_figure, [1.0, 3.0, 2.0], title="t")
            assert not (tmp_path / "there.png").exists()
            written = there.write_figures()
        assert sorted(p.name for p in written) == ["there.png", "there.svg"]
    for fmt in ("png", "svg"):
        assert (tmp_path / f"there.{fmt}").read_bytes() == (tmp_path / f"here.{fmt}").read_bytes()


def test_presets_of_one_architecture_train_together():
    """The seed's presets fall into four models: ReLU and SELU, each without and with BN, initializers batched."""
    from propagate.presets import list_presets
    from propagate.report.compute import preset_groups

    assert preset_groups(list_presets()) == [["relu", "relu-he-normal"], ["relu-bn"], ["selu", "selu-lecun-normal"],
                                             ["selu-bn-random-uniform", "selu-bn-lecun-uniform"]]
    assert preset_groups(["relu", "relu-he-normal", "relu-bn"], max_size=1) == [["relu"], ["relu-he-normal"],
                                                                               ["relu-bn"]]


def test_cli_section_names_are_the_report_sections():
    """commands/report.py keeps its own copy (so --help imports nothing heavy); it must not drift."""
    from propagate.commands.report import SECTION_NAMES
    from propagate.report import SECTIONS

    assert SECTION_NAMES == SECTIONS


# ----------------------------------------------------------------------------- section templates


def test_quick_page_has_no_unfilled_slot(quick_report):
    """Every section's template (and the page's) is filled: no ``<<slot>>`` reaches the README."""
    from propagate.report import SECTIONS

    text = (quick_report / "README.md").read_text()
    assert "<<" not in text and ">>" not in text
    for number, name in enumerate(SECTIONS, start=7):
        assert f"\n## {number}. " in text, name


def test_every_section_has_its_template():
    from propagate.report import SECTIONS
    from propagate.templates import load

    for name in SECTIONS:
        text = load(f"section_{name}.md")
        assert text.startswith("## ") and "<<" in text, name


def test_residual_template_from_constructed_summary():
    from propagate.report.section_residual import VARIANTS, section_markdown

    summary = {name: {"flags": i, "forward_flags": 0, "grad_flags": i, "rate": 0.5 + i, "var_last": 1.234e-30 * (i + 1),
                      "theory_var_last": 1.2e-30, "grad_first": 2.0 * 10 ** i, "theory_grad_first": 0.25,
                      "signal_first": 1.95, "grad_last": 0.7, "grad_rate": 1.2}
               for i, (name, _) in enumerate(VARIANTS)}
    text = section_markdown(summary, {"depth": 200, "width": 128, "seeds": 4, "samples": 64})
    assert "<<" not in text and text.startswith("## Residual blocks and LayerNorm")
    assert "200 hidden layers of 128 ReLU units with glorot_uniform weights (4 random networks,\n64 Gaussian" in text
    assert "shrinks by 0.5 per layer" in text and "grows geometrically, by 1.5 per layer, to 2.47e-30" in text
    assert "stays at\n  3.7e-30 (theory 1.2e-30; forward statistics:\n  0 layers flagged)" in text and "(2 layers flagged in the gradient norm)." in text
    assert "1.2 per layer here, from 0.7\n  at the top to 200 at layer 1" in text and "kept alive" not in text


def test_residual_summary_counts_flagged_layers_as_the_table_flags_them():
    """Flag counts are layers (rows with ``disagree``), not statistics: a layer flagged in two statistics is one."""
    import pandas as pd

    from propagate.report.section_residual import VARIANTS, residual_summary

    flags = {0: "post_mean", 1: "pre_var,pre_q", 2: "grad_norm", 3: "pre_mean,grad_norm", 4: ""}
    rows = [{"variant": name, "layer": lay, "disagree": bool(f), "disagree_in": f, "pre_var": 2.0 ** lay,
             "theory_pre_var": 2.0 ** lay, "pre_q": 1.0, "grad_norm": 3.0 ** (4 - lay), "theory_grad_norm": 1.0,
             "theory_grad_norm_signal": 0.0} for name, _ in VARIANTS for lay, f in flags.items()]
    table = pd.DataFrame(rows)
    s = residual_summary(table)["plain"]
    assert (s["flags"], s["forward_flags"], s["grad_flags"]) == (4, 3, 2) == (int(table["disagree"].sum()) // 3, 3, 2)
    assert s["var_last"] == 16.0 and s["grad_first"] == 27.0 and s["grad_rate"] == pytest.approx(3.0)
    assert s["rate"] == pytest.approx(2.0)


def test_spectrum_template_from_constructed_tables():
    import pandas as pd

    from propagate.report.section_spectrum import section_markdown

    spread = pd.DataFrame([{"activation": "relu", "weights": "gaussian", "width": 32, "layer": layer,
                            "theory_var_log_norm": 0.1 * layer, "var_log_norm": 0.11 * layer, "var_log_norm_se": 0.01,
                            "theory_var_log_grad": 0.2 * layer, "var_log_grad": 0.21, "var_log_grad_se": 0.02}
                           for layer in (1, 2, 3)])
    moments = pd.DataFrame([{"activation": "relu", "weights": "gaussian", "theory_m1": 1.0, "m1": 0.98, "m1_se": 0.01,
                             "theory_m2": 3.0, "m2": 2.9, "m2_se": 0.2, "theory_atom": 0.5}])
    text = section_markdown(spread, moments, 3, 40, 8, 128, 4)
    assert "<<" not in text and "Last layer (depth 3, 40 networks)" in text
    assert "| relu | gaussian | 32 | 0.3 | 0.33 ± 0.01 | 0.2 | 0.21 ± 0.02 |" in text  # layer 3 norm, layer 1 grad
    assert "| relu | gaussian | 1 | 0.98 ± 0.01 | 3 | 2.9 ± 0.2 | 2 | 0.5 |" in text  # m2/m1^2 - 1 = 2
    assert "depth 8, width 128: free probability vs 4 sampled networks" in text


def test_sweep_template_counts_the_points_on_the_theory_side():
    import numpy as np
    import pandas as pd

    from propagate.report.section_sweep import compare_with_theory, section_markdown

    # theory chi_1 = sigma_w2 (critical at 1); measured: the same except one point just across the line
    sw2s, sb2s = np.array([0.5, 1.0, 1.5, 2.0]), np.array([0.0])
    summary = pd.DataFrame({"sigma_w2": sw2s, "sigma_b2": 0.0, "chi_1_theory": sw2s,
                            "chi_1_measured": [0.55, 1.0, 0.9, 2.2], "corr_last": 0.5})
    line = pd.DataFrame({"sigma_b2": [0.0, 0.5], "sigma_w2": [1.0, 1.0]})
    c = compare_with_theory(summary, line, sw2s)
    # sign(ln) agrees at 0.5, 1.0 (both 0) and 2.0; 1.5 is 0.5 from the line, within one step (0.5)
    assert (c["agree"], c["measured"], c["near"], c["step"]) == (3, 4, [True], 0.5)
    assert c["far_points"] == 3 and c["median_error"] == pytest.approx(0.1)  # 0.55/0.5, 0.9/1.5, 2.2/2.0
    text = section_markdown(summary, line, (sw2s, sb2s, 16, 96, 128, 2), seed=0)
    assert "<<" not in text and text.startswith("## A sweep over the weight and bias variance")
    assert "at 3 of 4 grid points; the 1 others are all within one grid step (0.5 in $\\sigma_w^2$) of the line." in text
    assert "differs from the theory's by 10.0% (median over 3 points" in text
    assert "4 grid points ($\\sigma_w^2$ from 0.5 to 2," in text and "start at correlation 0.5; seed 0)" in text


def test_trainability_template_from_constructed_tables():
    import pandas as pd

    from propagate.report.section_trainability import TrainabilityGrid, section_markdown
    from propagate.sign_steps import warmup_gain
    from propagate.spec import NetworkSpec

    points = pd.DataFrame([{"config": c, "lr": lr, "refined": False, "outcome": o, "acc_mean": m,
                            "acc_ci_low": m - 0.1, "acc_ci_high": m + 0.1}
                           for c in ("a", "a+warmup20")
                           for lr, o, m in ((1e-4, "fails", 0.2), (1e-3, "trains", 0.8), (1e-2, "diverged", 0.1))])
    configs = pd.DataFrame([
        {"config": "a", "max_lr_measured": 1e-3, "max_lr_bad": 1e-2, "max_lr_predicted": 8e-4,
         "max_lr_predicted_ci_low": 6e-4, "max_lr_predicted_ci_high": 1e-3, "ratio": 1.25, "prediction_note": "",
         "max_lr_sharpness": 2e-6, "max_lr_sharpness_gd": 3e-3, "ratio_sharpness": 500.0, "ratio_gd": 1 / 3},
        {"config": "a+warmup20", "max_lr_measured": 3e-3, "max_lr_bad": 1e-2, "max_lr_predicted": 2e-3,
         "max_lr_predicted_ci_low": 1.5e-3, "max_lr_predicted_ci_high": 2.5e-3, "ratio": 1.5, "prediction_note": ""}])
    grid = TrainabilityGrid(points, configs, "acc", 0.3, 3, 2, "NOTE")
    spec = NetworkSpec.stack(2, 8, input_dim=8, first_width=None, activation="selu", init="lecun_normal")
    dyn = pd.DataFrame([{"config": "a", "lr": 1e-4, "seed": k, "step": s, "layer": l, "pre_var": (1.0 + s) * (1 + k),
                         "update_ratio": 0.01, "diverged": False, "weight_grad_norm": 1e-9 * 8, "loss": 2.0}
                        for k in (0, 1) for s in (0, 1) for l in (1, 2)])
    S = {"dyn_presets": ("a",), "dyn_lrs": (1e-4,), "dyn_seeds": (0, 1), "specs": {"a": spec}, "warmup": 20}
    text = section_markdown(grid, dyn, S)
    assert "<<" not in text and "ensemble of 3 seeds for 2 epoch(s) on NOTE" in text and "exceeds 0.3;" in text
    assert ("- **a** trains up to lr 0.001 (not at 0.01); predicted from its first steps: 0.0008 [0.0006, 0.001] "
            "(measured / predicted = 1.25). At the demo's lr 1e-3: trains, final acc 0.800 [0.700, 0.900].") in text
    assert "a: trains at 1e-3 (acc 0.800 [0.700, 0.900]), fails at 1e-4; diverged at 1e-2 (best 0.200" in text
    assert "is 1.25 to 1.50 times the predicted one (2 of 2 configurations within a factor of 2)" in text
    assert "Cohen et al. 2022): a 500" in text and "(plain gradient descent): a 0.333" in text
    assert f"predicts a gain of {warmup_gain(0.9, 20):.2f}x" in text
    assert "- **a**: predicted gain 2.50x (the lookahead, 0.0008 → 0.002); measured 3.00x" in text
    assert "layer 2's variance 1.5 at step 0 (mean over seeds), 2, 4 at step 1 (per seed)" in text
    # rms gradient entry: 8e-9 / sqrt(fan_in * fan_out = 64) = 1e-9 < 1e-8: far below RMSprop's epsilon
    assert "minibatch gradient is 1e-09 (median over layers), far below" in text


def test_selfnorm_template_from_constructed_tables():
    import pandas as pd

    from propagate.report.section_selfnorm import section_markdown

    configs = [{"name": n, "activation": a, "how": "H"} for n, a in (("A", "selu"), ("B", "gelu"))]
    sim = [{"name": "A", "deep_var": 0.98, "deep_theory_var": 1.0, "var_error": 0.123, "corr_last": 0.1,
            "theory_corr_last": 0.0, "corr_error": 0.1, "flagged": 0}]
    finals = pd.DataFrame([{"lr": 1e-4, "config": n, "seed": s, "val_acc": v}
                           for n, vals in (("A", (0.5, 0.6)), ("B", (0.1, 0.1))) for s, v in enumerate(vals)])
    summary = pd.DataFrame([{"lr": 1e-4, "config": "A", "n_seeds": 2, "diverged_seeds": 0,
                             **{f"{m}_{k}": v for m in ("val_acc", "train_eval_acc", "val_loss", "loss")
                                for k, v in (("mean", 0.55), ("ci_low", float("nan")), ("ci_high", float("nan")))}}])
    S = {"seeds": 2, "width": 64, "samples": 200, "depth": 50, "epochs": 2, "lrs": (1e-4,), "train_seeds": 2}
    text = section_markdown(S, 3, configs, sim, {"SELU": 0.7826, "self-normalized GELU": 0.7757}, "D", configs,
                            summary, finals, 0.1)
    assert "<<" not in text and "| B | `gelu` | H |" in text and "| A | 0.98 | 1 | 0.12 | 0.100 | 0.000 | 0.100 | 0 |" in text
    assert "mean Var(h) beyond layer 25" in text and "corr at layer 50" in text and "(per-layer factors 0.783 and 0.776)" in text
    assert "on D, at learning rate(s) 0.0001" in text and "(seeds 3 to 4, shared" in text
    assert "| A | 0.0001 | 2 | 0.550 (no interval) |" in text
    assert "B does not (interval at or below 0.100)" in text  # two seeds at exactly chance
    assert "No layer of any network is flagged" in text
    sim[0]["flagged"] = 3
    text = section_markdown(S, 3, configs, sim, {"SELU": 0.7826, "self-normalized GELU": 0.7757}, "D", configs,
                            summary, finals, 0.1)
    assert "| 0.100 | 3 |" in text and "3 layer(s) are flagged (A: 3; column `disagree` of" in text


def test_report_and_selfnorm_functions_are_short():
    """No function in propagate/report, selfnorm, gaussian or transforms is over 80 lines (the project's rule)."""
    import ast
    from pathlib import Path

    import propagate

    root = Path(propagate.__file__).resolve().parent
    files = sorted((root / "report").glob("*.py")) + [root / f for f in ("selfnorm.py", "gaussian.py", "transforms.py")]
    long = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 80:
                long.append(f"{path.name}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert len(files) >= 15 and not long, long


def test_scaling_template_from_constructed_tables():
    import pandas as pd

    from propagate.report.section_scaling import SETTINGS_FULL, section_markdown

    rows = []
    for n, m, p, cens in ((64, 4e-4, 3e-4, False), (256, 1e-4, 8e-5, False), (1024, 2.6e-5, 1e-5, True)):
        rows.append({"config": "c", "cell": f"n{n}", "axes": "width" if n != 256 else "width,depth,batch_size,rho",
                     "width": n, "depth": 50, "batch_size": 128, "rho": 0.9, "max_lr_measured": m,
                     "max_lr_bad": 1.3 * m, "censored": cens, "max_lr_predicted": p, "max_lr_predicted_ci_low": p / 1.2,
                     "max_lr_predicted_ci_high": p * 1.2, "ratio": m / p, "within_2x": 0.5 <= m / p <= 2,
                     "criterion": "half-progress", "steps": 10, "prediction_note": "", "epochs": 1})
    rows.append({**rows[1], "cell": "rho", "axes": "rho", "rho": 0.99, "max_lr_measured": float("nan"),
                 "ratio": float("nan"), "within_2x": None, "batch_size": 512, "epochs": 4})
    cells = pd.DataFrame(rows)
    fits = pd.DataFrame([{"config": "c", "axis": "width", "source": "measured", "slope": -1.02, "slope_ci_low": -1.2,
                          "slope_ci_high": -0.84, "n_points": 3},
                         {"config": "c", "axis": "width", "source": "predicted", "slope": -1.17, "slope_ci_low": -1.3,
                          "slope_ci_high": -1.0, "n_points": 9}])
    text = section_markdown(cells, fits, {**SETTINGS_FULL, "configs": ("c",)}, "DATA")
    assert "<<" not in text and "*trains* on DATA" in text
    # a half-decade grid bisected 3 times: each limit known to 10^(1/16); twice: 10^(1/8)
    assert "bisected 3 times towards the next rate that does not: each limit is known to a factor 1.15 " in text
    two = section_markdown(cells, fits, {**SETTINGS_FULL, "configs": ("c",), "refine": 2}, "DATA")
    assert "bisected 2 times towards the next rate that does not: each limit is known to a factor 1.33 " in two
    assert ("Training: 1 epoch(s) per run, raised so that every cell takes at least the base cell's optimizer steps "
            "(its batch size's epoch): 4 at batch 512 (stability") in text
    assert "1 cell(s) still train at the largest rate tried" in text and "(0 left out)" in text
    from propagate.report.section_scaling import censored_text

    assert censored_text(cells.iloc[:0]).startswith("No cell still trains at the largest rate tried")
    assert "**Within 2x**: 2 of the 3 cells that have a measured limit (67%); 1 (configuration, cell) pairs" in text
    assert ("- c at n1024: measured / predicted = 2.60; the largest learning rate tried still trains, so the "
            "measured value is only a lower bound and the true ratio is larger still; training recovers") in text
    assert "- c, d ln lr* / d ln n: measured -1.02 [-1.20, -0.84] (3 points); predicted -1.17 [-1.30, -1.00] (9 points)" in text
    assert "c: measured no measured limit, predicted 1.00" in text


def test_scaling_figure_leaves_out_a_band_of_decades_and_scales_to_the_values():
    """A configuration whose seeds' predictions lie decades apart gets no band (its legend entry says so), and
    the y axis spans the measured and predicted values (a factor 4 around them), not the widest band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from propagate.report.section_scaling import BAND_MAX, figure_scaling

    rows = []
    for config, spread in (("narrow", 1.5), ("wide", 1e3)):
        for n, p in ((64, 4e-4), (256, 1e-4)):
            rows.append({"config": config, "cell": f"n{n}", "axes": "width", "width": n, "depth": 50,
                         "batch_size": 128, "rho": 0.9, "max_lr_measured": p, "max_lr_bad": 1.3 * p,
                         "censored": False, "max_lr_predicted": p, "max_lr_predicted_ci_low": p / spread,
                         "max_lr_predicted_ci_high": p * spread})
    _, ax = plt.subplots()
    figure_scaling(pd.DataFrame(rows), axes=[ax])
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["narrow", f"wide (band > {BAND_MAX:g}x not drawn)"]
    assert ax.get_ylim() == pytest.approx((1e-4 / 4, 1.3 * 4e-4 * 4))
    plt.close("all")


def test_report_never_downloads_into_a_named_data_dir(tmp_path, monkeypatch):
    """With ``data_dir`` the report reads that folder and never downloads into it (the folder is the user's):
    an empty folder ends in a UserError that names `propagate data fetch`, with nothing fetched or written."""
    import propagate.data
    from propagate.errors import UserError
    from propagate.report import ReportOptions, build_report

    fetched = []
    monkeypatch.setattr(propagate.data, "fetch_dataset", lambda *a, **k: fetched.append(a))
    mine = tmp_path / "my-data"
    mine.mkdir()
    opts = ReportOptions(quick=True, threads=1, dataset="fashion-mnist", data_dir=str(mine),
                         work_dir=str(tmp_path / "work"))
    with pytest.raises(UserError, match="propagate data fetch fashion-mnist --data-dir"):
        build_report(tmp_path / "rep", opts)
    assert fetched == [] and list(mine.iterdir()) == []


def test_measured_line_is_dark_with_a_light_outline_and_in_the_legend():
    """On RdBu_r (white at its centre) the measured chi_1 = 1 line must not be white: dark green, white outline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import to_rgb

    from propagate.report.figures import MEASURED_LINE, draw_measured_line

    fig, ax = plt.subplots()
    x = y = np.linspace(0.0, 1.0, 6)
    z = np.subtract.outer(y, x)  # zero on the diagonal
    cs = draw_measured_line(ax, x, y, z)
    rgb = to_rgb(cs.get_edgecolor()[0][:3]) if hasattr(cs, "get_edgecolor") else to_rgb(MEASURED_LINE["color"])
    assert sum(rgb) < 1.0  # dark: not the map's white centre
    from matplotlib import patheffects

    assert [type(pe) for pe in cs.get_path_effects()] == [patheffects.withStroke]  # the light outline
    handles, labels = ax.get_legend_handles_labels()
    assert labels == ["measured $\\chi_1 = 1$"] and handles[0].get_linestyle() == "--"
    plt.close(fig)


# ------------------------------------------------------------------ an earlier report folder: adopted only if all ours


def _legacy_report(folder):
    """A report folder as a report writes it, from before the folder marker existed (no ``.propagate-folder``)."""
    (folder / "data").mkdir(parents=True)
    (folder / "figures").mkdir()
    (folder / "README.md").write_text("# report\n")
    (folder / "report.json").write_text(json.dumps({"meta": {}, "timings_s": {"SELU": 1.0}, "facts": {}}))
    (folder / "selu_derivation.md").write_text("derivation\n")
    (folder / "data" / "phase_selu.csv").write_text("a,b\n1,2\n")
    (folder / "data" / "phase_selu.csv.meta.json").write_text("{}")
    (folder / "data" / "selu_solution.json").write_text("{}")
    (folder / "figures" / "selu_flow.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (folder / "figures" / "selu_flow.svg").write_text("<svg/>")
    return folder


def _snapshot(folder):
    return {str(p.relative_to(folder)): (p.is_dir(), None if p.is_dir() else p.read_bytes())
            for p in sorted(folder.rglob("*"))}


def test_legacy_report_folder_with_a_users_file_is_refused_and_kept(tmp_path, capsys):
    """An earlier report (README.md + report.json, no marker) that also holds the user's files is refused before
    any work, with one line naming the folder and a file, and nothing in it is deleted or changed: not by the
    check, not by the command, and not at the swap when the file appears while the report is being built."""
    from propagate.errors import UserError
    from propagate.io import atomic_directory
    from propagate.report import _is_report_folder, check_report_folders

    out = _legacy_report(tmp_path / "legacy")
    (out / "precious.txt").write_text("mine")
    (out / "mine").mkdir()
    (out / "mine" / "data.csv").write_text("x\n1\n")
    before = _snapshot(out)
    rc = main(["report", "--dataset", "mnist-5k", "--quick", "--no-progress", "--sections", "none",
               "--out", str(out), "--work-dir", str(tmp_path / ".work")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("propagate: error: --out "), err
    assert repr(str(out)) in err and "'mine'" in err and "'precious.txt'" in err, err
    with pytest.raises(UserError, match=r"holds 2 entries a report does not write \('mine', 'precious.txt'\)"):
        check_report_folders(out)
    assert _snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["legacy"]  # no work folder, no temporary folder

    # a user's file among the data, a folder in figures, a link: each is the user's, each is refused by name
    extras = (("data/notes.txt", lambda p: p.write_text("n")), ("figures/drafts", lambda p: p.mkdir()),
              ("link.png", lambda p: p.symlink_to(tmp_path / "elsewhere")))
    for i, (extra, make) in enumerate(extras):
        other = _legacy_report(tmp_path / f"other-{i}")
        make(other / extra)
        with pytest.raises(UserError, match=re.escape(repr(extra))):
            check_report_folders(other)
        assert os.path.lexists(other / extra) and (other / "README.md").is_file()

    # a file the user puts there while the report is built is found before the swap, and kept
    late = _legacy_report(tmp_path / "late")
    with pytest.raises(UserError, match="'precious.txt'"):
        with atomic_directory(late, adopt=_is_report_folder) as tmp:
            (tmp / "README.md").write_text("# new report\n")
            (late / "precious.txt").write_text("mine")
    assert (late / "precious.txt").read_text() == "mine" and (late / "README.md").read_text() == "# report\n"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left

    # a report from when the marker was plain text (no list of files) is treated the same
    plain = _legacy_report(tmp_path / "plain")
    (plain / ".propagate-folder").write_text("made by propagate; this folder is replaced as a whole when rebuilt\n")
    (plain / "precious.txt").write_text("mine")
    with pytest.raises(UserError, match="'precious.txt'"):
        check_report_folders(plain)
    assert (plain / "precious.txt").read_text() == "mine"


def test_legacy_report_folder_of_report_files_only_is_adopted(tmp_path):
    """An earlier report holding only what a report writes (with or without a plain-text marker) is still adopted:
    the check passes and the build's swap replaces it as a whole, leaving a marker that lists the new files."""
    from propagate.io import FOLDER_MARKER, atomic_directory
    from propagate.report import _is_report_folder, check_report_folders

    out = _legacy_report(tmp_path / "legacy")
    plain = _legacy_report(tmp_path / "plain")
    (plain / FOLDER_MARKER).write_text("made by propagate; this folder is replaced as a whole when rebuilt\n")
    for folder in (out, plain):
        assert _is_report_folder(folder)
        check_report_folders(folder)
    with atomic_directory(out, adopt=_is_report_folder) as tmp:
        (tmp / "README.md").write_text("# new report\n")
        (tmp / "data").mkdir()
        (tmp / "data" / "phase_selu.csv").write_text("a\n3\n")
    assert sorted(p.name for p in out.iterdir()) == sorted([FOLDER_MARKER, "README.md", "data"])
    assert (out / "README.md").read_text() == "# new report\n"
    assert json.loads((out / FOLDER_MARKER).read_text())["files"] == ["README.md", "data/phase_selu.csv"]
    check_report_folders(out)  # and the rebuilt report (with its marker) may be rebuilt again
