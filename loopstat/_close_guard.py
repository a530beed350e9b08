"""The close guard: ``loop.close()`` releases the loop's monitor first, so nothing is left open.

Code that runs a loop by hand often closes it without stopping the monitor;
without the guard, the socket would be left for the garbage collector. The
guard never runs the loop: the monitor releases everything at once.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable, Union

from loopstat._stand_in import ABSENT, ClassStandIn, StandIn, own_attribute

# The monitor's logger: the name users filter loopstat's warnings by.
log = logging.getLogger("loopstat.monitor")

Guard = Union[StandIn, ClassStandIn, None]


def guard(loop: asyncio.AbstractEventLoop, release: Callable[[], None]) -> Guard:
    """Make ``loop.close()`` call ``release`` first (while the loop is neither running nor closed).

    ``release`` must hold the monitor weakly. None on a loop that takes no guard.
    """
    inner = loop.close
    broken = False

    def close() -> None:
        nonlocal broken
        if not broken:
            try:
                if not loop.is_running() and not loop.is_closed():
                    release()
            except Exception as error:  # loopstat's fault: the loop closes as without it, and the guard stops
                broken = True
                log.warning("loopstat: releasing the monitor at loop.close() failed (%r); the loop closes", error)
        inner()

    # Stdlib loops keep their attributes compact: one more costs nothing. Other
    # loops (uvloop) keep a plain dict, and one more key there slows every
    # method call on the loop: they get a subclass instead, unless another
    # tool already set its own close on the instance.
    # None on a loop that takes neither: no guard there.
    if isinstance(loop, asyncio.BaseEventLoop) or own_attribute(loop, "close") is not ABSENT:
        return StandIn.try_set(loop, "close", close)
    return ClassStandIn.try_set(loop, "close", lambda _loop: close())


def unguard(guard: Guard) -> None:
    """Remove a guard; left in another tool's chain, it finds the monitor shut and only passes the call on."""
    if guard is not None:
        guard.remove()
