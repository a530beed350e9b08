"""The selector clock: times a stdlib loop's waits for events; utilization and stalls both read it.

It puts in the loop's place a selector of a subclass of the loop's own,
sharing its state (epoll object, key map), whose ``select`` times the calls
that may wait. A class method, not an instance attribute, and a new object,
not a changed ``__class__``: the interpreter keeps calling it through its
specialized, inlined path. A loop with callbacks ready polls with timeout 0
once per turn, where it works hardest; that poll is not timed, and on Linux's
epoll the clock does it itself, in fewer instructions than the stdlib's
general path.
"""

from __future__ import annotations

import asyncio
import select
import selectors
from time import perf_counter
from types import MethodType
from typing import Any, Callable, Dict, List, Optional, Tuple

from loopstat._stand_in import ABSENT, StandIn, own_attribute

Events = List[Tuple[selectors.SelectorKey, int]]


def ready_of(fd_to_key: Dict[int, selectors.SelectorKey], polled: List[Tuple[int, int]]) -> Events:
    """What ``EpollSelector.select`` makes of ``epoll.poll()``'s events: (key, EVENT_READ | EVENT_WRITE) pairs."""
    ready = []
    for fd, event in polled:
        key = fd_to_key.get(fd)
        if key:
            # Anything but "readable" (writable, error, hang-up) wakes writers, anything but "writable" readers.
            events = (selectors.EVENT_WRITE if event & ~select.EPOLLIN else 0) | (
                selectors.EVENT_READ if event & ~select.EPOLLOUT else 0
            )
            ready.append((key, events & key.events))
    return ready


class SelectorClock:
    """The waits of one stdlib loop's selector: how long in all, whether it waits now, when it last woke."""

    def __init__(self, loop: asyncio.AbstractEventLoop, selector: selectors.BaseSelector) -> None:
        #: Seconds spent waiting in the selector since the clock was attached.
        self.idle = 0.0
        #: ``perf_counter()`` when the loop last came out of a wait.
        self.woke = perf_counter()
        #: True while the loop waits in its selector (read by the stall watchdog).
        self.waiting = False
        #: Called on the loop's thread each time it comes out of a wait, with
        #: the events that woke it and the time it woke.
        self.on_wake: Optional[Callable[[Events, float], None]] = None
        self._loop: Any = loop
        self._original = selector
        self._detached = False
        self._timed: Optional[selectors.BaseSelector] = None
        self._stand_in: Optional[StandIn] = None
        clock = self
        base = type(selector)
        theirs = own_attribute(selector, "select")
        inner: Callable[[Optional[float]], Events] = MethodType(base.select, selector) if theirs is ABSENT else theirs

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

        if theirs is not ABSENT or base.__dictoffset__ == 0:
            # Another tool's wrapper set on the selector: ours goes around it, on the instance too.
            def select_attribute(timeout: Optional[float] = None) -> Events:
                return inner(0) if timeout == 0 else timed(timeout)

            self._stand_in = StandIn(selector, "select", select_attribute)
            return

        # The base method bound as a default: read as a local, the cheapest lookup there is.
        def select(self: selectors.BaseSelector, timeout: Optional[float] = None, _base: Any = base.select) -> Events:
            # A loop with callbacks ready polls: it is busy and waits for nothing.
            if timeout == 0:
                return _base(self, 0)  # type: ignore[no-any-return]
            return timed(timeout)

        def epoll_select(self: Any, timeout: Optional[float] = None) -> Events:
            # Linux's default: the busy loop's poll is done here, one Python frame
            # (about 450 instructions) less on every turn than through the base method.
            if timeout == 0:
                try:
                    polled = self._selector.poll(0, len(self._fd_to_key) or 1)
                except InterruptedError:
                    return []
                return ready_of(self._fd_to_key, polled) if polled else []
            return timed(timeout)

        # A new selector of a subclass, sharing the original's state (its epoll
        # object and key map), in the loop's place. Not the original's class
        # changed in place: on Python 3.11+ that moves its attributes into a
        # dict and slows every access on the loop's hot path.
        own = epoll_select if base is getattr(selectors, "EpollSelector", None) else select
        cls = type(base.__name__, (base,), {"select": own, "__module__": base.__module__})
        timed_selector: selectors.BaseSelector = object.__new__(cls)
        for name, value in vars(selector).items():
            setattr(timed_selector, name, value)
        self._timed = timed_selector
        loop._selector = timed_selector  # type: ignore[attr-defined]

    @staticmethod
    def selector_of(loop: asyncio.AbstractEventLoop) -> Optional[selectors.BaseSelector]:
        """The selector ``loop`` waits in, if it exposes one (the stdlib's); else None.

        uvloop waits inside libuv, out of Python's reach.
        """
        selector: Any = getattr(loop, "_selector", None)
        if not isinstance(loop, asyncio.BaseEventLoop) or not isinstance(selector, selectors.BaseSelector):
            return None
        return selector

    @classmethod
    def attach(cls, loop: asyncio.AbstractEventLoop) -> Optional[SelectorClock]:
        """Attach to ``loop`` if it waits in a selector it exposes; else None."""
        selector = cls.selector_of(loop)
        return None if selector is None else cls(loop, selector)

    def detach(self) -> None:
        """Give the loop back the selector it had, another tool's wrapper included.

        If a tool wrapped ours after us (its own subclass, or a wrapper around
        the method), taking ours out would take theirs too: ours stays inside
        and only passes calls on.
        """
        self._detached = True
        self.on_wake = None
        timed = self._timed
        if timed is not None:
            untouched = type(timed).__bases__ == (type(self._original),) and own_attribute(timed, "select") is ABSENT
            if untouched and getattr(self._loop, "_selector", None) is timed:
                self._loop._selector = self._original
        if self._stand_in is not None:
            self._stand_in.remove()
