"""Stalls: a watchdog thread notices a loop that makes no progress and names the code it is stuck in.

A loop shows progress at heartbeats and, on stdlib loops, each time it comes
out of its selector. The watchdog thread, one per process, looks when some
loop's last sign of progress may be ``threshold`` old, and if the loop is
still stuck, captures the loop thread's stack. The stall is measured and
reported by the loop itself, on the first beat after it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import linecache
import logging
import math
import os
import sys
import sysconfig
import threading
import time
import traceback
import weakref
from dataclasses import dataclass
from time import perf_counter
from types import FrameType
from typing import Callable, Dict, List, Optional, Tuple

from loopstat.probes.utilization import SelectorClock

log = logging.getLogger("loopstat")

# A location that keeps stalling is logged at most this often.
LOG_EVERY_SECONDS = 60.0
# Locations remembered for that; beyond it the memory starts afresh.
MAX_LOCATIONS = 1000
# The watchdog looks at least this often, even when every loop waits idle.
PARKED_SECONDS = 1.0

# filename, line number, function, source line
Frame = Tuple[str, int, str, str]


@dataclass(frozen=True)
class Stall:
    """One stall of an event loop: how long it made no progress and where it was stuck."""

    #: Milliseconds the loop made no progress.
    duration: float
    #: ``file:line in function`` of the innermost application frame, or None when
    #: the stall ended before the watchdog could look.
    location: Optional[str]
    #: The loop thread's stack while it was stuck, innermost call last ("" if not captured).
    stack: str
    #: ``time.time()`` when the stall ended.
    ended: float


class StallProbe:
    """Watches one loop; create and close it on the loop's own thread.

    Progress shows at heartbeats and, on stdlib loops, each time the loop comes
    out of its selector. There the beat runs only while the loop works without
    waiting; it stops when the loop waits and the watchdog restarts it, so an
    idle loop is never woken for it. uvloop shows nothing but the beat, which
    runs all the time and less often.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        threshold: float,
        clock: Optional[SelectorClock],
        on_stall: Callable[[Stall], None],
    ) -> None:
        self.threshold = threshold
        self.period = threshold / 10 if clock is not None else threshold / 4
        self.thread_id = threading.get_ident()
        self.beat = perf_counter()
        #: Set by the watchdog: the progress mark of the stall it saw, and the stack.
        self.capture: Optional[Tuple[float, Tuple[Frame, ...]]] = None
        #: Set by the watchdog when it found the loop not running (stopped between runs).
        self.paused = -math.inf
        #: Set by the watchdog while it waits for the loop to come out of its selector.
        self.parked = False
        self._loop = loop
        self._clock = clock
        self._on_stall = on_stall
        self._handle: Optional[asyncio.Handle] = loop.call_later(self.period, self._beat)
        self._restart_posted = False
        self._closed = False
        self._outer = _outer_frames()
        if clock is not None:
            clock.on_wake = self._woke
        _watchdog.watch(self)

    def mark(self) -> float:
        """``perf_counter()`` when the loop last showed progress."""
        clock = self._clock
        return self.beat if clock is None else max(self.beat, clock.woke)

    def _woke(self) -> None:
        if self.parked:
            self.parked = False
            _watchdog.wake()

    def _beat(self) -> None:
        now = perf_counter()
        last_beat, mark = self.beat, self.mark()
        waited = mark > last_beat
        self.beat = now
        if waited and self._clock is not None:
            self._handle = None  # it waits again now and then: the watchdog restarts the beat if needed
        else:
            self._handle = self._loop.call_later(self.period, self._beat)
        # Waited in the selector since the last beat: stuck since it woke.
        # Busy all along: stuck since somewhere in the period, most likely mid-way.
        self._report(now, mark if waited else last_beat + self.period / 2, mark)

    def _restart(self) -> None:
        """Posted by the watchdog when the loop has run for a while without waiting or beating."""
        self._restart_posted = False
        if self._handle is not None or self._closed:
            return
        now = perf_counter()
        mark = self.mark()
        self.beat = now
        self._handle = self._loop.call_later(self.period, self._beat)
        self._report(now, mark, mark)

    def _report(self, now: float, started: float, mark: float) -> None:
        duration = now - started
        if duration <= self.threshold or self.paused >= mark:
            return
        capture = self.capture
        frames = capture[1] if capture is not None and capture[0] == mark else ()
        self._on_stall(Stall(duration * 1000.0, locate(frames, self._outer), format_stack(frames), time.time()))

    def inspect(self, now: float) -> Optional[float]:
        """Called by the watchdog: capture the stack of a stuck loop.

        Returns when to look again, or None to wait until the loop comes out
        of its selector.
        """
        loop = self._loop
        if not loop.is_running():
            self.paused = now
            return now + self.threshold
        clock = self._clock
        if clock is not None:
            # Parked first, then the check: the loop clears ``waiting`` before
            # it reads ``parked``, so one of the two sides sees the other.
            self.parked = True
            if clock.waiting:
                return None
            self.parked = False
        mark = self.mark()
        due = mark + self.threshold
        if self._handle is None:
            # Working without waiting, and no beat to show progress: restart it soon.
            soon = mark + self.period
            if now < soon:
                return min(due, soon)
            if not self._restart_posted:
                self._restart_posted = True
                loop.call_soon_threadsafe(self._restart)
        if now < due:
            return due if self._handle is not None else min(due, now + self.period)
        capture = self.capture
        if capture is None or capture[0] != mark:
            frame = sys._current_frames().get(self.thread_id)
            self.capture = (mark, frames_of(frame))
        return now + self.threshold

    def close(self) -> None:
        self._closed = True  # a restart the watchdog posted may still be on its way
        _watchdog.unwatch(self)
        if self._clock is not None:
            self._clock.on_wake = None
        # On a closed loop there is nothing left to cancel.
        with contextlib.suppress(Exception):
            if self._handle is not None:
                self._handle.cancel()
        self._handle = None


class _Watchdog:
    """The one thread that looks at every watched loop, only when one may be stuck."""

    def __init__(self) -> None:
        # Weak: a loop dropped without stopping its monitor must still be collectable.
        self._probes: weakref.WeakSet[StallProbe] = weakref.WeakSet()
        self._changed = threading.Condition()
        self._thread: Optional[threading.Thread] = None

    def watch(self, probe: StallProbe) -> None:
        with self._changed:
            self._probes.add(probe)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="loopstat-watchdog", daemon=True)
                self._thread.start()
            self._changed.notify()

    def unwatch(self, probe: StallProbe) -> None:
        with self._changed:
            self._probes.discard(probe)

    def wake(self) -> None:
        """A parked loop came out of its selector: look at it again."""
        with self._changed:
            self._changed.notify()

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._probes:
                    self._changed.wait()
                probes = list(self._probes)
            now = perf_counter()
            # Every loop parked: the next look is when one wakes (or, to be safe, in a while).
            wake = now + PARKED_SECONDS
            for probe in probes:
                try:
                    when = probe.inspect(now)
                except Exception:  # a loop torn down under us: it will unwatch itself
                    log.debug("loopstat: watchdog could not inspect a loop", exc_info=True)
                    continue
                if when is not None:
                    wake = min(wake, when)
            del probes
            with self._changed:
                self._changed.wait(max(0.001, wake - perf_counter()))


_watchdog = _Watchdog()


def _after_fork_in_child() -> None:
    # The parent's thread does not exist here; the child starts its own when needed.
    global _watchdog
    _watchdog = _Watchdog()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def frames_of(frame: Optional[FrameType]) -> Tuple[Frame, ...]:
    """The stack ending at ``frame``, innermost last."""
    stack: List[Frame] = []
    for f, lineno in traceback.walk_stack(frame):
        filename = f.f_code.co_filename
        stack.append((filename, lineno, f.f_code.co_name, linecache.getline(filename, lineno).strip()))
    stack.reverse()
    return tuple(stack)


_PACKAGES = ("site-packages", "dist-packages")
_STDLIB = tuple({os.path.join(sysconfig.get_paths()[name], "") for name in ("stdlib", "platstdlib")})
_LOOPSTAT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "")


def _is_platform(filename: str) -> bool:
    """Python's own code and loopstat's: never the culprit worth naming."""
    if filename.startswith("<frozen") or filename.startswith(_LOOPSTAT):
        return True
    return filename.startswith(_STDLIB) and not any(part in filename for part in _PACKAGES)


def _outer_frames() -> Tuple[Tuple[str, str], ...]:
    """(file, function) of the frames around the running callback: whoever runs the loop, and the loop.

    Called from the monitor's task. A stack that starts with these frames is
    in a callback of this loop, and only what lies beyond them can be to blame.
    """
    task = asyncio.current_task()
    coro = task.get_coro() if task is not None else None
    frame = getattr(coro, "cr_frame", None)
    if frame is None:
        return ()
    return tuple((f[0], f[2]) for f in frames_of(frame.f_back))


def locate(frames: Tuple[Frame, ...], outer: Tuple[Tuple[str, str], ...] = ()) -> Optional[str]:
    """``file:line in function`` of the innermost application frame of the callback that blocked.

    Installed packages come second to the application's own code, which is
    what called them; Python's own modules and loopstat's never count. None
    when the loop was stuck outside any callback (in the loop itself).
    """
    if outer:
        shared = 0
        for frame, (filename, function) in zip(frames, outer):
            if (frame[0], frame[2]) != (filename, function):
                break
            shared += 1
        if shared == len(outer):
            frames = frames[shared:]
            if not frames:
                return None
        elif shared and all(_is_platform(f[0]) for f in frames[shared:]):
            return None  # in the loop's own machinery, between callbacks
    candidates = [f for f in frames if not _is_platform(f[0])]
    own = [f for f in candidates if not any(part in f[0] for part in _PACKAGES)]
    chosen = own or candidates or list(frames)
    if not chosen:
        return None
    filename, lineno, function, _ = chosen[-1]
    return f"{_short(filename)}:{lineno} in {function}"


def _short(filename: str) -> str:
    cwd = os.path.join(os.getcwd(), "")
    return filename[len(cwd) :] if filename.startswith(cwd) else filename


def format_stack(frames: Tuple[Frame, ...]) -> str:
    lines = []
    for filename, lineno, function, source in frames:
        lines.append(f'  File "{filename}", line {lineno}, in {function}')
        if source:
            lines.append(f"    {source}")
    return "\n".join(lines)


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
        log.warning("loopstat: the event loop was blocked for %.0f ms %s%s", stall.duration, where, more)
        if stall.stack:
            log.debug("loopstat: stack of the blocked event loop, innermost call last:\n%s", stall.stack)
