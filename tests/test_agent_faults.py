"""Faults of a real agent, Etsy statsd 0.9.0: started late, killed and restarted, never resolvable.

test_faults.py covers the same faults with a plain socket; here statsd itself
has to parse what arrives, read back through its management console.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Callable, Dict, List

import pytest

import loopstat
from tests.servers import LOOPBACK, Statsd, running_statsd

pytestmark = pytest.mark.e2e  # whole programs and real servers: run once, in the e2e env

INTERVAL = 0.02


def warnings_of(caplog: pytest.LogCaptureFixture, address: str) -> List[str]:
    """loopstat's warnings about the agent at ``address`` (not those about the loop itself)."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("loopstat") and r.levelno >= logging.WARNING and address in r.getMessage()
    ]


def infos_of(caplog: pytest.LogCaptureFixture, address: str) -> List[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("loopstat") and r.levelno == logging.INFO and address in r.getMessage()
    ]


def unique_prefix() -> str:
    return f"faults.t{uuid.uuid4().hex[:8]}"


async def until(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {timeout}s"
        await asyncio.sleep(0.01)


async def gauges_arrive(statsd: Statsd, prefix: str, timeout: float = 15.0) -> Dict[str, float]:
    """Wait until statsd holds the prefix's lag and tasks gauges; return the prefix's gauges."""
    deadline = time.monotonic() + timeout
    while True:
        gauges = await asyncio.to_thread(statsd.gauges)
        ours = {name: value for name, value in gauges.items() if name.startswith(prefix + ".")}
        if f"{prefix}.lag" in ours and f"{prefix}.tasks" in ours:
            return ours
        assert time.monotonic() < deadline, f"no gauges of {prefix} within {timeout}s: {gauges}\n{statsd.output()}"
        await asyncio.sleep(0.05)


@pytest.fixture
def statsd(tmp_path: Path) -> Iterator[Statsd]:
    """A running statsd of the test's own, without a backend to flush to."""
    with running_statsd(tmp_path / "statsd") as server:
        yield server


async def test_statsd_started_after_the_app_gets_metrics_without_a_restart(
    free_port: int, tmp_path: Path, loopstat_log: pytest.LogCaptureFixture
) -> None:
    prefix, address = unique_prefix(), f"127.0.0.1:{free_port}"
    late = Statsd(tmp_path / "statsd", port=free_port)
    try:
        async with loopstat.install(LOOPBACK, free_port, prefix=prefix, interval=INTERVAL) as monitor:
            await until(lambda: bool(warnings_of(loopstat_log, address)), "a warning that statsd is absent")
            await asyncio.to_thread(late.start)
            gauges = await gauges_arrive(late, prefix)
            assert monitor.running
        assert gauges[f"{prefix}.tasks"] >= 1
        assert (await asyncio.to_thread(late.stats))["messages.bad_lines_seen"] == 0
    finally:
        await asyncio.to_thread(late.stop)
    assert len(warnings_of(loopstat_log, address)) == 1


async def test_statsd_killed_and_restarted_on_its_port_gets_metrics_again_after_one_warning(
    free_port: int, tmp_path: Path, loopstat_log: pytest.LogCaptureFixture
) -> None:
    prefix, address = unique_prefix(), f"127.0.0.1:{free_port}"
    agent = Statsd(tmp_path / "statsd", port=free_port)
    await asyncio.to_thread(agent.start)
    ticks = 0

    async def application() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.005)

    app = asyncio.ensure_future(application())
    try:
        async with loopstat.install(LOOPBACK, free_port, prefix=prefix, interval=INTERVAL) as monitor:
            await gauges_arrive(agent, prefix)
            assert warnings_of(loopstat_log, address) == []

            await asyncio.to_thread(agent.kill)
            await until(lambda: bool(warnings_of(loopstat_log, address)), "a warning that statsd is gone")
            refused, ticks_then = monitor.errors, ticks
            await asyncio.sleep(0.3)
            # Sends go on being refused, one error each, and the app goes on: still one warning.
            assert monitor.errors > refused
            assert ticks > ticks_then

            await asyncio.to_thread(agent.start)
            assert agent.port == free_port
            await gauges_arrive(agent, prefix)
            await until(lambda: bool(infos_of(loopstat_log, address)), "loopstat noticing statsd is back")
            assert monitor.running
            assert not app.done()
        assert (await asyncio.to_thread(agent.stats))["messages.bad_lines_seen"] == 0
    finally:
        app.cancel()
        await asyncio.gather(app, return_exceptions=True)
        await asyncio.to_thread(agent.stop)
    assert len(warnings_of(loopstat_log, address)) == 1
    assert "cannot send" in warnings_of(loopstat_log, address)[0]
    assert infos_of(loopstat_log, address) == [f"loopstat: metrics reach {address} again"]


async def test_unresolvable_host_keeps_the_app_running_and_the_lag_current(
    statsd: Statsd, loopstat_log: pytest.LogCaptureFixture
) -> None:
    prefix, address = unique_prefix(), f"nothere.invalid:{statsd.port}"
    async with loopstat.install("nothere.invalid", statsd.port, prefix=prefix, interval=INTERVAL) as monitor:
        await until(lambda: bool(warnings_of(loopstat_log, address)), "a warning about the unresolvable host")
        time.sleep(0.15)  # a block on the loop
        await until(lambda: monitor.lag >= 100, "monitor.lag following the block")
        assert monitor.running
    gauges = await asyncio.to_thread(statsd.gauges)
    assert not [name for name in gauges if name.startswith(prefix)]
    assert len(warnings_of(loopstat_log, address)) == 1
    assert "cannot resolve 'nothere.invalid'" in warnings_of(loopstat_log, address)[0]
