"""Training speed of the seed's 52-layer network, measured against the matmul roofline of the same machine.

Prints, for the seed network (784 -> 512 -> 50 x 256 -> 10) with and without BN:

- samples/s of ``propagate.train.train`` on random 28x28 images (a few hundred
  steps of batch 128, the seed's RMSprop), and the implied time of one full
  MNIST epoch (60,000 images);
- the time the network's matmul FLOPs would take at the matmul throughput
  measured in the same run (``torch.mm``/``addmm`` on exactly the training
  step's shapes: forward ``x W^T``, backward ``g W`` and ``g^T x``, i.e. 3x the
  forward FLOPs, 2 FLOPs per multiply-add), and the ratio measured / matmul-only
  (goal: within 2x);
- the effect of flushing subnormal floats to zero on a network whose signal
  vanishes into the subnormal range (ReLU + RandomUniform(-0.05, 0.05), no BN).

With ``--reproduce DIR`` it also times a full ``reproduce`` (all presets,
3 epochs, lr 1e-3) on mnist-5k into DIR.

    python benchmarks/bench_train.py [--steps 200] [--threads N] [--reproduce /tmp/reproduce-5k]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from propagate.data import Dataset
from propagate.spec import NetworkSpec
from propagate.train import TrainOptions, reproduce, train

MNIST_EPOCH = 60_000


def random_dataset(n_train: int, n_test: int = 256, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n_train + n_test, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 10, size=n_train + n_test).astype(np.int64)
    return Dataset("random", x[:n_train], y[:n_train], x[n_train:], y[n_train:], "random uint8 images")


def matmul_flops(spec: NetworkSpec, batch: int) -> float:
    """Forward + backward matmul FLOPs of one training step (3 x forward, 2 FLOPs per multiply-add)."""
    dims = list(spec.widths) + ([spec.out_features] if spec.out_features else [])
    forward = sum(2.0 * batch * a * b for a, b in zip(dims[:-1], dims[1:]))
    return 3.0 * forward


def matmul_seconds_per_step(spec: NetworkSpec, batch: int, repeats: int) -> float:
    """Time of the step's matmuls alone: forward addmm, backward input and weight gradients, per layer."""
    dims = list(spec.widths) + ([spec.out_features] if spec.out_features else [])
    shapes = list(zip(dims[:-1], dims[1:]))
    ops = []
    for fan_in, fan_out in shapes:
        x = torch.randn(batch, fan_in)
        w = torch.randn(fan_out, fan_in)
        b = torch.randn(fan_out)
        g = torch.randn(batch, fan_out)
        ops.append((x, w, b, g))

    def step():
        for x, w, b, g in ops:
            torch.addmm(b, x, w.t())  # forward
            torch.mm(g, w)  # grad wrt input
            torch.mm(g.t(), x)  # grad wrt weight

    for _ in range(5):
        step()
    t0 = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - t0) / repeats


def time_training(spec: NetworkSpec, steps: int, batch: int, threads: int, flush: bool = True) -> float:
    """Seconds per optimization step of ``train`` (epoch time / steps), after a warm-up epoch."""
    ds = random_dataset(steps * batch)
    opts = TrainOptions(epochs=2, batch_size=batch, probe_size=8, train_eval_size=8, threads=threads,
                        flush_denormal=flush)
    res = train(spec, opts, ds)
    return float(res.history["seconds"].iloc[-1]) / steps  # epoch 2: warm caches and allocator


def subnormal_share(spec: NetworkSpec) -> float:
    """Share of nonzero float32 pre-activations below the smallest normal number, at initialization."""
    from propagate.spec import build_model

    model = build_model(spec, seed=0)
    tiny = torch.finfo(torch.float32).tiny
    with torch.no_grad():
        _, pre = model(torch.rand(256, spec.input_dim), record=True)
    h = torch.cat([p.flatten() for p in pre])
    return float(((h != 0) & (h.abs() < tiny)).double().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200, help="training steps per timed epoch (default 200)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--reproduce", metavar="DIR", help="also time a full reproduce on mnist-5k into DIR")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, {args.steps} steps per timing")
    mm = matmul_seconds_per_step(NetworkSpec.seed(), args.batch, repeats=max(20, args.steps // 4))
    flops = matmul_flops(NetworkSpec.seed(), args.batch)
    print(f"matmul throughput on the step's shapes: {flops / mm / 1e9:.1f} GFLOP/s "
          f"({flops / 1e9:.2f} GFLOP per step of batch {args.batch})")
    print()
    print(f"{'network':<34} {'samples/s':>10} {'epoch (60k) s':>14} {'matmul-only s':>14} {'ratio':>6}")
    for label, spec in [
        ("seed, no BN (relu/glorot_uniform)", NetworkSpec.seed("relu", "glorot_uniform", False)),
        ("seed + BN (relu/glorot_uniform)", NetworkSpec.seed("relu", "glorot_uniform", True)),
        ("seed, no BN (selu/lecun_normal)", NetworkSpec.seed("selu", "lecun_normal", False)),
        ("seed + BN (selu/lecun_uniform)", NetworkSpec.seed("selu", "lecun_uniform", True)),
    ]:
        step = time_training(spec, args.steps, args.batch, args.threads)
        epoch = step * MNIST_EPOCH / args.batch
        ideal = mm * MNIST_EPOCH / args.batch
        print(f"{label:<34} {args.batch / step:>10.0f} {epoch:>14.1f} {ideal:>14.1f} {epoch / ideal:>6.2f}")

    print()
    # sigma_w^2 = 0.02 with ReLU: the signal's variance shrinks 100x per layer, so the upper
    # layers' pre-activations (and their gradients) fall into float32's subnormal range.
    vanish = NetworkSpec.seed("relu", "normal:0.02", False)
    share = subnormal_share(vanish)
    few = max(10, args.steps // 10)  # without flushing this network crawls: time only a few steps
    on = time_training(vanish, few, args.batch, args.threads, flush=True)
    off = time_training(vanish, few, args.batch, args.threads, flush=False)
    print(f"subnormals (relu/normal:0.02, no BN; {share:.1%} of pre-activations subnormal at init): "
          f"step {on * 1e3:.1f} ms with flush-denormal, {off * 1e3:.1f} ms without -> {off / on:.2f}x")

    if args.reproduce:
        t0 = time.perf_counter()
        summary = reproduce(dataset="mnist-5k", out_dir=args.reproduce, resume=False, threads=args.threads)
        print()
        print(f"full reproduce on mnist-5k (all {len(summary)} presets, 3 epochs, lr 1e-3): "
              f"{time.perf_counter() - t0:.1f} s, of which training epochs {summary['seconds'].sum():.1f} s")


if __name__ == "__main__":
    main()
