"""loopstat.contrib against the real frameworks: the app starts, serves, sends metrics, and shuts down cleanly."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import List

import pytest

from tests.receiver import Receiver


def free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def server(tmp_path: Path) -> Iterator[List[subprocess.Popen[str]]]:
    procs: List[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def start(tmp_path: Path, source: str, ready: str) -> subprocess.Popen[str]:
    """Run ``source`` under ``python -X dev`` (every warning shown) until it logs ``ready``."""
    path = tmp_path / "app.py"
    path.write_text(textwrap.dedent(source))
    proc = subprocess.Popen(
        [sys.executable, "-X", "dev", str(path)], stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 20
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if ready in line:
            return proc
        assert time.monotonic() < deadline, "the app did not start"
    raise AssertionError(f"the app exited with {proc.wait()}: {''.join(seen)}")


def get(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
        body: bytes = response.read()
    return body.decode()


def stop(proc: subprocess.Popen[str]) -> str:
    """Ctrl-C the app; return what it wrote to stderr while shutting down."""
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    return err


def test_starlette_lifespan_runs_loopstat_with_the_app(
    tmp_path: Path, receiver: Receiver, server: List[subprocess.Popen[str]]
) -> None:
    port = free_tcp_port()
    proc = start(
        tmp_path,
        f"""
        from contextlib import asynccontextmanager
        import uvicorn
        from starlette.applications import Starlette
        from starlette.responses import PlainTextResponse
        from starlette.routing import Route
        from loopstat.contrib.starlette import lifespan

        @asynccontextmanager
        async def own(app):
            yield {{"greeting": "ok"}}   # the app's own lifespan and state still work

        async def home(request):
            running = request.app.state.loopstat.running
            return PlainTextResponse(f"{{request.state.greeting}} {{running}}")

        app = Starlette(
            routes=[Route("/", home)],
            lifespan=lifespan(own, host="127.0.0.1", port={receiver.port}, prefix="web", interval=0.05),
        )
        uvicorn.run(app, host="127.0.0.1", port={port})
        """,
        "Uvicorn running on",
    )
    server.append(proc)
    assert get(port) == "ok True"
    receiver.settle(lambda lines: any(x.name == "web.lag" for x in lines))
    err = stop(proc)
    for trouble in ("Warning", "Traceback", "ERROR"):
        assert trouble not in err, err


def test_aiohttp_cleanup_ctx_runs_loopstat_with_the_app(
    tmp_path: Path, receiver: Receiver, server: List[subprocess.Popen[str]]
) -> None:
    port = free_tcp_port()
    proc = start(
        tmp_path,
        f"""
        import sys
        from aiohttp import web
        from loopstat.contrib.aiohttp import MONITOR, cleanup_ctx

        async def home(request):
            return web.Response(text=str(request.app[MONITOR].running))

        app = web.Application()
        app.router.add_get("/", home)
        app.cleanup_ctx.append(cleanup_ctx(host="127.0.0.1", port={receiver.port}, prefix="web", interval=0.05))
        web.run_app(app, host="127.0.0.1", port={port}, print=lambda text: print(text, file=sys.stderr, flush=True))
        """,
        "Running on",
    )
    server.append(proc)
    assert get(port) == "True"
    receiver.settle(lambda lines: any(x.name == "web.lag" for x in lines))
    err = stop(proc)
    for trouble in ("Warning", "Traceback", "Error"):
        assert trouble not in err, err
