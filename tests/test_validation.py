"""Bad input: a ValueError at install() that names the parameter or variable and the accepted form."""

from __future__ import annotations

import asyncio
import math
import re

import pytest

import loopstat
from loopstat import _options


@pytest.mark.parametrize(
    "interval", [0, -1, math.nan, math.inf, "0.25", None, True, 1e-9, 0.0009, 86401, pytest.param(10**5000, id="huge")]
)
def test_interval_must_be_a_finite_number_of_seconds_from_1_ms_to_a_day(interval: object) -> None:
    with pytest.raises(ValueError, match=r"interval: .* expected a finite number of seconds from 0\.001 to 86400$"):
        loopstat.install(interval=interval)  # type: ignore[arg-type]


@pytest.mark.parametrize("threshold", [0, -0.1, math.nan, math.inf, "0.1", True, 1e-9, 0.009, 1e11])
def test_stall_threshold_must_be_seconds_from_10_ms_to_a_day_or_none(threshold: object) -> None:
    with pytest.raises(
        ValueError, match=r"stall_threshold: .* expected a finite number of seconds from 0\.01 to 86400, or None"
    ):
        loopstat.install(stall_threshold=threshold)  # type: ignore[arg-type]


def test_the_lower_bounds_themselves_are_accepted() -> None:
    settings = _options.resolve(interval=0.001, stall_threshold=0.01, environ={})
    assert (settings.interval, settings.stall_threshold) == (0.001, 0.01)


@pytest.mark.parametrize("port", [0, 65536, -1, "8125", 8125.0, True, pytest.param(10**5000, id="5000 digits")])
def test_port_must_be_an_int_in_1_to_65535(port: object) -> None:
    with pytest.raises(ValueError, match=r"port: .* expected an integer in 1\.\.65535"):
        loopstat.install(port=port)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "host",
    [
        "",
        " dd-agent",
        "dd agent",
        "a" * 254,
        "a." * 127 + "a",
        "b" * 64 + ".com",
        "user:pw@agent",
        "agent?x#y",
        "[::1]",
        "agent\x00",
        "agent\udcff",
        "a..b",
        42,
    ],
)
def test_host_must_be_a_name_or_address(host: object) -> None:
    with pytest.raises(ValueError, match=r"host: .* expected a host name or IP address"):
        loopstat.install(host=host)  # type: ignore[arg-type]


@pytest.mark.parametrize("host", ["dd-agent", "datadog_agent", "agent.local.", "127.0.0.1", "::1", "bücher.example"])
def test_host_names_and_addresses_are_accepted(host: str) -> None:
    assert _options.resolve(host, environ={}).host == host


@pytest.mark.parametrize("flavor", ["datadog", "", None, "DOGSTATSD"])
def test_flavor_must_be_dogstatsd_or_statsd(flavor: object) -> None:
    with pytest.raises(ValueError, match=r"flavor: .* expected 'dogstatsd' or 'statsd'"):
        loopstat.install(flavor=flavor)  # type: ignore[arg-type]


@pytest.mark.parametrize("prefix", ["1app", "my-app", "my app", "app.", ".app", "a..b", "app|x", "é", "a" * 200, 5])
def test_prefix_must_be_a_dotted_name(prefix: object) -> None:
    expected = r"expected '' or a letter, then letters, digits, '_' and single '\.' separators \(at most 183"
    with pytest.raises(ValueError, match=rf"prefix: .* {expected}"):
        loopstat.install(prefix=prefix)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("tags", "message"),
    [
        ("team:payments", r"tags: got a single str"),
        ({"team": None}, r"tags: tag 'team' has a value of type NoneType"),
        ({"team": True}, r"tags: tag 'team' has a value of type bool"),
        ({"team": ["a"]}, r"tags: tag 'team' has a value of type list"),
        ({1: "a"}, r"tags: tag keys must be str, got int"),
        ([""], r"tags: a tag is empty"),
        ([("team", "a")], r"tags: tags must be strings, got tuple"),
        (["team:"], r"tags: tag 'team:' needs a non-empty key and value, or no ':' for a tag without value"),
        ({"": "x"}, r"tags: tag '':'x' needs a non-empty key and value"),
        (42, r"tags: got int; expected a mapping"),
    ],
)
def test_tags_must_be_a_mapping_or_key_value_strings(tags: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        loopstat.install(tags=tags)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("STATSD_PORT", "eighty", r"STATSD_PORT: 'eighty' is not a port"),
        ("STATSD_PORT", "70000", r"STATSD_PORT: '70000' is out of range; expected an integer in 1\.\.65535"),
        ("STATSD_PORT", "\u00b2", r"STATSD_PORT: '\u00b2' is not a port; expected an integer in 1\.\.65535"),
        ("STATSD_PORT", "\u0661\u0662", r"STATSD_PORT: .* is not a port"),
        ("STATSD_PORT", "9" * 5000, r"STATSD_PORT: '9999.*… \(5000 characters\) is out of range"),
        ("DD_DOGSTATSD_PORT", "-1", r"DD_DOGSTATSD_PORT: '-1' is not a port"),
        ("STATSD_PREFIX", "my-app", r"STATSD_PREFIX: 'my-app' is not a valid prefix"),
        (
            "DD_DOGSTATSD_URL",
            "unix://var/run/datadog/dsd.socket",
            r"DD_DOGSTATSD_URL: 'unix://var/run/datadog/dsd.socket' has no absolute path \(three slashes: unix:///path\)",
        ),
        (
            "DD_DOGSTATSD_URL",
            "tcp://agent:8125",
            r"DD_DOGSTATSD_URL: 'tcp://agent:8125' is not valid; expected udp://host:port",
        ),
        (
            "DD_DOGSTATSD_URL",
            "udp://agent:notaport",
            r"DD_DOGSTATSD_URL: 'udp://agent:notaport' has port 'notaport', which is not a port",
        ),
        ("DD_DOGSTATSD_URL", "agent", r"DD_DOGSTATSD_URL: 'agent' is not valid; expected udp://host:port"),
        ("DD_DOGSTATSD_URL", "udp://[::1:8125", r"DD_DOGSTATSD_URL: .* has an unclosed '\['; expected udp://host:port"),
        ("DD_DOGSTATSD_URL", "udp://::1:8125", r"DD_DOGSTATSD_URL: .* has an IPv6 address without brackets"),
        ("DD_DOGSTATSD_URL", "udp://[agent]:8125", r"DD_DOGSTATSD_URL: .* has no IPv6 address in brackets"),
        (
            "DD_DOGSTATSD_URL",
            "udp://127.0.0.1:99999",
            r"DD_DOGSTATSD_URL: 'udp://127.0.0.1:99999' has port '99999', which is out of range; expected udp://",
        ),
        ("DD_DOGSTATSD_URL", "udp://127.0.0.1:\u00b2", r"DD_DOGSTATSD_URL: .* has port '\u00b2', which is not a port"),
        ("DD_DOGSTATSD_URL", "udp://user:pw@agent:8125", r"DD_DOGSTATSD_URL: .* has a path, user, query or fragment"),
        ("DD_DOGSTATSD_URL", "udp://agent:8125?q=1#f", r"DD_DOGSTATSD_URL: .* has a path, user, query or fragment"),
        ("DD_DOGSTATSD_URL", "udp://agent:8125/path", r"DD_DOGSTATSD_URL: .* has a path, user, query or fragment"),
        ("DD_DOGSTATSD_URL", "udp://my agent:8125", r"DD_DOGSTATSD_URL: .* has host 'my agent', which is not a host"),
        (
            "DD_DOGSTATSD_URL",
            f"udp://{'a' * 5000}:8125",
            r"DD_DOGSTATSD_URL: 'udp://aaa.*… \(5011 characters\) has host 'aaa.*… \(5000 characters\), which is not",
        ),
        ("DD_DOGSTATSD_URL", "udp://[::1%lo]:8125", r"DD_DOGSTATSD_URL: .* has host '::1%lo', which is a scoped IPv6"),
        ("DD_AGENT_HOST", "::1%lo", r"DD_AGENT_HOST: '::1%lo' is a scoped IPv6 address, which loopstat cannot send to"),
        ("DD_AGENT_HOST", "user:pw@agent", r"DD_AGENT_HOST: 'user:pw@agent' is not a host"),
        (
            "DD_AGENT_HOST",
            "agent:8125",
            r"DD_AGENT_HOST: 'agent:8125' is not a host \(the port is a setting of its own\)",
        ),
        ("DD_TAGS", "team:a,team:", r"DD_TAGS: tag 'team:' needs a non-empty key and value"),
        ("DATADOG_TAGS", ":x", r"DATADOG_TAGS: tag ':x' needs a non-empty key and value"),
    ],
)
def test_a_malformed_shared_variable_is_named_in_one_warning_and_not_used(
    loopstat_log: pytest.LogCaptureFixture, name: str, value: str, message: str
) -> None:
    # Other clients read DD_* and STATSD_* too: a value loopstat cannot use never stops the application.
    settings = _options.resolve(environ={name: value})
    warnings = [record.getMessage() for record in loopstat_log.records]
    assert len(warnings) == 1, warnings
    assert re.search(message, warnings[0]), warnings[0]
    assert warnings[0].endswith(f"; {name} is not used")
    assert settings == _options.resolve(environ={})


def test_install_without_a_running_loop_or_loop_argument_says_how_to_call_it() -> None:
    with pytest.raises(
        RuntimeError, match=r"needs an event loop: call it from code running on the loop .* or pass loop="
    ):
        loopstat.install()


def test_loop_must_be_an_event_loop() -> None:
    with pytest.raises(ValueError, match=r"loop: expected an asyncio event loop, got str"):
        loopstat.install(loop="main")  # type: ignore[arg-type]


def test_closed_loop_is_refused() -> None:
    loop = asyncio.new_event_loop()
    loop.close()
    with pytest.raises(RuntimeError, match="closed"):
        loopstat.install(loop=loop)


@pytest.mark.parametrize("switch", ["utilization", "executor", "gc"])
@pytest.mark.parametrize("value", [1, "yes", None])
def test_probe_switches_must_be_true_or_false(switch: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"{switch}: .* expected True or False"):
        loopstat.install(**{switch: value})  # type: ignore[arg-type]


class _Unprintable:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


def test_a_value_that_cannot_be_shown_still_gets_its_error() -> None:
    with pytest.raises(ValueError, match=r"^host: a _Unprintable is not a host"):
        loopstat.install(host=_Unprintable())  # type: ignore[arg-type]
