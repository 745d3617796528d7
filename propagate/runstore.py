"""A training run's records: every seed's progress, its tables and, with a run folder, its files and checkpoint.

:class:`RunStore` is what :func:`propagate.train.train` keeps between epochs
and writes after each one; the training loop itself lives in
:mod:`propagate.train`.

Files of a run folder (``train --out``, each run of ``reproduce``), all
written atomically after every epoch:

- ``history.csv``: one row per seed and finished (or diverged) epoch, columns
  :data:`HISTORY_COLUMNS` (the metrics are defined in :mod:`propagate.train`);
- ``layers.csv``: the per-layer statistics of the probe batch (the
  :mod:`propagate.stats` table, a ``seed``, ``epoch`` and ``mode`` column);
- ``summary.csv``: per epoch, each metric's mean over the seeds the last
  call asked for (``summary_seeds`` in its ``.meta.json``) with its 95%
  Student t interval on the scale of the metric's range
  (:func:`summarize_history`); each table has a ``.meta.json`` beside it
  (command, seed, versions, dataset, per-seed status);
- ``spec.json``: the network, the options, the preset and the status;
- ``checkpoint.pt``: per seed its status, epochs done, rows and state (weights,
  BN buffers, optimizer state), written last because a resumption trusts it;
- ``identity.json`` and ``.lock`` (:mod:`propagate.runfolder`): one writer at
  a time, and no resumption with other settings (:func:`run_config`) or data.

Which seeds: a folder keeps every seed ever trained in it (``history.csv``,
``layers.csv`` and the checkpoint, one row or entry per seed), so asking for
more seeds later adds to the ensemble and asking for a seed again costs
nothing. ``summary.csv`` summarizes only the seeds of the call that wrote it
(the same table as :attr:`propagate.train.TrainResult.summary`): ``train
--seed 7`` into a folder holding seed 0 trains seed 7 beside it, and its
summary is that of seed 7 alone, not an average of 0 and 7.

Per-seed state: a batched model stacks every parameter, buffer and
elementwise optimizer state along a leading seed dimension, so seed ``i`` is
the slice ``[i]`` (scalars such as Adam's step count are shared by the group).
:func:`seed_state` copies one seed's slice out, :func:`load_seed_states`
stacks saved seeds into a fresh model, :func:`restore_seed` puts one back
(a diverged seed stays as it was before its failing batch).
"""

from __future__ import annotations

import io
import numbers
import os
from pathlib import Path
from typing import Any

from propagate.errors import UserError
from propagate.io import Closing, atomic_write_bytes, atomic_write_json, run_metadata, write_table
from propagate.runfolder import claim
from propagate.stats import layer_table

__all__ = [
    "METRICS",
    "HISTORY_COLUMNS",
    "HISTORY_FILE",
    "LAYERS_FILE",
    "SUMMARY_FILE",
    "SPEC_FILE",
    "CHECKPOINT_FILE",
    "RESUME_FREE",
    "run_config",
    "run_identity",
    "read_checkpoint",
    "check_checkpoint",
    "summarize_history",
    "seed_state",
    "load_seed_states",
    "restore_seed",
    "RunStore",
]

#: The per-seed metrics of an epoch (columns of ``history``), summarized over seeds in ``summary``.
METRICS = ("loss", "acc", "val_loss", "val_acc", "train_eval_acc")

#: Columns of ``history``, in order.
HISTORY_COLUMNS = ["seed", "epoch", *METRICS, "seconds", "diverged"]

HISTORY_FILE, LAYERS_FILE, SPEC_FILE, CHECKPOINT_FILE = "history.csv", "layers.csv", "spec.json", "checkpoint.pt"
SUMMARY_FILE = "summary.csv"

#: Options that may differ between an interrupted run and its resumption (seeds: resumption is per seed).
RESUME_FREE = frozenset({"epochs", "device", "threads", "seed", "seeds"})


def run_config(spec, options) -> dict:
    """The settings a resumption must match: the spec and every option that changes results."""
    opts = {k: v for k, v in options.to_dict().items() if k not in RESUME_FREE}
    return {"spec": spec.to_dict(), "options": opts}


def run_identity(spec, options, dataset) -> dict:
    """What a training run folder records and a resumption must match (see :mod:`propagate.runfolder`):
    the spec, the options that change results, and the dataset's identity (checksum of the arrays used)."""
    from propagate.data import dataset_identity

    return {"kind": "train", "config": run_config(spec, options), "dataset": dataset_identity(dataset)}


def summarize_history(history):
    """Per epoch: mean and 95% Student t interval over seeds of each of :data:`METRICS`, and ``n_seeds``.

    Columns ``epoch``, ``<metric>_mean``, ``<metric>_ci_low``, ``<metric>_ci_high``
    (:func:`propagate.confidence.summarize_seeds` with ``kinds="auto"``: the
    interval of an accuracy is built on the logit scale and stays in [0, 1],
    that of a loss on the log scale and stays positive; no interval with one
    seed; a diverged seed's NaN loss is left out of the loss's mean, an
    infinite one leaves the loss without an interval) and ``n_seeds`` (seeds
    with a row for that epoch; a diverged seed has none after its divergence).
    """
    from propagate.confidence import summarize_seeds

    table = summarize_seeds(history, keys=["epoch"], metrics=list(METRICS), kinds="auto")
    return table.sort_values("epoch").reset_index(drop=True)


# ----------------------------------------------------------------- the checkpoint


def read_checkpoint(folder: str | os.PathLike, config: dict, *, mmap: bool = False, spec=None) -> dict | None:
    """The checkpoint of run folder ``folder`` (``None`` if it has none); :class:`UserError` if it is unusable.

    Unusable: not a torch file (damaged, truncated, another program's), a
    checkpoint of an older propagate (one seed, no per-seed state), one of a
    run with settings other than ``config`` (:func:`run_config`), or one of
    the wrong layout (:func:`_check_seeds`: the per-seed records as
    :class:`RunStore` writes them; with ``spec``, each seed's saved state of
    that network), refused like a damaged file and left in place. ``mmap``
    maps the tensors instead of reading them (a check that need not load them).
    """
    import torch

    path = Path(folder) / CHECKPOINT_FILE
    if not path.is_file():
        return None
    fix = "delete it or use --no-resume to start over"
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
    except Exception as exc:  # noqa: BLE001 - unpickling a damaged file fails in any way; the file is at fault
        raise UserError(f"cannot read the checkpoint {str(path)!r} ({exc.__class__.__name__}); {fix}") from None
    if not isinstance(ckpt, dict) or "seeds" not in ckpt or not isinstance(ckpt["seeds"], dict):
        raise UserError(f"{str(path)!r} is not a checkpoint of this propagate (an older one held one seed, no "
                        f"per-seed state); {fix}")
    if ckpt.get("config") != config:
        raise UserError(f"{str(path)!r} holds a run with different settings; use another output folder or "
                        f"--no-resume")
    try:
        _check_seeds(ckpt["seeds"], None if spec is None else _spec_layout(spec))
    except ValueError as exc:  # a checkpoint of the wrong layout is as unusable as a damaged one
        raise UserError(f"cannot read the checkpoint {str(path)!r} (wrong layout: {exc}); {fix}") from None
    return ckpt


_STATUSES = ("partial", "finished", "diverged")


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _check_seeds(seeds: dict, network: tuple | None = None) -> None:
    """Raise :class:`ValueError` (the reason) unless ``seeds`` is a checkpoint's per-seed record as :class:`RunStore`
    writes it: per seed number its ``status``, ``epoch``, ``history`` and ``layers`` rows and, after an epoch,
    ``state`` (:func:`seed_state`); every seed's state of one layout (one network, one optimizer) and, with
    ``network`` (:func:`_network_layout`), of that network."""
    layouts = {}
    for s, st in seeds.items():
        if not _is_int(s) or s < 0:
            raise ValueError(f"seed {s!r} is not a seed number")
        if not isinstance(st, dict):
            raise ValueError(f"seed {s}: not a record")
        if st.get("status") not in _STATUSES:
            raise ValueError(f"seed {s}: status {st.get('status')!r} is none of {', '.join(_STATUSES)}")
        epoch = st.get("epoch")
        if not _is_int(epoch) or epoch < 0:
            raise ValueError(f"seed {s}: epoch {epoch!r} is not a whole number >= 0")
        history = st.get("history")
        if not isinstance(history, list):
            raise ValueError(f"seed {s}: history is not a list of rows")
        for row in history:
            if not (isinstance(row, dict) and set(HISTORY_COLUMNS) <= set(row) and row["seed"] == s
                    and _is_int(row["epoch"]) and 1 <= row["epoch"] <= epoch
                    and all(_is_number(row[m]) for m in (*METRICS, "seconds"))):
                raise ValueError(f"seed {s}: a history row is not one of this seed's epochs")
        layers = st.get("layers")
        if not isinstance(layers, list) or not all(
                isinstance(r, dict) and r.get("seed") == s and _is_int(r.get("epoch")) for r in layers):
            raise ValueError(f"seed {s}: layers is not a list of this seed's rows")
        if epoch > 0 or "state" in st:
            layouts[s] = _state_layout(s, st.get("state"))
            misfit = None if network is None else _misfit(st["state"], network)
            if misfit:
                raise ValueError(f"seed {s}: the saved state is not of this network ({misfit})")
    if len(set(layouts.values())) > 1:
        raise ValueError("the seeds' saved states are of different networks or optimizers")


def _network_layout(model) -> tuple[dict, list]:
    """What one seed's state of a batched ``model`` holds: the shape of each stacked entry of its state dict by
    name, and each parameter's shape (a batched model's shapes without the leading seed dimension)."""
    return ({k: tuple(v.shape[1:]) for k, v in model.state_dict().items() if v.dim() > 0},
            [tuple(p.shape[1:]) for p in model.parameters()])


def _spec_layout(spec) -> tuple[dict, list] | None:
    """:func:`_network_layout` of ``spec``'s network, built on torch's meta device (shapes only, no memory, no
    random numbers); ``None`` if that device cannot build it (:func:`load_seed_states` checks the state then)."""
    import torch

    from propagate.spec import build_model

    try:
        with torch.device("meta"):
            return _network_layout(build_model(spec, seeds=[0]))
    except Exception:  # noqa: BLE001 - an op without a meta kernel: this check is early, load_seed_states' is sure
        return None


def _misfit(state: dict, network: tuple[dict, list]) -> str | None:
    """Why one seed's saved state (:func:`seed_state`) does not fit the network of ``network``, or ``None``."""
    names, params = network
    saved, opt = state["model"], state["optimizer"]
    for k, shape in names.items():
        if k not in saved:
            return f"no {k}"
        if tuple(saved[k].shape) != shape:
            return f"{k} of shape {list(saved[k].shape)}, not {list(shape)}"
    for j, per in opt.items():
        if not 0 <= j < len(params):
            return f"optimizer state of parameter {j}, of {len(params)}"
        for k, v in per.items():
            if hasattr(v, "dim") and v.dim() > 0 and tuple(v.shape) != params[j]:
                return f"optimizer {k} of parameter {j} of shape {list(v.shape)}, not {list(params[j])}"
    return None


def _state_layout(s: int, state) -> tuple:
    """What must be equal across seeds of one run: parameter names, shapes and dtypes, optimizer state names."""
    import torch

    if not isinstance(state, dict) or not isinstance(state.get("model"), dict) \
            or not isinstance(state.get("optimizer"), dict):
        raise ValueError(f"seed {s}: no saved weights and optimizer state")
    model, opt = state["model"], state["optimizer"]
    if not model or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in model.items()):
        raise ValueError(f"seed {s}: the saved weights are not tensors by name")
    for j, per in opt.items():
        if not _is_int(j) or not isinstance(per, dict) or not all(
                isinstance(k, str) and (v is None or _is_number(v) or isinstance(v, torch.Tensor))
                for k, v in per.items()):
            raise ValueError(f"seed {s}: the saved optimizer state is not per parameter")
    return (tuple(sorted((k, tuple(v.shape), str(v.dtype)) for k, v in model.items())),
            tuple(sorted((int(j), tuple(sorted((k, tuple(getattr(v, "shape", ()))) for k, v in per.items())))
                         for j, per in opt.items())))


def check_checkpoint(folder: str | os.PathLike, spec, options) -> None:
    """Raise the :class:`UserError` a resumption of ``folder`` would raise for its checkpoint (before a banner)."""
    read_checkpoint(folder, run_config(spec, options), mmap=True, spec=spec)


# ----------------------------------------------------------------- per-seed state


def seed_state(model, opt, i: int, to_cpu: bool = True) -> dict:
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


def load_seed_states(model, opt, states: list[dict]) -> None:
    """Stack the saved states of a group's seeds (in ``model.seeds`` order) into ``model`` and ``opt``.

    The states are those of a checkpoint :func:`read_checkpoint` checked;
    should one still not fit this network (names or shapes, see
    :func:`_spec_layout`), :class:`UserError` before anything is loaded.
    """
    import torch

    sd = model.state_dict()
    params = list(model.parameters())
    network = _network_layout(model)
    for st in states:
        misfit = _misfit(st, network)
        if misfit:
            raise UserError(f"the checkpoint's saved state does not fit this network ({misfit}); delete "
                            f"{CHECKPOINT_FILE} or use --no-resume to start over")
    for k, v in sd.items():
        if v.dim() > 0:
            v.copy_(torch.stack([st["model"][k] for st in states]))
    for j, p in enumerate(params):
        per = [st["optimizer"].get(j, {}) for st in states]
        if not per[0]:
            continue
        opt.state[p] = {k: (torch.stack([q[k] for q in per]).to(p.device) if hasattr(v, "shape") and v.dim() > 0
                            else (v.clone() if hasattr(v, "clone") else v)) for k, v in per[0].items()}


def restore_seed(model, opt, i: int, st: dict) -> None:
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


# ----------------------------------------------------------------- the store


class RunStore(Closing):
    """Every seed's progress of one training run and, with ``folder``, the run folder it is written to.

    ``seeds[s]``: ``status`` (``"partial"``, ``"finished"`` or ``"diverged"``),
    ``epoch`` (epochs done), ``history`` and ``layers`` (its rows) and, with a
    folder, ``state`` (:func:`seed_state` after its last epoch, for the
    checkpoint). Opening a folder locks it and checks its identity
    (:func:`propagate.runfolder.claim`; ``resume=False`` discards the
    checkpoint); with ``resume`` the checkpoint's seeds are loaded. The lock is
    held until :meth:`close` (or the end of a ``with`` block).
    """

    def __init__(self, spec, options, dataset, *, folder: str | os.PathLike | None = None, resume: bool = True,
                 label: str = "", preset=None, device: Any = "cpu"):
        self.spec, self.options, self.dataset = spec, options, dataset
        self.label, self.preset, self.device = label, preset, str(device)
        self.folder = Path(folder) if folder is not None else None
        self.config = run_config(spec, options)
        self.seeds: dict[int, dict] = {}
        #: the seeds ``summary.csv`` summarizes (:meth:`ask`; ``None``: every seed the store holds)
        self.asked: list[int] | None = None
        self._lock = None
        if self.folder is not None:
            self._lock = claim(self.folder, run_identity(spec, options, dataset), resume=resume,
                               discard=(CHECKPOINT_FILE,))
            try:
                if resume:
                    self.seeds = self._load_checkpoint()
            except BaseException:
                self.close()
                raise

    @property
    def keeps_state(self) -> bool:
        """Whether each seed's weights and optimizer state are kept (for the checkpoint of a run folder)."""
        return self.folder is not None

    def _load_checkpoint(self) -> dict[int, dict]:
        ckpt = read_checkpoint(self.folder, self.config, spec=self.spec)
        return {} if ckpt is None else {int(k): v for k, v in ckpt["seeds"].items()}

    def ask(self, seeds: list[int]) -> None:
        """The seeds of this call: ``summary.csv`` summarizes them (the folder's other tables keep every seed)."""
        self.asked = [int(s) for s in seeds]

    # -- progress

    def groups(self, wanted: list[int]) -> dict[int, list[int]]:
        """The seeds of ``wanted`` by the epoch they start from (seeds at the same point train together).

        A finished seed asked for more epochs than it has becomes partial again;
        a seed the store lacks starts at epoch 1.
        """
        groups: dict[int, list[int]] = {}
        for s in wanted:
            st = self.seeds.get(s)
            if st is not None and st["status"] == "finished" and st["epoch"] < self.options.epochs:
                st["status"] = "partial"
            groups.setdefault(1 if st is None else st["epoch"] + 1, []).append(s)
        return groups

    def begin(self, seeds: list[int], layer_rows: list[dict]) -> None:
        """Start ``seeds`` from scratch with their layer statistics at initialization (rows with a ``seed``)."""
        for s in seeds:
            self.seeds[s] = {"status": "partial", "epoch": 0, "history": [], "layers": []}
        for r in layer_rows:
            self.seeds[r["seed"]]["layers"].append(r)

    def end_epoch(self, seed: int, row: dict, layer_rows: list[dict], diverged: bool, state: dict | None) -> None:
        """Record seed ``seed``'s epoch ``row["epoch"]``: its history row, layer rows, status and (optionally) state."""
        st = self.seeds[seed]
        st["history"].append(row)
        st["layers"] += layer_rows
        st["epoch"] = row["epoch"]
        st["status"] = "diverged" if diverged else ("finished" if row["epoch"] == self.options.epochs else "partial")
        if state is not None:
            st["state"] = state

    def status(self, seeds: list[int] | None = None) -> dict[int, str]:
        """Per seed (default: every seed the store holds) its status; a seed not started yet is ``"partial"``."""
        seeds = sorted(self.seeds) if seeds is None else seeds
        return {s: self.seeds[s]["status"] if s in self.seeds else "partial" for s in seeds}

    @staticmethod
    def overall(status: dict[int, str]) -> str:
        """``"partial"`` if any seed is (or there is none), ``"diverged"`` if every seed diverged, else ``"finished"``."""
        vals = list(status.values())
        if "partial" in vals or not vals:
            return "partial"
        return "diverged" if all(v == "diverged" for v in vals) else "finished"

    # -- tables and files

    def meta(self) -> dict:
        """The run's metadata (``.meta.json`` of its tables) over every seed the store holds."""
        known = sorted(self.seeds)
        st = self.status(known)
        live = [self.seeds[s]["epoch"] for s in known if self.seeds[s]["status"] != "diverged"]
        done = min(live) if live else max((self.seeds[s]["epoch"] for s in known), default=0)
        ds, preset = self.dataset, self.preset
        return run_metadata(
            seed=self.options.seed, kind="training", run=self.label, preset=preset.name if preset else None,
            reported=preset.reported if preset else None, spec=self.spec.to_dict(), options=self.options.to_dict(),
            dataset={"name": ds.name, "n_train": int(ds.n_train), "n_test": int(ds.n_test),
                     "source": getattr(ds, "source", "")},
            device=self.device, status=self.overall(st), epochs_done=done, seeds=known, seed_status=st,
        )

    def frames(self, seeds: list[int] | None = None):
        """``(history, layers)`` DataFrames of ``seeds`` (default: all the store holds), sorted by seed and epoch."""
        import pandas as pd

        seeds = sorted(self.seeds) if seeds is None else seeds
        history = pd.DataFrame([r for s in seeds for r in self.seeds[s]["history"]], columns=HISTORY_COLUMNS)
        history = history.sort_values(["seed", "epoch"], kind="stable").reset_index(drop=True)
        layers = layer_table([r for s in seeds for r in self.seeds[s]["layers"]], source="training",
                             config=self.spec.label())
        if len(layers):
            layers = layers.sort_values(["seed", "epoch"], kind="stable").reset_index(drop=True)
        return history, layers

    def save(self) -> None:
        """Write the run folder's tables, ``spec.json`` and, last, the checkpoint (nothing without a folder)."""
        if self.folder is None:
            return
        import torch

        history, layers = self.frames()
        meta = self.meta()
        write_table(history, self.folder / HISTORY_FILE, meta)
        write_table(layers, self.folder / LAYERS_FILE, meta)
        self.save_summary(history)
        atomic_write_json(self.folder / SPEC_FILE, {
            "spec": self.spec.to_dict(), "options": meta["options"], "preset": meta.get("preset"),
            "status": meta["status"], "epochs_done": meta["epochs_done"], "seeds": meta["seeds"],
            "seed_status": meta["seed_status"]})
        # The checkpoint goes last: it is what a resumption trusts.
        buf = io.BytesIO()
        torch.save({"config": self.config, "seeds": self.seeds}, buf)
        atomic_write_bytes(self.folder / CHECKPOINT_FILE, buf.getvalue())

    def save_summary(self, history=None) -> None:
        """Write ``summary.csv`` of the asked seeds (:meth:`ask`) present in ``history`` (default: the store's)."""
        if self.folder is None:
            return
        history = self.frames()[0] if history is None else history
        seeds = sorted(self.seeds) if self.asked is None else [s for s in self.asked if s in self.seeds]
        meta = {**self.meta(), "summary_seeds": seeds}
        write_table(summarize_history(history[history["seed"].isin(seeds)]), self.folder / SUMMARY_FILE, meta)

    def close(self) -> None:
        """Release the run folder's lock."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

