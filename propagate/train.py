"""Training lens: train a spec's network on MNIST and record per-layer statistics as it learns.

:func:`train` runs the seed's Keras recipe in torch (defaults of
:class:`TrainOptions`): RMSprop (lr 1e-3, rho 0.9 = torch ``alpha``, eps 1e-7
added outside the square root as Keras does), categorical cross-entropy on the
softmax (= ``cross_entropy`` on the logits; Keras additionally clips
probabilities to [1e-7, 1 - 1e-7], which only matters for losses above ~16),
batch 128, 3 epochs, the training set reshuffled every epoch. BN keeps
torch's running variance (unbiased batch variance, as Keras >= 2.1.3 does).

Metrics per epoch (one row of ``TrainResult.history``):

- ``loss``, ``acc``: Keras' running numbers, the mean over the epoch's samples
  of the per-batch loss/accuracy measured in train mode (BN with batch
  statistics, dropout on) while the weights change;
- ``val_loss``, ``val_acc``: on the test split in eval mode (BN with running
  statistics);
- ``train_eval_acc``: accuracy on (a fixed prefix of) the training split in eval
  mode after the epoch, so train-mode vs inference-mode BN is visible;
- ``seconds``: wall time of the epoch's optimization steps.

Per-layer statistics (``TrainResult.layers``, the :mod:`propagate.stats` table
with ``source="training"``) are measured on a fixed probe batch (the first
``probe_size`` training images) at initialization (``epoch = 0``) and after
every epoch, with ``mode="eval"`` (running BN statistics, no dropout) and, for
BN networks, also ``mode="train"`` (batch statistics). Probing never changes
the training: BN running statistics and the random number state are restored.
``grad_norm`` is the gradient of the per-sample cross-entropy (one sample's
loss, not the batch mean) with respect to each pre-activation ``h^l``.

Divergence is a result: the first non-finite batch loss ends the run, the
partial epoch is recorded with ``diverged=True`` and the status is
``"diverged"``.

Resumable runs: with ``run_dir``, after every epoch the metrics, the layer
statistics and a checkpoint (model, optimizer, random state) are written
atomically; a later call with ``resume=True`` continues from the last finished
epoch and gives the same numbers as an uninterrupted run, because each epoch's
shuffle depends only on ``(seed, epoch)``.
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
from typing import Any, Callable

from propagate.errors import UserError
from propagate.presets import PRESETS, Preset, get_preset, list_presets

__all__ = [
    "TrainOptions",
    "TrainResult",
    "train",
    "probe_layer_stats",
    "reproduce",
    "summary_markdown",
    "format_epoch_line",
    "get_preset",
    "list_presets",
    "Preset",
    "PRESETS",
    "OPTIMIZERS",
]

OPTIMIZERS = ("rmsprop", "sgd", "adam")

# Files of a run folder.
HISTORY_FILE, LAYERS_FILE, SPEC_FILE, CHECKPOINT_FILE = "history.csv", "layers.csv", "spec.json", "checkpoint.pt"

# Options that may differ between an interrupted run and its resumption.
_RESUME_FREE = {"epochs", "device", "threads"}


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
        seed: weights (``build_model``), the per-epoch shuffles and dropout.
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
        for name in ("epochs", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise UserError(f"{name.replace('_', ' ')} must be a whole number >= 1, got {v!r}")
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

    def with_(self, **changes) -> "TrainOptions":
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainOptions":
        keys = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in keys})


@dataclass
class TrainResult:
    """What :func:`train` returns.

    ``history``: one row per finished (or diverged) epoch with columns
    ``epoch, loss, acc, val_loss, val_acc, train_eval_acc, seconds, diverged``
    (losses in nats per sample, accuracies as fractions). ``layers``: the
    :mod:`propagate.stats` table (``source="training"``, columns ``epoch`` and
    ``mode``). ``status``: ``"finished"``, ``"diverged"`` or ``"partial"``.
    """

    spec: Any
    options: TrainOptions
    history: Any
    layers: Any
    meta: dict
    status: str
    model: Any = field(default=None, repr=False)

    @property
    def diverged(self) -> bool:
        return self.status == "diverged"


# ---------------------------------------------------------------- small helpers


def format_epoch_line(row: dict) -> str:
    """Keras-like epoch line: ``epoch 1/3 - 12.3s - loss: 2.3014 - acc: 0.1122 - val_loss: ... - val_acc: ...``."""
    parts = [f"epoch {int(row['epoch'])}/{int(row.get('epochs', row['epoch']))}", f"{row['seconds']:.1f}s"]
    for key in ("loss", "acc", "val_loss", "val_acc", "train_eval_acc"):
        if key in row:
            parts.append(f"{key}: {row[key]:.4f}")
    if row.get("diverged"):
        parts.append("DIVERGED")
    line = " - ".join(parts)
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
    """Threads, determinism and subnormal flushing for the run; restored afterwards."""
    import torch

    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(options.threads or os.cpu_count() or 1)
    if options.deterministic and device.type == "cpu":
        torch.use_deterministic_algorithms(True)
    # torch has no getter for the flush-denormal flag; its default is off, so we restore off.
    flushed = options.flush_denormal and torch.set_flush_denormal(True)
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            yield
    finally:
        if flushed:
            torch.set_flush_denormal(False)
        torch.use_deterministic_algorithms(old_det)
        torch.set_num_threads(old_threads)


def _make_optimizer(params, options: TrainOptions):
    import torch

    if options.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=options.lr, alpha=options.rho, eps=options.eps)
    if options.optimizer == "adam":
        return torch.optim.Adam(params, lr=options.lr, betas=(0.9, 0.999), eps=options.eps)
    return torch.optim.SGD(params, lr=options.lr, momentum=options.momentum)


def _bn_modules(model):
    import torch.nn as nn

    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@contextlib.contextmanager
def _frozen_bn(model):
    """Undo any BN running-statistics update made inside the block."""
    saved = [(m, {k: v.clone() for k, v in m.named_buffers()}) for m in _bn_modules(model)]
    try:
        yield
    finally:
        for m, bufs in saved:
            for k, v in m.named_buffers():
                v.copy_(bufs[k])


# ----------------------------------------------------------------- layer stats


def _saturated_mask(act, x):
    """Outputs in the activation's flat region (see :mod:`propagate.stats`).

    Within 1% of the range width of a limit when the range is bounded on both
    sides (tanh, sigmoid); within 1% of a one-sided nonzero limit (SELU/ELU's
    negative saturation); and, for every activation, outputs that are
    numerically zero (|x| < 1e-30: ReLU's inactive side, vanished signals).
    """
    import torch

    lo, hi = act.bounds
    mask = x.abs() < 1e-30
    if math.isfinite(lo) and math.isfinite(hi):
        tol = 0.01 * (hi - lo)
        mask |= (x - lo <= tol) | (hi - x <= tol)
    else:
        for b in (lo, hi):
            if math.isfinite(b) and b != 0:
                mask |= (x - b).abs() <= 0.01 * abs(b)
    return mask.to(torch.float64)


def _moments_row(prefix: str, v):
    """Pooled mean/var/q of ``v`` (samples x units, float64) and standard errors across samples."""
    n = v.shape[0]
    mean = v.mean()
    var = ((v - mean) ** 2).mean()
    per_mean = v.mean(1)
    per_var = ((v - mean) ** 2).mean(1)
    return {
        f"{prefix}_mean": float(mean),
        f"{prefix}_var": float(var),
        f"{prefix}_q": float((v**2).mean()),
        f"{prefix}_mean_se": float(per_mean.std() / math.sqrt(n)) if n > 1 else float("nan"),
        f"{prefix}_var_se": float(per_var.std() / math.sqrt(n)) if n > 1 else float("nan"),
    }


def _corr(v):
    """Mean cosine similarity of pairs (0,1), (2,3), ... of samples, and its standard error."""
    import torch

    a, b = v[0 : v.shape[0] // 2 * 2 : 2], v[1 : v.shape[0] // 2 * 2 : 2]
    den = torch.sqrt((a * a).sum(1) * (b * b).sum(1))
    c = (a * b).sum(1) / den
    c = c[torch.isfinite(c)]
    if c.numel() == 0:
        return float("nan"), float("nan")
    se = float(c.std() / math.sqrt(c.numel())) if c.numel() > 1 else float("nan")
    return float(c.mean()), se


def probe_layer_stats(model, x, y, mode: str = "eval") -> list[dict]:
    """Per-layer statistics of ``model`` on the batch ``(x, y)``, as :mod:`propagate.stats` rows.

    ``mode="eval"`` uses BN running statistics and no dropout; ``"train"``
    uses batch statistics (and dropout). The model's BN running statistics,
    its train/eval mode and the global random state are left unchanged.
    Row ``layer=0`` is the input; rows ``1..depth`` the hidden layers.
    ``grad_norm`` is the root-mean-square over samples of the L2 norm over
    units of d(loss of one sample)/d h^l; ``grad_norm_se`` its standard error.
    """
    import torch
    import torch.nn.functional as F

    act = model.spec.act
    was_training = model.training
    model.train(mode == "train")
    try:
        with _frozen_bn(model), torch.random.fork_rng(devices=[x.device] if x.is_cuda else []):
            with torch.enable_grad():
                out, pre = model(x, record=True)
                loss = F.cross_entropy(out, y, reduction="sum")
                if loss.requires_grad:
                    grads = torch.autograd.grad(loss, pre, allow_unused=True)
                else:  # pragma: no cover - model without parameters needing grad
                    grads = [None] * len(pre)
    finally:
        model.train(was_training)

    rows = []
    x0 = x.detach().flatten(1).double()
    c, c_se = _corr(x0)
    row0 = {"layer": 0, "width": x0.shape[1], "corr": c, "corr_se": c_se, "diverged": False}
    row0.update(_moments_row("post", x0))
    rows.append(row0)
    diverged = False
    with torch.no_grad():
        for i, h in enumerate(pre):
            hd = h.detach().double()
            post = act.torch(h.detach()).double()
            diverged = diverged or not bool(torch.isfinite(hd).all())
            row = {"layer": i + 1, "width": hd.shape[1], "diverged": diverged}
            row.update(_moments_row("pre", hd))
            row.update({k: v for k, v in _moments_row("post", post).items()})
            row["corr"], row["corr_se"] = _corr(hd)
            g = grads[i]
            if g is not None:
                s = (g.detach().double() ** 2).sum(1)
                gn = float(torch.sqrt(s.mean()))
                row["grad_norm"] = gn
                row["grad_norm_se"] = float(s.std() / math.sqrt(len(s)) / (2 * gn)) if gn > 0 and len(s) > 1 else float("nan")
            row["dead_frac"] = float((post == 0).all(0).double().mean())
            row["saturated_frac"] = float(_saturated_mask(act, post).mean())
            rows.append(row)
    return rows


# ---------------------------------------------------------------------- train


def _evaluate(model, x, y, batch: int = 1000) -> tuple[float, float]:
    """Mean cross-entropy (nats) and accuracy in eval mode."""
    import torch
    import torch.nn.functional as F

    if len(y) == 0:
        return float("nan"), float("nan")
    was = model.training
    model.eval()
    loss_sum, correct = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(y), batch):
            out = model(x[i : i + batch])
            loss_sum += float(F.cross_entropy(out, y[i : i + batch], reduction="sum"))
            correct += int((out.argmax(1) == y[i : i + batch]).sum())
    model.train(was)
    return loss_sum / len(y), correct / len(y)


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
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a damaged checkpoint is a user-visible problem, not a crash
        raise UserError(f"cannot read checkpoint {path}: {exc.__class__.__name__}; delete it or use --no-resume") from None


def _frames(spec, history_rows, layer_rows):
    import pandas as pd

    from propagate.stats import layer_table

    hist_cols = ["epoch", "loss", "acc", "val_loss", "val_acc", "train_eval_acc", "seconds", "diverged"]
    history = pd.DataFrame(history_rows, columns=hist_cols)
    layers = layer_table(layer_rows, source="training", config=spec.label())
    return history, layers


def _write_run_files(run_dir: Path, spec, history, layers, meta) -> None:
    from propagate.io import atomic_write_json, write_table

    write_table(history, run_dir / HISTORY_FILE, meta)
    write_table(layers, run_dir / LAYERS_FILE, meta)
    atomic_write_json(run_dir / SPEC_FILE, {"spec": spec.to_dict(), "options": meta["options"],
                                            "preset": meta.get("preset"), "status": meta["status"],
                                            "epochs_done": meta["epochs_done"]})


def train(
    spec,
    options: TrainOptions | None = None,
    dataset=None,
    progress: bool = False,
    callback: Callable[[dict], None] | None = None,
    *,
    run_dir: str | os.PathLike | None = None,
    resume: bool = True,
    name: str | None = None,
    preset: Preset | None = None,
) -> TrainResult:
    """Train the network of ``spec`` on ``dataset`` (a :class:`propagate.data.Dataset`).

    ``options`` defaults to the seed's Keras settings. ``callback(row)`` is
    called after every epoch with the history row plus ``epochs`` (total) and
    ``run`` (``name``); :func:`format_epoch_line` renders it like Keras.
    ``progress`` shows a tqdm bar per epoch on stderr.

    With ``run_dir``, ``history.csv``, ``layers.csv`` (each with a
    ``.meta.json``), ``spec.json`` and ``checkpoint.pt`` are written there
    atomically after every epoch; with ``resume`` an existing checkpoint of the
    same configuration is continued (a finished or diverged one is returned as
    is, or trained further when ``options.epochs`` is larger). A checkpoint of
    a different configuration raises :class:`UserError`.
    """
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    from propagate.io import run_metadata
    from propagate.spec import build_model

    if dataset is None:
        raise UserError("train needs a dataset (see propagate.data.load_dataset)")
    options = options or TrainOptions()
    device = _resolve_device(options.device)
    run_dir = Path(run_dir) if run_dir is not None else None
    label = name or spec.label()
    config = _config_of(spec, options)

    with _torch_settings(options, device):
        torch.manual_seed(options.seed)
        model = build_model(spec, seed=options.seed, device=device)
        opt = _make_optimizer(model.parameters(), options)
        xtr, ytr, xte, yte = _dataset_tensors(dataset, device)
        n = len(ytr)
        if n == 0:
            raise UserError(f"dataset {dataset.name!r} has no training images")
        probe_n = min(options.probe_size, n)
        xp, yp = xtr[:probe_n], ytr[:probe_n]
        ne = n if options.train_eval_size == 0 else min(options.train_eval_size, n)
        modes = ("train", "eval") if spec.batchnorm else ("eval",)

        history_rows: list[dict] = []
        layer_rows: list[dict] = []
        status, start_epoch = "partial", 1

        ckpt = _load_checkpoint(run_dir / CHECKPOINT_FILE) if (run_dir and resume) else None
        if ckpt is not None:
            if ckpt["config"] != config:
                raise UserError(f"{run_dir} holds a run with different settings; use another output folder or --no-resume")
            model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["optimizer"])
            torch.set_rng_state(ckpt["rng"])
            if device.type == "cuda" and ckpt.get("cuda_rng") is not None:
                torch.cuda.set_rng_state(ckpt["cuda_rng"], device)
            history_rows, layer_rows = list(ckpt["history"]), list(ckpt["layers"])
            status, start_epoch = ckpt["status"], ckpt["epoch"] + 1
            if status == "finished" and ckpt["epoch"] < options.epochs:
                status = "partial"
        else:
            for mode in modes:
                for r in probe_layer_stats(model, xp, yp, mode):
                    layer_rows.append({**r, "epoch": 0, "mode": mode})

        def meta_now(epochs_done):
            return run_metadata(
                seed=options.seed, kind="training", run=label, preset=preset.name if preset else None,
                reported=preset.reported if preset else None, spec=spec.to_dict(), options=options.to_dict(),
                dataset={"name": dataset.name, "n_train": n, "n_test": len(yte), "source": getattr(dataset, "source", "")},
                device=str(device), status=status, epochs_done=epochs_done,
            )

        drop_single = spec.batchnorm
        nb = (n + options.batch_size - 1) // options.batch_size
        epoch = start_epoch - 1
        for epoch in range(start_epoch, options.epochs + 1):
            if status == "diverged":
                break
            gen = torch.Generator()
            gen.manual_seed(_shuffle_seed(options.seed, epoch))
            order = torch.randperm(n, generator=gen).to(device)
            model.train()
            loss_sum, correct, seen = 0.0, 0, 0
            diverged = False
            t0 = time.perf_counter()
            bar = tqdm(total=nb, desc=f"{label} epoch {epoch}/{options.epochs}", file=sys.stderr,
                       disable=not progress, leave=False, unit="batch", dynamic_ncols=True)
            with bar:
                for b in range(nb):
                    idx = order[b * options.batch_size : (b + 1) * options.batch_size]
                    if drop_single and len(idx) < 2:
                        continue  # BN cannot normalize a batch of one
                    xb, yb = xtr[idx], ytr[idx]
                    out = model(xb)
                    loss = F.cross_entropy(out, yb)
                    lv = float(loss.detach())
                    if not math.isfinite(lv):
                        diverged = True
                        loss_sum, seen = float("nan"), seen + len(idx)
                        break
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    loss_sum += lv * len(idx)
                    correct += int((out.detach().argmax(1) == yb).sum())
                    seen += len(idx)
                    bar.update(1)
                    if b % 20 == 0:
                        bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.4f}", refresh=False)
            seconds = time.perf_counter() - t0
            val_loss, val_acc = _evaluate(model, xte, yte)
            _, tr_eval_acc = _evaluate(model, xtr[:ne], ytr[:ne])
            row = {
                "epoch": epoch,
                "loss": loss_sum / seen if seen else float("nan"),
                "acc": correct / seen if seen else float("nan"),
                "val_loss": val_loss,
                "val_acc": val_acc,
                "train_eval_acc": tr_eval_acc,
                "seconds": seconds,
                "diverged": diverged,
            }
            history_rows.append(row)
            for mode in modes:
                for r in probe_layer_stats(model, xp, yp, mode):
                    layer_rows.append({**r, "epoch": epoch, "mode": mode})
            if diverged:
                status = "diverged"
            elif epoch == options.epochs:
                status = "finished"
            if run_dir is not None:
                history, layers = _frames(spec, history_rows, layer_rows)
                _write_run_files(run_dir, spec, history, layers, meta_now(epoch))
                # The checkpoint goes last: it is what a resumption trusts.
                _save_checkpoint(run_dir / CHECKPOINT_FILE, {
                    "config": config, "epoch": epoch, "status": status,
                    "model": model.state_dict(), "optimizer": opt.state_dict(), "rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                    "history": history_rows, "layers": layer_rows,
                })
            if callback is not None:
                callback({**row, "epochs": options.epochs, "run": name})
        if status == "partial" and (not history_rows or history_rows[-1]["epoch"] >= options.epochs):
            status = "finished"
        done = history_rows[-1]["epoch"] if history_rows else 0
        history, layers = _frames(spec, history_rows, layer_rows)
        meta = meta_now(done)
        model.eval()
    return TrainResult(spec=spec, options=options, history=history, layers=layers, meta=meta, status=status,
                       model=model)


# ------------------------------------------------------------------ reproduce


def _lr_tag(lr: float) -> str:
    return f"lr{lr:g}"


def run_name(preset: str, lr: float) -> str:
    """Folder name of one ``reproduce`` run, e.g. ``relu-bn_lr0.001``."""
    return f"{preset}_{_lr_tag(lr)}"


def _summary_row(preset: Preset, lr: float, result: TrainResult, epochs: int) -> dict:
    h = result.history
    row: dict[str, Any] = {"preset": preset.name, "seed_run": preset.seed_run, "lr": lr, "status": result.status,
                           "epochs_done": int(h["epoch"].max()) if len(h) else 0}
    rep = preset.reported or {}
    for e in range(1, epochs + 1):
        sel = h[h["epoch"] == e]
        for key in ("acc", "val_acc", "train_eval_acc"):
            row[f"{key}_{e}"] = float(sel[key].iloc[0]) if len(sel) else float("nan")
        for key in ("acc", "val_acc"):
            vals = rep.get(key, [])
            row[f"seed_{key}_{e}"] = vals[e - 1] if e <= len(vals) else float("nan")
    last = h.iloc[-1] if len(h) else None
    row["loss"] = float(last["loss"]) if last is not None else float("nan")
    row["val_loss"] = float(last["val_loss"]) if last is not None else float("nan")
    row["seed_loss"] = rep.get("loss", float("nan"))
    row["seed_val_loss"] = rep.get("val_loss", float("nan"))
    row["seconds"] = float(h["seconds"].sum()) if len(h) else 0.0
    return row


def _fmt(x, digits=4):
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def summary_markdown(summary, epochs: int) -> str:
    """A markdown table: per run and epoch, measured train acc / val acc next to the seed's."""
    head = ["run", "lr", "status"]
    for e in range(1, epochs + 1):
        head += [f"ep{e} acc / val (measured)", f"ep{e} acc / val (seed)"]
    head += ["final loss / val (measured)", "final loss / val (seed)", "train acc, eval-mode BN", "seconds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in summary.iterrows():
        name = r["preset"] + (f" (seed run {int(r['seed_run'])})" if r["seed_run"] == r["seed_run"] and r["seed_run"] is not None else "")
        cells = [name, f"{r['lr']:g}", r["status"]]
        for e in range(1, epochs + 1):
            cells.append(f"{_fmt(r[f'acc_{e}'])} / {_fmt(r[f'val_acc_{e}'])}")
            seed = r[f"seed_acc_{e}"]
            cells.append("-" if seed != seed else f"{_fmt(seed)} / {_fmt(r[f'seed_val_acc_{e}'])}")
        cells.append(f"{_fmt(r['loss'])} / {_fmt(r['val_loss'])}")
        cells.append("-" if r["seed_loss"] != r["seed_loss"] else f"{_fmt(r['seed_loss'])} / {_fmt(r['seed_val_loss'])}")
        last = r["epochs_done"]
        cells.append(_fmt(r.get(f"train_eval_acc_{last}", float("nan"))) if last else "-")
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
    data_dir=None,
    device: str = "cpu",
    threads: int | None = None,
    probe_size: int = 512,
    progress: bool = False,
    callback: Callable[[dict], None] | None = None,
    notify: Callable[[str], None] | None = None,
):
    """Run every preset at every learning rate into ``out_dir``; return the summary DataFrame.

    ``presets``: names (default all, :func:`list_presets`); ``lrs``: learning
    rates (the seed's 1e-3 by default); ``dataset``: a name for
    :func:`propagate.data.load_dataset` or a loaded Dataset. Each run writes
    ``out_dir/<preset>_lr<lr>/`` (see :func:`train`); ``summary.csv`` and
    ``summary.md`` (measured acc/val_acc per epoch next to the seed's reported
    ones) are rewritten after every run, so an interrupted reproduction keeps
    every finished epoch and resumes where it stopped (``resume``).
    """
    import pandas as pd

    from propagate.io import atomic_write_text, run_metadata, write_table

    names = list_presets() if presets is None else [get_preset(p).name for p in presets]
    if not names:
        raise UserError("no presets to run")
    lrs = [float(lr) for lr in lrs]
    if not lrs or any(not (math.isfinite(lr) and lr > 0) for lr in lrs):
        raise UserError(f"learning rates must be > 0, got {lrs}")
    if isinstance(dataset, str):
        from propagate.data import load_dataset

        dataset = load_dataset(dataset, data_dir, progress=progress, notify=notify)
    out = Path(out_dir)
    rows = []
    summary = pd.DataFrame()
    for lr in lrs:
        for pname in names:
            preset = get_preset(pname)
            rname = run_name(pname, lr)
            opts = TrainOptions(lr=lr, epochs=epochs, seed=seed, device=device, threads=threads, probe_size=probe_size)
            res = train(preset.spec(), opts, dataset, progress=progress, callback=callback,
                        run_dir=out / rname, resume=resume, name=rname, preset=preset)
            rows.append(_summary_row(preset, lr, res, epochs))
            summary = pd.DataFrame(rows)
            meta = run_metadata(seed=seed, kind="reproduce", presets=names, lrs=lrs, epochs=epochs,
                                dataset={"name": dataset.name, "n_train": dataset.n_train, "n_test": dataset.n_test})
            write_table(summary, out / "summary.csv", meta)
            atomic_write_text(out / "summary.md", _summary_header(dataset, epochs, seed) + summary_markdown(summary, epochs))
    return summary


def _summary_header(dataset, epochs: int, seed: int) -> str:
    return (
        f"# Reproduction of the seed's MNIST runs\n\n"
        f"Dataset: {dataset.name} ({dataset.n_train} train / {dataset.n_test} test images); {epochs} epochs; "
        f"seed {seed}. The seed trained on the full MNIST (60,000 / 10,000).\n"
        f"`acc` is Keras' running training accuracy (train-mode BN), `val` the test accuracy "
        f"(eval-mode BN); 'train acc, eval-mode BN' is the training accuracy after the last epoch in eval mode.\n\n"
    )
