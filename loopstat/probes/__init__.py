"""Probes: each measures one aspect of a loop's health and hands its readings to the monitor as lines.

Every probe is one module here with one entry point, ``attach(watched)``,
which returns a ``Probe`` (or None when its option is off or the loop cannot
be measured that way). The monitor attaches them in the metric catalogue's
order (``loopstat/_metrics.py``), asks each to ``read`` its lines at every
sample and closes them when it stops; the sink alone sends. Two probes also
send between samples through ``Watched.send`` (a stall as it ends, the last
blocking calls at close). Several also return a ``Reading``, the latest values
the monitor keeps for the application (``monitor.tasks``, ``cpu``,
``utilization``, ``own``, ``top()``; the stall probe hands ``stalls`` and
``last_stall`` to ``Watched.keep`` as each stall ends): probes never write the
monitor. A new probe is one module, its rows in the catalogue and its entry in
the tuple of probes (``ATTACH`` in ``loopstat/_probe_set.py``, which a test
holds to the catalogue).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Callable, List, Optional, Protocol, Tuple, TypedDict

from loopstat._metrics import Line
from loopstat._options import Settings
from loopstat.probes.selector_clock import SelectorClock
from loopstat.probes.thread_clock import ThreadClock

if TYPE_CHECKING:
    from loopstat.probes.lag import Sampler
    from loopstat.probes.stall_capture import Stall


class Reading(TypedDict, total=False):
    """Latest values a probe hands the monitor to keep for the application; each key is set only by its probe."""

    tasks: int
    utilization: Optional[float]
    cpu: Optional[float]
    stalls: int
    last_stall: Stall
    own: Optional[float]
    top: List[Tuple[str, float]]


class Probe(Protocol):
    """What the monitor asks of a probe; both calls run on the loop's thread."""

    def read(self, lines: List[Line]) -> Optional[Reading]:
        """Add this sample's lines; return the values the monitor keeps, if this probe has any."""

    def close(self) -> None:
        """Release what ``attach`` took; never raises, safe to repeat."""


class Watched:
    """One monitored loop, as its probes see it: what they may read, and where readings and events go."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        settings: Settings,
        keep: Callable[[Reading], None],
        send: Callable[[List[Line]], None],
        fault: Callable[[], None],
        thread: Optional[ThreadClock] = None,
    ) -> None:
        self.loop = loop
        self.settings = settings
        #: Hands the monitor values to keep between samples (a stall, when it ends).
        self.keep = keep
        #: Milliseconds the latest sampler timer fired after its deadline, set by the monitor before each sample.
        self.lag = 0.0
        #: Sends lines between samples (a stall, when it ends).
        self.send = send
        #: Called from an ``except`` block: logs the fault, at most once a minute.
        self.fault = fault
        #: Seconds the loop's thread has spent blocked in the calls the blocking-call
        #: probe watches, since the monitor started (0 while that probe is off).
        self.blocked = 0.0
        #: The loop thread's CPU clock, read once per sample by ``sample()``.
        self.thread = thread or ThreadClock()
        #: Since the previous sample: the thread's CPU share (None after it moved to
        #: another thread) and the seconds it spent blocked in watched calls.
        self.cpu_share: Optional[float] = None
        self.blocked_since = 0.0
        self._blocked_at_sample = 0.0
        #: The sampler's timers, set by the monitor; the stall watch revives them when they are overdue.
        self.sampler: Optional[Sampler] = None
        self._clock: Optional[SelectorClock] = None
        self._clock_tried = False

    def sample(self) -> None:
        """Read the thread's CPU clock and its blocked time once, for every probe of this sample."""
        self.cpu_share = self.thread.share()
        self.blocked_since, self._blocked_at_sample = self.blocked - self._blocked_at_sample, self.blocked

    def busy_since(self) -> Optional[float]:
        """Seconds the thread was on the CPU or blocked in watched calls since the previous sample."""
        return None if self.cpu_share is None else self.thread.spent + self.blocked_since

    def clock(self) -> Optional[SelectorClock]:
        """The loop's selector clock, shared by the probes that ask; None on loops without a Python selector."""
        if not self._clock_tried:
            self._clock_tried = True
            self._clock = SelectorClock.attach(self.loop)
        return self._clock

    def close(self) -> None:
        """Detach what the probes shared; after every probe is closed."""
        clock, self._clock = self._clock, None
        if clock is not None:
            clock.detach()


Attach = Callable[[Watched], Optional[Probe]]
