"""Confidence intervals over seeds: every training number as a mean with its interval.

Each seed of an ensemble is an independent draw of one configuration (its own
initialization, shuffling order and dropout masks), so a metric measured on
``n`` seeds is ``n`` independent samples. Its mean gets the two-sided Student t
interval (Student, "The probable error of a mean", Biometrika 6, 1908)::

    mean +- t_{1 - (1 - level)/2, n - 1} * s / sqrt(n),   s = sample std (ddof 1)

It assumes the per-seed values are roughly normal, which for ``n = 5`` is an
assumption, not a fact: the interval is a stated convention, not a guarantee.

Two configurations trained on the *same* seeds are compared through the paired
differences ``d_k = a_k - b_k`` (same initialization stream, same shuffles), whose
t interval is usually much narrower than the two separate intervals would
suggest. "A beats B" means that interval lies above 0.

With one seed there is no spread to estimate: the interval is ``(nan, nan)``
and :func:`Interval.describe` says "1 seed: no interval". Missing values
(``NaN``) are left out and ``n`` counts only the values used.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np

__all__ = [
    "LEVEL",
    "Interval",
    "t_interval",
    "paired_difference",
    "summarize_seeds",
    "format_number",
]

#: Confidence level of every interval in the package.
LEVEL = 0.95


def format_number(x, digits: int = 3) -> str:
    """A number for prose and tables: ``digits`` decimals, or ``digits`` significant
    digits in scientific form when ``|x| < 1e-3`` or ``>= 1e4``; ``"n/a"`` for
    ``None`` and non-finite values."""
    if x is None or (isinstance(x, (float, np.floating)) and not math.isfinite(x)):
        return "n/a"
    return f"{x:.{digits}g}" if abs(x) < 1e-3 or abs(x) >= 1e4 else f"{x:.{digits}f}"


@dataclass(frozen=True)
class Interval:
    """A mean over ``n`` seeds and its two-sided t interval at ``level``.

    ``low``/``high`` are ``nan`` when ``n < 2`` (no interval) and ``mean`` is
    ``nan`` when ``n == 0``. ``std`` is the sample standard deviation (ddof 1).
    """

    mean: float
    low: float
    high: float
    n: int
    std: float = math.nan
    level: float = LEVEL

    @property
    def has_interval(self) -> bool:
        return self.n >= 2 and math.isfinite(self.low) and math.isfinite(self.high)

    def excludes(self, value: float) -> bool:
        """True when the interval lies strictly on one side of ``value`` (False without an interval)."""
        return self.has_interval and (self.low > value or self.high < value)

    def describe(self, digits: int = 3) -> str:
        """``"0.830 (95% t interval 0.815 to 0.845, N = 5 seeds)"``, or ``"... (1 seed: no interval)"``."""
        m = format_number(self.mean, digits)
        if self.n == 0:
            return "n/a (no seeds)"
        if not self.has_interval:
            return f"{m} (1 seed: no interval)" if self.n == 1 else f"{m} (N = {self.n}: no interval)"
        return (f"{m} ({100 * self.level:g}% t interval {format_number(self.low, digits)} to "
                f"{format_number(self.high, digits)}, N = {self.n} seeds)")

    def to_dict(self) -> dict:
        return asdict(self)


def _clean(values) -> np.ndarray:
    v = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=float).ravel()
    return v[~np.isnan(v)]


def t_interval(values: Iterable[float], level: float = LEVEL) -> Interval:
    """Student t interval of the mean of ``values`` (one per seed; NaN left out)."""
    from scipy import stats

    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    v = _clean(values)
    n = len(v)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0, math.nan, level)
    mean = float(v.mean())
    if n == 1:
        return Interval(mean, math.nan, math.nan, 1, math.nan, level)
    std = float(v.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * std / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, std, level)


def _by_seed(x) -> dict:
    if isinstance(x, Mapping):
        return {k: float(v) for k, v in x.items()}
    if hasattr(x, "items") and hasattr(x, "index"):  # pandas Series indexed by seed
        return {k: float(v) for k, v in x.items()}
    raise TypeError("paired values must be a mapping or Series from seed to value")


def paired_difference(a, b, level: float = LEVEL) -> Interval:
    """t interval of the mean of ``a[seed] - b[seed]`` over the seeds both have.

    ``a`` and ``b`` map seed -> value (dicts or pandas Series indexed by seed);
    only seeds present (and not NaN) in both are paired, so ``n`` is the
    number of pairs.
    """
    da, db = _by_seed(a), _by_seed(b)
    common = [s for s in da if s in db]
    return t_interval([da[s] - db[s] for s in common], level)


def summarize_seeds(table, keys: Sequence[str], metrics: Sequence[str] | None = None, *, seed_column: str = "seed",
                    level: float = LEVEL):
    """Per-seed rows -> one row per ``keys`` group with ``<metric>_mean``,
    ``<metric>_ci_low``, ``<metric>_ci_high`` and ``n_seeds``.

    ``table`` has one row per (``keys``..., ``seed``); ``metrics`` defaults to
    every numeric column that is neither a key nor the seed column.
    ``n_seeds`` counts the distinct seeds of the group; a metric missing (NaN)
    in some seeds is averaged over the others. With one seed the interval
    columns are NaN.
    """
    import pandas as pd

    keys = list(keys)
    missing = [k for k in keys + [seed_column] if k not in table.columns]
    if missing:
        raise KeyError(f"summarize_seeds: table has no column(s) {missing}")
    if metrics is None:
        metrics = [c for c in table.columns if c not in keys and c != seed_column
                   and pd.api.types.is_numeric_dtype(table[c]) and not pd.api.types.is_bool_dtype(table[c])]
    rows = []
    for group, t in table.groupby(keys, sort=False, dropna=False):
        group = group if isinstance(group, tuple) else (group,)
        row = dict(zip(keys, group))
        for m in metrics:
            iv = t_interval(t[m].to_numpy(float), level)
            row[f"{m}_mean"], row[f"{m}_ci_low"], row[f"{m}_ci_high"] = iv.mean, iv.low, iv.high
        row["n_seeds"] = int(t[seed_column].nunique())
        rows.append(row)
    cols = keys + [f"{m}_{s}" for m in metrics for s in ("mean", "ci_low", "ci_high")] + ["n_seeds"]
    return pd.DataFrame(rows, columns=cols)
