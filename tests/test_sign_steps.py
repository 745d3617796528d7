"""The sign-step picture (propagate.sign_steps) and its derivation document."""

import math
from pathlib import Path

import pytest

from propagate import sign_steps
from propagate.sign_steps import displacement, relative_spectral_change, step_factor, warmup_gain

ROOT = Path(__file__).resolve().parents[1]


def test_step_factor_is_rmsprops_step_for_a_steady_gradient():
    # run the recursion v_t = rho v + (1 - rho) g^2 from 0 and compare the step with the closed form
    for rho in (0.9, 0.99):
        v, g = 0.0, 0.37
        for t in range(1, 60):
            v = rho * v + (1 - rho) * g * g
            assert g / math.sqrt(v) == pytest.approx(step_factor(rho, t), rel=1e-12)
    assert step_factor(0.9, 1) == pytest.approx(math.sqrt(10))


def test_displacement_and_warmup_gain():
    assert displacement(0.9, 1) == pytest.approx(math.sqrt(10))
    assert displacement(0.5, 3) == pytest.approx(sum((1 - 0.5**t) ** -0.5 for t in (1, 2, 3)))
    # warmup W: weights t/W up to W
    assert displacement(0.9, 3, warmup=2) == pytest.approx(0.5 * step_factor(0.9, 1) + step_factor(0.9, 2)
                                                           + step_factor(0.9, 3))
    gains = [warmup_gain(0.9, w) for w in (5, 10, 20, 40)]
    assert all(g > 1 for g in gains) and gains == sorted(gains)
    assert warmup_gain(0.9, 0) == 1.0


def test_relative_change_of_a_rank_one_sign_step():
    # the numbers the issue starts from: ~4% of the weight at n = 256, lr 1e-4, ~40% at 1e-3
    assert relative_spectral_change(1e-4, 0.9, 256) == pytest.approx(0.0405, abs=1e-4)
    assert relative_spectral_change(1e-3, 0.9, 256) == pytest.approx(0.405, abs=1e-3)
    # and the spectral norm of sign(u v^T) is sqrt(n_out n_in), checked numerically
    import numpy as np
    rng = np.random.default_rng(0)
    u, v = rng.normal(size=256), rng.normal(size=256)
    assert np.linalg.norm(np.sign(np.outer(u, v)), 2) == pytest.approx(256.0)


def test_derivation_file_is_up_to_date():
    committed = (ROOT / "derivations" / "trainability.md").read_text()
    assert sign_steps.derivation_markdown() == committed, \
        "regenerate: propagate derive trainability > derivations/trainability.md"
