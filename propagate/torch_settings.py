"""Torch's process-wide settings for one run, restored afterwards: threads, subnormal flushing, determinism.

:func:`propagate.simulate.simulate` and :func:`propagate.train.train` both run
inside :func:`torch_settings`, so the flags are set and restored one way.
Torch has no getter for the flush-denormal flag; :func:`flush_is_on` probes it,
so the block restores the flag as it found it (on or off).
"""

from __future__ import annotations

import contextlib

__all__ = ["torch_settings", "flush_is_on"]


def flush_is_on() -> bool:
    """Whether float32 subnormals are currently flushed to zero (probed: torch has no getter)."""
    import torch

    tiny = torch.tensor([1.1754944e-38], dtype=torch.float32)
    return bool((tiny * 0.5).item() == 0.0)


def _flush_pool(on: bool) -> None:
    """The flush setting on every thread of torch's pool, not just this one (:func:`propagate.native.set_flush_all_threads`)."""
    from propagate import native

    native.set_flush_all_threads(on)


@contextlib.contextmanager
def torch_settings(*, threads: int | None = None, flush_denormal: bool | None = None, deterministic: bool = False):
    """Torch's thread count, subnormal flushing and determinism for the block; all restored after.

    Args:
        threads: intra-op CPU threads in the block (``None``: unchanged).
        flush_denormal: flush subnormal floats to zero (``True``), don't
            (``False``) or leave the flag (``None``). Subnormals make CPU
            arithmetic very slow on many CPUs.
        deterministic: ``torch.use_deterministic_algorithms(True)`` in the
            block, without its NaN fill of every new tensor (a debugging aid
            that costs a pass over memory per allocation; callers write every
            tensor before reading it).

    Yields a dict: ``threads_before`` (the thread count found) and
    ``flush_active`` (whether flushing is on in the block; False where the
    CPU cannot flush).
    """
    import torch

    state = {"threads_before": torch.get_num_threads(), "flush_active": False}
    flush_before = flush_is_on()
    det_before = torch.are_deterministic_algorithms_enabled()
    det_mod = getattr(torch.utils, "deterministic", None)
    fill_before = getattr(det_mod, "fill_uninitialized_memory", None)
    if threads is not None:
        torch.set_num_threads(int(threads))
    if flush_denormal is not None:
        state["flush_active"] = bool(torch.set_flush_denormal(bool(flush_denormal))) and bool(flush_denormal)
        _flush_pool(bool(flush_denormal))
    else:
        state["flush_active"] = flush_before
    if deterministic:
        torch.use_deterministic_algorithms(True)
        if fill_before is not None:
            det_mod.fill_uninitialized_memory = False
    try:
        yield state
    finally:
        torch.set_flush_denormal(flush_before)
        if flush_denormal is not None:
            _flush_pool(flush_before)
        if deterministic:  # only if changed: the call imports torch._inductor (and sympy) the first time, ~0.5 s
            torch.use_deterministic_algorithms(det_before)
            if fill_before is not None:
                det_mod.fill_uninitialized_memory = fill_before
        torch.set_num_threads(state["threads_before"])
