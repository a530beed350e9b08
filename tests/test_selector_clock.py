"""The selector clock on every selector it may meet: one state with the selector, the stdlib's results,
and the stdlib's own method wherever its assumptions do not hold; loopstat's own faults never reach the loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import select
import selectors
import socket
import sys
import types
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Type

import pytest
import uvloop

import loopstat
from loopstat.probes import selector_clock
from loopstat.probes.selector_clock import SelectorClock
from tests import inside
from tests.receiver import Receiver

# Every stdlib selector class this platform has.
STDLIB_SELECTORS: List[Type[selectors.BaseSelector]] = [
    getattr(selectors, name)
    for name in ("SelectSelector", "PollSelector", "EpollSelector", "DevpollSelector", "KqueueSelector")
    if hasattr(selectors, name)
]
ROUND_TRIPS = 200


def own_log(caplog: pytest.LogCaptureFixture) -> List[str]:
    """loopstat's warnings about itself; not the stall probe's reports of the application's stalls, which a loaded
    machine makes (the process kept off the CPU for 200 ms is a stall of the app's)."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("loopstat")
        and r.levelno >= logging.WARNING
        and not r.getMessage().startswith("loopstat: the event loop was blocked for")
    ]


@pytest.fixture
def pairs() -> Iterator[List[Tuple[socket.socket, socket.socket]]]:
    made = [socket.socketpair() for _ in range(5)]
    yield made
    for a, b in made:
        a.close()
        b.close()


# One state, whatever the selector rebinds.


class Counting:
    """A selector that keeps its own count of registrations, rebinding it (as 3.11+'s ``KqueueSelector``
    rebinds ``_max_events``), and refuses to select on a count that went wrong."""

    _count: int

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        key: selectors.SelectorKey = super().register(fileobj, events, data)  # type: ignore[misc]
        self._count += 1
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        key: selectors.SelectorKey = super().unregister(fileobj)  # type: ignore[misc]
        self._count -= 1
        return key

    def select(self, timeout: Optional[float] = None) -> Any:
        if self._count != len(self.get_map()):  # type: ignore[attr-defined]
            raise ValueError(f"count {self._count} for {len(self.get_map())} registered")  # type: ignore[attr-defined]
        return super().select(timeout)  # type: ignore[misc]


def counting_selector(base: Type[selectors.BaseSelector]) -> selectors.BaseSelector:
    cls = type(f"Counting{base.__name__}", (Counting, base), {})
    selector: Any = cls()
    selector._count = 0
    return selector  # type: ignore[no-any-return]


def register_monitored_unregister_after(loop: asyncio.AbstractEventLoop, pairs: List[Any]) -> None:
    """Register five readers while monitored, stop, unregister them: the loop must still run."""
    selector = loop._selector  # type: ignore[attr-defined]
    monitor = loopstat.install("127.0.0.1", 9, interval=0.01, loop=loop)
    loop.run_until_complete(asyncio.sleep(0.03))
    assert loop._selector is not selector  # type: ignore[attr-defined]
    for a, _ in pairs:
        loop.add_reader(a, lambda: None)
    loop.run_until_complete(asyncio.sleep(0.01))
    loop.run_until_complete(monitor.stop())
    for a, _ in pairs:
        assert loop.remove_reader(a)
    loop.run_until_complete(asyncio.sleep(0.01))


@pytest.mark.parametrize("base", STDLIB_SELECTORS, ids=lambda cls: cls.__name__)
def test_every_stdlib_selector_keeps_one_state_across_attach_and_stop(
    base: Type[selectors.BaseSelector], pairs: List[Any]
) -> None:
    selector = base()
    loop = asyncio.SelectorEventLoop(selector)
    try:
        before = dict(vars(selector))
        register_monitored_unregister_after(loop, pairs)
        assert loop._selector is selector  # type: ignore[attr-defined]
        assert len(selector.get_map()) == 1  # the loop's own self-pipe, as before
        for name, value in before.items():
            if isinstance(value, int):
                assert getattr(selector, name) == value, name  # KqueueSelector's _max_events back where it was
    finally:
        loop.close()


@pytest.mark.parametrize("base", STDLIB_SELECTORS, ids=lambda cls: cls.__name__)
def test_a_selector_that_rebinds_a_counter_counts_right_after_registering_while_monitored(
    base: Type[selectors.BaseSelector], pairs: List[Any]
) -> None:
    selector: Any = counting_selector(base)
    loop = asyncio.SelectorEventLoop(selector)
    try:
        register_monitored_unregister_after(loop, pairs)
        assert selector._count == len(selector.get_map()) == 1
        assert loop.run_until_complete(asyncio.sleep(0.01, "ran")) == "ran"
    finally:
        loop.close()


# The epoll poll against the stdlib's.


def test_the_epoll_fast_path_applies_on_this_python_and_returns_exactly_what_the_stdlib_returns(
    pairs: List[Any],
) -> None:
    """Real sockets in every readiness state; the same list, in the same order, with the same keys."""
    if not hasattr(selectors, "EpollSelector"):
        pytest.skip("epoll is Linux's")
    selector = selectors.EpollSelector()
    holder = types.SimpleNamespace(_selector=selector)  # stands for the loop that holds the selector
    try:
        assert selector_clock.epoll_fast_path_fits(selector), f"checked against Python {sys.version_info[:2]}"
        clock = SelectorClock(holder, selector)  # type: ignore[arg-type]
        timed = holder._selector
        assert type(timed).select.__name__ == "epoll_select"

        def same() -> List[Any]:
            ours, theirs = timed.select(0), selectors.EpollSelector.select(selector, 0)
            assert ours == theirs
            assert [key for key, _ in ours] == [key for key, _ in theirs]
            return ours  # type: ignore[no-any-return]

        assert same() == []  # nothing registered
        quiet, readable, hung_up, reader_only, writer_only = pairs
        for a in (quiet[0], readable[0], hung_up[0]):
            selector.register(a, selectors.EVENT_READ | selectors.EVENT_WRITE, data=a.fileno())
        selector.register(reader_only[0], selectors.EVENT_READ)
        selector.register(writer_only[0], selectors.EVENT_WRITE)
        assert len(same()) == 4  # writable only, for those with write interest
        readable[1].send(b"x")
        reader_only[1].send(b"y")
        writer_only[1].send(b"z")
        hung_up[1].shutdown(socket.SHUT_RDWR)
        ready = dict((key.fd, mask) for key, mask in same())
        assert ready[readable[0].fileno()] == selectors.EVENT_READ | selectors.EVENT_WRITE
        assert ready[reader_only[0].fileno()] == selectors.EVENT_READ
        assert ready[writer_only[0].fileno()] == selectors.EVENT_WRITE
        assert ready[hung_up[0].fileno()] == selectors.EVENT_READ | selectors.EVENT_WRITE
        selector.modify(readable[0], selectors.EVENT_READ, data="changed")
        selector.unregister(quiet[0])
        assert len(same()) == 4
        assert clock.idle == 0.0, "a poll is not a wait"
        clock.detach()
        assert holder._selector is selector
    finally:
        selector.close()


def test_the_fast_path_is_declined_where_its_assumptions_do_not_hold(monkeypatch: pytest.MonkeyPatch) -> None:
    if not hasattr(selectors, "EpollSelector"):
        pytest.skip("epoll is Linux's")

    class Mine(selectors.EpollSelector):
        pass

    selector: Any = selectors.EpollSelector()
    other = Mine()
    try:
        assert selector_clock.epoll_fast_path_fits(selector)
        assert not selector_clock.epoll_fast_path_fits(other), "an unknown class"
        monkeypatch.setattr(selector, "_fd_to_key", types.MappingProxyType({}))
        assert not selector_clock.epoll_fast_path_fits(selector), "a key map that is not a dict"
        monkeypatch.undo()
        monkeypatch.setattr(sys, "version_info", (3, 16, 0, "final", 0))
        assert not selector_clock.epoll_fast_path_fits(selector), "a version it was not checked against"
        monkeypatch.undo()
        monkeypatch.setattr(selector_clock, "EPOLL_CHECKED_SHAPES", frozenset())
        assert not selector_clock.epoll_fast_path_fits(selector), "a stdlib method of another shape"
    finally:
        selector.close()
        other.close()


# A real application on selectors loopstat does not know, or whose internals changed.


async def echo_app() -> List[str]:
    """The application: a server and a client on loopback, ROUND_TRIPS lines each way, some timers."""
    got: List[str] = []
    served = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            writer.write(line.upper())
            await writer.drain()
        writer.close()
        await writer.wait_closed()
        served.set()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for i in range(ROUND_TRIPS):
        writer.write(f"line {i}\n".encode())
        got.append((await reader.readline()).decode())
        if i % 50 == 0:
            await asyncio.sleep(0.02)  # the loop waits: the clock times it
            for _ in range(20):
                await asyncio.sleep(0)  # a callback always ready: the loop polls without waiting
    writer.close()
    await writer.wait_closed()
    await served.wait()
    server.close()
    await server.wait_closed()
    return got


def run_app(
    make_selector: Callable[[], selectors.BaseSelector],
    receiver: Optional[Receiver],
    attached: Callable[[], None] = lambda: None,
) -> List[str]:
    """The application on a loop with that selector; monitored (``attached`` called once the clock is in place)
    if there is a receiver."""
    loop = asyncio.SelectorEventLoop(make_selector())
    try:
        if receiver is None:
            return loop.run_until_complete(echo_app())

        async def monitored() -> List[str]:
            async with loopstat.install("127.0.0.1", receiver.port, interval=0.01):
                await receiver.wait_count("loopstat.lag", "ms", 1, timeout=30)
                attached()
                result = await echo_app()
                await receiver.wait_count("loopstat.tasks", "g", 3, timeout=30)
                await receiver.wait_count("loopstat.lag", "ms", 3, timeout=30)
                return result

        return loop.run_until_complete(monitored())
    finally:
        loop.close()


class LaterEpollSelector(selectors.BaseSelector):
    """What a later Python's ``EpollSelector`` may look like: the same behaviour, its key map under another
    name (``_keys``), no ``_fd_to_key`` at all, and a ``select`` of another shape."""

    def __init__(self) -> None:
        self._selector = select.epoll()
        self._keys: Dict[int, selectors.SelectorKey] = {}

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        key = selectors.SelectorKey(fileobj, fd, events, data)
        if fd in self._keys:
            raise KeyError(f"{fileobj!r} is already registered")
        mask = (select.EPOLLIN if events & selectors.EVENT_READ else 0) | (
            select.EPOLLOUT if events & selectors.EVENT_WRITE else 0
        )
        self._selector.register(fd, mask)
        self._keys[fd] = key
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        key = self._keys.pop(fd)
        with contextlib.suppress(OSError):  # closed since it was registered
            self._selector.unregister(fd)
        return key

    def select(self, timeout: Optional[float] = None) -> List[Tuple[selectors.SelectorKey, int]]:
        wait = -1.0 if timeout is None else max(0.0, math.ceil(timeout * 1e3) * 1e-3)
        ready = []
        for fd, event in self._selector.poll(wait, max(len(self._keys), 1)):
            key = self._keys.get(fd)
            if key:
                mask = (selectors.EVENT_WRITE if event & ~select.EPOLLIN else 0) | (
                    selectors.EVENT_READ if event & ~select.EPOLLOUT else 0
                )
                ready.append((key, mask & key.events))
        return ready

    def get_map(self) -> Any:
        return types.MappingProxyType({key.fileobj: key for key in self._keys.values()})

    def close(self) -> None:
        self._selector.close()
        self._keys.clear()

    def fileno(self) -> int:
        return self._selector.fileno()


@pytest.fixture
def later_python(monkeypatch: pytest.MonkeyPatch) -> Type[selectors.BaseSelector]:
    """``selectors.EpollSelector`` is the later Python's."""
    if not hasattr(select, "epoll"):
        pytest.skip("epoll is Linux's")
    monkeypatch.setattr(selectors, "EpollSelector", LaterEpollSelector)
    return LaterEpollSelector


def test_a_later_epoll_selector_with_its_key_map_renamed_gets_its_own_method_and_the_app_runs_as_without(
    later_python: Type[selectors.BaseSelector], receiver: Receiver, loopstat_log: pytest.LogCaptureFixture
) -> None:
    expected = run_app(later_python, None)
    assert expected == [f"LINE {i}\n" for i in range(ROUND_TRIPS)]
    assert run_app(later_python, receiver) == expected
    assert receiver.values("loopstat.utilization", "g"), "timed through its own select"
    assert own_log(loopstat_log) == []


def test_a_fast_path_that_fails_at_run_time_hands_the_call_to_the_selector_and_detaches_with_one_warning(
    later_python: Type[selectors.BaseSelector],
    receiver: Receiver,
    loopstat_log: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Were the checks at attach to miss the change: the first busy poll fails inside the clock's copy."""
    expected = run_app(later_python, None)
    monkeypatch.setattr(selector_clock, "epoll_fast_path_fits", lambda selector: True)
    assert run_app(later_python, receiver) == expected
    warnings = own_log(loopstat_log)
    assert len(warnings) == 1
    assert "selector clock stopped after a fault of its own (AttributeError(" in warnings[0]


@pytest.mark.parametrize("base", STDLIB_SELECTORS, ids=lambda cls: cls.__name__)
def test_an_unknown_selector_class_is_timed_through_its_own_select(
    base: Type[selectors.BaseSelector], receiver: Receiver, loopstat_log: pytest.LogCaptureFixture
) -> None:
    polls: List[float] = []

    class Unknown(base):  # type: ignore[valid-type,misc]
        def select(self, timeout: Optional[float] = None) -> Any:
            if timeout == 0:
                polls.append(timeout)
            return super().select(timeout)

    expected = run_app(Unknown, None)
    assert run_app(Unknown, receiver, polls.clear) == expected
    assert len(polls) > 20, "every call, the busy loop's polls too, went through its own select"
    assert receiver.values("loopstat.utilization", "g")
    assert own_log(loopstat_log) == []


def test_a_fault_while_timing_a_wait_detaches_the_clock_with_one_warning_and_the_other_metrics_go_on(
    receiver: Receiver, loopstat_log: pytest.LogCaptureFixture
) -> None:
    expected = run_app(selectors.DefaultSelector, None)
    loop = asyncio.new_event_loop()
    try:

        async def monitored() -> List[str]:
            async with loopstat.install("127.0.0.1", receiver.port, interval=0.01) as monitor:
                await asyncio.sleep(0.05)
                clock = inside.selector_clock(monitor)
                assert clock is not None

                def broken(events: Any, end: float) -> None:
                    raise RuntimeError("broken")

                clock.on_wake = broken
                result = await echo_app()
                assert clock.broken
                assert monitor.utilization is None
                sent = len(receiver.values("loopstat.lag", "ms"))
                await receiver.wait_count("loopstat.lag", "ms", sent + 3, timeout=30)
                await receiver.wait_count("loopstat.tasks", "g", 3, timeout=30)
                return result

        assert loop.run_until_complete(monitored()) == expected
    finally:
        loop.close()
    warnings = own_log(loopstat_log)
    assert len(warnings) == 1
    assert "RuntimeError('broken')" in warnings[0]


# The close guard.


@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
def test_a_fault_in_the_close_guard_still_closes_the_loop_with_one_warning(
    loop_name: str, receiver: Receiver, monkeypatch: pytest.MonkeyPatch, loopstat_log: pytest.LogCaptureFixture
) -> None:
    loop = uvloop.new_event_loop() if loop_name == "uvloop" else asyncio.new_event_loop()
    monitor = loopstat.install("127.0.0.1", receiver.port, interval=0.01, loop=loop)
    loop.run_until_complete(asyncio.sleep(0.03))

    def broken() -> None:
        raise RuntimeError("broken")

    inside.on_loop_close_instead(monkeypatch, monitor, broken)
    loop.close()
    assert loop.is_closed()
    loop.close()  # again, as the original allows
    warnings = own_log(loopstat_log)
    assert len(warnings) == 1
    assert "RuntimeError('broken')" in warnings[0]
    monkeypatch.undo()
    inside.shutdown(monitor)


def test_a_selector_with_state_in_slots_is_timed_on_the_instance_with_its_state_whole(
    receiver: Receiver, loopstat_log: pytest.LogCaptureFixture
) -> None:
    class Slotted(selectors.BaseSelector):
        """A selector keeping its state in a slot, which a second object could not share."""

        __slots__ = ("_inner",)

        def __init__(self) -> None:
            self._inner = selectors.DefaultSelector()

        def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
            return self._inner.register(fileobj, events, data)

        def unregister(self, fileobj: Any) -> selectors.SelectorKey:
            return self._inner.unregister(fileobj)

        def select(self, timeout: Optional[float] = None) -> Any:
            return self._inner.select(timeout)

        def get_map(self) -> Any:
            return self._inner.get_map()

        def close(self) -> None:
            self._inner.close()

    expected = run_app(Slotted, None)
    assert run_app(Slotted, receiver) == expected
    assert receiver.values("loopstat.utilization", "g")
    assert own_log(loopstat_log) == []
