"""P.iteration: the longest turn of a stdlib loop between two samples, timed at every return to its selector."""

from __future__ import annotations

import asyncio
import time
from typing import List

import pytest

import loopstat
from loopstat._metrics import Line
from loopstat.probes.iteration import Iteration
from loopstat.probes.selector_clock import SelectorClock
from tests.receiver import Receiver

BLOCK = 0.03


def test_a_block_in_a_busy_loop_s_turn_is_its_longest_turn() -> None:
    # Callbacks always ready: the loop only polls (timeout 0), the path the clock takes inline.
    loop = asyncio.new_event_loop()
    try:
        clock = SelectorClock.attach(loop)
        assert clock is not None
        turns = 0

        def again() -> None:
            nonlocal turns
            turns += 1
            if turns == 50:
                time.sleep(BLOCK)
            if turns < 100:
                loop.call_soon(again)
            else:
                loop.stop()

        loop.call_soon(again)
        loop.run_forever()
        assert clock.take_longest() >= BLOCK
        assert clock.take_longest() == 0.0, "a new maximum starts at each take"
        clock.detach()
    finally:
        loop.close()


def test_a_block_after_a_wait_counts_from_the_wake_up() -> None:
    loop = asyncio.new_event_loop()
    try:
        clock = SelectorClock.attach(loop)
        assert clock is not None

        def block() -> None:
            time.sleep(BLOCK)
            # The stop in the next turn, whose poll ends this one: a stop timed apart from the block could come
            # due in its turn on a loaded machine, and the loop would end with the turn never timed.
            loop.call_soon(loop.stop)

        loop.call_later(0.01, block)
        loop.run_forever()
        assert clock.take_longest() >= BLOCK
        clock.detach()
    finally:
        loop.close()


def test_a_broken_clock_sends_no_iteration() -> None:
    loop = asyncio.new_event_loop()
    try:
        clock = SelectorClock.attach(loop)
        assert clock is not None
        probe = Iteration(clock)
        lines: List[Line] = []
        probe.read(lines)
        assert [line[0] for line in lines] == ["iteration"]
        clock._break(RuntimeError("a later Python's selector"))
        lines.clear()
        probe.read(lines)
        assert lines == []
    finally:
        loop.close()


async def test_the_gauge_is_the_longest_turn_of_each_sample_on_stdlib_loops_only(receiver: Receiver) -> None:
    uvloop = not isinstance(asyncio.get_running_loop(), asyncio.BaseEventLoop)
    async with loopstat.install("127.0.0.1", receiver.port, interval=0.05, stall_threshold=None):
        await asyncio.sleep(0.1)
        time.sleep(BLOCK)
        await receiver.wait_count("loopstat.utilization" if not uvloop else "loopstat.cpu", "g", 4)
        await asyncio.sleep(0.15)
    values = receiver.values("loopstat.iteration", "g")
    if uvloop:
        assert values == [], "uvloop turns out of Python's reach: nothing is sent"
        return
    assert max(values) >= BLOCK * 1000.0
    assert min(values) < BLOCK * 1000.0, "each sample starts a new maximum"


@pytest.mark.parametrize("utilization", [False])
async def test_without_utilization_no_iteration_is_sent(receiver: Receiver, utilization: bool) -> None:
    async with loopstat.install("127.0.0.1", receiver.port, interval=0.05, utilization=utilization):
        await receiver.wait_count("loopstat.lag", "g", 3)
    assert receiver.values("loopstat.iteration", "g") == []
