"""Per-step training log: loss, accuracy, learning rate, gradient norm and per-layer update ratios.

:class:`StepLog` is a callback for :func:`propagate.train.train`'s ``on_step``
(it is called after every optimizer step with the step's numbers and the
model). Every ``every``-th step (steps counted from 1 over the whole run, as
the learning-rate warmup counts them) it records, per seed of the ensemble:

- ``loss``, ``acc``: the step's batch loss (cross-entropy, nats per sample) and
  accuracy (fraction), measured before the step changed the weights;
- ``lr``: the step's learning rate (``TrainOptions.lr_at``: warmup included);
- ``grad_norm``: the L2 norm of the step's gradient over all parameters of
  that seed's network. Training measures it between the backward pass and
  the optimizer step on the steps :meth:`StepLog.wants_gradient` names and
  passes it as ``info["grad_norm"]``, so it does not depend on where the
  optimizer runs (a fused step that updates the weights inside the backward
  pass leaves ``.grad`` unset). Without it the parameters' ``.grad`` is read;
  ``NaN`` where neither holds the gradient (the optimizer's state is *not*
  the gradient, so nothing else is used);
- per weight layer ``l`` (``1..L`` hidden, ``L + 1`` the readout) the update
  ratio ``||W_l(t) - W_l(t-1)|| / ||W_l(t-1)||`` (Frobenius norms): how far
  that step moved the layer relative to its size. It needs the weights of the
  step before, which are copied only then (one copy per ``every`` steps); the
  run's first step has none (``NaN``).

The table (:meth:`StepLog.table`) is long: one row per (seed, step, layer),
the step's numbers repeated on each of its layer rows. :meth:`StepLog.save`
writes it as ``steps.csv`` (with ``steps.csv.meta.json``, atomically); a
resumed run keeps the rows of the epochs it does not redo and replaces the
rest. ``tensorboard=DIR`` also writes TensorBoard event files (the optional
``tensorboard`` package: ``pip install 'propagate[tensorboard]'``), one scalar
series per seed and quantity (``seed0/loss``, ``seed0/update_ratio/layer3``, ...).

Usage from Python::

    from propagate.steplog import StepLog
    log = StepLog(every=10, options=options, steps_per_epoch=steps_per_epoch(dataset.n_train, options))
    result = train(spec, options, dataset, on_step=log.callback)
    log.table()                       # one row per (seed, step, layer)
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Any

from propagate.errors import UserError
from propagate.io import read_table, run_metadata, write_table

__all__ = ["StepLog", "STEP_COLUMNS", "steps_per_epoch", "check_tensorboard"]

#: The columns of :meth:`StepLog.table`, in order.
STEP_COLUMNS = ("seed", "epoch", "step", "layer", "loss", "acc", "lr", "grad_norm", "update_ratio")


def steps_per_epoch(n_train: int, options) -> int:
    """Optimizer steps (batches) per epoch: ``ceil(n_train / batch_size)``, as training numbers them."""
    return max(1, math.ceil(int(n_train) / int(options.batch_size)))


def check_tensorboard() -> None:
    """Raise :class:`UserError` unless TensorBoard's writer can be imported (before any training)."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise UserError("--tensorboard needs the tensorboard package: pip install 'propagate[tensorboard]'") from None


def _weights(model) -> list:
    """The model's weight matrices in forward order: parameters of 2 or more dimensions (3 when stacked over seeds)."""
    stacked = hasattr(model, "seeds")
    return [p for p in model.parameters() if p.dim() >= (3 if stacked else 2)]


def _per_seed_norms(tensors, stacked: bool):
    """Per seed, the L2 norm of each tensor (a list per tensor): ``[S]`` rows if stacked over seeds, else one."""
    import torch

    out = []
    for t in tensors:
        t = t.detach()
        flat = t.reshape(t.shape[0], -1) if stacked else t.reshape(1, -1)
        out.append(torch.linalg.vector_norm(flat.double(), dim=1))
    return out


class StepLog:
    """Record every ``every``-th training step (module docstring); pass :attr:`callback` as ``train(on_step=...)``.

    ``options``: the run's :class:`~propagate.train.TrainOptions` (for the
    learning rate of a step; without it ``lr`` is ``NaN`` unless training
    passes it); ``steps_per_epoch``: batches per epoch (:func:`steps_per_epoch`;
    numbers steps across epochs, so a resumed run continues the count; without
    it steps are counted from this object's first call); ``path``: the CSV
    :meth:`save` writes (``None``: keep in memory); ``resume``: keep the rows a
    previous run left in ``path`` for the epochs this one does not redo
    (``False``: start the file afresh); ``tensorboard``: a folder
    for TensorBoard event files; ``meta``: extra metadata for the CSV.
    """

    def __init__(self, every: int = 1, *, options=None, steps_per_epoch: int | None = None, path=None,
                 resume: bool = True, tensorboard: str | os.PathLike | None = None, meta: dict | None = None):
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise UserError(f"log every must be a whole number of steps >= 1, got {every!r}")
        self.every, self.options, self.per_epoch = every, options, steps_per_epoch
        self.path = Path(path) if path is not None else None
        self.meta = dict(meta or {})
        self.rows: list[dict] = []
        self._calls = 0
        self._previous = None  # the weights after the step before a logged one: (step, [tensors])
        self._writer = None
        self._old = self._read_old() if self.path is not None and resume else None
        self._said_partial = False
        if tensorboard is not None:
            check_tensorboard()
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(tensorboard))

    # -- the callback ---------------------------------------------------------------------------------------

    def step_of(self, info: dict) -> int:
        """The 1-based step of ``info`` over the whole run (``info["step"]`` when training gives it)."""
        if info.get("step") is not None:
            return int(info["step"])
        if self.per_epoch is not None and "epoch" in info and "batch" in info:
            return (int(info["epoch"]) - 1) * self.per_epoch + int(info["batch"]) + 1
        return self._calls

    @property
    def callback(self) -> "StepLog":
        """What to pass as ``train(on_step=...)``: this object (callable, and it tells training which steps'
        gradient norms it needs: :meth:`wants_gradient`)."""
        return self

    def wants_gradient(self, step: int) -> bool:
        """Whether step ``step`` is logged (training then measures its gradient norm before the optimizer step)."""
        return step % self.every == 0

    def __call__(self, info: dict) -> None:
        """``train``'s ``on_step``: record the step if it is an ``every``-th one; copy the weights before one."""
        self._calls += 1
        step = self.step_of(info)
        model = info["model"]
        if step % self.every == 0:
            self._record(info, step, model)
        if (step + 1) % self.every == 0:
            import torch

            with torch.no_grad():
                self._previous = (step, [w.detach().clone() for w in _weights(model)])

    def _lr(self, info: dict, step: int) -> float:
        if info.get("lr") is not None:
            return float(info["lr"])
        return float(self.options.lr_at(step)) if self.options is not None else math.nan

    def _grad_norms(self, info: dict, model, n: int) -> list[float]:
        """Per seed, the norm of the step's gradient: from ``info``, else from ``.grad``, else NaN."""
        given = info.get("grad_norm")
        if given is not None:
            return [float(v) for v in given]
        params = [p for p in model.parameters() if p.requires_grad]
        if not params or any(p.grad is None for p in params):
            return [math.nan] * n
        norms = _per_seed_norms([p.grad for p in params], hasattr(model, "seeds"))
        total = sum(v**2 for v in norms) ** 0.5
        return [float(v) for v in total]

    def _update_ratios(self, model, step: int) -> list[list[float]]:
        """``[layer][seed]``: ``||W(t) - W(t-1)|| / ||W(t-1)||``; NaN without the weights of step ``t - 1``."""
        weights = _weights(model)
        stacked = hasattr(model, "seeds")
        n = len(model.seeds) if stacked else 1
        if self._previous is None or self._previous[0] != step - 1 or len(self._previous[1]) != len(weights):
            return [[math.nan] * n for _ in weights]
        before = self._previous[1]
        moved = _per_seed_norms([w - b for w, b in zip(weights, before)], stacked)
        size = _per_seed_norms(before, stacked)
        return [[float(m / s) if s > 0 else math.nan for m, s in zip(mv, sz)] for mv, sz in zip(moved, size)]

    def _record(self, info: dict, step: int, model) -> None:
        seeds = list(info.get("seeds") or getattr(model, "seeds", [0]))
        loss, acc = list(info.get("loss", [])), list(info.get("acc", []))
        active = list(info.get("active") or [True] * len(seeds))
        lr = self._lr(info, step)
        grads = self._grad_norms(info, model, len(seeds))
        ratios = self._update_ratios(model, step)
        epoch = int(info.get("epoch", 0))
        for i, seed in enumerate(seeds):
            if i < len(active) and not active[i]:
                continue  # a seed that diverged stays where it stopped: nothing to log
            base = {"seed": int(seed), "epoch": epoch, "step": step, "loss": _at(loss, i), "acc": _at(acc, i),
                    "lr": lr, "grad_norm": grads[i]}
            for layer, r in enumerate(ratios, start=1):
                self.rows.append({**base, "layer": layer, "update_ratio": r[i]})
            self._tensorboard(base, [r[i] for r in ratios])

    def _tensorboard(self, base: dict, ratios: list[float]) -> None:
        if self._writer is None:
            return
        tag, step = f"seed{base['seed']}", base["step"]
        for name in ("loss", "acc", "lr", "grad_norm"):
            if math.isfinite(base[name]):
                self._writer.add_scalar(f"{tag}/{name}", base[name], step)
        for layer, r in enumerate(ratios, start=1):
            if math.isfinite(r):
                self._writer.add_scalar(f"{tag}/update_ratio/layer{layer}", r, step)

    # -- the table ------------------------------------------------------------------------------------------

    def table(self):
        """The log: one row per (seed, step, layer), columns :data:`STEP_COLUMNS`; with a ``path``, the rows a
        previous run left for the epochs this one did not redo come first."""
        import pandas as pd

        new = pd.DataFrame(self.rows, columns=list(STEP_COLUMNS))
        old = self._old
        if old is None or not len(old):  # in the table's order (seed, step, layer), as a resumed run's
            return new.sort_values(["seed", "step", "layer"], kind="stable").reset_index(drop=True)
        # per seed, this run redoes every epoch from the first one it logged: older rows of those epochs go
        first = new.groupby("seed")["epoch"].min()
        keep = old[old["epoch"] < old["seed"].map(first).fillna(math.inf)]
        return pd.concat([keep, new], ignore_index=True).sort_values(["seed", "step", "layer"], kind="stable") \
            .reset_index(drop=True)

    def _read_old(self):
        """The rows of ``path`` a previous (interrupted) run wrote, or ``None``."""

        if self.path is None or not self.path.is_file():
            return None
        try:
            old = read_table(self.path)
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot read the step log {str(self.path)!r} to continue it: {exc}") from None
        if list(old.columns) != list(STEP_COLUMNS):
            raise UserError(f"{str(self.path)!r} is not a step log of this version (columns {list(old.columns)}); "
                            "move it away to start a new one")
        return old

    def save(self):
        """Write :meth:`table` to ``path`` (atomically, with ``.meta.json``) and flush TensorBoard; return the path."""

        if self._writer is not None:
            self._writer.flush()
        if self.path is None:
            return None
        table = self.table()
        first = int(table["epoch"].min()) if len(table) else None
        if first != 1 and not self._said_partial:  # a log started on a resumed run: say it lacks the earlier epochs
            self._said_partial = True
            what = (f"covers epochs {first} on only" if first is not None
                    else "has no rows: this run trained no epoch")
            print(f"note: {self.path} {what} (the epochs before were trained without --log-every)", file=sys.stderr)
        return write_table(table, self.path, run_metadata(log_every=self.every, columns=_COLUMN_NOTES,
                                                          first_epoch=first, **self.meta))

    def close(self) -> None:
        """Flush and close the TensorBoard writer (the CSV is written by :meth:`save`)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _at(values: list, i: int) -> float:
    return float(values[i]) if i < len(values) else math.nan


#: What each column of ``steps.csv`` holds (written into its ``.meta.json``).
_COLUMN_NOTES: dict[str, Any] = {
    "step": "optimizer step, 1-based over the whole run (epoch e, batch b: (e - 1) x batches per epoch + b + 1)",
    "layer": "weight layer: 1..depth the hidden layers, depth + 1 the readout",
    "loss": "the step's batch cross-entropy (nats per sample), before the step; the same on every layer row",
    "acc": "the step's batch accuracy (fraction), before the step",
    "lr": "the step's learning rate (warmup included)",
    "grad_norm": "L2 norm of the step's gradient over all of the seed's parameters (NaN: not available)",
    "update_ratio": "||W(t) - W(t-1)|| / ||W(t-1)|| of the layer's weight matrix (Frobenius norms)",
}
