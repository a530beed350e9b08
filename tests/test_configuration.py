"""Where settings come from: arguments over DD_DOGSTATSD_URL over DD_* over STATSD_* over defaults."""

from __future__ import annotations

import inspect
import os
import re
from pathlib import Path

import hypothesis
import pytest
from hypothesis import strategies as st

import loopstat
from loopstat import _options, bootstrap
from loopstat._options import OPTIONS
from loopstat.cli.run import usage
from loopstat.tags import joined
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
    assert {x.name for x in lines} == {"fromenv.lag", "fromenv.cpu", "fromenv.tasks"}


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
    assert {x.name for x in lines} == {"fromarg.lag", "fromarg.cpu", "fromarg.tasks"}


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
    assert dict(lines[0].tags) == {
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


async def test_explicit_tags_beat_environment_tags_whose_keys_match_once_cleaned(
    monkeypatch: pytest.MonkeyPatch, receiver: Receiver
) -> None:
    monkeypatch.setenv("DD_TAGS", "my_team:other,Zone:env")
    monkeypatch.setenv("DD_ENV", "from-dd-env")
    async with loopstat.install(
        "127.0.0.1", receiver.port, tags={"my team": "payments", "zone": "explicit", "ENV": "x"}, interval=0.02
    ) as monitor:
        lines = await receiver.wait_for(lambda lines: len(lines) >= 3)
    expected = {"my_team": "payments", "zone": "explicit", "ENV": "x"}
    assert dict(monitor.settings.tags) == expected
    assert all(dict(line.tags) == expected for line in lines)


async def test_tags_without_a_value_are_accepted_and_sent_bare(
    monkeypatch: pytest.MonkeyPatch, receiver: Receiver
) -> None:
    monkeypatch.setenv("DD_TAGS", "env:prod,canary")
    async with loopstat.install("127.0.0.1", receiver.port, tags=["blue"], interval=0.02):
        lines = await receiver.wait_for(lambda lines: len(lines) >= 3)
    assert all(line.tags == (("blue", ""), ("env", "prod"), ("canary", "")) for line in lines)
    assert all(line.endswith(b"|#blue,env:prod,canary") for line in receiver.datagrams[0].split(b"\n"))


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    """loopstat's warnings, but for the stall probe's reports of the application's stalls: a loaded machine makes
    those (the process held off the CPU for 100 ms), whatever the settings."""
    return [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and r.name != "loopstat.probes.stalls"]


async def test_tag_keys_not_starting_with_a_letter_are_trimmed_or_dropped_with_one_warning(
    receiver: Receiver, loopstat_log: pytest.LogCaptureFixture
) -> None:
    tags = {"1st": "a", "#team": "b", "123": "c", "_x": "d", "ok": "e", "²": "f"}
    async with loopstat.install("127.0.0.1", receiver.port, tags=tags, interval=0.02) as monitor:
        lines = await receiver.wait_for(lambda lines: len(lines) >= 3)
    expected = {"st": "a", "team": "b", "x": "d", "ok": "e"}
    assert dict(monitor.settings.tags) == expected
    assert all(dict(line.tags) == expected and all(key[0].isalpha() for key, _ in line.tags) for line in lines)
    [warning] = warnings_of(loopstat_log)
    assert "must start with a letter" in warning
    assert "'1st' as 'st'" in warning
    assert "dropped '123', '²'" in warning


async def test_dd_service_with_a_space_is_sent_with_an_underscore_and_one_warning(
    monkeypatch: pytest.MonkeyPatch, receiver: Receiver, loopstat_log: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("DD_SERVICE", "my shop")
    async with loopstat.install("127.0.0.1", receiver.port, interval=0.02) as monitor:
        await receiver.wait_for(lambda lines: len(lines) >= 3)
    assert dict(monitor.settings.tags)["service"] == "my_shop"
    [warning] = warnings_of(loopstat_log)
    assert "became '_'" in warning
    assert "'service:my shop'" in warning


async def test_fetching_the_running_monitor_again_neither_checks_nor_warns_again(
    monkeypatch: pytest.MonkeyPatch, loopstat_log: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("DD_TAGS", "long:" + "v" * 300)
    tags = [f"k{i}:{'v' * 150}" for i in range(20)]
    first = loopstat.install(tags=tags, interval=0.02)
    async with first:
        for _ in range(1000):
            assert loopstat.install(tags=tags, interval=0.02) is first
    warnings = warnings_of(loopstat_log)
    assert len(warnings) == 2, warnings  # one for the cut tag, one for the dropped ones
    assert len(set(warnings)) == 2


def test_ten_thousand_bad_tags_make_a_few_short_warnings(
    monkeypatch: pytest.MonkeyPatch, loopstat_log: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("DD_TAGS", ",".join(f"{i}key{i}:{'v' * 250}" for i in range(10_000)))
    settings = _options.resolve(environ=os.environ)
    assert 0 < len(settings.tags) < 10_000
    messages = [record.getMessage() for record in loopstat_log.records]
    assert 1 <= len(messages) <= 3
    assert all(len(message) <= 1000 for message in messages), [len(message) for message in messages]
    assert any("and 9995 more" in message for message in messages)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("STATSD_PREFIX", "x" * 1_000_000),
        ("DD_AGENT_HOST", "h" * 1_000_000),
        ("DD_DOGSTATSD_URL", "udp://" + "[" * 1_000_000),
        ("STATSD_PORT", "9" * 1_000_000),
        ("DD_TAGS", "ok:1," + ":" * 1_000_000),
    ],
)
def test_a_warning_about_a_huge_variable_is_one_short_line(
    loopstat_log: pytest.LogCaptureFixture, name: str, value: str
) -> None:
    _options.resolve(environ={name: value})
    [warning] = [record.getMessage() for record in loopstat_log.records]
    assert warning.startswith(f"loopstat: {name}: ")
    assert len(warning) <= 450
    assert "\n" not in warning


def test_tags_from_a_generator_are_read_once_and_kept() -> None:
    settings = _options.resolve(tags=(f"k{i}:v" for i in range(3)), environ={})
    assert dict(settings.tags) == {"k0": "v", "k1": "v", "k2": "v"}


def test_a_changed_environment_is_read_again() -> None:
    first = _options.resolve(environ={"DD_ENV": "a"})
    second = _options.resolve(environ={"DD_ENV": "b"})
    assert (dict(first.tags), dict(second.tags)) == ({"env": "a"}, {"env": "b"})


def test_true_is_not_mistaken_for_a_cached_1_second_interval() -> None:
    assert _options.resolve(interval=1, environ={}).interval == 1.0
    with pytest.raises(ValueError, match=r"^interval: True"):
        _options.resolve(interval=True, environ={})


def test_the_readme_configuration_table_is_the_option_table() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    assert _options.markdown_table() in readme


def test_install_takes_every_option_in_table_order_with_its_default() -> None:
    parameters = dict(inspect.signature(loopstat.install).parameters)
    del parameters["loop"]
    assert list(parameters) == [option.name for option in OPTIONS]
    for option in OPTIONS:
        # None where variables are read: the argument, when given, wins over them.
        expected = None if option.env else option.default
        assert parameters[option.name].default == expected, option.name


@pytest.mark.parametrize("option", [option for option in OPTIONS if option.run], ids=lambda option: option.run)
def test_loopstat_run_reads_every_option_that_has_a_variable(option: _options.Option) -> None:
    assert option.run is not None
    text = "team:a,canary" if option.name == "tags" else option.validator.as_text(option.default)
    expected = ["team:a", "canary"] if option.name == "tags" else option.default
    assert bootstrap.options({option.run: f" {text} "}) == {option.name: expected}
    assert option.run in usage("loopstat-run")


def test_loopstat_run_help_names_every_variable_and_the_bounds() -> None:
    text = usage("loopstat-run")
    for name in _options.VARIABLES + _options.RUN_VARIABLES:
        assert name in text
    assert "from 0.001 to 86400" in text
    assert "from 0.01 to 86400, or 'off'" in text


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("LOOPSTAT_INTERVAL", "\u0660.\u0665", r"is not valid; expected a finite number of seconds from 0\.001"),
        ("LOOPSTAT_INTERVAL", "1_0", "is not valid"),
        ("LOOPSTAT_INTERVAL", "nan", "is not valid"),
        ("LOOPSTAT_INTERVAL", "1e999", "is not valid"),
        ("LOOPSTAT_INTERVAL", "0.0001", "is out of range"),
        pytest.param("LOOPSTAT_INTERVAL", "9" * 5000, r"… \(5000 characters\) is not valid", id="5000 digits"),
        ("LOOPSTAT_STALL_THRESHOLD", "0.001", r"is out of range; expected .* from 0\.01 to 86400, or 'off'"),
        ("LOOPSTAT_PREFIX", "9lives", "is not a valid prefix"),
        ("LOOPSTAT_FLAVOR", "DogStatsD", "expected 'dogstatsd' or 'statsd'"),
        ("LOOPSTAT_GC", "maybe", r"expected 1 or 0 \(true/false, yes/no, on/off\)"),
        ("LOOPSTAT_TAGS", "team:", "needs a non-empty key and value"),
    ],
)
def test_a_bad_loopstat_variable_is_named(name: str, value: str, message: str) -> None:
    with pytest.raises(ValueError, match=rf"^{name}: .*{message}"):
        bootstrap.check({name: value})


tag_items = st.text(alphabet=st.characters() | st.sampled_from("|#,:@\n\r ;=~!_-./0123456789"), max_size=250)


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(items=st.lists(tag_items, max_size=30))
def test_every_tag_sent_starts_with_a_letter_and_reads_back_as_sent(items: list[str]) -> None:
    try:
        resolved = _options.resolve(tags=items, environ={})
    except ValueError as exc:
        message = str(exc)
        assert message.startswith("tags: "), message
        return
    text = joined(resolved.tags)
    assert len(text.encode()) <= _options.MAX_DATAGRAM
    read_back = []
    for tag in text.split(",") if text else []:
        assert re.fullmatch(r"[^\W\d_][\w\-./]*(:[\w\-./:]+)?", tag), tag
        assert len(tag) <= 200
        key, _, value = tag.partition(":")
        read_back.append((key, value))
    assert read_back == list(resolved.tags)
    assert len({key.lower() for key, _ in resolved.tags}) == len(resolved.tags)


def test_a_long_tag_without_value_is_cut_to_200_characters() -> None:
    resolved = _options.resolve(tags=["canary" + "x" * 300], environ={})
    assert resolved.tags == (("canary" + "x" * 194, ""),)


def test_a_list_that_contains_itself_is_refused_as_tags() -> None:
    tags: list[object] = []
    tags.append(tags)
    with pytest.raises(ValueError, match=r"^tags: tags must be strings, got list"):
        _options.resolve(tags=tags, environ={})
