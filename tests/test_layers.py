"""Layer operations: every backward pass and the batched Jacobians against torch autograd (float64), the torch
modules against the simulator's forward, the one alpha-dropout constant, the lens loops free of op-class tests, and
theory against simulation for residual and LayerNorm networks at depth 100."""

from __future__ import annotations

import ast
import inspect
import math
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import propagate.layers as layers  # noqa: E402
from propagate.batched import PerNetworkDraws, Run, jacobians  # noqa: E402
from propagate.layers import (  # noqa: E402
    Activation,
    AlphaDropout,
    BatchNorm,
    Dense,
    Dropout,
    LayerNorm,
    Op,
    Residual,
    Step,
    alpha_dropout_affine,
    build_network,
    forward_ops,
)
from propagate.simulate import simulate  # noqa: E402
from propagate.spec import NetworkSpec  # noqa: E402

F64 = torch.float64


def _Run(S=2, N=7, seed=0):
    """The simulator's run, float64, every sample with per-sample caches and BatchNorm's full backward kept."""
    run = Run(S, N, N, 64, F64, "cpu", PerNetworkDraws([torch.Generator().manual_seed(seed * 100 + s) for s in range(S)]))
    run.exact_bn = True
    return run


def _replay(op, cache, x, bn_fixed=False):
    """The op's forward written plainly in torch (autograd-able), from its cached parameters and masks.

    ``bn_fixed``: BatchNorm with its batch statistics held fixed (what the simulator backpropagates per sample).
    """
    if isinstance(op, Dense):
        return x @ cache["W"].transpose(1, 2) + cache["b"].unsqueeze(1)
    if isinstance(op, BatchNorm):  # train mode: statistics of this batch, differentiated through
        mu = x.mean(dim=1, keepdim=True)
        var = ((x - mu) ** 2).mean(dim=1, keepdim=True)
        if bn_fixed:
            mu, var = mu.detach(), var.detach()
        return (x - mu) / torch.sqrt(var + op.eps)
    if isinstance(op, LayerNorm):
        return torch.nn.functional.layer_norm(x, (op.n,), eps=op.eps)
    if isinstance(op, Activation):
        return op.act.torch(x)
    if isinstance(op, Dropout):
        return x * cache["s_mask"]
    if isinstance(op, AlphaDropout):
        a, b, ap = alpha_dropout_affine(op.p)
        m = cache["s_mask"] / a
        return a * (x * m + ap * (1 - m)) + b
    if isinstance(op, Residual):
        y = x
        for o, c in cache["tape"]:
            y = _replay(o, c, y, bn_fixed=True)
        return op.skip * x + op.R * y
    raise AssertionError(op)


def _check_vjp(op, n_in=6, vjp_kw=None):
    run = _Run()
    x = torch.randn(2, run.N, n_in, dtype=F64, generator=torch.Generator().manual_seed(7))
    y, cache = op.forward(x.clone(), run)
    g = torch.randn_like(y)
    gin = op.vjp(g, cache, **(vjp_kw or {}))
    xx = x.clone().requires_grad_(True)
    yy = _replay(op, cache, xx)
    torch.testing.assert_close(yy.detach(), y, rtol=1e-12, atol=1e-12)
    (ga,) = torch.autograd.grad((yy * g).sum(), xx)
    torch.testing.assert_close(gin, ga, rtol=1e-10, atol=1e-12)
    return cache


@pytest.mark.parametrize("op", [
    Dense(1, 6, 5, "glorot_uniform", None, 1.0, 0.0),
    BatchNorm(2, 6, 1e-3, 0.01),
    BatchNorm(2, 6, 1e-3, 0.01, inplace=False),
    LayerNorm(2, 6, 1e-3),
    Activation(1, "tanh"),
    Activation(1, "selu"),
    Activation(1, "gelu"),
    Dropout(1, 0.3),
    AlphaDropout(1, 0.2),
    Residual(2, 0.6, (LayerNorm(2, 6, 1e-3, inplace=False), Dense(2, 6, 6, "he_normal", None, 2.0, 0.0),
                      Activation(2, "relu"))),
    Residual(2, 0.5, (BatchNorm(2, 6, 1e-3, 0.01, inplace=False), Dense(2, 6, 6, "lecun_normal", None, 1.0, 0.0),
                      Activation(2, "selu"), AlphaDropout(2, 0.1))),
], ids=lambda op: type(op).__name__ + ("" if not hasattr(op, "name") else "-" + op.name))
def test_backward_equals_autograd(op):
    kw = {"per_sample": False} if isinstance(op, BatchNorm) else None
    _check_vjp(op, vjp_kw=kw)


def _replay_network(tape, x):
    """The whole tape replayed plainly (BatchNorm statistics of the batch held fixed)."""
    for op, cache in tape:
        x = _replay(op, cache, x, bn_fixed=True)
    return x


@pytest.mark.parametrize("kw", [dict(activation="tanh", init="he_normal", layernorm=True, residual=0.7, dropout=0.2),
                                dict(activation="selu", init="lecun_normal", batchnorm=True, alpha_dropout=0.1,
                                     bias_var=0.1)], ids=["ln-residual-dropout", "bn-alphadropout"])
def test_batched_jacobians_equal_autograd(kw):
    """``propagate.batched.jacobians`` (one vjp per output unit through every op kind) against autograd."""
    spec = NetworkSpec.stack(3, 6, input_dim=6, first_width=None, **kw)
    run = _Run(S=2, N=7)
    x = torch.randn(2, 7, 6, dtype=F64, generator=torch.Generator().manual_seed(5))
    y, tape = forward_ops(spec.compile(), x.clone(), run)
    torch.testing.assert_close(_replay_network(tape, x), y, rtol=1e-12, atol=1e-12)
    J = jacobians(tape, run, 3, 6, networks=[0, 1])  # [networks, k, n_out, n_in]
    Ja = torch.autograd.functional.jacobian(lambda v: _replay_network(tape, v), x)  # [S, N, out, S, N, in]
    for s in range(2):
        for k in range(3):
            torch.testing.assert_close(J[s, k], Ja[s, k, :, s, k, :], rtol=1e-10, atol=1e-12)


def test_batchnorm_per_sample_backward_holds_statistics_fixed():
    op = BatchNorm(2, 6, 1e-3, 0.01)
    run = _Run()
    x = torch.randn(2, run.N, 6, dtype=F64)
    y, cache = op.forward(x.clone(), run)
    g = torch.randn_like(y)
    xx = x.clone().requires_grad_(True)
    mu, var = x.mean(dim=1, keepdim=True), x.var(dim=1, unbiased=False, keepdim=True)
    (ga,) = torch.autograd.grad((((xx - mu) / torch.sqrt(var + 1e-3)) * g).sum(), xx)
    torch.testing.assert_close(op.vjp(g, cache), ga, rtol=1e-12, atol=1e-12)


def test_torch_modules_compute_the_simulator_forward():
    spec = NetworkSpec.stack(3, 6, input_dim=6, first_width=None, activation="tanh", init="he_normal",
                             layernorm=True, residual=0.7)
    ops = spec.compile()
    run = _Run(S=2)
    x = torch.randn(2, run.N, 6, dtype=F64)
    y, tape = forward_ops(ops, x.clone(), run)
    net = build_network(spec, seeds=[0, 1], dtype=F64)
    with torch.no_grad():  # the simulator's weights into the module (Dense ops in tape order)
        dense = [c["W"] for op, c in _flat(tape) if op.has_weights]
        mods = [m for m in net.modules() if getattr(m, "op", None) is not None and m.op.has_weights]
        for m, W in zip(mods, dense):
            m.weight.copy_(W)
        net.train()
        torch.testing.assert_close(net(x), y, rtol=1e-12, atol=1e-12)


def _flat(tape):
    for op, c in tape:
        yield op, c
        if "tape" in c:
            yield from _flat(c["tape"])


def test_alpha_dropout_constants_come_from_one_place():
    from propagate.selu import PUBLISHED_ALPHA, PUBLISHED_LAMBDA, alpha_dropout_params

    a, b, ap = alpha_dropout_affine(0.05)
    assert ap == -1.7580993408473766  # torch's constant, lambda * alpha of the solved SELU
    ref = alpha_dropout_params(0.05, PUBLISHED_LAMBDA, PUBLISHED_ALPHA, digits=20)
    assert a == pytest.approx(float(ref["a"]), rel=1e-14) and b == pytest.approx(float(ref["b"]), rel=1e-13)
    # and torch's alpha dropout is the same map: mean 0 and variance 1 kept for N(0,1) selu outputs
    x = torch.selu(torch.randn(400_000, dtype=F64, generator=torch.Generator().manual_seed(0)))
    y = torch.nn.functional.alpha_dropout(x, 0.05, True)
    m = y != a * ap + b
    torch.testing.assert_close(y[m], a * x[m] + b)


# ---------------------------------------------------------------------------- theory vs simulation


def _sim(spec, seeds=8, samples=256):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return simulate(spec, samples=samples, seeds=seeds, grad_samples=64, threads=1)


_FORWARD = ["pre_mean", "pre_var", "pre_q", "post_mean", "post_var", "post_q", "corr"]


def _forward_flags(table):
    return sorted({s for f in table["disagree_in"] for s in f.split(",") if s and s in _FORWARD})


@pytest.mark.parametrize("kw, gradient", [
    (dict(activation="relu", init="glorot_uniform", residual=0.5), True),
    (dict(activation="relu", init="he_normal", residual=0.5), True),
    (dict(activation="tanh", init="glorot_uniform", residual=0.5), True),
    (dict(activation="relu", init="glorot_uniform", layernorm=True), True),
    (dict(activation="relu", init="he_normal", layernorm=True), True),
    (dict(activation="tanh", init="glorot_normal", layernorm=True, bias_var=0.05), True),
], ids=lambda v: "-".join(str(x) for x in v.values()) if isinstance(v, dict) else ("grad" if v else "fwd"))
def test_theory_matches_simulation_depth_100(kw, gradient):
    """Every statistic at every layer within 4 SE across 8 networks + the finite-width allowance.

    For residual ReLU networks the gradient norm agrees only with the signal-direction term
    (``grad_norm_signal``): the stream's mean grows, and a per-sample gradient's component along ``h^l``
    (``1/sqrt(n)`` of it at the readout) grows like ``sqrt(q^depth / q^l)``; at width 128 and depth 100 it
    outweighs the mean-field gradient by up to six orders of magnitude at the first layers.
    """
    spec = NetworkSpec.stack(100, 128, input_dim=128, first_width=None, **kw)
    t = _sim(spec).table
    assert bool(t["judged"].all()) and _forward_flags(t) == []
    if gradient:
        assert not t["disagree"].any(), t.loc[t["disagree"], ["layer", "disagree_in"]]


def test_residual_relu_glorot_variance_no_longer_halves():
    """The issue's case: relu/glorot_uniform, depth 100, residual 0.5, 8 networks."""
    plain = NetworkSpec.stack(100, 128, input_dim=128, first_width=None, activation="relu", init="glorot_uniform")
    res = plain.with_(residual=0.5)
    tp, tr = _sim(plain).table, _sim(res).table
    assert _forward_flags(tr) == []
    # plain: q_{l+1} = q_l / 2 exactly in theory, and the simulation follows
    assert tp["theory_pre_var"].iloc[11] / tp["theory_pre_var"].iloc[10] == pytest.approx(0.5, rel=1e-12)
    assert tp["pre_var"].iloc[20] / tp["pre_var"].iloc[10] == pytest.approx(0.5**10, rel=0.5)
    # residual: q' = (1 - R^2 + R^2/2) q + 2 sqrt(1-R^2) R m m_phi grows; simulation and theory agree
    ratio_th = tr["theory_pre_var"].iloc[51] / tr["theory_pre_var"].iloc[50]
    assert ratio_th > 1.0
    assert tr["pre_var"].iloc[60] / tr["pre_var"].iloc[50] == pytest.approx(
        tr["theory_pre_var"].iloc[60] / tr["theory_pre_var"].iloc[50], rel=0.2)


def test_theory_residual_moment_map_by_hand():
    """One residual relu layer, computed from the closed forms of E[relu] and E[relu^2]."""
    from propagate.theory import predict_layers

    R, m0 = 0.6, 0.5
    spec = NetworkSpec(widths=(64, 64), activation="relu", init="normal:2", residual=R, input_mean=m0, input_var=1.0)
    t = predict_layers(spec).set_index("layer")
    q0 = m0**2 + 1.0
    q = 2 * q0  # sigma_w^2 E[x^2]
    m_phi, q_phi = math.sqrt(q / (2 * math.pi)), q / 2
    s = math.sqrt(1 - R * R)
    assert t.loc[1, "pre_q"] == pytest.approx(q, rel=1e-14)
    assert t.loc[1, "post_mean"] == pytest.approx(m_phi, rel=1e-12)
    # the next layer would see s^2 q0 + R^2 q_phi + 2 s R m0 m_phi; with depth 1 the gradient is R^2 E[phi'^2]
    assert t.loc[1, "grad_norm"] ** 2 == pytest.approx(R * R * 0.5, rel=1e-12)
    spec2 = NetworkSpec(widths=(64, 64, 64), activation="relu", init="normal:2", residual=R, input_mean=m0)
    t2 = predict_layers(spec2).set_index("layer")
    stream_q = s * s * q0 + R * R * q_phi + 2 * s * R * m0 * m_phi
    assert t2.loc[2, "pre_q"] == pytest.approx(2 * stream_q, rel=1e-12)
    # gradient at h^1: R^2 E[phi'^2] times the second block's factor s^2 + R^2 sigma_w^2 E[phi'^2]
    assert t2.loc[1, "grad_norm"] ** 2 == pytest.approx(R * R * 0.5 * (s * s + R * R * 2 * 0.5), rel=1e-12)


def test_theory_layernorm_moment_map_by_hand():
    from propagate.theory import predict_layers

    spec = NetworkSpec(widths=(64, 64, 64), activation="relu", init="normal:2", layernorm=True, bn_eps=1e-3)
    t = predict_layers(spec).set_index("layer")
    q1 = 2.0
    m, q = math.sqrt(q1 / (2 * math.pi)), q1 / 2
    v = q - m * m
    assert t.loc[2, "pre_q"] == pytest.approx(2 * v / (v + 1e-3), rel=1e-12)
    assert t.loc[1, "grad_norm"] ** 2 == pytest.approx(0.5 * 2 * 0.5 / (v + 1e-3), rel=1e-12)


def test_signal_direction_gradient_of_a_homogeneous_network_is_eulers():
    """Bias-free ReLU: scaling h^l scales every later layer, so E[(dy/dh^l . h^l)^2] = E[y^2] = post_q at the top."""
    from propagate.theory import predict_layers

    spec = NetworkSpec.stack(6, 32, input_dim=16, first_width=24, activation="relu", init="he_normal")
    t = predict_layers(spec).set_index("layer")
    top = t.loc[6, "post_q"]
    for l in range(1, 7):
        assert t.loc[l, "grad_norm_signal"] ** 2 == pytest.approx(top / (t.loc[l, "width"] * t.loc[l, "pre_q"]), rel=1e-10)
    # the residual case, R = 1 (no skip): the same network, the same answer
    res = predict_layers(NetworkSpec.stack(6, 32, input_dim=32, first_width=None, activation="relu",
                                           init="he_normal", residual=1.0)).set_index("layer")
    plain = predict_layers(NetworkSpec.stack(6, 32, input_dim=32, first_width=None, activation="relu",
                                             init="he_normal")).set_index("layer")
    np.testing.assert_allclose(res["grad_norm_signal"], plain["grad_norm_signal"], rtol=1e-12)
    np.testing.assert_allclose(res["grad_norm"], plain["grad_norm"], rtol=1e-12)


@pytest.mark.parametrize("op", [Dense(1, 6, 6, "he_normal", None, 1.7, 0.1), Activation(1, "tanh"), Activation(1, "relu")])
def test_written_out_pull_backs_equal_the_generic_one(op):
    from propagate.layers import Moments
    from propagate.theory import _tangent_expectations

    step, v = Step(op, Moments(0.3, 1.4, 0.5), 0.0), (0.7, -0.2, 1.3, 0.9)
    generic = Op.pull_back(op, v, step, _tangent_expectations)  # the base class's: four evaluations of the map
    np.testing.assert_allclose(op.pull_back(v, step, _tangent_expectations), generic, rtol=1e-13, atol=1e-15)


# ---------------------------------------------------------------------------- the op interface

_LENS_LOOPS = ("fold_moments", "moment_gradients", "fold_tangent", "signal_gradients", "forward_ops", "vjp_ops",
               "build_network", "theory_gap", "batch_coupled", "walk")


def _op_classes():
    return {name for name, obj in vars(layers).items()
            if isinstance(obj, type) and issubclass(obj, Op) and not name.startswith("_")}


def test_lens_loops_never_test_an_ops_class():
    """No isinstance/type test naming an op class in the loops every lens runs: the ops' own methods dispatch."""
    ops = _op_classes()
    assert {"Dense", "BatchNorm", "LayerNorm", "Activation", "Dropout", "AlphaDropout", "Residual", "Op"} <= ops
    for name in _LENS_LOOPS:
        tree = ast.parse(inspect.getsource(getattr(layers, name)))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("isinstance", "type"):
                named = {n.id for arg in node.args[1:] for n in ast.walk(arg) if isinstance(n, ast.Name)}
                named |= {n.attr for arg in node.args[1:] for n in ast.walk(arg) if isinstance(n, ast.Attribute)}
                assert not named & ops, f"{name} tests an op's class: {ast.unparse(node)}"
            if isinstance(node, ast.Compare):  # type(op) is Dense, type(op).__name__ == "Dense"
                text = ast.unparse(node)
                assert "type(" not in text and "__name__" not in text, f"{name}: {text}"


def test_every_op_declares_each_lens():
    """Each concrete op class implements the theory, simulation and training faces itself (none left abstract),
    and what it supports is an attribute of the op, not of the loops."""
    faces = ("moments", "tangent", "forward", "vjp", "torch_forward")
    for name in _op_classes() - {"Op"}:
        cls = getattr(layers, name)
        for face in faces:
            assert getattr(cls, face) is not getattr(Op, face), f"{name}.{face} is not implemented"
    assert [c.has_weights for c in (Dense, BatchNorm, Activation)] == [True, False, False]
    assert BatchNorm.batch_coupled and not LayerNorm.batch_coupled
    assert Dropout.stochastic and AlphaDropout.stochastic and not Dense.stochastic
    for cls in (BatchNorm, LayerNorm, Dropout, AlphaDropout, Residual):
        assert cls.theories == {layers.MEAN_FIELD}
    sq = Dense(1, 6, 6, "orthogonal", None, 1.0, 0.0)
    assert sq.theory_gap(layers.FINITE_WIDTH) is None and sq.theory_gap(layers.FREE_PROBABILITY) is None
    wide = Dense(1, 6, 8, "orthogonal", None, 1.0, 0.0)
    assert "non-square" in wide.theory_gap(layers.FINITE_WIDTH) and "non-square" in wide.theory_gap(layers.FREE_PROBABILITY)
    assert Dense(1, 6, 8, "he_normal", None, 2.0, 0.0).theory_gap(layers.FINITE_WIDTH) is None


def test_moments_answer_in_one_type_for_every_op():
    """``moments()`` returns (Moments, float) for leaf and composite ops alike; the residual's factor is
    s^2 + R^2 prod(branch factors), the one moment_gradients walks."""
    from propagate.layers import Moments
    from propagate.theory import _LayerExpectations

    branch = (Dense(2, 6, 6, "normal:2", None, 2.0, 0.0), Activation(2, "relu"), Dropout(2, 0.2))
    ops = [Dense(1, 6, 6, "normal:2", None, 2.0, 0.0), Activation(1, "relu"), BatchNorm(1, 6, 1e-3, 0.01),
           LayerNorm(1, 6, 1e-3), Dropout(1, 0.3), AlphaDropout(1, 0.1), Residual(2, 0.6, branch)]
    st = Moments(0.2, 1.3, 0.4)
    for op in ops:
        out, f = op.moments(st, _LayerExpectations(), {})
        assert type(out) is Moments and type(f) is float, type(op).__name__
    _, f = ops[-1].moments(st, _LayerExpectations(), {})
    # branch factors: sigma_w^2 = 2, E[relu'^2] = 1/2, 1 / keep = 1.25
    assert math.exp(f) == pytest.approx(1 - 0.36 + 0.36 * 2 * 0.5 * 1.25, rel=1e-12)
