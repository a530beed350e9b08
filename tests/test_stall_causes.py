"""The cause of real stalls, the task that waited, and stacks without loopstat's frames, on asyncio and uvloop.

Each stall is made by its cause for real: a CPU spin, ``time.sleep``, a
collection of a large cyclic heap, a slow import, a second thread holding the
GIL, a real cgroup CPU quota (root), a core shared with busy processes. Where
a cause needs the machine's cooperation (the thread given a CPU, the other
thread running), the block measures it itself and is repeated until it held.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Tuple

import pytest

import loopstat
from bench.causes import cyclic_heap, favoured  # one copy each, for the bench and the tests
from loopstat import _cgroup
from loopstat.probes import explain, signals
from loopstat.probes.stall_capture import Stall
from tests import inside
from tests.machine import runqueue_seconds
from tests.receiver import Receiver
from tests.test_throttled import needs_cpu_quota

THRESHOLD = 0.1
BLOCK = 0.3
# The reason of a stall the watchdog never looked at: its signals were never read.
UNSEEN = "it ended before the watchdog could look"
LOOPSTAT_DIR = os.path.join(os.path.dirname(os.path.abspath(loopstat.__file__)), "")


async def wait_for_stalls(monitor: loopstat.Monitor, count: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while monitor.stalls < count:
        assert time.monotonic() < deadline, f"{monitor.stalls} stalls seen, expected {count}"
        await asyncio.sleep(0.01)


def watched(stall: Stall) -> bool:
    """The watchdog looked at the stall while it lasted: its cause was read from what it saw."""
    return stall.reason != UNSEEN


async def stall_of(
    monitor: loopstat.Monitor, block: Callable[[], bool], tries: int = 5, seen: Callable[[Stall], bool] = watched
) -> Stall:
    """The stall ``block`` makes on the loop, once the conditions its cause needs held (``block`` says so)."""
    for _ in range(tries):
        before = monitor.stalls
        await asyncio.sleep(0.05)  # a fresh turn: the block is a stall of its own
        looks = inside.watchdog_looks()
        held = block()
        # A loaded machine can keep the watchdog thread off every core for the whole block: it never looked,
        # so nothing could see the stall. Had it looked and missed it, that is loopstat's fault: not retried.
        held = held and inside.watchdog_looks() > looks
        if not held:  # its condition missed: no stall to wait for (let one it made anyway be counted first)
            await asyncio.sleep(0.3)
            continue
        await wait_for_stalls(monitor, before + 1)
        await asyncio.sleep(0.05)
        stall = monitor.last_stall
        # A cause is read from what the watchdog saw; a loaded machine can keep it from looking at all.
        if held and monitor.stalls == before + 1 and stall is not None and seen(stall):
            # Whatever the cause, loopstat's own frames (stand-ins, selector clock, GC hooks) are never shown.
            assert LOOPSTAT_DIR not in stall.stack, stall.stack
            assert LOOPSTAT_DIR not in (stall.location or ""), stall.location
            return stall
    pytest.skip(f"the machine never let the block make its cause in {tries} tries")


def spin(seconds: float) -> bool:
    """Run Python on the CPU for ``seconds`` of wall time; True if the thread had a CPU most of it."""
    with favoured():
        started, used = time.perf_counter(), time.thread_time()
        while time.perf_counter() < started + seconds:
            pass
        return time.thread_time() - used >= 0.7 * seconds


async def test_a_cpu_spin_is_cpu(receiver: Receiver) -> None:
    async with loopstat.install("127.0.0.1", receiver.port, stall_threshold=THRESHOLD) as monitor:
        stall = await stall_of(monitor, lambda: spin(BLOCK))
    assert stall.cause == "cpu", stall


async def test_a_long_c_call_holding_the_gil_is_cpu(receiver: Receiver) -> None:
    def long_sum() -> bool:
        with favoured():
            started = time.perf_counter()
            sum(range(30_000_000))
            return time.perf_counter() - started > 2 * THRESHOLD

    async with loopstat.install("127.0.0.1", receiver.port, stall_threshold=THRESHOLD) as monitor:
        stall = await stall_of(monitor, long_sum)
    assert stall.cause == "cpu", stall


@pytest.mark.parametrize("blocking_calls", [None, True])
async def test_time_sleep_is_a_blocking_call_watched_or_not(receiver: Receiver, blocking_calls: bool) -> None:
    def sleep() -> bool:
        time.sleep(BLOCK)
        return True

    options: Any = {"blocking_calls": blocking_calls}
    async with loopstat.install("127.0.0.1", receiver.port, stall_threshold=THRESHOLD, **options) as monitor:
        stall = await stall_of(monitor, sleep)
    assert stall.cause == "blocking_call", stall


@pytest.fixture(scope="module")
def heap_size() -> int:
    """Objects whose collection takes about three times the stall threshold here (measured, not guessed).

    A full collection takes time in step with the heap: timed on a small one (the
    quickest of three, the machine with as little of its load as can be), scaled.
    The test checks its own collection was long enough.
    """
    objects, took = 200_000, []
    for _ in range(3):
        heap = cyclic_heap(objects)
        started = time.perf_counter()
        gc.collect()
        took.append(time.perf_counter() - started)
        del heap
        gc.collect()
    return min(20_000_000, int(objects * 3 * THRESHOLD / max(min(took), 0.0001)))


async def test_a_full_collection_of_a_large_cyclic_heap_is_gc(receiver: Receiver, heap_size: int) -> None:
    gc.disable()  # the heap is collected once, in the stall, not while it is built
    try:
        heap: List[Any] = cyclic_heap(heap_size)

        def collect() -> bool:
            nonlocal heap
            heap = []  # now garbage, in cycles
            started = time.perf_counter()
            gc.collect()
            # Sized on a busier moment, the collection may now be too short to be a stall at all.
            return time.perf_counter() - started > 1.5 * THRESHOLD

        async with loopstat.install("127.0.0.1", receiver.port, stall_threshold=THRESHOLD, gc=True) as monitor:
            stall = await stall_of(monitor, collect, tries=1)
    finally:
        gc.enable()
    assert stall.cause == "gc", stall


async def test_a_slow_import_is_import_and_names_its_module(receiver: Receiver, tmp_path: Path) -> None:
    # Never a name imported before in this process (an earlier test's module would come from sys.modules: no block).
    names = iter(f"slow_module_{uuid.uuid4().hex}" for _ in range(100))
    (tmp_path / "__init__.py").write_text("")
    sys.path.insert(0, str(tmp_path))

    def slow_import() -> bool:
        name = next(names)
        (tmp_path / f"{name}.py").write_text(f"import time\ntime.sleep({BLOCK})\n")
        __import__(name)
        return True

    try:
        async with loopstat.install("127.0.0.1", receiver.port, stall_threshold=THRESHOLD) as monitor:
            stall = await stall_of(monitor, slow_import)
    finally:
        sys.path.remove(str(tmp_path))
    assert stall.cause == "import", stall
    assert str(tmp_path) in stall.reason


@pytest.fixture
def gil_holder() -> Iterator[Callable[[], float]]:
    """A second thread running Python all along; yields a reading of its CPU clock."""
    done = threading.Event()
    clock: List[int] = []
    ready = threading.Event()

    def run() -> None:
        clock.append(time.pthread_getcpuclockid(threading.get_ident()))
        ready.set()
        with favoured():
            while not done.is_set():
                pass

    thread = threading.Thread(target=run)
    thread.start()
    ready.wait(5)
    try:
        yield lambda: time.clock_gettime(clock[0])
    finally:
        done.set()
        thread.join()


async def test_a_loop_thread_waiting_for_the_gil_held_by_another_thread_is_gil(
    receiver: Receiver, gil_holder: Callable[[], float]
) -> None:
    def release_often() -> bool:
        # Each os.stat() gives the GIL up; taking it back waits for the other thread's switch interval.
        started, used, others, waited = time.perf_counter(), time.thread_time(), gil_holder(), runqueue_seconds()
        while time.perf_counter() < started + BLOCK:
            os.stat(".")
        wall = time.perf_counter() - started
        held_off = time.thread_time() - used < 0.2 * wall and gil_holder() - others > 0.7 * wall
        # A loaded machine can keep the loop's thread waiting for a core longer than for the GIL (then: scheduler).
        return held_off and runqueue_seconds() - waited < 0.5 * (gil_holder() - others)

    def looked_in_time(stall: Stall) -> bool:
        # The watchdog waits for the GIL too: on a loaded machine the other thread can keep it out until the
        # stall ends, and a look that late cannot tell whose the GIL was (it says the loop's, in C code).
        return watched(stall) and not stall.reason.startswith("its thread held the GIL")

    async with loopstat.install("127.0.0.1", receiver.port, stall_threshold=THRESHOLD) as monitor:
        stall = await stall_of(monitor, release_often, seen=looked_in_time)
    assert stall.cause == "gil", stall


async def test_the_task_that_waited_is_named_in_the_stall_and_its_log_line(
    receiver: Receiver, loopstat_log: pytest.LogCaptureFixture
) -> None:
    async def handle_request() -> None:
        time.sleep(BLOCK)
        await asyncio.sleep(0.5)  # still waiting when the stall is reported

    async def finished_at_once() -> None:
        time.sleep(BLOCK)

    def of(seen: List[Stall], function: str) -> Optional[Stall]:
        """The stall the watchdog saw in ``function``, if it looked while it lasted."""
        return next((s for s in seen if (s.location or "").endswith(f" in {function}")), None)

    # A loaded machine can keep the watchdog off the CPU for a whole block (the task is read at its look), and
    # add stalls of its own: then again (5 tries), each stall told by where it was seen.
    for _ in range(5):
        loopstat_log.clear()
        async with loopstat.install("127.0.0.1", receiver.port, stall_threshold=THRESHOLD) as monitor:
            await asyncio.sleep(0.05)
            seen = inside.recorded_stalls(monitor)
            task = asyncio.create_task(handle_request(), name="request-12")
            await wait_for_stalls(monitor, monitor.stalls + 1)
            await task
            counted = monitor.stalls
            await asyncio.create_task(finished_at_once())
            await wait_for_stalls(monitor, counted + 1)
            await asyncio.sleep(0.05)
        first, second = of(seen, "handle_request"), of(seen, "finished_at_once")
        if first is not None and second is not None:
            break
    assert first is not None, seen
    assert first.task is not None
    assert first.task.startswith("task 'request-12' ")
    assert first.task.endswith("handle_request")
    assert second is not None, seen
    assert second.task is not None
    assert second.task.startswith("coroutine ")
    assert second.task.endswith("finished_at_once"), "a task that ended is named by its coroutine"
    [line] = [r.getMessage() for r in loopstat_log.records if "request-12" in r.getMessage()]
    assert f"({first.task}): {first.reason}" in line
    stalls = [s for s in receiver.snapshot() if s.name == "loopstat.stalls"]
    assert ("cause", "blocking_call") in [tag for s in stalls for tag in s.tags]
    assert all(key != "task" for s in stalls for key, _ in s.tags), "the cause as a tag, never the task"
    assert not any("request-12" in str(s.tags) for s in receiver.snapshot())


async def test_a_stall_inside_a_stand_in_shows_no_loopstat_file(receiver: Receiver) -> None:
    def sleep() -> bool:
        time.sleep(BLOCK)
        return True

    async with loopstat.install("127.0.0.1", receiver.port, stall_threshold=THRESHOLD, blocking_calls=True) as monitor:
        stall = await stall_of(monitor, sleep)
    assert stall.location is not None
    assert stall.location.endswith("in sleep")
    assert LOOPSTAT_DIR not in stall.stack
    assert LOOPSTAT_DIR not in stall.location
    assert stall.stack.rstrip().endswith("time.sleep(BLOCK)"), "the application's call is the innermost line"


# --- causes that need a cgroup quota or a crowded core: in a process of their own ---------------------------------

# Each spin's cause, reason, and the share of its wall time the process's cgroup was throttled (None: no limit).
APP = r"""
import asyncio, json, os, sys, time
import loopstat
from loopstat import _cgroup

loop_name, spins, cpu_seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
if loop_name == "uvloop":
    import uvloop
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def main():
    causes = []
    throttling = _cgroup.throttling()  # in the group by now
    async with loopstat.install("127.0.0.1", 9, stall_threshold=0.1) as monitor:
        for _ in range(spins):
            await asyncio.sleep(0.1)
            seen = monitor.stalls
            throttled, started = throttling and throttling.seconds(), time.perf_counter()
            used = time.thread_time()
            while time.thread_time() - used < cpu_seconds:  # CPU time, however long the wall time
                pass
            wall = time.perf_counter() - started
            share = throttling and (throttling.seconds() - throttled) / wall
            while monitor.stalls == seen:
                await asyncio.sleep(0.01)
            causes.append([monitor.last_stall.cause, monitor.last_stall.reason, share])
    print(json.dumps(causes), flush=True)


sys.stdin.readline()  # placed by now
asyncio.run(main())
"""


@pytest.fixture(params=["asyncio", "uvloop"])
def loop_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


Spun = Tuple[str, str, Optional[float]]


def run_app(loop_name: str, place: Callable[[int], None], spins: int = 3, cpu_seconds: float = 0.1) -> List[Spun]:
    """Cause, reason and throttled share (None without a CPU limit) of each CPU spin of the application, once
    ``place`` has put it where they are made."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DD_", "STATSD_", "LOOPSTAT_"))}
    command = [sys.executable, "-c", APP, loop_name, str(spins), str(cpu_seconds)]
    with subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    ) as app:
        try:
            place(app.pid)
            output, errors = app.communicate("go\n", timeout=120)
        finally:
            if app.poll() is None:
                app.kill()
    assert app.returncode == 0, errors
    return [(cause, reason, share) for cause, reason, share in json.loads(output)]


@needs_cpu_quota
def test_a_loop_frozen_by_a_real_cgroup_cpu_quota_is_throttled(loop_name: str) -> None:
    # 10 ms per 100 ms: 50 ms of CPU takes about half a second.
    with _cgroup.cpu_quota_group(10_000, name="loopstat-test") as group:
        spun = run_app(loop_name, group.add, spins=5, cpu_seconds=0.05)
    # A host short of CPU can keep the thread from using its quota at all: then it waited on the scheduler rather
    # than the quota (seen at load average 9 on 2 cores). Spins the quota froze for most of their time must be named so.
    frozen = [(cause, reason) for cause, reason, share in spun if share is not None and share >= 0.5]
    if len(frozen) < 3:
        pytest.skip(f"the quota froze fewer than 3 of 5 spins for most of their time on this busy machine: {spun}")
    assert [cause for cause, _ in frozen] == ["throttled"] * len(frozen), spun


@pytest.mark.e2e  # crowds one core of the machine for a few seconds
@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs sched_setaffinity to share one core")
def test_a_loop_whose_core_is_crowded_by_other_processes_waited_on_the_scheduler(loop_name: str) -> None:
    core = min(os.sched_getaffinity(0))
    hog = f"import os\nos.sched_setaffinity(0, {{{core}}})\nwhile True: pass\n"
    hogs = [subprocess.Popen([sys.executable, "-c", hog]) for _ in range(3)]
    try:
        spun = run_app(loop_name, lambda pid: os.sched_setaffinity(pid, {core}), cpu_seconds=0.05)
    finally:
        for process in hogs:
            process.kill()
            process.wait()
    assert [cause for cause, _, _ in spun] == ["scheduler"] * 3, spun


# --- faults: the stall is reported all the same -------------------------------------------------------------------


def located(stall: Stall) -> bool:
    """The watchdog looked at the stall: its look shows as the location, whatever the reason says."""
    return stall.location is not None


def sleep_block() -> bool:
    time.sleep(BLOCK)
    return True


async def test_signals_that_cannot_be_read_leave_the_stall_reported_with_an_unknown_cause(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any) -> Any:
        raise RuntimeError("a later kernel's layout")

    monkeypatch.setattr(signals.Signals, "read", broken)
    async with loopstat.install("127.0.0.1", receiver.port, stall_threshold=THRESHOLD) as monitor:
        stall = await stall_of(monitor, sleep_block, seen=located)
    assert stall.cause == "unknown"
    assert stall.reason == "its signals could not be read", "the watchdog looked: not UNSEEN's reason"
    assert stall.location is not None
    assert stall.location.endswith("in sleep_block")
    [line] = [s for s in receiver.snapshot() if s.name == "loopstat.stalls"]
    assert ("cause", "unknown") in line.tags


async def test_an_explainer_that_cannot_start_leaves_the_stalls_counted(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any) -> Any:
        raise RuntimeError("no such clock")

    monkeypatch.setattr(explain.Explainer, "__init__", broken)
    async with loopstat.install("127.0.0.1", receiver.port, stall_threshold=THRESHOLD) as monitor:
        stall = await stall_of(monitor, sleep_block, seen=located)
    assert (stall.cause, stall.reason, stall.task) == ("unknown", "", None)


def test_without_a_per_thread_cpu_clock_the_thread_s_cpu_reads_as_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(time, "pthread_getcpuclockid")
    thread = signals.this_thread()
    assert thread.clock is None
    assert signals.Signals(lambda: None).read(thread).cpu is None


def test_every_gc_hook_goes_when_the_last_stall_watch_closes_and_none_comes_without_gc() -> None:
    async def watch(with_gc: bool) -> None:
        async with loopstat.install("127.0.0.1", 9, stall_threshold=THRESHOLD, gc=with_gc):
            await asyncio.sleep(0.05)  # the probes start with the sampler
            # A Python gc callback is where a Ctrl-C can land and be lost: only gc=True adds one.
            assert (signals._on_gc in gc.callbacks) is with_gc

    asyncio.run(watch(True))
    assert signals._on_gc not in gc.callbacks
    asyncio.run(watch(False))
    assert signals._on_gc not in gc.callbacks
