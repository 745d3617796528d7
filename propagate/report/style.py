"""One look for every figure: colours per configuration, sizes, saving.

A configuration keeps its colour in every figure (simulation, theory and
training alike), keyed by activation and initializer; batch normalization is
shown by line style or panel, never by a new colour.
"""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib.pyplot as plt

from propagate.io import atomic_write_bytes

#: (activation, init) -> colour, the same in every figure.
CONFIG_COLOURS = {
    ("relu", "glorot_uniform"): "#d62728",
    ("relu", "he_normal"): "#ff7f0e",
    ("selu", "glorot_uniform"): "#9467bd",
    ("selu", "random_uniform"): "#8c564b",
    ("selu", "lecun_uniform"): "#1f77b4",
    ("selu", "lecun_normal"): "#2ca02c",
    ("tanh", "glorot_uniform"): "#e377c2",
}
_FALLBACK = ["#7f7f7f", "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a"]

#: The look of the report's figures; applied inside :func:`report_style` only, so
#: importing the figure functions never changes a notebook's own settings.
STYLE = {
        "figure.dpi": 110,
        "savefig.dpi": 130,
        "axes.grid": True,
        "grid.alpha": 0.3,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "legend.fontsize": 8,
        "axes.titlesize": 11,
        "axes.labelsize": 10,
}


def report_style():
    """Context manager: matplotlib settings of the report's figures."""
    return plt.rc_context(STYLE)


def colour(activation: str, init: str) -> str:
    """The colour of an (activation, init) configuration."""
    key = (activation, init)
    if key in CONFIG_COLOURS:
        return CONFIG_COLOURS[key]
    return _FALLBACK[hash(key) % len(_FALLBACK)]


def split_label(label: str) -> tuple[str, str, bool]:
    """``"selu/lecun_normal+BN"`` -> ``("selu", "lecun_normal", True)``."""
    base, _, rest = label.partition("+")
    act, _, init = base.partition("/")
    return act, init, "BN" in rest.split("+")


def label_colour(label: str) -> str:
    act, init, _ = split_label(label)
    return colour(act, init)


def save_figure(fig, path: str | Path, formats=("png", "svg")) -> list[Path]:
    """Save ``fig`` as ``path`` with each suffix in ``formats``, atomically; close it."""
    path = Path(path)
    written = []
    for fmt in formats:
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, bbox_inches="tight", dpi=STYLE["savefig.dpi"], metadata={"Date": None} if fmt == "svg" else None)
        written.append(atomic_write_bytes(path.with_suffix("." + fmt), buf.getvalue()))
    plt.close(fig)
    return written
