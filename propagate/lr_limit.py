"""Where training breaks: the largest stable learning rate at initialization, from the optimizer's own first steps.

:func:`predict_max_lr` runs the optimizer's actual update rule (its state, its
``eps`` and bias corrections, the training batch size and shuffle) on the real
network and data for ``K`` steps at many learning rates at once, and finds the
learning rate beyond which those steps stop paying.

Why a lookahead and not a curvature bound
-----------------------------------------
The classical edge of stability ``2 / lambda_1(H)`` (gradient descent) and its
preconditioned form ``2 / lambda_1(P^-1 H)`` (Cohen et al. 2022, "Adaptive
gradient methods at the edge of stability") describe an optimizer whose
preconditioner ``P`` is frozen. RMSprop's and Adam's are not during the first
``~1/(1 - beta)`` steps: RMSprop's second moment starts at 0, so its first step
is ``lr / sqrt(1 - rho)`` times the sign of each gradient entry (3.16 lr at
``rho = 0.9``), whatever the gradient's size, and it shrinks towards ``lr``
only as the average fills. Those sign steps are large and *coherent*: a dense
layer's batch gradient is low rank, so the sign step is nearly rank one, aligned
with the layer's inputs, and the changes of 50 layers add up (the derivation
``derivations/trainability.md`` works this out). Multiplying the loss by ``k``
leaves these steps unchanged while it moves ``2 / lambda_1(H)`` ``k``-fold, so
no curvature bound can predict them; the lookahead sees them because it takes
them.

The criterion (fixed before the scaling grid was measured)
---------------------------------------------------------
For each seed and learning rate ``lr``, the loss ``L_K(lr)`` on a fixed probe
batch (the first ``probe_size`` training images; train mode as the optimizer
sees it, dropout off) after ``K`` steps, against its value ``L_0`` at
initialization: the progress ``p(lr) = 1 - L_K(lr) / L_0``. The best progress
``p* = max p`` is reached at ``lr_best``; the predicted largest stable rate
``max_lr_predicted`` is where, above ``lr_best``, the progress first falls
below half of ``p*`` (log-linear interpolation between the two grid points
around the crossing). For a quadratic loss along one direction this is the
classical edge: ``p = 1 - (1 - lr lambda)^(2K)`` is largest at ``lr = 1/lambda``
and falls to ``p*/2`` at ``lr = (1 + 2^(-1/(2K))) / lambda``, within 4% of
``2 / lambda`` for ``K = 10``. On a real network it is also where the steps
start to *cost*: the loss still falls a little above it, but the network is
pushed off its initial statistics and training does not recover within an
epoch. When no learning rate makes measurable progress (``p* < MIN_PROGRESS``,
for example a ReLU stack whose gradients sit far below ``eps``), the criterion
falls back to the edge of stability itself: the smallest ``lr`` at which the
loss after ``K`` steps rises above ``L_0`` by more than ``MIN_PROGRESS / 2``
(or is not finite); the ``note`` column says so.

``K`` (:func:`lookahead_steps`): the optimizer's transient, ``ceil(1 / (1 -
beta))`` steps for ``beta`` = RMSprop's ``rho``, Adam's ``beta1`` (its bias
correction removes ``beta2``'s transient), SGD's momentum; at least
:data:`MIN_STEPS` (the loss must have time to respond) and at most one epoch,
plus the warmup steps when there is a warmup.

Cost: a one-step line search (one gradient and forward passes only) locates the
scale; then ``seeds x learning rates`` networks run ``K`` steps together as one
batched ensemble (:func:`propagate.spec.build_model`); the optimizer steps at
unit learning rate and each member's update is scaled by its own rate (exact:
RMSprop, Adam and SGD with momentum are linear in the learning rate given their
state, and their state does not depend on it; tested against the optimizer run
at that rate). ``member_steps`` in the result counts the network-steps taken.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

from propagate.errors import UserError

__all__ = [
    "LookaheadOptions",
    "LrLimitResult",
    "MIN_PROGRESS",
    "MIN_STEPS",
    "lookahead_steps",
    "transient_beta",
    "limit_from_curve",
    "predict_max_lr",
]

#: Fewest lookahead steps (below this the loss has not had time to respond to the step size).
MIN_STEPS = 10
#: Best relative progress below which the lookahead sees no learning and falls back to the edge of stability.
MIN_PROGRESS = 0.02
#: The edge of stability without progress: the loss ratio that counts as a rise (float32 losses wobble by ~1e-7).
RISE = 1.0 + MIN_PROGRESS / 2


@dataclass(frozen=True)
class LookaheadOptions:
    """How :func:`predict_max_lr` searches.

    ``steps``: ``K`` (None: :func:`lookahead_steps`); ``per_decade``: learning
    rates per decade of the ``K``-step grid; ``below``/``above``: decades of
    the first ``K``-step grid below and above the one-step scale;
    ``extensions``: how often the grid may grow when the crossing is not inside
    it; ``lr_min``/``lr_max``: the one-step line search's range;
    ``probe_size``: training images in the fixed probe batch; ``loss_scale``:
    the loss is multiplied by this (a test of scale invariance: RMSprop and
    Adam steps ignore it while gradients are well above ``eps``);
    ``max_members``: networks per batched run (memory).
    """

    steps: int | None = None
    per_decade: int = 4
    below: float = 1.5
    above: float = 0.75
    extensions: int = 3
    lr_min: float = 1e-9
    lr_max: float = 1e3
    probe_size: int = 512
    loss_scale: float = 1.0
    max_members: int | None = None

    def __post_init__(self):
        if self.steps is not None and (not isinstance(self.steps, int) or self.steps < 1):
            raise UserError(f"lookahead steps must be a whole number >= 1, got {self.steps!r}")
        if not isinstance(self.per_decade, int) or not 1 <= self.per_decade <= 20:
            raise UserError(f"learning rates per decade must be a whole number in 1..20, got {self.per_decade!r}")
        if not (0 < self.lr_min < self.lr_max and math.isfinite(self.lr_max)):
            raise UserError(f"the line search needs 0 < lr_min < lr_max < inf, got {self.lr_min}, {self.lr_max}")
        if not (math.isfinite(self.loss_scale) and self.loss_scale > 0):
            raise UserError(f"loss scale must be finite and > 0, got {self.loss_scale}")
        if not isinstance(self.probe_size, int) or self.probe_size < 2:
            raise UserError(f"probe size must be a whole number >= 2, got {self.probe_size!r}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class LrLimitResult:
    """``per_seed``: one row per seed (``max_lr_predicted``, ``max_lr_one_step``, ``best_lr``,
    ``best_progress``, ``criterion``, ``below_eps_share``, ``note``); ``curve``: one row per
    (seed, stage, lr) with ``loss0``, ``loss``, ``ratio``; ``summary``: the geometric mean of
    ``max_lr_predicted`` over seeds with its 95% interval (a t interval of ``ln lr``), ``steps``,
    ``member_steps``, ``epoch_member_steps`` (one epoch of the seeds' ensemble, for scale)."""

    per_seed: object
    curve: object
    summary: dict = field(default_factory=dict)


def transient_beta(train_options) -> float:
    """The decay whose transient sets the lookahead: RMSprop's ``rho``, Adam's ``beta1``, SGD's momentum."""
    if train_options.optimizer == "rmsprop":
        return float(train_options.rho)
    if train_options.optimizer == "adam":
        return 0.9
    return float(train_options.momentum)


def lookahead_steps(train_options, steps_per_epoch: int) -> int:
    """``K``: ``ceil(1 / (1 - beta))`` of :func:`transient_beta`, at least :data:`MIN_STEPS`, at most one epoch, plus the warmup steps."""
    beta = transient_beta(train_options)
    k = max(MIN_STEPS, math.ceil(1.0 / (1.0 - beta) - 1e-9))
    return int(min(k, max(1, steps_per_epoch)) + train_options.warmup)


def limit_from_curve(lrs: Sequence[float], ratios: Sequence[float]) -> dict:
    """The criterion (module docstring) on one seed's ``(lr, L_K / L_0)`` points; returns the row fields.

    Non-finite ratios count as infinite loss. Returns ``max_lr_predicted``
    (NaN when the grid does not reach the crossing: ``censored`` says which
    side), ``best_lr``, ``best_progress``, ``criterion`` ("half-progress" or
    "no-progress: edge of stability") and ``censored`` ("", "above", "below").
    """
    pts = sorted((float(l), float(r) if math.isfinite(r) else math.inf) for l, r in zip(lrs, ratios))
    if not pts:
        return {"max_lr_predicted": math.nan, "best_lr": math.nan, "best_progress": math.nan,
                "criterion": "", "censored": "above"}
    ib = min(range(len(pts)), key=lambda i: (pts[i][1], pts[i][0]))
    best_lr, best_ratio = pts[ib]
    progress = 1.0 - best_ratio
    if progress >= MIN_PROGRESS:
        level, criterion, start = 1.0 - progress / 2, "half-progress", ib
    else:
        level, criterion, start = RISE, "no-progress: edge of stability", 0
    row = {"best_lr": best_lr, "best_progress": progress, "criterion": criterion}
    for i in range(start + 1, len(pts)):
        if pts[i][1] > level:
            (l0, r0), (l1, r1) = pts[i - 1], pts[i]
            if not math.isfinite(r1) or r1 == r0:
                lr = math.sqrt(l0 * l1)  # geometric midpoint when the far side is not finite
            else:
                f = (level - r0) / (r1 - r0)
                lr = math.exp(math.log(l0) + f * (math.log(l1) - math.log(l0)))
            return {**row, "max_lr_predicted": lr, "censored": ""}
    return {**row, "max_lr_predicted": math.nan, "censored": "above"}


# ------------------------------------------------------------------ the batched lookahead


class _Members:
    """``seeds x lrs`` networks of one spec trained together for ``K`` steps by the real optimizer at unit rate.

    Member ``m`` starts from seed ``seeds[m]``'s initial weights, sees that
    seed's epoch-1 shuffle (as training does), and its update at step ``t`` is
    scaled by ``lrs[m]`` times the warmup factor of ``train_options`` (its ``lr_at`` at unit rate).
    """

    def __init__(self, spec, data, train_options, seeds, lrs, *, loss_scale=1.0):
        import torch

        from propagate.optim import make_optimizer
        from propagate.spec import build_model

        self.data, self.opts, self.loss_scale = data, train_options, float(loss_scale)
        self.unit = train_options.with_(lr=1.0)  # its lr_at(t) is the warmup factor of step t
        self.seeds, self.lrs = list(seeds), [float(l) for l in lrs]
        self.model = build_model(spec, seeds=self.seeds, device=data.device)
        self.opt = make_optimizer(self.model.parameters(), train_options.with_(lr=1.0), members=len(self.seeds))
        self.scale = torch.tensor(self.lrs, dtype=torch.float32, device=data.device)
        self.order = torch.stack([data.order(s) for s in self.seeds])
        self.t = 0

    def probe_loss(self):
        return self.data.probe_loss(self.model)

    def step(self):
        """One optimizer step of every member; returns each member's minibatch loss (before the step)."""
        import torch

        bs = self.opts.batch_size
        n = self.order.shape[1]
        start = (self.t * bs) % n
        idx = self.order[:, start : start + bs]
        per = self.data.batch_loss(self.model, idx) * self.loss_scale
        finite = torch.isfinite(per)
        self.opt.zero_grad(set_to_none=True)
        torch.where(finite, per, torch.zeros_like(per)).sum().backward()
        params = [p for p in self.model.parameters() if p.grad is not None]
        before = [p.detach().clone() for p in params]
        self.opt.step()
        self.t += 1
        factor = self.unit.lr_at(self.t)
        with torch.no_grad():
            for p, b in zip(params, before):
                s = (self.scale * factor).view(-1, *([1] * (p.dim() - 1)))
                p.sub_(b).mul_(s).add_(b)  # b + lr_m * (unit-rate update)
        return per.detach()


class _Data:
    """The training split on the device, each seed's epoch-1 shuffle, and the fixed probe batch."""

    def __init__(self, dataset, probe_size, device):
        import torch

        from propagate.train import shuffle_seed

        x, y = dataset.arrays("train")
        self.device = device
        self.x = torch.from_numpy(x).to(device)
        self.y = torch.from_numpy(y).long().to(device)
        self.n = len(self.y)
        p = min(int(probe_size), self.n)
        self.px, self.py = self.x[:p], self.y[:p]
        self._shuffle_seed = shuffle_seed

    def order(self, seed):
        import torch

        g = torch.Generator()
        g.manual_seed(self._shuffle_seed(seed, 1))
        return torch.randperm(self.n, generator=g).to(self.device)

    def batch_loss(self, model, idx):
        import torch.nn.functional as F

        S, B = idx.shape
        out = model(self.x[idx])
        return F.cross_entropy(out.reshape(S * B, -1), self.y[idx].reshape(-1), reduction="none").view(S, B).mean(1)

    def probe_loss(self, model):
        """Mean cross-entropy of each member on the probe batch, train mode (batch statistics), dropout off."""
        import torch
        import torch.nn.functional as F

        was = model.training
        model.train()
        drops = [m for m in model.modules() if getattr(m, "dropout_generators", None) is not None and m is not model]
        saved = [(m, m.training) for m in drops]
        for m in drops:
            m.eval()
        try:
            with torch.no_grad():
                out = model(self.px)
                S, B = out.shape[0], out.shape[1]
                return F.cross_entropy(out.reshape(S * B, -1), self.py.repeat(S), reduction="none").view(S, B).mean(1)
        finally:
            for m, t in saved:
                m.train(t)
            model.train(was)


def _grid(lo: float, hi: float, per_decade: int) -> list[float]:
    """Learning rates ``10^(k / per_decade)`` from ``lo`` to ``hi`` (snapped to that global grid, both ends included)."""
    a = math.floor(math.log10(lo) * per_decade + 1e-9)
    b = math.ceil(math.log10(hi) * per_decade - 1e-9)
    return [10.0 ** (k / per_decade) for k in range(a, b + 1)]


def _member_budget(spec, train_options, limit_bytes: int = 2**31) -> int:
    """Networks per batched run within ``limit_bytes``: weights, gradients, optimizer state and a copy, plus activations."""
    widths = list(spec.widths) + ([spec.out_features] if spec.out_features else [])
    params = sum(a * b + b for a, b in zip(widths[:-1], widths[1:]))
    per = 4 * (5 * params + 6 * train_options.batch_size * sum(widths))
    return max(1, int(limit_bytes // per))


def _one_step(spec, data, train_options, seeds, options) -> tuple[list[dict], dict]:
    """The loss after one real optimizer step, scanned over learning rates (forward passes only after one gradient).

    Returns the curve rows and, per seed, ``(max_lr_one_step, below_eps_share)``.
    """
    import torch

    run = _Members(spec, data, train_options, seeds, [1.0] * len(seeds), loss_scale=options.loss_scale)
    loss0 = run.probe_loss()
    params = list(run.model.parameters())
    theta0 = [p.detach().clone() for p in params]
    run.step()
    below = _below_eps_share(run, len(seeds))
    units = [p.detach() - t for p, t in zip(params, theta0)]
    rows, crossing = [], {}
    with torch.no_grad():
        for lr in _grid(options.lr_min, options.lr_max, 2):
            for p, t, u in zip(params, theta0, units):
                p.copy_(t + lr * u)
            ratio = (run.probe_loss() / loss0).tolist()
            for s, l0, r in zip(seeds, loss0.tolist(), ratio):
                rows.append({"seed": s, "stage": "one-step", "lr": lr, "loss0": l0, "loss": l0 * r, "ratio": r})
                if s not in crossing and not (math.isfinite(r) and r <= RISE):
                    crossing[s] = lr
            if len(crossing) == len(seeds):
                break
    return rows, {s: (crossing.get(s, math.nan), below[i]) for i, s in enumerate(seeds)}


def _below_eps_share(run, S: int) -> list[float]:
    """Per member, the share of parameters whose first step is set by ``eps`` rather than by the gradient's sign.

    RMSprop's first step is ``g / (sqrt(1 - rho) |g| + eps)``: a sign step of
    ``1 / sqrt(1 - rho)`` where ``sqrt(1 - rho) |g| > eps``, and ``g / eps`` (plain
    gradient descent at rate ``lr / eps``) where it is not. Adam's, bias
    corrected, is ``g / (|g| + eps)``. SGD has no such scale (NaN). Reads the
    gradients the first step left in ``.grad``.
    """
    import torch

    o = run.opts
    if o.optimizer == "sgd":
        return [math.nan] * S
    c = math.sqrt(1.0 - o.rho) if o.optimizer == "rmsprop" else 1.0
    small = torch.zeros(S, dtype=torch.float64)
    total = 0
    for p in run.model.parameters():
        if p.grad is None:
            continue
        total += p[0].numel()
        small += (c * p.grad.abs() < o.eps).flatten(1).sum(1).double().cpu()
    return (small / max(total, 1)).tolist()


def _lookahead(spec, data, train_options, members, steps, options, progress) -> list[dict]:
    """Run ``members`` (``(seed, lr)`` pairs) for ``steps`` steps in batched chunks; one curve row per member."""
    rows = []
    chunk = options.max_members or _member_budget(spec, train_options)
    for i in range(0, len(members), chunk):
        part = members[i : i + chunk]
        run = _Members(spec, data, train_options, [s for s, _ in part], [l for _, l in part],
                       loss_scale=options.loss_scale)
        loss0 = run.probe_loss().tolist()
        for _ in range(steps):
            run.step()
        lossk = run.probe_loss().tolist()
        for (s, lr), l0, lk in zip(part, loss0, lossk):
            r = lk / l0 if math.isfinite(lk) else math.inf
            rows.append({"seed": s, "stage": "lookahead", "lr": lr, "loss0": l0, "loss": lk, "ratio": r})
        if progress is not None:
            progress(f"lookahead: {min(i + chunk, len(members))}/{len(members)} networks, {steps} steps")
    return rows


def _extend(seeds, rows, grids, per_decade) -> list[tuple[int, float]]:
    """New ``(seed, lr)`` members where a seed's crossing (or its best rate) lies outside its grid: one decade more."""
    new = []
    for s in seeds:
        pts = [(r["lr"], r["ratio"]) for r in rows if r["seed"] == s and r["stage"] == "lookahead"]
        res = limit_from_curve([p[0] for p in pts], [p[1] for p in pts])
        lrs = sorted(grids[s])
        if res["censored"] == "above":
            add = _grid(lrs[-1], lrs[-1] * 10.0, per_decade)[1:]
        elif res["best_lr"] == lrs[0]:
            add = _grid(lrs[0] / 10.0, lrs[0], per_decade)[:-1]
        else:
            continue
        grids[s].update(add)
        new += [(s, lr) for lr in add]
    return new


def _summary(per_seed, seeds, steps, member_steps, steps_per_epoch) -> dict:
    """Geometric mean of the per-seed limits with its 95% interval (a Student t interval of ``ln lr``)."""
    import numpy as np

    from propagate.confidence import t_interval

    vals = [v for v in per_seed["max_lr_predicted"] if math.isfinite(v) and v > 0]
    iv = t_interval(np.log(vals)) if vals else None
    exp = lambda x: math.exp(x) if x is not None and math.isfinite(x) else math.nan  # noqa: E731
    return {"max_lr_predicted": exp(iv.mean) if iv else math.nan,
            "max_lr_predicted_ci_low": exp(iv.low) if iv else math.nan,
            "max_lr_predicted_ci_high": exp(iv.high) if iv else math.nan,
            "n_seeds": len(vals), "steps": int(steps), "member_steps": int(member_steps),
            "epoch_member_steps": int(len(seeds) * steps_per_epoch)}


def predict_max_lr(spec, dataset, train_options=None, *, seeds: Sequence[int] = (0, 1, 2),
                   options: LookaheadOptions | None = None,
                   progress: Callable[[str], None] | None = None) -> LrLimitResult:
    """The largest learning rate at which ``train_options``' optimizer trains ``spec`` on ``dataset``, predicted at init.

    ``train_options``: a :class:`propagate.train.TrainOptions` (optimizer, its
    ``rho``/``eps``/``momentum``, batch size, device, threads; its ``lr`` is
    ignored; its ``warmup`` is applied as training applies it); ``seeds``: the
    networks (seed ``k``'s initial weights and epoch-1 shuffle, as
    :func:`propagate.train.train` draws them). The search and
    the criterion are in the module docstring. Learning rates are step sizes
    (dimensionless multipliers of the optimizer's direction).
    """
    import pandas as pd

    from propagate.train import TrainOptions, resolve_device, training_settings

    train_options = train_options or TrainOptions()
    options = options or LookaheadOptions()
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise UserError(f"seeds must be distinct whole numbers >= 0, got {seeds}")
    dev = resolve_device(train_options.device)
    with training_settings(train_options, dev):
        data = _Data(dataset, options.probe_size, dev)
        steps_per_epoch = math.ceil(data.n / train_options.batch_size)
        steps = options.steps or lookahead_steps(train_options, steps_per_epoch)
        curve, scale = _one_step(spec, data, train_options, seeds, options)
        grids = {}
        for s in seeds:
            lr1 = scale[s][0] if math.isfinite(scale[s][0]) else options.lr_max
            grids[s] = set(_grid(lr1 * 10.0 ** -options.below, lr1 * 10.0 ** options.above, options.per_decade))
        todo = [(s, lr) for s in seeds for lr in sorted(grids[s])]
        member_steps = len(seeds)
        for _ in range(options.extensions + 1):
            if not todo:
                break
            curve += _lookahead(spec, data, train_options, todo, steps, options, progress)
            member_steps += len(todo) * steps
            todo = _extend(seeds, curve, grids, options.per_decade)
    rows = []
    for s in seeds:
        pts = [r for r in curve if r["seed"] == s and r["stage"] == "lookahead"]
        res = limit_from_curve([r["lr"] for r in pts], [r["ratio"] for r in pts])
        note = ""
        if res["criterion"].startswith("no-progress"):
            note = "no learning rate made measurable progress in the lookahead; the limit is where the loss after the lookahead rises above its start"
        if scale[s][1] > 0.5:
            note = (note + "; " if note else "") + (
                f"{scale[s][1]:.0%} of the gradients sit below eps at init: those steps are lr g / eps, not sign steps")
        rows.append({"seed": s, **res, "max_lr_one_step": scale[s][0], "below_eps_share": scale[s][1],
                     "steps": steps, "warmup": train_options.warmup, "note": note})
    per_seed = pd.DataFrame(rows)
    curve_df = pd.DataFrame(curve).sort_values(["stage", "seed", "lr"], kind="stable").reset_index(drop=True)
    summary = _summary(per_seed, seeds, steps, member_steps, steps_per_epoch)
    return LrLimitResult(per_seed=per_seed, curve=curve_df, summary=summary)
