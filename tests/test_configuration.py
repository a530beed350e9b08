"""Where settings come from: arguments over DD_DOGSTATSD_URL over DD_* over STATSD_* over defaults."""

from __future__ import annotations

import pytest

import loopstat
from tests.receiver import Receiver


async def test_defaults_are_localhost_8125_prefix_loopstat_every_quarter_second() -> None:
    async with loopstat.install() as monitor:
        settings = monitor.settings
    assert (settings.host, settings.port, settings.prefix) == ("localhost", 8125, "loopstat")
    assert (settings.interval, settings.flavor, settings.tags) == (0.25, "dogstatsd", ())


async def test_statsd_variables_configure_host_port_and_prefix(
    monkeypatch: pytest.MonkeyPatch, receiver: Receiver
) -> None:
    monkeypatch.setenv("STATSD_HOST", "127.0.0.1")
    monkeypatch.setenv("STATSD_PORT", str(receiver.port))
    monkeypatch.setenv("STATSD_PREFIX", "fromenv")
    async with loopstat.install(interval=0.02, utilization=False, stall_threshold=None):
        lines = await receiver.wait_for(lambda lines: len(lines) >= 3)
    assert {x.name for x in lines} == {"fromenv.lag", "fromenv.tasks"}


async def test_dd_agent_variables_beat_statsd_variables(monkeypatch: pytest.MonkeyPatch, receiver: Receiver) -> None:
    monkeypatch.setenv("STATSD_HOST", "statsd.invalid")
    monkeypatch.setenv("STATSD_PORT", "1")
    monkeypatch.setenv("DD_AGENT_HOST", "127.0.0.1")
    monkeypatch.setenv("DD_DOGSTATSD_PORT", str(receiver.port))
    async with loopstat.install(interval=0.02):
        await receiver.wait_for(lambda lines: len(lines) >= 3)


async def test_dogstatsd_url_beats_dd_agent_variables(monkeypatch: pytest.MonkeyPatch, receiver: Receiver) -> None:
    monkeypatch.setenv("DD_AGENT_HOST", "agent.invalid")
    monkeypatch.setenv("DD_DOGSTATSD_PORT", "1")
    monkeypatch.setenv("DD_DOGSTATSD_URL", f"udp://127.0.0.1:{receiver.port}")
    async with loopstat.install(interval=0.02):
        await receiver.wait_for(lambda lines: len(lines) >= 3)


async def test_arguments_beat_every_variable(monkeypatch: pytest.MonkeyPatch, receiver: Receiver) -> None:
    monkeypatch.setenv("DD_DOGSTATSD_URL", "udp://url.invalid:1")
    monkeypatch.setenv("STATSD_PREFIX", "fromenv")
    async with loopstat.install(
        "127.0.0.1", receiver.port, prefix="fromarg", interval=0.02, utilization=False, stall_threshold=None
    ):
        lines = await receiver.wait_for(lambda lines: len(lines) >= 3)
    assert {x.name for x in lines} == {"fromarg.lag", "fromarg.tasks"}


async def test_host_and_port_resolve_independently(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DD_AGENT_HOST", "10.0.0.7")
    monkeypatch.setenv("STATSD_PORT", "9999")
    async with loopstat.install() as monitor:
        assert (monitor.settings.host, monitor.settings.port) == ("10.0.0.7", 9999)
    async with loopstat.install(port=7777) as monitor:
        assert (monitor.settings.host, monitor.settings.port) == ("10.0.0.7", 7777)


async def test_dogstatsd_url_accepts_ipv6_and_omitted_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DD_DOGSTATSD_URL", "udp://[::1]")
    async with loopstat.install() as monitor:
        assert (monitor.settings.host, monitor.settings.port, monitor.settings.address) == ("::1", 8125, "[::1]:8125")


async def test_empty_variables_count_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DD_DOGSTATSD_URL", "DD_AGENT_HOST", "STATSD_PORT", "STATSD_PREFIX", "DD_TAGS"):
        monkeypatch.setenv(name, "")
    async with loopstat.install() as monitor:
        assert (monitor.settings.host, monitor.settings.port, monitor.settings.prefix) == (
            "localhost",
            8125,
            "loopstat",
        )


async def test_unified_service_tags_and_dd_tags_are_added(monkeypatch: pytest.MonkeyPatch, receiver: Receiver) -> None:
    monkeypatch.setenv("DD_SERVICE", "checkout")
    monkeypatch.setenv("DD_ENV", "prod")
    monkeypatch.setenv("DD_VERSION", "1.2.3")
    monkeypatch.setenv("DD_TAGS", "team:core,zone:a zone2:b")
    async with loopstat.install("127.0.0.1", receiver.port, interval=0.02):
        lines = await receiver.wait_for(lambda lines: len(lines) >= 3)
    assert lines[0].tags == {
        "service": "checkout",
        "env": "prod",
        "version": "1.2.3",
        "team": "core",
        "zone": "a",
        "zone2": "b",
    }


async def test_explicit_tags_beat_unified_tags_which_beat_dd_tags_which_beat_datadog_tags(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATADOG_TAGS", "env:oldest,legacy:yes,team:oldest")
    monkeypatch.setenv("DD_TAGS", "env:from-dd-tags,team:from-dd-tags")
    monkeypatch.setenv("DD_ENV", "from-dd-env")
    async with loopstat.install(tags={"team": "explicit"}) as monitor:
        tags = dict(monitor.settings.tags)
    assert tags == {"team": "explicit", "env": "from-dd-env", "legacy": "yes"}


async def test_statsd_flavor_ignores_tag_variables_and_warns_about_tag_arguments(
    monkeypatch: pytest.MonkeyPatch, loopstat_log: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("DD_ENV", "prod")
    async with loopstat.install(flavor="statsd") as monitor:
        assert monitor.settings.tags == ()
    assert loopstat_log.records == []
    async with loopstat.install(flavor="statsd", tags={"team": "a"}) as monitor:
        assert monitor.settings.tags == ()
    assert "not sent with flavor='statsd'" in loopstat_log.text


async def test_over_long_tag_sets_are_cut_to_fit_one_datagram_with_a_warning(
    receiver: Receiver, loopstat_log: pytest.LogCaptureFixture
) -> None:
    tags = {f"key{i:02d}": "v" * 150 for i in range(20)}
    async with loopstat.install("127.0.0.1", receiver.port, tags=tags, interval=0.02) as monitor:
        await receiver.wait_for(lambda lines: len(lines) >= 3)
    kept = dict(monitor.settings.tags)
    assert 0 < len(kept) < len(tags)
    assert list(kept) == list(tags)[: len(kept)]
    assert max(len(datagram) for datagram in receiver.datagrams) <= 1432
    assert "dropped" in loopstat_log.text
