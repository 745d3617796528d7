"""propagate: the statistics of signal propagation in deep neural networks.

One network spec, three lenses (theory, simulation, training), one per-layer
table. Heavy dependencies load on first use, so ``import propagate`` is quick.

>>> import propagate
>>> r = propagate.solve_selu(mean=0, var=1, digits=30)   # doctest: +SKIP
>>> run = propagate.load("runs/snn")                      # doctest: +SKIP  (any output folder or file)
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it (imported on first access)
_LAZY = {
    "UserError": "propagate.errors",
    "get_activation": "propagate.activations",
    "register_activation": "propagate.activations",
    "list_activations": "propagate.activations",
    "get_init": "propagate.inits",
    "list_inits": "propagate.inits",
    "NetworkSpec": "propagate.spec",
    "build_model": "propagate.spec",
    "solve_selu": "propagate.selu",
    "SeluSolution": "propagate.selu",
    "predict_layers": "propagate.theory",
    "analyze": "propagate.theory",
    "critical_sigma_w2": "propagate.theory",
    "simulate": "propagate.simulate",
    "load_dataset": "propagate.data",
    "train": "propagate.train",
    "TrainOptions": "propagate.train",
    "get_preset": "propagate.presets",
    "list_presets": "propagate.presets",
    "build_report": "propagate.report",
    "inspect": "propagate.model_stats",
    "InspectResult": "propagate.model_stats",
    "LayerStats": "propagate.model_stats",
    "ReportOptions": "propagate.report",
    "load": "propagate.results",
    "Loaded": "propagate.results",
    "StepLog": "propagate.steplog",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'propagate' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
