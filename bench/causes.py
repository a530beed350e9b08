"""Causes: stalls made by a known cause, and the share loopstat classified right.

Each cause runs in a process of its own, on each loop, ``count`` times:

- ``cpu``: a Python spin; ``blocking_call``: ``time.sleep``; ``gc``: a large
  cyclic heap made garbage and ``gc.collect()`` (the collection is most of the
  stall); ``import``: a module whose import sleeps; ``gil``: a callback that
  keeps giving the GIL up (``os.stat``) while a second thread spins in Python,
  all in the loop's process;
- ``throttled``: a CPU spin in a cgroup v1 group with a 10 ms per 100 ms quota
  (needs root and the v1 ``cpu`` controller; skipped otherwise);
- ``scheduler``: a CPU spin on one core shared with three spinning processes.

As root, the spinning threads of ``cpu`` and ``gil`` run at real-time priority
while they spin, so that on a busy machine the truth stays CPU-bound rather
than a host short of CPU (which is ``scheduler``, a cause of its own).

A stall named otherwise is said on stderr with the figures its reason gives, so that a miss can be told
apart: the machine's doing (a busy host) or the classifier's.

``python -m bench causes``; a child is ``python -m bench.causes <loop> <cause> <count>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from typing import Any, Callable, Dict, Iterator, List, Optional, Set, Tuple

from loopstat._cgroup import cpu_quota_group, quota_unavailable
from loopstat.probes.causes import CAUSES

THRESHOLD = 0.1
BLOCK = 0.3
# Every cause but ``unknown``, in the table's order.
INJECTED = tuple(cause for cause in CAUSES if cause != "unknown")


@contextlib.contextmanager
def favoured() -> Iterator[None]:
    """As root, the calling thread ahead of every ordinary process for a CPU while it lasts (real-time
    round-robin): on a machine shared with busy processes a spinning thread would otherwise wait on the
    scheduler, a cause of its own. (A nice value would not do: it counts only within the session's group.)
    Not root: nothing changes, and the block measures whether it had the CPU anyway."""
    thread = threading.get_native_id()
    try:
        os.sched_setscheduler(thread, os.SCHED_RR, os.sched_param(1))
    except (AttributeError, OSError):
        yield
        return
    try:
        yield
    finally:
        os.sched_setscheduler(thread, os.SCHED_OTHER, os.sched_param(0))


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def _spin_cpu(seconds: float) -> None:
    """Spin until the thread used ``seconds`` of CPU, however long that takes."""
    used = time.thread_time()
    while time.thread_time() - used < seconds:
        pass


def cyclic_heap(objects: int) -> List[Any]:
    heap: List[Any] = []
    for _ in range(objects):
        node: List[Any] = [heap]
        node.append(node)
        heap.append(node)
    return heap


def _heap_size() -> int:
    """Objects whose collection takes about twice the stall threshold here."""
    objects = 100_000
    while objects < 20_000_000:
        heap = cyclic_heap(objects)
        started = time.perf_counter()
        gc.collect()
        took = time.perf_counter() - started
        del heap
        if took >= 2 * THRESHOLD:
            break
        objects *= 2
    return objects


class _GilHolder:
    """A second thread that spins in Python until stopped."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with favoured():
            while not self._done.is_set():
                pass

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


def _blocks(cause: str) -> Tuple[Callable[[], None], Callable[[], None]]:
    """The block that makes ``cause`` on the loop, and what undoes its setting afterwards."""
    if cause in ("cpu",):
        return lambda: _favoured_spin(BLOCK), lambda: None
    if cause in ("throttled", "scheduler"):
        return lambda: _spin_cpu(0.05), lambda: None
    if cause == "blocking_call":
        return lambda: time.sleep(BLOCK), lambda: None
    if cause == "gc":
        size = _heap_size()
        gc.disable()

        def collect() -> None:
            cyclic_heap(size)  # garbage in cycles at once
            gc.collect()

        return collect, gc.enable
    if cause == "import":
        folder = tempfile.mkdtemp()
        sys.path.insert(0, folder)

        def slow_import() -> None:
            name = f"slow_{uuid.uuid4().hex}"
            with open(os.path.join(folder, f"{name}.py"), "w") as file:
                file.write(f"import time\ntime.sleep({BLOCK})\n")
            __import__(name)

        return slow_import, lambda: sys.path.remove(folder)
    if cause == "gil":
        holder = _GilHolder()

        def release_often() -> None:
            end = time.perf_counter() + BLOCK
            while time.perf_counter() < end:
                os.stat(".")

        return release_often, holder.stop
    raise ValueError(f"cause: expected one of {', '.join(INJECTED)}, got {cause!r}")


def _favoured_spin(seconds: float) -> None:
    with favoured():
        _spin(seconds)


async def _classify(cause: str, count: int) -> List[Tuple[str, str]]:
    import loopstat

    block, undo = _blocks(cause)
    found: List[Tuple[str, str]] = []
    try:
        # The gc cause is read from a gc callback, which only gc=True installs.
        async with loopstat.install("127.0.0.1", 9, stall_threshold=THRESHOLD, gc=cause == "gc") as monitor:
            for _ in range(count):
                await asyncio.sleep(0.1)
                seen = monitor.stalls
                block()
                for _ in range(1000):  # up to 10 s for the stall's report
                    if monitor.stalls > seen:
                        break
                    await asyncio.sleep(0.01)
                stall = monitor.last_stall
                if stall is not None and monitor.stalls > seen:
                    found.append((stall.cause, stall.reason))
                else:
                    found.append(("missed", "no stall was reported within 10 s"))
    finally:
        undo()
    return found


def child(loop: str, cause: str, count: int) -> List[Tuple[str, str]]:
    """In the child process: ``count`` stalls of ``cause`` on ``loop``; the cause and reason loopstat gave each."""
    if loop == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return asyncio.run(_classify(cause, count))


@contextlib.contextmanager
def _placed(cause: str) -> Iterator[Callable[[int], None]]:
    """Where the child runs for ``cause``: a throttled cgroup, a crowded core, or as it is."""
    if cause == "throttled":
        with cpu_quota_group(10_000, name="loopstat-bench") as group:
            yield group.add
    elif cause == "scheduler":
        core = min(os.sched_getaffinity(0))
        hog = f"import os\nos.sched_setaffinity(0, {{{core}}})\nwhile True: pass\n"
        hogs = [subprocess.Popen([sys.executable, "-c", hog]) for _ in range(3)]
        try:
            yield lambda pid: os.sched_setaffinity(pid, {core})
        finally:
            for process in hogs:
                process.kill()
                process.wait()
    else:
        yield lambda pid: None


def run(loop: str, cause: str, count: int) -> Optional[List[str]]:
    """The causes loopstat named for ``count`` stalls of ``cause`` on ``loop``; None where it cannot be made here."""
    if cause == "throttled" and quota_unavailable() is not None:
        return None
    if cause == "scheduler" and not hasattr(os, "sched_setaffinity"):
        return None
    command = [sys.executable, "-m", "bench.causes", loop, cause, str(count)]
    with (
        _placed(cause) as place,
        subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        ) as process,
    ):
        try:
            place(process.pid)
            output, errors = process.communicate("go\n", timeout=60 + 10 * count)
        finally:
            if process.poll() is None:
                process.kill()
    if process.returncode != 0:
        raise RuntimeError(f"{cause} on {loop}: {errors.strip()[-500:]}")
    from bench.precise import progress  # here, not at the top: the child imports nothing it does not use

    found: List[Tuple[str, str]] = [(name, reason) for name, reason in json.loads(output)]
    for line in misses(loop, cause, found):
        progress(line)
    return [name for name, _ in found]


def misses(loop: str, cause: str, found: List[Tuple[str, str]]) -> List[str]:
    """One line for each stall of ``cause`` named otherwise, with the reason and figures loopstat gave."""
    return [f"{cause} on {loop}: a stall named {name}: {reason}" for name, reason in found if name != cause]


def table(loops: List[str], count: int) -> str:
    """A markdown table: per cause and loop, the stalls classified right out of those made."""
    results: Dict[Tuple[str, str], Optional[List[str]]] = {
        (cause, loop): run(loop, cause, count) for cause in INJECTED for loop in loops
    }
    rows = ["| injected cause | " + " | ".join(loops) + " | named instead |", "|---|" + "---|" * (len(loops) + 1)]
    for cause in INJECTED:
        cells: List[str] = []
        wrong: Set[str] = set()
        for loop in loops:
            found = results[(cause, loop)]
            if found is None:
                cells.append("not here")
                continue
            cells.append(f"{sum(name == cause for name in found)}/{len(found)}")
            wrong.update(name for name in found if name != cause)
        rows.append(f"| `{cause}` | " + " | ".join(cells) + f" | {', '.join(sorted(wrong)) or '-'} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    sys.stdin.readline()  # placed by now
    print(json.dumps(child(sys.argv[1], sys.argv[2], int(sys.argv[3]))), flush=True)
