"""Live view: a table redrawn in place, for a terminal (needs rich, the ``cli`` extra).

The table fits the terminal, from 80x24 up. When it is too wide the trend
goes first, then the min and avg columns; only then are long tags and names
cut with an ellipsis. Rows that do not fit in the height are counted instead.
"""

from __future__ import annotations

from collections import deque
from typing import Deque, Dict, List, Optional

from rich.console import Console, Group, RenderableType
from rich.live import Live as _RichLive
from rich.text import Text

from loopstat.cli import fmt
from loopstat.cli.board import Board
from loopstat.cli.series import WINDOW, Series

#: Notes (log lines) kept under the table, newest last.
NOTES = 6
#: Columns, in order, and whether they are right-aligned.
COLUMNS = {"metric": False, "tags": False, "type": False, "last": True, "min": True, "avg": True, "max": True}
COLUMNS.update({"stale": True, "trend": False})
GAP = 2
#: What to give up, in order, while the table is too wide: (column, narrowest width; None drops it).
SQUEEZE = [("trend", 10), ("trend", None), ("min", None), ("avg", None), ("tags", 12), ("metric", 24)]
SQUEEZE += [("max", None), ("tags", 6), ("metric", 12), ("tags", None)]


def _fit(text: str, width: int, right: bool) -> str:
    if len(text) > width:
        text = text[: width - 1] + "…"
    return text.rjust(width) if right else text.ljust(width)


def layout(table: Dict[str, List[str]], width: int) -> Dict[str, int]:
    """The width of each column that is shown; empty columns are not."""
    natural = {name: max(len(name), *map(len, cells)) for name, cells in table.items() if any(cells)}
    widths = dict(natural)

    def excess() -> int:
        return sum(widths.values()) + GAP * (len(widths) - 1) - width

    for name, narrowest in SQUEEZE:
        if excess() <= 0:
            break
        if name in widths:
            if narrowest is None:
                del widths[name]
            else:
                widths[name] = min(widths[name], max(narrowest, widths[name] - excess()))
    for name in ("metric", "tags"):  # what a dropped column left over goes back to the text cut before it
        if name in widths:
            widths[name] = min(natural[name], widths[name] - excess())
    return widths


class Live:
    """Redraws the board when ``tick()`` is called; ``notes`` are shown under the table."""

    def __init__(self, board: Board, address: str, console: Console, title: str = "loopstat watch") -> None:
        self.board = board
        self.address = address
        self.title = title
        self.status: Optional[str] = None
        self.console = console
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
        width, height = self.console.size
        head = [Text.assemble((self.title, "bold"), f"  udp://{self.address}  ", (f"{board.lines} lines", "dim"))]
        head[0].append(f", {board.bad} bad", "red" if board.bad else "dim").append("  Ctrl-C quits")
        if board.last_bad is not None:
            head.append(Text(f"last bad line: {board.last_bad!r}", "red"))
        if self.status is not None:
            head.append(Text(self.status, "bold yellow"))
        rows = board.rows()
        tail = [Text(line, "dim") for line in self._caption()] if rows else []
        notes = [Text(note, "magenta") for note in self._notes]
        used = sum(len(part.wrap(self.console, width)) for part in head + tail)
        table = self._table(rows, width, height - used) if rows else [self._waiting()]
        room = height - used - len(table)
        shown: List[Text] = []
        for note in reversed(notes):  # the newest that fit
            room -= len(note.wrap(self.console, width))
            if room < 0:
                break
            shown.insert(0, note)
        return Group(*head, *table, *tail, *shown)

    def _waiting(self) -> Text:
        host, _, port = self.address.rpartition(":")
        return Text(f"waiting for metrics… try: STATSD_HOST={host} STATSD_PORT={port} your-app", "dim")

    def _caption(self) -> List[str]:
        """Every column explained, in two lines that fit 80 columns."""
        return [
            f"last: latest, counters per second · min/avg/max: over {WINDOW:.0f} s · trend: 1 s a bar",
            f"type: g gauge, ms timing, c counter · stale: seconds silent, gone at {self.board.stale:g} s",
        ]

    def _table(self, rows: List[Series], width: int, height: int) -> List[Text]:
        """The header, then each sender's rows under its name, in at most ``height`` lines."""
        board = self.board
        now = board.now()
        columns: Dict[str, List[str]] = {name: [] for name in COLUMNS}
        for series in rows:
            silence = board.silence(series, now)
            cells = [series.name, fmt.tags(series.other_tags), series.type, *fmt.cells(series, now)]
            cells += [f"{silence:.0f} s" if silence >= board.stale_mark else "", fmt.sparkline(series.trend(now))]
            for name, cell in zip(COLUMNS, cells):
                columns[name].append(cell)
        widths = layout(columns, width)
        header = {name: name for name in COLUMNS}
        if "trend" in widths:
            header["trend"] = f"last {widths['trend']} s"  # one character a second, the newest last

        def line(get: Dict[str, str], style: str = "") -> Text:
            text = Text(style=style, no_wrap=True, overflow="ellipsis")
            for index, (name, size) in enumerate(widths.items()):
                cell = get[name][-size:].ljust(size) if name == "trend" else _fit(get[name], size, COLUMNS[name])
                text.append(("" if index == 0 else " " * GAP) + cell, "cyan" if name == "trend" else "")
            return text

        out = [line(header, "bold")]
        sender: Optional[str] = None
        loops = board.loops()
        for index, series in enumerate(rows):
            if series.sender != sender:
                sender = series.sender
                group = Text(fmt.sender(sender), "bold", no_wrap=True, overflow="ellipsis")
                if sender in loops:
                    group.append(f"  loop: {loops[sender]}", "")
                out.append(group)
            stale = columns["stale"][index] != ""
            out.append(line({name: columns[name][index] for name in COLUMNS}, "dim" if stale else ""))
        if len(out) > height:
            hidden = len(out) - max(1, height - 1)
            out[max(1, height - 1) :] = [Text(f"… {hidden} more lines: enlarge the terminal to see them", "dim")]
        return out
