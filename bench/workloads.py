"""In-process workloads: a variant on a fresh loop, a short timed run, a rate.

The two workloads stress the loop's scheduling path, where a monitor that
hooks into the loop costs the most: 100 tasks yielding with ``sleep(0)``, and
one task ping-ponging with a partner through ``asyncio.Queue``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from time import perf_counter, process_time
from typing import Awaitable, Callable, Dict, List

from bench import loops, variants


@dataclass(frozen=True)
class Rate:
    """Operations per second of wall time, and per second of this process's CPU time (every thread).

    On a shared machine the CPU rate is the steadier one: time stolen by other
    processes does not count, while whatever a monitor runs in this process does.
    """

    wall: float
    cpu: float


Workload = Callable[[float, float], Awaitable[Rate]]

YIELDING_TASKS = 100


async def _rate_of(done: Callable[[], int], duration: float, warmup: float) -> Rate:
    """After ``warmup`` seconds, how fast ``done()`` grows over ``duration`` seconds."""
    await asyncio.sleep(warmup)
    counted, started, cpu = done(), perf_counter(), process_time()
    await asyncio.sleep(duration)
    counted, elapsed, cpu = done() - counted, perf_counter() - started, process_time() - cpu
    return Rate(counted / elapsed, counted / cpu)


async def yielding(duration: float, warmup: float) -> Rate:
    """100 tasks, each ``await asyncio.sleep(0)`` in a loop: iterations per second."""
    count = 0
    stop = False

    async def worker() -> None:
        nonlocal count
        while not stop:
            await asyncio.sleep(0)
            count += 1

    workers = [asyncio.ensure_future(worker()) for _ in range(YIELDING_TASKS)]
    rate = await _rate_of(lambda: count, duration, warmup)
    stop = True
    await asyncio.gather(*workers)
    return rate


async def ping_pong(duration: float, warmup: float) -> Rate:
    """One task sending to a partner and awaiting its answer through queues: round trips per second."""
    there: asyncio.Queue[int] = asyncio.Queue()
    back: asyncio.Queue[int] = asyncio.Queue()
    trips = 0
    stop = False

    async def partner() -> None:
        while True:
            item = await there.get()
            if item < 0:
                return
            back.put_nowait(item)

    async def player() -> None:
        nonlocal trips
        while not stop:
            there.put_nowait(1)
            await back.get()
            trips += 1
        there.put_nowait(-1)

    tasks = [asyncio.ensure_future(partner()), asyncio.ensure_future(player())]
    rate = await _rate_of(lambda: trips, duration, warmup)
    stop = True
    await asyncio.gather(*tasks)
    return rate


WORKLOADS: Dict[str, Workload] = {"yielding": yielding, "ping-pong": ping_pong}

TITLES = {
    "yielding": "100 tasks yielding with `await asyncio.sleep(0)`: iterations/s",
    "ping-pong": "one task ping-ponging through `asyncio.Queue` with a partner: round trips/s",
}


def measure(workload: str, variant: str, loop: str, port: int, duration: float, warmup: float) -> Rate:
    """One run: a fresh loop of kind ``loop``, ``variant`` attached, ``workload`` timed."""

    async def main() -> Rate:
        attached = variants.attach(variant, port)
        try:
            return await WORKLOADS[workload](duration, warmup)
        finally:
            await attached.detach()

    return loops.run(main, loop)


# results[workload][loop][variant] = one rate per round
Results = Dict[str, Dict[str, Dict[str, List[Rate]]]]


def run_all(
    names: List[str], loop_names: List[str], port: int, repeats: int, duration: float, warmup: float
) -> Results:
    """Every workload on every loop, variants interleaved round after round.

    Each round starts one variant further along (A B C, B C A, ...), so no
    variant always runs first, right after a switch of loop or workload.
    """
    results: Results = {w: {lp: {v: [] for v in names} for lp in loop_names} for w in WORKLOADS}
    for round_ in range(repeats):
        order = names[round_ % len(names) :] + names[: round_ % len(names)]
        for loop in loop_names:
            for workload in WORKLOADS:
                for variant in order:
                    rate = measure(workload, variant, loop, port, duration, warmup)
                    results[workload][loop][variant].append(rate)
    return results
