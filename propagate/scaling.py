"""The scaling law of the largest stable learning rate: measured and predicted over width, depth, batch size and rho.

One factor at a time around a base cell (width 256, depth 50, batch 128,
RMSprop rho 0.9), for four configurations of plain stacks
``784 -> depth x Dense(width) -> 10`` (every hidden layer ``width`` wide, so
width is one number): SELU/lecun_normal, SELU+BN/lecun_uniform (BN on the input
of hidden layers 2..depth and of the readout, the lecture demo's placement),
tanh/glorot_uniform and ReLU/he_normal. Every (configuration, cell) is one
configuration of :func:`propagate.trainability.trainability` (with the cell's
batch size and rho as its training overrides), so the whole grid runs as one set
of points on the runner (in process or on Dask) and resumes:

- measured: ``max_lr_measured``, the largest learning rate whose seed ensemble
  *trains* (the lower 95% bound of the running training accuracy of its last
  epoch above ``level``) on a log grid, extended upwards ``extend`` grid steps
  where the grid's top still trains, and bisected ``refine`` times towards the
  smallest rate above it that does not. Every cell trains at least as many
  optimizer steps as the base cell's ``epochs`` epochs (``equal_steps``): on
  mnist-5k's 4,000 training images one epoch is 32 steps at batch 128 but 8 at
  batch 512, too few for the first steps' excursion to settle, so batch 512
  trains 4 epochs (:func:`cell_epochs`). Stability is a property of steps, not of images seen;
- predicted: ``max_lr_predicted`` of :func:`propagate.lr_limit.predict_max_lr`
  (the optimizer's own first steps), per seed and their geometric mean with its
  95% interval;
- ``ratio`` = measured / predicted and ``within_2x`` = ``0.5 <= ratio <= 2``.

:func:`fit_exponents` fits ``ln lr* = a + b ln x`` along the width and depth
axes (ordinary least squares, Student t 95% interval of ``b``, widened for the
measured limits by the grid's resolution: :func:`fit_exponent`), measured and
predicted, beside the sign-step picture's exponents
(:data:`SIGN_STEP_EXPONENTS`; ``derivations/trainability.md``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

from propagate.errors import UserError
from propagate.io import run_metadata, write_table
from propagate.trainability import TrainabilityOptions, trainability

__all__ = [
    "AXES",
    "BASE",
    "CONFIGS",
    "SIGN_STEP_EXPONENTS",
    "Cell",
    "ScalingOptions",
    "ScalingResult",
    "cells",
    "cell_epochs",
    "check_scaling_dir",
    "cell_spec",
    "fit_exponent",
    "fit_exponents",
    "scaling_grid",
]

#: The four configurations: (activation, initializer, BatchNorm).
CONFIGS = {
    "selu-lecun-normal": ("selu", "lecun_normal", False),
    "selu-bn-lecun-uniform": ("selu", "lecun_uniform", True),
    "tanh-glorot-uniform": ("tanh", "glorot_uniform", False),
    "relu-he-normal": ("relu", "he_normal", False),
}
#: The base cell and the values each axis takes (one factor at a time).
BASE = {"width": 256, "depth": 50, "batch_size": 128, "rho": 0.9}
AXES = {"width": (64, 128, 256, 512, 1024), "depth": (6, 12, 25, 50), "batch_size": (32, 128, 512),
        "rho": (0.9, 0.99)}
#: d ln lr* / d ln x of the sign-step picture: coherent sign steps (a rank-one step aligned with the inputs, adding
#: up over layers) and incoherent ones (random signs), the two ends it allows (derivations/trainability.md).
SIGN_STEP_EXPONENTS = {"width": {"coherent": -1.0, "incoherent": -0.5},
                       "depth": {"coherent": -1.0, "incoherent": -0.5}}


@dataclass(frozen=True)
class Cell:
    """One point of the scaling grid: the network's width and depth and the training's batch size and rho."""

    width: int
    depth: int
    batch_size: int
    rho: float

    @property
    def name(self) -> str:
        return f"n{self.width}-L{self.depth}-B{self.batch_size}-rho{self.rho:g}"

    def axes(self, base: dict | None = None, axes: dict | None = None) -> list[str]:
        """The axes of ``axes`` (default :data:`AXES`) this cell lies on around ``base`` (default :data:`BASE`)."""
        base, axes = base or BASE, axes or AXES
        return [a for a in axes if all(getattr(self, b) == base[b] for b in base if b != a)]


def cells(axes: dict | None = None, base: dict | None = None) -> list[Cell]:
    """The grid's cells, one factor at a time around ``base``, each once (the base first)."""
    axes, base = axes or AXES, base or BASE
    out = [Cell(**base)]
    for axis, values in axes.items():
        for v in values:
            c = Cell(**{**base, axis: v})
            if c not in out:
                out.append(c)
    return out


def cell_spec(config: str, cell: Cell):
    """The :class:`~propagate.spec.NetworkSpec` of ``config`` at ``cell``: 784 -> depth x Dense(width) -> 10."""
    from propagate.spec import NetworkSpec

    if config not in CONFIGS:
        raise UserError(f"unknown scaling configuration {config!r}; use one of {', '.join(CONFIGS)}")
    act, init, bn = CONFIGS[config]
    return NetworkSpec.stack(cell.depth, cell.width, input_dim=784, first_width=None, activation=act, init=init,
                             batchnorm=bn, out_features=10)


@dataclass(frozen=True)
class ScalingOptions:
    """How the grid measures: ``seeds`` per ensemble, ``epochs`` per run, ``criterion``/``level`` of *trains*,
    the learning rates ``lrs`` tried at every cell and ``refine`` bisection steps (see the module docstring)."""

    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: int = 1
    criterion: str = "acc"
    level: float = 0.3
    lrs: tuple[float, ...] = tuple(10 ** (-6 + 0.5 * i) for i in range(10))
    refine: int = 2
    extend: int = 3
    equal_steps: bool = True
    threads: int | None = None

    def trainability_options(self):

        return TrainabilityOptions(seeds=self.seeds, epochs=self.epochs, criterion=self.criterion, level=self.level,
                                   refine=self.refine, extend=self.extend, predict=True, sharpness=False,
                                   threads=self.threads)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["seeds"], d["lrs"] = list(self.seeds), list(self.lrs)
        return d


def cell_epochs(cell: Cell, n_train: int, epochs: int = 1, base: dict | None = None) -> int:
    """Epochs that give ``cell`` at least the optimizer steps of ``epochs`` epochs at the base cell's batch size.

    An epoch is ``ceil(n_train / batch_size)`` steps (the last batch partial),
    so at 5,000 images and ``epochs=1`` the base's 40 steps take 4 epochs at
    batch 512 (10 steps each) and one at batch 32 (157 steps).
    """
    base_batch = (base or BASE)["batch_size"]
    want = epochs * math.ceil(n_train / base_batch)
    return max(epochs, math.ceil(want / math.ceil(n_train / cell.batch_size)))


@dataclass
class ScalingResult:
    """``cells``: one row per (configuration, cell); ``fits``: one row per (configuration, axis, source);
    ``trainability``: the :class:`propagate.trainability.TrainabilityResult` underneath."""

    cells: object
    fits: object
    trainability: object
    meta: dict = field(default_factory=dict)


def fit_exponent(x: Sequence[float], y: Sequence[float], upper: Sequence[float] | None = None) -> dict:
    """OLS slope of ``ln y`` on ``ln x`` with its 95% interval.

    Without ``upper``: the Student t interval (``n - 2`` degrees of freedom).
    With ``upper`` (a measured limit's bracket: each true limit lies between
    ``y`` and ``upper``, NaN where unknown), each point also carries the
    grid's resolution, a uniform error in ``ln y`` over ``ln(upper / y)``
    (variance ``ln(upper / y)^2 / 12``); its effect on the slope,
    ``sum_i w_i^2 var_i`` with the OLS weights ``w_i = (x_i - mean x) / S_xx``,
    is added in quadrature (at 1.96 standard errors) to the t interval's half
    width. Three limits on one line of the grid then no longer give an
    interval of zero width.
    """
    import numpy as np
    from scipy import stats

    x, y = list(x), list(y)
    up = list(upper) if upper is not None else [math.nan] * len(x)
    pts = [(math.log(a), math.log(b), math.log(u / b) if u > b and math.isfinite(u) else 0.0)
           for a, b, u in zip(x, y, up) if a > 0 and b > 0 and math.isfinite(b)]
    n = len(pts)
    if n < 2 or len({p[0] for p in pts}) < 2:
        return {"slope": math.nan, "slope_ci_low": math.nan, "slope_ci_high": math.nan, "n_points": n}
    lx, ly, width = np.array(pts).T
    res = stats.linregress(lx, ly)
    if n == 2:
        return {"slope": float(res.slope), "slope_ci_low": math.nan, "slope_ci_high": math.nan, "n_points": n}
    half = float(stats.t.ppf(0.975, n - 2)) * float(res.stderr)
    w = (lx - lx.mean()) / float(((lx - lx.mean()) ** 2).sum())
    res_se = math.sqrt(float((w ** 2 * width ** 2 / 12).sum()))
    half = math.hypot(half, 1.96 * res_se)
    return {"slope": float(res.slope), "slope_ci_low": float(res.slope) - half,
            "slope_ci_high": float(res.slope) + half, "n_points": n}


def _within(ratio: float, censored: bool) -> bool | None:
    """``0.5 <= ratio <= 2``; None without a measured limit, and for a censored one (a lower bound) unless even that
    bound is more than 2x the prediction (then a sure miss)."""
    if not math.isfinite(ratio):
        return None
    if censored:
        return False if ratio > 2.0 else None
    return bool(0.5 <= ratio <= 2.0)


def _cell_rows(configs, grid_cells, result, base, axes, epochs: dict) -> list[dict]:
    """One row per (configuration, cell) from the trainability tables (``epochs``: each cell's epochs)."""
    cfg = result.configs.set_index("config")
    rows = []
    for config in configs:
        for cell in grid_cells:
            r = cfg.loc[f"{config}@{cell.name}"]
            ratio = float(r["ratio"])
            rows.append({"config": config, "cell": cell.name, "axes": ",".join(cell.axes(base, axes)), **asdict(cell),
                         "max_lr_measured": float(r["max_lr_measured"]), "max_lr_bad": float(r["max_lr_bad"]),
                         "censored": bool(r["censored"]), "max_lr_predicted": float(r["max_lr_predicted"]),
                         "max_lr_predicted_ci_low": float(r["max_lr_predicted_ci_low"]),
                         "max_lr_predicted_ci_high": float(r["max_lr_predicted_ci_high"]), "ratio": ratio,
                         "within_2x": _within(ratio, bool(r["censored"])), "epochs": epochs.get(cell, math.nan),
                         "criterion": r.get("criterion", ""), "steps": r.get("prediction_steps", math.nan),
                         "prediction_note": r.get("prediction_note", "")})
    return rows


def fit_exponents(cell_table, predictions=None) -> object:
    """Per configuration and axis (width, depth): the measured and the predicted exponent, and the sign-step ones.

    ``predictions`` (the trainability ``predictions`` table, per seed) makes the
    predicted fit use every seed's value; without it, the per-cell geometric means.
    """
    import pandas as pd

    rows = []
    for config, d in cell_table.groupby("config", sort=False):
        for axis in ("width", "depth"):
            on = d[d["axes"].str.split(",").apply(lambda a, axis=axis: axis in a)]
            exact = on[~on["censored"].astype(bool)]  # a censored limit is only a lower bound: not in the fit
            meas = fit_exponent(exact[axis], exact["max_lr_measured"], exact["max_lr_bad"])
            rows.append({"config": config, "axis": axis, "source": "measured", **meas})
            if predictions is not None and len(predictions):
                per = predictions[predictions["config"].isin([f"{config}@{c}" for c in on["cell"]])]
                xs = [int(on.set_index("cell").loc[c.split("@", 1)[1], axis]) for c in per["config"]]
                pred = fit_exponent(xs, per["max_lr_predicted"])
            else:
                pred = fit_exponent(on[axis], on["max_lr_predicted"])
            rows.append({"config": config, "axis": axis, "source": "predicted", **pred})
            for kind, b in SIGN_STEP_EXPONENTS[axis].items():
                rows.append({"config": config, "axis": axis, "source": f"sign-step ({kind})", "slope": b,
                             "slope_ci_low": math.nan, "slope_ci_high": math.nan, "n_points": 0})
    return pd.DataFrame(rows)


#: What a scaling folder holds: the trainability run folder and the two tables with their metadata.
SCALING_ENTRIES = ("trainability", "cells.csv", "cells.csv.meta.json", "fits.csv", "fits.csv.meta.json")


def check_scaling_dir(out_dir, option: str = "--out"):
    """Refuse (:class:`UserError`, creating nothing) an ``out_dir`` that holds anything a scaling run does not write.

    A scaling folder holds :data:`SCALING_ENTRIES` only (its ``trainability``
    subfolder is a run folder of its own, checked by
    :func:`propagate.trainability.trainability`), plus the hidden ``.tmp``
    and ``.bak`` files an interrupted atomic write may leave
    (:func:`propagate.io.atomic_write_files`). Anything else (another
    command's run folder, the user's own files) is not ours to write into.
    Returns the folder as a Path.
    """
    import re

    from propagate.io import check_output_dir

    folder = check_output_dir(out_dir, option)
    if folder.is_dir():
        other = sorted(p.name for p in folder.iterdir()
                       if p.name not in SCALING_ENTRIES and not re.fullmatch(r"\..+\.(tmp|bak)", p.name))
        if other:
            raise UserError(f"{option} {str(folder)!r} holds files that are not a scaling run's (e.g. {other[0]!r}); "
                            f"use another {option}")
        for name in SCALING_ENTRIES[1:]:
            if (folder / name).exists() and not (folder / name).is_file():
                raise UserError(f"{option} {str(folder)!r}: {name!r} is not a file; use another {option}")
    return folder


def scaling_grid(dataset, configs: Sequence[str] = tuple(CONFIGS), *, axes: dict | None = None,
                 base: dict | None = None, options: ScalingOptions | None = None, out_dir=None, resume: bool = True,
                 workers: int | None = None, scheduler: str | None = None, client=None,
                 progress: Callable[[str], None] | None = None, trainer: Callable | None = None,
                 predictor: Callable | None = None) -> ScalingResult:
    """Measure and predict the largest stable learning rate at every cell of the grid (module docstring).

    ``out_dir`` holds the trainability folder (every point resumable) and,
    at the end, ``cells.csv`` and ``fits.csv`` with their ``.meta.json``; a
    folder holding anything else is refused (:func:`check_scaling_dir`).
    ``workers``/``scheduler``/``client``: where the points run
    (:func:`propagate.trainability.trainability`); ``trainer``/``predictor``:
    injectable as there (tests).
    """
    from pathlib import Path

    options = options or ScalingOptions()
    for c in configs:
        if c not in CONFIGS:
            raise UserError(f"unknown scaling configuration {c!r}; use one of {', '.join(CONFIGS)}")
    if out_dir is not None:
        check_scaling_dir(out_dir)
    grid_cells = cells(axes, base)
    overrides = {cell: _overrides(cell, dataset.n_train, options, base) for cell in grid_cells}
    entries = [(f"{c}@{cell.name}", cell_spec(c, cell), overrides[cell]) for c in configs for cell in grid_cells]
    res = trainability(entries, options.lrs, dataset, options.trainability_options(), progress=progress,
                       out_dir=Path(out_dir) / "trainability" if out_dir is not None else None, resume=resume,
                       workers=workers, scheduler=scheduler, client=client, trainer=trainer, predictor=predictor)
    epochs = {cell: o.get("epochs", options.epochs) for cell, o in overrides.items()}
    table = _frame(_cell_rows(configs, grid_cells, res, base, axes, epochs))
    fits = fit_exponents(table, res.predictions)
    within = table["within_2x"].dropna()
    meta = run_metadata(seed=options.seeds[0], uses=("torch",), kind="scaling", options=options.to_dict(),
                        axes=axes or AXES,
                        base=base or BASE, configs={c: CONFIGS[c] for c in configs},
                        dataset={"name": dataset.name, "n_train": dataset.n_train, "n_test": dataset.n_test},
                        cells_with_measured_limit=int(len(within)), cells_within_2x=int(within.sum()))
    if out_dir is not None:
        write_table(table, Path(out_dir) / "cells.csv", meta)
        write_table(fits, Path(out_dir) / "fits.csv", meta)
    return ScalingResult(cells=table, fits=fits, trainability=res, meta=meta)


def _overrides(cell: Cell, n_train: int, options: ScalingOptions, base: dict | None) -> dict:
    """A cell's training options: its batch size and rho, and its epochs where :func:`cell_epochs` raises them."""
    out = {"batch_size": cell.batch_size, "rho": cell.rho}
    epochs = cell_epochs(cell, n_train, options.epochs, base) if options.equal_steps else options.epochs
    if epochs != options.epochs:  # only then: the other cells' points keep their keys
        out["epochs"] = epochs
    return out


def _frame(rows):
    import pandas as pd

    return pd.DataFrame(rows)
