"""Lag: how late the loop wakes a sleeping coroutine (the sampler's own sleep is the probe)."""

from __future__ import annotations

import asyncio
import math
from time import perf_counter
from typing import Callable, List, Optional

from loopstat._metrics import Line
from loopstat.probes import Watched

# Turns of the loop after which whatever was due or ready when the sampler was
# found overdue has run: its timer by the first, a wake-up it scheduled by the second.
TURNS = 2
# A revival takes a few turns of the loop; one whose own callback a signal cut
# off is started afresh after this long.
REVIVE_SECONDS = 1.0


class Sleep:
    """The sampler's sleep; how late it ends is the lag.

    A signal's exception (KeyboardInterrupt) can land in a callback before its
    first line: the timer that ends the sleep, or on stdlib loops the task's
    wake-up after it. The application gets the exception and the sleep would
    never end. When the sleep is found overdue, ``revive`` waits two turns of
    the loop and then takes back what was lost.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, lost_task: Callable[[], object]) -> None:
        self._loop = loop
        # Called when the sampler task lost its wake-up: it waits for good, another must take over.
        self._lost_task = lost_task
        self._wake: Optional[asyncio.Future[None]] = None
        #: ``perf_counter()`` when the current sleep is due to end (inf while the sampler is awake).
        self.due = math.inf
        # ``perf_counter()`` when ``revive`` began to watch the loop's turns (-inf: it does not).
        self._reviving_since = -math.inf
        # The current sleep was ended by ``revive``, not by its timer: its overshoot is no lag.
        self._revived = False

    async def overshoot(self, interval: float) -> Optional[float]:
        """Sleep ``interval`` seconds; return how many milliseconds late the loop woke us.

        None if the sleep's timer was lost and ``revive`` ended it. Measured with
        ``perf_counter()`` rather than ``loop.time()``: uvloop's clock moves in
        whole milliseconds. Never negative: timers may fire a hair early, and
        StatsD servers reject negative timings.
        """
        loop = self._loop
        started = perf_counter()
        wake = self._wake = loop.create_future()
        self.due = started + interval
        timer = loop.call_later(interval, _wake_up, wake)
        try:
            await wake
        finally:
            timer.cancel()
            if self._wake is wake:  # a task given up on may end long after (collected)
                self._wake, self.due = None, math.inf
        if self._revived:
            self._revived = False
            return None
        return max(0.0, (perf_counter() - started - interval) * 1000.0)

    def revive(self) -> None:
        """Called on the loop's thread when the sleep is overdue: look again in a turn or two of the loop."""
        wake = self._wake
        now = perf_counter()
        if wake is None or now - self._reviving_since < REVIVE_SECONDS:
            return
        self._reviving_since = now
        self._loop.call_soon(self._check, wake, None, 0)

    def _check(self, wake: asyncio.Future[None], done_at: Optional[int], turn: int) -> None:
        if wake is not self._wake:
            self._reviving_since = -math.inf  # the sampler woke and slept again, or stopped: nothing was lost
            return
        if done_at is None and wake.done():
            done_at = turn
        if done_at is not None and turn - done_at >= TURNS:
            # Woken two turns ago, still not running: the task's wake-up was cut off.
            self._reviving_since = -math.inf
            self._wake, self.due = None, math.inf
            self._lost_task()
            return
        if done_at is None and turn >= TURNS:
            # Due before the first turn, still pending: the timer's callback was cut off.
            self._revived = True
            wake.set_result(None)
            done_at = turn
        self._loop.call_soon(self._check, wake, done_at, turn + 1)


def _wake_up(wake: asyncio.Future[None]) -> None:
    if not wake.done():
        wake.set_result(None)


class Lag:
    """Reports the overshoot the sampler measured."""

    def __init__(self, watched: Watched) -> None:
        self._monitor = watched.monitor

    def read(self, lines: List[Line]) -> None:
        # Microseconds are plenty and keep the datagrams short.
        value = round(self._monitor.lag, 3)
        lines.extend((("lag", "g", value), ("lag", "ms", value)))

    def close(self) -> None:
        pass


def attach(watched: Watched) -> Lag:
    return Lag(watched)
