"""The compiled activation-and-moments kernel (propagate.native): its numbers against torch and float64, its
special values, its independence of threads and neighbours, and its build, cache and fallbacks."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

from propagate import native
from propagate.activations import get_activation, torch_forms

HAVE_CC = shutil.which(os.environ.get("CC") or "cc") is not None

FORMS = ["selu", "elu", "elu:alpha=0.5", "selu:lambda=1.2,alpha=0.5", "relu", "leaky_relu:slope=0.1", "linear"]


@pytest.fixture
def kernel():
    if not native.available():
        if HAVE_CC and os.environ.get("PROPAGATE_NATIVE", "1") != "0":
            pytest.fail(f"a C compiler is here but the kernel is not: {native.status()}")
        pytest.skip(native.status())
    return native


def test_the_kernel_is_built_where_a_compiler_is():
    """This machine (and CI's) has gcc: the kernel must be in use, or the simulator silently runs the slow path."""
    if not HAVE_CC:
        pytest.skip("no C compiler")
    assert native.available(), native.status()
    assert native.status().startswith("compiled kernel ")


@pytest.mark.parametrize("name", FORMS)
def test_activation_equals_torch_and_moments_equal_float64(kernel, name):
    act = get_activation(name)
    form = kernel.kernel_form(act)
    assert form is not None
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 517, 33, generator=g) * 3.0 - 0.5  # odd sizes: the vector loops' scalar tails run
    x[0, :5, 0] = torch.tensor([-25.0, -19.9, -1e-6, 1e-30, 0.0])
    y = x.clone()
    out = kernel.act_moments(y, form)
    assert out.dtype == torch.float64 and out.shape == (3, 4)
    ref = torch_forms(act).forward(x.double())
    # the activation: within 2 units in the last place of float32 (torch's own float32 selu is within 1)
    assert torch.allclose(y.double(), ref, rtol=2.5e-7, atol=1e-37)
    xd = x.double()
    want = torch.stack([xd.sum(dim=(1, 2)), (xd * xd).sum(dim=(1, 2))], dim=1)
    assert torch.allclose(out[:, :2], want, rtol=1e-12, atol=1e-12)  # the input's sums: float64 of float32 data
    yd = y.double()
    assert torch.allclose(out[:, 2:], torch.stack([yd.sum(dim=(1, 2)), (yd * yd).sum(dim=(1, 2))], 1),
                          rtol=1e-12, atol=1e-12)


def test_special_values_follow_torch(kernel):
    vals = torch.tensor([math.nan, math.inf, -math.inf, 0.0, -1e-45, 1e-45, 3.4e38, -3.4e38])
    for name in ("selu", "relu", "leaky_relu:slope=0.1"):
        act = get_activation(name)
        y = vals.clone().reshape(1, 1, -1)
        out = kernel.act_moments(y, kernel.kernel_form(act))
        ref = torch_forms(act).forward(vals.double()).float()
        got = y.flatten()
        assert math.isnan(got[0]) and torch.equal(got[1:], ref[1:]), (name, got, ref)
        assert math.isnan(out[0, 0]) and math.isnan(out[0, 3])  # a NaN entry: its network's sums are NaN
    # a vanishing signal and an exploding one: float64 sums where float32 squares underflow or overflow
    tiny = torch.full((2, 10, 8), 3e-20)
    out = kernel.act_moments(tiny, kernel.kernel_form("linear"))
    assert out[:, 1].tolist() == pytest.approx([80 * 9e-40] * 2, rel=1e-6)
    big = torch.full((2, 10, 8), 3e19)
    out = kernel.act_moments(big, kernel.kernel_form("relu"))
    assert out[:, 3].tolist() == pytest.approx([80 * 9e38] * 2, rel=1e-6) and torch.isfinite(out).all()


def test_same_numbers_at_any_thread_count_and_beside_any_networks(kernel):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 1000, 97, generator=g)
    form = kernel.kernel_form("selu")
    threads = torch.get_num_threads()
    try:
        outs = []
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            y = x.clone()
            outs.append((kernel.act_moments(y, form), y))
    finally:
        torch.set_num_threads(threads)
    for o, y in outs[1:]:
        assert torch.equal(o, outs[0][0]) and torch.equal(y, outs[0][1])
    # network 2 alone gives the numbers it gives beside three others
    y = x[2:3].clone()
    assert torch.equal(kernel.act_moments(y, form)[0], outs[0][0][2])


def test_a_block_of_samples_is_taken_in_place_and_nothing_else_is_touched(kernel):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 50, 16, generator=g)
    y = x.clone()
    out = kernel.act_moments(y[:, 10:30], kernel.kernel_form("selu"))
    assert torch.equal(y[:, :10], x[:, :10]) and torch.equal(y[:, 30:], x[:, 30:])
    assert torch.allclose(y[:, 10:30], torch.selu(x[:, 10:30]), rtol=2.5e-7, atol=0)
    b = x[:, 10:30].double()
    assert torch.allclose(out[:, 0], b.sum(dim=(1, 2)), rtol=1e-12, atol=1e-12)


def test_what_the_kernel_cannot_take_is_left_to_torch(kernel):
    form = kernel.kernel_form("selu")
    x = torch.randn(3, 8, 4)
    for t in (x.double(), x.transpose(1, 2), x[:, :, :2]):
        before = t.clone()
        assert kernel.act_moments(t, form) is None and torch.equal(t, before)
    assert kernel.kernel_form("tanh") is None and kernel.kernel_form("gelu") is None
    from propagate.activations import register_activation, unregister_activation

    register_activation("myrelu_test", lambda v: v * (v > 0), torch=torch.relu, bounds=(0.0, math.inf))
    try:
        assert kernel.kernel_form("myrelu_test") is None  # a user's function is never assumed to be a built-in
    finally:
        unregister_activation("myrelu_test")


def _run(code: str, **env) -> subprocess.CompletedProcess:
    e = {**os.environ, **env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e, timeout=300, check=False)


_PROBE = "from propagate import native; print(native.available()); print(native.status())"


@pytest.mark.skipif(not HAVE_CC, reason="no C compiler")
def test_build_is_cached_atomically_and_reused(tmp_path):
    r = _run(_PROBE + "\nimport re; print(sorted(set(re.findall(r'\\S*libgomp\\S*', open('/proc/self/maps').read()))))",
             PROPAGATE_CACHE_DIR=str(tmp_path))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "True"
    libs = list((tmp_path / "native").iterdir())
    assert len(libs) == 1 and libs[0].suffix == ".so" and not libs[0].name.startswith(".")  # no temporary left
    assert len(eval(lines[2])) <= 1, lines[2]  # one OpenMP runtime: torch's (the kernel binds to it)
    stamp = libs[0].stat().st_mtime_ns
    r = _run(_PROBE, PROPAGATE_CACHE_DIR=str(tmp_path), CC="/nonexistent/cc-that-is-not-used")
    # the cached build is keyed by the compiler's version too: with another compiler it is not reused blindly
    assert r.stdout.splitlines()[0] == "False" and "no C compiler" in r.stdout
    r = _run(_PROBE, PROPAGATE_CACHE_DIR=str(tmp_path))
    assert r.stdout.splitlines()[0] == "True" and libs[0].stat().st_mtime_ns == stamp  # loaded, not rebuilt


def test_fallbacks_say_why(tmp_path):
    r = _run(_PROBE, PROPAGATE_NATIVE="0", PROPAGATE_CACHE_DIR=str(tmp_path))
    assert r.stdout.splitlines() == ["False", "disabled by PROPAGATE_NATIVE=0"]
    fake = tmp_path / "cc"
    fake.write_text("#!/bin/sh\nif [ \"$1\" = --version ]; then echo fake 1.0; exit 0; fi\necho 'fake: broken' >&2\nexit 1\n")
    fake.chmod(0o755)
    r = _run(_PROBE, CC=str(fake), PROPAGATE_CACHE_DIR=str(tmp_path / "c"))
    assert r.returncode == 0 and r.stdout.splitlines()[0] == "False" and "the C compiler failed: fake: broken" in r.stdout
    assert not [p for p in (tmp_path / "c" / "native").iterdir()]  # the failed build left nothing behind
    ro = tmp_path / "ro"
    ro.write_text("a file where the cache folder would be")
    r = _run(_PROBE, PROPAGATE_CACHE_DIR=str(ro))
    assert r.returncode == 0 and r.stdout.splitlines()[0] == "False" and "cannot write" in r.stdout
    # and the simulator runs on torch, with the same table to float32 round-off
    code = ("from propagate.spec import NetworkSpec\nfrom propagate.simulate import simulate\n"
            "import json\nr = simulate(NetworkSpec(widths=(32,)*4, activation='selu', init='lecun_normal'), "
            "samples=64, seeds=2, theory=False).per_seed\nprint(json.dumps(r['post_q'].tolist()))")
    a = _run(code, PROPAGATE_NATIVE="0")
    b = _run(code, PROPAGATE_CACHE_DIR=str(tmp_path / "d"))
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    import json

    assert json.loads(a.stdout) == pytest.approx(json.loads(b.stdout), rel=2e-6)


def test_the_simulators_pass_gives_the_same_numbers_at_any_thread_count(kernel):
    """measure_through on the kernel: its blocks and chunks do not depend on the threads (a report built in
    process at one thread equals the one built by 2 workers bit for bit)."""
    from propagate.stats import measure_through

    act = get_activation("selu")
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 3000, 64, generator=g)
    threads = torch.get_num_threads()
    outs = []
    try:
        for t in (1, 2):
            torch.set_num_threads(t)
            y = x.clone()
            (pre, _), (post, _) = measure_through(y, torch_forms(act).inplace, act)
            outs.append((y, {**pre, **post}))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(outs[0][0], outs[1][0])
    for k, v in outs[0][1].items():
        assert torch.equal(v, outs[1][1][k]), k


def test_subnormals_are_flushed_on_every_thread_of_the_pool(kernel):
    """torch.set_flush_denormal sets the calling thread only: at two threads half of a parallel op's products of
    subnormals stayed subnormal (10 of 20 million). torch_settings sets every thread of the pool, and restores."""
    from propagate.torch_settings import torch_settings

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        x = torch.full((4_000_000,), 1e-39)
        (x * 2).sum()  # the pool's threads exist before the flag is set, as in any process that computed already
        with torch_settings(threads=2, flush_denormal=True):
            assert bool(((x * 0.5) == 0).all())
        assert not bool(((x * 0.5) == 0).any())  # restored, on every thread
    finally:
        torch.set_num_threads(threads)


def test_beside_another_openmp_runtime_the_kernel_runs_on_one_thread(monkeypatch):
    """Where torch brought another OpenMP runtime than the one the kernel links (two pools would spin against each
    other; a flush set in one would not reach the other's threads), the kernel runs on one thread and does not
    claim to flush torch's threads. Here there is exactly one runtime, torch's."""
    if not HAVE_CC:
        pytest.skip("no C compiler")
    runtimes = native._openmp_runtimes()
    if os.path.exists("/proc/self/maps"):
        assert native.available() and len(runtimes) == 1, runtimes
    monkeypatch.setattr(native, "_state", {})
    monkeypatch.setattr(native, "_openmp_runtimes", lambda: {"/a/libgomp.so.1", "/b/libiomp5.so"})
    assert native.available() and "on one thread: torch uses another OpenMP runtime" in native.status()
    assert native.set_flush_all_threads(True) is False
    x = torch.randn(2, 100, 16)
    out = native.act_moments(x.clone(), native.kernel_form("selu"))
    assert out is not None and torch.allclose(out[:, 0], x.double().sum(dim=(1, 2)), rtol=1e-12, atol=1e-12)


@pytest.mark.skipif(not HAVE_CC or not hasattr(os, "getuid"), reason="no C compiler, or not POSIX")
def test_an_unwritable_cache_falls_back_to_a_private_temporary_folder(tmp_path):
    """A home whose cache cannot be written (XDG_CACHE_HOME a file here) still gets the kernel, built in a private
    propagate-UID folder of the temporary folder; one that others can write is not used."""
    blocked = tmp_path / "cachefile"
    blocked.write_text("not a folder")
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = {"XDG_CACHE_HOME": str(blocked), "TMPDIR": str(tmpdir), "PROPAGATE_CACHE_DIR": ""}
    r = _run(_PROBE, **env)
    assert r.stdout.splitlines()[0] == "True", r.stdout + r.stderr
    private = tmpdir / f"propagate-{os.getuid()}"
    assert str(private / "native") in r.stdout and (private.stat().st_mode & 0o777) == 0o700
    private.chmod(0o777)  # now anyone could have put a library there: not used
    r = _run(_PROBE, **env)
    assert r.stdout.splitlines()[0] == "False" and "cannot write the kernel cache" in r.stdout
