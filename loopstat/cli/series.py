"""Series: what the watch view knows of one metric, over a sliding window of time."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Deque, List, Optional, Tuple

#: Seconds the min/avg/max columns cover.
WINDOW = 10.0
#: One-second buckets the trend (sparkline) covers.
TREND = 30


@dataclass(frozen=True)
class Stats:
    """Min, average and maximum over the window, and how many values it holds."""

    min: float
    avg: float
    max: float
    count: int


class Series:
    """Values of one (name, type, tags) metric.

    Counters (and sets) are shown as rates: sums per second. Gauges and
    timings are shown as values, with each trend bucket holding the largest
    value of its second (a spike is what a person looks for).
    """

    def __init__(self, name: str, type: str, tags: Tuple[str, ...]) -> None:
        self.name = name
        self.type = type
        self.tags = tags
        #: Who sent it: the value of its ``service`` tag ("" without one). Rows are grouped by sender.
        self.sender = next((tag[len("service:") :] for tag in tags if tag.startswith("service:")), "")
        #: The tags a row shows: the sender heads its group.
        self.other_tags = tuple(tag for tag in tags if not tag.startswith("service:"))
        #: Latest value (for counters, of the latest line).
        self.last = 0.0
        #: Clock time of the latest line; None before the first.
        self.updated: Optional[float] = None
        #: Lines received so far.
        self.received = 0
        self._window: Deque[Tuple[float, float]] = deque()
        self._buckets: Deque[Tuple[int, float]] = deque()

    @property
    def counter(self) -> bool:
        return self.type in ("c", "s")

    def add(self, now: float, value: float, relative: bool = False) -> None:
        if relative and not self.counter:
            value += self.last
        self.last = value
        self.updated = now
        self.received += 1
        self._window.append((now, value))
        second = int(now)
        if self._buckets and self._buckets[-1][0] == second:
            old = self._buckets[-1][1]
            self._buckets[-1] = (second, old + value if self.counter else max(old, value))
        else:
            self._buckets.append((second, value))
        self._prune(now)

    def _prune(self, now: float) -> None:
        while self._window and self._window[0][0] <= now - WINDOW:
            self._window.popleft()
        while self._buckets and self._buckets[0][0] <= int(now) - TREND:
            self._buckets.popleft()

    def current(self, now: float) -> float:
        """What the "last" column shows: the latest value, or for counters the sum over the last whole second."""
        if not self.counter:
            return self.last
        return dict(self._buckets).get(int(now) - 1, 0.0)

    def stats(self, now: float) -> Optional[Stats]:
        """Min/avg/max over the window: of values, or for counters of the sums of its whole seconds.

        None for a gauge or timing with no value in the window.
        """
        self._prune(now)
        if self.counter:
            # Every whole second of the window counts, the silent ones as 0.
            sums = dict.fromkeys(range(int(now) - int(WINDOW), int(now)), 0.0)
            for second, total in self._buckets:
                if second in sums:
                    sums[second] = total
            values = list(sums.values())
        else:
            values = [value for _, value in self._window]
        if not values:
            return None
        return Stats(min(values), sum(values) / len(values), max(values), len(self._window))

    def trend(self, now: float) -> List[Optional[float]]:
        """One value per second for the last ``TREND`` seconds, oldest first; None for a silent second."""
        self._prune(now)
        by_second = dict(self._buckets)
        last = int(now)
        empty = 0.0 if self.counter else None
        return [by_second.get(second, empty) for second in range(last - TREND + 1, last + 1)]
