"""Starting and stopping: one monitor per loop, stop() flushes and is idempotent."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional

import pytest
import uvloop

import loopstat
from loopstat._install import install_lazily
from loopstat._options import resolve
from loopstat.probes import lag as _lag
from tests import inside
from tests.inside import send_lines
from tests.interrupts import (
    interrupt_after_taking_the_samplers_timer,
    interrupted,
    interrupting_at_the_call_of,
    interrupting_the_sampler_as_it_samples,
)
from tests.receiver import Receiver


async def test_install_is_a_plain_function_usable_from_sync_startup_hooks(receiver: Receiver) -> None:
    def startup_hook() -> loopstat.Monitor:
        return loopstat.install("127.0.0.1", receiver.port, interval=0.02)

    monitor = startup_hook()
    await receiver.wait_for(lambda lines: len(lines) >= 3)
    await monitor.stop()


@pytest.mark.parametrize(("interval", "warns"), [(0.02, False), (0.5, True)], ids=["same-settings", "other-settings"])
async def test_second_install_on_the_same_loop_keeps_the_running_monitor_and_warns_if_its_settings_differ(
    receiver: Receiver, loopstat_log: pytest.LogCaptureFixture, interval: float, warns: bool
) -> None:
    first = loopstat.install("127.0.0.1", receiver.port, interval=0.02)
    again = loopstat.install("127.0.0.1", receiver.port, interval=interval)
    assert again is first
    assert again.settings.interval == 0.02
    assert ("different settings" in loopstat_log.text) == warns
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
    sent = monitor.sent
    # No loop turn between the lines and stop(): no sample can send them, only stop() (or the handing over).
    send_lines(monitor, [("flushed", "g", 1.0), ("flushed", "g", 2.0)])
    await monitor.stop()
    # Counted as sent by the time stop() returns (its socket is closed then: nothing can go out later).
    assert monitor.sent - sent >= 2
    assert monitor.dropped == 0
    await receiver.wait_for(lambda lines: [x.value for x in lines if x.name == "loopstat.flushed"] == [1.0, 2.0])


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


# Shutting down under pressure: signals, overlapping stops, other tools, other threads.


def open_sockets() -> int:
    """Sockets open in this process (not pipes: libuv keeps one of its own for good once a uvloop ran)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the directory's own descriptor, gone once listed
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    return count


def collect_loop_errors(loop: asyncio.AbstractEventLoop) -> List[Dict[str, Any]]:
    """What reaches the loop's exception handler, kept for the test to assert on."""
    errors: List[Dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: errors.append(context))
    return errors


async def sending(monitor: loopstat.Monitor) -> None:
    deadline = time.monotonic() + 5
    while monitor.sent < 3:
        assert time.monotonic() < deadline, "the monitor sent nothing"
        await asyncio.sleep(0.001)


def test_loop_close_after_ctrl_c_lost_a_samplers_timer_does_not_hang() -> None:
    """Ctrl-C, then main cancelled, a short run, loop.close(), with a sampler timer lost every time."""
    outcomes: List[str] = []

    def application(wakeups: int) -> None:
        fds = open_sockets()
        loop = asyncio.new_event_loop()
        errors = collect_loop_errors(loop)
        monitor = loopstat.install("127.0.0.1", 9, interval=0.001, gc=True, loop=loop)

        async def main() -> None:
            while True:  # an application busy with short steps
                await asyncio.sleep(0)
                assert asyncio.get_running_loop().is_running()

        task = loop.create_task(main())
        sys.settrace(interrupt_after_taking_the_samplers_timer(wakeups))
        try:
            loop.run_until_complete(task)
        except KeyboardInterrupt:
            outcomes.append("interrupted")
        finally:
            sys.settrace(None)
        task.cancel()
        loop.run_until_complete(asyncio.sleep(0.01))
        loop.close()
        del task, loop
        gc.collect()
        outcomes.append("" if not monitor.running and not errors and open_sockets() == fds else f"{errors} {fds}")

    for wakeups in (3, 10, 30):
        thread = threading.Thread(target=application, args=(wakeups,), daemon=True)
        thread.start()
        thread.join(10)
        assert not thread.is_alive(), "loop.close() hung"
    assert outcomes == ["interrupted", ""] * 3


def test_stop_after_ctrl_c_lost_a_samplers_timer_returns_at_once() -> None:
    loop = asyncio.new_event_loop()
    try:
        monitor = loopstat.install("127.0.0.1", 9, interval=0.001, loop=loop)
        sys.settrace(interrupt_after_taking_the_samplers_timer(5))
        try:
            loop.run_until_complete(asyncio.sleep(5))
        except KeyboardInterrupt:
            pass
        finally:
            sys.settrace(None)
        started = time.monotonic()
        loop.run_until_complete(asyncio.wait_for(monitor.stop(), 10))
        # Nothing to wait for; room for a loaded machine.
        assert time.monotonic() - started < 5
        assert not monitor.running
    finally:
        loop.close()


def interrupted_in_the_sampler(loop: asyncio.AbstractEventLoop, port: int, then: str) -> None:
    """Ctrl-C lands in the sampler; then the application runs the loop on, or closes it."""
    try:
        monitor = loopstat.install("127.0.0.1", port, interval=0.005, loop=loop)
        interrupted(loop, interrupting_the_sampler_as_it_samples(5), asyncio.sleep(5))
        assert monitor.running
        if then == "run on":
            sent = monitor.sent

            async def more() -> None:
                deadline = time.monotonic() + 5
                while monitor.sent < sent + 10:
                    assert time.monotonic() < deadline, "sampling stopped"
                    await asyncio.sleep(0.005)

            loop.run_until_complete(more())
            assert monitor.running
            loop.run_until_complete(monitor.stop())
    finally:
        loop.close()


@pytest.mark.parametrize("kind", ["asyncio", "uvloop"])
@pytest.mark.parametrize("then", ["run on", "close"])
def test_a_ctrl_c_that_lands_in_the_sampler_reaches_the_application_and_sampling_goes_on(
    kind: str, then: str, receiver: Receiver
) -> None:
    loop = uvloop.new_event_loop() if kind == "uvloop" else asyncio.new_event_loop()
    errors = collect_loop_errors(loop)
    interrupted_in_the_sampler(loop, receiver.port, then)
    gc.collect()
    # Nothing logged for the application: the interrupted task does not say its exception was never retrieved.
    assert errors == []


def samples_go_on(loop: asyncio.AbstractEventLoop, monitor: loopstat.Monitor, busy: bool) -> None:
    """Run the loop, busy or mostly idle, until the monitor has sent two more samples (within 10 s)."""
    sent = monitor.sent

    async def on() -> None:
        deadline = time.monotonic() + 10
        while monitor.sent < sent + 10:  # five lines a sample at the defaults
            assert time.monotonic() < deadline, "sampling stopped"
            if busy:
                time.sleep(0.002)
                await asyncio.sleep(0)
            else:
                await asyncio.sleep(0.1)

    loop.run_until_complete(on())


@pytest.mark.parametrize("kind", ["asyncio", "uvloop"])
@pytest.mark.parametrize("busy", [False, True], ids=["idle", "busy"])
@pytest.mark.parametrize("stall_threshold", [0.1, None], ids=["stalls", "no-stalls"])
def test_a_sampler_timer_a_ctrl_c_cut_off_is_taken_over_by_its_spare_and_sampling_goes_on(
    kind: str, busy: bool, stall_threshold: Optional[float], receiver: Receiver
) -> None:
    loop = uvloop.new_event_loop() if kind == "uvloop" else asyncio.new_event_loop()
    errors = collect_loop_errors(loop)
    try:
        monitor = loopstat.install(
            "127.0.0.1", receiver.port, interval=0.05, stall_threshold=stall_threshold, loop=loop
        )
        interrupted(loop, interrupting_at_the_call_of(_lag.Sampler._fire.__code__), asyncio.sleep(5))
        samples_go_on(loop, monitor, busy)
        assert max(receiver.values("loopstat.lag", "g")) < 500  # the lost wait is no lag
        loop.run_until_complete(monitor.stop())
    finally:
        loop.close()
    assert errors == []


def others() -> List[asyncio.Task[Any]]:
    """Every task of the running loop but the current one, as an application sees them."""
    return [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]


async def test_overlapping_stops_leak_nothing_and_raise_nothing(receiver: Receiver) -> None:
    loop = asyncio.get_running_loop()
    errors = collect_loop_errors(loop)
    fds = open_sockets()

    async def later(monitor: loopstat.Monitor, yields: int) -> None:
        for _ in range(yields):
            await asyncio.sleep(0)
        await monitor.stop()

    for yields in range(8):
        monitor = loopstat.install("127.0.0.1", receiver.port, interval=0.001)
        await sending(monitor)
        await asyncio.wait_for(asyncio.gather(monitor.stop(), later(monitor, yields)), 10)
        assert not monitor.running
    gc.collect()
    await asyncio.sleep(0.01)
    assert errors == []
    assert open_sockets() == fds


# Every probe on, and a host name to look up (in a thread of loopstat's): nothing of it may be a task.
EVERY_PROBE: Dict[str, Any] = {"gc": True, "profile": True, "blocking_calls": True, "executor": True}


def every_probe(receiver: Receiver) -> loopstat.Monitor:
    """A monitor of the running loop with every probe on, sending to ``receiver`` through a host name."""
    return loopstat.install("localhost", receiver.port, interval=0.01, **EVERY_PROBE)


async def test_the_monitor_adds_no_task_the_application_can_see(receiver: Receiver) -> None:
    before = set(asyncio.all_tasks())
    async with every_probe(receiver) as monitor:
        await sending(monitor)
        await receiver.wait_count("loopstat.tasks", "g", 3)  # every probe attached at the first sample has run
        assert set(asyncio.all_tasks()) == before


async def test_the_shutdown_idiom_of_gathering_every_other_task_finishes_under_a_monitor(receiver: Receiver) -> None:
    async with every_probe(receiver) as monitor:
        await sending(monitor)
        workers = [asyncio.ensure_future(asyncio.sleep(0.05)) for _ in range(3)]
        # A generous bound, so that a sampler among the tasks fails the test rather than hanging it.
        await asyncio.wait_for(asyncio.gather(*others()), 10)
        assert all(worker.done() for worker in workers)
        assert monitor.running


async def test_monitoring_goes_on_after_the_application_cancels_every_task_it_can_see(receiver: Receiver) -> None:
    async with every_probe(receiver) as monitor:
        await sending(monitor)
        for _ in range(5):
            tasks = others()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        assert monitor.running
        sent = len(receiver.values("loopstat.lag", "g"))
        await receiver.wait_count("loopstat.lag", "g", sent + 5)


def test_stop_puts_back_the_wrappers_other_tools_installed_before_it() -> None:
    loop = asyncio.new_event_loop()
    selector: Any = loop._selector  # type: ignore[attr-defined]  # what tools that time the selector wrap
    calls: List[str] = []
    inner_select, inner_close = selector.select, loop.close

    def their_select(timeout: Optional[float] = None) -> Any:
        calls.append("select")
        return inner_select(timeout)

    def their_close() -> None:
        calls.append("close")
        inner_close()

    selector.select = their_select
    loop.close = their_close  # type: ignore[method-assign]
    monitor = loopstat.install("127.0.0.1", 9, loop=loop)
    loop.run_until_complete(asyncio.sleep(0.05))
    loop.run_until_complete(monitor.stop())
    assert selector.select is their_select
    assert loop.close is their_close
    loop.close()
    assert calls[-1] == "close"
    assert "select" in calls


@NEW_LOOP
def test_stop_leaves_the_wrappers_other_tools_installed_after_it_working(
    new_loop: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    loop = new_loop()
    selector: Any = getattr(loop, "_selector", None)
    calls: List[str] = []
    monitor = loopstat.install("127.0.0.1", 9, loop=loop)
    loop.run_until_complete(asyncio.sleep(0.05))
    inner_close = loop.close

    def their_close() -> None:
        calls.append("close")
        inner_close()

    loop.close = their_close  # type: ignore[method-assign]
    if selector is not None:
        inner_select = selector.select

        def their_select(timeout: Optional[float] = None) -> Any:
            calls.append("select")
            return inner_select(timeout)

        selector.select = their_select
    loop.run_until_complete(monitor.stop())
    assert loop.close is their_close
    loop.run_until_complete(asyncio.sleep(0.01))
    if selector is not None:
        assert selector.select is their_select
        assert "select" in calls
    second = loopstat.install("127.0.0.1", 9, loop=loop)
    loop.run_until_complete(asyncio.sleep(0.02))
    loop.close()
    assert calls[-1] == "close"
    assert not second.running


@NEW_LOOP
def test_installing_from_threads_while_the_loop_starts_and_stops_raises_nothing_and_logs_nothing(
    new_loop: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    fds = open_sockets()
    loop = new_loop()
    loop.set_debug(True)  # asyncio checks which thread calls it only in debug mode (python -X dev)
    errors = collect_loop_errors(loop)
    raised: List[BaseException] = []
    monitors: Dict[int, loopstat.Monitor] = {}
    done = threading.Event()

    def installer() -> None:
        while not done.is_set():
            try:
                monitor = loopstat.install("127.0.0.1", 9, loop=loop, stall_threshold=None)
            except BaseException as exc:
                raised.append(exc)
                return
            monitors[id(monitor)] = monitor
            time.sleep(0)

    async def stop_all() -> None:
        await asyncio.sleep(0)
        for monitor in list(monitors.values()):
            await monitor.stop()

    def owner() -> None:
        """The loop's own thread: runs it briefly, again and again, stopping what was installed.

        At least 400 rounds, and on a loaded machine more, until the installers got in
        more than ten times (at most 10 s): the race must really have been run.
        """
        try:
            rounds, deadline = 0, time.monotonic() + 10
            while (rounds < 400 or len(monitors) <= 10) and time.monotonic() < deadline:
                loop.run_until_complete(stop_all())
                time.sleep(0)
                rounds += 1
        finally:
            done.set()

    switching = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # threads take turns at many more points: many more interleavings
    try:
        threads = [threading.Thread(target=installer, daemon=True) for _ in range(3)]
        threads.append(threading.Thread(target=owner, daemon=True))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(20)
            assert not thread.is_alive(), "install() and the loop deadlocked"
    finally:
        sys.setswitchinterval(switching)
    loop.run_until_complete(stop_all())
    # Every monitor put back what it wrapped, even those stopped while another thread installed.
    assert "close" not in vars(loop)
    assert "select" not in getattr(getattr(loop, "_selector", None), "__dict__", {})
    loop.close()
    gc.collect()
    assert raised == []
    assert errors == []
    assert len(monitors) > 10
    assert not any(monitor.running for monitor in monitors.values())
    assert open_sockets() == fds


@NEW_LOOP
def test_install_on_a_loop_that_never_runs_then_close_leaves_no_warning_and_a_stopped_monitor(
    new_loop: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    loop = new_loop()
    monitor = loopstat.install("127.0.0.1", 9, loop=loop)
    loop.close()
    del loop
    gc.collect()  # a coroutine never awaited would warn here, an error under pytest
    assert not monitor.running


@NEW_LOOP
async def test_closing_a_monitored_loop_from_inside_another_running_loop_leaves_no_warning(
    new_loop: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    fds = open_sockets()
    other = new_loop()
    errors = collect_loop_errors(other)
    monitor = loopstat.install("127.0.0.1", 9, loop=other)
    # The loop runs a while in a thread of its own, and stops; the sampler waits in it.
    thread = threading.Thread(target=other.run_until_complete, args=(asyncio.sleep(0.05),))
    thread.start()
    thread.join()
    assert monitor.running
    other.close()  # from this thread, where the test's loop runs
    del other
    gc.collect()
    assert (monitor.running, errors, open_sockets()) == (False, [], fds)


async def test_a_stop_cancelled_by_its_caller_has_still_released_everything(receiver: Receiver) -> None:
    errors = collect_loop_errors(asyncio.get_running_loop())
    sockets = open_sockets()
    for yields in range(1, 5):  # the first yield lets stop() begin
        monitor = loopstat.install("127.0.0.1", receiver.port, interval=0.001)
        await sending(monitor)
        stopping = asyncio.ensure_future(monitor.stop())
        for _ in range(yields):
            await asyncio.sleep(0)
        stopping.cancel()  # as asyncio.wait_for() does when its timeout ends
        await asyncio.gather(stopping, return_exceptions=True)
        assert not monitor.running
    gc.collect()
    assert errors == []
    assert open_sockets() == sockets


async def test_asking_a_running_monitor_for_other_settings_again_and_again_warns_once(
    receiver: Receiver, loopstat_log: pytest.LogCaptureFixture
) -> None:
    first = loopstat.install("127.0.0.1", receiver.port, interval=0.02)
    for _ in range(1000):
        assert loopstat.install("127.0.0.1", receiver.port, interval=0.5) is first
    for interval in range(1, 1000):  # a different setting at each call: a bounded number of warnings
        assert loopstat.install("127.0.0.1", receiver.port, interval=interval) is first
    warnings = [r for r in loopstat_log.records if "different settings" in r.getMessage()]
    assert len(warnings) == 8
    await first.stop()


async def test_lines_held_for_the_first_connection_are_counted_dropped_if_stop_comes_first() -> None:
    monitor = loopstat.install("localhost", 9, interval=0.05)
    send_lines(monitor, [("early", "g", 1.0)] * 3)
    await monitor.stop()
    assert (monitor.sent, monitor.dropped) == (0, 3)


def test_the_close_guard_on_uvloop_is_a_subclass_not_an_attribute_and_goes_with_stop() -> None:
    """A key added to a uvloop loop's plain __dict__ would slow every method call on it."""
    loop = uvloop.new_event_loop()
    try:
        monitor = loopstat.install("127.0.0.1", 9, loop=loop)
        loop.run_until_complete(asyncio.sleep(0.01))
        assert "close" not in vars(loop)
        assert type(loop) is not uvloop.Loop
        assert isinstance(loop, uvloop.Loop)
        loop.run_until_complete(monitor.stop())
        assert type(loop) is uvloop.Loop
    finally:
        loop.close()


@pytest.mark.parametrize("new_loop", [asyncio.new_event_loop, uvloop.new_event_loop], ids=["asyncio", "uvloop"])
def test_loopstat_runs_monitor_holds_nothing_before_its_first_sample_and_begins_there(
    new_loop: Callable[[], asyncio.AbstractEventLoop], receiver: Receiver
) -> None:
    """loopstat-run's monitors: a loop that ends before its first sample (``asyncio.run()`` of a short
    coroutine) got no socket, no probe, no thread and no close guard; one that lives on is monitored."""
    settings = resolve("127.0.0.1", receiver.port, interval=0.05, environ={})
    short, loop = new_loop(), new_loop()
    loop_class = type(loop)
    try:
        ended = install_lazily(settings, short)
        short.run_until_complete(asyncio.sleep(0))
        assert (inside.holds(ended), ended.probes) == ((False, False), ())
        assert (ended.sent, ended.dropped, ended.errors) == (0, 0, 0)
        short.close()
        assert not ended.running

        monitor = install_lazily(settings, loop)
        loop.run_until_complete(asyncio.sleep(0))
        assert (inside.holds(monitor), monitor.probes) == ((False, False), ())
        loop.run_until_complete(receiver.wait_count("loopstat.tasks", "g", 1))  # begun at the first timer
        assert {"lag", "tasks", "stalls"} <= set(monitor.probes)
        assert inside.holds(monitor) == (True, True)
        loop.close()  # the close guard releases everything
        assert not monitor.running
        assert monitor.probes == ()
        assert type(loop) is loop_class
    finally:
        for each in (short, loop):
            each.close()
