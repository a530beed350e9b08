"""What loopstat tells the log beyond faults: the loop it watches, and a hint when blocking calls would help."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import List

import pytest

import loopstat
from loopstat import _notes
from loopstat._notes import Notes
from tests.receiver import Receiver


def hints(caplog: pytest.LogCaptureFixture) -> List[str]:
    return [r.getMessage() for r in caplog.records if "LOOPSTAT_BLOCKING_CALLS=1" in r.getMessage()]


async def test_the_log_names_the_loop_once_when_the_monitor_starts(
    receiver: Receiver, loopstat_log: pytest.LogCaptureFixture
) -> None:
    loop = asyncio.get_running_loop()
    kind = "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
    async with loopstat.install("127.0.0.1", receiver.port, interval=0.02):
        await receiver.wait_for(lambda lines: len(lines) >= 9)
    named = [r for r in loopstat_log.records if "loopstat: watching the" in r.getMessage()]
    assert [r.levelname for r in named] == ["INFO"]
    message = named[0].getMessage()
    assert message.startswith(f"loopstat: watching the {kind} ({type(loop).__name__}) loop")
    if kind == "uvloop":
        assert "from its thread's CPU time" in message
        assert "blocking calls counted" in message
    else:
        assert "timed at its selector" in message
        assert "blocking calls not counted" in message


def stdlib_notes(interval: float = 0.25, counting: bool = False, timed: bool = True) -> Notes:
    loop = asyncio.new_event_loop()
    loop.close()
    return Notes(loop, interval, selector_timed=timed, counting=counting)


def test_the_hint_comes_once_after_two_seconds_of_samples_busy_off_the_cpu(
    loopstat_log: pytest.LogCaptureFixture,
) -> None:
    notes = stdlib_notes(interval=0.25)  # 2 s = 8 samples
    for _ in range(7):
        notes.sampled(0.99, 0.02)
    assert hints(loopstat_log) == []
    notes.sampled(0.99, 0.02)
    [hint] = hints(loopstat_log)
    assert "busy but mostly off the CPU for 8 samples in a row (utilization 99 %, cpu 2 %)" in hint
    assert "install(blocking_calls=True)" in hint
    for _ in range(100):
        notes.sampled(0.99, 0.02)
    assert len(hints(loopstat_log)) == 1, "once per monitor"


def test_a_sample_on_the_cpu_or_idle_starts_the_count_again(loopstat_log: pytest.LogCaptureFixture) -> None:
    notes = stdlib_notes(interval=0.25)
    for quiet in ((0.99, 0.95), (0.1, 0.0), (None, 0.0), (0.9, None)):
        for _ in range(7):
            notes.sampled(0.99, 0.02)
        notes.sampled(*quiet)
    assert hints(loopstat_log) == []


def test_short_intervals_still_need_two_seconds_and_long_ones_four_samples(
    loopstat_log: pytest.LogCaptureFixture,
) -> None:
    for interval, needed in ((0.02, 100), (1.0, 4)):
        loopstat_log.clear()
        notes = stdlib_notes(interval=interval)
        for _ in range(needed - 1):
            notes.sampled(1.0, 0.0)
        assert hints(loopstat_log) == []
        notes.sampled(1.0, 0.0)
        assert len(hints(loopstat_log)) == 1


@pytest.mark.parametrize(("counting", "timed"), [(True, True), (False, False)], ids=["counting", "uvloop"])
def test_no_hint_when_blocking_calls_are_counted_or_the_loop_is_not_timed_at_its_selector(
    loopstat_log: pytest.LogCaptureFixture, counting: bool, timed: bool
) -> None:
    notes = stdlib_notes(counting=counting, timed=timed)
    for _ in range(100):
        notes.sampled(1.0, 0.0)
    assert hints(loopstat_log) == []


async def test_a_loop_sleeping_in_its_callbacks_gets_the_hint_unless_blocking_calls_are_on(
    receiver: Receiver, loopstat_log: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Half a second of samples (10) is needed here, not two: the rule itself is the unit tests' above.
    monkeypatch.setattr(_notes, "HINT_SECONDS", 0.5)
    # 50 ms sleeps: under the stall threshold, so nothing else names them.
    uvloop = type(asyncio.get_running_loop()).__module__.startswith("uvloop")
    async with loopstat.install("127.0.0.1", receiver.port, interval=0.05):
        deadline = time.monotonic() + 30
        # On uvloop, 30 samples: three times what the hint needs, were it due.
        while not hints(loopstat_log) and not (uvloop and len(receiver.values("loopstat.lag", "g")) >= 30):
            assert time.monotonic() < deadline, "neither the hint nor the samples came"
            time.sleep(0.05)
            await asyncio.sleep(0)
    if uvloop:
        assert hints(loopstat_log) == [], "blocking calls are counted on uvloop by default"
    else:
        [hint] = hints(loopstat_log)
        assert hint.startswith("loopstat: the loop has been busy but mostly off the CPU")
    assert all(r.levelno <= logging.WARNING for r in loopstat_log.records)


def test_the_loop_name_is_its_package_and_class() -> None:
    loop = asyncio.new_event_loop()
    try:
        assert _notes.loop_name(loop) == f"asyncio ({type(loop).__name__})"
    finally:
        loop.close()
