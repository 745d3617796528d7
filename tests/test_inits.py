"""The initializer registry: Keras semantics, reported sigma_w^2 vs sampled variance, errors."""

import math

import pytest

from propagate.errors import UserError
from propagate.inits import TRUNC_STD, get_init, list_inits

torch = pytest.importorskip("torch")

NAMED = ["glorot_uniform", "glorot_normal", "lecun_uniform", "lecun_normal", "he_uniform", "he_normal",
         "random_uniform", "random_normal", "orthogonal", "torch_default", "normal:1.7", "uniform:0.5"]


def test_reported_sigma_w2_values():
    assert get_init("lecun_normal").sigma_w2(256, 512) == pytest.approx(1.0)
    assert get_init("he_uniform").sigma_w2(256, 512) == pytest.approx(2.0)
    assert get_init("glorot_uniform").sigma_w2(784, 512) == pytest.approx(2 * 784 / (784 + 512))
    assert get_init("glorot_uniform").sigma_w2(256, 256) == pytest.approx(1.0)
    assert get_init("random_uniform").sigma_w2(256, 256) == pytest.approx(256 * 0.1**2 / 12)
    assert get_init("random_normal").sigma_w2(100, 10) == pytest.approx(100 * 0.05**2)
    assert get_init("torch_default").sigma_w2(300, 10) == pytest.approx(1 / 3)
    assert get_init("torch_default").bias_var(300) == pytest.approx(1 / 900)
    assert get_init("normal:1.7").sigma_w2(33, 7) == pytest.approx(1.7)
    assert get_init("orthogonal").sigma_w2(256, 256) == pytest.approx(1.0)


def test_keras_truncation_constant():
    # std of N(0,1) truncated to [-2, 2]: 1 - 4 phi(2) / (2 Phi(2) - 1)
    phi2 = math.exp(-2) / math.sqrt(2 * math.pi)
    mass = math.erf(2 / math.sqrt(2))
    assert TRUNC_STD == pytest.approx(math.sqrt(1 - 4 * phi2 / mass), rel=1e-14)


@pytest.mark.parametrize("name", NAMED)
@pytest.mark.parametrize("fan_in,fan_out", [(400, 300), (300, 400)])
def test_sampled_variance_matches_reported_sigma_w2(name, fan_in, fan_out):
    init = get_init(name)
    gen = torch.Generator().manual_seed(7)
    w = init.sample(fan_out, fan_in, generator=gen, dtype=torch.float64)
    assert w.shape == (fan_out, fan_in)
    var = init.weight_var(fan_in, fan_out)
    n = w.numel()
    if init.distribution == "orthogonal":
        # deterministic norms: sum of squares equals min(fan_in, fan_out) exactly
        assert float((w * w).sum()) == pytest.approx(min(fan_in, fan_out), rel=1e-12)
    else:
        # SE of the sample variance: sqrt((m4 - var^2) / n), m4 from the sample
        x = w.flatten()
        m2 = float((x * x).mean())
        m4 = float((x**4).mean())
        se = math.sqrt((m4 - m2 * m2) / n)
        assert abs(m2 - var) < 4 * se, (name, m2, var, se)
        assert abs(float(x.mean())) < 4 * math.sqrt(var / n)
    assert init.sigma_w2(fan_in, fan_out) == pytest.approx(fan_in * var)


def test_truncated_normal_is_truncated_at_two_std():
    init = get_init("he_normal")
    w = init.sample(500, 200, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    std = math.sqrt(init.weight_var(200, 500)) / TRUNC_STD
    assert float(w.abs().max()) <= 2 * std + 1e-12
    assert float(w.abs().max()) > 1.9 * std


def test_batched_samples_are_independent_draws_of_the_keras_law():
    """Each of a batch of weight matrices is U(-l, l) with Keras' lecun variance 1/fan_in, and
    different members are uncorrelated (sample correlation within 4 standard errors, 1/sqrt(n))."""
    fan_in, fan_out = 256, 128
    init = get_init("lecun_uniform")
    w = init.sample(fan_out, fan_in, batch=(3,), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert w.shape == (3, fan_out, fan_in)
    var, n = 1.0 / fan_in, fan_out * fan_in
    limit = math.sqrt(3 * var)  # U(-l, l) has variance l^2 / 3
    assert float(w.abs().max()) <= limit and float(w.abs().max()) > 0.99 * limit
    flat = w.reshape(3, -1)
    for k in range(3):
        # Var(w^2) = l^4/5 - l^4/9 = 0.8 var^2 for a uniform law, so the SE of the sample variance is sqrt(0.8/n) var
        assert abs(float(flat[k].pow(2).mean()) - var) < 4 * math.sqrt(0.8 / n) * var
        assert abs(float(flat[k].mean())) < 4 * math.sqrt(var / n)
    corr = torch.corrcoef(flat)
    off = corr[~torch.eye(3, dtype=torch.bool)]
    assert float(off.abs().max()) < 4 / math.sqrt(n)


def test_bias_defaults_and_settable():
    init = get_init("he_normal")
    b = init.sample_bias(10000, 100, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    assert torch.all(b == 0)
    b = init.sample_bias(100000, 100, generator=torch.Generator().manual_seed(2), dtype=torch.float64, bias_var=0.05)
    assert abs(float(b.var()) - 0.05) < 4 * 0.05 * math.sqrt(2 / 100000)


@pytest.mark.parametrize("bad", ["normal:", "normal:abc", "uniform:-1", "normal:nan", "glorot", "he"])
def test_bad_names_raise(bad):
    with pytest.raises(UserError):
        get_init(bad)


def test_unknown_init_lists_known():
    with pytest.raises(UserError) as e:
        get_init("kaiming_magic")
    for n in ["glorot_uniform", "lecun_normal", "torch_default", "normal:S"]:
        assert n in str(e.value)
    assert "orthogonal" in list_inits()


# ----------------------------------------------------------------------------- convolution kernels


@pytest.mark.parametrize("c_out,c_in,gain2", [(16, 16, 1.0), (8, 24, 2.0), (24, 8, 1.0)])
def test_delta_orthogonal_is_orthogonal_at_the_centre_and_zero_elsewhere(c_out, c_in, gain2):
    """Xiao et al. 2018, Algorithm 2: an orthogonal (c_out, c_in) matrix at the centre tap of the kernel."""
    init = get_init(f"delta_orthogonal:{gain2}" if gain2 != 1 else "delta_orthogonal")
    w = init.sample_kernel(c_out, c_in, (3, 5), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert w.shape == (c_out, c_in, 3, 5)
    centre = w[:, :, 1, 2]
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[1, 2] = False
    assert bool((w[:, :, mask] == 0).all())
    small = min(c_out, c_in)
    gram = centre @ centre.T if c_out <= c_in else centre.T @ centre  # orthonormal rows, or columns
    torch.testing.assert_close(gram, gain2 * torch.eye(small, dtype=torch.float64), atol=1e-12, rtol=0)
    # sigma_w^2 = fan_in Var(w), fan_in = c_in x 15: gain^2 min(c_in, c_out) / c_out, exactly as sampled
    fan_in = c_in * 15
    assert init.kernel_sigma_w2(c_out, c_in, (3, 5)) == pytest.approx(gain2 * small / c_out, rel=1e-14)
    assert fan_in * float((w * w).mean()) == pytest.approx(init.kernel_sigma_w2(c_out, c_in, (3, 5)), rel=1e-12)


def test_delta_orthogonal_needs_a_centre_and_is_orthogonal_on_dense_layers():
    with pytest.raises(UserError, match="odd kernel sizes"):
        get_init("delta_orthogonal").sample_kernel(4, 4, (2, 3))
    w = get_init("delta_orthogonal").sample(6, 10, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.testing.assert_close(w @ w.T, torch.eye(6, dtype=torch.float64), atol=1e-12, rtol=0)
    assert "delta_orthogonal:S" in list_inits()


@pytest.mark.parametrize("name", ["lecun_normal", "glorot_uniform", "he_uniform", "orthogonal"])
def test_kernel_variance_uses_the_convolution_fans(name):
    init = get_init(name)
    c_out, c_in, k = 48, 32, (3, 3)
    w = init.sample_kernel(c_out, c_in, k, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    var = init.kernel_weight_var(c_out, c_in, k)
    x = w.flatten()
    m2, m4 = float((x * x).mean()), float((x**4).mean())
    assert abs(m2 - var) < 4 * math.sqrt((m4 - m2 * m2) / x.numel()) + 1e-12 * var
    # Keras' conv fans: fan_in = c_in x 9, fan_out = c_out x 9 (glorot: Var = 2 / (fan_in + fan_out))
    if name == "glorot_uniform":
        assert var == pytest.approx(2 / (9 * (c_in + c_out)))
    assert init.kernel_sigma_w2(c_out, c_in, k) == pytest.approx(c_in * 9 * var)
