"""The loop thread's CPU clock: how much of a core the thread used between two reads."""

from __future__ import annotations

import threading
import time
from time import perf_counter
from typing import Callable, Optional


class ThreadClock:
    """CPU time and wall time of the calling thread between two reads; read on the loop's own thread."""

    def __init__(
        self,
        wall: Callable[[], float] = perf_counter,
        cpu: Callable[[], float] = time.thread_time,
        thread: Callable[[], int] = threading.get_ident,
    ) -> None:
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
