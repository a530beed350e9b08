"""Monitor: schedules the probes on one loop and hands their readings to the sink."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import weakref
from types import TracebackType
from typing import List, Optional, Set, Tuple, Type

from loopstat import _close_guard, _fork, _notes, _options, _registry
from loopstat._clock import Clock
from loopstat._metrics import Line
from loopstat._probe_set import ProbeSet
from loopstat._rate_limit import RateLimit
from loopstat._transport import Connection
from loopstat.probes import Reading, Watched
from loopstat.probes import lag as _lag
from loopstat.probes import watchdog as _watchdog
from loopstat.probes.stall_capture import Stall
from loopstat.sink import Sink

log = logging.getLogger(__name__)


class Monitor:
    """Watches one event loop; its attributes hold the latest readings."""

    def __init__(
        self,
        settings: _options.Settings,
        loop: asyncio.AbstractEventLoop,
        clock: Optional[Clock] = None,
        lazy: bool = False,
        connection: Optional[Connection] = None,
    ) -> None:
        """``clock``: one time for the sampler, the sink's retries and the fault log (tests pass a fake one);
        by default ``perf_counter`` for lag and ``monotonic`` for the others. ``lazy``: begin at the first
        sample rather than at the loop's first turn (loopstat-run). ``connection``: what the lines go to
        instead of a socket, an object with ``send(bytes)`` and ``close()`` (tests read them there)."""
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
        # The profile's latest table, for top().
        self._top: List[Tuple[str, float]] = []
        self._loop = loop
        self._clock = clock
        self._connection = connection
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
        self._close_guard: _close_guard.Guard = None
        self._stopped = False
        self._shut = False
        self._pid = os.getpid()
        # A failing sample is logged at most once a minute; the rest are counted.
        self._fault_log: RateLimit[None] = RateLimit(clock=clock or time.monotonic)
        # Other settings a later install() asked for, each warned about once.
        self._asked: Set[_options.Settings] = set()
        if not lazy:
            self._prepare()
        # The probes running, each kept apart from the others.
        self._probes = ProbeSet(settings)
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
        return tuple(self._probes.running)

    def top(self) -> List[Tuple[str, float]]:
        """Where the loop's busy time went in the last profile window: (``file:line in function``, share of
        wall time), busiest first, ``other`` last; empty without ``profile=True`` or before a window ends."""
        return list(self._top)

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
        """Arm the sampler, open the socket, attach the probes (at the first sample if a Ctrl-C cut this off:
        ``loopstat/_ctrl_c.py``)."""
        if self._begun or self._stopped:
            return
        self._sampler.start()
        self._begun = True
        try:
            if self._lazy:
                self._prepare()
                with _registry.lock:  # as install() does: never guard a monitor that is stopping
                    if not self._stopped:
                        self._guard_close()
            if self._sink is not None:
                self._sink.start()
            self._attach_probes()
        except Exception:
            self._fault()

    def _prepare(self) -> None:
        """Make the sink, its finalizer and what the probes see: at install(), or when a lazy monitor begins."""
        sink = self._sink = Sink(self.settings, self._clock or time.monotonic, self._connection)
        # A loop dropped without close() is collected with the sampler's timers
        # and this monitor; the collector may finalize the socket before the
        # monitor's own cleanup (__del__) runs, and warn about it. Weak-reference
        # callbacks run before finalizers, so this one closes the socket first.
        # It holds the sink, never the loop.
        self._loop_gone = weakref.finalize(self._loop, sink.close)
        self._watched = Watched(self._loop, self.settings, self._keep, sink.send, self._fault)
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

        Each step runs even if one before it raised (a Ctrl-C can land anywhere:
        ``loopstat/_ctrl_c.py``); stopping and leaving the registry happen together, under its
        lock, so a new install() never wraps the close guard of a dying monitor.
        """
        with contextlib.ExitStack() as later:
            if self._sink is not None:
                later.callback(self._sink.close)
            if self._loop_gone is not None:
                later.callback(self._loop_gone.detach)
            later.callback(self._detach_probes)
            later.callback(self._sampler.stop)
            with _registry.lock:
                self._stopped = True
                self._shut = True
                _registry.forget(self)
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
        """Attach the probes, and name the loop in the log."""
        if self._watched is None:
            return
        self._probes.attach(self._watched)
        self._notes = _notes.started(self._loop, self.settings.interval, list(self._probes.running.values()))

    def _detach_probes(self) -> None:
        with contextlib.ExitStack() as later:
            if self._watched is not None:
                later.callback(self._watched.close)  # last: the probes may still use what it shares
            later.callback(self._probes.close)

    def _guard_close(self) -> None:
        """Make ``loop.close()`` release the monitor first (``loopstat/_close_guard.py``)."""
        monitor_ref = weakref.ref(self)

        def release() -> None:
            monitor = monitor_ref()
            if monitor is not None:
                monitor._on_loop_close()

        self._close_guard = _close_guard.guard(self._loop, release)

    def _unguard_close(self) -> None:
        guard, self._close_guard = self._close_guard, None
        _close_guard.unguard(guard)

    def _on_loop_close(self) -> None:
        self._shutdown()

    def _sample(self, sink: Sink) -> None:
        if self._watched is not None:
            self._watched.lag = self.lag
            self._watched.sample()
        lines: List[Line] = []
        self._keep(self._probes.read(lines))
        sink.send(lines)
        if self._notes is not None:
            self._notes.sampled(self.utilization, self.cpu)

    def _keep(self, reading: Reading) -> None:
        """Keep the values the probes read for the application; a key absent leaves its attribute as it was."""
        if "tasks" in reading:
            self.tasks = reading["tasks"]
        if "utilization" in reading:
            self.utilization = reading["utilization"]
        if "cpu" in reading:
            self.cpu = reading["cpu"]
        if "stalls" in reading:
            self.stalls = reading["stalls"]
        if "last_stall" in reading:
            self.last_stall = reading["last_stall"]
        if "own" in reading:
            self.own = reading["own"]
        if "top" in reading:
            self._top = reading["top"]

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
        if running_loop() is not self._loop:
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


# The stall watchdog and the registry join here, not as they are imported: their hooks keep the order they had.
_fork.join(before=_watchdog.before_fork, after_in_child=_watchdog.after_fork_in_child)
# The registry's after the sink's own hook (it joined first): closing a sink may take its lock.
_fork.join(after_in_child=_registry.after_fork_in_child)
# Every module of loopstat has joined by now: the one pair of fork hooks walks them.
_fork.register(os.environ)


def running_loop() -> Optional[asyncio.AbstractEventLoop]:
    """The loop running in this thread, or None."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
