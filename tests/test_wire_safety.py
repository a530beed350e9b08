"""No prefix or tag, however hostile, can change what a datagram says."""

from __future__ import annotations

import dataclasses
import logging
import re
import socket
from typing import Dict, Tuple, Union

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import loopstat
from loopstat import _origin
from loopstat._metrics import METRICS, MetricType
from loopstat._options import MAX_DATAGRAM, Settings, forget, resolve
from loopstat.cli.statsd import parse_strict
from loopstat.sink import Sink
from loopstat.tags import sanitize
from tests.receiver import Receiver

VALID_PREFIX = re.compile(r"[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*")
WIRE = "|#,:@\n\r\x00 ;=~!\u2028\u0085"

hostile_text = st.text(alphabet=st.characters() | st.sampled_from(WIRE), max_size=300)
prefixes = st.one_of(st.from_regex(VALID_PREFIX, fullmatch=True).filter(lambda p: len(p) <= 183), hostile_text)
tag_values = st.one_of(hostile_text, st.integers(), st.floats(allow_nan=False))
tag_maps = st.dictionaries(hostile_text, tag_values, max_size=40)

TagArg = Dict[str, Union[str, int, float]]


# A sample as the monitor sends it: every metric of the catalogue.
SAMPLE: Tuple[Tuple[str, MetricType], ...] = tuple((metric.name, metric.type) for metric in METRICS)


def datagrams_for(settings: Settings, value: float) -> list[bytes]:
    """The datagrams the sink sends for one sample with these settings, as a socket receives them."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", 0))
        sink = Sink(dataclasses.replace(settings, host="127.0.0.1", port=rx.getsockname()[1]))
        sink.start()
        try:
            sink.send([(name, kind, value) for name, kind in SAMPLE])
        finally:
            sink.close()
        assert sink.sent == len(SAMPLE)
        rx.settimeout(5)
        datagrams: list[bytes] = []
        while sum(data.count(b"\n") + 1 for data in datagrams) < len(SAMPLE):
            datagrams.append(rx.recv(65535))
        return datagrams


def lines_for(settings: Settings, value: float) -> list[bytes]:
    """The lines of those datagrams, each checked to fit DogStatsD's UDP size."""
    datagrams = datagrams_for(settings, value)
    assert all(len(data) <= MAX_DATAGRAM for data in datagrams)
    return [line for data in datagrams for line in data.split(b"\n")]


def resolved_or_rejected(prefix: str, tags: TagArg) -> Settings | None:
    try:
        return resolve("127.0.0.1", 8125, prefix=prefix, tags=tags, environ={})
    except ValueError as exc:
        message = str(exc)
        assert message.startswith(("prefix: ", "tags: ")), message
        return None


@settings(max_examples=400, deadline=None)
@given(prefix=prefixes, tags=tag_maps, value=st.floats(min_value=0, max_value=1e7))
def test_every_line_parses_as_exactly_the_intended_metric(prefix: str, tags: TagArg, value: float) -> None:
    settings = resolved_or_rejected(prefix, tags)
    if settings is None:
        return
    for key, tag_value in settings.tags:
        assert (key, tag_value) == sanitize(key, tag_value)
        assert ":" not in key
    value = round(value, 3)
    lines = lines_for(settings, value)
    assert len(lines) == len(SAMPLE)
    for data, (name, kind) in zip(lines, SAMPLE):
        line = parse_strict(data.decode())
        assert line is not None, data
        full = f"{settings.prefix}.{name}" if settings.prefix else name
        assert (line.name, line.type, line.value, line.tags) == (full, kind, value, settings.tags)


@settings(max_examples=400, deadline=None)
@given(prefix=prefixes)
def test_a_prefix_is_accepted_exactly_when_it_is_a_dotted_name(prefix: str) -> None:
    valid = prefix == "" or (VALID_PREFIX.fullmatch(prefix) is not None and len(prefix) <= 183)
    if valid:
        assert resolve(prefix=prefix, environ={}).prefix == prefix
    else:
        with pytest.raises(ValueError, match=r"^prefix: "):
            resolve(prefix=prefix, environ={})


@settings(max_examples=200, deadline=None)
@given(tags=tag_maps)
def test_tag_keys_and_values_keep_their_safe_characters(tags: TagArg) -> None:
    settings = resolved_or_rejected("app", tags)
    if settings is None:
        assert any(key == "" or str(value) == "" for key, value in tags.items())
        return
    safe = re.compile(r"[\w\-./:]+")
    for key, value in settings.tags:
        assert safe.fullmatch(key)
        assert ":" not in key
        assert safe.fullmatch(value)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tags=tag_maps)
async def test_hostile_tags_arrive_as_sanitized_tags_over_udp(tags: TagArg) -> None:
    # A receiver for each example: one shared would take in the last example's
    # late datagrams (a loaded machine delivers them after its monitor stopped).
    receiver = Receiver()
    try:
        try:
            monitor = loopstat.install("127.0.0.1", receiver.port, prefix="fuzz", tags=tags, interval=0.01)
        except ValueError:
            return
        expected = monitor.settings.tags
        async with monitor:
            lines = await receiver.wait_for(lambda lines: len(lines) >= 3)
    finally:
        receiver.close()
    assert receiver.bad == []
    # A stall's count also says its cause: a tag of loopstat's own, after the application's.
    for line in lines:
        extra = line.tags[len(expected) :]
        assert line.tags[: len(expected)] == expected, line
        assert extra == () or (line.name == "fuzz.stalls" and [k for k, _ in extra] == ["cause"]), line
    assert {line.name for line in lines} <= {
        "fuzz.lag",
        "fuzz.tasks",
        "fuzz.cpu",
        "fuzz.utilization",
        "fuzz.iteration",
        "fuzz.stalls",
        "fuzz.stall",
    }


@pytest.mark.parametrize("count", [60, 200])
def test_over_long_tag_sets_never_make_a_line_longer_than_a_datagram(count: int) -> None:
    tags = {f"k{i}": "v" * 190 for i in range(count)}
    settings = resolve(prefix="a" * 183, tags=tags, environ={})
    assert all(len(line) <= MAX_DATAGRAM for line in lines_for(settings, 1e7))


# What a container ID field may hold: hex digits, "-" and "_" (never "|", "#", "," or a line break).
CONTAINER_ID = re.compile(r"[0-9a-f_-]{1,64}|in-[0-9]{1,20}")
hostile_proc = st.lists(
    st.one_of(
        hostile_text,
        st.builds(lambda n, path: f"{n}:cpu:{path}", st.integers(0, 20), hostile_text),
        st.builds(lambda path: f"1 2 0:3 {path} /etc/hostname rw - ext4 x rw", hostile_text),
    ),
    max_size=8,
).map("\n".join)


@settings(max_examples=300, deadline=None)
@given(text=hostile_proc, tail=st.sampled_from(["", "/", ".scope", "|c:x\n", "\nmore"]))
def test_no_cgroup_or_mountinfo_text_yields_an_id_that_could_alter_a_line(text: str, tail: str) -> None:
    for found in (_origin.from_cgroup(text + tail), _origin.from_mountinfo(text + tail)):
        assert found is None or CONTAINER_ID.fullmatch(found), found


external_texts = hostile_text | st.text(st.sampled_from("|#,:@ab-"), max_size=20)


def container_in(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Make the process look like it runs in a container; return its ID (the conftest fixture restores it)."""
    cgroup = tmp_path_factory.mktemp("proc") / "cgroup"
    cgroup.write_text("1:cpu:/kubepods/besteffort/pod1/" + "0f" * 32 + "\n")
    _origin.CGROUP_PATH = str(cgroup)
    _origin.forget()
    return "0f" * 32


def fields_sent(settings: Settings) -> set[Tuple[str, str, Tuple[Tuple[str, str], ...]]]:
    """(container, external environment, tags) of every line one sample sends with ``settings``."""
    found = set()
    for data in lines_for(settings, 12.5):
        line = parse_strict(data.decode())
        assert line is not None, data
        found.add((line.container, line.external, line.tags))
    return found


@settings(max_examples=200, deadline=None)
@given(external=external_texts, tags=tag_maps)
@example(external="it-false|c:spoofed", tags={})
@example(external="it-false,cn-web,pu-1", tags={"env": "prod"})
def test_any_external_env_argument_is_refused_by_name_or_sent_intact_in_its_field(
    external: str, tags: TagArg, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """``external_env=`` is the application's own choice: a value that could alter a line raises, naming it."""
    container = container_in(tmp_path_factory)
    try:
        settings = resolve("127.0.0.1", 8125, prefix="app", tags=tags, external_env=external, environ={})
    except ValueError as exc:
        message = str(exc)
        assert message.startswith(("external_env: ", "tags: ")), message
        return
    # As every option: surrounding spaces do not count.
    assert fields_sent(settings) == {(container, external.strip(), settings.tags)}


class Warnings(logging.Handler):
    """The warnings loopstat logs while it is attached."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@settings(max_examples=200, deadline=None)
@given(external=external_texts, tags=tag_maps)
@example(external="it-false|c:spoofed", tags={})
@example(external="it-false,cn-web,pu-1", tags={"env": "prod"})
def test_any_shared_dd_external_env_is_left_out_with_one_warning_naming_it_or_sent_intact_in_its_field(
    external: str, tags: TagArg, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """DD_EXTERNAL_ENV is read by every Datadog client of the process: a value loopstat cannot use never
    raises into the application; it is named in one warning and no ``|e:`` field is sent."""
    container = container_in(tmp_path_factory)
    environ = {"DD_EXTERNAL_ENV": external}
    caught = Warnings()
    logger = logging.getLogger("loopstat")
    logger.addHandler(caught)
    forget()  # an earlier example may have resolved (and warned about) the same value
    try:
        try:
            settings = resolve("127.0.0.1", 8125, prefix="app", tags=tags, environ=environ)
        except ValueError as exc:  # only the tags argument, the application's own, may raise
            message = str(exc)
            assert message.startswith("tags: "), message
            return
        again = resolve("127.0.0.1", 8125, prefix="app", tags=tags, environ=environ)
    finally:
        logger.removeHandler(caught)
    assert again == settings
    named = [message for message in caught.messages if "DD_EXTERNAL_ENV" in message]
    if settings.external_env is None:
        if external.strip():  # an empty value is an unset one: nothing to say
            assert len(named) == 1, caught.messages
            assert named[0].endswith("DD_EXTERNAL_ENV is not used"), named
        else:
            assert named == [], caught.messages
        assert fields_sent(settings) == {(container, "", settings.tags)}
    else:
        assert named == [], caught.messages
        assert fields_sent(settings) == {(container, external.strip(), settings.tags)}
