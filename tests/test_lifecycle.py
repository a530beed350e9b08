"""Starting and stopping: one monitor per loop, stop() flushes and is idempotent."""

from __future__ import annotations

import asyncio
import threading
from typing import Callable

import pytest
import uvloop

import loopstat
from tests.inside import send_lines
from tests.receiver import Receiver


async def test_install_is_a_plain_function_usable_from_sync_startup_hooks(receiver: Receiver) -> None:
    def startup_hook() -> loopstat.Monitor:
        return loopstat.install("127.0.0.1", receiver.port, interval=0.02)

    monitor = startup_hook()
    await receiver.wait_for(lambda lines: len(lines) >= 3)
    await monitor.stop()


async def test_second_install_on_the_same_loop_returns_the_running_monitor(
    receiver: Receiver, loopstat_log: pytest.LogCaptureFixture
) -> None:
    first = loopstat.install("127.0.0.1", receiver.port, interval=0.02)
    again = loopstat.install("127.0.0.1", receiver.port, interval=0.02)
    assert again is first
    assert "different settings" not in loopstat_log.text
    await first.stop()


async def test_second_install_with_other_settings_warns_and_keeps_the_running_monitor(
    receiver: Receiver, loopstat_log: pytest.LogCaptureFixture
) -> None:
    first = loopstat.install("127.0.0.1", receiver.port, interval=0.02)
    other = loopstat.install("127.0.0.1", receiver.port, interval=0.5)
    assert other is first
    assert other.settings.interval == 0.02
    assert "different settings" in loopstat_log.text
    await first.stop()


async def test_install_after_stop_starts_a_new_monitor(receiver: Receiver) -> None:
    first = loopstat.install("127.0.0.1", receiver.port, interval=0.02)
    await first.stop()
    second = loopstat.install("127.0.0.1", receiver.port, prefix="second", interval=0.02)
    assert second is not first
    await receiver.wait_for(lambda lines: any(x.name == "second.lag" for x in lines))
    await second.stop()


async def test_stop_is_safe_to_call_twice(receiver: Receiver) -> None:
    monitor = loopstat.install("127.0.0.1", receiver.port, interval=0.02)
    await receiver.wait_for(lambda lines: len(lines) >= 3)
    await monitor.stop()
    await monitor.stop()
    assert not monitor.running


async def test_stop_ends_sending(receiver: Receiver) -> None:
    monitor = loopstat.install("127.0.0.1", receiver.port, interval=0.01)
    await receiver.wait_for(lambda lines: len(lines) >= 6)
    await monitor.stop()
    await asyncio.sleep(0.05)
    count = len(receiver.datagrams)
    await asyncio.sleep(0.1)
    assert len(receiver.datagrams) == count


async def test_lines_handed_over_right_before_stop_are_sent_not_lost(receiver: Receiver) -> None:
    monitor = loopstat.install("127.0.0.1", receiver.port, interval=0.01)
    await receiver.wait_for(lambda lines: len(lines) >= 3)
    # No loop turn between the lines and stop(): a sink that queued them would lose them.
    send_lines(monitor, [("flushed", "g", 1.0), ("flushed", "g", 2.0)])
    await monitor.stop()
    await receiver.wait_for(lambda lines: [x.value for x in lines if x.name == "loopstat.flushed"] == [1.0, 2.0])
    assert monitor.dropped == 0


async def test_stop_must_be_awaited_on_the_monitored_loop(receiver: Receiver) -> None:
    monitor = loopstat.install("127.0.0.1", receiver.port, interval=0.02)
    await receiver.wait_for(lambda lines: len(lines) >= 3)
    errors: list[BaseException] = []

    def stop_elsewhere() -> None:
        try:
            asyncio.run(monitor.stop())
        except RuntimeError as exc:
            errors.append(exc)

    thread = threading.Thread(target=stop_elsewhere)
    thread.start()
    thread.join()
    assert len(errors) == 1
    assert "must be awaited on the event loop the monitor watches" in str(errors[0])
    await monitor.stop()


NEW_LOOP = pytest.mark.parametrize(
    "new_loop", [asyncio.new_event_loop, uvloop.new_event_loop], ids=["asyncio", "uvloop"]
)


@NEW_LOOP
def test_install_with_loop_before_the_loop_runs(
    receiver: Receiver, new_loop: Callable[[], asyncio.AbstractEventLoop]
) -> None:
    loop = new_loop()
    try:
        monitor = loopstat.install("127.0.0.1", receiver.port, interval=0.02, loop=loop)
        loop.run_until_complete(receiver.wait_for(lambda lines: len(lines) >= 3))
        loop.run_until_complete(monitor.stop())
    finally:
        loop.close()


@NEW_LOOP
def test_install_from_another_thread_with_loop(
    receiver: Receiver, new_loop: Callable[[], asyncio.AbstractEventLoop]
) -> None:
    loop = new_loop()
    started = threading.Event()
    loop.call_soon(started.set)
    thread = threading.Thread(target=loop.run_forever)
    thread.start()
    try:
        started.wait(5)
        monitor = loopstat.install("127.0.0.1", receiver.port, interval=0.02, loop=loop)
        asyncio.run_coroutine_threadsafe(receiver.wait_for(lambda lines: len(lines) >= 3), loop).result(10)
        asyncio.run_coroutine_threadsafe(monitor.stop(), loop).result(10)
        assert not monitor.running
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


async def test_monitors_on_two_loops_are_independent(receiver: Receiver) -> None:
    here = loopstat.install("127.0.0.1", receiver.port, prefix="here", interval=0.02)
    there: list[loopstat.Monitor] = []

    async def other_loop() -> None:
        monitor = loopstat.install("127.0.0.1", receiver.port, prefix="there", interval=0.02)
        there.append(monitor)
        await asyncio.sleep(0.1)
        await monitor.stop()

    thread = threading.Thread(target=asyncio.run, args=(other_loop(),))
    thread.start()
    await receiver.wait_for(lambda lines: {"here.lag", "there.lag"} <= {x.name for x in lines})
    thread.join()
    assert there[0] is not here
    await here.stop()
