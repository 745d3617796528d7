"""Fused training kernels: values and gradients equal torch autograd of the plain expressions (float64); the one
activation-to-torch table they and the simulator use."""

from __future__ import annotations

import contextlib

import numpy as np
import pandas as pd
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


# ---------------------------------------------------------------------------- the training chain

from propagate.layers import dropout_seed  # noqa: E402
from propagate.optim import make_optimizer  # noqa: E402
from propagate.spec import NetworkSpec, build_model  # noqa: E402
from propagate.train import TrainOptions  # noqa: E402

#: Networks whose every op has a chain piece: each built-in piece (Dense, BatchNorm, the output-based activations,
#: an input-based one, dropout and alpha dropout masks, linear).
CHAIN_SPECS = {
    "relu": dict(activation="relu", init="he_normal"),
    "selu-bn": dict(activation="selu", init="lecun_uniform", batchnorm=True),
    "tanh-dropout": dict(activation="tanh", init="glorot_uniform", dropout=0.2),
    "sigmoid-bn": dict(activation="sigmoid", init="glorot_uniform", batchnorm=True, bias_var=0.1),
    "gelu-alpha": dict(activation="gelu", init="he_normal", alpha_dropout=0.1),
    "selu-alpha-bn": dict(activation="selu", init="lecun_normal", alpha_dropout=0.1, batchnorm=True),
    "elu-linear": dict(activation="elu:alpha=0.5", init="he_normal"),
}


def _chain_spec(kw):
    return NetworkSpec.stack(3, 12, input_dim=9, first_width=16, out_features=5, **kw)


def _batches(S, steps, B=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(S, B, 9, generator=g), torch.randint(0, 5, (S, B), generator=g)) for _ in range(steps)]


def _loss(out, y):
    S = out.shape[0]
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1), reduction="none").view(S, -1).mean(1).sum()


def _train(spec, seeds, batches, mode, dtype=torch.float32):
    """A few optimizer steps as train's _step takes them: ``chain`` (training_forward, the update inside the
    backward pass) or ``per-op`` (the modules, then opt.step())."""
    model = build_model(spec, seeds=seeds)
    if dtype != torch.float32:
        model = model.to(dtype)
    opt = make_optimizer(model.parameters(), TrainOptions(lr=1e-2))
    context = {"chain": contextlib.nullcontext, "per-op": lambda: kernels.disabled("chain")}[mode]
    model.train()
    for x, y in batches:
        with context():
            out = kernels.training_forward(model, x.to(dtype), opt)
            opt.zero_grad(set_to_none=True)
            _loss(out, y).backward()
            opt.step()
    return model, opt


def _state(model, opt):
    tensors = [p.detach() for p in model.parameters()] + list(model.buffers())
    for p in model.parameters():
        tensors += [opt.state[p]["square_avg"], opt.state[p]["step"]]
    return tensors


@pytest.mark.parametrize("name", list(CHAIN_SPECS))
@pytest.mark.parametrize("S", [1, 3])
def test_chain_step_equals_the_per_op_step_bit_for_bit(name, S):
    """The fused chain (one autograd node, the optimizer applied inside its backward pass) calls the aten ops the
    per-op modules' autograd calls: after three steps the weights, BN running statistics, optimizer state and step
    counts are identical, for one network and for an ensemble. (Against the plain expressions, which round the
    Dense weight gradient and SELU's derivative differently, the gradients are compared in float64 below: RMSprop
    divides by sqrt(v), so a round-off difference of a near-zero gradient is not small in the weights.)"""
    spec, batches = _chain_spec(CHAIN_SPECS[name]), _batches(S, 3)
    chain, per_op = (_state(*_train(spec, list(range(S)), batches, m)) for m in ("chain", "per-op"))
    for a, b in zip(chain, per_op):
        assert torch.equal(a, b)
    model, opt = _train(spec, list(range(S)), batches[:1], "chain")
    assert all(p.grad is None for p in model.parameters())  # the backward pass consumed the gradients
    assert {float(opt.state[p]["step"]) for p in model.parameters()} == {1.0}


@pytest.mark.parametrize("name", ["relu", "selu-bn", "gelu-alpha", "sigmoid-bn", "elu-linear"])
def test_chain_gradients_equal_torch_autograd_in_float64(name):
    """Without an optimizer the chain returns every parameter's gradient: equal to torch autograd of the plain
    expressions (kernels.disabled()) in float64, the input-based activations' and dropout masks' included."""
    spec = _chain_spec(CHAIN_SPECS[name])
    (x, y), = _batches(2, 1)
    grads = []
    for context in (contextlib.nullcontext, kernels.disabled):
        model = build_model(spec, seeds=[0, 1], dtype=torch.float64)
        model.train()
        with context():
            out = kernels.training_forward(model, x.double())
            assert ("Chain" in out.grad_fn.name()) == (context is contextlib.nullcontext)
            _loss(out, y).backward()
        grads.append([p.grad for p in model.parameters()] + list(model.buffers()))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_chain_applies_only_where_every_op_has_a_piece_and_the_model_trains():
    """LayerNorm, residual blocks, eval mode, no gradients, kernels disabled: the modules run (same numbers)."""
    (x, y), = _batches(2, 1)
    for kw in (dict(activation="relu", init="he_normal", layernorm=True),
               dict(activation="tanh", init="he_normal", residual=0.5)):
        model = build_model(NetworkSpec.stack(3, 9, input_dim=9, first_width=None, out_features=5, **kw), seeds=[0, 1])
        out = kernels.training_forward(model, x)
        assert "Chain" not in out.grad_fn.name()
        assert torch.equal(out, model(x))
    model = build_model(_chain_spec(CHAIN_SPECS["selu-bn"]), seeds=[0, 1])
    assert "Chain" in kernels.training_forward(model, x).grad_fn.name()
    model.eval()
    assert "Chain" not in kernels.training_forward(model, x).grad_fn.name()
    model.train()
    with torch.no_grad():
        assert kernels.training_forward(model, x).grad_fn is None
    with kernels.disabled("chain"):
        assert "Chain" not in kernels.training_forward(model, x).grad_fn.name()
    out = kernels.training_forward(model, x)
    w = list(model.parameters())[0]
    (g,) = torch.autograd.grad(_loss(out, y), w, create_graph=True)
    with pytest.raises(RuntimeError):  # the training step is differentiable once; Hessians use the modules
        torch.autograd.grad(g.sum(), w)


def test_a_trained_model_is_freed_with_its_chain():
    """The chain's cached plan does not keep its model alive: a model trained through the chain and then dropped
    is collected, parameters and all (before, every network a worker trained stayed in memory: a trainability
    grid's workers grew by one model per point until Dask paused them)."""
    import gc
    import weakref

    model, opt = _train(_chain_spec(CHAIN_SPECS["selu-bn"]), [0, 1], _batches(2, 2), "chain")
    assert kernels._plan(model) is not None
    refs = [weakref.ref(model)] + [weakref.ref(p) for p in model.parameters()]
    del model, opt
    gc.collect()
    assert [r() is None for r in refs] == [True] * len(refs)


def test_chain_dropout_masks_are_the_modules_masks():
    """The chain draws each seed's masks from the same per-seed generators in the same order as the modules."""
    spec = _chain_spec(CHAIN_SPECS["tanh-dropout"])
    (x, y), = _batches(2, 1)
    outs = []
    for context in (contextlib.nullcontext, lambda: kernels.disabled("chain")):
        model = build_model(spec, seeds=[3, 4])
        model.train()
        with context():
            outs.append(kernels.training_forward(model, x).detach())
        assert [g.initial_seed() for g in model.dropout_generators] == [dropout_seed(3, 0), dropout_seed(4, 0)]
    assert torch.equal(*outs)


def test_fused_rmsprop_counts_steps_in_one_tensor_and_continues_a_loaded_state():
    """state["step"] is torch's count (one per step with a gradient); a state put in from outside (a checkpoint)
    counts on from its own step; torch's RMSprop takes over with the same counts when the kernels are off."""
    w = [torch.zeros(4, 3, requires_grad=True), torch.zeros(5, requires_grad=True)]
    opt = kernels.rmsprop(w, lr=0.1, rho=0.9, eps=1e-7)
    for step in range(3):
        for p in w:
            p.grad = torch.ones_like(p) if (step < 2 or p is w[0]) else None
        opt.step()
    assert [float(opt.state[p]["step"]) for p in w] == [3.0, 2.0]
    opt.state[w[1]] = {"step": torch.tensor(7.0), "square_avg": opt.state[w[1]]["square_avg"].clone()}
    for p in w:
        p.grad = torch.ones_like(p)
    opt.step()
    assert [float(opt.state[p]["step"]) for p in w] == [4.0, 8.0]
    with kernels.disabled():
        for p in w:
            p.grad = torch.ones_like(p)
        opt.step()
    assert [float(opt.state[p]["step"]) for p in w] == [5.0, 9.0]
    sd = opt.state_dict()
    assert [float(s["step"]) for s in sd["state"].values()] == [5.0, 9.0]


def test_train_with_the_chain_equals_train_with_the_modules():
    """propagate.train's step through the chain: the same history, layer statistics and final weights, bit for bit,
    as through the per-op modules (a BN ensemble whose seed 1 is made infinite after its second step: a stopped
    seed's state is put back after the in-backward updates as after opt.step())."""
    from propagate.data import Dataset, load_dataset
    from propagate.train import train

    ds = load_dataset("mnist-5k")
    ds = Dataset("mnist-5k[:300]", ds.x_train[:300], ds.y_train[:300], ds.x_test[:60], ds.y_test[:60], ds.source)
    spec = NetworkSpec.stack(3, 16, first_width=24, activation="selu", init="lecun_uniform", batchnorm=True,
                             out_features=10)
    def poison(info):
        if info["epoch"] == 1 and info["batch"] == 1:
            with torch.no_grad():
                next(info["model"].parameters())[1].fill_(float("inf"))

    runs = []
    for context in (contextlib.nullcontext, lambda: kernels.disabled("chain")):
        with context():
            runs.append(train(spec, TrainOptions(epochs=2, batch_size=50, probe_size=16, threads=1), ds, seeds=3,
                              on_step=poison))
    (a, b) = runs
    assert a.seed_status == b.seed_status == {0: "finished", 1: "diverged", 2: "finished"}
    pd.testing.assert_frame_equal(a.history.drop(columns=["seconds"]), b.history.drop(columns=["seconds"]))
    pd.testing.assert_frame_equal(a.layers, b.layers)
    for p, q in zip(a.model.state_dict().values(), b.model.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, equal_nan=True)  # the stopped seed's BN statistics: NaN
