"""Utilization: the share of time the loop runs callbacks, timed at the selector of stdlib loops."""

from __future__ import annotations

import asyncio
import selectors
import socket
import statistics
import time
import types
from typing import Any, Optional, Tuple

import pytest

import loopstat
from loopstat.probes.selector_clock import SelectorClock
from tests.machine import runqueue_seconds
from tests.receiver import Receiver


async def duty_cycle(busy_share: float, seconds: float, period: float = 0.02) -> Tuple[float, float, float]:
    """Keep the loop busy for ``busy_share`` of each period; return the busy share really achieved,
    in wall time and in the thread's CPU time (less, when other processes take the core), and the
    share of wall time the thread waited, runnable, for a core."""
    busy = cpu = 0.0
    waited = runqueue_seconds()
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        spin_from, cpu_from = time.perf_counter(), time.thread_time()
        while time.perf_counter() - spin_from < busy_share * period:
            pass
        busy += time.perf_counter() - spin_from
        cpu += time.thread_time() - cpu_from
        await asyncio.sleep((1 - busy_share) * period)
    wall = time.perf_counter() - started
    return busy / wall, cpu / wall, (runqueue_seconds() - waited) / wall


@pytest.mark.e2e  # bounds on the real clock: run once, in the e2e env
@pytest.mark.parametrize("busy_share", [0.1, 0.5, 0.9])
async def test_utilization_and_cpu_follow_the_busy_share_of_cpu_work(
    receiver: Receiver, busy_share: float, loop_kind: str
) -> None:
    """Stdlib loops: within 5 points (timed at the selector); uvloop: within 10 (the thread's CPU time)."""
    stdlib = loop_kind == "asyncio"
    async with loopstat.install("127.0.0.1", receiver.port, interval=0.1, stall_threshold=None):
        await duty_cycle(busy_share, 0.3)  # warm-up: the first window starts at install()
        seen = len(receiver.values("loopstat.utilization", "g"))
        truth, on_cpu, stolen = await duty_cycle(busy_share, 2.0)
        window = receiver.values("loopstat.utilization", "g")[seen:]
        cpu = receiver.values("loopstat.cpu", "g")[seen:]
    assert len(window) >= 10
    measured = sum(window) / len(window)
    # Stdlib loops: wall time not spent waiting, within 5 points. uvloop: the thread's CPU time (here
    # all the busy time is the spin's), within 10 points; a spin the machine preempted is idle there.
    expected, bound = (truth, 0.05) if stdlib else (on_cpu, 0.1)
    # On stdlib loops, time the machine kept the ready thread off the CPU outside the selector is not
    # waiting either: the gauge may rise by that share, no more (a gauge off by more still fails).
    above = stolen if stdlib else 0.0
    assert expected - bound <= measured <= expected + above + bound, (
        f"utilization {measured:.3f}, busy {truth:.3f}, on the CPU {on_cpu:.3f}, waiting for a core {stolen:.3f}"
    )
    # Spinning is CPU work: the thread's CPU share follows it.
    cpu_share = sum(cpu) / len(cpu)
    assert abs(cpu_share - on_cpu) <= 0.1, f"cpu {cpu_share:.3f}, spinning on the CPU {on_cpu:.3f}"


@pytest.mark.e2e  # bounds on the real clock: run once, in the e2e env
async def test_an_idle_loop_shows_utilization_near_zero(receiver: Receiver) -> None:
    async with loopstat.install("127.0.0.1", receiver.port, interval=0.1) as monitor:
        # Idle for real: polling the receiver from this loop would be work the gauge rightly counts.
        await asyncio.sleep(0.75)
        assert monitor.utilization is not None
    utilization = receiver.values("loopstat.utilization", "g")
    assert len(utilization) >= 5
    # The sampler's own work and the receiver thread's share of the GIL are busy time too.
    assert statistics.median(utilization) < 0.05


async def test_every_loop_sends_utilization_and_cpu(receiver: Receiver) -> None:
    async with loopstat.install("127.0.0.1", receiver.port, interval=0.02) as monitor:
        await receiver.wait_count("loopstat.tasks", "g", 5)
        assert monitor.utilization is not None
        assert monitor.cpu is not None
    assert len(receiver.values("loopstat.utilization", "g")) >= 4
    assert len(receiver.values("loopstat.cpu", "g")) >= 4


async def test_utilization_false_sends_none_and_leaves_the_selector_alone(receiver: Receiver) -> None:
    loop = asyncio.get_running_loop()
    selector = getattr(loop, "_selector", None)
    async with loopstat.install(
        "127.0.0.1", receiver.port, interval=0.02, utilization=False, stall_threshold=None
    ) as monitor:
        await receiver.wait_count("loopstat.tasks", "g", 5)
        assert "select" not in getattr(selector, "__dict__", {})
        assert monitor.utilization is None
    assert receiver.values("loopstat.utilization", "g") == []


async def test_stop_gives_the_selector_its_own_select_back() -> None:
    loop = asyncio.get_running_loop()
    selector = getattr(loop, "_selector", None)
    if selector is None:
        pytest.skip("uvloop has no Python selector")
    own_class = type(selector)
    monitor = loopstat.install("127.0.0.1", 9, interval=0.02)
    await asyncio.sleep(0.05)
    # In its place, a selector of a subclass whose select times the waits: not an instance
    # attribute, which would defeat the interpreter's specialized method calls on every turn.
    timed: Any = getattr(loop, "_selector", None)
    assert timed is not selector
    assert type(timed).__bases__ == (own_class,)
    assert type(timed).select is not own_class.select
    assert timed.get_map() is selector.get_map(), "one selector state, shared"
    await monitor.stop()
    assert getattr(loop, "_selector", None) is selector
    assert type(selector) is own_class


def test_a_selector_another_tool_wrapped_first_is_timed_through_its_wrapper() -> None:
    loop = asyncio.new_event_loop()
    try:
        selector: Any = loop._selector  # type: ignore[attr-defined]
        inner, calls = selector.select, []

        def their_select(timeout: Optional[float] = None) -> Any:
            calls.append(timeout)
            return inner(timeout)

        selector.select = their_select
        monitor = loopstat.install("127.0.0.1", 9, interval=0.05, loop=loop, stall_threshold=None)
        loop.run_until_complete(asyncio.sleep(0.3))  # idle: the loop waits, through their wrapper
        assert monitor.utilization is not None
        assert monitor.utilization < 0.5
        assert any(timeout for timeout in calls), "their wrapper still sees the waits"
        loop.run_until_complete(monitor.stop())
        assert selector.select is their_select
    finally:
        loop.close()


def test_a_tool_that_subclasses_the_selector_after_us_keeps_working_after_stop() -> None:
    loop = asyncio.new_event_loop()
    try:
        monitor = loopstat.install("127.0.0.1", 9, interval=0.05, loop=loop, stall_threshold=None)
        loop.run_until_complete(asyncio.sleep(0.05))
        selector: Any = loop._selector  # type: ignore[attr-defined]
        ours, calls = type(selector), []

        class Theirs(ours):  # type: ignore[misc,valid-type]
            def select(self, timeout: Optional[float] = None) -> Any:
                calls.append(timeout)
                return super().select(timeout)

        selector.__class__ = Theirs
        loop.run_until_complete(monitor.stop())
        assert loop._selector is selector, "their selector is left in place"  # type: ignore[attr-defined]
        assert type(selector) is Theirs
        loop.run_until_complete(asyncio.sleep(0.05))
        assert calls, "and still runs, with ours inside only passing calls on"
    finally:
        loop.close()


def test_the_busy_loops_poll_reports_what_the_stdlib_selector_reports() -> None:
    """The timed selector's own poll (Linux epoll) against the stdlib's, on real sockets in every state."""
    if not hasattr(selectors, "EpollSelector"):
        pytest.skip("epoll is Linux's")
    pairs = [socket.socketpair() for _ in range(4)]
    selector = selectors.EpollSelector()
    holder = types.SimpleNamespace(_selector=selector)  # stands for the loop that holds the selector
    try:
        quiet, readable, hung_up, reader_only = pairs
        readable[1].send(b"x")
        hung_up[1].close()
        reader_only[1].send(b"y")
        for a in (quiet[0], readable[0], hung_up[0]):
            selector.register(a, selectors.EVENT_READ | selectors.EVENT_WRITE)
        selector.register(reader_only[0], selectors.EVENT_READ)
        clock = SelectorClock(holder, selector)  # type: ignore[arg-type]
        timed = holder._selector
        assert timed is not selector

        def by_fd(events: Any) -> Any:
            return sorted((key.fd, mask) for key, mask in events)

        ours = by_fd(timed.select(0))
        assert ours == by_fd(selectors.EpollSelector.select(selector, 0))
        # Every state showed up: writable, readable and writable, hang-up, read interest only.
        assert len(ours) == 4
        assert dict(ours)[reader_only[0].fileno()] == selectors.EVENT_READ
        assert clock.idle == 0.0, "a poll is not a wait"
        clock.detach()
        assert holder._selector is selector
    finally:
        selector.close()
        for a, b in pairs:
            a.close()
            if b.fileno() >= 0:
                b.close()


@pytest.mark.e2e  # bounds on the real clock: run once, in the e2e env
async def test_a_loop_blocked_half_the_time_in_sleep_is_half_utilized_and_barely_on_the_cpu(
    receiver: Receiver,
) -> None:
    """Off-CPU blocking: utilization counts it (uvloop: through the blocking calls it watches), cpu does not."""
    async with loopstat.install("127.0.0.1", receiver.port, interval=0.1, stall_threshold=None):
        await asyncio.sleep(0.3)
        seen = len(receiver.values("loopstat.utilization", "g"))
        blocked = 0.0
        started = time.perf_counter()
        while time.perf_counter() - started < 2.0:
            block_from = time.perf_counter()
            time.sleep(0.01)
            blocked += time.perf_counter() - block_from
            await asyncio.sleep(0.01)
        truth = blocked / (time.perf_counter() - started)
        window = receiver.values("loopstat.utilization", "g")[seen:]
        cpu = receiver.values("loopstat.cpu", "g")[seen:]
    assert len(window) >= 10
    measured = sum(window) / len(window)
    assert abs(measured - truth) <= 0.1, f"utilization {measured:.3f}, blocked {truth:.3f}"
    assert sum(cpu) / len(cpu) < 0.15
