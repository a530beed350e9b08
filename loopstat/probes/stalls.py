"""Stalls: a watchdog thread notices a loop that makes no progress and names the code it is stuck in.

A loop shows progress at heartbeats and, on stdlib loops, each time it comes
out of its selector. There the beat runs only while the loop works without
waiting; it stops when the loop waits and the watchdog restarts it, so an idle
loop is never woken for it; and a wake-up that is only the sampler's does not
wake the watchdog either. uvloop shows nothing but the beat, which runs while
the loop's thread works and rests while it idles (see ``StallWatch.sampled``):
an idle loop wakes only for its samples. The watchdog thread, one per process and only while some
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

Here: the probe (counts, logs and sends each stall) and its log. The watch of
each loop is ``stall_watch.py``; the thread, ``watchdog.py``; the public
``Stall`` and the stack capture, ``stall_capture.py``.
"""

from __future__ import annotations

import logging
import math
import time
import weakref
from time import perf_counter
from typing import Dict, List, Optional, Tuple

from loopstat import _cgroup
from loopstat._metrics import Line
from loopstat.probes import Watched
from loopstat.probes import frames as _frames
from loopstat.probes.explain import Explainer
from loopstat.probes.stall_capture import Stall
from loopstat.probes.stall_watch import StallWatch

log = logging.getLogger(__name__)

# A location that keeps stalling is logged at most this often.
LOG_EVERY_SECONDS = 60.0
# Locations remembered for that; beyond it the memory starts afresh.
MAX_LOCATIONS = 1000


class Stalls:
    """The stall probe of one monitor: counts and logs each stall, and sends it when it ends."""

    def __init__(self, watched: Watched, threshold: float) -> None:
        self._watched = watched
        self._log = StallLog()
        #: Stalls seen so far, for ``monitor.stalls``.
        self.count = 0
        explainer = _explainer(watched)
        try:
            #: The loop's watch, looked at by the watchdog thread.
            self.watch = StallWatch(
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
            self.count += 1
            watched.keep({"stalls": self.count, "last_stall": stall})
            self._log.report(stall)
            watched.send([("stalls", "c", 1, (("cause", stall.cause),)), ("stall", "ms", round(stall.duration, 3))])
        except Exception:
            watched.fault()

    def read(self, lines: List[Line]) -> None:
        # Stalls are sent and kept as they end, not at samples; a sample tells the watch how the loop is doing.
        watched = self._watched
        self.watch.sampled(perf_counter(), watched.lag / 1000.0, watched.busy_since(), watched.thread.wall)

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
