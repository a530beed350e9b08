"""Lag: how late the loop wakes a sleeping coroutine."""

from __future__ import annotations

import asyncio
import time


async def overshoot(interval: float) -> float:
    """Sleep ``interval`` seconds; return how many milliseconds late the loop woke us.

    ``time.perf_counter()`` rather than ``loop.time()``: uvloop's clock moves in
    whole milliseconds. Never negative: timers may fire a hair early, and StatsD
    servers reject negative timings.
    """
    started = time.perf_counter()
    await asyncio.sleep(interval)
    return max(0.0, (time.perf_counter() - started - interval) * 1000.0)
