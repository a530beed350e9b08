"""CPU: the share of one core the loop's thread uses, on every kind of loop.

Read at each sample on the loop's own thread: its CPU time over the wall time
since the previous sample. Next to utilization it tells where busy time goes:
a loop 90 % utilized at 20 % CPU spends most of its time blocked off the CPU
inside callbacks (synchronous I/O, sleeps, locks).
"""

from __future__ import annotations

import threading
import time
from time import perf_counter
from typing import Callable, List, Optional

from loopstat._metrics import Line
from loopstat.probes import Watched


class Cpu:
    """The loop thread's CPU share between two reads, 0 to 1."""

    def __init__(
        self,
        watched: Optional[Watched] = None,
        wall: Callable[[], float] = perf_counter,
        cpu: Callable[[], float] = time.thread_time,
        thread: Callable[[], int] = threading.get_ident,
    ) -> None:
        self._watched = watched
        self._wall, self._cpu, self._thread = wall, cpu, thread
        self._ident = thread()
        self._since, self._used = wall(), cpu()
        #: CPU seconds the thread used, and wall seconds, between the last two reads.
        self.spent = self.wall = 0.0

    def share(self) -> Optional[float]:
        """CPU time over wall time since the previous call; None when the loop moved to another thread."""
        ident, now, used = self._thread(), self._wall(), self._cpu()
        if ident != self._ident:  # a loop run again from another thread: that thread's clock starts afresh
            self._ident, self._since, self._used = ident, now, used
            self.spent = self.wall = 0.0
            return None
        wall, spent = now - self._since, used - self._used
        self._since, self._used = now, used
        self.spent, self.wall = spent, wall
        if wall <= 0:
            return None
        return min(1.0, max(0.0, spent / wall))

    def read(self, lines: List[Line]) -> None:
        share = self.share()
        if self._watched is not None:
            self._watched.monitor.cpu = share
        if share is not None:
            lines.append(("cpu", "g", round(share, 4)))

    def close(self) -> None:
        pass


def attach(watched: Watched) -> Cpu:
    return Cpu(watched)
