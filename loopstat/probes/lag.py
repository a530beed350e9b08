"""Lag: how late the loop runs a timer that is due (the sampler's own timers are the probe).

The sampler is a chain of the loop's timers, not a task: the application's
``asyncio.all_tasks()`` never holds it, and cancelling every task it can see
leaves monitoring on. Each timer, when it fires, arms the next before it does
anything else, so an exception raised later in it (Ctrl-C) leaves the chain
whole.

A signal's exception (KeyboardInterrupt) can also land in a timer's callback
before its first line, or on stdlib loops between taking it off the ready
queue and running it: that timer is lost. So each link of the chain is armed
twice, at its deadline and a spare one interval later; whichever runs first
carries the chain on, and the other is cancelled or does nothing. The spare
measures its own lateness, so a lost timer costs one sample, never a false lag.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from time import perf_counter
from typing import Callable, List, Tuple

from loopstat._clock import Clock
from loopstat._metrics import Line
from loopstat.probes import Watched

# ``revive`` arms at most one more spare this often: the stall watch may ask at every beat.
REVIVE_SECONDS = 1.0


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
        self._revived_at = -math.inf
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
        handles = (
            loop.call_at(when, self._fire, link, now + interval),
            loop.call_at(when + interval, self._fire, link, now + 2 * interval),
        )
        # One statement: the chain moves to the new link with both its timers armed.
        old, self._handles, self._link, self.due, self.next_sample = self._handles, handles, link, now + interval, when
        for handle in old:
            handle.cancel()

    def _fire(self, link: int, due: float) -> None:
        if link != self._link or self._stopped:
            return  # the other timer of this link ran first
        now = self._clock()
        self._arm(now)
        self._on_time(max(0.0, (now - due) * 1000.0))

    def revive(self) -> None:
        """Called on the loop's thread when the link is overdue: arm one more spare for it.

        Both its timers may have been lost (two signals in a row). The spare
        fires an interval from now, after any of them still pending: it does
        nothing if one of them carried the chain on.
        """
        now = self._clock()
        if self._stopped or self._link == 0 or now - self._revived_at < REVIVE_SECONDS:
            return
        self._revived_at = now
        spare = self._loop.call_at(self._loop.time() + self._interval, self._fire, self._link, now + self._interval)
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
