"""Live view: a table redrawn in place, for a terminal (needs rich, the ``cli`` extra)."""

from __future__ import annotations

from collections import deque
from typing import Deque, Optional

from rich.console import Console, Group, RenderableType
from rich.live import Live as _RichLive
from rich.table import Table
from rich.text import Text

from loopstat.cli import fmt
from loopstat.cli.board import Board
from loopstat.cli.series import TREND, WINDOW

#: Notes (log lines) kept under the table, newest last.
NOTES = 6


class Live:
    """Redraws the board when ``tick()`` is called; ``notes`` are shown under the table."""

    def __init__(self, board: Board, address: str, console: Console, title: str = "loopstat watch") -> None:
        self.board = board
        self.address = address
        self.title = title
        self.status: Optional[str] = None
        self._notes: Deque[str] = deque(maxlen=NOTES)
        # Refreshed by tick() only: a second thread drawing would add nothing but jitter.
        self._live = _RichLive(console=console, auto_refresh=False, redirect_stdout=False, redirect_stderr=False)

    def __enter__(self) -> Live:
        self._live.start()
        self.tick()
        return self

    def __exit__(self, *exc: object) -> None:
        self.tick()
        self._live.stop()

    def set_status(self, text: str) -> None:
        self.status = text

    def note(self, text: str) -> None:
        self._notes.append(text)

    def tick(self) -> None:
        self._live.update(self.render(), refresh=True)

    def render(self) -> RenderableType:
        board = self.board
        status = f"{board.lines} lines, {board.bad} bad"
        if board.last_bad is not None:
            status += f" (last bad: {board.last_bad!r})"
        header = Text.assemble(
            (self.title, "bold"), f"  udp://{self.address}  ", (status, "red" if board.bad else "dim"), "  Ctrl-C quits"
        )
        parts: list[RenderableType] = [header]
        if board.series:
            parts.append(self._table())
        else:
            host, _, port = self.address.rpartition(":")
            parts.append(Text(f"waiting for metrics… try: STATSD_HOST={host} STATSD_PORT={port} your-app", "dim"))
        if self.status is not None:
            parts.append(Text(self.status, "bold yellow"))
        parts.extend(Text(note, "magenta") for note in self._notes)
        return Group(*parts)

    def _table(self) -> Table:
        now = self.board.now()
        table = Table(box=None, pad_edge=False, header_style="bold")
        table.add_column("metric", no_wrap=True)
        table.add_column("tags", overflow="fold", max_width=40)
        table.add_column("type")
        for name in ("last", "min", "avg", "max"):
            table.add_column(name, justify="right")
        table.add_column(f"last {TREND} s", no_wrap=True)
        for series in self.board.rows():
            stats = series.stats(now)
            window = [fmt.number(stats.min), fmt.number(stats.avg), fmt.number(stats.max)] if stats else ["", "", ""]
            table.add_row(
                series.name,
                fmt.tags(series.tags),
                series.type,
                fmt.number(series.last),
                *window,
                Text(fmt.sparkline(series.trend(now)), "cyan"),
            )
        table.caption = f"min/avg/max over the last {WINDOW:.0f} s; counters: last = total, min/avg/max per second"
        table.caption_justify = "left"
        return table
