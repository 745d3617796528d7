"""Jacobian spectrum from free probability: closed-form moments, Monte Carlo, densities, the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from propagate.cli import main
from propagate.spec import NetworkSpec
from propagate.spectrum import (jacobian_moments, jacobian_spectrum, layer_laws, sample_jacobian_spectrum,
                                summarize_singular_values)


def uniform(act, init, n, depth, **kw):
    return NetworkSpec(widths=(n,) * (depth + 1), activation=act, init=init, **kw)


def test_linear_gaussian_products_have_fuss_catalan_moments():
    # J J^T of a product of L square Gaussian matrices: moments are the Fuss-Catalan numbers
    # binom((L+1)k, k) / (L k + 1) (Marchenko-Pastur for L = 1: Catalan 1, 2, 5, 14)
    for L in (1, 2, 3):
        m = jacobian_moments(layer_laws(uniform("linear", "normal:1", 50, L)))
        for k in range(1, 5):
            assert m[f"m{k}"] == pytest.approx(math.comb((L + 1) * k, k) / (L * k + 1), rel=1e-10)
    # orthogonal weights: J is orthogonal, every moment is sigma_w^(2k L)
    m = jacobian_moments(layer_laws(uniform("linear", "orthogonal:1.5", 50, 3)))
    assert m["m2"] == pytest.approx(1.5 ** 6, rel=1e-10)


@pytest.mark.parametrize("init,s_w", [("he_normal", 1.0), ("orthogonal:2", 0.0)])
def test_relu_moments_closed_form(init, s_w):
    # Pennington et al. 2018: m1 = chi^L, m2/m1^2 - 1 = L (mu2/mu1^2 - 1 + s_W); ReLU: mu1 = mu2 = 1/2, chi = 1
    L = 4
    m = jacobian_moments(layer_laws(uniform("relu", init, 100, L)))
    assert m["m1"] == pytest.approx(1.0, rel=1e-10)
    assert m["m2"] == pytest.approx(1 + L * (1 + s_w), rel=1e-10)


def test_first_two_moments_match_monte_carlo():
    for act, init, sb2 in (("relu", "he_normal", 0.0), ("tanh", "normal:1.4242", 0.01), ("selu", "orthogonal:1", 0.0)):
        spec = uniform(act, init, 200, 4, bias_var=sb2)
        m = jacobian_moments(layer_laws(spec))
        s2 = sample_jacobian_spectrum(spec, networks=4, inputs=2, seed=5).reshape(8, -1)
        for k, extra in ((1, 0.03), (2, 0.08)):
            per = np.mean(s2**k, axis=1)  # one normalized trace per Jacobian
            se = np.std(per, ddof=1) / math.sqrt(len(per))
            # 4 standard errors across Jacobians plus an O(L / n) finite-width allowance
            assert abs(per.mean() - m[f"m{k}"]) < 4 * se + extra * m[f"m{k}"], (act, k, per.mean(), m[f"m{k}"], se)


def test_density_integrates_to_one_and_matches_marchenko_pastur():
    sp = jacobian_spectrum(uniform("linear", "normal:1", 50, 1), points=150)
    assert sp.total_mass() == pytest.approx(1.0, abs=0.01)
    x, p = sp.x, sp.density
    inner = (x > 0.2) & (x < 3.5)
    mp = np.sqrt(np.clip(x * (4 - x), 0, None)) / (2 * math.pi * x)
    assert np.max(np.abs(p[inner] / mp[inner] - 1)) < 0.02
    for act, init, sb2, atom in (("relu", "he_normal", 0.0, 0.5), ("tanh", "orthogonal:1.4242", 0.01, 0.0)):
        sp = jacobian_spectrum(uniform(act, init, 50, 4, bias_var=sb2), points=120)
        assert sp.atom == atom
        assert sp.total_mass() == pytest.approx(1.0, abs=0.015), act
        # the density's mean is m1 (continuous part; the atom sits at 0)
        m1 = np.trapezoid(sp.density * sp.x * sp.x, np.log(sp.x))
        assert m1 == pytest.approx(sp.moments["m1"], rel=0.03), act


def test_sampled_spectrum_of_a_plain_stack_is_the_old_samplers():
    """Pinned: the values of the hand-written sampler this one replaced (same seed), to float64 round-off.

    The old one multiplied the Jacobian out from the input side, this one from the output side (vector-Jacobian
    products); the smallest squared singular values (1e-7 of the largest) agree to 1e-9 relative.
    """
    s2 = sample_jacobian_spectrum(uniform("tanh", "normal:1.4242", 16, 5, bias_var=0.01), networks=3, inputs=2,
                                  seed=7)
    assert s2.shape == (3, 2, 16)
    np.testing.assert_allclose([np.mean(s2), np.mean(s2**2)], [0.5603072196858759, 4.036254223276088], rtol=1e-12)
    np.testing.assert_allclose(s2[0, 0, :3], [4.959719225830447, 0.5586914664262829, 0.32994176174711304], rtol=1e-12)
    np.testing.assert_allclose(s2[2, 1, -2:], [4.950253083736965e-07, 4.9306134736127365e-08], rtol=1e-8)
    s2 = sample_jacobian_spectrum(uniform("selu", "orthogonal:1", 16, 5), networks=3, inputs=2, seed=7)
    np.testing.assert_allclose([np.mean(s2), np.mean(s2**2)], [1.3857226237457738, 6.04129984565639], rtol=1e-12)


def test_sampled_spectrum_of_a_batchnorm_network_is_autograds():
    """The same drawn network by hand in torch: its per-sample Jacobian (BatchNorm statistics of the batch held
    fixed) by autograd; every squared singular value, so m1 = ||J||_F^2 / n, equal to round-off."""
    import torch

    n, S, K, B, seed = 10, 2, 2, 16, 3
    spec = NetworkSpec.stack(3, n, input_dim=n, first_width=None, activation="tanh", init="glorot_normal",
                             batchnorm=True, bias_var=0.1, input_mean=0.2, input_var=1.5)
    s2 = sample_jacobian_spectrum(spec, networks=S, inputs=K, seed=seed, batch=B)
    # the documented stream: one generator from the seed; the inputs, then each layer's weights and biases
    gen = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, 1]).generate_state(1)[0]))
    x = torch.randn(S, B, n, dtype=torch.float64, generator=gen) * math.sqrt(1.5) + 0.2
    wb = [op.draw(gen, torch.float64, batch=(S,)) for op in spec.compile() if op.has_weights]

    def net(h, s, fixed=None):
        stats = []
        for l, (W, b) in enumerate(wb):
            if l > 0:  # BatchNorm on the inputs of layers 2..depth, statistics over the batch
                mu, var = (h.mean(0), h.var(0, unbiased=False)) if fixed is None else fixed[l - 1]
                stats.append((mu, var))
                h = (h - mu) / torch.sqrt(var + spec.bn_eps)
            h = torch.tanh(h @ W[s].T + b[s])
        return h, stats

    m1 = []
    for s in range(S):
        _, stats = net(x[s], s)
        for k in range(K):
            J = torch.autograd.functional.jacobian(lambda v: net(v[None], s, stats)[0][0], x[s, k])
            np.testing.assert_allclose(s2[s, k], torch.linalg.svdvals(J).numpy() ** 2, rtol=1e-9, atol=1e-13)
            m1.append(float((J**2).sum()) / n)
    assert summarize_singular_values(s2)["moments"]["m1"] == pytest.approx(np.mean(m1), rel=1e-12)


def test_cli_samples_a_batchnorm_network_and_says_why_the_prediction_is_empty(capsys):
    argv = ["spectrum", "--activation", "selu", "--init", "lecun_normal", "--batchnorm", "--depth", "3", "--width",
            "24", "--check", "--networks", "2", "--inputs", "2"]
    assert main(argv + ["--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["moments"] == {f"m{k}": None for k in range(1, 5)} and d["density"] == []
    assert d["theory_note"] == "the free-probability Jacobian spectrum (propagate.spectrum) does not cover BatchNorm"
    mc = d["monte_carlo"]
    s2 = sample_jacobian_spectrum(NetworkSpec.stack(3, 24, input_dim=24, first_width=None, activation="selu",
                                                    init="lecun_normal", batchnorm=True), networks=2, inputs=2)
    assert mc["moments"]["m1"] == pytest.approx(float(np.mean(s2)), rel=1e-12) and mc["jacobians"] == 4
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "Monte Carlo" in out and out.count("does not cover BatchNorm") == 1


def test_cli_json_moments_and_plot(tmp_path, capsys):
    assert main(["spectrum", "--activation", "relu", "--init", "he_normal", "--depth", "4", "--width", "400",
                 "--json", "--check", "--networks", "2", "--inputs", "1", "--points", "120"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["moments"]["m1"] == pytest.approx(1.0) and d["moments"]["m2"] == pytest.approx(9.0)
    assert set(d["moments"]) == {"m1", "m2", "m3", "m4"}
    assert len(d["density"]) > 50 and all(len(r) == 2 for r in d["density"])
    assert d["monte_carlo"]["moments"]["m1"] == pytest.approx(1.0, rel=0.06)
    assert d["monte_carlo"]["zero_frac"] == pytest.approx(0.5, abs=0.05)
    png = tmp_path / "s.png"
    assert main(["spectrum", "--activation", "tanh", "--sigma-w2", "1.4242", "--sigma-b2", "0.01", "--orthogonal",
                 "--depth", "3", "--width", "64", "--points", "80", "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "m2/m1^2 - 1" in capsys.readouterr().out


def test_cli_user_errors(capsys):
    for argv in (["spectrum", "--activation", "relu", "--init", "he_normal", "--batchnorm"],
                 ["spectrum", "--init", "he_normal", "--orthogonal"],
                 ["spectrum", "--sigma-w2", "2", "--first-width", "300", "--width", "100"],  # square layers only
                 ["spectrum", "--sigma-w2", "2", "--init", "he_normal"]):
        try:
            rc = main(argv)
        except SystemExit as exc:  # refused by the parser
            rc = exc.code
        assert rc == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("propagate: error:") and err.count("\n") == 1


def test_cli_default_network_and_moments_csv(tmp_path, capsys):
    """Without weights flags spectrum uses the default network's (SELU, lecun_normal: sigma_w2 = 1) on square layers;
    --csv puts the measured moments beside the predicted theory_m1.. (the convention of every table)."""
    path = tmp_path / "m.csv"
    assert main(["spectrum", "--depth", "3", "--width", "32", "--check", "--networks", "2", "--inputs", "1",
                 "--points", "60", "--csv", str(path)]) == 0
    out = capsys.readouterr().out
    assert "selu/lecun_normal: depth 3, width 32" in out
    import pandas as pd

    row = pd.read_csv(path).iloc[0]
    spec = NetworkSpec.stack(3, 32, input_dim=32, first_width=None, activation="selu", init="lecun_normal")
    s2 = sample_jacobian_spectrum(spec, networks=2, inputs=1)
    assert row["m1"] == pytest.approx(float(np.mean(s2)), rel=1e-9) and row["theory_m1"] > 0
    assert (tmp_path / "m.csv.meta.json").exists() and "m1_mc" not in row.index


def test_report_section_writes_figures_data_and_markdown(tmp_path, monkeypatch):
    import propagate.report.section_spectrum as sec

    # a tiny version of the quick section (the real one is run by the report)
    monkeypatch.setattr(sec, "SPREAD_QUICK", ((16,), 4, 8, 1))
    monkeypatch.setattr(sec, "SPECTRUM_QUICK", (2, 32, 1))
    monkeypatch.setattr(sec, "DENSITY_POINTS", (40, 40))
    md = sec.section(tmp_path, {"quick": True, "seed": 0, "dataset": "mnist-5k"})
    for name in ("spread", "spectrum"):
        assert (tmp_path / "figures" / f"{name}.png").stat().st_size > 1000
        assert (tmp_path / "figures" / f"{name}.svg").exists()
        assert f"figures/{name}.png" in md
    moments = (tmp_path / "data" / "spectrum_moments.csv").read_text().splitlines()
    assert len(moments) == 1 + 6  # relu, tanh, selu x gaussian, orthogonal
    assert (tmp_path / "data" / "spread.csv").exists()


def test_simulate_jacobian_summary_has_moments_and_zero_share():
    from propagate.simulate import simulate

    spec = uniform("relu", "he_normal", 64, 3)
    j = simulate(spec, seeds=1, samples=8, jacobian=True, jacobian_inputs=2, theory=False, threads=1).jacobian
    assert set(j["moments"]) == {"m1", "m2", "m3", "m4"}
    # ReLU: at least half the singular values are exactly zero (rank <= active units of the narrowest layer)
    assert 0.4 <= j["zero_frac"] <= 0.7
    assert j["s_min_nonzero"] > 0
