"""Pre-fork servers under ``loopstat-run``: gunicorn with two UvicornWorkers, and ``uvicorn --workers 2``.

Each worker's gauges must arrive as a series of their own (tag ``worker:<slot>``),
and a worker killed and restarted by its master must take the freed slot, not a new one.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import List, Optional, Set

import pytest

from tests.ports import free_port
from tests.receiver import Line, Receiver
from tests.web_servers import http_get

pytestmark = pytest.mark.e2e  # whole programs and real servers: run once, in the e2e env

BIN = Path(sys.executable).parent
# Starts, answers with its pid (after blocking its loop for 0.3 s at /block); its lifespan lets uvicorn
# report the worker ready.
APP = """
import os, time

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["path"] == "/block":
        time.sleep(0.3)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": str(os.getpid()).encode()})
"""
#: How long a server may take to (re)start its workers on a loaded machine.
START_SECONDS = 60.0


class Server:
    """A server run under ``python -m loopstat run``, its stderr read as it comes."""

    def __init__(self, command: List[str], worker_started: str, env: dict[str, str], cwd: Path, port: int) -> None:
        self.port = port
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "loopstat", "run", "--", *command],
            env=env,
            cwd=cwd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # the whole server, workers included, is killed at the end
        )
        self._started = re.compile(worker_started)
        self.log: List[str] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._lock:
                self.log.append(line)

    def lines(self) -> List[str]:
        """Its stderr so far, line by line."""
        with self._lock:
            return list(self.log)

    def workers(self) -> List[int]:
        """The pids of the workers started so far, in order."""
        with self._lock:
            return [int(match.group(1)) for line in self.log for match in [self._started.search(line)] if match]

    def wait_workers(self, count: int) -> List[int]:
        deadline = time.monotonic() + START_SECONDS
        while len(self.workers()) < count:
            assert self.proc.poll() is None, "".join(self.log)
            assert time.monotonic() < deadline, f"{count} workers did not start: {''.join(self.log)}"
            time.sleep(0.05)
        return self.workers()

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self._reader.join(timeout=10)
        assert self.proc.stderr is not None
        self.proc.stderr.close()


def tasks_series(lines: List[Line]) -> Set[Optional[str]]:
    """The worker tag of every tasks gauge received (None for one without it)."""
    return {dict(line.tags).get("worker") for line in lines if line.name == "loopstat.tasks" and line.type == "g"}


GUNICORN = "gunicorn", r"Booting worker with pid: (\d+)"
UVICORN = "uvicorn", r"Started server process \[(\d+)\]"


def command(server: str, port: int) -> List[str]:
    """Two workers serving app.py on ``port``."""
    if server == "gunicorn":
        return [str(BIN / "gunicorn"), "-w", "2", "-k", "uvicorn.workers.UvicornWorker", "-b", f"127.0.0.1:{port}"]
    return [sys.executable, "-m", "uvicorn", "--workers", "2", "--port", str(port)]


@pytest.fixture(params=[GUNICORN, UVICORN], ids=lambda param: param[0])
def server(request: pytest.FixtureRequest, tmp_path: Path, receiver: Receiver) -> Iterator[Server]:
    name, started = request.param
    (tmp_path / "app.py").write_text(APP)
    port = free_port("tcp")
    env = dict(
        os.environ, STATSD_HOST="127.0.0.1", STATSD_PORT=str(receiver.port), LOOPSTAT_INTERVAL="0.05", DD_SERVICE="pf"
    )
    running = Server([*command(name, port), "app:app"], started, env, tmp_path, port)
    try:
        yield running
    finally:
        running.close()


def test_every_worker_sends_its_own_series_and_a_restarted_worker_takes_the_freed_slot(
    server: Server, receiver: Receiver
) -> None:
    first = server.wait_workers(2)
    lines = receiver.settle(lambda lines: tasks_series(lines) == {"0", "1"}, timeout=START_SECONDS)
    assert all(dict(line.tags).get("service") == "pf" for line in lines)
    assert http_get(server.port)  # the workers serve as they would without loopstat

    os.kill(first[0], signal.SIGKILL)
    server.wait_workers(3)  # the master noticed and started a replacement
    restarted = len(receiver.snapshot())
    # Both slots again, the replacement sending as well as the survivor (the dead worker sends nothing).
    receiver.settle(lambda lines: tasks_series(lines[restarted:]) == {"0", "1"}, timeout=START_SECONDS)
    time.sleep(1.0)  # and nothing else comes later
    assert tasks_series(receiver.snapshot()) == {"0", "1"}, "at most one series per slot, none untagged"


def test_loopstat_worker_tag_0_turns_the_tag_off(tmp_path: Path, receiver: Receiver) -> None:
    (tmp_path / "app.py").write_text("import asyncio\nasyncio.run(asyncio.sleep(0.3))\n")
    env = dict(os.environ, STATSD_HOST="127.0.0.1", STATSD_PORT=str(receiver.port), LOOPSTAT_INTERVAL="0.05")
    for value, expected in (("0", {None}), ("1", {"0"})):
        start = len(receiver.snapshot())
        done = subprocess.run(
            [sys.executable, "-m", "loopstat", "run", "--", sys.executable, "app.py"],
            env=dict(env, LOOPSTAT_WORKER_TAG=value),
            cwd=tmp_path,
            timeout=60,
        )
        assert done.returncode == 0
        lines = receiver.settle(lambda lines: tasks_series(lines[start:]) != set(), timeout=10)  # noqa: B023
        assert tasks_series(lines[start:]) == expected, value


def test_a_workers_log_lines_name_its_slot_and_pid(server: Server, receiver: Receiver) -> None:
    workers = server.wait_workers(2)
    receiver.settle(lambda lines: tasks_series(lines) == {"0", "1"}, timeout=START_SECONDS)
    pattern = re.compile(r"loopstat \[worker ([01]), pid (\d+)\]: the event loop was blocked for \d+ ms")
    deadline = time.monotonic() + START_SECONDS
    found: List[re.Match[str]] = []
    while not found and time.monotonic() < deadline:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/block", timeout=10) as response:
            response.read()
        time.sleep(0.2)  # the stall is logged once the loop moves again
        found = [match for line in server.lines() for match in [pattern.search(line)] if match]
    assert found, "".join(server.log)
    assert all(int(match.group(2)) in workers for match in found), (workers, found)
