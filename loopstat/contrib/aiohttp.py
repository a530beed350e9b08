"""aiohttp: a ``cleanup_ctx`` entry that runs loopstat for as long as the app runs.

::

    from loopstat.contrib.aiohttp import cleanup_ctx, MONITOR
    app = web.Application()
    app.cleanup_ctx.append(cleanup_ctx(prefix="myapp"))
    ...
    app[MONITOR].lag      # the running monitor, from a handler
"""

from __future__ import annotations

from typing import Any, AsyncIterator, Callable

from aiohttp import web

import loopstat

#: Where the running monitor is kept on the application.
MONITOR = web.AppKey("loopstat", loopstat.Monitor)


def cleanup_ctx(**install_kwargs: Any) -> Callable[[web.Application], AsyncIterator[None]]:
    """A ``cleanup_ctx`` entry: installs loopstat on startup, stops it (flushing what is queued) on cleanup.

    ``install_kwargs`` go to ``loopstat.install()``.
    """

    async def run(app: web.Application) -> AsyncIterator[None]:
        async with loopstat.install(**install_kwargs) as monitor:
            app[MONITOR] = monitor
            yield

    return run
