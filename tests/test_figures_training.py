"""Ensemble figures: the mean over seeds and its t band, from per-seed tables."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest

from propagate.report.figures_training import plot_layer_drift_bands, plot_training_bands, seed_band
from propagate.report.style import colour

T975_2 = 4.302652730  # t_{0.975, 2}: three seeds


def _expit(u):
    return 1 / (1 + math.exp(-u))


def test_seed_band_is_the_t_interval_on_the_logit_scale_at_each_x():
    """Accuracies: the t interval built on the logit scale (delta method), so the band stays inside [0, 1]."""
    t = pd.DataFrame({"seed": [0, 1, 2, 0, 1, 2, 0, 0, 1, 2], "epoch": [1, 1, 1, 2, 2, 2, 3, 4, 4, 4],
                      "acc": [0.2, 0.3, 0.4, 0.5, 0.5, 0.8, 0.9, 0.93, 0.99, 0.999]})
    b = seed_band(t, "epoch", "acc")
    assert list(b["epoch"]) == [1, 2, 3, 4] and list(b["n"]) == [3, 3, 1, 3]
    half = T975_2 * 0.1 / math.sqrt(3) / (0.3 * 0.7)
    assert b["mean"][0] == pytest.approx(0.3) and b["high"][0] == pytest.approx(_expit(math.log(0.3 / 0.7) + half))
    s = np.std([0.5, 0.5, 0.8], ddof=1)
    assert b["low"][1] == pytest.approx(_expit(math.log(1.5) - T975_2 * s / math.sqrt(3) / (0.6 * 0.4)))
    assert b["mean"][2] == 0.9 and math.isnan(b["low"][2]) and math.isnan(b["high"][2])
    m = np.mean([0.93, 0.99, 0.999])
    assert m + T975_2 * np.std([0.93, 0.99, 0.999], ddof=1) / math.sqrt(3) > 1  # the plain interval leaves [0, 1]
    assert 0 < b["low"][3] < m < b["high"][3] < 1


def test_seed_band_on_log_scale_is_the_geometric_mean():
    t = pd.DataFrame({"seed": [0, 1, 2, 3], "layer": [1] * 4, "pre_var": [1e-4, 1e-2, 1.0, -1.0]})
    b = seed_band(t, "layer", "pre_var", log=True)
    assert b["n"][0] == 3  # the non-positive value is left out
    assert b["mean"][0] == pytest.approx(1e-2)  # 10^mean(-4, -2, 0)
    assert b["low"][0] == pytest.approx(10 ** (-2 - T975_2 * 2 / math.sqrt(3)))
    assert b["low"][0] > 0


def _history(seeds=3):
    rows = []
    rng = np.random.default_rng(0)
    for run, act, init, norm, top in (("selu-lecun-normal (lr 0.0001)", "selu", "lecun_normal", "none", 0.8),
                                      ("relu-bn (lr 0.0001)", "relu", "glorot_uniform", "batchnorm", 0.12)):
        for s in range(seeds):
            for e in (1, 2, 3):
                acc = 0.1 + (top - 0.1) * e / 3 + 0.02 * rng.standard_normal()
                rows.append({"run": run, "preset": run.split()[0], "seed": s, "epoch": e, "acc": acc,
                             "val_acc": acc - 0.05, "loss": 2.3 - e * 0.4 * top, "activation": act, "init": init,
                             "normalization": norm})
    return pd.DataFrame(rows)


def test_training_bands_figure(tmp_path):
    from matplotlib.collections import PolyCollection

    from propagate.report.style import save_figure

    h = _history()
    reported = pd.DataFrame({"preset": ["relu-bn"], "epoch": [1], "acc": [0.25], "val_acc": [0.24]})
    fig = plot_training_bands(h, reported, title="test")
    ax = fig.axes[0]
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 2  # one band per run
    lines = {l.get_label(): l for l in ax.get_lines()}
    selu = lines["selu-lecun-normal (lr 0.0001)"]
    assert selu.get_color() == colour("selu", "lecun_normal") and selu.get_linestyle() == "-"
    assert lines["relu-bn (lr 0.0001)"].get_linestyle() == "--"
    assert np.allclose(selu.get_ydata(), seed_band(h[h["run"] == selu.get_label()], "epoch", "acc")["mean"])
    assert "N = 3 seeds" in fig._suptitle.get_text() and ax.get_xlabel() == "epoch"
    save_figure(fig, tmp_path / "bands.png")
    assert (tmp_path / "bands.png").stat().st_size > 20_000


def test_one_seed_draws_no_band():
    from matplotlib.collections import PolyCollection

    fig = plot_training_bands(_history(seeds=1))
    assert not [c for c in fig.axes[0].collections if isinstance(c, PolyCollection)]
    assert "N = 1 seeds" in fig._suptitle.get_text()


def test_layer_drift_bands_figure():
    from matplotlib.collections import PolyCollection

    rows = []
    for s in range(4):
        for e in (0, 1):
            for layer in range(0, 6):
                for mode in ("train", "eval"):
                    rows.append({"run": "r", "seed": s, "epoch": e, "mode": mode, "layer": layer,
                                 "pre_var": 2.0 ** (-layer) * (1 + e) * (1.1 if s % 2 else 0.9)})
    layers = pd.DataFrame(rows)
    fig = plot_layer_drift_bands(layers, ["r"])
    ax = fig.axes[0]
    assert ax.get_yscale() == "log" and len([c for c in ax.collections if isinstance(c, PolyCollection)]) == 2
    ep0 = [l for l in ax.get_lines() if l.get_label() == "at initialization"][0]
    assert list(ep0.get_xdata()) == [1, 2, 3, 4, 5]  # layer 0 (the input) is not a hidden layer
    assert np.allclose(ep0.get_ydata(), 2.0 ** -np.arange(1, 6) * math.sqrt(0.99))  # geometric mean of 0.9, 1.1
    assert "geometric mean over seeds" in fig._suptitle.get_text() and "N = 4 seeds" in fig._suptitle.get_text()


def test_demo_points_only_on_the_figure_of_their_learning_rate():
    """The lecture demo's numbers were measured at lr 1e-3: drawn on that figure, not on the lr 1e-4 one."""
    from propagate.report.compute import DEMO_LR, reported_table

    summary = pd.DataFrame({"preset": ["relu-bn", "selu-lecun-normal"]})
    reported = reported_table(summary)
    assert DEMO_LR == 1e-3 and set(reported["lr"]) == {1e-3} and list(reported["preset"].unique()) == ["relu-bn"]
    assert list(reported["acc"]) == [0.2476, 0.2478, 0.2054]  # the write-up's run 2

    def squares(fig):
        return [l for l in fig.axes[0].get_lines() if l.get_marker() == "s"]

    for lr, drawn in ((1e-4, 0), (1e-3, 1)):
        h = _history().assign(lr=lr)
        fig = plot_training_bands(h, reported)
        assert len(squares(fig)) == drawn, lr
        legend = [t.get_text() for t in fig.legends[0].get_texts()]
        assert any("lecture demo" in t for t in legend) == bool(drawn)
        if drawn:
            assert list(squares(fig)[0].get_ydata()) == [0.2476, 0.2478, 0.2054]
