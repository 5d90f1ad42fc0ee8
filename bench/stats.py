"""Summaries of repeated measurements: medians and spreads, never one run."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0..100), linear between order statistics (as
    numpy's default). With n samples, p99 is only meaningful for n >= 100;
    below that it sits between the two largest values."""
    if not values:
        return math.nan
    xs = sorted(values)
    pos = (len(xs) - 1) * p / 100.0
    lo = math.floor(pos)
    hi = math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summary(values: Sequence[float]) -> dict[str, float]:
    """n, p50, p90, p99, min, max, q1, q3 (NaN where there is no sample)."""
    return {
        "n": float(len(values)),
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "min": min(values) if values else math.nan,
        "max": max(values) if values else math.nan,
        "q1": percentile(values, 25),
        "q3": percentile(values, 75),
    }
