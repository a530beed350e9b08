"""Faults never reach the application: absent agents, unknown hosts, failing samples."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

import loopstat
from loopstat import sink as sink_module
from loopstat.probes import Watched
from tests import inside
from tests.receiver import Receiver


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "loopstat.sink" and r.levelno >= logging.WARNING]


async def lag_follows_a_block(monitor: loopstat.Monitor) -> None:
    """Assert the monitor keeps sampling: a 150 ms block shows in monitor.lag."""
    # Every lag set is kept: at a 10 ms interval the next sample may overwrite it before this task looks.
    lags = inside.recorded_lags(monitor)
    time.sleep(0.15)
    deadline = time.monotonic() + 30
    while max(lags, default=0.0) < 100:
        assert time.monotonic() < deadline, f"monitor.lag did not follow the block: {lags}"
        await asyncio.sleep(0.005)


async def test_absent_agent_gives_one_warning_and_sampling_goes_on(
    free_port: int, loopstat_log: pytest.LogCaptureFixture
) -> None:
    async with loopstat.install("127.0.0.1", free_port, interval=0.01, stall_threshold=None) as monitor:
        await asyncio.sleep(0.3)
        await lag_follows_a_block(monitor)
        await asyncio.sleep(0.2)
        assert monitor.errors > 1
    assert len(warnings_of(loopstat_log)) == 1
    assert f"127.0.0.1:{free_port}" in warnings_of(loopstat_log)[0]


async def test_unresolvable_host_gives_one_warning_and_sampling_goes_on(
    loopstat_log: pytest.LogCaptureFixture,
) -> None:
    async with loopstat.install("agent.invalid", 8125, interval=0.01, stall_threshold=None) as monitor:
        deadline = time.monotonic() + 15
        while not warnings_of(loopstat_log):
            assert time.monotonic() < deadline, "no warning about the unresolvable host"
            await asyncio.sleep(0.01)
        await lag_follows_a_block(monitor)
    assert len(warnings_of(loopstat_log)) == 1
    assert "cannot resolve 'agent.invalid'" in warnings_of(loopstat_log)[0]


async def test_agent_started_after_the_app_receives_metrics_without_a_restart(free_port: int) -> None:
    async with loopstat.install("127.0.0.1", free_port, interval=0.01):
        await asyncio.sleep(0.2)
        late = Receiver(free_port)
        try:
            await late.wait_for(lambda lines: len(lines) >= 3)
        finally:
            late.close()
        assert late.bad == []


async def test_agent_restart_resumes_sending_with_one_warning_per_outage(
    free_port: int, loopstat_log: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Loopback refuses every datagram at once (no ICMP rate limit there): a short recovery spell tells as well.
    monkeypatch.setattr(sink_module, "RECOVERY_SECONDS", 0.3)
    async with loopstat.install("127.0.0.1", free_port, interval=0.01):
        for outage in (1, 2):
            agent = Receiver(free_port)
            await agent.wait_for(lambda lines: len(lines) >= 3)
            agent.close()
            # Refused sends, many of them, during the outage.
            await asyncio.sleep(0.3)
            assert len(warnings_of(loopstat_log)) == outage
            agent = Receiver(free_port)
            # Recovery is declared after a quiet spell with datagrams going out.
            deadline = time.monotonic() + 10
            while "reach 127.0.0.1" not in loopstat_log.text.split("dropped")[-1]:
                assert time.monotonic() < deadline, "recovery was not noticed"
                await asyncio.sleep(0.05)
            agent.close()
            assert agent.bad == []
            assert len(warnings_of(loopstat_log)) == outage


async def test_a_failing_sample_is_logged_and_sampling_goes_on(
    receiver: Receiver, loopstat_log: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fault of the sample as a whole; one probe's fault is tests/test_never_the_cause.py's.
    real_sample = Watched.sample
    failures = 0

    def sample_failing_thrice(watched: Watched) -> None:
        nonlocal failures
        if failures < 3:
            failures += 1
            raise OSError("sample broke")
        real_sample(watched)

    monkeypatch.setattr(Watched, "sample", sample_failing_thrice)
    async with loopstat.install("127.0.0.1", receiver.port, interval=0.01) as monitor:
        await receiver.wait_for(lambda lines: len(lines) >= 3)
        assert monitor.running
    records = [r for r in loopstat_log.records if "a sample failed" in r.getMessage()]
    # One report with the traceback; the repeats within a minute are only counted.
    assert len(records) == 1
    assert records[0].exc_info is not None
    assert "sample broke" in loopstat_log.text
