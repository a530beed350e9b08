"""The one StatsD parser and receiver that tests, the bench and ``loopstat watch`` share."""

from __future__ import annotations

import socket
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench import udp
from loopstat.cli import statsd
from loopstat.cli.board import Board
from loopstat.cli.statsd import Other, Sample, parse, parse_strict, read


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("", "empty"),
        ("1lag:1|g", "a name starts with a letter"),
        ("my app.lag:1|g", "a name has no space"),
        ("app..lag:1|g", "a name has no empty part"),
        ("app.lag.:1|g", "a name does not end with a dot"),
        ("app-x.lag:1|g", "a name is letters, digits and _ between dots"),
        ("lag:-1|g", "values are not negative"),
        ("lag:+1|g", "gauges are absolute"),
        ("lag:1e3|g", "no exponent"),
        ("lag:nan|g", "values are numbers"),
        ("lag:inf|ms", "values are finite"),
        ("lag:.5|g", "a digit before the point"),
        ("lag:5.|g", "a digit after the point"),
        ("lag:|g", "a value"),
        ("lag|g", "a value after a colon"),
        ("lag:1", "a type"),
        ("lag:1|h", "only g, ms, c and d"),
        ("lag:1|s", "only g, ms, c and d"),
        ("lag:1|G", "types are lowercase"),
        ("lag:1|c|@0.5", "no sample rate"),
        ("lag:1|g|#a:1|T1700000000", "nothing after the tags but the origin fields"),
        ("lag:1|g|c:abc|#a:1", "the container ID after the tags"),
        ("lag:1|g|e:x|c:abc", "the external environment after the container ID"),
        ("lag:1|g|c:abc|c:abc", "one container ID"),
        ("lag:1|g|c:", "a container ID is not empty"),
        ("lag:1|g|c:ABC", "a container ID is lowercase hex"),
        ("lag:1|g|c:in-", "an inode is digits"),
        ("lag:1|g|c:" + "a" * 65, "a container ID is at most 64 characters"),
        ("lag:1|g|e:", "an external environment is not empty"),
        ("lag:1|g|e:a b", "no space in the external environment"),
        ("lag:1|g|e:x|e:x", "one external environment"),
        ("lag:1|g|#a:1|#b:2", "one tag field"),
        ("lag:1|g|#", "a tag field has tags"),
        ("lag:1|g|#a:", "a tag with ':' has a value"),
        ("lag:1|g|#:b", "a tag has a key"),
        ("lag:1|g|#a:1,,b:2", "no empty tag"),
        ("lag:1|g|#a:1,", "no trailing comma"),
        ("lag:1|g|#a:1,a:2", "tag keys are unique"),
        ("lag:1|g|#canary,canary", "bare tag keys are unique"),
        ("lag:1|g|#canary,canary:yes", "a bare key is a key"),
        ("lag:1|g|#Env:a,env:b", "tag keys are unique as Datadog lowercases them"),
        ("lag:1|g|#a b:1", "no space in a tag"),
        ("lag:1|g|#a:1 ", "no trailing space"),
        ("lag:1|g\r", "no carriage return"),
        ("_e{5,4}:title|text", "loopstat sends no events"),
        ("_sc|check|0", "loopstat sends no service checks"),
    ],
)
def test_strict_parsing_rejects_every_line_loopstat_never_writes(line: str, why: str) -> None:
    assert parse_strict(line) is None, why


@pytest.mark.parametrize(
    ("line", "sample"),
    [
        ("myapp.lag:201.5|g", Sample("myapp.lag", "g", 201.5)),
        ("lag:0|c", Sample("lag", "c", 0.0)),
        ("a.b_c.1:3|ms|#env:prod", Sample("a.b_c.1", "ms", 3.0, (("env", "prod"),))),
        ("lag:1|g|#url:http://x:80", Sample("lag", "g", 1.0, (("url", "http://x:80"),))),
        ("lag:1|g|#région:ü", Sample("lag", "g", 1.0, (("région", "ü"),))),
        ("lag:1|d", Sample("lag", "d", 1.0)),
        ("lag:1|d|#a:1|c:" + "0f" * 32, Sample("lag", "d", 1.0, (("a", "1"),), container="0f" * 32)),
        ("lag:1|g|c:in-4026532999", Sample("lag", "g", 1.0, container="in-4026532999")),
        (
            "lag:1|ms|#a:1|c:abc|e:it-false,cn-web,pu-x",
            Sample("lag", "ms", 1.0, (("a", "1"),), container="abc", external="it-false,cn-web,pu-x"),
        ),
        ("lag:1|g|e:it-true", Sample("lag", "g", 1.0, external="it-true")),
    ],
)
def test_strict_parsing_accepts_lines_as_loopstat_writes_them(line: str, sample: Sample) -> None:
    assert parse_strict(line) == sample


def test_tags_without_a_value_are_loopstat_output_and_keep_their_place() -> None:
    expected = Sample("lag", "g", 1.0, (("canary", ""), ("env", "prod"), ("blue", "")))
    assert parse_strict("lag:1|g|#canary,env:prod,blue") == expected
    assert parse("lag:1|g|#canary,env:prod,blue") == expected


@pytest.mark.parametrize(
    ("line", "sample"),
    [
        ("hits:5|c|@0.5", Sample("hits", "c", 10.0)),
        ("hits:1|c|@0.1|#a:b", Sample("hits", "c", 10.0, (("a", "b"),))),
        ("queue:+3|g", Sample("queue", "g", 3.0, relative=True)),
        ("queue:-3|g", Sample("queue", "g", -3.0, relative=True)),
        ("users:alice|s", Sample("users", "s", 1.0)),
        ("size:2.5|h", Sample("size", "h", 2.5)),
        ("size:1e3|d", Sample("size", "d", 1000.0)),
        (
            "app-x.lag:1|ms|#a:1|c:abc|T1700000000|e:x|card:low",
            Sample("app-x.lag", "ms", 1.0, (("a", "1"),), container="abc", external="x"),
        ),
        ("lag:1|g|#a:1,,b", Sample("lag", "g", 1.0, (("a", "1"), ("b", "")))),
    ],
)
def test_lenient_parsing_reads_what_any_dogstatsd_client_sends(line: str, sample: Sample) -> None:
    assert parse(line) == sample


@pytest.mark.parametrize("line", ["_e{5,4}:title|text", "_e{1,1}:a|b|#x:y", "_sc|check|0", "_sc|db.up|2|#env:prod"])
def test_events_and_service_checks_are_well_formed_but_not_metrics(line: str) -> None:
    assert isinstance(parse(line), Other)


@pytest.mark.parametrize(
    "line",
    [
        "lag:1|x",
        "lag:nan|g",
        "lag:inf|c",
        "lag:1|c|@2",
        "lag:1|c|@0",
        "lag:1|c|@x",
        "lag:1|g|zzz",
        "no colon|g",
        "a b:1|g",
    ],
)
def test_lenient_parsing_still_rejects_what_no_agent_reads(line: str) -> None:
    assert parse(line) is None


@given(st.text(alphabet=st.sampled_from("ab1.:|#,@+-ecgms \n"), max_size=30))
def test_a_strict_line_parses_the_same_leniently(line: str) -> None:
    strict = parse_strict(line)
    if strict is not None:
        assert parse(line) == strict


def test_a_datagram_splits_at_every_newline_strictly_and_at_any_line_break_leniently() -> None:
    datagram = b"a:1|g\r\n\nb:2|c\n"
    assert [(line, type(parsed).__name__) for line, parsed in read(datagram)] == [
        ("a:1|g", "Sample"),
        ("b:2|c", "Sample"),
    ]
    assert [line for line, parsed in read(datagram, strict=True) if parsed is None] == ["a:1|g\r", "", ""]


def test_the_board_groups_tags_in_any_order_and_shows_bare_ones() -> None:
    board = Board(lambda: 0.0)
    board.feed(b"lag:1|g|#service:api,canary,env:prod\nlag:2|g|#env:prod,canary,service:api")
    [series] = board.rows()
    assert (series.sender, series.other_tags, series.last) == ("api", ("canary", "env:prod"), 2.0)


def send(port: int, *datagrams: bytes) -> int:
    """Send from a fresh socket; return its port."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        for data in datagrams:
            sock.sendto(data, ("127.0.0.1", port))
        source: int = sock.getsockname()[1]
    return source


def test_a_strict_receiver_keeps_lines_bad_lines_datagrams_and_their_ports() -> None:
    with statsd.Receiver(strict=True) as receiver:
        source = send(receiver.port, b"app.lag:1|g|#canary", b"app.lag:-1|g\n_sc|x|0")
        lines = receiver.settle(lambda lines: len(lines) + len(receiver.bad) >= 3)
    assert lines == [Sample("app.lag", "g", 1.0, (("canary", ""),))]
    assert receiver.bad == ["app.lag:-1|g", "_sc|x|0"]
    assert receiver.datagrams == [b"app.lag:1|g|#canary", b"app.lag:-1|g\n_sc|x|0"]
    assert receiver.ports_of(b"app.") == {source}
    assert receiver.values("app.lag", "g") == [1.0]


def test_a_lenient_receiver_counts_events_and_stamps_arrivals() -> None:
    with statsd.Receiver() as receiver:
        before = time.perf_counter()
        send(receiver.port, b"hits:1|c|@0.5\n_e{1,1}:a|b", b"nonsense")
        receiver.settle(lambda lines: receiver.count == 2)
        assert receiver.quiet() == 2
    [(at, line)] = receiver.arrived()
    assert line == Sample("hits", "c", 2.0)
    assert before <= at <= time.perf_counter()
    assert (receiver.other, receiver.bad) == (1, ["nonsense"])


def test_a_receiver_that_does_not_keep_only_counts() -> None:
    with statsd.Receiver(keep=False) as receiver:
        send(receiver.port, b"a:1|g", b"b:2|g")
        receiver.settle(lambda lines: receiver.count == 2)
    assert (receiver.lines, receiver.datagrams, receiver.bad) == ([], [], [])


def test_waiting_in_vain_names_what_arrived() -> None:
    with statsd.Receiver() as receiver:
        send(receiver.port, b"a:1|g")
        with pytest.raises(TimeoutError, match=r"got 1 lines, the last: \[Sample\(name='a'"):
            receiver.settle(lambda lines: len(lines) > 1, timeout=0.5)


async def test_waiting_from_a_loop_does_not_block_it() -> None:
    with statsd.Receiver() as receiver:
        send(receiver.port, b"a:1|g", b"a:2|g")
        assert await receiver.wait_count("a", "g", 2) == [1.0, 2.0]


def test_the_bench_reads_counts_and_timestamped_lines() -> None:
    receiver = udp.Receiver(keep=True)
    try:
        send(receiver.port, b"x.lag:5|ms", b"bad line")
        deadline = time.monotonic() + 5
        while receiver.count < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert receiver.settle() == 2
        [line] = receiver.lines()
    finally:
        receiver.close()
    assert (line.name, line.type, line.value, receiver.bad) == ("x.lag", "ms", 5.0, 1)
