"""A C kernel for the simulator's hot loop, compiled on first use with the machine's C compiler; torch otherwise.

:func:`act_moments` applies an activation of the ELU or ReLU families in place
and returns, per network, the sums and sums of squares before and after it,
in float64, in one pass over memory (``act_moments.c``). The simulator's
layer is a matmul and then exactly this (:func:`propagate.stats.measure_through`);
with torch it is a sum, a norm, the activation, a sum and a norm: at best five
passes over a block held in cache, with the first read of each block, a pure
memory stream, not overlapped with any arithmetic. :func:`kernel_form` says
which activations the kernel has (SELU and ELU with any ``lambda``, ``alpha``;
ReLU, leaky ReLU and the identity).

How it is built:

- the source ships with the package; on first use it is compiled with ``cc``
  (``$CC`` if set) at ``-O3 -fopenmp`` into the user's cache folder
  (``$PROPAGATE_CACHE_DIR``, else ``$XDG_CACHE_HOME/propagate``, else
  ``~/.cache/propagate``; where that cannot be written and
  ``$PROPAGATE_CACHE_DIR`` is not set, ``propagate-UID`` in the temporary
  folder), under a name that hashes the source, the flags, the
  compiler's version and the machine, so a changed kernel or compiler builds
  anew and two processes never load a half-written library (it is written to a
  temporary name and renamed);
- x86-64 builds carry AVX-512, AVX2 and baseline versions of the loop, chosen
  when the library loads (GCC's ``target_clones``): one cached build serves
  every x86-64 machine that shares the folder;
- it is loaded after torch, so that its OpenMP runtime is the one torch loaded
  (one thread pool), and runs on ``torch.get_num_threads()`` threads; where
  torch brought another runtime (Intel's or LLVM's OpenMP: two pools would
  spin against each other), it runs on one thread.

Where there is no compiler, the build fails, the data is not float32 on the
CPU, or ``PROPAGATE_NATIVE=0`` is set, :func:`act_moments` returns ``None`` and
callers use torch; :func:`status` says which. The moments agree with
torch's float64 reductions of the same data to float64 round-off, and the
activation with torch's to float32 round-off (tested).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

__all__ = ["act_moments", "available", "cache_dir", "kernel_form", "set_flush_all_threads", "status"]

_SOURCE = Path(__file__).with_name("act_moments.c")
# -fno-trapping-math: the selects of the piecewise activations become vector blends (no FP exception flags are read)
_FLAGS = ("-O3", "-fno-trapping-math", "-fopenmp", "-fPIC", "-shared", "-std=gnu11")
_lock = threading.Lock()
_state: dict = {}  # "fn": the loaded function or None; "why": the reason when None


def cache_dir() -> Path:
    """The folder compiled kernels are kept in (module docstring)."""
    if os.environ.get("PROPAGATE_CACHE_DIR"):
        return Path(os.environ["PROPAGATE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "propagate"


def _private_temp_folder() -> Path | None:
    """``propagate-UID/native`` in the temporary folder, made private (0700) to this user; ``None`` where that
    folder exists but is another user's or writable by others (a library there could have been planted)."""
    try:
        uid = os.getuid()
    except AttributeError:  # not POSIX: no shared temporary folder to guard
        return None
    top = Path(tempfile.gettempdir()) / f"propagate-{uid}"
    try:
        top.mkdir(mode=0o700, exist_ok=True)
        st = top.lstat()
    except OSError:
        return None
    if top.is_symlink() or st.st_uid != uid or st.st_mode & 0o022:
        return None
    return top / "native"


def _compiler() -> tuple[str, str] | None:
    cc = os.environ.get("CC") or "cc"
    path = shutil.which(cc)
    if path is None:
        return None
    try:
        ver = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return path, ver


def _build() -> tuple[object, str]:
    if os.environ.get("PROPAGATE_NATIVE", "1").strip() in ("0", "off", "no", "false"):
        return None, "disabled by PROPAGATE_NATIVE=0"
    import torch  # first: the library must bind to the OpenMP runtime torch has loaded

    del torch
    cc = _compiler()
    if cc is None:
        return None, "no C compiler (cc, or $CC) on PATH"
    src = _SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([src, " ".join(_FLAGS).encode(), cc[1].encode(), platform.machine().encode()]))
    name = f"act_moments-{key.hexdigest()[:16]}.so"
    folders = [cache_dir() / "native"]
    if not os.environ.get("PROPAGATE_CACHE_DIR"):  # the default place unusable (a read-only home): the temp folder
        private = _private_temp_folder()
        if private is not None:
            folders.append(private)
    lib = next((f / name for f in folders if (f / name).exists()), None)
    if lib is None:
        tmp, errors = None, []
        for folder in folders:
            try:
                folder.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(prefix=".act_moments-", suffix=".so.tmp", dir=folder)
                os.close(fd)
                break
            except OSError as e:
                errors.append(f"{folder}: {e.strerror or e}")
        if tmp is None:
            return None, f"cannot write the kernel cache ({'; '.join(errors)})"
        lib = folder / name
        try:
            r = subprocess.run([cc[0], *_FLAGS, "-o", tmp, str(_SOURCE)], capture_output=True, text=True, timeout=300,
                               check=False)
            if r.returncode != 0:
                last = ((r.stderr or r.stdout).strip().splitlines() or ["no message"])[-1]
                return None, f"the C compiler failed: {last}"
            os.replace(tmp, lib)
        except (OSError, subprocess.SubprocessError) as e:
            return None, f"the C compiler failed: {e}"
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    try:
        dll = ctypes.CDLL(str(lib))
    except OSError as e:
        return None, f"cannot load {lib}: {e}"
    fn = dll.propagate_act_moments
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int, ctypes.c_float,
                   ctypes.c_float, ctypes.c_void_p, ctypes.c_int]
    flush = dll.propagate_set_flush
    flush.restype = ctypes.c_int
    flush.argtypes = [ctypes.c_int, ctypes.c_int]
    runtimes = _openmp_runtimes()
    if len(runtimes) > 1:
        # torch brought another OpenMP runtime (Intel's, LLVM's): two thread pools would spin against each other,
        # and a flush set in ours would not reach torch's threads; the kernel runs on one thread, no flush
        _state["one_thread"] = True
        return fn, (f"compiled kernel {lib}, on one thread: torch uses another OpenMP runtime "
                    f"({', '.join(sorted(runtimes))})")
    _state["flush"] = flush
    return fn, f"compiled kernel {lib}"


def _openmp_runtimes() -> set[str]:
    """The files of the OpenMP runtimes mapped into this process (Linux; empty where it cannot be told)."""
    import re

    try:
        with open("/proc/self/maps") as fh:
            maps = fh.read()
    except OSError:
        return set()
    return {os.path.realpath(m) for m in re.findall(r"/\S*/lib(?:gomp|iomp5|omp)[^/\s]*\.so[^/\s]*", maps)}


def _fn():
    if "fn" not in _state:
        with _lock:
            if "fn" not in _state:
                _state["fn"], _state["why"] = _build()
    return _state["fn"]


def available() -> bool:
    """Whether the compiled kernel is in use (builds it on first call)."""
    return _fn() is not None


def status() -> str:
    """The compiled kernel in use, or why torch is used instead."""
    _fn()
    return _state["why"]


def set_flush_all_threads(on: bool) -> bool:
    """Flush subnormals to zero (``on``) or not on every thread of torch's OpenMP pool; whether it was done.

    ``torch.set_flush_denormal`` sets the calling thread's control register
    only, so at two threads the pool's other thread went on computing with
    subnormals (half of each parallel op: measured, 10 of 20 million products
    ``1e-39 * 0.5`` left unflushed) at their slow speed.
    :func:`propagate.torch_settings.torch_settings` calls this after it; False
    without the compiled library (then only the calling thread flushes).
    """
    import torch

    if _fn() is None or "flush" not in _state:
        return False
    return _state["flush"](1 if on else 0, torch.get_num_threads()) == 0


def kernel_form(act) -> tuple[int, float, float] | None:
    """``(kind, a, b)`` of ``act`` in the kernel's terms (``act_moments.c``), or ``None`` where it has no such form.

    Built-in activations only (a user's function is not known to be one of these
    even when its name is): SELU and ELU (``lambda``, ``alpha``) as kind 0 with
    ``a = lambda``, ``b = lambda alpha``; ReLU, leaky ReLU and the identity as
    kind 1 with slopes ``a``, ``b``.
    """
    from propagate.activations import builtin_torch_form, get_activation

    act = get_activation(act)
    if not builtin_torch_form(act):
        return None
    family, params = act.torch.key
    p = dict(params)
    if family in ("selu", "elu"):
        lam = p.get("lambda", 1.0)
        return 0, float(lam), float(lam * p["alpha"])
    if family == "relu":
        return 1, 1.0, 0.0
    if family == "leaky_relu":
        return 1, 1.0, float(p["slope"])
    if family == "linear":
        return 1, 1.0, 1.0
    return None


def act_moments(t, form):
    """Apply ``form`` (:func:`kernel_form`) to ``t`` ``[S, ...]`` in place; per-network moments before and after it.

    Returns a float64 tensor ``[S, 4]``: ``sum t``, ``sum t^2`` before and
    ``sum y``, ``sum y^2`` after, over each network's entries; ``None``, with
    ``t`` untouched, where the kernel cannot take ``t`` (not float32 on the CPU,
    a network's entries ``t[s]`` not contiguous, or no compiled kernel: use
    torch). ``t[:, i:j]`` of a contiguous ``[S, B, N]`` qualifies.
    """
    import torch

    if form is None or t.dtype != torch.float32 or t.device.type != "cpu" or t.dim() < 1 or t.shape[0] == 0:
        return None
    S, n = t.shape[0], t[0].numel()
    if n == 0 or not t[0].is_contiguous() or (S > 1 and t.stride(0) < n):
        return None
    fn = _fn()
    if fn is None:
        return None
    kind, a, b = form
    out = torch.empty((S, 4), dtype=torch.float64)
    threads = 1 if _state.get("one_thread") else torch.get_num_threads()
    if torch.autograd.profiler._is_profiler_enabled:  # a profile shows the kernel as an op of its own
        with torch.profiler.record_function("propagate::act_moments"):
            rc = fn(t.data_ptr(), S, t.stride(0), n, kind, a, b, out.data_ptr(), threads)
    else:
        rc = fn(t.data_ptr(), S, t.stride(0), n, kind, a, b, out.data_ptr(), threads)
    if rc != 0:
        raise MemoryError("propagate.native.act_moments: out of memory for the partial sums")
    return out
