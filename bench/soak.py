"""Soak: a monitored loop runs for minutes while the agent flaps; memory, counts and exceptions are reported.

    python -m bench.soak [--minutes 10] [--loop asyncio|uvloop] [--flap-seconds 3]

The "agent" is a real UDP receiver in a separate Python process, killed with
SIGKILL and restarted on the same loopback port again and again. The app
runs a few light tasks next to ``loopstat.install(interval=0.001)``. The run
fails (exit status 1) if any exception reaches the app: a task, the loop's
exception handler, ``sys.excepthook`` or ``threading.excepthook``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import json
import logging
import os
import select
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Awaitable, Callable, Dict, List, Optional, Sequence, Tuple, Type

if __package__ in (None, ""):  # run as ``python bench/soak.py``
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import loopstat
from bench import loops, report

# The receiver: binds the port, prints it, then counts datagrams into a shared
# file after each one, so the count survives SIGKILL exactly.
RECEIVER = """\
import mmap, os, socket, struct, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
os.ftruncate(fd, 8)
counter = mmap.mmap(fd, 8)
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
sock.bind(("127.0.0.1", int(sys.argv[2])))
print(sock.getsockname()[1], flush=True)
buf = bytearray(65535)
store = struct.Struct("<Q").pack_into
n = 0
while True:
    sock.recv_into(buf)
    n += 1
    store(counter, 0, n)
"""
COUNT = struct.Struct("<Q")
READY_TIMEOUT = 10.0


def rss_kib() -> int:
    """This process's resident set size in KiB (VmRSS), or -1 where /proc is missing."""
    return _status_kib("VmRSS")


def _status_kib(key: str) -> int:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return -1


class Agent:
    """A receiver process on one loopback port, SIGKILLed and restarted by a thread of its own."""

    def __init__(self, up: float, down: float) -> None:
        self.up = up
        self.down = down
        self.port = 0
        #: SIGKILLs while the app runs (the one at the end is not counted).
        self.kills = 0
        self.starts = 0
        self.failed_starts = 0
        self.received = 0
        self._dir = tempfile.TemporaryDirectory(prefix="loopstat-soak-")
        self._proc: Optional[subprocess.Popen[str]] = None
        self._counter = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._flap, name="soak-agent", daemon=True)

    def start(self) -> None:
        """Start the first receiver (on an ephemeral port) and the flapping thread."""
        if not self._spawn():
            raise RuntimeError("the receiver process did not start")
        self._thread.start()

    def _spawn(self) -> bool:
        self._counter = os.path.join(self._dir.name, f"rx-{self.starts + self.failed_starts}")
        proc = subprocess.Popen(
            [sys.executable, "-I", "-c", RECEIVER, self._counter, str(self.port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], READY_TIMEOUT)
        line = proc.stdout.readline() if ready else ""
        if not line.strip().isdigit():  # could not bind (the port was taken) or too slow
            proc.kill()
            proc.wait()
            proc.stdout.close()
            self.failed_starts += 1
            return False
        self.port = int(line)
        self._proc = proc
        self.starts += 1
        return True

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        try:
            with open(self._counter, "rb") as counter:
                self.received += COUNT.unpack(counter.read(COUNT.size))[0]
        except (OSError, struct.error):
            pass

    def _flap(self) -> None:
        while not self._stop.wait(self.up):
            self._kill()
            self.kills += 1
            if self._stop.wait(self.down):
                return
            while not self._spawn():
                if self._stop.wait(self.down):
                    return

    def close(self) -> None:
        """Stop flapping, kill the receiver and add up what it counted."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._kill()
        self._dir.cleanup()


class Watch:
    """Counts what reaches the app: exceptions by origin, loopstat's log records by level."""

    def __init__(self) -> None:
        self.exceptions: List[str] = []
        self.records: collections.Counter[str] = collections.Counter()
        #: Records by (level, message template), with the first message of each.
        self.kinds: collections.Counter[Tuple[str, str]] = collections.Counter()
        self.first_record: Dict[Tuple[str, str], str] = {}
        self._lock = threading.Lock()
        self._handler = _CountingHandler(self)
        self._logger = logging.getLogger("loopstat")
        self._old_level = self._logger.level
        self._old_hooks: Tuple[Any, Any] = (sys.excepthook, threading.excepthook)

    def exception(self, where: str, what: object) -> None:
        with self._lock:
            self.exceptions.append(f"{where}: {what!r}")

    def loop_handler(self, loop: asyncio.AbstractEventLoop, context: Dict[str, Any]) -> None:
        self.exception("loop exception handler", context.get("exception") or context.get("message"))

    def __enter__(self) -> Watch:
        self._logger.addHandler(self._handler)
        self._logger.setLevel(logging.DEBUG)

        def excepthook(kind: Type[BaseException], exc: BaseException, tb: Optional[TracebackType]) -> None:
            self.exception("sys.excepthook", exc)
            self._old_hooks[0](kind, exc, tb)

        def thread_hook(args: threading.ExceptHookArgs) -> None:
            self.exception(f"threading.excepthook ({args.thread.name if args.thread else '?'})", args.exc_value)
            self._old_hooks[1](args)

        sys.excepthook = excepthook
        threading.excepthook = thread_hook
        return self

    def __exit__(self, *exc_info: object) -> None:
        sys.excepthook, threading.excepthook = self._old_hooks
        self._logger.removeHandler(self._handler)
        self._logger.setLevel(self._old_level)


class _CountingHandler(logging.Handler):
    def __init__(self, watch: Watch) -> None:
        super().__init__(logging.DEBUG)
        self._watch = watch

    def emit(self, record: logging.LogRecord) -> None:
        kind = (record.levelname, str(record.msg))
        self._watch.records[record.levelname] += 1
        self._watch.kinds[kind] += 1
        if kind not in self._watch.first_record:
            # One table cell: the first line only (a stall record carries a stack), no pipes.
            text = (record.getMessage().splitlines() or [""])[0]
            self._watch.first_record[kind] = text[:300].replace("|", "\\|")


@dataclass
class Result:
    """What one soak measured; counters come from loopstat's internals, fine for a bench."""

    loop: str
    seconds: float = 0.0
    warmup: float = 0.0
    rss_start: int = 0
    rss_end: int = 0
    rss_peak: int = 0
    blocks_start: int = 0
    blocks_end: int = 0
    rss_timeline: List[Tuple[float, int]] = field(default_factory=list)
    samples: int = 0
    max_lag: float = 0.0
    sent: int = 0
    dropped: int = 0
    errors: int = 0
    app_work: int = 0


class App:
    """Light application work: request-like tasks, a queue pipeline, short-lived child tasks."""

    def __init__(self, watch: Watch, raise_once: bool = False) -> None:
        self.watch = watch
        self.work = 0
        self.stopping = False
        self._raise_once = raise_once
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=100)
        self._tasks: List[asyncio.Task[None]] = []

    def start(self) -> None:
        jobs: List[Tuple[str, Callable[[], Awaitable[None]]]] = [
            *((f"handler-{i}", self._handle) for i in range(4)),
            ("producer", self._produce),
            ("consumer", self._consume),
            ("spawner", self._spawn),
        ]
        self._tasks = [asyncio.create_task(self._guard(name, job), name=name) for name, job in jobs]

    async def _guard(self, name: str, job: Callable[[], Awaitable[None]]) -> None:
        # Any exception that reaches an app task is counted, and the task goes on.
        while not self.stopping:
            try:
                await job()
                self.work += 1
            except asyncio.CancelledError:
                if not self.stopping:
                    self.watch.exception(f"task {name}", "cancelled from outside")
                raise
            except Exception as exc:
                self.watch.exception(f"task {name}", exc)

    async def _handle(self) -> None:
        await asyncio.sleep(0.01)
        body = json.dumps({"id": self.work, "items": list(range(20))})
        if self._raise_once:
            self._raise_once = False
            raise RuntimeError("injected by --raise-in-app")
        json.loads(body)

    async def _produce(self) -> None:
        await self._queue.put(os.urandom(64))
        await asyncio.sleep(0.005)

    async def _consume(self) -> None:
        item = await self._queue.get()
        self._queue.task_done()
        item.hex()

    async def _spawn(self) -> None:
        await asyncio.gather(*(asyncio.sleep(0.002 * i) for i in range(5)))
        await asyncio.sleep(0.02)

    async def stop(self) -> None:
        self.stopping = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _measure() -> Tuple[int, int]:
    gc.collect()
    return rss_kib(), sys.getallocatedblocks()


async def soak(opts: argparse.Namespace, watch: Watch, agent: Agent, result: Result) -> None:
    """Run the app and the monitor for the configured time, filling ``result``."""
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(watch.loop_handler)
    app = App(watch, raise_once=opts.raise_in_app)
    monitor = loopstat.install(host="127.0.0.1", port=agent.port, interval=opts.interval)
    sample = monitor._sample

    def counted(*args: Any, **kwargs: Any) -> None:
        result.samples += 1
        sample(*args, **kwargs)
        result.max_lag = max(result.max_lag, monitor.lag)

    monitor._sample = counted  # type: ignore[method-assign]
    app.start()
    began = time.monotonic()
    try:
        await asyncio.sleep(result.warmup)
        result.rss_start, result.blocks_start = _measure()
        result.rss_timeline.append((result.warmup, result.rss_start))
        step = max((result.seconds - result.warmup) / 10, 1.0)
        # Timers may fire a hair early (uvloop rounds to milliseconds): stop within 10 ms of the end.
        while (left := began + result.seconds - time.monotonic()) > 0.01:
            await asyncio.sleep(min(step, left))
            result.rss_timeline.append((time.monotonic() - began, rss_kib()))
        result.rss_end, result.blocks_end = _measure()
        result.rss_peak = _status_kib("VmHWM")
    finally:
        await app.stop()
        await monitor.stop()
        result.app_work = app.work
        result.sent, result.dropped, result.errors = monitor.sent, monitor.dropped, monitor.errors


def table(result: Result, agent: Agent, watch: Watch, opts: argparse.Namespace) -> str:
    """The report, as markdown."""
    growth = result.rss_end - result.rss_start
    limit = opts.max_growth_kib
    records = ", ".join(f"{level} {watch.records[level]}" for level in ("DEBUG", "INFO", "WARNING", "ERROR")) or "none"
    rows: List[Tuple[str, str]] = [
        ("loop", result.loop),
        ("duration", f"{result.seconds:.0f} s ({result.warmup:.0f} s warm-up)"),
        (
            "agent flaps",
            f"up {agent.up:g} s / down {agent.down:g} s: {agent.kills} SIGKILLs (outages), {agent.starts} starts",
        ),
        ("RSS after warm-up", f"{result.rss_start} KiB"),
        ("RSS at end", f"{result.rss_end} KiB"),
        (
            "**RSS growth**",
            f"**{growth:+d} KiB** ({'within' if growth <= limit else 'OVER'} the {limit} KiB target)",
        ),
        ("RSS peak (VmHWM)", f"{result.rss_peak} KiB"),
        (
            "Python allocated blocks",
            f"{result.blocks_start} → {result.blocks_end} ({result.blocks_end - result.blocks_start:+d})",
        ),
        ("monitor samples taken", f"{result.samples} ({result.samples / max(result.seconds, 1e-9):.0f}/s)"),
        ("max lag seen", f"{result.max_lag:.1f} ms"),
        ("metric lines sent by loopstat (a sample is one datagram)", str(result.sent)),
        ("metric lines dropped by loopstat", str(result.dropped)),
        ("send errors reported to loopstat", str(result.errors)),
        ("datagrams counted by the receiver", str(agent.received)),
        ("app work units done", str(result.app_work)),
        ("`loopstat` log records", records),
        ("**exceptions reaching the app**", f"**{len(watch.exceptions)}**"),
    ]
    rows.extend(
        (f"{count} {level} record(s)", f"`{watch.first_record[level, template]}` (the first)")
        for (level, template), count in sorted(watch.kinds.items())
    )
    timeline = ", ".join(f"{t:.0f} s: {kib}" for t, kib in result.rss_timeline)
    lines = [
        f"loopstat soak: `python -m bench.soak {' '.join(opts.argv)}` on {report.provenance()}, "
        f"{os.cpu_count()} CPUs, interval {opts.interval * 1000:g} ms",
        "",
        "| measure | value |",
        "|---|---|",
        *(f"| {name} | {value} |" for name, value in rows),
        "",
        f"RSS over time (KiB): {timeline}",
    ]
    if agent.failed_starts:
        lines.append(f"receiver restarts that failed (port taken?) and were retried: {agent.failed_starts}")
    lines.extend(f"exception: {text}" for text in watch.exceptions[:20])
    return "\n".join(lines)


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long to run (default 10)")
    parser.add_argument("--seconds", type=float, default=None, help="how long to run, overriding --minutes")
    parser.add_argument("--loop", choices=loops.LOOPS, default="asyncio")
    parser.add_argument("--flap-seconds", type=float, default=3.0, help="receiver up time between kills (default 3)")
    parser.add_argument("--down-seconds", type=float, default=1.0, help="receiver down time per kill (default 1)")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds before the first RSS reading (default 10)")
    parser.add_argument("--interval", type=float, default=0.001, help="loopstat sample interval (default 0.001)")
    parser.add_argument("--max-growth-kib", type=int, default=1024, help="RSS growth target shown in the table")
    parser.add_argument("--raise-in-app", action="store_true", help=argparse.SUPPRESS)  # to test the detector
    opts = parser.parse_args(argv)
    opts.argv = list(sys.argv[1:] if argv is None else argv)
    return opts


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run one soak and print its table; 1 if an exception reached the app, 2 if the loop is unavailable."""
    opts = parse_args(argv)
    why = loops.missing(opts.loop)
    if why:
        print(f"soak: {why}", file=sys.stderr)
        return 2
    seconds = opts.seconds if opts.seconds is not None else opts.minutes * 60
    result = Result(opts.loop, seconds=seconds, warmup=min(opts.warmup, seconds / 3))
    agent = Agent(opts.flap_seconds, opts.down_seconds)
    with Watch() as watch:
        agent.start()
        try:
            loops.run(lambda: soak(opts, watch, agent, result), opts.loop)
        finally:
            agent.close()
    print(table(result, agent, watch, opts))
    return 1 if watch.exceptions else 0


if __name__ == "__main__":
    sys.exit(main())
