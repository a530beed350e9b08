"""The loop thread's CPU clock: how much of a core the thread used between two reads.

Some platforms have no per-thread CPU clock (``time.thread_time`` missing, or
raising OSError as some sandboxes make ``clock_gettime`` do): the clock then
keeps the first error, is not read again, and only the probes that need it
(``cpu``; ``utilization`` where no selector is timed) go without.
"""

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
        cpu: Optional[Callable[[], float]] = None,
        thread: Callable[[], int] = threading.get_ident,
    ) -> None:
        self._wall, self._thread = wall, thread
        self._cpu = cpu
        #: Why the CPU clock cannot be read (None while it can); once set, it is not read again.
        self.error: Optional[Exception] = None
        self._ident = thread()
        self._since, self._used = wall(), self._read_cpu()
        #: CPU seconds the thread used, and wall seconds, between the last two reads.
        self.spent = self.wall = 0.0

    def _read_cpu(self) -> float:
        if self.error is None:
            try:
                # Looked up at each read, not bound at import: a platform may lack it.
                return (self._cpu or time.thread_time)()
            except Exception as exc:
                self.error = exc
        return 0.0

    def check(self) -> None:
        """Raise the error that stopped the CPU clock, if one did: for the probes that need it."""
        if self.error is not None:
            raise self.error

    def share(self) -> Optional[float]:
        """CPU time over wall time since the previous call; None when the loop moved to another thread
        or without a CPU clock (then ``spent`` stays 0)."""
        ident, now, used = self._thread(), self._wall(), self._read_cpu()
        if ident != self._ident:  # a loop run again from another thread: that thread's clock starts afresh
            self._ident, self._since, self._used = ident, now, used
            self.spent = self.wall = 0.0
            return None
        wall, spent = now - self._since, used - self._used
        self._since, self._used = now, used
        self.spent, self.wall = (0.0 if self.error is not None else spent), wall
        if wall <= 0 or self.error is not None:
            return None
        return min(1.0, max(0.0, spent / wall))
