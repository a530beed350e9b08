"""Monitor: schedules the probes on one loop and hands their readings to the sink."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
import weakref
from types import TracebackType
from typing import Dict, List, Literal, Optional, Set, Tuple, Type, Union

from loopstat import _fork, _notes
from loopstat import settings as _settings
from loopstat._clock import Clock
from loopstat._metrics import METRICS, Line
from loopstat._rate_limit import RateLimit
from loopstat._stand_in import ABSENT, ClassStandIn, StandIn, own_attribute
from loopstat.probes import Attach, Probe, Watched
from loopstat.probes import blocking as _blocking
from loopstat.probes import cpu as _cpu
from loopstat.probes import executor as _executor
from loopstat.probes import frames as _frames
from loopstat.probes import gc as _gc
from loopstat.probes import iteration as _iteration
from loopstat.probes import lag as _lag
from loopstat.probes import profile as _profile
from loopstat.probes import stalls as _stalls
from loopstat.probes import tasks as _tasks
from loopstat.probes import throttled as _throttled
from loopstat.probes import utilization as _utilization
from loopstat.probes.stalls import Stall
from loopstat.sink import Sink
from loopstat.tags import TagsArg

log = logging.getLogger(__name__)

# install() asking a running monitor for other settings warns once for each of
# this many different settings, then no more (a caller that varies them per call).
ASKED_MAX = 8

# A probe whose read fails this many samples in a row is closed; one or two failures may be passing.
READ_FAILURES = 3
# The exception's text in the warning about a lost probe is cut to this many characters.
REASON_CHARS = 200

# Each probe with its module's attach(), in the metric catalogue's order (a test checks they agree).
_ATTACH: Tuple[Tuple[str, Attach], ...] = (
    ("lag", _lag.attach),
    ("tasks", _tasks.attach),
    ("utilization", _utilization.attach),
    ("iteration", _iteration.attach),
    ("cpu", _cpu.attach),
    ("throttled", _throttled.attach),
    ("stalls", _stalls.attach),
    ("executor", _executor.attach),
    ("gc", _gc.attach),
    ("blocking", _blocking.attach),
    ("profile", _profile.attach),
)

# Values are weak: the sampler's timers keep a running monitor alive, and a loop that
# is dropped without being stopped must not be kept alive by the registry.
_monitors: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, weakref.ref[Monitor]] = weakref.WeakKeyDictionary()
# Reentrant: the collector may end a dropped loop's monitor (which forgets it)
# while this thread holds the lock in install().
_monitors_lock = threading.RLock()


class Monitor:
    """Watches one event loop; its attributes hold the latest readings."""

    def __init__(
        self,
        settings: _settings.Settings,
        loop: asyncio.AbstractEventLoop,
        clock: Optional[Clock] = None,
        lazy: bool = False,
    ) -> None:
        """``clock``: one time for the sampler, the sink's retries and the fault log (tests pass a fake one);
        by default ``perf_counter`` for lag and ``monotonic`` for the others. ``lazy``: begin at the first
        sample rather than at the loop's first turn (loopstat-run)."""
        self.settings = settings
        #: Milliseconds the latest sampler timer fired after its deadline.
        self.lag = 0.0
        #: Tasks alive on the loop at the latest sample (loopstat runs none).
        self.tasks = 0
        #: Share of the last sampling interval the loop spent running callbacks,
        #: 0 to 1; None before the first sample or when off.
        self.utilization: Optional[float] = None
        #: Share of one core the loop's thread used in the last sampling interval, 0 to 1.
        self.cpu: Optional[float] = None
        #: Stalls longer than ``stall_threshold`` seen so far.
        self.stalls = 0
        #: The latest of them, for a health page.
        self.last_stall: Optional[Stall] = None
        #: Share of the last profile window the loop spent in loopstat's own code (its samples
        #: and sends), counted apart from ``top()``; None without ``profile=True`` or before a window ends.
        self.own: Optional[float] = None
        self._loop = loop
        self._clock = clock
        # The sink, what the probes see and the finalizer that closes the socket: made at
        # once, or for a lazy monitor when it begins (a loop that ends sooner pays for none).
        self._sink: Optional[Sink] = None
        self._watched: Optional[Watched] = None
        self._loop_gone: Optional[weakref.finalize[[], asyncio.AbstractEventLoop]] = None
        self._sampler = _lag.Sampler(loop, settings.interval, self._on_time, clock or time.perf_counter)
        # A lazy monitor gets its close guard when it begins too: there is nothing to release before.
        self._lazy = lazy
        # The probes were attached (at the first turn of the loop, or else at the first sample).
        self._begun = False
        self._close_guard: Union[StandIn, ClassStandIn, None] = None
        self._stopped = False
        self._shut = False
        self._pid = os.getpid()
        # A failing sample is logged at most once a minute; the rest are counted.
        self._fault_log: RateLimit[None] = RateLimit(clock=clock or time.monotonic)
        # Other settings a later install() asked for, each warned about once.
        self._asked: Set[_settings.Settings] = set()
        if not lazy:
            self._prepare()
        # The probes running, by name, in the catalogue's order; and how many reads in a row each one failed.
        self._probes: Dict[str, Probe] = {}
        self._failing: Dict[str, int] = {}
        # Names the loop in the log at start, and hints at blocking calls (loopstat/_notes.py).
        self._notes: Optional[_notes.Notes] = None

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<loopstat.Monitor {state} to {self.settings.address} lag={self.lag:.3f}ms tasks={self.tasks}>"

    @property
    def running(self) -> bool:
        """True until ``stop()`` is called or the loop closes."""
        return not self._stopped and not self._loop.is_closed()

    @property
    def probes(self) -> Tuple[str, ...]:
        """The probes running, by the names of ``loopstat/probes`` (``("lag", "tasks", …)``): not those turned off,
        nor one that failed, which logs a warning; empty until the sampler first runs and after ``stop()``."""
        return tuple(self._probes)

    def top(self) -> List[Tuple[str, float]]:
        """Where the loop's busy time went in the last profile window: (``file:line in function``, share of
        wall time), busiest first, ``other`` last; empty without ``profile=True`` or before a window ends."""
        return [] if self._watched is None else list(self._watched.top)

    @property
    def sent(self) -> int:
        """Metric lines sent in datagrams the socket accepted (not proof that the agent got them)."""
        return 0 if self._sink is None else self._sink.sent

    @property
    def dropped(self) -> int:
        """Metric lines not sent: no connection yet, the agent refusing, a full socket buffer, or stopped."""
        return 0 if self._sink is None else self._sink.dropped

    @property
    def errors(self) -> int:
        """Sends the socket refused; an absent agent refuses about every other datagram."""
        return 0 if self._sink is None else self._sink.errors

    def _start(self) -> None:
        """Start sampling at the loop's next turn; runs on the loop's thread.

        One callback, as one task was: in debug mode (``python -X dev``) each
        handle created records the stack, a cost the caller's step would pay.
        """
        if self._stopped or self._loop.is_closed():
            return
        if self._lazy:
            self._sampler.start()  # two timers; the first begins the monitor
        else:
            self._loop.call_soon(self._begin)

    def _begin(self) -> None:
        """Arm the sampler, open the socket, attach the probes (at the first sample if a signal cut this off)."""
        if self._begun or self._stopped:
            return
        self._sampler.start()
        self._begun = True
        try:
            if self._lazy:
                self._prepare()
                with _monitors_lock:  # as install() does: never guard a monitor that is stopping
                    if not self._stopped:
                        self._guard_close()
            if self._sink is not None:
                self._sink.start()
            self._attach_probes()
        except Exception:
            self._fault()

    def _prepare(self) -> None:
        """Make the sink, its finalizer and what the probes see: at install(), or when a lazy monitor begins."""
        sink = self._sink = Sink(self.settings, self._clock or time.monotonic)
        # A loop dropped without close() is collected with the sampler's timers
        # and this monitor; the collector may finalize the socket before the
        # monitor's own cleanup (__del__) runs, and warn about it. Weak-reference
        # callbacks run before finalizers, so this one closes the socket first.
        # It holds the sink, never the loop.
        self._loop_gone = weakref.finalize(self._loop, sink.close)
        self._watched = Watched(self._loop, self.settings, self, sink.send, self._fault)
        self._watched.sampler = self._sampler

    def _on_time(self, lag: float) -> None:
        """A sampler timer fired ``lag`` milliseconds late: take a sample."""
        if self._stopped or self._pid != os.getpid():
            # Stopped meanwhile, or a forked child's copy of the loop: the parent's monitor, not ours.
            self._sampler.stop()
            return
        if not self._begun:
            self._begin()  # the probes start measuring now; they have nothing to tell yet
            return
        sink = self._sink
        if sink is None:  # it could not be made: _begin() said so
            return
        try:
            sink.maintain()
            self.lag = lag
            self._sample(sink)
        except Exception:
            self._fault()

    def _shutdown(self) -> None:
        """Release everything now (close guard, probes, socket); never waits, safe to repeat, on any path.

        Each step runs even if one before it raised (a KeyboardInterrupt can land
        anywhere); stopping and leaving the registry happen together, under its
        lock, so a new install() never wraps the close guard of a dying monitor.
        """
        with contextlib.ExitStack() as later:
            if self._sink is not None:
                later.callback(self._sink.close)
            if self._loop_gone is not None:
                later.callback(self._loop_gone.detach)
            later.callback(self._detach_probes)
            later.callback(self._sampler.stop)
            with _monitors_lock:
                self._stopped = True
                self._shut = True
                _forget(self)
                self._unguard_close()

    def __del__(self) -> None:
        # A loop dropped without close() is collected with this monitor (its
        # timers hold it): release what the probes took (hooks, stand-ins).
        # At interpreter exit even module globals may be gone: whatever fails, nothing is said.
        try:
            # Never begun and unguarded (loopstat-run's short loops): it holds nothing to release.
            if not self._shut and (self._begun or self._close_guard is not None):
                self._shutdown()
        except Exception:
            pass

    def _attach_probes(self) -> None:
        """Attach each probe; one that fails is left out, with a warning, and the others go on."""
        watched = self._watched
        if watched is None:
            return
        for name, attach in _ATTACH:
            try:
                probe = attach(watched)
            except Exception as exc:
                _lost(name, self.settings, exc)
                continue
            if probe is not None:
                self._probes[name] = probe
        self._notes = _notes.started(self._loop, self.settings.interval, list(self._probes.values()))

    def _detach_probes(self) -> None:
        probes, self._probes = self._probes, {}
        self._failing.clear()
        with contextlib.ExitStack() as later:
            if self._watched is not None:
                later.callback(self._watched.close)  # last: the probes may still use what it shares
            for name, probe in reversed(probes.items()):
                later.callback(_close, name, probe)

    def _read_failed(self, name: str, exc: Exception) -> None:
        """A probe's read raised: after READ_FAILURES in a row it is closed, with a warning."""
        failures = self._failing[name] = self._failing.get(name, 0) + 1
        if failures < READ_FAILURES:
            log.debug("loopstat: the %s probe failed to read (%d in a row)", name, failures, exc_info=exc)
            return
        del self._failing[name]
        _close(name, self._probes.pop(name))
        _lost(name, self.settings, exc, failures)

    def _guard_close(self) -> None:
        """Make ``loop.close()`` release the monitor first, so nothing is left open.

        Code that runs a loop by hand often closes it without stopping the
        monitor; without this, the socket would be left for the garbage
        collector. The guard never runs the loop: it releases everything at once.
        """
        loop = self._loop
        inner = loop.close
        monitor_ref = weakref.ref(self)
        broken = False

        def close() -> None:
            nonlocal broken
            if not broken:
                try:
                    monitor = monitor_ref()
                    if monitor is not None and not loop.is_running() and not loop.is_closed():
                        monitor._on_loop_close()
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
            self._close_guard = StandIn.try_set(loop, "close", close)
        else:
            self._close_guard = ClassStandIn.try_set(loop, "close", lambda _loop: close())

    def _unguard_close(self) -> None:
        # Left in another tool's chain, the guard finds the monitor shut and only passes the call on.
        guard, self._close_guard = self._close_guard, None
        if guard is not None:
            guard.remove()

    def _on_loop_close(self) -> None:
        self._shutdown()

    def _sample(self, sink: Sink) -> None:
        if self._watched is not None:
            self._watched.sample()
        lines: List[Line] = []
        failed: List[Tuple[str, Exception]] = []
        for name, probe in self._probes.items():
            start = len(lines)
            try:
                probe.read(lines)
            except Exception as exc:
                del lines[start:]  # what a failed read added may be half of its lines
                failed.append((name, exc))
            else:
                if self._failing:
                    self._failing.pop(name, None)
        for name, error in failed:
            self._read_failed(name, error)
        sink.send(lines)
        if self._notes is not None:
            self._notes.sampled(self.utilization, self.cpu)

    def _fault(self) -> None:
        held = self._fault_log.due(None)
        if held is None:
            return
        more = f" ({held} more since the last report)" if held else ""
        log.exception("loopstat: a sample failed%s; sampling goes on", more)

    async def stop(self) -> None:
        """Stop sampling and close the socket; safe to call twice, or several times at once.

        Everything is released at once: there is nothing to wait for.
        """
        if self._shut:
            return
        if _running_loop() is not self._loop:
            raise RuntimeError("Monitor.stop() must be awaited on the event loop the monitor watches")
        self._shutdown()

    async def __aenter__(self) -> Monitor:
        return self

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        await self.stop()


def _stopped_metrics(probe: str, settings: _settings.Settings) -> str:
    """The metrics a probe sends, from the catalogue, named as they go on the wire, with their verb."""
    on = settings.distributions
    wire = (m.distribution if on and m.distribution else m.name for m in METRICS if m.probe == probe)
    names = list(dict.fromkeys(f"{settings.prefix}.{name}" if settings.prefix else name for name in wire))
    return f"{names[0]} is" if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]} are"


def _lost(probe: str, settings: _settings.Settings, exc: Exception, failures: int = 0) -> None:
    """The one warning about a probe left out at start, or closed after ``failures`` failed reads."""
    reason = f"{type(exc).__name__}: {exc}"
    if len(reason) > REASON_CHARS:
        reason = reason[: REASON_CHARS - 3] + "..."
    metrics = _stopped_metrics(probe, settings)
    if failures:
        log.warning(
            "loopstat: the %s probe failed %d samples in a row (%s) and is closed: %s no longer sent; "
            "the other metrics go on",
            probe,
            failures,
            reason,
            metrics,
        )
    else:
        log.warning(
            "loopstat: the %s probe could not start (%s): %s not sent; the other metrics are", probe, reason, metrics
        )
    log.debug("loopstat: how the %s probe failed", probe, exc_info=exc)


def _close(name: str, probe: Probe) -> None:
    # A probe's close() must not raise; if one does, the rest of the shutdown still runs.
    try:
        probe.close()
    except Exception:
        log.debug("loopstat: the %s probe failed to close", name, exc_info=True)


def _forget(monitor: Monitor) -> None:
    with _monitors_lock:
        ref = _monitors.get(monitor._loop)
        if ref is not None and ref() is monitor:
            del _monitors[monitor._loop]


def _after_fork_in_child() -> None:
    # The child gets copies of the parent's monitors; they must neither send
    # through the parent's socket nor stop a new install() on their loop.
    # Runs after the sink's own hook (it joined first): closing a sink below may take its lock.
    global _monitors_lock
    _monitors_lock = threading.RLock()  # another thread may have held it at fork
    for ref in list(_monitors.values()):
        monitor = ref()
        if monitor is not None:
            monitor._stopped = True
            monitor._shut = True
            if monitor._sink is not None:
                monitor._sink.abandon()
    _monitors.clear()


# The stall probe's module joins through here until it joins itself.
_fork.join(before=_stalls.before_fork, after_in_child=_stalls.after_fork_in_child)
_fork.join(after_in_child=_after_fork_in_child)
# Every module of loopstat has joined by now: the one pair of fork hooks walks them.
_fork.register(os.environ)


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
    socket_path: Union[str, os.PathLike[str], None] = None,
    prefix: Optional[str] = None,
    tags: TagsArg = None,
    interval: float = _settings.DEFAULT_INTERVAL,
    flavor: Literal["dogstatsd", "statsd"] = "dogstatsd",
    loop: Optional[asyncio.AbstractEventLoop] = None,
    stall_threshold: Optional[float] = _settings.DEFAULT_STALL_THRESHOLD,
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
    settings = _settings.resolve(**arguments, environ=os.environ)
    if settings.profile and _frames.free_threaded():
        raise ValueError(
            "profile: not available on a free-threaded Python running without the GIL, where reading the loop "
            "thread's stack from another thread may crash the process; expected False"
        )
    return _install(settings, _target_loop(loop))


def install_lazily(settings: _settings.Settings, loop: asyncio.AbstractEventLoop) -> Monitor:
    """``install()`` with resolved settings, for ``loopstat-run``: the monitor begins at its first sample.

    Until then it holds two of the loop's timers and nothing else: no socket,
    no probe, no thread, no close guard. A loop that ends sooner (``asyncio.run()``
    of a short coroutine) costs next to nothing.
    """
    return _install(settings, loop, lazy=True)


def _install(settings: _settings.Settings, target: asyncio.AbstractEventLoop, lazy: bool = False) -> Monitor:
    """The running monitor of ``target``, or a new one started on it."""
    with _monitors_lock:
        ref = _monitors.get(target)
        existing = ref() if ref is not None else None
        if existing is not None and existing.running:
            if existing.settings != settings and settings not in existing._asked and len(existing._asked) < ASKED_MAX:
                existing._asked.add(settings)
                log.warning(
                    "loopstat: install() called again with different settings; the running monitor "
                    "is kept (await monitor.stop() first to change them)"
                )
            return existing
        monitor = Monitor(settings, target, lazy=lazy)
        _monitors[target] = weakref.ref(monitor)
        if not lazy:
            monitor._guard_close()
    if _running_loop() is target:
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
