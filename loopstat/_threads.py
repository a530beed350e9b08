"""loopstat's own threads, out of the application's sight.

``threading.enumerate()`` and ``threading.active_count()`` list the threads
that ``threading`` started or was asked about; applications and libraries
count them (anyio's thread pool tests do). loopstat starts its threads with
``_thread.start_new_thread``, which ``threading`` does not record, and their
code never calls ``threading.current_thread()`` (which would record it), nor
logs (a log record asks for the thread's name the same way).
"""

from __future__ import annotations

import _thread
import os
import time
from typing import Any, Callable, Dict, List

from loopstat import _fork

# How often ``Hidden.join`` looks whether the system thread has gone, after its code ended.
_GONE_POLL_SECONDS = 0.0005


# The threads running now, by id, for ``running()``.
_running: Dict[int, Hidden] = {}


class Hidden:
    """A daemon thread that ``threading`` does not know of, started at once."""

    def __init__(self, name: str, target: Callable[..., None], *args: Any) -> None:
        #: What the thread is for (``loopstat-watchdog``), as ``running()`` tells.
        self.name = name
        # Held while the thread's code runs; a fork waits on it.
        self._running = _thread.allocate_lock()
        self._running.acquire()
        #: The system's id of the thread (Linux: its entry in /proc/self/task), once it runs.
        self.native_id = 0
        self._target, self._args = target, args
        _running[id(self)] = self
        try:
            _thread.start_new_thread(self._run, ())
        except BaseException:  # RuntimeError: no thread to be had (limits, interpreter ending)
            self._end()
            raise

    def _run(self) -> None:
        try:
            self.native_id = _thread.get_native_id()
            self._target(*self._args)
        finally:
            self._end()

    def _end(self) -> None:
        _running.pop(id(self), None)
        self._running.release()

    def is_alive(self) -> bool:
        """True while the thread's code runs."""
        return self._running.locked()

    def join(self, timeout: float) -> bool:
        """Wait at most ``timeout`` seconds for the thread to end; True if it did.

        Its code releases a lock as it ends; the system thread goes a moment
        later. Where the system lists its threads (Linux), wait for that too:
        a fork in between would count it (Python 3.12+ warns of a fork in a
        process with threads).
        """
        deadline = time.monotonic() + timeout
        if not self._running.acquire(timeout=max(0.0, timeout)):
            return False
        self._running.release()
        task = f"/proc/self/task/{self.native_id}"
        while self.native_id and os.path.exists(task):
            if time.monotonic() >= deadline:
                return False
            time.sleep(_GONE_POLL_SECONDS)
        return True


def running(name: str) -> List[Hidden]:
    """loopstat's threads named ``name`` whose code runs now (``threading.enumerate()`` lists none of them)."""
    return [thread for thread in list(_running.values()) if thread.name == name]


def after_fork_in_child() -> None:
    """Called in the child (through loopstat/_fork.py): the parent's threads are not here."""
    _running.clear()


_fork.join(after_in_child=after_fork_in_child)
