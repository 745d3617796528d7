"""Wall times of ``propagate solve-selu`` (30 and 100 digits) and ``propagate --help``.

Prints measured times (best and median of a few fresh processes); not a test.
Goals from issue 2: solve-selu under 2 s, --help under 0.3 s on a 2-core machine.

    python benchmarks/bench_selu.py [--repeats N]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

CASES = [
    ("propagate --help", ["--help"], 0.3),
    ("propagate solve-selu", ["solve-selu"], 2.0),
    ("propagate solve-selu --digits 100", ["solve-selu", "--digits", "100"], 2.0),
    ("propagate solve-selu --mean 0.3 --var 1", ["solve-selu", "--mean", "0.3", "--var", "1"], 2.0),
]


def wall_time(argv: list[str]) -> float:
    """Seconds for one fresh ``python -m propagate ARGV`` process."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "propagate", *argv], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    wall_time(["--help"])  # warm the file cache
    print(f"{'command':45s} {'best s':>8s} {'median s':>9s} {'goal s':>7s}")
    for label, argv, goal in CASES:
        times = [wall_time(argv) for _ in range(args.repeats)]
        print(f"{label:45s} {min(times):8.3f} {statistics.median(times):9.3f} {goal:7.1f}")


if __name__ == "__main__":
    main()
