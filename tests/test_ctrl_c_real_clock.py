"""Ctrl-C where it hurts, on the real clock and on both loops: the real-clock twins of tests/test_ctrl_c.py.

tests/test_ctrl_c.py forces each of these interleavings on virtual time,
deterministic and fast, in the library suite; here they run once more on
asyncio and uvloop with real sleeps and a real watchdog thread, in the e2e env.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Optional

import pytest
import uvloop

import loopstat
from loopstat.probes import lag as _lag
from loopstat.probes import stall_watch
from tests.interrupts import interrupt_after_taking_the_samplers_timer, interrupted, interrupting_at_the_call_of
from tests.receiver import Receiver
from tests.test_ctrl_c import waits_and_works
from tests.test_lifecycle import collect_loop_errors, samples_go_on
from tests.test_stalls import LOOPS, WHERE, blocking_function, located_stall, new_loop, wait_for_stalls

pytestmark = pytest.mark.e2e  # real-clock twins of tests/test_ctrl_c.py: run once, in the e2e env


@pytest.mark.parametrize("kind", ["asyncio", "uvloop"])
def test_a_link_its_spare_and_a_revival_all_cut_off_are_revived_again_by_the_stall_watch(
    kind: str, receiver: Receiver
) -> None:
    loop = uvloop.new_event_loop() if kind == "uvloop" else asyncio.new_event_loop()
    errors = collect_loop_errors(loop)
    try:
        monitor = loopstat.install("127.0.0.1", receiver.port, interval=0.05, loop=loop)
        # The timer, its spare, then the first spare the stall watch armed:
        # only the stall watch's next revival, a second later, goes on.
        # (A trace function that raises is removed: one for each.)
        for _ in range(3):
            interrupted(loop, interrupting_at_the_call_of(_lag.Sampler._fire.__code__), asyncio.sleep(5))
        samples_go_on(loop, monitor, busy=False)
        loop.run_until_complete(monitor.stop())
    finally:
        loop.close()
    assert errors == []


@pytest.mark.parametrize("busy", [False, True], ids=["idle", "busy"])
@pytest.mark.parametrize("stall_threshold", [0.1, None], ids=["stalls", "no-stalls"])
def test_a_sampler_timer_a_ctrl_c_took_off_the_ready_queue_is_taken_over_and_no_task_is_counted(
    busy: bool, stall_threshold: Optional[float], receiver: Receiver
) -> None:
    loop = asyncio.new_event_loop()
    errors = collect_loop_errors(loop)
    try:
        monitor = loopstat.install(
            "127.0.0.1", receiver.port, interval=0.05, stall_threshold=stall_threshold, loop=loop
        )
        # Pending to the end of the test, however long a loaded machine makes it.
        interrupted(loop, interrupt_after_taking_the_samplers_timer(3), asyncio.sleep(3600))
        samples_go_on(loop, monitor, busy)
        assert monitor.running
        # Two more samples taken while a coroutine runs: the lines counted above
        # may be a loaded machine's stall reports.
        seen = len(receiver.values("loopstat.tasks", "g"))
        loop.run_until_complete(receiver.wait_count("loopstat.tasks", "g", seen + 2))
        # The sleep the Ctrl-C left pending and the coroutine running the loop now: the application's two.
        assert monitor.tasks == 2
        loop.run_until_complete(monitor.stop())
    finally:
        loop.close()
    assert errors == []


@pytest.mark.parametrize("kind", LOOPS)
def test_an_interrupt_in_the_middle_of_a_beat_does_not_stop_stall_detection(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop = new_loop(kind)
    loop_thread = threading.get_ident()
    armed = threading.Event()
    real = time.perf_counter

    def interrupting_perf_counter() -> float:
        # Ctrl-C lands while loopstat's beat runs on the loop.
        if armed.is_set() and threading.get_ident() == loop_thread:
            armed.clear()
            raise KeyboardInterrupt
        return real()

    async def first() -> loopstat.Monitor:
        monitor = loopstat.install("127.0.0.1", 9)
        await asyncio.sleep(0.1)
        armed.set()
        deadline = real() + 30
        # Until the Ctrl-C has landed in a beat (busy, so that the beat runs on stdlib loops too).
        while armed.is_set() and real() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0)
        return monitor

    async def then(monitor: loopstat.Monitor) -> int:
        await asyncio.sleep(0.2)
        return await located_stall(monitor)

    monkeypatch.setattr(stall_watch, "perf_counter", interrupting_perf_counter)
    try:
        task = loop.create_task(first())
        with pytest.raises(KeyboardInterrupt):
            loop.run_until_complete(task)
        assert not armed.is_set()
        monitor = loop.run_until_complete(task)
        blocks = loop.run_until_complete(then(monitor))
        loop.run_until_complete(monitor.stop())
    finally:
        loop.close()
    # The stall the test made is seen and located; a loaded machine may add stalls of its own to the count.
    assert monitor.stalls >= blocks
    assert monitor.last_stall is not None
    assert monitor.last_stall.location is not None
    assert monitor.last_stall.location.endswith(WHERE)


@pytest.mark.parametrize(("kind", "cut_off"), [("asyncio", "_beat"), ("asyncio", "_restart"), ("uvloop", "_beat")])
def test_a_beat_or_restart_a_ctrl_c_ended_before_its_first_line_is_taken_back_and_stalls_are_seen_again(
    kind: str, cut_off: str, receiver: Receiver
) -> None:
    # (On uvloop this workload leaves the watchdog no restart to post: the beat runs on while the thread works.)
    loop = new_loop(kind)
    try:
        monitor = loopstat.install("127.0.0.1", receiver.port, interval=0.02, stall_threshold=0.05, loop=loop)
        cut = interrupting_at_the_call_of(getattr(stall_watch.StallWatch, cut_off).__code__)
        interrupted(loop, cut, waits_and_works(5.0, time.sleep))
        # A few samples later the lost one is taken back: without that, the
        # watchdog would wait for a beat that never comes, and no stall would
        # be reported again.
        loop.run_until_complete(waits_and_works(0.3, time.sleep))
        before = monitor.stalls

        async def then() -> None:
            await asyncio.sleep(0.05)
            blocking_function(0.3)
            await wait_for_stalls(monitor, before + 1)

        loop.run_until_complete(then())
        loop.run_until_complete(monitor.stop())
    finally:
        loop.close()
    assert monitor.last_stall is not None
    assert monitor.last_stall.location is not None
    assert monitor.last_stall.location.endswith(WHERE)
