"""Stalls: a watchdog thread notices a loop that makes no progress and names the code it is stuck in.

A loop shows progress at heartbeats and, on stdlib loops, each time it comes
out of its selector. The watchdog thread, one per process and only while some
loop is watched, looks when some loop's last sign of progress may be
``threshold`` old, and if the loop is still stuck, captures the loop thread's
stack. The stall is measured and reported by the loop itself, on the first
beat after it ends; everything that costs time (walking the frames, reading
source lines, naming the culprit) is done by the watchdog, off the loop.

A block inside C code that holds the GIL (a big ``json.loads``, ``sum`` over a
huge range, a backtracking regex) keeps the watchdog out until the call
returns. The loop thread then gives the GIL up at the interpreter's next check,
still in the frame that made the call (Python 3.9 to 3.13 alike), so the
watchdog, which asked for the GIL during the block, looks first and finds the
calling line. For that it looks before it does anything that lets the loop run
on, and the loop, reporting the stall, waits for a look in progress.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sys
import threading
import time
import traceback
import weakref
from dataclasses import dataclass
from time import perf_counter
from types import FrameType
from typing import Callable, Dict, List, Optional, Sequence, Tuple
from weakref import WeakSet

from loopstat import _cgroup, _threads
from loopstat._metrics import Line
from loopstat.probes import Watched
from loopstat.probes import frames as _frames
from loopstat.probes.causes import Verdict
from loopstat.probes.explain import Explainer, Seen, outermost_coroutine
from loopstat.probes.frames import Frame, Outer, blame, format_stack, loopstat_file, outer_of, walk, where
from loopstat.probes.lag import Sampler
from loopstat.probes.selector_clock import Events, SelectorClock

log = logging.getLogger(__name__)

# A location that keeps stalling is logged at most this often.
LOG_EVERY_SECONDS = 60.0
# Locations remembered for that; beyond it the memory starts afresh.
MAX_LOCATIONS = 1000
# The watchdog looks at least this often, even when every loop waits idle.
PARKED_SECONDS = 1.0
# A loop without a selector clock (uvloop) whose thread used less than this
# share of a core over the last REST_AFTER_SECONDS rests: its heartbeat stops
# and the sampler shows its progress, so an idle loop is woken only to be sampled.
ACTIVE_SHARE = 0.01
REST_AFTER_SECONDS = 2.0
# CPU seconds a sample itself may take on a loaded machine, on top of that share:
# at a short interval the sampler's own work would otherwise keep the beat going.
SAMPLE_CPU_SECONDS = 0.001
# A fork waits at most this long for the watchdog thread to end when no loop
# is watched: Python 3.12+ warns about a fork in a process with threads.
FORK_WAIT_SECONDS = 1.0

# The loop, reporting a stall, waits at most this long for the watchdog to finish
# describing it: after a block in C code the two look at the same moment.
CAPTURE_WAIT_SECONDS = 0.1


@dataclass(frozen=True)
class Stall:
    """One stall of an event loop: how long it made no progress and where it was stuck."""

    #: Milliseconds the loop made no progress.
    duration: float
    #: ``file:line in function`` of the innermost application frame, or None when
    #: the stall ended before the watchdog could look.
    location: Optional[str]
    #: The loop thread's stack while it was stuck, innermost call last ("" if not
    #: captured); at most ``STACK_BYTES``, deep stacks cut in the middle.
    stack: str
    #: ``time.time()`` when the stall ended.
    ended: float
    #: Why: ``cpu``, ``blocking_call``, ``gc``, ``throttled``, ``gil``, ``import``, ``scheduler`` or ``unknown``
    #: (``loopstat/probes/causes.py``).
    cause: str = "unknown"
    #: The figures behind the cause, as the log line says them.
    reason: str = ""
    #: ``task '<name>' <coroutine>`` of the task whose step blocked, ``coroutine <name>`` if it has ended
    #: since, None if the loop was not running a coroutine.
    task: Optional[str] = None


@dataclass(frozen=True)
class Capture:
    """What the watchdog saw of a stuck loop, ready to report."""

    #: The progress mark of the stall it belongs to.
    mark: float
    location: Optional[str]
    stack: str
    #: Stuck in loopstat's own code: not the application's stall.
    own: bool
    #: The signals read at the look, for the cause.
    seen: Optional[Seen] = None


class StallProbe:
    """Watches one loop; create and close it on the loop's own thread.

    Progress shows at heartbeats and, on stdlib loops, each time the loop comes
    out of its selector. There the beat runs only while the loop works without
    waiting; it stops when the loop waits and the watchdog restarts it, so an
    idle loop is never woken for it; and a wake-up that is only the sampler's
    does not wake the watchdog either. uvloop shows nothing but the beat, which
    runs while the loop's thread works and rests while it idles (see
    ``sampled``): an idle loop wakes only for its samples.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        threshold: float,
        clock: Optional[SelectorClock],
        on_stall: Callable[[Stall], None],
        interval: float = math.inf,
        sampler: Optional[Sampler] = None,
        explainer: Optional[Explainer] = None,
    ) -> None:
        self.threshold = threshold
        # Names each stall's cause and task; None: every stall's cause is unknown.
        self._explainer = explainer
        self.interval = interval
        # The sampler's timers: revived when overdue (signals may have cut off a link and its spare).
        self._sampler = sampler
        # When the watchdog last asked the loop to revive its sampler: at most once a PARKED_SECONDS.
        self._revive_posted_at = -math.inf
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
        self.beat = perf_counter()
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
        # ``perf_counter()`` when the beat in ``_handle`` is due.
        self._due = -math.inf
        self._arm(self.beat)
        loop.call_soon(self._learn)
        self._restart_posted = False
        self._restart_posted_at = -math.inf
        # ``perf_counter()`` when the watchdog posted the restart.
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
            _watchdog.watch(self)
        except BaseException:
            with contextlib.suppress(Exception):
                self.close()  # nothing of a watch that could not start may stay on the loop
            raise

    def _arm(self, now: float) -> None:
        """Schedule the next beat, ``period`` after ``now``."""
        self._due = now + self.period
        self._handle = self._loop.call_later(self.period, self._beat)

    def mark(self) -> float:
        """``perf_counter()`` when the loop last showed progress."""
        clock = self._clock
        return self.beat if clock is None else max(self.beat, clock.woke)

    def _woke(self, events: Events, end: float) -> None:
        # A loop may run in another thread after a stop; its wakes move the mark.
        self.thread_id = threading.get_ident()
        if self.parked:
            sampler = self._sampler
            if not events and sampler is not None and self._loop.time() >= sampler.next_sample:
                # The sampler's timer is due: ``sampled`` looks at what came with it.
                self._quiet_wake = True
                return
            self.parked = False
            _watchdog.wake()

    def sampled(self, now: float, late: float, busy: Optional[float], wall: float) -> None:
        """Called by the sampler on the loop's thread, ``late`` seconds after its deadline.

        ``busy`` is the seconds the thread spent on the CPU or in watched blocking
        calls in the ``wall`` seconds since the previous sample (None after the
        loop moved to another thread).

        Stdlib loops: a wake-up that was only the sampler's left the watchdog
        asleep; if other callbacks are ready, the loop has more to do, and the
        watchdog is woken to watch it. uvloop: the beat rests while the loop's
        thread idles and resumes when it works; while it rests, a sample that
        came more than ``threshold`` late is the stall: from the deadline, or
        longer if the thread spent more time on the CPU or in watched blocking calls since the last sample.
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
            if self.parked and getattr(self._loop, "_ready", None):
                self.parked = False
                _watchdog.wake()
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
            _watchdog.wake()
        else:
            self.beat = now  # the sampler's turn is progress too

    def _recover(self, deadline: float) -> None:
        """Take back a beat or a restart that a signal cut off, at a sample due at ``deadline``.

        A signal's exception (KeyboardInterrupt) can land in a callback before
        its first line; it goes to the application, and the beat or restart it
        cut off is lost, leaving the loop unwatched. A timer due before the
        sampler's, or a callback posted before it, runs before the sampler reads
        (with a period to spare for uvloop's millisecond clock): if it is still
        pending, it was lost.
        """
        before = deadline - self.period
        if self._handle is not None and self._due < before:
            self._handle.cancel()
            self._handle = None  # the watchdog restarts it, as after a wait
        if self._restart_posted and self._restart_posted_when < before:
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
        # First: whatever interrupts the rest (a KeyboardInterrupt from a signal),
        # the watchdog then sees no beat and restarts it.
        self._handle = None
        self._on_the_loop()
        now = perf_counter()
        sampler = self._sampler
        if sampler is not None and now > sampler.due + self.interval + self.threshold:
            sampler.revive()  # the link and its spare, an interval later, are both overdue
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
        now = perf_counter()
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
        if capture is None or capture.mark != mark:
            # The watchdog may be describing this very stall: after a block in C
            # code that held the GIL, it gets to look only as the block ends.
            if self._capturing.acquire(timeout=CAPTURE_WAIT_SECONDS):
                self._capturing.release()
            capture = self.capture
        if capture is None or capture.mark != mark:
            capture = Capture(mark, None, "", False)
        if capture.own:
            log.debug(
                "loopstat: the event loop was blocked for %.0f ms in loopstat's own code at %s; "
                "not counted as a stall of the application",
                duration * 1000.0,
                capture.location,
            )
            return
        verdict, task = self._explain(capture.seen, started, now)
        stall = Stall(duration * 1000.0, capture.location, capture.stack, time.time(), verdict.cause, verdict.why, task)
        self._on_stall(stall)

    def _explain(self, seen: Optional[Seen], started: float, now: float) -> Tuple[Verdict, Optional[str]]:
        explainer = self._explainer
        if explainer is not None:
            try:
                return explainer.explain(seen, started, now)
            except Exception:  # a signal that reads oddly: the stall is reported all the same
                log.debug("loopstat: could not tell the cause of a stall", exc_info=True)
        return Verdict("unknown", ""), None

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
            # Parked first, then the check: the loop clears ``waiting`` before
            # it reads ``parked``, so one of the two sides sees the other.
            self.parked = True
            if clock.waiting:
                self._revive_sampler(now)
                return None
            self.parked = False
        mark = self.mark()
        due = mark + self.threshold
        if now < due:
            return self._next_look(now, mark, due)
        # The restart, if due, is posted after the look at the stack, before
        # the loop can wait again: a wait would end the stall unreported.
        return self._capture(mark, lambda: self._next_look(now, mark, due))

    def _revive_sampler(self, now: float) -> None:
        """Ask the loop to revive its sampler if it is overdue while nothing on the loop's side looks (no beat).

        Called after any look at the stack: posting lets the loop run on.
        """
        sampler = self._sampler
        if sampler is None or now <= sampler.due + self.interval + self.threshold:
            return
        if now - self._revive_posted_at >= PARKED_SECONDS:
            self._revive_posted_at = now
            self._loop.call_soon_threadsafe(sampler.revive)

    def _capture(self, mark: float, then: Callable[[], float]) -> float:
        """Capture the stack of the stall that started at ``mark`` (unless done), around ``then``; return its result."""
        capture = self.capture
        if capture is not None and capture.mark == mark:
            return then()
        with self._capturing:  # the loop's report of this stall waits for the capture
            # The stack first, before anything that lets the loop run on (posting
            # to it, reading source lines): after a block in C code that held the
            # GIL, the watchdog gets in just as the call returns, and the loop
            # thread still stands where it made the call.
            frames, whole, coroutine = _thread_stack(self.thread_id)
            looked = perf_counter()
            seen = self.mark() == mark  # else the loop moved on before the watchdog could look
            when = then()
            if seen:
                # The signals next: reading their files lets the loop run on, so only after ``then``.
                signals = self._read_signals(coroutine, frames, mark, looked)
                self.capture = capture_stack(mark, frames, whole, self.outer, signals)
        return when

    def _read_signals(
        self, coroutine: Optional[Tuple[int, str]], frames: List[Frame], mark: float, looked: float
    ) -> Optional[Seen]:
        explainer = self._explainer
        if explainer is None:
            return None
        try:
            # The watchdog looks at a busy loop by its mark + threshold at the latest (planned earlier,
            # or at the wake-up, -inf); a resting beat is looked at on the watchdog's own plan.
            due = mark + self.threshold
            if self.resting:
                planned = self._planned if math.isfinite(self._planned) else due
            else:
                planned = min(self._planned, due) if math.isfinite(self._planned) else mark
            return explainer.seen(coroutine, frames, looked - planned)
        except Exception:  # the stall is reported without its cause
            log.debug("loopstat: could not read the signals of a stall", exc_info=True)
            return None

    def _next_look(self, now: float, mark: float, due: float) -> float:
        """Restart the beat if the loop works without it; return when to look again."""
        if self._handle is None:
            # Working without waiting, and no beat to show progress: restart it soon.
            soon = mark + self.period
            if now < soon:
                return min(due, soon)
            if not self._restart_posted:
                self._restart_posted_when = perf_counter()
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
            self._clock.on_wake = None
        # On a closed loop there is nothing left to cancel.
        with contextlib.suppress(Exception):
            if self._handle is not None:
                self._handle.cancel()
        self._handle = None
        try:
            _watchdog.unwatch(self)
        finally:
            if self._explainer is not None:
                self._explainer.close()


class _Watchdog:
    """The thread that looks at every watched loop, only when one may be stuck; there while one is watched.

    Hidden from ``threading`` (see loopstat/_threads.py): nothing it runs may log.
    """

    def __init__(self) -> None:
        # Weak: a loop dropped without stopping its monitor must still be collectable.
        self._probes: WeakSet[StallProbe] = WeakSet()
        self._changed = threading.Condition()
        self._thread: Optional[_threads.Hidden] = None
        # Set when there is news since the thread last looked, so a wake() that
        # comes while it looks is not lost.
        self._news = False
        #: Times the thread has looked at the loops: each one a wake-up of the process.
        self.looks = 0

    def watch(self, probe: StallProbe) -> None:
        with self._changed:
            self._probes.add(probe)
            self._nudge()
            if self._thread is None or not self._thread.is_alive():
                self._thread = _threads.Hidden("loopstat-watchdog", self._run)

    def unwatch(self, probe: StallProbe) -> None:
        with self._changed:
            self._probes.discard(probe)
            if not self._probes:
                self._nudge()  # the thread ends on its next look

    def end_if_idle(self, timeout: float) -> None:
        """With no loop watched, wait at most ``timeout`` for the thread to end; called before a fork."""
        with self._changed:
            thread = self._thread
            if thread is None or thread.native_id == threading.get_native_id() or len(self._probes) > 0:
                return
            self._nudge()
            self._changed.wait_for(lambda: self._thread is not thread, timeout)
            if self._thread is thread:
                return
        thread.join(timeout)

    def wake(self) -> None:
        """A parked loop came out of its selector: look at it again."""
        with self._changed:
            self._nudge()

    def _nudge(self) -> None:
        self._news = True
        self._changed.notify_all()

    def _run(self) -> None:
        try:
            self._watch_loops()
        finally:
            with self._changed:
                if self._thread is not None and self._thread.native_id == threading.get_native_id():
                    self._thread = None  # ended by an error: the next watch() starts another
                self._changed.notify_all()

    def _watch_loops(self) -> None:
        while True:
            with self._changed:
                self._news = False
                probes = list(self._probes)
                if not probes:
                    self._thread = None
                    return
            self.looks += 1
            wake = _look(probes, perf_counter())
            del probes  # holding a probe would keep its loop alive
            with self._changed:
                if not self._news:
                    self._changed.wait(max(0.001, wake - perf_counter()))


def _look(probes: List[StallProbe], now: float) -> float:
    """Inspect each loop; return when to look again."""
    # Every loop parked: the next look is when one wakes (or, to be safe, in a while).
    wake = now + PARKED_SECONDS
    for probe in probes:
        try:
            when = probe.inspect(now)
        except Exception:  # a loop torn down under us: it will unwatch itself
            probe.failed_look = traceback.format_exc()  # logged by the loop: this thread may not log
            continue
        if when is not None:
            wake = min(wake, when)
    return wake


_watchdog = _Watchdog()


def before_fork() -> None:
    """Called before ``os.fork()`` (loopstat/monitor.py holds the one fork hook)."""
    _watchdog.end_if_idle(FORK_WAIT_SECONDS)


def after_fork_in_child() -> None:
    """Called in the child: the parent's thread does not exist here; the child starts its own when needed."""
    global _watchdog
    _watchdog = _Watchdog()


def _thread_stack(thread_id: int) -> Tuple[List[Frame], bool, Optional[Tuple[int, str]]]:
    """The stack of a thread, innermost last, whether whole, and the task's coroutine on it (its frame's ``id()``)."""
    # The frames are dropped before anything slow: held, they would keep the
    # loop's locals alive and make a deep stack slower to unwind.
    try:
        top = _frames.current_frames().get(thread_id)
    except _frames.StacksUnreadable:
        frames, whole = _frames.thread_stack(thread_id)  # says why, once per process
        return frames, whole, None
    frames, whole = walk(top)
    return frames, whole, outermost_coroutine(top)


def capture_stack(
    mark: float, frames: Sequence[Frame], whole: bool, outer: Outer, seen: Optional[Seen] = None
) -> Capture:
    """What the thread that runs a stuck loop was doing, from its stack; called by the watchdog, off the loop.

    loopstat's own frames (a stand-in, a GC hook) are left out of the stack and
    the location: a stand-in shows as the call it passes on, made on the
    application's line.
    """
    named, own = blame(frames, whole, outer)
    stack = format_stack([f for f in frames if not loopstat_file(f[0])], whole)
    return Capture(mark, where(named), stack, own, seen)


class Stalls:
    """The stall probe of one monitor: counts and logs each stall, and sends it when it ends."""

    def __init__(self, watched: Watched, threshold: float) -> None:
        self._watched = watched
        self._log = StallLog()
        explainer = _explainer(watched)
        try:
            #: The loop's watch, looked at by the watchdog thread.
            self.watch = StallProbe(
                watched.loop,
                threshold,
                watched.clock(),
                self._on_stall,
                watched.settings.interval,
                watched.sampler,
                explainer,
            )
        except BaseException:
            if explainer is not None:
                explainer.close()
            raise

    def _on_stall(self, stall: Stall) -> None:
        watched = self._watched
        try:
            monitor = watched.monitor
            monitor.stalls += 1
            monitor.last_stall = stall
            self._log.report(stall)
            watched.send([("stalls", "c", 1, (("cause", stall.cause),)), ("stall", "ms", round(stall.duration, 3))])
        except Exception:
            watched.fault()

    def read(self, lines: List[Line]) -> None:
        # Stalls are sent as they end, not at samples; a sample tells the watch how the loop is doing.
        watched = self._watched
        self.watch.sampled(perf_counter(), watched.monitor.lag / 1000.0, watched.busy_since(), watched.thread.wall)

    def close(self) -> None:
        self.watch.close()


def _explainer(watched: Watched) -> Optional[Explainer]:
    """What names the stalls' causes; None if it cannot start (the stalls are reported, their cause unknown)."""
    # Weak: a strong one would tie the monitor into a cycle, freed only by a later collection.
    ref = weakref.ref(watched)

    def blocked() -> Optional[float]:
        alive = ref()
        return None if alive is None else alive.blocked

    try:
        return Explainer(watched.loop, blocked, _cgroup.throttling(), gc=watched.settings.gc)
    except Exception:
        log.debug("loopstat: stalls are reported without their cause", exc_info=True)
        return None


def attach(watched: Watched) -> Optional[Stalls]:
    threshold = watched.settings.stall_threshold
    if threshold is None:
        return None
    _frames.stall_stacks_readable()  # on a free-threaded build, says once that stalls go unlocated
    return Stalls(watched, threshold)


class StallLog:
    """Logs stalls as warnings, each location at most once a minute, stacks at DEBUG."""

    def __init__(self) -> None:
        self._logged: Dict[Optional[str], Tuple[float, int]] = {}

    def report(self, stall: Stall) -> None:
        now = time.monotonic()
        at, held = self._logged.get(stall.location, (-math.inf, 0))
        if now - at < LOG_EVERY_SECONDS:
            self._logged[stall.location] = (at, held + 1)
            return
        if len(self._logged) >= MAX_LOCATIONS:
            self._logged.clear()
        self._logged[stall.location] = (now, 0)
        if stall.location:
            where = f"at {stall.location}"
        elif stall.stack:
            where = "outside any callback (the process was short of CPU, or collecting garbage)"
        else:
            where = "(it ended before its stack could be captured)"
        more = f" ({held} more there in the last minute)" if held else ""
        task = f" ({stall.task})" if stall.task else ""
        reason = f": {stall.reason}" if stall.reason else ""
        log.warning(
            "loopstat: the event loop was blocked for %.0f ms %s%s%s%s", stall.duration, where, task, more, reason
        )
        if stall.stack:
            log.debug("loopstat: stack of the blocked event loop, innermost call last:\n%s", stall.stack)
