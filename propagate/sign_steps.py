"""The sign-step picture of an adaptive optimizer's first steps, and the derivation ``derivations/trainability.md``.

RMSprop's squared-gradient average starts at zero, so while it fills (the
first ``~1/(1 - rho)`` steps) every weight moves by ``lr / sqrt(1 - rho^t)``
times the sign of its gradient, whatever the gradient's size. This module
holds the picture's numbers (exact sums, any precision through mpmath) and
writes the derivation that turns them into a scaling law for the largest
stable learning rate; :mod:`propagate.lr_limit` measures that rate by running
the optimizer itself, and :mod:`propagate.scaling` compares both with training.
"""

from __future__ import annotations

import math
from propagate.templates import render

__all__ = [
    "step_factor",
    "displacement",
    "warmup_gain",
    "relative_spectral_change",
    "derivation_markdown",
]


def step_factor(rho: float, t: int) -> float:
    """``|u_t| / lr`` of RMSprop at step ``t`` (1-based) for a gradient of steady size: ``(1 - rho^t)^(-1/2)``.

    With ``v_0 = 0`` and ``v_t = rho v_{t-1} + (1 - rho) g^2``, ``v_t = (1 - rho^t) g^2``;
    the step ``lr g / (sqrt(v_t) + eps)`` is then ``lr sign(g) / sqrt(1 - rho^t)``
    while ``sqrt(v_t) >> eps``.
    """
    if not 0 <= rho < 1 or t < 1:
        raise ValueError(f"need 0 <= rho < 1 and t >= 1, got rho={rho}, t={t}")
    return (1.0 - rho**t) ** -0.5


def displacement(rho: float, steps: int, warmup: int = 0) -> float:
    """``sum_{t=1..steps} w_t (1 - rho^t)^(-1/2)``, ``w_t = min(1, t / warmup)``: how far a weight moves in
    ``steps`` sign steps of unit learning rate (all of one sign), with linear warmup."""
    total = 0.0
    for t in range(1, int(steps) + 1):
        w = min(1.0, t / warmup) if warmup else 1.0
        total += w * step_factor(rho, t)
    return total


def warmup_gain(rho: float, warmup: int, steps: int | None = None) -> float:
    """The sign-step picture's factor by which ``warmup`` raises the largest stable rate: the displacement over the
    first ``steps`` steps (default ``warmup + ceil(1 / (1 - rho))``) without warmup over that with it."""
    steps = steps if steps is not None else warmup + math.ceil(1.0 / (1.0 - rho) - 1e-9)
    return displacement(rho, steps) / displacement(rho, steps, warmup)


def relative_spectral_change(lr: float, rho: float, n: int, sigma_w2: float = 1.0) -> float:
    """``||Delta W||_2 / ||W||_2`` of RMSprop's first step on an ``n x n`` layer whose gradient is rank one.

    The sign of a rank-one matrix ``u v^T`` is ``sign(u) sign(v)^T``, of
    spectral norm ``n``; the step is ``lr / sqrt(1 - rho)`` times it. A Gaussian
    ``W`` with ``Var(w) = sigma_w2 / n`` has ``||W||_2 -> 2 sqrt(sigma_w2)``
    (the Marchenko-Pastur edge, square case).
    """
    return lr / math.sqrt(1.0 - rho) * n / (2.0 * math.sqrt(sigma_w2))


# ---------------------------------------------------------------- the derivation


def _generic(expr):
    """A sum's value for ``beta != 1`` (sympy answers a geometric sum piecewise; the decays here are below 1)."""
    import sympy as sp

    expr = sp.piecewise_fold(sp.simplify(expr))
    if isinstance(expr, sp.Piecewise):
        expr = expr.args[-1].expr
    return sp.simplify(expr)


def _symbolic() -> dict:
    """The derivation's formulas, each from sympy (LaTeX strings)."""
    import sympy as sp

    rho, g, lr, eps, t, s = sp.symbols("rho g eta epsilon t s", positive=True)
    v_t = sp.simplify((1 - rho) * sp.summation(rho ** (t - s) * g**2, (s, 1, t)))
    u1 = lr * g / (sp.sqrt((1 - rho) * g**2) + eps)
    u1_limit = sp.limit(u1, eps, 0)
    ut = sp.simplify(lr * g / sp.sqrt(v_t))
    beta1, beta2 = sp.symbols("beta_1 beta_2", positive=True)
    m_hat = _generic((1 - beta1) * sp.summation(beta1 ** (t - s) * g, (s, 1, t)) / (1 - beta1**t))
    v_hat = _generic((1 - beta2) * sp.summation(beta2 ** (t - s) * g**2, (s, 1, t)) / (1 - beta2**t))
    adam = sp.simplify(lr * m_hat / sp.sqrt(v_hat))
    return {"v_t": sp.latex(v_t), "u1": sp.latex(u1), "u1_limit": sp.latex(u1_limit), "u_t": sp.latex(ut),
            "m_hat": sp.latex(m_hat), "v_hat": sp.latex(v_hat), "adam_step": sp.latex(adam)}


def _factor_table(rhos=(0.9, 0.99), ts=(1, 2, 3, 5, 10, 20, 50, 100)) -> str:
    head = "| step t | " + " | ".join(f"rho = {r:g}" for r in rhos) + " |"
    lines = [head, "|---|" + "---|" * len(rhos)]
    for t in ts:
        lines.append(f"| {t} | " + " | ".join(f"{step_factor(r, t):.3f}" for r in rhos) + " |")
    return "\n".join(lines)


def _displacement_table(rho: float = 0.9, warmups=(0, 10, 20, 40)) -> str:
    k = math.ceil(1.0 / (1.0 - rho) - 1e-9)
    lines = ["| warmup W | steps T = W + 1/(1 - rho) | D_0(T) | D_W(T) | gain D_0 / D_W |", "|---|---|---|---|---|"]
    for w in warmups:
        steps = w + k
        d0, dw = displacement(rho, steps), displacement(rho, steps, w)
        lines.append(f"| {w} | {steps} | {d0:.2f} | {dw:.2f} | {d0 / dw:.2f} |")
    return "\n".join(lines)


def derivation_markdown() -> str:
    """``derivations/trainability.md``: the sign-step picture, its scaling law and the literature it meets."""

    sym = _symbolic()
    values = {
        **{f"sym_{k}": v for k, v in sym.items()},
        "first_09": f"{step_factor(0.9, 1):.4f}",
        "first_099": f"{step_factor(0.99, 1):.4f}",
        "rho_ratio": f"{step_factor(0.9, 1) / step_factor(0.99, 1):.3f}",
        "rho_ratio_k": f"{displacement(0.9, 10) / displacement(0.99, 10):.3f}",
        "d09_10": f"{displacement(0.9, 10):.2f}",
        "d099_10": f"{displacement(0.99, 10):.2f}",
        "factor_table": _factor_table(),
        "change_1e4": f"{100 * relative_spectral_change(1e-4, 0.9, 256):.1f}%",
        "change_1e3": f"{100 * relative_spectral_change(1e-3, 0.9, 256):.0f}%",
        "displacement_table": _displacement_table(),
        "gain_20": f"{warmup_gain(0.9, 20):.2f}",
    }
    return render("trainability_derivation.md", values)
