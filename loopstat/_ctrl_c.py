"""Ctrl-C: what a signal's exception can take from loopstat on the loop's thread, and how each part takes it back.

A signal handler's exception (KeyboardInterrupt from SIGINT, or whatever an
application's handler raises) comes out on the loop's thread at the
interpreter's next check, which may be in loopstat's own callbacks. The rule:
loopstat never catches it. It goes to the application, out of
``run_until_complete()`` or ``run_forever()``, as if loopstat were not there,
and an application that runs the loop again keeps its monitor. So nothing is
guarded with ``except BaseException``; instead each part is written so that
what the exception cuts off is taken back later, by itself or by another part.

Where it lands, what is lost, and who takes it back:

- In a callback, after its first line: the rest of it. Each callback first
  does what keeps things going, so the rest may be lost: the sampler arms its
  next link (``Sampler._fire``), the stall watch's beat forgets its handle
  (``StallWatch._beat``: the watchdog then sees no beat and restarts it).
- Before a callback's first line (a Python function's start is a check), or on
  stdlib loops between taking a timer off the ready queue and running it: the
  whole callback.
  - A sampler link: each is armed twice (``arm_link``), at its deadline and a
    spare one interval later; whichever runs first carries the chain on and
    the other does nothing. The spare measures its own lateness, so a lost
    timer costs one sample, never a false lag. The sampler needs nothing else
    for this: it works with the stall watch off.
  - A link and its spare (two signals in a row): the stall watch finds the
    sampler ``overdue``, at its beat or, posted by the watchdog, when the loop
    waits or rests (``Revival``: at most one such post a ``PARKED_SECONDS``),
    and the sampler arms one more spare (``Sampler.revive``: at most one a
    ``REVIVE_SECONDS``). With the stall watch off, nothing does.
  - A stall-watch beat or a restart the watchdog posted: a sample runs after
    every callback due before it, so one still pending at a later sample was
    ``lost``; the watch forgets it (``StallWatch._recover``) and the watchdog
    restarts the beat, or posts another restart.
  - A monitor's first callback (``Monitor._begin``): the first sample begins it.
- In ``stop()`` or in a loop's ``close()``: every release step runs even if one
  before it raised (``Monitor._shutdown``), and the exception then goes on.

The application's own callbacks can lose their wake-ups the same way; nothing
takes those back.
"""

from __future__ import annotations

import asyncio
import math
from typing import TYPE_CHECKING, Callable, Optional, Tuple

from loopstat._clock import Clock

if TYPE_CHECKING:
    from loopstat.probes.lag import Sampler

# The sampler arms at most one more spare this often: the stall watch may ask at every beat.
REVIVE_SECONDS = 1.0

#: A sampler's callback: ``fire(link, due)``, ``due`` on the sampler's clock.
Fire = Callable[[int, float], None]


def arm_link(
    loop: asyncio.AbstractEventLoop, fire: Fire, link: int, when: float, due: float, interval: float
) -> Tuple[asyncio.TimerHandle, asyncio.TimerHandle]:
    """Arm ``link`` at ``when`` (``loop.time()``; ``due`` on the sampler's clock) and a spare an interval later."""
    return (
        loop.call_at(when, fire, link, due),
        loop.call_at(when + interval, fire, link, due + interval),
    )


def overdue(now: float, due: float, interval: float, threshold: float) -> bool:
    """Whether a link due at ``due`` and its spare, an interval later, are both more than ``threshold`` late: lost."""
    return now > due + interval + threshold


def lost(due: float, deadline: float, period: float) -> bool:
    """Whether a callback of ours due (or posted) at ``due`` and still pending at a sample due at ``deadline`` was lost.

    Everything due before the sample runs before it; ``period`` is kept to spare for uvloop's millisecond clock.
    """
    return due < deadline - period


class Revival:
    """Spares for a sampler's overdue link, each at most once a ``REVIVE_SECONDS`` on ``clock``."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._at = -math.inf

    def spare(
        self, loop: asyncio.AbstractEventLoop, fire: Fire, link: int, interval: float
    ) -> Optional[asyncio.TimerHandle]:
        """Arm one more timer for ``link``, an interval from now: after any of its own still pending, which it
        leaves to carry the chain on. None when one was armed less than ``REVIVE_SECONDS`` ago."""
        now = self._clock()
        if now - self._at < REVIVE_SECONDS:
            return None
        self._at = now
        return loop.call_at(loop.time() + interval, fire, link, now + interval)


class Reviver:
    """The stall watch's side: revives a sampler whose link and spare are both overdue."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sampler: Sampler, interval: float, threshold: float) -> None:
        self._loop = loop
        self._sampler = sampler
        self._interval = interval
        self._threshold = threshold
        # When the watchdog last posted a revival.
        self._posted_at = -math.inf

    def on_the_loop(self, now: float) -> None:
        """At a beat, on the loop's thread: revive the sampler if its link is lost."""
        if overdue(now, self._sampler.due, self._interval, self._threshold):
            self._sampler.revive()

    def post(self, now: float, every: float) -> None:
        """From the watchdog: post a revival to the loop if the link is lost, at most once an ``every`` seconds.

        Called after any look at the stack: posting lets the loop run on.
        """
        if not overdue(now, self._sampler.due, self._interval, self._threshold):
            return
        if now - self._posted_at >= every:
            self._posted_at = now
            self._loop.call_soon_threadsafe(self._sampler.revive)
