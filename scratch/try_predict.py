import sys, time, torch
from propagate.lr_limit import predict_max_lr, LookaheadOptions
from propagate.data import load_dataset
from propagate.presets import get_preset
from propagate.train import TrainOptions
ds = load_dataset("mnist-5k")
name = sys.argv[1]; kw = eval("dict(" + (sys.argv[2] if len(sys.argv) > 2 else "") + ")")
t = time.time()
res = predict_max_lr(get_preset(name).spec(), ds, TrainOptions(threads=1, **kw.pop("to", {})), seeds=(0, 1, 2), progress=lambda m: print(m, file=sys.stderr), **kw)
print(name, kw, f"{time.time()-t:.1f}s")
print(res.per_seed.to_string()); print(res.summary)
