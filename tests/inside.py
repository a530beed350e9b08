"""The one place tests reach inside a monitor, for what the public API rightly does not offer."""

from __future__ import annotations

from typing import List, Optional, Tuple

import loopstat
from loopstat import monitor as _monitor
from loopstat._metrics import Line
from loopstat.probes import stalls
from loopstat.probes.stalls import StallProbe, Stalls


def send_lines(monitor: loopstat.Monitor, lines: List[Line]) -> None:
    """Hand ``(name, type, value)`` lines to the monitor's sink, as a probe would."""
    monitor._sink.send(lines)


def stall_watch(monitor: loopstat.Monitor) -> Optional[StallProbe]:
    """The watch the stall watchdog keeps on the monitor's loop, or None when stalls are off."""
    return next((probe.watch for probe in monitor._probes.values() if isinstance(probe, Stalls)), None)


def watchdog_looks() -> int:
    """How many times the stall watchdog thread has looked at the loops (each one a wake-up)."""
    return stalls._watchdog.looks


def next_sample(monitor: loopstat.Monitor) -> float:
    """``loop.time()`` when the monitor's sampler is next due to wake its loop."""
    return monitor._sampler.next_sample


def attached_probes() -> List[Tuple[str, str]]:
    """Each probe the monitor attaches, in its order: the name it goes by and the module its attach() is in."""
    return [(name, attach.__module__) for name, attach in _monitor._ATTACH]


def start(monitor: loopstat.Monitor) -> None:
    """Start a monitor built by hand (as ``install()`` does): it samples from the loop's next turn."""
    monitor._start()
