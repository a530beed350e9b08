"""Monitor: schedules the probes on one loop and hands their readings to the sink."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import threading
import time
import weakref
from types import TracebackType
from typing import Any, Callable, Optional, Set, Type

from loopstat import settings as _settings
from loopstat.probes import lag as _lag
from loopstat.probes import tasks as _tasks
from loopstat.sink import Sink
from loopstat.tags import TagsArg

log = logging.getLogger("loopstat")

# A failing sample is logged at most this often; the rest are counted.
FAULT_LOG_SECONDS = 60.0

# Values are weak: a running sampler keeps its monitor alive, and a loop that
# is dropped without being stopped must not be kept alive by the registry.
_monitors: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, weakref.ref[Monitor]] = weakref.WeakKeyDictionary()
_monitors_lock = threading.Lock()


class Monitor:
    """Watches one event loop: ``lag`` and ``tasks`` hold the latest sample."""

    def __init__(self, settings: _settings.Settings, loop: asyncio.AbstractEventLoop) -> None:
        self.settings = settings
        #: Milliseconds the latest sampler sleep overshot its deadline.
        self.lag = 0.0
        #: Tasks alive on the loop at the latest sample, loopstat's own excluded.
        self.tasks = 0
        self._loop = loop
        self._sink = Sink(settings)
        self._task: Optional[asyncio.Task[None]] = None
        self._close_guard: Optional[Callable[[], None]] = None
        self._stopped = False
        self._pid = os.getpid()
        self._fault_logged_at = -math.inf
        self._faults_held = 0

    def __repr__(self) -> str:
        state = "stopped" if self._stopped else "running"
        return f"<loopstat.Monitor {state} to {self.settings.address} lag={self.lag:.3f}ms tasks={self.tasks}>"

    @property
    def running(self) -> bool:
        """True until ``stop()`` is called or the loop shuts the sampler down."""
        return not self._stopped

    def _start(self) -> None:
        if not self._stopped:
            self._task = self._loop.create_task(self._run())
            # A loop closed without cancelling its tasks drops the sampler;
            # that is the application's choice, not an error worth a log line.
            self._task._log_destroy_pending = False  # type: ignore[attr-defined]

    async def _run(self) -> None:
        sink = self._sink
        interval = self.settings.interval
        sink.start()
        self._guard_close()
        try:
            while True:
                lag = await _lag.overshoot(interval)
                if self._pid != os.getpid():
                    return  # inherited by a forked child: the parent's, not ours
                try:
                    await sink.maintain()
                    self._sample(lag)
                except Exception:
                    self._fault()
        finally:
            # Reached by stop(), by asyncio.run() cancelling leftover tasks, and
            # by the garbage collector closing the sampler of a dropped loop.
            self._stopped = True
            _forget(self)
            self._unguard_close()
            if _running_loop() is self._loop:
                await sink.close()
            else:
                sink.discard()

    def _guard_close(self) -> None:
        """Make ``loop.close()`` stop the monitor first, so nothing queued is lost or left open.

        Code that runs a loop by hand often closes it without cancelling its
        tasks; without this, the socket would be left for the garbage collector.
        """
        loop = self._loop
        original = loop.close
        monitor_ref = weakref.ref(self)

        def close() -> None:
            monitor = monitor_ref()
            if monitor is not None and monitor.running and not loop.is_running() and not loop.is_closed():
                try:
                    loop.run_until_complete(monitor.stop())
                except Exception as exc:  # e.g. another loop runs in this thread
                    log.debug("loopstat: could not stop the monitor before the loop closed: %r", exc)
            original()

        try:
            loop.close = close  # type: ignore[method-assign]
        except AttributeError:  # a loop class without instance attributes
            return
        self._close_guard = close

    def _unguard_close(self) -> None:
        guard, self._close_guard = self._close_guard, None
        if guard is not None and getattr(self._loop, "__dict__", {}).get("close") is guard:
            del self._loop.close

    def _own_tasks(self) -> Set[asyncio.Future[Any]]:
        own = self._sink.own_tasks()
        if self._task is not None:
            own.add(self._task)
        return own

    def _sample(self, lag: float) -> None:
        tasks = _tasks.alive(self._loop, self._own_tasks())
        self.lag = lag
        self.tasks = tasks
        # Microseconds are plenty and keep the datagrams short.
        value = round(lag, 3)
        self._sink.send([("lag", "g", value), ("lag", "ms", value), ("tasks", "g", tasks)])

    def _fault(self) -> None:
        now = time.monotonic()
        if now - self._fault_logged_at < FAULT_LOG_SECONDS:
            self._faults_held += 1
            return
        held = f" ({self._faults_held} more since the last report)" if self._faults_held else ""
        log.exception("loopstat: a sample failed%s; sampling goes on", held)
        self._fault_logged_at = now
        self._faults_held = 0

    async def stop(self) -> None:
        """Stop sampling, flush what is queued and close the socket; safe to call twice."""
        self._stopped = True
        _forget(self)
        task = self._task
        if task is None or task.done():
            return
        if asyncio.get_running_loop() is not self._loop:
            raise RuntimeError("Monitor.stop() must be awaited on the event loop the monitor watches")
        task.cancel()
        await asyncio.wait([task])
        if not task.cancelled() and task.exception() is not None:
            log.warning("loopstat: closing the monitor failed: %r", task.exception())

    async def __aenter__(self) -> Monitor:
        return self

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        await self.stop()


def _forget(monitor: Monitor) -> None:
    with _monitors_lock:
        ref = _monitors.get(monitor._loop)
        if ref is not None and ref() is monitor:
            del _monitors[monitor._loop]


def _after_fork_in_child() -> None:
    # The child gets copies of the parent's monitors; they must neither send
    # through the parent's socket nor stop a new install() on their loop.
    global _monitors_lock
    _monitors_lock = threading.Lock()  # another thread may have held it at fork
    for ref in list(_monitors.values()):
        monitor = ref()
        if monitor is not None:
            monitor._stopped = True
            monitor._sink.abandon()
    _monitors.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _running_loop() -> Optional[asyncio.AbstractEventLoop]:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _target_loop(loop: object) -> asyncio.AbstractEventLoop:
    if loop is None:
        running = _running_loop()
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
    prefix: Optional[str] = None,
    tags: TagsArg = None,
    interval: float = _settings.DEFAULT_INTERVAL,
    flavor: str = "dogstatsd",
    loop: Optional[asyncio.AbstractEventLoop] = None,
) -> Monitor:
    """Start monitoring a loop (the running one unless ``loop`` is given); return its monitor.

    Settings are validated here, once: a bad argument or environment variable
    raises ValueError naming it. Calling again on a monitored loop returns the
    running monitor.
    """
    settings = _settings.resolve(
        host, port, prefix=prefix, tags=tags, interval=interval, flavor=flavor, environ=os.environ
    )
    target = _target_loop(loop)
    with _monitors_lock:
        ref = _monitors.get(target)
        existing = ref() if ref is not None else None
        if existing is not None and existing.running:
            if existing.settings != settings:
                log.warning(
                    "loopstat: install() called again with different settings; the running monitor "
                    "is kept (await monitor.stop() first to change them)"
                )
            return existing
        monitor = Monitor(settings, target)
        _monitors[target] = weakref.ref(monitor)
    if _running_loop() is target or not target.is_running():
        monitor._start()
    else:
        # create_task() is not thread-safe; let the loop's own thread do it.
        target.call_soon_threadsafe(monitor._start)
    return monitor
