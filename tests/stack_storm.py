"""Crash reproducer: other threads read the stack of a loop that Ctrl-C storms unwind, deep, again and again.

With stalls and the profile on, the watchdog and the sampler read the loop
thread's stack while a KeyboardInterrupt unwinds a deep recursion on it, and
while it spins in Python at the bottom of one (the readers get in mid-stack).
On CPython 3.11 reading it by following ``f_back`` of ``sys._current_frames()``
frames crashed the process now and then (a segfault); loopstat reads it there
from a faulthandler dump instead. ``--walk`` forces the ``f_back`` walk, to see
the crash. Every run is a new process; a run killed by a signal is a crash.

    python -m tests.stack_storm RUNS [--walk] [--jobs N]
    python -m tests.stack_storm --cost    # what one read of a stack costs, by dump and by walk
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import math
import signal
import subprocess
import sys
import textwrap
import threading
import time
import traceback
from pathlib import Path
from typing import Callable, Counter, List

STORM = """
import asyncio, faulthandler, os, random, signal, sys, threading, time
import loopstat
from loopstat.probes import stack_dump

faulthandler.enable()  # a crash says where (and the application's faulthandler stays as it set it)
faulthandler.dump_traceback_later(60, exit=True)  # so does a hang
if {walk}:
    stack_dump.DUMPED = False
sys.unraisablehook = lambda hook: None  # a Ctrl-C Python reports as ignored is no crash
signal.signal(signal.SIGINT, signal.default_int_handler)
sys.setrecursionlimit(20000)

def deep(depth, seconds):
    if depth == 0:
        if random.random() < 0.5:
            time.sleep(seconds)  # in C: the readers look at a still stack
        else:
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:  # in Python: they get in between bytecodes
                pass
        return
    deep(depth - 1, seconds)

async def work():
    while True:
        deep(random.choice([50, 400, 3000]), random.uniform(0.02, 0.12))
        await asyncio.sleep(random.choice([0, 0.001, 0.01]))

loop = asyncio.new_event_loop()

async def start():
    return loopstat.install("127.0.0.1", 9, stall_threshold=0.02, profile=True, interval=0.05)

monitor = loop.run_until_complete(start())
done = threading.Event()

def ctrl_c():
    while not done.wait(random.uniform(0.002, 0.03)):
        os.kill(os.getpid(), signal.SIGINT)

killer = threading.Thread(target=ctrl_c, daemon=True)
killer.start()
end = time.monotonic() + {seconds}
task = None
interrupts = 0
over = False
while not over:
    # Ctrl-C lands anywhere here: the outer try catches one landing outside the inner.
    try:
        while time.monotonic() < end:
            try:
                if task is None or task.done():
                    task = loop.create_task(work())
                loop.run_until_complete(task)
            except KeyboardInterrupt:
                interrupts += 1
        done.set()
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a last Ctrl-C still on its way lands nowhere
        over = True
    except KeyboardInterrupt:
        interrupts += 1
killer.join()
task.cancel()
# Not waited for long: a Ctrl-C that landed as asyncio took the task's wake-up off its queue leaves it pending for good.
loop.run_until_complete(asyncio.wait([task], timeout=1))
stalls = monitor.stalls
loop.run_until_complete(monitor.stop())
loop.close()
print(interrupts, stalls)
"""


def run(walk: bool, seconds: float) -> str:
    """One storm in a new process: "ok", "crash (SIGSEGV)" and the like, or "failed" with its exit status."""
    program = textwrap.dedent(STORM.format(walk=walk, seconds=seconds))
    try:
        done = subprocess.run(
            [sys.executable, "-c", program],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=Path(__file__).parent.parent,
        )
    except subprocess.TimeoutExpired:
        return "hung"
    if done.returncode == -signal.SIGINT:  # a Ctrl-C that landed in an except clause: Python ends as killed by it
        return "ended by a Ctrl-C"
    if done.returncode < 0:
        return f"crash ({signal.Signals(-done.returncode).name})"
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-2000:])
        return f"failed ({done.returncode})"
    return "ok"


def nested(depth: int, then: Callable[[], None]) -> None:
    if depth == 0:
        then()
        return
    nested(depth - 1, then)


def cost(reads: int = 2000) -> None:
    """Microseconds one read of this thread's stack takes (about 25 frames deep, 4 other threads 12 deep), best of 3."""
    from loopstat.probes import frames, stack_dump

    go = threading.Event()
    others = [threading.Thread(target=nested, args=(10, lambda: go.wait(60))) for _ in range(4)]
    for thread in others:
        thread.start()

    def measure() -> None:
        me = {threading.get_ident()}
        for dumped in (True, False):
            stack_dump.DUMPED = dumped
            best = math.inf
            for _ in range(3):
                started = time.perf_counter()
                for _ in range(reads):
                    frames.stacks_of(me)
                best = min(best, (time.perf_counter() - started) / reads)
            depth = len(frames.stacks_of(me)[threading.get_ident()][0])
            how = "faulthandler dump" if dumped else "f_back walk"
            print(f"python {sys.version.split()[0]}, {how}: {best * 1e6:.0f} us a read ({depth} frames deep)")

    try:
        time.sleep(0.2)  # the other threads reach their depth
        stack_dump.ready()
        nested(25 - len(traceback.extract_stack()) - 2, measure)
    finally:
        go.set()
        for thread in others:
            thread.join()


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.stack_storm", description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=int, nargs="?", default=0)
    parser.add_argument("--cost", action="store_true", help="time one read of a stack instead")
    parser.add_argument("--walk", action="store_true", help="read stacks by walking f_back, as before 3.11's dump")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=2.0, help="how long each storm lasts")
    options = parser.parse_args(argv)
    if options.cost:
        cost()
        return 0
    outcomes: Counter[str] = collections.Counter()
    with concurrent.futures.ThreadPoolExecutor(options.jobs) as pool:
        for outcome in pool.map(lambda _: run(options.walk, options.seconds), range(options.runs)):
            outcomes[outcome] += 1
    crashes = sum(count for outcome, count in outcomes.items() if outcome.startswith("crash"))
    print(
        f"python {sys.version.split()[0]} ({'f_back walk' if options.walk else 'as loopstat reads'}): "
        f"{options.runs} runs, {crashes} crashed; {dict(outcomes)}"
    )
    return 1 if crashes else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
