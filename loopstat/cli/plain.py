"""Plain view: when stdout is not a terminal, one line per live metric each second."""

from __future__ import annotations

from typing import List, TextIO

from loopstat.cli import fmt
from loopstat.cli.board import Board


class Plain:
    """Writes ``name type tags last=… min=… avg=… max=… n=…`` lines; bad lines go to stderr."""

    def __init__(self, board: Board, out: TextIO, err: TextIO) -> None:
        self.board = board
        self.out = out
        self.err = err
        self._bad_reported = 0

    def lines(self) -> List[str]:
        now = self.board.now()
        lines = []
        for series in self.board.rows():
            stats = series.stats(now)
            if stats is None:
                continue  # silent for the whole window: nothing to say about it
            lines.append(
                f"{series.name} {series.type} {fmt.tags(series.tags) or '-'} last={fmt.number(series.last)} "
                f"min={fmt.number(stats.min)} avg={fmt.number(stats.avg)} max={fmt.number(stats.max)} "
                f"n={stats.count}"
            )
        return lines

    def set_status(self, text: str) -> None:
        self.note(text)

    def note(self, text: str) -> None:
        """Something that is not a metric (a phase, a log line): to stdout, marked with '#'."""
        self.out.write(f"# {text}\n")
        self.out.flush()

    def tick(self) -> None:
        for line in self.lines():
            self.out.write(line + "\n")
        self.out.flush()
        if self.board.bad > self._bad_reported:
            self.err.write(f"loopstat watch: {self.board.bad} bad lines so far, last: {self.board.last_bad!r}\n")
            self.err.flush()
            self._bad_reported = self.board.bad
