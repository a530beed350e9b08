"""install(): the one entry point that starts a monitor on a loop, or returns the one running there."""

from __future__ import annotations

import asyncio
import logging
import os
import weakref
from typing import Literal, Optional, Union

from loopstat import _options, _registry
from loopstat.monitor import Monitor, running_loop
from loopstat.probes import frames as _frames
from loopstat.tags import TagsArg

# The monitor's logger: the name users filter loopstat's warnings by.
log = logging.getLogger("loopstat.monitor")

# install() asking a running monitor for other settings warns once for each of
# this many different settings, then no more (a caller that varies them per call).
ASKED_MAX = 8


def _target_loop(loop: object) -> asyncio.AbstractEventLoop:
    if loop is None:
        running = running_loop()
        if running is None:
            raise RuntimeError(
                "loopstat.install() needs an event loop: call it from code running on the loop "
                "(an async function or a startup hook), or pass loop=<the loop to watch>"
            )
        return running
    if not isinstance(loop, asyncio.AbstractEventLoop):
        raise ValueError(f"loop: expected an asyncio event loop, got {type(loop).__name__}")
    if loop.is_closed():
        raise RuntimeError("loopstat.install(): the event loop passed as loop= is closed")
    return loop


def install(
    host: Optional[str] = None,
    port: Optional[int] = None,
    *,
    socket_path: Union[str, os.PathLike[str], None] = None,
    prefix: Optional[str] = None,
    tags: TagsArg = None,
    interval: float = _options.DEFAULT_INTERVAL,
    flavor: Literal["dogstatsd", "statsd"] = "dogstatsd",
    loop: Optional[asyncio.AbstractEventLoop] = None,
    stall_threshold: Optional[float] = _options.DEFAULT_STALL_THRESHOLD,
    utilization: bool = True,
    executor: bool = True,
    gc: bool = False,
    profile: bool = False,
    worker_tag: bool = False,
    blocking_calls: Optional[bool] = None,
    distributions: bool = False,
    origin_detection: Optional[bool] = None,
    external_env: Optional[str] = None,
) -> Monitor:
    """Start monitoring a loop (the running one unless ``loop`` is given); return its monitor.

    Settings are validated here, once: a bad argument or environment variable
    raises ValueError naming it. Calling again on a monitored loop returns the
    running monitor.
    """
    # Every argument but the loop is a row of the option table, checked there by name.
    arguments = {name: value for name, value in locals().items() if name != "loop"}
    settings = _options.resolve(**arguments, environ=os.environ)
    if settings.profile and _frames.free_threaded():
        raise ValueError(
            "profile: not available on a free-threaded Python running without the GIL, where reading the loop "
            "thread's stack from another thread may crash the process; expected False"
        )
    return _install(settings, _target_loop(loop))


def install_lazily(settings: _options.Settings, loop: asyncio.AbstractEventLoop) -> Monitor:
    """``install()`` with resolved settings, for ``loopstat-run``: the monitor begins at its first sample.

    Until then it holds two of the loop's timers and nothing else: no socket,
    no probe, no thread, no close guard. A loop that ends sooner (``asyncio.run()``
    of a short coroutine) costs next to nothing.
    """
    return _install(settings, loop, lazy=True)


def _install(settings: _options.Settings, target: asyncio.AbstractEventLoop, lazy: bool = False) -> Monitor:
    """The running monitor of ``target``, or a new one started on it."""
    with _registry.lock:
        existing = _registry.find(target)
        if existing is not None and existing.running:
            if existing.settings != settings and settings not in existing._asked and len(existing._asked) < ASKED_MAX:
                existing._asked.add(settings)
                log.warning(
                    "loopstat: install() called again with different settings; the running monitor "
                    "is kept (await monitor.stop() first to change them)"
                )
            return existing
        monitor = Monitor(settings, target, lazy=lazy)
        _registry.monitors[target] = weakref.ref(monitor)
        if not lazy:
            monitor._guard_close()
    if running_loop() is target:
        monitor._start()
        return monitor
    # Not on the loop: it may start or stop in another thread at any moment,
    # and call_at() is not thread-safe. The loop arms the sampler when it next
    # runs; if it is closed first, the close guard ends the monitor.
    try:
        target.call_soon_threadsafe(monitor._start)
    except RuntimeError:  # closed meanwhile, by another thread
        monitor._shutdown()
        raise RuntimeError("loopstat.install(): the event loop passed as loop= is closed") from None
    return monitor
