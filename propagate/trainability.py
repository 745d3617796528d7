"""The learning rate as an axis: where each configuration stops training, and what its first steps look like.

:func:`trainability` trains every configuration at every learning rate of a
log-spaced grid, each (configuration, lr) as an ensemble of seeds, and reports:

- per (configuration, lr), the final training and test numbers of the last
  epoch (``loss``, ``acc``, ``val_loss``, ``val_acc``, ``train_eval_acc``; see
  :mod:`propagate.train` for their definitions; losses in nats per sample,
  accuracies as fractions) as ``<metric>_mean``, ``<metric>_ci_low``,
  ``<metric>_ci_high`` (95% Student t interval over seeds,
  :func:`propagate.confidence.t_interval`), ``n_seeds``, ``n_diverged`` and an
  ``outcome``:

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
  ``censored=True``). With ``refine=K``, ``K`` bisection steps in log space
  (geometric midpoints) between those two narrow the bracket by ``2^K`` in
  log lr. Next to it ``max_lr_predicted`` from the sharpness at
  initialization (:func:`propagate.sharpness.network_sharpness`; for RMSprop
  ``2 / lambda_1(P^{-1} H)``, Cohen et al. 2022) and ``ratio`` =
  measured / predicted; also plain gradient descent's ``2 / lambda_1(H)``
  (``max_lr_predicted_gd``) and ``ratio_gd`` = measured / that.

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
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from propagate.errors import UserError
from propagate.train import probe_layer_stats, probe_modes

__all__ = [
    "DEFAULT_LRS",
    "METRICS",
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
    (its other settings are the seed's defaults). ``criterion``/``level``: a
    (configuration, lr) *trains* when the lower 95% bound of ``criterion``
    (final-epoch training accuracy) exceeds ``level``. ``refine``: bisection
    steps per configuration. ``predict``: compute the sharpness prediction;
    ``sharpness_batch``, ``warmup_steps``, ``lanczos_iters``: its settings
    (:func:`propagate.sharpness.network_sharpness`).
    """

    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: int = 3
    optimizer: str = "rmsprop"
    batch_size: int = 128
    criterion: str = "acc"
    level: float = 0.5
    refine: int = 0
    predict: bool = True
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
        if self.criterion not in ("acc", "train_eval_acc", "val_acc"):
            raise UserError(f"criterion must be acc, train_eval_acc or val_acc, got {self.criterion!r}")
        if not 0 <= self.level < 1:
            raise UserError(f"level must be in [0, 1), got {self.level}")
        if not isinstance(self.refine, int) or self.refine < 0:
            raise UserError(f"refine must be a whole number >= 0, got {self.refine!r}")
        for name in ("epochs", "batch_size", "sharpness_batch", "lanczos_iters"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise UserError(f"{name.replace('_', ' ')} must be a whole number >= 1, got {v!r}")

    def train_options(self, lr: float):
        """The :class:`propagate.train.TrainOptions` of one run at ``lr`` (seed set per run)."""
        from propagate.train import TrainOptions

        return TrainOptions(optimizer=self.optimizer, lr=float(lr), epochs=self.epochs, batch_size=self.batch_size,
                            seed=self.seeds[0], device=self.device, threads=self.threads,
                            probe_size=self.probe_size)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["seeds"] = list(self.seeds)
        return d


@dataclass
class TrainabilityResult:
    """``points``: one row per (config, lr) (see the module docstring); ``configs``: one row per
    configuration; ``seeds``: one row per (config, lr, seed) with the raw final numbers."""

    points: object
    configs: object
    seeds: object
    meta: dict = field(default_factory=dict)


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
    """``diverged``, ``trains`` or ``fails`` for one (configuration, lr) (rules in the module docstring)."""
    from propagate.confidence import t_interval

    if any(r.get("diverged") for r in seed_rows):
        return "diverged"
    iv = t_interval([r[criterion] for r in seed_rows])
    if iv.n == 0:
        return "fails"
    bound = iv.low if iv.n >= 2 else iv.mean
    return "trains" if bound > level else "fails"


def summarize_point(config: str, lr: float, seed_rows: Sequence[dict], criterion: str = "acc",
                    level: float = 0.5, refined: bool = False) -> dict:
    """One row of the per-(configuration, lr) table from the per-seed final numbers."""
    from propagate.confidence import t_interval

    row = {"config": config, "lr": float(lr), "refined": bool(refined)}
    for m in METRICS:
        iv = t_interval([r[m] for r in seed_rows])
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


def _lr_key(lr: float) -> str:
    return f"{lr:.6g}"


def _file_name(config: str) -> str:
    # custom labels look like "relu/glorot_uniform+BN": keep them readable but path-safe
    import re

    return re.sub(r"[^A-Za-z0-9._+-]", "_", config)


def _point_task(trainer, spec, train_options, seeds, dataset) -> list[dict]:
    """One (configuration, lr) ensemble: the per-seed final numbers (a Dask task, or called in process)."""
    return [dict(r) for r in trainer(spec, train_options, seeds, dataset)]


def _predict_task(predictor, spec, train_options, dataset, settings: dict) -> dict:
    """One configuration's sharpness prediction (a Dask task, or called in process)."""
    if predictor is None:
        from propagate.sharpness import network_sharpness

        return dict(network_sharpness(spec, dataset, train_options, **settings))
    return dict(predictor(spec, train_options, dataset))


class _InProcess:
    """Runs a round's tasks here, one after another, in the order given."""

    def run(self, tasks):
        for key, fn, args in tasks:
            yield key, fn(*args)


class _OnDask:
    """Runs a round's tasks on a Dask cluster (the dataset is sent to every worker once); yields them as they finish."""

    def __init__(self, client, dataset):
        self.client = client
        self.dataset = dataset
        self._data = None

    def run(self, tasks):
        import os

        from distributed import as_completed

        if not tasks:
            return
        if self._data is None:
            self._data = self.client.scatter(self.dataset, broadcast=True, hash=False)
        token = os.urandom(4).hex()
        futures = {}
        for i, (key, fn, args) in enumerate(tasks):
            args = tuple(self._data if a is self.dataset else a for a in args)
            futures[self.client.submit(fn, *args, key=f"propagate-trainability-{token}-{i}", pure=False)] = key
        try:
            for fut in as_completed(list(futures)):
                yield futures[fut], fut.result()
                fut.release()
        finally:
            for fut in futures:  # an interruption leaves no work queued on a shared cluster
                try:
                    fut.cancel()
                except Exception:  # noqa: BLE001 - the cluster may be gone already
                    pass


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
) -> TrainabilityResult:
    """Train each ``(name, spec)`` of ``configs`` at each learning rate; the trainability tables.

    ``dataset``: a :class:`propagate.data.Dataset`. ``trainer`` defaults to
    :func:`train_ensemble`; ``predictor(spec, train_options, dataset) -> dict``
    (with at least ``max_lr_predicted``) defaults to
    :func:`propagate.sharpness.network_sharpness`. ``progress(message)`` is
    called after every point. With ``out_dir`` each finished point is saved in
    ``out_dir/points/`` at once (so an interrupted run resumes where it
    stopped, ``resume``), and ``points.csv``, ``configs.csv`` (and ``.json``)
    and ``seeds.csv`` are written at the end.

    Where the points run: in this process, one after another (the default), or
    on Dask (:func:`propagate.cluster.dask_client`) when ``workers`` (a local
    cluster of that many single-threaded worker processes), ``scheduler`` (the
    address of a running cluster) or ``client`` is given. On Dask the grid
    runs in rounds: every grid point and every prediction at once, then one
    bisection step of every configuration at once per refinement round; points
    are saved as they finish, in this process. Each point is trained with its
    own seeds, so the tables do not depend on where or in which order points
    ran (on Dask, torch uses ``options.threads`` threads per task, default 1;
    the same number of threads in process gives the same numbers bit for bit).
    ``trainer`` and ``predictor`` must then be importable functions (Dask
    pickles them by reference).
    """
    import json

    import pandas as pd

    from propagate.io import atomic_write_json, run_metadata, write_table

    options = options or TrainabilityOptions()
    lrs = sorted({float(lr) for lr in lrs})
    if not lrs or any(not (math.isfinite(lr) and lr > 0) for lr in lrs):
        raise UserError(f"learning rates must be finite and > 0, got {lrs}")
    if not configs:
        raise UserError("no configurations to run")
    names = [n for n, _ in configs]
    if len(set(names)) != len(names):
        raise UserError(f"configuration names must differ, got {names}")
    on_dask = workers is not None or bool(scheduler) or client is not None
    if workers is not None and (scheduler or client is not None):
        raise UserError("--workers applies to the local cluster; drop it with --scheduler")
    if workers is not None and workers < 1:
        raise UserError(f"workers must be >= 1, got {workers}")
    trainer = trainer or train_ensemble
    if dataset is None:
        raise UserError("trainability needs a dataset (see propagate.data.load_dataset)")
    if on_dask and options.threads is None:
        from dataclasses import replace

        options = replace(options, threads=1)
    out = Path(out_dir) if out_dir is not None else None
    lock = None
    if out is not None:
        from propagate.data import dataset_identity
        from propagate.runfolder import claim

        ident = {"kind": "trainability", "options": {k: v for k, v in options.to_dict().items()
                                                      if k not in ("refine", "device", "threads", "predict",
                                                                   "sharpness_batch", "warmup_steps",
                                                                   "lanczos_iters")},
                 "dataset": dataset_identity(dataset)}
        lock = claim(out, ident, resume=resume, option="--out")

    specs = dict(configs)
    settings = {"batch": options.sharpness_batch, "warmup_steps": options.warmup_steps,
                "iters": options.lanczos_iters}
    rows_of: dict[tuple[str, str], list[dict]] = {}  # (config, lr key) -> per-seed rows
    preds: dict[str, dict] = {}

    def point_cache(name, lr):
        return out / "points" / f"{_file_name(name)}_lr{_lr_key(lr)}.json" if out is not None else None

    def pred_cache(name):
        return out / "points" / f"{_file_name(name)}_sharpness.json" if out is not None else None

    def cached_point(name, lr):
        cache = point_cache(name, lr)
        if cache is not None and resume and cache.is_file():
            return json.loads(cache.read_text())["seeds"]
        return None

    def cached_pred(name):
        cache = pred_cache(name)
        if cache is not None and resume and cache.is_file():
            saved = json.loads(cache.read_text())
            return saved["prediction"] if saved.get("settings") == settings else None
        return None

    def run_round(engine, points: list[tuple[str, float]], predict: list[str]) -> None:
        """Train ``points`` and compute the ``predict`` configurations' predictions not already known."""
        tasks = []
        for name, lr in points:
            rows = cached_point(name, lr)
            if rows is not None:
                rows_of[(name, _lr_key(lr))] = rows
            else:
                tasks.append((("point", name, lr), _point_task,
                              (trainer, specs[name], options.train_options(lr), options.seeds, dataset)))
        for name in predict:
            pred = cached_pred(name)
            if pred is not None:
                preds[name] = pred
            else:
                tasks.append((("predict", name, None), _predict_task,
                              (predictor, specs[name], options.train_options(lrs[0]), dataset, settings)))
        for (kind, name, lr), value in engine.run(tasks):
            if kind == "point":
                rows_of[(name, _lr_key(lr))] = value
                if out is not None:
                    atomic_write_json(point_cache(name, lr), {"config": name, "lr": lr, "spec": specs[name].to_dict(),
                                                              "seeds": value})
                if progress is not None:
                    p = summarize_point(name, lr, value, options.criterion, options.level)
                    progress(f"{name} lr {lr:.3g}: {p['outcome']} ({options.criterion} "
                             f"{p[options.criterion + '_mean']:.3f}, {p['n_diverged']}/{p['n_seeds']} diverged)")
            else:
                preds[name] = value
                if out is not None:
                    atomic_write_json(pred_cache(name), {"config": name, "settings": settings, "prediction": value})
                if progress is not None:
                    v = value.get("max_lr_predicted")
                    progress(f"{name}: predicted largest lr {float('nan') if v is None else float(v):.3g}")

    seed_rows: list[dict] = []
    point_rows: list[dict] = []
    config_rows: list[dict] = []
    try:
        with contextlib.ExitStack() as stack:
            if on_dask:
                from propagate.cluster import dask_client

                engine = _OnDask(stack.enter_context(dask_client(workers, scheduler, client)), dataset)
            else:
                engine = _InProcess()
            # round 0: the grid (and the predictions); then one bisection step of every configuration per round
            run_round(engine, [(n, lr) for n in names for lr in lrs], names if options.predict else [])
            tried = {n: [(lr, False) for lr in lrs] for n in names}

            def bracket(name):
                pts = [summarize_point(name, lr, rows_of[(name, _lr_key(lr))], options.criterion, options.level)
                       for lr, _ in tried[name]]
                return max_lr_of(pts)

            for _ in range(options.refine):
                mids = {}
                for n in names:
                    lo, hi = bracket(n)
                    if math.isfinite(lo) and math.isfinite(hi):
                        mids[n] = math.sqrt(lo * hi)
                if not mids:
                    break
                run_round(engine, list(mids.items()), [])
                for n, mid in mids.items():
                    tried[n].append((mid, True))

        for name in names:
            pts = []
            for lr, refined in tried[name]:
                rows = rows_of[(name, _lr_key(lr))]
                for r in rows:
                    seed_rows.append({"config": name, "lr": float(lr), "refined": refined, **r})
                pts.append(summarize_point(name, lr, rows, options.criterion, options.level, refined))
            point_rows.extend(pts)
            lo, hi = max_lr_of(pts)
            row = {"config": name, "max_lr_measured": lo, "max_lr_bad": hi,
                   "censored": bool(math.isfinite(lo) and not math.isfinite(hi)),
                   "first_diverged_lr": min((p["lr"] for p in pts if p["outcome"] == "diverged"), default=float("nan")),
                   "n_refined": sum(p["refined"] for p in pts)}
            if options.predict:
                pred = preds[name]
                # JSON (a resumed run) has null for NaN and "inf" for infinity
                num = {k: float("nan") if pred.get(k) is None else float(pred[k])
                       for k in ("max_lr_predicted", "sharpness", "precond_sharpness", "threshold_constant",
                                 "warmup_steps")}
                row["max_lr_predicted"] = num["max_lr_predicted"]
                s = num["sharpness"]
                row["max_lr_predicted_gd"] = 2.0 / s if s > 0 else float("nan")
                for k in ("sharpness", "precond_sharpness", "threshold_constant", "warmup_steps"):
                    row[k] = num[k]
            else:
                row["max_lr_predicted"] = float("nan")
            mp = row["max_lr_predicted"]
            row["ratio"] = lo / mp if (math.isfinite(lo) and mp and math.isfinite(mp) and mp > 0) else float("nan")
            gd = row.get("max_lr_predicted_gd", float("nan"))
            row["ratio_gd"] = lo / gd if (math.isfinite(lo) and math.isfinite(gd) and gd > 0) else float("nan")
            config_rows.append(row)

        points = pd.DataFrame(point_rows).sort_values(["config", "lr"], kind="stable").reset_index(drop=True)
        configs_df = pd.DataFrame(config_rows)
        seeds_df = pd.DataFrame(seed_rows)
        meta = run_metadata(seed=options.seeds[0], kind="trainability", options=options.to_dict(), lrs=lrs,
                            configs={n: s.to_dict() for n, s in configs},
                            dataset={"name": dataset.name, "n_train": dataset.n_train, "n_test": dataset.n_test},
                            engine=("dask" if on_dask else "in process"),
                            definitions={"trains": f"no seed diverged and the lower 95% t bound of final "
                                                   f"{options.criterion} > {options.level}",
                                         "diverged": "at least one seed's training loss was inf/NaN"})
        if out is not None:
            write_table(points, out / "points.csv", meta)
            write_table(points, out / "points.json", meta)
            write_table(configs_df, out / "configs.csv", meta)
            write_table(configs_df, out / "configs.json", meta)
            write_table(seeds_df, out / "seeds.csv", meta)
    finally:
        if lock is not None:
            lock.release()
    return TrainabilityResult(points=points, configs=configs_df, seeds=seeds_df, meta=meta)


# ------------------------------------------------------------ first epoch


def _hidden_weights(model) -> list:
    """The weight matrix of every hidden Dense layer, in layer order (readout excluded)."""
    return [m.weight for m in model.modules() if getattr(m, "op", None) is not None and m.op.has_weights and m.op.tap]


def _probe(model, x, y, mode: str) -> list[dict]:
    """Per hidden layer ``pre_var``, ``pre_mean`` and ``grad_norm`` of a one-seed model on ``(x, y)``: the
    training probe's (:func:`propagate.train.probe_layer_stats`, :func:`propagate.stats.measure`)."""
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
