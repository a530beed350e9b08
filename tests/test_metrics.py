"""What a monitor sends: names, types, units, tags, and values that track the loop."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import statistics
import time
from pathlib import Path

import pytest

import loopstat
from loopstat import _cgroup
from loopstat._metrics import METRICS, PROBES, markdown_table
from tests import inside
from tests.receiver import Line, Receiver


async def test_each_sample_sends_lag_gauge_lag_timing_and_tasks_gauge(receiver: Receiver) -> None:
    async with loopstat.install(
        "127.0.0.1", receiver.port, prefix="myapp", interval=0.02, utilization=False, stall_threshold=None
    ):
        lines = await receiver.wait_for(lambda lines: len(lines) >= 12)
    assert [(x.name, x.type) for x in lines[:8]] == [
        ("myapp.lag", "g"),
        ("myapp.lag", "ms"),
        ("myapp.tasks", "g"),
        ("myapp.cpu", "g"),
    ] * 2
    assert all(x.tags == () for x in lines)


async def test_each_sample_goes_out_as_one_datagram(receiver: Receiver) -> None:
    async with loopstat.install("127.0.0.1", receiver.port, prefix="myapp", interval=0.02, stall_threshold=None):
        await receiver.wait_count("myapp.tasks", "g", 5)
    samples = [datagram.split(b"\n") for datagram in receiver.datagrams]
    assert all(lines[0].startswith(b"myapp.lag:") for lines in samples)
    assert all(line.startswith(b"myapp.tasks:") for lines in samples for line in lines[2:3])
    assert len(samples) == len(receiver.values("myapp.tasks", "g"))


@pytest.mark.e2e  # bounds on the real clock: run once, in the e2e env
async def test_gauge_and_timing_carry_the_same_lag_in_milliseconds(receiver: Receiver) -> None:
    async with loopstat.install("127.0.0.1", receiver.port, prefix="myapp", interval=0.02) as monitor:
        await receiver.wait_count("myapp.lag", "ms", 9)
        lags = [monitor.lag]
        while len(lags) < 9:
            await asyncio.sleep(0.02)
            lags.append(monitor.lag)
    gauges = receiver.values("myapp.lag", "g")
    timings = receiver.values("myapp.lag", "ms")
    assert gauges[: len(timings)] == timings[: len(gauges)]
    # Milliseconds, not seconds or microseconds: an idle loop mostly wakes well within 20 ms of its deadline, even
    # when loaded (the machine may hold one wake-up back longer: the median, not each one).
    assert all(value >= 0 for value in timings + lags)
    assert statistics.median(timings) < 20
    assert statistics.median(lags) < 20


async def test_default_prefix_is_loopstat(receiver: Receiver) -> None:
    async with loopstat.install("127.0.0.1", receiver.port, interval=0.02, utilization=False, stall_threshold=None):
        lines = await receiver.wait_for(lambda lines: len(lines) >= 3)
    assert {x.name for x in lines} == {"loopstat.lag", "loopstat.cpu", "loopstat.tasks"}


async def test_empty_prefix_sends_bare_names(receiver: Receiver) -> None:
    async with loopstat.install(
        "127.0.0.1", receiver.port, prefix="", interval=0.02, utilization=False, stall_threshold=None
    ):
        lines = await receiver.wait_for(lambda lines: len(lines) >= 3)
    assert {x.name for x in lines} == {"lag", "cpu", "tasks"}


async def test_dogstatsd_flavor_sends_tags_on_every_line(receiver: Receiver) -> None:
    tags = {"team": "payments", "region": "eu-west-1"}
    async with loopstat.install(
        "127.0.0.1", receiver.port, tags=tags, interval=0.02, utilization=False, stall_threshold=None
    ):
        lines = await receiver.wait_for(lambda lines: len(lines) >= 6)
    assert all(dict(x.tags) == tags for x in lines)
    assert b"|#team:payments,region:eu-west-1" in receiver.datagrams[0]


async def test_tags_may_be_key_value_strings(receiver: Receiver) -> None:
    async with loopstat.install("127.0.0.1", receiver.port, tags=["team:payments", "shard:3"], interval=0.02):
        lines = await receiver.wait_for(lambda lines: len(lines) >= 3)
    assert all(x.tags == (("team", "payments"), ("shard", "3")) for x in lines)


async def test_statsd_flavor_sends_plain_lines_without_tags(receiver: Receiver) -> None:
    async with loopstat.install("127.0.0.1", receiver.port, tags={"team": "payments"}, flavor="statsd", interval=0.02):
        await receiver.wait_for(lambda lines: len(lines) >= 6)
    assert all(b"|#" not in datagram for datagram in receiver.datagrams)
    assert all(line.count(b"|") == 1 for datagram in receiver.datagrams for line in datagram.split(b"\n"))


async def test_wire_characters_in_tags_are_replaced_so_no_field_or_metric_is_injected(receiver: Receiver) -> None:
    tags = {"a|b": "x|y", "c#d": "#1", "e,f": "1,2", "g@h": "@0.5", "i\nj": "evil\nmetric:1|c", "k:l": "m:n"}
    async with loopstat.install(
        "127.0.0.1", receiver.port, tags=tags, interval=0.02, utilization=False, stall_threshold=None
    ):
        lines = await receiver.wait_for(lambda lines: len(lines) >= 3)
    assert {x.name for x in lines} == {"loopstat.lag", "loopstat.cpu", "loopstat.tasks"}
    assert dict(lines[0].tags) == {
        "a_b": "x_y",
        "c_d": "_1",
        "e_f": "1_2",
        "g_h": "_0.5",
        "i_j": "evil_metric:1_c",
        "k_l": "m:n",
    }
    sent = [line for datagram in receiver.datagrams for line in datagram.split(b"\n")]
    assert all(line.startswith((b"loopstat.lag:", b"loopstat.tasks:", b"loopstat.cpu:")) for line in sent)


@pytest.mark.e2e  # bounds on the real clock: run once, in the e2e env
async def test_lag_reflects_a_block_on_the_loop(receiver: Receiver) -> None:
    interval = 0.05
    async with loopstat.install("127.0.0.1", receiver.port, interval=interval):
        await receiver.wait_count("loopstat.lag", "ms", 2)
        time.sleep(0.3)  # the blocking call an application should not make
        await receiver.wait_for(lambda lines: any(x.value >= 200 for x in lines if x.type == "ms"))
    peak = max(receiver.values("loopstat.lag", "ms"))
    # Sleep overshoot sees the part of the block past the sampler's deadline:
    # between the block minus one interval and the block plus scheduling noise.
    assert 300 - interval * 1000 - 5 <= peak <= 300 + 60
    assert max(receiver.values("loopstat.lag", "g")) == peak


async def test_tasks_counts_live_application_tasks_exactly(receiver: Receiver) -> None:
    async with loopstat.install("127.0.0.1", receiver.port, interval=0.02) as monitor:
        await receiver.wait_count("loopstat.tasks", "g", 2)
        # Only this test's own task: neither the sampler nor the client's listener count.
        assert monitor.tasks == 1
        release = asyncio.Event()
        workers = [asyncio.create_task(release.wait()) for _ in range(5)]
        seen = len(receiver.values("loopstat.tasks", "g"))
        values = await receiver.wait_count("loopstat.tasks", "g", seen + 2)
        assert values[-1] == 6
        assert monitor.tasks == 6
        release.set()
        await asyncio.gather(*workers)
        seen = len(receiver.values("loopstat.tasks", "g"))
        values = await receiver.wait_count("loopstat.tasks", "g", seen + 2)
        assert values[-1] == 1


async def test_monitor_exposes_latest_sample(receiver: Receiver) -> None:
    async with loopstat.install("127.0.0.1", receiver.port, interval=0.02) as monitor:
        await receiver.wait_count("loopstat.tasks", "g", 3)
        assert isinstance(monitor.lag, float)
        assert monitor.tasks == 1
        assert monitor.running
    assert not monitor.running


def sent(lines: list[Line]) -> set[tuple[str, str]]:
    return {(line.name.removeprefix("loopstat."), line.type) for line in lines}


def test_a_monitor_with_every_probe_on_sends_exactly_the_catalogue() -> None:
    """Every (name, type) of loopstat/_metrics.py is sent by a real monitor, and nothing else is."""
    # P.throttled only where the cgroup has a CPU limit (tests/test_throttled.py runs under a real one).
    unlimited = {"throttled"} if _cgroup.throttling() is None else set()
    catalogue = {(metric.name, metric.type) for metric in METRICS if metric.name not in unlimited}
    receiver = Receiver()

    async def exercise() -> None:
        loop = asyncio.get_running_loop()
        async with loopstat.install(
            "127.0.0.1",
            receiver.port,
            interval=0.02,
            stall_threshold=0.05,
            gc=True,
            blocking_calls=True,
            profile=True,
        ):
            await loop.run_in_executor(None, time.sleep, 0.01)  # the default executor now exists
            # Again until all is sent (a profile window is WINDOW_SAMPLES samples, and a loaded machine may
            # keep the watchdog or the profiler from looking at one block); past the deadline, the
            # comparison below names what is missing.
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                gc.collect()
                await asyncio.sleep(0.05)
                time.sleep(0.12)  # a stall, a blocking call, and a site the profile finds busy
                with contextlib.suppress(TimeoutError):
                    await receiver.wait_for(lambda lines: catalogue <= sent(lines), timeout=1.0)
                    break

    try:
        asyncio.run(exercise())
        lines = receiver.settle(lambda lines: any(x.name == "loopstat.stall" for x in lines))
    finally:
        receiver.close()
    assert sent(lines) == catalogue


def test_the_monitor_attaches_each_probe_the_catalogue_names_in_its_order_from_its_own_module() -> None:
    """The explicit tuple of probes in the monitor and the catalogue's probe names agree, name for name."""
    assert inside.attached_probes() == [(name, f"loopstat.probes.{name}") for name in PROBES]


def test_the_readme_metrics_table_is_the_catalogue() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert markdown_table() in readme
