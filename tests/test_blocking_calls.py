"""Blocking calls on a watched loop's thread: counted and named; the loop's own I/O and other threads never."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import pickle
import select
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Dict, List, Optional

import aiohttp
import pytest
import uvicorn
import uvloop
from aiohttp import web
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

import loopstat
from loopstat import _options
from loopstat._metrics import LINE_TAG_ROOM, Line
from loopstat.probes import blocking, stand_ins
from loopstat.probes.blocking import BlockingCalls
from tests import inside
from tests.fake_clock import FakeClock as Clock
from tests.ports import free_port
from tests.receiver import Receiver

INTERVAL = 0.02
LOGGER = "loopstat.probes.blocking"


@contextlib.asynccontextmanager
async def counting(receiver: Receiver, **settings: Any) -> AsyncIterator[loopstat.Monitor]:
    """A monitor of the running loop with blocking calls on, sampling every INTERVAL; no fault on the way."""
    arguments: Dict[str, Any] = {"interval": INTERVAL, "stall_threshold": None, **settings}
    faults = Faults()
    logging.getLogger("loopstat.monitor").addHandler(faults)
    try:
        async with loopstat.install("127.0.0.1", receiver.port, blocking_calls=True, **arguments) as monitor:
            await asyncio.sleep(0)  # the sampler starts, and attaches the probes
            assert threading.get_ident() in stand_ins._threads
            yield monitor
    finally:
        logging.getLogger("loopstat.monitor").removeHandler(faults)
    assert faults.messages == []  # no sample failed


class Faults(logging.Handler):
    """Collects the monitor's reports of failed samples."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def calls(receiver: Receiver, name: str = "loopstat.blocking_calls") -> Dict[str, float]:
    """Total per ``call`` tag of the lines received so far."""
    totals: Dict[str, float] = {}
    for line in receiver.snapshot():
        if line.name == name:
            call = dict(line.tags)["call"]
            totals[call] = totals.get(call, 0.0) + line.value
    return totals


def settled(receiver: Receiver) -> Dict[str, float]:
    receiver.quiet()
    return calls(receiver)


def records(caplog: pytest.LogCaptureFixture) -> List[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


@pytest.fixture
def blocking_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="loopstat")
    return caplog


# The acceptance.


async def load_report() -> None:
    time.sleep(0.01)  # the handler's blocking line


REPORT_LINE = load_report.__code__.co_firstlineno + 1


async def test_fifty_short_sleeps_in_a_handler_are_counted_as_time_sleep_and_logged_once_at_its_line(
    receiver: Receiver, blocking_log: pytest.LogCaptureFixture
) -> None:
    async with counting(receiver):
        for _ in range(50):
            await load_report()
            await asyncio.sleep(0)
    totals = settled(receiver)
    assert totals.keys() == {"time.sleep"}
    assert 45 <= totals["time.sleep"] <= 50
    blocked = sum(x.value for x in receiver.snapshot() if x.name == "loopstat.blocking_time")
    assert blocked >= 45 * 10.0
    [message] = records(blocking_log)
    assert message.startswith(
        f"loopstat: blocking call time.sleep on the event loop at tests/test_blocking_calls.py:{REPORT_LINE} "
        "in load_report ("
    )
    assert message.endswith(" in the last minute)")


async def test_a_blocking_getaddrinfo_on_the_loop_is_counted(receiver: Receiver) -> None:
    async with counting(receiver):
        socket.getaddrinfo("localhost", 80, type=socket.SOCK_STREAM)
    assert settled(receiver) == {"socket.getaddrinfo": 1}


async def test_sleeps_in_other_threads_are_not_counted_nor_on_another_loop_that_is_not_watched(
    receiver: Receiver,
) -> None:
    loop = asyncio.get_running_loop()

    def sleeps() -> None:
        for _ in range(10):
            time.sleep(0.005)

    async def sleeps_on_a_loop() -> None:
        sleeps()

    async with counting(receiver):
        worker = threading.Thread(target=sleeps)
        worker.start()
        await loop.run_in_executor(None, time.sleep, 0.01)
        await loop.run_in_executor(None, worker.join)
        await loop.run_in_executor(None, asyncio.run, sleeps_on_a_loop())
        time.sleep(0.001)  # the probe was listening all along
    assert settled(receiver) == {"time.sleep": 1}


async def fifty_echoes(port: int) -> None:
    """Fifty POSTs of growing bodies to an app on loopback that answers each body twice, from this loop."""
    async with aiohttp.ClientSession() as session:
        for index in range(50):
            async with session.post(f"http://127.0.0.1:{port}/", data=b"x" * (index * 1000)) as response:
                assert await response.read() == b"x" * (index * 2000)


async def test_an_aiohttp_app_serving_real_requests_on_loopback_reports_no_blocking_call(receiver: Receiver) -> None:
    async def hello(request: web.Request) -> web.Response:
        body = await request.read()
        return web.Response(body=body * 2)

    app = web.Application()
    app.router.add_post("/", hello)
    async with counting(receiver):
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            await fifty_echoes(port)
        finally:
            await runner.cleanup()
        time.sleep(0.001)  # the probe was listening all along
    assert settled(receiver) == {"time.sleep": 1}


async def test_a_starlette_app_under_uvicorn_serving_real_requests_reports_no_blocking_call(receiver: Receiver) -> None:
    async def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse((await request.body()) * 2)

    app = Starlette(routes=[Route("/", hello, methods=["POST"])])
    port = free_port("tcp")
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    async with counting(receiver):
        serving = asyncio.ensure_future(server.serve())
        while not server.started:
            assert not serving.done(), serving.exception()
            await asyncio.sleep(0.01)
        try:
            await fifty_echoes(port)
        finally:
            server.should_exit = True
            await serving
        time.sleep(0.001)  # the probe was listening all along
    assert settled(receiver) == {"time.sleep": 1}


async def stalls_in_a_blocking_call(seconds: float) -> float:
    started = time.perf_counter()
    time.sleep(seconds)  # the stalling line
    return time.perf_counter() - started


STALL_LINE = stalls_in_a_blocking_call.__code__.co_firstlineno + 2


async def test_time_blocked_adds_up_at_once_for_the_other_probes(receiver: Receiver) -> None:
    async with counting(receiver) as monitor:
        before = inside.blocked_seconds(monitor)
        time.sleep(0.05)
        assert inside.blocked_seconds(monitor) - before >= 0.05  # before any sample: utilization reads it first


async def test_a_loop_half_the_time_in_time_sleep_is_about_half_busy_on_uvloop_too(receiver: Receiver) -> None:
    """uvloop's utilization is its thread's CPU time plus the time in the calls this probe watches."""
    async with counting(receiver, interval=0.1) as monitor:
        seen = len(receiver.values("loopstat.utilization", "g"))
        deadline = time.perf_counter() + 1.0
        while time.perf_counter() < deadline:
            time.sleep(0.01)
            await asyncio.sleep(0.01)
        ratios = receiver.values("loopstat.utilization", "g")[seen + 1 :]  # whole windows only
    assert len(ratios) >= 3
    assert 0.3 <= statistics.median(ratios) <= 0.8, ratios
    assert monitor.utilization is not None


async def test_a_stall_inside_a_stood_in_call_is_the_applications_and_located_at_its_line() -> None:
    where = f"tests/test_blocking_calls.py:{STALL_LINE} in stalls_in_a_blocking_call"
    # A loaded machine may keep the watchdog off the CPU for the whole call: then again, with a
    # fresh receiver and a call twice as long (5 tries). It may add stalls of its own: each is kept.
    seconds = 0.15
    for _ in range(5):
        receiver = Receiver()
        try:
            async with counting(receiver, stall_threshold=0.05) as monitor:
                seen = inside.recorded_stalls(monitor)
                await asyncio.sleep(0.05)  # the watchdog has seen the loop
                blocked = await stalls_in_a_blocking_call(seconds)
                # The loop moves again: the call's stall is reported, located or (watchdog late) not.
                deadline = time.monotonic() + 30
                while not any(stall.location == where or stall.duration >= blocked * 500 for stall in seen):
                    assert time.monotonic() < deadline, f"no stall of the call; seen: {seen}"
                    await asyncio.sleep(0.01)
            sleeps = settled(receiver)["time.sleep"]
        finally:
            receiver.close()
        if any(stall.location == where for stall in seen):
            break
        seconds *= 2
    assert receiver.bad == []
    assert sleeps == 1
    # Reported as the application's stall (loopstat's own would not be counted), at the calling line.
    assert where in [stall.location for stall in seen], seen


# Which calls count.


async def test_socket_calls_count_in_blocking_mode_and_with_a_timeout_but_not_non_blocking(receiver: Receiver) -> None:
    left, right = socket.socketpair()
    try:
        async with counting(receiver):
            left.sendall(b"ab")  # blocking mode
            right.settimeout(5)
            assert right.recv(1) == b"a"  # a timeout blocks up to it
            right.setblocking(False)
            assert right.recv(1) == b"b"  # as the loops' own sockets: never counted
            with pytest.raises(BlockingIOError):
                right.recv(1)
    finally:
        left.close()
        right.close()
    assert settled(receiver) == {"socket.socket.sendall": 1, "socket.socket.recv": 1}


async def test_datagrams_sent_on_a_blocking_socket_do_not_count_but_waiting_for_one_does(receiver: Receiver) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        async with counting(receiver):
            sock.sendto(b"ping", sock.getsockname())  # a StatsD client's send
            assert sock.recv(4) == b"ping"
    assert settled(receiver) == {"socket.socket.recv": 1}


async def test_a_refused_connect_is_counted_and_raises_as_it_would(receiver: Receiver) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]  # bound, not listening: connections are refused
        async with counting(receiver):
            with socket.socket() as sock, pytest.raises(ConnectionRefusedError):
                sock.connect(("127.0.0.1", port))
    assert settled(receiver) == {"socket.socket.connect": 1}


async def test_subprocess_run_counts_once_not_again_for_the_waits_inside_it(receiver: Receiver) -> None:
    async with counting(receiver):
        command = [sys.executable, "-c", "print(6 * 7)"]
        done = subprocess.run(command, capture_output=True, text=True, check=True)  # noqa: ASYNC221 (under test)
        assert done.stdout == "42\n"
        with subprocess.Popen([sys.executable, "-c", "pass"]) as process:  # noqa: ASYNC220 (under test)
            process.wait()
            process.wait()  # collected already: returns at once
    assert settled(receiver) == {"subprocess.run": 1, "subprocess.Popen.wait": 1}


def lists_files() -> str:
    return subprocess.check_output(["ls", "/"], text=True)  # run() is called by the stdlib, for this line


LIST_LINE = lists_files.__code__.co_firstlineno + 1


async def test_a_call_made_inside_the_stdlib_is_named_by_the_application_line_that_led_to_it(
    receiver: Receiver, blocking_log: pytest.LogCaptureFixture
) -> None:
    async with counting(receiver):
        assert lists_files()
    assert settled(receiver) == {"subprocess.run": 1}
    [message] = records(blocking_log)
    assert f" at tests/test_blocking_calls.py:{LIST_LINE} in lists_files (1 time, " in message


async def test_select_counts_with_a_timeout_and_not_as_a_poll(receiver: Receiver) -> None:
    async with counting(receiver):
        assert select.select([], [], [], 0.001) == ([], [], [])
        assert select.select([], [], [], 0) == ([], [], [])
    assert settled(receiver) == {"select.select": 1}


async def test_files_read_whole_through_pathlib_count_from_a_mebibyte(receiver: Receiver, tmp_path: Path) -> None:
    big, small = tmp_path / "big.json", tmp_path / "settings.toml"
    big.write_bytes(b"x" * blocking.FILE_BYTES)
    small.write_text("x = 1\n")
    async with counting(receiver):
        assert len(big.read_bytes()) == blocking.FILE_BYTES
        assert len(big.read_text()) == blocking.FILE_BYTES
        assert small.read_text() == "x = 1\n"
        with pytest.raises(FileNotFoundError):
            (tmp_path / "absent").read_bytes()
    assert settled(receiver) == {"pathlib.Path.read_bytes": 1, "pathlib.Path.read_text": 1}


async def test_stand_ins_keep_results_exceptions_and_pickling_of_what_they_stand_for(receiver: Receiver) -> None:
    async with counting(receiver):
        assert time.sleep is not ORIGINALS["time.sleep"]
        with pytest.raises(ValueError, match="must be non-negative"):
            time.sleep(-1)
        with pytest.raises(TypeError):
            time.sleep("1")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            select.select([], [])  # type: ignore[call-arg]
        with pytest.raises(socket.gaierror):
            socket.getaddrinfo("127.0.0.1", 80, family=12345)  # refused locally: nothing goes out
        assert pickle.loads(pickle.dumps(time.sleep)) is time.sleep
        assert (time.sleep.__name__, time.sleep.__module__) == ("sleep", "time")
        assert socket.socket.recv.__name__ == "recv"

        class Retry:
            pause = time.sleep  # a builtin kept on a class is not bound as a method

        retry: Any = Retry()
        retry.pause(0)
    # time.sleep(-1) and the refused arguments fail before blocking: only the lookup blocked.
    assert settled(receiver).keys() <= {"time.sleep", "socket.getaddrinfo"}
    assert calls(receiver).get("socket.getaddrinfo") == 1


async def test_a_call_interrupted_by_ctrl_c_raises_it_unchanged_and_counting_goes_on(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = time.sleep
    interrupts = [KeyboardInterrupt()]

    def sleep(seconds: float) -> None:
        if interrupts:
            raise interrupts.pop()
        real(seconds)

    monkeypatch.setattr(time, "sleep", sleep)
    async with counting(receiver):
        with pytest.raises(KeyboardInterrupt):
            time.sleep(0.001)
        time.sleep(0.001)
    assert settled(receiver) == {"time.sleep": 2}


# Installed while some loop is watched, taken back after, others' wrappers kept.


ORIGINALS: Dict[str, Any] = {target.call: target.owner.__dict__.get(target.attribute) for target in blocking.TARGETS}


def assert_all_original() -> None:
    for target in blocking.TARGETS:
        assert target.owner.__dict__.get(target.attribute) is ORIGINALS[target.call], target.call


def watch_another_loop(started: threading.Event, stop: threading.Event, receiver: Receiver) -> None:
    async def main() -> None:
        async with counting(receiver):
            started.set()
            await asyncio.get_running_loop().run_in_executor(None, stop.wait, 30)

    asyncio.run(main())


async def test_stand_ins_stay_while_any_loop_is_watched_and_go_with_the_last(receiver: Receiver) -> None:
    assert_all_original()
    started, stop = threading.Event(), threading.Event()
    other = threading.Thread(target=watch_another_loop, args=(started, stop, receiver), daemon=True)
    try:
        async with counting(receiver):
            other.start()
            assert started.wait(10)
        assert time.sleep is not ORIGINALS["time.sleep"]  # the other loop is still watched
    finally:
        stop.set()
        await asyncio.get_running_loop().run_in_executor(None, other.join, 30)
    assert_all_original()
    assert "connect" not in socket.socket.__dict__


async def test_a_wrapper_another_tool_set_before_is_called_through_and_put_back(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: List[float] = []
    real = time.sleep

    def tool_sleep(seconds: float) -> None:
        seen.append(seconds)
        real(seconds)

    monkeypatch.setattr(time, "sleep", tool_sleep)
    async with counting(receiver):
        time.sleep(0.001)
    assert time.sleep is tool_sleep
    assert seen == [0.001]
    assert settled(receiver) == {"time.sleep": 1}


async def test_a_wrapper_another_tool_set_after_stays_and_ours_inside_it_only_passes_calls_on(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with counting(receiver):
        ours = time.sleep

        def tool_sleep(seconds: float) -> None:
            ours(seconds)

        monkeypatch.setattr(time, "sleep", tool_sleep)
    assert time.sleep is tool_sleep
    async with counting(receiver):  # watched again: a new stand-in around the tool's, the old one only passes on
        time.sleep(0.001)
    assert settled(receiver) == {"time.sleep": 1}
    assert time.sleep is tool_sleep
    monkeypatch.undo()  # the tool puts back what it found: our stand-in, which now only passes calls on
    assert time.sleep is ours
    time.sleep(0.001)  # called with no loop watched, it puts the original back in its place
    assert time.sleep is ORIGINALS["time.sleep"]


@pytest.fixture
def new_loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


async def test_by_default_on_only_where_no_selector_is_timed(receiver: Receiver) -> None:
    """Auto: on uvloop, whose own I/O runs in C; off on stdlib loops, whose socket calls would pass through."""
    loop = asyncio.get_running_loop()
    stdlib = isinstance(loop, asyncio.BaseEventLoop)
    async with loopstat.install("127.0.0.1", receiver.port, interval=INTERVAL) as monitor:
        assert monitor.settings.blocking_calls is None
        await asyncio.sleep(0)  # the sampler starts, and attaches the probes
        if stdlib:
            assert_all_original()
        time.sleep(0.001)
        await asyncio.sleep(3 * INTERVAL)
    assert settled(receiver) == ({} if stdlib else {"time.sleep": 1})
    assert_all_original()


async def test_loopstat_run_turns_it_on_with_its_variable(receiver: Receiver) -> None:
    arguments = _options.run_arguments({"LOOPSTAT_BLOCKING_CALLS": "1"})
    assert arguments == {"blocking_calls": True}
    async with loopstat.install("127.0.0.1", receiver.port, **arguments):
        await asyncio.sleep(0)  # the sampler starts, and attaches the probes
        time.sleep(0.001)
    assert_all_original()
    assert settled(receiver) == {"time.sleep": 1}  # sent at stop, with no sample since


# The probe alone: counts, logs and faults, with an injected clock.


APP_FRAME = ("/srv/app/handlers.py", 42, "load_report")


def test_a_call_site_is_logged_at_most_once_a_minute_with_what_it_did_since(
    new_loop: asyncio.AbstractEventLoop, blocking_log: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    probe = BlockingCalls(new_loop, lambda: None, clock)
    try:
        lines: List[Line] = []
        probe.note("time.sleep", 0.02, [("/srv/app/main.py", 3, "main"), APP_FRAME])
        probe.read(lines)
        for _ in range(59):
            clock.now += 1
            probe.note("time.sleep", 0.02, [APP_FRAME])
            probe.read(lines)
        assert len(records(blocking_log)) == 1
        clock.now += 1  # a minute after the first line
        probe.read(lines)
    finally:
        probe.close()
    assert records(blocking_log) == [
        "loopstat: blocking call time.sleep on the event loop at /srv/app/handlers.py:42 in load_report "
        "(1 time, 20.0 ms in the last minute)",
        "loopstat: blocking call time.sleep on the event loop at /srv/app/handlers.py:42 in load_report "
        "(59 times, 1.2 s in the last minute)",
    ]
    assert sum(line[2] for line in lines if line[0] == "blocking_calls") == 60


def test_call_sites_remembered_are_bounded(new_loop: asyncio.AbstractEventLoop) -> None:
    probe = BlockingCalls(new_loop, lambda: None)
    try:
        for line in range(blocking.MAX_SITES * 3):
            probe.note("time.sleep", 0.0, [("/srv/app/handlers.py", line, "f")])
            assert len(probe._sites) <= blocking.MAX_SITES
    finally:
        probe.close()


@pytest.fixture
def unbroken(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fault takes the stand-ins out for the rest of the process: for this test only."""
    monkeypatch.setattr(stand_ins, "_broken", False)


@pytest.mark.usefixtures("unbroken")
async def test_a_fault_while_noting_a_call_takes_the_stand_ins_out_with_one_warning_and_the_call_returns_as_usual(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch, blocking_log: pytest.LogCaptureFixture
) -> None:
    def fail(frames: Any) -> Optional[Any]:
        raise RuntimeError("broken")

    monkeypatch.setattr(blocking, "culprit", fail)
    async with loopstat.install("127.0.0.1", receiver.port, blocking_calls=True, interval=INTERVAL) as monitor:
        await asyncio.sleep(0)
        assert time.sleep is not ORIGINALS["time.sleep"]
        time.sleep(0.001)
        assert_all_original()
        assert socket.getaddrinfo("127.0.0.1", 80)[0][4] == ("127.0.0.1", 80)
        time.sleep(0.001)
        with pytest.raises(ValueError, match="must be non-negative"):
            time.sleep(-1)
        await receiver.wait_count("loopstat.lag", "ms", 3, timeout=30)  # the other metrics go on
        assert monitor.running
    warnings = [r for r in blocking_log.records if r.name == LOGGER and r.levelno >= logging.WARNING]
    assert [r.getMessage() for r in warnings] == [
        "loopstat: blocking calls are no longer counted (the stand-in for time.sleep failed: "
        "RuntimeError('broken')); the other metrics go on"
    ]
    assert_all_original()


@pytest.mark.usefixtures("unbroken")
async def test_a_fault_finding_the_running_loop_passes_the_call_on_and_no_stand_in_comes_back(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch, blocking_log: pytest.LogCaptureFixture
) -> None:
    def fail() -> Optional[BlockingCalls]:
        raise AttributeError("get_running_loop")

    monkeypatch.setattr(stand_ins, "_probe_of_running_loop", fail)
    async with counting(receiver):
        stood_in = socket.getaddrinfo
        assert stood_in("127.0.0.1", 80)[0][4] == ("127.0.0.1", 80)
        with pytest.raises(socket.gaierror):  # the original's own exception, unchanged
            stood_in("127.0.0.1", 80, family=12345)
        assert_all_original()
    async with loopstat.install("127.0.0.1", receiver.port, blocking_calls=True, interval=INTERVAL):
        await asyncio.sleep(0)
        assert_all_original()  # for good
    assert len([r for r in blocking_log.records if r.levelno >= logging.WARNING]) == 1
    assert calls(receiver) == {}


def test_every_target_pickles_by_reference_and_loads_back_as_the_current_attribute(
    new_loop: asyncio.AbstractEventLoop,
) -> None:
    for target in blocking.TARGETS:
        original = getattr(target.owner, target.attribute)
        assert pickle.loads(pickle.dumps(original)) is original, target.call
    probe = BlockingCalls(new_loop, lambda: None)
    try:
        for target in blocking.TARGETS:
            stand_in = getattr(target.owner, target.attribute)
            assert stand_in is not ORIGINALS[target.call] or ORIGINALS[target.call] is None, target.call
            assert pickle.loads(pickle.dumps(stand_in)) is stand_in, target.call
        assert pickle.loads(pickle.dumps(socket.socket.recv)) is socket.socket.recv
        assert pickle.loads(pickle.dumps(time.sleep)) is time.sleep
    finally:
        probe.close()
    assert_all_original()


def _resolve(host: str, port: int, *args: Any, **kwargs: Any) -> List[Any]:
    return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (host, port))]


@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
def test_monkeypatch_around_1100_monitored_loops_leaves_getaddrinfo_the_original_one_layer_at_most(
    loop_name: str, receiver: Receiver
) -> None:
    """As 1,100 async tests do when each patches ``socket.getaddrinfo`` in a fixture and their loop
    (with its monitor) ends before the patch is undone. asyncio counts with ``blocking_calls=True``,
    uvloop by default."""
    original = socket.getaddrinfo
    settings: Dict[str, Any] = {"blocking_calls": True} if loop_name == "asyncio" else {}

    async def test_body(patch: pytest.MonkeyPatch) -> None:
        loopstat.install("127.0.0.1", receiver.port, interval=3600, stall_threshold=None, **settings)
        await asyncio.sleep(0)
        assert threading.get_ident() in stand_ins._threads  # counting
        patch.setattr(socket, "getaddrinfo", _resolve)
        assert socket.getaddrinfo("example.test", 80)[0][4] == ("example.test", 80)

    for _ in range(1100):
        patch = pytest.MonkeyPatch()
        loop = uvloop.new_event_loop() if loop_name == "uvloop" else asyncio.new_event_loop()
        try:
            loop.run_until_complete(test_body(patch))
        finally:
            loop.close()  # the monitor ends with its loop, before the patch is undone
        patch.undo()
        assert stand_ins.original_of(socket.getaddrinfo) is original
    assert socket.getaddrinfo("127.0.0.1", 80)[0][4] == ("127.0.0.1", 80)
    assert socket.getaddrinfo is original
    assert_all_original()


def test_every_call_tag_fits_the_room_lines_keep_for_their_own_tags() -> None:
    assert len(blocking.CALLS) == len(set(blocking.CALLS))
    assert max(len(f",call:{call}") for call in blocking.CALLS) <= LINE_TAG_ROOM


def test_a_probe_dropped_without_close_takes_the_stand_ins_with_it(new_loop: asyncio.AbstractEventLoop) -> None:
    probe: Optional[BlockingCalls] = BlockingCalls(new_loop, lambda: None)
    assert time.sleep is not ORIGINALS["time.sleep"]
    del probe
    gc.collect()
    assert_all_original()


def test_a_target_whose_owner_refuses_a_stand_in_keeps_its_own_and_the_others_are_stood_in(
    new_loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch
) -> None:
    refusing = stand_ins.Target("int.bit_length", int, "bit_length")  # a builtin type: its attributes cannot change
    monkeypatch.setattr(blocking, "TARGETS", (*blocking.TARGETS, refusing))
    probe = BlockingCalls(new_loop, lambda: None)
    try:
        assert "bit_length" in int.__dict__
        assert time.sleep is not ORIGINALS["time.sleep"]
    finally:
        probe.close()
    monkeypatch.undo()
    assert_all_original()
