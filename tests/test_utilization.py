"""Utilization: the share of time the loop runs callbacks, timed at the selector of stdlib loops."""

from __future__ import annotations

import asyncio
import statistics
import time

import pytest

import loopstat
from tests.receiver import Receiver


async def duty_cycle(busy_share: float, seconds: float, period: float = 0.02) -> float:
    """Keep the loop busy for ``busy_share`` of each period; return the busy share really achieved."""
    busy = 0.0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        spin_from = time.perf_counter()
        while time.perf_counter() - spin_from < busy_share * period:
            pass
        busy += time.perf_counter() - spin_from
        await asyncio.sleep((1 - busy_share) * period)
    return busy / (time.perf_counter() - started)


@pytest.mark.parametrize("busy_share", [0.1, 0.5, 0.9])
async def test_utilization_follows_the_busy_share_within_five_points(
    receiver: Receiver, busy_share: float, event_loop_policy: asyncio.AbstractEventLoopPolicy
) -> None:
    if not isinstance(event_loop_policy, asyncio.DefaultEventLoopPolicy):
        pytest.skip("uvloop exposes no idle time")
    async with loopstat.install("127.0.0.1", receiver.port, interval=0.1, stall_threshold=None):
        await duty_cycle(busy_share, 0.3)  # warm-up: the first window starts at install()
        seen = len(receiver.values("loopstat.utilization", "g"))
        truth = await duty_cycle(busy_share, 2.0)
        window = receiver.values("loopstat.utilization", "g")[seen:]
    assert len(window) >= 10
    measured = sum(window) / len(window)
    assert abs(measured - truth) <= 0.05, f"utilization {measured:.3f}, busy share {truth:.3f}"


async def test_an_idle_loop_shows_utilization_near_zero(
    receiver: Receiver, event_loop_policy: asyncio.AbstractEventLoopPolicy
) -> None:
    if not isinstance(event_loop_policy, asyncio.DefaultEventLoopPolicy):
        pytest.skip("uvloop exposes no idle time")
    async with loopstat.install("127.0.0.1", receiver.port, interval=0.1) as monitor:
        # Idle for real: polling the receiver from this loop would be work the gauge rightly counts.
        await asyncio.sleep(0.75)
        assert monitor.utilization is not None
    utilization = receiver.values("loopstat.utilization", "g")
    assert len(utilization) >= 5
    # The sampler's own work and the receiver thread's share of the GIL are busy time too.
    assert statistics.median(utilization) < 0.05


async def test_uvloop_sends_no_utilization(
    receiver: Receiver, event_loop_policy: asyncio.AbstractEventLoopPolicy
) -> None:
    if isinstance(event_loop_policy, asyncio.DefaultEventLoopPolicy):
        pytest.skip("stdlib loops do send utilization")
    async with loopstat.install("127.0.0.1", receiver.port, interval=0.02) as monitor:
        await receiver.wait_count("loopstat.tasks", "g", 5)
        assert monitor.utilization is None
    assert receiver.values("loopstat.utilization", "g") == []


async def test_utilization_false_sends_none_and_leaves_the_selector_alone(
    receiver: Receiver, event_loop_policy: asyncio.AbstractEventLoopPolicy
) -> None:
    loop = asyncio.get_running_loop()
    selector = getattr(loop, "_selector", None)
    async with loopstat.install(
        "127.0.0.1", receiver.port, interval=0.02, utilization=False, stall_threshold=None
    ) as monitor:
        await receiver.wait_count("loopstat.tasks", "g", 5)
        assert "select" not in getattr(selector, "__dict__", {})
        assert monitor.utilization is None
    assert receiver.values("loopstat.utilization", "g") == []


async def test_stop_gives_the_selector_its_own_select_back() -> None:
    loop = asyncio.get_running_loop()
    selector = getattr(loop, "_selector", None)
    if selector is None:
        pytest.skip("uvloop has no Python selector")
    monitor = loopstat.install("127.0.0.1", 9, interval=0.02)
    await asyncio.sleep(0.05)
    assert "select" in vars(selector)
    await monitor.stop()
    assert "select" not in vars(selector)
