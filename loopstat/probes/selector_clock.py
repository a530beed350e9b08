"""The selector clock: times a stdlib loop's waits for events; utilization and stalls both read it.

It puts in the loop's place a selector of a subclass of the loop's own, with
the very same attribute dictionary (one state, whatever either object
rebinds), whose ``select`` times the calls that may wait. A class method, not
an instance attribute, and a new object, not a changed ``__class__``: the
interpreter keeps calling it through its specialized path. A loop with
callbacks ready polls with timeout 0 once per turn, where it works hardest;
that poll is not timed, and on Linux's epoll, on the Pythons whose
``EpollSelector.select`` it was checked against, the clock does it itself, in
fewer instructions than the stdlib's general path.

What it assumes is checked when it attaches; anything unexpected in its own
work later hands that call to the selector's own method and detaches the clock
for good, with one warning: utilization and the selector's part of stall
detection stop, the loop runs on as without loopstat.
"""

from __future__ import annotations

import asyncio
import logging
import select
import selectors
import sys
from time import perf_counter
from types import MethodType
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Protocol, Tuple

from loopstat._stand_in import ABSENT, StandIn, own_attribute

log = logging.getLogger(__name__)

Events = List[Tuple[selectors.SelectorKey, int]]


class Waits(Protocol):
    """What the stall watch reads of a loop's waits: a ``SelectorClock`` (tests stand in for it on virtual time)."""

    woke: float
    waiting: bool
    on_wake: Optional[Callable[[Events, float], None]]
    on_poll: Optional[Callable[[], None]]


# The epoll poll below is a copy of ``selectors.EpollSelector.select``'s work for timeout 0, checked
# against CPython 3.9 to 3.13: used only on those versions (and 3.14, 3.15 when their method has the
# same shape), on a selector of exactly that class. The names each checked version's method uses
# (its ``co_names``): another shape means the stdlib changed it, and the clock uses the stdlib's.
EPOLL_CHECKED_VERSIONS: FrozenSet[Tuple[int, int]] = frozenset((3, minor) for minor in range(9, 16))
EPOLL_CHECKED_SHAPES: FrozenSet[Tuple[str, ...]] = frozenset(
    {
        # 3.9 to 3.12: the key through ``self._key_from_fd(fd)`` (``self._fd_to_key.get`` in effect).
        (
            "math", "ceil", "max", "len", "_fd_to_key", "_selector", "poll", "InterruptedError", "select",
            "EPOLLIN", "EVENT_WRITE", "EPOLLOUT", "EVENT_READ", "_key_from_fd", "append", "events",
        ),
        # 3.13: ``_key_from_fd`` gone, ``self._fd_to_key.get(fd)`` inline.
        (
            "math", "ceil", "len", "_fd_to_key", "_selector", "poll", "InterruptedError", "get",
            "_NOT_EPOLLIN", "EVENT_WRITE", "_NOT_EPOLLOUT", "EVENT_READ", "append", "events",
        ),
    }
)  # fmt: skip


def ready_of(fd_to_key: Dict[int, selectors.SelectorKey], polled: List[Tuple[int, int]]) -> Events:
    """What ``EpollSelector.select`` makes of ``epoll.poll()``'s events: (key, EVENT_READ | EVENT_WRITE) pairs.

    Copied from the stdlib's ``EpollSelector.select`` (see ``EPOLL_CHECKED_VERSIONS``).
    """
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


def epoll_fast_path_fits(selector: selectors.BaseSelector) -> bool:
    """Whether the clock may poll ``selector`` itself: a stdlib ``EpollSelector`` as checked, its state as the
    stdlib's code reads it (an ``epoll`` in ``_selector``, a dict in ``_fd_to_key``)."""
    epoll_class = getattr(selectors, "EpollSelector", None)
    if epoll_class is None or type(selector) is not epoll_class:
        return False
    code = getattr(getattr(epoll_class, "select", None), "__code__", None)
    return (
        sys.version_info[:2] in EPOLL_CHECKED_VERSIONS
        and getattr(code, "co_names", None) in EPOLL_CHECKED_SHAPES
        and isinstance(getattr(selector, "_selector", None), select.epoll)
        and type(getattr(selector, "_fd_to_key", None)) is dict
    )


def _state_in_dict(cls: type) -> bool:
    """Whether instances of ``cls`` keep all their state in their ``__dict__`` (no slots of their own)."""
    if cls.__dictoffset__ == 0:
        return False
    for klass in cls.__mro__:
        slots = vars(klass).get("__slots__", ())
        if any(name not in ("__dict__", "__weakref__") for name in ((slots,) if isinstance(slots, str) else slots)):
            return False
    return True


class SelectorClock:
    """The waits of one stdlib loop's selector: how long in all, whether it waits now, when it last woke."""

    def __init__(self, loop: asyncio.AbstractEventLoop, selector: selectors.BaseSelector) -> None:
        #: Seconds spent waiting in the selector since the clock was attached.
        self.idle = 0.0
        #: ``perf_counter()`` when the loop last came out of a wait.
        self.woke = perf_counter()
        #: True while the loop waits in its selector (read by the stall watchdog); True for good once
        #: the clock broke, so that nothing counts a stall against a clock that stopped.
        self.waiting = False
        #: True once a fault of the clock's own detached it: its readings stopped.
        self.broken = False
        #: ``perf_counter()`` when the loop last came back from its selector (a wait or a busy poll): its turn began.
        self.turn = self.woke
        #: The longest turn since ``take_longest()``: seconds the loop ran without returning to its selector.
        self.longest = 0.0
        #: Called on the loop's thread each time it comes out of a wait, with
        #: the events that woke it and the time it woke.
        self.on_wake: Optional[Callable[[Events, float], None]] = None
        #: Set while the stall watchdog sleeps: called on the loop's thread at its next busy poll.
        self.on_poll: Optional[Callable[[], None]] = None
        self._loop: Any = loop
        self._original = selector
        self._detached = False
        self._timed: Optional[selectors.BaseSelector] = None
        self._stand_in: Optional[StandIn] = None
        self._class: Any = None
        clock = self
        base = type(selector)
        theirs = own_attribute(selector, "select")
        inner: Callable[[Optional[float]], Events] = MethodType(base.select, selector) if theirs is ABSENT else theirs

        def timed(timeout: Optional[float]) -> Events:
            if clock._detached:
                return inner(timeout)
            start = perf_counter()
            if start - clock.turn > clock.longest:
                clock.longest = start - clock.turn
            clock.waiting = True
            events: Events = []
            try:
                events = inner(timeout)
                return events
            finally:
                # The selector's own exceptions go through as they are; a fault here detaches the clock.
                try:
                    end = perf_counter()
                    clock.waiting = False
                    clock.idle += end - start
                    clock.woke = clock.turn = end
                    if clock.on_wake is not None:
                        clock.on_wake(events, end)
                except Exception as error:
                    clock._break(error)

        if theirs is not ABSENT or not _state_in_dict(base):
            # Another tool's wrapper set on the selector, or state a second object could not share
            # (slots): ours goes around it, on the instance.
            def select_attribute(timeout: Optional[float] = None) -> Events:
                if timeout == 0:
                    clock.turned()
                    return inner(0)
                return timed(timeout)

            self._stand_in = StandIn(selector, "select", select_attribute)
            return

        # The base method bound as a default: read as a local, the cheapest lookup there is.
        def select(
            self: selectors.BaseSelector,
            timeout: Optional[float] = None,
            _base: Any = base.select,
            _now: Any = perf_counter,
        ) -> Events:
            # A loop with callbacks ready polls: it is busy and waits for nothing. Its turn ends here.
            if timeout == 0:
                now = _now()
                if now - clock.turn > clock.longest:
                    clock.longest = now - clock.turn
                clock.turn = now
                if clock.on_poll is not None:
                    clock.polled()
                return _base(self, 0)  # type: ignore[no-any-return]
            return timed(timeout)

        def epoll_select(self: Any, timeout: Optional[float] = None, _now: Any = perf_counter) -> Events:
            # Linux's default: the busy loop's poll is done here, one Python frame
            # (about 450 instructions) less on every turn than through the base method.
            if timeout == 0:
                # A turn ends (the poll itself takes microseconds): the longest since the last sample is P.iteration.
                now = _now()
                if now - clock.turn > clock.longest:
                    clock.longest = now - clock.turn
                clock.turn = now
                if clock.on_poll is not None:
                    clock.polled()
                try:
                    polled = self._selector.poll(0, len(self._fd_to_key) or 1)
                    return ready_of(self._fd_to_key, polled) if polled else []
                except InterruptedError:
                    return []
                except Exception as error:
                    return clock._poll_failed(self, error)
            return timed(timeout)

        own = epoll_select if epoll_fast_path_fits(selector) else select
        cls = type(base.__name__, (base,), {"select": own, "__module__": base.__module__})
        self._class = cls
        timed_selector: selectors.BaseSelector = object.__new__(cls)
        # One state for both objects: an attribute either one rebinds (KqueueSelector's
        # _max_events, a subclass's counters) is rebound for both. A fresh dict, not the
        # original's own: that one shares its keys with its class's other instances, and
        # reads through another class's object would not be specialized (about +250 instructions each).
        state = dict(selector.__dict__)
        selector.__dict__ = state
        timed_selector.__dict__ = state
        self._timed = timed_selector
        loop._selector = timed_selector  # type: ignore[attr-defined]

    def turned(self) -> None:
        """A busy poll: the loop's turn ends and the next begins (the hot paths above do this inline)."""
        now = perf_counter()
        if now - self.turn > self.longest:
            self.longest = now - self.turn
        self.turn = now
        if self.on_poll is not None:
            self.polled()

    def polled(self) -> None:
        """A busy poll while the stall watchdog sleeps: tell it, once. Never raises."""
        on_poll, self.on_poll = self.on_poll, None
        try:
            if on_poll is not None:
                on_poll()
        except Exception as error:
            self._break(error)

    def take_longest(self) -> float:
        """The longest turn, in seconds, since the previous call (or the attach); a new maximum starts."""
        longest, self.longest = self.longest, 0.0
        return longest

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
        """Attach to ``loop`` if it waits in a selector it exposes and that takes the clock; else None."""
        selector = cls.selector_of(loop)
        if selector is None:
            return None
        try:
            return cls(loop, selector)
        except Exception as error:  # a selector that refuses both ways of timing it (no attributes of its own)
            log.warning("loopstat: the waits of %r cannot be timed (%r): no utilization", selector, error)
            return None

    def _poll_failed(self, selector: selectors.BaseSelector, error: Exception) -> Events:
        """The clock's own poll failed: the selector's method does this call; if it works, the fault was ours."""
        events: Events = type(self._original).select(selector, 0)  # its own exception, if any, is the application's
        self._break(error)
        return events

    def _break(self, error: Exception) -> None:
        """Detach for good after a fault of the clock's own; one warning. Never raises."""
        if self.broken:
            return
        self.broken = True
        self.waiting = True
        self.on_wake = self.on_poll = None
        try:
            log.warning(
                "loopstat: the selector clock stopped after a fault of its own (%r); utilization and the "
                "selector's part of stall detection stop, the other metrics go on",
                error,
            )
            self.detach()
            if self._timed is not None:
                # Taken out or not (another tool may hold ours), its select is the selector's own from now.
                self._class.select = type(self._original).select
        except Exception:
            log.debug("loopstat: could not detach the selector clock", exc_info=True)

    def detach(self) -> None:
        """Give the loop back the selector it had, another tool's wrapper included.

        If a tool wrapped ours after us (its own subclass, or a wrapper around
        the method), taking ours out would take theirs too: ours stays inside
        and only passes calls on.
        """
        self._detached = True
        self.on_wake = self.on_poll = None
        timed = self._timed
        if timed is not None:
            untouched = type(timed).__bases__ == (type(self._original),) and own_attribute(timed, "select") is ABSENT
            if untouched and getattr(self._loop, "_selector", None) is timed:
                self._loop._selector = self._original
        if self._stand_in is not None:
            self._stand_in.remove()
