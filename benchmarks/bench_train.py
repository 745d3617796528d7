"""Training speed of the lecture demo's network (depth 51) against the matmul roofline, one network and an 8-seed ensemble.

Prints, in one run (every timing is the median over the steps of a training
epoch, measured by :func:`propagate.train.train` itself through its
``on_step`` hook, after a warm-up epoch; configurations are interleaved so a
busy machine affects them alike):

1. for the lecture demo's network (784 -> 512 -> 50 x 256 -> 10) with relu, relu + BN,
   selu, selu + BN: samples/s, the implied time of one MNIST epoch (60,000
   images), the time the step's matmuls alone take on the same machine
   (``torch.baddbmm``/``bmm`` on exactly the step's shapes: forward ``x W^T``,
   backward ``g W`` and ``g^T x``, 3x the forward FLOPs), and the ratio
   measured / matmul-only (goal: <= 1.5 without BN, <= 1.8 with BN), for the
   fused training chain with the optimizer inside the backward pass (the
   default, :func:`propagate.kernels.training_forward`), for the per-op
   modules with their fused kernels ("per-op", ``kernels.disabled("chain")``)
   and for the plain torch expressions ("plain", ``kernels.disabled()``), so
   each level's effect is measured in the same process;
2. an ensemble of ``--seeds`` (8) seeds of selu/lecun_normal trained as one
   batched model against ``--seeds`` separate single runs: the time ratio
   (goal: <= 0.6), and its floor, the ensemble's matmuls alone over the
   ``--seeds`` single steps (an ensemble step cannot take less than its
   matmuls, so a leaner single step raises this floor);
3. the peak resident memory (RSS) of a process training an 8-seed ensemble of
   the seed network (a few steps on 2,048 random images), next to
   :func:`propagate.train.estimate_memory`'s estimate, which the memory guard uses;
4. the effect of flushing subnormal floats to zero on a network whose signal
   vanishes into the subnormal range (ReLU + N(0, 0.02), no BN).

With ``--reproduce DIR`` it also times a 5-seed ``reproduce`` (all presets,
3 epochs, lr 1e-3) on mnist-5k into DIR against 5 single-seed reproductions;
with ``--profile``, where each network's step spends its time (torch.profiler,
self CPU time grouped into matmuls, optimizer, BatchNorm, activation, bias
gradients and everything else), and the largest kind besides the matmuls; a
network (or the ensemble) whose ratio misses its goal is profiled so without
``--profile`` too.

Use ``--threads 1`` for ratios that do not depend on the machine's core count;
time on an idle machine (the ratios compare parts of one process, but a busy
machine still adds noise). On a busy machine, ``--clock cpu --threads 1``
times with the process's CPU time instead of the wall clock, which leaves out
the time other processes hold the core (not their effect on the caches).

    python benchmarks/bench_train.py [--steps 60] [--threads 1] [--seeds 8] [--clock cpu] [--reproduce /tmp/reproduce-5k] [--profile]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

from propagate import kernels
from propagate.data import Dataset
from propagate.spec import NetworkSpec
from propagate.reproduce import reproduce
from propagate.train import TrainOptions, estimate_memory, train

MNIST_EPOCH = 60_000

#: The clock of every timing: wall time, or the process's CPU time (``--clock cpu``).
clock = time.perf_counter

CONFIGS = [
    ("relu/glorot_uniform", NetworkSpec.seed("relu", "glorot_uniform", False)),
    ("relu/glorot_uniform + BN", NetworkSpec.seed("relu", "glorot_uniform", True)),
    ("selu/lecun_normal", NetworkSpec.seed("selu", "lecun_normal", False)),
    ("selu/lecun_uniform + BN", NetworkSpec.seed("selu", "lecun_uniform", True)),
]


def random_dataset(n_train: int, n_test: int = 256, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n_train + n_test, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 10, size=n_train + n_test).astype(np.int64)
    return Dataset("random", x[:n_train], y[:n_train], x[n_train:], y[n_train:], "random uint8 images")


def _dims(spec: NetworkSpec) -> list[int]:
    return list(spec.widths) + ([spec.out_features] if spec.out_features else [])


def matmul_flops(spec: NetworkSpec, batch: int, seeds: int = 1) -> float:
    """Forward + backward matmul FLOPs of one training step (3 x forward, 2 FLOPs per multiply-add)."""
    dims = _dims(spec)
    return 3.0 * seeds * sum(2.0 * batch * a * b for a, b in zip(dims[:-1], dims[1:]))


def matmul_seconds_per_step(spec: NetworkSpec, batch: int, seeds: int = 1, repeats: int = 30) -> float:
    """Median time of the step's matmuls alone (batched over ``seeds``): forward, input and weight gradients."""
    ops = []
    for fan_in, fan_out in zip(_dims(spec)[:-1], _dims(spec)[1:]):
        ops.append((torch.randn(seeds, batch, fan_in), torch.randn(seeds, fan_out, fan_in),
                    torch.randn(seeds, 1, fan_out), torch.randn(seeds, batch, fan_out)))

    def step():
        for x, w, b, g in ops:
            torch.baddbmm(b, x, w.transpose(1, 2))  # forward
            torch.bmm(g, w)  # grad wrt input
            torch.bmm(g.transpose(1, 2), x)  # grad wrt weight

    for _ in range(3):
        step()
    times = []
    for _ in range(repeats):
        t0 = clock()
        step()
        times.append(clock() - t0)
    return statistics.median(times)


def step_seconds(spec: NetworkSpec, steps: int, batch: int, threads: int, seeds: int = 1,
                 flush: bool = True) -> float:
    """Median seconds per optimization step of ``train`` over the second of two epochs of ``steps`` steps."""
    ds = random_dataset(steps * batch)
    stamps: list[tuple[int, float]] = []
    opts = TrainOptions(epochs=2, batch_size=batch, probe_size=8, train_eval_size=8, threads=threads,
                        flush_denormal=flush, seeds=seeds)
    train(spec, opts, ds, on_step=lambda info: stamps.append((info["epoch"], clock())))
    t = [s for e, s in stamps if e == 2]
    return statistics.median(np.diff(t)) if len(t) > 2 else float("nan")


#: Kinds of op in the profile table, by torch op name prefix (anything else is "other": autograd and Python
#: overhead (the fused chain's own Python shows as ``Chain``/``ChainBackward``), copies, small reductions, the loss).
PROFILE_KINDS = {
    "matmul": ("aten::bmm", "aten::baddbmm", "aten::mm", "aten::addmm"),
    "optimizer": ("aten::_fused_adam_", "aten::_foreach_add_", "Optimizer.step", "Optimizer.zero_grad",
                  "aten::index_add_"),
    "batchnorm": ("aten::native_batch_norm", "aten::native_batch_norm_backward", "aten::_batch_norm_impl_index",
                  "aten::batch_norm", "NativeBatchNormBackward0", "aten::_native_batch_norm_legit",
                  "aten::_native_batch_norm_legit_functional"),
    "activation": ("aten::relu", "aten::clamp_min", "aten::threshold_backward", "aten::selu", "aten::elu",
                   "aten::elu_backward", "ReluBackward0", "Selu", "SeluBackward", "aten::tanh", "aten::sigmoid"),
    "bias grad": ("aten::sum",),
}


def profile_step(spec: NetworkSpec, steps: int, batch: int, threads: int, seeds: int = 1) -> tuple[float, dict]:
    """(ms per step under the profiler, share of self CPU time per :data:`PROFILE_KINDS`) over an epoch's steps."""
    from torch.profiler import ProfilerActivity, profile

    ds = random_dataset(steps * batch)
    opts = TrainOptions(epochs=2, batch_size=batch, probe_size=8, train_eval_size=8, threads=threads, seeds=seeds)
    state: dict = {}

    def hook(info):  # profile the steps of the second epoch (after its first), and nothing else
        if info["epoch"] != 2 or "t1" in state:
            return
        if "prof" not in state:
            state["prof"] = profile(activities=[ProfilerActivity.CPU])
            state["prof"].__enter__()
            state["t0"], state["n0"] = clock(), info["batch"]
        elif info["batch"] == steps - 1:
            state["prof"].__exit__(None, None, None)
            state["t1"], state["n"] = clock(), info["batch"] - state["n0"]

    train(spec, opts, ds, on_step=hook)
    prof, n = state["prof"], state["n"]
    ms = (state["t1"] - state["t0"]) * 1e3 / n
    by_kind: dict = {}
    others: list = []
    total = 0.0
    for ev in prof.key_averages():
        t = ev.self_cpu_time_total
        total += t
        kind = next((k for k, names in PROFILE_KINDS.items() if any(ev.key.startswith(nm) for nm in names)), "other")
        by_kind[kind] = by_kind.get(kind, 0.0) + t
        if kind == "other":
            others.append((t, ev.key, ev.count))
    shares = {k: v / total for k, v in by_kind.items()} if total else {}
    shares["top other"] = ", ".join(f"{key} {t / total:.0%} ({count / n:.0f}/step)"
                                    for t, key, count in sorted(others, reverse=True)[:4]) if total else ""
    return ms, shares


def peak_rss_of_ensemble(seeds: int, threads: int) -> tuple[float, float]:
    """(peak RSS in bytes of a fresh process training ``seeds`` seeds of the seed network, the guard's estimate)."""
    code = (
        "import resource, sys; sys.path.insert(0, %r)\n"
        "from bench_train import random_dataset\n"
        "from propagate.presets import get_preset\n"
        "from propagate.train import TrainOptions, train\n"
        "ds = random_dataset(2048, 1000)\n"
        "train(get_preset('selu-lecun-normal').spec(), TrainOptions(epochs=1, seeds=%d, threads=%d), ds)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)\n"
    ) % (os.path.dirname(os.path.abspath(__file__)), seeds, threads)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    rss = float(out.stdout.strip().splitlines()[-1])
    from propagate.presets import get_preset

    est = estimate_memory(get_preset("selu-lecun-normal").spec(), TrainOptions(seeds=seeds), seeds, 2048, 1000)
    return rss, float(est)


def subnormal_share(spec: NetworkSpec) -> float:
    """Share of nonzero float32 pre-activations below the smallest normal number, at initialization."""
    from propagate.spec import build_model

    model = build_model(spec, seed=0)
    tiny = torch.finfo(torch.float32).tiny
    with torch.no_grad():
        _, rec = model(torch.rand(256, spec.input_dim), record=True)
    h = torch.cat([p.flatten() for p in rec["pre"]])
    return float(((h != 0) & (h.abs() < tiny)).double().mean())


def interleaved_timings(args) -> dict:
    """Best (least) seconds per step over ``args.rounds`` rounds, every measurement once per round (interleaved).

    Keys: ``(label, variant)`` for each network of :data:`CONFIGS` and variant
    ``fused`` (the chain), ``per-op`` and ``plain``; ``("matmul", S)`` the
    matmul-only step of ``S`` seeds (1 and ``args.seeds``); ``("ensemble", S)``
    the ``args.seeds``-seed selu/lecun_normal step.
    """
    seed_net, S = NetworkSpec.seed(), args.seeds
    variants = {"fused": contextlib.nullcontext, "per-op": lambda: kernels.disabled("chain"),
                "plain": kernels.disabled}
    best: dict = {}

    def keep(key, t):
        best[key] = min(best.get(key, float("inf")), t)

    for _ in range(args.rounds):
        keep(("matmul", 1), matmul_seconds_per_step(seed_net, args.batch))
        for label, spec in CONFIGS:
            for variant, context in variants.items():
                with context():
                    keep((label, variant), step_seconds(spec, args.steps, args.batch, args.threads))
        keep(("ensemble", S), step_seconds(CONFIGS[2][1], args.steps, args.batch, args.threads, seeds=S))
        keep(("matmul", S), matmul_seconds_per_step(seed_net, args.batch, seeds=S))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60, help="training steps per timed epoch (default 60)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--seeds", type=int, default=8, help="ensemble size (default 8)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved repetitions; the best is kept (default 3)")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="wall time (default) or process CPU time (for a busy machine, with --threads 1)")
    ap.add_argument("--reproduce", metavar="DIR", help="also time a 5-seed reproduce on mnist-5k into DIR")
    ap.add_argument("--profile", action="store_true", help="also profile a step of each network (torch.profiler)")
    args = ap.parse_args()
    global clock
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    torch.set_num_threads(args.threads)

    seed_net = NetworkSpec.seed()
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, {args.steps} steps per timing, "
          f"{args.rounds} interleaved rounds (best kept), {args.clock} clock")
    best = interleaved_timings(args)
    mm = best["matmul", 1]
    flops = matmul_flops(seed_net, args.batch)
    print(f"matmul throughput on the step's shapes: {flops / mm / 1e9:.1f} GFLOP/s "
          f"({flops / 1e9:.2f} GFLOP per step of batch {args.batch})")
    print()
    print("1. one network (ratio = measured step / matmul-only step; goal <= 1.5 without BN, <= 1.8 with BN)")
    print(f"{'network':<26} {'samples/s':>10} {'epoch (60k) s':>14} {'matmul-only s':>14} {'ratio':>6} "
          f"{'per-op ratio':>13} {'plain ratio':>12}")
    ideal = mm * MNIST_EPOCH / args.batch
    for label, _ in CONFIGS:
        step, per_op, plain = best[label, "fused"], best[label, "per-op"], best[label, "plain"]
        epoch = step * MNIST_EPOCH / args.batch
        print(f"{label:<26} {args.batch / step:>10.0f} {epoch:>14.1f} {ideal:>14.1f} {step / mm:>6.2f} "
              f"{per_op / mm:>13.2f} {plain / mm:>12.2f}")

    S = args.seeds
    ens, mm_S, single = best["ensemble", S], best["matmul", S], best[CONFIGS[2][0], "fused"]
    print()
    print(f"2. ensemble of {S} seeds (selu/lecun_normal) as one batched model vs {S} separate runs (goal <= 0.6)")
    print(f"   step: {ens * 1e3:.1f} ms for {S} seeds vs {S} x {single * 1e3:.1f} ms -> {ens / (S * single):.2f}x; "
          f"its matmuls alone: {mm_S * 1e3:.1f} ms (ratio {ens / mm_S:.2f})")
    print(f"   floor: an ensemble step takes at least its matmuls, {mm_S / (S * single):.2f}x of these {S} single "
          f"runs ({S} single matmul-only steps take {S * mm * 1e3:.1f} ms)")

    rss, est = peak_rss_of_ensemble(S, args.threads)
    print()
    print(f"3. peak RSS of a process training {S} seeds of the seed network (2,048 random images): "
          f"{rss / 2**30:.2f} GiB; the memory guard's estimate: {est / 2**30:.2f} GiB")

    # sigma_w^2 = 0.02 with ReLU: the signal's variance shrinks 100x per layer, so the upper
    # layers' pre-activations (and their gradients) fall into float32's subnormal range.
    vanish = NetworkSpec.seed("relu", "normal:0.02", False)
    share = subnormal_share(vanish)
    few = max(10, args.steps // 4)  # without flushing this network crawls: time only a few steps
    on = step_seconds(vanish, few, args.batch, args.threads, flush=True)
    off = step_seconds(vanish, few, args.batch, args.threads, flush=False)
    print()
    print(f"4. subnormals (relu/normal:0.02, no BN; {share:.1%} of pre-activations subnormal at init): "
          f"step {on * 1e3:.1f} ms with flush-denormal, {off * 1e3:.1f} ms without -> {off / on:.2f}x")

    # every network whose ratio misses its goal is profiled (all of them with --profile): the issue's "or the
    # profile of the op that holds one back"
    ens_label = f"selu/lecun_normal x {S} seeds"
    missed = [label for label, _ in CONFIGS if best[label, "fused"] / mm > (1.8 if "BN" in label else 1.5)]
    if ens / (S * single) > 0.6:
        missed.append(ens_label)
    if args.profile or missed:
        print()
        print("6. where a step's time goes (torch.profiler, self CPU time by kind of op; the profiler itself adds "
              "time per op, so compare shares, not totals)" + (f"; profiled because its goal is missed: "
                                                            f"{', '.join(missed)}" if missed else ""))
        kinds = list(PROFILE_KINDS) + ["other"]
        print(f"{'network':<26} {'ms/step':>8} " + " ".join(f"{k:>10}" for k in kinds) + "  held back most by")
        for label, spec in CONFIGS + [(ens_label, CONFIGS[2][1])]:
            if not args.profile and label not in missed:
                continue
            seeds = S if "seeds" in label else 1
            ms, shares = profile_step(spec, max(10, args.steps // 3), args.batch, args.threads, seeds)
            top = max((k for k in kinds if k != "matmul"), key=lambda k: shares.get(k, 0.0))
            print(f"{label:<26} {ms:>8.1f} " + " ".join(f"{shares.get(k, 0.0):>9.0%} " for k in kinds)
                  + f"  {top} ({shares.get(top, 0.0):.0%})")
            print(f"{'':<26} other: {shares.get('top other', '')}")

    if args.reproduce:
        t0 = time.perf_counter()
        summary = reproduce(dataset="mnist-5k", out_dir=os.path.join(args.reproduce, "seeds5"), resume=False,
                            threads=args.threads, seeds=5)
        together = time.perf_counter() - t0
        t0 = time.perf_counter()
        for s in range(5):
            reproduce(dataset="mnist-5k", out_dir=os.path.join(args.reproduce, f"seed{s}"), resume=False,
                      threads=args.threads, seed=s)
        apart = time.perf_counter() - t0
        print()
        print(f"5. reproduce on mnist-5k (all {len(summary)} presets, 3 epochs, lr 1e-3): 5 seeds together "
              f"{together:.1f} s, 5 single-seed reproductions {apart:.1f} s -> {together / apart:.2f}x")


if __name__ == "__main__":
    main()
