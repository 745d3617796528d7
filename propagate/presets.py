"""The lecture demo's five MNIST runs and the recipes it left out, as named presets.

The lecture demo (a 2017 notebook; ``shared/reference/seed-experiments.md``
holds its listings and numbers) trained one network five ways. Every preset is
that network (784 inputs, 51 hidden layers: Dense(512) then 50 x Dense(256),
and a Dense(10) readout, 52 weight matrices counting the readout; see
:meth:`NetworkSpec.demo`) trained with the demo's Keras settings
(:class:`~propagate.train.TrainOptions` defaults: RMSprop lr 1e-3, rho 0.9,
eps 1e-7; categorical cross-entropy; batch 128; 3 epochs). Presets differ
only in activation, kernel initializer and BatchNormalization (Keras momentum
0.99 = torch 0.01, epsilon 1e-3, on the input of each Dense(256) and of the
readout, none before the first layer).

Kernel initializer: the demo's titles name one initializer per run; we use it
for *every* Dense layer, readout included (the demo's listings for runs 1-3
name none, so Keras' default ``glorot_uniform`` applies everywhere; for runs
4-5 we take the named initializer to apply to the readout too, as setting it on
each ``Dense`` in a loop does). Biases are zero (Keras' default).

Runs 1 and 3 follow the titles' intent (``relu`` without BN; ``selu`` without
BN), not the mistaken listings that repeat the ReLU + BN code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from propagate.errors import UserError
from propagate.spec import NetworkSpec

__all__ = ["Preset", "PRESETS", "DEMO_LR", "get_preset", "list_presets"]


#: The learning rate of the lecture demo's runs (Keras' RMSprop default): its reported numbers are for this one.
DEMO_LR = 1e-3


@dataclass(frozen=True)
class Preset:
    """A named training recipe on the lecture demo's network.

    ``demo_run`` is the number of the demo's run it reproduces (1-5), or
    ``None`` for recipes the demo left out. ``reported`` holds what the demo's
    write-up reported for that run (one run each, at lr :data:`DEMO_LR`, on
    the full MNIST), or is ``None``: ``acc`` and ``val_acc`` are per-epoch
    accuracies (fractions in [0, 1]) on the 60,000 training images (Keras'
    running mean over the epoch's batches, train-mode BN) and the 10,000 test
    images; ``loss``/``val_loss`` are the categorical cross-entropies (nats,
    mean per sample) after epoch 3.
    """

    name: str
    title: str
    activation: str
    init: str
    batchnorm: bool
    demo_run: int | None = None
    reported: dict | None = field(default=None, compare=False)
    note: str = field(default="", compare=False)

    @property
    def seed_run(self) -> int | None:
        """Old name of :attr:`demo_run` (kept for one release)."""
        return self.demo_run

    def spec(self, **changes):
        """The :class:`~propagate.spec.NetworkSpec` of this preset (``changes`` override fields)."""
        spec = NetworkSpec.demo(self.activation, self.init, self.batchnorm, name=self.name)
        return spec.with_(**changes) if changes else spec

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "title": self.title,
            "activation": self.activation,
            "init": self.init,
            "batchnorm": self.batchnorm,
            "demo_run": self.demo_run,
            "reported": self.reported,
            "note": self.note,
        }


def _reported(acc, val_acc, loss, val_loss, epoch_seconds):
    return {"acc": list(acc), "val_acc": list(val_acc), "loss": loss, "val_loss": val_loss,
            "epoch_seconds": epoch_seconds}


#: All presets, in the order ``reproduce`` runs them.
PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset("relu", "ReLU, no BN (demo run 1)", "relu", "glorot_uniform", False, 1,
               _reported((0.1122, 0.1124, 0.1124), (0.1135, 0.1135, 0.1135), 2.3014, 2.3011, "12-15 s (2017 GPU)"),
               "the demo's listing was a copy of the ReLU + BN code; we run the title"),
        Preset("relu-bn", "ReLU + BN (demo run 2)", "relu", "glorot_uniform", True, 2,
               _reported((0.2476, 0.2478, 0.2054), (0.2367, 0.1034, 0.1241), 2.1711, 2.4536, "30-46 s (2017 GPU)")),
        Preset("selu", "SELU, no BN (demo run 3)", "selu", "glorot_uniform", False, 3,
               _reported((0.1119, 0.1124, 0.1124), (0.1135, 0.1135, 0.1135), 2.3014, 2.3012, "12-15 s (2017 GPU)"),
               "the demo's listing was a copy of the ReLU + BN code; its numbers look like ReLU; we run the title"),
        Preset("selu-bn-random-uniform", "SELU + BN, RandomUniform(-0.05, 0.05) (demo run 4)", "selu",
               "random_uniform", True, 4,
               _reported((0.1559, 0.1967, 0.2342), (0.1403, 0.1165, 0.1073), 2.0270, 2.3293, "30-46 s (2017 GPU)")),
        Preset("selu-bn-lecun-uniform", "SELU + BN, lecun_uniform (demo run 5)", "selu", "lecun_uniform", True, 5,
               _reported((0.2284, 0.4039, 0.4738), (0.0996, 0.1039, 0.1164), 1.4559, 3.5585, "30-46 s (2017 GPU)")),
        Preset("selu-lecun-normal", "SELU, lecun_normal, no BN (the SNN paper's recipe)", "selu", "lecun_normal",
               False, None, None, "not in the lecture demo"),
        Preset("relu-he-normal", "ReLU, he_normal, no BN (He et al.'s recipe)", "relu", "he_normal", False, None,
               None, "not in the lecture demo"),
    ]
}


def get_preset(name: str) -> Preset:
    """The preset called ``name``; :class:`UserError` naming the known ones otherwise."""
    key = str(name).strip().lower().replace("_", "-")
    if key not in PRESETS:
        raise UserError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[key]


def list_presets() -> list[str]:
    """Preset names, the lecture demo's runs 1-5 first, then the recipes it left out."""
    return list(PRESETS)
