"""Reading another thread's stack: through frame objects, or on CPython 3.11 through a faulthandler dump.

On CPython 3.11 walking ``f_back`` of another thread's frame may crash the
process (a segfault when that thread pops frames meanwhile), so there stacks
are read from ``faulthandler.dump_traceback()`` written into a file of
loopstat's own. The tests that force the dump (``dumped``) run it on every
Python: faulthandler writes the same lines from 3.9 to 3.13 (where only the
cut of a stack deeper than 100 frames is left unmarked).
"""

from __future__ import annotations

import asyncio
import faulthandler
import json
import logging
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Tuple

import pytest

import loopstat
from loopstat.probes import frames, stack_dump
from tests.test_never_the_cause import holds_within
from tests.test_stalls import WHERE, located_stall
from tests.test_stalls_in_c import stall_of

ON_3_11 = sys.implementation.name == "cpython" and sys.version_info[:2] == (3, 11)

DUMP = """\
Thread 0x00007f0000000003 (most recent call first):
  <no Python frame>

Thread 0x00007f0000000002 (most recent call first):
  File "/app/worker.py", line 12 in wait
  File ???, line ??? in ???
  File "/usr/lib/python3.11/threading.py", line ??? in run

Current thread 0x00007f0000000001 (most recent call first):
  Garbage-collecting
  File "/app/caf\\xe9 \\u00fcber \\U0001f600.py", line 7 in na\\xefve
  File "/app/a", line 1 in b.py", line 3 in odd
  ...
...
"""


def test_a_dump_is_read_thread_by_thread_innermost_last_and_cut_where_faulthandler_stopped() -> None:
    assert stack_dump.parse_dump(DUMP) == {
        0x7F0000000003: ([], True),
        0x7F0000000002: (
            [("/usr/lib/python3.11/threading.py", 0, "run"), ("???", 0, "???"), ("/app/worker.py", 12, "wait")],
            True,
        ),
        0x7F0000000001: (
            [('/app/a", line 1 in b.py', 3, "odd"), ("/app/caf\xe9 \xfcber \U0001f600.py", 7, "na\xefve")],
            False,
        ),
    }


def test_only_the_threads_asked_for_are_read_from_a_dump() -> None:
    assert stack_dump.parse_dump(DUMP, {0x7F0000000002, 0x7F0000000009}) == {
        0x7F0000000002: stack_dump.parse_dump(DUMP)[0x7F0000000002]
    }
    assert stack_dump.parse_dump(DUMP.replace("in odd", "in odd\n  at odd"), {0x7F0000000002})  # another's, not read
    with pytest.raises(ValueError, match=r"^unexpected line: 'Thread 0x01:'"):
        stack_dump.parse_dump(DUMP + "\nThread 0x01:\n", {0x7F0000000002})  # threads are always told apart


@pytest.mark.parametrize(
    "text",
    [
        "",  # nothing written
        'Thread 0x1:\n  File "/app/a.py", line 1 in f\n',  # a header of another form
        "Thread 0x01 (most recent call first):\n  at f (/app/a.py:1)\n",  # a frame line of another form
        'Stack (most recent call first):\n  File "/app/a.py", line 1 in f\n',  # one thread, not all
    ],
    ids=["empty", "header", "frame", "one-thread"],
)
def test_a_dump_faulthandler_would_not_write_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"^(unexpected line|no thread in the dump)"):
        stack_dump.parse_dump(text)


def nested(depth: int, ready: threading.Event, go: threading.Event) -> None:
    if depth == 0:
        ready.set()
        go.wait(30)
        return
    nested(depth - 1, ready, go)


def waiting(target: Callable[..., None], *args: Any) -> Iterator[int]:
    """A thread running ``target(*args, ready, go)`` until the test ends; its id."""
    ready, go = threading.Event(), threading.Event()
    thread = threading.Thread(target=target, args=(*args, ready, go))
    thread.start()
    try:
        assert ready.wait(30)
        assert thread.ident is not None
        yield thread.ident
    finally:
        go.set()
        thread.join()


@pytest.fixture(params=[5, 300])
def waiting_thread(request: pytest.FixtureRequest) -> Iterator[Tuple[int, int]]:
    """A thread waiting ``depth`` calls deep; (its id, the depth)."""
    for ident in waiting(nested, request.param):
        yield ident, request.param


@pytest.fixture
def dumped(monkeypatch: pytest.MonkeyPatch) -> Iterator[List[stack_dump.DumpFile]]:
    """Stacks read through faulthandler's dump, as on CPython 3.11, from a state of their own; the files dumped into."""
    files: List[stack_dump.DumpFile] = []
    monkeypatch.setattr(stack_dump, "DUMPED", True)
    monkeypatch.setattr(stack_dump, "_dump_files", files)
    for name, value in {"_failed": None, "_said": False, "_untold": None}.items():
        monkeypatch.setattr(frames, name, value)
    yield files
    for _, fd, _ in files:
        os.close(fd)


@pytest.mark.parametrize("through", ["frames", "dump"])
def test_another_threads_stack_is_read_as_a_walk_of_its_frames_reads_it(
    waiting_thread: Tuple[int, int], through: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stack_dump, "DUMPED", through == "dump")
    ident, depth = waiting_thread
    (stack, whole) = frames.stacks_of([ident])[ident]
    walked, _ = frames.walk(sys._current_frames()[ident])
    names = [function for _, _, function in stack]
    if through == "dump" and depth > stack_dump.DUMP_DEPTH:  # faulthandler stops short: the innermost frames are kept
        if sys.version_info < (3, 13):  # 3.13 leaves the cut unmarked (no "  ..." line)
            assert not whole
        assert stack == walked[-stack_dump.DUMP_DEPTH :]
    else:
        assert whole
        assert stack == walked
        assert (names.count("nested"), names[-1]) == (depth + 1, "wait")


# Code whose file and function have names faulthandler escapes or that look like its own text.
ODD_FILE = '/app/caf\xe9 \u00fcber/\U0001f600 "quoted", line 1 in x.py'
ODD = compile(
    "def na\xefve_\u00fc(ready, go):\n    ready.set()\n    go.wait(30)\n",
    ODD_FILE,
    "exec",
)


def odd_names(ready: threading.Event, go: threading.Event) -> None:
    space: Dict[str, Any] = {}
    exec(ODD, space)
    space["na\xefve_\u00fc"](ready, go)


def test_names_faulthandler_escapes_are_read_back_as_they_are(dumped: List[stack_dump.DumpFile]) -> None:
    for ident in waiting(odd_names):
        (stack, whole) = frames.stacks_of([ident])[ident]
        walked, _ = frames.walk(sys._current_frames()[ident])
        assert whole
        assert stack == walked
        assert (ODD_FILE, 3, "na\xefve_\u00fc") in stack


def test_on_cpython_3_11_no_frame_object_of_another_thread_is_made(
    waiting_thread: Tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """There, walking such a frame while its thread runs on may crash the process."""
    reads: List[str] = []
    real_frames, real_dump = sys._current_frames, faulthandler.dump_traceback

    def current_frames() -> Any:
        reads.append("frames")
        return real_frames()

    def dump_traceback(*args: Any, **kwargs: Any) -> None:
        reads.append("dump")
        real_dump(*args, **kwargs)

    monkeypatch.setattr(sys, "_current_frames", current_frames)
    monkeypatch.setattr(faulthandler, "dump_traceback", dump_traceback)
    ident, _ = waiting_thread
    assert frames.stacks_of([ident])[ident][0]
    assert reads == (["dump"] if ON_3_11 else ["frames"])


async def test_stalls_are_located_through_the_dump_the_watchdog_takes_on_cpython_3_11(
    dumped: List[stack_dump.DumpFile], monkeypatch: pytest.MonkeyPatch
) -> None:
    dumps: List[float] = []
    real_dump = faulthandler.dump_traceback

    def dump_traceback(*args: Any, **kwargs: Any) -> None:
        dumps.append(time.monotonic())
        real_dump(*args, **kwargs)

    monkeypatch.setattr(faulthandler, "dump_traceback", dump_traceback)
    async with loopstat.install("127.0.0.1", 9) as monitor:
        await asyncio.sleep(0.2)  # the watch begins at the first sample
        await located_stall(monitor)
        stall = monitor.last_stall
        assert stall is not None
        assert stall.location is not None
        assert stall.location.endswith(WHERE)
        assert "in blocking_function" in stall.stack
    assert dumps
    assert len(dumped) == 1  # one file, opened as the watch started, used again for every dump


async def test_a_stall_in_c_code_is_reported_though_reading_the_dump_lets_the_loop_wait_again(
    dumped: List[stack_dump.DumpFile], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The restart that reports the stall is posted as soon as the dump is taken: reading the file releases
    the GIL, and a loop that waits before the restart is posted moves its mark, and the stall went unreported."""
    real = stack_dump._read_back

    def from_a_slow_file(dump_file: stack_dump.DumpFile) -> str:
        time.sleep(0.05)  # the loop runs on, back to its selector
        return real(dump_file)

    monkeypatch.setattr(stack_dump, "_read_back", from_a_slow_file)
    await stall_of("sum")


def unlocated(records: List[logging.LogRecord]) -> List[logging.LogRecord]:
    return [r for r in records if "without their location" in r.getMessage()]


async def blocked_until_said(monitor: loopstat.Monitor, said: Callable[[], bool]) -> None:
    """Block the loop until loopstat says what it says about it; the block is still counted as a stall."""
    before = monitor.stalls
    for _ in range(5):  # a loaded machine may hide one block from the watchdog: the next is seen
        time.sleep(0.3)
        if await holds_within(said, 2):
            break
    assert await holds_within(lambda: monitor.stalls > before, 5), "the block is still a stall"


REAL_DUMP = faulthandler.dump_traceback


def nonsense(file: Any, all_threads: bool = True) -> None:
    """The dump as a later faulthandler might write it: its frames in another form."""
    with tempfile.TemporaryFile() as real:
        REAL_DUMP(real.fileno(), all_threads=all_threads)
        real.seek(0)
        os.write(file, real.read().replace(b'  File "', b'  at "'))


def refuse(file: Any, all_threads: bool = True) -> None:
    raise RuntimeError("unable to get the interpreter state")


@pytest.mark.parametrize(
    ("dump", "why"),
    [
        (nonsense, "faulthandler's dump could not be read: ValueError: unexpected line in a stack: '  at \""),
        (refuse, "faulthandler.dump_traceback() failed: RuntimeError: unable to get the interpreter state"),
    ],
    ids=["unreadable", "refused"],
)
async def test_a_dump_that_fails_leaves_stalls_unlocated_said_once_and_the_application_unaffected(
    dumped: List[stack_dump.DumpFile],
    dump: Callable[..., None],
    why: str,
    loopstat_log: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(faulthandler, "dump_traceback", dump)
    ran: List[int] = []
    async with loopstat.install("127.0.0.1", 9, stall_threshold=0.05) as monitor:
        await asyncio.sleep(0.2)
        for _ in range(3):  # the application goes on: its blocks, its tasks
            await blocked_until_said(monitor, lambda: bool(unlocated(loopstat_log.records)))
            ran.append(await asyncio.create_task(asyncio.sleep(0, result=len(ran))))
        stall = monitor.last_stall
        assert stall is not None
        assert (stall.location, stall.stack) == (None, "")
    assert ran == [0, 1, 2]
    (record,) = unlocated(loopstat_log.records)
    assert record.levelno == logging.WARNING
    assert record.thread == threading.get_ident()  # said on the loop's thread
    assert why in record.getMessage()


async def test_without_memfd_create_the_dump_goes_to_an_unlinked_temporary_file(
    dumped: List[stack_dump.DumpFile], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(os, "memfd_create", raising=False)
    async with loopstat.install("127.0.0.1", 9) as monitor:
        await asyncio.sleep(0.2)
        await located_stall(monitor)
    ((_, fd, _),) = dumped
    assert os.fstat(fd).st_nlink == 0  # no name left on disk


async def test_no_file_to_dump_into_leaves_stalls_unlocated_said_once(
    dumped: List[stack_dump.DumpFile], loopstat_log: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_descriptor(*args: Any) -> int:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(os, "memfd_create", no_descriptor, raising=False)
    monkeypatch.setattr(tempfile, "mkstemp", no_descriptor)
    async with loopstat.install("127.0.0.1", 9, stall_threshold=0.05) as monitor:
        await asyncio.sleep(0.2)
        await blocked_until_said(monitor, lambda: bool(unlocated(loopstat_log.records)))
    (record,) = unlocated(loopstat_log.records)
    assert "no file to dump the stacks into: OSError: [Errno 24] Too many open files" in record.getMessage()


def test_a_descriptor_the_application_took_over_gets_one_dump_at_most_and_is_never_used_again(
    dumped: List[stack_dump.DumpFile], tmp_path: Path
) -> None:
    """An application that closes descriptors it does not own may reuse the number for a file of its own: loopstat
    finds out at its next read (it cannot look before a dump without letting the loop run on first)."""
    stack_dump.ready()
    ((_, fd, _),) = dumped
    theirs = tmp_path / "theirs.txt"
    theirs.write_text("the application's data\n")
    with open(theirs, "ab") as file:
        os.dup2(file.fileno(), fd)  # closes loopstat's file, and the number is the application's
        with pytest.raises(frames.StacksUnreadable, match="is no longer loopstat's"):
            frames.stacks_of([threading.get_ident()])
        size = theirs.stat().st_size
        with pytest.raises(frames.StacksUnreadable):
            frames.stacks_of([threading.get_ident()])
        assert theirs.stat().st_size == size  # not written again
        assert dumped == []  # nor given back for another dump
    assert theirs.read_text().startswith("the application's data\n")
    os.close(fd)  # the test's duplicate


def lowest_free_descriptor() -> int:
    fd = os.open(os.devnull, os.O_RDONLY)
    os.close(fd)
    return fd


@pytest.mark.skipif(stack_dump.fd_floor() is None, reason="needs fcntl and resource (Unix)")
@pytest.mark.parametrize("opener", ["memfd", "temporary file"])
def test_the_dump_file_takes_a_high_descriptor_out_of_the_way_of_the_applications_new_files(
    dumped: List[stack_dump.DumpFile], opener: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """New descriptors take the lowest free number: an application that closed loopstat's (closerange) and opens
    files of its own is unlikely to get a number up there."""
    if opener == "temporary file":
        monkeypatch.delattr(os, "memfd_create", raising=False)
    floor = stack_dump.fd_floor()
    assert floor is not None
    low = lowest_free_descriptor()
    stack_dump.ready()
    ((_, fd, _),) = dumped
    if low < floor:  # else every number below the floor is taken: nothing to move away from
        assert fd >= floor
        assert lowest_free_descriptor() == low  # the low number it was opened on is closed
    assert not os.get_inheritable(fd)
    stack, _ = frames.stacks_of([threading.get_ident()])[threading.get_ident()]
    assert sys._getframe().f_code.co_name in [function for _, _, function in stack]  # read through the file
    assert [f[1] for f in dumped] == [fd]  # given back for the next dump


def test_a_dump_file_that_cannot_be_moved_up_keeps_its_low_descriptor_and_works(
    dumped: List[stack_dump.DumpFile], monkeypatch: pytest.MonkeyPatch
) -> None:
    fcntl = pytest.importorskip("fcntl")

    def no_number_free(*args: Any) -> int:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(fcntl, "fcntl", no_number_free)
    low = lowest_free_descriptor()
    stack_dump.ready()
    ((_, fd, _),) = dumped
    assert fd == low
    stack, _ = frames.stacks_of([threading.get_ident()])[threading.get_ident()]
    assert sys._getframe().f_code.co_name in [function for _, _, function in stack]  # read through the file


@pytest.mark.parametrize("enabled", [False, True])
async def test_faulthandler_stays_as_the_application_set_it(dumped: List[stack_dump.DumpFile], enabled: bool) -> None:
    was = faulthandler.is_enabled()
    (faulthandler.enable if enabled else faulthandler.disable)()
    try:
        async with loopstat.install("127.0.0.1", 9, profile=True) as monitor:
            await asyncio.sleep(0.2)
            await located_stall(monitor)
            assert faulthandler.is_enabled() is enabled
        assert faulthandler.is_enabled() is enabled
    finally:
        (faulthandler.enable if was else faulthandler.disable)()


# A fresh interpreter forks: the test process has threads, and Python 3.12+ warns about forking those.
FORKING = """
import json, os, sys, threading
from loopstat.probes import frames, stack_dump

stack_dump.DUMPED = True
stack_dump.ready()
(parents,) = stack_dump._dump_files
read, write = os.pipe()
pid = os.fork()
if pid == 0:
    left = [fd for _, fd, _ in stack_dump._dump_files]
    stack, whole = frames.stacks_of([threading.get_ident()])[threading.get_ident()]
    (own,) = [f for f in stack_dump._dump_files if f[0] == os.getpid()]
    os.write(write, json.dumps({"left": left, "own": own[2] != parents[2], "read": stack[0][2]}).encode())
    os._exit(0)
os.close(write)
child = json.loads(os.read(read, 4096))
os.waitpid(pid, 0)
os.fstat(parents[1])  # the parent's file is still open in the parent
print(json.dumps(child))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.parametrize("support", ["1", "0"])
def test_a_forked_child_dumps_into_a_file_of_its_own(support: str) -> None:
    """The parent's file is shared with the child (its offset too): closed in the child by the fork hook, and
    never used there when fork support is off."""
    done = subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error", "-c", textwrap.dedent(FORKING)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "LOOPSTAT_FORK_SUPPORT": support},
        cwd=Path(__file__).parent.parent,
    )
    assert done.returncode == 0, done.stderr
    child: Dict[str, Any] = json.loads(done.stdout)
    assert child["own"]
    assert child["read"] == "<module>"
    assert (child["left"] == []) is (support == "1")


async def test_the_task_whose_step_stalled_is_named_where_no_frame_object_is_made(
    dumped: List[stack_dump.DumpFile],
) -> None:
    async def handler(monitor: loopstat.Monitor) -> None:
        await located_stall(monitor)

    async with loopstat.install("127.0.0.1", 9) as monitor:
        await asyncio.sleep(0.2)
        await asyncio.create_task(handler(monitor), name="request")
        stall = monitor.last_stall
        assert stall is not None
        assert stall.task == f"task 'request' {handler.__qualname__}"
