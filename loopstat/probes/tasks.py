"""Tasks: how many tasks on a loop are still alive."""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from typing import Any, List

from loopstat._metrics import Line
from loopstat.probes import Watched


def alive(loop: asyncio.AbstractEventLoop, exclude: Collection[asyncio.Future[Any]]) -> int:
    """Count the loop's tasks that are not done, leaving out those in ``exclude``."""
    tasks = asyncio.all_tasks(loop)
    return len(tasks) - sum(1 for task in exclude if task in tasks)


class Tasks:
    """Counts the loop's live tasks at each sample, loopstat's own excluded."""

    def __init__(self, watched: Watched) -> None:
        self._watched = watched

    def read(self, lines: List[Line]) -> None:
        watched = self._watched
        count = watched.monitor.tasks = alive(watched.loop, watched.own_tasks())
        lines.append(("tasks", "g", count))

    def close(self) -> None:
        pass


def attach(watched: Watched) -> Tasks:
    return Tasks(watched)
