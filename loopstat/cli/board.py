"""Board: every metric the watch receiver has seen, plus the lines it could not read."""

from __future__ import annotations

import time
from typing import Callable, Dict, List, Optional, Tuple

from loopstat.cli import statsd
from loopstat.cli.series import Series

Key = Tuple[str, str, Tuple[str, ...]]


class Board:
    """Feeds datagrams into one ``Series`` per (name, type, tags); never raises on bad input."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.series: Dict[Key, Series] = {}
        self.lines = 0
        self.bad = 0
        self.last_bad: Optional[str] = None
        #: Events and service checks: well-formed, but not shown.
        self.other = 0
        self._clock = clock
        self._listeners: List[Callable[[float, statsd.Sample], None]] = []

    def listen(self, listener: Callable[[float, statsd.Sample], None]) -> None:
        """Call ``listener(now, sample)`` for every metric line received from now on."""
        self._listeners.append(listener)

    def feed(self, datagram: bytes) -> None:
        now = self._clock()
        for line in datagram.decode("utf-8", "replace").splitlines():
            if not line.strip():
                continue
            self.lines += 1
            sample = statsd.parse(line)
            if sample is None:
                self.bad += 1
                self.last_bad = line[:120]
            elif isinstance(sample, statsd.Other):
                self.other += 1
            else:
                key = (sample.name, sample.type, sample.tags)
                series = self.series.get(key)
                if series is None:
                    series = self.series[key] = Series(*key)
                series.add(now, sample.value, sample.relative)
                for listener in self._listeners:
                    listener(now, sample)

    def rows(self) -> List[Series]:
        """All series, sorted by name, then type, then tags."""
        return [self.series[key] for key in sorted(self.series)]

    def now(self) -> float:
        return self._clock()
