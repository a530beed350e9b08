"""Shutting down leaves nothing behind: no warnings under `python -X dev`, nothing lost."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tests.receiver import Receiver

ROOT = Path(__file__).resolve().parent.parent

APP = """
import asyncio, gc, sys
import loopstat
sys.path.append({root!r})  # after loopstat: the tests' helper from the checkout, loopstat as installed
from tests.inside import send_lines

END = "{end}"

def new_loop():
    if "{loop}" == "uvloop":
        import uvloop
        return uvloop.new_event_loop()
    return asyncio.new_event_loop()

LAST = [("last", "g", 1.0)]

async def main():
    # -X dev warns of steps over 100 ms (the test runs again when one was slow), and loopstat
    # of stalls over 100 ms: beside a CPU hog per core, any step can take 140 ms.
    monitor = loopstat.install("127.0.0.1", {port}, interval=0.05, stall_threshold=1.0)
    await asyncio.sleep(0.1)
    # Right after a sample, so the next one is a whole interval away: the ending
    # comes first, and only the ending can send what is handed over below.
    sent = monitor.sent
    while monitor.sent == sent:
        await asyncio.sleep(0)
    if END == "stop":
        send_lines(monitor, LAST)  # no loop turn before stop()
        await monitor.stop()
    elif END == "run":
        send_lines(monitor, LAST)  # asyncio.run() cancels the monitor in the next few loop turns
    return monitor

if END in ("stop", "run"):
    if "{loop}" == "uvloop":
        import uvloop
        uvloop.run(main())
    else:
        asyncio.run(main())
else:
    loop = new_loop()
    monitor = loop.run_until_complete(main())
    send_lines(monitor, LAST)  # the loop is not running: no sample can send it
    del monitor
    if END == "close":
        loop.close()  # without cancelling the monitor first
    del loop
    gc.collect()
print("clean exit")
"""

# How an application can end its loop.
ENDINGS = (
    "stop",  # await monitor.stop(), then asyncio.run() returns
    "run",  # asyncio.run() cancels the monitor
    "close",  # loop.close() by hand, monitor still running
    "drop",  # the loop is never closed: the collector ends the monitor
)


def run_app(tmp_path: Path, source: str, options: Sequence[str], **fields: object) -> subprocess.CompletedProcess[str]:
    """Run the program ``source``, its ``{fields}`` filled in, with the interpreter ``options``."""
    script = tmp_path / "app.py"
    script.write_text(textwrap.dedent(source.format(root=str(ROOT), **fields)))
    return subprocess.run([sys.executable, *options, str(script)], capture_output=True, text=True, timeout=60)


# asyncio's warning, under -X dev, of a step that took over 100 ms.
SLOW_STEP = re.compile(r"Executing .* took \d+\.\d+ seconds")
# Runs of a program whose only complaint was a slow step: beside a CPU hog per core, a step of the
# program's own may take 140 ms now and then, but a start or stop that blocks is slow every time.
SLOW_STEP_TRIES = 5


def run_app_at_a_quiet_moment(
    tmp_path: Path, source: str, options: Sequence[str], **fields: object
) -> subprocess.CompletedProcess[str]:
    """Run the program as ``run_app`` does, again while the only thing it wrote to stderr was slow steps."""
    for _ in range(SLOW_STEP_TRIES):
        done = run_app(tmp_path, source, options, **fields)
        lines = done.stderr.splitlines()
        if not lines or not all(SLOW_STEP.fullmatch(line) for line in lines):
            break
    return done


@pytest.fixture
def busy_cores() -> Iterator[None]:
    """Keep every core busy with processes that spin, as on a loaded machine; killed at the end."""
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(max(2, os.cpu_count() or 2))]
    try:
        yield
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()


@pytest.mark.usefixtures("busy_cores")
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize("end", ENDINGS)
def test_ending_the_loop_leaves_no_warnings_and_flushes(
    tmp_path: Path, receiver: Receiver, loop: str, end: str
) -> None:
    """Under ``-X dev`` asyncio warns of slow steps (over 100 ms): loopstat's own start and stop must not be one."""
    # The warning about the loop left open is the application's, not loopstat's.
    options = ("-X", "dev", "-W", "error", "-W", "ignore:unclosed event loop:ResourceWarning")
    done = run_app_at_a_quiet_moment(tmp_path, APP, options, port=receiver.port, loop=loop, end=end)
    assert done.stderr == ""
    assert done.stdout == "clean exit\n"
    assert done.returncode == 0
    lines = receiver.settle(lambda lines: any(x.name == "loopstat.last" for x in lines))
    assert any(x.name == "loopstat.lag" for x in lines)


FORK_APP = """
import asyncio, os, threading
import loopstat

def new_loop():
    if "{loop}" == "uvloop":
        import uvloop
        return uvloop.new_event_loop()
    return asyncio.new_event_loop()

async def main():
    async with loopstat.install("127.0.0.1", {port}, interval=0.01, stall_threshold=1.0):
        await asyncio.sleep(0.2)

loop = new_loop()
loop.run_until_complete(main())
loop.close()
pid = os.fork()  # Python 3.12+ warns here if another thread runs
if pid == 0:
    os._exit(0)
os.waitpid(pid, 0)
print("threads:", threading.active_count())
"""


@pytest.mark.usefixtures("busy_cores")
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_fork_after_the_last_monitor_stopped_finds_no_watchdog_thread(
    tmp_path: Path, receiver: Receiver, loop: str
) -> None:
    done = run_app_at_a_quiet_moment(tmp_path, FORK_APP, ("-X", "dev", "-W", "error"), port=receiver.port, loop=loop)
    assert done.stderr == ""
    assert done.stdout == "threads: 1\n"
    assert done.returncode == 0


INTERRUPTED_APP = """
import asyncio, logging, os, random, signal, socket, sys, threading, time
import loopstat

logging.getLogger("loopstat").setLevel(logging.CRITICAL)  # the stalls are on purpose

def unraisable(hook):
    # A Ctrl-C can land in asyncio's own cleanup of a finished task (the weak
    # set of all tasks): Python reports it as ignored, with or without loopstat
    # (3 in 200 runs of this program on Python 3.9 without it). Anything else
    # ignored is printed and fails the test.
    owner = getattr(hook.object, "__defaults__", None) or (None,)
    tasks = {{id(getattr(asyncio.tasks, name, None)) for name in ("_all_tasks", "_scheduled_tasks")}}
    if (
        hook.exc_type is KeyboardInterrupt
        and getattr(hook.object, "__qualname__", "") == "WeakSet.__init__.<locals>._remove"
        and callable(owner[0])
        and id(owner[0]()) in tasks
    ):
        return
    # uvloop makes a socket pair for signals at each run of the loop: a Ctrl-C landing inside
    # socket.socketpair() drops the pair half made, which warns as unclosed (loopstat makes none).
    # (This program makes no Unix socket of its own, and loopstat sends over UDP here.) The next
    # Ctrl-C can land in that warning in turn: then it is the one ignored.
    if (
        hook.exc_type in (ResourceWarning, KeyboardInterrupt)
        and "{loop}" == "uvloop"
        and isinstance(hook.object, socket.SocketType)
        and hook.object.family == socket.AF_UNIX
    ):
        return
    sys.__unraisablehook__(hook)

sys.unraisablehook = unraisable
# Ctrl-C raises KeyboardInterrupt even if this was started with SIGINT ignored (a background job).
signal.signal(signal.SIGINT, signal.default_int_handler)
sys.setrecursionlimit(10000)
if "{loop}" == "uvloop":
    import uvloop
    loop = uvloop.new_event_loop()
else:
    loop = asyncio.new_event_loop()
handled = []
loop.set_exception_handler(lambda _, context: handled.append(context))

def deep(depth, seconds):
    if depth == 0:
        time.sleep(seconds)
        return
    deep(depth - 1, seconds)

async def work():
    while True:
        deep(3000, random.uniform(0.05, 0.15))  # a stall, often caught while being captured
        await asyncio.sleep(random.choice([0, 0.001, 0.01]))

async def start():
    return loopstat.install("127.0.0.1", {port}, stall_threshold=0.05)

monitor = loop.run_until_complete(start())
done = threading.Event()
# Set once the program is back inside a try that catches Ctrl-C: the next one
# waits for it, so that none lands in a handler, however slow a loaded machine is.
guarded = threading.Event()

def ctrl_c():
    while not done.wait(random.uniform(0.02, 0.2)):
        # At most 5 s: a Ctrl-C Python swallowed (in a weakref callback) is never caught. Not less: a
        # loaded machine can take a second to get back into the try, and one landing in a handler escapes.
        guarded.wait(5.0)
        if done.is_set():
            return
        guarded.clear()
        os.kill(os.getpid(), signal.SIGINT)

killer = threading.Thread(target=ctrl_c)
killer.start()
interrupts = 0
task = None
end = time.monotonic() + 2.0
over = False
while not over:
    # Ctrl-C lands anywhere here: the outer try catches one landing outside the inner.
    try:
        guarded.set()
        while time.monotonic() < end:
            try:
                guarded.set()
                if task is None or task.done():
                    task = loop.create_task(work())
                loop.run_until_complete(task)
            except KeyboardInterrupt:
                interrupts += 1
        done.set()
        killer.join()  # no more Ctrl-C from here: the last one sent has landed in a try
        over = True
    except KeyboardInterrupt:
        interrupts += 1
task.cancel()
loop.run_until_complete(asyncio.gather(task, return_exceptions=True))

async def last_stall():
    await asyncio.sleep(0.6)  # a sample or two: one takes back a beat the last Ctrl-C cut off
    before = monitor.stalls
    # Longer than a sample interval and the threshold: seen even if the
    # application's own task lost its wake-up to a Ctrl-C and left the loop
    # idle long enough for uvloop's heartbeat to rest.
    time.sleep(0.4)
    deadline = time.monotonic() + 30  # until it is counted, however loaded the machine
    while monitor.stalls == before and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    # The first stall counted since: this one (a loaded machine may add its own later).
    return monitor.stalls > before and monitor.last_stall.duration >= 300

seen = loop.run_until_complete(last_stall())
loop.run_until_complete(monitor.stop())
loop.close()
print(interrupts > 0, seen, handled)
"""


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_ctrl_c_at_any_moment_of_a_stall_reaches_only_the_application_and_detection_goes_on(
    tmp_path: Path, receiver: Receiver, loop: str
) -> None:
    done = run_app(tmp_path, INTERRUPTED_APP, ("-W", "error"), port=receiver.port, loop=loop)
    assert done.stderr == ""
    assert done.stdout == "True True []\n"
    assert done.returncode == 0
