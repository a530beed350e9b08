"""Tasks: how many tasks on a loop are still alive."""

from __future__ import annotations

import asyncio
from typing import List

from loopstat._metrics import Line
from loopstat.probes import Reading, Watched


def alive(loop: asyncio.AbstractEventLoop) -> int:
    """Count the loop's tasks that are not done."""
    return len(asyncio.all_tasks(loop))


class Tasks:
    """Counts the loop's live tasks at each sample (all the application's: loopstat runs none)."""

    def __init__(self, watched: Watched) -> None:
        self._watched = watched

    def read(self, lines: List[Line]) -> Reading:
        count = alive(self._watched.loop)
        lines.append(("tasks", "g", count))
        return {"tasks": count}

    def close(self) -> None:
        pass


def attach(watched: Watched) -> Tasks:
    return Tasks(watched)
