"""Ctrl-C where it hurts: trace functions that raise KeyboardInterrupt at chosen points, as SIGINT's handler can."""

from __future__ import annotations

import asyncio
import inspect
import sys
import types
from typing import Any, Awaitable, Callable, Optional

import pytest

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


def is_sampler_timer(handle: object) -> bool:
    """A timer of a loopstat sampler that is still to run (not cancelled)."""
    callback = getattr(handle, "_callback", None)
    cancelled = getattr(handle, "cancelled", lambda: True)()
    return getattr(callback, "__func__", None) is _lag.Sampler._fire and not cancelled


def interrupt_after_taking_the_samplers_timer(wakeups: int) -> Callable[..., Any]:
    """A trace function that raises KeyboardInterrupt where a Ctrl-C can land, at the worst moment.

    SIGINT's handler raises at any bytecode boundary; this one picks the line of
    ``BaseEventLoop._run_once`` right after it took a sampler timer off the
    ready queue, before running it, at the ``wakeups``-th one: that timer is lost.
    """
    lines, first = inspect.getsourcelines(asyncio.base_events.BaseEventLoop._run_once)  # type: ignore[attr-defined]
    taken = first + next(i for i, line in enumerate(lines) if "self._ready.popleft()" in line)
    seen = [0]

    def local(frame: types.FrameType, event: str, arg: object) -> Any:
        if event == "line" and frame.f_lineno == taken + 1 and is_sampler_timer(frame.f_locals.get("handle")):
            seen[0] += 1
            if seen[0] == wakeups:
                raise KeyboardInterrupt
        return local

    def tracer(frame: types.FrameType, event: str, arg: object) -> Any:
        if event == "call" and frame.f_code.co_name == "_run_once":
            return local
        return None

    return tracer


def interrupting_the_sampler_as_it_samples(wakeups: int) -> Callable[..., Any]:
    """A trace function that raises KeyboardInterrupt in the sampler's own code as it fires for the ``wakeups``-th time.

    SIGINT's handler raises at the next bytecode boundary, wherever that is:
    here, in loopstat's callback rather than the application's, once it armed the next timers.
    """
    code = _lag.Sampler._fire.__code__
    lines, first = inspect.getsourcelines(_lag.Sampler._fire)
    sampling = first + next(i for i, line in enumerate(lines) if "self._on_time(" in line)
    seen = [0]

    def local(frame: types.FrameType, event: str, arg: object) -> Any:
        if event == "line" and frame.f_lineno == sampling:
            seen[0] += 1
            if seen[0] == wakeups:
                raise KeyboardInterrupt
        return local

    def tracer(frame: types.FrameType, event: str, arg: object) -> Any:
        return local if event == "call" and frame.f_code is code else None

    return tracer


def interrupted(loop: asyncio.AbstractEventLoop, tracer: Optional[Callable[..., Any]], main: Awaitable[Any]) -> None:
    """Run ``main`` on ``loop`` with the trace function ``tracer`` set until the KeyboardInterrupt it raises comes out
    of ``run_until_complete()``, as it reaches an application; fails if none does."""
    sys.settrace(tracer)
    try:
        with pytest.raises(KeyboardInterrupt):
            loop.run_until_complete(main)
    finally:
        sys.settrace(None)
