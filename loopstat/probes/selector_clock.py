"""The selector clock: times a stdlib loop's waits for events; utilization and stalls both read it.

It takes the selector's ``select`` by making the selector an instance of a
subclass whose ``select`` times the waits. A class method, not an instance
attribute: the interpreter keeps calling it through its specialized,
inlined path, and a loop with callbacks ready (which polls with timeout 0,
once per turn, where it works hardest) pays one extra Python frame and a
comparison, nothing more.
"""

from __future__ import annotations

import asyncio
import selectors
from time import perf_counter
from types import MethodType
from typing import Any, Callable, List, Optional, Tuple

from loopstat._stand_in import StandIn

Events = List[Tuple[selectors.SelectorKey, int]]


class SelectorClock:
    """The waits of one stdlib loop's selector: how long in all, whether it waits now, when it last woke."""

    def __init__(self, selector: selectors.BaseSelector) -> None:
        #: Seconds spent waiting in the selector since the clock was attached.
        self.idle = 0.0
        #: ``perf_counter()`` when the loop last came out of a wait.
        self.woke = perf_counter()
        #: True while the loop waits in its selector (read by the stall watchdog).
        self.waiting = False
        #: Called on the loop's thread each time it comes out of a wait, with
        #: the events that woke it and the time it woke.
        self.on_wake: Optional[Callable[[Events, float], None]] = None
        self._selector = selector
        self._detached = False
        self._class: Optional[type] = None
        self._stand_in: Optional[StandIn] = None
        clock = self
        base = type(selector)
        # Another tool's wrapper set on the instance: ours goes around it, as an instance attribute too.
        inner: Callable[[Optional[float]], Events] = vars(selector).get("select") or MethodType(base.select, selector)

        def timed(timeout: Optional[float]) -> Events:
            if clock._detached:
                return inner(timeout)
            start = perf_counter()
            clock.waiting = True
            events: Events = []
            try:
                events = inner(timeout)
                return events
            finally:
                end = perf_counter()
                clock.waiting = False
                clock.idle += end - start
                clock.woke = end
                if clock.on_wake is not None:
                    clock.on_wake(events, end)

        if "select" in vars(selector):

            def select_attribute(timeout: Optional[float] = None) -> Events:
                return inner(0) if timeout == 0 else timed(timeout)

            self._stand_in = StandIn(selector, "select", select_attribute)
            return

        def select(self: selectors.BaseSelector, timeout: Optional[float] = None) -> Events:
            # A loop with callbacks ready polls: it is busy and waits for nothing.
            if timeout == 0:
                return base.select(self, 0)
            return timed(timeout)

        self._class = type(base.__name__, (base,), {"select": select, "__module__": base.__module__})
        try:
            selector.__class__ = self._class
        except TypeError:  # a selector whose layout forbids it: stand in on the instance
            self._class = None
            self._stand_in = StandIn(selector, "select", lambda timeout=None: select(selector, timeout))

    @classmethod
    def attach(cls, loop: asyncio.AbstractEventLoop) -> Optional[SelectorClock]:
        """Attach to ``loop`` if it waits in a selector it exposes (the stdlib's); else None.

        uvloop waits inside libuv, out of Python's reach.
        """
        selector: Any = getattr(loop, "_selector", None)
        if not isinstance(loop, asyncio.BaseEventLoop) or not isinstance(selector, selectors.BaseSelector):
            return None
        return cls(selector)

    def detach(self) -> None:
        """Give the selector back the ``select`` it had, another tool's wrapper included.

        If a tool wrapped ours after us (its own subclass, or a wrapper around
        the method), taking ours out would take theirs too: ours stays inside
        and only passes calls on.
        """
        self._detached = True
        self.on_wake = None
        if self._class is not None and type(self._selector) is self._class:
            self._selector.__class__ = self._class.__bases__[0]
        if self._stand_in is not None:
            self._stand_in.remove()
