"""Blocking calls: calls that block, made on a watched loop's thread, counted, timed and named.

While at least one monitor asks for it, a stand-in takes the place of each
function in ``TARGETS`` (module attributes, and methods of ``socket.socket``,
``ssl.SSLSocket``, ``subprocess.Popen`` and ``pathlib.Path``), once for the whole process. Off
the thread of a watched loop a stand-in costs one thread-id check and passes
the call on. On it, the call counts if it can block (a socket only in blocking
mode: asyncio and uvloop run their own I/O on non-blocking sockets, so the
loop's machinery never counts) and if the loop running there is watched; then
it is timed, and its call site, the innermost application frame, is noted.
Calls made inside a counted call (``subprocess.run`` waiting in
``Popen.wait``) count once, as the outer one.

A module that took the function before the stand-in came (``from time import
sleep``) keeps calling the original: such calls are not seen.

This module says what counts and adds it up per loop; the stand-ins
themselves, shared by every loop of the process, are in ``stand_ins``.
"""

from __future__ import annotations

import asyncio
import logging
import pathlib
import select
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from threading import get_ident
from typing import Any, Callable, Dict, List, Optional, Tuple

from loopstat._clock import Clock
from loopstat._metrics import Line
from loopstat._rate_limit import RateLimit
from loopstat.probes import Watched, stand_ins
from loopstat.probes.frames import Frame, culprit, where
from loopstat.probes.selector_clock import SelectorClock
from loopstat.probes.stand_ins import Target

try:
    import ssl
except ImportError:  # Python built without OpenSSL
    ssl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

# A call site that keeps blocking is logged at most this often.
LOG_EVERY_SECONDS = 60.0
# Call sites remembered for that; beyond it the memory starts afresh.
MAX_SITES = 1000
# A file read whole through pathlib counts from this size: smaller ones (configuration,
# templates) come from the page cache in microseconds.
FILE_BYTES = 1024 * 1024


def _sleeps(seconds: Any) -> bool:
    # time.sleep(0) gives up the GIL and nothing else.
    return not (isinstance(seconds, (int, float)) and seconds <= 0)


def _waits(process: Any, *args: Any, **kwargs: Any) -> bool:
    # The exit status already collected: wait() returns at once.
    return process.returncode is None


def _with_timeout(rlist: Any, wlist: Any, xlist: Any, timeout: Any = None) -> bool:
    return timeout is None or timeout > 0


def _streams(sock: Any, *args: Any, **kwargs: Any) -> bool:
    # A datagram goes out at once unless the send buffer is full: StatsD clients on
    # blocking UDP sockets would be counted at every metric they send.
    return bool(sock.type != socket.SOCK_DGRAM)


def _big(content: Any) -> bool:
    return len(content) >= FILE_BYTES


def _targets() -> Tuple[Target, ...]:
    targets = [Target("time.sleep", time, "sleep", _sleeps)]
    for name in ("getaddrinfo", "gethostbyname", "gethostbyname_ex", "gethostbyaddr", "getnameinfo"):
        targets.append(Target(f"socket.{name}", socket, name))
    for name in ("connect", "connect_ex", "accept", "recv", "recv_into", "recvfrom"):
        targets.append(Target(f"socket.socket.{name}", socket.socket, name, on_socket=True))
    for name in ("send", "sendall", "sendto"):
        targets.append(Target(f"socket.socket.{name}", socket.socket, name, _streams, on_socket=True))
    if ssl is not None:
        # An SSL socket reads and writes through its SSL object, not the methods above.
        for name in ("do_handshake", "recv", "recv_into", "send", "sendall"):
            targets.append(Target(f"ssl.SSLSocket.{name}", ssl.SSLSocket, name, on_socket=True))
    targets.append(Target("subprocess.run", subprocess, "run"))
    targets.append(Target("subprocess.Popen.wait", subprocess.Popen, "wait", _waits))
    targets.append(Target("subprocess.Popen.communicate", subprocess.Popen, "communicate"))
    # open() and the read methods of what it returns are C code, out of a stand-in's reach;
    # reading a whole file through pathlib is not.
    for name in ("read_bytes", "read_text"):
        targets.append(Target(f"pathlib.Path.{name}", pathlib.Path, name, counts=_big))
    if sys.platform != "win32":
        # On Windows a selector loop waits in select.select() itself, through the module attribute.
        targets.append(Target("select.select", select, "select", _with_timeout))
    return tuple(targets)


#: Every function watched, in a fixed order; their names are the only values of the ``call`` tag.
TARGETS = _targets()
#: The ``call`` tag's values.
CALLS: Tuple[str, ...] = tuple(target.call for target in TARGETS)


@dataclass
class _Site:
    """One call site of one blocking call: what it did since it was last logged."""

    count: int = 0
    seconds: float = 0.0


Site = Tuple[str, Optional[Frame]]


class BlockingCalls:
    """Counts the blocking calls made on one loop's thread; create it on that thread.

    ``read`` is called on the loop's thread too, as every call it counts is
    made there: nothing here needs a lock.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        fault: Callable[[], None],
        clock: Clock = time.monotonic,
        watched: Optional[Watched] = None,
    ) -> None:
        self.loop = loop
        #: The thread that runs the loop, as seen at the latest read.
        self.thread_id = get_ident()
        self._fault = fault
        # Each call site is logged at most once a minute, with what it did since.
        self._site_log: RateLimit[Site] = RateLimit(LOG_EVERY_SECONDS, MAX_SITES, clock)
        # Where the calls since the last read go at close, and where the time blocked
        # adds up at once for the other probes (utilization on uvloop); None: nowhere.
        self._watched = watched
        # True while a counted call (or this probe's own work) runs: calls made inside it do not count again.
        self.inside = False
        self._counts: Dict[str, int] = {}
        self._seconds: Dict[str, float] = {}
        self._sites: Dict[Site, _Site] = {}
        self.closed = False
        stand_ins.watch(self, TARGETS)

    def note(self, call: str, seconds: float, frames: List[Frame]) -> None:
        """One blocking call of ``seconds`` made at ``frames`` (the stack, innermost last)."""
        self._counts[call] = self._counts.get(call, 0) + 1
        self._seconds[call] = self._seconds.get(call, 0.0) + seconds
        if self._watched is not None:
            self._watched.blocked += seconds
        key = (call, culprit(frames))
        site = self._sites.get(key)
        if site is None:
            if len(self._sites) >= MAX_SITES:
                self._sites.clear()
                self._site_log.clear()
            site = self._sites[key] = _Site()
        site.count += 1
        site.seconds += seconds

    def read(self, lines: List[Line]) -> None:
        """Append the calls since the previous read, per call; log the call sites due."""
        inside, self.inside = self.inside, True  # a log handler's own socket writes are not the application's
        try:
            ident = get_ident()
            if ident != self.thread_id:
                self.thread_id = ident  # the loop runs in another thread now
                stand_ins.rethread()
            for call, count in self._counts.items():
                tags = (("call", call),)
                lines.append(("blocking_calls", "c", count, tags))
                lines.append(("blocking_time", "ms", round(self._seconds[call] * 1000.0, 3), tags))
            self._counts.clear()
            self._seconds.clear()
            self._log_sites()
        finally:
            self.inside = inside

    def _log_sites(self) -> None:
        for key, site in self._sites.items():
            if site.count and self._site_log.due(key) is not None:
                call, frame = key
                times = "1 time" if site.count == 1 else f"{site.count} times"
                spent = f"{site.seconds:.1f} s" if site.seconds >= 0.1 else f"{site.seconds * 1000:.1f} ms"
                log.warning(
                    "loopstat: blocking call %s on the event loop at %s (%s, %s in the last minute)",
                    call,
                    where(frame) or "an unknown place",
                    times,
                    spent,
                )
                site.count, site.seconds = 0, 0.0

    def close(self) -> None:
        """Stop counting and send the calls since the last read; the stand-ins go when no probe is left.

        Never raises, safe to repeat.
        """
        if self.closed:
            return
        self.closed = True
        try:
            stand_ins.unwatch(self)
        except Exception:
            log.debug("loopstat: could not remove the blocking-call stand-ins", exc_info=True)
        try:
            if self._watched is not None and self._counts:
                lines: List[Line] = []
                self.read(lines)
                self._watched.send(lines)
        except Exception:
            log.debug("loopstat: could not send the last blocking calls", exc_info=True)


def attach(watched: Watched) -> Optional[BlockingCalls]:
    """Count blocking calls on ``watched.loop``'s thread (call on that thread); None when the option is off.

    Off by default on stdlib loops: there asyncio's own socket calls pass
    through the stand-ins (measured: +1.54 % instructions per aiohttp request, docs/performance.md).
    """
    on = watched.settings.blocking_calls
    if on is None:
        # Auto: on where no selector is timed (uvloop). There the loop's own I/O runs in C,
        # so the stand-ins cost nothing on its hot path, and utilization counts what they time;
        # on stdlib loops the loop's own socket calls would pass through them.
        on = SelectorClock.selector_of(watched.loop) is None
    if not on:
        return None
    return BlockingCalls(watched.loop, watched.fault, watched=watched)
