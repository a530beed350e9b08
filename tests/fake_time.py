"""A real asyncio loop on virtual time: a FakeClock that jumps to the next timer whenever the loop would wait.

As trio's ``MockClock`` with ``autojump_threshold=0``: a test runs minutes of
sampling in milliseconds, and every lateness is exactly what the test made it.
Only asyncio's own loops read ``loop.time()`` from Python; uvloop cannot be
put on virtual time, so these tests run on asyncio alone.
"""

from __future__ import annotations

import asyncio
import selectors
from typing import Any, List, Optional, Tuple

from tests.fake_clock import FakeClock


class JumpingSelector(selectors.DefaultSelector):
    """Polls without waiting; where the loop would wait ``timeout`` seconds, moves the clock on by that much."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.clock = clock

    def select(self, timeout: Optional[float] = None) -> List[Tuple[Any, int]]:
        ready: List[Tuple[Any, int]] = super().select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:  # no timer due at all: only another thread or a socket can wake the loop
            return list(super().select(None))
        self.clock.jump(timeout)
        return []


class FakeTimeLoop(asyncio.SelectorEventLoop):
    """An asyncio loop whose ``time()`` is ``clock``: timers fire on virtual time, at once."""

    def __init__(self, clock: Optional[FakeClock] = None, selector: Optional[JumpingSelector] = None) -> None:
        self.clock = clock or FakeClock()
        super().__init__(selector or JumpingSelector(self.clock))

    def time(self) -> float:
        return self.clock()
