"""Notes for whoever reads the log: which loop is watched, which worker logged a line, and a hint
when a stdlib loop is blocked off the CPU by calls that loopstat does not name (blocking calls off).

The monitor calls ``started()`` once its probes are attached and ``Notes.sampled()`` after each sample.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
from typing import Optional, Sequence

from loopstat import _worker
from loopstat.probes.blocking import BlockingCalls
from loopstat.probes.selector_clock import SelectorClock

log = logging.getLogger(__name__)

#: The hint comes after the loop has been this busy off the CPU (utilization minus cpu) ...
OFF_CPU_SHARE = 0.5
#: ... in every sample for at least this long, and at least this many samples in a row.
HINT_SECONDS = 2.0
HINT_SAMPLES = 4


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """``uvloop`` or ``asyncio`` (or the module of another loop class), and the class's name."""
    cls = type(loop)
    package = cls.__module__.partition(".")[0]
    return f"{package} ({cls.__name__})"


class Notes:
    """One monitor's notes: the loop named at start, the blocking-call hint at most once."""

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float, selector_timed: bool, counting: bool) -> None:
        self.loop = loop
        #: Utilization is timed at the loop's selector (stdlib loops); else from CPU time and blocking calls.
        self.selector_timed = selector_timed
        #: The blocking-call probe is on.
        self.counting = counting
        self._needed = max(HINT_SAMPLES, math.ceil(HINT_SECONDS / interval))
        self._streak = 0
        self._hinted = False

    def started(self) -> None:
        _tag_records_with_worker()
        how = "timed at its selector" if self.selector_timed else "from its thread's CPU time and the blocking calls"
        calls = "counted" if self.counting else "not counted (blocking_calls=True counts them)"
        log.info("loopstat: watching the %s loop: utilization %s; blocking calls %s", loop_name(self.loop), how, calls)

    def sampled(self, utilization: Optional[float], cpu: Optional[float]) -> None:
        """After each sample: hint once when the loop stays busy off the CPU and nothing names why."""
        if self._hinted or self.counting or not self.selector_timed:
            return
        if utilization is None or cpu is None or utilization - cpu < OFF_CPU_SHARE:
            self._streak = 0
            return
        self._streak += 1
        if self._streak >= self._needed:
            self._hinted = True
            log.warning(
                "loopstat: the loop has been busy but mostly off the CPU for %d samples in a row "
                "(utilization %.0f %%, cpu %.0f %%): callbacks wait in blocking calls (sleep, socket, file, lock); "
                "LOOPSTAT_BLOCKING_CALLS=1 or install(blocking_calls=True) counts and names them",
                self._streak,
                utilization * 100,
                cpu * 100,
            )


class _WorkerFilter(logging.Filter):
    """Puts the worker slot and pid after "loopstat" in a record's message once this process holds a slot."""

    def filter(self, record: logging.LogRecord) -> bool:
        slot = _worker.held()
        if slot is not None and isinstance(record.msg, str) and record.msg.startswith("loopstat: "):
            record.msg = f"loopstat [worker {slot}, pid {os.getpid()}]: {record.msg[len('loopstat: ') :]}"
        return True


_FILTER = _WorkerFilter()


def _tag_records_with_worker() -> None:
    """Add the worker filter to every loopstat logger (a filter on a logger sees only its own records)."""
    loggers = logging.Logger.manager.loggerDict
    for name in list(loggers):
        logger = loggers.get(name)
        ours = name == "loopstat" or name.startswith("loopstat.")
        if ours and isinstance(logger, logging.Logger) and _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


def started(loop: asyncio.AbstractEventLoop, interval: float, probes: Sequence[object]) -> Notes:
    """Name the loop in the log (INFO, once per monitor); return the notes to call after each sample."""
    counting = any(isinstance(probe, BlockingCalls) for probe in probes)
    notes = Notes(loop, interval, SelectorClock.selector_of(loop) is not None, counting)
    notes.started()
    return notes
