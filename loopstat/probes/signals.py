"""Signals: what a loop's thread and its process did, read when the watchdog sees a stall and when it ends.

Each reading costs a few system calls and two small file reads, and is made
twice per stall, never per operation of the loop:

- the loop thread's CPU clock (``time.pthread_getcpuclockid``), whose ID is
  taken on the thread itself, so it is never asked of a thread that is gone;
- its run-queue delay, the second field of ``/proc/self/task/<tid>/schedstat``;
- the process's CPU clock, whose growth beyond the thread's is the other threads';
- the cgroup's throttled time (``loopstat/_cgroup.py``), where it has a CPU limit;
- the time the loop's thread spent in watched blocking calls (``Watched.blocked``).

Garbage collections are different: one holds the GIL from start to end, so
the watchdog may see the stall only as it ends. A hook in ``gc.callbacks``
keeps the last long collections' start and end, and the stall counts the part
of them that fell inside it.

Anything unavailable (not Linux, no cgroup limit, a thread moved) reads as None.
"""

from __future__ import annotations

import collections
import gc
import threading
import time
from dataclasses import dataclass
from time import perf_counter
from typing import Any, Callable, Deque, Dict, Optional, Tuple

from loopstat import _cgroup, _fork

# Collections shorter than this are not kept: a stall is never made of them, and they must not push out long ones.
GC_KEPT_SECONDS = 0.001
# Long collections kept, the latest last.
GC_KEPT = 64


@dataclass(frozen=True)
class LoopThread:
    """The thread that runs a loop, as learned on that thread."""

    ident: int
    #: The kernel's thread ID, for ``/proc/self/task/<tid>``; None where Python has none.
    native: Optional[int]
    #: The ID of its CPU clock; None where ``pthread_getcpuclockid`` is not offered.
    clock: Optional[int]


def this_thread() -> LoopThread:
    """The calling thread; call it on the loop's thread."""
    ident = threading.get_ident()
    native = getattr(threading, "get_native_id", None)
    try:
        clock: Optional[int] = time.pthread_getcpuclockid(ident)
    except (AttributeError, OSError):  # macOS and Windows have no such clock
        clock = None
    return LoopThread(ident, native() if native is not None else None, clock)


@dataclass(frozen=True)
class Reading:
    """The signals at one moment: ``perf_counter()`` and seconds since some start, None where unavailable."""

    at: float
    cpu: Optional[float]
    run_delay: Optional[float]
    process_cpu: Optional[float]
    throttled: Optional[float]
    blocked: Optional[float]


def _clock(clock_id: Optional[int]) -> Optional[float]:
    if clock_id is None:
        return None
    try:
        return time.clock_gettime(clock_id)
    except OSError:  # the thread is gone
        return None


def run_delay(schedstat: str) -> Optional[float]:
    """Seconds waited on a run queue, from the text of a ``schedstat`` file (its second field, in ns)."""
    fields = schedstat.split()
    return int(fields[1]) * 1e-9 if len(fields) >= 2 and fields[1].isdigit() else None


class Signals:
    """Reads the signals of one loop's thread; shared by the watchdog (a stall seen) and the loop (its end)."""

    def __init__(
        self,
        blocked: Callable[[], Optional[float]],
        throttling: Optional[_cgroup.Throttling] = None,
        read: _cgroup.Read = _cgroup.read,
        now: Callable[[], float] = perf_counter,
    ) -> None:
        self._blocked = blocked
        self._throttling = throttling
        self._read = read
        self._now = now
        self._process = getattr(time, "CLOCK_PROCESS_CPUTIME_ID", None)

    def read(self, thread: LoopThread) -> Reading:
        """The signals now, for the loop running on ``thread``."""
        delay = None
        if thread.native is not None:
            delay = run_delay(self._read(f"/proc/self/task/{thread.native}/schedstat"))
        throttling = self._throttling
        return Reading(
            self._now(),
            _clock(thread.clock),
            delay,
            _clock(self._process),
            throttling.seconds(self._read) if throttling is not None else None,
            self._blocked(),
        )


def between(first: Optional[float], then: Optional[float]) -> Optional[float]:
    """What grew from one reading to the next; None if either is unknown or it went back (another thread's)."""
    if first is None or then is None or then < first:
        return None
    return then - first


# --- garbage collections ---------------------------------------------------------------------------------------

# (start, end) of the latest long collections, appended by the hook in whatever thread collects.
_collections: Deque[Tuple[float, float]] = collections.deque(maxlen=GC_KEPT)
_started = 0.0
_users = 0
_lock = threading.Lock()


def _on_gc(phase: str, info: Dict[str, Any]) -> None:
    global _started
    if phase == "start":
        _started = perf_counter()
        return
    end = perf_counter()
    if end - _started >= GC_KEPT_SECONDS:
        _collections.append((_started, end))


def gc_between(start: float, end: float) -> float:
    """Seconds of the long collections kept that fell between two ``perf_counter()`` readings."""
    return sum(max(0.0, min(end, b) - max(start, a)) for a, b in list(_collections) if b > start)


def watch_gc() -> None:
    """Keep long collections while at least one stall watch asks."""
    global _users
    with _lock:
        _users += 1
        if _on_gc not in gc.callbacks:
            gc.callbacks.append(_on_gc)


def unwatch_gc() -> None:
    global _users
    with _lock:
        _users = max(0, _users - 1)
        if not _users and _on_gc in gc.callbacks:
            gc.callbacks.remove(_on_gc)


def after_fork_in_child() -> None:
    """Called in a forked child, through loopstat/_fork.py."""
    global _lock, _users
    _lock = threading.Lock()  # another thread may have held it at fork
    _users = 0  # the parent's watches do not run here; a new one adds the hook again
    if _on_gc in gc.callbacks:
        gc.callbacks.remove(_on_gc)


_fork.join(after_in_child=after_fork_in_child)
