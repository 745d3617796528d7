"""Cost of ``propagate.LayerStats`` inside a training loop: time per step with and without it, in one run.

The lecture demo's network (784 -> 512 -> 50 x 256 -> 10, SELU, lecun_normal
weights as ``nn.Sequential``), RMSprop, batches of 128 random inputs. Blocks of
``--steps`` training steps alternate between the bare loop and the same loop
inside ``LayerStats(model, every=--every)`` (so each block records
``steps / every`` steps, the cost spread as in a real run); each kind's time per
step is the median over ``--repeats`` blocks; the ratio printed first is the
median over the interleaved pairs (bare, hooked) of their ratio, which a
machine whose load drifts disturbs least, then that of the fastest blocks. A third kind of block records
every step: its extra time is the cost of one recorded step, which predicts
the ratio ``1 + cost / (every x step time)`` independently of the block noise.
The goal is a ratio <= 1.05 at ``every=50``. Measure on an idle machine;
``--threads 1`` keeps a busy one fair.

Usage: ``python benchmarks/bench_layerstats.py [--threads 1] [--every 50] [--steps 100] [--repeats 9]``
"""

from __future__ import annotations

import argparse
import statistics
import time


def demo_mlp():
    import torch.nn as nn

    widths = [784, 512] + [256] * 50
    layers = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b), nn.SELU()]
    layers.append(nn.Linear(256, 10))
    for m in layers:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=m.in_features ** -0.5)
            nn.init.zeros_(m.bias)
    return nn.Sequential(*layers)


def run_block(model, opt, batches, stats_every=None) -> float:
    """Seconds per training step over ``batches``, inside ``LayerStats`` when ``stats_every`` is set."""
    import contextlib

    import torch.nn.functional as F

    from propagate import LayerStats

    ctx = LayerStats(model, every=stats_every) if stats_every else contextlib.nullcontext()
    t0 = time.perf_counter()
    with ctx:
        for x, y in batches:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()
    return (time.perf_counter() - t0) / len(batches)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--every", type=int, default=50)
    p.add_argument("--steps", type=int, default=100, help="steps per block (a multiple of --every)")
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--batch", type=int, default=128)
    args = p.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = demo_mlp()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.rand(args.batch, 784, generator=g), torch.randint(0, 10, (args.batch,), generator=g))
               for _ in range(args.steps)]
    run_block(model, opt, batches[:10])  # warm-up (allocator, kernels)
    bare, hooked, every_step = [], [], []
    for _ in range(args.repeats):  # interleaved: each pair of blocks sees the same machine load
        bare.append(run_block(model, opt, batches))
        hooked.append(run_block(model, opt, batches, args.every))
        every_step.append(run_block(model, opt, batches[:10], 1))
    b, h, e = statistics.median(bare), statistics.median(hooked), statistics.median(every_step)
    pairs = statistics.median(hk / br for hk, br in zip(hooked, bare))
    print(f"demo MLP 784-512-50x256-10 SELU, batch {args.batch}, {torch.get_num_threads()} thread(s), "
          f"{args.repeats} x {args.steps} steps each")
    print(f"bare loop:                   {1e3 * b:8.2f} ms/step (blocks: {', '.join(f'{1e3 * t:.1f}' for t in bare)})")
    print(f"with LayerStats(every={args.every}): {1e3 * h:8.2f} ms/step (blocks: {', '.join(f'{1e3 * t:.1f}' for t in hooked)})")
    print(f"every step recorded:         {1e3 * e:8.2f} ms/step (cost of one recorded step: {1e3 * (e - b):.1f} ms)")
    print(f"ratio {pairs:.3f} (median over {args.repeats} interleaved pairs of blocks), {min(hooked) / min(bare):.3f} "
          f"(fastest blocks); from the recorded step's cost: {1 + (e - b) / (args.every * b):.3f} (goal <= 1.05)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
