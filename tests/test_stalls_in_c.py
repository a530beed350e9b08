"""Stalls inside C code that holds the GIL: named at the application line that made the call, with its stack.

The watchdog cannot look while such a call runs; it gets in as the call
returns, when the loop still stands at the calling line. Each call here is a
real one, sized on this machine to last about ``TARGET`` seconds, and sized up
and made again if, on a loaded machine, it ran shorter than ``AT_LEAST_MS``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import re
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List

import pytest

import loopstat
from loopstat import Stall
from loopstat.probes import frames, stall_capture
from tests import inside
from tests.test_stalls import line_of

# How long each C call is sized to last, and the least a test accepts to have
# seen: a stall of at least 3x the default threshold of 0.1 s.
TARGET = 0.6
AT_LEAST_MS = 300.0
# A call that ran short is sized up (by at most 8x each time) and made again:
# eight tries grow even a size measured in a pause of the whole machine 8**7-fold.
TRIES = 8

BACKTRACKING = re.compile(r"(a+)+$")


def seconds(call: Callable[[], object], runs: int = 3) -> float:
    """The shortest of a few runs: the machine's speed, with as little of its load as can be."""
    took = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        took.append(time.perf_counter() - started)
    return min(took)


def records(count: int) -> str:
    rows = (f'{{"id": {i}, "name": "customer {i}", "tags": ["a", "b"], "due": {i / 2}}}' for i in range(count))
    return "[" + ",".join(rows) + "]"


def parse_seconds(document: str) -> float:
    return seconds(lambda: json.loads(document), runs=1)


@functools.cache
def document_size() -> int:
    # Parsing slows down as the collector's work grows with the document: sized
    # by doubling, then scaled at most twofold.
    count = 20_000
    while True:
        took = parse_seconds(records(count))
        if took >= TARGET / 2:
            return int(count * TARGET / took)
        count *= 2


def range_size() -> int:
    return int(1_000_000 * TARGET / seconds(lambda: sum(range(1_000_000))))


def input_size() -> int:
    # Each "a" more doubles the time the pattern takes to fail.
    took = seconds(lambda: BACKTRACKING.match("a" * 16 + "b"))
    return 16 + max(0, round(math.log2(TARGET / took)))


def times(size: int, factor: float) -> int:
    return max(size + 1, int(size * factor))


def hopeless_input(length: int) -> str:
    return "a" * length + "b"


def longer_input(length: int, factor: float) -> int:
    return length + max(1, math.ceil(math.log2(factor)))


# The application: each blocks the loop in one C call that holds the GIL.


def load_report(document: str) -> float:
    started = time.perf_counter()
    json.loads(document)  # the calling line
    return (time.perf_counter() - started) * 1000.0


def add_up(count: int) -> float:
    started = time.perf_counter()
    sum(range(count))  # the calling line
    return (time.perf_counter() - started) * 1000.0


def check_input(text: str) -> float:
    started = time.perf_counter()
    re.match(BACKTRACKING, text)  # the calling line
    return (time.perf_counter() - started) * 1000.0


@dataclass(frozen=True)
class Call:
    """One C call of the application, and how to size its argument."""

    app: Callable[[Any], float]
    #: The size measured to last about TARGET on this machine.
    first_size: Callable[[], int]
    argument: Callable[[int], Any]
    #: A size that lasts about ``factor`` times longer.
    grown: Callable[[int, float], int]


CALLS: Dict[str, Call] = {
    "json.loads": Call(load_report, document_size, records, times),
    "sum": Call(add_up, range_size, lambda count: count, times),
    "re.match": Call(check_input, input_size, hopeless_input, longer_input),
}

# The size that last lasted long enough, per call: later tests start from it.
sizes: Dict[str, int] = {}


async def stall_of_the_call(seen: List[Stall], where: str, blocked: float, timeout: float = 30.0) -> Stall:
    """The stall the call made, among those ``seen``: located at ``where``, or else as long as the call.

    A loaded machine may add stalls of its own (short of CPU), before or after it,
    and report one right after the call's, so every stall reported is looked at.
    It may also keep the watchdog off the CPU until the call returned, and let it
    in only after the loop ran on: then the stall is unlocated, or located where
    the loop had got to.
    """
    deadline = time.monotonic() + timeout
    while True:
        for stall in seen:
            if stall.location is not None and stall.location.endswith(where):
                return stall
        for stall in seen:
            if stall.duration >= blocked / 2:
                return stall
        assert time.monotonic() < deadline, f"no stall at {where}; seen: {seen}"
        await asyncio.sleep(0.01)


async def stall_of(name: str, **options: Any) -> None:
    """Block the loop in the named C call from application code; check the stall names its calling line."""
    call = CALLS[name]
    size = sizes.get(name) or call.first_size()
    where = f"test_stalls_in_c.py:{line_of(call.app, 'the calling line')} in {call.app.__name__}"
    for _ in range(TRIES):
        argument = call.argument(size)  # made before the monitor starts: making a big one is a stall too
        async with loopstat.install("127.0.0.1", 9, **options) as monitor:
            await asyncio.sleep(0.1)  # the loop waits, then wakes to the call, as for a request
            seen = inside.recorded_stalls(monitor)
            blocked = call.app(argument)
            if blocked >= AT_LEAST_MS:
                stall = await stall_of_the_call(seen, where, blocked)
                # Elsewhere or unlocated: the watchdog thread got no CPU until the loop had run on.
                if stall.location is not None and stall.location.endswith(where):
                    break
        # Too short to test, or too short for a loaded machine's watchdog: size up, try again.
        size = call.grown(size, min(8.0, max(1.5, TARGET * 1000.0 / max(blocked, 1.0))))
    else:
        pytest.fail(f"{name}: no located stall of {AT_LEAST_MS:.0f} ms in {TRIES} tries, the last {blocked:.0f} ms")
    sizes[name] = size
    # Counted from when the loop got stuck, not only from when the watchdog got in.
    assert stall.duration >= blocked / 2
    assert stall.location is not None, f"not located; stack:\n{stall.stack}"
    assert stall.location.endswith(where), stall.location
    assert f"line {line_of(call.app, 'the calling line')}, in {call.app.__name__}" in stall.stack
    assert "# the calling line" in stall.stack


@pytest.mark.parametrize("name", sorted(CALLS))
async def test_a_stall_in_c_code_holding_the_gil_is_named_at_the_line_that_made_the_call(name: str) -> None:
    await stall_of(name)


async def test_a_json_loads_that_runs_the_collector_is_still_the_applications_stall() -> None:
    # A C call that allocates runs the garbage collector, and loopstat's GC hook
    # with it: that is where the watchdog gets in, and it must not count as loopstat's own.
    await stall_of("json.loads", gc=True)


async def test_a_stack_slow_to_describe_is_still_reported_with_its_stall(monkeypatch: pytest.MonkeyPatch) -> None:
    # The watchdog gets in only as the call returns, and reading source lines
    # (here from a slow disk) lets the loop run on and report first: it waits.
    real = frames.format_stack

    def from_a_slow_disk(*args: Any) -> str:
        time.sleep(0.03)
        return real(*args)

    monkeypatch.setattr(stall_capture, "format_stack", from_a_slow_disk)
    await stall_of("sum")
