"""The scaling grid of the largest stable learning rate (propagate.scaling)."""

import math

import numpy as np
import pytest

from propagate.errors import UserError
from propagate.scaling import (AXES, BASE, Cell, ScalingOptions, cell_epochs, cell_spec, cells, fit_exponent,
                               scaling_grid)


def test_cells_one_factor_at_a_time():
    grid = cells()
    assert grid[0] == Cell(**BASE)
    assert len(grid) == len(set(grid)) == 1 + sum(len(v) - 1 for v in AXES.values())
    assert set(grid[0].axes()) == set(AXES)
    assert Cell(64, 50, 128, 0.9).axes() == ["width"]
    spec = cell_spec("selu-bn-lecun-uniform", Cell(64, 6, 32, 0.99))
    assert spec.widths == (784,) + (64,) * 6 and spec.batchnorm and spec.out_features == 10


def test_fit_exponent_recovers_a_power_law():
    x = np.array([64, 128, 256, 512, 1024])
    exact = fit_exponent(x, 3e-2 / x)
    assert exact["slope"] == pytest.approx(-1.0, abs=1e-12) and exact["n_points"] == 5
    rng = np.random.default_rng(0)
    noisy = fit_exponent(x, 3e-2 * x ** -0.5 * np.exp(rng.normal(0, 0.1, size=5)))
    assert noisy["slope_ci_low"] < -0.5 < noisy["slope_ci_high"]
    # the interval is the t interval of the OLS slope: half width t_{0.975,3} * stderr
    from scipy import stats
    r = stats.linregress(np.log(x), np.log(3e-2 * x ** -0.5 * np.exp(np.random.default_rng(0).normal(0, 0.1, 5))))
    assert noisy["slope_ci_high"] - noisy["slope"] == pytest.approx(stats.t.ppf(0.975, 3) * r.stderr)
    assert math.isnan(fit_exponent([1, 2], [1.0, math.nan])["slope"])


def test_fit_exponent_widens_the_interval_by_the_grids_resolution():
    # three limits exactly on a line: OLS has zero residuals, yet each lies anywhere in its bracket [y, 1.33 y)
    x = np.array([128.0, 256.0, 512.0])
    y = 1e-2 / x
    bare = fit_exponent(x, y)
    assert bare["slope"] == pytest.approx(-1.0) and bare["slope_ci_high"] - bare["slope"] == pytest.approx(0, abs=1e-9)
    wide = fit_exponent(x, y, 1.33 * y)
    lx = np.log(x)
    w = (lx - lx.mean()) / ((lx - lx.mean()) ** 2).sum()
    half = 1.96 * math.sqrt((w ** 2).sum() * math.log(1.33) ** 2 / 12)  # uniform in ln y over ln 1.33
    assert wide["slope"] == pytest.approx(-1.0)
    assert wide["slope_ci_high"] - wide["slope"] == pytest.approx(half, rel=1e-9)
    assert wide["slope"] - wide["slope_ci_low"] == pytest.approx(half, rel=1e-9)
    # an unknown upper end (NaN, a censored bracket) adds nothing for that point
    assert fit_exponent(x, y, [math.nan] * 3)["slope_ci_high"] == pytest.approx(bare["slope_ci_high"])


def test_cell_epochs_give_every_cell_the_base_cells_steps():
    # 5,000 images: the base's epoch is ceil(5000/128) = 40 steps; batch 512 has 10 a epoch, so 4 epochs
    assert cell_epochs(Cell(256, 50, 512, 0.9), 5000) == 4
    assert cell_epochs(Cell(256, 50, 128, 0.9), 5000) == 1
    assert cell_epochs(Cell(256, 50, 32, 0.9), 5000) == 1  # 157 steps: more than enough already
    assert cell_epochs(Cell(256, 50, 512, 0.9), 60000) == 4  # ceil(469 / 118)
    assert cell_epochs(Cell(256, 50, 512, 0.9), 5000, epochs=2) == 8


def _step_trainer(spec, options, seeds, dataset):
    # trains below 1e-3, and only with at least 30 optimizer steps
    steps = options.epochs * math.ceil(dataset.n_train / options.batch_size)
    ok = options.lr <= 1e-3 and steps >= 30
    return [{"seed": s, "diverged": False, "epochs_done": options.epochs, "loss": 1.0, "acc": 0.9 if ok else 0.1,
             "val_loss": 1.0, "val_acc": 0.5, "train_eval_acc": 0.5} for s in seeds]


@pytest.mark.parametrize("equal_steps", [True, False])
def test_equal_steps_budget_trains_large_batches_longer(equal_steps):
    from propagate.data import Dataset

    z = np.zeros((5000, 1), np.float32)  # only n_train matters to the fake trainer
    ds = Dataset("fake", z, np.zeros(5000, np.int64), z[:10], np.zeros(10, np.int64), "test")
    opts = ScalingOptions(seeds=(0, 1), lrs=(1e-4, 1e-3, 1e-2), refine=0, equal_steps=equal_steps)
    res = scaling_grid(ds, ["tanh-glorot-uniform"], axes={"batch_size": (128, 512)}, options=opts,
                       trainer=_step_trainer, predictor=_predictor)
    t = res.cells.set_index("batch_size")
    assert t.loc[128, "max_lr_measured"] == pytest.approx(1e-3) and t.loc[128, "epochs"] == 1
    if equal_steps:  # 4 epochs of 10 steps
        assert t.loc[512, "epochs"] == 4 and t.loc[512, "max_lr_measured"] == pytest.approx(1e-3)
    else:  # 10 steps: fails at every rate, no measured limit
        assert t.loc[512, "epochs"] == 1 and math.isnan(t.loc[512, "max_lr_measured"])


def _trainer(spec, options, seeds, dataset):
    # trains below lr* = 0.5 / (width * depth) * sqrt(1 - rho) / 0.316 (the sign-step law), fails above
    width, depth = spec.widths[1], spec.depth
    limit = 0.5 / (width * depth) * math.sqrt(1 - options.rho) / math.sqrt(0.1)
    ok = options.lr <= limit
    return [{"seed": s, "diverged": False, "epochs_done": 1, "loss": 1.0, "acc": 0.9 if ok else 0.1,
             "val_loss": 1.0, "val_acc": 0.5, "train_eval_acc": 0.5} for s in seeds]


def _predictor(spec, options, dataset):
    width, depth = spec.widths[1], spec.depth
    v = 0.4 / (width * depth)
    return {"max_lr_predicted": v, "max_lr_predicted_ci_low": v / 1.1, "max_lr_predicted_ci_high": v * 1.1,
            "per_seed": [{"seed": s, "max_lr_predicted": v * (1 + 0.01 * s)} for s in (0, 1, 2)]}


def test_scaling_grid_tables_and_exponents(tmp_path):
    from propagate.data import Dataset

    z = np.zeros((10, 784), np.float32)
    ds = Dataset("fake", z, np.zeros(10, np.int64), z, np.zeros(10, np.int64), "test")
    axes = {"width": (64, 256), "depth": (6, 50), "rho": (0.9, 0.99)}
    opts = ScalingOptions(seeds=(0, 1), lrs=tuple(10 ** (-7 + 0.5 * i) for i in range(10)), refine=8)
    res = scaling_grid(ds, ["selu-lecun-normal"], axes=axes, options=opts, out_dir=tmp_path, trainer=_trainer,
                       predictor=_predictor)
    t = res.cells.set_index("cell")
    assert len(t) == 4  # base, width 64, depth 6, rho 0.99
    base = t.loc[Cell(**BASE).name]
    assert base["max_lr_measured"] <= 0.5 / (256 * 50) < base["max_lr_bad"]
    assert base["ratio"] == pytest.approx(1.25, rel=0.01) and base["within_2x"]
    f = res.fits.set_index(["axis", "source"])
    assert f.loc[("width", "measured"), "slope"] == pytest.approx(-1.0, abs=0.02)
    assert f.loc[("depth", "predicted"), "slope"] == pytest.approx(-1.0, abs=0.02)
    rho = t.loc[Cell(256, 50, 128, 0.99).name, "max_lr_measured"] / base["max_lr_measured"]
    assert rho == pytest.approx(math.sqrt(0.01 / 0.1), rel=0.02)
    assert (tmp_path / "cells.csv").is_file() and (tmp_path / "fits.csv.meta.json").is_file()
    from propagate import load

    loaded = load(tmp_path)
    assert {"cells", "fits"} <= set(loaded) and loaded.meta["fits"]["versions"]
    got = loaded["cells"].set_index("cell").loc[Cell(**BASE).name, "max_lr_measured"]
    assert got == pytest.approx(base["max_lr_measured"], rel=1e-9)
    fits = loaded["fits"].set_index(["axis", "source"])
    assert fits.loc[("width", "measured"), "slope"] == pytest.approx(f.loc[("width", "measured"), "slope"], rel=1e-9)


@pytest.mark.parametrize("argv, words", [
    (["--configs", "nope"], "--configs takes distinct names"),
    (["--configs", "relu-he-normal,relu-he-normal"], "--configs takes distinct names"),
    (["--axes", "width,heads"], "--axes takes distinct names"),
    (["--workers", "2", "--scheduler", "tcp://127.0.0.1:1"], "scheduler"),
])
def test_cli_refuses_bad_grids_in_one_line(argv, words, capsys, tmp_path):
    from propagate.cli import main

    assert main(["scaling", *argv, "--out", str(tmp_path / "s"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("propagate: error:") and words in err[0]
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("value, words", [("-1", "must be >= 0, got -1"), ("1.5", "not a whole number: '1.5'")])
def test_extend_flag_takes_a_whole_number(value, words, capsys, tmp_path):
    from propagate.cli import main

    for command in ("scaling", "trainability"):
        with pytest.raises(SystemExit) as exc:
            main([command, "--extend", value, "--out", str(tmp_path / "s"), "--no-progress"])
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1] == f"propagate: error: argument --extend: {words}"
        assert not (tmp_path / "s").exists()


def test_a_folder_that_is_not_a_scaling_runs_is_refused_before_any_work(capsys, tmp_path, monkeypatch):
    """Another command's run folder or the user's own files: one line, exit 2, before the data is loaded, and
    nothing written; a folder of an earlier scaling run (its trainability folder and tables) is accepted."""
    from propagate import data
    from propagate.cli import main
    from propagate.scaling import check_scaling_dir

    monkeypatch.setattr(data, "load_dataset", lambda *a, **k: pytest.fail("the data was loaded"))
    user = tmp_path / "mine"
    (user / "notes").mkdir(parents=True)
    (user / "notes" / "plan.txt").write_text("mine")
    train_run = tmp_path / "run"
    train_run.mkdir()
    (train_run / "checkpoint.pt").write_bytes(b"x")
    (train_run / "identity.json").write_text("{}")
    for folder, entry in ((user, "notes"), (train_run, "checkpoint.pt")):
        before = sorted(p.relative_to(folder) for p in folder.rglob("*"))
        assert main(["scaling", "--dataset", "mnist-5k", "--out", str(folder), "--no-progress"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("propagate: error: --out") and repr(entry) in err[0], err
        assert sorted(p.relative_to(folder) for p in folder.rglob("*")) == before
    assert (user / "notes" / "plan.txt").read_text() == "mine"
    earlier = tmp_path / "scaling"
    (earlier / "trainability").mkdir(parents=True)
    for name in ("cells.csv", "cells.csv.meta.json", "fits.csv", "fits.csv.meta.json", ".cells.csv.x1y2.tmp",
                 ".fits.csv.0a1b2c3d.bak"):
        (earlier / name).write_text("")
    assert check_scaling_dir(earlier) == earlier and check_scaling_dir(tmp_path / "new") == tmp_path / "new"
    (earlier / "fits.csv").unlink()
    (earlier / "fits.csv").mkdir()
    with pytest.raises(UserError, match="'fits.csv' is not a file"):
        check_scaling_dir(earlier)
