"""Small statistics: medians, percentiles and per-round ratios to the baseline."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence


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


# Two-sided 95 % quantiles of Student's t by degrees of freedom; between rows the smaller df
# (the wider interval) is used, beyond the last the normal quantile.
T95 = (
    (1, 12.706), (2, 4.303), (3, 3.182), (4, 2.776), (5, 2.571), (6, 2.447), (7, 2.365), (8, 2.306),
    (9, 2.262), (10, 2.228), (12, 2.179), (15, 2.131), (20, 2.086), (25, 2.060), (30, 2.042),
    (40, 2.021), (60, 2.000), (120, 1.980),
)  # fmt: skip
Z95 = 1.960


def t95(df: int) -> float:
    """The two-sided 95 % quantile of Student's t with ``df`` degrees of freedom (rounded down to a table row)."""
    if df < 1:
        raise ValueError(f"df: expected at least 1, got {df}")
    if df > T95[-1][0]:
        return Z95
    return [q for d, q in T95 if d <= df][-1]


@dataclass(frozen=True)
class Ratio:
    """Per-round ratios ``variant / baseline`` summarised: geometric mean and its 95 % confidence interval.

    The interval is a t-interval on the logarithms of the per-round ratios, so
    it is symmetric in ratio terms (1.1 and 1/1.1 are equally far from 1); nan
    with fewer than two rounds.
    """

    estimate: float
    low: float
    high: float
    rounds: int

    @property
    def within_noise(self) -> bool:
        """True when the interval includes 1.0 (or there is no interval): no difference shown."""
        return not (self.low > 1.0 or self.high < 1.0)


def ratio_interval(each: Sequence[float]) -> Ratio:
    """Geometric mean of positive ratios with its 95 % t-interval."""
    logs = [math.log(r) for r in each if r > 0]
    n = len(logs)
    if n == 0:
        return Ratio(math.nan, math.nan, math.nan, 0)
    mean = sum(logs) / n
    if n < 2:
        return Ratio(math.exp(mean), math.nan, math.nan, n)
    sd = math.sqrt(sum((x - mean) ** 2 for x in logs) / (n - 1))
    half = t95(n - 1) * sd / math.sqrt(n)
    return Ratio(math.exp(mean), math.exp(mean - half), math.exp(mean + half), n)


def ratios(values: Sequence[Optional[float]], baseline: Sequence[Optional[float]]) -> Ratio:
    """Ratios round by round (each against the baseline of the same round), summarised."""
    return ratio_interval([v / b for v, b in zip(values, baseline) if v is not None and b])


@dataclass(frozen=True)
class Spread:
    """A figure measured several ways (one per memory layout): its median and the lowest and highest."""

    median: float
    low: float
    high: float

    def holds(self, value: float) -> bool:
        """True when ``value`` lies within the range (ends included)."""
        return self.low <= value <= self.high


def spread(values: Sequence[float]) -> Spread:
    """Median, minimum and maximum of ``values``; all nan for no values."""
    if not values:
        return Spread(math.nan, math.nan, math.nan)
    return Spread(median(values), min(values), max(values))


def at_most(figure: Spread, limit: float) -> Optional[bool]:
    """Whether ``figure`` is at most ``limit``, decided on the median; None when the limit is inside the range.

    None is "within the noise": some layouts meet the limit and some do not (or one sits right on it).
    """
    if any(math.isnan(x) for x in (figure.median, figure.low, figure.high)) or figure.holds(limit):
        return None
    return figure.median <= limit
