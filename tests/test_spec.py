"""NetworkSpec construction, derived per-layer variances, validation, and the model built from it."""

import pytest

from propagate.errors import UserError
from propagate.spec import NetworkSpec, build_model


def test_seed_shape():
    s = NetworkSpec.seed("relu", "glorot_uniform")
    assert s.widths[:3] == (784, 512, 256)
    assert s.depth == 51 and s.out_features == 10
    assert s.label() == "relu/glorot_uniform"


def test_per_layer_sigma_w2_follow_fans():
    s = NetworkSpec.stack(3, 256, activation="tanh", init="glorot_uniform")
    assert s.fans() == [(784, 512), (512, 256), (256, 256)]
    assert s.sigma_w2() == pytest.approx([2 * 784 / 1296, 2 * 512 / 768, 1.0])
    assert s.sigma_b2() == [0.0, 0.0, 0.0]
    assert NetworkSpec.stack(2, init="torch_default").sigma_b2() == pytest.approx([1 / (3 * 784), 1 / (3 * 512)])
    assert NetworkSpec.stack(2, bias_var=0.1).sigma_b2() == [0.1, 0.1]


@pytest.mark.parametrize("kw", [dict(bias_var=-1), dict(dropout=1.0), dict(dropout=0.1, alpha_dropout=0.1),
                                dict(input_var=-1), dict(activation="nope"), dict(init="normal:x")])
def test_invalid_specs(kw):
    with pytest.raises(UserError):
        NetworkSpec.stack(3, **kw)


def test_depth_below_one():
    with pytest.raises(UserError):
        NetworkSpec.stack(0)
    with pytest.raises(UserError):
        NetworkSpec(widths=(10,))


def test_roundtrip_dict():
    s = NetworkSpec.seed("selu", "lecun_uniform", batchnorm=True)
    assert NetworkSpec.from_dict(s.to_dict()) == s


def test_model_records_pre_and_post_activations_per_seed():
    torch = pytest.importorskip("torch")
    s = NetworkSpec.stack(3, 16, input_dim=8, first_width=12, batchnorm=True, out_features=4)
    m = build_model(s, seeds=[3, 5])
    x = torch.randn(5, 8)
    out, rec = m(x, record=True)
    assert out.shape == (2, 5, 4) and [p.shape for p in rec["pre"]] == [(2, 5, 12), (2, 5, 16), (2, 5, 16)]
    assert all(torch.equal(post, torch.selu(pre)) for pre, post in zip(rec["pre"], rec["post"]))
    # member k of an ensemble is the single run of seed k; [S, B, in] inputs give the same as [B, in]
    single = build_model(s, seed=5)
    assert all(torch.equal(a[1], b[0]) for a, b in zip(m.parameters(), single.parameters()))
    torch.testing.assert_close(single(x)[0], out[1], rtol=1e-5, atol=1e-6)  # batched kernels round differently
    assert torch.equal(m(x.expand(2, 5, 8)), out)


def test_compile_places_ops_like_the_seed():
    kinds = lambda ops: [type(op).__name__ for op in ops]  # noqa: E731
    s = NetworkSpec.stack(3, 16, input_dim=8, first_width=12, batchnorm=True, dropout=0.1, out_features=4)
    assert kinds(s.compile()) == ["Dense", "Activation", "Dropout"] + ["BatchNorm", "Dense", "Activation", "Dropout"] * 2
    assert kinds(s.compile(readout=True))[-2:] == ["BatchNorm", "Dense"]
    ln = s.with_(batchnorm=False, layernorm=True, dropout=0.0)
    assert kinds(ln.compile()) == ["Dense", "Activation"] + ["LayerNorm", "Dense", "Activation"] * 2
    # residual blocks only where input and output widths match: 8 -> 12 -> 16 -> 16
    res = s.with_(residual=0.5, dropout=0.0)
    ops = res.compile()
    assert kinds(ops) == ["Dense", "Activation", "BatchNorm", "Dense", "Activation", "Residual"]
    assert kinds(ops[-1].branch) == ["BatchNorm", "Dense", "Activation"] and ops[-1].skip == pytest.approx(0.75**0.5)
    assert res.label() == "selu/lecun_normal+BN+drop0.1+res0.5".replace("+drop0.1", "")


@pytest.mark.parametrize("kw", [dict(residual=-0.1), dict(residual=1.5), dict(batchnorm=True, layernorm=True)])
def test_invalid_residual_and_norm(kw):
    with pytest.raises(UserError):
        NetworkSpec.stack(3, **kw)
