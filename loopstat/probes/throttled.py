"""Throttled: the share of wall time the process's cgroup spent frozen by its CPU limit (CFS quota).

A container at its CPU limit is stopped by the kernel for the rest of each
period (100 ms by default): its loop stalls on whatever line was running.
The limit and its ``cpu.stat`` are found once, at attach (``loopstat/_cgroup.py``);
without a limit nothing is sent. ``cpu.stat`` is read at a sample at most once
a second, and the share is of the wall time since the previous read.
"""

from __future__ import annotations

from time import perf_counter
from typing import Callable, List, Optional

from loopstat import _cgroup
from loopstat._metrics import Line
from loopstat.probes import Watched

# cpu.stat is read at most this often: one small file, but the kernel sums it over every CPU.
READ_EVERY_SECONDS = 1.0


class Throttled:
    """Sends the throttled share of the wall time since its previous read of ``cpu.stat``."""

    def __init__(
        self,
        throttling: _cgroup.Throttling,
        now: Callable[[], float] = perf_counter,
        read: _cgroup.Read = _cgroup.read,
    ) -> None:
        self._throttling = throttling
        self._now = now
        self._read = read
        self._since = now()
        self._seconds = throttling.seconds(read)
        #: The latest share, 0 to 1 (None before the first window ends or when ``cpu.stat`` cannot be read).
        self.share: Optional[float] = None

    def read(self, lines: List[Line]) -> None:
        now = self._now()
        wall = now - self._since
        if wall < READ_EVERY_SECONDS:
            return
        seconds = self._throttling.seconds(self._read)
        before, self._seconds, self._since = self._seconds, seconds, now
        if seconds is None or before is None:
            self.share = None
            return
        # Summed per CPU by the kernel: two threads throttled at once count twice, hence the cap.
        self.share = min(1.0, max(0.0, (seconds - before) / wall))
        lines.append(("throttled", "g", round(self.share, 4)))

    def close(self) -> None:
        pass


def attach(watched: Watched) -> Optional[Throttled]:
    """None where the process's cgroup has no CPU limit (or none can be found: not Linux, no cgroup)."""
    throttling = _cgroup.throttling()
    return None if throttling is None else Throttled(throttling)
