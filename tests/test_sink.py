"""The sink: the bytes it sends, how it splits them, how it counts, how it looks hosts up."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any, List

import pytest
from aiodogstatsd.protocol import build
from aiodogstatsd.typedefs import MType

import loopstat
from loopstat import _threads
from loopstat import sink as sink_module
from loopstat._metrics import Line
from loopstat._options import MAX_DATAGRAM, resolve
from loopstat.cli import statsd
from loopstat.sink import Sink
from tests.receiver import Collected

NOTES = "loopstat._notes"


def records_of(caplog: pytest.LogCaptureFixture, level: int) -> List[str]:
    """loopstat's records at ``level``, less the line naming the loop at start (INFO, loopstat._notes)."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("loopstat.") and r.name != NOTES and r.levelno == level
    ]


# Canary: every aiodogstatsd name loopstat uses, and what it must keep doing.
# aiodogstatsd 0.16 is frozen upstream; if a release ever changes these, this fails first.


def test_aiodogstatsd_metric_types_keep_their_statsd_letters() -> None:
    assert (MType.GAUGE.value, MType.TIMING.value, MType.COUNTER.value) == ("g", "ms", "c")


def test_aiodogstatsd_build_writes_gauges_timings_and_counters_with_a_prefix() -> None:
    # loopstat appends the tags itself (aiodogstatsd cannot write a tag without value): it passes none.
    common: Any = {"namespace": "app", "tags": {}, "sample_rate": 1}
    assert build(name="lag", value=1.5, type_=MType.GAUGE, **common) == b"app.lag:1.5|g"
    assert build(name="lag", value=0.25, type_=MType.TIMING, **common) == b"app.lag:0.25|ms"
    assert build(name="stalls", value=1, type_=MType.COUNTER, **common) == b"app.stalls:1|c"


def test_aiodogstatsd_build_without_prefix_writes_the_bare_line() -> None:
    assert build(name="tasks", namespace=None, value=3, type_=MType.GAUGE, tags={}, sample_rate=1) == b"tasks:3|g"


# What the sink puts on the wire, read back from a real socket.


@pytest.fixture
def rx() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)
    yield sock
    sock.close()


def sink_to(port: int, **kwargs: Any) -> Sink:
    sink = Sink(resolve("127.0.0.1", port, environ={}, **kwargs))
    sink.start()
    return sink


def test_a_sample_goes_out_as_one_datagram_of_newline_separated_lines(rx: socket.socket) -> None:
    sink = sink_to(rx.getsockname()[1], prefix="app", tags={"env": "prod"})
    sink.send([("lag", "g", 1.5), ("lag", "ms", 1.5), ("tasks", "g", 3), ("stalls", "c", 1)])
    sink.close()
    assert rx.recv(65535) == (
        b"app.lag:1.5|g|#env:prod\napp.lag:1.5|ms|#env:prod\napp.tasks:3|g|#env:prod\napp.stalls:1|c|#env:prod"
    )
    assert (sink.sent, sink.dropped, sink.errors) == (4, 0, 0)


def test_lines_without_prefix_or_tags_are_bare(rx: socket.socket) -> None:
    sink = sink_to(rx.getsockname()[1], prefix="")
    sink.send([("lag", "g", 0.5)])
    sink.close()
    assert rx.recv(65535) == b"lag:0.5|g"


def test_a_line_with_tags_of_its_own_gets_them_after_the_monitors_sanitised_and_replacing_a_same_key(
    rx: socket.socket,
) -> None:
    sink = sink_to(rx.getsockname()[1], prefix="app", tags={"env": "prod", "call": "x", "team": "a"})
    sink.send(
        [
            ("blocking_calls", "c", 3, (("call", "time.sleep"),)),
            ("blocking_time", "ms", 31.5, (("call", "a|b,c#d e"),)),
            ("lag", "g", 1.5),
        ]
    )
    sink.close()
    datagram = rx.recv(65535)
    assert datagram == (
        b"app.blocking_calls:3|c|#env:prod,team:a,call:time.sleep\n"
        b"app.blocking_time:31.5|ms|#env:prod,team:a,call:a_b_c_d_e\n"
        b"app.lag:1.5|g|#env:prod,call:x,team:a"
    )
    assert all(statsd.parse_strict(line) for line in datagram.decode().split("\n"))


def test_with_flavor_statsd_a_lines_own_tags_become_the_last_parts_of_its_name(rx: socket.socket) -> None:
    sink = sink_to(rx.getsockname()[1], flavor="statsd")
    sink.send([("blocking_calls", "c", 2, (("call", "socket.socket.recv"),)), ("lag", "g", 0.5)])
    sink.close()
    datagram = rx.recv(65535)
    assert datagram == b"loopstat.blocking_calls.socket_socket_recv:2|c\nloopstat.lag:0.5|g"
    assert all(statsd.parse_strict(line) for line in datagram.decode().split("\n"))


def test_lines_that_do_not_fit_one_datagram_go_out_in_several_each_within_the_limit(rx: socket.socket) -> None:
    tags = {f"k{i}": "v" * 150 for i in range(3)}
    sink = sink_to(rx.getsockname()[1], tags=tags)
    lines: List[Line] = [("lag", "g", float(i)) for i in range(7)]
    sink.send(lines)
    sink.close()
    rx.settimeout(0.5)
    datagrams = []
    with contextlib.suppress(socket.timeout):
        while True:
            datagrams.append(rx.recv(65535))
    assert len(datagrams) > 1
    assert all(len(data) <= MAX_DATAGRAM for data in datagrams)
    received = [line for data in datagrams for line in data.split(b"\n")]
    assert [line.split(b"|")[0] for line in received] == [f"loopstat.lag:{i}.0".encode() for i in range(7)]
    assert sink.sent == 7


def test_a_connection_given_takes_the_sockets_place_never_looked_up_nor_replaced_and_closed_with_the_sink() -> None:
    sent = Collected()
    sink = Sink(resolve("no-such-host.invalid", 8125, environ={}, prefix="app"), connection=sent)
    lines: List[Line] = [("lag", "g", 1.5), ("tasks", "g", 3)]
    sink.send(lines)  # before start(): held for the connection, as for a socket
    sink.start()
    sink.maintain()
    sink.send(lines)
    sink.close()
    assert [(line.name, line.type, line.value) for line in sent.lines] == [
        ("app.lag", "g", 1.5),
        ("app.tasks", "g", 3),
    ] * 2
    assert (sink.sent, sink.dropped, sink.errors) == (4, 0, 0)
    assert sent.closed
    assert sent.bad == []


def test_lines_sent_after_close_are_dropped_not_sent(rx: socket.socket) -> None:
    sink = sink_to(rx.getsockname()[1])
    sink.close()
    sink.close()
    sink.send([("lag", "g", 1.0)])
    assert (sink.sent, sink.dropped) == (0, 1)


def test_a_refused_datagram_counts_its_lines_as_dropped_not_sent(free_port: int) -> None:
    sink = sink_to(free_port, tags={f"k{i}": "v" * 150 for i in range(3)})
    try:
        sink.send([("lag", "g", 1.0)] * 4)  # two datagrams: the refusal of the first shows on the second
    finally:
        sink.close()
    assert sink.errors == 1
    assert sink.dropped + sink.sent == 4
    assert sink.dropped >= 1


async def test_samples_of_two_datagrams_with_nothing_listening_give_one_warning_and_no_false_recovery(
    free_port: int, loopstat_log: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An agent outage as users reported it (interval 4 s, recovery after 3 s), scaled down twentyfold in time."""
    monkeypatch.setattr(sink_module, "RECOVERY_SECONDS", 0.15)
    tags = {f"tag{i}": "v" * 150 for i in range(3)}
    async with loopstat.install("127.0.0.1", free_port, interval=0.2, tags=tags, stall_threshold=None) as monitor:
        await asyncio.sleep(1.1)  # five samples
    assert records_of(loopstat_log, logging.INFO) == []
    assert len(records_of(loopstat_log, logging.WARNING)) == 1
    assert monitor.errors >= 3


def test_recovery_is_declared_once_sends_have_gone_through_for_the_recovery_time(
    rx: socket.socket, loopstat_log: pytest.LogCaptureFixture
) -> None:
    now = [0.0]
    sink = Sink(resolve("127.0.0.1", rx.getsockname()[1], environ={}), clock=lambda: now[0])
    sink.start()
    try:
        sink._fail("the agent was away")  # an outage, as a refused send would start it
        for second in range(5):
            now[0] = float(second)
            sink.send([("lag", "g", 1.0)])
    finally:
        sink.close()
    # Sends at 0, 1, 2 prove nothing yet; at 3 they have gone through for 3 s.
    assert records_of(loopstat_log, logging.INFO) == [f"loopstat: metrics reach 127.0.0.1:{rx.getsockname()[1]} again"]


# Lookups.


@pytest.fixture
def slow_dns(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """Make lookups of *.slow.invalid hang, as with a DNS server that does not answer, until released."""
    release = threading.Event()
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, str) and host.endswith(".slow.invalid"):
            release.wait(30)
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield release
    release.set()


def lookup_threads() -> List[_threads.Hidden]:
    return _threads.running("loopstat-lookup")


async def test_install_and_stop_cycles_during_a_slow_lookup_leave_one_lookup_thread(
    slow_dns: threading.Event,
) -> None:
    before = len(threading.enumerate())
    for _ in range(200):
        monitor = loopstat.install("agent.slow.invalid", 8125, stall_threshold=None)
        await asyncio.sleep(0)  # the sampler starts, and starts the lookup
        await monitor.stop()
    assert len(lookup_threads()) == 1
    assert len(threading.enumerate()) <= before + 1
    slow_dns.set()
    deadline = time.monotonic() + 10
    while lookup_threads():
        assert time.monotonic() < deadline, "the lookup thread did not end"
        await asyncio.sleep(0.01)


async def test_monitors_of_one_host_share_its_lookup(slow_dns: threading.Event) -> None:
    results: List[int] = []

    def other_loop() -> None:
        async def main() -> None:
            async with loopstat.install("agent.slow.invalid", 8125, stall_threshold=None):
                await asyncio.sleep(0.2)
                results.append(len(lookup_threads()))

        asyncio.run(main())

    async with loopstat.install("agent.slow.invalid", 8125, stall_threshold=None):
        await asyncio.sleep(0.05)
        thread = threading.Thread(target=other_loop)
        thread.start()
        await asyncio.get_running_loop().run_in_executor(None, thread.join)
    assert results == [1]
