"""Training lens: presets vs the seed's specification, learning, determinism, resume, layer stats, CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn

from propagate.cli import main
from propagate.data import Dataset, load_dataset
from propagate.errors import UserError
from propagate.presets import PRESETS, get_preset, list_presets
from propagate.spec import NetworkSpec, build_model
from propagate.stats import COLUMNS
from propagate.train import TrainOptions, _make_optimizer, probe_layer_stats, reproduce, train

# The seed's five runs as ``shared/reference/seed-experiments.md`` states them (titles' intent),
# plus the two recipes it left out: (activation, kernel init, BN).
EXPECTED = {
    "relu": ("relu", "glorot_uniform", False),
    "relu-bn": ("relu", "glorot_uniform", True),
    "selu": ("selu", "glorot_uniform", False),
    "selu-bn-random-uniform": ("selu", "random_uniform", True),
    "selu-bn-lecun-uniform": ("selu", "lecun_uniform", True),
    "selu-lecun-normal": ("selu", "lecun_normal", False),
    "relu-he-normal": ("relu", "he_normal", False),
}


def _weight_var(init: str, fan_in: int, fan_out: int) -> float:
    """Var(w) of each Keras initializer, written out independently of propagate.inits."""
    return {
        "glorot_uniform": 2.0 / (fan_in + fan_out),
        "lecun_uniform": 1.0 / fan_in,
        "lecun_normal": 1.0 / fan_in,
        "he_normal": 2.0 / fan_in,
        "random_uniform": 0.1**2 / 12.0,  # U(-0.05, 0.05)
    }[init]


@pytest.fixture(scope="module")
def mnist5k():
    return load_dataset("mnist-5k")


def _subset(ds, n_train, n_test):
    return Dataset(f"{ds.name}[:{n_train}]", ds.x_train[:n_train], ds.y_train[:n_train],
                   ds.x_test[:n_test], ds.y_test[:n_test], ds.source)


def _small_spec(**kw):
    kw.setdefault("activation", "relu")
    kw.setdefault("init", "he_normal")
    return NetworkSpec.stack(4, 64, first_width=64, out_features=10, **kw)


def _numbers(result):
    return result.history.drop(columns=["seconds"]), result.layers


# ----------------------------------------------------------------- presets


def test_preset_names_and_reported_numbers():
    assert list_presets() == list(EXPECTED)
    assert get_preset("SELU_BN_lecun_uniform").name == "selu-bn-lecun-uniform"
    with pytest.raises(UserError, match="unknown preset"):
        get_preset("nosuch")
    runs = {p.seed_run: p for p in PRESETS.values() if p.seed_run}
    assert sorted(runs) == [1, 2, 3, 4, 5]
    assert runs[5].reported["acc"] == [0.2284, 0.4039, 0.4738]
    assert runs[5].reported["val_acc"] == [0.0996, 0.1039, 0.1164]
    assert (runs[2].reported["loss"], runs[2].reported["val_loss"]) == (2.1711, 2.4536)
    assert runs[4].reported["acc"][2] == 0.2342 and runs[1].reported["val_acc"] == [0.1135] * 3
    assert PRESETS["selu-lecun-normal"].reported is None


@pytest.mark.parametrize("name", list(EXPECTED))
def test_preset_model_matches_seed(name):
    activation, init, bn = EXPECTED[name]
    preset = get_preset(name)
    spec = preset.spec()
    assert (spec.activation, spec.init, spec.batchnorm) == (activation, init, bn)
    model = build_model(spec, seed=0)

    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 52
    shapes = [(lin.in_features, lin.out_features) for lin in linears]
    assert shapes == [(784, 512), (512, 256)] + [(256, 256)] * 49 + [(256, 10)]
    for lin in linears:
        assert torch.count_nonzero(lin.bias) == 0  # Keras: zero biases

    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d)]
    if bn:
        # before each of the 50 Dense(256) and before the readout; none before the first layer
        assert len(bns) == 51
        assert isinstance(model.norms[0], nn.Identity)
        assert [model.norms[i].num_features for i in range(1, 51)] == [512] + [256] * 49
        assert isinstance(model.readout_norm, nn.BatchNorm1d) and model.readout_norm.num_features == 256
        for m in bns:
            assert m.momentum == pytest.approx(0.01) and m.eps == pytest.approx(1e-3)
    else:
        assert bns == []

    # initial weights: Var(w) = the initializer's variance, within 5 standard errors
    # (the sample variance of n i.i.d. weights has relative s.e. <= sqrt(2/n) for these laws)
    for lin in linears:
        w = lin.weight.detach().double()
        fan_out, fan_in = w.shape
        expected = _weight_var(init, fan_in, fan_out)
        assert float(w.var()) == pytest.approx(expected, rel=5 * math.sqrt(2.0 / w.numel()))
        assert abs(float(w.mean())) < 5 * math.sqrt(expected / w.numel())
    if init == "random_uniform":
        assert float(linears[3].weight.detach().abs().max()) <= 0.05

    options = preset.options()
    assert (options.optimizer, options.lr, options.batch_size, options.epochs) == ("rmsprop", 1e-3, 128, 3)
    opt = _make_optimizer(model.parameters(), options)
    assert isinstance(opt, torch.optim.RMSprop)
    group = opt.param_groups[0]
    assert (group["lr"], group["alpha"], group["eps"], group["momentum"]) == (1e-3, 0.9, 1e-7, 0)


# ----------------------------------------------------------------- training


def test_short_run_learns_and_is_deterministic(mnist5k):
    ds = _subset(mnist5k, 640, 200)
    spec = _small_spec()
    opts = TrainOptions(epochs=3, probe_size=64, seed=3, threads=1)
    rows = []
    a = train(spec, opts, ds, callback=rows.append)
    b = train(spec, opts, ds)
    assert a.status == "finished" and not a.diverged
    assert list(a.history["epoch"]) == [1, 2, 3]
    assert [r["epoch"] for r in rows] == [1, 2, 3] and rows[-1]["epochs"] == 3
    last = a.history.iloc[-1]
    assert last["acc"] > 0.5 and last["val_acc"] > 0.5 and last["train_eval_acc"] > 0.5
    assert a.history["loss"].iloc[-1] < a.history["loss"].iloc[0]
    ha, la = _numbers(a)
    hb, lb = _numbers(b)
    pd.testing.assert_frame_equal(ha, hb)
    pd.testing.assert_frame_equal(la, lb)
    # another seed gives other numbers
    c = train(spec, opts.with_(seed=4, epochs=1), ds)
    assert c.history["loss"].iloc[0] != a.history["loss"].iloc[0]


def test_resume_equals_uninterrupted(mnist5k, tmp_path):
    ds = _subset(mnist5k, 384, 100)
    # BN (running statistics, train/eval probes) and dropout (random state) both must survive a resume
    spec = NetworkSpec.stack(3, 32, first_width=32, activation="selu", init="lecun_normal", batchnorm=True,
                             dropout=0.1, out_features=10)
    opts = TrainOptions(epochs=2, probe_size=32, batch_size=64, threads=1)
    straight = train(spec, opts, ds, run_dir=tmp_path / "straight")
    first = train(spec, opts.with_(epochs=1), ds, run_dir=tmp_path / "resumed")
    assert first.status == "finished" and len(first.history) == 1
    assert (tmp_path / "resumed" / "checkpoint.pt").is_file()
    resumed = train(spec, opts, ds, run_dir=tmp_path / "resumed")
    assert resumed.status == "finished"
    hs, ls = _numbers(straight)
    hr, lr = _numbers(resumed)
    pd.testing.assert_frame_equal(hs, hr)
    pd.testing.assert_frame_equal(ls, lr)
    for (k, v), (_, w) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(v, w), k

    # a run interrupted during epoch 2 (here: right after epoch 1 was saved) resumes to the same numbers
    def interrupt(row):
        if row["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(spec, opts, ds, run_dir=tmp_path / "interrupted", callback=interrupt)
    assert len(pd.read_csv(tmp_path / "interrupted" / "history.csv")) == 1
    hi, li = _numbers(train(spec, opts, ds, run_dir=tmp_path / "interrupted"))
    pd.testing.assert_frame_equal(hs, hi)
    pd.testing.assert_frame_equal(ls, li)

    # files on disk hold the same numbers; a finished run is not trained again
    disk = pd.read_csv(tmp_path / "resumed" / "history.csv")
    np.testing.assert_allclose(disk["val_acc"], hs["val_acc"])
    again = train(spec, opts, ds, run_dir=tmp_path / "resumed")
    assert list(again.history["seconds"]) == list(resumed.history["seconds"])
    meta = json.loads((tmp_path / "resumed" / "spec.json").read_text())
    assert meta["status"] == "finished" and meta["epochs_done"] == 2

    with pytest.raises(UserError, match="different settings"):
        train(spec, opts.with_(lr=1e-2), ds, run_dir=tmp_path / "resumed")


def test_divergence_is_a_result(mnist5k):
    ds = _subset(mnist5k, 512, 50)
    res = train(_small_spec(activation="relu", init="normal:50"), TrainOptions(epochs=3, lr=1e6, probe_size=16, threads=1), ds)
    assert res.status == "diverged" and res.diverged
    assert bool(res.history["diverged"].iloc[-1]) and not res.history["diverged"].iloc[:-1].any()
    assert not math.isfinite(res.history["loss"].iloc[-1])
    # the probe after the diverged epoch shows the blow-up: exploding variances, no finite loss gradient
    last = res.layers[(res.layers["epoch"] == res.history["epoch"].iloc[-1]) & (res.layers["layer"] == 4)].iloc[0]
    assert not (last["pre_var"] < 1e20) and not np.isfinite(last["grad_norm"])


# ----------------------------------------------------------------- layer stats


def test_layer_table_format_and_values(mnist5k):
    ds = _subset(mnist5k, 256, 50)
    for bn in (False, True):
        spec = _small_spec(batchnorm=bn)
        res = train(spec, TrainOptions(epochs=1, probe_size=128, threads=1), ds)
        t = res.layers
        assert list(t.columns[: len(COLUMNS)]) == COLUMNS
        assert {"epoch", "mode", "diverged", "pre_var_se", "corr_se"} <= set(t.columns)
        assert (t["source"] == "training").all()
        assert set(t["epoch"]) == {0, 1}
        assert set(t["mode"]) == ({"train", "eval"} if bn else {"eval"})
        for (_, _), g in t.groupby(["epoch", "mode"]):
            assert list(g["layer"]) == [0, 1, 2, 3, 4]
        hidden = t[t["layer"] > 0]
        np.testing.assert_allclose(hidden["pre_q"], hidden["pre_var"] + hidden["pre_mean"] ** 2, rtol=1e-9)
        assert (hidden["grad_norm"] > 0).all() and np.isfinite(hidden["grad_norm"]).all()
        assert hidden["dead_frac"].between(0, 1).all() and hidden["corr"].between(-1, 1).all()
        # ReLU: saturated = exact zeros, about half the outputs at initialization
        assert hidden["saturated_frac"].between(0.2, 0.8).all()
        # the input row: statistics of the first 128 training images, in the post_* columns
        x0 = ds.arrays("train")[0][:128].astype(np.float64)
        row0 = t[(t["layer"] == 0) & (t["epoch"] == 0)].iloc[0]
        assert row0["post_mean"] == pytest.approx(x0.mean(), rel=1e-9)
        assert row0["post_var"] == pytest.approx(x0.var(), rel=1e-9)
        assert row0["width"] == 784


def test_probe_stats_change_nothing_and_match_direct_computation():
    torch.manual_seed(0)
    spec = NetworkSpec.stack(3, 16, first_width=16, input_dim=8, activation="tanh", init="lecun_normal",
                             batchnorm=True, out_features=3)
    model = build_model(spec, seed=1)
    x, y = torch.randn(20, 8), torch.randint(0, 3, (20,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    rows = probe_layer_stats(model, x, y, "train")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state()) and model.training
    # direct computation of layer 2's pre-activation statistics and per-sample loss gradient
    model.train()
    with torch.no_grad():
        h1 = model.linears[0](x)
        h2 = model.linears[1](model.norms[1](torch.tanh(h1)))
    model.load_state_dict(before)
    assert rows[2]["pre_mean"] == pytest.approx(float(h2.double().mean()), rel=1e-5)
    assert rows[2]["pre_var"] == pytest.approx(float(h2.double().var(unbiased=False)), rel=1e-5)
    # saturation of tanh: outputs within 0.02 of +-1
    post = torch.tanh(h2).double()
    assert rows[2]["saturated_frac"] == pytest.approx(float((post.abs() >= 0.98).double().mean()))
    # grad_norm in eval mode = RMS over samples of |d loss_n / d h^3| (samples independent)
    model.eval()
    g_direct = []
    for n in range(4):
        out, pre = model(x[n : n + 1], record=True)
        (g,) = torch.autograd.grad(nn.functional.cross_entropy(out, y[n : n + 1]), [pre[2]])
        g_direct.append(float((g.double() ** 2).sum()))
    model.train()
    rows_eval = probe_layer_stats(model, x[:4], y[:4], "eval")
    assert rows_eval[3]["grad_norm"] == pytest.approx(math.sqrt(np.mean(g_direct)), rel=1e-5)


# ----------------------------------------------------------------- reproduce and CLI


def test_reproduce_writes_results_and_resumes(mnist5k, tmp_path):
    ds = _subset(mnist5k, 256, 64)
    out = tmp_path / "rep"
    lines = []
    summary = reproduce(presets=["selu-bn-lecun-uniform"], lrs=[1e-3, 1e-4], dataset=ds, out_dir=out, epochs=1,
                        probe_size=16, threads=1, callback=lines.append)
    assert list(summary["lr"]) == [1e-3, 1e-4] and (summary["status"] == "finished").all()
    assert summary["seed_acc_1"].iloc[0] == 0.2284 and summary["seed_val_acc_1"].iloc[0] == 0.0996
    for run in ("selu-bn-lecun-uniform_lr0.001", "selu-bn-lecun-uniform_lr0.0001"):
        for f in ("history.csv", "history.csv.meta.json", "layers.csv", "layers.csv.meta.json", "spec.json"):
            assert (out / run / f).is_file(), (run, f)
    md = (out / "summary.md").read_text()
    assert "0.2284 / 0.0996" in md and "selu-bn-lecun-uniform (seed run 5)" in md
    assert pd.read_csv(out / "summary.csv").shape[0] == 2
    meta = json.loads((out / "selu-bn-lecun-uniform_lr0.001" / "history.csv.meta.json").read_text())
    assert meta["reported"]["acc"][0] == 0.2284 and meta["versions"]["torch"]
    # resuming finished runs trains nothing
    lines.clear()
    again = reproduce(presets=["selu-bn-lecun-uniform"], lrs=[1e-3, 1e-4], dataset=ds, out_dir=out, epochs=1,
                      probe_size=16, threads=1, callback=lines.append)
    assert lines == []
    pd.testing.assert_frame_equal(again, summary)


def test_cli_unknown_preset_one_line(capsys):
    assert main(["train", "--preset", "nosuch"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("propagate: error: unknown preset 'nosuch'") and err.count("\n") == 1


def test_cli_bad_flag_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--lr", "-1"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_cli_tiny_custom_run_writes_files(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "--activation", "tanh", "--init", "glorot_normal", "--depth", "2", "--width", "16",
               "--first-width", "16", "--epochs", "1", "--dataset", "mnist-5k", "--out", str(out),
               "--probe-size", "32", "--threads", "1", "--no-progress"])
    assert rc == 0
    cap = capsys.readouterr()
    assert "epoch 1/1 - " in cap.err and "val_acc: " in cap.err
    assert "train_eval_acc" in cap.out
    for f in ("history.csv", "layers.csv", "spec.json", "checkpoint.pt"):
        assert (out / f).is_file()
    spec = json.loads((out / "spec.json").read_text())["spec"]
    assert spec["widths"] == [784, 16, 16] and spec["activation"] == "tanh"
    layers = pd.read_csv(out / "layers.csv")
    assert set(layers["layer"]) == {0, 1, 2} and set(layers["epoch"]) == {0, 1}


def test_cli_list_presets(capsys):
    assert main(["train", "--list-presets"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in EXPECTED) and "0.2284/0.0996" in out
