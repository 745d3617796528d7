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


def test_model_records_pre_activations():
    torch = pytest.importorskip("torch")
    s = NetworkSpec.stack(3, 16, input_dim=8, first_width=12, batchnorm=True, out_features=4)
    m = build_model(s, seed=3)
    out, pre = m(torch.randn(5, 8), record=True)
    assert out.shape == (5, 4) and [p.shape[1] for p in pre] == [12, 16, 16]
    # same seed, same weights
    assert torch.equal(build_model(s, seed=3).linears[0].weight, m.linears[0].weight)
