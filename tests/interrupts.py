"""Ctrl-C where it hurts: trace functions that raise KeyboardInterrupt at chosen points, as SIGINT's handler can."""

from __future__ import annotations

import asyncio
import gc
import inspect
import types
from typing import Any, Callable, List

from loopstat.probes import lag as _lag


def interrupting_at_the_call_of(code: types.CodeType) -> Callable[..., Any]:
    """A trace function that raises KeyboardInterrupt as ``code`` is first called, before its first line.

    A signal's handler runs at the interpreter's next check, and one comes as
    a Python function starts: a Ctrl-C can end a callback before it did anything.
    (Python removes a trace function that raises: it fires once.)
    """

    def tracer(frame: types.FrameType, event: str, arg: object) -> None:
        if event == "call" and frame.f_code is code:
            raise KeyboardInterrupt

    return tracer


def is_wakeup_of(handle: object, task: asyncio.Task[Any]) -> bool:
    callback = getattr(handle, "_callback", None)
    return callback is not None and task in gc.get_referents(callback)


def interrupt_after_taking_the_samplers_wakeup(loop: asyncio.AbstractEventLoop, wakeups: int) -> Callable[..., Any]:
    """A trace function that raises KeyboardInterrupt where a Ctrl-C can land, at the worst moment.

    SIGINT's handler raises at any bytecode boundary; this one picks the line of
    ``BaseEventLoop._run_once`` right after it took the sampler task's wake-up
    off the ready queue, before running it. The wake-up is lost: the sampler
    waits forever on a future that already finished.
    """
    seen = [0]
    last: List[object] = [None]

    def local(frame: types.FrameType, event: str, arg: object) -> Any:
        handle = frame.f_locals.get("handle")
        if event == "line" and handle is not None and handle is not last[0]:
            last[0] = handle
            sampler = next((t for t in asyncio.all_tasks(loop) if "Monitor._run" in repr(t.get_coro())), None)
            if sampler is not None and is_wakeup_of(handle, sampler):
                seen[0] += 1
                if seen[0] == wakeups:
                    raise KeyboardInterrupt
        return local

    def tracer(frame: types.FrameType, event: str, arg: object) -> Any:
        if event == "call" and frame.f_code.co_name == "_run_once":
            return local
        return None

    return tracer


def interrupting_the_sampler_after_its_sleep(wakeups: int) -> Callable[..., Any]:
    """A trace function that raises KeyboardInterrupt in the sampler's own code as it wakes for the ``wakeups``-th time.

    SIGINT's handler raises at the next bytecode boundary, wherever that is:
    here, in loopstat's coroutine rather than the application's.
    """
    code = _lag.Sleep.overshoot.__code__
    lines, first = inspect.getsourcelines(_lag.Sleep.overshoot)
    after_the_sleep = first + next(i for i, line in enumerate(lines) if "if self._revived:" in line)
    seen = [0]

    def local(frame: types.FrameType, event: str, arg: object) -> Any:
        if event == "line" and frame.f_lineno == after_the_sleep:
            seen[0] += 1
            if seen[0] == wakeups:
                raise KeyboardInterrupt
        return local

    def tracer(frame: types.FrameType, event: str, arg: object) -> Any:
        return local if event == "call" and frame.f_code is code else None

    return tracer
