"""The stall watch of one loop: when the loop last showed progress, and the stall it reports when it
resumes; the design is told in ``stalls.py``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sys
import threading
from time import perf_counter
from types import FrameType
from typing import Callable, List, Optional, Tuple

from loopstat import _ctrl_c
from loopstat._clock import Clock
from loopstat.probes import frames as _frames
from loopstat.probes import stall_capture as _stall_capture
from loopstat.probes import watchdog as _watchdog
from loopstat.probes.explain import Explainer
from loopstat.probes.frames import Outer, outer_of
from loopstat.probes.lag import Sampler
from loopstat.probes.selector_clock import Events, Waits
from loopstat.probes.stall_capture import Capture, Stall, capture_stack, stall_of
from loopstat.probes.watchdog import PARKED_SECONDS, Watchdog

log = logging.getLogger("loopstat.probes.stalls")  # the stall probe's logger, which users filter by

# A loop without a selector clock (uvloop) whose thread used less than this
# share of a core over the last REST_AFTER_SECONDS rests: its heartbeat stops
# and the sampler shows its progress, so an idle loop is woken only to be sampled.
ACTIVE_SHARE = 0.01
REST_AFTER_SECONDS = 2.0
# CPU seconds a sample itself may take on a loaded machine, on top of that share:
# at a short interval the sampler's own work would otherwise keep the beat going.
SAMPLE_CPU_SECONDS = 0.001
# The loop, reporting a stall, waits at most this long for the watchdog to finish
# describing it: after a block in C code the two look at the same moment.
CAPTURE_WAIT_SECONDS = 0.1


class StallWatch:
    """Watches one loop (how: ``stalls.py``); create and close it on the loop's own thread.

    ``now`` is the time the watch and its sampler share (``perf_counter`` by default); ``watchdog`` the thread that
    looks at it (the process's by default); tests pass a fake clock, and a watchdog that looks on it.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        threshold: float,
        clock: Optional[Waits],
        on_stall: Callable[[Stall], None],
        interval: float = math.inf,
        sampler: Optional[Sampler] = None,
        explainer: Optional[Explainer] = None,
        now: Optional[Clock] = None,
        watchdog: Optional[Watchdog] = None,
    ) -> None:
        self.threshold = threshold
        self._now = perf_counter if now is None else now
        self._watchdog = watchdog
        # Names each stall's cause and task; None: every stall's cause is unknown.
        self._explainer = explainer
        self.interval = interval
        # Revives the sampler's timers when overdue (signals may have cut off a link and its spare).
        self._sampler = sampler
        self._reviver = None if sampler is None else _ctrl_c.Reviver(loop, sampler, interval, threshold)
        #: True while the beat rests on a loop without a selector clock (its thread idles).
        self.resting = False
        self._idle_samples = 0
        # Set when a wake-up was the sampler's and left the watchdog asleep.
        self._quiet_wake = False
        # The progress mark of the last stall reported: one stall per mark, whoever sees it first.
        self._reported_mark = -math.inf
        self._rest_after = max(1, math.ceil(REST_AFTER_SECONDS / interval)) if math.isfinite(interval) else 1
        self.period = threshold / 10 if clock is not None else threshold / 4
        #: The thread that runs the loop, as last seen by the loop itself.
        self.thread_id = threading.get_ident()
        self.beat = self._now()
        #: Set by the watchdog: what it captured of the stall it saw.
        self.capture: Optional[Capture] = None
        #: Set by the watchdog when it found the loop not running (stopped between runs).
        self.paused = -math.inf
        #: Set by the watchdog when a look failed: the traceback, for the loop to log.
        self.failed_look: Optional[str] = None
        #: Set by the watchdog while it waits for the loop to come out of its selector.
        self.parked = False
        #: The frames around this loop's callbacks, taken by a callback on the
        #: loop's thread: at its first turn, then at the first beat of each run.
        self.outer: Outer = ()
        self._outer_stale = True
        self._loop = loop
        self._clock = clock
        self._on_stall = on_stall
        self._handle: Optional[asyncio.Handle] = None
        # ``now()`` when the beat in ``_handle`` is due.
        self._due = -math.inf
        self._arm(self.beat)
        loop.call_soon(self._learn)
        self._restart_posted = False
        self._restart_posted_at = -math.inf
        # ``now()`` when the watchdog posted the restart.
        self._restart_posted_when = -math.inf
        # When the watchdog meant to look next (-inf: when the loop wakes): a look
        # made late because the loop held the GIL is counted as made in time.
        self._planned = -math.inf
        # Held by the watchdog from its look at the loop's stack until the capture is published.
        self._capturing = threading.Lock()
        self._closed = False
        if clock is not None:
            clock.on_wake = self._woke
        try:
            self._dog().watch(self)
        except BaseException:
            with contextlib.suppress(Exception):
                self.close()  # nothing of a watch that could not start may stay on the loop
            raise

    def _dog(self) -> Watchdog:
        """The watchdog: read at each use, as a forked child gets a new one."""
        return _watchdog.current if self._watchdog is None else self._watchdog

    def _arm(self, now: float) -> None:
        """Schedule the next beat, ``period`` after ``now``."""
        self._due = now + self.period
        self._handle = self._loop.call_later(self.period, self._beat)

    def mark(self) -> float:
        """``now()`` when the loop last showed progress."""
        clock = self._clock
        return self.beat if clock is None else max(self.beat, clock.woke)

    def _woke(self, events: Events, end: float) -> None:
        # A loop may run in another thread after a stop; its wakes move the mark.
        self.thread_id = threading.get_ident()
        if self.parked:
            sampler = self._sampler
            if not events and sampler is not None and self._loop.time() >= sampler.next_sample:
                self._quiet_wake = True  # the sampler's timer is due: ``sampled`` looks at what came with it
                return
            self._unpark()

    def _unpark(self) -> None:
        """The loop has work: the watchdog, asleep since it saw the loop wait, watches it again."""
        if self.parked:
            self.parked = False
            self._dog().wake()

    def sampled(self, now: float, late: float, busy: Optional[float], wall: float) -> None:
        """Called by the sampler on the loop's thread, ``late`` seconds after its deadline.

        ``busy`` is the seconds the thread spent on the CPU or in watched blocking calls in the ``wall``
        seconds since the previous sample (None after the loop moved to another thread).

        Stdlib loops: a wake-up that was only the sampler's left the watchdog asleep; if other callbacks
        are ready (or come due: the next busy poll), the watchdog is woken to watch them. uvloop: the beat
        rests while the loop's thread idles and resumes when it works; while it rests, a sample that came
        more than ``threshold`` late is the stall: from the deadline, or longer if the thread spent more
        time on the CPU or in watched blocking calls since the last sample.
        """
        self._recover(now - late)
        failed, self.failed_look = self.failed_look, None
        if failed is not None:
            log.debug("loopstat: the watchdog could not inspect the loop:\n%s", failed)
        _frames.tell()  # what the watchdog found out, logged here: it never logs on its own thread
        # Busy: on the CPU, or blocked in a watched call (a loop that sleeps on its thread is not idle).
        idle = busy is not None and busy < ACTIVE_SHARE * wall + SAMPLE_CPU_SECONDS
        clock = self._clock
        if clock is not None:
            if self._quiet_wake:
                self._quiet_wake = False
                # Timers due with the sampler's ran before it, unwatched: a stall among them ends
                # here. It began at that wake-up, no earlier than this sample's deadline (a spare
                # that took over from a timer lost to a signal comes later than the wake-up it was due at).
                self._report(now, max(clock.woke, now - late), clock.woke)
            if getattr(self._loop, "_ready", None):
                self._unpark()
            return
        if not self.resting:
            self._idle_samples = self._idle_samples + 1 if idle else 0
            if self._idle_samples >= self._rest_after:
                self.resting = True  # the beat ends at its next turn
            return
        if late > self.threshold:
            self._report(now, now - min(max(late, busy or 0.0), now - self.beat), self.beat)
        if late > self.threshold or not idle:
            self._idle_samples = 0
            self.resting = False
            self.beat = now
            if self._handle is None:
                self._arm(now)
            self._dog().wake()
        else:
            self.beat = now  # the sampler's turn is progress too

    def _recover(self, deadline: float) -> None:
        """Take back a beat or a restart that a signal cut off, at a sample due at ``deadline`` (``_ctrl_c.py``)."""
        if self._handle is not None and _ctrl_c.lost(self._due, deadline, self.period):
            self._handle.cancel()
            self._handle = None  # the watchdog restarts it, as after a wait
        if self._restart_posted and _ctrl_c.lost(self._restart_posted_when, deadline, self.period):
            self._restart_posted = False  # the watchdog posts another

    def _on_the_loop(self) -> None:
        """Note, from a callback, which thread runs the loop and what lies around its callbacks."""
        ident = threading.get_ident()
        if ident != self.thread_id or self._outer_stale:
            self.thread_id = ident
            self._outer_stale = False
            if self._explainer is not None:
                self._explainer.learn()
            # The frame that runs the calling callback, and the ones around it:
            # every callback of this run starts with them. Taken from a callback,
            # not in install(), which may run inside a task started eagerly.
            try:
                around: Optional[FrameType] = sys._getframe(2)
            except ValueError:  # run from C with no Python frame around: nothing to strip
                around = None
            self.outer = outer_of(around)

    def _learn(self) -> None:
        """The first callback: learn what is around the loop's callbacks before a stall needs it."""
        self._on_the_loop()

    def _beat(self) -> None:
        self._handle = None  # first: a Ctrl-C in the rest leaves no beat, which the watchdog restarts
        self._on_the_loop()
        now = self._now()
        if self._reviver is not None:
            self._reviver.on_the_loop(now)
        last_beat, mark = self.beat, self.mark()
        waited = mark > last_beat
        self.beat = now
        if (waited and self._clock is not None) or self.resting:
            self._handle = None  # it waits again now and then: the watchdog restarts the beat if needed
        else:
            self._arm(now)
        # Waited in the selector since the last beat: stuck since it woke.
        # Busy all along: stuck since somewhere in the period, most likely mid-way.
        self._report(now, mark if waited else last_beat + self.period / 2, mark)

    def _restart(self) -> None:
        """Posted by the watchdog when the loop has run for a while without waiting or beating."""
        self._restart_posted = False
        if self._handle is not None or self._closed:
            return
        self._on_the_loop()
        now = self._now()
        mark = self.mark()
        self.beat = now
        self._arm(now)
        # Stuck since the mark if the restart was posted a period after it, as it
        # should; posted late (a beat that was interrupted), only since then.
        # After a wake-up left to the sampler, the sample reports (see ``sampled``):
        # the watchdog slept, and since then the loop may have run as well as stalled.
        if not self._quiet_wake:
            self._report(now, max(mark, self._restart_posted_at - self.period), mark)

    def _report(self, now: float, started: float, mark: float) -> None:
        duration = now - started
        if duration <= self.threshold or self.paused >= mark or mark == self._reported_mark:
            return
        self._reported_mark = mark
        capture = self.capture
        if capture is None or capture.mark != mark or capture.own:
            # The watchdog may be describing this very stall (again, if it last saw loopstat's own
            # code): after a block in C code that held the GIL, it gets to look only as the block ends.
            if self._capturing.acquire(timeout=CAPTURE_WAIT_SECONDS):
                self._capturing.release()
            capture = self.capture
        stall = stall_of(capture, mark, started, now, self._explainer)
        if stall is not None:
            self._on_stall(stall)

    def inspect(self, now: float) -> Optional[float]:
        """Called by the watchdog: capture the stack of a stuck loop.

        Returns when to look again, or None to wait until the loop comes out
        of its selector.
        """
        when = self._inspect(now)
        self._planned = -math.inf if when is None else when
        return when

    def _inspect(self, now: float) -> Optional[float]:
        loop = self._loop
        if self._closed:
            return None  # gone with its monitor; nothing may be posted to its loop any more
        if not loop.is_running():
            self.paused = now
            # The next run may be in another thread or called from elsewhere; its
            # first beat learns that. (Nothing is posted to a loop that is not
            # running: its thread may be closing it, and uvloop's close() is not
            # safe against a call from another thread.)
            self._outer_stale = True
            return now + self.threshold
        if self.resting:
            # Only the sampler shows progress: stuck if it is overdue by more than the threshold.
            again = now + PARKED_SECONDS
            if now < self.beat + self.interval + self.threshold:
                return again
            when = self._capture(self.beat, lambda: again)
            self._revive_sampler(now)
            return when
        clock = self._clock
        if clock is not None:
            # Parked first, then the check: the loop clears ``waiting`` before it reads ``parked``, so one of the two
            # sides sees the other. A busy poll wakes it too: after a wake-up left to the sampler, what came due
            # meanwhile runs without a wait.
            self.parked = True
            clock.on_poll = self._unpark
            if clock.waiting:
                self._revive_sampler(now)
                return None
            self.parked = False
            clock.on_poll = None
        mark = self.mark()
        due = mark + self.threshold
        if now < due:
            return self._next_look(now, mark, due)
        # The restart, if due, is posted after the look at the stack, before
        # the loop can wait again: a wait would end the stall unreported.
        return self._capture(mark, lambda: self._next_look(now, mark, due))

    def _revive_sampler(self, now: float) -> None:
        """Ask the loop to revive its sampler if it is overdue while nothing on the loop's side looks (no beat)."""
        if self._reviver is not None:
            self._reviver.post(now, PARKED_SECONDS)

    def _capture(self, mark: float, then: Callable[[], float]) -> float:
        """Capture the stack of the stall that started at ``mark`` (unless done), around ``then``; return its result."""
        capture = self.capture
        # Seen in loopstat's own code, a stall that goes on is looked at again: the loop may have moved on to the
        # application's code without showing progress (a callback of its own, then the application's).
        if capture is not None and capture.mark == mark and not capture.own:
            return then()
        with self._capturing:  # the loop's report of this stall waits for the capture
            # The stack first, before anything that lets the loop run on (posting
            # to it, reading source lines): after a block in C code that held the
            # GIL, the watchdog gets in just as the call returns, and the loop
            # thread still stands where it made the call.
            read: List[Tuple[float, bool, float]] = []

            def look() -> None:
                looked, seen = self._now(), self.mark() == mark  # else the loop moved on before the look
                # ``then`` may post the restart that reports this stall: posted before the loop can wait again,
                # which would end the stall unreported.
                read.append((looked, seen, then()))

            frames, whole, coroutine = _stall_capture._thread_stack(self.thread_id, self._loop, look)
            if not read:  # on CPython 3.11, as soon as the stack was read: reading it in full lets the loop run on
                look()
            looked, seen, when = read[0]
            if seen:
                # The signals next: reading their files lets the loop run on, so only after ``then``.
                late = looked - _stall_capture.planned_look(mark, self.threshold, self.resting, self._planned)
                signals = _stall_capture.read_signals(self._explainer, coroutine, frames, late)
                capture = capture_stack(mark, frames, whole, self.outer, signals)
                # Made late, a look that finds loopstat's own code may find the loop past the stall (the application's
                # callback returned, the sampler's runs): it says nothing of whose the stall is.
                if not (capture.own and late > self.period):
                    self.capture = capture
        return when

    def _next_look(self, now: float, mark: float, due: float) -> float:
        """Restart the beat if the loop works without it; return when to look again."""
        if self._handle is None:
            # Working without waiting, and no beat to show progress: restart it soon.
            soon = mark + self.period
            if now < soon:
                return min(due, soon)
            if not self._restart_posted:
                self._restart_posted_when = self._now()
                self._restart_posted = True
                # Posted when it should have been if this look came late, kept
                # out by a loop that held the GIL; a restart that is late for
                # other reasons (a beat that was interrupted) counts from now.
                self._restart_posted_at = min(now, max(soon, self._planned))
                self._loop.call_soon_threadsafe(self._restart)
        if now < due:
            return due if self._handle is not None else min(due, now + self.period)
        return now + self.threshold

    def close(self) -> None:
        self._closed = True  # a restart the watchdog posted may still be on its way
        if self._clock is not None:
            self._clock.on_wake = self._clock.on_poll = None
        # On a closed loop there is nothing left to cancel.
        with contextlib.suppress(Exception):
            if self._handle is not None:
                self._handle.cancel()
        self._handle = None
        try:
            self._dog().unwatch(self)
        finally:
            if self._explainer is not None:
                self._explainer.close()
