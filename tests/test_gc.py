"""GC: collector pauses, which stop the loop like any other blocking call."""

from __future__ import annotations

import asyncio
import gc
import threading
import time

import pytest

import loopstat
from loopstat.probes import gc as gc_probe
from tests.receiver import Receiver


def timed_collection() -> float:
    """Fill the heap with a few hundred thousand containers and time a full collection, in ms."""
    gc.disable()  # only the forced collection may see this heap
    try:
        heap = [[i] for i in range(400_000)]
        started = time.perf_counter()
        gc.collect()
        elapsed = (time.perf_counter() - started) * 1000.0
        del heap
    finally:
        gc.enable()
    return elapsed


@pytest.mark.e2e  # bounds on the real clock: run once, in the e2e env
async def test_a_forced_collection_shows_as_a_pause_and_a_collection(receiver: Receiver) -> None:
    async with loopstat.install("127.0.0.1", receiver.port, interval=0.05, gc=True, stall_threshold=None):
        await receiver.wait_count("loopstat.gc.pause", "g", 1)
        elapsed = timed_collection()
        seen = len(receiver.values("loopstat.gc.pause", "g"))
        await receiver.wait_count("loopstat.gc.pause", "g", seen + 2)
    pauses = receiver.values("loopstat.gc.pause", "g")
    longest = max(pauses[seen - 1 :])
    # The hook times the collection itself; the caller's clock also saw the call around it.
    assert 0.5 * elapsed <= longest <= elapsed + 1, f"pause {longest} ms, collect() took {elapsed:.1f} ms"
    assert sum(receiver.values("loopstat.gc.collections", "c")) >= 1


async def test_gc_is_off_by_default(receiver: Receiver) -> None:
    async with loopstat.install("127.0.0.1", receiver.port, interval=0.02):
        gc.collect()
        await receiver.wait_count("loopstat.tasks", "g", 5)
        assert gc_probe._on_gc not in gc.callbacks
    assert not [x for x in receiver.snapshot() if x.name.startswith("loopstat.gc.")]


def test_one_hook_serves_every_monitor_and_leaves_with_the_last() -> None:
    ready = threading.Barrier(3)
    finish = threading.Event()

    def monitored_loop() -> None:
        async def main() -> None:
            async with loopstat.install("127.0.0.1", 9, gc=True):
                await asyncio.sleep(0.05)
                ready.wait()
                await asyncio.get_running_loop().run_in_executor(None, finish.wait)

        asyncio.run(main())

    threads = [threading.Thread(target=monitored_loop) for _ in range(2)]
    for thread in threads:
        thread.start()
    ready.wait(timeout=10)
    hooks = gc.callbacks.count(gc_probe._on_gc)
    finish.set()
    for thread in threads:
        thread.join(timeout=10)
    assert hooks == 1
    assert gc_probe._on_gc not in gc.callbacks
