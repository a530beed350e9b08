"""The stall watchdog: one daemon thread per process, there while some loop is watched, that looks at each
loop's watch (``stall_watch.py``) only when it may be stuck."""

from __future__ import annotations

import threading
import traceback
from time import perf_counter
from typing import TYPE_CHECKING, List, Optional
from weakref import WeakSet

from loopstat import _threads

if TYPE_CHECKING:
    from loopstat.probes.stall_watch import StallWatch

# The watchdog looks at least this often, even when every loop waits idle.
PARKED_SECONDS = 1.0
# A fork waits at most this long for the watchdog thread to end when no loop
# is watched: Python 3.12+ warns about a fork in a process with threads.
FORK_WAIT_SECONDS = 1.0


class Watchdog:
    """The thread that looks at every watched loop, only when one may be stuck; there while one is watched.

    Hidden from ``threading`` (see loopstat/_threads.py): nothing it runs may log.
    """

    def __init__(self) -> None:
        # Weak: a loop dropped without stopping its monitor must still be collectable.
        self._probes: WeakSet[StallWatch] = WeakSet()
        self._changed = threading.Condition()
        self._thread: Optional[_threads.Hidden] = None
        # Set when there is news since the thread last looked, so a wake() that
        # comes while it looks is not lost.
        self._news = False
        #: Times the thread has looked at the loops: each one a wake-up of the process.
        self.looks = 0

    def watch(self, probe: StallWatch) -> None:
        with self._changed:
            self._probes.add(probe)
            self._nudge()
            if self._thread is None or not self._thread.is_alive():
                self._thread = _threads.Hidden("loopstat-watchdog", self._run)

    def unwatch(self, probe: StallWatch) -> None:
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


def _look(probes: List[StallWatch], now: float) -> float:
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


#: The one watchdog of this process (a forked child gets a new one): read it as ``watchdog.current``.
current = Watchdog()


def before_fork() -> None:
    """Called before ``os.fork()`` (loopstat/monitor.py joins the fork registry for it)."""
    current.end_if_idle(FORK_WAIT_SECONDS)


def after_fork_in_child() -> None:
    """Called in the child: the parent's thread does not exist here; the child starts its own when needed."""
    global current
    current = Watchdog()
