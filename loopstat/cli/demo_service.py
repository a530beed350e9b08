"""The demo's service: its phases, its blocking code, the loop it runs on, and the cgroup of its throttled phase.

The service runs on its own loop in a thread (so the view stays live while the
service's loop is blocked), with loopstat installed and sending to the
demo's receiver. Each of its requests asks a slow backend (served by the
receiver's loop) for a report, or crunches numbers, as its phase says.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import tempfile
import threading
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple, Union

import loopstat
from loopstat import _cgroup
from loopstat._notes import loop_name

PREFIX = "loopstat"
TAGS = {"service": "demo"}
#: Sample often, so a short demo still shows a few samples per phase.
INTERVAL = 0.1
STALL_SECONDS = 0.1
#: How long the backend takes to answer, and each request's CPU work: longer than the stall threshold,
#: and than two sample intervals. The sampler's next timer is armed as a block ends, an interval later;
#: with back-to-back blocks it falls inside the next one, and lag shows the part of it that is left.
WORK_SECONDS = 0.25
#: Time between two requests of one worker.
PAUSE_SECONDS = 0.05
WORKERS = 2


@dataclass(frozen=True)
class Phase:
    """One stretch of the demo: what each request does, and the caption that says so."""

    name: str
    text: str
    #: "await": the backend through asyncio streams; "read": with a blocking socket; "crunch": CPU work.
    work: str
    #: Where the blocking work runs: on the loop, or handed to a "thread" or a "process" pool.
    where: str = "loop"

    @property
    def blocks(self) -> bool:
        """Whether its requests hold the loop."""
        return self.where == "loop" and self.work != "await"


PHASES = (
    Phase("healthy", "healthy: each request awaits the slow backend (asyncio streams)", "await"),
    Phase("I/O on loop", "blocking I/O on the loop: fetch_report() reads a blocking socket", "read"),
    Phase("I/O in thread", "the same fetch_report() in asyncio.to_thread: the loop only awaits", "read", "thread"),
    Phase("CPU on loop", "CPU-bound Python on the loop: crunch_numbers() never awaits", "crunch"),
    Phase("CPU in process", "the same crunch_numbers() in a ProcessPoolExecutor", "crunch", "process"),
)
#: With ``--throttle``: the CPU work on the loop again, with the process in a cgroup whose quota is 20 % of a core.
THROTTLED = Phase("throttled", "CPU work on the loop under a 20 % CPU quota: the kernel freezes it", "crunch")
#: The quota: 20 ms of CPU in each 100 ms period, as a container limited to 0.2 CPU has.
PERIOD_US = 100_000
QUOTA_US = 20_000
#: The throttled phase lasts at least this long: loopstat reads the throttled time once a second.
THROTTLED_MIN_SECONDS = 3.0


def throttle_group(stack: ExitStack) -> Union[_cgroup.QuotaGroup, str]:
    """A child cgroup with the quota for the throttled phase, removed when ``stack`` closes; or why none can be made.

    The process is moved with ``cgroup.procs``, which moves all its threads (the view too, which hardly uses
    the CPU); the pool's processes, started before, stay where they are.
    """
    why = _cgroup.quota_unavailable()
    if why is not None:
        return why
    try:
        return stack.enter_context(_cgroup.cpu_quota_group(QUOTA_US, PERIOD_US, name="loopstat-demo"))
    except _cgroup.CgroupError as exc:
        return str(exc)


#: The service's blocking functions. They are compiled under a file name of their
#: own: to the stall watchdog they are the application's code, as they would be
#: in a real service (code in loopstat's files is loopstat's own, never blamed).
#: The demo writes them to that file first (``write_service``), so the user can open it.
SERVICE_FILE = "demo_service.py"
SERVICE_CODE = """\
import socket, time

def fetch_report(port):
    # Asks the backend with a blocking socket, as a synchronous HTTP client or database driver does.
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"report\\n")
        return sock.recv(64)

def crunch_numbers(seconds):
    # CPU-bound Python that never awaits, standing in for a big json.loads, a render or a pure-Python hash.
    deadline = time.perf_counter() + seconds
    total = n = 0
    while time.perf_counter() < deadline:
        for _ in range(1000):
            total = (total + n * n) % 1_000_003
            n += 1
    return total
"""


def _compile_service(filename: str) -> Tuple[Callable[[int], bytes], Callable[[float], int]]:
    """``fetch_report`` and ``crunch_numbers``, compiled as code of ``filename``."""
    # __name__ is this module's, so that the process pool can pickle crunch_numbers.
    service: Dict[str, Any] = {"__name__": __name__}
    exec(compile(SERVICE_CODE, filename, "exec"), service)
    return service["fetch_report"], service["crunch_numbers"]


def write_service() -> str:
    """Write the service's code to a new private folder, compile it from there, and return the file's path."""
    global fetch_report, crunch_numbers
    path = os.path.join(tempfile.mkdtemp(prefix="loopstat-demo-"), SERVICE_FILE)
    with open(path, "w", encoding="utf-8") as file:
        file.write(SERVICE_CODE)
    fetch_report, crunch_numbers = _compile_service(path)
    return path


# Until the demo writes the file (and in the pool's processes, which never block a loop).
fetch_report, crunch_numbers = _compile_service(SERVICE_FILE)


async def serve_backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The slow backend: answers each request after ``WORK_SECONDS``, without blocking its own loop."""
    try:
        await reader.readline()
        await asyncio.sleep(WORK_SECONDS)
        writer.write(b"ok\n")
        await writer.drain()
    except OSError:
        pass  # the service went away mid-request
    finally:
        writer.close()


class Service:
    """The demo service: a few workers serving fake requests on a loop of its own thread."""

    def __init__(self, port: int, backend: int) -> None:
        self.port = port
        self.backend = backend
        #: Switched by the demo from the main thread; read by the workers between requests.
        self.phase: Phase = PHASES[0]
        self.requests = 0
        self.monitor: Optional[loopstat.Monitor] = None
        self.error: Optional[BaseException] = None
        self._stop = threading.Event()
        # Set to install loopstat anew: it finds the process's CPU limit when it starts.
        self._restart = threading.Event()
        # Stalls counted by the monitors before the current one; with it under the lock, read from the demo's thread.
        self._stalls_before = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._main, name="loopstat-demo-service", daemon=True)
        # Spawned, not forked: this process has threads.
        self._pool = ProcessPoolExecutor(WORKERS, multiprocessing.get_context("spawn"))

    def start(self) -> None:
        # The processes start now, not in the middle of their phase, and with Ctrl-C blocked (they
        # keep that mask): a terminal sends it to them too, and only the demo should answer it.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            for _ in range(WORKERS):
                self._pool.submit(crunch_numbers, 0.0)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        self._thread.start()

    @property
    def stalls(self) -> int:
        """Stalls counted so far, by every monitor the service has had."""
        with self._lock:
            return self._stalls_before + (0 if self.monitor is None else self.monitor.stalls)

    def restart(self) -> None:
        """Install loopstat anew once the requests in progress finish (after a move to another cgroup)."""
        self._restart.set()

    async def stop(self) -> None:
        self._stop.set()
        # Waited for in a worker thread: the receiver's loop keeps taking datagrams meanwhile.
        await asyncio.get_running_loop().run_in_executor(None, self._end)

    @staticmethod
    def loop_name() -> str:
        """The kind of loop ``asyncio.run()`` gives the service: what loopstat measures depends on it."""
        loop = asyncio.new_event_loop()
        try:
            return loop_name(loop)
        finally:
            loop.close()

    def _end(self) -> None:
        self._thread.join()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported by the demo, not printed from a thread
            self.error = exc

    async def _serve(self) -> None:
        while not self._stop.is_set():
            self._restart.clear()
            async with loopstat.install(
                host="127.0.0.1",
                port=self.port,
                prefix=PREFIX,
                tags=TAGS,
                interval=INTERVAL,
                stall_threshold=STALL_SECONDS,
            ) as monitor:
                with self._lock:
                    self.monitor = monitor
                await asyncio.gather(*(self._worker() for _ in range(WORKERS)))
            with self._lock:
                self._stalls_before += monitor.stalls
                self.monitor = None

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stop.is_set() and not self._restart.is_set():
            await asyncio.sleep(PAUSE_SECONDS)
            phase = self.phase
            if phase.work == "await":
                reader, writer = await asyncio.open_connection("127.0.0.1", self.backend)
                writer.write(b"report\n")
                await reader.readline()
                writer.close()
                await writer.wait_closed()
            elif phase.work == "read":
                if phase.where == "thread":
                    await asyncio.to_thread(fetch_report, self.backend)
                else:
                    fetch_report(self.backend)
            elif phase.where == "process":
                await loop.run_in_executor(self._pool, crunch_numbers, WORK_SECONDS)
            else:
                crunch_numbers(WORK_SECONDS)
            self.requests += 1
