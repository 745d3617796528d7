"""One look for every figure: colours per configuration, sizes, saving.

A configuration keeps its colour in every figure (simulation, theory and
training alike), keyed by activation and initializer; batch normalization is
shown by line style or panel, never by a new colour.
"""

from __future__ import annotations

import contextlib
import functools
import io
import zlib
from pathlib import Path

import matplotlib.pyplot as plt

from propagate.io import atomic_write_bytes
from propagate.stats import CONFIG_COLUMNS as STATS_CONFIG_COLUMNS

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


def styled(fn):
    """Decorator: draw the figure under :func:`report_style` (the caller's settings are restored after)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with report_style():
            return fn(*args, **kwargs)

    return wrapper


#: The configuration fields a result table carries as columns (one value per row, defined
#: in :mod:`propagate.stats`); the report reads a configuration from these, never from its label.
CONFIG_COLUMNS = tuple(STATS_CONFIG_COLUMNS)
#: ``normalization`` values and how each is drawn (colour stays the (activation, init) one).
LINE_STYLES = {"none": "-", "batchnorm": "--", "layernorm": "-."}


def colour(activation: str, init: str) -> str:
    """The colour of an (activation, init) configuration, the same in every process.

    Unlisted pairs get a fallback colour from a CRC-32 of the names (Python's
    ``hash()`` of a string is salted per process, so it would recolour a
    configuration from one run to the next).
    """
    key = (activation, init)
    if key in CONFIG_COLOURS:
        return CONFIG_COLOURS[key]
    return _FALLBACK[zlib.crc32(f"{activation}\0{init}".encode()) % len(_FALLBACK)]


def line_style(normalization: str = "none") -> str:
    """Matplotlib line style of a normalization (``none``, ``batchnorm``, ``layernorm``)."""
    return LINE_STYLES.get(normalization, ":")


def config_fields(table) -> dict:
    """The configuration fields of a table (or row) that holds one configuration.

    Reads the :data:`CONFIG_COLUMNS` columns; ``normalization`` defaults to
    ``"none"`` and ``residual`` to ``0.0`` when absent. Raises ``ValueError``
    when a column has several values (the table mixes configurations) and
    ``KeyError`` when ``activation`` or ``init`` is missing.
    """
    out = {}
    for col in CONFIG_COLUMNS:
        if col not in table:
            if col in ("activation", "init"):
                raise KeyError(f"the table has no {col!r} column; configurations are read from columns "
                               f"{CONFIG_COLUMNS}, not from labels")
            out[col] = "none" if col == "normalization" else 0.0
            continue
        vals = table[col]
        vals = list(dict.fromkeys(vals.tolist())) if hasattr(vals, "tolist") else [vals]
        if len(vals) != 1:
            raise ValueError(f"the table mixes configurations: {col} takes the values {vals}")
        v = vals[0]
        out[col] = float(v) if col == "residual" else str(v)
    return out


def config_title(activation: str, init: str, normalization: str = "none", residual: float = 0.0) -> str:
    """Display name of a configuration: ``"selu / lecun_normal + BN, residual 0.5"``."""
    name = f"{activation} / {init}"
    name += {"batchnorm": " + BN", "layernorm": " + LN"}.get(normalization, "" if normalization == "none"
                                                             else f" + {normalization}")
    return name + (f", residual {residual:g}" if residual else "")


def figure_files(fig, formats=("png", "svg")) -> dict[str, bytes]:
    """``fig`` encoded in each of ``formats`` (``{format: bytes}``, as :func:`save_figure` writes them); closes it."""
    files = {}
    for fmt in formats:
        buf = io.BytesIO()
        # SVG element ids from a fixed salt (not a random one per file): the same figure gives the same bytes
        with plt.rc_context({"svg.hashsalt": "propagate"}):
            fig.savefig(buf, format=fmt, bbox_inches="tight", dpi=STYLE["savefig.dpi"],
                        metadata={"Date": None} if fmt == "svg" else None)
        files[fmt] = buf.getvalue()
    plt.close(fig)
    return files


def write_figure_files(files: dict[str, bytes], path: str | Path) -> list[Path]:
    """Write :func:`figure_files`' bytes as ``path`` with each format's suffix, atomically."""
    path = Path(path)
    return [atomic_write_bytes(path.with_suffix("." + fmt), data) for fmt, data in files.items()]


def save_figure(fig, path: str | Path, formats=("png", "svg")) -> list[Path]:
    """Save ``fig`` as ``path`` with each suffix in ``formats``, atomically; close it."""
    return write_figure_files(figure_files(fig, formats), path)


def draw(plot, args=(), kwargs=None, *, style: bool = False, formats=("png", "svg"),
         headless: bool = True) -> dict[str, bytes]:
    """Draw ``plot(*args, **kwargs)`` (a function that returns a figure), under :func:`report_style` if ``style``,
    and return its files' bytes (:func:`figure_files`). A report's figure as one task: with ``headless`` (a
    worker of a cluster, which has no display) on the Agg backend; ``headless=False`` leaves the caller's
    backend alone (a notebook's)."""
    import matplotlib

    if headless and matplotlib.get_backend().lower() != "agg":
        plt.switch_backend("Agg")
    with report_style() if style else contextlib.nullcontext():
        return figure_files(plot(*args, **(kwargs or {})), formats)
