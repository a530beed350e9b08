"""The monitor of each loop: at most one, found by ``install()``, forgotten when it stops or in a forked child."""

from __future__ import annotations

import asyncio
import threading
import weakref
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from loopstat.monitor import Monitor

# Values are weak: the sampler's timers keep a running monitor alive, and a loop that
# is dropped without being stopped must not be kept alive by the registry.
monitors: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, weakref.ref[Monitor]] = weakref.WeakKeyDictionary()
# Reentrant: the collector may end a dropped loop's monitor (which forgets it)
# while this thread holds the lock in install(). Read it as ``_registry.lock``: a forked child gets a new one.
lock = threading.RLock()


def find(loop: asyncio.AbstractEventLoop) -> Optional[Monitor]:
    """The monitor registered for ``loop``, if it is still alive; call with ``lock`` held."""
    ref = monitors.get(loop)
    return ref() if ref is not None else None


def forget(monitor: Monitor) -> None:
    """Take ``monitor`` out of the registry, unless another has taken its loop's place."""
    with lock:
        ref = monitors.get(monitor._loop)
        if ref is not None and ref() is monitor:
            del monitors[monitor._loop]


def after_fork_in_child() -> None:
    """The child gets copies of the parent's monitors: they must neither send through the parent's socket
    nor stop a new install() on their loop."""
    global lock
    lock = threading.RLock()  # another thread may have held it at fork
    for ref in list(monitors.values()):
        monitor = ref()
        if monitor is not None:
            monitor._stopped = True
            monitor._shut = True
            if monitor._sink is not None:
                monitor._sink.abandon()
    monitors.clear()
