"""Per-step training log (propagate.steplog, train --log-every/--tensorboard): the numbers against the updates."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch

from propagate import kernels
from propagate.cli import main
from propagate.data import Dataset, load_dataset
from propagate.spec import NetworkSpec
from propagate.steplog import STEP_COLUMNS, StepLog, steps_per_epoch
from propagate.train import TrainOptions, train


@pytest.fixture(scope="module")
def small():
    ds = load_dataset("mnist-5k")
    return Dataset(f"{ds.name}[:192]", ds.x_train[:192], ds.y_train[:192], ds.x_test[:32], ds.y_test[:32], ds.source)


def _spec():
    return NetworkSpec.stack(3, 16, input_dim=784, first_width=16, out_features=10, activation="tanh",
                             init="glorot_normal")


def _logged_sgd_run(ds, every):
    """Train 2 seeds with plain SGD, logging every ``every`` steps and keeping every step's parameters."""
    opts = TrainOptions(epochs=1, optimizer="sgd", lr=0.05, batch_size=32, probe_size=16, threads=1)
    log = StepLog(every, options=opts, steps_per_epoch=steps_per_epoch(ds.n_train, opts))
    params = {}

    class Spy:  # the log's callback, plus a copy of the parameters after every step
        wants_gradient = staticmethod(log.wants_gradient)

        def __call__(self, info):
            params[info["step"]] = [p.detach().clone() for p in info["model"].parameters()]
            log(info)

    train(_spec(), opts, ds, seeds=2, on_step=Spy())
    return log.table(), params, opts


def test_sgd_step_is_lr_times_the_logged_gradient_norm(small):
    """Plain SGD moves the parameters by -lr g: ||theta(t) - theta(t-1)|| / lr is the gradient norm the log holds,
    and each layer's ||dW|| / ||W|| is its update ratio (both per seed)."""
    table, params, opts = _logged_sgd_run(small, every=2)
    assert list(table.columns) == list(STEP_COLUMNS)
    assert sorted(table["step"].unique()) == [2, 4, 6]  # 192 / 32 = 6 steps, every second one
    assert sorted(table["layer"].unique()) == [1, 2, 3, 4]  # 3 hidden layers and the readout
    assert (table["lr"] == 0.05).all() and table["acc"].between(0, 1).all() and (table["loss"] > 0).all()
    for step in (4, 6):
        after, before = params[step], params[step - 1]
        for s in (0, 1):
            moved = math.sqrt(sum(float((a[s] - b[s]).double().square().sum()) for a, b in zip(after, before)))
            rows = table[(table["step"] == step) & (table["seed"] == s)]
            assert rows["grad_norm"].iloc[0] == pytest.approx(moved / opts.lr, rel=1e-4)
            weights = [(a, b) for a, b in zip(after, before) if a.dim() >= 3]
            for layer, (a, b) in enumerate(weights, start=1):
                ratio = float((a[s] - b[s]).double().norm() / b[s].double().norm())
                got = rows.loc[rows["layer"] == layer, "update_ratio"].iloc[0]
                assert got == pytest.approx(ratio, rel=1e-4)


def test_gradient_norm_is_the_same_on_the_fused_and_plain_paths(small):
    """The log's gradient norm does not depend on the kernels (fused per-op kernels vs plain torch expressions),
    and the first logged step has no update ratio (no weights of the step before)."""
    opts = TrainOptions(epochs=1, lr=1e-3, batch_size=64, probe_size=16, threads=1)
    spec = NetworkSpec.stack(2, 16, input_dim=784, first_width=16, out_features=10, activation="selu",
                             init="lecun_normal")

    def run():
        log = StepLog(1, options=opts, steps_per_epoch=steps_per_epoch(small.n_train, opts))
        train(spec, opts, small, seeds=2, on_step=log.callback)
        return log.table()

    fused = run()
    with kernels.disabled():
        plain = run()
    assert fused["grad_norm"].notna().all() and (fused["grad_norm"] > 0).all()
    assert fused["grad_norm"].to_numpy() == pytest.approx(plain["grad_norm"].to_numpy(), rel=1e-5)
    assert fused.loc[fused["step"] == 1, "update_ratio"].isna().all()
    assert fused.loc[fused["step"] > 1, "update_ratio"].gt(0).all()


def test_without_a_gradient_the_norm_is_nan_not_a_guess():
    """An optimizer that left .grad unset (updated inside the backward pass) and no norm from training: NaN."""
    model = torch.nn.Linear(3, 2)
    log = StepLog(1)
    log({"step": 1, "epoch": 1, "seeds": [0], "loss": [1.0], "acc": [0.5], "model": model})
    assert math.isnan(log.table()["grad_norm"].iloc[0])


def test_train_cli_writes_steps_csv_and_tensorboard(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    out, tb = tmp_path / "run", tmp_path / "tb"
    rc = main(["train", "--depth", "2", "--width", "16", "--epochs", "1", "--dataset", "mnist-5k", "--threads", "1",
               "--no-progress", "--batch-size", "1000", "--out", str(out), "--log-every", "2", "--tensorboard", str(tb),
               "--csv", str(tmp_path / "h.csv")])
    assert rc == 0
    steps = pd.read_csv(out / "steps.csv")
    assert (out / "steps.csv.meta.json").is_file()
    assert sorted(steps["step"].unique()) == [2, 4]  # 5000 images / 1000 = 5 steps
    assert steps["grad_norm"].gt(0).all() and steps["update_ratio"].gt(0).all()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb))
    acc.Reload()
    loss = acc.Scalars("seed0/loss")
    assert [e.step for e in loss] == [2, 4]
    assert loss[0].value == pytest.approx(steps.loc[steps["step"] == 2, "loss"].iloc[0], rel=1e-6)
    hist = pd.read_csv(tmp_path / "h.csv")
    assert list(hist["epoch"]) == [1] and 0 <= hist["val_acc"].iloc[0] <= 1
    # propagate.load reads the run folder: its tables as written, with the metadata beside each
    import propagate

    run = propagate.load(out)
    assert run.kind == "train" and {"history", "layers", "summary", "steps"} <= set(run)
    pd.testing.assert_frame_equal(run["steps"], steps)
    assert run["history"]["val_acc"].iloc[0] == pytest.approx(hist["val_acc"].iloc[0], rel=1e-9)
    assert run.meta["history"]["command"].startswith("propagate train") and run.meta["steps"]["log_every"] == 2
    assert run.identity["kind"] == "train"


def test_load_reads_a_report_data_folder_and_one_file(tmp_path):
    """A report's data/ (read through the report folder) and a single JSON document become DataFrames with metadata."""
    import json

    import propagate
    from propagate.io import write_json, write_table

    folder = tmp_path / "rep"
    (folder / "data").mkdir(parents=True)
    (folder / "README.md").write_text("# report\\n")
    write_table(pd.DataFrame({"layer": [1, 2], "pre_var": [1.0, 0.5], "theory_pre_var": [1.0, 0.25]}),
                folder / "data" / "simulation_layers.csv", {"command": "propagate report", "seed": 3})
    write_json({"lambda": 1.0507009873554805, "alpha": 1.6732632423543772}, folder / "data" / "selu_solution.json",
               {"command": "propagate report"})
    rep = propagate.load(folder)
    assert rep.kind == "report" and set(rep) == {"simulation_layers", "selu_solution"}
    assert rep["simulation_layers"]["theory_pre_var"].tolist() == [1.0, 0.25]
    assert rep.meta["simulation_layers"]["seed"] == 3
    assert rep["selu_solution"]["lambda"].iloc[0] == pytest.approx(1.0507009873554805, rel=1e-15)
    one = propagate.load(folder / "data" / "selu_solution.json")
    assert one.table["alpha"].iloc[0] == pytest.approx(1.6732632423543772, rel=1e-15)
    assert json.loads((folder / "data" / "selu_solution.json.meta.json").read_text())["command"] == "propagate report"
    with pytest.raises(propagate.errors.UserError, match="does not exist"):
        propagate.load(tmp_path / "nothing")


def test_train_json_to_stdout_is_strict_and_holds_history_and_summary(capsys):
    import json

    rc = main(["train", "--depth", "2", "--width", "16", "--epochs", "1", "--dataset", "mnist-5k", "--threads", "1",
               "--no-progress", "--batch-size", "1000", "--seeds", "2", "--json"])
    out = capsys.readouterr().out
    assert rc == 0
    doc = json.loads(out, parse_constant=lambda c: pytest.fail(f"not strict JSON: {c}"))
    assert [(r["seed"], r["epoch"]) for r in doc["rows"]] == [(0, 1), (1, 1)]
    accs = [r["val_acc"] for r in doc["rows"]]
    s = doc["summary"][0]
    assert s["n_seeds"] == 2 and s["val_acc_mean"] == pytest.approx(sum(accs) / 2, rel=1e-9)
    assert s["val_acc_ci_low"] < s["val_acc_mean"] < s["val_acc_ci_high"] or accs[0] == accs[1]
    assert doc["meta"]["command"].startswith("propagate train") and doc["status"] == "finished"


def test_logging_leaves_the_fused_rmsprop_run_unchanged(small):
    """On a logged step the optimizer updates after backward (the gradient stays in .grad to be measured); on the
    others, inside the fused chain's backward. Both are the same update: logging every step or none gives the
    same parameters, bit for bit."""
    opts = TrainOptions(epochs=1, optimizer="rmsprop", lr=1e-3, batch_size=32, probe_size=16, threads=1)
    finals = []
    for every in (None, 1, 3):
        log = StepLog(every, options=opts, steps_per_epoch=steps_per_epoch(small.n_train, opts)) if every else None
        seen = {}

        def keep(info, log=log):
            seen["params"] = [p.detach().clone() for p in info["model"].parameters()]
            if log is not None:
                log(info)

        keep.wants_gradient = (lambda step, log=log: log is not None and log.wants_gradient(step))
        train(_spec(), opts, small, seeds=2, on_step=keep)
        finals.append(seen["params"])
    for other in finals[1:]:
        assert all(torch.equal(a, b) for a, b in zip(finals[0], other))


def test_a_resumed_log_equals_a_fresh_one_and_a_late_one_says_what_it_lacks(tmp_path, capsys):
    """steps.csv of a run extended by a second epoch equals that of one 2-epoch run, rows and their order (seed,
    step, layer); a log asked for only when resuming covers the later epochs, and says so."""
    base = ["train", "--depth", "2", "--width", "16", "--dataset", "mnist-5k", "--threads", "1", "--no-progress",
            "--batch-size", "1000", "--seeds", "2"]
    fresh, resumed, late = tmp_path / "fresh", tmp_path / "resumed", tmp_path / "late"
    assert main([*base, "--epochs", "2", "--out", str(fresh), "--log-every", "2"]) == 0
    assert main([*base, "--epochs", "1", "--out", str(resumed), "--log-every", "2"]) == 0
    assert main([*base, "--epochs", "2", "--out", str(resumed), "--log-every", "2"]) == 0
    a, b = pd.read_csv(fresh / "steps.csv"), pd.read_csv(resumed / "steps.csv")
    assert list(a["seed"]) == sorted(a["seed"]) and len(a) == 2 * 4 * 3  # 2 seeds x steps 2, 4, 6, 8 x 3 layers
    pd.testing.assert_frame_equal(a, b)
    capsys.readouterr()
    assert main([*base, "--epochs", "1", "--out", str(late)]) == 0
    assert main([*base, "--epochs", "2", "--out", str(late), "--log-every", "2"]) == 0
    assert "steps.csv covers epochs 2 on only (the epochs before were trained without --log-every)" \
        in capsys.readouterr().err
    c = pd.read_csv(late / "steps.csv")
    assert set(c["epoch"]) == {2} and json.loads((late / "steps.csv.meta.json").read_text())["first_epoch"] == 2
