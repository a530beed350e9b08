"""Formatting shared by the live table and the plain lines: numbers, tags and sparklines."""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

BARS = "▁▂▃▄▅▆▇█"


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


def tags(values: Tuple[str, ...]) -> str:
    return ",".join(values)


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
