import sys, time, math
from propagate.lr_limit import predict_max_lr
from propagate.data import load_dataset
from propagate.spec import NetworkSpec
from propagate.train import TrainOptions
ds = load_dataset("mnist-5k")
act, init, bn = sys.argv[1], sys.argv[2], sys.argv[3] == "bn"
for what, vals in (("width", [64, 128, 256, 512]), ("depth", [6, 12, 25])):
    for v in vals:
        n, L = (v, 51) if what == "width" else (256, v + 1)
        spec = NetworkSpec.stack(L, n, input_dim=784, first_width=512, activation=act, init=init, batchnorm=bn, out_features=10)
        t = time.time()
        r = predict_max_lr(spec, ds, TrainOptions(threads=1), seeds=(0, 1))
        s = r.summary
        print(what, v, f"{s['max_lr_predicted']:.3e}", f"[{s['max_lr_predicted_ci_low']:.2e}, {s['max_lr_predicted_ci_high']:.2e}]", f"{time.time()-t:.0f}s", flush=True)
