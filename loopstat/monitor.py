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
from typing import Any, Callable, List, Literal, Optional, Set, Type

from loopstat import settings as _settings
from loopstat.probes import executor as _executor
from loopstat.probes import gc as _gc
from loopstat.probes import lag as _lag
from loopstat.probes import tasks as _tasks
from loopstat.probes.stalls import Stall, StallLog, StallProbe
from loopstat.probes.utilization import SelectorClock, Utilization
from loopstat.sink import Line, Sink
from loopstat.tags import TagsArg

log = logging.getLogger("loopstat")

# A failing sample is logged at most this often; the rest are counted.
FAULT_LOG_SECONDS = 60.0

# Values are weak: a running sampler keeps its monitor alive, and a loop that
# is dropped without being stopped must not be kept alive by the registry.
_monitors: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, weakref.ref[Monitor]] = weakref.WeakKeyDictionary()
_monitors_lock = threading.Lock()


class Monitor:
    """Watches one event loop; its attributes hold the latest readings."""

    def __init__(self, settings: _settings.Settings, loop: asyncio.AbstractEventLoop) -> None:
        self.settings = settings
        #: Milliseconds the latest sampler sleep overshot its deadline.
        self.lag = 0.0
        #: Tasks alive on the loop at the latest sample, loopstat's own excluded.
        self.tasks = 0
        #: Share of the last sampling interval the loop spent running callbacks,
        #: 0 to 1; None on loops whose waits loopstat cannot time (uvloop) or when off.
        self.utilization: Optional[float] = None
        #: Stalls longer than ``stall_threshold`` seen so far.
        self.stalls = 0
        #: The latest of them, for a health page.
        self.last_stall: Optional[Stall] = None
        self._loop = loop
        self._sink = Sink(settings)
        self._task: Optional[asyncio.Task[None]] = None
        self._close_guard: Optional[Callable[[], None]] = None
        self._stopped = False
        self._pid = os.getpid()
        self._fault_logged_at = -math.inf
        self._faults_held = 0
        self._clock: Optional[SelectorClock] = None
        self._utilization: Optional[Utilization] = None
        self._stall_probe: Optional[StallProbe] = None
        self._stall_log = StallLog()
        self._gc_pauses: Optional[_gc.Pauses] = None

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
        self._attach_probes()
        try:
            try:
                await sink.maintain()  # an address needs no lookup: connect before the first sample
            except Exception:
                self._fault()
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
            self._detach_probes()
            if _running_loop() is self._loop:
                await sink.close()
            else:
                sink.discard()

    def _attach_probes(self) -> None:
        settings = self.settings
        if settings.utilization or settings.stall_threshold is not None:
            self._clock = SelectorClock.attach(self._loop)
        if settings.utilization and self._clock is not None:
            self._utilization = Utilization(self._clock)
        if settings.stall_threshold is not None:
            self._stall_probe = StallProbe(self._loop, settings.stall_threshold, self._clock, self._on_stall)
        if settings.gc:
            self._gc_pauses = _gc.watch()

    def _detach_probes(self) -> None:
        if self._stall_probe is not None:
            self._stall_probe.close()
            self._stall_probe = None
        if self._clock is not None:
            self._clock.detach()
            self._clock = None
        self._utilization = None
        if self._gc_pauses is not None:
            _gc.unwatch(self._gc_pauses)
            self._gc_pauses = None

    def _on_stall(self, stall: Stall) -> None:
        try:
            self.stalls += 1
            self.last_stall = stall
            self._stall_log.report(stall)
            self._sink.send([("stalls", "c", 1), ("stall", "ms", round(stall.duration, 3))])
        except Exception:
            self._fault()

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
        lines: List[Line] = [("lag", "g", value), ("lag", "ms", value), ("tasks", "g", tasks)]
        if self._utilization is not None:
            self.utilization = self._utilization.read()
            lines.append(("utilization", "g", round(self.utilization, 4)))
        if self.settings.executor:
            load = _executor.load(self._loop)
            if load is not None:
                lines.extend((("executor.queue", "g", load[0]), ("executor.threads", "g", load[1])))
        if self._gc_pauses is not None:
            pause, collections = self._gc_pauses.take()
            lines.extend((("gc.pause", "g", round(pause, 3)), ("gc.collections", "c", collections)))
        self._sink.send(lines)

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
    flavor: Literal["dogstatsd", "statsd"] = "dogstatsd",
    loop: Optional[asyncio.AbstractEventLoop] = None,
    stall_threshold: Optional[float] = _settings.DEFAULT_STALL_THRESHOLD,
    utilization: bool = True,
    executor: bool = True,
    gc: bool = False,
) -> Monitor:
    """Start monitoring a loop (the running one unless ``loop`` is given); return its monitor.

    Settings are validated here, once: a bad argument or environment variable
    raises ValueError naming it. Calling again on a monitored loop returns the
    running monitor.
    """
    settings = _settings.resolve(
        host,
        port,
        prefix=prefix,
        tags=tags,
        interval=interval,
        flavor=flavor,
        stall_threshold=stall_threshold,
        utilization=utilization,
        executor=executor,
        gc=gc,
        environ=os.environ,
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
