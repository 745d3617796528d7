"""Speed of the mean-field theory: a 1000-layer per-layer prediction and a 50-point critical line.

Goals (issue 3): under 50 ms for 1000 layers, under 2 s for 50 points of the
critical line. Prints the best of several runs and its ratio to the goal
(< 1 meets it), all measured in this one run.

    python benchmarks/bench_theory.py
"""

from __future__ import annotations

import time

import numpy as np

from propagate.spec import NetworkSpec
from propagate.theory import critical_line, critical_sigma_w2, predict_layers


def best_of(fn, repeats=5):
    fn()  # warm caches (quadrature nodes, imports)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main():
    goal_layers, goal_line = 0.050, 2.0
    tanh_crit = critical_sigma_w2("tanh", 0.05)[0]
    cases = [
        ("relu, he_normal (closed forms)", dict(activation="relu", init="he_normal")),
        ("selu, lecun_normal (closed forms)", dict(activation="selu", init="lecun_normal")),
        ("selu, lecun_normal, alpha dropout 0.1", dict(activation="selu", init="lecun_normal", alpha_dropout=0.1)),
        ("relu, glorot_uniform, batchnorm", dict(activation="relu", init="glorot_uniform", batchnorm=True)),
        ("elu, normal:1.5 (chaotic, quadrature)", dict(activation="elu", init="normal:1.5")),
        ("tanh, critical at sigma_b2=0.05 (quadrature)", dict(activation="tanh", init=f"normal:{tanh_crit!r}", bias_var=0.05)),
        ("tanh, normal:1.5, sigma_b2=0.05 (ordered)", dict(activation="tanh", init="normal:1.5", bias_var=0.05)),
        ("gelu, normal:2, sigma_b2=0.05", dict(activation="gelu", init="normal:2", bias_var=0.05)),
    ]
    print("1000-layer per-layer prediction (784 -> 512 -> 999 x 256), best of 5")
    print(f"{'case':48s} {'time':>10s} {'/ goal 50 ms':>13s}")
    for label, kw in cases:
        spec = NetworkSpec.stack(1000, **kw)
        t = best_of(lambda: predict_layers(spec))
        print(f"{label:48s} {t * 1e3:8.1f} ms {t / goal_layers:12.2f}x")
    print()
    print("critical line at 50 values of sigma_b2 in [0, 2], best of 3")
    print(f"{'activation':48s} {'time':>10s} {'/ goal 2 s':>13s}")
    sb2 = np.linspace(0.0, 2.0, 50)
    for act in ("tanh", "erf", "selu", "elu", "gelu", "relu"):
        t = best_of(lambda: critical_line(act, sb2), repeats=3)
        print(f"{act:48s} {t * 1e3:8.1f} ms {t / goal_line:12.3f}x")


if __name__ == "__main__":
    main()
