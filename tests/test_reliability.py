"""No traceback, no lost or mixed results (issue 15).

1. A table of bad inputs over every command: each must end with exit status 2
   and exactly one line on stderr, ``propagate: error: ...``, and no traceback.
   They run in-process through ``propagate.cli.main`` (a subprocess costs about
   0.5 s); a few run as real subprocesses for the real exit status.
2. One test per data-safety rule: a foreign folder is kept, a resumption on
   other data is refused, a second writer is refused, a lock left by a dead
   process is taken over.
3. The numerics of extreme inputs and strict JSON.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from propagate.cli import main
from propagate.data import idx_bytes

# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    """Paths the bad inputs refer to: an existing file, a folder of the user's, broken datasets."""
    root = tmp_path_factory.mktemp("places")
    (root / "afile.txt").write_text("the user's file\n")
    (root / "userdir").mkdir()
    (root / "userdir" / "notes.txt").write_text("the user's notes\n")
    (root / "readonly").mkdir()
    (root / "readonly" / "keep.txt").write_text("kept\n")

    def idx_folder(name, n_train=20, n_test=10, shape=(28, 28), labels_hi=10):
        folder = root / name
        folder.mkdir()
        rng = np.random.default_rng(0)
        arrays = {
            "train-images-idx3-ubyte.gz": rng.integers(0, 256, (n_train, *shape), dtype=np.uint8),
            "train-labels-idx1-ubyte.gz": np.linspace(0, labels_hi - 1, n_train).astype(np.uint8),
            "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (n_test, *shape), dtype=np.uint8),
            "t10k-labels-idx1-ubyte.gz": (np.arange(n_test) % labels_hi).astype(np.uint8),
        }
        for fname, a in arrays.items():
            (folder / fname).write_bytes(gzip.compress(idx_bytes(a), mtime=0))
        return folder

    idx_folder("empty", n_train=0)
    idx_folder("labels200", labels_hi=200)
    idx_folder("small", shape=(10, 10))
    idx_folder("good")
    _user_run_folders(root)
    return root


def _user_run_folders(root: Path) -> None:
    """Folders a user may point --out at: their own .lock, their own identity.json, a run of another kind."""
    from propagate.io import atomic_directory
    from propagate.runfolder import claim_folder

    (root / "lockdir").mkdir()
    (root / "lockdir" / ".lock").write_text("my own lock file\n")
    (root / "identitydir").mkdir()
    (root / "identitydir" / "identity.json").write_text('{"experiment": "mine"}\n')
    (root / "emptyid").mkdir()
    (root / "emptyid" / "identity.json").write_text('{"identity": {"kind": "train"}}\n')  # no note: not ours
    claim_folder(root / "sweepdir", "sweep", {"kind": "sweep"}).release()  # a sweep's folder
    claim_folder(root / "traindir", "train", {"kind": "train", "config": {"seed": 0}}).release()
    with atomic_directory(root / "reportdir") as tmp:  # a report propagate made ...
        (tmp / "README.md").write_text("# report\n")
    (root / "reportdir" / "my-notes.txt").write_text("added by the user\n")  # ... and a file the user added
    (root / "sweep.toml").write_text('lens = "simulate"\n[fixed]\ndepth = 2\nsamples = 8\nseeds = 1\n'
                                     '[grid]\nactivation = ["relu"]\n')
    _round_2_files(root)
    (root / "readonly").chmod(0o555)


#: The train row whose folder holds a damaged checkpoint (its identity matches, so only the checkpoint is wrong).
BADCKPT_TRAIN = "train --dataset mnist-5k --depth 1 --width 4 --first-width 4 --epochs 1"


def _round_2_files(root: Path) -> None:
    """Sweep files with a list or table for a lens, a huge range and a huge grid; run folders that must be refused."""
    from propagate.cli import build_parser
    from propagate.commands.train import spec_and_options
    from propagate.data import load_dataset
    from propagate.runfolder import claim, claim_folder
    from propagate.runstore import CHECKPOINT_FILE, run_identity

    grid = '[fixed]\ndepth = 2\nsamples = 8\nseeds = 1\n[grid]\nactivation = ["relu"]\n'
    (root / "lens-list.toml").write_text('lens = ["simulate"]\n' + grid)
    (root / "lens-table.toml").write_text('lens = {name = "simulate"}\n' + grid)
    (root / "range-huge.toml").write_text('lens = "simulate"\n[grid]\nsigma_b2 = "0:1:10000000000"\n')
    (root / "grid-huge.toml").write_text('lens = "simulate"\n[grid]\nsigma_b2 = "0:1:1000"\ndepth = "1:1000:1000"\n'
                                         'seed = "0:9:10"\n')
    _, spec, options = spec_and_options(build_parser().parse_args(BADCKPT_TRAIN.split()))
    claim(root / "badckpt", run_identity(spec, options, load_dataset("mnist-5k"))).release()
    (root / "badckpt" / CHECKPOINT_FILE).write_bytes(b"not a checkpoint")  # truncated, or another program's
    claim_folder(root / "otherrun", "trainability", {"kind": "trainability", "options": {"epochs": 99},
                                                     "dataset": None}).release()


def _sub(places, text: str) -> str:
    return text.replace("{T}", str(places))


# Each row: (id, argv with {T} standing for the fixture folder). All must end in exit 2 with one line.
BAD = [
    # --- the top level
    ("nosuch-command", "nosuch"),
    ("bad-version-flag", "--bogus"),
    # --- solve-selu
    ("selu-digits-0", "solve-selu --digits 0"),
    ("selu-digits-big", "solve-selu --digits 2001"),
    ("selu-digits-text", "solve-selu --digits many"),
    ("selu-var-0", "solve-selu --var 0"),
    ("selu-var-neg", "solve-selu --var -1"),
    ("selu-var-nan", "solve-selu --var nan"),
    ("selu-mean-inf", "solve-selu --mean inf"),
    ("selu-mean-text", "solve-selu --mean x"),
    ("selu-dropout-1", "solve-selu --dropout 1"),
    ("selu-dropout-neg", "solve-selu --dropout -0.1"),
    ("selu-grid-0", "solve-selu --stability --grid 0"),
    ("selu-grid-150", "solve-selu --stability --grid 150"),
    ("selu-grid-100000", "solve-selu --stability --grid 100000"),
    ("selu-samples-1", "solve-selu --check --samples 1"),
    ("selu-samples-0", "solve-selu --samples 0"),
    ("selu-samples-1e9", "solve-selu --check --samples 1000000000"),
    ("selu-nu-range-neg", "solve-selu --stability --nu-range -1,1"),
    ("selu-nu-range-reversed", "solve-selu --nu-range 1.5,0.8"),
    ("selu-tau-range-0", "solve-selu --tau-range 0,1"),
    ("selu-mu-range-one", "solve-selu --mu-range 1"),
    ("selu-mu-range-text", "solve-selu --mu-range a,b"),
    ("selu-omega-range-three", "solve-selu --omega-range 1,2,3"),
    ("selu-json-latex", "solve-selu --json --latex"),
    ("selu-seed-neg", "solve-selu --seed -1"),
    ("selu-unknown-flag", "solve-selu --bogus"),
    # --- derive
    ("derive-no-topic", "derive"),
    ("derive-unknown-topic", "derive nosuch"),
    ("derive-out-proc", "derive selu -o /proc/x.md"),
    ("derive-out-dir", "derive selu -o {T}/userdir"),
    ("derive-out-empty", "derive selu -o ''"),
    ("derive-out-dev-null", "derive selu -o /dev/null"),
    ("derive-out-under-file", "derive selu -o {T}/afile.txt/x.md"),
    ("derive-out-slash", "derive selu -o {T}/newdir/"),
    # --- theory
    ("theory-both-weights", "theory --sigma-w2 1 --init lecun_normal"),
    ("theory-sw2-0", "theory --sigma-w2 0"),
    ("theory-sw2-neg", "theory --sigma-w2 -1"),
    ("theory-sw2-nan", "theory --sigma-w2 nan"),
    ("theory-sw2-inf", "theory --sigma-w2 inf"),
    ("theory-sw2-text", "theory --sigma-w2 x"),
    ("theory-depth-0", "theory --sigma-w2 1 --depth 0"),
    ("theory-depth-1e9", "theory --sigma-w2 1 --depth 1000000000"),
    ("theory-depth-float", "theory --sigma-w2 1 --depth 2.5"),
    ("theory-width-0", "theory --sigma-w2 1 --width 0"),
    ("theory-sb2-neg", "theory --sigma-w2 1 --sigma-b2 -1"),
    ("theory-dropout-1", "theory --sigma-w2 1 --dropout 1"),
    ("theory-alpha-dropout", "theory --sigma-w2 1 --alpha-dropout 1.5"),
    ("theory-csv-proc", "theory --sigma-w2 1 --csv /proc/x.csv"),
    ("theory-csv-dir", "theory --sigma-w2 1 --csv {T}/userdir"),
    ("theory-csv-empty", "theory --sigma-w2 1 --csv ''"),
    ("theory-json-and-csv", "theory --sigma-w2 1 --json --csv -"),
    ("theory-rows-0", "theory --sigma-w2 1 --rows 0"),
    ("theory-input-var-neg", "theory --sigma-w2 1 --input-var -1"),
    ("theory-input-mean-nan", "theory --sigma-w2 1 --input-mean nan"),
    ("theory-activation-unknown", "theory --sigma-w2 1 --activation nosuch"),
    ("theory-init-unknown", "theory --init nosuch"),
    ("theory-tanh-sw2-1e301", "theory --activation tanh --sigma-w2 1e301 --depth 3"),
    ("theory-sigmoid-sw2-1e305", "theory --activation sigmoid --sigma-w2 1e305 --depth 3"),
    # --- critical
    ("critical-sb2-neg", "critical --sigma-b2 -1"),
    ("critical-sb2-range-huge", "critical --sigma-b2 0:1:100000000"),
    ("critical-sb2-range-work", "critical --sigma-b2 0:1:20000"),
    ("critical-sb2-range-0", "critical --sigma-b2 0:1:0"),
    ("critical-sb2-empty", "critical --sigma-b2 ''"),
    ("critical-sb2-commas", "critical --sigma-b2 ,,"),
    ("critical-sb2-text", "critical --sigma-b2 a"),
    ("critical-sb2-nan", "critical --sigma-b2 nan"),
    ("critical-csv-proc", "critical --csv /proc/x.csv"),
    ("critical-csv-dir", "critical --csv {T}/userdir"),
    ("critical-csv-under-file", "critical --csv {T}/afile.txt/x.csv"),
    ("critical-json-and-csv", "critical --json --csv -"),
    ("critical-activation-unknown", "critical --activation nosuch"),
    ("critical-activation-bad-param", "critical --activation leaky_relu:x"),
    # --- gain
    ("gain-activation-unknown", "gain --activation nosuch"),
    ("gain-unknown-flag", "gain --bogus"),
    # --- simulate
    ("sim-depth-0", "simulate --depth 0"),
    ("sim-depth-1e9", "simulate --depth 1000000000"),
    ("sim-width-0", "simulate --width 0"),
    ("sim-width-100000", "simulate --width 100000"),
    ("sim-samples-0", "simulate --inputs 0"),
    ("sim-seeds-0", "simulate --networks 0"),
    ("sim-seed-neg", "simulate --seed -1"),
    ("sim-dtype", "simulate --dtype float16"),
    ("sim-device", "simulate --device tpu"),
    ("sim-csv-proc", "simulate --csv /proc/x.csv"),
    ("sim-json-dir", "simulate --json {T}/userdir"),
    ("sim-plot-jpg", "simulate --plot x.jpg"),
    ("sim-plot-proc", "simulate --plot /proc/x.png"),
    ("sim-input-unknown", "simulate --dataset nosuch"),
    ("sim-input-mean-with-dataset", "simulate --dataset mnist-5k --input-mean 0"),
    ("sim-demo-shape-depth", "simulate --demo-shape --depth 3"),
    ("sim-activation-unknown", "simulate --activation nosuch --depth 2 --width 8 --inputs 8 --networks 2"),
    ("sim-init-unknown", "simulate --init nosuch --depth 2 --width 8 --inputs 8 --networks 2"),
    ("sim-bias-var-neg", "simulate --bias-var -1"),
    ("sim-dropout-1", "simulate --dropout 1"),
    ("sim-threads-0", "simulate --threads 0"),
    ("sim-memory", "simulate --depth 2 --width 30000 --inputs 1000000 --networks 1000"),
    # --- data
    ("data-no-action", "data"),
    ("data-info-no-name", "data info"),
    ("data-info-unknown", "data info nosuch"),
    ("data-fetch-unknown", "data fetch nosuch"),
    ("data-fetch-timeout-0", "data fetch mnist --timeout 0"),
    ("data-fetch-timeout-neg", "data fetch mnist --timeout -1"),
    ("data-fetch-dir-is-file", "data fetch mnist --data-dir {T}/afile.txt"),
    ("data-info-empty-split", "data info mnist --data-dir {T}/empty --no-verify"),
    ("data-info-labels-200", "data info mnist --data-dir {T}/labels200 --no-verify"),
    ("data-info-small-images", "data info mnist --data-dir {T}/small --no-verify"),
    ("data-info-json-labels-200", "data info mnist --data-dir {T}/labels200 --no-verify --json"),
    ("data-info-fashion-small", "data info fashion-mnist --data-dir {T}/small --no-verify"),
    # --- train (parse time and run start; no training)
    ("train-depth-0", "train --depth 0"),
    ("train-width-0", "train --width 0"),
    ("train-width-100000", "train --width 100000"),
    ("train-width-memory", "train --width 20000 --dataset mnist-5k"),
    ("train-first-width-big", "train --first-width 1000000"),
    ("train-epochs-0", "train --epochs 0"),
    ("train-lr-0", "train --lr 0"),
    ("train-lr-neg", "train --lr -1"),
    ("train-lr-nan", "train --lr nan"),
    ("train-batch-0", "train --batch-size 0"),
    ("train-optimizer", "train --optimizer adagrad"),
    ("train-dataset", "train --dataset nosuch"),
    ("train-device-tpu", "train --device tpu"),
    ("train-device-cuda7", "train --device cuda:7 --dataset mnist-5k --epochs 1"),
    ("train-out-file", "train --out {T}/afile.txt"),
    ("train-out-proc", "train --out /proc/x"),
    ("train-out-foreign", "train --out {T}/userdir --dataset mnist-5k --depth 1 --width 4 --first-width 4"),
    ("train-dropout-1", "train --dropout 1"),
    ("train-preset-unknown", "train --preset nosuch"),
    ("train-activation-unknown", "train --activation nosuch --depth 2"),
    ("train-init-unknown", "train --init nosuch --depth 2"),
    ("train-probe-0", "train --probe-size 0"),
    ("train-threads-0", "train --threads 0"),
    ("train-threads-huge", "train --threads 1000000000"),
    ("repro-threads-huge", "reproduce --threads 100000"),
    ("sim-threads-huge", "simulate --threads 5000"),
    ("train-seed-neg", "train --seed -1"),
    ("train-empty-split", "train --dataset mnist --data-dir {T}/empty --depth 1 --width 4 --first-width 4"),
    ("train-labels-200", "train --dataset mnist --data-dir {T}/labels200 --depth 1 --width 4 --first-width 4"),
    ("train-small-images", "train --dataset fashion-mnist --data-dir {T}/small --depth 1 --width 4 --first-width 4"),
    # --- reproduce
    ("repro-presets-empty", "reproduce --presets ''"),
    ("repro-presets-commas", "reproduce --presets ,"),
    ("repro-presets-unknown", "reproduce --presets nosuch"),
    ("repro-lr-0", "reproduce --lr 0"),
    ("repro-lr-text", "reproduce --lr a"),
    ("repro-epochs-0", "reproduce --epochs 0"),
    ("repro-out-file", "reproduce --out {T}/afile.txt"),
    ("repro-out-proc", "reproduce --out /proc/x"),
    ("repro-out-foreign", "reproduce --out {T}/userdir --presets relu --dataset mnist-5k"),
    ("repro-device-cuda7", "reproduce --device cuda:7 --presets relu --dataset mnist-5k"),
    ("repro-device-tpu", "reproduce --device tpu"),
    ("repro-probe-0", "reproduce --probe-size 0"),
    ("repro-dataset", "reproduce --dataset nosuch"),
    ("repro-seed-neg", "reproduce --seed -1"),
    # --- report (refusals happen before any computation)
    ("report-out-file", "report --out {T}/afile.txt"),
    ("report-out-foreign", "report --out {T}/userdir --quick"),
    ("report-out-proc", "report --out /proc/x"),
    ("report-out-root", "report --out /"),
    ("report-work-dir-file", "report --out {T}/newreport --work-dir {T}/afile.txt"),
    ("report-presets-empty", "report --presets ''"),
    ("report-presets-unknown", "report --presets nosuch --out {T}/newreport"),
    ("report-lr-0", "report --lr 0"),
    ("report-epochs-0", "report --epochs 0"),
    ("report-inputs-0", "report --inputs 0"),
    ("report-seeds-0", "report --seeds 0"),
    ("report-train-subset-0", "report --train-subset 0"),
    ("report-device-tpu", "report --device tpu"),
    ("report-device-cuda9", "report --device cuda:9 --out {T}/newreport"),
    ("report-dataset", "report --dataset nosuch"),
    ("report-seeds-memory", "report --seeds 1000000 --out {T}/newreport"),
    # --- self-normalize, transform, spectrum (parse time)
    ("selfnorm-no-activation", "self-normalize"),
    ("selfnorm-var-0", "self-normalize --activation gelu --var 0"),
    ("selfnorm-digits", "self-normalize --activation gelu --digits 201"),
    ("selfnorm-family", "self-normalize --activation gelu --family nosuch"),
    ("transform-no-method", "transform --activation gelu"),
    ("transform-method", "transform --method nosuch --activation gelu"),
    ("transform-depth-0", "transform --method dks --activation gelu --depth 0"),
    ("transform-depth-big", "transform --method dks --activation gelu --depth 100001"),
    ("spectrum-points-0", "spectrum --sigma-w2 1 --points 0"),
    ("spectrum-plot-jpg", "spectrum --sigma-w2 1 --plot x.jpg"),
    ("spectrum-plot-proc", "spectrum --sigma-w2 1 --plot /proc/x.png"),
    ("spectrum-networks-0", "spectrum --sigma-w2 1 --networks 0"),
    ("spectrum-points-huge", "spectrum --sigma-w2 1 --points 100000000"),
    ("spectrum-mc-memory", "spectrum --sigma-w2 1 --depth 1 --width 30000 --check --networks 8 --inputs 64"),
    ("spectrum-sw2-neg", "spectrum --sigma-w2 -1"),
    # --- trainability (parse time)
    ("trainability-seeds-0", "trainability --seeds 0"),
    ("trainability-out-file", "trainability --out {T}/afile.txt"),
    ("trainability-device", "trainability --device tpu"),
    ("trainability-level", "trainability --level 1"),
    ("trainability-workers-0", "trainability --presets relu --workers 0"),
    ("trainability-workers-and-scheduler", "trainability --presets relu --workers 2 --scheduler tcp://127.0.0.1:1"),
    # --- sweep (parse time)
    ("sweep-no-file", "sweep --out x"),
    ("sweep-workers-0", "sweep f.toml --out x --workers 0"),
    ("sweep-out-proc", "sweep f.toml --out /proc/x"),
    ("sweep-out-is-file", "sweep f.toml --out {T}/afile.txt"),
    # --- scaling (parse time, then the grid's names before any data is loaded)
    ("scaling-config-unknown", "scaling --configs nope --out x"),
    ("scaling-config-twice", "scaling --configs relu-he-normal,relu-he-normal --out x"),
    ("scaling-axis-unknown", "scaling --axes width,heads --out x"),
    ("scaling-seeds-0", "scaling --seeds 0 --out x"),
    ("scaling-level-1", "scaling --level 1.5 --out x"),
    ("scaling-out-proc", "scaling --out /proc/x"),
    ("scaling-workers-and-scheduler", "scaling --workers 2 --scheduler tcp://127.0.0.1:1 --out x"),
    # --- inspect: inputs and options (parse time), then the TARGET and the model (before any work)
    ("inspect-no-input", "inspect torch.nn:Identity"),
    ("inspect-two-inputs", "inspect torch.nn:Identity --dataset mnist-5k --input-shape 3"),
    ("inspect-shape-0", "inspect torch.nn:Identity --input-shape 3,0"),
    ("inspect-networks-0", "inspect torch.nn:Identity --input-shape 3 --networks 0"),
    ("inspect-inputs-1", "inspect torch.nn:Identity --input-shape 3 --inputs 1"),
    ("inspect-device", "inspect torch.nn:Identity --input-shape 3 --device tpu"),
    ("inspect-cuda-missing", "inspect torch.nn:Identity --input-shape 3 --device cuda:7"),
    ("inspect-csv-proc", "inspect torch.nn:Identity --input-shape 3 --csv /proc/x.csv"),
    ("inspect-json-ext", "inspect torch.nn:Identity --input-shape 3 --json x.txt"),
    ("inspect-plot-jpg", "inspect torch.nn:Identity --input-shape 3 --plot x.jpg"),
    ("inspect-loss-no-labels", "inspect torch.nn:Identity --input-shape 3 --loss cross-entropy"),
    ("inspect-target-form", "inspect resnet18 --input-shape 3"),
    ("inspect-no-module", "inspect nosuchmodule_xyz:build --input-shape 3"),
    ("inspect-no-callable", "inspect math:nosuch --input-shape 3"),
    ("inspect-not-callable", "inspect math:pi --input-shape 3"),
    ("inspect-no-file", "inspect {T}/nosuch.py:build --input-shape 3"),
    ("inspect-not-a-model", "inspect builtins:dict --input-shape 3"),
    ("inspect-factory-raises", "inspect torch.nn:Conv2d --input-shape 3"),
    ("inspect-wrong-shape", "inspect torchvision.models:resnet18 --input-shape 5 --inputs 2"),
    ("inspect-input-missing", "inspect torch.nn:Identity --input {T}/nosuch.npy"),
    ("inspect-input-not-npy", "inspect torch.nn:Identity --input {T}/afile.txt"),
    ("inspect-reinit-unknown", "inspect torch.nn:Identity --input-shape 3 --reinit nosuch"),
]


# ------------------------------------------------------------------ generated rows (issue 23)
# Every row is a real invocation that must end in one line and exit 2, touching nothing under the fixture.

#: The values each numeric flag is tried at: 0, negative, nan, inf, huge, denormal (subnormal).
VALUES = {"zero": "0", "neg": "-1", "nan": "nan", "inf": "inf", "huge": "1e308", "denormal": "1e-320"}
ALL = tuple(VALUES)
NOT_ZERO = ("neg", "nan", "inf", "huge", "denormal")  # 0 is valid (e.g. a variance, a seed)
PARSE = ("nan", "inf", "denormal")  # refused by the number type whatever the flag's range
NOT_FINITE = ("nan", "inf", "huge", "denormal")  # for whole numbers: "1e308" is not one

#: command prefix -> {flag: which VALUES are bad}. A value that is valid (or that would start work) is left out.
NUMERIC = {
    "theory --activation tanh --depth 3": {
        "--sigma-w2": ALL, "--sigma-b2 0 --sigma-w2 1 --sigma-b2": NOT_ZERO,
        "--sigma-w2 1 --depth": ALL, "--sigma-w2 1 --width": ALL, "--sigma-w2 1 --first-width": ALL,
        "--sigma-w2 1 --input-dim": ALL, "--sigma-w2 1 --dropout": NOT_ZERO, "--sigma-w2 1 --alpha-dropout": NOT_ZERO,
        "--sigma-w2 1 --residual": ALL, "--sigma-w2 1 --input-mean": PARSE,
        "--sigma-w2 1 --input-var": ("neg", "nan", "inf", "denormal"), "--sigma-w2 1 --input-corr": PARSE + ("huge",),
        "--sigma-w2 1 --rows": ALL,
    },
    "critical --activation tanh": {"--sigma-b2": NOT_ZERO},
    "spectrum --depth 2 --width 8": {
        "--sigma-w2": ALL, "--sigma-w2 1 --sigma-b2": NOT_ZERO, "--sigma-w2 1 --points": ALL,
        "--sigma-w2 1 --networks": ALL, "--sigma-w2 1 --inputs": ALL, "--sigma-w2 1 --seed": NOT_ZERO,
        "--sigma-w2 1 --input-var": NOT_ZERO, "--sigma-w2 1 --input-mean": PARSE, "--sigma-w2 1 --residual": ALL,
        "--sigma-w2 1 --dropout": NOT_ZERO, "--sigma-w2 1 --depth": ALL, "--sigma-w2 1 --width": ALL,
    },
    "solve-selu": {
        "--var": ALL, "--digits": ALL, "--dropout": NOT_ZERO, "--seed": NOT_ZERO, "--grid": ALL, "--samples": ALL,
        "--mean": ("nan", "inf", "huge", "denormal"),
    },
    "data fetch mnist": {"--timeout": ALL},
    "simulate --depth 2 --width 8": {
        "--samples": ALL, "--seeds": ALL, "--seed": PARSE + ("neg",), "--threads": ALL, "--depth": ALL,
        "--width": ALL, "--dropout": NOT_ZERO, "--sigma-b2": PARSE + ("neg",), "--input-var": PARSE + ("neg",),
        "--input-mean": PARSE, "--residual": ALL,
    },
    "train --dataset mnist-5k --depth 1 --width 4 --first-width 4": {
        "--lr": ("zero", "neg", "nan", "inf", "denormal"), "--epochs": ALL, "--batch-size": ALL,
        "--seed": PARSE + ("neg", "huge"), "--seeds": ALL, "--probe-size": ALL, "--threads": ALL,
        "--dropout": NOT_ZERO, "--sigma-b2": PARSE + ("neg",), "--residual": ALL, "--width": ALL, "--rho": NOT_ZERO,
        "--warmup": ("neg",) + NOT_FINITE,
    },
    "reproduce --presets relu --dataset mnist-5k": {
        "--lr": ("zero", "neg", "nan", "inf", "denormal"), "--epochs": ALL, "--seed": PARSE + ("neg", "huge"),
        "--seeds": ALL, "--probe-size": ALL, "--threads": ALL,
    },
    "report --quick --out {T}/newreport": {
        "--lr": ("zero", "neg", "nan", "inf", "denormal"), "--epochs": ALL, "--inputs": ALL, "--seeds": ALL,
        "--networks": ALL, "--train-subset": ALL, "--trainability-subset": ALL, "--seed": PARSE + ("neg", "huge"),
    },
    "trainability --presets relu --dataset mnist-5k": {
        "--seeds": ALL, "--seed": PARSE + ("neg", "huge"), "--epochs": ALL, "--batch-size": ALL,
        "--level": NOT_ZERO, "--refine": PARSE + ("neg", "huge"), "--sharpness-batch": ALL, "--threads": ALL,
        "--workers": ALL, "--lr": ("zero", "neg", "nan", "inf", "denormal"), "--rho": NOT_ZERO,
        "--warmup": ("neg",) + NOT_FINITE,
    },
    "sweep {T}/sweep.toml --out {T}/newsweep": {"--workers": ALL},
    "self-normalize --activation gelu": {"--var": ALL, "--digits": ALL, "--mean": NOT_FINITE, "--a": ("zero",) + NOT_FINITE,
                                         "--b": NOT_FINITE, "--solve gamma,b --d": NOT_FINITE},
    "transform --method dks --activation gelu": {"--depth": ALL, "--digits": ALL, "--zeta": ("zero", "neg") + PARSE},
    "transform --method tat --activation leaky_relu": {"--eta": ALL},
    "transform --method tat --activation softplus": {"--tau": ("zero", "neg") + PARSE},
}


def _numeric_rows() -> list[tuple[str, str]]:
    rows = []
    for prefix, flags in NUMERIC.items():
        command = prefix.split()[0] + ("-" + prefix.split()[1] if prefix.startswith("data") else "")
        for flag, bad in flags.items():
            name = flag.split()[-1].lstrip("-")
            for key in bad:
                rows.append((f"num-{command}-{name}-{key}", f"{prefix} {flag} {VALUES[key]}"))
    return rows


LONG = "x" * 300  # longer than a file name may be (255 bytes)
#: An output path a user cannot write: read-only for everyone, root included (/proc), or a read-only folder.
READONLY = "/proc/propagate-test" if os.geteuid() == 0 else "{T}/readonly"

#: command prefix -> (output flag, "file" or "dir").
OUTPUTS = {
    "theory --sigma-w2 1 --depth 2": ("--csv", "file"), "critical": ("--csv", "file"),
    "derive selu": ("-o", "file"), "simulate --depth 2 --width 8": ("--csv", "file"),
    "simulate --depth 2 --width 8 --inputs 8": ("--json", "file"), "spectrum --sigma-w2 1 --depth 2": ("--plot", "png"),
    "train --dataset mnist-5k --depth 1 --width 4 --first-width 4": ("--out", "dir"),
    "reproduce --presets relu --dataset mnist-5k": ("--out", "dir"), "report --quick": ("--out", "dir"),
    "report --quick --out {T}/newreport": ("--work-dir", "dir"),
    "trainability --presets relu --dataset mnist-5k": ("--out", "dir"),
    "sweep {T}/sweep.toml": ("--out", "dir"), "data fetch mnist": ("--data-dir", "dir"),
    "data info mnist": ("--data-dir", "dir"),
}


def _output_rows() -> list[tuple[str, str]]:
    rows = []
    for prefix, (flag, kind) in OUTPUTS.items():
        ext = {"file": ".csv", "png": ".png", "dir": ""}[kind]
        if flag == "-o":
            ext = ".md"
        name = "-".join(prefix.split()[:2] if prefix.startswith(("data", "derive")) else prefix.split()[:1])
        name += "-" + flag.lstrip("-")
        cases = {"long-name": f"{LONG}{ext}", "long-parent": f"{LONG}/x{ext}", "long-path": "a/" * 2100 + f"x{ext}",
                 "newline": f"line{{NL}}break{ext}", "tab": f"tab{{TAB}}here{ext}", "empty": "''",
                 "readonly": f"{READONLY}/x{ext}", "under-file": "{T}/afile.txt/x" + ext}
        if kind == "dir":
            cases["is-file"] = "{T}/afile.txt"
        else:
            cases["is-folder"] = "{T}/userdir"
        if flag == "--data-dir" and prefix.startswith("data info"):
            cases["missing"] = "{T}/nosuch"
            del cases["readonly"], cases["under-file"]
        for case, value in cases.items():
            rows.append((f"out-{name}-{case}", f"{prefix} {flag} {value}"))
    return rows


#: Folder flags against folders that hold a user's .lock, identity.json, files, a run of another kind.
FOLDER_CASES = {"lock": "{T}/lockdir", "identity": "{T}/identitydir", "identity-no-note": "{T}/emptyid",
                "files": "{T}/userdir", "readonly": "{T}/readonly"}
FOLDERS = {
    "train-out": "train --dataset mnist-5k --depth 1 --width 4 --first-width 4 --epochs 1 --out",
    "train-no-resume-out": "train --dataset mnist-5k --depth 1 --width 4 --first-width 4 --epochs 1 --no-resume --out",
    "reproduce-out": "reproduce --presets relu --dataset mnist-5k --epochs 1 --out",
    "reproduce-no-resume-out": "reproduce --presets relu --dataset mnist-5k --epochs 1 --no-resume --out",
    "report-out": "report --quick --out",
    "report-work-dir": "report --quick --out {T}/newreport --work-dir",
    "trainability-out": "trainability --presets relu --dataset mnist-5k --epochs 1 --lr 1e-3 --seeds 1 --out",
    "trainability-no-resume-out": "trainability --presets relu --dataset mnist-5k --epochs 1 --lr 1e-3 --seeds 1 "
                                  "--no-resume --out",
    "sweep-out": "sweep {T}/sweep.toml --out",
}
#: A run folder of another kind (the sweep's refusal suggested --no-resume), and a report with a user's file.
OTHER_KIND = {
    "train-into-sweep": "train --dataset mnist-5k --depth 1 --width 4 --first-width 4 --no-resume --out {T}/sweepdir",
    "train-into-sweep-resume": "train --dataset mnist-5k --depth 1 --width 4 --first-width 4 --out {T}/sweepdir",
    "reproduce-into-train": "reproduce --presets relu --dataset mnist-5k --out {T}/traindir",
    "trainability-into-sweep": "trainability --presets relu --dataset mnist-5k --lr 1e-3 --seeds 1 --out {T}/sweepdir",
    "sweep-into-train": "sweep {T}/sweep.toml --out {T}/traindir",
    "report-work-dir-sweep": "report --quick --out {T}/newreport --work-dir {T}/sweepdir",
    "report-over-users-file": "report --quick --out {T}/reportdir",
}


def _folder_rows() -> list[tuple[str, str]]:
    rows = [(f"dir-{name}-{case}", f"{prefix} {path}") for name, prefix in FOLDERS.items()
            for case, path in FOLDER_CASES.items()
            if not (case == "readonly" and os.geteuid() == 0)]  # root writes into a read-only folder
    return rows + [(f"dir-{name}", row) for name, row in OTHER_KIND.items()]


#: The cases of issue 23 that these files fix, one row each, and the classes they stand for.
ISSUE_23 = [
    ("i23-theory-csv-long", f"theory --sigma-w2 1 --depth 2 --csv {LONG}.csv"),
    ("i23-train-out-long", f"train --dataset mnist-5k --depth 1 --width 4 --first-width 4 --out {LONG}"),
    ("i23-derive-o-long", f"derive selu -o {LONG}.md"),
    ("i23-selu-seed-2-64", "solve-selu --check --seed 18446744073709551616"),
    ("i23-spectrum-seed-2-64", "spectrum --sigma-w2 1 --depth 2 --check --seed 18446744073709551616"),
    ("i23-spectrum-seed-2-63", "spectrum --sigma-w2 1 --depth 2 --check --seed 9223372036854775808"),
    ("i23-data-fetch-timeout", "data fetch mnist --timeout 1e308"),
    ("i23-critical-leaky-1e200", "critical --activation leaky_relu:1e200"),
    ("i23-critical-selu-lambda-0", "critical --activation selu:lambda=0"),
    ("i23-theory-selu-lambda-0", "theory --sigma-w2 1 --depth 2 --activation selu:lambda=0"),
    ("i23-theory-sw2-1e-320", "theory --sigma-w2 1e-320"),
    ("i23-spectrum-sw2-1e-200", "spectrum --sigma-w2 1e-200"),
    ("i23-spectrum-sb2-1e300", "spectrum --sigma-w2 1 --sigma-b2 1e300"),
    ("i23-spectrum-tanh-sb2-1e300", "spectrum --activation tanh --sigma-w2 1 --sigma-b2 1e300"),
    ("i23-spectrum-scale", "spectrum --activation relu --sigma-w2 10 --depth 60 --width 8"),
    ("i23-spectrum-points-1e5", "spectrum --sigma-w2 1 --points 100000"),
    ("i23-selu-var-1e308", "solve-selu --var 1e308"),
    ("i23-selu-var-1e-300", "solve-selu --var 1e-300"),
    ("i23-selu-var-1e13", "solve-selu --var 1e13"),
    ("i23-critical-sb2-1e300", "critical --activation tanh --sigma-b2 1e300"),
    ("i23-critical-gelu-sb2-1e10", "critical --activation gelu --sigma-b2 1e10"),
    ("i23-critical-list-one-out", "critical --activation elu --sigma-b2 0,1,1e7"),
    ("i23-data-info-dir-empty", "data info mnist --data-dir ''"),
    ("i23-data-fetch-dir-empty", "data fetch mnist --data-dir ''"),
    ("i23-data-fetch-mirror-empty", "data fetch mnist --mirror ''"),
    ("i23-data-fetch-mirror-text", "data fetch mnist --mirror 'not a url'"),
    ("i23-report-user-file", "report --quick --out {T}/reportdir"),
    # options that would be ignored without a word
    ("i23-selu-grid-alone", "solve-selu --grid 5"),
    ("i23-selu-range-alone", "solve-selu --nu-range 0.9,1.1"),
    ("i23-selu-samples-alone", "solve-selu --samples 100"),
    ("i23-selu-seed-alone", "solve-selu --seed=3"),
    ("i23-selu-latex-check", "solve-selu --latex --check"),
    ("i23-selu-latex-dropout", "solve-selu --latex --dropout 0.1"),
    ("i23-spectrum-networks-alone", "spectrum --sigma-w2 1 --networks 3"),
    ("i23-spectrum-seed-alone", "spectrum --sigma-w2 1 --seed 3"),
    ("i23-theory-rows-json", "theory --sigma-w2 1 --json --rows 3"),
    ("i23-theory-rows-csv-stdout", "theory --sigma-w2 1 --csv - --rows 3"),
]
#: Repeated, unknown or out-of-range activation parameters, in every command that takes an activation.
ACTIVATION_PARAMS = {"gelu-gamma-twice": "gelu@gamma=1,gamma=2", "leaky-slope-twice": "leaky_relu:0.1,slope=0.3",
                     "leaky-positional-twice": "leaky_relu:0.1,0.2", "leaky-1e200": "leaky_relu:1e200",
                     "selu-lambda-0": "selu:lambda=0", "selu-lambda-neg": "selu:lambda=-1",
                     "elu-alpha-neg": "elu:alpha=-1", "gelu-gamma-0": "gelu@gamma=0", "gelu-b-huge": "gelu@b=1e7",
                     "gelu-unknown": "gelu@c=1", "tanh-param": "tanh:1", "slope-subnormal": "leaky_relu:1e-320"}
ACTIVATION_COMMANDS = {"theory": "theory --sigma-w2 1 --depth 2 --activation", "critical": "critical --activation",
                       "gain": "gain --activation", "spectrum": "spectrum --sigma-w2 1 --depth 2 --activation",
                       "simulate": "simulate --depth 2 --width 8 --inputs 8 --networks 1 --activation",
                       "train": "train --dataset mnist-5k --depth 1 --width 4 --first-width 4 --epochs 1 --activation",
                       "self-normalize": "self-normalize --activation", "transform": "transform --method dks --activation"}


def _activation_rows() -> list[tuple[str, str]]:
    return [(f"{cmd}-act-{case}", f"{prefix} {value}") for cmd, prefix in ACTIVATION_COMMANDS.items()
            for case, value in ACTIVATION_PARAMS.items()]


#: Round 2 of issue 23 (train, trainability, sweep, reproduce, report, self-normalize, transform), one row each.
TAB = "trainability --presets relu --dataset mnist-5k"
SWEEP = "sweep {T}/sweep.toml --out {T}/newsweep"
ROUND_2_FIXED = [
    # train: the seed rule, the data folder read (never downloaded into), a damaged checkpoint before the banner
    ("r2-train-seed-2-64", "train --dataset mnist-5k --depth 1 --width 4 --first-width 4 --epochs 1 "
                           "--seed 18446744073709551616"),
    ("r2-train-seeds-past-max", f"train --dataset mnist-5k --depth 1 --width 4 --first-width 4 --seed {2**63 - 1} "
                                "--seeds 2"),
    ("r2-train-data-dir-empty", "train --dataset mnist --data-dir ''"),
    ("r2-train-data-dir-missing", "train --dataset mnist --data-dir {T}/nosuch"),
    ("r2-train-data-dir-no-files", "train --dataset mnist --data-dir {T}/userdir --depth 1 --width 4 --first-width 4"),
    ("r2-train-rho-1", "train --dataset mnist-5k --rho 1"),
    ("r2-train-corrupt-checkpoint", BADCKPT_TRAIN + " --out {T}/badckpt"),
    # trainability: every argument type, and the folder refused before the banner
    ("r2-trainability-seed-2-64", f"{TAB} --seed 18446744073709551616"),
    ("r2-trainability-seeds-past-max", f"{TAB} --seed {2**63 - 2} --seeds 3"),
    ("r2-trainability-refine-21", f"{TAB} --refine 21"),
    ("r2-trainability-threads-2000", f"{TAB} --threads 2000"),
    ("r2-trainability-workers-100000", f"{TAB} --workers 100000"),
    ("r2-trainability-scheduler-empty", f"{TAB} --scheduler ''"),
    ("r2-trainability-scheduler-text", f"{TAB} --scheduler 'not an address'"),
    ("r2-trainability-scheduler-http", f"{TAB} --scheduler http://127.0.0.1:1"),
    ("r2-trainability-data-dir-empty", "trainability --presets relu --dataset mnist --data-dir ''"),
    ("r2-trainability-data-dir-no-files", "trainability --presets relu --dataset mnist --data-dir {T}/userdir"),
    ("r2-trainability-lr-twice", f"{TAB} --lr 1e-3,1e-3"),
    ("r2-trainability-lr-same-value", f"{TAB} --lr 1e-3,0.001"),
    ("r2-trainability-lr-range-huge", f"{TAB} --lr 1e-3:1e-2:10000000"),
    ("r2-trainability-lr-subnormal", f"{TAB} --lr 1e-320"),
    ("r2-trainability-lr-range-zero", f"{TAB} --lr 0:1e-2:3"),
    ("r2-trainability-rho-1", f"{TAB} --rho 1"),
    ("r2-trainability-other-settings", f"{TAB} --lr 1e-3 --seeds 1 --epochs 1 --out {{T}}/otherrun"),
    ("r2-trainability-into-train", f"{TAB} --lr 1e-3 --seeds 1 --out {{T}}/traindir"),
    # sweep: lens, ranges and grids bounded before any point is built; worker and scheduler types
    ("r2-sweep-lens-list", "sweep {T}/lens-list.toml --out {T}/newsweep"),
    ("r2-sweep-lens-table", "sweep {T}/lens-table.toml --out {T}/newsweep"),
    ("r2-sweep-range-huge", "sweep {T}/range-huge.toml --out {T}/newsweep"),
    ("r2-sweep-grid-huge", "sweep {T}/grid-huge.toml --out {T}/newsweep"),
    ("r2-sweep-workers-100000", f"{SWEEP} --workers 100000"),
    ("r2-sweep-scheduler-empty", f"{SWEEP} --scheduler ''"),
    ("r2-sweep-scheduler-text", f"{SWEEP} --scheduler 'not an address'"),
    ("r2-sweep-scheduler-http", f"{SWEEP} --scheduler http://127.0.0.1:1"),
    # reproduce and report: seeds, data folder, repeated presets and learning rates, nested folders, all first
    ("r2-repro-seed-2-64", "reproduce --presets relu --dataset mnist-5k --seed 18446744073709551616"),
    ("r2-repro-seeds-past-max", f"reproduce --presets relu --dataset mnist-5k --seed {2**63 - 1} --seeds 2"),
    ("r2-repro-data-dir-empty", "reproduce --presets relu --dataset mnist --data-dir ''"),
    ("r2-repro-data-dir-no-files", "reproduce --presets relu --dataset mnist --data-dir {T}/userdir "
                                   "--out {T}/newrepro"),
    ("r2-repro-presets-twice", "reproduce --presets relu,relu --dataset mnist-5k --out {T}/newrepro"),
    ("r2-repro-lr-twice", "reproduce --presets relu --lr 1e-3,0.001 --dataset mnist-5k --out {T}/newrepro"),
    ("r2-repro-into-sweep", "reproduce --presets relu --dataset mnist-5k --out {T}/sweepdir"),
    ("r2-report-seed-2-64", "report --quick --out {T}/newreport --seed 18446744073709551616"),
    ("r2-report-seeds-past-max", f"report --quick --out {{T}}/newreport --seed {2**63 - 1}"),
    ("r2-report-data-dir-empty", "report --quick --out {T}/newreport --data-dir ''"),
    ("r2-report-presets-twice", "report --quick --out {T}/newreport --presets relu,relu"),
    ("r2-report-lr-twice", "report --quick --out {T}/newreport --lr 1e-3,1e-3"),
    ("r2-report-work-dir-inside-out", "report --quick --out {T}/newreport --work-dir {T}/newreport/work"),
    ("r2-report-work-dir-is-out", "report --quick --out {T}/newreport --work-dir {T}/newreport"),
    ("r2-report-out-inside-work-dir", "report --quick --out {T}/newwork/report --work-dir {T}/newwork"),
    ("r2-simulate-seed-2-64", "simulate --depth 2 --width 8 --seed 18446744073709551616"),
    # scaling (a command added since round 1; its own argument types are its author's): what it refuses today
    ("r2-scaling-seeds-0", "scaling --seeds 0"),
    ("r2-scaling-configs-unknown", "scaling --configs nosuch"),
    ("r2-scaling-workers-and-scheduler", "scaling --workers 2 --scheduler tcp://127.0.0.1:1"),
    ("r2-scaling-out-proc", "scaling --out /proc/x"),
    # self-normalize and transform: ranges of the fixed parameters, options that do not apply, bounded work
    ("r2-selfnorm-b-huge", "self-normalize --activation gelu --b 1e308"),
    ("r2-selfnorm-var-tiny", "self-normalize --activation gelu --var 1e-300"),
    ("r2-selfnorm-var-huge", "self-normalize --activation gelu --var 1e300"),
    ("r2-selfnorm-mean-huge", "self-normalize --activation gelu --mean 1e300"),
    ("r2-selfnorm-a-tiny", "self-normalize --activation gelu --a 1e-300"),
    ("r2-selfnorm-a-wide", "self-normalize --activation gelu --a 1000"),
    ("r2-selfnorm-d-huge", "self-normalize --activation gelu --solve gamma,b --d 1e308"),
    ("r2-selfnorm-scale-alpha-solve", "self-normalize --activation elu --family scale_alpha --solve gamma,b"),
    ("r2-selfnorm-elu-solve", "self-normalize --activation elu --solve gamma,b"),
    ("r2-selfnorm-scale-alpha-b", "self-normalize --activation selu --b 1"),
    ("r2-transform-dks-eta", "transform --method dks --activation gelu --eta 0.5"),
    ("r2-transform-dks-tau", "transform --method dks --activation gelu --tau 0.5"),
    ("r2-transform-tat-zeta", "transform --method tat --activation gelu --zeta 2"),
    ("r2-transform-tat-smooth-eta", "transform --method tat --activation softplus --eta 0.5"),
    ("r2-transform-tat-leaky-tau", "transform --method tat --activation leaky_relu --tau 0.5"),
    ("r2-transform-dks-digits-200", "transform --method dks --activation gelu --digits 200"),
    ("r2-transform-tat-leaky-depth-1e5", "transform --method tat --activation leaky_relu --depth 100000"),
    ("r2-transform-tat-leaky-eta-tiny", "transform --method tat --activation leaky_relu --eta 1e-300"),
]

BAD += _numeric_rows() + _output_rows() + _folder_rows() + ISSUE_23 + _activation_rows() + ROUND_2_FIXED

# `theory --sigma-w2 1e-300 --depth 3` (a signal below 1e-154 made the pull-back divide by q^2 = 0) is valid
# input and now runs: tests/test_theory.py::test_a_vanishing_signal_keeps_its_gradient_theory_finite.


def _argv(places, row: str) -> list[str]:
    import shlex

    # {NL} and {TAB} stand for a newline and a tab inside one argument (as a shell's $'...' would pass them)
    return [a.replace("{NL}", "\n").replace("{TAB}", "\t") for a in shlex.split(_sub(places, row))]


def _tree_digest(root: Path) -> dict[str, str]:
    """Every file and folder under ``root`` (relative path -> SHA-256 of the bytes, or 'dir'), to compare."""
    import hashlib

    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def test_table_has_enough_cases():
    assert len(BAD) >= 900, len(BAD)
    assert len({name for name, _ in BAD}) == len(BAD)
    # the classes: every value class on numeric flags, every output-path defect, every foreign folder
    names = [name for name, _ in BAD]
    for key in VALUES:
        assert sum(n.startswith("num-") and n.endswith("-" + key) for n in names) >= 20, key
    for case in ("long-name", "long-path", "newline", "tab", "empty", "readonly", "under-file"):
        assert sum(n.startswith("out-") and n.endswith("-" + case) for n in names) >= len(OUTPUTS) - 1, case
    for case in ("lock", "identity", "files"):
        assert sum(n.startswith("dir-") and n.endswith("-" + case) for n in names) >= 7, case
    from propagate.commands import COMMAND_MODULES

    covered = {row.split()[0] for _, row in BAD}
    names = {__import__(f"propagate.commands.{m}", fromlist=["NAME"]).NAME for m in COMMAND_MODULES}
    assert names <= covered, f"commands without bad-input cases: {names - covered}"


@pytest.mark.parametrize("name,row", BAD, ids=[n for n, _ in BAD])
def test_bad_input_is_one_line_exit_2(name, row, places, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # relative outputs (x.csv) land in a throwaway folder
    monkeypatch.setenv("PROPAGATE_DATA", str(tmp_path / "cache"))  # never download
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    before = _tree_digest(places)
    try:
        rc = main(_argv(places, row))
    except SystemExit as exc:  # argparse's own exit
        rc = exc.code
    out, err = capsys.readouterr()
    assert rc == 2, f"{row!r}: exit {rc}; stderr {err!r}"
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("propagate: error: "), f"{row!r}: stderr {err!r}"
    assert len(lines[0]) > len("propagate: error: ") + 5
    assert _tree_digest(places) == before, f"{row!r} changed the user's files"
    assert sorted(p.name for p in tmp_path.iterdir()) in ([], ["cache"]), f"{row!r} left {list(tmp_path.iterdir())}"


def test_bad_inputs_leave_the_users_files(places):
    assert (places / "afile.txt").read_text() == "the user's file\n"
    assert sorted(p.name for p in (places / "userdir").iterdir()) == ["notes.txt"]
    assert not os.path.exists(places / "newreport")


SUBPROCESS = [
    "theory --sigma-w2 1 --csv /proc/x.csv",
    "solve-selu --stability --nu-range -1,1",
    "report --out .",
    "data info nosuch",
]


@pytest.mark.parametrize("row", SUBPROCESS)
def test_real_exit_status(row, tmp_path):
    (tmp_path / "mine.txt").write_text("x")  # '.' is a folder of the user's
    res = subprocess.run([sys.executable, "-m", "propagate", *row.split()], capture_output=True, text=True,
                         cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 2, res.stderr
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("propagate: error: ")
    assert "Traceback" not in res.stderr
    assert (tmp_path / "mine.txt").read_text() == "x"


def test_messages_say_what_to_change(places, capsys):
    cases = {
        "solve-selu --stability --grid 150": "GiB",  # the estimate
        "theory --sigma-w2 1 --depth 1000000000": "the limit is 1000000",
        "report --out {T}/userdir": "did not make",
        "data info mnist --data-dir {T}/labels200 --no-verify": "labels run from 0 to 199",
        "train --width 20000 --dataset mnist-5k": "--width",
        "reproduce --presets ''": "at least one name",
        "train --device cuda:7 --dataset mnist-5k": "cuda:7",
    }
    for row, expected in cases.items():
        try:
            main(_argv(places, row))
        except SystemExit:
            pass
        _, err = capsys.readouterr()
        assert expected in err, (row, err)


def test_data_info_reports_the_real_label_range(places, capsys):
    rc = main(["data", "info", "mnist", "--data-dir", str(places / "labels200"), "--no-verify", "--json"])
    out, err = capsys.readouterr()
    assert rc == 2
    info = json.loads(out)
    assert info["label_range"] == [0, 199]
    assert any("outside the 10 declared classes" in p for p in info["problems"])
    rc = main(["data", "info", "mnist", "--data-dir", str(places / "good"), "--no-verify"])
    out, err = capsys.readouterr()
    assert rc == 0 and err == "" and "labels     0..9" in out


def test_device_error_comes_before_the_banner(capsys):
    rc = main(["train", "--device", "cuda:7", "--dataset", "mnist-5k", "--epochs", "1"])
    _, err = capsys.readouterr()
    import torch

    if torch.cuda.device_count() > 7:  # pragma: no cover - a machine with 8 GPUs
        pytest.skip("cuda:7 exists here")
    assert rc == 2 and err.count("\n") == 1 and "cuda:7" in err and "hidden layers" not in err


# ------------------------------------------------------------- output paths (library)


def test_library_writers_raise_one_line_user_errors(tmp_path):
    from propagate.errors import UserError
    from propagate.io import atomic_write_text, check_output_dir, check_output_file

    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match="is a folder"):
        atomic_write_text(tmp_path, "x")
    with pytest.raises(UserError, match="cannot write"):
        atomic_write_text("/proc/x.csv", "x")
    with pytest.raises(UserError, match="not a folder"):
        atomic_write_text(tmp_path / "f" / "x.csv", "x")
    with pytest.raises(UserError, match="not a regular file"):
        check_output_file("/dev/null")
    with pytest.raises(UserError, match="not a folder"):
        check_output_dir(tmp_path / "f")
    # a missing parent folder is fine (the writer creates it) when it can be created
    assert check_output_file(tmp_path / "new" / "deeper" / "x.csv").name == "x.csv"
    atomic_write_text(tmp_path / "new" / "deeper" / "x.csv", "y")
    assert (tmp_path / "new" / "deeper" / "x.csv").read_text() == "y"


# ------------------------------------------------------------------ data safety


def test_foreign_folder_is_kept(tmp_path):
    from propagate.errors import UserError
    from propagate.io import FOLDER_MARKER, atomic_directory

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(UserError, match="did not make"):
        with atomic_directory(foreign) as tmp:
            (tmp / "README.md").write_text("report")
    assert (foreign / "thesis.tex").read_text() == "precious" and not (foreign / "README.md").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["mine"]  # no temporary folder left
    # a folder we made is replaced as a whole, and says so
    ours = tmp_path / "ours"
    with atomic_directory(ours) as tmp:
        (tmp / "a.txt").write_text("1")
    with atomic_directory(ours) as tmp:
        (tmp / "b.txt").write_text("2")
    assert sorted(p.name for p in ours.iterdir()) == sorted([FOLDER_MARKER, "b.txt"])
    # a regular file where the folder goes is refused too
    (tmp_path / "file").write_text("f")
    with pytest.raises(UserError, match="not a folder"):
        with atomic_directory(tmp_path / "file"):
            pass
    assert (tmp_path / "file").read_text() == "f"


def test_report_refuses_foreign_out_before_work(tmp_path, capsys):
    from propagate.report import _is_report_folder, check_report_folders

    foreign = tmp_path / "user"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("k")
    rc = main(["report", "--quick", "--out", str(foreign)])
    _, err = capsys.readouterr()
    assert rc == 2 and "did not make" in err and (foreign / "keep.txt").read_text() == "k"
    # a report written before the marker existed (README.md + report.json with facts) may be replaced
    old = tmp_path / "old"
    old.mkdir()
    (old / "README.md").write_text("# report")
    (old / "report.json").write_text(json.dumps({"meta": {}, "timings_s": {}, "facts": {}}))
    assert _is_report_folder(old)
    check_report_folders(old)


def _tiny_dataset(name="tiny", n=24, seed=0):
    from propagate.data import Dataset

    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    y = (np.arange(n) % 10).astype(np.int64)
    return Dataset(name, x, y, x[:10], y[:10], "test")


def _tiny_run(run_dir, dataset, resume=True, lr=1e-3):
    from propagate.spec import NetworkSpec
    from propagate.train import TrainOptions, train

    spec = NetworkSpec.stack(1, 4, input_dim=784, first_width=4, activation="relu", init="glorot_uniform",
                             out_features=10)
    opts = TrainOptions(epochs=1, batch_size=8, probe_size=8, threads=1, lr=lr, train_eval_size=8)
    return train(spec, opts, dataset, run_dir=run_dir, resume=resume)


def test_resume_on_other_data_is_refused(tmp_path):
    from propagate.runfolder import IDENTITY_FILE, IdentityMismatch

    run = tmp_path / "run"
    first = _tiny_run(run, _tiny_dataset("mnist-5k"))
    assert first.status == "finished" and (run / IDENTITY_FILE).is_file()
    history = (run / "history.csv").read_text()
    with pytest.raises(IdentityMismatch, match=r"dataset\.name = 'mnist-5k', not 'other'.*--no-resume") as info:
        _tiny_run(run, _tiny_dataset("other"))
    assert info.value.field == "dataset.name"
    # same name, other images (a different training subset or file): the checksum tells
    with pytest.raises(IdentityMismatch, match=r"dataset\.(n_train|sha256)"):
        _tiny_run(run, _tiny_dataset("mnist-5k", n=20))
    with pytest.raises(IdentityMismatch, match=r"config\.options\.lr = 0\.001, not 0\.01"):
        _tiny_run(run, _tiny_dataset("mnist-5k"), lr=1e-2)
    assert (run / "history.csv").read_text() == history  # nothing mixed in
    again = _tiny_run(run, _tiny_dataset("mnist-5k"))  # the same run resumes (already finished)
    assert again.status == "finished" and (run / "history.csv").read_text() == history
    restarted = _tiny_run(run, _tiny_dataset("other"), resume=False)  # --no-resume starts over
    assert restarted.status == "finished"
    assert json.loads((run / IDENTITY_FILE).read_text())["identity"]["dataset"]["name"] == "other"


def test_report_names_its_own_option_for_a_changed_work_folder(tmp_path):
    from propagate.errors import UserError
    from propagate.report import _claim_work_dir
    from propagate.runfolder import claim

    work = tmp_path / "work"
    claim(work, {"kind": "reproduce", "dataset": {"name": "mnist-5k", "n_train": 4000}}).release()
    # the report claims its work folder before any computation (and holds it for the build)
    with pytest.raises(UserError) as info:
        _claim_work_dir(work, _tiny_dataset("mnist-5k"))
    msg = str(info.value)
    assert "--work-dir" in msg and "--no-resume" not in msg and "dataset." in msg
    # a busy work folder is refused before any computation too
    from propagate.report import ReportOptions, check_report_folders
    from propagate.runfolder import lock_folder

    with lock_folder(work):
        with pytest.raises(UserError, match="in use by process.*--work-dir"):
            check_report_folders(tmp_path / "report", ReportOptions(work_dir=str(work)))


def test_second_writer_is_refused(tmp_path):
    from propagate.runfolder import FolderBusy, lock_folder

    folder = tmp_path / "out"
    held = lock_folder(folder)
    with pytest.raises(FolderBusy, match=f"in use by process {os.getpid()}"):
        lock_folder(folder)
    # and a real second `propagate train` process fails at once, with one line
    res = subprocess.run([sys.executable, "-m", "propagate", "train", "--out", str(folder), "--dataset", "mnist-5k",
                          "--depth", "1", "--width", "4", "--first-width", "4", "--epochs", "1", "--no-progress"],
                         capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert "is in use by process" in res.stderr and "Traceback" not in res.stderr
    held.release()
    lock_folder(folder).release()  # free again


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    from propagate.runfolder import LOCK_FILE, lock_folder

    folder = tmp_path / "out"
    code = textwrap.dedent(f"""
        import os, sys, time
        from propagate.runfolder import lock_folder
        lock = lock_folder({str(folder)!r})
        print(os.getpid(), flush=True)
        time.sleep(60)
    """)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        pid = int(child.stdout.readline())
    finally:
        child.send_signal(signal.SIGKILL)  # dies holding the lock: no cleanup runs
        child.wait()
    assert json.loads((folder / LOCK_FILE).read_text())["pid"] == pid  # the lock file is left behind
    with lock_folder(folder) as lock:
        assert lock.held and json.loads((folder / LOCK_FILE).read_text())["pid"] == os.getpid()


def test_a_folder_that_is_not_a_run_folder_is_never_written(tmp_path):
    from propagate.runfolder import IdentityMismatch, claim

    (tmp_path / "paper.tex").write_text("p")
    for resume in (True, False):
        with pytest.raises(IdentityMismatch, match="no propagate run recorded"):
            claim(tmp_path, {"kind": "train"}, resume=resume)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["paper.tex"]  # not even a lock is left


# ------------------------------------------------------------------ numerics and JSON


def test_tanh_at_huge_sigma_w2_has_the_sign_limit():
    """At sigma_w2 -> inf tanh acts as sign(h): c-map (2/pi) arcsin(c), so c* = 0 and chi_c = sigma_w2
    E[phi']^2 -> 2/pi (E[tanh'(sqrt(q) z)] = 2 / sqrt(2 pi q), q* = sigma_w2)."""
    from propagate.theory import analyze

    for sw2 in (1e8, 1e20, 1e300):
        res = analyze("tanh", sw2, 0.0, 3)
        assert res.fixed_point and math.isfinite(res.q_star)
        assert res.q_star == pytest.approx(sw2, rel=1e-3)
        assert res.c_star == pytest.approx(0.0, abs=1e-6)
        assert res.chi_c == pytest.approx(2 / math.pi, rel=1e-3)
    # sigmoid -> step: c-map 1/2 + arcsin(c)/pi, chi_c = 1/(pi sqrt(1 - c*^2)) at q* = sigma_w2 / 2
    from scipy.optimize import brentq

    c_star = brentq(lambda c: 0.5 + math.asin(c) / math.pi - c, 0.5, 0.99)
    res = analyze("sigmoid", 1e20, 0.0, 3)
    assert res.c_star == pytest.approx(c_star, rel=1e-6)
    assert res.chi_c == pytest.approx(1 / (math.pi * math.sqrt(1 - c_star**2)), rel=1e-4)


def test_bounded_activation_never_reports_infinite_q_star():
    from propagate.errors import UserError
    from propagate.theory import fixed_point_q

    for act in ("tanh", "sigmoid", "erf"):
        assert math.isfinite(fixed_point_q(act, 1e300, 0.05))
        with pytest.raises(UserError, match="bounded"):
            fixed_point_q(act, 1e305, 0.0)


def test_json_is_strict(capsys):
    def strict(text):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))

    assert main(["theory", "--activation", "relu", "--sigma-w2", "3", "--depth", "3", "--json"]) == 0
    data = strict(capsys.readouterr().out)
    assert data["q_star"] == "inf" and float(data["q_star"]) == math.inf
    assert main(["critical", "--activation", "softplus", "--json"]) == 0
    rows = strict(capsys.readouterr().out)["rows"]
    assert rows[0]["sigma_w2"] is None  # nan: no critical point
    from propagate.io import to_json

    assert strict(to_json({"a": np.float64("nan"), "b": [np.inf, -np.inf], "c": np.array([1.5])})) == \
        {"a": None, "b": ["inf", "-inf"], "c": [1.5]}


# ------------------------------------------------------------------ parsing and datasets


def test_negative_values_reach_their_check(capsys):
    """'-1,1' is a value (a list), not an unknown option: the message is about the value."""
    for argv, expected in ((["solve-selu", "--nu-range", "-1,1"], "must be > 0, got '-1,1'"),
                           (["critical", "--sigma-b2", "-0.5:0.5:3"], "values must be >= 0"),
                           (["theory", "--sigma-w2", "-1e-3"], "must be > 0, got -1e-3")):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2 and expected in capsys.readouterr().err
    # and a negative value that is valid is taken as such
    assert main(["theory", "--sigma-w2", "1", "--input-mean", "-0.5", "--depth", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["layers"][0]["post_mean"] == pytest.approx(-0.5)


def test_dataset_problems_and_identity():
    from propagate.data import dataset_identity, dataset_problems, validate_dataset
    from propagate.errors import UserError

    ds = _tiny_dataset("mnist")
    assert dataset_problems(ds, image_shape=(28, 28), input_dim=784) == []
    bad = _tiny_dataset("mnist")
    bad.y_train = bad.y_train * 20  # labels 0..180
    assert dataset_problems(bad) == ["mnist: train labels run from 0 to 180, outside the 10 declared classes 0..9"]
    empty = _tiny_dataset("mnist")
    empty.x_test, empty.y_test = empty.x_test[:0], empty.y_test[:0]
    assert dataset_problems(empty) == ["mnist: the test split has no images"]
    with pytest.raises(UserError, match="do not match the network's 100 inputs"):
        validate_dataset(ds, input_dim=100)
    ident = dataset_identity(ds)
    assert ident == dataset_identity(_tiny_dataset("mnist"))  # same arrays, same identity
    from dataclasses import replace

    sub = replace(ds, x_train=ds.x_train[:12], y_train=ds.y_train[:12])
    assert dataset_identity(sub)["sha256"] != ident["sha256"] and dataset_identity(sub)["n_train"] == 12


def test_simulate_refuses_an_unusable_dataset_input(places, tmp_path, monkeypatch, capsys):
    import shutil

    for broken in ("empty", "labels200", "small"):
        cache = tmp_path / broken
        shutil.copytree(places / broken, cache / "mnist")
        monkeypatch.setenv("PROPAGATE_DATA", str(cache))
        rc = main(["simulate", "--dataset", "mnist", "--depth", "2", "--inputs", "8", "--networks", "2", "--quiet"])
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1 and err.startswith("propagate: error: mnist"), err


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="needs Debian's fashion-mnist")
def test_train_cli_refuses_to_resume_on_another_dataset_before_its_banner(tmp_path, capsys):
    """The issue's case: a run begun on mnist-5k, continued with --dataset fashion-mnist."""
    from propagate.cli import build_parser
    from propagate.commands.train import spec_and_options
    from propagate.data import load_dataset
    from propagate.runfolder import claim
    from propagate.train import run_identity

    out = tmp_path / "run"
    argv = ["train", "--depth", "1", "--width", "4", "--first-width", "4", "--epochs", "1", "--out", str(out)]
    _, spec, options = spec_and_options(build_parser().parse_args(argv))
    claim(out, run_identity(spec, options, load_dataset("mnist-5k"))).release()  # as a run on mnist-5k leaves it
    rc = main([*argv, "--dataset", "fashion-mnist", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    assert "dataset.name = 'mnist-5k', not 'fashion-mnist'" in err and "--no-resume" in err


def test_idx_values_that_do_not_fit_the_format_are_refused(tmp_path):
    from propagate.data import IdxError, load_dataset

    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 1000, (20, 28, 28)).astype(np.int32),  # not pixels
        "train-labels-idx1-ubyte.gz": (np.arange(20) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (10, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": (np.arange(10) % 10).astype(np.float64) + 0.5,  # not whole
    }
    for fname, a in arrays.items():
        (tmp_path / fname).write_bytes(gzip.compress(idx_bytes(a), mtime=0))
    with pytest.raises(IdxError, match="whole numbers 0..255"):
        load_dataset("mnist", tmp_path, download=False)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(
        gzip.compress(idx_bytes(rng.integers(0, 256, (20, 28, 28)).astype(np.int32)), mtime=0))
    with pytest.raises(IdxError, match="labels must be whole numbers"):
        load_dataset("mnist", tmp_path, download=False)


def test_device_check_names_the_device_and_the_gpus_there(monkeypatch):
    import torch

    from propagate.commands._args import check_device
    from propagate.errors import UserError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="--device cuda:7 requested but torch sees no CUDA GPU"):
        check_device("cuda:7")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(UserError, match=r"--device cuda:7 requested but torch sees 1 CUDA GPU \(cuda:0\.\.cuda:0\)"):
        check_device("cuda:7")
    check_device("cuda:0"), check_device("cuda"), check_device("cpu"), check_device("auto")


# ------------------------------------------------------------------ issue 23: the shared mechanisms


def test_output_path_check_guards_every_os_error(tmp_path):
    from propagate.errors import UserError
    from propagate.io import check_output_path

    long = "y" * 300
    for bad, expected in ((tmp_path / f"{long}.csv", "304 bytes long"), (tmp_path / long / "x.csv", "300 bytes long"),
                          (tmp_path / "a\nb.csv", r"control character '\\n'"), ("", "empty string"),
                          ("x" * 5000, "more than the limit of 4096")):
        with pytest.raises(UserError, match=expected) as info:
            check_output_path(bad, "--csv")
        assert "\n" not in str(info.value) and str(info.value).startswith("--csv ")
    with pytest.raises(UserError, match=r"'.*' is a folder"):  # the path quoted by repr
        check_output_path(tmp_path, "--csv")
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match="exists and is not a folder"):
        check_output_path(tmp_path / "f", "--out", kind="dir")
    with pytest.raises(UserError, match="is not a folder"):  # a missing parent under a file cannot be made
        check_output_path(tmp_path / "f" / "x.csv")
    assert check_output_path(tmp_path / "new" / "x.csv") == tmp_path / "new" / "x.csv"  # the writer makes 'new'
    assert not (tmp_path / "new").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_a_rebuild_never_deletes_a_file_the_user_added(tmp_path):
    from propagate.errors import UserError
    from propagate.io import FOLDER_MARKER, atomic_directory

    out = tmp_path / "report"
    with atomic_directory(out) as tmp:
        (tmp / "README.md").write_text("1")
        (tmp / "fig").mkdir()
        (tmp / "fig" / "a.png").write_text("png")
    assert json.loads((out / FOLDER_MARKER).read_text())["files"] == ["README.md", "fig/a.png"]
    with atomic_directory(out) as tmp:  # a rebuild replaces what it built
        (tmp / "README.md").write_text("2")
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match=r"holds 1 file propagate did not write \('notes.txt'\)"):
        with atomic_directory(out) as tmp:
            (tmp / "README.md").write_text("3")
    assert (out / "notes.txt").read_text() == "mine" and (out / "README.md").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]  # no temporary folder left


def _digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_run_folder_check_is_pure_and_claim_records_kind_lock_identity(tmp_path):
    from propagate.runfolder import (IDENTITY_FILE, LOCK_FILE, MARKER_FILE, check_run_folder, claim_folder,
                                     read_identity)

    out = tmp_path / "deep" / "run"
    state = check_run_folder(out, "train", {"kind": "train", "lr": 1e-3})
    assert not state.exists and not (tmp_path / "deep").exists()  # nothing made by a check
    with claim_folder(out, "train", {"kind": "train", "lr": 1e-3}) as lock:
        assert lock.held
        assert sorted(p.name for p in out.iterdir()) == sorted([LOCK_FILE, MARKER_FILE, IDENTITY_FILE])
        info = json.loads((out / LOCK_FILE).read_text())
        assert info["propagate"] == "run folder lock" and info["pid"] == os.getpid()
        assert json.loads((out / MARKER_FILE).read_text())["kind"] == "train"
    assert read_identity(out) == {"kind": "train", "lr": 0.001}
    state = check_run_folder(out, "train", {"kind": "train", "lr": 1e-3})
    assert state.exists and state.ours and state.kind == "train"
    claim_folder(out, "train", {"kind": "train", "lr": 1e-3}).release()  # resumed


def test_run_folder_refusals_leave_everything_as_it_was(tmp_path):
    from propagate.runfolder import FolderBusy, IdentityMismatch, check_run_folder, claim, claim_folder, lock_folder
    from propagate.errors import UserError

    # a user's own .lock (in an otherwise empty folder): never overwritten, by any entry point
    lockdir = tmp_path / "lockdir"
    lockdir.mkdir()
    (lockdir / ".lock").write_text("mine\n")
    for attempt in (lambda: claim_folder(lockdir, "train", {"kind": "train"}), lambda: lock_folder(lockdir),
                    lambda: claim(lockdir, {"kind": "sweep"}), lambda: check_run_folder(lockdir, "sweep")):
        with pytest.raises(IdentityMismatch, match="holds a .lock file that propagate did not write"):
            attempt()
    assert _digest(lockdir) == {".lock": b"mine\n"}
    # a user's identity.json: refused with and without resume
    iddir = tmp_path / "iddir"
    iddir.mkdir()
    (iddir / "identity.json").write_text('{"identity": 1}')
    for resume in (True, False):
        with pytest.raises(UserError, match="was not written by propagate"):
            claim_folder(iddir, "train", {"kind": "train"}, resume=resume)
    assert _digest(iddir) == {"identity.json": b'{"identity": 1}'}
    # a run of another kind: refused before anything is written, --no-resume included
    sweep = tmp_path / "sweep"
    claim_folder(sweep, "sweep", {"kind": "sweep"}).release()
    (sweep / "points").mkdir()
    (sweep / "points" / "p.json").write_text("{}")
    before = _digest(sweep)
    with pytest.raises(IdentityMismatch, match="holds a sweep run, not a train run") as info:
        claim(sweep, {"kind": "train", "config": {}}, resume=False)
    assert info.value.field == "kind" and "--no-resume" not in str(info.value)
    assert _digest(sweep) == before
    # a refused claim of a new folder leaves no folder and no lock behind
    new = tmp_path / "new" / "run"
    with lock_folder(tmp_path / "busy") as held:
        assert held.held
        with pytest.raises(FolderBusy):
            check_run_folder(tmp_path / "busy", None)
    with pytest.raises(ValueError, match="unknown run folder kind"):
        claim_folder(new, "weird")
    assert not (tmp_path / "new").exists()


def test_legacy_run_folders_are_still_ours(tmp_path):
    """Folders written before the marker (identity.json and a lock with pid/host/since) resume and get a marker."""
    from propagate.runfolder import MARKER_FILE, claim

    old = tmp_path / "old"
    old.mkdir()
    (old / "identity.json").write_text(json.dumps({"identity": {"kind": "train", "x": 1},
                                                   "note": "what this run folder holds; ..."}))
    (old / ".lock").write_text(json.dumps({"pid": 1, "host": "h", "since": "2024", "command": "propagate train"}))
    (old / "history.csv").write_text("epoch\n1\n")
    claim(old, {"kind": "train", "x": 1}).release()
    assert json.loads((old / MARKER_FILE).read_text())["kind"] == "train"
    assert (old / "history.csv").read_text() == "epoch\n1\n"


def test_seed_grid_worker_refine_timeout_rules():
    import argparse

    from propagate import limits
    from propagate.commands import _args
    from propagate.errors import UserError

    assert _args.seed("0") == 0 and _args.seed(str(2**63 - 1)) == 2**63 - 1
    for bad in ("-1", str(2**63), str(2**64), "1.5", "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            _args.seed(bad)
    with pytest.raises(UserError, match=r"seeds 9223372036854775806\.\.9223372036854775808"):
        limits.check_seeds(2**63 - 2, 3)
    assert limits.check_grid([10, 10]) == 100
    with pytest.raises(UserError, match="10000000 points"):
        limits.check_grid([1000, 100, 100], "the sweep grid")
    with pytest.raises(UserError, match="10000000000 points is more than the limit"):
        limits.linear_range(0, 1, 10**10)  # refused before anything is built
    assert limits.linear_range(0.0, 1.0, 3) == [0.0, 0.5, 1.0]
    assert _args.workers("1") == 1
    with pytest.raises(argparse.ArgumentTypeError, match="at most"):
        _args.workers(str(limits.max_workers() + 1))
    assert _args.refine_steps("20") == 20
    with pytest.raises(argparse.ArgumentTypeError, match="limit is 20"):
        _args.refine_steps("21")
    assert _args.timeout_seconds("30") == 30.0
    for bad in ("0", "1e308", "1e-320", "nan"):
        with pytest.raises(argparse.ArgumentTypeError):
            _args.timeout_seconds(bad)


def test_scheduler_address_and_data_dir_types(tmp_path):
    import argparse

    from propagate.commands import _args

    for good in ("tcp://127.0.0.1:8786", "10.0.0.5:8786", "tls://scheduler.example.org:8786", "tcp://[::1]:8786"):
        assert _args.scheduler_address(good) == good
    for bad in ("", " ", "not an address", "http://127.0.0.1:1", "tcp://host", "tcp://host:0", "tcp://:8786",
                "tcp://host:99999", "inproc://x"):
        with pytest.raises(argparse.ArgumentTypeError):
            _args.scheduler_address(bad)
    assert _args.data_dir(str(tmp_path)) == str(tmp_path)
    for bad in ("", str(tmp_path / "nosuch"), "a\nb"):
        with pytest.raises(argparse.ArgumentTypeError):
            _args.data_dir(bad)


def test_warnings_become_one_line_after_the_output_and_vanish_after_an_error(monkeypatch, capsys):
    import warnings

    from propagate.commands import theory

    def noisy_run(args):
        import numpy as np

        np.float64(1e308) * 10  # RuntimeWarning: overflow
        warnings.warn("a torch-like notice\nwith a second line", UserWarning)
        print("result")
        return 0

    monkeypatch.setattr(theory, "run", noisy_run)
    assert main(["theory", "--sigma-w2", "1"]) == 0
    out, err = capsys.readouterr()
    assert out == "result\n"
    assert err.splitlines() == ["propagate: warning: overflow encountered in scalar multiply (test_reliability.py:"
                                + err.splitlines()[0].rsplit(":", 1)[1], "propagate: warning: a torch-like notice "
                                "with a second line"]

    def noisy_failure(args):
        import numpy as np

        from propagate.errors import UserError

        np.log(np.float64(0.0))  # RuntimeWarning: divide by zero
        raise UserError("bad\ninput")

    monkeypatch.setattr(theory, "run", noisy_failure)
    assert main(["theory", "--sigma-w2", "1"]) == 2
    assert capsys.readouterr().err == "propagate: error: bad input\n"


def test_subnormal_numbers_are_refused_everywhere(capsys):
    for argv in (["theory", "--sigma-w2", "1e-320"], ["critical", "--sigma-b2", "5e-324"],
                 ["solve-selu", "--mean", "-1e-310"]):
        with pytest.raises(SystemExit):
            main(argv)
        assert "smallest normal float64" in capsys.readouterr().err


def test_solve_selu_variance_range_is_the_librarys():
    from propagate import selu
    from propagate.commands import solve_selu
    from propagate.errors import UserError

    assert solve_selu.VAR_RANGE == selu.VAR_RANGE
    for var in (1e-13, 1e13, 1e308):
        with pytest.raises(UserError, match="the variance must be from 1e-12 to 1e"):
            selu.solve_selu(0, var, digits=10)
    # at the small end the answer keeps its digits: lambda - 1 = 0.0856137... * sqrt(var) to leading order
    small = selu.solve_selu(0, 1e-12, digits=15)
    assert float(small.lambda_ - 1) == pytest.approx(8.5613691709511621673e-8, rel=1e-12)


# ------------------------------------------------------------------ records read back (fuzzing, round 3)
# A record propagate wrote (a point file, a checkpoint) is checked when it is read back: one of the wrong layout
# (well-formed JSON or pickle, wrong fields) is refused exactly like a damaged one, with one line, and left in place.

#: Well-formed JSON that is no point record, and garbage: all refused with the same line.
WRONG_POINT_FILES = ['{"a": 1}', "[]", "null", '"text"', '{"status": "ok"}', '{"status": "ok", "value": null}',
                     '{"status": "failed", "value": []}', '{"status": "ok", "meta": 3, "value": []}', "garbage{"]


def _fake_ensemble(spec, options, seeds, dataset):
    return [{"seed": s, "loss": 0.5, "acc": 0.9, "val_loss": 0.5, "val_acc": 0.9, "train_eval_acc": 0.9,
             "diverged": False, "epochs_done": 1} for s in seeds]


def _fake_prediction(spec, options, dataset):
    return {"max_lr_predicted": 1e-3, "per_seed": [{"seed": 0, "max_lr_predicted": 1e-3, "criterion": "c"}]}


def test_trainability_point_files_of_the_wrong_layout_are_refused_like_damaged_ones(tmp_path):
    from propagate.errors import UserError
    from propagate.spec import NetworkSpec
    from propagate.trainability import TrainabilityOptions, trainability

    configs = [("a", NetworkSpec.stack(1, 4, input_dim=784, first_width=4, out_features=10, name="a"))]
    opts = TrainabilityOptions(seeds=(0, 1), epochs=1, sharpness=False)
    out, data = tmp_path / "tb", _tiny_dataset()

    def run():
        return trainability(configs, [1e-3], data, opts, trainer=_fake_ensemble, predictor=_fake_prediction,
                            out_dir=out)

    first = run()
    files = sorted((out / "points").glob("*.json"))
    assert len(files) == 2  # the point and the prediction
    bad_rows = json.dumps({"status": "ok", "value": [{"seed": 0, "acc": "high"}]})
    bad_pred = json.dumps({"status": "ok", "value": {"max_lr_predicted": "big", "per_seed": []}})
    for path in files:
        good = path.read_text()
        for text in WRONG_POINT_FILES + [bad_rows, bad_pred]:
            path.write_text(text)
            with pytest.raises(UserError, match=r"^cannot read the point file .*; move it away to compute the point "
                                                r"again$"):
                run()
            assert path.read_text() == text  # left as it was, for the user to look at
        path.write_text(good)
    assert run().points.equals(first.points)  # and the good records still resume
    # a point file of a folder written before the runner is read the same way
    for path in files:
        path.unlink()
    legacy = out / "points" / "a_lr0.001.json"
    for text in ["garbage{", "[]", '{"lr": 0.001}', json.dumps({"lr": 1e-3, "spec": {}, "seeds": [{"seed": 0}]})]:
        legacy.write_text(text)
        with pytest.raises(UserError, match=r"^cannot read the point file .*a_lr0\.001\.json"):
            run()
        assert legacy.read_text() == text


def test_trainability_cli_refuses_a_point_file_of_the_wrong_layout_with_one_line(tmp_path, capsys):
    argv = ["trainability", "--dataset", "mnist-5k", "--depth", "1", "--width", "4", "--seeds", "1", "--epochs", "1",
            "--no-progress", "--threads", "1", "--lr", "1e-3", "--no-sharpness", "--no-predict",
            "--out", str(tmp_path / "tb")]
    assert main(argv) == 0
    (point,) = (tmp_path / "tb" / "points").glob("*.json")
    capsys.readouterr()
    for text in ('{"a": 1}', "garbage{"):  # the fuzzed record, and the damaged one it must be treated like
        point.write_text(text)
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("propagate: error: cannot read the point file "), err
        assert point.read_text() == text


def _theory_sweep(tmp_path):
    """A finished two-point theory sweep (its records written in process: no cluster), its file and folder."""
    from propagate.runfolder import claim
    from propagate.runner import Result
    from propagate.sweep import load_plan, point_store, point_value, run_sweep, runner_point

    toml = tmp_path / "sw.toml"
    toml.write_text('lens = "theory"\n[fixed]\ndepth = 2\nactivation = "relu"\n[grid]\nsigma_w2 = [1.0, 2.0]\n')
    plan, out = load_plan(toml), tmp_path / "sw"
    claim(out, {"kind": "sweep"}).release()
    for p in plan.points:
        rp = runner_point(plan, p)
        point_store(out).save(Result(rp, True, point_value(plan.lens, p.argv)))
    res = run_sweep(plan, out, workers=1, progress=False)  # nothing to compute: no cluster either
    assert (res.computed, res.skipped, res.failed) == (0, 2, [])
    return toml, out


def test_sweep_point_files_of_the_wrong_layout_are_refused_like_damaged_ones(tmp_path, capsys):
    toml, out = _theory_sweep(tmp_path)
    files = sorted((out / "points").glob("*.json"))
    table = json.dumps({"status": "ok", "value": {"tables": {"results": [1, 2]}}})
    no_results = json.dumps({"status": "ok", "value": {"tables": {"layers": []}}})
    capsys.readouterr()
    for text in WRONG_POINT_FILES + [table, no_results]:
        for path in files:
            path.write_text(text)
        (out / "results.parquet").unlink(missing_ok=True)  # so the records are gathered again
        assert main(["sweep", str(toml), "--out", str(out), "--workers", "1", "--no-progress"]) == 2, text
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("propagate: error: cannot read the point file "), (text, err)
        assert all(path.read_text() == text for path in files)


def test_sweep_refuses_a_folder_where_its_results_go_before_any_work(tmp_path, capsys):
    toml, out = _theory_sweep(tmp_path)
    for name in ("results.parquet", "results.parquet.meta.json"):
        target = out / name
        target.unlink()
        target.mkdir()
        (target / "mine.txt").write_text("the user's\n")
        before = {k: v for k, v in _tree_digest(out).items() if k != ".lock"}
        capsys.readouterr()
        assert main(["sweep", str(toml), "--out", str(out), "--workers", "1", "--no-progress"]) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err.count("\n") == 1, captured
        assert captured.err.startswith(f"propagate: error: {str(target)!r} is a folder"), captured.err
        assert {k: v for k, v in _tree_digest(out).items() if k != ".lock"} == before  # not even sweep.json
        (target / "mine.txt").unlink()
        target.rmdir()
        assert main(["sweep", str(toml), "--out", str(out), "--workers", "1", "--no-progress"]) == 0
        assert target.is_file()


def _tiny_options():
    from propagate.train import TrainOptions

    return TrainOptions(epochs=1, batch_size=8, probe_size=8, threads=1, train_eval_size=8)


#: One field of seed 0's record in a checkpoint, rewritten: each must be refused like a damaged checkpoint.
CHECKPOINT_TAMPERS = {
    "epoch-negative": ("epoch", -5), "epoch-text": ("epoch", "abc"), "epoch-bool": ("epoch", True),
    "state-none": ("state", None), "state-empty": ("state", {}), "history-none": ("history", None),
    "history-rows": ("history", [{"epoch": 1}]), "layers-none": ("layers", None), "status": ("status", "done"),
    "record": (None, [1, 2]),
}


def test_train_checkpoint_of_the_wrong_layout_is_refused_like_a_damaged_one(tmp_path, capsys):
    import torch

    from propagate.runstore import CHECKPOINT_FILE

    out = tmp_path / "tr"
    argv = ["train", "--dataset", "mnist-5k", "--depth", "1", "--width", "4", "--first-width", "4", "--no-progress",
            "--threads", "1", "--out", str(out)]
    assert main(argv + ["--epochs", "1"]) == 0
    path = out / CHECKPOINT_FILE
    good = path.read_bytes()

    def rewrite(change, *args):
        ckpt = torch.load(path, weights_only=False)
        change(ckpt, *args)
        torch.save(ckpt, path)
        return path.read_bytes()

    def refused(what: str) -> None:
        capsys.readouterr()
        assert main(argv + ["--epochs", "2"]) == 2
        captured = capsys.readouterr()
        assert captured.err.count("\n") == 1 and "Traceback" not in captured.err, captured.err
        assert captured.err.startswith("propagate: error: ") and what in captured.err, captured.err

    for name, (field, value) in CHECKPOINT_TAMPERS.items():
        path.write_bytes(good)
        if field is None:
            written = rewrite(lambda c, v: c["seeds"].__setitem__(0, v), value)
        else:
            written = rewrite(lambda c, f, v: c["seeds"][0].__setitem__(f, v), field, value)
        refused(f"cannot read the checkpoint {str(path)!r} (wrong layout: seed 0")
        assert path.read_bytes() == written, name  # kept as it was
    path.write_bytes(good)
    rewrite(lambda c: c["seeds"].__setitem__("x", c["seeds"].pop(0)))
    refused("wrong layout: seed 'x' is not a seed number")
    path.write_bytes(b"garbage")  # the damaged file the wrong layouts are treated like
    refused(f"cannot read the checkpoint {str(path)!r} (")
    # weights of another network (a layer missing, a shape changed): refused before the banner too
    for change in (lambda sd: sd.pop(next(iter(sd))), lambda sd: sd.__setitem__(next(iter(sd)), torch.zeros(3, 3))):
        path.write_bytes(good)
        written = rewrite(lambda c, ch: ch(c["seeds"][0]["state"]["model"]), change)
        refused("(wrong layout: seed 0: the saved state is not of this network (")
        assert path.read_bytes() == written
    # and, should a state that does not fit get past the read, before anything is loaded into the network
    from propagate.errors import UserError
    from propagate.optim import make_optimizer
    from propagate.runstore import load_seed_states
    from propagate.spec import NetworkSpec, build_model

    ckpt = torch.load(out / CHECKPOINT_FILE, weights_only=False)
    model = build_model(NetworkSpec.stack(1, 5, input_dim=784, first_width=5, out_features=10), seeds=[0])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UserError, match=r"^the checkpoint's saved state does not fit this network \(.*--no-resume"):
        load_seed_states(model, make_optimizer(model.parameters(), _tiny_options()), [ckpt["seeds"][0]["state"]])
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    path.write_bytes(good)
    assert main(argv + ["--epochs", "2"]) == 0  # the good checkpoint resumes


def test_a_killed_writes_temporaries_are_cleared_when_its_folder_is_claimed_again(tmp_path):
    """SIGKILL leaves an atomic write's temporary (``.layers.csv.XXXXXXXX.tmp``) in a run folder; the next run
    that holds the folder's lock removes it. Anything not named like one (a user's dot file, a folder) stays."""
    from propagate.runfolder import claim_folder

    folder = tmp_path / "run"
    claim_folder(folder, "train", {"kind": "train", "x": 1}).release()
    stale = [folder / ".layers.csv.k3j2x9_a.tmp", folder / ".seeds.csv.0abc_def.tmp"]
    kept = [folder / ".notes.tmp", folder / "mine.ABCDEFGH.tmp", folder / ".a.csv.ABCDEFGH.tmp"]
    for p in stale + kept:
        p.write_text("half")
    (folder / ".b.csv.abcdefgh.tmp").mkdir()
    (folder / "points").mkdir()
    stale.append(folder / "points" / ".0a1b2c3d.json.x1y2z3w4.tmp")  # a point file's write, killed
    stale[-1].write_text("{")
    claim_folder(folder, "train", {"kind": "train", "x": 1}).release()
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in kept) and (folder / ".b.csv.abcdefgh.tmp").is_dir()


def test_a_killed_builds_temporary_folder_goes_when_the_folder_is_built_again(tmp_path):
    """A report killed outright leaves its staging folder ``.OUT.XXXXXXXX.tmp/`` beside --out; the next build of
    that folder removes it when its marker's builder, on this machine, no longer runs. A build still running (its
    process alive), one from another machine, and a folder without such a marker stay."""
    import json
    import socket
    import subprocess
    import sys

    from propagate.io import FOLDER_MARKER, _MARKER_NOTE, atomic_directory

    out = tmp_path / "rep"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        here = socket.gethostname()
        cases = {"dead": {"pid": dead.pid, "host": here}, "alive": {"pid": alive.pid, "host": here},
                 "elsewhere": {"pid": dead.pid, "host": here + "-other"}, "unmarked": None}
        folders = {}
        for i, (name, builder) in enumerate(cases.items()):
            f = tmp_path / f".rep.{name[:4]}{i:04d}.tmp"
            f.mkdir()
            (f / "half.csv").write_text("1,2\n")
            if builder is not None:
                (f / FOLDER_MARKER).write_text(json.dumps({"note": _MARKER_NOTE, "files": [], "builder": builder}))
            folders[name] = f
        with atomic_directory(out) as tmp:
            (tmp / "a.txt").write_text("x")
        assert not folders["dead"].exists()
        assert all(folders[n].is_dir() for n in ("alive", "elsewhere", "unmarked"))
        assert (out / "a.txt").read_text() == "x"
        assert "builder" not in json.loads((out / FOLDER_MARKER).read_text())  # only the staging folder names it
    finally:
        alive.kill()
        alive.wait()
