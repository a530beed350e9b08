"""Executor: the queue and threads of the pool behind ``run_in_executor(None, …)``."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import loopstat
from tests.receiver import Receiver


async def test_a_saturated_pool_shows_its_queue_and_threads(receiver: Receiver) -> None:
    loop = asyncio.get_running_loop()
    pool = ThreadPoolExecutor(max_workers=2)
    loop.set_default_executor(pool)
    release = threading.Event()
    async with loopstat.install("127.0.0.1", receiver.port, interval=0.02, stall_threshold=None):
        jobs = [loop.run_in_executor(None, release.wait) for _ in range(6)]
        await receiver.wait_for(lambda lines: any(x.name == "loopstat.executor.queue" and x.value == 4 for x in lines))
        assert receiver.values("loopstat.executor.threads", "g")[-1] == 2
        release.set()
        await asyncio.gather(*jobs)
        seen = len(receiver.values("loopstat.executor.queue", "g"))
        await receiver.wait_count("loopstat.executor.queue", "g", seen + 2)
    assert receiver.values("loopstat.executor.queue", "g")[-1] == 0
    pool.shutdown()


async def test_no_gauges_before_the_loop_has_a_default_executor(receiver: Receiver) -> None:
    async with loopstat.install("127.0.0.1", receiver.port, interval=0.02):
        await receiver.wait_count("loopstat.tasks", "g", 5)
    assert not [x for x in receiver.snapshot() if x.name.startswith("loopstat.executor.")]


async def test_executor_false_sends_no_executor_gauges(receiver: Receiver) -> None:
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, int)
    async with loopstat.install("127.0.0.1", receiver.port, interval=0.02, executor=False):
        await receiver.wait_count("loopstat.tasks", "g", 5)
    assert not [x for x in receiver.snapshot() if x.name.startswith("loopstat.executor.")]
