"""Watch: a local StatsD/DogStatsD receiver that shows every metric it gets, live."""

from __future__ import annotations

import asyncio
import signal
from contextlib import contextmanager, suppress
from typing import Iterator, Optional, Protocol, TextIO

from loopstat.cli.board import Board
from loopstat.cli.listen import listen
from loopstat.cli.plain import Plain

#: Seconds between two redraws of the table (or two batches of plain lines).
PERIOD = 1.0

RICH_MISSING = "the live view needs rich: pip install 'loopstat[cli]' (or pipe the output for plain lines)"


class View(Protocol):
    """What the receiver draws on: the live table or the plain lines."""

    def tick(self) -> None: ...

    def note(self, text: str) -> None: ...

    def set_status(self, text: str) -> None: ...


class NeedsRich(Exception):
    """Output is a terminal, and rich (the ``cli`` extra) is not installed."""


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
def stop_on_signals(stop: asyncio.Event) -> Iterator[None]:
    """Ctrl-C and SIGTERM end the session cleanly instead of raising KeyboardInterrupt mid-draw."""
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        yield
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


async def redraw_until(view: View, stop: asyncio.Event, deadline: Optional[float] = None) -> None:
    """Tick the view every ``PERIOD`` seconds until ``stop`` is set or the loop clock passes ``deadline``."""
    loop = asyncio.get_running_loop()
    next_tick = loop.time() + PERIOD
    while not stop.is_set():
        wake = next_tick if deadline is None else min(next_tick, deadline)
        with suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), max(0.0, wake - loop.time()))
        if deadline is not None and loop.time() >= deadline:
            return
        if loop.time() >= next_tick:
            view.tick()
            next_tick += PERIOD


async def watch(host: str, port: int, out: TextIO, err: TextIO) -> None:
    """Receive and show metrics until Ctrl-C or SIGTERM."""
    board = Board()
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
