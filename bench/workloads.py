"""In-process workloads: a variant on a fresh loop, a short timed run (a rate) or a counted one.

The two timed workloads stress the loop's scheduling path, where a monitor that
hooks into the loop costs the most: 100 tasks yielding with ``sleep(0)``, and
one task ping-ponging with a partner through ``asyncio.Queue``. Counted runs
(for instruction counts) add an HTTP exchange within one process.
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


class Ops:
    """Operations done so far, and how many to do: the workers stop once ``done`` reaches ``limit``.

    One plain attribute read per operation, the same for every variant, so a
    timed run (``limit`` lowered to stop it) and a counted one share their code.
    """

    def __init__(self, limit: int) -> None:
        self.done = 0
        self.limit = limit


Body = Callable[[Ops], Awaitable[None]]
Workload = Callable[[float, float], Awaitable[Rate]]

YIELDING_TASKS = 100
# Far more operations than any timed run does: the timer lowers the limit to stop it.
ENDLESS = 2**62


async def yielding_body(ops: Ops) -> None:
    """100 tasks, each ``await asyncio.sleep(0)`` in a loop; an operation is one task's iteration."""

    async def worker() -> None:
        while ops.done < ops.limit:
            await asyncio.sleep(0)
            ops.done += 1

    await asyncio.gather(*(worker() for _ in range(YIELDING_TASKS)))


async def ping_pong_body(ops: Ops) -> None:
    """One task sending to a partner and awaiting its answer through two queues; an operation is a round trip."""
    there: asyncio.Queue[int] = asyncio.Queue()
    back: asyncio.Queue[int] = asyncio.Queue()

    async def partner() -> None:
        while True:
            item = await there.get()
            if item < 0:
                return
            back.put_nowait(item)

    async def player() -> None:
        while ops.done < ops.limit:
            there.put_nowait(1)
            await back.get()
            ops.done += 1
        there.put_nowait(-1)

    await asyncio.gather(partner(), player())


async def http_body(ops: Ops) -> None:
    """An aiohttp server and one keep-alive aiohttp client in this process; an operation is a request."""
    import aiohttp
    from aiohttp import web

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello")

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        async with aiohttp.ClientSession() as session:
            while ops.done < ops.limit:
                async with session.get(f"http://127.0.0.1:{port}/") as response:
                    await response.read()
                ops.done += 1
    finally:
        await runner.cleanup()


async def timed(body: Body, duration: float, warmup: float) -> Rate:
    """After ``warmup`` seconds, how fast ``body`` does operations over ``duration`` seconds."""
    ops = Ops(ENDLESS)
    running = asyncio.ensure_future(body(ops))
    await asyncio.sleep(warmup)
    counted, started, cpu = ops.done, perf_counter(), process_time()
    await asyncio.sleep(duration)
    counted, elapsed, cpu = ops.done - counted, perf_counter() - started, process_time() - cpu
    ops.limit = 0
    await running
    return Rate(counted / elapsed, counted / cpu)


async def yielding(duration: float, warmup: float) -> Rate:
    """100 tasks yielding: iterations per second."""
    return await timed(yielding_body, duration, warmup)


async def ping_pong(duration: float, warmup: float) -> Rate:
    """Ping-pong through queues: round trips per second."""
    return await timed(ping_pong_body, duration, warmup)


#: Bodies for counted runs (``python -m bench instructions``).
BODIES: Dict[str, Body] = {"yielding": yielding_body, "ping-pong": ping_pong_body, "http": http_body}

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
