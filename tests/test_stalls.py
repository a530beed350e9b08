"""Stalls: the watchdog thread catches a loop that makes no progress and names the code that blocked it."""

from __future__ import annotations

import asyncio
import inspect
import logging
import sys
import threading
import time

import pytest

import loopstat
from loopstat.probes import stalls
from tests.receiver import Receiver


def blocking_function(seconds: float) -> float:
    """Block the loop the way a synchronous call in a handler would; return how long it took."""
    started = time.perf_counter()
    time.sleep(seconds)
    return (time.perf_counter() - started) * 1000.0


SLEEP_LINE = inspect.getsourcelines(blocking_function)[1] + 3
WHERE = f"test_stalls.py:{SLEEP_LINE} in blocking_function"


def stall_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "loopstat" and r.levelno == logging.WARNING and "blocked" in r.getMessage()
    ]


async def wait_for_stalls(monitor: loopstat.Monitor, count: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while monitor.stalls < count:
        assert time.monotonic() < deadline, f"{monitor.stalls} stalls seen, expected {count}"
        await asyncio.sleep(0.01)


def assert_duration_close(reported: float, blocked: float) -> None:
    # The contract: within 10 ms + 5% of the real block.
    assert abs(reported - blocked) <= 10 + 0.05 * blocked, f"reported {reported:.1f} ms for {blocked:.1f} ms"


async def test_a_blocking_call_is_named_with_file_line_and_function(
    receiver: Receiver, loopstat_log: pytest.LogCaptureFixture
) -> None:
    async with loopstat.install("127.0.0.1", receiver.port) as monitor:
        await asyncio.sleep(0.2)
        blocked = blocking_function(0.3)
        await wait_for_stalls(monitor, 1)
    stall = monitor.last_stall
    assert stall is not None
    assert stall.location is not None
    assert stall.location.endswith(WHERE)
    assert_duration_close(stall.duration, blocked)
    assert "in blocking_function" in stall.stack
    assert "time.sleep(seconds)" in stall.stack
    [warning] = stall_warnings(loopstat_log)
    assert f"the event loop was blocked for {stall.duration:.0f} ms at " in warning
    assert warning.endswith(WHERE)


async def test_the_full_stack_goes_to_debug(loopstat_log: pytest.LogCaptureFixture) -> None:
    async with loopstat.install("127.0.0.1", 9) as monitor:
        await asyncio.sleep(0.2)
        blocking_function(0.25)
        await wait_for_stalls(monitor, 1)
    stacks = [r.getMessage() for r in loopstat_log.records if r.levelno == logging.DEBUG and "stack" in r.getMessage()]
    assert len(stacks) == 1
    assert "test_a_blocking_call" not in stacks[0]
    assert f"line {SLEEP_LINE}, in blocking_function" in stacks[0]


async def test_each_stall_sends_a_count_and_its_duration(receiver: Receiver) -> None:
    async with loopstat.install("127.0.0.1", receiver.port, prefix="app") as monitor:
        await asyncio.sleep(0.2)
        blocking_function(0.25)
        await asyncio.sleep(0.2)
        blocking_function(0.35)
        await wait_for_stalls(monitor, 2)
        stalls = await receiver.wait_count("app.stall", "ms", 2)
    assert receiver.values("app.stalls", "c") == [1, 1]
    assert sorted(stalls) == pytest.approx([250, 350], abs=10 + 0.05 * 350)


async def test_a_stall_in_a_busy_loop_is_timed_as_well(receiver: Receiver) -> None:
    stop = asyncio.Event()

    async def yielder() -> int:
        turns = 0
        while not stop.is_set():
            turns += 1
            await asyncio.sleep(0)
        return turns

    async with loopstat.install("127.0.0.1", receiver.port) as monitor:
        workers = [asyncio.create_task(yielder()) for _ in range(20)]
        await asyncio.sleep(0.3)
        blocked = blocking_function(0.3)
        await wait_for_stalls(monitor, 1)
        stop.set()
        await asyncio.gather(*workers)
    stall = monitor.last_stall
    assert stall is not None
    assert stall.location is not None
    assert stall.location.endswith(WHERE)
    assert_duration_close(stall.duration, blocked)


async def test_blocks_shorter_than_the_threshold_are_not_stalls(
    receiver: Receiver, loopstat_log: pytest.LogCaptureFixture
) -> None:
    async with loopstat.install("127.0.0.1", receiver.port, stall_threshold=0.15) as monitor:
        for _ in range(8):
            blocking_function(0.04)
            await asyncio.sleep(0.03)
        blocking_function(0.4)  # one real stall, so the test knows the watchdog was watching
        await wait_for_stalls(monitor, 1)
        await asyncio.sleep(0.2)
    assert monitor.stalls == 1
    assert len(stall_warnings(loopstat_log)) == 1


async def test_a_hot_spot_is_logged_once_a_minute_and_still_counted(
    receiver: Receiver, loopstat_log: pytest.LogCaptureFixture
) -> None:
    async with loopstat.install("127.0.0.1", receiver.port) as monitor:
        for _ in range(3):
            await asyncio.sleep(0.1)
            blocking_function(0.25)
        await wait_for_stalls(monitor, 3)
    assert len(stall_warnings(loopstat_log)) == 1
    assert receiver.values("loopstat.stalls", "c") == [1, 1, 1]


async def test_stall_threshold_none_reports_no_stall_and_starts_no_watchdog(
    receiver: Receiver, loopstat_log: pytest.LogCaptureFixture
) -> None:
    async with loopstat.install("127.0.0.1", receiver.port, interval=0.05, stall_threshold=None) as monitor:
        await asyncio.sleep(0.1)
        blocking_function(0.3)
        await receiver.wait_count("loopstat.tasks", "g", 4)
        watchdogs = [t for t in threading.enumerate() if t.name == "loopstat-watchdog"]
        own_probe = monitor._stall_probe
    assert (monitor.stalls, monitor.last_stall, own_probe) == (0, None, None)
    assert stall_warnings(loopstat_log) == []
    assert receiver.values("loopstat.stalls", "c") == []
    # A thread started by an earlier test may live on, idle; this monitor added nothing to it.
    assert len(watchdogs) <= 1


async def test_a_stopped_loop_is_not_a_stall(loopstat_log: pytest.LogCaptureFixture) -> None:
    """A loop run piecewise (run_until_complete, then nothing for a while) is paused, not stuck."""
    done = threading.Event()
    result: list[int] = []

    def piecewise() -> None:
        loop = asyncio.new_event_loop()
        try:
            monitor = loopstat.install("127.0.0.1", 9, loop=loop)
            loop.run_until_complete(asyncio.sleep(0.1))
            time.sleep(0.4)  # the loop is not running: nobody is waiting on it
            loop.run_until_complete(asyncio.sleep(0.3))
            result.append(monitor.stalls)
            loop.run_until_complete(monitor.stop())
        finally:
            loop.close()
            done.set()

    threading.Thread(target=piecewise).start()
    await asyncio.get_running_loop().run_in_executor(None, done.wait)
    assert result == [0]
    assert stall_warnings(loopstat_log) == []


async def test_a_stall_before_the_first_connection_still_arrives(receiver: Receiver) -> None:
    async with loopstat.install("localhost", receiver.port) as monitor:
        await asyncio.sleep(0)  # the monitor starts, and starts looking up "localhost"
        blocking_function(0.3)
        await wait_for_stalls(monitor, 1)
        await receiver.wait_count("loopstat.stall", "ms", 1)
    assert monitor.dropped == 0


async def test_a_loop_stuck_between_callbacks_is_not_blamed_on_the_code_that_runs_it() -> None:
    """CPU starvation or a collection between callbacks: no application frame is to blame."""
    async with loopstat.install("127.0.0.1", 9) as monitor:
        await asyncio.sleep(0.05)
        probe = monitor._stall_probe
        assert probe is not None
        loop_thread = threading.get_ident()

        def stack_of_the_idle_loop() -> tuple[stalls.Frame, ...]:
            time.sleep(0.1)  # meanwhile the loop waits in its selector, in no callback
            return stalls.frames_of(sys._current_frames()[loop_thread])

        frames = await asyncio.get_running_loop().run_in_executor(None, stack_of_the_idle_loop)
    assert stalls.locate(frames) is not None  # blind to the loop's frames, it would name a caller
    assert stalls.locate(frames, probe._outer) is None
