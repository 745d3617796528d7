import pandas as pd, numpy as np, sys
la = pd.read_csv("/work/wt/lr/scratch/pilot_lookahead.csv") if len(sys.argv) < 2 else None
la["ratio"] = la.LK / la.L0
for cfg, d in la.groupby("config"):
    print(cfg)
    piv = d.pivot(index="lr", columns="seed", values="ratio")
    print(piv.round(3).to_string())
