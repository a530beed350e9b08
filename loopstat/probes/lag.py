"""Lag: how late the loop runs a timer that is due (the sampler's own timers are the probe).

The sampler is a chain of the loop's timers, not a task: the application's
``asyncio.all_tasks()`` never holds it, and cancelling every task it can see
leaves monitoring on. Each link is armed twice, at its deadline and a spare
one interval later, so that a Ctrl-C that cuts one off leaves the chain whole
(``loopstat/_ctrl_c.py`` tells how).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from time import perf_counter
from typing import Callable, List, Tuple

from loopstat import _ctrl_c
from loopstat._clock import Clock
from loopstat._metrics import Line
from loopstat.probes import Watched


class Sampler:
    """The sampler's chain of timers; calls ``on_time(lag)`` at each link, ``lag`` in milliseconds.

    Lag is measured with ``perf_counter()`` rather than ``loop.time()``:
    uvloop's clock moves in whole milliseconds. It is never negative: timers
    may fire a hair early, and StatsD servers reject negative timings.
    Create, start, revive and stop it on the loop's thread.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        interval: float,
        on_time: Callable[[float], None],
        clock: Clock = perf_counter,
    ) -> None:
        self._loop = loop
        self._clock = clock
        self._interval = interval
        self._on_time = on_time
        # The current link: a timer armed for another one does nothing (0: not started).
        self._link = 0
        self._handles: Tuple[asyncio.TimerHandle, ...] = ()
        self._stopped = False
        self._revival = _ctrl_c.Revival(clock)
        #: ``perf_counter()`` when the current link is due (inf when not running).
        self.due = math.inf
        #: ``loop.time()`` when the current link is due: the loop's next wake-up for a sample.
        self.next_sample = math.inf

    def start(self) -> None:
        if not self._stopped and self._link == 0:
            self._arm(self._clock())

    def _arm(self, now: float) -> None:
        """Arm the next link, ``interval`` after ``now``, and its spare; cancel what is left of the last."""
        link, interval, loop = self._link + 1, self._interval, self._loop
        when = loop.time() + interval
        handles = _ctrl_c.arm_link(loop, self._fire, link, when, now + interval, interval)
        # One statement: the chain moves to the new link with both its timers armed.
        old, self._handles, self._link, self.due, self.next_sample = self._handles, handles, link, now + interval, when
        for handle in old:
            handle.cancel()

    def _fire(self, link: int, due: float) -> None:
        if link != self._link or self._stopped:
            return  # the other timer of this link ran first
        now = self._clock()
        self._arm(now)  # first: a Ctrl-C in the sample below leaves the chain armed
        self._on_time(max(0.0, (now - due) * 1000.0))

    def revive(self) -> None:
        """Called on the loop's thread when the link is overdue: arm one more spare for it (``_ctrl_c.Revival``).

        Both its timers may have been lost (two signals in a row).
        """
        if self._stopped or self._link == 0:
            return
        spare = self._revival.spare(self._loop, self._fire, self._link, self._interval)
        if spare is not None:
            self._handles += (spare,)

    def stop(self) -> None:
        """End the chain; safe to repeat, and on a closed loop."""
        self._stopped = True
        self.due = self.next_sample = math.inf
        handles, self._handles = self._handles, ()
        for handle in handles:
            with contextlib.suppress(Exception):  # a closed uvloop loop may refuse
                handle.cancel()


class Lag:
    """Reports the lateness the sampler measured."""

    def __init__(self, watched: Watched) -> None:
        self._watched = watched

    def read(self, lines: List[Line]) -> None:
        # Microseconds are plenty and keep the datagrams short.
        value = round(self._watched.lag, 3)
        lines.extend((("lag", "g", value), ("lag", "ms", value)))

    def close(self) -> None:
        pass


def attach(watched: Watched) -> Lag:
    return Lag(watched)
