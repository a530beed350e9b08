"""Tasks: how many tasks on a loop are still alive."""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from typing import Any


def alive(loop: asyncio.AbstractEventLoop, exclude: Collection[asyncio.Future[Any]]) -> int:
    """Count the loop's tasks that are not done, leaving out those in ``exclude``."""
    tasks = asyncio.all_tasks(loop)
    return len(tasks) - sum(1 for task in exclude if task in tasks)
