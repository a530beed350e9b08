"""HTTP workload: an aiohttp server with the variant in one process, load from another.

``python -m bench.web serve VARIANT LOOP STATSD_PORT`` runs the server and
prints ``ready PORT``; SIGTERM stops it. ``python -m bench.web load`` reads
``PORT DURATION WARMUP CONCURRENCY`` lines on stdin and answers each with a JSON
line of requests/s and latency percentiles (aiohttp client, keep-alive, a
fixed number of concurrent requests, timed). The orchestrating process owns
the UDP receiver, like an agent would.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from time import perf_counter, process_time
from typing import Dict, List, Optional

from bench import loops, stats, variants

ROOT = Path(__file__).resolve().parent.parent
CONCURRENCY = 8


@dataclass(frozen=True)
class Load:
    """One timed load run against a server."""

    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    #: The server's CPU time (every thread) per request, in microseconds.
    server_cpu_us: float


def child_env() -> Dict[str, str]:
    """The environment for bench subprocesses: this checkout first on the import path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


async def _serve(variant: str, statsd_port: int) -> None:
    from aiohttp import web

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello")

    async def cpu(request: web.Request) -> web.Response:
        return web.Response(text=repr(process_time()))

    attached = variants.attach(variant, statsd_port)
    app = web.Application()
    app.router.add_get("/", hello)
    app.router.add_get("/cpu", cpu)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = getattr(site, "_server", None)
    port = server.sockets[0].getsockname()[1] if server is not None else 0
    stopped = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopped.set)
    print(f"ready {port}", flush=True)
    await stopped.wait()
    await runner.cleanup()
    await attached.detach()


async def _load(port: int, duration: float, warmup: float, concurrency: int) -> Load:
    import aiohttp

    url = f"http://127.0.0.1:{port}/"
    latencies: List[float] = []
    errors = done = 0
    measuring = False
    stop = False

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal errors, done
        while not stop:
            started = perf_counter()
            try:
                async with session.get(url) as response:
                    await response.read()
            except aiohttp.ClientError:
                errors += 1
                continue
            done += 1
            if measuring:
                latencies.append(perf_counter() - started)

    async def server_cpu(session: aiohttp.ClientSession) -> float:
        async with session.get(f"{url}cpu") as response:
            return float(await response.text())

    # One more connection than clients, so the CPU reading does not queue behind them.
    connector = aiohttp.TCPConnector(limit=concurrency + 1)
    async with aiohttp.ClientSession(connector=connector) as session:
        clients = [asyncio.ensure_future(client(session)) for _ in range(concurrency)]
        await asyncio.sleep(warmup)
        cpu, counted = await server_cpu(session), done
        measuring = True
        started = perf_counter()
        await asyncio.sleep(duration)
        measuring = False
        elapsed = perf_counter() - started
        cpu, counted = await server_cpu(session) - cpu, done - counted
        stop = True
        await asyncio.gather(*clients)
    ms = [s * 1000.0 for s in latencies]
    cpu_us = cpu / counted * 1e6 if counted else float("nan")
    return Load(len(ms) / elapsed, stats.median(ms), stats.percentile(ms, 99.0), len(ms), errors, cpu_us)


def _load_forever() -> None:
    """Answer load requests from stdin until it closes."""
    loop = "uvloop" if loops.missing("uvloop") is None else "asyncio"
    for line in sys.stdin:
        port, duration, warmup, concurrency = line.split()
        result = loops.run(partial(_load, int(port), float(duration), float(warmup), int(concurrency)), loop)
        print(json.dumps(result.__dict__), flush=True)


class Bench:
    """Starts one load process; ``measure()`` starts a fresh server per run."""

    def __init__(self, statsd_port: int, concurrency: int = CONCURRENCY) -> None:
        self._statsd_port = statsd_port
        self._concurrency = concurrency
        self._load = subprocess.Popen(
            [sys.executable, "-m", "bench.web", "load"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=child_env(),
        )

    def start(self, variant: str, loop: str) -> subprocess.Popen[str]:
        """A new server process serving with ``variant`` on ``loop``."""
        return subprocess.Popen(
            [sys.executable, "-m", "bench.web", "serve", variant, loop, str(self._statsd_port)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=child_env(),
        )

    def load(self, server: subprocess.Popen[str], duration: float, warmup: float) -> Load:
        """Wait for ``server`` to be ready, load it, stop it."""
        try:
            assert server.stdout is not None
            ready = server.stdout.readline().split()
            if len(ready) != 2 or ready[0] != "ready":
                raise RuntimeError(f"HTTP server {server.args!r} did not start (exit {server.wait()})")
            assert self._load.stdin is not None
            assert self._load.stdout is not None
            self._load.stdin.write(f"{ready[1]} {duration} {warmup} {self._concurrency}\n")
            self._load.stdin.flush()
            answer = self._load.stdout.readline()
            if not answer:
                raise RuntimeError(f"the HTTP load process died (exit {self._load.wait()})")
            return Load(**json.loads(answer))
        finally:
            stop(server)

    def close(self) -> None:
        """End the load process."""
        assert self._load.stdin is not None
        self._load.stdin.close()
        self._load.wait(timeout=10)
        if self._load.stdout is not None:
            self._load.stdout.close()


def stop(server: subprocess.Popen[str]) -> None:
    """SIGTERM a server and reap it."""
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
    if server.stdout is not None:
        server.stdout.close()


# results[loop][variant] = one Load per round
Results = Dict[str, Dict[str, List[Load]]]


def run_all(
    names: List[str], loop_names: List[str], statsd_port: int, repeats: int, duration: float, warmup: float
) -> Results:
    """Every variant on every loop, interleaved round after round, each in a fresh server process.

    Servers start one at a time, so no start-up competes with a measurement.
    Each round starts one variant further along (A B C, B C A, ...).
    """
    results: Results = {lp: {v: [] for v in names} for lp in loop_names}
    bench = Bench(statsd_port)
    try:
        for round_ in range(repeats):
            order = names[round_ % len(names) :] + names[: round_ % len(names)]
            for loop in loop_names:
                for variant in order:
                    server = bench.start(variant, loop)
                    results[loop][variant].append(bench.load(server, duration, warmup))
    finally:
        bench.close()
    return results


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the server and load subprocesses."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["serve"] and len(args) == 4:
        variants.quiet_loopstat()
        variant, loop, statsd_port = args[1], args[2], int(args[3])
        loops.run(lambda: _serve(variant, statsd_port), loop)
        return 0
    if args == ["load"]:
        _load_forever()
        return 0
    print("usage: python -m bench.web serve VARIANT LOOP STATSD_PORT | load", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
