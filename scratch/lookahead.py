"""Prototype: K-step lookahead of the real optimizer at many learning rates at once (members = seeds x lrs)."""
import math, sys, time, argparse
import numpy as np, torch, torch.nn.functional as F
from propagate.data import load_dataset
from propagate.spec import build_model, NetworkSpec
from propagate.presets import get_preset
from propagate.train import TrainOptions, _make_optimizer, _shuffle_seed

def lookahead(spec, ds, lrs, seeds, K, opt_name="rmsprop", rho=0.9, bs=128, probe_n=512, warmup=0):
    xtr, ytr = ds.arrays("train")
    xtr = torch.from_numpy(xtr); ytr = torch.from_numpy(ytr).long()
    members = [(s, lr) for s in seeds for lr in lrs]
    S = len(members)
    model = build_model(spec, seeds=[s for s, _ in members])
    opts = TrainOptions(optimizer=opt_name, lr=1.0, rho=rho, batch_size=bs)
    opt = _make_optimizer(model.parameters(), opts)
    lr_t = torch.tensor([lr for _, lr in members])
    orders = []
    for s, _ in members:
        g = torch.Generator(); g.manual_seed(_shuffle_seed(s, 1)); orders.append(torch.randperm(len(ytr), generator=g))
    order = torch.stack(orders)
    px, py = xtr[:probe_n], ytr[:probe_n]
    def probe_loss():
        with torch.no_grad():
            model.train()
            out = model(px)
            return F.cross_entropy(out.reshape(S * probe_n, -1), py.repeat(S), reduction="none").view(S, probe_n).mean(1)
    L0 = probe_loss()
    hist = []
    model.train()
    for t in range(K):
        idx = order[:, t * bs:(t + 1) * bs]
        xb, yb = xtr[idx], ytr[idx]
        out = model(xb)
        per = F.cross_entropy(out.reshape(-1, out.shape[-1]), yb.reshape(-1), reduction="none").view(S, -1).mean(1)
        hist.append(per.detach())
        opt.zero_grad(set_to_none=True)
        per.sum().backward()
        before = [p.detach().clone() for p in model.parameters()]
        opt.step()
        scale = lr_t * (min(1.0, (t + 1) / warmup) if warmup else 1.0)
        with torch.no_grad():
            for p, b in zip(model.parameters(), before):
                d = p - b
                p.copy_(b + d * scale.view(-1, *([1] * (p.dim() - 1))))
    LK = probe_loss()
    return members, L0, LK, torch.stack(hist)

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("preset"); ap.add_argument("--K", type=int, default=10); ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--lrs", default="1e-5:1e-2:13"); ap.add_argument("--rho", type=float, default=0.9)
    a = ap.parse_args()
    torch.set_num_threads(1)
    lo, hi, n = a.lrs.split(":"); lrs = list(np.geomspace(float(lo), float(hi), int(n)))
    ds = load_dataset("mnist-5k")
    spec = get_preset(a.preset).spec()
    t = time.time()
    members, L0, LK, hist = lookahead(spec, ds, lrs, list(range(a.seeds)), a.K, rho=a.rho)
    print(f"{a.preset} K={a.K} time {time.time()-t:.1f}s")
    for i, (s, lr) in enumerate(members):
        print(f"seed {s} lr {lr:.2e}  L0 {L0[i]:.3f}  LK {LK[i]:.3f}  ratio {LK[i]/L0[i]:.3f}  batch losses {' '.join(f'{v:.2f}' for v in hist[:, i].tolist())}")
