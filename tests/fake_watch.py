"""The stall watch on virtual time: the loop's waits and the watchdog's looks both on one FakeClock.

``WatchedTimeLoop`` is a ``FakeTimeLoop`` whose selector stands in for the
selector clock (the ``Waits`` a ``StallWatch`` reads) and whose ``watchdog``
looks when its watches ask, as the real thread does: while the loop waits, and
while a callback holds the loop (``hold``). Each look runs the watchdog's own
``_look`` in a thread of its own while the loop's thread waits for it, so it
reads the loop thread's stack as the real one does; which of the two moves
when is the test's choice, never the scheduler's.
"""

from __future__ import annotations

import math
import selectors
import threading
from typing import Any, Callable, List, Optional, Tuple

from loopstat.probes import watchdog
from loopstat.probes.selector_clock import Events
from loopstat.probes.stall_watch import StallWatch
from tests.fake_clock import FakeClock
from tests.fake_time import FakeTimeLoop, JumpingSelector


class FakeWatchdog(watchdog.Watchdog):
    """The stall watchdog on virtual time: it looks only while the loop's thread lets time pass (``hold``)."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.clock = clock
        self.watches: List[StallWatch] = []
        #: When the next look is due (inf: no loop watched).
        self.due = math.inf
        #: Seconds callbacks held the loop's thread (busy), as its CPU clock would say.
        self.busy = 0.0

    def watch(self, probe: StallWatch) -> None:
        self.watches.append(probe)
        self.wake()

    def unwatch(self, probe: StallWatch) -> None:
        if probe in self.watches:
            self.watches.remove(probe)
        if not self.watches:
            self.due = math.inf

    def wake(self) -> None:
        """A loop asks to be looked at: at once, as soon as time passes."""
        if self.watches:
            self.due = min(self.due, self.clock())

    def hold(self, seconds: float, busy: bool = True, until: Callable[[], bool] = lambda: False) -> None:
        """Let ``seconds`` pass on the loop's thread (busy, or waiting in its selector), looking whenever a look is
        due; stop after a look once ``until()`` holds (something was posted to a waiting loop)."""
        start = self.clock()
        end = start + seconds
        while self.due <= end:
            self.clock.now = max(self.clock.now, self.due)
            self.look()
            if until():
                end = self.clock()
        self.clock.now = max(self.clock.now, end)
        if busy:
            self.busy += self.clock() - start

    def look(self) -> None:
        """One look at every watch, from a thread of its own, as the real watchdog's."""
        now = self.clock()
        self.looks += 1
        wake: List[float] = []
        thread = threading.Thread(target=lambda: wake.append(watchdog._look(list(self.watches), now)))
        thread.start()
        thread.join()
        failed = [probe.failed_look for probe in self.watches if probe.failed_look is not None]
        assert not failed, f"a look failed: {failed}"
        # The real thread waits at least a millisecond between looks.
        self.due = max(now + 0.001, wake[0]) if self.watches else math.inf


class WaitingSelector(JumpingSelector):
    """Times its waits as the selector clock does (``woke``, ``waiting``, ``on_wake``, ``on_poll``); the watchdog looks
    meanwhile."""

    def __init__(self, clock: FakeClock, dog: FakeWatchdog) -> None:
        super().__init__(clock)
        self.dog = dog
        self.woke = clock()
        self.waiting = False
        self.on_wake: Optional[Callable[[Events, float], None]] = None
        self.on_poll: Optional[Callable[[], None]] = None

    def _poll(self) -> List[Tuple[Any, int]]:
        return list(selectors.DefaultSelector.select(self, 0))

    def select(self, timeout: Optional[float] = None) -> List[Tuple[Any, int]]:
        if timeout == 0:  # a busy loop's poll: no wait
            on_poll, self.on_poll = self.on_poll, None
            if on_poll is not None:
                on_poll()
            return self._poll()
        self.waiting = True
        events = self._poll()
        if not events:
            if timeout is None:
                raise AssertionError("the loop would wait for ever: no timer is armed")
            self.dog.hold(timeout, busy=False, until=lambda: bool(self._poll()))
            events = self._poll()
        self.waiting = False
        self.woke = self.clock()
        if self.on_wake is not None:
            self.on_wake(events, self.woke)
        return events


class WatchedTimeLoop(FakeTimeLoop):
    """An asyncio loop on virtual time, its waits timed and its fake watchdog looking on the same clock."""

    def __init__(self) -> None:
        clock = FakeClock()
        self.watchdog = FakeWatchdog(clock)
        self.waits = WaitingSelector(clock, self.watchdog)
        super().__init__(clock, self.waits)

    def hold(self, seconds: float) -> None:
        """A callback holds the loop's thread for ``seconds`` (a blocking call): the watchdog looks meanwhile."""
        self.watchdog.hold(seconds)
