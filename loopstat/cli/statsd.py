"""StatsD and DogStatsD lines as the watch receiver reads them: parsed leniently, rejected cleanly."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple, Union

TYPES = ("g", "c", "ms", "h", "d", "s")


@dataclass(frozen=True)
class Sample:
    """One metric line: a value of one type, for one name and tag set."""

    name: str
    type: str
    value: float
    tags: Tuple[str, ...] = ()
    #: A gauge written as "+3" or "-3" changes the last value instead of replacing it.
    relative: bool = False


class Other:
    """A DogStatsD event (``_e{``) or service check (``_sc|``): valid, but not a metric."""


def parse(line: str) -> Union[Sample, Other, None]:
    """Parse one line; None when it is not a well-formed StatsD or DogStatsD line."""
    if line.startswith(("_e{", "_sc|")):
        return Other()
    head, _, rest = line.partition("|")
    name, sep, text = head.partition(":")
    fields = rest.split("|")
    kind = fields[0]
    if not sep or not name or not text or kind not in TYPES or any(c in name for c in " #,"):
        return None
    rate = 1.0
    tags: Tuple[str, ...] = ()
    for field in fields[1:]:
        if field.startswith("@"):
            parsed_rate = _number(field[1:])
            if parsed_rate is None or not 0 < parsed_rate <= 1:
                return None
            rate = parsed_rate
        elif field.startswith("#"):
            tags = tuple(sorted(tag for tag in field[1:].split(",") if tag))
        elif not field.startswith(("c:", "T", "e:", "card:")):  # container id, timestamp, origin fields
            return None
    if kind == "s":
        # A set counts distinct members; the view shows how often it was updated.
        return Sample(name, kind, 1.0, tags)
    value = _number(text)
    if value is None:
        return None
    if kind == "c":
        value /= rate  # a sampled counter stands for 1/rate increments
    return Sample(name, kind, value, tags, relative=kind == "g" and text[0] in "+-")


def _number(text: str) -> Optional[float]:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None
