"""loopstat.contrib against the real frameworks: the app starts, serves, sends metrics, and shuts down cleanly."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import List, Sequence

import pytest

from tests.ports import free_port
from tests.receiver import Receiver
from tests.web_servers import aiohttp_app, check_serves_and_sends, start_server, stop_server

pytestmark = pytest.mark.e2e  # whole programs and real servers: run once, in the e2e env


def start(tmp_path: Path, source: str, ready: str, spawned: List[subprocess.Popen[str]]) -> subprocess.Popen[str]:
    """Run ``source`` under ``python -X dev`` (every warning shown) until it logs ``ready``."""
    path = tmp_path / "app.py"
    path.write_text(textwrap.dedent(source))
    return start_server([sys.executable, "-X", "dev", str(path)], ready, spawned)


def check_app(proc: subprocess.Popen[str], port: int, body: bytes, receiver: Receiver, troubles: Sequence[str]) -> None:
    """The app answers ``body``, sends ``web.lag``, and ends on Ctrl-C with none of ``troubles`` on its stderr."""
    check_serves_and_sends(port, body, receiver, "web.lag")
    err = stop_server(proc)
    for trouble in troubles:
        assert trouble not in err, err


def test_starlette_lifespan_runs_loopstat_with_the_app(
    tmp_path: Path, receiver: Receiver, spawned: List[subprocess.Popen[str]]
) -> None:
    port = free_port("tcp")
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
        spawned,
    )
    check_app(proc, port, b"ok True", receiver, ("Warning", "Traceback", "ERROR"))


def test_aiohttp_cleanup_ctx_runs_loopstat_with_the_app(
    tmp_path: Path, receiver: Receiver, spawned: List[subprocess.Popen[str]]
) -> None:
    port = free_port("tcp")
    proc = start(
        tmp_path,
        aiohttp_app(
            port,
            "str(request.app[MONITOR].running)",
            imports="from loopstat.contrib.aiohttp import MONITOR, cleanup_ctx",
            setup="app.cleanup_ctx.append("
            f'cleanup_ctx(host="127.0.0.1", port={receiver.port}, prefix="web", interval=0.05))',
        ),
        "Running on",
        spawned,
    )
    check_app(proc, port, b"True", receiver, ("Warning", "Traceback", "Error"))
