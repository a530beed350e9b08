"""Starlette and FastAPI: a lifespan that runs loopstat for as long as the app runs.

::

    from loopstat.contrib.starlette import lifespan
    app = FastAPI(lifespan=lifespan(prefix="myapp"))              # or Starlette(lifespan=...)
    app = FastAPI(lifespan=lifespan(my_lifespan, prefix="myapp")) # around an existing one

Only the ASGI lifespan protocol is used, so any framework that takes a
``lifespan(app)`` async context manager works, and Starlette need not be imported.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any, AsyncContextManager, AsyncIterator, Callable, Optional

import loopstat

#: What Starlette and FastAPI accept as ``lifespan=``: ``lifespan(app)`` gives an async context manager.
Lifespan = Callable[[Any], AsyncContextManager[Any]]


def lifespan(inner: Optional[Lifespan] = None, **install_kwargs: Any) -> Lifespan:
    """A lifespan that installs loopstat before ``inner`` starts and stops it after ``inner`` ends.

    ``install_kwargs`` go to ``loopstat.install()``. The monitor is kept as
    ``app.state.loopstat`` when the app has a ``state`` (Starlette, FastAPI).
    Whatever ``inner`` yields (Starlette's lifespan state) is yielded on.
    """

    @asynccontextmanager
    async def run(app: Any) -> AsyncIterator[Any]:
        async with loopstat.install(**install_kwargs) as monitor:
            state = getattr(app, "state", None)
            if state is not None:
                state.loopstat = monitor
            if inner is None:
                yield None
            else:
                async with inner(app) as inner_state:
                    yield inner_state

    return run
