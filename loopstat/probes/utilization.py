"""Utilization: the share of wall time a loop spends running callbacks, not waiting for events.

Stdlib loops: timed at the selector (``selector_clock``), exact. Loops that wait
out of Python's reach (uvloop): the loop thread's CPU time plus the time it
spent blocked in the calls the blocking-call probe watches, over wall time;
time blocked off the CPU in anything else (a C extension's own blocking I/O,
a lock) counts as idle there.
"""

from __future__ import annotations

from time import perf_counter
from typing import Callable, List, Optional

from loopstat._metrics import Line
from loopstat.probes import Reading, Watched
from loopstat.probes.selector_clock import SelectorClock


class SelectorWaits:
    """Busy share of a stdlib loop: wall time not spent waiting in its selector."""

    def __init__(self, clock: SelectorClock, now: Callable[[], float] = perf_counter) -> None:
        self._clock = clock
        self._now = now
        self._since = now()
        self._idle = clock.idle

    def __call__(self) -> Optional[float]:
        """Share of the time since the previous call that the loop was not waiting, 0 to 1; None once the
        clock broke (its waits are no longer timed)."""
        if self._clock.broken:
            return None
        now, idle = self._now(), self._clock.idle
        wall, waited = now - self._since, idle - self._idle
        self._since, self._idle = now, idle
        if wall <= 0:
            return 0.0
        return min(1.0, max(0.0, 1.0 - waited / wall))


class BusyTime:
    """Busy share where no selector can be timed: CPU time plus time in watched blocking calls, over wall time."""

    def __init__(self, watched: Watched) -> None:
        watched.thread.check()  # it needs the thread's CPU clock
        self._watched = watched

    def __call__(self) -> Optional[float]:
        """None for the first window after the loop moved to another thread."""
        watched = self._watched
        watched.thread.check()
        busy, wall = watched.busy_since(), watched.thread.wall
        if busy is None or wall <= 0:
            return None
        return min(1.0, max(0.0, busy / wall))


class Utilization:
    """Sends the busy share at each sample and hands it to the monitor for ``monitor.utilization``."""

    def __init__(self, busy: Callable[[], Optional[float]]) -> None:
        self._busy = busy

    def read(self, lines: List[Line]) -> Reading:
        ratio = self._busy()
        if ratio is not None:
            lines.append(("utilization", "g", round(ratio, 4)))
        return {"utilization": ratio}

    def close(self) -> None:
        pass


def attach(watched: Watched) -> Optional[Utilization]:
    if not watched.settings.utilization:
        return None
    clock = watched.clock()
    return Utilization(SelectorWaits(clock) if clock is not None else BusyTime(watched))
