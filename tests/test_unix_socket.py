"""Sending over the Agent's Unix datagram socket (``socket_path``, ``DD_DOGSTATSD_URL=unix://``).

A real receiver binds a real socket file; its faults are the Agent's: the file
absent at start, removed and bound again (a restart), not writable, not read.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Callable, List

import pytest

import loopstat
from loopstat import bootstrap
from loopstat import sink as sink_module
from loopstat._metrics import Line
from loopstat._options import MAX_DATAGRAM, MAX_UNIX_DATAGRAM, resolve
from loopstat.sink import Sink
from tests.receiver import Receiver

ROOT = Path(__file__).resolve().parent.parent


NOTES = "loopstat._notes"


def records_of(caplog: pytest.LogCaptureFixture, level: int) -> List[str]:
    """loopstat's records at ``level``, less the line naming the loop at start (INFO, loopstat._notes)."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("loopstat.") and r.name != NOTES and r.levelno == level
    ]


@pytest.fixture
def path(tmp_path: Path) -> str:
    """Where the Agent's socket goes; not there until a test binds it."""
    return str(tmp_path / "dsd.socket")


@pytest.fixture
def agent(path: str) -> Iterator[Receiver]:
    rx = Receiver(path=path)
    yield rx
    rx.close()
    assert rx.bad == [], f"malformed lines received: {rx.bad}"


async def wait_until(condition: Callable[[], object], what: str, timeout: float = 15.0) -> None:
    """Poll ``condition()`` until true; the loop keeps running meanwhile."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {timeout}s"
        await asyncio.sleep(0.01)


# Metrics arrive.


async def test_metrics_arrive_over_the_unix_socket_given_as_socket_path(path: str, agent: Receiver) -> None:
    async with loopstat.install(socket_path=path, interval=0.02, stall_threshold=None) as monitor:
        lines = await agent.wait_for(lambda lines: len(lines) >= 6)
    assert {line.name for line in lines} >= {"loopstat.lag", "loopstat.tasks"}
    assert monitor.settings.address == f"unix://{path}"
    assert monitor.sent >= 6
    assert monitor.errors == 0


async def test_a_path_object_is_accepted_as_socket_path(path: str, agent: Receiver) -> None:
    async with loopstat.install(socket_path=Path(path), interval=0.02, stall_threshold=None) as monitor:
        await agent.wait_for(lambda lines: len(lines) >= 3)
    assert monitor.settings.socket_path == path


async def test_dogstatsd_url_unix_sends_to_the_socket_tagged_with_dd_entity_id(
    monkeypatch: pytest.MonkeyPatch, path: str, agent: Receiver
) -> None:
    monkeypatch.setenv("DD_DOGSTATSD_URL", f"unix://{path}")
    monkeypatch.setenv("DD_AGENT_HOST", "agent.invalid")  # not used: the URL names a socket
    monkeypatch.setenv("DD_ENTITY_ID", "9c4f2f3e-1b2a-4d5e-8f90-0123456789ab")
    monkeypatch.setenv("DD_ENV", "prod")
    async with loopstat.install(interval=0.02, stall_threshold=None):
        lines = await agent.wait_for(lambda lines: len(lines) >= 3)
    assert dict(lines[0].tags) == {"env": "prod", "dd.internal.entity_id": "9c4f2f3e-1b2a-4d5e-8f90-0123456789ab"}


def test_loopstat_run_accepts_any_dogstatsd_url_and_names_dd_entity_id() -> None:
    assert bootstrap.check({"DD_DOGSTATSD_URL": "unix:///var/run/datadog/dsd.socket"}) == {}
    assert "DD_ENTITY_ID" in bootstrap.INSTALL_VARIABLES
    # A shared variable is install()'s to warn about; it never stops loopstat-run.
    assert bootstrap.check({"DD_DOGSTATSD_URL": "unix://dsd.socket"}) == {}


# Datagrams up to the Agent's 8192-byte buffer.


def test_a_sample_too_long_for_a_udp_datagram_goes_out_in_one_unix_datagram(path: str) -> None:
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(path)
    receiver.settimeout(5)
    tags = {f"k{i}": "v" * 150 for i in range(3)}
    sink = Sink(resolve(socket_path=path, tags=tags, environ={}))
    sink.start()
    try:
        sink.send([("lag", "g", float(i)) for i in range(7)])  # about 3,400 bytes: three UDP datagrams
        sink.send([("lag", "g", float(i)) for i in range(40)])  # about 19,000 bytes: more than one Unix datagram
    finally:
        sink.close()
    first = receiver.recv(65535)
    assert MAX_DATAGRAM < len(first) <= MAX_UNIX_DATAGRAM
    assert len(first.split(b"\n")) == 7
    rest: List[bytes] = []
    receiver.settimeout(0.5)
    while sum(len(data.split(b"\n")) for data in rest) < 40:
        rest.append(receiver.recv(65535))
    receiver.close()
    assert len(rest) > 1
    assert all(len(data) <= MAX_UNIX_DATAGRAM for data in rest)
    assert (sink.sent, sink.dropped, sink.errors) == (47, 0, 0)


# Faults: one warning per outage, one INFO line when it ends, nothing raised, nothing waited for.


async def test_socket_file_absent_at_start_gives_one_warning_then_metrics_arrive_once_it_is_bound(
    path: str, loopstat_log: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Connections tried sooner than the default second: some fail before the bind, one warning all the same.
    monkeypatch.setattr(sink_module, "FIRST_RETRY_SECONDS", 0.1)
    async with loopstat.install(socket_path=path, interval=0.02, stall_threshold=None) as monitor:
        await wait_until(lambda: records_of(loopstat_log, logging.WARNING), "a warning about the absent socket")
        await asyncio.sleep(0.1)
        assert monitor.running
        assert (monitor.sent, monitor.errors) == (0, 0)
        assert monitor.dropped > 0
        agent = Receiver(path=path)
        try:
            await agent.wait_for(lambda lines: len(lines) >= 3, timeout=15)
            await wait_until(lambda: records_of(loopstat_log, logging.INFO), "the recovery logged")
        finally:
            agent.close()
    [warning] = records_of(loopstat_log, logging.WARNING)
    assert f"cannot open a socket to unix://{path} (FileNotFoundError" in warning
    assert records_of(loopstat_log, logging.INFO) == [f"loopstat: metrics reach unix://{path} again"]


async def test_agent_restart_removing_and_binding_the_socket_again_gives_one_warning_and_one_recovery_per_outage(
    path: str, loopstat_log: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Reconnects tried sooner than the default second: some fail during the outage, one warning all the same.
    monkeypatch.setattr(sink_module, "FIRST_RETRY_SECONDS", 0.1)
    agent = Receiver(path=path)
    try:
        async with loopstat.install(socket_path=path, interval=0.02, stall_threshold=None) as monitor:
            await agent.wait_for(lambda lines: len(lines) >= 3)
            for outage in (1, 2):
                agent.close()
                os.unlink(path)  # as the Agent does on shutdown; the sink's connection now leads nowhere
                dropped = monitor.dropped
                await asyncio.sleep(0.3)  # sends refused; the socket is closed, to be connected again later
                assert monitor.running
                assert monitor.dropped > dropped
                assert len(records_of(loopstat_log, logging.WARNING)) == outage
                assert len(records_of(loopstat_log, logging.INFO)) == outage - 1
                agent = Receiver(path=path)  # the restarted Agent binds the same name
                await agent.wait_for(lambda lines: len(lines) >= 3, timeout=15)

                def recovered(count: int = outage) -> bool:
                    return len(records_of(loopstat_log, logging.INFO)) == count

                await wait_until(recovered, "the recovery logged")
    finally:
        agent.close()
    assert len(records_of(loopstat_log, logging.WARNING)) == 2
    assert records_of(loopstat_log, logging.INFO) == [f"loopstat: metrics reach unix://{path} again"] * 2
    assert monitor.errors >= 2


def test_a_full_agent_queue_drops_datagrams_without_waiting_or_warning(
    path: str, loopstat_log: pytest.LogCaptureFixture
) -> None:
    stuck = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stuck.bind(path)  # an Agent that never reads: its queue fills up
    sink = Sink(resolve(socket_path=path, environ={}))
    sink.start()
    lines: List[Line] = [("lag", "g", 1.0), ("tasks", "g", 3.0)]
    sends = 20_000

    def burst() -> None:
        for _ in range(sends):
            sink.send(lines)

    sender = threading.Thread(target=burst)
    sender.start()
    sender.join(60)
    sink.close()
    stuck.close()
    assert not sender.is_alive(), "a send waited for the Agent to read"
    assert sink.dropped > 0
    assert sink.sent + sink.dropped == sends * len(lines)
    assert sink.errors == 0
    assert records_of(loopstat_log, logging.WARNING) == []


# Permission denied. Tests run as root, which no file mode stops, so the monitor
# runs in a child process that setpriv(1) starts without CAP_DAC_OVERRIDE: it is
# still root, the socket file is root's, and its mode decides, as for any user.

CHILD = """
import asyncio, json, logging, sys, time
import loopstat

records = []
class Keep(logging.Handler):
    def emit(self, record):
        if record.name != "loopstat._notes":  # the line naming the loop at start
            records.append((record.levelname, record.getMessage()))
logging.getLogger("loopstat").addHandler(Keep())
logging.getLogger("loopstat").setLevel(logging.INFO)

async def main():
    monitor = loopstat.install(socket_path=sys.argv[1], interval=0.02, stall_threshold=None)
    deadline = time.monotonic() + 30
    while not records and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    print("warned", flush=True)
    while monitor.sent < 3 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)
    await monitor.stop()
    return monitor

if sys.argv[2] == "uvloop":
    import uvloop
    loop = uvloop.new_event_loop()
else:
    loop = asyncio.new_event_loop()
try:
    monitor = loop.run_until_complete(main())
finally:
    loop.close()
print(json.dumps({"records": records, "sent": monitor.sent, "dropped": monitor.dropped}), flush=True)
"""


@pytest.fixture
def shared_dir() -> Iterator[str]:
    """A short directory any process may enter (pytest's tmp_path is private to its owner)."""
    directory = tempfile.mkdtemp(prefix="loopstat-")
    os.chmod(directory, 0o755)
    yield directory
    shutil.rmtree(directory)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_permission_denied_gives_one_warning_until_the_socket_is_made_writable(shared_dir: str, loop: str) -> None:
    setpriv = shutil.which("setpriv")
    if setpriv is None or sys.platform != "linux":
        pytest.skip("needs Linux and setpriv(1) to run a process that file modes apply to")
    path = os.path.join(shared_dir, "dsd.socket")
    agent = Receiver(path=path)
    os.chmod(path, 0o000)
    without_override = "-dac_override,-dac_read_search"
    command = [setpriv, f"--inh-caps={without_override}", f"--bounding-set={without_override}"]
    command += [sys.executable, "-X", "dev", "-W", "error", "-c", CHILD, path, loop]
    environ = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environ)
    try:
        assert child.stdout is not None
        first = child.stdout.readline()
        assert first == "warned\n", child.stderr.read() if child.stderr else first
        os.chmod(path, 0o600)  # the owner, root, may now write; the child is root
        out, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
        agent.close()
    assert child.returncode == 0, err
    result = json.loads(out)
    warnings = [message for level, message in result["records"] if level == "WARNING"]
    infos = [message for level, message in result["records"] if level == "INFO"]
    assert len(warnings) == 1, warnings
    assert f"cannot open a socket to unix://{path} (PermissionError" in warnings[0]
    assert infos == [f"loopstat: metrics reach unix://{path} again"]
    assert result["sent"] >= 3
    assert result["dropped"] > 0
    assert len(agent.snapshot()) >= 3


# DD_DOGSTATSD_URL and socket_path: precedence and errors.


def test_dogstatsd_url_unix_gives_the_socket_path() -> None:
    settings = resolve(environ={"DD_DOGSTATSD_URL": "unix:///var/run/datadog/dsd.socket"})
    assert settings.socket_path == "/var/run/datadog/dsd.socket"
    assert settings.address == "unix:///var/run/datadog/dsd.socket"


def test_dogstatsd_url_udp_leaves_the_socket_path_unset() -> None:
    settings = resolve(environ={"DD_DOGSTATSD_URL": "udp://127.0.0.1:9000"})
    assert (settings.socket_path, settings.host, settings.port) == (None, "127.0.0.1", 9000)


@pytest.mark.parametrize("arguments", [{"host": "127.0.0.1"}, {"port": 9000}])
def test_host_or_port_given_beats_a_unix_dogstatsd_url(arguments: dict[str, object]) -> None:
    settings = resolve(environ={"DD_DOGSTATSD_URL": "unix:///var/run/datadog/dsd.socket"}, **arguments)
    assert settings.socket_path is None


def test_socket_path_given_beats_a_udp_dogstatsd_url() -> None:
    settings = resolve(socket_path="/run/dsd.socket", environ={"DD_DOGSTATSD_URL": "udp://127.0.0.1:9000"})
    assert settings.address == "unix:///run/dsd.socket"


def test_dd_entity_id_is_read_only_for_dogstatsd_lines() -> None:
    environ = {"DD_ENTITY_ID": "pod-1"}
    assert resolve(environ=environ).tags == (("dd.internal.entity_id", "pod-1"),)
    assert resolve(flavor="statsd", environ=environ).tags == ()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"socket_path": "dsd.socket"}, r"^socket_path: 'dsd.socket' is not an absolute path; expected None, or"),
        ({"socket_path": b"/run/dsd.socket"}, r"^socket_path: b'/run/dsd.socket' is not an absolute path"),
        ({"socket_path": 8125}, r"^socket_path: 8125 is not an absolute path"),
        ({"socket_path": "/run/\0dsd"}, r"^socket_path: .* is not an absolute path"),
        ({"socket_path": "/" + "s" * 107}, r"^socket_path: .* is too long \(108 bytes\); .*at most 107 bytes"),
        (
            {"socket_path": "/run/dsd.socket", "host": "127.0.0.1"},
            r"^socket_path: cannot be combined with host; expected either socket_path or host and port",
        ),
        ({"socket_path": "/run/dsd.socket", "port": 8125}, r"^socket_path: cannot be combined with port"),
    ],
)
def test_a_bad_socket_path_is_named(arguments: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        resolve(environ={}, **arguments)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("unix://dsd.socket", r"'unix://dsd.socket' has no absolute path \(three slashes: unix:///path\)"),
        ("unix://", r"'unix://' has no absolute path"),
        ("unixstream://dsd.socket", r"has no absolute path \(three slashes: unixstream:///path\)"),
        ("unixgram:///" + "s" * 200, r"'unixgram:///s.* is too long \(201 bytes\); expected udp://host:port, "),
        ("dsd.socket", r"'dsd.socket' is not valid; expected .*an absolute path"),
    ],
)
def test_a_bad_unix_dogstatsd_url_is_named_in_one_warning_and_the_next_source_is_used(
    loopstat_log: pytest.LogCaptureFixture, url: str, message: str
) -> None:
    settings = resolve(environ={"DD_DOGSTATSD_URL": url, "DD_AGENT_HOST": "127.0.0.1"})
    assert (settings.socket_path, settings.host, settings.port) == (None, "127.0.0.1", 8125)
    warnings = [record.getMessage() for record in loopstat_log.records]
    assert len(warnings) == 1, warnings
    assert re.search(r"^loopstat: DD_DOGSTATSD_URL: .*" + message, warnings[0]), warnings[0]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("udp://127.0.0.1:9000", (None, "127.0.0.1", 9000)),
        ("localhost:9000", (None, "localhost", 9000)),
        ("unix:///var/run/datadog/dsd.socket", ("/var/run/datadog/dsd.socket", "localhost", 8125)),
        ("/var/run/datadog/dsd.socket", ("/var/run/datadog/dsd.socket", "localhost", 8125)),
        ("unixgram:///var/run/datadog/dsd.socket", ("unixgram:///var/run/datadog/dsd.socket", "localhost", 8125)),
        ("unixstream:///var/run/datadog/dsd.socket", ("unixstream:///var/run/datadog/dsd.socket", "localhost", 8125)),
    ],
)
def test_every_dogstatsd_url_form_datadog_clients_read_is_read(url: str, expected: tuple[object, ...]) -> None:
    settings = resolve(environ={"DD_DOGSTATSD_URL": url})
    assert (settings.socket_path, settings.host, settings.port) == expected


def test_a_bad_port_in_the_dogstatsd_url_quotes_the_whole_url(loopstat_log: pytest.LogCaptureFixture) -> None:
    settings = resolve(environ={"DD_DOGSTATSD_URL": "udp://agent:81250", "DD_DOGSTATSD_PORT": "9125"})
    assert (settings.host, settings.port) == ("localhost", 9125)
    [warning] = [record.getMessage() for record in loopstat_log.records]
    assert warning.startswith("loopstat: DD_DOGSTATSD_URL: 'udp://agent:81250' has port '81250', which is out of range")


# The Agent's Unix stream socket: each payload after its length, 4 bytes little-endian.


class StreamAgent:
    """A Unix stream socket read as the Agent reads it: frames of a 4-byte little-endian length and a payload."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.payloads: List[bytes] = []
        self.connections = 0
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(path)
        self._listener.listen(8)
        self._listener.settimeout(0.05)
        self._open = True
        self._current: socket.socket | None = None
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while self._open:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                continue
            self.connections += 1
            self._current = conn
            with conn:
                conn.settimeout(0.05)
                buffer = b""
                while self._open:
                    try:
                        chunk = conn.recv(65536)
                    except socket.timeout:
                        continue
                    except OSError:
                        break
                    if not chunk:
                        break
                    buffer += chunk
                    while len(buffer) >= 4 and len(buffer) >= 4 + struct.unpack("<I", buffer[:4])[0]:
                        size = struct.unpack("<I", buffer[:4])[0]
                        self.payloads.append(buffer[4 : 4 + size])
                        buffer = buffer[4 + size :]

    def lines(self) -> List[str]:
        return [line for payload in list(self.payloads) for line in payload.decode().split("\n")]

    def drop_connection(self) -> None:
        """The Agent restarts: the connection it had ends."""
        conn = self._current
        if conn is not None:
            conn.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._open = False
        self._thread.join()
        self._listener.close()


@pytest.fixture
def stream_agent(path: str) -> Iterator[StreamAgent]:
    agent = StreamAgent(path)
    yield agent
    agent.close()


def well_formed(lines: List[str]) -> bool:
    return all(re.fullmatch(r"loopstat\.[a-z_.]+:[-0-9.e]+\|(g|ms|c)(\|#.*)?", line) for line in lines)


@pytest.mark.parametrize("form", ["unixstream://{}", "unix://{}", "{}"])
async def test_metrics_reach_a_unix_stream_socket_in_length_prefixed_frames(
    monkeypatch: pytest.MonkeyPatch, path: str, stream_agent: StreamAgent, form: str
) -> None:
    # unixstream:// asks for a stream; unix:// and a bare path find that the file is one, as Datadog's clients do.
    monkeypatch.setenv("DD_DOGSTATSD_URL", form.format(path))
    async with loopstat.install(interval=0.02, stall_threshold=None) as monitor:
        await wait_until(lambda: len(stream_agent.lines()) >= 6, "six lines through the stream")
    lines = stream_agent.lines()
    assert well_formed(lines), lines
    assert {line.split(":")[0] for line in lines} >= {"loopstat.lag", "loopstat.tasks"}
    assert monitor.errors == 0
    assert monitor.sent >= 6


async def test_a_stream_the_agent_closes_is_connected_again_and_metrics_flow(
    path: str, stream_agent: StreamAgent, loopstat_log: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sink_module, "FIRST_RETRY_SECONDS", 0.1)  # reconnected sooner than the default second
    async with loopstat.install(socket_path=f"unixstream://{path}", interval=0.02, stall_threshold=None) as monitor:
        await wait_until(lambda: len(stream_agent.payloads) >= 3, "first frames")
        stream_agent.drop_connection()
        await wait_until(lambda: stream_agent.connections >= 2, "a new connection", timeout=30)
        before = len(stream_agent.payloads)
        await wait_until(lambda: len(stream_agent.payloads) >= before + 3, "frames on the new connection")
    assert well_formed(stream_agent.lines())
    assert monitor.errors >= 1
    assert len(records_of(loopstat_log, logging.WARNING)) == 1


async def test_a_stream_agent_that_reads_nothing_never_blocks_the_loop_and_drops_counted(path: str) -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)  # accepts into the backlog, never reads
    try:
        async with loopstat.install(socket_path=f"unixstream://{path}", interval=0.001, stall_threshold=None) as m:
            await wait_until(lambda: m.dropped > 0, "lines dropped once the stream is full", timeout=60)
            started = time.perf_counter()
            await asyncio.sleep(0.05)
            assert time.perf_counter() - started < 5  # the loop still turns
    finally:
        listener.close()


@pytest.mark.parametrize("given", ["argument", "variable"])
@pytest.mark.parametrize("form", ["unix://{}", "unixgram://{}", "{}"])
async def test_install_sends_to_a_datagram_socket_in_each_form(
    monkeypatch: pytest.MonkeyPatch, path: str, agent: Receiver, form: str, given: str
) -> None:
    if given == "variable":
        monkeypatch.setenv("DD_DOGSTATSD_URL", form.format(path))
        arguments: dict[str, object] = {}
    else:
        arguments = {"socket_path": form.format(path)}
    async with loopstat.install(interval=0.02, stall_threshold=None, **arguments) as monitor:  # type: ignore[arg-type]
        await agent.wait_for(lambda lines: len(lines) >= 3)
    assert monitor.errors == 0


async def test_a_unixgram_url_never_speaks_stream_to_a_stream_socket(
    path: str, stream_agent: StreamAgent, loopstat_log: pytest.LogCaptureFixture
) -> None:
    async with loopstat.install(socket_path=f"unixgram://{path}", interval=0.02, stall_threshold=None) as monitor:
        await wait_until(lambda: monitor.dropped > 0, "lines dropped")
    assert stream_agent.connections == 0
    [warning] = records_of(loopstat_log, logging.WARNING)
    assert "cannot open a socket to unixgram://" in warning
