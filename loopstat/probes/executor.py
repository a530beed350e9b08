"""Executor: how loaded the thread pool behind ``loop.run_in_executor(None, …)`` is."""

from __future__ import annotations

import asyncio
import gc
from concurrent.futures import ThreadPoolExecutor
from typing import List, Optional, Tuple

from loopstat._metrics import Line
from loopstat.probes import Watched


def default_executor(loop: asyncio.AbstractEventLoop) -> Optional[ThreadPoolExecutor]:
    """The loop's default executor if it exists and is a thread pool."""
    executor = getattr(loop, "_default_executor", None)
    if executor is None and not isinstance(loop, asyncio.BaseEventLoop):
        # uvloop keeps it in a C attribute; the collector's view of the loop shows it.
        executor = next((r for r in gc.get_referents(loop) if isinstance(r, ThreadPoolExecutor)), None)
    return executor if isinstance(executor, ThreadPoolExecutor) else None


def load(loop: asyncio.AbstractEventLoop) -> Optional[Tuple[int, int]]:
    """(work items waiting for a thread, threads in the pool), or None without a pool."""
    executor = default_executor(loop)
    if executor is None:
        return None
    # ThreadPoolExecutor's private fields: a pool without them (its own subclass, a later Python)
    # fails the read with AttributeError, and the monitor closes this probe alone.
    return executor._work_queue.qsize(), len(executor._threads)


class Executor:
    """Reports the default executor's queue and threads at each sample, once the loop has one."""

    def __init__(self, watched: Watched) -> None:
        self._loop = watched.loop

    def read(self, lines: List[Line]) -> None:
        now = load(self._loop)
        if now is not None:
            lines.extend((("executor.queue", "g", now[0]), ("executor.threads", "g", now[1])))

    def close(self) -> None:
        pass


def attach(watched: Watched) -> Optional[Executor]:
    return Executor(watched) if watched.settings.executor else None
