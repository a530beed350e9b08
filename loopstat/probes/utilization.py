"""Utilization: the share of wall time a loop spends running callbacks, not waiting for events."""

from __future__ import annotations

from time import perf_counter
from typing import Callable, List, Optional

from loopstat._metrics import Line
from loopstat.probes import Watched
from loopstat.probes.selector_clock import SelectorClock


class Utilization:
    """Reads a ``SelectorClock`` as a busy ratio per sampling window."""

    def __init__(
        self, clock: SelectorClock, watched: Optional[Watched] = None, now: Callable[[], float] = perf_counter
    ) -> None:
        self._clock = clock
        self._watched = watched
        self._now = now
        self._since = now()
        self._idle = clock.idle

    def ratio(self) -> float:
        """Share of the time since the previous call that the loop was not waiting, 0 to 1."""
        now, idle = self._now(), self._clock.idle
        wall, waited = now - self._since, idle - self._idle
        self._since, self._idle = now, idle
        if wall <= 0:
            return 0.0
        return min(1.0, max(0.0, 1.0 - waited / wall))

    def read(self, lines: List[Line]) -> None:
        ratio = self.ratio()
        if self._watched is not None:
            self._watched.monitor.utilization = ratio
        lines.append(("utilization", "g", round(ratio, 4)))

    def close(self) -> None:
        pass


def attach(watched: Watched) -> Optional[Utilization]:
    clock = watched.clock() if watched.settings.utilization else None
    return Utilization(clock, watched) if clock is not None else None
