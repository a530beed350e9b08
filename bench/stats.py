"""Small statistics: medians, percentiles and per-round ratios to the baseline."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0 to 100) with linear interpolation; nan for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Sequence[float]) -> float:
    """The median; nan for no values."""
    return percentile(values, 50.0)


@dataclass(frozen=True)
class Ratio:
    """Median and interquartile range of per-round ratios ``variant / baseline``."""

    median: float
    low: float
    high: float
    rounds: int


def ratios(values: Sequence[Optional[float]], baseline: Sequence[Optional[float]]) -> Ratio:
    """Ratios round by round (each against the baseline of the same round), summarised."""
    each: List[float] = [v / b for v, b in zip(values, baseline) if v is not None and b]
    return Ratio(median(each), percentile(each, 25.0), percentile(each, 75.0), len(each))
