"""Ctrl-C where it hurts, on virtual time: every interleaving the real-clock tests force, deterministic and fast.

Each test forces a KeyboardInterrupt at one point of loopstat's timer chain or
stall watch (``tests/interrupts.py``), on a real asyncio loop whose time is a
FakeClock (``tests/fake_time.py``) and whose stall watchdog looks on that clock
(``tests/fake_watch.py``). It checks what the real-clock tests in
test_lifecycle.py and test_stalls.py check, exactly: the interrupt reaches the
application, sampling goes on, a stall is still seen, nothing is counted twice.
"""

from __future__ import annotations

import asyncio
import gc
import threading
from typing import Any, Callable, Dict, List, Optional

import pytest

import loopstat
from loopstat import _ctrl_c
from loopstat._options import resolve
from loopstat.probes.lag import Sampler
from loopstat.probes.stall_capture import Stall
from loopstat.probes.stall_watch import StallWatch
from tests import inside
from tests.fake_time import FakeTimeLoop
from tests.fake_watch import WatchedTimeLoop
from tests.interrupts import (
    interrupt_after_taking_the_samplers_timer,
    interrupted,
    interrupting_at_the_call_of,
    interrupting_the_sampler_as_it_samples,
)
from tests.receiver import Collected

INTERVAL = 0.02
THRESHOLD = 0.05
# A busy application's steps.
STEP = 0.002


class Rig:
    """A sampler and the stall watch of one loop on virtual time, wired as the monitor wires them."""

    def __init__(self, loop: WatchedTimeLoop, waits: bool = True, now: Optional[Callable[[], float]] = None) -> None:
        self.loop = loop
        self.lags: List[float] = []
        #: ``loop.time()`` of each sample.
        self.times: List[float] = []
        self.stalls: List[Stall] = []
        self._last = (loop.clock(), loop.watchdog.busy)
        self.sampler = Sampler(loop, INTERVAL, self._on_time, clock=loop.clock)
        self.sampler.start()
        self.watch = StallWatch(
            loop,
            THRESHOLD,
            loop.waits if waits else None,  # without: as on uvloop, which has no selector clock
            self.stalls.append,
            INTERVAL,
            self.sampler,
            now=now or loop.clock,
            watchdog=loop.watchdog,
        )

    def _on_time(self, lag: float) -> None:
        # As the monitor's sample: the lag, then the stall probe's read.
        self.lags.append(lag)
        self.times.append(self.loop.time())
        now, busy = self.loop.clock(), self.loop.watchdog.busy
        (then, busy_then), self._last = self._last, (now, busy)
        self.watch.sampled(now, lag / 1000.0, busy - busy_then, now - then)

    def close(self) -> None:
        self.sampler.stop()
        self.watch.close()


@pytest.fixture
def loop() -> Any:
    loop = WatchedTimeLoop()
    yield loop
    loop.close()


async def waits_and_works(seconds: float, work: Callable[[float], None]) -> None:
    """Wait in the selector, then ``work`` without waiting, by turns: beats and restarts both run."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while loop.time() < end:
        await asyncio.sleep(0.005)
        for _ in range(20):
            work(STEP)
            await asyncio.sleep(0)


def block(loop: WatchedTimeLoop, seconds: float) -> None:
    """A callback that blocks the loop for ``seconds``: a stall."""
    loop.hold(seconds)


@pytest.mark.parametrize(
    ("waits", "cut_off"),
    [(True, "_beat"), (True, "_restart"), (False, "_beat")],
    ids=["selector-beat", "selector-restart", "no-selector-beat"],
)
def test_a_beat_or_restart_a_ctrl_c_ended_before_its_first_line_is_taken_back_and_the_next_stall_is_seen_once(
    loop: WatchedTimeLoop, waits: bool, cut_off: str
) -> None:
    rig = Rig(loop, waits)
    cut = interrupting_at_the_call_of(getattr(StallWatch, cut_off).__code__)
    interrupted(loop, cut, waits_and_works(5.0, loop.hold))
    loop.run_until_complete(waits_and_works(0.3, loop.hold))
    assert rig.stalls == []
    loop.call_soon(block, loop, 0.3)
    loop.run_until_complete(asyncio.sleep(0.5))
    rig.close()
    [stall] = rig.stalls
    # Timed from the loop's last sign of progress, within a beat's period of the block.
    assert abs(stall.duration - 300.0) <= rig.watch.period * 1000.0
    # Located: the watchdog looked during the block (the stack is the loop thread's, in the blocking callback).
    assert stall.location is not None
    assert "in block\n" in stall.stack


def work(loop: FakeTimeLoop, seconds: float) -> None:
    """The application's work: ``seconds`` on the loop's thread, during which the stall watchdog may look."""
    if isinstance(loop, WatchedTimeLoop):
        loop.hold(seconds)
    else:
        loop.clock.jump(seconds)


def samples_go_on(loop: FakeTimeLoop, lags: Callable[[], int], busy: bool, seconds: float = 2.0) -> None:
    """Run the loop ``seconds`` of virtual time, busy in 2 ms steps or idle, and check a sample came at every
    interval (one may straddle each end; each link is armed from when the last fired, up to a step late)."""
    before = lags()
    end = loop.time() + seconds

    async def on() -> None:
        while loop.time() < end:
            if busy:
                work(loop, STEP)
                await asyncio.sleep(0)
            else:
                await asyncio.sleep(0.1)

    loop.run_until_complete(on())
    assert lags() - before >= seconds / (INTERVAL + (STEP if busy else 0.0)) - 2, "sampling stopped"


@pytest.mark.parametrize("busy", [False, True], ids=["idle", "busy"])
@pytest.mark.parametrize("waits", [True, False], ids=["selector", "no-selector"])
def test_a_sampler_timer_a_ctrl_c_cut_off_is_taken_over_by_its_spare_with_the_stall_watch_on(
    loop: WatchedTimeLoop, busy: bool, waits: bool
) -> None:
    rig = Rig(loop, waits)
    interrupted(loop, interrupting_at_the_call_of(Sampler._fire.__code__), asyncio.sleep(5.0))
    lost_at, sampled = loop.time(), len(rig.lags)
    samples_go_on(loop, lambda: len(rig.lags), busy)
    rig.close()
    # The spare took over an interval later (not a revival by the stall watch, which would come later still).
    assert rig.times[sampled] - lost_at <= INTERVAL + (STEP if busy else 0.0)
    # The spare measured its own lateness, never the lost interval; the lost wake-up is no stall either.
    assert max(rig.lags) <= (STEP * 1000.0 if busy else 0.0)
    assert rig.stalls == []


@pytest.mark.parametrize("waits", [True, False], ids=["selector", "no-selector"])
def test_a_link_its_spare_and_a_revival_all_cut_off_are_revived_again_by_the_stall_watch(
    loop: WatchedTimeLoop, waits: bool
) -> None:
    rig = Rig(loop, waits)
    # The timer, its spare, then the first spare the stall watch armed: only its next revival goes on.
    for _ in range(3):
        interrupted(loop, interrupting_at_the_call_of(Sampler._fire.__code__), asyncio.sleep(5.0))
    lost_at, sampled = loop.time(), len(rig.lags)
    loop.run_until_complete(asyncio.sleep(5.0))
    assert len(rig.lags) > sampled, "never revived"
    # Revived by the stall watch as documented: within interval + threshold + a second of the revival lost.
    assert rig.times[sampled] - lost_at <= INTERVAL + THRESHOLD + _ctrl_c.REVIVE_SECONDS
    samples_go_on(loop, lambda: len(rig.lags), busy=False)
    rig.close()
    assert set(rig.lags) == {0.0}  # each revived spare measured its own lateness
    assert rig.stalls == []


@pytest.mark.parametrize("busy", [False, True], ids=["idle", "busy"])
@pytest.mark.parametrize("waits", [True, False], ids=["selector", "no-selector"])
def test_a_sampler_timer_a_ctrl_c_took_off_the_ready_queue_is_taken_over_with_the_stall_watch_on(
    loop: WatchedTimeLoop, busy: bool, waits: bool
) -> None:
    rig = Rig(loop, waits)
    interrupted(loop, interrupt_after_taking_the_samplers_timer(3), asyncio.sleep(3600.0))
    lost_at, sampled = loop.time(), len(rig.lags)
    samples_go_on(loop, lambda: len(rig.lags), busy)
    rig.close()
    assert rig.times[sampled] - lost_at <= INTERVAL + (STEP if busy else 0.0)  # its spare took over
    assert max(rig.lags) <= (STEP * 1000.0 if busy else 0.0)
    assert rig.stalls == []


@pytest.mark.parametrize("waits", [True, False], ids=["selector", "no-selector"])
def test_a_ctrl_c_in_the_middle_of_a_beat_reaches_the_application_and_the_next_stall_is_seen_once(
    waits: bool,
) -> None:
    loop = WatchedTimeLoop()
    armed = [False]

    def interrupting() -> float:
        # The watch's clock, read on the loop's thread only by a beat or a restart: a Ctrl-C lands there.
        if armed[0] and threading.current_thread() is threading.main_thread():
            armed[0] = False
            raise KeyboardInterrupt
        return loop.clock()

    try:
        rig = Rig(loop, waits, now=interrupting)

        async def first() -> None:
            await waits_and_works(0.1, loop.hold)
            armed[0] = True
            await waits_and_works(5.0, loop.hold)

        interrupted(loop, None, first())
        assert not armed[0]
        loop.run_until_complete(waits_and_works(0.3, loop.hold))
        assert rig.stalls == []
        loop.call_soon(block, loop, 0.3)
        loop.run_until_complete(asyncio.sleep(0.5))
        rig.close()
    finally:
        loop.close()
    [stall] = rig.stalls
    assert abs(stall.duration - 300.0) <= rig.watch.period * 1000.0
    assert "in block\n" in stall.stack


# The whole monitor, stalls off (the watchdog is a real thread; the stall watch's part is above): lines in memory.


def monitor_on(loop: FakeTimeLoop, sent: Collected) -> loopstat.Monitor:
    """A monitor of ``loop`` on its virtual clock, guarded against ``loop.close()`` as ``install()`` guards it."""
    settings = resolve("127.0.0.1", 9, environ={}, interval=INTERVAL, stall_threshold=None)
    monitor = loopstat.Monitor(settings, loop, clock=loop.clock, connection=sent)
    inside.guard_close(monitor)
    inside.start(monitor)
    return monitor


def loop_errors(loop: asyncio.AbstractEventLoop) -> List[Dict[str, Any]]:
    """What reaches the loop's exception handler."""
    errors: List[Dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: errors.append(context))
    return errors


async def short_steps(loop: FakeTimeLoop) -> None:
    """An application busy with short steps, for ever."""
    while True:
        work(loop, STEP)
        await asyncio.sleep(0)


@pytest.mark.parametrize("wakeups", [3, 10, 30])
def test_loop_close_after_ctrl_c_lost_a_samplers_timer_releases_the_monitor_at_once(wakeups: int) -> None:
    """Ctrl-C, then main cancelled, a short run, loop.close(): the monitor is released, nothing logged."""
    loop, sent = FakeTimeLoop(), Collected()
    errors = loop_errors(loop)
    monitor = monitor_on(loop, sent)
    main = loop.create_task(short_steps(loop))
    interrupted(loop, interrupt_after_taking_the_samplers_timer(wakeups), main)
    main.cancel()
    loop.run_until_complete(asyncio.sleep(0.01))
    closed_at = loop.time()
    loop.close()
    assert loop.time() == closed_at  # nothing was waited for
    gc.collect()
    assert (monitor.running, sent.closed, errors) == (False, True, [])
    assert sent.values("loopstat.lag", "g")  # it sampled before


def test_stop_after_ctrl_c_lost_a_samplers_timer_returns_at_once() -> None:
    loop, sent = FakeTimeLoop(), Collected()
    try:
        monitor = monitor_on(loop, sent)
        interrupted(loop, interrupt_after_taking_the_samplers_timer(5), asyncio.sleep(5.0))
        stopping_at = loop.time()
        loop.run_until_complete(monitor.stop())
        assert loop.time() == stopping_at  # not a moment of virtual time: there is nothing to wait for
        assert (monitor.running, sent.closed) == (False, True)
    finally:
        loop.close()


@pytest.mark.parametrize("then", ["run on", "close"])
def test_a_ctrl_c_that_lands_in_the_sampler_reaches_the_application_and_sampling_goes_on(then: str) -> None:
    loop, sent = FakeTimeLoop(), Collected()
    errors = loop_errors(loop)
    try:
        monitor = monitor_on(loop, sent)
        interrupted(loop, interrupting_the_sampler_as_it_samples(5), asyncio.sleep(5.0))
        assert monitor.running
        # The chain was armed before the sample began: its next link is an interval on, not left to the spare.
        assert inside.next_sample(monitor) == pytest.approx(loop.time() + INTERVAL)
        if then == "run on":
            lags = lambda: len(sent.values("loopstat.lag", "g"))  # noqa: E731
            samples_go_on(loop, lags, busy=False)
            assert monitor.running
            loop.run_until_complete(monitor.stop())
    finally:
        loop.close()
    gc.collect()
    # Nothing logged for the application: the interrupted task does not say its exception was never retrieved.
    assert errors == []


@pytest.mark.parametrize("busy", [False, True], ids=["idle", "busy"])
def test_with_stalls_off_a_sampler_timer_a_ctrl_c_cut_off_is_taken_over_by_its_spare(busy: bool) -> None:
    loop, sent = FakeTimeLoop(), Collected()
    errors = loop_errors(loop)
    try:
        monitor = monitor_on(loop, sent)
        interrupted(loop, interrupting_at_the_call_of(Sampler._fire.__code__), asyncio.sleep(5.0))
        samples_go_on(loop, lambda: len(sent.values("loopstat.lag", "g")), busy)
        loop.run_until_complete(monitor.stop())
    finally:
        loop.close()
    assert max(sent.values("loopstat.lag", "g")) <= (STEP * 1000.0 if busy else 0.0)  # the lost wait is no lag
    assert errors == []


@pytest.mark.parametrize("busy", [False, True], ids=["idle", "busy"])
def test_with_stalls_off_a_sampler_timer_a_ctrl_c_took_off_the_ready_queue_is_taken_over_and_no_task_is_counted(
    busy: bool,
) -> None:
    loop, sent = FakeTimeLoop(), Collected()
    errors = loop_errors(loop)
    try:
        monitor = monitor_on(loop, sent)
        interrupted(loop, interrupt_after_taking_the_samplers_timer(3), asyncio.sleep(3600.0))
        samples_go_on(loop, lambda: len(sent.values("loopstat.lag", "g")), busy)
        assert monitor.running
        # The sleep the Ctrl-C left pending and the coroutine running the loop now: the application's two.
        assert monitor.tasks == 2
        loop.run_until_complete(monitor.stop())
    finally:
        loop.close()
    assert errors == []
