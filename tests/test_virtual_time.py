"""The monitor on a real asyncio loop running on virtual time (the clock seam): lateness exact, minutes in milliseconds.

Its lines are read in memory (the connection seam, ``Collected``): every line
sent is there at once, without waiting on a socket in real time. uvloop cannot
run on virtual time; the same behaviour on the real clock and a real socket,
on both loops, is tests/test_lifecycle.py's and tests/test_metrics.py's.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Iterator

import pytest

import loopstat
from loopstat._options import resolve
from loopstat.probes import Watched
from tests import inside
from tests.fake_time import FakeTimeLoop
from tests.interrupts import interrupt_after_taking_the_samplers_timer, interrupted
from tests.receiver import Collected

INTERVAL = 0.25


@pytest.fixture
def loop() -> Iterator[FakeTimeLoop]:
    loop = FakeTimeLoop()
    yield loop
    loop.close()


@pytest.fixture
def sent() -> Iterator[Collected]:
    collected = Collected()
    yield collected
    assert collected.bad == [], f"malformed lines sent: {collected.bad}"


def monitor_on(loop: FakeTimeLoop, sent: Collected, **options: Any) -> loopstat.Monitor:
    """A monitor of ``loop`` on the loop's own virtual clock, its lines kept in ``sent``; stalls off (the watchdog
    thread keeps real time)."""
    settings = resolve("127.0.0.1", 9, environ={}, interval=INTERVAL, stall_threshold=None, **options)
    monitor = loopstat.Monitor(settings, loop, clock=loop.clock, connection=sent)
    inside.start(monitor)
    return monitor


def test_a_block_shows_in_lag_as_exactly_how_late_it_made_the_next_timer(loop: FakeTimeLoop, sent: Collected) -> None:
    monitor = monitor_on(loop, sent)
    loop.run_until_complete(asyncio.sleep(1.0))
    due = inside.next_sample(monitor)
    loop.call_at(due - 0.1, loop.clock.jump, 0.3)  # a callback that holds the loop for 300 ms
    loop.run_until_complete(asyncio.sleep(1.0))
    assert monitor.lag == 0.0  # the samples after it are on time again
    loop.run_until_complete(monitor.stop())
    assert sent.closed  # stop() released the connection as it would a socket
    lags = sent.values("loopstat.lag", "g")
    assert len(lags) >= 6
    assert lags.count(200.0) == 1  # due 100 ms after the block began, it ran 200 ms late
    assert set(lags) == {0.0, 200.0}


def test_with_stalls_off_lag_keeps_sampling_through_a_wake_up_lost_to_ctrl_c(
    loop: FakeTimeLoop, sent: Collected
) -> None:
    monitor = monitor_on(loop, sent)
    started = loop.time()
    interrupted(loop, interrupt_after_taking_the_samplers_timer(3), asyncio.sleep(10.0))
    loop.run_until_complete(asyncio.sleep(5.0))
    elapsed = loop.time() - started
    loop.run_until_complete(monitor.stop())
    # One wake-up on the first turn attaches the probes, one is lost: every other one samples.
    expected = int(elapsed / INTERVAL) - 2
    lags = sent.values("loopstat.lag", "g")
    assert len(lags) >= expected
    assert set(lags) == {0.0}  # the spare that took over measured its own lateness: none


def test_a_sample_failing_every_time_is_logged_once_a_minute_with_the_count_held_back(
    loop: FakeTimeLoop, sent: Collected, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def failing(watched: Watched) -> None:
        raise OSError("sample broke")

    monkeypatch.setattr(Watched, "sample", failing)
    caplog.set_level(logging.ERROR, logger="loopstat.monitor")
    monitor = monitor_on(loop, sent)
    loop.run_until_complete(asyncio.sleep(150.0))  # 600 samples, in a moment
    loop.run_until_complete(monitor.stop())
    per_minute = int(60.0 / INTERVAL)
    assert [record.getMessage() for record in caplog.records] == [
        "loopstat: a sample failed; sampling goes on",
        f"loopstat: a sample failed ({per_minute - 1} more since the last report); sampling goes on",
        f"loopstat: a sample failed ({per_minute - 1} more since the last report); sampling goes on",
    ]
