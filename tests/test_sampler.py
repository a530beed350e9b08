"""The sampler's chain of timers, on a fake loop and clock: lag, spares, revival, Ctrl-C, stop."""

from __future__ import annotations

import asyncio
import math
from typing import Any, Callable, List, Tuple

import pytest

from loopstat import _ctrl_c
from loopstat.probes import lag

INTERVAL = 0.25


class Timer:
    """A timer of the fake loop: what ``call_at`` returns."""

    def __init__(self, when: float, callback: Callable[..., None], args: Tuple[Any, ...]) -> None:
        self.when, self.callback, self.args = when, callback, args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeLoop:
    """Timers only, in deadline order, on a clock the test moves; ``lose`` drops the next due timer unrun."""

    def __init__(self) -> None:
        self.now = 100.0
        self.timers: List[Timer] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[..., None], *args: Any) -> Timer:
        timer = Timer(when, callback, args)
        self.timers.append(timer)
        return timer

    def pending(self) -> List[Timer]:
        return sorted((t for t in self.timers if not t.cancelled), key=lambda t: t.when)

    def run_until(self, until: float, lose: int = 0, late: float = 0.0) -> None:
        """Run the timers due by ``until``, each ``late`` seconds after its deadline; the first ``lose`` are lost."""
        while True:
            due = [t for t in self.pending() if t.when <= until]
            if not due:
                break
            timer = due[0]
            self.timers.remove(timer)
            self.now = max(self.now, timer.when + late)
            if lose:
                lose -= 1  # cut off before its first line
                continue
            timer.callback(*timer.args)
        self.now = max(self.now, until)


def new_lags() -> List[float]:
    return []


def sampler(loop: FakeLoop, lags: List[float]) -> lag.Sampler:
    # Two clocks, as in a real loop: the perf clock runs at an offset from the loop's.
    fake: Any = loop
    return lag.Sampler(fake, INTERVAL, lags.append, clock=lambda: loop.now + 5000.0)


def test_lag_is_how_late_each_timer_fires_and_never_negative() -> None:
    loop, lags = FakeLoop(), new_lags()
    chain = sampler(loop, lags)
    chain.start()
    loop.run_until(100.25, late=0.010)
    loop.run_until(100.52, late=0.0)
    assert lags == [pytest.approx(10.0), 0.0]
    assert chain.next_sample == pytest.approx(100.26 + 2 * INTERVAL)


def test_each_link_keeps_one_spare_and_only_one_of_the_two_samples() -> None:
    loop, lags = FakeLoop(), new_lags()
    chain = sampler(loop, lags)
    chain.start()
    loop.run_until(101.0, late=0.3)  # a stalled loop: both timers of each link are due at once
    assert len(lags) == 2
    assert lags == [pytest.approx(300.0)] * 2
    assert len(loop.pending()) == 2  # the next link and its spare, nothing left of the old ones


def test_a_timer_lost_to_ctrl_c_is_taken_over_by_its_spare_an_interval_later_and_its_lag_is_its_own() -> None:
    loop, lags = FakeLoop(), new_lags()
    chain = sampler(loop, lags)
    chain.start()
    loop.run_until(100.25 + 0.001, lose=1)
    assert lags == []
    loop.run_until(100.50 + 0.002, late=0.002)
    assert lags == [pytest.approx(2.0)]  # the spare's own lateness, not the lost interval
    loop.run_until(101.5)
    assert len(lags) == 4  # the chain goes on from the spare: 100.75, 101.0 and 101.25 late


def test_a_link_and_its_spare_both_lost_wait_for_a_revival_which_does_nothing_to_a_live_chain() -> None:
    loop, lags = FakeLoop(), new_lags()
    chain = sampler(loop, lags)
    chain.start()
    loop.run_until(101.0, lose=2)
    assert lags == []
    assert loop.pending() == []
    chain.revive()
    chain.revive()  # at most one spare a REVIVE_SECONDS
    assert len(loop.pending()) == 1
    loop.run_until(101.25)
    assert lags == [0.0]
    loop.now += _ctrl_c.REVIVE_SECONDS
    live = loop.pending()
    chain.revive()  # the chain lives, its link overdue: the extra spare comes after it
    [extra] = [t for t in loop.pending() if t not in live]
    assert extra.when > max(t.when for t in live)
    loop.run_until(loop.now)
    assert extra.cancelled
    assert len(lags) == 2


def test_a_ctrl_c_in_the_sample_reaches_the_caller_and_the_chain_is_already_armed() -> None:
    loop, lags = FakeLoop(), new_lags()

    def interrupted(value: float) -> None:
        lags.append(value)
        if len(lags) == 2:
            raise KeyboardInterrupt

    fake: Any = loop
    chain = lag.Sampler(fake, INTERVAL, interrupted, clock=loop.time)
    chain.start()
    with pytest.raises(KeyboardInterrupt):
        loop.run_until(102.0)
    loop.run_until(102.0)
    assert len(lags) == 8


def test_stop_cancels_every_timer_and_a_timer_run_after_it_does_nothing() -> None:
    loop, lags = FakeLoop(), new_lags()
    chain = sampler(loop, lags)
    chain.start()
    armed = list(loop.timers)
    chain.stop()
    assert all(t.cancelled for t in armed)
    armed[0].callback(*armed[0].args)  # already taken off the queue when stop() came
    chain.revive()
    chain.start()
    assert (lags, loop.pending(), chain.due) == ([], [], math.inf)


def test_on_a_real_loop_the_sampler_is_no_task() -> None:
    loop = asyncio.new_event_loop()
    try:
        lags: List[float] = []
        chain = lag.Sampler(loop, 0.001, lags.append)
        chain.start()
        loop.run_until_complete(asyncio.sleep(0.05))
        chain.stop()
        assert lags
        assert min(lags) >= 0.0
        assert asyncio.all_tasks(loop) == set()
    finally:
        loop.close()
