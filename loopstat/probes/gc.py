"""GC: pauses of the garbage collector, which stop every thread, the loop's included.

One hook in ``gc.callbacks`` serves every monitor in the process; it is
there while at least one monitor asks for it.
"""

from __future__ import annotations

import gc
import threading
from time import perf_counter
from typing import Any, Dict, List, Optional, Tuple

from loopstat import _fork
from loopstat._metrics import Line
from loopstat.probes import Watched


class Pauses:
    """Collections and the longest pause since the last ``take()``."""

    def __init__(self) -> None:
        self._longest = 0.0
        self._count = 0

    def _note(self, seconds: float) -> None:
        self._count += 1
        if seconds > self._longest:
            self._longest = seconds

    def read(self, lines: List[Line]) -> None:
        pause, collections = self.take()
        lines.extend((("gc.pause", "g", round(pause, 3)), ("gc.collections", "c", collections)))

    def close(self) -> None:
        unwatch(self)

    def take(self) -> Tuple[float, int]:
        """(longest pause in ms, collections) since the previous call; resets both."""
        longest, count = self._longest, self._count
        self._longest, self._count = 0.0, 0
        return longest * 1000.0, count


# A tuple, replaced rather than changed: the hook may be reading it in another thread.
_readers: Tuple[Pauses, ...] = ()
_lock = threading.Lock()
_started = 0.0


def _on_gc(phase: str, info: Dict[str, Any]) -> None:
    global _started
    if phase == "start":
        _started = perf_counter()
        return
    pause = perf_counter() - _started
    for reader in _readers:
        reader._note(pause)


def watch() -> Pauses:
    """Start counting pauses for one monitor; raises (AttributeError) where ``gc.callbacks`` is absent."""
    global _readers
    pauses = Pauses()
    with _lock:
        callbacks = gc.callbacks  # first: without it, nothing is changed
        if _on_gc not in callbacks:
            callbacks.append(_on_gc)
        _readers = (*_readers, pauses)
    return pauses


def unwatch(pauses: Pauses) -> None:
    """Stop counting for one monitor; the hook goes when no monitor counts."""
    global _readers
    with _lock:
        _readers = tuple(r for r in _readers if r is not pauses)
        callbacks = getattr(gc, "callbacks", None)
        if not _readers and callbacks is not None and _on_gc in callbacks:
            callbacks.remove(_on_gc)


def attach(watched: Watched) -> Optional[Pauses]:
    return watch() if watched.settings.gc else None


def after_fork_in_child() -> None:
    """Called in the child (through loopstat/_fork.py)."""
    global _lock
    _lock = threading.Lock()  # another thread may have held it at fork


_fork.join(after_in_child=after_fork_in_child)
