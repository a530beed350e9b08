"""Stalls: a watchdog thread notices a loop that makes no progress and names the code it is stuck in.

Each watched loop runs a heartbeat callback every ``period``; between beats a
healthy loop also shows progress each time it comes out of its selector (the
``SelectorClock`` of stdlib loops). The watchdog thread, one per process,
wakes when some loop's last sign of progress is ``threshold`` old, and if
the loop is still stuck, captures the loop thread's stack. The stall is
measured and reported by the loop itself, on the first beat after it ends.
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
    """Watches one loop; create and close it on the loop's own thread."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        threshold: float,
        clock: Optional[SelectorClock],
        on_stall: Callable[[Stall], None],
    ) -> None:
        self.threshold = threshold
        # With a selector clock, a stall's start is when the loop last woke,
        # and the beat only has to show progress in a loop that never waits.
        # Without one (uvloop), the beat alone dates a stall, to within a period.
        self.period = threshold / 2 if clock is not None else threshold / 10
        # While the loop never waits, progress shows only at beats: beat
        # faster then, so a stall's start is known to within a few ms.
        self.busy_period = threshold / 10
        self.thread_id = threading.get_ident()
        self.beat = perf_counter()
        #: Set by the watchdog: the progress mark of the stall it saw, and the stack.
        self.capture: Optional[Tuple[float, Tuple[Frame, ...]]] = None
        #: Set by the watchdog when it found the loop not running (stopped between runs).
        self.paused = -math.inf
        self._loop = loop
        self._clock = clock
        self._on_stall = on_stall
        self._next = self.period
        self._handle = loop.call_later(self._next, self._beat)
        _watchdog.watch(self)

    def mark(self) -> float:
        """``perf_counter()`` when the loop last showed progress."""
        clock = self._clock
        return self.beat if clock is None else max(self.beat, clock.woke)

    def _beat(self) -> None:
        now = perf_counter()
        last_beat, mark, period = self.beat, self.mark(), self._next
        waited = mark > last_beat
        self.beat = now
        self._next = self.period if waited else self.busy_period
        self._handle = self._loop.call_later(self._next, self._beat)
        # Waited in the selector since the last beat: stuck since it woke.
        # Busy all along: stuck since somewhere in the period, most likely mid-way.
        started = mark if waited else last_beat + period / 2
        duration = now - started
        if duration <= self.threshold or self.paused >= mark:
            return
        capture = self.capture
        frames = capture[1] if capture is not None and capture[0] == mark else ()
        self._on_stall(Stall(duration * 1000.0, locate(frames), format_stack(frames), time.time()))

    def inspect(self, now: float) -> float:
        """Called by the watchdog: capture the stack of a stuck loop; return when to look again."""
        if not self._loop.is_running():
            self.paused = now
            return now + self.threshold
        mark = self.mark()
        due = mark + self.threshold
        if now < due:
            return due
        capture = self.capture
        if capture is None or capture[0] != mark:
            frame = sys._current_frames().get(self.thread_id)
            self.capture = (mark, frames_of(frame))
        return now + self.threshold

    def close(self) -> None:
        _watchdog.unwatch(self)
        # On a closed loop there is nothing left to cancel.
        with contextlib.suppress(Exception):
            self._handle.cancel()


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

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._probes:
                    self._changed.wait()
                probes = list(self._probes)
            now = perf_counter()
            wake = now + 1.0
            for probe in probes:
                try:
                    wake = min(wake, probe.inspect(now))
                except Exception:  # a loop torn down under us: it will unwatch itself
                    log.debug("loopstat: watchdog could not inspect a loop", exc_info=True)
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


def locate(frames: Tuple[Frame, ...]) -> Optional[str]:
    """``file:line in function`` of the innermost application frame.

    Installed packages come second to the application's own code, which is
    what called them; Python's own modules and loopstat's never count.
    """
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
        where = f"at {stall.location}" if stall.location else "(ended before its stack could be captured)"
        more = f" ({held} more there in the last minute)" if held else ""
        log.warning("loopstat: the event loop was blocked for %.0f ms %s%s", stall.duration, where, more)
        if stall.stack:
            log.debug("loopstat: stack of the blocked event loop, innermost call last:\n%s", stall.stack)
