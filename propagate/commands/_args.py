"""argparse value types that reject bad input with one clear line (exit 2)."""

from __future__ import annotations

import argparse
import math


def _number(text: str, kind=float):
    try:
        value = kind(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return value


def finite_float(text: str) -> float:
    return _number(text)


def positive_float(text: str) -> float:
    v = _number(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return v


def nonneg_float(text: str) -> float:
    v = _number(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return v


def probability(text: str) -> float:
    """A rate in [0, 1)."""
    v = _number(text)
    if not 0 <= v < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return v


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return v


def nonneg_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return v


def float_list(text: str) -> list[float]:
    """'0.1,0.2' or a range 'START:STOP:N' (N points, both ends included)."""
    text = text.strip()
    if text.count(":") == 2:
        a, b, n = text.split(":")
        start, stop, count = _number(a), _number(b), positive_int(n)
        if count == 1:
            return [start]
        return [start + (stop - start) * i / (count - 1) for i in range(count)]
    items = [t for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"empty list: {text!r}")
    return [_number(t) for t in items]


def nonneg_float_list(text: str) -> list[float]:
    vals = float_list(text)
    if any(v < 0 for v in vals):
        raise argparse.ArgumentTypeError(f"values must be >= 0, got {text}")
    return vals


def positive_float_list(text: str) -> list[float]:
    vals = float_list(text)
    if any(v <= 0 for v in vals):
        raise argparse.ArgumentTypeError(f"values must be > 0, got {text}")
    return vals
