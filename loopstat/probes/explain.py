"""Explain: a stall's cause and the task that waited, from what the watchdog saw and what the loop sees at its end.

The watchdog, when it looks at a stuck loop, reads the signals
(``signals.py``) and notes the stack's outermost coroutine: the task's own,
whose step blocked. The loop's thread, reporting the stall, reads the signals
again, hands the difference to the classifier (``causes.py``) and finds the
task among its loop's tasks: asking for tasks is safe only on the loop's own
thread. A task whose step was its last is done by then and no longer listed:
its coroutine is named alone.
"""

from __future__ import annotations

import asyncio
import inspect
from dataclasses import dataclass
from types import FrameType
from typing import Callable, Optional, Sequence, Tuple

from loopstat import _cgroup
from loopstat.probes import signals
from loopstat.probes.causes import During, Verdict, classify, importing
from loopstat.probes.frames import STACK_WALK, Frame

# Tasks looked through for the one that waited: a stall's report must stay cheap on a loop with very many.
MAX_TASKS = 10_000
# Frames of coroutines awaiting one another (an async generator's too, iterated with ``async for``).
_COROUTINE = inspect.CO_COROUTINE | inspect.CO_ITERABLE_COROUTINE | inspect.CO_ASYNC_GENERATOR


@dataclass(frozen=True)
class Seen:
    """What the watchdog read when it looked at a stuck loop."""

    reading: signals.Reading
    #: How late the look came: the loop's thread held the GIL meanwhile.
    kept_out: float
    importing: Optional[str]
    #: ``id()`` of the outermost coroutine frame on the stack (the task's; on CPython 3.11 the task), and its
    #: coroutine's name.
    coroutine: Optional[Tuple[int, str]]


def outermost_coroutine(frame: Optional[FrameType]) -> Optional[Tuple[int, str]]:
    """The coroutine a task runs, from the innermost frame: the outermost of the first run of coroutine frames.

    Awaiting coroutines call each other frame by frame; the task's own is the
    one whose caller is not a coroutine (the loop, running its step).
    """
    found: Optional[FrameType] = None
    for _ in range(STACK_WALK):
        if frame is None:
            break
        if frame.f_code.co_flags & _COROUTINE:
            found = frame
        elif found is not None:
            break
        frame = frame.f_back
    if found is None:
        return None
    code = found.f_code
    return id(found), getattr(code, "co_qualname", code.co_name)


def running_task(loop: asyncio.AbstractEventLoop) -> Optional[Tuple[int, str]]:
    """``id()`` of the task whose step the loop runs, and its coroutine's name; for the watchdog where it
    makes no frame object of the loop's thread (CPython 3.11)."""
    try:
        task = asyncio.current_task(loop)  # a look-up in asyncio's table of running tasks, by loop
        if task is None:
            return None
        coro = task.get_coro()
        return id(task), str(getattr(coro, "__qualname__", None) or type(coro).__qualname__)
    except Exception:  # a later asyncio may refuse from another thread: the stall goes without its task
        return None


def waiting_task(loop: asyncio.AbstractEventLoop, coroutine: Optional[Tuple[int, str]]) -> Optional[str]:
    """``'<task name>' <coroutine>`` of the task running ``coroutine``, or its coroutine alone; on the loop's thread."""
    if coroutine is None:
        return None
    frame_id, name = coroutine
    for count, task in enumerate(asyncio.all_tasks(loop)):
        if count >= MAX_TASKS:
            break
        coro = task.get_coro()
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if id(task) == frame_id or (frame is not None and id(frame) == frame_id):
            return f"task {task.get_name()!r} {name}"
    return f"coroutine {name}"


class Explainer:
    """Names the cause of each stall of one loop; ``learn`` on the loop's thread, ``seen`` on the watchdog's."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        blocked: Callable[[], Optional[float]],
        throttling: Optional[_cgroup.Throttling] = None,
        gc: bool = False,
    ) -> None:
        self._loop = loop
        self._signals = signals.Signals(blocked, throttling)
        #: The loop's thread, as learned on it.
        self.thread = signals.this_thread()
        self._closed = False
        # A Python gc callback is a place a Ctrl-C can land and be lost ("Exception ignored"): only with gc=True,
        # which asks for one anyway; without it a collection's stall is named by what else was seen (cpu).
        self._gc = gc
        if gc:
            signals.watch_gc()

    def learn(self) -> None:
        """Called on the loop's thread when it may have changed."""
        self.thread = signals.this_thread()

    def seen(self, coroutine: Optional[Tuple[int, str]], frames: Sequence[Frame], late: float) -> Seen:
        """Called by the watchdog after it read the stack of a stuck loop (``frames``, the task's ``coroutine``);
        ``late``: how long after it was due the look came."""
        return Seen(self._signals.read(self.thread), max(0.0, late), importing(frames), coroutine)

    def explain(self, seen: Optional[Seen], started: float, now: float) -> Tuple[Verdict, Optional[str]]:
        """The cause of the stall from ``started`` to ``now`` and the task that waited; on the loop's thread."""
        gc = signals.gc_between(started, now)
        if seen is None:
            return classify(During(now - started, gc=gc)), None
        first, then = seen.reading, self._signals.read(self.thread)
        cpu = signals.between(first.cpu, then.cpu)
        process = signals.between(first.process_cpu, then.process_cpu)
        during = During(
            duration=now - started,
            wall=max(0.0, then.at - first.at),
            kept_out=seen.kept_out,
            gc=gc,
            cpu=cpu,
            run_delay=signals.between(first.run_delay, then.run_delay),
            others_cpu=None if cpu is None or process is None else max(0.0, process - cpu),
            throttled=signals.between(first.throttled, then.throttled),
            blocked=signals.between(first.blocked, then.blocked),
            importing=seen.importing,
        )
        return classify(during), waiting_task(self._loop, seen.coroutine)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._gc:
                signals.unwatch_gc()
