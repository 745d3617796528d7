"""Every verdict branch of :mod:`propagate.report.findings`, on constructed per-seed data.

The facts are built the way the report builds them: from a per-seed training
history (one row per preset, lr, seed and epoch) through ``training_facts``.
"""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from propagate.report import findings as F

T975_4 = 2.776445105  # t_{0.975, 4}: five seeds


def history(runs: dict, epochs: int = 2) -> pd.DataFrame:
    """``{(preset, lr): {"acc": [...], "val_acc": [...], ...}}`` (final values per seed) -> per-seed history.

    Earlier epochs get worse values, so the test also checks that the final epoch is the one used.
    """
    rows = []
    for (preset, lr), m in runs.items():
        acc = m["acc"]
        val = m.get("val_acc", acc)
        tev = m.get("train_eval_acc", val)
        loss = m.get("loss", [1.0] * len(acc))
        for k in range(len(acc)):
            for e in range(1, epochs + 1):
                late = e == epochs
                rows.append({"preset": preset, "lr": lr, "seed": m.get("seeds", range(len(acc)))[k], "epoch": e,
                             "acc": acc[k] if late else 0.0, "val_acc": val[k] if late else 0.0,
                             "train_eval_acc": tev[k] if late else 0.0, "loss": loss[k] if late else 9.0})
    return pd.DataFrame(rows)


def facts(runs: dict, sim: dict | None = None, epochs: int = 2) -> dict:
    return {"training": F.training_facts(history(runs, epochs)), "simulation": sim or {}, "epochs": epochs,
            "chance": 0.1, "level": 0.95, "lrs": sorted({lr for _, lr in runs})}


LOW = [0.09, 0.10, 0.11, 0.10, 0.095]  # at chance
HIGH = [0.80, 0.83, 0.85, 0.82, 0.84]  # trains
MID = [0.2, 0.8, 0.5, 0.3, 0.7]  # interval straddles 0.5


# --------------------------------------------------------------------------- #
# facts from per-seed tables
# --------------------------------------------------------------------------- #


def test_training_facts_use_each_seeds_last_epoch_and_intervals_on_each_quantitys_scale():
    """Accuracies get the t interval on the logit scale, losses on the log scale (a plain t interval of these
    losses, 69.3 +- 185, would reach below 0)."""
    losses = [0.5, 2.0, 1.0, 340.0, 3.0]
    f = F.training_facts(history({("x", 1e-3): {"acc": [0.1, 0.2, 0.3, 0.4, 0.5], "loss": losses}}, epochs=3))
    run = f["x"][1e-3]
    assert run["seeds"] == [0, 1, 2, 3, 4] and run["epoch"] == 3
    assert run["per_seed"]["acc"] == [0.1, 0.2, 0.3, 0.4, 0.5] and run["per_seed"]["loss"] == losses
    half = T975_4 * math.sqrt(0.025 / 5) / (0.3 * 0.7)  # t * s / sqrt(n) * d logit(m) / dm
    expit = lambda u: 1 / (1 + math.exp(-u))  # noqa: E731
    assert run["acc"]["mean"] == pytest.approx(0.3) and run["acc"]["n"] == 5 and run["acc"]["kind"] == "proportion"
    assert run["acc"]["low"] == pytest.approx(expit(math.log(0.3 / 0.7) - half))
    assert run["acc"]["high"] == pytest.approx(expit(math.log(0.3 / 0.7) + half))
    m, s = np.mean(losses), np.std(losses, ddof=1)
    assert m - T975_4 * s / math.sqrt(5) < 0  # what the plain interval would say
    loss = run["loss"]
    assert loss["kind"] == "positive" and loss["mean"] == pytest.approx(m) and 0 < loss["low"] < m < loss["high"]
    assert loss["low"] == pytest.approx(m * math.exp(-T975_4 * s / math.sqrt(5) / m))
    json.dumps(f)  # JSON-ready (report.json)


def test_history_without_seed_column_is_one_seed():
    h = history({("x", 1e-3): {"acc": [0.7]}}).drop(columns="seed")
    run = F.training_facts(h, seed=7)["x"][1e-3]
    assert run["seeds"] == [7] and run["acc"]["n"] == 1 and math.isnan(run["acc"]["low"])
    assert F.training_facts(pd.DataFrame()) == {}


def test_status_comes_from_the_summary():
    h = history({("x", 1e-3): {"acc": HIGH}})
    summary = pd.DataFrame({"preset": ["x"], "lr": [1e-3], "status": ["finished"]})
    assert F.training_facts(h, summary)["x"][1e-3]["status"] == "finished"


# --------------------------------------------------------------------------- #
# the tests behind the verdicts
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("outcomes,expected", [
    ([True, True], "supported"), ([False], "not supported"), ([True, False], "partly"),
    ([True, None], "partly"), ([None, None], "undecided"), ([], "undecided"), ([False, None], "partly"),
])
def test_verdict_combination(outcomes, expected):
    assert F.verdict(outcomes) == expected


def _run(acc, **kw):
    return F.training_facts(history({("x", 1.0): {"acc": acc, **kw}}))["x"][1.0]


def test_trains_branches():
    assert F.trains(_run(HIGH)) is True
    assert F.trains(_run(LOW)) is False
    assert F.trains(_run(MID)) is None  # interval straddles the level
    assert F.trains(_run([0.99])) is None  # one seed: no interval, no verdict


def test_beats_is_paired_over_common_seeds():
    # a big seed-to-seed spread shared by both: separate intervals overlap, the paired one does not
    base = np.array([0.3, 0.9, 0.5, 0.7, 0.4])
    a, b = _run(list(base + 0.02)), _run(list(base))
    ok, iv = F.beats(a, b)
    assert ok is True and iv.n == 5 and iv.mean == pytest.approx(0.02)
    assert F.beats(b, a)[0] is False
    noisy = _run(list(base + np.array([0.05, -0.05, 0.04, -0.03, 0.0])))
    assert F.beats(noisy, b)[0] is False  # interval contains 0
    assert F.beats(_run([0.9]), _run([0.1]))[0] is None  # one pair


def test_near_chance_the_seed_case_is_a_large_significant_gap():
    """0.83 train vs 0.26 test over 5 seeds: near chance relative to the climb, and a significant gap."""
    run = _run([0.82, 0.84, 0.83, 0.835, 0.825], val_acc=[0.25, 0.27, 0.26, 0.255, 0.265])
    near, val, gap = F.near_chance(run, chance=0.1)
    assert near is True
    assert val.low > 0.2  # the old fixed threshold (0.2) would have said "not near chance"
    assert gap.low > 0.5 and gap.mean == pytest.approx(0.57)


def test_near_chance_other_branches():
    # test accuracy keeps up with training accuracy: not near chance
    assert F.near_chance(_run(HIGH, val_acc=[0.75, 0.8, 0.78, 0.77, 0.79]), 0.1)[0] is False
    # low test accuracy but the gap is not significant (training accuracy is low as well)
    assert F.near_chance(_run([0.12, 0.3, 0.11, 0.12, 0.13], val_acc=[0.13, 0.11, 0.12, 0.11, 0.14]), 0.1)[0] is False
    assert F.near_chance(_run([0.8], val_acc=[0.1]), 0.1)[0] is None


# --------------------------------------------------------------------------- #
# the claims, one test per branch
# --------------------------------------------------------------------------- #


def test_relu_claim_branches():
    sim = {"relu/glorot_uniform": {"activation": "relu", "init": "glorot_uniform", "normalization": "none",
                                   "residual": 0.0, "rate": 0.5, "theory_rate": 0.5, "var_last": 1e-16,
                                   "depth": 51, "grad_first_over_last": 3e-8}}
    c = F.claim_relu(facts({("relu", 1e-3): {"acc": LOW}, ("relu", 1e-4): {"acc": LOW},
                            ("relu-he-normal", 1e-3): {"acc": HIGH}}, sim))
    assert c["verdict"] == "supported"
    assert "the failure is the initialization" in c["evidence"] and "0.500" in c["evidence"]
    assert "N = 5 seeds" in c["evidence"] and "95% t interval" in c["evidence"] and "lower end" in c["evidence"]
    c = F.claim_relu(facts({("relu", 1e-3): {"acc": HIGH}, ("relu-he-normal", 1e-3): {"acc": LOW}}))
    assert c["verdict"] == "not supported" and "are not enough at this depth" in c["evidence"]
    c = F.claim_relu(facts({("relu", 1e-3): {"acc": LOW}, ("relu", 1e-4): {"acc": HIGH},
                            ("relu-he-normal", 1e-3): {"acc": MID}}))
    assert c["verdict"] == "partly" and "cannot be decided" in c["evidence"]
    c = F.claim_relu(facts({("relu", 1e-3): {"acc": [0.1]}}))
    assert c["verdict"] == "undecided" and "1 seed: no interval" in c["evidence"]
    assert F.claim_relu(facts({}))["verdict"] == "undecided"


def test_bn_claim_branches():
    small = [0.15, 0.16, 0.17, 0.16, 0.155]  # above relu's LOW on every seed, far below 0.5
    c = F.claim_bn(facts({("relu", 1e-3): {"acc": LOW}, ("relu-bn", 1e-3): {"acc": small}}))
    assert c["verdict"] == "supported" and "paired gain" in c["evidence"] and "N = 5 seeds" in c["evidence"]
    c = F.claim_bn(facts({("relu", 1e-3): {"acc": LOW}, ("relu-bn", 1e-3): {"acc": HIGH}}))
    assert c["verdict"] == "partly"  # helps, and a lot
    same = [a + d for a, d in zip(LOW, [0.01, -0.01, 0.005, -0.004, 0.0])]
    c = F.claim_bn(facts({("relu", 1e-3): {"acc": LOW}, ("relu-bn", 1e-3): {"acc": same}}))
    assert c["verdict"] == "not supported"
    c = F.claim_bn(facts({("relu", 1e-3): {"acc": LOW}, ("relu-bn", 1e-3): {"acc": same},
                          ("relu", 1e-4): {"acc": [0.1]}, ("relu-bn", 1e-4): {"acc": [0.2]}}))
    assert c["verdict"] == "partly"  # one lr decided against, one undecided
    c = F.claim_bn(facts({("relu", 1e-3): {"acc": [0.1]}, ("relu-bn", 1e-3): {"acc": [0.2]}}))
    assert c["verdict"] == "undecided"
    assert F.claim_bn(facts({("relu-bn", 1e-3): {"acc": HIGH}}))["verdict"] == "undecided"


def test_selu_alone_claim_branches():
    c = F.claim_selu_alone(facts({("selu", 1e-3): {"acc": LOW}}))
    assert c["verdict"] == "supported" and "step size" not in c["evidence"]
    c = F.claim_selu_alone(facts({("selu", 1e-3): {"acc": HIGH}}))
    assert c["verdict"] == "not supported"
    c = F.claim_selu_alone(facts({("selu", 1e-3): {"acc": LOW}, ("selu", 1e-4): {"acc": HIGH}}))
    assert c["verdict"] == "partly"
    assert "The difference between learning rates is the step size (lr 0.0001 - lr 0.001, paired" in c["evidence"]
    c = F.claim_selu_alone(facts({("selu", 1e-3): {"acc": HIGH}, ("selu", 1e-4): {"acc": LOW}}))
    assert "step size (" not in c["evidence"]  # the small step is not better here


def test_selu_bn_best_is_judged_per_learning_rate_on_test_accuracy_with_ties_stated():
    me, rival = "selu-bn-lecun-uniform", "selu-lecun-normal"
    better = [a + 0.05 for a in HIGH[:3]] + [0.86, 0.87]
    tie = [a + d for a, d in zip(HIGH, [0.01, -0.01, 0.005, -0.004, 0.0])]
    # training accuracy says nothing: the verdict reads test accuracy (val_acc)
    win = {me: {"acc": LOW, "val_acc": better}, rival: {"acc": HIGH, "val_acc": HIGH}, "relu": {"acc": LOW}}
    c = F.claim_selu_bn_best(facts({(p, 1e-3): m for p, m in win.items()}))
    assert c["verdict"] == "supported"
    assert f"ahead of 2 other run(s) (closest: {rival}, paired difference 0.044 (95% t interval (atanh scale) 0.033 to 0.055" in c["evidence"]
    assert f"the highest mean test accuracy at this lr is {me}'s" in c["evidence"]
    # a tie: the paired difference's interval contains 0 (mean 0.0002)
    c = F.claim_selu_bn_best(facts({(me, 1e-3): {"acc": HIGH, "val_acc": tie}, (rival, 1e-3): {"acc": HIGH}}))
    assert c["verdict"] == "not supported"
    assert f"tied within the interval with {rival} (paired difference 0.0002 (95% t interval" in c["evidence"]
    # a win at lr 1e-4 and a loss at lr 1e-3: judged per learning rate, so partly
    c = F.claim_selu_bn_best(facts({(me, 1e-4): {"acc": HIGH, "val_acc": better}, (rival, 1e-4): {"acc": HIGH},
                                    (me, 1e-3): {"acc": [0.168] * 5, "val_acc": LOW},
                                    (rival, 1e-3): {"acc": HIGH}}))
    assert c["verdict"] == "partly"
    at_3, at_4 = c["evidence"].split("at lr 0.0001")
    assert "at lr 0.001 it reaches test accuracy 0.099" in at_3 and f"behind {rival} (paired difference -0.729" in at_3
    assert f"highest mean test accuracy at this lr is {rival}'s, 0.828" in at_3
    assert "behind" not in at_4.split(". Test:")[0] and f"closest: {rival}" in at_4
    c = F.claim_selu_bn_best(facts({(me, 1e-3): {"acc": [0.9]}, (rival, 1e-3): {"acc": [0.8]}}))
    assert c["verdict"] == "undecided" and "1 seed: no interval" in c["evidence"] and "undecided against" in c["evidence"]
    c = F.claim_selu_bn_best(facts({(rival, 1e-3): {"acc": HIGH}}))
    assert c["verdict"] == "undecided" and c["evidence"] == "not every preset was run"


def test_compare_and_best_at():
    a, b = _run(HIGH), _run(LOW)
    assert F.compare(a, b, "acc")[0] == "ahead" and F.compare(b, a, "acc")[0] == "behind"
    assert F.compare(a, a, "acc")[0] == "tied" and F.compare(_run([0.9]), b, "acc")[0] == "undecided"
    assert F.compare(a, b, "acc")[1].kind == "difference"  # paired accuracies: atanh scale, inside [-1, 1]
    assert F.best_at({"a": a, "b": b}, "a", "acc")[0] is True
    assert F.best_at({"a": a, "b": b, "c": a}, "a", "acc")[0] is False  # a tie is not the best
    assert F.best_at({"a": a, "b": b, "c": _run([0.1])}, "a", "acc")[0] is None


def test_val_acc_claim_the_seed_case_is_supported():
    """The report's selu-bn-random-uniform at lr 1e-4: 0.83 train, 0.26 test. Over 5 seeds that is
    near chance relative to the climb, with a significant gap, even though 0.26 > 0.2."""
    c = F.claim_val_acc(facts({("selu-bn-random-uniform", 1e-4): {
        "acc": [0.82, 0.84, 0.83, 0.835, 0.825], "val_acc": [0.25, 0.27, 0.26, 0.255, 0.265],
        "train_eval_acc": [0.24, 0.26, 0.25, 0.25, 0.25]}}))
    assert c["verdict"] == "supported"
    assert c["evidence"].startswith("1 of the 1 BN runs whose training accuracy climbed have test accuracy near chance.")
    assert "train - test gap (paired) 0.570 (95% t interval" in c["evidence"] and "N = 5 seeds" in c["evidence"]


def test_val_acc_claim_other_branches():
    near = {"acc": HIGH, "val_acc": [0.25, 0.27, 0.26, 0.255, 0.265]}
    good = {"acc": HIGH, "val_acc": [0.75, 0.8, 0.78, 0.77, 0.79]}
    assert F.claim_val_acc(facts({("relu-bn", 1e-3): good}))["verdict"] == "not supported"
    c = F.claim_val_acc(facts({("relu-bn", 1e-3): near, ("selu-bn-lecun-uniform", 1e-3): good}))
    assert c["verdict"] == "partly" and c["evidence"].startswith("1 of the 2 BN runs")
    c = F.claim_val_acc(facts({("relu-bn", 1e-3): {"acc": LOW}}))
    assert c["verdict"] == "undecided" and "pattern cannot be seen" in c["evidence"] and "one seed" not in c["evidence"]
    c = F.claim_val_acc(facts({("relu-bn", 1e-3): {"acc": [0.83], "val_acc": [0.26]}}))
    assert c["verdict"] == "undecided" and "a run with one seed has no interval" in c["evidence"]
    nan = float("nan")
    c = F.claim_val_acc(facts({("relu-bn", 1e-3): near,
                               ("selu-bn-lecun-uniform", 1e-3): {"acc": HIGH, "val_acc": [0.26] + [nan] * 4}}))
    assert c["verdict"] == "partly" and "(1 undecided)" in c["evidence"]  # one test accuracy: no interval


def test_step_size_note():
    assert F.step_size_note(facts({("selu", 1e-3): {"acc": HIGH}})) == ""
    note = F.step_size_note(facts({("selu", 1e-3): {"acc": LOW}, ("selu", 1e-4): {"acc": HIGH},
                                   ("relu", 1e-3): {"acc": MID}}))
    assert note.startswith("Step size matters as much as the recipe: at lr 0.001 the best final training accuracy is "
                           "0.500 (95% t interval")
    assert "(relu); at lr 0.0001 the best final training accuracy is 0.828" in note and note.endswith("(selu).")


def _sim_tables(with_fields: bool):
    from propagate.report.compute import SimulationTables

    layers = np.arange(0, 8)
    rows = []
    for label, act, init, norm, rate in (("relu/glorot_uniform", "relu", "glorot_uniform", "none", 0.5),
                                         ("relu/glorot_uniform+BN", "relu", "glorot_uniform", "batchnorm", 1.0)):
        for layer in layers:
            r = {"config": label, "layer": layer, "pre_var": rate ** layer, "post_mean": 0.1,
                 "grad_norm": 2.0 ** (-layer), "dead_frac": 0.5}
            if with_fields:
                r.update(activation=act, init=init, normalization=norm, residual=0.0)
            rows.append(r)
    t = pd.DataFrame(rows)
    return SimulationTables(t, t.copy(), [])


@pytest.mark.parametrize("with_fields", [True, False])
def test_collect_facts_end_to_end(with_fields):
    sims = _sim_tables(with_fields)
    h = history({("relu", 1e-3): {"acc": LOW}, ("relu-bn", 1e-3): {"acc": [0.15, 0.16, 0.17, 0.16, 0.155]}})
    selu = {"lambda": "1.05", "alpha": "1.67", "spectral_norm": 0.78, "attracting": True,
            "stability_box": {"max_spectral_norm": 0.99}}
    f = F.collect_facts(selu, sims, None, h, None, None, SimpleNamespace(lrs=(1e-3,), epochs=2, seed=0), classes=10)
    assert f["chance"] == 0.1 and len(f["claims"]) == 5
    assert all(c["verdict"] in F.VERDICTS for c in f["claims"])
    s = F.sim_config(f, "relu", "glorot_uniform")
    assert s["rate"] == pytest.approx(0.5) and s["grad_rate"] == pytest.approx(2.0) and s["depth"] == 7
    assert F.sim_config(f, "relu", "glorot_uniform", "batchnorm")["rate"] == pytest.approx(1.0)
    assert F.sim_config(f, "relu", "he_normal") == {}
    assert [c["verdict"] for c in f["claims"][:2]] == ["supported", "supported"]
    json.dumps(f)


def test_flagged_layers_are_the_tables_disagree_count_and_the_page_says_so():
    """The count the page prints is the count of ``disagree`` rows in data/simulation_layers.csv (every layer, 0 too),
    by statistic; BN's gradient flags are explained, with the layer-1 gradient measured against theory."""
    from propagate.report.page import flag_note, grad_flag_note, simulation_table

    sims = _sim_tables(True)
    t = sims.sim
    bn = t["config"] == "relu/glorot_uniform+BN"
    t["judged"] = True
    t["disagree_in"] = ""
    t.loc[bn & (t["layer"].between(1, 5)), "disagree_in"] = "grad_norm"
    t.loc[bn & (t["layer"] == 0), "disagree_in"] = "post_mean"
    t.loc[bn & (t["layer"] == 2), "disagree_in"] = "pre_var,grad_norm"
    t.loc[~bn & (t["layer"] == 3), "disagree_in"] = "pre_q"
    t["disagree"] = t["disagree_in"] != ""
    sims.theory["grad_norm_signal"] = 0.75 * sims.theory["grad_norm"]  # theory at layer 1: 0.5 * 1.25 = 0.625
    f = {"simulation": F.simulation_facts(sims)}
    s = F.sim_config(f, "relu", "glorot_uniform", "batchnorm")
    assert s["flagged"] == 6 == int(t.loc[bn, "disagree"].sum())  # layers, not statistics (7 of those)
    assert s["flagged_in"] == {"post_mean": 1, "grad_norm": 5, "pre_var": 1} and s["judged"] is True
    assert s["grad_first"] == 0.5 and s["theory_grad_first"] == pytest.approx(0.625)
    assert F.sim_config(f, "relu", "glorot_uniform")["flagged"] == 1
    table = simulation_table(f)
    assert "layers flagged (statistic: layers)" in table and "| 6 (post_mean: 1, grad_norm: 5, pre_var: 1) |" in table
    note = flag_note(f)
    assert "2 of the 2 configurations have flagged layers (7 layers in all)" in note
    assert "`relu/glorot_uniform+BN`: 5 layers, layer-1 gradient 0.500 measured against 0.625" in note
    assert "infinite-batch limit" in note and "Isolated flags (`relu/glorot_uniform`: 1 layer(s), at most 2)" in note
    assert s["flagged_from"] == 0 and s["flagged_to"] == 5
    assert grad_flag_note(f).startswith("The gradient norm is flagged against theory at 5 layers (`relu/glorot_uniform+BN` 5;")
    t.loc[~bn & (t["layer"] >= 4), "disagree_in"] = "pre_var"  # 5 layers: not isolated
    t["disagree"] = t["disagree_in"] != ""
    note = flag_note({"simulation": F.simulation_facts(sims)})
    assert "Flagged elsewhere: `relu/glorot_uniform`: 5 layers between layer 3 and 7 (pre_q: 1, pre_var: 4): there" in note
    assert "Isolated" not in note
    t["disagree"], t["disagree_in"] = False, ""
    f = {"simulation": F.simulation_facts(sims)}
    assert flag_note(f).endswith("No layer is flagged.") and "| 0 |" in simulation_table(f)
    assert grad_flag_note(f) == "No layer's gradient norm is flagged against theory."
    t["judged"] = False
    assert "no layer is judged" in flag_note({"simulation": F.simulation_facts(sims)})
