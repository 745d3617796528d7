"""The activation registry: forms, parameters, closed-form Gaussian moments, registration, errors."""

import math

import numpy as np
import pytest

from propagate.activations import get_activation, list_activations, register_activation, selu_constants, unregister_activation
from propagate.errors import UserError
from propagate.theory import gaussian_expectation

BUILTIN = ["linear", "relu", "leaky_relu", "elu", "selu", "tanh", "sigmoid", "erf", "softplus", "gelu", "silu"]
CLOSED = ["linear", "relu", "leaky_relu:0.2", "elu", "elu:alpha=0.5", "selu", "selu:lambda=1.2,alpha=1.4"]
CASES = [(0.0, 1.0), (0.7, 2.0), (-1.3, 0.4), (0.0, 25.0)]


def test_all_issue_activations_are_registered():
    names = list_activations()
    for n in BUILTIN:
        assert n in names
    assert get_activation("swish").family == "silu"


def test_selu_constants_are_the_published_float64_values():
    lam, alpha = selu_constants()
    assert lam == float("1.0507009873554804934193349852946")
    assert alpha == float("1.6732632423543772848170429916717")


@pytest.mark.parametrize("name", BUILTIN)
def test_numpy_torch_and_derivative_agree(name):
    torch = pytest.importorskip("torch")
    act = get_activation(name)
    x = np.linspace(-3.3, 2.9, 41)  # avoids the kink at 0 exactly
    t = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    y = act.torch(t)
    y.sum().backward()
    np.testing.assert_allclose(act.numpy(x), y.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(act.grad(x), t.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_parameters_parse_and_act():
    lr = get_activation("leaky_relu:0.2")
    assert lr.params == {"slope": 0.2}
    assert lr(np.array([-1.0, 2.0])).tolist() == [-0.2, 2.0]
    assert get_activation("leaky_relu:slope=0.3").params["slope"] == 0.3
    elu = get_activation("elu:alpha=0.5")
    assert elu(np.array([-1.0]))[0] == pytest.approx(0.5 * math.expm1(-1.0), abs=1e-15)
    s = get_activation("selu:lambda=1.2,alpha=1.4")
    assert s.params == {"lambda": 1.2, "alpha": 1.4}
    assert s(np.array([-1.0, 1.0])).tolist() == pytest.approx([1.2 * 1.4 * math.expm1(-1.0), 1.2])
    assert get_activation("selu").params["lambda"] == selu_constants()[0]


@pytest.mark.parametrize("bad", ["foo", "leaky_relu:slope=x", "elu:beta=1", "tanh:1", "", "leaky_relu:", "gelu: ",
                                 "tanh@", "selu@ "])
def test_bad_names_raise_user_error(bad):
    with pytest.raises(UserError):
        get_activation(bad)


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(UserError) as e:
        get_activation("swishy")
    msg = str(e.value)
    for n in BUILTIN:
        assert n in msg


@pytest.mark.parametrize("name,mean,var", [(n, m, v) for n in CLOSED for m, v in CASES]
                         + [("erf", m, v) for m, v in CASES if m == 0])
def test_closed_forms_match_quadrature_to_1e10(name, mean, var):
    act = get_activation(name)
    assert act.moments(mean, var) is not None
    m1, m2 = act.moments(mean, var)
    g2 = act.grad_moment(mean, var)
    q1 = gaussian_expectation(act.numpy, var, mean, act.kinks)
    q2 = gaussian_expectation(lambda h: act.numpy(h) ** 2, var, mean, act.kinks)
    qg = gaussian_expectation(lambda h: act.grad(h) ** 2, var, mean, act.kinks)
    scale = max(1.0, abs(m2))
    assert abs(m1 - q1) < 1e-10 * scale
    assert abs(m2 - q2) < 1e-10 * scale
    assert abs(g2 - qg) < 1e-10 * max(1.0, g2)


@pytest.mark.parametrize("var", [0.4, 1.0, 25.0])
def test_erf_closed_forms_at_mean_zero_are_williams(var):
    """Williams (1997): for h ~ N(0, v), E[erf(h)^2] = (2/pi) arcsin(2v / (1 + 2v)), and
    E[erf'(h)^2] = (4/pi) E[exp(-2 h^2)] = (4/pi) / sqrt(1 + 4v)."""
    act = get_activation("erf")
    m1, m2 = act.moments(0.0, var)
    assert m1 == 0.0
    assert m2 == pytest.approx(2 / math.pi * math.asin(2 * var / (1 + 2 * var)), rel=1e-13)
    assert act.grad_moment(0.0, var) == pytest.approx(4 / math.pi / math.sqrt(1 + 4 * var), rel=1e-13)


@pytest.mark.parametrize("mean,var", [m_v for m_v in CASES if m_v[0] != 0])
def test_erf_off_zero_mean_is_integrated_exactly(mean, var):
    """Off mean 0 erf has no closed second moment here (``moments`` is None), so theory integrates;
    its first moment has the closed form E[erf(h)] = erf(m / sqrt(1 + 2v)), which the quadrature must hit."""
    act = get_activation("erf")
    assert act.moments(mean, var) is None
    q1 = gaussian_expectation(act.numpy, var, mean, act.kinks)
    assert q1 == pytest.approx(math.erf(mean / math.sqrt(1 + 2 * var)), abs=1e-12)


@pytest.mark.parametrize("name", CLOSED + ["erf", "tanh", "gelu"])
def test_moments_match_monte_carlo_within_4_se(name):
    act = get_activation(name)
    mean, var = (0.0, 1.7) if name in ("erf",) else (0.3, 1.7)
    rng = np.random.default_rng(12345)
    h = mean + math.sqrt(var) * rng.standard_normal(1_000_000)
    y, g = act.numpy(h), act.grad(h)
    if act.moments is not None and act.moments(mean, var) is not None:
        m1, m2 = act.moments(mean, var)
        g2 = act.grad_moment(mean, var)
    else:
        m1 = gaussian_expectation(act.numpy, var, mean, act.kinks)
        m2 = gaussian_expectation(lambda x: act.numpy(x) ** 2, var, mean, act.kinks)
        g2 = gaussian_expectation(lambda x: act.grad(x) ** 2, var, mean, act.kinks)
    for sample, value in ((y, m1), (y * y, m2), (g * g, g2)):
        se = sample.std() / math.sqrt(sample.size)
        assert abs(sample.mean() - value) <= 4 * se + 1e-12 * abs(value), (name, sample.mean(), value, se)


def test_erf_second_moment_closed_form():
    act = get_activation("erf")
    for q in (0.1, 1.0, 3.0):
        assert act.moments(0.0, q)[1] == pytest.approx((2 / math.pi) * math.asin(2 * q / (1 + 2 * q)), abs=1e-15)


def test_register_a_user_activation_and_use_it():
    try:
        act = register_activation("absval", lambda x: np.abs(x), kinks=(0.0,), doc="|x|")
        assert "absval" in list_activations()
        assert get_activation("ABSVAL") is act
        # E|h| = sqrt(2 var / pi), E[sign(h)^2] = 1
        assert gaussian_expectation(act.numpy, 2.0, kinks=act.kinks) == pytest.approx(math.sqrt(4 / math.pi), abs=1e-12)
        # default finite-difference derivative
        assert act.grad(np.array([-3.0, 2.0])).tolist() == pytest.approx([-1.0, 1.0], abs=1e-9)
        from propagate.theory import chi_1, length_map

        assert length_map("absval", 1.5, 0.1, 2.0) == pytest.approx(3.1, abs=1e-12)
        assert chi_1("absval", 1.5, 0.0, q=1.0) == pytest.approx(1.5, abs=1e-9)
        with pytest.raises(UserError):
            register_activation("relu", np.abs)
    finally:
        unregister_activation("absval")
    assert "absval" not in list_activations()


@pytest.mark.parametrize("name,expected", [
    ("gelu@gamma=1,gamma=2", "gives gamma twice"),
    ("leaky_relu:0.1,slope=0.3", "gives slope twice"),
    ("selu:alpha=1,lambda=1,alpha=2", "gives alpha twice"),
    ("leaky_relu:0.1,0.2", "takes parameters \\['slope'\\] as key=value"),
    ("leaky_relu:1e200", r"slope = 1e200 is outside its range \|slope\| <= 1e\+06"),
    ("selu:lambda=0", r"lambda = 0 is outside its range 1e-06 <= lambda <= 1e\+06"),
    ("elu:alpha=-1", r"alpha = -1 is outside its range 0 <= alpha <= 1e\+06"),
    ("gelu@gamma=0", r"gamma = 0 is outside its range 1e-06 <= \|gamma\| <= 1e\+06"),
    ("gelu@b=-2e6", r"b = -2e6 is outside its range \|b\| <= 1e\+06"),
    ("leaky_relu:1e-310", "subnormal"),
    ("tanh:1", "tanh takes no parameters"),
    ("gelu@c=1", "the transform has no parameter 'c'"),
])
def test_parameters_are_given_once_and_within_their_range(name, expected):
    """The last of two values used to win silently; edge values crashed later (leaky_relu:1e200 overflowed slope^2)."""
    with pytest.raises(UserError, match=expected):
        get_activation(name)


def test_parameters_at_the_edges_of_their_ranges_work():
    from propagate.theory import critical_sigma_w2

    assert get_activation("leaky_relu:-1e6").params == {"slope": -1e6}
    assert get_activation("LEAKY_RELU:SLOPE=0.5").params == {"slope": 0.5}  # keys are case-insensitive
    # critical sigma_w2 of leaky relu: 1 / E[phi'^2] = 2 / (1 + slope^2), exact at the edge of the range
    assert critical_sigma_w2("leaky_relu:1e6", 0.0)[0] == pytest.approx(2 / (1 + 1e12), rel=1e-12)
    sw2, _ = critical_sigma_w2("selu:lambda=1e-6", 0.0)  # lambda^2 E[phi'^2] at q -> 0 is lambda^2 (1 + alpha^2) / 2
    a = get_activation("selu").params["alpha"]
    assert sw2 == pytest.approx(2 / (1e-12 * (1 + a * a)), rel=1e-6)
    assert get_activation("gelu@gamma=1e-6,a=1e6,b=-1e6,d=1e6").params["gamma"] == 1e-6
