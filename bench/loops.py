"""Event loops by name: a fresh loop per run, closed the way ``asyncio.run()`` closes its own."""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, Optional, TypeVar

T = TypeVar("T")

LOOPS = ("asyncio", "uvloop")


def missing(name: str) -> Optional[str]:
    """Why the loop ``name`` cannot run here, or None when it can."""
    if name == "asyncio":
        return None
    if name == "uvloop":
        try:
            import uvloop  # noqa: F401
        except ImportError:
            return "uvloop is not installed (pip install uvloop)"
        return None
    return f"unknown loop {name!r} (known: {', '.join(LOOPS)})"


def new_loop(name: str) -> asyncio.AbstractEventLoop:
    """A new, unused loop of the named kind."""
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    if name == "asyncio":
        return asyncio.new_event_loop()
    raise ValueError(missing(name))


def run(main: Callable[[], Awaitable[T]], name: str) -> T:
    """Run ``main()`` on a new loop of the named kind, then cancel leftovers and close the loop.

    Not ``asyncio.run()``: choosing the loop there needs a policy (deprecated)
    or ``loop_factory`` (Python 3.12+), and the runner supports 3.9.
    """
    return run_on(main, new_loop(name))


def run_on(main: Callable[[], Awaitable[T]], loop: asyncio.AbstractEventLoop) -> T:
    """Run ``main()`` on ``loop``, a new one, then cancel leftovers and close it."""
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(main())
    finally:
        try:
            _cancel_leftovers(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


def _cancel_leftovers(loop: asyncio.AbstractEventLoop) -> None:
    # Monitors that have no stop (aiodebug's lag task) end here, as under asyncio.run().
    tasks = asyncio.all_tasks(loop)
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
