"""Speed of ``propagate.simulate`` against the bare matmul chain of the same shapes.

Prints, measured in this one process (interleaved repeats, best of each):

- the simulator (all statistics, gradient probe, no theory) vs the bare chain
  (batched matmuls + activation only, written plainly) for
  50 layers x 256 wide x 10,000 samples x 8 seeds, selu + lecun_normal;
- the same against a tuned bare chain (preallocated output, in-place
  activation); the goal is a ratio <= 1.3 to this one;
- peak resident memory of each, measured in fresh subprocesses (ru_maxrss; goal:
  the simulator's within 1.6x the bare chain's);
- the cost of subnormal floats: a vanishing relu chain run with and without
  ``torch.set_flush_denormal(True)``;
- with ``--profile``, the simulator's time by kind of op (matmul, activation,
  the moments' reductions, weight and input draws, other).

The simulator measures each layer in its activation's pass
(:func:`propagate.stats.measure_through`): for the ELU and ReLU families a C
kernel (:mod:`propagate.native`, compiled on first use) applies the
activation and takes the float64 sums and sums of squares before and after it
in one read and one write of each block; otherwise torch's pass (a sum, a
norm, the activation, a sum, a norm, a block at a time in cache). Measured on
the idle 2-core development machine, best of 3 interleaved runs: simulate at
1.08x the tuned chain at two threads and 1.04x at one, against 1.27x and
1.23x with torch's pass (printed below as "torch's pass"). The subnormal line
runs at the default threads: until the flush reached every thread of torch's
pool (:func:`propagate.native.set_flush_all_threads`), flushing at two threads
saved nothing (17.3 s on, 17.7 s off; now 2.1 s on).

Usage: ``python benchmarks/bench_simulate.py [--quick] [--threads 1] [--clock cpu] [--repeats 3] [--profile]``
(``--quick``: smaller shapes; ``--clock cpu``: the process's CPU time instead of
the wall clock, for a busy machine with ``--threads 1``: it leaves out the time
other processes hold the core, not their effect on the caches).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

DEPTH, WIDTH, SAMPLES, SEEDS = 50, 256, 10_000, 8


def bare_chain(S, N, n, depth, act="selu", init="lecun_normal", seed=0, tuned=False):
    """Batched matmuls + activation only; weights drawn as the simulator draws them (inside the timing)."""
    import torch

    from propagate.inits import get_init
    from propagate.simulate import seed_stream

    gens = [torch.Generator().manual_seed(seed_stream(seed, s)) for s in range(S)]
    fn = torch.selu if act == "selu" else torch.relu
    fn_ = torch.selu_ if act == "selu" else torch.relu_
    x = torch.stack([torch.randn(N, n, generator=g) for g in gens])
    ini = get_init(init)
    if tuned:
        bufs = [torch.empty(S, N, n), torch.empty(S, N, n)]
    for l in range(depth):
        W = torch.stack([ini.sample(n, n, generator=g, dtype=torch.float32) for g in gens])
        if tuned:
            h = bufs[l % 2]
            torch.bmm(x, W.transpose(1, 2), out=h)
            x = fn_(h)
        else:
            x = fn(torch.bmm(x, W.transpose(1, 2)))
    return float(x[0, 0, 0])


def run_sim(S, N, n, depth, act="selu", init="lecun_normal", flush=True):
    from propagate.simulate import simulate
    from propagate.spec import NetworkSpec

    spec = NetworkSpec.stack(depth, n, input_dim=n, first_width=None, activation=act, init=init)
    return simulate(spec, samples=N, seeds=S, theory=False, flush_denormal=flush)


#: The clock of every timing: wall time, or the process's CPU time (``--clock cpu``).
clock = time.perf_counter


def _timed(fn, *a, **k):
    t = clock()
    out = fn(*a, **k)
    return clock() - t, out


def _child(kind, S, N, n, depth):
    """Run one thing in this (fresh) process and print its peak RSS in MiB."""
    import resource

    import torch  # noqa: F401  (baseline RSS includes torch itself)

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if kind == "sim":
        run_sim(S, N, n, depth)
    elif kind == "bare":
        bare_chain(S, N, n, depth)
    else:
        import propagate.simulate  # noqa: F401
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_mib": peak, "torch_import_mib": base}))


#: Kinds of op in the ``--profile`` table, by torch op name prefix; "other" is everything else (the statistics'
#: small reductions and copies, the per-sample caches, Python).
PROFILE_KINDS = {
    "matmul": ("aten::bmm", "aten::matmul", "aten::mm"),
    "activation": ("aten::elu_", "aten::clamp_min_", "aten::relu_", "aten::tanh_"),
    "moments": ("aten::sum", "aten::linalg_vector_norm", "aten::aminmax"),
    "compiled pass": ("propagate::act_moments",),
    "draws": ("aten::normal_", "aten::uniform_", "aten::erfinv_", "aten::cat", "aten::stack"),
}


def profile_sim(S, N, n, depth):
    """Share of the simulator's self CPU time by :data:`PROFILE_KINDS` (torch.profiler, one run)."""
    from torch.profiler import ProfilerActivity, profile

    run_sim(S, N, n, min(depth, 3))  # warm-up: first calls, lazy imports
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run_sim(S, N, n, depth)
    by_kind: dict = {}
    for ev in prof.key_averages():
        kind = next((k for k, names in PROFILE_KINDS.items() if any(ev.key.startswith(nm) for nm in names)), "other")
        by_kind[kind] = by_kind.get(kind, 0.0) + ev.self_cpu_time_total
    total = sum(by_kind.values())
    return {k: v / total for k, v in by_kind.items()}


def _peak(kind, S, N, n, depth):
    import torch

    cmd = [sys.executable, __file__, "--threads", str(torch.get_num_threads()), "--child", kind, *map(str, (S, N, n, depth))]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller shapes (a smoke run)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="wall time (default) or process CPU time (for a busy machine, with --threads 1)")
    ap.add_argument("--profile", action="store_true",
                    help="also print where the simulator's time goes (torch.profiler, 10 layers of the same shapes)")
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    global clock
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        _child(args.child[0], *map(int, args.child[1:]))
        return 0
    S, N, n, depth = (SEEDS, SAMPLES, WIDTH, DEPTH) if not args.quick else (4, 2000, 128, 20)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.clock} clock; "
          f"{depth} layers x {n} wide x {N} samples x {S} seeds (selu + lecun_normal); "
          f"load average before: {os.getloadavg()[0]:.1f}")

    # peak memory first: Linux carries ru_maxrss across fork+exec, so the children must be
    # started while this process is still small
    pk_none = _peak("none", S, N, n, depth)
    pk_sim, pk_bare = _peak("sim", S, N, n, depth), _peak("bare", S, N, n, depth)

    from propagate import native

    print(f"the activation's pass: {native.status()}")
    bare, tuned, sim, sim_torch = [], [], [], []
    for _ in range(args.repeats):  # interleaved so load changes hit all four alike
        bare.append(_timed(bare_chain, S, N, n, depth)[0])
        tuned.append(_timed(bare_chain, S, N, n, depth, tuned=True)[0])
        sim.append(_timed(run_sim, S, N, n, depth)[0])
        if native.available():  # the same simulation with torch's pass (a machine without a C compiler)
            saved = dict(native._state)
            native._state.update(fn=None, why="off")
            try:
                sim_torch.append(_timed(run_sim, S, N, n, depth)[0])
            finally:
                native._state.update(saved)
    b, t, s = min(bare), min(tuned), min(sim)
    print(f"bare chain (bmm + activation)      {b:7.2f} s  (runs: {', '.join(f'{v:.2f}' for v in bare)})")
    print(f"tuned bare chain (out=, in-place)  {t:7.2f} s  (runs: {', '.join(f'{v:.2f}' for v in tuned)})")
    print(f"simulate (all statistics + grads)  {s:7.2f} s  (runs: {', '.join(f'{v:.2f}' for v in sim)})")
    if sim_torch:
        print(f"simulate, torch's pass (no kernel) {min(sim_torch):7.2f} s  "
              f"(runs: {', '.join(f'{v:.2f}' for v in sim_torch)}; ratio to the tuned chain {min(sim_torch) / t:.2f})")
    print(f"ratio simulate / bare chain        {s / b:7.2f}")
    print(f"ratio simulate / tuned bare chain  {s / t:7.2f}   (goal <= 1.3)")
    print(f"load average after timing: {os.getloadavg()[0]:.1f} (other processes slow 2-thread runs unevenly)")
    if args.profile:
        shares = profile_sim(S, N, n, min(depth, 10))
        kinds = list(PROFILE_KINDS) + ["other"]
        chain = sum(shares.get(k, 0.0) for k in ("matmul", "activation", "draws"))
        print("where simulate's time goes (torch.profiler, self CPU time by kind of op): "
              + ", ".join(f"{k} {shares.get(k, 0.0):.0%}" for k in kinds)
              + f"; the chain's own work (matmul, activation, draws) is {chain:.0%} of it, i.e. a ratio of "
              f"{1 / chain:.2f} by this count")

    act_mib = S * N * n * 4 / 2**20
    print(f"peak RSS: simulate {pk_sim['peak_mib']:.0f} MiB, bare chain {pk_bare['peak_mib']:.0f} MiB "
          f"(ratio {pk_sim['peak_mib'] / pk_bare['peak_mib']:.2f}, goal <= 1.6), "
          f"python + torch + propagate imported {pk_none['peak_mib']:.0f} MiB "
          f"(one (S, N, n) float32 tensor = {act_mib:.0f} MiB)")

    # subnormals: relu with sigma_w^2 = 0.02 shrinks q by 100x per layer; from ~layer 38 the
    # float32 values are subnormal (below 1.18e-38)
    dd, dN = (50, N // 2) if not args.quick else (50, 1000)
    on, off = [], []
    for _ in range(2):
        t, r_on = _timed(run_sim, S, dN, n, dd, act="relu", init="normal:0.02", flush=True)
        on.append(t)
        off.append(_timed(run_sim, S, dN, n, dd, act="relu", init="normal:0.02", flush=False)[0])
    flush_on, flush_off = min(on), min(off)
    print(f"subnormals (relu, normal:0.02, {dd} layers, {dN} samples): flush on {flush_on:.2f} s, "
          f"off {flush_off:.2f} s ({flush_off / flush_on:.1f}x); subnormal layers "
          f"{r_on.flushed['subnormal_layers'][:1]}..{r_on.flushed['subnormal_layers'][-1:]}, "
          f"mattered={r_on.flushed['mattered']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
