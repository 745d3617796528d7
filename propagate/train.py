"""Training lens: train a spec's networks on MNIST, many seeds at once, and record per-layer statistics.

:func:`train` runs the lecture demo's Keras recipe in torch (defaults of
:class:`TrainOptions`): RMSprop (lr 1e-3, rho 0.9 = torch ``alpha``, eps 1e-7
added outside the square root as Keras does), categorical cross-entropy on the
softmax (= ``cross_entropy`` on the logits; Keras additionally clips
probabilities to [1e-7, 1 - 1e-7], which only matters for losses above ~16),
batch 128, 3 epochs, the training set reshuffled every epoch. BN keeps
torch's running variance (unbiased batch variance, as Keras >= 2.1.3 does).

Ensembles. ``seeds`` (or ``options.seeds``) trains ``N`` independent networks
of one configuration, seeds ``options.seed .. options.seed + N - 1``, as one
batched model (:func:`propagate.spec.build_model` with ``seeds``: weights
stacked along a leading seed dimension, ``torch.baddbmm``). Seed ``k`` has the
initial weights and the shuffling order of a single run with ``seed=k``
(each epoch's order depends only on ``(k, epoch)``), and its loss is its own
batch mean: the loss minimised is the *sum* over seeds of each seed's mean
loss, so every seed's gradient is exactly its single-run gradient, and
RMSprop/Adam/SGD, which act elementwise, update every seed as its single run
would. Nothing couples the seeds (no gradient clipping; BatchNorm statistics
and running averages are per seed). Dropout and alpha dropout masks
come from one generator per seed, restarted every epoch at
:func:`propagate.layers.dropout_seed` ``(k, epoch)`` (a stream of its own,
unrelated to the weights' and the shuffles'). Seed ``k`` of an ensemble
therefore matches the single run ``seed=k`` to float32 round-off, with or
without dropout (tested).

Metrics per seed and epoch (one row of ``TrainResult.history``):

- ``loss``, ``acc``: Keras' running numbers, the mean over the epoch's samples
  of the per-batch loss/accuracy measured in train mode (BN with batch
  statistics, dropout on) while the weights change;
- ``val_loss``, ``val_acc``: on the test split in eval mode (BN with running
  statistics);
- ``train_eval_acc``: accuracy on (a fixed prefix of) the training split in eval
  mode after the epoch, so train-mode vs inference-mode BN is visible;
- ``seconds``: wall time of the epoch's optimization steps (of the whole
  ensemble: the seeds train together).

``TrainResult.summary`` (``summary.csv`` of a run folder) gives, per epoch,
each metric's mean over the requested seeds and its 95% Student t confidence
interval on the scale of the metric's range (:func:`propagate.runstore.summarize_history`:
logit scale for accuracies, which stay in [0, 1]; log scale for losses, which
stay positive): columns ``<metric>_mean``, ``<metric>_ci_low``,
``<metric>_ci_high`` and ``n_seeds`` (no interval with one seed).

Per-layer statistics (``TrainResult.layers``, the :mod:`propagate.stats` table
with ``source="training"`` and a ``seed`` column, computed by
:func:`propagate.stats.measure`) are measured on a fixed probe batch (the
first ``probe_size`` training images, the same for every seed) at
initialization (``epoch = 0``) and after every epoch, with ``mode="eval"``
(running BN statistics, no dropout) and, for BN networks, also
``mode="train"`` (batch statistics). Probing never changes the training: BN
running statistics and the random number state are restored. ``grad_norm``
is the gradient of the per-sample cross-entropy (one sample's loss, not the
batch mean) with respect to each pre-activation ``h^l``.

Divergence is a result, per seed: a seed's first non-finite batch loss ends
that seed's training (its weights stay as they were before that batch), its
partial epoch is recorded with ``diverged=True``; the other seeds go on.

Resumable runs: with ``run_dir``, after every epoch the metrics, the layer
statistics and a checkpoint (each seed's weights, optimizer state and status)
are written atomically (:class:`propagate.runstore.RunStore` keeps every
seed's progress and writes the folder); a later call with ``resume=True``
continues every seed from its last finished epoch and gives the same numbers
as an uninterrupted run, because each epoch's shuffle and dropout stream
depend only on ``(seed, epoch)`` (no random state needs saving; tested with
dropout). Asking for more seeds than a folder holds trains the new seeds from
scratch (a separate ensemble) and keeps the old ones. The lecture demo's runs
(every preset at every learning rate) are :mod:`propagate.reproduce`.

Memory: before any work, an ensemble whose estimated working set
(:func:`estimate_memory`) exceeds the device's limit is refused with one line.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Callable, Sequence

from propagate.errors import UserError
from propagate.limits import MEMORY_SHARE, check_seeds, format_bytes, memory_limit, training_bytes
from propagate.presets import PRESETS, Preset, get_preset, list_presets
from propagate.runstore import (HISTORY_COLUMNS, METRICS, RunStore, load_seed_states, restore_seed, run_identity,
                                seed_state, summarize_history)
from propagate.stats import measure
from propagate.kernels import training_forward
from propagate.optim import make_optimizer
from propagate.torch_settings import torch_settings

__all__ = [
    "TrainOptions",
    "TrainResult",
    "train",
    "train_group",
    "probe_layer_stats",
    "probe_modes",
    "training_settings",
    "shuffle_seed",
    "resolve_device",
    "estimate_memory",
    "check_memory",
    "seed_list",
    "summarize_history",
    "run_identity",
    "format_epoch_line",
    "get_preset",
    "list_presets",
    "Preset",
    "PRESETS",
    "OPTIMIZERS",
    "METRICS",
    "HISTORY_COLUMNS",
]

OPTIMIZERS = ("rmsprop", "sgd", "adam")


@dataclass(frozen=True)
class TrainOptions:
    """How to train (defaults: the lecture demo's Keras settings).

    Attributes:
        optimizer: ``rmsprop`` (Keras: rho 0.9, eps 1e-7), ``sgd`` (``momentum``)
            or ``adam`` (Keras: betas 0.9/0.999, eps 1e-7).
        lr: learning rate (step size).
        epochs: passes over the training split.
        batch_size: samples per step; the last, smaller batch of an epoch is
            kept (as Keras does) unless it holds a single sample and the
            network uses BN.
        seed: the first seed: weights (``build_model``), the per-epoch shuffles
            and dropout masks (each seed its own streams).
        seeds: number of networks trained together, seeds ``seed .. seed + seeds - 1``.
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (cuda if available).
        probe_size: training images in the fixed probe batch for layer statistics.
        train_eval_size: training images (a fixed prefix) for ``train_eval_acc``;
            0 = all.
        threads: torch CPU threads (``None``: one per core). Part of the
            numerics: the thread count changes the order of float sums, and a
            52-layer net amplifies such rounding, so "same seed, same numbers"
            holds for the same seed, thread count and machine.
        rho: RMSprop's decay of the squared-gradient average (torch ``alpha``).
        eps: optimizer epsilon (added outside the square root).
        momentum: SGD momentum.
        warmup: linear warmup over this many optimizer steps: step ``t``
            (1-based, counted from the start of training) uses
            ``lr * min(1, t / warmup)``; 0 = none.
        deterministic: ask torch for deterministic algorithms (CPU).
        flush_denormal: flush subnormal floats to zero while training: vanishing
            signals in deep ReLU stacks otherwise make CPU float32 math crawl.
    """

    optimizer: str = "rmsprop"
    lr: float = 1e-3
    epochs: int = 3
    batch_size: int = 128
    seed: int = 0
    seeds: int = 1
    device: str = "cpu"
    probe_size: int = 512
    train_eval_size: int = 10000
    threads: int | None = None
    rho: float = 0.9
    eps: float = 1e-7
    momentum: float = 0.0
    warmup: int = 0
    deterministic: bool = True
    flush_denormal: bool = True

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raise :class:`UserError` on impossible settings."""
        if self.optimizer not in OPTIMIZERS:
            raise UserError(f"unknown optimizer {self.optimizer!r}; use one of {', '.join(OPTIMIZERS)}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise UserError(f"learning rate must be > 0, got {self.lr}")
        for name in ("epochs", "batch_size", "seeds"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise UserError(f"{name.replace('_', ' ')} must be a whole number >= 1, got {v!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise UserError(f"seed must be a whole number >= 0, got {self.seed!r}")
        check_seeds(self.seed, self.seeds, "seed")  # 0 <= seed .. seed + seeds - 1 <= 2^63 - 1
        if not isinstance(self.probe_size, int) or self.probe_size < 2:
            raise UserError(f"probe size must be a whole number >= 2, got {self.probe_size!r}")
        if not isinstance(self.train_eval_size, int) or self.train_eval_size < 0:
            raise UserError(f"train eval size must be >= 0, got {self.train_eval_size!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise UserError(f"threads must be >= 1, got {self.threads!r}")
        if not 0 <= self.rho < 1:
            raise UserError(f"rho must be in [0, 1), got {self.rho}")
        if not self.eps > 0:
            raise UserError(f"eps must be > 0, got {self.eps}")
        if not 0 <= self.momentum < 1:
            raise UserError(f"momentum must be in [0, 1), got {self.momentum}")
        if not isinstance(self.warmup, int) or self.warmup < 0:
            raise UserError(f"warmup must be a whole number of steps >= 0, got {self.warmup!r}")

    def lr_at(self, step: int) -> float:
        """The learning rate of optimizer step ``step`` (1-based, from the start of training): linear warmup, then ``lr``."""
        return self.lr * min(1.0, step / self.warmup) if self.warmup else self.lr

    @property
    def seed_list(self) -> list[int]:
        """The seeds trained: ``seed .. seed + seeds - 1``."""
        return list(range(self.seed, self.seed + self.seeds))

    def with_(self, **changes) -> "TrainOptions":
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainOptions":
        keys = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in keys})


def seed_list(seed: int = 0, seeds: int | Sequence[int] | None = None) -> list[int]:
    """The seeds of a run: ``seeds`` consecutive ones from ``seed``, or the given list (distinct, >= 0)."""
    if seeds is None:
        return [int(seed)]
    if isinstance(seeds, int):
        check_seeds(seed, seeds, "seed")
        return list(range(int(seed), int(seed) + seeds))
    out = [int(s) for s in seeds]
    if not out or len(set(out)) != len(out):
        raise UserError(f"seeds must be distinct whole numbers >= 0, got {list(seeds)}")
    check_seeds(min(out), max(out) - min(out) + 1, "seeds")  # every one in 0 .. 2^63 - 1
    return out


@dataclass
class TrainResult:
    """What :func:`train` returns.

    ``history``: one row per seed and finished (or diverged) epoch with columns
    :data:`HISTORY_COLUMNS` (losses in nats per sample, accuracies as
    fractions). ``summary``: per epoch, mean and 95% t interval over seeds of
    each of :data:`METRICS` and ``n_seeds``. ``layers``: the
    :mod:`propagate.stats` table (``source="training"``, columns ``seed``,
    ``epoch`` and ``mode``). ``seed_status``: per seed ``"finished"``,
    ``"diverged"`` or ``"partial"``; ``status``: ``"partial"`` if any seed is,
    ``"diverged"`` if every seed diverged, else ``"finished"``. ``model`` is the
    (last) batched model, its networks in the order of ``model.seeds``.
    """

    spec: Any
    options: TrainOptions
    history: Any
    layers: Any
    meta: dict
    status: str
    seeds: list = field(default_factory=list)
    seed_status: dict = field(default_factory=dict)
    summary: Any = None
    model: Any = field(default=None, repr=False)

    @property
    def diverged(self) -> bool:
        return self.status == "diverged"

    @property
    def diverged_seeds(self) -> list[int]:
        return [s for s, st in self.seed_status.items() if st == "diverged"]


# ---------------------------------------------------------------- small helpers


def format_epoch_line(row: dict) -> str:
    """Keras-like epoch line: ``epoch 1/3 - 12.3s - loss: 2.3014 - acc: 0.1122 - val_loss: ... - val_acc: ...``.

    With ``seed`` in ``row`` (an ensemble's seed), the line starts ``seed K:``.
    """
    parts = [f"epoch {int(row['epoch'])}/{int(row.get('epochs', row['epoch']))}", f"{row['seconds']:.1f}s"]
    for key in METRICS:
        if key in row:
            parts.append(f"{key}: {row[key]:.4f}")
    if row.get("diverged"):
        parts.append("DIVERGED")
    line = " - ".join(parts)
    if row.get("seed") is not None and row.get("n_seeds", 1) > 1:
        line = f"seed {int(row['seed'])}: {line}"
    return f"{row['run']}: {line}" if row.get("run") else line


def shuffle_seed(seed: int, epoch: int) -> int:
    """The torch seed of seed ``seed``'s shuffle of the training split in epoch ``epoch`` (1-based)."""
    # Depends only on (seed, epoch), so a resumed run shuffles like an uninterrupted one.
    return (int(seed) * 1_000_003 + int(epoch) * 7_919 + 0x5EED) % (2**63 - 1)


def resolve_device(name: str):
    """The torch device of ``name`` (``cpu``, ``cuda``, ``cuda:N`` or ``auto``); UserError if it is unusable."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise UserError(f"unknown device {name!r} (use cpu, cuda, cuda:N or auto)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError("device 'cuda' requested but torch sees no CUDA GPU; use --device cpu")
    return dev


@contextlib.contextmanager
def training_settings(options: TrainOptions, device):
    """:func:`propagate.torch_settings.torch_settings` of ``options`` for the run, and the global random state kept."""
    import torch

    with torch_settings(threads=options.threads or os.cpu_count() or 1, flush_denormal=bool(options.flush_denormal),
                        deterministic=bool(options.deterministic and device.type == "cpu")):
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            yield


@contextlib.contextmanager
def _frozen_buffers(model):
    """Undo any change of the model's buffers (BN running statistics) made inside the block."""
    saved = [(b, b.clone()) for b in model.buffers()]
    try:
        yield
    finally:
        for b, v in saved:
            b.copy_(v)


@contextlib.contextmanager
def _frozen_dropout(model):
    """Undo any draw from the model's per-seed dropout generators made inside the block (a probe in train mode)."""
    gens = getattr(model, "dropout_generators", [])
    saved = [g.get_state() for g in gens]
    try:
        yield
    finally:
        for g, st in zip(gens, saved):
            g.set_state(st)


# ------------------------------------------------------------------- memory


#: Resident memory of a process that has imported torch, numpy, pandas and scipy (measured: ~350 MiB).
PROCESS_BASELINE = 400 * 2**20


def estimate_memory(spec, options: TrainOptions, n_seeds: int | None = None, n_train: int = 60_000,
                    n_test: int = 10_000) -> int:
    """Bytes a process training an ensemble of ``n_seeds`` networks of ``spec`` needs (an estimate, float32).

    ``n_seeds`` times one network's weights, gradients, optimizer state and
    the activations of a batch and of the probe batch
    (:func:`propagate.limits.training_bytes`, the estimate ``propagate train``
    checks before loading data) plus the fused RMSprop's scratch copy of the
    weights and the checkpoint's copy of weights and optimizer state; the
    dataset on the device once; and :data:`PROCESS_BASELINE`. Calibration
    (``benchmarks/bench_train.py``, no run folder, so no checkpoint copy): the
    lecture demo's network, 2,048 images, peak RSS 0.56 / 1.04 / 1.71 GiB for 1 / 4 / 8
    seeds; this estimate 0.60 / 1.20 / 1.99 GiB.
    """
    S = options.seeds if n_seeds is None else int(n_seeds)
    widths = list(spec.widths) + ([spec.out_features] if spec.out_features else [])
    n_params = sum(a * b + b for a, b in zip(widths[:-1], widths[1:]))
    per_seed = training_bytes(widths, options.batch_size, options.probe_size, 0, options.optimizer)
    states = {"rmsprop": 2, "adam": 2, "sgd": 1 if options.momentum else 0}[options.optimizer]
    per_seed += 4 * n_params if options.optimizer == "rmsprop" else 0
    per_seed += 4 * n_params * (1 + states)  # the checkpoint's copy of weights and optimizer state (with a run folder)
    return int(PROCESS_BASELINE + S * per_seed + 4 * (n_train + n_test) * widths[0])


def _device_memory(device) -> tuple[int | None, str]:
    """(bytes a run may plan to use on ``device``, a description), or ``(None, ...)`` when unknown."""
    if device.type == "cuda":
        import torch

        try:
            total = int(torch.cuda.mem_get_info(device)[1])
        except (RuntimeError, AttributeError):
            return None, "the GPU"
        return int(total * 0.9), f"{0.9:.0%} of the GPU's"
    return memory_limit(), f"{MEMORY_SHARE:.0%} of this machine's"


def check_memory(spec, options: TrainOptions, n_seeds: int, n_train: int, n_test: int, device=None) -> int:
    """Refuse (:class:`UserError`, one line with the estimate) an ensemble that would not fit; return the estimate."""
    import torch

    device = device if device is not None else torch.device("cpu")
    need = estimate_memory(spec, options, n_seeds, n_train, n_test)
    limit, what = _device_memory(device)
    if limit is not None and need > limit:
        total = limit / (0.9 if device.type == "cuda" else MEMORY_SHARE)
        raise UserError(f"training {n_seeds} seed{'s' if n_seeds != 1 else ''} of this network needs about "
                        f"{format_bytes(need)} of memory, more than {what} {format_bytes(total)}; "
                        f"use fewer --seeds (or train them in several runs)")
    return need


# ----------------------------------------------------------------- layer stats


def probe_modes(spec) -> tuple[str, ...]:
    """The modes a probe batch measures ``spec``'s network in (training's rule; :func:`propagate.trainability.first_epoch_dynamics` records the first).

    Eval mode always: the network as it predicts (BatchNorm's running
    statistics, no dropout noise on the measurement, each sample alone). Train
    mode too, and first, when an op couples the samples of a batch (BatchNorm,
    :func:`propagate.layers.batch_coupled`): the statistics training itself
    sees, which eval mode's running averages lag behind (at initialization they
    are 0 and 1). LayerNorm acts on each sample alone and computes the same in
    both modes, and dropout is only noise on the measurement, so neither decides.
    """
    from propagate.layers import batch_coupled

    return ("train", "eval") if batch_coupled(spec.compile()) else ("eval",)


def probe_layer_stats(model, x, y, mode: str = "eval") -> list[dict]:
    """Per-seed, per-layer statistics of the batched ``model`` on the batch ``(x, y)``, as :mod:`propagate.stats` rows.

    ``x`` ``[B, in]`` is the same batch for every seed. ``mode="eval"`` uses BN
    running statistics and no dropout; ``"train"`` uses batch statistics (and
    dropout). The model's buffers (BN running statistics), its train/eval mode
    and the global random state are left unchanged. For each seed (column
    ``seed``, in ``model.seeds`` order), row ``layer=0`` is the input and rows
    ``1..depth`` the hidden layers, each computed by
    :func:`propagate.stats.measure` (``sample_se``: standard errors across the
    probe samples). ``grad_norm`` is the root-mean-square over samples of the
    L2 norm over units of d(loss of one sample)/d h^l. ``diverged`` is True
    from a seed's first layer with a non-finite pre-activation on.
    """
    import torch
    import torch.nn.functional as F

    act = model.spec.act
    seeds = list(model.seeds)
    S = len(seeds)
    was_training = model.training
    model.train(mode == "train")
    try:
        with _frozen_buffers(model), _frozen_dropout(model), \
                torch.random.fork_rng(devices=[x.device] if x.is_cuda else []):
            with torch.enable_grad():
                out, rec = model(x, record=True)
                loss = F.cross_entropy(out.reshape(S * out.shape[1], -1), y.repeat(S), reduction="sum")
                pre = rec["pre"]
                if loss.requires_grad and pre:
                    grads = torch.autograd.grad(loss, pre, allow_unused=True)
                else:  # pragma: no cover - model without parameters needing grad
                    grads = [None] * len(pre)
    finally:
        model.train(was_training)

    def split(stats: dict) -> list[dict]:
        cols = {k: (v.tolist() if hasattr(v, "tolist") else [v] * S) for k, v in stats.items()}
        return [{k: float(v[s]) for k, v in cols.items()} for s in range(S)]

    rows: list[list[dict]] = [[] for _ in range(S)]
    x0 = x.detach().flatten(1).unsqueeze(0).expand(S, -1, -1)
    for s, st in enumerate(split(measure(inputs=x0, sample_se=True)[0])):
        rows[s].append({"seed": seeds[s], "layer": 0, "width": x0.shape[2], **st, "diverged": False})
    diverged = torch.zeros(S, dtype=torch.bool, device=x.device)
    with torch.no_grad():
        for i, h in enumerate(pre):
            h = h.detach()
            post = rec["post"][i].detach() if i < len(rec["post"]) else None
            g = grads[i].detach() if grads[i] is not None else None
            stats, _ = measure(pre=h, post=post, grad=g, act=act, sample_se=True)
            diverged |= ~torch.isfinite(h).flatten(1).all(1)
            div = diverged.tolist()
            for s, st in enumerate(split(stats)):
                rows[s].append({"seed": seeds[s], "layer": i + 1, "width": h.shape[2], **st, "diverged": div[s]})
    return [r for per_seed in rows for r in per_seed]


# ---------------------------------------------------------------------- train


def _evaluate(model, x, y, batch: int = 1000):
    """Per seed: mean cross-entropy (nats) and accuracy in eval mode, as two lists in ``model.seeds`` order."""
    import torch
    import torch.nn.functional as F

    S = len(model.seeds)
    if len(y) == 0:
        return [float("nan")] * S, [float("nan")] * S
    was = model.training
    model.eval()
    loss_sum = torch.zeros(S, dtype=torch.float64, device=x.device)
    correct = torch.zeros(S, dtype=torch.int64, device=x.device)
    with torch.no_grad():
        for i in range(0, len(y), batch):
            out = model(x[i : i + batch])
            yc = y[i : i + batch]
            ce = F.cross_entropy(out.reshape(S * len(yc), -1), yc.repeat(S), reduction="none").view(S, -1)
            loss_sum += ce.sum(1, dtype=torch.float64)
            correct += (out.argmax(-1) == yc).sum(1)
    model.train(was)
    return (loss_sum / len(y)).tolist(), (correct.double() / len(y)).tolist()


def _dataset_tensors(dataset, device):
    import torch

    xtr, ytr = dataset.arrays("train")
    xte, yte = dataset.arrays("test")
    t = lambda a: torch.from_numpy(a).to(device)  # noqa: E731
    return t(xtr), t(ytr), t(xte), t(yte)


@dataclass
class _Run:
    """What one call of :func:`train` works with (the data on the device, the fixed batches, the options)."""

    spec: Any
    options: TrainOptions
    device: Any
    xtr: Any
    ytr: Any
    xte: Any
    yte: Any
    probe: tuple
    n_eval: int
    modes: tuple
    label: str
    progress: bool
    on_step: Callable[[dict], None] | None
    keep_state: bool = False


def _make_run(spec, options: TrainOptions, dataset, device, label: str, progress: bool, on_step,
              keep_state: bool) -> _Run:
    """The data on ``device``, the probe batch (first ``probe_size`` training images) and the evaluation prefix."""
    xtr, ytr, xte, yte = _dataset_tensors(dataset, device)
    n = len(ytr)
    probe_n = min(options.probe_size, n)
    return _Run(spec, options, device, xtr, ytr, xte, yte, (xtr[:probe_n], ytr[:probe_n]),
                n if options.train_eval_size == 0 else min(options.train_eval_size, n),
                probe_modes(spec), label, progress, on_step, keep_state)


def _member_probe_rows(run: _Run, model, epoch: int) -> list[list[dict]]:
    """Per member of ``model`` (in order) its probe rows, mode by mode (members may share a seed number)."""
    S = len(model.seeds)
    out: list[list[dict]] = [[] for _ in range(S)]
    for mode in run.modes:
        rows = probe_layer_stats(model, *run.probe, mode)  # member after member, the same number of rows each
        n = len(rows) // S
        for i in range(S):
            out[i] += [{**r, "epoch": epoch, "mode": mode} for r in rows[i * n : (i + 1) * n]]
    return out


def _epoch_order(seeds: list[int], n: int, epoch: int, device):
    """``[S, n]``: each seed's own shuffle of the training split for ``epoch`` (from ``(seed, epoch)`` alone)."""
    import torch

    orders = []
    for s in seeds:
        gen = torch.Generator()
        gen.manual_seed(shuffle_seed(s, epoch))
        orders.append(torch.randperm(n, generator=gen))
    return torch.stack(orders).to(device)


class _Tally:
    """One epoch's per-seed running loss and accuracy, and the seeds that stopped (diverged) with their state.

    ``active[i]`` is False for a seed that diverged, now or before: its state
    is saved before its failing batch (:func:`propagate.runstore.seed_state`)
    and put back after every step, so it stays as a single run would stop.
    """

    def __init__(self, model, opt, active: list[bool], device):
        import torch

        S = len(active)
        self.model, self.opt, self.active, self.device = model, opt, active, device
        self.saved = {i: seed_state(model, opt, i, to_cpu=False) for i in range(S) if not active[i]}
        self.mask = torch.tensor(active, device=device)
        self.loss_sum, self.seen = [0.0] * S, [0] * S
        self.correct = torch.zeros(S, dtype=torch.int64, device=device)
        self.newly: list[int] = []

    def diverge(self, lv: list[float], batch: int) -> None:
        """Stop every active seed whose batch loss ``lv[i]`` is not finite (before the step changes it)."""
        import torch

        changed = False
        for i, v in enumerate(lv):
            if self.active[i] and not math.isfinite(v):
                changed = True
                self.active[i] = False
                self.newly.append(i)
                self.loss_sum[i], self.seen[i] = float("nan"), self.seen[i] + batch
                self.saved[i] = seed_state(self.model, self.opt, i, to_cpu=False)  # what it keeps
        if changed:
            self.mask = torch.tensor(self.active, device=self.device)

    def restore(self) -> None:
        for i, st in self.saved.items():
            restore_seed(self.model, self.opt, i, st)

    def add(self, lv: list[float], hits, batch: int) -> None:
        self.correct += hits * self.mask
        for i, v in enumerate(lv):
            if self.active[i]:
                self.loss_sum[i] += v * batch
                self.seen[i] += batch

    def running_loss(self) -> float:
        live = [i for i, a in enumerate(self.active) if a]
        return sum(self.loss_sum[i] / self.seen[i] for i in live) / len(live)

    def summary(self, seconds: float) -> dict:
        hits = self.correct.tolist()
        S = len(self.seen)
        return {"loss": [self.loss_sum[i] / self.seen[i] if self.seen[i] else float("nan") for i in range(S)],
                "acc": [hits[i] / self.seen[i] if self.seen[i] else float("nan") for i in range(S)],
                "seconds": seconds}


def _step(run: _Run, model, opt, idx, tally: _Tally, want_grad: bool = False):
    """One optimizer step on the batch ``idx`` ``[S, B]`` of every seed; ``(losses, hits, grad norms)``, or ``None``
    once no seed is left. ``want_grad``: also each seed's gradient norm (:func:`_grad_norms`), else ``None``."""
    import torch
    import torch.nn.functional as F

    S, B = idx.shape
    xb, yb = run.xtr[idx], run.ytr[idx]  # [S, B, in], [S, B]
    # the fused chain where it applies: the optimizer then updates each layer inside loss.backward(), except on a
    # step whose gradient norm is asked for (the gradient then stays in .grad and opt.step() applies the same update)
    out = training_forward(model, xb, None if want_grad else opt)
    per_seed = F.cross_entropy(out.reshape(S * B, -1), yb.reshape(-1), reduction="none").view(S, B).mean(1)
    lv = per_seed.detach().double().tolist()  # the step's one synchronization
    tally.diverge(lv, B)
    if not any(tally.active):
        return None
    hits = (out.detach().argmax(-1) == yb).sum(1)
    opt.zero_grad(set_to_none=True)
    # sum over seeds of each seed's mean loss: seed i's gradient is its single run's
    loss = torch.where(tally.mask, per_seed, torch.zeros_like(per_seed)).sum()
    loss.backward()
    # read before the optimizer step, the one moment every path holds the whole gradient in .grad (an optimizer
    # that updates inside the backward pass must not be handed to the forward on such a step)
    norms = _grad_norms(model) if want_grad else None
    opt.step()
    tally.restore()
    tally.add(lv, hits, B)
    return lv, hits, norms


def _grad_norms(model) -> list[float]:
    """Per seed, the L2 norm of this step's gradient over all of the seed's parameters (stacked ``[S, ...]``)."""
    import torch

    total = None
    for p in model.parameters():
        if p.grad is None:
            continue
        sq = p.grad.detach().reshape(p.grad.shape[0], -1).double().square().sum(1)
        total = sq if total is None else total + sq
    if total is None:
        return [float("nan")] * len(model.seeds)
    return torch.sqrt(total).tolist()


def _wants_gradient(on_step, step: int) -> bool:
    """Whether ``on_step`` asks for step ``step``'s gradient norm (its ``wants_gradient(step)``, when it has one)."""
    ask = getattr(on_step, "wants_gradient", None)
    return bool(ask(step)) if callable(ask) else False


def _train_epoch(run: _Run, model, opt, epoch: int, active: list[bool]) -> tuple[dict, list[int]]:
    """One epoch of the batched model; returns per-seed running ``loss``/``acc``, seconds, and the seeds that diverged.

    ``active[i]`` is False for a seed that diverged before (it stays as it
    was); a seed whose batch loss is non-finite becomes inactive from that
    batch on, as a single run stops (see :class:`_Tally`).
    """
    from tqdm import tqdm

    from propagate.layers import seed_dropout

    opts = run.options
    seeds = list(model.seeds)
    n, bs = len(run.ytr), opts.batch_size
    order = _epoch_order(seeds, n, epoch, run.device)
    # each seed's dropout stream from (seed, epoch) alone, so a resumed run draws an uninterrupted one's masks
    seed_dropout(model, epoch)
    tally = _Tally(model, opt, active, run.device)
    nb = (n + bs - 1) // bs
    model.train()
    t0 = time.perf_counter()
    bar = tqdm(total=nb, desc=f"{run.label} epoch {epoch}/{opts.epochs}", file=sys.stderr, disable=not run.progress,
               leave=False, unit="batch", dynamic_ncols=True)
    with bar:
        for b in range(nb):
            idx = order[:, b * bs : (b + 1) * bs]
            if run.spec.batchnorm and idx.shape[1] < 2:
                continue  # BN cannot normalize a batch of one
            if opts.warmup:
                for group in opt.param_groups:
                    group["lr"] = opts.lr_at((epoch - 1) * nb + b + 1)
            t = (epoch - 1) * nb + b + 1  # the step over the whole run, as the warmup counts it
            step = _step(run, model, opt, idx, tally, run.on_step is not None and _wants_gradient(run.on_step, t))
            if step is None:
                break
            if run.on_step is not None:
                run.on_step({"epoch": epoch, "batch": b, "step": t, "seeds": seeds, "loss": step[0],
                             "acc": (step[1].double() / idx.shape[1]).tolist(), "active": list(active),
                             "grad_norm": step[2], "model": model})
            bar.update(1)
            if b % 20 == 0 and any(active):
                bar.set_postfix(loss=f"{tally.running_loss():.4f}", refresh=False)
    seconds = time.perf_counter() - t0
    tally.restore()
    return tally.summary(seconds), tally.newly


def _train_group(run: _Run, members: list[tuple[int, int]], specs: list, stores: list[RunStore], start_epoch: int,
                 callbacks: list) -> Any:
    """Train ``members``, ``(configuration, seed)`` pairs all at ``start_epoch - 1`` finished epochs, as one batched model.

    Configuration ``c`` has the spec ``specs[c]``, the store ``stores[c]`` and
    the epoch callback ``callbacks[c]`` (or ``None``).
    """
    from propagate.spec import build_model

    opts = run.options
    seeds = [s for _, s in members]
    model = build_model(run.spec, seeds=seeds, specs=[specs[c] for c, _ in members], device=run.device)
    opt = make_optimizer(model.parameters(), opts, members=len(members))
    if start_epoch > 1:
        # dropout needs no saved random state: _train_epoch restarts each seed's stream from (seed, epoch)
        load_seed_states(model, opt, [stores[c].seeds[s]["state"] for c, s in members])
    else:
        for (c, s), rows in zip(members, _member_probe_rows(run, model, 0)):
            stores[c].begin([s], rows)
    active = [stores[c].seeds[s]["status"] != "diverged" for c, s in members]
    for epoch in range(start_epoch, opts.epochs + 1):
        if not any(active):
            break
        was_active = list(active)
        ep, newly = _train_epoch(run, model, opt, epoch, active)
        val_loss, val_acc = _evaluate(model, run.xte, run.yte)
        _, tr_acc = _evaluate(model, run.xtr[: run.n_eval], run.ytr[: run.n_eval])
        probe = _member_probe_rows(run, model, epoch)
        rows = []
        for i, (c, s) in enumerate(members):
            if not was_active[i]:
                continue
            row = {"seed": s, "epoch": epoch, "loss": ep["loss"][i], "acc": ep["acc"][i], "val_loss": val_loss[i],
                   "val_acc": val_acc[i], "train_eval_acc": tr_acc[i], "seconds": ep["seconds"],
                   "diverged": i in newly}
            stores[c].end_epoch(s, row, probe[i], i in newly,
                                seed_state(model, opt, i) if run.keep_state else None)  # the state: for the checkpoint
            rows.append((c, row))
        for c in sorted({c for c, _ in members}):
            stores[c].save()
        for c, row in rows:
            if callbacks[c] is not None:
                callbacks[c]({**row, "epochs": opts.epochs, "n_seeds": sum(m == c for m, _ in members)})
    model.eval()
    return model


def _ensemble_options(options: TrainOptions, seeds) -> tuple[TrainOptions, list[int]]:
    """``options`` with ``seed``/``seeds`` set from :func:`train`'s ``seeds`` argument, and the seed list."""
    wanted = seed_list(options.seed, options.seeds if seeds is None else seeds)
    if seeds is not None and not isinstance(seeds, int):
        options = options.with_(seed=wanted[0], seeds=len(wanted))
    elif seeds is not None:
        options = options.with_(seeds=len(wanted))
    return options, wanted


def train(
    spec,
    options: TrainOptions | None = None,
    dataset=None,
    progress: bool = False,
    callback: Callable[[dict], None] | None = None,
    *,
    seeds: int | Sequence[int] | None = None,
    run_dir: str | os.PathLike | None = None,
    resume: bool = True,
    name: str | None = None,
    preset: Preset | None = None,
    on_step: Callable[[dict], None] | None = None,
) -> TrainResult:
    """Train the networks of ``spec`` for every seed on ``dataset`` (a :class:`propagate.data.Dataset`), together.

    ``options`` defaults to the lecture demo's Keras settings. ``seeds``: a number of
    seeds (from ``options.seed``) or a list of seeds; default
    ``options.seeds`` consecutive seeds from ``options.seed``. ``callback(row)``
    is called after every epoch with each seed's history row plus ``epochs``
    (total), ``n_seeds`` and ``run`` (``name``); :func:`format_epoch_line`
    renders it like Keras. ``progress`` shows a tqdm bar per epoch on stderr.
    ``on_step(info)`` (tests, diagnostics) gets every step's per-seed batch loss
    and accuracy (``info["loss"]``, ``info["acc"]``, lists in ``info["seeds"]``
    order, measured before that step changed the weights), ``info["step"]``
    (1-based over the whole run), ``info["model"]`` after the step, and
    ``info["grad_norm"]``: per seed the L2 norm of the step's gradient over
    all parameters when ``on_step.wants_gradient(step)`` is true (an
    ``on_step`` object with that method, e.g. :class:`propagate.steplog.StepLog`),
    else ``None``.

    With ``run_dir``, ``history.csv``, ``layers.csv``, ``summary.csv`` (each with
    a ``.meta.json``), ``spec.json`` and ``checkpoint.pt`` are written there
    atomically after every epoch (:class:`propagate.runstore.RunStore`); with
    ``resume`` an existing checkpoint of the
    same configuration is continued per seed (a finished or diverged seed is
    returned as is, or trained further when ``options.epochs`` is larger; a seed
    the folder lacks is trained from scratch). The folder's ``history.csv``,
    ``layers.csv`` and checkpoint cover every seed it holds; ``summary.csv`` and
    the result, the requested seeds only. A checkpoint of a different
    configuration raises :class:`UserError`. An ensemble that would not fit in
    memory is refused before any work (:func:`check_memory`).
    """
    return train_group([(spec, seeds)], options, dataset, progress, callback, run_dirs=[run_dir], resume=resume,
                       names=[name], presets=[preset], on_step=on_step)[0]


def _group_plan(configs, options: TrainOptions, run_dirs, names, presets) -> list[tuple]:
    """Per configuration of :func:`train_group`: ``(spec, options, seeds, run_dir, name, preset)``, checked."""
    from propagate.spec import same_architecture

    configs = [tuple(c) for c in configs]
    if not configs or any(len(c) != 2 for c in configs):
        raise UserError("train_group needs (spec, seeds) pairs, at least one")
    n = len(configs)
    run_dirs, names, presets = (list(x) if x is not None else [None] * n for x in (run_dirs, names, presets))
    if not len(run_dirs) == len(names) == len(presets) == n:
        raise UserError(f"give one run folder, name and preset per configuration ({n})")
    folders = [os.path.abspath(d) for d in run_dirs if d is not None]
    if len(set(folders)) != len(folders):
        raise UserError("each configuration of a group needs a run folder of its own")
    first = configs[0][0]
    for spec, _ in configs:
        if not same_architecture(first, spec):
            raise UserError(f"{spec.label()} cannot train in one model with {first.label()}: the configurations "
                            "of a group may differ only in their initializer")
    plan = []
    for (spec, seeds), run_dir, name, preset in zip(configs, run_dirs, names, presets):
        opts, wanted = _ensemble_options(options, seeds)
        plan.append((spec, opts, wanted, run_dir, name, preset))
    return plan


def train_group(
    configs: Sequence[tuple],
    options: TrainOptions | None = None,
    dataset=None,
    progress: bool = False,
    callback: Callable[[dict], None] | None = None,
    *,
    run_dirs: Sequence | None = None,
    resume: bool = True,
    names: Sequence[str | None] | None = None,
    presets: Sequence[Preset | None] | None = None,
    on_step: Callable[[dict], None] | None = None,
) -> list[TrainResult]:
    """Train several configurations of one architecture as one batched model; one :class:`TrainResult` each.

    ``configs``: ``(spec, seeds)`` pairs, ``seeds`` as :func:`train`'s (a
    number from ``options.seed``, a list, or ``None`` for ``options.seeds``).
    The specs may differ only in their initializer
    (:func:`propagate.spec.same_architecture`; :class:`UserError` otherwise),
    e.g. SELU + BN with ``random_uniform`` and with ``lecun_uniform``. Every
    ``(configuration, seed)`` is one member of the model
    (:func:`propagate.spec.build_model` with ``specs``), configuration after
    configuration, and member ``(c, k)`` trains as the single run
    ``train(spec_c, options, seeds=[k])`` does (its weights, shuffles, dropout
    masks and divergence its own), so each configuration's result equals
    :func:`train`'s for it, to float32 round-off; the seeds of different
    configurations may be the same. ``run_dirs``, ``names`` and ``presets``
    (one per configuration, or ``None``) are :func:`train`'s ``run_dir``,
    ``name`` and ``preset``: each configuration keeps its own run folder,
    resumed per seed; members at the same epoch train together.
    ``callback(row)`` gets each configuration's rows as :func:`train` gives
    them (``run``: that configuration's name); a row's ``seconds`` is the
    epoch's time of the whole model; ``on_step`` sees every member
    (``info["seeds"]`` in member order). The memory check counts every member.
    ``TrainResult.model`` is the (last) batched model of all configurations.
    """
    if dataset is None:
        raise UserError("train needs a dataset (see propagate.data.load_dataset)")
    options = options or TrainOptions()
    plan = _group_plan(configs, options, run_dirs, names, presets)
    device = resolve_device(options.device)
    if int(dataset.n_train) == 0:
        raise UserError(f"dataset {dataset.name!r} has no training images")
    spec = plan[0][0]
    check_memory(spec, options, sum(len(p[2]) for p in plan), int(dataset.n_train), int(dataset.n_test), device)
    labels = [name or cspec.label() for cspec, _, _, _, name, _ in plan]
    # One writer per run folder, and no resumption with other settings or data (propagate.runfolder);
    # the locks are held until this function returns.
    with contextlib.ExitStack() as stack:
        stores = [stack.enter_context(RunStore(cspec, opts, dataset, folder=run_dir, resume=resume, label=label,
                                               preset=preset, device=device))
                  for (cspec, opts, _, run_dir, _, preset), label in zip(plan, labels)]
        for store, p in zip(stores, plan):
            store.ask(p[2])
        stack.enter_context(training_settings(options, device))
        run = _make_run(spec, options, dataset, device, " + ".join(labels), progress, on_step,
                        keep_state=any(st.keeps_state for st in stores))
        callbacks = [None if callback is None else (lambda row, n=p[4]: callback({**row, "run": n})) for p in plan]
        model = None
        # Members at the same point train together; a resumption that adds seeds trains them as another group.
        starts: dict[int, list[tuple[int, int]]] = {}
        for c, (store, p) in enumerate(zip(stores, plan)):
            for start, group in store.groups(p[2]).items():
                starts.setdefault(start, []).extend((c, s) for s in group)
        for start, members in sorted(starts.items(), reverse=True):
            model = _train_group(run, members, [p[0] for p in plan], stores, start, callbacks)
        for store in stores:
            store.save_summary()  # the summary of these seeds, also when every one of them was done already
        return [_result(store, p, model) for store, p in zip(stores, plan)]


def _result(store: RunStore, plan: tuple, model) -> TrainResult:
    """One configuration's :class:`TrainResult` from its store (``plan``: its entry of :func:`_group_plan`)."""
    spec, options, wanted = plan[:3]
    status = store.status(wanted)
    history, layers = store.frames(wanted)
    meta = {**store.meta(), "status": store.overall(status), "seeds": wanted, "seed_status": status}
    return TrainResult(spec=spec, options=options, history=history, layers=layers, meta=meta,
                       status=store.overall(status), seeds=wanted, seed_status=status,
                       summary=summarize_history(history), model=model)
