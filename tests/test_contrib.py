"""loopstat.contrib against the real frameworks: the app starts, serves, sends metrics, and shuts down cleanly."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import List

from tests.receiver import Receiver
from tests.web_servers import free_tcp_port, http_get, start_server, stop_server


def start(tmp_path: Path, source: str, ready: str) -> subprocess.Popen[str]:
    """Run ``source`` under ``python -X dev`` (every warning shown) until it logs ``ready``."""
    path = tmp_path / "app.py"
    path.write_text(textwrap.dedent(source))
    return start_server([sys.executable, "-X", "dev", str(path)], ready)


def test_starlette_lifespan_runs_loopstat_with_the_app(
    tmp_path: Path, receiver: Receiver, spawned: List[subprocess.Popen[str]]
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
    spawned.append(proc)
    assert http_get(port) == b"ok True"
    receiver.settle(lambda lines: any(x.name == "web.lag" for x in lines))
    err = stop_server(proc)
    for trouble in ("Warning", "Traceback", "ERROR"):
        assert trouble not in err, err


def test_aiohttp_cleanup_ctx_runs_loopstat_with_the_app(
    tmp_path: Path, receiver: Receiver, spawned: List[subprocess.Popen[str]]
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
    spawned.append(proc)
    assert http_get(port) == b"True"
    receiver.settle(lambda lines: any(x.name == "web.lag" for x in lines))
    err = stop_server(proc)
    for trouble in ("Warning", "Traceback", "Error"):
        assert trouble not in err, err
