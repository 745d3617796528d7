"""Tests of propagate.simulate: known propagation laws within the seeds' statistical error.

Tolerances are computed from the measured standard errors across networks (SE)
plus, where stated, an explicit finite-width allowance. Per-layer checks at a
4 SE level over 50 layers would fail by chance with only a few networks (the
SE itself is estimated from them), so each law is tested on one statistic per
network (a depth average or a log-slope), then mean +- SE across networks.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from propagate.cli import main
from propagate.errors import UserError
from propagate.simulate import compare_with_theory, finite_width_allowance, seed_stream
from propagate.simulate import simulate as _simulate
from propagate.spec import NetworkSpec

W = 256


def simulate(spec, **kw):
    # one thread: these runs are small, and on a busy machine two-thread ops wait on each other
    kw.setdefault("threads", 1)
    return _simulate(spec, **kw)


def _stack(depth, activation, init, width=W, **kw):
    return NetworkSpec.stack(depth, width, input_dim=width, first_width=None, activation=activation, init=init, **kw)


def _per_network(res, col, layers):
    """(S,) array: per network, the mean of ``col`` over ``layers``."""
    ps = res.per_seed[res.per_seed["layer"].isin(layers)]
    return ps.groupby("seed")[col].mean().to_numpy()


def _mean_se(v):
    v = np.asarray(v, dtype=float)
    return v.mean(), v.std(ddof=1) / math.sqrt(len(v))


def _log_slope(res, layers):
    """(S,) array: per network, the least-squares slope of log(pre_var) over ``layers``."""
    out = []
    for _, grp in res.per_seed[res.per_seed["layer"].isin(layers)].groupby("seed"):
        out.append(np.polyfit(grp["layer"].to_numpy(float), np.log(grp["pre_var"].to_numpy(float)), 1)[0])
    return np.array(out)


@pytest.fixture(scope="module")
def selu_runs():
    return {init: simulate(_stack(50, "selu", init), samples=600, seeds=6, seed=1) for init in ("lecun_normal", "lecun_uniform")}


@pytest.mark.parametrize("init", ["lecun_normal", "lecun_uniform"])
def test_selu_keeps_mean_zero_and_variance_one(selu_runs, init):
    res = selu_runs[init]
    assert res.diverged_at is None
    layers = range(1, 51)
    # depth average per network: the self-normalizing fixed point (0, 1)
    m, se = _mean_se(_per_network(res, "pre_mean", layers))
    assert abs(m) < 4 * se + 1e-3, (m, se)
    v, se = _mean_se(_per_network(res, "pre_var", layers))
    # finite-width allowance: the (0, 1) fixed point is attractive, so the O(1/n) bias per
    # layer does not accumulate; we allow 2/n on top of 4 SE
    assert abs(v - 1) < 4 * se + 2 / W, (v, se)
    # and at the last layer alone
    last = res.table.set_index("layer").loc[50]
    assert abs(last["pre_var"] - 1) < 4 * last["pre_var_se"] + 2 / W
    assert abs(last["pre_mean"]) < 4 * last["pre_mean_se"] + 2e-3
    # the variance does not drift: a log-slope compatible with 0 (|slope| * 50 layers < ~5%)
    s, se = _mean_se(_log_slope(res, layers))
    assert abs(s) < 4 * se + 1e-3, (s, se)


def test_selu_matches_theory(selu_runs):
    t = selu_runs["lecun_normal"].table
    assert "theory_pre_var" in t.columns
    assert np.allclose(t.loc[t.layer > 0, "theory_pre_var"], 1.0, atol=2e-3)
    assert not t["disagree"].any(), t.loc[t["disagree"], ["layer", "disagree_in"]]


@pytest.fixture(scope="module")
def relu_glorot():
    return simulate(_stack(30, "relu", "glorot_uniform"), samples=400, seeds=8, seed=2)


def test_relu_glorot_variance_halves(relu_glorot):
    res = relu_glorot
    # per network, the per-layer factor exp(slope of log var). Finite width: log q performs a
    # random walk whose drift is -(5/2)/n per layer for relu (Hanin & Nica 2019), so the
    # factor is 0.5 exp(-2.5/n) ~ 0.495 at n=256; we allow 3/n relative on top of 4 SE.
    f = np.exp(_log_slope(res, range(1, 31)))
    m, se = _mean_se(f)
    assert abs(m - 0.5) < 4 * se + 0.5 * 3 / W, (m, se)
    # and directly: variance after 10 and 20 layers is 0.5^10, 0.5^20 of layer 1 (E[q] is exact
    # for relu with symmetric weights, so only the SE across networks applies)
    t = res.table.set_index("layer")
    for l in (10, 20):
        expect = t.loc[1, "pre_var"] * 0.5 ** (l - 1)
        assert abs(t.loc[l, "pre_var"] - expect) < 4 * t.loc[l, "pre_var_se"] + 0.01 * expect


def test_relu_glorot_matches_theory(relu_glorot):
    t = relu_glorot.table.set_index("layer")
    for l in (1, 10, 20, 30):
        th = t.loc[l, "theory_pre_var"]
        assert th == pytest.approx(0.5 ** (l - 1), rel=1e-6)
        assert abs(t.loc[l, "pre_var"] - th) < 4 * t.loc[l, "pre_var_se"] + 1e-3 * th
    # grad_norm: theory grad_norm_l^2 = E[phi'^2] (1 * 1/2)^(depth-l) at sigma_w^2 = 1: 0.5^((31-l)/2)
    for l in (30, 20, 5):
        th = t.loc[l, "theory_grad_norm"]
        assert th == pytest.approx(math.sqrt(0.5 ** (31 - l)), rel=1e-6)
        allow = finite_width_allowance(relu_glorot.spec.widths, 30) * th
        assert abs(t.loc[l, "grad_norm"] - th) < 4 * t.loc[l, "grad_norm_se"] + allow


def test_relu_he_variance_constant():
    res = simulate(_stack(30, "relu", "he_normal"), samples=400, seeds=8, seed=3)
    f = np.exp(_log_slope(res, range(1, 31)))
    m, se = _mean_se(f)
    assert abs(m - 1.0) < 4 * se + 3 / W, (m, se)
    # gradients neither vanish nor explode: grad_norm^2 = 1/2 at every layer (chi_1 = 1)
    g = res.table.set_index("layer").loc[[1, 15, 30], "grad_norm"].to_numpy()
    assert np.all(np.abs(g**2 - 0.5) < 0.25), g
    # dead units appear with depth but only a few percent... (relu: all-zero over the batch)
    assert res.table["dead_frac"].iloc[1:].max() < 0.5


def test_grad_norm_selu_matches_chi():
    """grad_norm^2 grows by chi_1 = sigma_w^2 E[selu'(h)^2] = 1.0722 per layer down (h ~ N(0, 1))."""
    from scipy import integrate

    from propagate.activations import get_activation

    act = get_activation("selu")
    chi = integrate.quad(lambda z: act.grad(np.array(z)) ** 2 * math.exp(-z * z / 2) / math.sqrt(2 * math.pi), -12, 12,
                         points=[0.0])[0]
    res = simulate(_stack(20, "selu", "lecun_normal", width=128), samples=400, seeds=6, seed=4)
    per = res.per_seed
    ratios = []
    for _, g in per[per.layer > 0].groupby("seed"):
        gn = g.set_index("layer")["grad_norm"]
        ratios.append((gn[1] / gn[20]) ** 2)
    m, se = _mean_se(np.log(ratios))
    # finite width: allow 19 layers x 1/n relative on top of 4 SE
    assert abs(m - 19 * math.log(chi)) < 4 * se + 19 / 128, (m, 19 * math.log(chi), se)
    assert chi == pytest.approx(1.0722, abs=1e-3)


@pytest.mark.parametrize("samples", [64, 6000], ids=["one-block", "blocks"])
def test_same_seed_same_numbers_and_shared_prefix(samples):
    """(6000 samples: the activation's measuring pass takes them in blocks, 1024 samples a block at width 32.)"""
    spec = _stack(6, "tanh", "glorot_normal", width=32, dropout=0.1, bias_var=0.05)
    a = simulate(spec, samples=samples, seeds=2, seed=7, theory=False)
    b = simulate(spec, samples=samples, seeds=2, seed=7, theory=False)
    c = simulate(spec, samples=samples, seeds=2, seed=8, theory=False)
    d = simulate(spec, samples=samples, seeds=3, seed=7, theory=False)
    cols = ["pre_mean", "pre_var", "post_var", "corr", "grad_norm"]
    assert a.per_seed[cols].equals(b.per_seed[cols])
    assert not np.allclose(a.per_seed[cols].iloc[1:].to_numpy(), c.per_seed[cols].iloc[1:].to_numpy())
    # networks 0 and 1 of a 3-network run are those of the 2-network run
    assert np.array_equal(a.per_seed[cols].to_numpy(), d.per_seed[d.per_seed.seed < 2][cols].to_numpy(), equal_nan=True)
    assert seed_stream(7, 0) != seed_stream(7, 1) != seed_stream(8, 1)


def test_divergence_reported_at_the_right_layer():
    spec = _stack(200, "linear", "normal:4.0")
    with pytest.warns(UserWarning, match="diverged"):
        res = simulate(spec, samples=100, seeds=2, seed=0)
    # sigma_h = 2^l: the largest of ~N n Gaussian entries (~4.5 sigma) passes float32's max
    # (3.4e38 = 2^128) near l = 126; allow a factor ~10 of finite-width spread either way
    fmax = np.finfo(np.float32).max
    lo = math.ceil(math.log2(fmax / 100))
    hi = math.ceil(math.log2(fmax)) + 1
    assert lo <= res.diverged_at <= hi, res.diverged_at
    t = res.table
    assert t["layer"].max() == res.diverged_at
    assert bool(t.set_index("layer").loc[res.diverged_at, "diverged"])
    assert not t.loc[t.layer < res.diverged_at, "diverged"].any()
    # finite statistics up to there, even where q N n overflows float32 (float64 fallback)
    before = t[t.layer == res.diverged_at - 1].iloc[0]
    assert np.isfinite(before["pre_var"]) and before["pre_var"] > 1e70
    assert np.isnan(t["grad_norm"]).all()
    # the same networks in float64 do not overflow there
    r64 = simulate(spec.with_(widths=spec.widths[: res.diverged_at + 1]), samples=100, seeds=2, seed=0,
                   dtype="float64", theory=False)
    assert r64.diverged_at is None


def test_vanishing_relu_is_flushed_and_reported():
    spec = _stack(30, "relu", "normal:0.01", width=64)
    res = simulate(spec, samples=64, seeds=2, theory=False)
    assert res.flushed["active"] and res.flushed["mattered"]
    assert res.flushed["subnormal_layers"][0] > 10
    from propagate.torch_settings import flush_is_on

    assert flush_is_on() is False  # restored


def test_batchnorm_and_alpha_dropout_keep_selu_normalized():
    spec = _stack(8, "selu", "lecun_normal", width=128, batchnorm=True, alpha_dropout=0.1)
    res = simulate(spec, samples=1000, seeds=4, jacobian=True, theory=False)
    t = res.table.set_index("layer")
    # BN makes each unit's input zero-mean exactly, so pre-activations are zero-mean per unit
    assert np.all(np.abs(t.loc[2:, "pre_mean"]) < 1e-5)
    # selu + alpha dropout at (0, 1) keeps the variance at ~ 1/(1+eps): within 5%
    assert np.all(np.abs(t.loc[1:, "pre_var"] - 1) < 0.05)
    assert res.jacobian["shape"] == [128, 128]


def test_jacobian_of_an_orthogonal_linear_network_is_orthogonal():
    # a product of orthogonal matrices: every singular value is 1
    spec = NetworkSpec.stack(6, 32, input_dim=32, first_width=None, activation="linear", init="orthogonal")
    j = simulate(spec, samples=64, seeds=2, jacobian=True, theory=False).jacobian
    assert j["inputs"] == 4 and j["shape"] == [32, 32]
    for k in ("s_max", "s_min", "mean_s2", "median_s"):
        assert j[k] == pytest.approx(1.0, abs=1e-5)
    assert abs(j["log10_spread"]) < 1e-5


def test_array_input_and_dataset_input_stats():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, size=(300, 16)).astype(np.float32)
    spec = NetworkSpec.stack(3, 32, input_dim=16, first_width=None, activation="relu", init="he_normal")
    res = simulate(spec, input=x, samples=200, seeds=2, theory=False)
    st = res.meta["input_stats"]
    assert st["input_q"] == pytest.approx(np.mean(x.astype(float) ** 2), rel=1e-9)
    assert st["input_mean"] == pytest.approx(0.5, abs=0.02)
    assert st["input_corr"] == pytest.approx(0.75, abs=0.03)  # E[x]^2 / E[x^2] = 0.25 / (1/3)
    assert res.table.loc[0, "post_q"] == pytest.approx(1 / 3, abs=0.02)
    # first layer: q^1 = sigma_w^2 * mean_features E[x^2] (He: 2/3)
    assert res.table.loc[1, "pre_q"] == pytest.approx(2 * st["input_q"], rel=0.1)
    with pytest.raises(UserError):
        simulate(spec, input=np.zeros((10, 5)))
    with pytest.raises(UserError):
        simulate(spec, input="cifar")


def test_compare_with_theory_flags_real_disagreement():
    import pandas as pd

    spec = _stack(3, "relu", "he_normal", width=100)
    sim = pd.DataFrame({"layer": [0, 1, 2, 3], "width": [100] * 4, "pre_var": [np.nan, 1.0, 1.0, 1.5],
                        "pre_var_se": [np.nan, 0.01, 0.01, 0.01]})
    th = pd.DataFrame({"layer": [0, 1, 2, 3], "pre_var": [np.nan, 1.0, 1.02, 1.0]})
    out = compare_with_theory(sim, th, spec)
    # layer 2: 0.02 off < 4 SE (0.04) + 2/100 allowance; layer 3: 0.5 off -> flagged
    assert out["disagree"].tolist() == [False, False, False, True]
    assert out["ratio"].iloc[3] == pytest.approx(1.5)
    assert finite_width_allowance((100, 100, 100, 100), 2) == pytest.approx(0.02)


def test_bad_input_raises_usererror():
    spec = _stack(2, "relu", "he_normal", width=8)
    for kw in ({"seeds": 0}, {"samples": 1}, {"dtype": "float16"}, {"device": "tpu"}):
        with pytest.raises(UserError):
            simulate(spec, **kw)


# ----------------------------------------------------------------------------- CLI


def test_cli_default_command_prints_table(capsys):
    rc = main(["simulate", "--threads", "1", "--depth", "50", "--init", "lecun_uniform", "--inputs", "200", "--networks", "2", "--quiet"])
    assert rc == 0
    rc = main(["simulate", "--threads", "1", "--depth", "4", "--init", "lecun_uniform", "--inputs", "200", "--networks", "2"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "selu/lecun_uniform" in out and "784 -> 512 -> 3 x 256" in out
    assert "pre_var±se" in out and "grad_norm±se" in out
    assert len([ln for ln in out.splitlines() if ln.strip()[:1].isdigit()]) == 5  # layers 0..4


def test_cli_files_and_plot(tmp_path, capsys):
    csv, js, png = tmp_path / "s.csv", tmp_path / "s.json", tmp_path / "s.png"
    rc = main(["simulate", "--threads", "1", "--activation", "relu", "--init", "he_normal", "--width", "64", "--depth", "5",
               "--inputs", "100", "--networks", "2", "--seed", "3", "--csv", str(csv), "--json", str(js),
               "--plot", str(png), "--quiet"])
    assert rc == 0
    assert capsys.readouterr().out == ""
    data = json.loads(js.read_text())
    assert data["meta"]["seeds"] == 2 and data["meta"]["seed"] == 3 and "versions" in data["meta"]
    assert [r["layer"] for r in data["rows"]] == list(range(6))
    assert (tmp_path / "s.csv.meta.json").exists() and csv.read_text().startswith("source,config,layer")
    assert (tmp_path / "s.json.meta.json").exists()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_divergence_warns_and_exits_zero(capsys):
    rc = main(["simulate", "--threads", "1", "--activation", "linear", "--init", "normal:4", "--width", "32", "--depth", "200",
               "--inputs", "50", "--networks", "2"])
    cap = capsys.readouterr()
    assert rc == 0
    assert "DIVERGED" in cap.out
    assert len([ln for ln in cap.err.splitlines() if "diverged" in ln]) == 1


@pytest.mark.parametrize("argv", [
    ["--activation", "nope"],
    ["--init", "bogus"],
    ["--depth", "0"],
    ["--inputs", "x"],
    ["--dropout", "1.5"],
    ["--demo-shape", "--depth", "3"],
    ["--dataset", "mnist-5k", "--input-mean", "1"],
    ["--plot", "out.pdf"],
    ["--json", "out.txt"],
    ["--json", "--csv", "-"],
    ["--init", "he_normal", "--sigma-w2", "2"],
    ["--device", "cuda"],
    ["--inputs", "100000000000"],  # refuses up front: more memory than the machine has
])
def test_cli_bad_input_one_line_exit_2(argv, capsys):
    import torch

    if argv == ["--device", "cuda"] and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(SystemExit) as exc:
        raise SystemExit(main(["simulate", "--threads", "1", "--depth", "2", "--inputs", "10", "--networks", "1", "--quiet", *argv]))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error" in err[0]
    if "--inputs" in argv and "x" not in argv:
        assert "use fewer --inputs or --networks" in err[0]


def test_cli_json_to_stdout_and_old_spellings(capsys):
    """The issue's command prints strict JSON on stdout alone; old flag spellings work, each with one notice."""
    rc = main(["simulate", "--activation", "selu", "--sigma-w2", "1", "--depth", "10", "--networks", "4", "--inputs",
               "200", "--dataset", "mnist-5k", "--json", "--threads", "1"])
    out = capsys.readouterr().out
    data = json.loads(out, parse_constant=lambda c: pytest.fail(f"not strict JSON: {c}"))
    assert rc == 0 and data["meta"]["seeds"] == 4 and data["meta"]["samples"] == 200
    assert data["meta"]["input"] == "mnist-5k" and [r["layer"] for r in data["rows"]] == list(range(11))
    assert all(r["width"] == w for r, w in zip(data["rows"], [784, 512] + [256] * 9))
    old = ["simulate", "--depth", "2", "--width", "8", "--threads", "1", "--quiet", "--csv", "-"]
    rc = main(old + ["--seeds", "2", "--samples", "20", "--input", "gaussian"])
    cap = capsys.readouterr()
    assert rc == 0 and cap.out.startswith("source,config,layer")
    notes = cap.err.strip().splitlines()
    assert notes == ["propagate: warning: --seeds is deprecated, use --networks",
                     "propagate: warning: --samples is deprecated, use --inputs",
                     "propagate: warning: --input is deprecated, use --dataset"]
    new = main(old + ["--networks", "2", "--inputs", "20", "--dataset", "gaussian"])
    again = capsys.readouterr()
    assert new == 0 and again.err == "" and again.out == cap.out  # the same run, the same numbers


def test_vanishing_signal_keeps_its_variance_until_float32_runs_out():
    """float32 squares underflow at RMS ~1e-19; the reported variance must not drop to 0 there."""
    spec = NetworkSpec.stack(90, 128, input_dim=128, first_width=128, activation="relu", init="normal:0.5")
    res = _simulate(spec, samples=256, seeds=2, seed=3, threads=1)
    t = res.table[res.table["layer"] >= 1].set_index("layer")
    th = res.theory[res.theory["layer"] >= 1].set_index("layer")
    # theory: q shrinks 4x per layer (sigma_w^2/2 = 1/4); by layer 40 RMS ~ 1e-12, by 70 ~ 1e-21
    deep = [l for l in t.index if 1e-70 < th.loc[l, "pre_var"] < 1e-30]
    assert len(deep) >= 10
    assert (t.loc[deep, "pre_var"] > 0).all()
    # finite width: for ReLU the log of the squared norm spreads with variance ~ 5 sum_k 1/n_k
    # (Hanin & Nica 2019); the mean over networks of log(simulation / theory) stays within 4 of its SEs
    ps = res.per_seed[res.per_seed["layer"].isin(deep)]
    log_ratio = np.log(ps["pre_var"].to_numpy() / th.loc[ps["layer"], "pre_var"].to_numpy())
    mean_log = pd.Series(log_ratio).groupby(ps["layer"].to_numpy()).mean()
    se = np.sqrt(5 * mean_log.index.to_numpy() / 128 / 2)
    assert (np.abs(mean_log.to_numpy()) < 4 * se).all(), mean_log


def test_measure_recomputes_a_vanishing_float32_signal_in_float64():
    import torch

    from propagate.stats import measure

    t = torch.full((2, 4, 8), 3e-20, dtype=torch.float32)  # squares (9e-40) underflow float32's normals
    t[1] *= -2
    stats, finite = measure(pre=t)
    assert finite
    ref = t.double()
    assert stats["pre_q"].tolist() == pytest.approx((ref**2).mean(dim=(1, 2)).tolist(), rel=1e-12)
    assert stats["pre_mean"].tolist() == pytest.approx(ref.mean(dim=(1, 2)).tolist(), rel=1e-12)
    assert stats["pre_var"].abs().max() < 1e-45 and stats["corr"].tolist() == pytest.approx([1.0, 1.0], rel=1e-6)


def test_theory_and_simulate_share_the_network_flags(capsys, tmp_path):
    """--sigma-b2 and its alias --bias-var, --residual and --layernorm mean the same spec in both commands."""
    import argparse

    from propagate.commands import simulate as sim_cmd
    from propagate.commands import theory as th_cmd

    flags = ["--activation", "relu", "--init", "he_normal", "--depth", "4", "--width", "32", "--residual", "0.5",
             "--layernorm", "--bias-var", "0.1"]
    specs = []
    for mod, extra in ((th_cmd, []), (sim_cmd, [])):
        p = argparse.ArgumentParser()
        mod.add_arguments(p)
        args = p.parse_args(flags + extra)
        specs.append(th_cmd.build(args)[0] if mod is th_cmd else sim_cmd.build_spec(args))
    assert specs[0] == specs[1]
    assert specs[0].widths == (784, 32, 32, 32, 32) and specs[0].bias_var == 0.1
    assert specs[0].label() == "relu/he_normal+LN+res0.5"
    csv = tmp_path / "t.csv"
    assert main(["theory", *flags[:-2], "--sigma-b2", "0.1", "--csv", str(csv)]) == 0
    capsys.readouterr()
    assert main(["simulate", "--threads", "1", *flags, "--inputs", "64", "--networks", "1"]) == 0
    out = capsys.readouterr().out
    assert "not judged" in out and "!" not in out.split("flag")[-1]


# ----------------------------------------------------------------------------
# the simulator's memory: blocks, reused buffers, the same numbers


def test_statistics_in_blocks_equal_their_one_pass_definitions():
    """_pairs' blocked dot products are vecdot's, _saturated's blocked counts are the one-pass counts, _dead (which
    reads the batch only for units that are 0 at the first sample) is (max == 0) & (min == 0) over the batch."""
    import torch

    from propagate import stats
    from propagate.activations import get_activation

    g = torch.Generator().manual_seed(0)
    h = torch.randn(3, 700, 40, generator=g)
    v = h[:, :700].reshape(3, 350, 2, 40)
    num = torch.linalg.vecdot(v[:, :, 0], v[:, :, 1])
    den = torch.linalg.vector_norm(v, dim=-1).prod(-1)
    assert torch.equal(stats._pairs(h), num / den)
    for name in ("selu", "tanh", "relu", "linear"):
        act = get_activation(name)
        x = act.torch(3 * h)
        lo, hi, zero_rel = stats.saturation_rule(act)
        q = (x * x).mean(dim=(1, 2))
        xs = x[:, : stats.SAT_SAMPLES]
        if zero_rel is not None:
            count = (xs.abs() <= (zero_rel * q.sqrt()).view(3, 1, 1)).sum(dim=(1, 2))
        else:
            count = torch.zeros(3, dtype=torch.int64)
            if lo is not None:
                count += (xs <= lo).sum(dim=(1, 2))
            if hi is not None:
                count += (xs >= hi).sum(dim=(1, 2))
        assert torch.equal(stats._saturated(x, act, q), count.to(x.dtype) / (xs.shape[1] * 40)), name
    x = torch.relu(h)
    x[:, :, 5] = 0.0  # dead
    x[:, 0, 6], x[:, 1:, 6] = 0.0, -1e-30  # 0 at the first sample only: alive
    x[1, :, 7] = 0.0  # dead in network 1 only
    expect = ((x.amax(dim=1) == 0) & (x.amin(dim=1) == 0)).sum(dim=1).to(x.dtype) / 40
    assert torch.equal(stats._dead(x), expect) and expect[1] > expect[0] > 0
    assert torch.equal(stats._dead(torch.selu(h)), torch.zeros(3))


def _run(S=3, N=40, G=25, width=16, seed=0, **kw):
    import torch

    from propagate.batched import PerNetworkDraws, Run

    return Run(S, N, G, width, torch.float32, "cpu", PerNetworkDraws([torch.Generator().manual_seed(seed + s)
                                                                         for s in range(S)]), **kw)


@pytest.mark.parametrize("kw", [dict(activation="selu", init="lecun_normal", batchnorm=True, alpha_dropout=0.1),
                                dict(activation="tanh", init="he_normal", layernorm=True, residual=0.6, dropout=0.2)],
                         ids=["bn-alphadropout", "ln-residual-dropout"])
def test_backward_into_reused_buffers_and_input_as_buffer_give_the_same_numbers(kw):
    """The simulator's memory savings change no number: the input's memory as the run's second buffer (``spare``)
    and the gradients written into two alternating buffers (``buffers=run.grad_buffer``) give the forward output,
    every tap's gradient and the input gradient of a run without them, bit for bit."""
    import torch

    from propagate.layers import forward_ops, vjp_ops

    spec = NetworkSpec.stack(4, 16, input_dim=16, first_width=None, **kw)
    x0 = torch.randn(3, 40, 16, generator=torch.Generator().manual_seed(1))
    results = []
    for lean in (False, True):
        run = _run(spare=x0.clone() if lean else None)
        spare = run._spare
        y, tape = forward_ops(spec.compile(), x0.clone() if not lean else spare, run)
        assert (spare is not None) == lean
        if lean:  # the second Dense wrote into the input's memory
            assert run._bufs[1].data_ptr() == spare.data_ptr()
        grads = []
        g = torch.randn(3, 25, 16, generator=torch.Generator().manual_seed(2))
        gin = vjp_ops(tape, g, lambda op, gr: grads.append(gr.clone()), buffers=run.grad_buffer if lean else None)
        results.append([y.clone(), gin.clone(), *grads])
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_run_float64_is_the_double_copy_in_one_reused_buffer():
    import torch

    run = _run()
    g = torch.randn(3, 25, 16)
    a = run.float64(g)
    assert torch.equal(a, g.double()) and run.float64(g) is a  # converted once per tensor
    g.mul_(2)  # changed in place: converted again
    b = run.float64(g)
    assert torch.equal(b, g.double()) and b.data_ptr() == a.data_ptr()
    h = torch.randn(3, 25, 8)
    assert torch.equal(run.float64(h), h.double()) and run.float64(h).data_ptr() == a.data_ptr()
    d = torch.randn(2, 2, dtype=torch.float64)
    assert run.float64(d) is d


# ----------------------------------------------------------------------------
# statistics fused into the activation's pass over memory


@pytest.mark.parametrize("name", ["selu", "relu", "tanh", "linear", "sigmoid"])
def test_measure_through_equals_measure_before_and_after_the_activation(monkeypatch, name):
    """One blocked pass gives measure(pre=h) and measure(post=act(h)): moments to float32 round-off (and closer
    to float64 than one whole-tensor float32 norm), pair correlations, dead and saturated shares exactly, over
    blocks of an odd requested size (rounded up to even: pairs never straddle) with a short last block per
    network."""
    import torch

    from propagate import stats
    from propagate.activations import get_activation, torch_forms

    act = get_activation(name)
    monkeypatch.setattr(stats, "CORR_SAMPLES", 90)  # the pairs span three blocks, the last one in part
    monkeypatch.setattr(stats, "SAT_SAMPLES", 60)
    g = torch.Generator().manual_seed(1)
    h = 1.5 * torch.randn(3, 201, 16, generator=g) + 0.2
    h[:, :, 3] = -50.0  # a unit at SELU's lower bound and ReLU's 0 (dead), tanh's -1 (saturated)
    pre_ref, ok_pre = stats.measure(pre=h)
    y = torch_forms(act).forward(h)
    post_ref, ok_post = stats.measure(post=y, act=act)
    t = h.clone()
    (pre, fin_pre), (post, fin_post) = stats.measure_through(t, torch_forms(act).inplace, act,
                                                                    block=8 * 37 * 16 + 5)  # 38 samples a block
    # the activation a block at a time: the same numbers but where a block's end leaves torch's vector loop
    # to its scalar tail (one rounding apart)
    assert torch.allclose(t, y, rtol=2.5e-7, atol=0) and fin_pre and fin_post and ok_pre and ok_post
    post_ref = stats.measure(post=t, act=act)[0]
    assert set(pre) == set(pre_ref) and set(post) == set(post_ref)
    exact_pre = {"pre_mean": h.double().mean(dim=(1, 2)), "pre_q": (h.double() ** 2).mean(dim=(1, 2))}
    for k in ("pre_mean", "pre_q", "pre_var"):
        assert pre[k].tolist() == pytest.approx(pre_ref[k].double().tolist(), rel=1e-6, abs=1e-7), k
    for k in ("pre_mean", "pre_q"):  # block sums added in float64: at least as close to the exact value
        err = (pre[k] - exact_pre[k]).abs().max()
        assert err <= (pre_ref[k].double() - exact_pre[k]).abs().max() + 1e-9, k
        assert err < 2e-7 * exact_pre[k].abs().max(), k
    for k in ("post_mean", "post_q", "post_var"):
        assert post[k].tolist() == pytest.approx(post_ref[k].double().tolist(), rel=1e-6, abs=1e-7), k
    assert torch.allclose(pre["corr"], pre_ref["corr"], rtol=1e-6, atol=0)
    assert torch.equal(post["dead_frac"], post_ref["dead_frac"])
    assert torch.equal(post["saturated_frac"], post_ref["saturated_frac"])
    if name in ("selu", "tanh", "relu", "sigmoid"):
        assert (post["saturated_frac"] > 0).all()  # the -50 unit is counted


@pytest.mark.parametrize("kernel", ["torch", "compiled"])
def test_measure_through_keeps_the_float64_fallbacks_block_by_block(monkeypatch, kernel):
    """A block whose float32 squares underflow is reduced in float64 before the activation overwrites it; an
    inf in the input is reported as not finite; an output whose squares overflow float32 is measured in float64.
    The compiled kernel (float64 sums throughout) gives the same numbers without fallbacks."""
    import torch

    from propagate import native, stats
    from propagate.activations import get_activation, torch_forms

    if kernel == "torch":
        monkeypatch.setitem(native._state, "fn", None)
        monkeypatch.setitem(native._state, "why", "off for this test")
    elif not native.available():
        pytest.skip(f"no compiled kernel here: {native.status()}")

    lin = get_activation("linear")
    h = torch.full((2, 30, 8), 3e-20)  # squares (9e-40) underflow float32's normals
    h[:, 10:20] = 1.0  # one healthy block between two vanishing ones
    ref = h.double()
    (pre, fin), (post, ok) = stats.measure_through(h.clone(), torch_forms(lin).inplace, lin, block=640)
    assert fin and ok
    assert pre["pre_q"].tolist() == pytest.approx((ref**2).mean(dim=(1, 2)).tolist(), rel=1e-7)
    tiny = torch.full((2, 30, 8), 3e-20)
    (pre, fin), (post, ok) = stats.measure_through(tiny, torch_forms(lin).inplace, lin, block=640)
    assert pre["pre_q"].tolist() == pytest.approx([9e-40, 9e-40], rel=1e-6)
    assert post["post_q"].tolist() == pytest.approx([9e-40, 9e-40], rel=1e-6)  # whole-output fallback
    bad = torch.ones(2, 30, 8)
    bad[1, 25, 0] = math.inf
    (pre, fin), _ = stats.measure_through(bad, torch_forms(lin).inplace, lin, block=640)
    assert not fin
    big = torch.full((2, 30, 8), 3e19)  # finite entries whose float32 squares overflow
    (pre, fin), (post, ok) = stats.measure_through(big, torch_forms(lin).inplace, lin, block=640)
    assert fin and ok and pre["pre_q"].tolist() == pytest.approx([9e38, 9e38], rel=1e-6)
    assert post["post_q"].tolist() == pytest.approx([9e38, 9e38], rel=1e-6)


@pytest.mark.parametrize("act, init", [("selu", "lecun_normal"), ("relu", "normal:0.02"), ("tanh", "glorot_uniform")])
def test_simulate_measures_in_the_activations_pass_with_the_same_numbers(monkeypatch, act, init):
    """The simulator's pre-activation statistics come from the activation's fused pass (the Dense tap defers
    them), and its per-network table equals the one measured tap by tap to float32 round-off (a vanishing relu
    stack included: the float64 fallbacks hold). Where the compiled kernel runs the pass (selu, relu; tanh is
    torch's), its activation differs from torch's by at most one unit in the last place, so correlations near 0
    are compared, like means, to the round-off of their scale (1)."""
    import propagate.batched as batched
    import propagate.layers as layers
    from propagate import stats

    monkeypatch.setattr(stats, "FUSED_BLOCK", 8 * 64 * 100)  # several blocks (simulate here runs one thread)
    calls = []
    real = layers.measure_through
    monkeypatch.setattr(layers, "measure_through", lambda *a: calls.append(1) or real(*a))
    spec = _stack(25 if init == "normal:0.02" else 6, act, init, width=64)
    fused = simulate(spec, samples=700, seeds=3, theory=False).per_seed
    assert len(calls) == spec.depth
    monkeypatch.setattr(batched.Run, "defer_measure", lambda self, t, callback: False)
    plain = simulate(spec, samples=700, seeds=3, theory=False).per_seed
    assert len(calls) == spec.depth and list(fused.columns) == list(plain.columns)
    for col in fused.columns:
        a, b = fused[col], plain[col]
        if col.endswith("_mean"):  # a mean near 0: its round-off is relative to the signal's scale
            scale = np.sqrt(plain[col.replace("_mean", "_q")])
            assert (np.abs(a - b)[scale > 0] <= 1e-6 * scale[scale > 0]).all(), col
            assert (a.isna() == b.isna()).all(), col
        elif col == "corr":
            assert np.allclose(a, b, rtol=2e-6, atol=1e-7, equal_nan=True), col
        elif a.dtype.kind == "f":
            assert np.allclose(a, b, rtol=2e-6, atol=0, equal_nan=True), col
        else:
            assert a.equals(b), col


def test_a_user_activation_is_measured_at_its_taps():
    """A registered activation's torch function need not be elementwise in blocks: no fusing, same table."""
    import torch

    from propagate.activations import register_activation, unregister_activation

    register_activation("softsign_test", lambda x: x / (1 + np.abs(x)), torch=lambda t: t / (1 + t.abs()),
                        bounds=(-1.0, 1.0))
    try:
        from propagate.layers import Activation

        assert not Activation(1, "softsign_test").fuses_measure(torch.zeros(2, 3, 4))
        assert Activation(1, "selu").fuses_measure(torch.zeros(2, 3, 4))
        res = simulate(_stack(3, "softsign_test", "glorot_uniform", width=32), samples=64, seeds=2, theory=False)
        ps = res.per_seed[res.per_seed["layer"] >= 1]
        assert len(ps) == 6 and ps["pre_q"].notna().all() and (ps["post_q"] > 0).all()
    finally:
        unregister_activation("softsign_test")
