"""Size bounds: refuse, before any work, a run that cannot fit in memory or would not end.

A size a user types (a grid, a number of samples, a depth, a width) is checked
against an estimate of the memory or the work it implies, and an impossible one
ends in one line that gives the estimate and the limit (:class:`UserError`).
The memory limit is the machine's physical memory, as for the simulator's
guard (:func:`propagate.simulate` refuses a working set above it); a run is
refused when its estimate exceeds :data:`MEMORY_SHARE` of it, so the estimate
need not be exact to catch a run that would be killed or swap for hours.

Standard library only: the CLI's argument types call these at parse time.
"""

from __future__ import annotations

import os

from propagate.errors import UserError

__all__ = ["MEMORY_SHARE", "MAX_DEPTH", "MAX_WIDTH", "check_depth", "physical_memory", "memory_limit", "format_bytes", "require_memory", "require_work"]

#: Share of physical memory one run may plan to use (the rest: the OS, other processes, estimate error).
MEMORY_SHARE = 0.5

#: Most layers a network may have: the per-layer table costs about 1.3 KB and 7-20 us a layer
#: (theory, measured), so 10^6 layers is about 1.3 GB and tens of seconds; simulation and
#: training check their memory on top of this.
MAX_DEPTH = 1_000_000
#: Most units in one layer: a square weight matrix of this width in float32 is 4 GiB.
MAX_WIDTH = 32_768


def check_depth(depth: int) -> None:
    """Refuse more than :data:`MAX_DEPTH` layers, with the size of the table they imply."""
    if depth > MAX_DEPTH:
        raise UserError(f"{depth} layers would need about {1.3e3 * depth / 2**30:.3g} GiB for the per-layer table "
                        f"alone; the limit is {MAX_DEPTH}")


def physical_memory() -> int | None:
    """Bytes of physical memory (``None`` where the OS does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return None


def memory_limit() -> int | None:
    """The bytes one run may plan to use: :data:`MEMORY_SHARE` of physical memory."""
    total = physical_memory()
    return None if total is None else int(total * MEMORY_SHARE)


def format_bytes(n: float) -> str:
    """``n`` bytes in the largest binary unit that keeps it >= 1 (``3.8 GiB``)."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} bytes"


def require_memory(need_bytes: float, what: str, hint: str) -> None:
    """Raise :class:`UserError` when ``need_bytes`` exceeds :func:`memory_limit`.

    ``what`` names the run (``"--grid 150"``), ``hint`` says what to change.
    """
    limit = memory_limit()
    if limit is not None and need_bytes > limit:
        total = physical_memory() or 0
        raise UserError(f"{what} needs about {format_bytes(need_bytes)} of memory, more than "
                        f"{MEMORY_SHARE:.0%} of this machine's {format_bytes(total)}; {hint}")


def require_work(units: float, limit: float, what: str, unit_name: str, hint: str) -> None:
    """Raise :class:`UserError` when a run implies more than ``limit`` units of work (points, layers, ...)."""
    if units > limit:
        raise UserError(f"{what} means {units:.3g} {unit_name}, more than the limit of {limit:.3g}; {hint}")


# ------------------------------------------------------------------ per-computation estimates
# Measured peaks (numpy float64), rounded up: the estimate must not be below the truth.

#: ``selu.stability_box``: the grid**4 lattice, the four Jacobian entries, their temporaries,
#: the norms, the points and the sort order (112 bytes a point measured).
SELU_GRID_BYTES_PER_POINT = 160
#: ``selu.monte_carlo_check``: the samples, their image, deviations and the temporaries of the moments.
MC_BYTES_PER_SAMPLE = 48


def check_stability_grid(grid: int) -> None:
    """Refuse a ``grid**4`` stability lattice that does not fit in memory (one line, the estimate in it)."""
    points = int(grid) ** 4
    require_memory(points * SELU_GRID_BYTES_PER_POINT, f"a stability grid of {grid}^4 = {points:.3g} points",
                   "use a smaller --grid (the L-BFGS-B refinement recovers the maximum between grid points)")


def check_mc_samples(samples: int) -> None:
    """Refuse a Monte Carlo sample that does not fit in memory."""
    require_memory(int(samples) * MC_BYTES_PER_SAMPLE, f"a Monte Carlo check of {samples:.3g} samples",
                   "use fewer --samples (the standard error falls only as 1/sqrt(samples))")


def training_bytes(widths, batch_size: int, probe_size: int, n_images: int, optimizer: str = "rmsprop") -> int:
    """Estimated peak bytes of training a float32 MLP with layer widths ``widths`` (input first).

    Weights, gradients and the optimizer's state per parameter (RMSprop and SGD
    one buffer, Adam two), the activations of one batch and of the probe batch
    kept for backward (about 3 tensors per layer), and the dataset on the device.
    """
    widths = [int(w) for w in widths]
    params = sum(a * b + b for a, b in zip(widths[:-1], widths[1:]))
    state = {"adam": 2}.get(optimizer, 1)
    units = sum(widths)
    return 4 * (params * (2 + state) + 3 * (batch_size + probe_size) * units + n_images * widths[0])


def simulation_bytes(widths, samples: int, seeds: int, item: int = 4, grad_samples: int = 256) -> int:
    """Estimated working set of ``propagate.simulate`` (the same sum as its own memory guard).

    Per network: the inputs and two activations of the widest layer per sample,
    every weight matrix, and the activations kept for the gradient of
    ``min(samples, grad_samples)`` samples; ``item`` bytes a number (4: float32).
    """
    widths = [int(w) for w in widths]
    fans = sum(a * b for a, b in zip(widths[:-1], widths[1:]))
    return int(item * seeds * (samples * (widths[0] + 2 * max(widths[1:])) + fans
                               + min(samples, grad_samples) * sum(widths[1:])))
