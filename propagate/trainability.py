"""The learning rate as an axis: where each configuration stops training, and what its first steps look like.

:func:`trainability` trains every configuration at every learning rate of a
log-spaced grid, each (configuration, lr) as an ensemble of seeds, and reports:

- per (configuration, lr), the final training and test numbers of the last
  epoch (``loss``, ``acc``, ``val_loss``, ``val_acc``, ``train_eval_acc``; see
  :mod:`propagate.train` for their definitions; losses in nats per sample,
  accuracies as fractions) as ``<metric>_mean``, ``<metric>_ci_low``,
  ``<metric>_ci_high`` (95% Student t interval over seeds on the scale of the
  metric's range, :func:`propagate.confidence.interval_of`: accuracies on the
  logit scale, so the interval stays in [0, 1], losses on the log scale, so it
  stays positive), ``n_seeds``, ``n_diverged`` and an ``outcome``:

  * ``diverged``: at least one seed's training loss became inf/NaN;
  * ``trains``: no seed diverged and the *lower* bound of the 95% interval of
    the final training accuracy (``criterion``, default ``acc``: Keras' running
    training accuracy over the last epoch, train-mode BN) is above ``level``
    (default 0.5, five times chance for 10 classes). With one seed there is
    no interval and the single value is compared with ``level``;
  * ``fails``: otherwise (it did not diverge, but did not learn either);

- per configuration, ``max_lr_measured``: the largest learning rate tried
  whose outcome is ``trains`` (NaN if none trains), ``max_lr_bad``: the
  smallest learning rate above it that does not train (NaN when it trains at
  the top of the grid: the measurement is then only a lower bound,
  ``censored=True``). With ``refine=K``, up to ``K`` bisection steps in log
  space (geometric midpoints) between those two narrow the bracket by ``2^K``
  in log lr; a configuration stops early when its bracket is narrower than
  :data:`REFINE_RTOL` (relative) or its midpoint equals an end in float64.
  With ``extend=K``, a configuration that still trains at the top of the grid
  is first tried up to ``K`` times one grid step higher (the ratio of the
  grid's two largest rates), at most :data:`EXTEND_CAP`, until a rate fails:
  the measurement is censored only where even that still trains.

- next to it, per configuration, ``max_lr_predicted``: the largest stable
  learning rate predicted at initialization from the optimizer's own first
  steps (:func:`propagate.lr_limit.predict_max_lr`: a ``K``-step lookahead of
  the real update rule at many learning rates; the geometric mean over the
  seeds with ``max_lr_predicted_ci_low``/``_ci_high``, its 95% interval), and
  ``ratio`` = measured / predicted. Beside it, as secondary columns, the
  curvature bounds at initialization (:func:`propagate.sharpness.network_sharpness`):
  ``max_lr_sharpness`` = ``2 / lambda_1(P^{-1} H)`` (RMSprop/Adam with their
  preconditioner frozen, Cohen et al. 2022) and ``max_lr_sharpness_gd`` =
  ``2 / lambda_1(H)`` (plain gradient descent), with ``ratio_sharpness`` and
  ``ratio_gd``. They miss for adaptive optimizers because the preconditioner
  is not frozen during the first ``1/(1 - rho)`` steps (RMSprop's first step
  is ``lr / sqrt(1 - rho)`` times the gradient's sign, whatever its size), and
  ``2 / lambda_1(H)`` moves with the loss's scale while those steps do not
  (:mod:`propagate.lr_limit` and ``derivations/trainability.md``).

A configuration is ``(name, spec)`` or ``(name, spec, overrides)``, the
overrides a dict of :class:`propagate.train.TrainOptions` fields for that
configuration alone (``batch_size``, ``rho``, ``warmup``, ...), so one grid can
vary the training as well as the network (the scaling grid of
:mod:`propagate.scaling` does).

The trainer is injectable (``trainer=``): a function
``trainer(spec, options, seeds, dataset) -> list of per-seed dicts`` (keys as
:func:`train_ensemble` returns, the default: one batched ensemble per point),
so the grid and refinement logic can be tested with a fake trainer.

:func:`first_epoch_dynamics` follows one network through its first epoch and
records per-layer probe statistics at log-spaced steps (0, 1, 2, 4, ...,
last): pre-activation variance and mean, the per-sample gradient norm with
respect to the pre-activations, the norm of the minibatch gradient with
respect to each weight matrix, and the ratio of the update's norm to the
weight's norm.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

from propagate.errors import UserError
from propagate.io import run_metadata, write_table
from propagate.limits import check_seeds
from propagate.lr_limit import LookaheadOptions, predict_max_lr
from propagate.runfolder import check_run_folder, claim
from propagate.runner import Point as RunnerPoint
from propagate.runner import PointStore, Result, Shared, check_record, choose_engine, point_key, run_points
from propagate.sharpness import network_sharpness

__all__ = [
    "DEFAULT_LRS",
    "METRICS",
    "REFINE_RTOL",
    "OUTCOMES",
    "TrainabilityOptions",
    "TrainabilityResult",
    "log_lr_grid",
    "log_steps",
    "train_ensemble",
    "classify",
    "summarize_point",
    "max_lr_of",
    "trainability",
    "check_out_dir",
    "first_epoch_dynamics",
]

#: 1e-5 to 1e-2, half a decade apart.
DEFAULT_LRS = tuple(10 ** (-5 + 0.5 * i) for i in range(7))
#: Final numbers of each seed (last epoch), summarized over seeds.
METRICS = ("loss", "acc", "val_loss", "val_acc", "train_eval_acc")
OUTCOMES = ("trains", "fails", "diverged")


def log_lr_grid(start: float, stop: float, n: int) -> list[float]:
    """``n`` learning rates from ``start`` to ``stop`` (both included), equally spaced in log."""
    if not (start > 0 and stop > 0 and math.isfinite(start) and math.isfinite(stop)):
        raise UserError(f"a log range needs finite positive ends, got {start}:{stop}")
    if n < 1:
        raise UserError(f"a range needs at least one point, got {n}")
    if n == 1:
        return [float(start)]
    a, b = math.log10(start), math.log10(stop)
    return [10 ** (a + (b - a) * i / (n - 1)) for i in range(n)]


def log_steps(n_steps: int) -> list[int]:
    """0, 1, 2, 4, 8, ... and ``n_steps`` (the last step), sorted and unique."""
    out, s = {0, int(n_steps)}, 1
    while s < n_steps:
        out.add(s)
        s *= 2
    return sorted(x for x in out if 0 <= x <= n_steps)


@dataclass(frozen=True)
class TrainabilityOptions:
    """How :func:`trainability` measures.

    ``seeds``: seeds of each ensemble (default 0, 1, 2); ``epochs``: epochs per
    run; ``optimizer``, ``batch_size``: as :class:`propagate.train.TrainOptions`
    (its other settings are the lecture demo's defaults); ``rho``: RMSprop's
    decay; ``warmup``: linear warmup steps of training (and of the prediction).
    ``criterion``/``level``: a (configuration, lr) *trains* when the lower 95%
    bound of ``criterion`` (final-epoch training accuracy) exceeds ``level``.
    ``refine``: bisection steps per configuration; ``extend``: steps above the
    grid's top for a configuration that still trains there. ``predict``: compute the
    lookahead prediction (:func:`propagate.lr_limit.predict_max_lr`,
    ``lookahead_per_decade`` learning rates per decade); ``sharpness``: also the
    curvature bounds, with ``sharpness_batch``, ``warmup_steps``,
    ``lanczos_iters`` their settings (:func:`propagate.sharpness.network_sharpness`).
    """

    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: int = 3
    optimizer: str = "rmsprop"
    batch_size: int = 128
    rho: float = 0.9
    warmup: int = 0
    criterion: str = "acc"
    level: float = 0.5
    refine: int = 0
    extend: int = 0
    predict: bool = True
    lookahead_per_decade: int = 4
    sharpness: bool = True
    sharpness_batch: int = 512
    warmup_steps: int = 10
    lanczos_iters: int = 20
    probe_size: int = 512
    device: str = "cpu"
    threads: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        if not self.seeds:
            raise UserError("an ensemble needs at least one seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise UserError(f"seeds must differ, got {list(self.seeds)}")
        check_seeds(min(self.seeds), max(self.seeds) - min(self.seeds) + 1, "seeds")  # all in 0 .. 2^63 - 1
        if self.criterion not in ("acc", "train_eval_acc", "val_acc"):
            raise UserError(f"criterion must be acc, train_eval_acc or val_acc, got {self.criterion!r}")
        if not 0 <= self.level < 1:
            raise UserError(f"level must be in [0, 1), got {self.level}")
        for name in ("refine", "extend"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise UserError(f"{name} must be a whole number >= 0, got {v!r}")
        for name in ("epochs", "batch_size", "sharpness_batch", "lanczos_iters"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise UserError(f"{name.replace('_', ' ')} must be a whole number >= 1, got {v!r}")

    def train_options(self, lr: float, overrides: dict | None = None):
        """The :class:`propagate.train.TrainOptions` of one run at ``lr`` (seed set per run), with a configuration's ``overrides``."""
        from propagate.train import TrainOptions

        base = dict(optimizer=self.optimizer, lr=float(lr), epochs=self.epochs, batch_size=self.batch_size,
                    rho=self.rho, warmup=self.warmup, seed=self.seeds[0], device=self.device, threads=self.threads,
                    probe_size=self.probe_size)
        return TrainOptions(**{**base, **(overrides or {})})

    def to_dict(self) -> dict:
        d = asdict(self)
        d["seeds"] = list(self.seeds)
        return d


@dataclass
class TrainabilityResult:
    """``points``: one row per (config, lr) (see the module docstring); ``configs``: one row per
    configuration; ``seeds``: one row per (config, lr, seed) with the raw final numbers;
    ``predictions``: one row per (config, seed) of the lookahead prediction; ``lookahead``: its
    loss curves, one row per (config, seed, stage, lr) (:func:`propagate.lr_limit.predict_max_lr`)."""

    points: object
    configs: object
    seeds: object
    meta: dict = field(default_factory=dict)
    predictions: object = None
    lookahead: object = None


# ------------------------------------------------------------------ one point


def train_ensemble(spec, options, seeds: Sequence[int], dataset) -> list[dict]:
    """Train ``spec`` for every seed in ``seeds`` with ``options``; the final numbers of each seed.

    Returns one dict per seed: ``seed``, the :data:`METRICS` of the last epoch
    it ran, ``diverged`` (bool) and ``epochs_done``. The seeds are trained
    together as one batched ensemble (:func:`propagate.train.train` with
    ``seeds``); seed ``k`` is the network of a single run with seed ``k``.
    This is the one place that knows how an ensemble is trained.
    """
    from propagate.train import train

    res = train(spec, options, dataset, seeds=[int(s) for s in seeds])
    h = res.history
    status = dict(getattr(res, "seed_status", {}) or {})
    rows = []
    for s in seeds:
        hs = h[h["seed"] == int(s)] if "seed" in h.columns else h
        last = hs.iloc[-1] if len(hs) else None
        row = {"seed": int(s), "diverged": status.get(int(s)) == "diverged" or bool(hs["diverged"].any()),
               "epochs_done": int(hs["epoch"].max()) if len(hs) else 0}
        for m in METRICS:
            row[m] = float(last[m]) if last is not None else float("nan")
        rows.append(row)
    return rows


def classify(seed_rows: Sequence[dict], criterion: str = "acc", level: float = 0.5) -> str:
    """``diverged``, ``trains`` or ``fails`` for one (configuration, lr) (rules in the module docstring).

    The bound compared with ``level`` is the lower end of the criterion's 95%
    t interval on the logit scale (:func:`propagate.confidence.interval_of`:
    an accuracy's interval stays in [0, 1]), the interval written to
    ``points.csv`` as ``<criterion>_ci_low``; with one seed, the value itself.
    """
    from propagate.confidence import interval_of

    if any(r.get("diverged") for r in seed_rows):
        return "diverged"
    iv = interval_of(criterion, [r[criterion] for r in seed_rows])
    if iv.n == 0:
        return "fails"
    bound = iv.low if iv.has_interval else iv.mean
    return "trains" if bound > level else "fails"


def summarize_point(config: str, lr: float, seed_rows: Sequence[dict], criterion: str = "acc",
                    level: float = 0.5, refined: bool = False) -> dict:
    """One row of the per-(configuration, lr) table from the per-seed final numbers.

    Each metric's mean over seeds with its 95% t interval on the scale of its
    range (:func:`propagate.confidence.interval_of`): accuracies on the logit
    scale (the interval stays in [0, 1]), losses on the log scale (it stays
    positive); a diverged seed's infinite loss leaves the loss without an interval.
    """
    from propagate.confidence import interval_of

    row = {"config": config, "lr": float(lr), "refined": bool(refined)}
    for m in METRICS:
        iv = interval_of(m, [r[m] for r in seed_rows])
        row[f"{m}_mean"], row[f"{m}_ci_low"], row[f"{m}_ci_high"] = iv.mean, iv.low, iv.high
    row["n_seeds"] = len(seed_rows)
    row["n_diverged"] = sum(bool(r.get("diverged")) for r in seed_rows)
    row["outcome"] = classify(seed_rows, criterion, level)
    return row


def max_lr_of(points: Sequence[dict]) -> tuple[float, float]:
    """``(max_lr_measured, max_lr_bad)`` of one configuration's point rows (see the module docstring)."""
    good = [p["lr"] for p in points if p["outcome"] == "trains"]
    if not good:
        return float("nan"), float("nan")
    top = max(good)
    bad = [p["lr"] for p in points if p["outcome"] != "trains" and p["lr"] > top]
    return top, (min(bad) if bad else float("nan"))


# --------------------------------------------------------------------- grid


def _legacy_lr_name(lr: float) -> str:
    """The learning rate in the point file names of folders written before the runner (6 digits: not a key)."""
    return f"{lr:.6g}"


def _file_name(config: str) -> str:
    # custom labels look like "relu/glorot_uniform+BN": keep them readable but path-safe
    return re.sub(r"[^A-Za-z0-9._+-]", "_", config)


def _point_task(trainer, spec, train_options, seeds, dataset) -> list[dict]:
    """One (configuration, lr) ensemble: the per-seed final numbers (a runner point: on Dask or in process)."""
    return [dict(r) for r in (trainer or train_ensemble)(spec, train_options, seeds, dataset)]


def _predict_task(predictor, spec, train_options, dataset, settings: dict) -> dict:
    """One configuration's predictions (a runner point: on Dask or in process).

    The default: the lookahead (:func:`propagate.lr_limit.predict_max_lr`, its
    summary, per-seed rows and curve) and, when ``settings["sharpness"]``, the
    curvature bounds (:func:`propagate.sharpness.network_sharpness`) under
    ``sharpness``.
    """
    if predictor is not None:
        return dict(predictor(spec, train_options, dataset))
    look = predict_max_lr(spec, dataset, train_options, seeds=settings["seeds"],
                          options=LookaheadOptions(per_decade=settings["per_decade"],
                                                   probe_size=settings["probe_size"]))
    out = {**look.summary, "per_seed": look.per_seed.to_dict(orient="records"),
           "curve": look.curve.to_dict(orient="records")}
    if settings["sharpness"]:
        sharp = network_sharpness(spec, dataset, train_options, batch=settings["batch"],
                                  warmup_steps=settings["warmup_steps"], iters=settings["iters"])
        out["sharpness"] = dict(sharp)
    return out


def _is_number(v) -> bool:
    """A number as a stored record holds it (strict JSON: NaN as ``null``, infinities as ``"inf"``/``"-inf"``)."""
    return v is None or v in ("inf", "-inf") or (isinstance(v, (int, float)) and not isinstance(v, bool))


def _check_seed_rows(rows) -> None:
    """Raise :class:`ValueError` unless ``rows`` are a point's per-seed final numbers (:func:`train_ensemble`'s)."""
    if not isinstance(rows, list) or not rows:
        raise ValueError("its value is not a list of per-seed rows")
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            raise ValueError(f"per-seed row {i} is not an object")
        bad = [m for m in METRICS if not _is_number(r.get(m, ""))]
        if bad:
            raise ValueError(f"per-seed row {i} has no number {bad[0]!r}")


def _check_point_record(record: dict) -> None:
    """The reader's check of a stored (configuration, lr) point: a finished record whose value is per-seed rows."""
    check_record(record)
    _check_seed_rows(record["value"])


def _check_prediction_record(record: dict) -> None:
    """The reader's check of a stored prediction: a finished record whose value is :func:`_predict_task`'s dict."""
    check_record(record)
    value = record["value"]
    if not isinstance(value, dict):
        raise ValueError("its value is not an object")
    for k in ("max_lr_predicted", "max_lr_predicted_ci_low", "max_lr_predicted_ci_high", "steps"):
        if not _is_number(value.get(k)):
            raise ValueError(f"{k} is not a number")
    for k in ("per_seed", "curve"):
        rows = value.get(k, [])
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise ValueError(f"{k} is not a list of rows")
    if not all(isinstance(r.get(k, ""), str) for r in value.get("per_seed", []) for k in ("criterion", "note")):
        raise ValueError("a per-seed criterion or note is not text")
    sharp = value.get("sharpness")
    if sharp:
        if not isinstance(sharp, dict):
            raise ValueError("sharpness is not an object")
        for k in ("sharpness", "max_lr_predicted", "precond_sharpness", "threshold_constant"):
            if not _is_number(sharp.get(k)):
                raise ValueError(f"sharpness.{k} is not a number")


def _read_legacy(path: Path) -> dict:
    """A point file of a folder written before the runner (``lr``, ``spec``, ``seeds``); :class:`UserError` if damaged.

    Refused like a damaged point file of the store (:meth:`propagate.runner.PointStore.record`) and left in place.
    """
    def damaged(why: str) -> UserError:
        return UserError(f"cannot read the point file {str(path)!r} ({why}); move it away to compute the point again")

    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        raise damaged(type(exc).__name__) from None
    try:
        if not isinstance(saved, dict) or not {"lr", "spec", "seeds"} <= set(saved):
            raise ValueError("not an object with lr, spec and seeds")
        _check_seed_rows(saved["seeds"])
    except ValueError as exc:
        raise damaged(f"wrong layout: {exc}") from None
    return saved


#: Options that change no number of a point (they are in neither its key nor the folder's identity).
_NOT_IN_KEY = ("device", "threads")


@dataclass
class _Plan:
    """What one :func:`trainability` call runs: the checked configurations, grid and options."""

    specs: dict
    overrides: dict  # per configuration: TrainOptions fields of its own
    names: list
    lrs: list
    options: TrainabilityOptions
    dataset: object
    trainer: Callable | None
    predictor: Callable | None
    settings: dict  # the sharpness prediction's
    data_id: dict | None  # the dataset's identity, in every point's key when points are stored

    def train_options(self, name: str, lr: float):
        return self.options.train_options(lr, self.overrides[name])

    def train_key(self, name: str, lr: float) -> dict:
        return {k: v for k, v in self.train_options(name, lr).to_dict().items() if k not in _NOT_IN_KEY}


def _plan(configs, lrs, dataset, options: TrainabilityOptions, trainer, predictor, *, on_dask: bool,
          stored: bool) -> _Plan:
    """Check the arguments of :func:`trainability` (UserError, before any work) and fix what it runs."""
    lrs = sorted({float(lr) for lr in lrs})
    if not lrs or any(not (math.isfinite(lr) and lr > 0) for lr in lrs):
        raise UserError(f"learning rates must be finite and > 0, got {lrs}")
    if not configs:
        raise UserError("no configurations to run")
    configs = [tuple(c) if len(c) == 3 else (c[0], c[1], {}) for c in configs]
    names = [n for n, _, _ in configs]
    if len(set(names)) != len(names):
        raise UserError(f"configuration names must differ, got {names}")
    if dataset is None:
        raise UserError("trainability needs a dataset (see propagate.data.load_dataset)")
    if on_dask and options.threads is None:
        options = replace(options, threads=1)  # one thread per worker process (and the same numbers in process)
    overrides = {n: dict(o or {}) for n, _, o in configs}
    for n, o in overrides.items():
        options.train_options(lrs[0], o)  # a bad override fails here, before any work (UserError or TypeError)
    settings = {"batch": options.sharpness_batch, "warmup_steps": options.warmup_steps,
                "iters": options.lanczos_iters, "sharpness": options.sharpness, "seeds": list(options.seeds),
                "per_decade": options.lookahead_per_decade, "probe_size": options.probe_size}
    data_id = None
    if stored:
        from propagate.data import dataset_identity

        data_id = dataset_identity(dataset)
    return _Plan({n: spec for n, spec, _ in configs}, overrides, names, lrs, options, dataset, trainer, predictor,
                 settings, data_id)


#: Options added after folders were first written: in a folder's identity only when not at their default, so
#: older folders still resume (every point's key holds them anyway).
_LATER = {"rho": 0.9, "warmup": 0}


def _folder_identity(plan: _Plan) -> dict:
    """What a trainability folder records (:func:`propagate.runfolder.claim`): options that change results, data."""
    free = ("refine", "extend", "predict", "sharpness", "lookahead_per_decade", "sharpness_batch", "warmup_steps",
            "lanczos_iters") + _NOT_IN_KEY
    options = {k: v for k, v in plan.options.to_dict().items()
               if k not in free and not (k in _LATER and v == _LATER[k])}
    return {"kind": "trainability", "options": options, "dataset": plan.data_id}


def _json_value(obj):
    """``obj`` as it reads back from a JSON file (tuples become lists), to compare with what a file holds."""
    return json.loads(json.dumps(obj, default=str))


class _Grid:
    """The rounds of one :func:`trainability` call on the runner: the points trained so far and the predictions.

    ``rows[(config, lr key)]``: per-seed rows of a finished point; ``preds[config]``:
    its sharpness prediction; ``tried[config]``: ``(lr, refined)`` in the order tried.
    """

    def __init__(self, plan: _Plan, engine, store: PointStore | None, resume: bool, progress):
        self.plan, self.engine, self.store, self.resume, self.progress = plan, engine, store, resume, progress
        self.rows: dict[tuple[str, float], list[dict]] = {}  # keyed by the exact lr: 1e-3 and 1.0000001e-3 differ
        self.preds: dict[str, dict] = {}
        self.tried = {n: [(lr, False) for lr in plan.lrs] for n in plan.names}

    def point(self, name: str, lr: float) -> RunnerPoint:
        p = self.plan
        config = {"kind": "trainability point", "spec": p.specs[name].to_dict(), "train": p.train_key(name, lr),
                  "seeds": list(p.options.seeds)}
        return RunnerPoint(point_key(config, p.data_id), _point_task,
                           (p.trainer, p.specs[name], p.train_options(name, lr), p.options.seeds, Shared("dataset")),
                           shared={"dataset": p.dataset}, meta={"kind": "point", "config": name, "lr": lr},
                           check=_check_point_record)

    def prediction(self, name: str) -> RunnerPoint:
        p = self.plan
        config = {"kind": "trainability prediction", "spec": p.specs[name].to_dict(),
                  "train": p.train_key(name, p.lrs[0]), "settings": p.settings}
        return RunnerPoint(point_key(config, p.data_id), _predict_task,
                           (p.predictor, p.specs[name], p.train_options(name, p.lrs[0]), Shared("dataset"),
                            p.settings),
                           shared={"dataset": p.dataset}, meta={"kind": "predict", "config": name},
                           check=_check_prediction_record)

    def run_round(self, points: list[tuple[str, float]], predict: list[str]) -> None:
        """Train ``points`` and compute the ``predict`` configurations' predictions (stored ones are read back)."""
        todo = [self.point(n, lr) for n, lr in points] + [self.prediction(n) for n in predict]
        if self.store is not None and self.resume:
            for rp in todo:
                self._adopt_legacy(rp)
        by_key: dict[str, list[RunnerPoint]] = {}  # configurations of the same network share one result
        for rp in todo:
            by_key.setdefault(rp.key, []).append(rp)
        with contextlib.closing(run_points(todo, store=self.store, engine=self.engine, reuse=self.resume)) as results:
            for res in results:  # as they finish
                res.raise_for_failure()
                for rp in by_key[res.point.key]:
                    self._take(rp, res.value, announce=not res.cached)

    def _take(self, rp: RunnerPoint, value, announce: bool) -> None:
        name, opts = rp.meta["config"], self.plan.options
        if rp.meta["kind"] == "point":
            lr = rp.meta["lr"]
            self.rows[(name, float(lr))] = value
            if announce and self.progress is not None:
                s = summarize_point(name, lr, value, opts.criterion, opts.level)
                self.progress(f"{name} lr {lr:.3g}: {s['outcome']} ({opts.criterion} "
                              f"{s[opts.criterion + '_mean']:.3f}, {s['n_diverged']}/{s['n_seeds']} diverged)")
        else:
            self.preds[name] = value
            if announce and self.progress is not None:
                v = value.get("max_lr_predicted")
                self.progress(f"{name}: predicted largest lr {float('nan') if v is None else float(v):.3g}")

    def _adopt_legacy(self, rp: RunnerPoint) -> None:
        """Take over a point file of a folder written before the runner (named by configuration and lr), if it fits.

        Predictions are not taken over: the old files hold only the curvature
        bounds, not the lookahead that is the prediction now.
        """
        if rp.meta["kind"] != "point" or self.store.has(rp.key):
            return
        name = rp.meta["config"]
        legacy = self.store.folder / f"{_file_name(name)}_lr{_legacy_lr_name(rp.meta['lr'])}.json"
        if legacy.is_file():
            saved = _read_legacy(legacy)
            # the name holds 6 digits of lr, the file the exact value: 1.0000001e-3 does not take 1e-3's file
            if saved.get("lr") == rp.meta["lr"] and saved.get("spec") == _json_value(self.plan.specs[name].to_dict()):
                self.store.save(Result(rp, True, saved["seeds"], meta={"from": legacy.name}))

    def bracket(self, name: str) -> tuple[float, float]:
        opts = self.plan.options
        pts = [summarize_point(name, lr, self.rows[(name, float(lr))], opts.criterion, opts.level)
               for lr, _ in self.tried[name]]
        return max_lr_of(pts)

    def refine(self, steps: int) -> None:
        """Up to ``steps`` rounds of one bisection step (geometric midpoint) of every configuration with a bracket.

        A configuration stops early once its bracket cannot shrink any more
        (:func:`_bisect`): nothing is trained for a midpoint that is not
        strictly inside it.
        """
        for _ in range(steps):
            mids = {}
            for n in self.plan.names:
                mid = _bisect(*self.bracket(n))
                if mid is not None:
                    mids[n] = mid
            if not mids:
                break
            self.run_round(list(mids.items()), [])
            for n, mid in mids.items():
                self.tried[n].append((mid, True))

    def extend(self, steps: int) -> None:
        """Up to ``steps`` rounds of one grid step above the top for every configuration that still trains there.

        The step is the ratio of the grid's two largest rates (a decade for a
        one-rate grid); no rate above :data:`EXTEND_CAP` is tried. A
        configuration stops at its first rate that does not train, which then
        bounds its bracket from above (and refinement bisects it).
        """
        lrs = self.plan.lrs
        ratio = lrs[-1] / lrs[-2] if len(lrs) > 1 else 10.0
        for _ in range(steps):
            ups = {}
            for n in self.plan.names:
                good, bad = self.bracket(n)
                top = max(lr for lr, _ in self.tried[n])
                if good == top and not math.isfinite(bad) and top * ratio <= EXTEND_CAP:
                    ups[n] = top * ratio
            if not ups:
                break
            self.run_round(list(ups.items()), [])
            for n, lr in ups.items():
                self.tried[n].append((lr, False))


#: The largest learning rate :meth:`_Grid.extend` tries (no optimizer of this package trains above it).
EXTEND_CAP = 10.0

#: Smallest relative width ``hi / lo - 1`` of a bracket that is still bisected: a millionth of lr, far below
#: the spread of the largest trainable lr over seeds (and what 20 steps reach from a decade, ln 10 / 2^20).
REFINE_RTOL = 1e-6


def _bisect(lo: float, hi: float) -> float | None:
    """The geometric midpoint of the bracket ``(lo, hi)``, or ``None`` when it is not worth (or not possible) to split.

    ``None`` when either end is missing (NaN), when ``hi / lo - 1`` is below
    :data:`REFINE_RTOL`, or when the midpoint equals an end at float precision.
    """
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo < hi) or hi / lo - 1 < REFINE_RTOL:
        return None
    mid = math.sqrt(lo * hi)
    if not lo < mid < hi:  # lo * hi underflowed or overflowed (lr near 1e-308 or 1e308), or lo, hi are neighbours
        mid = math.sqrt(lo) * math.sqrt(hi)
    return mid if lo < mid < hi else None


def _num(d: dict, key: str) -> float:
    """A number of a prediction dict (JSON: null for NaN, "inf" for infinity)."""
    v = d.get(key)
    return float("nan") if v is None else float(v)


def _ratio(measured: float, predicted: float) -> float:
    ok = math.isfinite(measured) and math.isfinite(predicted) and predicted > 0
    return measured / predicted if ok else float("nan")


def _prediction_columns(pred: dict | None) -> dict:
    """The prediction columns of a ``configs`` row: the lookahead's, then the curvature bounds' (secondary)."""
    nan = float("nan")
    if pred is None:
        return {"max_lr_predicted": nan}
    row = {k: _num(pred, k) for k in ("max_lr_predicted", "max_lr_predicted_ci_low", "max_lr_predicted_ci_high")}
    row["prediction_steps"] = _num(pred, "steps")
    per_seed = pred.get("per_seed") or []
    row["criterion"] = "; ".join(sorted({r.get("criterion", "") for r in per_seed} - {""}))
    row["prediction_note"] = "; ".join(sorted({r.get("note", "") for r in per_seed} - {""}))
    sharp = pred.get("sharpness")
    if sharp:
        s = _num(sharp, "sharpness")
        row.update(max_lr_sharpness=_num(sharp, "max_lr_predicted"), max_lr_sharpness_gd=2.0 / s if s > 0 else nan,
                   sharpness=s, precond_sharpness=_num(sharp, "precond_sharpness"),
                   threshold_constant=_num(sharp, "threshold_constant"))
    return row


def _config_row(name: str, pts: list[dict], pred: dict | None) -> dict:
    """One configuration's row of the ``configs`` table (module docstring) from its point rows and predictions."""
    lo, hi = max_lr_of(pts) if pts else (float("nan"), float("nan"))
    row = {"config": name, "max_lr_measured": lo, "max_lr_bad": hi,
           "censored": bool(math.isfinite(lo) and not math.isfinite(hi)),
           "first_diverged_lr": min((p["lr"] for p in pts if p["outcome"] == "diverged"), default=float("nan")),
           "n_refined": sum(p["refined"] for p in pts), **_prediction_columns(pred)}
    row["ratio"] = _ratio(lo, row["max_lr_predicted"])
    if "max_lr_sharpness" in row:
        row["ratio_sharpness"] = _ratio(lo, row["max_lr_sharpness"])
        row["ratio_gd"] = _ratio(lo, row["max_lr_sharpness_gd"])
    return row


def _frame(rows: list[dict], sort: list[str], columns: Sequence[str] = ("config",)):
    """The rows as a table sorted by ``sort``; without rows, an empty table with ``columns`` (a file of it has a
    header, so it reads back as a table: one with no rows)."""
    import pandas as pd

    df = pd.DataFrame(rows)
    if not len(df):
        return pd.DataFrame(columns=list(columns))
    return df.sort_values(sort, kind="stable").reset_index(drop=True)


#: The columns of an empty ``points`` table (:func:`summarize_point`'s) and ``seeds`` table (the default trainer's).
POINT_COLUMNS = ("config", "lr", "refined", *(f"{m}_{k}" for m in METRICS for k in ("mean", "ci_low", "ci_high")),
                 "n_seeds", "n_diverged", "outcome")
SEED_COLUMNS = ("config", "lr", "refined", "seed", "diverged", *METRICS)


def _tables(grid: _Grid) -> dict:
    """The DataFrames of a finished grid: ``points``, ``configs``, ``seeds``, ``predictions``, ``lookahead``."""
    opts = grid.plan.options
    seed_rows, point_rows, config_rows, pred_rows, curve_rows = [], [], [], [], []
    for name in grid.plan.names:
        pts = []
        for lr, refined in grid.tried[name]:
            rows = grid.rows[(name, float(lr))]
            seed_rows += [{"config": name, "lr": float(lr), "refined": refined, **r} for r in rows]
            pts.append(summarize_point(name, lr, rows, opts.criterion, opts.level, refined))
        point_rows.extend(pts)
        pred = grid.preds.get(name) if opts.predict else None
        config_rows.append(_config_row(name, pts, pred))
        pred_rows += [{"config": name, **r} for r in (pred or {}).get("per_seed", [])]
        curve_rows += [{"config": name, **r} for r in (pred or {}).get("curve", [])]
    return {"points": _frame(point_rows, ["config", "lr"], POINT_COLUMNS), "configs": _frame(config_rows, []),
            "seeds": _frame(seed_rows, [], SEED_COLUMNS), "predictions": _frame(pred_rows, []),
            "lookahead": _frame(curve_rows, [])}


def _metadata(plan: _Plan, configs, engine: str) -> dict:
    opts, ds = plan.options, plan.dataset
    return run_metadata(seed=opts.seeds[0], uses=("torch",), kind="trainability", options=opts.to_dict(),
                        lrs=plan.lrs,
                        configs={n: s.to_dict() for n, s in plan.specs.items()},
                        overrides={n: o for n, o in plan.overrides.items() if o},
                        dataset={"name": ds.name, "n_train": ds.n_train, "n_test": ds.n_test}, engine=engine,
                        definitions={"trains": f"no seed diverged and the lower 95% t bound of final "
                                               f"{opts.criterion} > {opts.level}",
                                     "diverged": "at least one seed's training loss was inf/NaN"})


def _write_tables(out: Path, tables: dict, meta: dict) -> None:
    """Every table of this run, empty ones included (a header, no rows): the folder's tables always describe one
    run together, never a table of an earlier run with other settings beside this run's (the points of every
    run stay in ``points/``)."""
    for name in ("points", "configs"):
        write_table(tables[name], out / f"{name}.csv", meta)
        write_table(tables[name], out / f"{name}.json", meta)
    for name in ("seeds", "predictions", "lookahead"):
        write_table(tables[name], out / f"{name}.csv", meta)


def check_out_dir(out_dir: str | Path, configs: Sequence[tuple[str, object]], lrs: Sequence[float], dataset,
                  options: TrainabilityOptions | None = None, *, resume: bool = True) -> None:
    """Raise what :func:`trainability` would raise about ``out_dir`` (:class:`UserError`), creating nothing.

    For a command to call before its banner: the arguments as :func:`trainability`
    checks them, then :func:`propagate.runfolder.check_run_folder` with the
    folder's identity (the options that change results and the dataset's):
    a folder of another kind, one with files, a ``.lock`` or ``identity.json``
    propagate did not write, one in use, or (with ``resume``) one holding a
    run of other settings or data.
    """
    plan = _plan(configs, lrs, dataset, options or TrainabilityOptions(), None, None, on_dask=False, stored=True)
    check_run_folder(out_dir, "trainability", _folder_identity(plan), resume=resume, option="--out")


def trainability(
    configs: Sequence[tuple[str, object]],
    lrs: Sequence[float] = DEFAULT_LRS,
    dataset=None,
    options: TrainabilityOptions | None = None,
    *,
    trainer: Callable | None = None,
    predictor: Callable | None = None,
    progress: Callable[[str], None] | None = None,
    out_dir: str | Path | None = None,
    resume: bool = True,
    workers: int | None = None,
    scheduler: str | None = None,
    client=None,
    predict_only: bool = False,
) -> TrainabilityResult:
    """Train each ``(name, spec)`` of ``configs`` at each learning rate; the trainability tables.

    ``dataset``: a :class:`propagate.data.Dataset`. ``trainer`` defaults to
    :func:`train_ensemble`; ``predictor(spec, train_options, dataset) -> dict``
    (with at least ``max_lr_predicted``) defaults to
    :func:`propagate.sharpness.network_sharpness`. ``progress(message)`` is
    called after every point computed. With ``out_dir`` each finished point is
    saved in ``out_dir/points/`` at once (a :class:`propagate.runner.PointStore`,
    keyed by the network, training options, seeds, package version and
    dataset; not by the trainer or the thread count), so an interrupted run
    resumes where it stopped (``resume``; the point files of folders written
    before the runner, named ``<config>_lr<lr>.json``, are taken over when
    their network matches), and ``points.csv``, ``configs.csv`` (and
    ``.json``) and ``seeds.csv`` are written at the end.

    Where the points run (:mod:`propagate.runner`): in this process, one after
    another (the default), or on Dask when ``workers`` (a local cluster of that
    many single-threaded worker processes), ``scheduler`` (the address of a
    running cluster) or ``client`` is given (the dataset is sent to each worker
    once). The grid runs in rounds: every grid point and every prediction at
    once, then one bisection step of every configuration at once per
    refinement round; points are saved as they finish, in this process. Each
    point is trained with its own seeds, so the tables do not depend on where
    or in which order points ran (on Dask, torch uses ``options.threads``
    threads per task, default 1; the same number of threads in process gives
    the same numbers bit for bit). ``trainer`` and ``predictor`` must then be
    importable functions (Dask pickles them by reference). A point that fails
    raises its error (it is recorded in ``points/KEY.failed.json`` too).

    ``predict_only``: compute the predictions and train nothing (the
    ``points`` and ``seeds`` tables are empty, the measured columns NaN).
    """
    engine = choose_engine(workers, scheduler, client, label="trainability")
    options = options or TrainabilityOptions()
    if predict_only:
        options = replace(options, predict=True)
    plan = _plan(configs, lrs, dataset, options, trainer, predictor,
                 on_dask=engine.name == "dask", stored=out_dir is not None)
    out = Path(out_dir) if out_dir is not None else None
    with contextlib.ExitStack() as stack:
        store = None
        if out is not None:
            stack.enter_context(claim(out, _folder_identity(plan), resume=resume, option="--out"))
            store = PointStore(out / "points")
        with engine:
            grid = _Grid(plan, engine, store, resume, progress)
            if predict_only:
                grid.tried = {n: [] for n in plan.names}
            # round 0: the grid (and the predictions); then one bisection step of every configuration per round
            grid.run_round([(n, lr) for n in plan.names for lr, _ in grid.tried[n]],
                           plan.names if plan.options.predict else [])
            grid.extend(0 if predict_only else plan.options.extend)
            grid.refine(0 if predict_only else plan.options.refine)
        tables = _tables(grid)
        meta = _metadata(plan, configs, engine.name)
        if out is not None:
            _write_tables(out, tables, meta)
    return TrainabilityResult(meta=meta, **tables)


# ------------------------------------------------------------ first epoch


def _hidden_weights(model) -> list:
    """The weight matrix of every hidden Dense layer, in layer order (readout excluded)."""
    return [m.weight for m in model.modules() if getattr(m, "op", None) is not None and m.op.has_weights and m.op.tap]


def _probe(model, x, y, mode: str) -> list[dict]:
    """Per hidden layer ``pre_var``, ``pre_mean`` and ``grad_norm`` of a one-seed model on ``(x, y)``: the
    training probe's (:func:`propagate.train.probe_layer_stats`, :func:`propagate.stats.measure`)."""
    from propagate.train import probe_layer_stats

    return [{"layer": r["layer"], "pre_var": r["pre_var"], "pre_mean": r["pre_mean"], "grad_norm": r["grad_norm"]}
            for r in probe_layer_stats(model, x, y, mode) if r["layer"] > 0]


def _update_norms(weights, before) -> dict:
    """``grad``: each weight's gradient's Frobenius norm; ``ratio``: ``||W - W_before||_F / ||W_before||_F``."""
    import torch

    with torch.no_grad():
        return {"grad": [float(w.grad.norm()) for w in weights],
                "ratio": [float((w - b).norm() / b.norm()) if float(b.norm()) > 0 else float("nan")
                          for w, b in zip(weights, before)]}


def first_epoch_dynamics(spec, options, dataset, *, probe_size: int = 256, max_steps: int | None = None,
                         on_step: Callable[[dict], None] | None = None):
    """Per-layer statistics at log-spaced steps of the first epoch (one seed, ``options.seed``).

    ``options``: :class:`propagate.train.TrainOptions` (lr, optimizer, batch);
    the optimizer is training's own (:func:`propagate.optim.make_optimizer`).
    The minibatches are a shuffle of the training split drawn from
    ``options.seed`` (this loop's own, not :func:`propagate.train.train`'s).
    Step ``s`` means "after ``s`` updates". At each recorded step, on a fixed
    probe batch (the first ``probe_size`` training images), training's probe
    (:func:`propagate.train.probe_layer_stats`) in the first of training's
    probe modes (:func:`propagate.train.probe_modes`: train mode with
    BatchNorm, else eval mode): ``pre_var``, ``pre_mean`` (a variance
    and mean pooled over samples and units of ``h^l``), ``grad_norm`` (RMS
    over samples of the L2 norm of d loss(sample) / d h^l), ``weight_norm``
    (Frobenius norm of W^l); and, for the
    update that led to step ``s`` (NaN at step 0), ``weight_grad_norm``
    (Frobenius norm of d(minibatch mean loss) / dW^l) and ``update_ratio``
    (``||W_s - W_{s-1}||_F / ||W_{s-1}||_F``). ``loss``: that minibatch's
    loss (nats). Stops at the first non-finite loss (``diverged=True`` on the
    rows of that step). Returns a DataFrame, one row per (step, layer),
    ``layer`` = 1..depth. ``on_step(info)`` (tests, diagnostics) gets
    ``{"step", "loss", "model"}`` after every update.
    """
    import pandas as pd
    import torch
    import torch.nn.functional as F

    from propagate.optim import make_optimizer
    from propagate.spec import build_model
    from propagate.train import probe_modes

    xtr, ytr = dataset.arrays("train")
    x, y = torch.from_numpy(xtr), torch.from_numpy(ytr)
    n, mode = len(y), probe_modes(spec)[0]
    # a batch-coupled op (BatchNorm) cannot normalize a batch of one: the last, partial batch is dropped
    nb = n // options.batch_size if mode == "train" else -(-n // options.batch_size)
    nb = nb if max_steps is None else min(nb, int(max_steps))
    record = set(log_steps(nb))
    rows: list[dict] = []
    with torch.random.fork_rng():
        torch.manual_seed(options.seed)
        model = build_model(spec, seed=options.seed)
        opt = make_optimizer(model.parameters(), options)
        xp, yp = x[:probe_size], y[:probe_size]
        order = torch.randperm(n, generator=torch.Generator().manual_seed(options.seed + 7919))
        weights = _hidden_weights(model)
        nan = [float("nan")] * len(weights)
        state = {"grad": nan, "ratio": nan, "loss": float("nan"), "diverged": False}

        def snapshot(step):
            for r in _probe(model, xp, yp, mode):
                i = r["layer"] - 1
                rows.append({"step": step, **r, "weight_norm": float(weights[i].detach().norm()),
                             "weight_grad_norm": state["grad"][i],
                             "update_ratio": state["ratio"][i], "loss": state["loss"],
                             "diverged": state["diverged"]})

        snapshot(0)
        for step in range(1, nb + 1):
            idx = order[(step - 1) * options.batch_size : step * options.batch_size]
            out = model(x[idx])
            loss = F.cross_entropy(out[0] if out.dim() == 3 else out, y[idx])
            state["loss"] = float(loss.detach())
            if not math.isfinite(state["loss"]):
                state.update(grad=nan, ratio=nan, diverged=True)
                snapshot(step)
                break
            before = [w.detach().clone() for w in weights] if step in record else None
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if before is not None:
                state.update(_update_norms(weights, before))
                snapshot(step)
            if on_step is not None:
                on_step({"step": step, "loss": state["loss"], "model": model})
    cols = ["step", "layer", "pre_var", "pre_mean", "grad_norm", "weight_norm", "weight_grad_norm", "update_ratio",
            "loss", "diverged"]
    return pd.DataFrame(rows, columns=cols)
