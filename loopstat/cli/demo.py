"""Demo: the watch receiver next to a small service whose loop goes bad and recovers.

The service runs on its own loop in a thread (so the view stays live while the
service's loop is blocked), with loopstat installed and sending to the
receiver. It goes through four phases: healthy, CPU work on the loop, healthy
again, and the same work in ``run_in_executor``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, List, Optional, TextIO

import loopstat
from loopstat import settings as _settings
from loopstat.cli import fmt, statsd
from loopstat.cli.board import Board
from loopstat.cli.listen import listen
from loopstat.cli.watch import View, address, open_view, redraw_until, stop_on_signals

PREFIX = "loopstat"
TAGS = {"service": "demo"}
#: Sample often, so a short demo still shows a few samples per phase.
INTERVAL = 0.1
#: Each request's share of CPU work: longer than the default stall threshold (0.1 s).
WORK_SECONDS = 0.15
#: Time between two requests of one worker.
PAUSE_SECONDS = 0.05
WORKERS = 2
#: Metrics that arrive this soon after blocking on the loop ends still belong to that phase:
#: the request in progress finishes first, and its stall is reported when it ends.
GRACE_SECONDS = WORK_SECONDS + 2 * INTERVAL


class DemoError(Exception):
    """The demo cannot start; the message is one line for a person."""


@dataclass(frozen=True)
class Phase:
    """One stretch of the demo: what the service does, and what a person should see."""

    name: str
    text: str
    #: None: requests only await; "loop": crunch_numbers() on the loop; "executor": in run_in_executor.
    work: Optional[str]


PHASES = (
    Phase("healthy", "healthy: requests only await, the loop is free", None),
    Phase("on the loop", "crunch_numbers() runs on the loop: lag, utilization and stalls rise", "loop"),
    Phase("healthy", "healthy again: lag falls back", None),
    Phase("executor", "the same crunch_numbers() in run_in_executor: the loop stays free", "executor"),
)


def crunch_numbers(seconds: float) -> int:
    """CPU-bound work that never awaits, standing in for a big json.loads, a render or a hash."""
    deadline = time.perf_counter() + seconds
    total = n = 0
    while time.perf_counter() < deadline:
        for _ in range(1000):
            total = (total + n * n) % 1_000_003
            n += 1
    return total


class Service:
    """The demo service: a few workers serving fake requests on a loop of its own thread."""

    def __init__(self, port: int) -> None:
        self.port = port
        #: Switched by the demo from the main thread; read by the workers between requests.
        self.phase: Phase = PHASES[0]
        self.requests = 0
        self.error: Optional[BaseException] = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="loopstat-demo-service", daemon=True)

    def start(self) -> None:
        self._thread.start()

    async def stop(self) -> None:
        self._stop.set()
        # Joined from a worker thread: the receiver's loop keeps taking datagrams meanwhile.
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join)

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported by the demo, not printed from a thread
            self.error = exc

    async def _serve(self) -> None:
        async with loopstat.install(host="127.0.0.1", port=self.port, prefix=PREFIX, tags=TAGS, interval=INTERVAL):
            await asyncio.gather(*(self._worker() for _ in range(WORKERS)))

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stop.is_set():
            await asyncio.sleep(PAUSE_SECONDS)
            work = self.phase.work
            if work == "loop":
                crunch_numbers(WORK_SECONDS)
            elif work == "executor":
                await loop.run_in_executor(None, crunch_numbers, WORK_SECONDS)
            self.requests += 1


@dataclass
class PhaseTally:
    """What the receiver saw during one phase."""

    phase: Phase
    lag_max: float = 0.0
    utilization: List[float] = field(default_factory=list)
    stalls: float = 0.0
    requests: int = 0


class Tally:
    """Sorts the metrics the receiver gets into the phase the demo was in when they arrived."""

    def __init__(self, board: Board) -> None:
        self.phases = [PhaseTally(phase) for phase in PHASES]
        self.current = 0
        self._board = board
        self._switched = board.now()
        #: Stall log messages, each once, in order.
        self.stall_logs: List[str] = []
        board.listen(self._on_sample)

    def switch(self, index: int) -> None:
        self.current = index
        self._switched = self._board.now()

    def _on_sample(self, now: float, sample: statsd.Sample) -> None:
        index = self.current
        if index > 0 and PHASES[index - 1].work == "loop" and now - self._switched < GRACE_SECONDS:
            index -= 1
        tally = self.phases[index]
        if sample.name == f"{PREFIX}.lag" and sample.type == "g":
            tally.lag_max = max(tally.lag_max, sample.value)
        elif sample.name == f"{PREFIX}.utilization":
            tally.utilization.append(sample.value)
        elif sample.name == f"{PREFIX}.stalls" and sample.type == "c":
            tally.stalls += sample.value

    def summary(self) -> str:
        rows = ["", "loopstat demo: what the service's loop went through", ""]
        rows.append(f"  {'phase':<14}{'lag max':>12}{'utilization':>14}{'stalls':>8}{'requests':>10}")
        for tally in self.phases:
            use = f"{sum(tally.utilization) / len(tally.utilization):.0%}" if tally.utilization else "-"
            lag = f"{fmt.number(tally.lag_max)} ms"
            rows.append(f"  {tally.phase.name:<14}{lag:>12}{use:>14}{tally.stalls:>8.0f}{tally.requests:>10}")
        rows.append("")
        # The watchdog may miss the stack of a stall that ends as it looks: prefer one it named.
        named = [text for text in self.stall_logs if " at " in text] or self.stall_logs
        rows.extend("  stall log: " + text for text in named[:3])
        on_loop, executor = self.phases[1], self.phases[3]
        rows.append(
            f"  crunch_numbers() on the loop: lag up to {fmt.number(on_loop.lag_max)} ms; "
            f"in run_in_executor: {fmt.number(executor.lag_max)} ms."
        )
        rows.append("  Blocking work belongs in run_in_executor (or asyncio.to_thread), not on the loop.")
        return "\n".join(rows) + "\n"


class _ToView(logging.Handler):
    """Shows loopstat's log lines (the stall warnings) in the view, from whichever thread logs them."""

    def __init__(self, view: View, tally: Tally, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(logging.INFO)
        self.view = view
        self.tally = tally
        self.loop = loop

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if "blocked" in text:
            self.tally.stall_logs.append(text)
        # The view is drawn by the receiver's loop; hand the line over to it.
        self.loop.call_soon_threadsafe(self.view.note, f"{record.levelname}: {text}")


@contextmanager
def _logs_to(handler: logging.Handler) -> Iterator[None]:
    logger = logging.getLogger("loopstat")
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False  # the lines go in the view, not over it
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


async def _phases(view: View, service: Service, tally: Tally, stop: asyncio.Event, seconds: float) -> None:
    """Take the service through every phase, ``seconds`` in all, unless ``stop`` is set first."""
    loop = asyncio.get_running_loop()
    for index, phase in enumerate(PHASES):
        before = service.requests
        service.phase = phase
        tally.switch(index)
        view.set_status(f"phase {index + 1}/{len(PHASES)}: {phase.text}")
        view.tick()  # show the new phase now, not at the next redraw
        await redraw_until(view, stop, loop.time() + seconds / len(PHASES))
        tally.phases[index].requests = service.requests - before
        if stop.is_set():
            return


async def demo(seconds: float, out: TextIO, err: TextIO) -> None:
    """Run the demo for ``seconds`` (or until Ctrl-C), then write a summary to ``out``."""
    board = Board()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    with stop_on_signals(stop):
        transport, port = await listen(board, "127.0.0.1", 0)
        try:
            service = Service(port)
            try:
                # Same checks install() makes in the service thread, here, to fail in one line.
                _settings.resolve("127.0.0.1", port, prefix=PREFIX, tags=TAGS, interval=INTERVAL, environ=os.environ)
            except ValueError as exc:
                raise DemoError(str(exc)) from None
            tally = Tally(board)
            view_cm = open_view(board, address("127.0.0.1", port), out, err, "loopstat demo")
            with view_cm as view, _logs_to(_ToView(view, tally, loop)):
                service.start()
                try:
                    await _phases(view, service, tally, stop, seconds)
                finally:
                    await service.stop()
                await asyncio.sleep(0.05)  # the last datagrams, sent as the monitor stopped
                view.tick()
            if service.error is not None:
                raise DemoError(f"the demo service failed: {service.error!r}")
            out.write(tally.summary())
            out.flush()
        finally:
            transport.close()
