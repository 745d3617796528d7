"""Sharpness by Lanczos on quadratics with known spectra, and the stability thresholds it predicts."""

import math

import numpy as np
import pytest
import torch

from propagate.sharpness import (
    adam_preconditioner,
    hessian_sharpness,
    predicted_max_lr,
    rmsprop_preconditioner,
    stability_constant,
    top_eigenvalue,
)


def _quadratic(eigs, seed=0):
    """A = Q diag(eigs) Q^T with a random orthogonal Q (float64)."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((len(eigs), len(eigs))))
    return torch.tensor(q @ np.diag(eigs) @ q.T)


def test_sharpness_of_quadratic_is_its_largest_eigenvalue():
    eigs = [7.5, 3.0, 1.0, 0.2, -4.0, -9.0]  # the most negative has the largest magnitude: Lanczos must not pick it
    A = _quadratic(eigs)
    x = torch.randn(len(eigs), dtype=torch.float64, requires_grad=True)
    res = hessian_sharpness(lambda: 0.5 * x @ A @ x + x.sum(), [x], iters=10, tol=1e-10)
    assert res.value == pytest.approx(7.5, rel=1e-9)
    assert res.residual < 1e-8


def test_sharpness_of_two_parameter_tensors_float32():
    # Block-diagonal Hessian spread over two parameter tensors; float32 autograd.
    A = _quadratic([2.0, 0.5, 0.1]).float()
    B = _quadratic([11.0, 4.0], seed=1).float()
    a = torch.randn(3, requires_grad=True)
    b = torch.randn(2, requires_grad=True)
    res = hessian_sharpness(lambda: 0.5 * (a @ A @ a) + 0.5 * (b @ B @ b), [a, b], iters=5, tol=1e-6)
    assert res.value == pytest.approx(11.0, rel=1e-5)


def test_sharpness_of_nonquadratic_loss_matches_exact_hessian():
    # A small tanh network's loss: Lanczos with double-backward products against the dense Hessian.
    torch.manual_seed(0)
    x = torch.randn(16, 3, dtype=torch.float64)
    y = torch.randn(16, dtype=torch.float64)
    w = torch.randn(3 * 4 + 4, dtype=torch.float64, requires_grad=True)

    def loss_of(w):
        W1, w2 = w[:12].view(3, 4), w[12:]
        return ((torch.tanh(x @ W1) @ w2 - y) ** 2).mean()

    H = torch.autograd.functional.hessian(loss_of, w.detach())
    exact = float(torch.linalg.eigvalsh(H)[-1])
    res = hessian_sharpness(lambda: loss_of(w), [w], iters=16, tol=1e-12)
    assert res.value == pytest.approx(exact, rel=1e-8)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_gd_diverges_just_above_the_predicted_threshold(momentum):
    """Heavy-ball GD (torch SGD) on 0.5 x^T A x: converges at 0.98 lr_max, diverges at 1.02 lr_max."""
    A = _quadratic([5.0, 2.0, 0.5, 0.05])
    x0 = torch.ones(4, dtype=torch.float64)
    xv = x0.clone().requires_grad_(True)
    lam = hessian_sharpness(lambda: 0.5 * xv @ A @ xv, [xv], iters=4, tol=1e-12).value
    lr_max = predicted_max_lr(lam, "sgd", momentum=momentum)
    assert lr_max == pytest.approx((2 + 2 * momentum) / 5.0, rel=1e-9)

    def final_norm(lr, steps=600):
        x = x0.clone().requires_grad_(True)
        opt = torch.optim.SGD([x], lr=lr, momentum=momentum)
        for _ in range(steps):
            opt.zero_grad()
            (0.5 * x @ A @ x).backward()
            opt.step()
        return float(x.detach().norm())

    assert final_norm(0.98 * lr_max) < 1e-3
    assert final_norm(1.02 * lr_max) > 1e3


def test_preconditioned_sharpness_of_diagonal_quadratic():
    a = torch.tensor([4.0, 9.0, 1.0, 30.0], dtype=torch.float64)
    p = torch.tensor([1.0, 2.0, 0.01, 10.0], dtype=torch.float64)  # a / p = 4, 4.5, 100, 3
    x = torch.randn(4, dtype=torch.float64, requires_grad=True)
    res = hessian_sharpness(lambda: 0.5 * (a * x * x).sum(), [x], precond=[p], iters=4, tol=1e-12)
    assert res.value == pytest.approx(100.0, rel=1e-10)


def test_frozen_preconditioner_iteration_diverges_above_2_over_preconditioned_sharpness():
    """x <- x - lr P^{-1} A x (RMSprop with v frozen) is stable iff lr < 2 / lambda_1(P^{-1} A), A not diagonal."""
    A = _quadratic([3.0, 1.0, 0.3])
    p = torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64)
    x = torch.randn(3, dtype=torch.float64, requires_grad=True)
    lam = hessian_sharpness(lambda: 0.5 * x @ A @ x, [x], precond=[p], iters=3, tol=1e-12).value
    exact = float(np.max(np.linalg.eigvals((A / p[:, None]).numpy()).real))
    assert lam == pytest.approx(exact, rel=1e-10)
    lr_max = predicted_max_lr(lam, "rmsprop")

    def final_norm(lr):
        z = torch.ones(3, dtype=torch.float64)
        for _ in range(3000):
            z = z - lr * (A @ z) / p
        return float(z.norm())

    assert final_norm(0.98 * lr_max) < 1e-3
    assert final_norm(1.02 * lr_max) > 1e3


def test_rmsprop_preconditioner_matches_torch_rmsprop_state():
    torch.manual_seed(0)
    w = torch.randn(5, requires_grad=True)
    opt = torch.optim.RMSprop([w], lr=1e-9, alpha=0.9, eps=1e-7)
    grads = []
    for k in range(4):
        opt.zero_grad()
        loss = ((w - k) ** 4).sum()
        loss.backward()
        grads.append([w.grad.clone()])
        opt.step()
    P = rmsprop_preconditioner(grads, rho=0.9, eps=1e-7)
    torch.testing.assert_close(P[0], opt.state[w]["square_avg"].sqrt() + 1e-7)
    # constant gradient g: v_K = (1 - rho^K) g^2
    g = torch.tensor([2.0, -3.0])
    P2 = rmsprop_preconditioner([[g]] * 10, rho=0.9, eps=0.0)
    torch.testing.assert_close(P2[0], g.abs() * math.sqrt(1 - 0.9**10))
    # Adam's bias correction removes the (1 - beta2^t) factor
    P3 = adam_preconditioner([[g]] * 10, eps=0.0)
    torch.testing.assert_close(P3[0], g.abs())


def test_stability_constants():
    assert stability_constant("sgd") == 2.0
    assert stability_constant("sgd", momentum=0.9) == pytest.approx(3.8)
    assert stability_constant("rmsprop") == 2.0
    assert stability_constant("adam") == pytest.approx(38.0)  # Cohen et al. 2022: 38/eta at beta1 = 0.9
    assert predicted_max_lr(0.0) == math.inf
    assert predicted_max_lr(-1.0) == math.inf


def test_top_eigenvalue_stops_on_invariant_subspace():
    # rank-one operator: one Lanczos step finds it exactly
    u = torch.tensor([1.0, 2.0, 2.0], dtype=torch.float64) / 3
    res = top_eigenvalue(lambda v: 6.0 * u * (u @ v), 3, iters=20, tol=1e-14, dtype=torch.float64)
    assert res.value == pytest.approx(6.0, rel=1e-12)
    assert res.iterations <= 2


def test_network_sharpness_is_finite_and_positive():
    from propagate.data import load_dataset
    from propagate.sharpness import network_sharpness
    from propagate.spec import NetworkSpec
    from propagate.train import TrainOptions

    ds = load_dataset("mnist-5k")
    spec = NetworkSpec.stack(3, 16, input_dim=784, first_width=16, activation="selu", init="lecun_normal",
                             out_features=10)
    r = network_sharpness(spec, ds, TrainOptions(threads=1), batch=64, warmup_steps=3, iters=10)
    assert r["sharpness"] > 0 and math.isfinite(r["sharpness"])
    assert r["precond_sharpness"] > 0
    assert r["max_lr_predicted"] == pytest.approx(2.0 / r["precond_sharpness"])
    r_sgd = network_sharpness(spec, ds, TrainOptions(optimizer="sgd", threads=1), batch=64, iters=10)
    assert r_sgd["sharpness"] == pytest.approx(r["sharpness"], rel=1e-6)  # same weights, same batch
    assert r_sgd["max_lr_predicted"] == pytest.approx(2.0 / r_sgd["sharpness"])


@pytest.mark.parametrize("activation, batchnorm", [("selu", False), ("selu", True), ("tanh", False)])
def test_hessian_vector_products_of_the_training_model_match_finite_differences(activation, batchnorm):
    """Double backward through the training model (its activations and BN) is exact: Hv = (g(w+ev) - g(w-ev)) / 2e."""
    import torch.nn.functional as F

    from propagate.spec import NetworkSpec, build_model

    spec = NetworkSpec.stack(3, 6, input_dim=5, first_width=6, activation=activation, init="lecun_normal",
                             out_features=3, batchnorm=batchnorm)
    m = build_model(spec, seed=0, dtype=torch.float64)
    m.train()
    x = torch.randn(16, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = torch.arange(16) % 3
    ps = list(m.parameters())

    def loss():
        out = m(x)
        return F.cross_entropy(out[0] if out.dim() == 3 else out, y)

    g = torch.autograd.grad(loss(), ps, create_graph=True)
    v = [torch.randn(p.shape, dtype=p.dtype, generator=torch.Generator().manual_seed(2)) for p in ps]
    hv = torch.cat([h.flatten() for h in torch.autograd.grad(g, ps, grad_outputs=v)])
    eps = 1e-5

    def grad_at(sign):
        with torch.no_grad():
            for p, d in zip(ps, v):
                p.add_(sign * eps * d)
        out = torch.autograd.grad(loss(), ps)
        with torch.no_grad():
            for p, d in zip(ps, v):
                p.sub_(sign * eps * d)
        return torch.cat([o.flatten() for o in out])

    fd = (grad_at(1) - grad_at(-1)) / (2 * eps)
    assert float((fd - hv).norm() / fd.norm()) < 1e-6  # central differences: error O(eps^2) ~ 1e-10, round-off ~ 1e-9
