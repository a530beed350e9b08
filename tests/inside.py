"""The one place tests reach inside a monitor or the monitor module, for what the public API rightly does not offer."""

from __future__ import annotations

import asyncio
from typing import Callable, List, Optional, Tuple

import pytest

import loopstat
from loopstat import Stall, _probe_set, _registry
from loopstat._metrics import Line
from loopstat._options import Settings
from loopstat.probes import Attach, Watched, watchdog
from loopstat.probes.selector_clock import SelectorClock
from loopstat.probes.stall_watch import StallWatch
from loopstat.probes.stalls import Stalls


def send_lines(monitor: loopstat.Monitor, lines: List[Line]) -> None:
    """Hand ``(name, type, value)`` lines to the monitor's sink, as a probe would."""
    sink = monitor._sink
    assert sink is not None, "the monitor has not begun"
    sink.send(lines)


def stall_watch(monitor: loopstat.Monitor) -> Optional[StallWatch]:
    """The watch the stall watchdog keeps on the monitor's loop, or None when stalls are off."""
    return next((probe.watch for probe in monitor._probes.running.values() if isinstance(probe, Stalls)), None)


def watchdog_looks() -> int:
    """How many times the stall watchdog thread has looked at the loops (each one a wake-up)."""
    return watchdog.current.looks


def the_watchdog() -> watchdog.Watchdog:
    """The stall watchdog of this process (a forked child gets a new one)."""
    return watchdog.current


def next_sample(monitor: loopstat.Monitor) -> float:
    """``loop.time()`` when the monitor's sampler is next due to wake its loop."""
    return monitor._sampler.next_sample


def attached_probes() -> List[Tuple[str, str]]:
    """Each probe the monitor attaches, in its order: the name it goes by and the module its attach() is in."""
    return [(name, attach.__module__) for name, attach in _probe_set.ATTACH]


def installed_monitor(loop: asyncio.AbstractEventLoop) -> Optional[loopstat.Monitor]:
    """The monitor ``install()`` keeps for ``loop``, if any."""
    with _registry.lock:
        return _registry.find(loop)


def start(monitor: loopstat.Monitor) -> None:
    """Start a monitor built by hand (as ``install()`` does): it samples from the loop's next turn."""
    monitor._start()


def holds(monitor: loopstat.Monitor) -> Tuple[bool, bool]:
    """Whether a monitor holds a sink (its socket) and a close guard on its loop."""
    return monitor._sink is not None, monitor._close_guard is not None


def guard_close(monitor: loopstat.Monitor) -> None:
    """Make ``loop.close()`` release a monitor built by hand, as ``install()`` does for its own."""
    monitor._guard_close()


def attach_instead(monkeypatch: pytest.MonkeyPatch, name: str, attach: Attach) -> None:
    """Make monitors started from now on attach the probe ``name`` with ``attach`` (undone with ``monkeypatch``)."""
    probes = tuple((n, attach if n == name else a) for n, a in _probe_set.ATTACH)
    monkeypatch.setattr(_probe_set, "ATTACH", probes)


def stopped_metrics(probe: str, settings: Settings) -> str:
    """The metrics the warning about a lost probe names, as they go on the wire."""
    return _probe_set.stopped_metrics(probe, settings)


def blocked_seconds(monitor: loopstat.Monitor) -> float:
    """Seconds the loop's thread spent in the blocking calls the monitor watches, so far."""
    return _watched(monitor).blocked


def selector_clock(monitor: loopstat.Monitor) -> Optional[SelectorClock]:
    """The selector clock the monitor's probes share; None on loops without a Python selector."""
    return _watched(monitor).clock()


def _watched(monitor: loopstat.Monitor) -> Watched:
    """The loop as the monitor's probes see it, made when the monitor begins."""
    found = monitor._watched
    assert found is not None, "the monitor has not begun"
    return found


def on_loop_close_instead(monkeypatch: pytest.MonkeyPatch, monitor: loopstat.Monitor, then: Callable[[], None]) -> None:
    """Make the monitor's close guard call ``then`` where it would release the monitor (undone with ``monkeypatch``)."""
    monkeypatch.setattr(monitor, "_on_loop_close", then)


def shutdown(monitor: loopstat.Monitor) -> None:
    """Release everything the monitor holds at once, as its close guard does; for a loop closed past the guard."""
    monitor._shutdown()


def recorded_stalls(monitor: loopstat.Monitor) -> List[Stall]:
    """Every stall the monitor reports from now on, in order (``last_stall`` keeps only the latest)."""
    watch = stall_watch(monitor)
    assert watch is not None, "no stall watch: stalls are off, or the monitor has not started yet"
    seen: List[Stall] = []
    report = watch._on_stall

    def recording(stall: Stall) -> None:
        seen.append(stall)
        report(stall)

    watch._on_stall = recording
    return seen


class _LagRecording(loopstat.Monitor):
    """A monitor that keeps every lag its sampler sets, not only the latest."""

    lags_seen: List[float]

    @property
    def lag(self) -> float:
        return float(self.__dict__["lag"])

    @lag.setter
    def lag(self, value: float) -> None:
        self.__dict__["lag"] = value
        self.lags_seen.append(value)


def recorded_lags(monitor: loopstat.Monitor) -> List[float]:
    """Every lag the monitor's sampler sets from now on (the next sample may overwrite ``monitor.lag`` at once)."""
    assert type(monitor) is loopstat.Monitor
    seen: List[float] = []
    monitor.__dict__["lags_seen"] = seen
    monitor.__class__ = _LagRecording
    return seen
