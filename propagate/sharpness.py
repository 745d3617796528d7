"""Sharpness at initialization and the largest stable learning rate it predicts.

The *sharpness* of a loss ``L(theta)`` at ``theta`` is the largest eigenvalue
``lambda_1(H)`` of its Hessian ``H = d^2 L / d theta^2`` (the largest
*algebraic* eigenvalue; negative curvature does not limit the step size). For
an optimizer whose step is ``theta <- theta - lr P^{-1} g`` with a fixed
diagonal preconditioner ``P``, the relevant quantity is the *preconditioned
sharpness* ``lambda_1(P^{-1} H)``, the largest eigenvalue of
``P^{-1/2} H P^{-1/2}`` (same spectrum, and symmetric, so Lanczos applies).

Stability on a quadratic. Near a minimum the loss is ``0.5 (theta - theta*)^T H
(theta - theta*)``, and along an eigenvector with eigenvalue ``lambda`` gradient
descent multiplies the error by ``1 - lr lambda`` per step: it converges iff
``lr lambda < 2``. With heavy-ball momentum ``beta`` (torch's SGD:
``b <- beta b + g; theta <- theta - lr b``) the error obeys
``e_{t+1} = (1 + beta - lr lambda) e_t - beta e_{t-1}``, stable iff
``lr lambda < 2 + 2 beta``; with an exponential moving average of gradients
(Adam's ``m <- beta1 m + (1 - beta1) g``) the step is ``(1 - beta1)`` times
smaller, so ``lr lambda < (2 + 2 beta1) / (1 - beta1)`` (38 for beta1 = 0.9).
These are the thresholds of Cohen et al. 2021, "Gradient Descent on Neural
Networks Typically Occurs at the Edge of Stability" (ICLR 2021; ``2/eta``
for GD, ``(2 + 2 beta)/eta`` for heavy-ball momentum) and Cohen et al. 2022,
"Adaptive Gradient Methods at the Edge of Stability" (arXiv:2207.14484),
who find the *preconditioned* sharpness of full-batch adaptive methods
equilibrating at the threshold of the frozen-preconditioner iteration:
``(2 + 2 beta1) / (eta (1 - beta1))`` = ``38/eta`` for Adam with beta1 = 0.9,
and ``2/eta`` for RMSprop (no momentum, beta1 = 0).

The predicted largest stable learning rate is therefore
``c / lambda_1`` with ``c`` from :func:`stability_constant` and ``lambda_1``
the (preconditioned, for RMSprop/Adam) sharpness at initialization. It is a
*local, full-batch, frozen-preconditioner* bound: it can fail when the
sharpness changes quickly during the first steps (progressive sharpening or
the catapult out of a sharp region), when the minibatch loss is much sharper
than the batch we measure on, or when the preconditioner is far from its
warm-up value (RMSprop's first steps, with ``v`` still near 0, take steps of
``lr / sqrt(1 - rho)`` per coordinate).

Units: eigenvalues in (loss units, nats) per (parameter unit)^2; learning
rates in parameter units per gradient unit, as the optimizers use them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

from propagate.errors import UserError

__all__ = [
    "SharpnessResult",
    "stability_constant",
    "predicted_max_lr",
    "top_eigenvalue",
    "hessian_sharpness",
    "rmsprop_preconditioner",
    "adam_preconditioner",
    "network_sharpness",
]


@dataclass(frozen=True)
class SharpnessResult:
    """Largest eigenvalue found by Lanczos, with its convergence diagnostics.

    ``value``: the Ritz value (largest eigenvalue of the Lanczos tridiagonal);
    ``residual``: ``||A q - value q||`` of its Ritz vector ``q`` (unit norm), an
    upper bound on the distance from ``value`` to the nearest true eigenvalue;
    ``iterations``: operator applications used.
    """

    value: float
    residual: float
    iterations: int

    def to_dict(self) -> dict:
        return asdict(self)


def stability_constant(optimizer: str, *, momentum: float = 0.0, beta1: float = 0.9) -> float:
    """``c`` in ``lr_max = c / lambda_1`` for a quadratic with (preconditioned) curvature ``lambda_1``.

    ``sgd``: ``2 + 2 momentum`` (torch heavy ball, no dampening; 2 for plain
    GD). ``rmsprop`` (torch/Keras, no momentum): 2, on the preconditioned
    sharpness. ``adam``: ``(2 + 2 beta1) / (1 - beta1)`` (38 at beta1 = 0.9),
    on the preconditioned sharpness. See the module docstring for the sources.
    """
    if optimizer == "sgd":
        return 2.0 + 2.0 * momentum
    if optimizer == "rmsprop":
        return 2.0
    if optimizer == "adam":
        return (2.0 + 2.0 * beta1) / (1.0 - beta1)
    raise UserError(f"no stability threshold for optimizer {optimizer!r}; use sgd, rmsprop or adam")


def predicted_max_lr(sharpness: float, optimizer: str = "sgd", **kw) -> float:
    """``stability_constant(optimizer) / sharpness``; ``inf`` when the sharpness is <= 0 (no curvature limit)."""
    c = stability_constant(optimizer, **kw)
    if not math.isfinite(sharpness):
        return 0.0 if sharpness > 0 else float("nan")
    return c / sharpness if sharpness > 0 else float("inf")


# --------------------------------------------------------------------- Lanczos


def top_eigenvalue(matvec: Callable, n: int, *, iters: int = 20, tol: float = 1e-4, seed: int = 0,
                   dtype=None, device=None) -> SharpnessResult:
    """Largest algebraic eigenvalue of the symmetric operator ``matvec`` on R^n, by Lanczos.

    ``matvec(v)`` takes and returns a 1-D torch tensor of length ``n`` (in
    ``dtype``, on ``device``). Full reorthogonalization against all previous
    Lanczos vectors (classical Gram-Schmidt, twice, as matrix products) keeps
    the Ritz values honest in float32 arithmetic; the Lanczos vectors are
    stored in ``dtype`` (``iters x n`` numbers). The iteration stops after
    ``iters`` products or once the top Ritz pair's residual is below
    ``tol * |value|``. The start vector is Gaussian from ``seed``.
    """
    import numpy as np
    import torch

    if n < 1:
        raise ValueError("empty operator")
    iters = max(1, min(int(iters), n))
    dtype = dtype or torch.float32
    gen = torch.Generator().manual_seed(int(seed))
    q = torch.randn(n, generator=gen, dtype=torch.float64)
    Q = torch.empty(iters, n, dtype=dtype, device=device)
    Q[0] = (q / q.norm()).to(dtype)
    alphas: list[float] = []
    betas: list[float] = []
    value, resid = float("nan"), float("inf")
    k = 0
    for k in range(1, iters + 1):
        w = matvec(Q[k - 1]).detach().to(dtype)
        if not bool(torch.isfinite(w).all()):
            return SharpnessResult(float("inf"), float("nan"), k)
        alphas.append(float(w.double() @ Q[k - 1].double()))
        for _ in range(2):  # "twice is enough" (Parlett)
            w -= Q[:k].T @ (Q[:k] @ w)
        b = float(w.double().norm())
        T = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
        evals, evecs = np.linalg.eigh(T)
        value = float(evals[-1])
        # residual of the Ritz pair: |beta_k * last component of the Ritz vector|
        resid = abs(b * float(evecs[-1, -1]))
        if resid <= tol * max(abs(value), 1e-30) or b <= 1e-12 * max(abs(value), 1.0) or k == iters:
            break
        betas.append(b)
        Q[k] = w / b
    return SharpnessResult(value, resid, k)


def _flat(tensors):
    import torch

    return torch.cat([t.reshape(-1) for t in tensors])


def hessian_sharpness(loss_fn: Callable, params: Sequence, *, precond: Sequence | None = None, iters: int = 20,
                      tol: float = 1e-4, seed: int = 0) -> SharpnessResult:
    """Largest eigenvalue of the Hessian of ``loss_fn()`` in ``params`` (or of ``P^{-1} H``).

    ``loss_fn()`` returns a scalar tensor built from ``params`` (tensors with
    ``requires_grad``). ``precond``: the diagonal of ``P`` as tensors shaped
    like ``params`` (all > 0); the operator is then ``P^{-1/2} H P^{-1/2}``,
    which has the eigenvalues of ``P^{-1} H``. Hessian-vector products by
    double backward through one retained gradient graph.
    """
    import torch

    params = [p for p in params]
    with torch.enable_grad():
        loss = loss_fn()
        grads = torch.autograd.grad(loss, params, create_graph=True)
    g = _flat(grads)
    n = g.numel()
    dtype, device = g.dtype, g.device
    scale = None
    if precond is not None:
        p = _flat([t.detach() for t in precond]).to(dtype=dtype, device=device)
        if not bool((p > 0).all()):
            raise ValueError("preconditioner must be positive")
        scale = p.rsqrt()

    def matvec(v):
        if scale is not None:
            v = v * scale
        hv = torch.autograd.grad(g, params, grad_outputs=v, retain_graph=True, allow_unused=True)
        hv = _flat([h if h is not None else torch.zeros_like(p) for h, p in zip(hv, params)])
        return hv * scale if scale is not None else hv

    return top_eigenvalue(matvec, n, iters=iters, tol=tol, seed=seed, dtype=dtype, device=device)


# ------------------------------------------------------------ preconditioners


def rmsprop_preconditioner(grads: Sequence[Sequence], *, rho: float = 0.9, eps: float = 1e-7) -> list:
    """torch/Keras RMSprop's ``P = sqrt(v) + eps`` after one step per gradient in ``grads``.

    ``grads``: a list over steps of lists of gradient tensors (one per
    parameter). ``v`` starts at 0 and ``v <- rho v + (1 - rho) g^2`` (no bias
    correction, as torch's ``RMSprop(alpha=rho)`` and Keras do); ``eps`` is
    added outside the square root.
    """
    import torch

    v = None
    for step in grads:
        sq = [g.detach() ** 2 for g in step]
        v = [(1 - rho) * s for s in sq] if v is None else [rho * a + (1 - rho) * s for a, s in zip(v, sq)]
    if v is None:
        raise ValueError("need at least one gradient")
    return [torch.sqrt(a) + eps for a in v]


def adam_preconditioner(grads: Sequence[Sequence], *, beta2: float = 0.999, eps: float = 1e-7) -> list:
    """Adam's ``P = sqrt(v / (1 - beta2^t)) + eps`` after ``t = len(grads)`` steps (bias-corrected, as torch)."""
    import torch

    v, t = None, 0
    for step in grads:
        t += 1
        sq = [g.detach() ** 2 for g in step]
        v = [(1 - beta2) * s for s in sq] if v is None else [beta2 * a + (1 - beta2) * s for a, s in zip(v, sq)]
    if v is None:
        raise ValueError("need at least one gradient")
    corr = 1 - beta2**t
    return [torch.sqrt(a / corr) + eps for a in v]


# ------------------------------------------------------------------ networks


def _warmup_gradients(logits, params, xtr, ytr, batch_size: int, steps: int, seed: int, scale: float = 1.0) -> list:
    """The gradients of ``steps`` minibatches of ``batch_size`` (a shuffle from ``seed``) at the fixed weights."""
    import torch
    import torch.nn.functional as F

    order = torch.randperm(len(ytr), generator=torch.Generator().manual_seed(seed))
    out = []
    for k in range(steps):
        start = (k * batch_size) % len(ytr)
        idx = order[start : start + batch_size]
        if len(idx) < 2:
            idx = order[:batch_size]
        with torch.enable_grad():
            loss = scale * F.cross_entropy(logits(torch.from_numpy(xtr[idx.numpy()])),
                                           torch.from_numpy(ytr[idx.numpy()]))
            out.append([g.detach() for g in torch.autograd.grad(loss, params)])
    return out


def network_sharpness(spec, dataset, options=None, *, batch: int = 512, warmup_steps: int = 10, iters: int = 20,
                      tol: float = 1e-3, seed: int | None = None, loss_scale: float = 1.0) -> dict:
    """Sharpness of ``spec``'s network at initialization and the predicted largest stable learning rate.

    The Hessian is that of the mean cross-entropy (nats) on a fixed batch: the
    first ``batch`` training images of ``dataset`` (a
    :class:`propagate.data.Dataset`), with BatchNormalization using batch
    statistics (as in training) and dropout switched off (so the loss is a
    deterministic function of the weights). The network is built from
    ``seed`` (default ``options.seed``) exactly as :func:`propagate.train.train`
    builds it.

    For ``rmsprop`` and ``adam`` (``options.optimizer``) the preconditioner
    ``P`` is the optimizer's after ``warmup_steps`` steps of its second-moment
    average on minibatches of ``options.batch_size`` training images *at the
    initial weights* (weights held fixed, so the prediction does not depend on
    the learning rate; see :func:`rmsprop_preconditioner`); the prediction uses
    ``lambda_1(P^{-1} H)``. For ``sgd`` it uses ``lambda_1(H)``.

    Returns a dict: ``sharpness`` (``lambda_1(H)``), ``precond_sharpness``
    (``lambda_1(P^{-1}H)``, NaN for sgd), ``threshold_constant`` ``c``,
    ``max_lr_predicted`` (``c`` over the sharpness that applies), the
    residuals, ``n_params``, ``batch``, ``warmup_steps`` and ``optimizer``.
    ``loss_scale``: the loss is multiplied by it (``k L`` has Hessian ``k H``, so
    the gradient-descent bound moves by ``1/k``: a test of what a bound depends on).
    """
    import torch
    import torch.nn.functional as F

    from propagate.spec import build_model
    from propagate.train import TrainOptions

    options = options or TrainOptions()
    seed = options.seed if seed is None else int(seed)
    if batch < 2:
        raise UserError(f"sharpness batch must be >= 2, got {batch}")
    xtr, ytr = dataset.arrays("train")
    n = min(batch, len(ytr))
    if n < 2:
        raise UserError(f"dataset {dataset.name!r} has too few training images for a sharpness estimate")
    # dropout off (a deterministic loss); it draws no weights, so the initial weights are the run's
    model = build_model(spec.with_(dropout=0.0, alpha_dropout=0.0), seed=seed)
    model.train()  # BN with batch statistics, as in training; a fresh model, so its running statistics don't matter
    params = [p for p in model.parameters() if p.requires_grad]
    x = torch.from_numpy(xtr[:n])
    y = torch.from_numpy(ytr[:n])

    def logits(xb):
        out = model(xb)
        return out[0] if out.dim() == 3 else out  # an ensemble model of one seed: [1, B, C]

    def loss_fn():
        return loss_scale * F.cross_entropy(logits(x), y)

    h = hessian_sharpness(loss_fn, params, iters=iters, tol=tol, seed=seed)
    opt = options.optimizer
    c = stability_constant(opt, momentum=options.momentum)
    out = {"optimizer": opt, "sharpness": h.value, "sharpness_residual": h.residual, "sharpness_iters": h.iterations,
           "precond_sharpness": float("nan"), "precond_residual": float("nan"), "threshold_constant": c,
           "n_params": sum(p.numel() for p in params), "batch": n, "warmup_steps": 0}
    used = h.value
    if opt in ("rmsprop", "adam"):
        steps = _warmup_gradients(logits, params, xtr, ytr, options.batch_size, max(1, int(warmup_steps)), seed,
                                  loss_scale)
        if opt == "rmsprop":
            P = rmsprop_preconditioner(steps, rho=options.rho, eps=options.eps)
        else:
            P = adam_preconditioner(steps, eps=options.eps)
        hp = hessian_sharpness(loss_fn, params, precond=P, iters=iters, tol=tol, seed=seed)
        out.update(precond_sharpness=hp.value, precond_residual=hp.residual, precond_iters=hp.iterations,
                   warmup_steps=len(steps))
        used = hp.value
    out["max_lr_predicted"] = predicted_max_lr(used, opt, momentum=options.momentum)
    return out
