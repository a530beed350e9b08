"""Never the cause: what differs on other platforms and later Pythons, simulated, costs only its own metrics.

Each simulation runs one application as a real process twice, without
loopstat and with ``install()``, and holds the monitored run to the plain
one: the same output and exit status, no traceback, at most one warning per
probe it costs, and lag and tasks in every sample the receiver gets.

Shared setup, for more simulations: ``Simulation`` (code run first in the
application's process, and a hook on its loop), ``run_app`` (one run),
``run_both`` (the plain and the monitored run, held to each other),
``samples_of`` (the samples a receiver got, each checked for lag and tasks)
and ``warnings_of`` (the loopstat warnings a run printed).
"""

from __future__ import annotations

import asyncio
import faulthandler
import gc
import json
import logging
import os
import subprocess
import sys
import sysconfig
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest

import loopstat
from loopstat import bootstrap
from loopstat._options import resolve
from loopstat._probe_set import READ_FAILURES
from loopstat.probes import executor as executor_probe
from loopstat.probes import frames, stack_dump
from loopstat.probes import gc as gc_probe
from loopstat.probes import utilization as utilization_probe
from loopstat.probes.stall_watch import StallWatch
from loopstat.probes.thread_clock import ThreadClock
from tests import inside
from tests.receiver import Line, Receiver

LOOP_KINDS = ("asyncio", "uvloop")
#: The sampling interval of the monitored runs: many samples in a short run.
INTERVAL = 0.02
#: Samples a monitored run must at least deliver (it lasts about a second: 40 or more unloaded).
MIN_SAMPLES = 5
#: Seconds a run may take, on a loaded machine.
RUN_SECONDS = 60

# The application: a fixed amount of work on its loop, in its default executor
# and in tasks, one block of its loop, then its results on stdout and exit
# status 3. With APP_PORT set it calls install() first, and writes what its
# monitor saw to APP_REPORT (not to stdout: that is the application's).
APP = """
import asyncio, json, os, sys, time

def work(n):
    return sum(i * i for i in range(n))

async def child(i):
    await asyncio.sleep(0.001)
    return i * 2

async def main():
    monitor = None
    if os.environ.get("APP_PORT"):
        import loopstat
        monitor = loopstat.install("127.0.0.1", int(os.environ["APP_PORT"]), **json.loads(os.environ["APP_INSTALL"]))
    loop = asyncio.get_running_loop()
    results = []
    for i in range(20):
        results.append(await loop.run_in_executor(None, work, i * 100))
        results.append(sum(await asyncio.gather(*(child(j) for j in range(5)))))
        await asyncio.sleep(0.02)
    await loop.run_in_executor(None, int)  # a wake-up by an event: the block that follows is located
    time.sleep(0.4)  # the application blocks its loop once
    await asyncio.sleep(0.1)
    if monitor is not None:
        last = monitor.last_stall
        seen = {"probes": list(monitor.probes), "stalls": monitor.stalls, "sent": monitor.sent,
                "location": last.location if last else None}
        with open(os.environ["APP_REPORT"], "w") as report:
            json.dump(seen, report)
    print("results", sum(results), len(results))
    print("done")
    return 3

def new_loop():
    if LOOP == "uvloop":
        import uvloop
        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    prepare(loop)
    return loop

if sys.version_info >= (3, 11):
    with asyncio.Runner(loop_factory=new_loop) as runner:
        code = runner.run(main())
else:
    loop = new_loop()
    asyncio.set_event_loop(loop)
    try:
        code = loop.run_until_complete(main())
    finally:
        for task in asyncio.all_tasks(loop):
            task.cancel()
        loop.run_until_complete(asyncio.gather(*asyncio.all_tasks(loop), return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
        asyncio.set_event_loop(None)
        loop.close()
sys.exit(code)
"""


@dataclass(frozen=True)
class Simulation:
    """A platform or Python that differs: code run first in the application's process (before
    anything imports loopstat), and the body of ``prepare(loop)``, run on each loop it creates."""

    first: str = ""
    prepare: str = "pass"

    def program(self, loop: str) -> str:
        prepare = "def prepare(loop):\n" + textwrap.indent(textwrap.dedent(self.prepare).strip(), "    ")
        return "\n".join((textwrap.dedent(self.first), f"LOOP = {loop!r}", prepare, APP))


@dataclass
class Run:
    """One run of the application."""

    stdout: str
    stderr: str
    returncode: int
    #: What the monitored application saw of its monitor (``APP`` writes it); empty when not monitored.
    report: Dict[str, Any] = field(default_factory=dict)


def run_app(tmp_path: Path, loop: str, simulation: Simulation, port: Optional[int] = None, **install: Any) -> Run:
    """Run the application once as its own process, monitored if ``port`` is given."""
    program = tmp_path / "app.py"
    program.write_text(simulation.program(loop))
    report = tmp_path / "report.json"
    report.unlink(missing_ok=True)
    env = {name: value for name, value in os.environ.items() if not name.startswith(("LOOPSTAT_", "DD_", "STATSD_"))}
    if port is not None:
        env.update(APP_PORT=str(port), APP_INSTALL=json.dumps(install), APP_REPORT=str(report))
    done = subprocess.run(
        [sys.executable, str(program)], env=env, capture_output=True, text=True, timeout=RUN_SECONDS, cwd=tmp_path
    )
    seen = json.loads(report.read_text()) if report.exists() else {}
    return Run(done.stdout, done.stderr, done.returncode, seen)


def run_both(tmp_path: Path, loop: str, simulation: Simulation, receiver: Receiver, **install: Any) -> Run:
    """Run the application without loopstat and with it; hold the monitored run to the plain one and return it."""
    # Side by side, each in a folder of its own: the runs mostly wait, and neither sees the other.
    (tmp_path / "plain").mkdir()
    (tmp_path / "monitored").mkdir()
    with ThreadPoolExecutor(2) as pool:
        running = pool.submit(run_app, tmp_path / "plain", loop, simulation)
        monitored = run_app(tmp_path / "monitored", loop, simulation, receiver.port, interval=INTERVAL, **install)
        plain = running.result()
    assert plain.returncode == 3, f"the application itself fails under this simulation:\n{plain.stderr}"
    assert plain.stderr == ""
    assert (monitored.stdout, monitored.returncode) == (plain.stdout, plain.returncode), monitored.stderr
    assert "Traceback" not in monitored.stderr, monitored.stderr
    assert monitored.report, f"the monitored application did not report:\n{monitored.stderr}"
    # Every line the socket took before the report arrives (loopback), however slow the receiver's thread.
    receiver.settle(lambda lines: len(lines) >= monitored.report["sent"], timeout=10)
    return monitored


def samples_of(receiver: Receiver) -> List[List[Line]]:
    """The samples the receiver got, each from its lag gauge to the next; every one holds its tasks gauge.

    A sample is sent as a whole (a failure of the whole sample would print a
    traceback, which ``run_both`` rules out), lag first; so a probe's failure that
    cost a sample's lag or tasks shows here as a sample without them.
    """
    samples: List[List[Line]] = []
    for line in receiver.snapshot():
        if line.name == "loopstat.lag" and line.type == "g":
            samples.append([])
        if samples:
            samples[-1].append(line)
        else:
            assert line.name in ("loopstat.stalls", "loopstat.stall"), f"a line before the first sample: {line}"
    assert len(samples) >= MIN_SAMPLES, f"only {len(samples)} samples arrived"
    for sample in samples:
        names = [line.name for line in sample if line.type == "g"]
        assert names.count("loopstat.tasks") == 1, f"a sample without exactly one tasks gauge: {sample}"
    return samples


def names_in(samples: List[List[Line]]) -> List[str]:
    """Every metric name the samples hold, each once, in order."""
    return list(dict.fromkeys(line.name for sample in samples for line in sample))


def warnings_of(run: Run) -> List[str]:
    """The lines loopstat printed (its warnings: the application configured no logging, so Python prints them)."""
    return [line for line in run.stderr.splitlines() if line.startswith("loopstat")]


def about(warnings: List[str], probe: str) -> List[str]:
    return [line for line in warnings if f"the {probe} probe" in line]


# A platform without a per-thread CPU clock: the call fails as CPython's does when clock_gettime() does.
NO_THREAD_CLOCK = Simulation(
    first="""
    import errno, time
    def thread_time():
        raise OSError(errno.EINVAL, "Invalid argument")
    time.thread_time = thread_time
    """
)


@pytest.mark.parametrize("loop", LOOP_KINDS)
def test_no_thread_cpu_clock_loses_only_what_needs_it(tmp_path: Path, receiver: Receiver, loop: str) -> None:
    run = run_both(tmp_path, loop, NO_THREAD_CLOCK, receiver)
    names = names_in(samples_of(receiver))
    # uvloop's utilization is the thread's CPU time (and blocked time) over wall time; asyncio's, its selector's.
    lost = ["cpu"] if loop == "asyncio" else ["utilization", "cpu"]
    kept = (
        ["lag", "tasks", "utilization", "iteration", "stalls", "executor"]
        if loop == "asyncio"
        else ["lag", "tasks", "stalls", "executor", "blocking"]
    )
    assert run.report["probes"] == kept
    for probe in lost:
        assert f"loopstat.{probe}" not in names
        (warning,) = about(warnings_of(run), probe)
        assert "could not start (OSError: [Errno 22] Invalid argument)" in warning
        assert f"loopstat.{probe} is not sent" in warning
    if loop == "asyncio":
        assert "loopstat.utilization" in names
    # The block of the application is still a stall (a loaded machine may add one of its own).
    assert run.report["stalls"] >= 1


# A default executor that is a ThreadPoolExecutor by class only, without its private fields.
OWN_POOL = Simulation(
    first='''
    import queue, threading
    from concurrent.futures import Future, ThreadPoolExecutor

    class OwnPool(ThreadPoolExecutor):
        """A pool of its own: none of ThreadPoolExecutor's private fields."""

        def __init__(self):
            self._jobs = queue.SimpleQueue()
            self._workers = [threading.Thread(target=self._work, daemon=True) for _ in range(2)]
            self._down = False
            for worker in self._workers:
                worker.start()

        def _work(self):
            while True:
                job = self._jobs.get()
                if job is None:
                    return
                future, fn, args = job
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn(*args))
                    except BaseException as exc:
                        future.set_exception(exc)

        def submit(self, fn, *args):
            future = Future()
            self._jobs.put((future, fn, args))
            return future

        def shutdown(self, wait=True, **kwargs):
            if not self._down:
                self._down = True
                for _ in self._workers:
                    self._jobs.put(None)
            if wait:
                for worker in self._workers:
                    worker.join()
    ''',
    prepare="loop.set_default_executor(OwnPool())",
)


@pytest.mark.parametrize("loop", LOOP_KINDS)
def test_an_executor_without_private_fields_loses_the_executor_gauges_only(
    tmp_path: Path, receiver: Receiver, loop: str
) -> None:
    run = run_both(tmp_path, loop, OWN_POOL, receiver)
    names = names_in(samples_of(receiver))
    assert not [name for name in names if name.startswith("loopstat.executor")]
    assert {"loopstat.utilization", "loopstat.cpu"} <= set(names)
    assert "executor" not in run.report["probes"]
    (warning,) = about(warnings_of(run), "executor")
    assert "failed 3 samples in a row (AttributeError: 'OwnPool' object has no attribute '_work_queue')" in warning
    assert "loopstat.executor.queue and loopstat.executor.threads are no longer sent" in warning


# Other threads' frames unreadable: sys._current_frames() refuses, as a later Python or another implementation may;
# so does faulthandler.dump_traceback(), which reads them on CPython 3.11.
NO_CURRENT_FRAMES = Simulation(
    first="""
    import faulthandler, sys
    def _current_frames(*args, **kwargs):
        raise RuntimeError("other threads' frames are not available")
    sys._current_frames = _current_frames
    faulthandler.dump_traceback = _current_frames
    """
)
# What reads other threads' stacks on this Python.
READER = "faulthandler.dump_traceback()" if stack_dump.DUMPED else "sys._current_frames()"


@pytest.mark.parametrize("loop", LOOP_KINDS)
def test_unreadable_thread_frames_leave_stalls_unlocated_and_the_profile_out(
    tmp_path: Path, receiver: Receiver, loop: str
) -> None:
    run = run_both(tmp_path, loop, NO_CURRENT_FRAMES, receiver, profile=True)
    names = names_in(samples_of(receiver))
    assert "profile" not in run.report["probes"]
    assert "loopstat.busy" not in names
    (warning,) = about(warnings_of(run), "profile")
    assert f"could not start (StacksUnreadable: {READER} failed: RuntimeError:" in warning
    # The block of the application is still a stall, counted, timed and sent; only its location is missing.
    assert run.report["stalls"] >= 1
    assert run.report["location"] is None
    assert any(line.value >= 300 for line in receiver.snapshot() if line.name == "loopstat.stall")
    (unlocated,) = [line for line in warnings_of(run) if "without their location" in line]
    assert f"{READER} failed: RuntimeError: other threads' frames are not available" in unlocated


# Tasks whose ``_log_destroy_pending`` cannot be set from outside asyncio, as on a later Python whose
# asyncio keeps it to itself (asyncio's and uvloop's own uses still work: the application must run as before).
STRICT_TASKS = Simulation(
    first="""
    import asyncio, sys
    flag = asyncio.Task.__dict__["_log_destroy_pending"]

    class StrictTask(asyncio.Task):
        @property
        def _log_destroy_pending(self):
            return flag.__get__(self)

        @_log_destroy_pending.setter
        def _log_destroy_pending(self, value):
            if sys._getframe(1).f_globals.get("__name__", "").startswith("loopstat"):
                raise AttributeError("'StrictTask' object attribute '_log_destroy_pending' is read-only")
            flag.__set__(self, value)
    """,
    prepare="loop.set_task_factory(lambda loop, coro, **kw: StrictTask(coro, loop=loop, **kw))",
)


@pytest.mark.parametrize("loop", LOOP_KINDS)
def test_a_task_without_log_destroy_pending_costs_nothing(tmp_path: Path, receiver: Receiver, loop: str) -> None:
    run = run_both(tmp_path, loop, STRICT_TASKS, receiver)
    samples_of(receiver)
    assert {"lag", "tasks", "stalls", "executor"} <= set(run.report["probes"])
    assert [line for line in warnings_of(run) if "probe" in line] == []


# No ``gc.callbacks``: a Python without the hook (another implementation, or a later change).
NO_GC_CALLBACKS = Simulation(
    first="""
    import gc
    del gc.callbacks
    """
)


@pytest.mark.parametrize("loop", LOOP_KINDS)
def test_no_gc_callbacks_loses_the_gc_metrics_only(tmp_path: Path, receiver: Receiver, loop: str) -> None:
    run = run_both(tmp_path, loop, NO_GC_CALLBACKS, receiver, gc=True, profile=True)
    names = names_in(samples_of(receiver))
    assert not [name for name in names if name.startswith("loopstat.gc")]
    # The probes after it in the catalogue's order still start.
    assert {"executor", "profile"} <= set(run.report["probes"])
    assert "gc" not in run.report["probes"]
    (warning,) = about(warnings_of(run), "gc")
    assert "could not start (AttributeError:" in warning
    assert "loopstat.gc.pause and loopstat.gc.collections are not sent" in warning


# In the test process: the probes' guard, the public list of probes, and free-threaded builds.


def probe_warnings(caplog: pytest.LogCaptureFixture, probe: str) -> List[str]:
    """The warnings the monitor logged about one probe."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and f"the {probe} probe" in r.getMessage()
    ]


async def holds_within(condition: Callable[[], bool], timeout: float) -> bool:
    """Wait on the loop until ``condition()`` holds (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.005)
    return True


async def until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Wait on the loop until ``condition()`` holds; fail naming ``what`` after ``timeout`` seconds."""
    assert await holds_within(condition, timeout), f"timed out waiting for {what}"


async def test_probes_tells_which_probes_run_and_is_empty_after_stop(receiver: Receiver) -> None:
    uvloop_loop = not isinstance(asyncio.get_running_loop(), asyncio.BaseEventLoop)
    async with loopstat.install("127.0.0.1", receiver.port, interval=0.01, gc=True) as monitor:
        await receiver.wait_count("loopstat.tasks", "g", 2)
        # The longest turn only where the loop's selector is timed (not uvloop's).
        turns = () if uvloop_loop else ("iteration",)
        expected = ("lag", "tasks", "utilization", *turns, "cpu", "stalls", "executor", "gc")
        assert monitor.probes == expected + (("blocking",) if uvloop_loop else ())
    assert monitor.probes == ()


async def test_a_read_that_fails_twice_in_a_row_is_retried_without_a_warning(
    receiver: Receiver, loopstat_log: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_load = executor_probe.load
    calls = 0

    def load_failing_twice(loop: asyncio.AbstractEventLoop) -> Optional[Tuple[int, int]]:
        nonlocal calls
        calls += 1
        if calls <= 2:
            raise OSError("passing trouble")
        return real_load(loop)

    monkeypatch.setattr(executor_probe, "load", load_failing_twice)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, int)  # the loop has a default executor: the probe reads it
    async with loopstat.install("127.0.0.1", receiver.port, interval=0.01) as monitor:
        await receiver.wait_count("loopstat.executor.threads", "g", 3)
        assert "executor" in monitor.probes
    # The two samples in which it failed, the first two, still sent everything else (then comes the third's tasks).
    lines = [line.name for line in receiver.snapshot()]
    assert lines[: lines.index("loopstat.executor.queue")].count("loopstat.tasks") == 2 + 1
    assert probe_warnings(loopstat_log, "executor") == []


async def test_a_read_that_keeps_failing_closes_its_probe_with_one_warning_and_the_rest_goes_on(
    receiver: Receiver, loopstat_log: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = 0
    closed = 0

    def broken(self: executor_probe.Executor, lines: List[Any]) -> None:
        nonlocal reads
        reads += 1
        lines.append(("executor.queue", "g", 1))  # half a read: must not be sent
        raise KeyError("gone")

    def close(self: executor_probe.Executor) -> None:
        nonlocal closed
        closed += 1

    monkeypatch.setattr(executor_probe.Executor, "read", broken)
    monkeypatch.setattr(executor_probe.Executor, "close", close)
    async with loopstat.install("127.0.0.1", receiver.port, interval=0.01) as monitor:
        await until(lambda: "executor" not in monitor.probes, "the executor probe to be closed")
        tasks_then = len(receiver.values("loopstat.tasks", "g"))
        await receiver.wait_count("loopstat.tasks", "g", tasks_then + 5)
        assert (reads, closed) == (READ_FAILURES, 1)
        assert "cpu" in monitor.probes
    assert receiver.values("loopstat.executor.queue", "g") == []
    (warning,) = probe_warnings(loopstat_log, "executor")
    assert warning == (
        "loopstat: the executor probe failed 3 samples in a row (KeyError: 'gone') and is closed: "
        "loopstat.executor.queue and loopstat.executor.threads are no longer sent; the other metrics go on"
    )


async def test_a_lost_probe_leaves_its_last_good_reading_on_the_monitor_and_the_others_keep_updating(
    receiver: Receiver, loopstat_log: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_read = utilization_probe.Utilization.read
    good: List[Optional[float]] = []

    def read_then_break(self: utilization_probe.Utilization, lines: List[Any]) -> Any:
        reading = real_read(self, lines)
        if len(good) < 3:
            good.append(reading["utilization"])
            return reading
        raise KeyError("gone")  # after a full reading: a failed read's values must not be kept

    monkeypatch.setattr(utilization_probe.Utilization, "read", read_then_break)
    async with loopstat.install("127.0.0.1", receiver.port, interval=0.01) as monitor:
        await until(lambda: len(good) == 3, "three good utilization readings")
        await until(lambda: "utilization" not in monitor.probes, "the utilization probe to be closed")
        assert monitor.utilization == good[-1]
        extra = [asyncio.ensure_future(asyncio.sleep(30)) for _ in range(4)]
        try:
            await until(lambda: monitor.tasks == 1 + len(extra), "the tasks probe to keep updating the monitor")
        finally:
            for task in extra:
                task.cancel()
        assert monitor.utilization == good[-1]
    assert len(probe_warnings(loopstat_log, "utilization")) == 1


async def test_a_probe_that_cannot_start_is_left_out_and_the_later_ones_start(
    receiver: Receiver, loopstat_log: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(watched: object) -> None:
        raise RuntimeError("cannot release un-acquired lock")

    inside.attach_instead(monkeypatch, "stalls", refuse)
    async with loopstat.install("127.0.0.1", receiver.port, interval=0.01, gc=True, prefix="app") as monitor:
        await receiver.wait_count("app.tasks", "g", 3)
        assert "stalls" not in monitor.probes
        assert {"executor", "gc"} <= set(monitor.probes)
    (warning,) = probe_warnings(loopstat_log, "stalls")
    assert warning == (
        "loopstat: the stalls probe could not start (RuntimeError: cannot release un-acquired lock): "
        "app.stalls and app.stall are not sent; the other metrics are"
    )


async def test_a_probe_whose_close_raises_does_not_stop_the_others_closing(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    def close(self: executor_probe.Executor) -> None:
        raise RuntimeError("close broke")

    monkeypatch.setattr(executor_probe.Executor, "close", close)
    async with loopstat.install("127.0.0.1", receiver.port, interval=0.01, gc=True) as monitor:
        await receiver.wait_count("loopstat.tasks", "g", 2)
    assert gc_probe._on_gc not in gc.callbacks  # closed after the executor's failed
    assert not monitor.running


async def test_no_thread_time_at_all_leaves_cpu_out_and_install_works(
    receiver: Receiver, loopstat_log: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(time, "thread_time")
    async with loopstat.install("127.0.0.1", receiver.port, interval=0.01) as monitor:
        await receiver.wait_count("loopstat.tasks", "g", 3)
        assert "cpu" not in monitor.probes
    (warning,) = probe_warnings(loopstat_log, "cpu")
    assert "could not start (AttributeError:" in warning


def test_a_thread_clock_that_fails_once_is_not_read_again() -> None:
    reads = 0

    def cpu() -> float:
        nonlocal reads
        reads += 1
        if reads == 2:
            raise OSError(22, "Invalid argument")
        return float(reads)

    walls = iter(range(10))
    clock = ThreadClock(wall=lambda: float(next(walls)), cpu=cpu, thread=lambda: 1)
    clock.check()
    assert clock.share() is None  # the second read fails
    assert (clock.share(), clock.spent, clock.wall) == (None, 0.0, 1.0)
    assert reads == 2
    with pytest.raises(OSError, match="Invalid argument"):
        clock.check()


@pytest.fixture
def free_threaded(monkeypatch: pytest.MonkeyPatch) -> List[int]:
    """Simulate a free-threaded build without the GIL; count loopstat's reads of other threads' frames."""
    reads: List[int] = []
    real = sys._current_frames

    def current_frames() -> Dict[int, Any]:
        reads.append(threading.get_ident())
        return real()

    monkeypatch.setattr(frames, "free_threaded", lambda: True)
    monkeypatch.setattr(frames, "_said", False)
    monkeypatch.setattr(sys, "_current_frames", current_frames)
    dump = faulthandler.dump_traceback

    def dump_traceback(*args: Any, **kwargs: Any) -> None:
        reads.append(threading.get_ident())
        dump(*args, **kwargs)

    monkeypatch.setattr(faulthandler, "dump_traceback", dump_traceback)
    return reads


async def test_free_threaded_stalls_are_counted_and_timed_without_reading_frames(
    receiver: Receiver, loopstat_log: pytest.LogCaptureFixture, free_threaded: List[int]
) -> None:
    # Samples far apart: a block that starts at a wake-up the sampler shares is measured but never located.
    async with loopstat.install("127.0.0.1", receiver.port, interval=0.2, stall_threshold=0.05) as monitor:
        await receiver.wait_count("loopstat.tasks", "g", 2)
        before = monitor.stalls
        for _ in range(3):  # a loaded machine may hide one block from the watch: the next is seen
            time.sleep(0.3)  # six thresholds: the watchdog looks while it lasts, where it may
            if await holds_within(lambda: monitor.stalls > before, 5):
                break
        assert monitor.stalls > before, "no block was reported as a stall"
        stall = monitor.last_stall
        assert stall is not None
        assert stall.duration > 50
        assert (stall.location, stall.stack) == (None, "")
        await receiver.wait_count("loopstat.stall", "ms", 1)
        assert "profile" not in monitor.probes
    assert free_threaded == []
    infos = [r for r in loopstat_log.records if "without their location" in r.getMessage()]
    assert [(r.levelno, r.getMessage()) for r in infos] == [
        (
            logging.INFO,
            "loopstat: stalls are counted and timed without their location (free-threaded Python without the GIL, "
            "where reading another thread's stack may crash the process)",
        )
    ]


async def test_free_threaded_refuses_profile_naming_the_option(free_threaded: List[int]) -> None:
    with pytest.raises(ValueError, match=r"^profile: not available on a free-threaded Python .* expected False$"):
        loopstat.install("127.0.0.1", 8125, profile=True)
    monitor = loopstat.install("127.0.0.1", 8125)  # no monitor was left behind by the refusal
    assert monitor.settings.profile is False
    await monitor.stop()


async def test_unreadable_frames_are_said_once_on_the_loops_thread_and_threading_is_unchanged(
    receiver: Receiver, loopstat_log: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watchdog finds out that stacks cannot be read; the loop's thread says so (a log record made
    on the watchdog's own thread would register it with threading, as a dummy Thread)."""

    def refuse(*args: Any, **kwargs: Any) -> Dict[int, Any]:
        raise RuntimeError("other threads' frames are not available")

    monkeypatch.setattr(sys, "_current_frames", refuse)
    monkeypatch.setattr(faulthandler, "dump_traceback", refuse)
    monkeypatch.setattr(frames, "_failed", None)
    monkeypatch.setattr(frames, "_said", False)
    before, count = threading.enumerate(), threading.active_count()

    def said() -> List[logging.LogRecord]:
        return [r for r in loopstat_log.records if "without their location" in r.getMessage()]

    async with loopstat.install("127.0.0.1", receiver.port, interval=0.05, stall_threshold=0.05) as monitor:
        await receiver.wait_count("loopstat.tasks", "g", 2)
        for _ in range(5):  # a loaded machine may hide one block from the watchdog: the next is seen
            time.sleep(0.3)
            if await holds_within(lambda: bool(said()), 2):
                break
        assert (threading.enumerate(), threading.active_count()) == (before, count)
        assert await holds_within(lambda: monitor.stalls >= 1, 5), "the block is still a stall, unlocated"
    (record,) = said()
    assert record.levelno == logging.WARNING
    assert record.thread == threading.get_ident()  # the loop's thread
    assert f"{READER} failed: RuntimeError: other threads' frames are not available" in record.getMessage()


async def test_loopstat_run_on_free_threaded_python_drops_profile_with_one_warning_and_monitors_the_rest(
    free_threaded: List[int],
    receiver: Receiver,
    loopstat_log: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """install() refuses ``profile=True`` there; loopstat-run, which the application never sees, goes on without it."""
    for name, value in {"_read": False, "_arguments": None, "_resolved": False, "_settings": None}.items():
        monkeypatch.setattr(bootstrap, name, value, raising=False)  # as in a new process
    for variable, text in {"LOOPSTAT_PROFILE": "1", "LOOPSTAT_INTERVAL": "0.05", "DD_DOGSTATSD_URL": ""}.items():
        monkeypatch.setenv(variable, text)
    monkeypatch.setenv("STATSD_HOST", "127.0.0.1")
    monkeypatch.setenv("STATSD_PORT", str(receiver.port))
    loop = asyncio.get_running_loop()
    bootstrap.on_run(loop)
    monitor = inside.installed_monitor(loop)
    assert monitor is not None, "loopstat-run monitors nothing"
    async with monitor:
        await receiver.wait_count("loopstat.tasks", "g", 2)
        assert monitor.settings.profile is False
        assert {"lag", "tasks", "stalls"} <= set(monitor.probes)
    assert bootstrap.settings() is bootstrap.settings()  # resolved once: said once
    said = [r for r in loopstat_log.records if "profile" in r.getMessage()]
    assert [(r.levelno, r.getMessage()) for r in said] == [
        (
            logging.WARNING,
            "loopstat-run: profile is off: free-threaded Python without the GIL, where reading another thread's "
            "stack may crash the process; the other probes run",
        )
    ]


def test_free_threaded_is_read_from_the_running_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "_is_gil_enabled", lambda: False, raising=False)
    assert frames.free_threaded()
    monkeypatch.setattr(sys, "_is_gil_enabled", lambda: True)
    assert not frames.free_threaded()
    # Before 3.13 there is no sys._is_gil_enabled: the build's configuration tells.
    monkeypatch.delattr(sys, "_is_gil_enabled")
    monkeypatch.setattr(sysconfig, "get_config_var", lambda name: 1 if name == "Py_GIL_DISABLED" else None)
    assert frames.free_threaded()


async def test_a_stall_watch_that_cannot_start_leaves_nothing_on_the_loop(
    receiver: Receiver, loopstat_log: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    watches: List[Tuple[StallWatch, float]] = []

    def refuse(probe: StallWatch) -> None:
        watches.append((probe, probe.beat))
        raise RuntimeError("cannot release un-acquired lock")  # as under gevent's patched threading

    monkeypatch.setattr(inside.the_watchdog(), "watch", refuse)
    async with loopstat.install("127.0.0.1", receiver.port, interval=0.01, stall_threshold=0.02) as monitor:
        await receiver.wait_count("loopstat.tasks", "g", 10)
        ((watch, beat),) = watches
        assert "stalls" not in monitor.probes
        # No heartbeat of it runs on the loop (one every 2 to 5 ms would have moved it).
        assert watch.beat == beat
    (warning,) = probe_warnings(loopstat_log, "stalls")
    assert "could not start (RuntimeError: cannot release un-acquired lock)" in warning


def test_the_warning_names_the_metrics_from_the_catalogue_as_they_go_on_the_wire() -> None:
    def named(probe: str, **options: Any) -> str:
        return inside.stopped_metrics(probe, resolve(environ={}, **options))

    assert named("cpu") == "loopstat.cpu is"
    assert named("lag", prefix="") == "lag is"
    assert named("lag", prefix="app", distributions=True) == "app.lag and app.lag.distribution are"
    assert named("executor") == "loopstat.executor.queue and loopstat.executor.threads are"
