"""Formatting shared by the live table, the plain lines and the demo: values with units, sparklines."""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

from loopstat import _metrics
from loopstat.cli.series import Series

BARS = "▁▂▃▄▅▆▇█"

#: Units of loopstat's metrics, by the end of their name (the prefix varies). Counters are
#: shown per second and timings (type ``ms``) in milliseconds; other metrics without a unit.
UNITS = {name: {"ms": "ms", "ratio": "%"}[unit] for name, unit in _metrics.UNITS.items() if unit != "count"}


def unit(name: str, type: str) -> str:
    if type in ("c", "s"):
        return "/s"
    for suffix, text in UNITS.items():
        if name == suffix or name.endswith("." + suffix):
            return text
    return "ms" if type == "ms" else ""


def number(value: float) -> str:
    """Short and readable: 3 decimals for small values, fewer as they grow, none for integers."""
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    size = abs(value)
    if size >= 1000:
        return f"{value:.0f}"
    if size >= 100:
        return f"{value:.1f}"
    if size >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def value(amount: float, unit: str) -> str:
    """``amount`` with its unit: ``201.5 ms``, ``45.0%`` (of a 0..1 ratio), ``3/s``, ``12``."""
    if unit == "%":
        return f"{amount * 100:.1f}%"
    if unit == "ms":
        return f"{number(amount)} ms"
    return number(amount) + unit


def cells(series: Series, now: float) -> List[str]:
    """The last, min, avg and max of a row; "-" where a gauge has nothing in the window."""
    text = unit(series.name, series.type)
    stats = series.stats(now)
    window = ["-"] * 3 if stats is None else [value(x, text) for x in (stats.min, stats.avg, stats.max)]
    return [value(series.current(now), text), *window]


def tags(values: Tuple[str, ...]) -> str:
    return ",".join(values)


def sender(name: str) -> str:
    """How a sender is named on screen: by its ``service`` tag."""
    return f"service:{name}" if name else "(no service tag)"


def sparkline(values: Sequence[Optional[float]]) -> str:
    """One character per value, scaled from 0 (or the lowest value, if negative) to the highest."""
    present = [value for value in values if value is not None]
    if not present:
        return " " * len(values)
    low = min(0.0, *present)
    span = max(present) - low
    out = []
    for value in values:
        if value is None:
            out.append(" ")
        elif span <= 0:
            out.append(BARS[0])
        else:
            out.append(BARS[min(len(BARS) - 1, int((value - low) / span * len(BARS)))])
    return "".join(out)
