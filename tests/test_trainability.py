"""Trainability grid, outcomes and log-space refinement on a fake trainer; first-epoch dynamics on a tiny net."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from propagate.errors import UserError
from propagate.spec import NetworkSpec
from propagate.trainability import (
    DEFAULT_LRS,
    TrainabilityOptions,
    classify,
    first_epoch_dynamics,
    log_lr_grid,
    log_steps,
    max_lr_of,
    summarize_point,
    trainability,
)
from propagate.trainability import REFINE_RTOL


def FakeDataset():
    from propagate.data import Dataset

    z = np.zeros((10, 28, 28), np.uint8)
    return Dataset("fake", z, np.zeros(10, np.int64), z, np.zeros(10, np.int64), "test")


def _spec(name):
    return NetworkSpec.stack(2, 4, input_dim=4, first_width=4, out_features=3, name=name)


def fake_trainer(edges, calls=None, noise=0.01):
    """Trains (acc 0.9) below ``edges[config][0]``, fails (acc 0.1) up to ``edges[config][1]``, diverges above."""

    def trainer(spec, options, seeds, dataset):
        good, div = edges[spec.label()]
        if calls is not None:
            calls.append((spec.label(), options.lr))
        rows = []
        for s in seeds:
            acc = (0.9 if options.lr <= good else 0.1) + noise * (s - 1)
            diverged = options.lr > div
            rows.append({"seed": s, "loss": float("nan") if diverged else 1 - acc, "acc": acc, "val_loss": 1 - acc,
                         "val_acc": acc - 0.05, "train_eval_acc": acc, "diverged": diverged, "epochs_done": 1})
        return rows

    return trainer


def fake_predictor(spec, options, dataset):
    return {"max_lr_predicted": 1e-4, "max_lr_predicted_ci_low": 8e-5, "max_lr_predicted_ci_high": 1.25e-4,
            "per_seed": [{"seed": 0, "max_lr_predicted": 1e-4, "criterion": "half-progress", "note": ""}],
            "sharpness": {"max_lr_predicted": 1e-4, "sharpness": 2e4, "precond_sharpness": 2e4,
                          "threshold_constant": 2.0}}


def test_default_grid_and_log_ranges():
    assert len(DEFAULT_LRS) == 7
    np.testing.assert_allclose(DEFAULT_LRS, [1e-5, 10**-4.5, 1e-4, 10**-3.5, 1e-3, 10**-2.5, 1e-2], rtol=1e-12)
    np.testing.assert_allclose(log_lr_grid(1e-4, 1e-2, 3), [1e-4, 1e-3, 1e-2], rtol=1e-12)
    assert log_steps(40) == [0, 1, 2, 4, 8, 16, 32, 40]
    assert log_steps(32) == [0, 1, 2, 4, 8, 16, 32]
    with pytest.raises(UserError):
        log_lr_grid(0, 1, 3)


def test_classify_uses_lower_confidence_bound():
    rows = [{"acc": a, "diverged": False} for a in (0.62, 0.58, 0.60)]
    assert classify(rows, level=0.5) == "trains"  # logit-scale t interval about 0.55 to 0.65
    # the bound is the logit interval's lower end expit(logit(0.6) - 0.0497 / 0.24) = 0.54945, below the plain
    # interval's 0.6 - 0.0497 = 0.55032: a level between them fails
    half = 4.302652729911275 * 0.02 / math.sqrt(3)
    low = 1 / (1 + math.exp(-(math.log(1.5) - half / 0.24)))
    assert low == pytest.approx(0.54945, abs=1e-5) and 0.6 - half == pytest.approx(0.55032, abs=1e-5)
    assert classify(rows, level=0.55) == "fails" and classify(rows, level=low - 1e-9) == "trains"
    spread = [{"acc": a, "diverged": False} for a in (0.9, 0.2, 0.7)]  # mean 0.6 but the interval reaches below 0.5
    assert classify(spread, level=0.5) == "fails"
    assert classify(rows + [{"acc": 0.9, "diverged": True}], level=0.5) == "diverged"
    assert classify([{"acc": 0.55, "diverged": False}], level=0.5) == "trains"  # one seed: the value itself


def test_summarize_point_intervals():
    rows = [{"seed": s, "loss": 1.0 + s, "acc": 0.5 + 0.1 * s, "val_loss": 2.0, "val_acc": 0.4, "train_eval_acc": 0.5,
             "diverged": False} for s in range(3)]
    p = summarize_point("c", 1e-3, rows)
    assert p["acc_mean"] == pytest.approx(0.6)
    half = 4.302652729911275 * 0.1 / math.sqrt(3)  # t_{0.975, 2} * s / sqrt(n) = 0.2484
    # on the logit scale: logit(0.6) -+ half / (0.6 * 0.4), mapped back by 1 / (1 + exp(-u))
    u, h = math.log(0.6 / 0.4), half / 0.24
    assert p["acc_ci_low"] == pytest.approx(1 / (1 + math.exp(-(u - h))), rel=1e-9)  # 0.3476 (plain: 0.3516)
    assert p["acc_ci_high"] == pytest.approx(1 / (1 + math.exp(-(u + h))), rel=1e-9)  # 0.8018 (plain: 0.8484)
    # a loss on the log scale: log(2) -+ half_loss / 2 (losses 1, 2, 3: s = 1)
    half_loss = 4.302652729911275 / math.sqrt(3)
    assert p["loss_ci_low"] == pytest.approx(2 * math.exp(-half_loss / 2), rel=1e-9)
    assert p["loss_ci_high"] == pytest.approx(2 * math.exp(half_loss / 2), rel=1e-9)
    assert p["n_seeds"] == 3 and p["n_diverged"] == 0


def test_point_intervals_stay_in_range():
    """The issue's case: five accuracies near chance gave [-0.099, 0.571] with the plain t interval."""
    accs = [0.0980, 0.1135, 0.0974, 0.1032, 0.9000]
    rows = [{"seed": s, "loss": l, "acc": a, "val_loss": l, "val_acc": a, "train_eval_acc": a, "diverged": False}
            for s, (a, l) in enumerate(zip(accs, [2.3, 2.31, 2.29, 0.05, 0.3]))]
    p = summarize_point("c", 1e-2, rows)
    plain_low = np.mean(accs) - 2.7764451051977987 * np.std(accs, ddof=1) / math.sqrt(5)
    assert plain_low < 0  # what points.csv said before
    for m in ("acc", "val_acc", "train_eval_acc"):
        assert 0 < p[f"{m}_ci_low"] < p[f"{m}_mean"] < p[f"{m}_ci_high"] < 1
    for m in ("loss", "val_loss"):
        assert 0 < p[f"{m}_ci_low"] < p[f"{m}_mean"] < p[f"{m}_ci_high"]


def test_max_lr_of_brackets():
    pts = [{"lr": lr, "outcome": o} for lr, o in [(1e-5, "fails"), (1e-4, "trains"), (1e-3, "trains"),
                                                   (1e-2, "diverged")]]
    assert max_lr_of(pts) == (1e-3, 1e-2)
    top, bad = max_lr_of(pts[:3])
    assert top == 1e-3 and math.isnan(bad)
    assert all(math.isnan(v) for v in max_lr_of([{"lr": 1.0, "outcome": "fails"}]))


def test_grid_and_refinement_on_fake_trainer(tmp_path):
    edges = {"a": (3e-4, 3e-3), "b": (2e-5, 1.0)}
    calls = []
    configs = [("a", _spec("a")), ("b", _spec("b"))]
    opts = TrainabilityOptions(seeds=(0, 1, 2), epochs=1, refine=6)
    res = trainability(configs, [1e-5, 1e-4, 1e-3, 1e-2], FakeDataset(), opts,
                       trainer=fake_trainer(edges, calls), predictor=fake_predictor, out_dir=tmp_path / "t")
    pts = res.points
    grid = pts[~pts["refined"]]
    out_a = dict(zip(grid[grid.config == "a"]["lr"], grid[grid.config == "a"]["outcome"]))
    assert out_a == {1e-5: "trains", 1e-4: "trains", 1e-3: "fails", 1e-2: "diverged"}
    # bisection in log space between 1e-4 (good) and 1e-3 (bad): 6 steps bracket log10 lr to 1/64 decade
    cfg = res.configs.set_index("config")
    lo, hi = cfg.loc["a", "max_lr_measured"], cfg.loc["a", "max_lr_bad"]
    assert lo <= 3e-4 < hi
    assert math.log10(hi / lo) == pytest.approx(1 / 64, rel=1e-9)
    assert cfg.loc["a", "n_refined"] == 6
    refined_lrs = [lr for c, lr in calls if c == "a"][4:]
    assert refined_lrs[0] == pytest.approx(math.sqrt(1e-4 * 1e-3))
    assert cfg.loc["a", "first_diverged_lr"] == 1e-2
    assert cfg.loc["a", "ratio"] == pytest.approx(lo / 1e-4)
    # b: trains only at the smallest lr; refinement between 1e-5 and 1e-4
    assert cfg.loc["b", "max_lr_measured"] <= 2e-5 < cfg.loc["b", "max_lr_bad"]
    assert math.isnan(cfg.loc["b", "first_diverged_lr"])
    # files
    for f in ("points.csv", "points.json", "configs.csv", "configs.json", "seeds.csv"):
        assert (tmp_path / "t" / f).is_file()
    table = pd.read_csv(tmp_path / "t" / "points.csv")
    for col in ("config", "lr", "acc_mean", "acc_ci_low", "acc_ci_high", "val_acc_mean", "loss_mean", "outcome"):
        assert col in table.columns
    assert len(pd.read_csv(tmp_path / "t" / "seeds.csv")) == 3 * len(table)
    from propagate import load

    loaded = load(tmp_path / "t")  # the folder's tables as DataFrames; a .json repeating a .csv is not read twice
    assert loaded.kind == "trainability" and {"points", "configs", "seeds"} <= set(loaded)
    pd.testing.assert_frame_equal(loaded["points"], table)
    assert loaded["configs"].set_index("config").loc["a", "max_lr_measured"] == pytest.approx(lo, rel=1e-9)
    assert loaded.meta["points"]["versions"]["torch"]
    # a rerun trains nothing: every point is read back from its file
    calls2 = []
    res2 = trainability(configs, [1e-5, 1e-4, 1e-3, 1e-2], FakeDataset(), opts,
                        trainer=fake_trainer(edges, calls2), predictor=fake_predictor, out_dir=tmp_path / "t")
    assert calls2 == []
    pd.testing.assert_frame_equal(res2.points, res.points)


def test_censored_and_never_training():
    edges = {"a": (1.0, 2.0), "b": (0.0, 2.0)}
    opts = TrainabilityOptions(seeds=(0, 1), refine=3, predict=False)
    res = trainability([("a", _spec("a")), ("b", _spec("b"))], [1e-4, 1e-3], FakeDataset(), opts,
                       trainer=fake_trainer(edges))
    cfg = res.configs.set_index("config")
    assert cfg.loc["a", "max_lr_measured"] == 1e-3 and bool(cfg.loc["a", "censored"])
    assert cfg.loc["a", "n_refined"] == 0  # nothing to bisect above the top of the grid
    assert math.isnan(cfg.loc["b", "max_lr_measured"]) and not bool(cfg.loc["b", "censored"])


def test_extend_climbs_above_a_grid_that_still_trains():
    # "a" trains up to 0.05 and "b" to 0.5, on a grid that stops at 1e-3: one decade per extension step
    edges = {"a": (0.05, 2.0), "b": (0.5, 2.0), "c": (1e-4, 2.0)}
    calls = []
    opts = TrainabilityOptions(seeds=(0, 1), extend=2, refine=0, predict=False)
    res = trainability([(n, _spec(n)) for n in edges], [1e-4, 1e-3], FakeDataset(), opts,
                       trainer=fake_trainer(edges, calls))
    cfg = res.configs.set_index("config")
    # a: 1e-2 trains, 1e-1 fails -> bracketed; b: 1e-2 and 1e-1 train, the two steps are spent -> still censored
    assert cfg.loc["a", "max_lr_measured"] == pytest.approx(1e-2) and cfg.loc["a", "max_lr_bad"] == pytest.approx(0.1)
    assert not bool(cfg.loc["a", "censored"])
    assert cfg.loc["b", "max_lr_measured"] == pytest.approx(0.1) and bool(cfg.loc["b", "censored"])
    # c fails at 1e-3 already: nothing above the grid is trained for it
    assert [lr for n, lr in calls if n == "c"] == [1e-4, 1e-3]
    assert sorted(lr for n, lr in calls if n == "a") == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1])
    # then refinement bisects the bracket that extension found
    res = trainability([("a", _spec("a"))], [1e-4, 1e-3], FakeDataset(),
                       TrainabilityOptions(seeds=(0, 1), extend=2, refine=1, predict=False),
                       trainer=fake_trainer(edges))
    cfg = res.configs.set_index("config")
    assert cfg.loc["a", "max_lr_measured"] == pytest.approx(10 ** -1.5) and cfg.loc["a", "n_refined"] == 1
    # no rate above EXTEND_CAP is tried
    from propagate.trainability import EXTEND_CAP

    calls.clear()
    trainability([("b", _spec("b"))], [1.0, EXTEND_CAP], FakeDataset(),
                 TrainabilityOptions(seeds=(0, 1), extend=3, predict=False),
                 trainer=fake_trainer({"b": (1e3, 1e4)}, calls))
    assert max(lr for _, lr in calls) == EXTEND_CAP
    with pytest.raises(UserError, match="extend must be a whole number"):
        TrainabilityOptions(extend=-1)


def test_refinement_stops_when_the_bracket_cannot_shrink():
    # a bracket 1e-5 wide (relative) halves in log lr per step: 5e-6, 2.5e-6, 1.25e-6, 6.25e-7 < REFINE_RTOL
    assert REFINE_RTOL == 1e-6
    calls = []
    res = trainability([("a", _spec("a"))], [1e-3, 1.00001e-3], FakeDataset(),
                       TrainabilityOptions(seeds=(0, 1), refine=20, predict=False),
                       trainer=fake_trainer({"a": (1.000003e-3, 1.0)}, calls))
    cfg = res.configs.set_index("config")
    assert cfg.loc["a", "n_refined"] == 4 and len(calls) == 2 + 4
    lo, hi = cfg.loc["a", "max_lr_measured"], cfg.loc["a", "max_lr_bad"]
    assert lo <= 1.000003e-3 < hi and hi / lo - 1 < REFINE_RTOL
    # neighbouring floats: no midpoint exists, nothing is trained beyond the grid
    calls.clear()
    top = float(np.nextafter(1e-3, 1))
    res = trainability([("a", _spec("a"))], [1e-3, top], FakeDataset(),
                       TrainabilityOptions(seeds=(0, 1), refine=20, predict=False),
                       trainer=fake_trainer({"a": (1e-3, 1.0)}, calls))
    assert res.configs["n_refined"].iloc[0] == 0 and len(calls) == 2


def test_learning_rates_six_digits_cannot_tell_apart_are_two_points(tmp_path):
    """The issue's case: 1e-3 and 1.0000001e-3 shared one point (the key had 6 digits)."""
    lrs = [1e-3, 1.0000001e-3]
    res = trainability([("a", _spec("a"))], lrs, FakeDataset(), TrainabilityOptions(seeds=(0, 1), predict=False),
                       trainer=fake_trainer({"a": (1.00000005e-3, 1.0)}), out_dir=tmp_path / "t")
    pts = res.points.set_index("lr")
    assert list(pts.index) == lrs and list(pts["outcome"]) == ["trains", "fails"]
    assert pts.loc[1e-3, "acc_mean"] == pytest.approx(0.895) and pts.loc[lrs[1], "acc_mean"] == pytest.approx(0.095)
    # a folder written before the runner named its point files with 6 digits: only the exact lr takes one over
    opts = TrainabilityOptions(seeds=(0, 1), predict=False)
    trainability([("a", _spec("a"))], [1e-4], FakeDataset(), opts, trainer=fake_trainer({"a": (1.0, 1.0)}),
                 out_dir=tmp_path / "old")
    rows = [{"seed": s, "loss": 0.5, "acc": 0.5, "val_loss": 0.5, "val_acc": 0.5, "train_eval_acc": 0.5,
             "diverged": False, "epochs_done": 1} for s in (0, 1)]
    (tmp_path / "old" / "points" / "a_lr0.001.json").write_text(
        json.dumps({"config": "a", "lr": 1e-3, "spec": _spec("a").to_dict(), "seeds": rows}))
    calls = []
    near = trainability([("a", _spec("a"))], [1.0000001e-3], FakeDataset(), opts,
                        trainer=fake_trainer({"a": (1.0, 1.0)}, calls), out_dir=tmp_path / "old")
    assert calls == [("a", 1.0000001e-3)] and near.points["acc_mean"].iloc[0] == pytest.approx(0.895)  # trained
    exact = trainability([("a", _spec("a"))], [1e-3], FakeDataset(), opts,
                         trainer=fake_trainer({"a": (1.0, 1.0)}, calls), out_dir=tmp_path / "old")
    assert len(calls) == 1 and exact.points["acc_mean"].iloc[0] == pytest.approx(0.5)  # the legacy file's


def test_cli_refuses_a_folder_of_other_settings_before_the_banner(tmp_path, capsys):
    from propagate.cli import main
    from propagate.runfolder import claim_folder

    claim_folder(tmp_path / "t", "trainability", {"kind": "trainability", "options": {"epochs": 99},
                                                  "dataset": None}).release()
    before = {p.name: p.read_bytes() for p in (tmp_path / "t").iterdir()}
    rc = main(["trainability", "--presets", "relu", "--dataset", "mnist-5k", "--lr", "1e-3", "--seeds", "1",
               "--epochs", "1", "--out", str(tmp_path / "t")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "holds a run with" in err and "configuration(s)" not in err
    assert {p.name: p.read_bytes() for p in (tmp_path / "t").iterdir()} == before


def test_options_reject_bad_values():
    with pytest.raises(UserError):
        TrainabilityOptions(seeds=())
    with pytest.raises(UserError):
        TrainabilityOptions(level=1.5)
    with pytest.raises(UserError):
        TrainabilityOptions(criterion="loss")
    with pytest.raises(UserError):
        trainability([("a", _spec("a"))], [-1e-3], FakeDataset(), trainer=fake_trainer({"a": (1, 2)}))


def test_first_epoch_dynamics_tiny_network():
    from propagate.data import load_dataset
    from propagate.train import TrainOptions

    ds = load_dataset("mnist-5k")
    spec = NetworkSpec.stack(3, 16, input_dim=784, first_width=16, activation="selu", init="lecun_normal",
                             out_features=10)
    d = first_epoch_dynamics(spec, TrainOptions(lr=1e-3, threads=1), ds, probe_size=64, max_steps=9)
    assert sorted(d["step"].unique()) == [0, 1, 2, 4, 8, 9]
    assert sorted(d["layer"].unique()) == [1, 2, 3]
    d0 = d[d.step == 0]
    assert d0["update_ratio"].isna().all()
    # RMSprop's first update: each weight moves by lr / sqrt(1 - rho) (v = (1 - rho) g^2), so
    # ||dW|| = lr sqrt(#weights with g != 0) / sqrt(0.1); the first layer's weights on always-zero pixels don't move
    d1 = d[(d.step == 1) & (d.layer == 2)].iloc[0]
    w0 = d[(d.step == 0) & (d.layer == 2)].iloc[0]["weight_norm"]
    expect = 1e-3 / math.sqrt(0.1) * math.sqrt(16 * 16) / w0
    assert d1["update_ratio"] == pytest.approx(expect, rel=1e-3)
    assert np.isfinite(d["pre_var"]).all() and (d["pre_var"] > 0).all()
    assert np.isfinite(d["grad_norm"]).all() and (d["grad_norm"] > 0).all()
    assert np.isfinite(d[d.step > 0]["weight_grad_norm"]).all()
    assert not d["diverged"].any()


@pytest.mark.parametrize("optimizer", ["rmsprop", "adam", "sgd"])
def test_first_epoch_dynamics_trains_with_trains_optimizer(optimizer):
    """K steps of first_epoch_dynamics leave the parameters of train()'s K steps, bit for bit.

    Every training image is the same image, so the two loops' different shuffles give the same minibatches and
    the same gradients; what is left to differ is the optimizer (torch's RMSprop instead of train's fused one
    moved weights by a float32 rounding).
    """
    import torch

    from propagate.data import Dataset, load_dataset
    from propagate.train import TrainOptions, train

    xs, ys = load_dataset("mnist-5k").arrays("train")
    same = Dataset("same", np.repeat(xs[:1].reshape(1, 28, 28), 8, 0), np.repeat(ys[:1], 8), xs[:4].reshape(-1, 28, 28),
                   ys[:4], "test")
    spec = NetworkSpec.stack(2, 16, input_dim=784, first_width=16, activation="selu", init="lecun_normal",
                             out_features=10)
    opts = TrainOptions(optimizer=optimizer, lr=1e-2, momentum=0.9, batch_size=2, epochs=1, threads=1, seed=3,
                        probe_size=4, train_eval_size=4)
    mine, theirs = {}, {}
    first_epoch_dynamics(spec, opts, same, probe_size=4,
                         on_step=lambda i: mine.update({i["step"]: [p.detach().clone() for p in i["model"].parameters()]}))
    train(spec, opts, same, seeds=[3],
          on_step=lambda i: theirs.update({i["batch"] + 1: [p.detach().clone() for p in i["model"].parameters()]}))
    assert sorted(mine) == sorted(theirs) == [1, 2, 3, 4]
    for a, b in zip(mine[4], theirs[4]):
        assert torch.equal(a, b)
    assert not all(torch.equal(a, b) for a, b in zip(mine[1], mine[4]))  # the steps moved the weights


def test_first_epoch_probe_is_trainings_probe():
    """The rows are propagate.train.probe_layer_stats' (measure()), in training's first probe mode."""
    import torch

    from propagate.data import load_dataset
    from propagate.spec import build_model
    from propagate.train import TrainOptions, probe_layer_stats, probe_modes

    ds = load_dataset("mnist-5k")
    for kw, mode in (({"batchnorm": True}, "train"), ({"layernorm": True, "dropout": 0.3}, "eval"), ({}, "eval")):
        spec = NetworkSpec.stack(2, 16, input_dim=784, first_width=16, activation="selu", init="lecun_normal",
                                 out_features=10, **kw)
        assert probe_modes(spec)[0] == mode
        d = first_epoch_dynamics(spec, TrainOptions(lr=1e-3, threads=1, seed=2), ds, probe_size=32, max_steps=0)
        xs, ys = ds.arrays("train")
        ref = probe_layer_stats(build_model(spec, seed=2), torch.from_numpy(xs[:32]), torch.from_numpy(ys[:32]), mode)
        for r in ref[1:]:
            row = d[(d.step == 0) & (d.layer == r["layer"])].iloc[0]
            for col in ("pre_var", "pre_mean", "grad_norm"):
                assert row[col] == r[col], (kw, col)


def test_train_ensemble_gives_one_row_per_seed():
    from propagate.data import load_dataset
    from propagate.train import TrainOptions
    from propagate.trainability import train_ensemble

    ds = load_dataset("mnist-5k")
    spec = NetworkSpec.stack(2, 8, input_dim=784, first_width=8, activation="selu", init="lecun_normal",
                             out_features=10)
    rows = train_ensemble(spec, TrainOptions(lr=1e-3, epochs=1, threads=1, train_eval_size=500), [3, 5], ds)
    assert [r["seed"] for r in rows] == [3, 5]
    for r in rows:
        assert r["epochs_done"] == 1 and not r["diverged"]
        assert 0 <= r["acc"] <= 1 and np.isfinite(r["loss"])
    assert rows[0]["loss"] != rows[1]["loss"]  # different seeds, different networks
    # a huge step diverges (inf/NaN loss) and says so
    big = train_ensemble(spec, TrainOptions(optimizer="sgd", lr=1e6, epochs=1, threads=1, train_eval_size=100), [0], ds)
    assert big[0]["diverged"]


def test_cli_tiny_custom_network(tmp_path):
    from propagate.cli import main

    out = tmp_path / "t"
    rc = main(["trainability", "--depth", "2", "--width", "8", "--activation", "selu", "--init", "lecun_normal",
               "--lr", "1e-3:1e-1:3", "--seeds", "2", "--epochs", "1", "--dataset", "mnist-5k",
               "--sharpness-batch", "64", "--threads", "1", "--out", str(out), "--no-progress"])
    assert rc == 0
    pts = pd.read_csv(out / "points.csv")
    np.testing.assert_allclose(sorted(pts["lr"]), [1e-3, 1e-2, 1e-1], rtol=1e-9)
    assert set(pts["outcome"]) <= {"trains", "fails", "diverged"}
    cfg = pd.read_csv(out / "configs.csv")
    assert len(cfg) == 1 and cfg["max_lr_predicted"].iloc[0] > 0 and np.isfinite(cfg["max_lr_predicted"].iloc[0])


@pytest.mark.parametrize("argv, msg", [
    (["--presets", "relu", "--lr", "0,1e-3"], "argument --lr: values must be > 0"),
    (["--presets", "relu", "--lr", "1e-3:1e-1:0"], "argument --lr: must be >= 1, got 0"),
    (["--presets", "relu", "--lr", "1e-3,2e-3,0.001"], "lists the learning rate 0.001 twice"),
    (["--presets", "relu", "--lr", "1e-3:1e-1:1000000"], "1000000 points is more than the limit"),
    (["--presets", "relu", "--refine", "21"], "the limit is 20 steps"),
    (["--presets", "relu", "--seed", str(2**63 - 2), "--seeds", "3"], "beyond the largest seed"),
    (["--presets", "nope"], "unknown preset"),
    ([], "give --presets or a custom network"),
    (["--presets", "relu", "--level", "1.5"], "--level"),
])
def test_cli_user_errors(argv, msg, tmp_path, capsys):
    from propagate.cli import main

    try:
        rc = main(["trainability", *argv, "--out", str(tmp_path / "o"), "--no-progress"])
    except SystemExit as exc:  # argparse's errors (parse time)
        rc = exc.code
    err = capsys.readouterr().err
    assert rc == 2
    assert msg in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_report_figures_from_constructed_tables():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from propagate.report.section_trainability import dynamics_scale, figure_dynamics_map, figure_trainability_map

    rows = []
    for cfg, outs in (("a", ["trains", "trains", "diverged"]), ("b", ["fails", "trains", "fails"])):
        for lr, o in zip((1e-4, 1e-3, 1e-2), outs):
            acc = 0.9 if o == "trains" else 0.1
            rows.append({"config": cfg, "lr": lr, "refined": False, "outcome": o, "acc_mean": acc,
                         "acc_ci_low": acc - 0.05, "acc_ci_high": acc + 0.05})
    rows.append({"config": "a", "lr": 3e-3, "refined": True, "outcome": "trains", "acc_mean": 0.8,
                 "acc_ci_low": 0.7, "acc_ci_high": 0.9})
    points = pd.DataFrame(rows)
    configs = pd.DataFrame([{"config": "a", "max_lr_measured": 3e-3, "censored": False, "max_lr_predicted": 1e-7},
                            {"config": "b", "max_lr_measured": 1e-3, "censored": False, "max_lr_predicted": 2e-4}])
    ax = figure_trainability_map(points, configs)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1e-4", "1e-3", "1e-2"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b"]
    hatched = [p for p in ax.patches if p.get_hatch()]
    assert len(hatched) == 1  # one diverged cell; the refined point is not a cell
    texts = [t.get_text() for t in ax.texts]
    assert texts.count("div") == 1 and "pred. 1e-07" in texts  # predicted below the grid: an arrow with its value
    markers = {ln.get_marker(): ln.get_xdata()[0] for ln in ax.lines if ln.get_marker() in ("v", "D")}
    assert markers["D"] == pytest.approx(math.log10(2e-4) + 4)  # columns 0, 1, 2 at 1e-4, 1e-3, 1e-2: log position
    plt.close("all")

    # two seeds: the map shows the mean over seeds of log10 variance; a non-finite value blanks its cell
    dyn = pd.DataFrame([{"lr": lr, "seed": k, "step": s, "layer": l,
                         "pre_var": (10.0 ** (s * l + k) if lr > 1e-3 else 1.0), "diverged": False}
                        for lr in (1e-4, 1e-2) for k in (0, 1) for s in (0, 1, 2) for l in (1, 2, 3)])
    dyn.loc[(dyn.lr == 1e-2) & (dyn.step == 2) & (dyn.layer == 3), "pre_var"] = np.inf
    # the largest |mean log10 variance| over the finite cells is (4 + 5) / 2 = 4.5 decades: capped at 3
    assert dynamics_scale(dyn) == 3.0
    assert dynamics_scale(dyn[(dyn.step < 2) & (dyn.layer < 3)]) == pytest.approx(2.5)  # (2 + 3) / 2: step 1, layer 2
    _, ax = plt.subplots()
    mesh = figure_dynamics_map(ax, dyn[dyn.lr == 1e-2], dynamics_scale(dyn), "x")
    arr = mesh.get_array()
    assert np.ma.count_masked(arr) == 1  # the infinite variance is a blank cell
    assert float(arr.max()) == pytest.approx(4.5)  # mean over seeds of log10 10^(2*2 + k), k = 0, 1
    plt.close("all")


def test_report_section_end_to_end_on_tiny_networks(tmp_path):
    from propagate.data import load_dataset
    from propagate.report.section_trainability import section

    spec = NetworkSpec.stack(2, 8, input_dim=784, first_width=8, activation="selu", init="lecun_normal",
                             out_features=10)
    relu = spec.with_(activation="relu", init="he_normal")
    settings = dict(presets=("snn", "relu"), specs={"snn": spec, "relu": relu}, lrs=(1e-3, 1e12), seeds=(0, 1),
                    epochs=1, n_train=256, n_test=128, level=0.3, dyn_presets=("snn",), dyn_lrs=(1e-3, 1e12),
                    dyn_steps=2, sharpness_batch=32, lanczos_iters=5)
    md = section(tmp_path, {"quick": True, "seed": 0, "dataset_obj": load_dataset("mnist-5k"),
                            "trainability_settings": settings})
    assert "figures/trainability_map.png" in md and "figures/trainability_dynamics_snn.png" in md
    for f in ("figures/trainability_map.png", "figures/trainability_map.svg", "data/trainability_points.csv",
              "data/trainability_configs.csv", "data/trainability_dynamics.csv"):
        assert (tmp_path / f).is_file(), f
    pts = pd.read_csv(tmp_path / "data" / "trainability_points.csv")
    assert len(pts) == 4 and set(pts["outcome"]) <= {"trains", "fails", "diverged"}
    assert (pts[pts.lr == 1e12]["outcome"] == "diverged").all()  # steps of ~lr per weight overflow float32
    assert "**snn**" in md and "**relu**" in md


def test_grid_on_a_local_dask_cluster_equals_in_process(tmp_path):
    """The grid (with a refinement round and the predictions) on 2 Dask workers gives the in-process tables
    bit for bit: each point is trained with its own seeds, so where and in which order it ran does not matter."""
    from dataclasses import replace

    from propagate.data import load_dataset

    full = load_dataset("mnist-5k")
    ds = replace(full, x_train=full.x_train[:1024], y_train=full.y_train[:1024], x_test=full.x_test[:128],
                 y_test=full.y_test[:128])
    configs = [(n, NetworkSpec.stack(2, 8, input_dim=784, first_width=8, activation=a, init="lecun_normal",
                                     out_features=10, name=n)) for n, a in (("selu8", "selu"), ("tanh8", "tanh"))]
    opts = TrainabilityOptions(seeds=(0, 1, 2), epochs=2, level=0.15, criterion="train_eval_acc", refine=1,
                               sharpness_batch=64, lanczos_iters=5, warmup_steps=2, probe_size=32, threads=1)
    lrs = [1e-3, 1e-1]
    here = trainability(configs, lrs, ds, opts, out_dir=tmp_path / "here")
    messages = []
    there = trainability(configs, lrs, ds, opts, out_dir=tmp_path / "dask", workers=2, progress=messages.append)
    assert there.meta["engine"] == "dask" and here.meta["engine"] == "in process"
    pd.testing.assert_frame_equal(there.points, here.points)
    pd.testing.assert_frame_equal(there.configs, here.configs)
    # both train at 1e-3 and not at 1e-1 (train_eval_acc 0.43 vs 0.21 and 0.42 +- 0.18), so the refinement
    # round ran one bisection point per configuration, on the cluster
    assert there.points["refined"].sum() == len(configs) and len(there.points) == len(configs) * (len(lrs) + 1)
    assert any("predicted largest lr" in m for m in messages)
    # every point was saved by the calling process, so a rerun (here: in process) trains nothing
    again = trainability(configs, lrs, ds, opts, out_dir=tmp_path / "dask",
                         trainer=lambda *a: pytest.fail("a saved point was trained again"))
    pd.testing.assert_frame_equal(again.points, here.points)


def test_cli_workers_and_scheduler_exclude_each_other(tmp_path, capsys):
    from propagate.cli import main

    rc = main(["trainability", "--presets", "relu", "--workers", "2", "--scheduler", "tcp://127.0.0.1:1",
               "--out", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "--workers applies to the local cluster" in err and len(err.strip().splitlines()) == 1


def test_report_section_states_the_subset_a_finished_grid_trained_on(tmp_path):
    """A full report trains its map on a subset of a large training split (--trainability-subset): the section
    says so, with both sizes, instead of presenting the map as trained on every image."""
    from dataclasses import replace

    from propagate.report.section_trainability import section

    full = FakeDataset()
    sub = replace(full, x_train=full.x_train[:6], y_train=full.y_train[:6])
    edges = {"a": (3e-4, 3e-3)}
    trainability([("a", _spec("a"))], [1e-4, 1e-3], sub, TrainabilityOptions(seeds=(0, 1, 2), epochs=1),
                 trainer=fake_trainer(edges), predictor=fake_predictor, out_dir=tmp_path / "grid")
    snn = NetworkSpec.stack(2, 8, input_dim=784, first_width=8, activation="selu", init="lecun_normal",
                            out_features=10)
    settings = dict(specs={"snn": snn}, dyn_presets=("snn",), dyn_lrs=(1e-3,), dyn_steps=1, n_train=10, n_test=10)
    md = section(tmp_path / "page", {"quick": False, "seed": 0, "dataset_obj": full,
                                     "trainability_dir": tmp_path / "grid", "trainability_settings": settings})
    assert "the first 6 of the 10 training images of fake (a stated subset" in md
    table = pd.read_csv(tmp_path / "page" / "data" / "trainability_points.csv")
    assert list(table["outcome"]) == ["trains", "fails"]


def test_folder_of_a_grid_before_the_runner_resumes(tmp_path):
    """A folder written before propagate.runner names its point files by configuration and lr: they are taken
    over when the network they record is the one asked for, and trained again when it is not."""
    import json

    from propagate.data import dataset_identity
    from propagate.runfolder import claim

    ds, opts = FakeDataset(), TrainabilityOptions(seeds=(0, 1), epochs=1)
    # the options an old folder recorded: not the settings that change no point, nor those added since
    old = {k: v for k, v in opts.to_dict().items() if k not in ("refine", "extend", "device", "threads", "predict",
                                                                 "sharpness_batch", "warmup_steps", "lanczos_iters",
                                                                 "rho", "warmup", "sharpness",
                                                                 "lookahead_per_decade")}
    with claim(tmp_path, {"kind": "trainability", "options": old, "dataset": dataset_identity(ds)}):
        pass
    edges = {"a": (3e-4, 3e-3), "b": (3e-4, 3e-3)}
    other = _spec("b").with_(activation="tanh")  # not the network config "b" is now
    points = tmp_path / "points"
    points.mkdir()
    for name, spec in (("a", _spec("a")), ("b", other)):
        for lr in (1e-4, 1e-3):
            rows = fake_trainer(edges)(_spec(name), opts.train_options(lr), opts.seeds, ds)
            (points / f"{name}_lr{lr:.6g}.json").write_text(json.dumps({"config": name, "lr": lr, "spec": spec.to_dict(),
                                                                       "seeds": rows}))
        settings = {"batch": opts.sharpness_batch, "warmup_steps": opts.warmup_steps, "iters": opts.lanczos_iters}
        (points / f"{name}_sharpness.json").write_text(json.dumps({"config": name, "settings": settings,
                                                                  "prediction": fake_predictor(spec, opts, ds)}))
    calls = []
    res = trainability([("a", _spec("a")), ("b", _spec("b"))], [1e-4, 1e-3], ds, opts, out_dir=tmp_path,
                       trainer=fake_trainer(edges, calls), predictor=fake_predictor)
    assert sorted(calls) == [("b", 1e-4), ("b", 1e-3)]
    assert list(res.points["outcome"]) == ["trains", "fails", "trains", "fails"]
    assert list(res.configs["max_lr_predicted"]) == [1e-4, 1e-4]


def test_each_point_is_reported_as_it_finishes():
    """Progress comes after every point, not after its round: message k while k points have been trained."""
    calls, seen = [], []
    trainability([("a", _spec("a"))], [1e-5, 1e-4, 1e-3], FakeDataset(), TrainabilityOptions(seeds=(0, 1), predict=False),
                 trainer=fake_trainer({"a": (3e-4, 3e-3)}, calls), progress=lambda m: seen.append((len(calls), m)))
    assert [n for n, _ in seen] == [1, 2, 3]
    assert seen[0][1].startswith("a lr 1e-05: trains") and seen[2][1].startswith("a lr 0.001: fails")


def test_every_table_describes_the_last_run_empty_ones_with_a_header(tmp_path):
    """A prediction-only run into a folder that a training run wrote: points.csv and seeds.csv are rewritten
    without rows (with their columns, so they read back as tables), not left from the training run beside this
    run's configs; a run without predictions leaves no earlier run's predictions either. The points stay."""
    from dataclasses import replace

    from propagate.results import load
    from propagate.trainability import POINT_COLUMNS, SEED_COLUMNS

    out = tmp_path / "t"
    configs = [("a", _spec("a"))]
    opts = TrainabilityOptions(seeds=(0, 1), epochs=1)
    trainability(configs, [1e-4, 1e-3], FakeDataset(), opts, trainer=fake_trainer({"a": (3e-4, 1.0)}),
                 predictor=fake_predictor, out_dir=out)
    assert len(load(out / "seeds.csv").table) == 4 and len(load(out / "predictions.csv").table) == 1
    n_points = len(list((out / "points").glob("*.json")))
    wide = [("a", NetworkSpec.stack(2, 8, input_dim=4, first_width=8, out_features=3, name="a"))]
    trainability(wide, [1e-4, 1e-3], FakeDataset(), opts, trainer=fake_trainer({"a": (3e-4, 1.0)}),
                 predictor=fake_predictor, out_dir=out, predict_only=True)
    for name, cols in (("points.csv", POINT_COLUMNS), ("seeds.csv", SEED_COLUMNS)):
        t = load(out / name).table
        assert len(t) == 0 and list(t.columns) == list(cols), name
    assert load(out / "points.json").table.empty
    assert load(out / "configs.json").table["config"].tolist() == ["a"]
    assert len(list((out / "points").glob("*.json"))) >= n_points  # nothing trained is lost
    trainability(configs, [1e-4, 1e-3], FakeDataset(), replace(opts, predict=False),
                 trainer=fake_trainer({"a": (3e-4, 1.0)}), out_dir=out)
    assert len(load(out / "seeds.csv").table) == 4 and load(out / "predictions.csv").table.empty
