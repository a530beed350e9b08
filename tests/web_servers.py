"""Programs that serve HTTP, run for the end-to-end tests: start one until it says it is ready, fetch, stop."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Mapping
from typing import List, Optional, Sequence

from tests.receiver import Receiver


def aiohttp_app(port: int, answer: str, *, imports: str = "", setup: str = "") -> str:
    """A program serving ``answer`` (an expression of ``request``) at ``/`` on ``port`` with aiohttp's
    ``run_app``, which says "Running on" on stderr once it listens.

    ``imports`` and ``setup`` (lines run on ``app`` before it serves) are written in as they are.
    """
    return f"""\
import sys
from aiohttp import web
{imports}

async def home(request):
    return web.Response(text={answer})

app = web.Application()
app.router.add_get("/", home)
{setup}
web.run_app(app, host="127.0.0.1", port={port}, print=lambda text: print(text, file=sys.stderr, flush=True))
"""


def start_server(
    command: Sequence[str],
    ready: str,
    spawned: List[subprocess.Popen[str]],
    env: Optional[Mapping[str, str]] = None,
    cwd: Optional[os.PathLike[str]] = None,
) -> subprocess.Popen[str]:
    """Run ``command`` until it writes ``ready`` to stderr; it goes into ``spawned`` (the fixture ends it) at once."""
    proc = subprocess.Popen(list(command), env=env, cwd=cwd, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    spawned.append(proc)
    assert proc.stderr is not None
    deadline = time.monotonic() + 20
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if ready in line:
            return proc
        assert time.monotonic() < deadline, "the server did not start"
    raise AssertionError(f"the server exited with {proc.wait()} before it was ready: {''.join(seen)}")


def http_get(port: int) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
        body: bytes = response.read()
    return body


def check_serves_and_sends(port: int, body: bytes, receiver: Receiver, metric: str) -> None:
    """The server on ``port`` answers ``body`` at ``/``, and ``receiver`` gets a ``metric`` line: it runs, monitored."""
    assert http_get(port) == body
    receiver.settle(lambda lines: any(x.name == metric for x in lines))


def stop_server(proc: subprocess.Popen[str]) -> str:
    """Ctrl-C the server; return what it wrote to stderr while shutting down."""
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    return err
