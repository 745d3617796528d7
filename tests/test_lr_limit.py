"""The learning-rate limit predicted from the optimizer's own first steps (propagate.lr_limit)."""

import math

import numpy as np
import pytest

from propagate.data import Dataset
from propagate.lr_limit import (
    MIN_PROGRESS,
    LookaheadOptions,
    limit_from_curve,
    lookahead_steps,
    predict_max_lr,
)
from propagate.spec import NetworkSpec
from propagate.train import TrainOptions

torch = pytest.importorskip("torch")


def _blobs(n=512, dim=32, classes=4, seed=0):
    """A learnable toy problem: Gaussian class blobs, unit-variance features (float32 in [0, 1] is not needed here)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)).astype(np.float32)
    y = rng.integers(0, classes, size=n)
    x = (centres[y] + rng.normal(size=(n, dim)).astype(np.float32)).astype(np.float32)
    return Dataset("blobs", x, y.astype(np.int64), x[:64], y[:64].astype(np.int64), "test")


def _spec(act="selu", init="lecun_normal", depth=8, width=32, bn=False):
    return NetworkSpec.stack(depth, width, input_dim=32, first_width=None, activation=act, init=init, batchnorm=bn,
                             out_features=4)


def test_criterion_on_a_quadratic_is_the_classical_edge():
    # one direction of curvature lam, gradient descent: L_K / L_0 = (1 - lr lam)^(2K)
    lam, K = 250.0, 10
    lrs = list(np.geomspace(1e-5, 1e-1, 401))
    ratios = [(1 - lr * lam) ** (2 * K) for lr in lrs]
    row = limit_from_curve(lrs, ratios)
    assert row["criterion"] == "half-progress"
    assert row["best_lr"] == pytest.approx(1 / lam, rel=0.03)
    expected = (1 + 2 ** (-1 / (2 * K))) / lam  # where (1 - x)^(2K) = 1/2 on the far side
    assert row["max_lr_predicted"] == pytest.approx(expected, rel=0.005)
    assert row["max_lr_predicted"] == pytest.approx(2 / lam, rel=0.04)


def test_criterion_falls_back_to_the_edge_without_progress():
    lrs = [1e-4, 1e-3, 1e-2, 1e-1, 1.0]
    ratios = [1.0, 1.0 - 1e-6, 1.0, 1.0 + 5 * MIN_PROGRESS, math.inf]
    row = limit_from_curve(lrs, ratios)
    assert row["criterion"].startswith("no-progress")
    assert 1e-2 < row["max_lr_predicted"] < 1e-1
    # the crossing beyond the grid is censored, not invented
    assert math.isnan(limit_from_curve([1e-4, 1e-3], [0.5, 0.6])["max_lr_predicted"])


def test_lookahead_steps_cover_the_optimizers_transient():
    assert lookahead_steps(TrainOptions(rho=0.9), 469) == 10
    assert lookahead_steps(TrainOptions(rho=0.99), 469) == 100
    assert lookahead_steps(TrainOptions(rho=0.99), 32) == 32  # at most one epoch
    assert lookahead_steps(TrainOptions(optimizer="adam"), 469) == 10
    assert lookahead_steps(TrainOptions(optimizer="sgd", momentum=0.0), 469) == 10
    assert lookahead_steps(TrainOptions(rho=0.9, warmup=20), 469) == 30


@pytest.mark.parametrize("optimizer", ["rmsprop", "adam", "sgd"])
def test_unit_rate_step_scaled_per_member_equals_the_optimizer_at_that_rate(optimizer):
    # the lookahead's members share one optimizer at lr 1 and scale each update by their own lr
    from propagate.lr_limit import _Data, _Members
    from propagate.spec import build_model
    from propagate.optim import make_optimizer

    ds, spec = _blobs(), _spec(depth=4, width=16)
    opts = TrainOptions(optimizer=optimizer, batch_size=32, momentum=0.9 if optimizer == "sgd" else 0.0, threads=1,
                        warmup=3)
    data = _Data(ds, 64, torch.device("cpu"))
    lrs = [3e-4, 2e-2]
    run = _Members(spec, data, opts, [5, 5], lrs)
    for _ in range(4):
        run.step()
    for m, lr in enumerate(lrs):
        model = build_model(spec, seeds=[5])
        opt = make_optimizer(model.parameters(), opts.with_(lr=lr))
        order = data.order(5)
        for t in range(4):
            for g in opt.param_groups:
                g["lr"] = lr * min(1.0, (t + 1) / 3)
            idx = order[t * 32 : (t + 1) * 32].unsqueeze(0)
            loss = data.batch_loss(model, idx).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        for p_ref, p in zip(model.parameters(), run.model.parameters()):
            torch.testing.assert_close(p[m], p_ref[0], rtol=2e-5, atol=2e-7)


@pytest.mark.parametrize("optimizer", ["rmsprop", "adam"])
def test_adaptive_prediction_ignores_the_loss_scale_while_the_gd_bound_moves(optimizer):
    # RMSprop's and Adam's steps are g / sqrt(v): a k-fold loss gives the same steps (while |g| >> eps);
    # the Hessian of k L is k H, so gradient descent's bound 2 / lambda_1(H) moves by 1/k
    from propagate.sharpness import network_sharpness

    ds, spec = _blobs(), _spec()
    opts = TrainOptions(optimizer=optimizer, batch_size=32, threads=1)
    look = dict(probe_size=128, per_decade=8)
    base = predict_max_lr(spec, ds, opts, seeds=(0, 1, 2), options=LookaheadOptions(**look))
    scaled = predict_max_lr(spec, ds, opts, seeds=(0, 1, 2), options=LookaheadOptions(loss_scale=10.0, **look))
    assert scaled.summary["max_lr_predicted"] == pytest.approx(base.summary["max_lr_predicted"], rel=0.10)
    gd = [network_sharpness(spec, ds, opts, batch=128, iters=30, loss_scale=k)["sharpness"] for k in (1.0, 10.0)]
    assert gd[1] == pytest.approx(10 * gd[0], rel=0.02)


def test_rho_moves_the_prediction_as_the_sign_steps_say():
    # rho 0.99: the first step is lr / sqrt(0.01) = 10 lr, not 3.16 lr, and it stays larger for ~100 steps;
    # the sign-step picture puts the ratio of the limits between the first step's (0.316) and the first
    # ten steps' displacement (0.342, propagate.sign_steps), for a deep network whose first steps decide
    from propagate.sign_steps import displacement, step_factor

    ds, spec = _blobs(n=1024), _spec(depth=16, width=64)
    opts = TrainOptions(batch_size=32, threads=1)
    look = LookaheadOptions(probe_size=128, per_decade=8, steps=10)
    base = predict_max_lr(spec, ds, opts, seeds=(0, 1, 2), options=look).summary["max_lr_predicted"]
    slow = predict_max_lr(spec, ds, opts.with_(rho=0.99), seeds=(0, 1, 2), options=look).summary["max_lr_predicted"]
    low = step_factor(0.9, 1) / step_factor(0.99, 1)
    high = displacement(0.9, 10) / displacement(0.99, 10)
    assert 0.8 * low < slow / base < 1.25 * high, (slow / base, low, high)


def test_relu_glorot_prediction_is_finite_and_says_why():
    # 30 ReLU layers at sigma_w^2 = 1: the signal halves per layer and the gradients sit far below eps
    ds = _blobs()
    spec = _spec("relu", "glorot_uniform", depth=30, width=32)
    res = predict_max_lr(spec, ds, TrainOptions(batch_size=32, threads=1), seeds=(0, 1),
                         options=LookaheadOptions(probe_size=128))
    assert all(res.per_seed["below_eps_share"] > 0.9)
    assert math.isfinite(res.summary["max_lr_predicted"])
    assert all("below eps" in n for n in res.per_seed["note"])
