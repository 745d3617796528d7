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

**Bounded quantities stay in their range.** A plain t interval of five
accuracies near 1 can reach above 1 (``0.94 +- 0.09``), one of two losses below
0. So every quantity has a *kind* (:func:`kind_of`, by name, in one place):

- ``"proportion"`` (accuracies, fractions: ``acc``, ``val_acc``, ``dead_frac``,
  ...): values in [0, 1]; the t interval is built on the logit scale,
- ``"positive"`` (losses, variances, norms, learning rates, times): values
  >= 0; the t interval is built on the log scale,
- ``"difference"`` (paired differences of proportions): values in [-1, 1];
  built on the atanh (Fisher z) scale,
- ``"real"``: anything else; the plain t interval above.

On a scale ``g`` the interval is the delta method's: ``g(mean) +- t * (s /
sqrt(n)) * g'(mean)``, mapped back by ``g^-1``. It always lies inside the
range (``(0, 1)``, ``(0, inf)``, ``(-1, 1)``) and always contains the mean of
the values, which stays the reported point estimate; for a narrow spread it
equals the plain interval to first order. The edges need no clipping: a mean
of exactly 0 or 1 (or -1) has all its values there, so ``s = 0`` and the
interval is the point itself (never ``logit(1)``), as for all-equal values
anywhere. A value outside its kind's range (an accuracy of 1.2, a negative
loss) is a bug upstream and raises ``ValueError``. ``inf`` (a diverged loss)
gives a mean of ``inf`` and no interval.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np

__all__ = [
    "LEVEL",
    "KINDS",
    "Interval",
    "t_interval",
    "interval",
    "interval_of",
    "kind_of",
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
    kind: str = "real"

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
        scale = {"proportion": " (logit scale)", "positive": " (log scale)", "difference": " (atanh scale)"}
        return (f"{m} ({100 * self.level:g}% t interval{scale.get(self.kind, '')} {format_number(self.low, digits)} "
                f"to {format_number(self.high, digits)}, N = {self.n} seeds)")

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
    if n == 1 or not np.all(np.isfinite(v)):  # one value, or an infinite one (a diverged run): no spread to measure
        return Interval(mean, math.nan, math.nan, n, math.nan, level)
    std = float(v.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * std / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, std, level)


#: The kinds of quantity (see the module docstring): the range of their values and their scale.
KINDS = {"real": (-math.inf, math.inf), "proportion": (0.0, 1.0), "positive": (0.0, math.inf),
         "difference": (-1.0, 1.0)}

# Name parts that say what a metric is (split at '_', '-', ' ' and '.'); the first match wins in the order below.
_PROPORTION_WORDS = {"acc", "accuracy", "frac", "fraction", "share", "dead", "prob", "probability", "proportion"}
_POSITIVE_WORDS = {"loss", "var", "variance", "std", "sd", "norm", "lr", "seconds", "time", "sharpness",
                   "lambda", "q", "m1", "m2", "m3", "m4", "width", "depth"}


def kind_of(name: str) -> str:
    """The kind of the metric called ``name``: ``"proportion"``, ``"positive"`` or ``"real"``.

    Decided by the words of the name (``val_acc`` -> proportion, ``val_loss``,
    ``pre_var``, ``grad_norm``, ``max_lr`` -> positive, ``post_mean`` ->
    real); a name that is both (``acc_var``) is positive: its words name a
    variance of something. The one place where a metric's scale is chosen.
    """
    import re

    words = set(re.split(r"[_\-\s.]+", str(name).lower()))
    if words & _POSITIVE_WORDS:
        return "positive"
    if words & _PROPORTION_WORDS:
        return "proportion"
    return "real"


def _scale(kind: str):
    """``(g, g', g^-1)`` of a kind's scale (``None`` for the plain t interval)."""
    if kind == "proportion":
        return (lambda m: math.log(m / (1 - m)), lambda m: 1.0 / (m * (1 - m)),
                lambda u: 1.0 / (1.0 + math.exp(-u)) if u >= 0 else math.exp(u) / (1.0 + math.exp(u)))
    if kind == "positive":
        return math.log, lambda m: 1.0 / m, lambda u: math.exp(min(u, 709.0))
    if kind == "difference":
        return math.atanh, lambda m: 1.0 / ((1 - m) * (1 + m)), math.tanh
    return None


def interval(values: Iterable[float], kind: str = "real", level: float = LEVEL) -> Interval:
    """t interval of the mean of ``values`` on the scale of ``kind`` (one of :data:`KINDS`).

    ``"real"`` is :func:`t_interval`; the others are built on their scale by the
    delta method and stay inside their range (module docstring). ``ValueError``
    for an unknown kind or a value outside the kind's range.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r} (one of {', '.join(KINDS)})")
    plain = t_interval(values, level)
    if kind == "real" or plain.n == 0:
        return Interval(plain.mean, plain.low, plain.high, plain.n, plain.std, level, kind)
    lo, hi = KINDS[kind]
    v = _clean(values)
    if np.any((v < lo) | (v > hi)):
        bad = v[(v < lo) | (v > hi)][0]
        raise ValueError(f"a {kind} must lie in [{lo:g}, {hi:g}], got {bad!r}")
    m = plain.mean
    if plain.n < 2 or not math.isfinite(m) or not math.isfinite(plain.std):
        return Interval(m, math.nan, math.nan, plain.n, plain.std, level, kind)
    if plain.std == 0 or m in (lo, hi):  # every value equal (at an edge they must be): the point itself
        return Interval(m, m, m, plain.n, plain.std, level, kind)
    g, dg, inverse = _scale(kind)
    half = (plain.high - m) * dg(m)  # t * s / sqrt(n), times g'(mean)
    centre = g(m)
    return Interval(m, inverse(centre - half), inverse(centre + half), plain.n, plain.std, level, kind)


def interval_of(name: str, values: Iterable[float], level: float = LEVEL) -> Interval:
    """:func:`interval` of the metric ``name`` on its scale (:func:`kind_of`)."""
    return interval(values, kind_of(name), level)


def _by_seed(x) -> dict:
    if isinstance(x, Mapping):
        return {k: float(v) for k, v in x.items()}
    if hasattr(x, "items") and hasattr(x, "index"):  # pandas Series indexed by seed
        return {k: float(v) for k, v in x.items()}
    raise TypeError("paired values must be a mapping or Series from seed to value")


def paired_difference(a, b, level: float = LEVEL, kind: str = "real") -> Interval:
    """t interval of the mean of ``a[seed] - b[seed]`` over the seeds both have.

    ``a`` and ``b`` map seed -> value (dicts or pandas Series indexed by seed);
    only seeds present (and not NaN) in both are paired, so ``n`` is the
    number of pairs. ``kind`` is that of ``a`` and ``b``: for ``"proportion"``
    the differences lie in [-1, 1] and their interval is built on the atanh
    scale (kind ``"difference"``); otherwise it is the plain t interval.
    """
    da, db = _by_seed(a), _by_seed(b)
    common = [s for s in da if s in db]
    diffs = [da[s] - db[s] for s in common]
    return interval(diffs, "difference" if kind == "proportion" else "real", level)


def summarize_seeds(table, keys: Sequence[str], metrics: Sequence[str] | None = None, *, seed_column: str = "seed",
                    level: float = LEVEL, kinds: str | Mapping[str, str] | None = None):
    """Per-seed rows -> one row per ``keys`` group with ``<metric>_mean``,
    ``<metric>_ci_low``, ``<metric>_ci_high`` and ``n_seeds``.

    ``table`` has one row per (``keys``..., ``seed``); ``metrics`` defaults to
    every numeric column that is neither a key nor the seed column.
    ``n_seeds`` counts the distinct seeds of the group; a metric missing (NaN)
    in some seeds is averaged over the others. With one seed the interval
    columns are NaN. ``kinds``: ``"auto"`` builds each metric's interval on
    the scale of its name (:func:`kind_of`: accuracies stay in [0, 1], losses
    positive), a mapping gives kinds by metric (others by name), ``None`` (the
    default, for now) the plain t interval for every metric.
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
            iv = interval(t[m].to_numpy(float), _kind_for(m, kinds), level)
            row[f"{m}_mean"], row[f"{m}_ci_low"], row[f"{m}_ci_high"] = iv.mean, iv.low, iv.high
        row["n_seeds"] = int(t[seed_column].nunique())
        rows.append(row)
    cols = keys + [f"{m}_{s}" for m in metrics for s in ("mean", "ci_low", "ci_high")] + ["n_seeds"]
    return pd.DataFrame(rows, columns=cols)


def _kind_for(metric: str, kinds) -> str:
    if kinds is None:
        return "real"
    if isinstance(kinds, Mapping):
        return kinds.get(metric, kind_of(metric))
    if kinds == "auto":
        return kind_of(metric)
    raise ValueError(f"kinds must be None, 'auto' or a mapping, got {kinds!r}")
