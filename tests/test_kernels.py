"""Fused training kernels: values and gradients equal torch autograd of the plain expressions (float64); the one
activation-to-torch table they and the simulator use."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from propagate import kernels
from propagate.activations import get_activation, selu_constants, torch_forms
from propagate.errors import UserError


def _leaves(*shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g, dtype=torch.float64).requires_grad_() for s in shapes]


def _grads(f, leaves, g):
    for t in leaves:
        t.grad = None
    y = f(*leaves)
    y.backward(g)
    return y.detach(), [t.grad.clone() for t in leaves]


def test_dense_equals_autograd_and_weight_grad_is_contiguous():
    x, w, b = _leaves((3, 5, 4), (3, 6, 4), (3, 6))
    g = torch.randn(3, 5, 6, dtype=torch.float64)
    y1, g1 = _grads(kernels.dense, [x, w, b], g)
    y2, g2 = _grads(lambda x, w, b: x @ w.transpose(1, 2) + b.unsqueeze(1), [x, w, b], g)
    torch.testing.assert_close(y1, y2, rtol=1e-12, atol=1e-12)
    for a, c in zip(g1, g2):
        torch.testing.assert_close(a, c, rtol=1e-12, atol=1e-12)
    assert g1[1].is_contiguous()
    # without bias
    y3 = kernels.dense(x, w)
    torch.testing.assert_close(y3, x @ w.transpose(1, 2))


def test_selu_equals_the_closed_form_and_its_derivative():
    lam, alpha = selu_constants()
    (x,) = _leaves((2, 7, 9))
    g = torch.randn(2, 7, 9, dtype=torch.float64)
    y1, (g1,) = _grads(kernels.selu, [x], g)
    # lambda x for x > 0, lambda alpha (e^x - 1) otherwise; derivative lambda, lambda alpha e^x
    xd = x.detach()
    expect = lam * torch.where(xd > 0, xd, alpha * torch.expm1(xd))
    dexpect = lam * torch.where(xd > 0, torch.ones_like(xd), alpha * torch.exp(xd))
    torch.testing.assert_close(y1, expect, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g1, g * dexpect, rtol=1e-12, atol=1e-12)


def test_disabled_gives_the_plain_expressions():
    x, w, b = _leaves((2, 4, 3), (2, 5, 3), (2, 5))
    with kernels.disabled():
        assert not kernels.ENABLED
        y = kernels.dense(x, w, b)
        assert y.grad_fn.name().startswith("Baddbmm")
    assert kernels.ENABLED
    assert "Dense" in kernels.dense(x, w, b).grad_fn.name()


def test_activation_dispatch():
    assert kernels.activation("relu") is torch.relu
    assert kernels.activation(get_activation("selu")) is kernels.selu
    x = torch.linspace(-3, 3, 13, dtype=torch.float64)
    elu = get_activation("elu:alpha=0.5")
    torch.testing.assert_close(kernels.activation(elu)(x), elu.torch(x))


def test_fused_rmsprop_is_torch_rmsprop():
    """Three steps on stacked weights: the square average bit for bit, the weights within float32 rounding."""
    g = torch.Generator().manual_seed(3)
    w0 = [torch.randn(4, 30, 20, generator=g), torch.randn(4, 30, generator=g)]
    grads = [[torch.randn(w.shape, generator=g) for w in w0] for _ in range(3)]
    runs = []
    for fused in (True, False):
        ws = [w.clone().requires_grad_() for w in w0]
        opt = kernels.rmsprop(ws, lr=0.01, rho=0.9, eps=1e-7) if fused else \
            torch.optim.RMSprop(ws, lr=0.01, alpha=0.9, eps=1e-7)
        for step in grads:
            for w, gr in zip(ws, step):
                w.grad = gr.clone()
            opt.step()
        runs.append((ws, [opt.state[w]["square_avg"] for w in ws]))
    (wf, vf), (wt, vt) = runs
    for a, b in zip(vf, vt):
        assert torch.equal(a, b)
    for a, b in zip(wf, wt):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=2e-7, atol=2e-7)
    # the first step by hand: v = 0.1 g^2, w -= 0.01 g / (sqrt(v) + 1e-7)
    w = w0[0].clone().requires_grad_()
    opt = kernels.rmsprop([w], lr=0.01, rho=0.9, eps=1e-7)
    w.grad = grads[0][0].clone()
    opt.step()
    gd = grads[0][0].double()
    torch.testing.assert_close(w.detach().double(), w0[0].double() - 0.01 * gd / ((0.1 * gd**2).sqrt() + 1e-7),
                               rtol=1e-6, atol=1e-7)
    assert isinstance(opt, torch.optim.RMSprop)


@pytest.mark.parametrize("name", ["linear", "relu", "leaky_relu:0.2", "elu:alpha=0.5", "selu", "selu:lambda=1.05,alpha=1.6",
                                  "tanh", "sigmoid", "erf", "softplus", "gelu", "silu", "gelu@gamma=1.2,b=0.5,d=-0.3"])
def test_one_torch_table_gives_forward_in_place_and_derivative(name):
    """activations.torch_forms: the forward is the activation's numpy form, the in-place form writes the same
    numbers into its input, the derivative is its numpy derivative; Activation.torch and the training kernel are
    the same forward."""
    act = get_activation(name)
    forms = torch_forms(act)
    x = torch.linspace(-4, 4, 801, dtype=torch.float64)
    x = x[x.abs() > 1e-3]  # away from the kinks at 0, where the one-sided derivatives differ
    y = forms.forward(x)
    np.testing.assert_allclose(y.numpy(), act.numpy(x.numpy()), rtol=1e-12, atol=1e-14)
    z = x.clone()
    assert forms.inplace(z) is z and torch.equal(z, y)
    np.testing.assert_allclose(forms.derivative(x).numpy(), act.grad(x.numpy()), rtol=1e-9, atol=1e-12)
    assert torch.equal(act.torch(x), y)
    assert torch.equal(kernels.activation(name)(x), y)


def test_torch_forms_are_native_where_torch_has_them_and_a_user_form_otherwise():
    from propagate.activations import register_activation, unregister_activation

    assert torch_forms("relu").forward is torch.relu and torch_forms("relu").inplace is torch.relu_
    assert torch_forms("selu").forward is torch.selu and torch_forms("tanh").inplace is torch.tanh_
    act = register_activation("cube_test", lambda v: v**3, torch=lambda t: t**3, grad=lambda v: 3 * v**2)
    try:
        forms = torch_forms("cube_test")
        x = torch.linspace(-2, 2, 9, dtype=torch.float64)
        z = x.clone()
        forms.inplace(z)
        assert torch.equal(z, x**3)
        torch.testing.assert_close(forms.derivative(x), 3 * x**2)
        assert act.torch is forms.forward
    finally:
        unregister_activation("cube_test")
    no_torch = register_activation("numpy_only_test", lambda v: v)
    try:
        with pytest.raises(UserError, match="has no torch form"):
            torch_forms(no_torch)
    finally:
        unregister_activation("numpy_only_test")
