"""``propagate gain``: the variance-preserving weight scale of an activation, beside torch's gain."""

from __future__ import annotations

import argparse

from propagate.commands._output import add_output_arguments, check_outputs, emit, to_stdout
from propagate.io import run_metadata

NAME = "gain"
HELP = "variance-preserving sigma_w^2 (q* = 1 at sigma_b^2 = 0) beside torch.nn.init.calculate_gain"
DESCRIPTION = """\
For each activation: sigma_w2 = 1 / E[phi(z)^2], z ~ N(0, 1), the weight
variance scale (Var(w) = sigma_w2 / fan_in) that keeps the pre-activation
second moment at q* = 1 with zero biases; gain = sqrt(sigma_w2) is the same
thing as a standard-deviation multiplier, in the sense of
torch.nn.init.calculate_gain (whose sigma_w2 is gain^2). chi_1 is sigma_w2
E[phi'(z)^2] there: the per-layer factor of squared gradient norms.

torch's gain for 'selu' is 3/4 (sigma_w2 = 0.5625): PyTorch chose it for
gradient flow, not for the forward fixed point, and its docs say to use
'linear' (gain 1, LeCun) for self-normalizing networks; sigma_w2 = 1 is what
makes (mean 0, variance 1) the fixed point. torch's 'tanh' 5/3 is a heuristic,
not 1/E[tanh(z)^2].

examples:
  propagate gain --activation selu
  propagate gain                      (every built-in activation)
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--activation", "-a", action="append", metavar="NAME",
                        help="activation (repeatable; default: every built-in activation)")
    add_output_arguments(parser, what="the rows (one per activation)")


def gain_rows(names):
    """One dict per activation: sigma_w2, gain, chi_1, torch's gain and gain^2."""
    import math

    from propagate.activations import get_activation
    from propagate.theory import grad_moment, variance_preserving_gain

    rows = []
    for name in names:
        act = get_activation(name)
        sw2 = variance_preserving_gain(act)
        row = {"activation": act.name, "sigma_w2": sw2, "gain": math.sqrt(sw2) if sw2 == sw2 else math.nan,
               "chi_1": sw2 * grad_moment(act, 1.0), "torch_gain": math.nan, "torch_sigma_w2": math.nan}
        if act.torch_gain is not None:
            import torch

            tname, param = act.torch_gain
            g = torch.nn.init.calculate_gain(tname, param)
            row["torch_gain"], row["torch_sigma_w2"] = float(g), float(g) ** 2
        rows.append(row)
    return rows


def run(args: argparse.Namespace) -> int:
    import pandas as pd
    from tabulate import tabulate

    from propagate.activations import list_activations

    check_outputs(args)
    rows = gain_rows(args.activation or [n for n in list_activations()])
    meta = run_metadata()
    if to_stdout(args):
        emit(args, pd.DataFrame(rows), meta, {"meta": meta, "rows": rows})
        return 0
    cols = ["activation", "sigma_w2", "gain", "chi_1", "torch_gain", "torch_sigma_w2"]

    def cell(v):
        if isinstance(v, float):
            return "-" if v != v else f"{v:.6g}"
        return v

    table = [[cell(r[c]) for c in cols] for r in rows]
    print("variance-preserving init (q* = 1 at sigma_b2 = 0): sigma_w2 = fan_in Var(w) = 1/E[phi(z)^2], gain = sqrt(sigma_w2)")
    print(tabulate(table, headers=["activation", "sigma_w2", "gain", "chi_1", "torch gain", "torch gain^2"],
                   disable_numparse=True, colalign=("left",) + ("right",) * 5))
    if any(r["activation"] == "selu" for r in rows):
        print("note: torch's selu gain 3/4 targets gradient flow, not the (0, 1) fixed point; "
              "PyTorch's docs recommend 'linear' (sigma_w2 = 1, LeCun) for self-normalizing networks.")
    for path in emit(args, pd.DataFrame(rows), meta, {"meta": meta, "rows": rows}):
        print(f"wrote {path}")
    return 0
