"""Iteration: the longest turn of a stdlib loop since the previous sample, in milliseconds.

A turn is what the loop does between two returns to its selector: the events
and timers due, then every callback ready. No callback made ready in a turn
runs before the next, so the longest turn bounds how long any ready callback
waited. The selector clock (``selector_clock.py``) times every return, the
busy poll included, so unlike lag, which samples, it sees every block however
short and whenever it falls. uvloop turns inside libuv, out of Python's reach:
there lag, stalls and utilization (CPU time) are what loopstat offers.
"""

from __future__ import annotations

from typing import List, Optional

from loopstat._metrics import Line
from loopstat.probes import Watched
from loopstat.probes.selector_clock import SelectorClock


class Iteration:
    """Sends the longest turn since the previous sample, while the selector clock runs."""

    def __init__(self, clock: SelectorClock) -> None:
        self._clock = clock

    def read(self, lines: List[Line]) -> None:
        clock = self._clock
        longest = clock.take_longest()
        if not clock.broken:
            lines.append(("iteration", "g", round(longest * 1000.0, 3)))

    def close(self) -> None:
        pass


def attach(watched: Watched) -> Optional[Iteration]:
    """With ``utilization`` (the same clock times both), on loops with a Python selector."""
    if not watched.settings.utilization:
        return None
    clock = watched.clock()
    return None if clock is None else Iteration(clock)
