"""Pilot: measured 1-epoch outcomes on mnist-5k over an lr grid, and the K-step lookahead curves, base cell."""
import sys, json, time
import numpy as np, torch, pandas as pd
sys.path.insert(0, "/work/wt/lr/scratch")
from lookahead import lookahead
from propagate.data import load_dataset
from propagate.spec import NetworkSpec
from propagate.train import TrainOptions
from propagate.trainability import train_ensemble
torch.set_num_threads(1)
CONFIGS = {"selu-lecun-normal": ("selu", "lecun_normal", False), "selu-bn-lecun-uniform": ("selu", "lecun_uniform", True),
           "tanh-glorot-uniform": ("tanh", "glorot_uniform", False), "relu-he-normal": ("relu", "he_normal", False)}
ds = load_dataset("mnist-5k")
lrs = list(np.geomspace(1e-5, 1e-1, 25))
what = sys.argv[1]
rows = []
for name, (a, i, bn) in CONFIGS.items():
    spec = NetworkSpec.seed(a, i, bn)
    t = time.time()
    if what == "measure":
        for lr in lrs:
            res = train_ensemble(spec, TrainOptions(lr=float(lr), epochs=1, threads=1, probe_size=64, train_eval_size=1000), [0, 1, 2], ds)
            for r in res:
                rows.append({"config": name, "lr": lr, **r})
            print(name, f"{lr:.2e}", [round(r["acc"], 3) for r in res], [round(r["train_eval_acc"], 3) for r in res], flush=True)
    else:
        members, L0, LK, hist = lookahead(spec, ds, lrs, [0, 1, 2], 10)
        for k, (s, lr) in enumerate(members):
            rows.append({"config": name, "lr": lr, "seed": s, "L0": float(L0[k]), "LK": float(LK[k]),
                         "batch_losses": json.dumps(hist[:, k].tolist())})
    print(name, "done", time.time() - t, flush=True)
pd.DataFrame(rows).to_csv(f"/work/wt/lr/scratch/pilot_{what}.csv", index=False)
