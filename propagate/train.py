"""Training lens: train a spec's networks on MNIST, many seeds at once, and record per-layer statistics.

:func:`train` runs the seed's Keras recipe in torch (defaults of
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
each metric's mean over seeds and its 95% Student t confidence interval
(:func:`propagate.confidence.summarize_seeds`): columns ``<metric>_mean``,
``<metric>_ci_low``, ``<metric>_ci_high`` and ``n_seeds`` (no interval with one
seed).

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
are written atomically; a later call with ``resume=True`` continues every seed
from its last finished epoch and gives the same numbers as an uninterrupted
run, because each epoch's shuffle and dropout stream depend only on
``(seed, epoch)`` (no random state needs saving; tested with dropout). Asking for more seeds than a folder holds trains the new
seeds from scratch (a separate ensemble) and keeps the old ones.

Memory: before any work, an ensemble whose estimated working set
(:func:`estimate_memory`) exceeds the device's limit is refused with one line.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from propagate.errors import UserError
from propagate.presets import PRESETS, Preset, get_preset, list_presets
from propagate.stats import measure
from propagate.torch_settings import torch_settings

__all__ = [
    "TrainOptions",
    "TrainResult",
    "train",
    "probe_layer_stats",
    "probe_modes",
    "estimate_memory",
    "check_memory",
    "seed_list",
    "summarize_history",
    "reproduce",
    "summary_markdown",
    "format_epoch_line",
    "get_preset",
    "list_presets",
    "Preset",
    "PRESETS",
    "OPTIMIZERS",
    "METRICS",
]

OPTIMIZERS = ("rmsprop", "sgd", "adam")

#: The per-seed metrics of an epoch (columns of ``history``), summarized over seeds in ``summary``.
METRICS = ("loss", "acc", "val_loss", "val_acc", "train_eval_acc")

# Files of a run folder.
HISTORY_FILE, LAYERS_FILE, SPEC_FILE, CHECKPOINT_FILE = "history.csv", "layers.csv", "spec.json", "checkpoint.pt"
SUMMARY_FILE = "summary.csv"

# Options that may differ between an interrupted run and its resumption (seeds: resumption is per seed).
_RESUME_FREE = {"epochs", "device", "threads", "seed", "seeds"}

#: Columns of ``history``, in order.
HISTORY_COLUMNS = ["seed", "epoch", *METRICS, "seconds", "diverged"]


@dataclass(frozen=True)
class TrainOptions:
    """How to train (defaults: the seed's Keras settings).

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
        if not isinstance(self.seed, int) or self.seed < 0:
            raise UserError(f"seed must be a whole number >= 0, got {self.seed!r}")
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
        if seeds < 1:
            raise UserError(f"seeds must be a whole number >= 1, got {seeds}")
        return list(range(int(seed), int(seed) + seeds))
    out = [int(s) for s in seeds]
    if not out or len(set(out)) != len(out) or min(out) < 0:
        raise UserError(f"seeds must be distinct whole numbers >= 0, got {list(seeds)}")
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


def _shuffle_seed(seed: int, epoch: int) -> int:
    # Depends only on (seed, epoch), so a resumed run shuffles like an uninterrupted one.
    return (int(seed) * 1_000_003 + int(epoch) * 7_919 + 0x5EED) % (2**63 - 1)


def _resolve_device(name: str):
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
def _torch_settings(options: TrainOptions, device):
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
    seed network, 2,048 images, peak RSS 0.56 / 1.04 / 1.71 GiB for 1 / 4 / 8
    seeds; this estimate 0.60 / 1.20 / 1.99 GiB.
    """
    from propagate.limits import training_bytes

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
    from propagate.limits import MEMORY_SHARE, memory_limit

    return memory_limit(), f"{MEMORY_SHARE:.0%} of this machine's"


def check_memory(spec, options: TrainOptions, n_seeds: int, n_train: int, n_test: int, device=None) -> int:
    """Refuse (:class:`UserError`, one line with the estimate) an ensemble that would not fit; return the estimate."""
    import torch

    from propagate.limits import format_bytes

    device = device if device is not None else torch.device("cpu")
    need = estimate_memory(spec, options, n_seeds, n_train, n_test)
    limit, what = _device_memory(device)
    if limit is not None and need > limit:
        total = limit / (0.9 if device.type == "cuda" else _memory_share())
        raise UserError(f"training {n_seeds} seed{'s' if n_seeds != 1 else ''} of this network needs about "
                        f"{format_bytes(need)} of memory, more than {what} {format_bytes(total)}; "
                        f"use fewer --seeds (or train them in several runs)")
    return need


def _memory_share() -> float:
    from propagate.limits import MEMORY_SHARE

    return MEMORY_SHARE


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


def _config_of(spec, options: TrainOptions) -> dict:
    opts = {k: v for k, v in options.to_dict().items() if k not in _RESUME_FREE}
    return {"spec": spec.to_dict(), "options": opts}


def _save_checkpoint(path: Path, state: dict) -> None:
    import torch

    from propagate.io import atomic_write_bytes

    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def _load_checkpoint(path: Path) -> dict | None:
    import torch

    if not path.is_file():
        return None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a damaged checkpoint is a user-visible problem, not a crash
        raise UserError(f"cannot read checkpoint {path}: {exc.__class__.__name__}; delete it or use --no-resume") from None
    if not isinstance(ckpt, dict) or "seeds" not in ckpt:
        raise UserError(f"{path} is a checkpoint of an older propagate (one seed, no per-seed state); "
                        f"delete it or use --no-resume")
    return ckpt


# Per-seed state of a batched model and its optimizer: every parameter, buffer and
# elementwise optimizer state is stacked along a leading seed dimension, so seed i
# is the slice [i]; scalars (Adam's step count) are shared by the group.


def _seed_state(model, opt, i: int, to_cpu: bool = True) -> dict:
    """Copies of seed ``i``'s weights, buffers and optimizer state (on the CPU for checkpoints)."""

    def copy(t):
        t = t.detach()
        return t.to("cpu", copy=True) if to_cpu else t.clone()

    params = list(model.parameters())
    opt_state = {}
    for j, p in enumerate(params):
        st = opt.state.get(p, {})
        opt_state[j] = {k: (copy(v[i]) if hasattr(v, "shape") and v.shape == p.shape else
                            (copy(v) if hasattr(v, "detach") else v)) for k, v in st.items()}
    return {"model": {k: copy(v[i]) for k, v in model.state_dict().items() if v.dim() > 0},
            "optimizer": opt_state}


def _load_seed_states(model, opt, states: list[dict]) -> None:
    import torch

    sd = model.state_dict()
    for k, v in sd.items():
        if v.dim() > 0:
            v.copy_(torch.stack([st["model"][k] for st in states]))
    params = list(model.parameters())
    for j, p in enumerate(params):
        per = [st["optimizer"].get(j, {}) for st in states]
        if not per[0]:
            continue
        opt.state[p] = {k: (torch.stack([q[k] for q in per]).to(p.device) if hasattr(v, "shape") and v.dim() > 0
                            else (v.clone() if hasattr(v, "clone") else v)) for k, v in per[0].items()}


def _restore_seed(model, opt, i: int, st: dict) -> None:
    """Put seed ``i``'s saved state back (a diverged seed stays as it was before its failing batch)."""
    import torch

    with torch.no_grad():
        for k, v in model.state_dict().items():
            if v.dim() > 0:
                v[i].copy_(st["model"][k])
        for j, p in enumerate(model.parameters()):
            for k, v in st["optimizer"].get(j, {}).items():
                cur = opt.state.get(p, {}).get(k)
                if cur is not None and hasattr(cur, "shape") and cur.shape == p.shape:
                    cur[i].copy_(v)


def run_identity(spec, options: TrainOptions, dataset) -> dict:
    """What a training run folder records and a resumption must match (see :mod:`propagate.runfolder`):
    the spec, the options that change results, and the dataset's identity (checksum of the arrays used)."""
    from propagate.data import dataset_identity

    return {"kind": "train", "config": _config_of(spec, options), "dataset": dataset_identity(dataset)}


def _claim_run_dir(run_dir, config: dict, dataset, resume: bool):
    """Lock ``run_dir`` and check it holds this configuration and data (None without a run folder)."""
    if run_dir is None:
        return None
    from propagate.data import dataset_identity
    from propagate.runfolder import claim

    return claim(run_dir, {"kind": "train", "config": config, "dataset": dataset_identity(dataset)},
                 resume=resume, discard=(CHECKPOINT_FILE,))


def reproduce_identity(dataset) -> dict:
    """What a reproduction folder records: its data (each run's settings are checked by :func:`train`)."""
    from propagate.data import dataset_identity

    return {"kind": "reproduce", "dataset": dataset_identity(dataset)}


def _claim_reproduce_dir(out: Path, dataset, resume: bool):
    """Lock a reproduction folder and check its data (:func:`reproduce_identity`)."""
    from propagate.runfolder import claim

    return claim(out, reproduce_identity(dataset), resume=resume)


def _frames(spec, history_rows, layer_rows):
    import pandas as pd

    from propagate.stats import layer_table

    history = pd.DataFrame(history_rows, columns=HISTORY_COLUMNS)
    history = history.sort_values(["seed", "epoch"], kind="stable").reset_index(drop=True)
    layers = layer_table(layer_rows, source="training", config=spec.label())
    if len(layers):
        layers = layers.sort_values(["seed", "epoch"], kind="stable").reset_index(drop=True)
    return history, layers


def summarize_history(history):
    """Per epoch: mean and 95% Student t interval over seeds of each of :data:`METRICS`, and ``n_seeds``.

    Columns ``epoch``, ``<metric>_mean``, ``<metric>_ci_low``, ``<metric>_ci_high``
    (:func:`propagate.confidence.summarize_seeds`; no interval with one seed;
    a diverged seed's NaN loss is left out of the loss's mean) and ``n_seeds``
    (seeds with a row for that epoch; a diverged seed has none after its
    divergence).
    """
    from propagate.confidence import summarize_seeds

    return summarize_seeds(history, keys=["epoch"], metrics=list(METRICS)).sort_values("epoch").reset_index(drop=True)


def _write_run_files(run_dir: Path, spec, history, layers, meta) -> None:
    from propagate.io import atomic_write_json, write_table

    write_table(history, run_dir / HISTORY_FILE, meta)
    write_table(layers, run_dir / LAYERS_FILE, meta)
    write_table(summarize_history(history), run_dir / SUMMARY_FILE, meta)
    atomic_write_json(run_dir / SPEC_FILE, {"spec": spec.to_dict(), "options": meta["options"],
                                            "preset": meta.get("preset"), "status": meta["status"],
                                            "epochs_done": meta["epochs_done"], "seeds": meta["seeds"],
                                            "seed_status": meta["seed_status"]})


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


def _probe_rows(run: _Run, model, epoch: int) -> list[dict]:
    rows = []
    for mode in run.modes:
        rows += [{**r, "epoch": epoch, "mode": mode} for r in probe_layer_stats(model, *run.probe, mode)]
    return rows


def _train_epoch(run: _Run, model, opt, epoch: int, active: list[bool]) -> tuple[dict, list[int]]:
    """One epoch of the batched model; returns per-seed running ``loss``/``acc``, seconds, and the seeds that diverged.

    ``active[i]`` is False for a seed that diverged before (its state is restored
    after every step, so it stays as it was); a seed whose batch loss is
    non-finite becomes inactive from that batch on, as a single run stops.
    """
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    from propagate.layers import seed_dropout

    opts, dev = run.options, run.device
    seeds = list(model.seeds)
    S, n, bs = len(seeds), len(run.ytr), opts.batch_size
    orders = []
    for s in seeds:
        gen = torch.Generator()
        gen.manual_seed(_shuffle_seed(s, epoch))
        orders.append(torch.randperm(n, generator=gen))
    order = torch.stack(orders).to(dev)  # [S, n]: each seed's own shuffle
    # each seed's dropout stream from (seed, epoch) alone, so a resumed run draws an uninterrupted one's masks
    seed_dropout(model, epoch)
    saved = {i: _seed_state(model, opt, i, to_cpu=False) for i in range(S) if not active[i]}
    act_mask = torch.tensor(active, device=dev)
    loss_sum = [0.0] * S
    correct = torch.zeros(S, dtype=torch.int64, device=dev)
    seen = [0] * S
    newly: list[int] = []
    nb = (n + bs - 1) // bs
    model.train()
    t0 = time.perf_counter()
    bar = tqdm(total=nb, desc=f"{run.label} epoch {epoch}/{opts.epochs}", file=sys.stderr, disable=not run.progress,
               leave=False, unit="batch", dynamic_ncols=True)
    with bar:
        for b in range(nb):
            idx = order[:, b * bs : (b + 1) * bs]
            B = idx.shape[1]
            if run.spec.batchnorm and B < 2:
                continue  # BN cannot normalize a batch of one
            xb, yb = run.xtr[idx], run.ytr[idx]  # [S, B, in], [S, B]
            out = model(xb)
            per_seed = F.cross_entropy(out.reshape(S * B, -1), yb.reshape(-1), reduction="none").view(S, B).mean(1)
            lv = per_seed.detach().double().tolist()  # the step's one synchronization
            changed = False
            for i in range(S):
                if active[i] and not math.isfinite(lv[i]):
                    changed = True
                    active[i] = False
                    newly.append(i)
                    loss_sum[i], seen[i] = float("nan"), seen[i] + B
                    saved[i] = _seed_state(model, opt, i, to_cpu=False)  # before this batch's step: what it keeps
            if changed:
                if not any(active):
                    break
                act_mask = torch.tensor(active, device=dev)
            hits = (out.detach().argmax(-1) == yb).sum(1)
            opt.zero_grad(set_to_none=True)
            # sum over seeds of each seed's mean loss: seed i's gradient is its single run's
            loss = torch.where(act_mask, per_seed, torch.zeros_like(per_seed)).sum()
            loss.backward()
            opt.step()
            for i, st in saved.items():
                _restore_seed(model, opt, i, st)
            correct += hits * act_mask
            for i in range(S):
                if active[i]:
                    loss_sum[i] += lv[i] * B
                    seen[i] += B
            if run.on_step is not None:
                run.on_step({"epoch": epoch, "batch": b, "seeds": seeds, "loss": lv,
                             "acc": (hits.double() / B).tolist(), "active": list(active), "model": model})
            bar.update(1)
            if b % 20 == 0 and any(active):
                live = [i for i in range(S) if active[i]]
                bar.set_postfix(loss=f"{sum(loss_sum[i] / seen[i] for i in live) / len(live):.4f}", refresh=False)
    seconds = time.perf_counter() - t0
    for i, st in saved.items():
        _restore_seed(model, opt, i, st)
    hits = correct.tolist()
    return ({"loss": [loss_sum[i] / seen[i] if seen[i] else float("nan") for i in range(S)],
             "acc": [hits[i] / seen[i] if seen[i] else float("nan") for i in range(S)],
             "seconds": seconds}, newly)


def _train_group(run: _Run, seeds: list[int], store: dict, start_epoch: int, after_epoch: Callable[[], None],
                 callback) -> Any:
    """Train the seeds ``seeds`` (all at ``start_epoch - 1`` finished epochs) as one batched model."""
    import torch

    from propagate.spec import build_model

    opts = run.options
    model = build_model(run.spec, seeds=seeds, device=run.device)
    from propagate.optim import make_optimizer

    opt = make_optimizer(model.parameters(), opts)
    if start_epoch > 1:
        # dropout needs no saved random state: _train_epoch restarts each seed's stream from (seed, epoch)
        _load_seed_states(model, opt, [store[s]["state"] for s in seeds])
    else:
        for s in seeds:
            store[s] = {"status": "partial", "epoch": 0, "history": [], "layers": []}
        for r in _probe_rows(run, model, 0):
            store[r["seed"]]["layers"].append(r)
    active = [store[s]["status"] != "diverged" for s in seeds]
    for epoch in range(start_epoch, opts.epochs + 1):
        if not any(active):
            break
        was_active = list(active)
        ep, newly = _train_epoch(run, model, opt, epoch, active)
        val_loss, val_acc = _evaluate(model, run.xte, run.yte)
        _, tr_acc = _evaluate(model, run.xtr[: run.n_eval], run.ytr[: run.n_eval])
        probe = _probe_rows(run, model, epoch)
        rows = []
        for i, s in enumerate(seeds):
            if not was_active[i]:
                continue
            row = {"seed": s, "epoch": epoch, "loss": ep["loss"][i], "acc": ep["acc"][i], "val_loss": val_loss[i],
                   "val_acc": val_acc[i], "train_eval_acc": tr_acc[i], "seconds": ep["seconds"],
                   "diverged": i in newly}
            st = store[s]
            st["history"].append(row)
            st["layers"] += [r for r in probe if r["seed"] == s]
            st["epoch"] = epoch
            st["status"] = "diverged" if i in newly else ("finished" if epoch == opts.epochs else "partial")
            if run.keep_state:  # for the checkpoint only
                st["state"] = _seed_state(model, opt, i)
            rows.append(row)
        after_epoch()
        if callback is not None:
            for row in rows:
                callback({**row, "epochs": opts.epochs, "n_seeds": len(seeds)})
    model.eval()
    return model


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

    ``options`` defaults to the seed's Keras settings. ``seeds``: a number of
    seeds (from ``options.seed``) or a list of seeds; default
    ``options.seeds`` consecutive seeds from ``options.seed``. ``callback(row)``
    is called after every epoch with each seed's history row plus ``epochs``
    (total), ``n_seeds`` and ``run`` (``name``); :func:`format_epoch_line`
    renders it like Keras. ``progress`` shows a tqdm bar per epoch on stderr.
    ``on_step(info)`` (tests, diagnostics) gets every step's per-seed batch loss
    and accuracy (``info["loss"]``, ``info["acc"]``, lists in ``info["seeds"]``
    order, measured before that step changed the weights) and ``info["model"]``
    after the step.

    With ``run_dir``, ``history.csv``, ``layers.csv``, ``summary.csv`` (each with
    a ``.meta.json``), ``spec.json`` and ``checkpoint.pt`` are written there
    atomically after every epoch; with ``resume`` an existing checkpoint of the
    same configuration is continued per seed (a finished or diverged seed is
    returned as is, or trained further when ``options.epochs`` is larger; a seed
    the folder lacks is trained from scratch). The folder's files cover every
    seed it holds; the result, the requested seeds. A checkpoint of a different
    configuration raises :class:`UserError`. An ensemble that would not fit in
    memory is refused before any work (:func:`check_memory`).
    """
    import torch

    from propagate.io import run_metadata

    if dataset is None:
        raise UserError("train needs a dataset (see propagate.data.load_dataset)")
    options = options or TrainOptions()
    wanted = seed_list(options.seed, options.seeds if seeds is None else seeds)
    if seeds is not None and not isinstance(seeds, int):
        options = options.with_(seed=wanted[0], seeds=len(wanted))
    elif seeds is not None:
        options = options.with_(seeds=len(wanted))
    device = _resolve_device(options.device)
    run_dir = Path(run_dir) if run_dir is not None else None
    label = name or spec.label()
    config = _config_of(spec, options)
    n = int(dataset.n_train)
    if n == 0:
        raise UserError(f"dataset {dataset.name!r} has no training images")
    check_memory(spec, options, len(wanted), n, int(dataset.n_test), device)
    # One writer per run folder, and no resumption with other settings or data (propagate.runfolder);
    # the lock is held until this function returns.
    folder_lock = _claim_run_dir(run_dir, config, dataset, resume)  # noqa: F841

    store: dict[int, dict] = {}
    ckpt = _load_checkpoint(run_dir / CHECKPOINT_FILE) if (run_dir and resume) else None
    if ckpt is not None:
        if ckpt["config"] != config:
            raise UserError(f"{run_dir} holds a run with different settings; use another output folder or --no-resume")
        store = {int(k): v for k, v in ckpt["seeds"].items()}

    with _torch_settings(options, device):
        xtr, ytr, xte, yte = _dataset_tensors(dataset, device)
        probe_n = min(options.probe_size, n)
        run = _Run(spec, options, device, xtr, ytr, xte, yte, (xtr[:probe_n], ytr[:probe_n]),
                   n if options.train_eval_size == 0 else min(options.train_eval_size, n),
                   probe_modes(spec), label, progress, on_step,
                   keep_state=run_dir is not None)

        def seed_status() -> dict:
            return {s: store[s]["status"] if s in store else "partial" for s in wanted}

        def overall(st: dict) -> str:
            vals = list(st.values())
            if "partial" in vals:
                return "partial"
            return "diverged" if all(v == "diverged" for v in vals) else "finished"

        def meta_now() -> dict:
            known = sorted(store)
            st = {s: store[s]["status"] for s in known}
            live = [store[s]["epoch"] for s in known if store[s]["status"] != "diverged"]
            done = min(live) if live else max((store[s]["epoch"] for s in known), default=0)
            return run_metadata(
                seed=options.seed, kind="training", run=label, preset=preset.name if preset else None,
                reported=preset.reported if preset else None, spec=spec.to_dict(), options=options.to_dict(),
                dataset={"name": dataset.name, "n_train": n, "n_test": len(yte), "source": getattr(dataset, "source", "")},
                device=str(device), status=overall(st), epochs_done=done, seeds=known, seed_status=st,
            )

        def after_epoch() -> None:
            if run_dir is None:
                return
            known = sorted(store)
            history, layers = _frames(spec, [r for s in known for r in store[s]["history"]],
                                      [r for s in known for r in store[s]["layers"]])
            _write_run_files(run_dir, spec, history, layers, meta_now())
            # The checkpoint goes last: it is what a resumption trusts.
            _save_checkpoint(run_dir / CHECKPOINT_FILE, {"config": config, "seeds": store})

        # Seeds at the same point train together; a resumption that adds seeds trains them as a second group.
        groups: dict[int, list[int]] = {}
        for s in wanted:
            st = store.get(s)
            if st is not None and st["status"] == "finished" and st["epoch"] < options.epochs:
                st["status"] = "partial"
            start = 1 if st is None else st["epoch"] + 1
            groups.setdefault(start, []).append(s)
        model = None
        for start in sorted(groups, reverse=True):
            model = _train_group(run, groups[start], store, start, after_epoch, (
                None if callback is None else lambda row: callback({**row, "run": name})))
        status_by_seed = seed_status()
        history, layers = _frames(spec, [r for s in wanted for r in store[s]["history"]],
                                  [r for s in wanted for r in store[s]["layers"]])
        meta = meta_now()
        meta.update(status=overall(status_by_seed), seeds=wanted, seed_status=status_by_seed)
    return TrainResult(spec=spec, options=options, history=history, layers=layers, meta=meta,
                       status=overall(status_by_seed), seeds=wanted, seed_status=status_by_seed,
                       summary=summarize_history(history), model=model)


# ------------------------------------------------------------------ reproduce


def _lr_tag(lr: float) -> str:
    return f"lr{lr:g}"


def run_name(preset: str, lr: float) -> str:
    """Folder name of one ``reproduce`` run, e.g. ``relu-bn_lr0.001``."""
    return f"{preset}_{_lr_tag(lr)}"


def _summary_row(preset: Preset, lr: float, result: TrainResult, epochs: int) -> dict:
    """One row per run: per epoch and metric the mean over seeds and its 95% t interval, next to the seed's numbers."""
    h, summ = result.history, result.summary
    row: dict[str, Any] = {"preset": preset.name, "seed_run": preset.seed_run, "lr": lr, "status": result.status,
                           "n_seeds": len(result.seeds), "diverged_seeds": len(result.diverged_seeds),
                           "epochs_done": int(h["epoch"].max()) if len(h) else 0}
    rep = preset.reported or {}
    for e in range(1, epochs + 1):
        sel = summ[summ["epoch"] == e]
        for key in ("acc", "val_acc", "train_eval_acc"):
            for part in ("mean", "ci_low", "ci_high"):
                row[f"{key}_{e}_{part}"] = float(sel[f"{key}_{part}"].iloc[0]) if len(sel) else float("nan")
        for key in ("acc", "val_acc"):
            vals = rep.get(key, [])
            row[f"seed_{key}_{e}"] = vals[e - 1] if e <= len(vals) else float("nan")
    last = summ.iloc[-1] if len(summ) else None
    for key in ("loss", "val_loss"):
        for part in ("mean", "ci_low", "ci_high"):
            row[f"{key}_{part}"] = float(last[f"{key}_{part}"]) if last is not None else float("nan")
    row["seed_loss"] = rep.get("loss", float("nan"))
    row["seed_val_loss"] = rep.get("val_loss", float("nan"))
    row["seconds"] = float(h.groupby("epoch")["seconds"].first().sum()) if len(h) else 0.0
    return row


def _fmt(x, digits=4):
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _fmt_ci(r, key: str) -> str:
    """``mean`` or ``mean [low, high]`` (95% t interval over seeds) of column family ``key``."""
    mean, lo, hi = r[f"{key}_mean"], r[f"{key}_ci_low"], r[f"{key}_ci_high"]
    if lo != lo or hi != hi:
        return _fmt(mean)
    return f"{_fmt(mean, 3)} [{_fmt(lo, 3)}, {_fmt(hi, 3)}]"


def summary_markdown(summary, epochs: int) -> str:
    """A markdown table: per run and epoch, measured train acc / val acc (mean over seeds, 95% t interval) and the seed's."""
    head = ["run", "lr", "seeds", "status"]
    for e in range(1, epochs + 1):
        head += [f"ep{e} acc / val (measured)", f"ep{e} acc / val (seed)"]
    head += ["final loss / val (measured)", "final loss / val (seed)", "train acc, eval-mode BN", "seconds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in summary.iterrows():
        name = r["preset"] + (f" (seed run {int(r['seed_run'])})" if r["seed_run"] == r["seed_run"] and r["seed_run"] is not None else "")
        status = r["status"] + (f" ({int(r['diverged_seeds'])} diverged)" if r.get("diverged_seeds", 0) else "")
        cells = [name, f"{r['lr']:g}", str(int(r["n_seeds"])), status]
        for e in range(1, epochs + 1):
            cells.append(f"{_fmt_ci(r, f'acc_{e}')} / {_fmt_ci(r, f'val_acc_{e}')}")
            seed = r[f"seed_acc_{e}"]
            cells.append("-" if seed != seed else f"{_fmt(seed)} / {_fmt(r[f'seed_val_acc_{e}'])}")
        cells.append(f"{_fmt_ci(r, 'loss')} / {_fmt_ci(r, 'val_loss')}")
        cells.append("-" if r["seed_loss"] != r["seed_loss"] else f"{_fmt(r['seed_loss'])} / {_fmt(r['seed_val_loss'])}")
        last = r["epochs_done"]
        cells.append(_fmt_ci(r, f"train_eval_acc_{last}") if last else "-")
        cells.append(f"{r['seconds']:.1f}")
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def reproduce(
    presets=None,
    lrs=(1e-3,),
    dataset="auto",
    out_dir: str | os.PathLike = "results/reproduce",
    resume: bool = True,
    epochs: int = 3,
    seed: int = 0,
    *,
    seeds: int = 1,
    data_dir=None,
    device: str = "cpu",
    threads: int | None = None,
    probe_size: int = 512,
    progress: bool = False,
    callback: Callable[[dict], None] | None = None,
    notify: Callable[[str], None] | None = None,
):
    """Run every preset at every learning rate, ``seeds`` seeds each, into ``out_dir``; return the summary DataFrame.

    ``presets``: names (default all, :func:`list_presets`); ``lrs``: learning
    rates (the seed's 1e-3 by default); ``dataset``: a name for
    :func:`propagate.data.load_dataset` or a loaded Dataset; ``seeds``: seeds
    ``seed .. seed + seeds - 1``, trained together as one ensemble per run.
    Each run writes ``out_dir/<preset>_lr<lr>/`` (see :func:`train`);
    ``summary.csv`` (per run: each metric's mean over seeds with its 95% Student
    t interval, ``<metric>_<epoch>_mean``/``_ci_low``/``_ci_high``, ``n_seeds``)
    and ``summary.md`` (the same next to the seed's reported accuracies) are
    rewritten after every run, so an interrupted reproduction keeps every
    finished epoch and resumes where it stopped (``resume``).
    """
    import pandas as pd

    from propagate.io import atomic_write_text, run_metadata, write_table

    names = list_presets() if presets is None else [get_preset(p).name for p in presets]
    if not names:
        raise UserError("no presets to run")
    lrs = [float(lr) for lr in lrs]
    if not lrs or any(not (math.isfinite(lr) and lr > 0) for lr in lrs):
        raise UserError(f"learning rates must be > 0, got {lrs}")
    base = TrainOptions(epochs=epochs, seed=seed, seeds=seeds, device=device, threads=threads, probe_size=probe_size)
    if isinstance(dataset, str):
        from propagate.data import load_dataset

        dataset = load_dataset(dataset, data_dir, progress=progress, notify=notify)
    check_memory(get_preset(names[0]).spec(), base, seeds, dataset.n_train, dataset.n_test, _resolve_device(device))
    out = Path(out_dir)
    folder_lock = _claim_reproduce_dir(out, dataset, resume)  # noqa: F841 - held until the last run is written
    rows = []
    summary = pd.DataFrame()
    for lr in lrs:
        for pname in names:
            preset = get_preset(pname)
            rname = run_name(pname, lr)
            res = train(preset.spec(), base.with_(lr=lr), dataset, progress=progress, callback=callback,
                        run_dir=out / rname, resume=resume, name=rname, preset=preset)
            rows.append(_summary_row(preset, lr, res, epochs))
            summary = pd.DataFrame(rows)
            meta = run_metadata(seed=seed, kind="reproduce", presets=names, lrs=lrs, epochs=epochs, seeds=base.seed_list,
                                dataset={"name": dataset.name, "n_train": dataset.n_train, "n_test": dataset.n_test})
            write_table(summary, out / "summary.csv", meta)
            atomic_write_text(out / "summary.md", _summary_header(dataset, epochs, base.seed_list) + summary_markdown(summary, epochs))
    return summary


def _summary_header(dataset, epochs: int, seeds: list[int]) -> str:
    which = f"seed {seeds[0]}" if len(seeds) == 1 else f"{len(seeds)} seeds ({seeds[0]}..{seeds[-1]})"
    return (
        f"# Reproduction of the seed's MNIST runs\n\n"
        f"Dataset: {dataset.name} ({dataset.n_train} train / {dataset.n_test} test images); {epochs} epochs; "
        f"{which}. The seed trained on the full MNIST (60,000 / 10,000).\n"
        f"`acc` is Keras' running training accuracy (train-mode BN), `val` the test accuracy "
        f"(eval-mode BN); 'train acc, eval-mode BN' is the training accuracy after the last epoch in eval mode. "
        f"With several seeds a cell is the mean over seeds and its 95% Student t interval [low, high].\n\n"
    )
