"""A stall and what the watchdog captures of it: the public ``Stall``, the ``Capture``, and reading a thread's stack."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

from loopstat.probes import frames as _frames
from loopstat.probes import stack_dump
from loopstat.probes.causes import Verdict
from loopstat.probes.explain import Explainer, Seen, outermost_coroutine, running_task
from loopstat.probes.frames import Frame, Outer, blame, format_stack, loopstat_file, walk, where

log = logging.getLogger("loopstat.probes.stalls")  # the stall probe's logger, which users filter by


@dataclass(frozen=True)
class Stall:
    """One stall of an event loop: how long it made no progress and where it was stuck."""

    #: Milliseconds the loop made no progress.
    duration: float
    #: ``file:line in function`` of the innermost application frame, or None when
    #: the stall ended before the watchdog could look.
    location: Optional[str]
    #: The loop thread's stack while it was stuck, innermost call last ("" if not
    #: captured); at most ``STACK_BYTES``, deep stacks cut in the middle.
    stack: str
    #: ``time.time()`` when the stall ended.
    ended: float
    #: Why: ``cpu``, ``blocking_call``, ``gc``, ``throttled``, ``gil``, ``import``, ``scheduler`` or ``unknown``
    #: (``loopstat/probes/causes.py``).
    cause: str = "unknown"
    #: The figures behind the cause, as the log line says them.
    reason: str = ""
    #: ``task '<name>' <coroutine>`` of the task whose step blocked, ``coroutine <name>`` if it has ended
    #: since, None if the loop was not running a coroutine.
    task: Optional[str] = None


@dataclass(frozen=True)
class Capture:
    """What the watchdog saw of a stuck loop, ready to report."""

    #: The progress mark of the stall it belongs to.
    mark: float
    location: Optional[str]
    stack: str
    #: Stuck in loopstat's own code: not the application's stall.
    own: bool
    #: The signals read at the look, for the cause.
    seen: Optional[Seen] = None


def _thread_stack(
    thread_id: int, loop: asyncio.AbstractEventLoop, read: Callable[[], None]
) -> Tuple[List[Frame], bool, Optional[Tuple[int, str]]]:
    """The stack of a thread, innermost last, whether whole, and the task's coroutine on it (its frame's ``id()``,
    or on CPython 3.11 its task's); on CPython 3.11 ``read`` is called as soon as the stack is read."""
    # The frames are dropped before anything slow: held, they would keep the
    # loop's locals alive and make a deep stack slower to unwind.
    if stack_dump.DUMPED:  # no frame object of the loop's thread here: the task is asked of asyncio
        task: List[Optional[Tuple[int, str]]] = []

        def dumped() -> None:
            task.append(running_task(loop))
            read()

        frames, whole = _frames.thread_stack(thread_id, dumped)
        return frames, whole, task[0] if task else None
    try:
        top = _frames.current_frames().get(thread_id)
    except _frames.StacksUnreadable:
        frames, whole = _frames.thread_stack(thread_id)  # says why, once per process
        return frames, whole, None
    frames, whole = walk(top)
    return frames, whole, outermost_coroutine(top)


def capture_stack(
    mark: float, frames: Sequence[Frame], whole: bool, outer: Outer, seen: Optional[Seen] = None
) -> Capture:
    """What the thread that runs a stuck loop was doing, from its stack; called by the watchdog, off the loop.

    loopstat's own frames (a stand-in, a GC hook) are left out of the stack and
    the location: a stand-in shows as the call it passes on, made on the
    application's line.
    """
    named, own = blame(frames, whole, outer)
    stack = format_stack([f for f in frames if not loopstat_file(f[0])], whole)
    return Capture(mark, where(named), stack, own, seen)


def planned_look(mark: float, threshold: float, resting: bool, planned: float) -> float:
    """When the watchdog was due to look at a stall that began at ``mark``: by ``mark + threshold`` at the
    latest for a busy loop (``planned`` earlier, or -inf: at the wake-up), on its own plan for a resting beat."""
    due = mark + threshold
    if resting:
        return planned if math.isfinite(planned) else due
    return min(planned, due) if math.isfinite(planned) else mark


def read_signals(
    explainer: Optional[Explainer], coroutine: Optional[Tuple[int, str]], frames: List[Frame], late: float
) -> Optional[Seen]:
    """The signals of a stall, read by the watchdog at a look made ``late`` seconds after it was due."""
    if explainer is None:
        return None
    try:
        return explainer.seen(coroutine, frames, late)
    except Exception:  # the stall is reported without its cause
        log.debug("loopstat: could not read the signals of a stall", exc_info=True)
        return None


def stall_of(
    capture: Optional[Capture], mark: float, started: float, now: float, explainer: Optional[Explainer]
) -> Optional[Stall]:
    """The stall from ``started`` to ``now``, with what the watchdog captured of it if ``capture`` is of its
    ``mark``; None when the loop was stuck in loopstat's own code, which is no stall of the application's."""
    if capture is not None and capture.mark != mark:
        capture = None  # the watchdog could not look at this one
    duration = now - started
    if capture is not None and capture.own:
        log.debug(
            "loopstat: the event loop was blocked for %.0f ms in loopstat's own code at %s; "
            "not counted as a stall of the application",
            duration * 1000.0,
            capture.location,
        )
        return None
    if explainer is not None and capture is not None and capture.seen is None:
        # The watchdog looked (the stack was read) but the signals were not: not "ended before it could look".
        verdict, task = Verdict("unknown", "its signals could not be read"), None
    else:
        verdict, task = _explain(explainer, None if capture is None else capture.seen, started, now)
    location, stack = (None, "") if capture is None else (capture.location, capture.stack)
    return Stall(duration * 1000.0, location, stack, time.time(), verdict.cause, verdict.why, task)


def _explain(
    explainer: Optional[Explainer], seen: Optional[Seen], started: float, now: float
) -> Tuple[Verdict, Optional[str]]:
    """A stall's cause and task; ``unknown`` where they cannot be told."""
    if explainer is not None:
        try:
            return explainer.explain(seen, started, now)
        except Exception:  # a signal that reads oddly: the stall is reported all the same
            log.debug("loopstat: could not tell the cause of a stall", exc_info=True)
    return Verdict("unknown", ""), None
