"""Utilization: the share of wall time a loop spends running callbacks, not waiting for events."""

from __future__ import annotations

import asyncio
import selectors
from time import perf_counter
from typing import Any, Callable, List, Optional, Tuple

from loopstat._stand_in import StandIn


class SelectorClock:
    """Times the waits of a stdlib loop's selector, by standing in for its ``select``.

    A loop with callbacks ready polls with timeout 0: it is busy and waits for
    nothing, so that path is passed straight through, untimed, to cost as
    little as possible where the loop works hardest.
    """

    def __init__(self, selector: selectors.BaseSelector) -> None:
        #: Seconds spent waiting in the selector since the clock was attached.
        self.idle = 0.0
        #: ``perf_counter()`` when the loop last came out of a wait.
        self.woke = perf_counter()
        #: True while the loop waits in its selector (read by the stall watchdog).
        self.waiting = False
        #: Called on the loop's thread each time it comes out of a wait.
        self.on_wake: Optional[Callable[[], None]] = None
        self._detached = False
        inner = selector.select

        def select(timeout: Optional[float] = None) -> List[Tuple[selectors.SelectorKey, int]]:
            if timeout == 0:
                return inner(0)
            if self._detached:
                return inner(timeout)  # still called by a wrapper installed after ours
            start = perf_counter()
            self.waiting = True
            try:
                return inner(timeout)
            finally:
                end = perf_counter()
                self.waiting = False
                self.idle += end - start
                self.woke = end
                if self.on_wake is not None:
                    self.on_wake()

        self._stand_in = StandIn(selector, "select", select)

    @classmethod
    def attach(cls, loop: asyncio.AbstractEventLoop) -> Optional[SelectorClock]:
        """Attach to ``loop`` if it waits in a selector it exposes (the stdlib's); else None.

        uvloop waits inside libuv, out of Python's reach.
        """
        selector: Any = getattr(loop, "_selector", None)
        if not isinstance(loop, asyncio.BaseEventLoop) or not isinstance(selector, selectors.BaseSelector):
            return None
        return cls(selector)

    def detach(self) -> None:
        """Give the selector back the ``select`` it had, another tool's wrapper included.

        If a tool wrapped ours after us, removing ours would remove theirs: ours
        stays inside theirs and only passes the call on.
        """
        self._detached = True
        self.on_wake = None
        self._stand_in.remove()


class Utilization:
    """Reads a ``SelectorClock`` as a busy ratio per sampling window."""

    def __init__(self, clock: SelectorClock) -> None:
        self._clock = clock
        self._since = perf_counter()
        self._idle = clock.idle

    def read(self) -> float:
        """Share of the time since the previous read that the loop was not waiting, 0 to 1."""
        now, idle = perf_counter(), self._clock.idle
        wall, waited = now - self._since, idle - self._idle
        self._since, self._idle = now, idle
        if wall <= 0:
            return 0.0
        return min(1.0, max(0.0, 1.0 - waited / wall))
