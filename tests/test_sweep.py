"""`propagate sweep`: plans from TOML, a real Dask LocalCluster (2 workers on 127.0.0.1), resumption, failures."""

from __future__ import annotations

import json
import os
import re
import signal
import time

import pandas as pd
import pytest

from propagate.cli import main
from propagate.errors import UserError
from propagate.sweep import expand_range, load_plan, plan_from_dict, run_point, run_sweep

pytest.importorskip("distributed")

# tiny points: the cluster's start-up is the cost, shared by the module
TINY = {"depth": 3, "width": 16, "inputs": 32, "networks": 2}


@pytest.fixture(scope="module")
def client():
    import logging

    from distributed import Client, LocalCluster

    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=":0", silence_logs=logging.CRITICAL, env=env) as cluster:
        with Client(cluster) as c:
            yield c


def _plan(grid, fixed=TINY, lens="simulate", zip=None):
    data = {"lens": lens, "fixed": dict(fixed), "grid": grid}
    if zip:
        data["zip"] = zip
    return plan_from_dict(data)


def _assert_rows_equal(df, want):
    """The rows of one point in results.parquet hold exactly the lens's table ``want``."""
    df = df.reset_index(drop=True)
    assert len(df) == len(want)
    for c in want.columns:
        # a lens column named like a swept field is lens_<name>, or dropped when it repeats the field
        col = f"lens_{c}" if f"lens_{c}" in df.columns else c
        pd.testing.assert_series_equal(df[col], want[c].reset_index(drop=True), check_dtype=False, check_names=False)


# ----------------------------------------------------------------------------- plans (no cluster)


def test_ranges_products_and_zipped_groups():
    assert expand_range("10:50:5") == [10, 20, 30, 40, 50]
    assert expand_range("0:0.3:4") == [0.0, 0.1, 0.2, 0.3]
    assert expand_range("1e-4:1e-2:3:log") == [1e-4, 1e-3, 1e-2]
    assert expand_range("2:2:1") == [2]
    plan = _plan({"activation": ["relu", "tanh"], "sigma_b2": "0:0.1:3"},
                 fixed={"inputs": 32}, zip={"shape": {"depth": [2, 3], "width": [8, 4]}})
    assert len(plan.points) == 2 * 3 * 2
    assert plan.swept == ["activation", "sigma_b2", "depth", "width"]
    # the product in file order, the zipped fields together
    assert [(p.fields["depth"], p.fields["width"]) for p in plan.points[:2]] == [(2, 8), (3, 4)]
    assert plan.points[2].fields == {"activation": "relu", "sigma_b2": 0.05, "depth": 2, "width": 8}
    # the command's own parser: defaults filled in, values typed
    assert plan.points[0].options["networks"] == 4 and plan.points[0].options["dtype"] == "float32"
    assert len({p.key for p in plan.points}) == len(plan.points)


def test_key_is_the_parsed_configuration():
    a = _plan({"bias_var": [0, 0.1]})
    b = _plan({"bias_var": [0.0, 0.1]}, fixed={**TINY, "seed": 0})  # the default, given explicitly
    assert [p.key for p in a.points] == [p.key for p in b.points]
    c = _plan({"bias_var": [0, 0.1]}, fixed={**TINY, "seed": 1})
    assert not {p.key for p in a.points} & {p.key for p in c.points}
    # an option's alias is the same option (--bias-var is --sigma-b2)
    d = _plan({"sigma_b2": [0, 0.1]})
    assert [p.key for p in a.points] == [p.key for p in d.points]
    assert a.points[1].options["sigma_b2"] == 0.1


BAD_FILES = {
    "unknown lens": ('lens = "simulation"\n[grid]\ndepth = [1]\n', "unknown lens 'simulation'"),
    "unknown field": ('lens = "simulate"\n[grid]\ndeepth = [1, 2]\n', "unknown field 'deepth'"),
    "output option": ('lens = "simulate"\n[grid]\ncsv = ["a.csv"]\n', "output option"),
    "empty grid": ('lens = "simulate"\n[fixed]\ndepth = 3\n', "empty grid"),
    "empty list": ('lens = "simulate"\n[grid]\ndepth = []\n', "has no values"),
    "bad range": ('lens = "simulate"\n[grid]\nbias_var = "0:1"\n', "bad range '0:1'"),
    "bad range count": ('lens = "simulate"\n[grid]\nbias_var = "0:1:x"\n', "bad range"),
    "unparsable TOML": ('lens = "simulate\n[grid]\n', "not valid TOML"),
    "bad value": ('lens = "simulate"\n[grid]\ndepth = [2, -1]\n', "point 2 (depth=-1): argument --depth: must be >= 1"),
    "bad name": ('lens = "simulate"\n[grid]\nactivation = ["tanh", "tahn"]\n', "unknown activation 'tahn'"),
    "flag value": ('lens = "simulate"\n[grid]\nbatchnorm = [1, 2]\n', "takes true or false"),
    "two weights": ('lens = "theory"\n[fixed]\ninit = "he_normal"\n[grid]\nsigma_w2 = [1]\n', "not allowed with argument"),
    "zip lengths": ('lens = "simulate"\n[zip.s]\ndepth = [1, 2]\nwidth = [4]\n', "lists of equal length"),
    "twice": ('lens = "simulate"\n[fixed]\ndepth = 2\n[grid]\ndepth = [1]\n', "appears in both"),
    "no lens": ('[grid]\ndepth = [1]\n', "names no lens"),
    "alias twice": ('lens = "simulate"\n[fixed]\nbias_var = 0.1\n[grid]\nsigma_b2 = [0]\n', "the same option"),
    "lens list": ('lens = ["simulate", "theory"]\n[grid]\ndepth = [1]\n', "lens must be one name in quotes"),
    "lens table": ('lens = {name = "simulate"}\n[grid]\ndepth = [1]\n', "got dict {'name': 'simulate'}"),
    "range huge": ('lens = "simulate"\n[grid]\nbias_var = "0:1:10000000000"\n',
                   "the range '0:1:10000000000' of 10000000000 points is more than the limit of 100000"),
    "log range huge": ('lens = "simulate"\n[grid]\nbias_var = "1e-3:1:200000:log"\n', "200000 points"),
    "range overflow": ('lens = "simulate"\n[grid]\nbias_var = "0:1e400:3"\n', "must be finite numbers"),
    "grid huge": ('lens = "simulate"\n[grid]\nbias_var = "0:1:1000"\ndepth = "1:1000:1000"\n',
                  "the sweep grid has 1000 x 1000 = 1000000 points, more than the limit of 100000"),
}


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_bad_sweep_file_is_one_line_exit_2(name, tmp_path, capsys):
    text, expected = BAD_FILES[name]
    path = tmp_path / "bad.toml"
    path.write_text(text)
    rc = main(["sweep", str(path), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("propagate: error: ") and expected in lines[0], err
    assert not (tmp_path / "out").exists()  # checked before any work


def test_missing_file_is_one_line(tmp_path, capsys):
    assert main(["sweep", str(tmp_path / "none.toml"), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.startswith("propagate: error: sweep file not found")


# ----------------------------------------------------------------------------- on the cluster


def test_grid_equals_the_same_points_in_process(client, tmp_path):
    plan = _plan({"activation": ["relu", "tanh"], "bias_var": [0.0, 0.1]})
    res = run_sweep(plan, tmp_path, client=client, progress=False)
    assert (res.points, res.computed, res.skipped, res.failed) == (4, 4, 0, [])
    df = pd.read_parquet(tmp_path / "results.parquet")
    assert len(df) == 4 * (TINY["depth"] + 1)  # layers 0..depth per point
    assert sorted(set(zip(df["activation"], df["bias_var"]))) == [("relu", 0.0), ("relu", 0.1), ("tanh", 0.0), ("tanh", 0.1)]
    for p in plan.points:
        _assert_rows_equal(df[df["point"] == p.index], run_point(plan, p)["results"])
        assert (df.loc[df["point"] == p.index, "key"] == p.key).all()
    # the simulation is real: ReLU without bias keeps sigma_w2 q / 2 per layer (He), here sigma_w2 = 1 (lecun)
    relu = df[(df["activation"] == "relu") & (df["bias_var"] == 0.0) & (df["layer"] >= 2)]
    assert ((relu["pre_q"] / relu["theory_pre_q"]).between(0.5, 1.5)).all()


def test_interrupted_sweep_reruns_only_what_is_missing(client, tmp_path):
    plan = _plan({"seed": [0, 1, 2, 3, 4, 5]})
    done = []

    def stop_after_two(point, record):
        done.append(point.key)
        if len(done) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sweep(plan, tmp_path, client=client, progress=False, callback=stop_after_two)
    files = sorted(p.stem for p in (tmp_path / "points").glob("*.json"))
    assert files == sorted(done)
    computed = []
    res = run_sweep(plan, tmp_path, client=client, progress=False, callback=lambda p, r: computed.append(p.key))
    assert (res.computed, res.skipped, res.failed) == (4, 2, [])
    assert sorted(computed) == sorted(set(p.key for p in plan.points) - set(done))
    assert pd.read_parquet(tmp_path / "results.parquet")["point"].nunique() == 6
    again = run_sweep(plan, tmp_path, client=client, progress=False)
    assert (again.computed, again.skipped) == (0, 6)


def test_failed_point_is_recorded_and_the_sweep_goes_on(client, tmp_path):
    # 10^12 samples: the simulator refuses it (memory) on the worker; the check before work cannot know
    plan = _plan({"inputs": [32, 10**12]}, fixed={"depth": 2, "width": 8, "networks": 1})
    res = run_sweep(plan, tmp_path, client=client, progress=False)
    assert res.computed == 1 and len(res.failed) == 1
    point, error = res.failed[0]
    assert point.fields == {"inputs": 10**12} and error.startswith("UserError: this run needs about")
    rec = json.loads((tmp_path / "points" / f"{point.key}.failed.json").read_text())
    assert rec["status"] == "failed" and "Traceback" in rec["traceback"]
    assert pd.read_parquet(tmp_path / "results.parquet")["inputs"].unique().tolist() == [32]


def test_killed_worker_loses_nothing(client, tmp_path):
    # points of ~0.3 s on one core, so that one is running when its worker dies
    plan = _plan({"seed": list(range(6))}, fixed={"depth": 10, "width": 256, "inputs": 768, "networks": 2})
    killed = {}

    def kill_a_busy_worker(point, record):
        if killed:
            return
        busy = {}
        for _ in range(500):
            busy = {w: ks for w, ks in client.processing().items() if ks}
            if busy:
                break
            time.sleep(0.01)
        assert busy, "no worker was busy after the first point"
        worker, keys = next(iter(busy.items()))
        pid = client.run(os.getpid, workers=[worker])[worker]
        # Dask keys are "propagate-sweep-<point key>-<run token>"
        killed.update(pid=pid, keys={k.removeprefix("propagate-sweep-").rsplit("-", 1)[0] for k in keys})
        os.kill(pid, signal.SIGKILL)

    res = run_sweep(plan, tmp_path, client=client, progress=False, callback=kill_a_busy_worker)
    assert killed and res.failed == [] and res.computed == 6
    # the killed worker's task ran again in another process (all of them unless one finished as it died)
    pids = {k: json.loads((tmp_path / "points" / f"{k}.json").read_text())["meta"]["pid"] for k in killed["keys"]}
    rerun = [k for k, pid in pids.items() if pid != killed["pid"]]
    assert rerun
    df = pd.read_parquet(tmp_path / "results.parquet")
    assert sorted(df["seed"].unique()) == list(range(6))
    # and the rerun result is the in-process one (same seed, same numbers)
    p = next(p for p in plan.points if p.key == rerun[0])
    _assert_rows_equal(df[df["point"] == p.index], run_point(plan, p)["results"])


def test_busy_folder_is_refused_before_any_work(tmp_path, capsys):
    from propagate.runfolder import lock_folder

    sweep = tmp_path / "s.toml"
    sweep.write_text('lens = "theory"\n[fixed]\ndepth = 2\n[grid]\nsigma_w2 = [1, 2]\n')
    out = tmp_path / "out"
    with lock_folder(out):  # another sweep (here: this process) holds the folder
        assert main(["sweep", str(sweep), "--out", str(out), "--workers", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("propagate: error: ") and "in use by" in err[0]
    assert not (out / "points").exists()


def test_a_table_of_another_lens_gathered_in_the_folder_is_refused_before_any_work(tmp_path, capsys):
    """A train sweep gathered layers.parquet into a sweep folder; a theory sweep (which writes only results.parquet)
    into the same folder would leave it beside its own results, describing other points: refused before any work,
    nothing touched. A
    layers.parquet the user put there (no sweep's .meta.json) is not judged."""
    from propagate.io import write_table

    sweep = tmp_path / "s.toml"
    sweep.write_text('lens = "theory"\n[fixed]\ndepth = 2\n[grid]\nsigma_w2 = [1, 2]\n')
    out = tmp_path / "out"
    assert main(["sweep", str(sweep), "--out", str(out), "--workers", "1", "--no-progress"]) == 0
    capsys.readouterr()
    # what a train sweep into the same folder leaves (its lens gathers a layers table too)
    write_table(pd.DataFrame({"point": [0], "layer": [1]}), out / "layers.parquet", {"kind": "sweep", "lens": "train"})
    results = (out / "results.parquet").read_bytes()
    before = (out / "layers.parquet").read_bytes()
    assert main(["sweep", str(sweep), "--out", str(out), "--workers", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("propagate: error: ") and "layers.parquet, gathered by an earlier " \
        "sweep of the 'train' lens, which this 'theory' sweep does not write" in err[0], err
    assert (out / "layers.parquet").read_bytes() == before and (out / "results.parquet").read_bytes() == results
    (out / "layers.parquet.meta.json").unlink()  # now a file of the user's: the sweep runs beside it
    assert main(["sweep", str(sweep), "--out", str(out), "--workers", "1", "--no-progress"]) == 0
    assert (out / "layers.parquet").read_bytes() == before and (out / "results.parquet").is_file()


def test_cli_local_cluster_then_rerun_computes_nothing(tmp_path, capsys):
    # the default path: a LocalCluster of its own (theory points: the workers need not import torch)
    sweep = tmp_path / "s.toml"
    sweep.write_text('lens = "theory"\n[fixed]\ndepth = 2\nwidth = 8\nfirst_width = 8\n'
                     '[grid]\nactivation = ["relu", "tanh"]\ninit = ["normal:1", "normal:2"]\n')
    out = tmp_path / "out"
    assert main(["sweep", str(sweep), "--out", str(out), "--workers", "1", "--no-progress"]) == 0
    first = capsys.readouterr().out.strip().splitlines()[-1]
    assert first.startswith("sweep: 4 points: 4 computed, 0 already done, 0 failed")
    df = pd.read_parquet(out / "results.parquet")
    assert set(zip(df["activation"], df["init"])) == {(a, i) for a in ("relu", "tanh") for i in ("normal:1", "normal:2")}
    from propagate import load

    loaded = load(out)  # the sweep's results with the plan in its metadata
    assert loaded.kind == "sweep"
    pd.testing.assert_frame_equal(loaded["results"], df)
    # every row (the input's layer 0 too) carries its point's sigma_w2, and the init's parameters as numbers
    assert df["sigma_w2"].notna().all() and (df["init_distribution"] == "normal").all() and (df["init_mode"] == "fan_in").all()
    assert (df["init_scale"] == df["init"].str.split(":").str[1].astype(float)).all()
    hidden = df[df["layer"] >= 1]  # sigma_w2 = fan_in Var(w) = fan_in (S / fan_in): S up to round-off
    assert hidden["sigma_w2"].to_numpy() == pytest.approx(hidden["init_scale"].to_numpy(), rel=1e-12)
    assert loaded.meta["results"]["versions"]
    stamp = (out / "results.parquet").stat().st_mtime_ns
    t0 = time.perf_counter()
    assert main(["sweep", str(sweep), "--out", str(out), "--workers", "1"]) == 0
    assert time.perf_counter() - t0 < 5  # no cluster is started
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("sweep: 4 points: 0 computed, 4 already done")
    assert (out / "results.parquet").stat().st_mtime_ns == stamp
    assert main(["sweep", str(sweep), "--out", str(out), "--dry-run"]) == 0
    listing = capsys.readouterr().out.strip().splitlines()
    assert listing[-1] == "sweep: 4 points of lens theory, 4 done, 0 to compute" and "activation=tanh, init=normal:2" in listing[3]


def test_train_lens_rows_per_epoch(client, tmp_path):
    plan = _plan({"activation": ["relu", "tanh"]}, lens="train",
                 fixed={"depth": 2, "width": 16, "epochs": 2, "dataset": "mnist-5k", "probe_size": 64})
    assert plan.points[0].dataset == "mnist-5k"
    res = run_sweep(plan, tmp_path, client=client, progress=False)
    assert (res.computed, res.failed) == (2, [])
    df = pd.read_parquet(tmp_path / "results.parquet")
    assert sorted(zip(df["activation"], df["epoch"])) == [("relu", 1), ("relu", 2), ("tanh", 1), ("tanh", 2)]
    layers = pd.read_parquet(tmp_path / "layers.parquet")  # the per-layer statistics of every epoch, 0 = at init
    assert set(layers["epoch"]) == {0, 1, 2} and set(layers["activation"]) == {"relu", "tanh"}
    # it learned: far above chance (10 classes) after two epochs, and the training loss fell
    assert (df.loc[df["epoch"] == 2, "val_acc"] > 0.3).all()
    for _, g in df.groupby("point"):
        assert g.sort_values("epoch")["loss"].is_monotonic_decreasing


def test_trainability_lens_gathers_its_three_tables(client, tmp_path):
    plan = _plan({"depth": [2, 3]}, lens="trainability",
                 fixed={"width": 16, "first_width": 16, "epochs": 1, "dataset": "mnist-5k", "seeds": 2,
                        "no_predict": True, "lr": "1e-2"})
    res = run_sweep(plan, tmp_path, client=client, progress=False)
    assert (res.computed, res.failed) == (2, [])
    points = pd.read_parquet(tmp_path / "results.parquet")  # one row per (point, config, lr)
    assert sorted(zip(points["depth"], points["lr"])) == [(2, 0.01), (3, 0.01)]
    seeds = pd.read_parquet(tmp_path / "seeds.parquet")
    assert len(seeds) == 2 * 2
    # the ensemble's mean is the mean of its seeds' numbers
    for (d, lr), g in seeds.groupby(["depth", "lr"]):
        row = points[(points["depth"] == d) & (points["lr"] == lr)].iloc[0]
        assert row["acc_mean"] == pytest.approx(g["acc"].mean(), rel=1e-12)
    assert set(pd.read_parquet(tmp_path / "configs.parquet")["depth"]) == {2, 3}


def test_run_sweep_rejects_workers_with_a_scheduler(tmp_path):
    with pytest.raises(UserError, match="--workers"):
        run_sweep(_plan({"seed": [1]}), tmp_path, workers=2, scheduler="tcp://127.0.0.1:1")


def test_a_grid_too_large_is_refused_before_a_point_is_built(monkeypatch):
    """A grid of 10^7 points ends in one line at once: no point is parsed (each parse costs ~0.1 ms)."""
    from propagate import sweep

    built = []
    monkeypatch.setattr(sweep._RaisingParser, "argv", lambda self, values: built.append(values) or [])
    with pytest.raises(UserError, match="10000000 points, more than the limit"):
        plan_from_dict({"lens": "simulate", "grid": {"seed": list(range(1000)), "depth": list(range(1, 101)),
                                                     "width": list(range(1, 101))}})
    assert built == []


def test_scheduler_addresses_dask_cannot_parse_are_one_line():
    """Dask's ValueError (no port, an unknown protocol) and an empty address: UserErrors, no local cluster started."""
    from propagate.cluster import check_where, dask_client

    for bad, expected in (("not an address", "is not a Dask scheduler address (missing port"),
                          ("http://127.0.0.1:1", "unknown address scheme 'http'")):
        with pytest.raises(UserError, match=re.escape(expected)) as info:
            with dask_client(scheduler=bad):
                pass
        assert "\n" not in str(info.value)
    for empty in ("", "  "):
        with pytest.raises(UserError, match="scheduler address must be"):
            check_where(scheduler=empty)


def test_example_file_parses():
    plan = load_plan(os.path.join(os.path.dirname(__file__), "..", "examples", "sweeps", "simulate.toml"))
    assert plan.lens == "simulate" and len(plan.points) == 4


def test_help_example_is_a_valid_sweep_file():
    import tomllib

    from propagate.commands.sweep import DESCRIPTION

    lines = DESCRIPTION.splitlines()
    start = lines.index('  lens = "simulate"')
    block = lines[start:lines.index("", start)]
    plan = plan_from_dict(tomllib.loads("\n".join(line[2:] for line in block)))
    assert len(plan.points) == 2 * 2 * 3 * 3
    assert [(p.fields["width"], p.fields["inputs"]) for p in plan.points[:3]] == [(64, 800), (128, 400), (256, 200)]


# ----------------------------------------------------------------------------- the sweep figure


def test_measured_chi_1_is_the_per_layer_factor_of_the_squared_gradient():
    from propagate.report.section_sweep import measured_chi_1

    L, r = 12, 0.9  # grad_norm grows by 1/r per layer going down the stack: |grad|^2 by chi_1 = 1/r^2
    layers = pd.DataFrame({"layer": range(L + 1), "grad_norm": [float("nan")] + [3.0 / r ** (L - l) for l in range(1, L + 1)]})
    assert measured_chi_1(layers) == pytest.approx(1 / r ** 2, rel=1e-12)


def test_sweep_map_draws_the_theory_critical_line():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from propagate.report.section_sweep import figure_sweep_map
    from propagate.theory import chi_1, critical_line

    sw2s, sb2s = [0.5, 1.5, 2.5, 3.5], [0.0, 0.1, 0.2]
    summary = pd.DataFrame([{"sigma_w2": a, "sigma_b2": b, "chi": chi_1("tanh", a, b)} for b in sb2s for a in sw2s])
    ax = figure_sweep_map(summary, "chi", activation="tanh", log2=True)
    line = ax.get_lines()[-1]
    want = critical_line("tanh", np.linspace(0.0, 0.2, 41))
    np.testing.assert_allclose(line.get_xdata(), want["sigma_w2"])
    assert ax.get_xlabel().startswith("$\\sigma_w^2$") and ax.get_ylabel().startswith("$\\sigma_b^2$")
    plt.close(ax.figure)


def test_scheduler_and_worker_started_by_hand(tmp_path, capsys):
    """`dask scheduler` and `dask worker` as a user starts them, on 127.0.0.1; the sweep goes there via --scheduler."""
    import subprocess
    import sys

    dask_cli = [sys.executable, "-m", "dask"]  # the `dask` command of this environment
    info = tmp_path / "scheduler.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    procs = [subprocess.Popen([*dask_cli, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                               "--scheduler-file", str(info)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        for _ in range(600):
            if info.exists() and info.stat().st_size:
                break
            time.sleep(0.05)
        procs.append(subprocess.Popen([*dask_cli, "worker", "--scheduler-file", str(info), "--nworkers", "1",
                                       "--nthreads", "1", "--host", "127.0.0.1", "--no-dashboard", "--no-nanny"],
                                      env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        address = json.loads(info.read_text())["address"]
        sweep = tmp_path / "s.toml"
        sweep.write_text('lens = "theory"\n[fixed]\ndepth = 3\nwidth = 8\n[grid]\nactivation = ["relu", "tanh"]\n'
                         'sigma_w2 = [1.0, 2.0]\n')
        out = tmp_path / "out"
        assert main(["sweep", str(sweep), "--out", str(out), "--scheduler", address, "--no-progress"]) == 0
        assert capsys.readouterr().out.splitlines()[-1].startswith("sweep: 4 points: 4 computed")
        df = pd.read_parquet(out / "results.parquet")
        assert len(df) == 4 * 4 and {"chi_1", "q_star", "sigma_w2", "sigma_b2"} <= set(df.columns)
        # the worker's theory: with sigma_b2 = 0, ReLU has chi_1 = sigma_w2 / 2 (He et al. 2015) and tanh's
        # edge of chaos is sigma_w2 = 1 (q* = 0, chi_1 = sigma_w2 tanh'(0)^2)
        chi = df.groupby(["activation", "sigma_w2"])["chi_1"].first().to_dict()
        assert chi[("relu", 1.0)] == pytest.approx(0.5, rel=1e-9) and chi[("relu", 2.0)] == pytest.approx(1.0, rel=1e-9)
        assert chi[("tanh", 1.0)] == pytest.approx(1.0, abs=1e-6) and chi[("tanh", 2.0)] > 1
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in reversed(procs):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


def _worker_settings():
    import os

    import dask

    return os.environ.get("MALLOC_TRIM_THRESHOLD_"), dask.config.get("distributed.worker.profile.enabled"), \
        os.environ.get("OMP_NUM_THREADS"), dask.config.get("distributed.worker.memory.pause")


#: Run in a fresh process (the test process's own heap, shaped by the tests before it, decides whether the
#: blocks below come from the heap at all): the resident memory after a point that freed 600 MB of 4 MB blocks
#: kept in glibc's heap (as a worker's are once a freed large mapping has raised glibc's mmap threshold; here
#: the thresholds are set to their highest dynamic values, mmap 32 MB and trim 64 MB, so that this does not
#: depend on what ran before), and after the release.
_HEAP_AFTER_A_POINT = """
import json, os
import numpy as np
from propagate.cluster import release_memory

def rss():
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

import ctypes
blocks = [np.ones(1 << 19) for _ in range(150)]
fence = ctypes.CDLL("libc.so.6").malloc(1 << 20)  # above the blocks: the freed heap is not at its top
small = [np.ones(100) for _ in range(150)]
del blocks
before = rss()
released = release_memory()
print(json.dumps([before, rss(), released, len(small)]))
"""


def _heap_after_a_point():
    import json
    import os
    import subprocess
    import sys

    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(32 << 20), MALLOC_TRIM_THRESHOLD_=str(64 << 20))
    out = subprocess.run([sys.executable, "-c", _HEAP_AFTER_A_POINT], capture_output=True, text=True, check=True,
                         env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_local_cluster_workers_keep_allocator_defaults_and_no_profiler(monkeypatch):
    """Dask's default MALLOC_TRIM_THRESHOLD_ (every tensor a fresh mmap) and 10 ms stack sampling cost a
    sweep 27% and 20% of its time (benchmarks/bench_sweep.py); the local cluster starts its workers without,
    and without Dask's pause at 80% of their memory (it frees nothing here: workers hold no Dask data)."""
    from propagate.cluster import dask_client

    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    with dask_client(workers=1) as c:
        assert set(c.run(_worker_settings).values()) == {(None, False, "1", False)}


def test_release_memory_gives_a_freed_heap_back(monkeypatch):
    """Freed blocks kept in glibc's heap go back to the system after release_memory (what a worker calls after
    every point); every point a worker runs is followed by it."""
    import sys

    import propagate.cluster as cluster
    from propagate.runner import call_on_worker

    if not sys.platform.startswith("linux"):
        pytest.skip("glibc's malloc_trim")
    before, after, released, _ = _heap_after_a_point()
    assert released and before - after > 300e6, (before, after)
    calls = []
    monkeypatch.setattr(cluster, "release_memory", lambda: calls.append(1) or True)
    assert call_on_worker(max, (1, 2))["value"] == 2 and calls == [1]
    assert call_on_worker(int, ("x",))["ok"] is False and calls == [1, 1]  # after a failing point too


def test_folder_of_a_sweep_before_the_runner_resumes(tmp_path):
    """Point files written before propagate.runner (tables at the top of the record) count as done and are gathered."""
    from propagate.runfolder import claim
    from propagate.sweep import point_value

    plan = _plan({"sigma_w2": [1.0, 2.0]}, fixed={"depth": 2, "activation": "relu", "sigma_b2": 0.0}, lens="theory")
    with claim(tmp_path, {"kind": "sweep"}):
        pass
    (tmp_path / "points").mkdir()
    for p in plan.points:
        value = point_value(plan.lens, p.argv)
        (tmp_path / "points" / f"{p.key}.json").write_text(json.dumps(
            {"status": "ok", "meta": {"lens": "theory", "key": p.key, "index": p.index}, "tables": value["tables"]}))
    res = run_sweep(plan, tmp_path, workers=1, progress=False)  # nothing to compute: no cluster either
    assert (res.computed, res.skipped, res.failed) == (0, 2, [])
    df = pd.read_parquet(tmp_path / "results.parquet")
    for p in plan.points:
        _assert_rows_equal(df[df["point"] == p.index], run_point(plan, p)["results"])
    # ReLU without bias: chi_1 = sigma_w2 / 2
    assert sorted(df.groupby("sigma_w2")["chi_1"].first().tolist()) == pytest.approx([0.5, 1.0], rel=1e-12)
