"""The timing arithmetic of the probes, on injected clocks: exact, whatever the machine is doing."""

from __future__ import annotations

from typing import Any, List

import pytest

from loopstat.probes import Watched
from loopstat.probes.thread_clock import ThreadClock
from loopstat.probes.utilization import BusyTime, SelectorWaits
from tests.fake_clock import FakeClock as Clock


class Waits:
    """Stands for a selector clock: seconds waited so far, and whether a fault of its own stopped it."""

    idle = 0.0
    broken = False


def utilization(wall: Clock, waits: Waits) -> SelectorWaits:
    return SelectorWaits(waits, now=wall)  # type: ignore[arg-type]


def test_utilization_is_the_share_of_the_window_not_spent_waiting() -> None:
    wall, waits = Clock(), Waits()
    probe = utilization(wall, waits)
    wall.now += 0.25
    waits.idle += 0.05  # waited 50 ms of 250
    assert probe() == pytest.approx(0.8)
    wall.now += 0.5
    waits.idle += 0.5  # waited all of the next window
    assert probe() == 0.0


def test_utilization_is_none_once_the_clock_broke() -> None:
    wall, waits = Clock(), Waits()
    probe = utilization(wall, waits)
    wall.now += 0.25
    waits.broken = True  # its waits are no longer timed: idle stands still
    assert probe() is None


def test_utilization_stays_between_0_and_1_when_a_wait_straddles_two_windows() -> None:
    wall, waits = Clock(), Waits()
    probe = utilization(wall, waits)
    wall.now += 0.1
    waits.idle += 0.3  # a wait that began before the window is counted when it ends
    assert probe() == 0.0
    wall.now += 0.1
    assert probe() == 1.0


def test_utilization_of_an_empty_window_is_zero_not_a_division_by_zero() -> None:
    wall, waits = Clock(), Waits()
    assert utilization(wall, waits)() == 0.0


def test_cpu_share_is_thread_cpu_time_over_wall_time() -> None:
    wall, cpu = Clock(), Clock(5.0)
    probe = ThreadClock(wall=wall, cpu=cpu, thread=lambda: 1)
    wall.now += 0.25
    cpu.now += 0.1
    assert probe.share() == pytest.approx(0.4)
    assert probe.spent == pytest.approx(0.1)
    wall.now += 0.25
    cpu.now += 0.3  # more CPU than wall time: another clock's rounding, never above one core
    assert probe.share() == 1.0


def test_cpu_share_starts_afresh_when_the_loop_moves_to_another_thread() -> None:
    wall, cpu = Clock(), Clock(5.0)
    threads: List[Any] = [1]
    probe = ThreadClock(wall=wall, cpu=cpu, thread=lambda: threads[0])
    threads[0] = 2
    cpu.now = 0.01  # the other thread's clock
    wall.now += 0.25
    assert probe.share() is None, "two threads' CPU clocks do not subtract"
    wall.now += 0.25
    cpu.now += 0.05
    assert probe.share() == pytest.approx(0.2)


def test_where_no_selector_is_timed_busy_time_is_cpu_time_plus_time_in_watched_blocking_calls() -> None:
    wall, cpu = Clock(), Clock(5.0)
    none: Any = None
    watched = Watched(none, none, none, none, none, thread=ThreadClock(wall=wall, cpu=cpu, thread=lambda: 1))
    watched.blocked = 2.0  # before the first sample: not this window's
    watched.sample()
    busy = BusyTime(watched)
    wall.now += 0.5
    cpu.now += 0.1  # 100 ms of CPU
    watched.blocked += 0.2  # 200 ms in time.sleep, say
    watched.sample()
    assert busy() == pytest.approx(0.6)
    assert watched.busy_since() == pytest.approx(0.3)
    wall.now += 0.5
    watched.blocked += 0.7  # a call that began in the previous window: never above one
    watched.sample()
    assert busy() == 1.0
