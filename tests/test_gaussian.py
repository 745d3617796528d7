"""propagate.gaussian: Gaussian expectations at any precision against closed forms and mpmath.quad.

References are independent of the code under test: closed forms written out
here (E[relu(z)^2] = q/2, E[relu(z)] = sqrt(q / 2 pi)), SELU's published
constants (Klambauer et al. 2017: mean 0 and variance 1 at N(0, 1)), and
mpmath's own tanh-sinh quadrature (``mpmath.quad``) on each side of a kink.
"""

from __future__ import annotations

import math

import mpmath as mp
import pytest

from propagate.errors import UserError
from propagate.gaussian import (
    MAX_DIGITS,
    BaseActivation,
    ShiftedActivation,
    base_activation,
    check_digits,
    closed_moments,
    exact,
    gauss_legendre,
    normal_rule,
)
from propagate.selu import PUBLISHED_ALPHA, PUBLISHED_LAMBDA


def _close(x, want, digits: int) -> bool:
    """``x`` agrees with ``want`` to ``digits`` significant digits (absolute when ``want`` is 0)."""
    scale = max(abs(want), mp.mpf(1)) if want == 0 else abs(want)
    return abs(x - want) <= mp.mpf(10) ** (-digits) * scale


def _quad(f, v, kink=True):
    """``E[f(z)]``, ``z ~ N(0, v)``, by mpmath.quad (tanh-sinh), split at 0 when ``f`` has a kink there."""
    s = mp.sqrt(v)
    g = lambda z: f(z) * mp.npdf(z, 0, s)  # noqa: E731
    return mp.quad(g, [-mp.inf, 0, mp.inf]) if kink else mp.quad(g, [-mp.inf, mp.inf])


@pytest.mark.parametrize("q", [0.25, 1.0, 3.7])
def test_relu_second_moment_is_half_q_to_30_digits(q):
    with mp.workdps(45):
        u = ShiftedActivation(base_activation("relu"), mp.mpf(1), mp.mpf(0))
        v = exact(q)
        e1, e2 = u.mp_moments(v)  # closed form
        assert _close(e2, v / 2, 30) and _close(e1, mp.sqrt(v / (2 * mp.pi)), 30)
        # the quadrature rule, split at the kink, gives the same
        assert _close(u.mp_expect(lambda z, f0, f1, f2: f0 * f0, v), v / 2, 30)
        assert _close(u.mp_expect(lambda z, f0, f1, f2: f1 * f1, v), mp.mpf(1) / 2, 30)  # E[relu'^2] = 1/2


@pytest.mark.parametrize("q", [0.3, 1.0, 4.0])
def test_tanh_derivative_second_moment_quadrature_vs_mpmath_quad_to_30_digits(q):
    with mp.workdps(45):
        u = ShiftedActivation(base_activation("tanh"), mp.mpf(1), mp.mpf(0))
        v = exact(q)
        got = u.mp_expect(lambda z, f0, f1, f2: f1 * f1, v)
        want = _quad(lambda z: (1 - mp.tanh(z) ** 2) ** 2, v, kink=False)
        assert _close(got, want, 30)
        assert 0 < got < 1  # tanh' <= 1, with equality only at 0


def test_selu_mean_and_variance_at_the_published_constants_to_20_digits():
    with mp.workdps(40):
        selu = BaseActivation("selu", "selu", {"lambda": mp.mpf(PUBLISHED_LAMBDA), "alpha": mp.mpf(PUBLISHED_ALPHA)},
                              (0.0,))
        u = ShiftedActivation(selu, mp.mpf(1), mp.mpf(0))
        for e1, e2 in (u.mp_moments(1),  # closed form
                       (u.mp_expect(lambda z, f0, f1, f2: f0), u.mp_expect(lambda z, f0, f1, f2: f0 * f0))):
            assert abs(e1) < mp.mpf(10) ** -20
            assert _close(e2 - e1 * e1, mp.mpf(1), 20)


@pytest.mark.parametrize("alpha", [0, 1])
@pytest.mark.parametrize("v", [0.5, 1.0, 2.0])
def test_elu_moments_at_alpha_0_and_1_against_mpmath_quad_to_20_digits(alpha, v):
    with mp.workdps(35):
        al, nu = mp.mpf(alpha), exact(v)
        base = BaseActivation("elu", "elu", {"alpha": al}, (0.0,))
        elu = lambda z: z if z > 0 else al * (mp.exp(z) - 1)  # noqa: E731
        want1, want2 = _quad(elu, nu), _quad(lambda z: elu(z) ** 2, nu)
        if alpha == 0:  # relu: sqrt(v / 2 pi) and v / 2
            assert _close(want1, mp.sqrt(nu / (2 * mp.pi)), 25) and _close(want2, nu / 2, 25)
        got1, got2 = closed_moments(base, mp.mpf(0), mp.sqrt(nu))
        assert _close(got1, want1, 20) and _close(got2 - got1**2, want2 - want1**2, 20)


def test_closed_moments_at_a_nonzero_mean_match_quadrature():
    """h ~ N(m, s^2) with m != 0: a shifted input, ``phi(a z + b)`` with ``b = m``, by both routes."""
    with mp.workdps(40):
        for name in ("leaky_relu:slope=0.2", "elu"):
            base = base_activation(name)
            u = ShiftedActivation(base, mp.mpf("1.5"), mp.mpf("-0.4"))
            e1, e2 = u.mp_moments(1)
            q1 = u.mp_expect(lambda z, f0, f1, f2: f0)
            q2 = u.mp_expect(lambda z, f0, f1, f2: f0 * f0)
            assert _close(e1, q1, 28) and _close(e2, q2, 28)


def test_gauss_legendre_rule_is_exact_for_polynomials():
    with mp.workdps(40):
        m = 12
        xs, ws = gauss_legendre(m, 40)
        assert len(xs) == m and _close(mp.fsum(ws), mp.mpf(2), 35)
        for k in (2, 10, 2 * m - 2):  # integral of x^k over [-1, 1] = 2 / (k + 1) for even k, exact to degree 2m - 1
            assert _close(mp.fsum(w * x**k for x, w in zip(xs, ws)), mp.mpf(2) / (k + 1), 35)


def test_normal_rule_integrates_the_normal_density_and_its_variance():
    with mp.workdps(35):
        zs, ws = normal_rule(mp.mpf(3), [mp.mpf("0.7")], 1)
        assert _close(mp.fsum(ws), mp.mpf(1), 30)
        assert _close(mp.fsum(w * z * z for z, w in zip(zs, ws)), mp.mpf(3), 30)


def test_float64_stats_agree_with_the_mpmath_ones():
    """np_stats (theory's float64 quadrature) and the mpmath moments/slopes describe the same integrals."""
    for name in ("gelu", "tanh", "relu"):
        base = base_activation(name)
        f1, f2, d1, d2 = ShiftedActivation(base, 1.0, 0.3).np_stats(1.3)
        with mp.workdps(30):
            u = ShiftedActivation(base, exact(1.0), exact(0.3))
            m1, m2 = u.mp_moments(exact(1.3))
            s1, s2 = u.mp_moment_slopes(exact(1.3))
        for a, b in ((f1, m1), (f2, m2), (d1, s1), (d2, s2)):
            assert a == pytest.approx(float(b), rel=1e-9, abs=1e-12)


def test_user_errors():
    with pytest.raises(UserError, match="no arbitrary-precision form"):
        base_activation("gelu@gamma=2.0,b=0.5")  # an already transformed activation: not a base
    for bad in (0, MAX_DIGITS + 1, 2.5, True):
        with pytest.raises(UserError, match="digits must be a whole number"):
            check_digits(bad)
    check_digits(MAX_DIGITS)
    assert exact(0.01) * 100 == 1 and math.isclose(float(exact(0.1)), 0.1)
