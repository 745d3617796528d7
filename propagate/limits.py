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

__all__ = ["MEMORY_SHARE", "MAX_DEPTH", "MAX_WIDTH", "MAX_SEED", "MAX_LIST", "MAX_GRID_POINTS", "MAX_REFINE_STEPS",
           "MAX_TIMEOUT_S", "MAX_DENSITY_POINTS", "check_depth", "check_seeds", "linear_range", "check_grid",
           "check_refine", "max_workers", "check_workers", "check_timeout", "physical_memory", "memory_limit",
           "format_bytes", "require_memory", "require_work"]

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


# ------------------------------------------------------------------ seeds, grids, workers, time
# One rule per kind of size, so every command (and the sweep file, the trainability grid) refuses the
# same things with the same numbers. The CLI's argument types in ``propagate.commands._args`` call these.

#: Largest seed. Seeds go into int64 table columns (pandas, Parquet) and ``torch.manual_seed`` (which takes
#: [-2^63, 2^64)); numpy's ``SeedSequence`` takes any integer >= 0. So every seed of a run, the first and
#: ``first + count - 1`` of an ensemble, must satisfy 0 <= seed <= 2^63 - 1.
MAX_SEED = 2**63 - 1


def check_seeds(first: int, count: int = 1, option: str = "--seed") -> None:
    """Refuse a seed, or an ensemble ``first .. first + count - 1``, outside ``0 .. MAX_SEED``."""
    first, count = int(first), int(count)
    if first < 0:
        raise UserError(f"{option} must be >= 0, got {first}")
    if count < 1:
        raise UserError(f"the number of seeds must be >= 1, got {count}")
    if first + count - 1 > MAX_SEED:
        what = f"seed {first}" if count == 1 else f"seeds {first}..{first + count - 1}"
        raise UserError(f"{option}: {what} beyond the largest seed 2^63 - 1 = {MAX_SEED} "
                        f"(seeds are stored as signed 64-bit integers)")


#: Most values one list or range may hold: a range is expanded into a list before any work, so this bounds
#: its memory (about 32 bytes a value) and every command bounds the work further.
MAX_LIST = 100_000


def linear_range(start: float, stop: float, count: int, what: str = "a range") -> list[float]:
    """``count`` evenly spaced values from ``start`` to ``stop`` (both included), refused above :data:`MAX_LIST`.

    The count is checked before anything is built, so ``0:1:10000000000`` ends in one line, not in swap.
    """
    count = int(count)
    if count < 1:
        raise UserError(f"{what} needs at least 1 point, got {count}")
    if count > MAX_LIST:
        raise UserError(f"{what} of {count} points is more than the limit of {MAX_LIST}")
    if count == 1:
        return [float(start)]
    return [start + (stop - start) * i / (count - 1) for i in range(count)]


#: Most points of a grid (the product of its axes: a sweep, a trainability grid). Each point is at least one
#: command run and one result file (1-4 KB): 10^5 points are ~10^5 files and hours of work even at 0.1 s each.
MAX_GRID_POINTS = 100_000


def check_grid(sizes, what: str = "the grid", limit: int = MAX_GRID_POINTS) -> int:
    """The number of points of a grid with axes of ``sizes`` (an int or a sequence); refused above ``limit``.

    Computed on Python integers (no overflow), before any point is built.
    """
    import math

    sizes = [int(sizes)] if isinstance(sizes, int) else [int(s) for s in sizes]
    if any(s < 0 for s in sizes):
        raise UserError(f"{what} has an axis of negative size")
    total = math.prod(sizes)
    if total > limit:
        axes = " x ".join(str(s) for s in sizes)
        raise UserError(f"{what} has {axes} = {total} points, more than the limit of {limit}")
    return total


#: Most bisection steps of a refinement (trainability's largest trainable learning rate). Each step halves
#: an interval of log(lr) that starts at the grid spacing (ln 10 ~ 2.3), so 20 steps resolve lr to 2e-6
#: relative, far below the seed-to-seed spread; every step is a full ensemble training.
MAX_REFINE_STEPS = 20


def check_refine(steps: int, option: str = "--refine") -> None:
    """Refuse more than :data:`MAX_REFINE_STEPS` bisection steps."""
    if int(steps) < 0:
        raise UserError(f"{option} must be >= 0, got {steps}")
    if int(steps) > MAX_REFINE_STEPS:
        raise UserError(f"{option} {steps}: the interval would be 2^-{steps} of the grid spacing; the limit is "
                        f"{MAX_REFINE_STEPS} steps (2e-6 relative in lr, far below the spread over seeds)")


def max_workers() -> int:
    """Most local worker processes: one per core (more only contend for the cores and each holds ~0.2 GB)."""
    return max(1, os.cpu_count() or 1)


def check_workers(n: int, option: str = "--workers") -> None:
    """Refuse fewer than 1 or more than :func:`max_workers` local worker processes."""
    n, most = int(n), max_workers()
    if n < 1:
        raise UserError(f"{option} must be >= 1, got {n}")
    if n > most:
        raise UserError(f"{option} {n}: this machine has {most} core{'s' * (most > 1)}, so at most {most} local "
                        f"workers; for more, start a Dask scheduler and workers yourself and pass --scheduler")


#: Longest network timeout (seconds): a day. Longer is no timeout at all, and the OS's socket timeout
#: overflows beyond about 9e15 s; shorter than a millisecond can never be met.
MAX_TIMEOUT_S = 86_400.0
MIN_TIMEOUT_S = 1e-3


def check_timeout(seconds: float, option: str = "--timeout") -> None:
    """Refuse a timeout outside [:data:`MIN_TIMEOUT_S`, :data:`MAX_TIMEOUT_S`] seconds (NaN included)."""
    if not MIN_TIMEOUT_S <= seconds <= MAX_TIMEOUT_S:
        raise UserError(f"{option} must be from {MIN_TIMEOUT_S:g} to {MAX_TIMEOUT_S:g} seconds (a day), got {seconds:g}")


#: Most points of a spectral density (``spectrum --points``): each is a polynomial root, about 3-4 ms
#: (measured), so 10^4 points is under a minute.
MAX_DENSITY_POINTS = 10_000
