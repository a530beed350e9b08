"""A watchdog kept off the CPU for a whole stall, on virtual time: its late look, landing in loopstat's own code
after the application's callback returned, must not make the application's stall loopstat's and drop it."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Callable

import pytest

from loopstat.probes import gc as gc_probe
from tests.fake_watch import WatchedTimeLoop
from tests.test_ctrl_c import Rig
from tests.test_stalls import as_loopstats_code

BLOCK = 0.3


@pytest.fixture
def loop() -> Any:
    loop = WatchedTimeLoop()
    yield loop
    loop.close()


def unwatched_block(loop: WatchedTimeLoop, seconds: float) -> None:
    """The application's callback blocks the loop while the watchdog gets no CPU: time passes, no look."""
    loop.clock.now += seconds


def own_callback_looked_at(loop: WatchedTimeLoop, look: Callable[[], None]) -> Callable[[], None]:
    """A callback of loopstat's own (as the sampler's) during which the watchdog looks (``look``, from a thread)."""
    started, done = threading.Event(), threading.Event()
    holds = as_loopstats_code("lambda: (started.set(), done.wait(10))", gc_probe, started=started, done=done)

    def looker() -> None:
        started.wait(10)
        try:
            look()
        finally:
            done.set()

    def callback() -> None:
        thread = threading.Thread(target=looker)
        thread.start()
        holds()
        thread.join()

    return callback


def test_a_late_look_that_lands_in_loopstats_own_callback_leaves_the_applications_stall_counted(
    loop: WatchedTimeLoop,
) -> None:
    rig = Rig(loop)
    loop.run_until_complete(asyncio.sleep(0.1))
    assert rig.stalls == []

    def late_look() -> None:
        loop.watchdog.look()  # due a threshold into the block, made only now

    loop.call_soon(unwatched_block, loop, BLOCK)
    loop.call_soon(own_callback_looked_at(loop, late_look))
    loop.run_until_complete(asyncio.sleep(0.2))
    rig.close()
    # Seen too late to say where: counted, not located (it was taken for loopstat's own and dropped).
    [stall] = rig.stalls
    # Timed from the loop's last sign of progress, within a beat's period of the block.
    assert abs(stall.duration - BLOCK * 1000.0) <= rig.watch.period * 1000.0
    assert stall.location is None


def test_a_look_in_time_at_loopstats_own_callback_is_still_not_the_applications_stall(
    loop: WatchedTimeLoop,
) -> None:
    rig = Rig(loop)
    loop.run_until_complete(asyncio.sleep(0.1))
    assert rig.stalls == []

    def look_in_time() -> None:
        loop.watchdog.hold(BLOCK)  # loopstat's callback blocks the loop, the watchdog looking when due

    loop.call_soon(own_callback_looked_at(loop, look_in_time))
    loop.run_until_complete(asyncio.sleep(0.2))
    rig.close()
    assert rig.stalls == []
