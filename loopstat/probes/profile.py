"""Profile: where a loop's busy time goes, by sampling its thread's stack (opt-in, ``profile=True``).

One thread per process, there while some loop is profiled, looks at every
profiled loop about PERIOD_SECONDS apart (jittered, so that it does not beat
in step with periodic work). A look finds the loop waiting for events (stdlib
loops: in its selector; any loop: in no callback) or running a callback, and
then names the innermost frame of the application's code in it, as stalls are
named. A look that finds loopstat's own code (its samples and sends, which
hand the GIL over when they write to the socket) names no site: it is counted
apart, as ``monitor.own``. Every WINDOW_SAMPLES samples of the monitor, the
shares of the looks that found each site are sent as ``P.busy`` (tag
``site:<file:line in function>``) for the top TOP_SITES sites plus
``site:other``, and kept for ``monitor.top()``.

The thread is hidden from ``threading`` (see loopstat/_threads.py): nothing it runs may log.
"""

from __future__ import annotations

import contextlib
import random
import sys
import threading
from typing import Dict, List, Optional, Tuple
from weakref import WeakSet

from loopstat import _fork, _threads
from loopstat._metrics import Line
from loopstat.probes import Reading, Watched
from loopstat.probes import frames as _frames
from loopstat.probes.frames import Frame, Outer, StacksUnreadable, blame, outer_of, where
from loopstat.probes.selector_clock import SelectorClock

# About 50 looks a second: 500 in a 10 s window, a site's share to within a few points.
PERIOD_SECONDS = 0.02
# The sites sent each window; the rest add up to "other".
TOP_SITES = 5
# A window is this many samples of the monitor: 10 s at the default interval.
WINDOW_SAMPLES = 40
# Sites ever sent, per monitor: beyond them, new sites count as "other", so the
# series a service makes stay bounded however its code moves.
MAX_SITES = 50
OTHER = "other"

#: (site, share of the window's wall time), busiest first.
Top = List[Tuple[str, float]]


class Window:
    """The looks of one window at one loop, counted by site, and the sites ever sent; shared with the sampler thread."""

    def __init__(self) -> None:
        self._counts: Dict[str, int] = {}
        self._looks = 0
        # Looks that found loopstat's own code.
        self._own = 0
        self._sent: Dict[str, None] = {}
        self._lock = threading.Lock()

    def count(self, site: Optional[str], own: bool = False) -> None:
        """One look: it found ``site`` (None: no application code), or loopstat's ``own`` code."""
        with self._lock:
            self._looks += 1
            self._own += own
            if site is not None:
                self._counts[site] = self._counts.get(site, 0) + 1

    def take(self) -> Tuple[Top, Optional[float]]:
        """The window's table and the share of its looks that found loopstat's own code; a new window."""
        with self._lock:
            counts, looks, own = self._counts, self._looks, self._own
            self._counts, self._looks, self._own = {}, 0, 0
        if not looks:
            return [], None
        ranked = sorted(counts.items(), key=lambda item: -item[1])
        top: Top = []
        other = 0
        for site, count in ranked:
            if len(top) < TOP_SITES and (site in self._sent or len(self._sent) < MAX_SITES):
                self._sent[site] = None
                top.append((site, count / looks))
            else:
                other += count
        if other:
            top.append((OTHER, other / looks))
        return top, own / looks


class Profile:
    """The looks at one loop, counted by site, turned into a table every window."""

    def __init__(self, watched: Watched) -> None:
        self._watched = watched
        self._clock: Optional[SelectorClock] = watched.clock()
        #: The loop's thread and the frames around its callbacks, learned on the loop.
        self.thread_id = threading.get_ident()
        self.outer: Outer = ()
        self._window = Window()
        self._samples = 0
        #: Set by the sampler thread when the stacks could no longer be read: the next read raises it.
        self.failed: Optional[StacksUnreadable] = None
        watched.loop.call_soon(self._learn)
        _sampler.watch(self)

    def _learn(self) -> None:
        self.thread_id = threading.get_ident()
        try:
            self.outer = outer_of(sys._getframe(1))
        except ValueError:  # run from C with no Python frame around
            self.outer = ()

    def busy(self) -> bool:
        """Whether the loop is running a callback (not waiting in its selector): only then is its stack read."""
        clock = self._clock
        try:
            return self._watched.loop.is_running() and (clock is None or not clock.waiting)
        except Exception:  # a loop torn down under us: it will unwatch itself
            return False

    def look(self, stacks: Dict[int, Tuple[List[Frame], bool]]) -> None:
        """Called by the sampler thread: note what the loop is doing now."""
        if not self._watched.loop.is_running():
            return
        clock = self._clock
        site: Optional[str] = None
        own = False
        if clock is None or not clock.waiting:
            found = stacks.get(self.thread_id)
            if found is not None:
                stack, whole = found
                named, own = blame(stack, whole, self.outer)
                site = None if own else where(named)
        self._window.count(site, own)

    def read(self, lines: List[Line]) -> Optional[Reading]:
        if self.failed is not None:
            raise self.failed
        self._samples += 1
        if self._samples < WINDOW_SAMPLES:
            return None
        self._samples = 0
        top, own = self._window.take()
        lines.extend(("busy", "g", round(share, 4), (("site", site),)) for site, share in top)
        return {"top": top, "own": own}

    def close(self) -> None:
        _sampler.unwatch(self)


class _Sampler:
    """The thread that looks at every profiled loop; there while one is profiled."""

    def __init__(self) -> None:
        self._profiles: WeakSet[Profile] = WeakSet()
        self._changed = threading.Condition()
        self._thread: Optional[_threads.Hidden] = None

    def watch(self, profile: Profile) -> None:
        with self._changed:
            self._profiles.add(profile)
            if self._thread is None or not self._thread.is_alive():
                self._thread = _threads.Hidden("loopstat-profiler", self._run)

    def unwatch(self, profile: Profile) -> None:
        with self._changed:
            self._profiles.discard(profile)
            self._changed.notify_all()

    def _run(self) -> None:
        jitter = random.Random()
        while True:
            with self._changed:
                profiles = list(self._profiles)
                if not profiles:
                    self._thread = None
                    return
            try:
                # Loops that wait are not read: on CPython 3.11 a read dumps every thread's stack, holding the GIL.
                busy = [profile.thread_id for profile in profiles if profile.busy()]
                stacks = _frames.stacks_of(busy) if busy else {}
            except StacksUnreadable as exc:
                for profile in profiles:
                    profile.failed = exc  # the monitor closes them, and then this thread ends
                stacks = {}
            for profile in profiles:
                # A loop torn down under us: it will unwatch itself.
                with contextlib.suppress(Exception):
                    profile.look(stacks)
            del stacks, profiles  # holding them would keep the loops' frames alive
            with self._changed:
                self._changed.wait(PERIOD_SECONDS * jitter.uniform(0.5, 1.5))


_sampler = _Sampler()


def after_fork_in_child() -> None:
    """Called in the child (through loopstat/_fork.py): the parent's thread is not here."""
    global _sampler
    _sampler = _Sampler()


_fork.join(after_in_child=after_fork_in_child)


def attach(watched: Watched) -> Optional[Profile]:
    if not watched.settings.profile:
        return None
    _frames.stacks_of(())  # StacksUnreadable here leaves the profile out
    return Profile(watched)
