"""Watch: a local StatsD/DogStatsD receiver that shows every metric it gets, live."""

from __future__ import annotations

import asyncio
import signal
from contextlib import contextmanager, suppress
from typing import Dict, Iterator, List, Optional, Protocol, TextIO, Tuple

from loopstat.cli import fmt
from loopstat.cli.board import STALE_DROP, Board, listen

#: Seconds between two redraws of the table (or two batches of plain lines).
PERIOD = 1.0

RICH_MISSING = (
    "the live view needs rich: from a checkout of loopstat, pip install -e '.[cli]' "
    "(pip install 'loopstat[cli]' once it is published), or pipe the output for plain lines"
)


class View(Protocol):
    """What the receiver draws on: the live table or the plain lines."""

    def tick(self) -> None: ...

    def note(self, text: str) -> None: ...

    def set_status(self, text: str) -> None: ...


class NeedsRich(Exception):
    """Output is a terminal, and rich (the ``cli`` extra) is not installed."""


class Plain:
    """When stdout is not a terminal: each second, one line per series that received data in it."""

    def __init__(self, board: Board, out: TextIO, err: TextIO) -> None:
        self.board = board
        self.out = out
        self.err = err
        self._bad_reported = 0
        #: Lines of each series already accounted for by a printed line.
        self._printed: Dict[Tuple[str, str, Tuple[str, ...]], int] = {}
        #: The loop of each sender as last noted.
        self._loops: Dict[str, str] = {}

    def lines(self) -> List[str]:
        """``name type tags last=… min=… avg=… max=… n=…`` of the series fed since the previous call."""
        now = self.board.now()
        printed, self._printed = self._printed, {}
        lines = []
        for series in self.board.rows():
            key = (series.name, series.type, series.tags)
            self._printed[key] = series.received
            if printed.get(key) == series.received:
                continue  # nothing new: a repeated line would look live
            last, low, avg, high = fmt.cells(series, now)
            stats = series.stats(now)
            lines.append(
                f"{series.name} {series.type} {fmt.tags(series.tags) or '-'} last={last} "
                f"min={low} avg={avg} max={high} n={stats.count if stats else 0}"
            )
        return lines

    def set_status(self, text: str) -> None:
        self.note(text)

    def note(self, text: str) -> None:
        """Something that is not a metric (a phase, a log line): to stdout, marked with '#'."""
        self.out.write(f"# {text}\n")
        self.out.flush()

    def loop_notes(self) -> List[str]:
        """``loop of service:<sender>: <kind>`` for each sender whose loop is newly told by its metrics."""
        notes = []
        for sender, kind in sorted(self.board.loops().items()):
            if self._loops.get(sender) != kind:
                self._loops[sender] = kind
                notes.append(f"loop of {fmt.sender(sender)}: {kind}")
        return notes

    def tick(self) -> None:
        for text in self.loop_notes():
            self.out.write(f"# {text}\n")
        for line in self.lines():
            self.out.write(line + "\n")
        self.out.flush()
        if self.board.bad > self._bad_reported:
            self.err.write(f"loopstat watch: {self.board.bad} bad lines so far, last: {self.board.last_bad!r}\n")
            self.err.flush()
            self._bad_reported = self.board.bad


@contextmanager
def open_view(board: Board, address: str, out: TextIO, err: TextIO, title: str = "loopstat watch") -> Iterator[View]:
    """A live table when ``out`` is a terminal, plain lines otherwise."""
    if not out.isatty():
        yield Plain(board, out, err)
        return
    try:
        from rich.console import Console

        from loopstat.cli.live import Live
    except ImportError:
        raise NeedsRich(RICH_MISSING) from None
    with Live(board, address, Console(file=out), title) as live:
        yield live


@contextmanager
def stop_on_signals(stop: asyncio.Event) -> Iterator[List[int]]:
    """Ctrl-C and SIGTERM set ``stop`` instead of raising KeyboardInterrupt mid-draw.

    Yields the list the signals received are appended to.
    """
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    received: List[int] = []

    def on_signal(number: int) -> None:
        received.append(number)
        stop.set()

    for sig in signals:
        loop.add_signal_handler(sig, on_signal, int(sig))
    try:
        yield received
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


async def redraw_until(
    view: View, stop: asyncio.Event, deadline: Optional[float] = None, period: float = PERIOD
) -> None:
    """Tick the view every ``period`` seconds until ``stop`` is set or the loop clock passes ``deadline``."""
    loop = asyncio.get_running_loop()
    next_tick = loop.time() + period
    while not stop.is_set():
        wake = next_tick if deadline is None else min(next_tick, deadline)
        with suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), max(0.0, wake - loop.time()))
        if deadline is not None and loop.time() >= deadline:
            return
        if loop.time() >= next_tick:
            view.tick()
            next_tick += period


async def watch(host: str, port: int, out: TextIO, err: TextIO, stale: float = STALE_DROP) -> None:
    """Receive and show metrics until Ctrl-C or SIGTERM; rows silent for ``stale`` seconds go."""
    board = Board(stale=stale)
    stop = asyncio.Event()
    with stop_on_signals(stop):
        transport, bound = await listen(board, host, port)
        try:
            with open_view(board, address(host, bound), out, err) as view:
                if isinstance(view, Plain):
                    view.note(f"loopstat watch: listening on udp://{address(host, bound)}")
                await redraw_until(view, stop)
        finally:
            transport.close()


def address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
