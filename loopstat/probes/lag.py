"""Lag: how late the loop wakes a sleeping coroutine."""

from __future__ import annotations

import asyncio
import time
from typing import List

from loopstat._metrics import Line
from loopstat.probes import Watched


async def overshoot(interval: float) -> float:
    """Sleep ``interval`` seconds; return how many milliseconds late the loop woke us.

    ``time.perf_counter()`` rather than ``loop.time()``: uvloop's clock moves in
    whole milliseconds. Never negative: timers may fire a hair early, and StatsD
    servers reject negative timings.
    """
    started = time.perf_counter()
    await asyncio.sleep(interval)
    return max(0.0, (time.perf_counter() - started - interval) * 1000.0)


class Lag:
    """Reports the overshoot the sampler measured (the sampler's own sleep is the probe)."""

    def __init__(self, watched: Watched) -> None:
        self._monitor = watched.monitor

    def read(self, lines: List[Line]) -> None:
        # Microseconds are plenty and keep the datagrams short.
        value = round(self._monitor.lag, 3)
        lines.extend((("lag", "g", value), ("lag", "ms", value)))

    def close(self) -> None:
        pass


def attach(watched: Watched) -> Lag:
    return Lag(watched)
