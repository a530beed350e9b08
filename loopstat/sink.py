"""Sink: sends metric lines over a socket of its own (UDP, or the Agent's Unix socket) and survives every fault.

Lines are built by aiodogstatsd's public line builder (``aiodogstatsd.protocol.build``,
its version pinned in setup.cfg, its output pinned by tests/test_sink.py); the
socket is loopstat's own, a connected non-blocking UDP socket, because
aiodogstatsd's client and asyncio's datagram transport each need the loop for
something loopstat must do without it:

* the client resolves the host inside ``connect()`` and raises for an unknown
  one: the sink resolves in a daemon thread, one per host in the whole process;
* the client polls a queue every 0.5 s and waits while it closes; asyncio's
  transport can only be released by a callback of its loop, so a loop closed or
  collected first leaves its socket to the garbage collector. A plain socket
  sends in the same single system call and closes at once, on any thread;
* an absent agent shows as an error on the next ``send()`` of a connected
  socket (Linux stores the ICMP refusal on it), so errors are seen without a
  reader waking the loop.

With ``socket_path`` (``DD_DOGSTATSD_URL=unix://…``) the socket is the Agent's
Unix socket instead, datagram or stream (``unixstream://``). A restarted Agent
binds a new socket under the same name, which an old connection never
reaches, so a failed send closes the socket and it is connected again on the
retry schedule; nothing ever waits for the Agent.

Each socket's own habits are in ``loopstat/_transport`` (the UDP lookup, the
Unix socket's types, the stream's frames); batching, encoding and the fault
accounts are here.
"""

from __future__ import annotations

import logging
import re
import socket
import time
from collections import deque
from typing import Callable, Deque, Dict, List, Optional, Tuple

from aiodogstatsd.protocol import build
from aiodogstatsd.typedefs import MType

from loopstat import _origin, _worker
from loopstat._clock import Clock
from loopstat._metrics import DISTRIBUTED, Line, LineTags
from loopstat._options import MAX_DATAGRAM, MAX_UNIX_DATAGRAM, Settings, socket_type
from loopstat._transport import FULL, Connection, Datagrams, udp, unix
from loopstat._transport.udp import Address, Lookup, lookups
from loopstat._transport.unix_stream import Frames
from loopstat.tags import joined, sanitize

log = logging.getLogger(__name__)

# Datagrams going out this long with none refused mean the agent is back.
# Linux limits ICMP errors to about one a second towards other hosts, so
# anything shorter would call every rate-limited gap a recovery. (A Unix
# socket refuses at once, so there one accepted datagram is proof.)
RECOVERY_SECONDS = 3.0
# Retry lookups of an unresolvable host, or of a host that keeps refusing
# (it may have moved), this often at first, doubling up to the cap.
FIRST_RETRY_SECONDS = 1.0
MAX_RETRY_SECONDS = 60.0

# Lines held for the first connection, at most: a few seconds of samples.
EARLY_LINES = 200
# Line tags rendered, kept: probes send a small fixed set (one per blocking call).
_LINE_TAGS_KEPT = 256
# A line tag's value as a name component (flavor "statsd", which has no tags).
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_]")

_TYPES = {"g": MType.GAUGE, "ms": MType.TIMING, "c": MType.COUNTER}


def origin_fields(settings: Settings) -> bytes:
    """What DogStatsD lines carry after their tags: ``|c:<container id>`` then ``|e:<external env>``, or nothing.

    The order is the DogStatsD protocol's (``name:value|type|@rate|#tags|c:…|e:…``);
    neither value holds "|" or a line break (the ID is hex, digits and "-", the
    environment is checked by the option table). Never with flavor "statsd".
    """
    if settings.flavor != "dogstatsd" or not settings.origin_detection:
        return b""
    found = _origin.container_id()
    fields = f"|c:{found}" if found else ""
    if settings.external_env:
        fields += f"|e:{settings.external_env}"
    return fields.encode()


def _fixed_address(settings: Settings) -> Optional[Address]:
    """The address of a Unix socket or an IP address, which need no lookup; None for a host name."""
    if settings.socket_path is not None:
        return socket.AF_UNIX, (socket_type(settings.socket_path)[1],)
    return udp.ip_address(settings.host)


class Sink:
    """Where a monitor's samples go: one connected datagram socket (UDP or Unix), kept connected.

    Used on the loop's thread; nothing here waits or needs the loop, so it
    can be closed while the loop shuts down, after it closed, or from the
    garbage collector.
    """

    def __init__(
        self, settings: Settings, clock: Clock = time.monotonic, connection: Optional[Connection] = None
    ) -> None:
        """``connection``: sent on instead of a socket, as datagrams (tests read what is sent without one)."""
        self.settings = settings
        self._connection = connection
        #: Lines that went out in a datagram the socket accepted.
        self.sent = 0
        #: Lines that did not: no connection yet, socket refused or full, sink closed.
        self.dropped = 0
        #: Sends the socket refused (an absent agent refuses each datagram or every other one).
        self.errors = 0
        self._clock = clock
        self._fixed = _fixed_address(settings)
        self._unix = settings.socket_path is not None
        self._kind = socket_type(settings.socket_path)[0] if settings.socket_path is not None else "datagram"
        self._max_datagram = MAX_UNIX_DATAGRAM if self._unix else MAX_DATAGRAM
        self._recovery_seconds = 0.0 if self._unix else RECOVERY_SECONDS
        self._transport: Optional[Datagrams] = None
        self._address: Optional[Address] = None
        # Filled by a lookup thread, emptied on the loop's thread.
        self._lookups: Deque[Lookup] = deque()
        self._looking_up = False
        self._next_lookup = 0.0
        self._retry = FIRST_RETRY_SECONDS
        self._failing = False
        # When datagrams began to go out with none refused since (None: not since the last error).
        self._clean_since: Optional[float] = None
        self._closed = False
        # Lines sent before the first connection (a stall during startup):
        # held until it is made, dropped if it fails.
        self._early: Optional[List[Line]] = []
        namespace = settings.prefix or None
        # Tags are written here, not by aiodogstatsd: it cannot write a tag without value.
        # The worker tag is this process's, never part of settings (which a forked child shares).
        pairs = _worker.tags(settings.tags) if settings.worker_tag and settings.flavor == "dogstatsd" else settings.tags
        # Computed once: every line ends with the same tags and origin fields.
        self._origin = origin_fields(settings)
        tags = (f"|#{joined(pairs)}".encode() if pairs else b"") + self._origin
        self._pairs = pairs
        # Timings of these metrics go out as distributions ("d"), under these names.
        self._distributed: Dict[str, str] = DISTRIBUTED if settings.distributions else {}
        self._bare: Callable[[str, MType, float], bytes] = lambda name, kind, value: build(
            name=name, namespace=namespace, value=value, type_=kind, tags={}, sample_rate=1
        )
        self._build: Callable[[str, MType, float], bytes] = lambda name, kind, value: (
            self._bare(name, kind, value) + tags
        )
        self._line_tags: Dict[LineTags, Tuple[str, bytes]] = {}

    def start(self) -> None:
        """Connect at once to an IP address or a Unix socket; look a host name up first (``maintain`` connects)."""
        if self._connection is not None:
            self._take(Datagrams(self._connection, self._went_out, self._drop), None)
        elif self._fixed is None:
            self._start_lookup()
        else:
            self._connect(self._fixed)

    def _start_lookup(self) -> None:
        self._looking_up = True
        lookups.start(self.settings.host, self._lookups)

    def maintain(self) -> None:
        """Retry a failed lookup or socket, connect to a new address; cheap when all is well."""
        if self._closed or self._connection is not None:  # a connection given is never replaced
            return
        now = self._clock()
        if self._failing and not self._looking_up and now >= self._next_lookup:
            self._retry = min(self._retry * 2, MAX_RETRY_SECONDS)
            self._next_lookup = now + self._retry
            if self._fixed is None:
                self._start_lookup()  # the host may have moved
            elif self._transport is None:
                self._connect(self._fixed)  # an address cannot move; its socket may not have opened
        if not self._lookups:
            return
        result = self._lookups.popleft()
        self._looking_up = False
        if isinstance(result, BaseException):
            self._fail(f"cannot resolve {self.settings.host!r} ({type(result).__name__}: {result})")
        elif result != self._address or self._transport is None:
            self._connect(result)

    def _connect(self, found: Address) -> None:
        family, found_address = found
        try:
            if family == socket.AF_UNIX:
                sock = unix.connect(self._kind, found_address[0])
            else:
                sock = udp.connect(family, (found_address[0], self.settings.port, *found_address[2:]))
        except OSError as exc:
            self._fail(f"cannot open a socket to {self.settings.address} ({type(exc).__name__}: {exc})")
            return
        made = Frames if sock.type == socket.SOCK_STREAM else Datagrams
        log.debug("loopstat: sending to %s (%s)", self.settings.address, found_address[0])
        self._take(made(sock, self._went_out, self._drop), found)

    def _take(self, transport: Datagrams, found: Optional[Address]) -> None:
        """Send on ``transport`` from now on, first the lines held for it."""
        # A new connection starts with a whole frame: the old one's backlog is dropped as it closes.
        old, self._transport, self._address = self._transport, transport, found
        if old is not None:
            old.close()
        # A new address: find out afresh whether it works.
        self._clean_since = None
        early, self._early = self._early, None
        if early:
            self.send(early)

    def _drop(self, count: int) -> None:
        self.dropped += count

    def _fail(self, reason: str) -> None:
        early, self._early = self._early, None
        self.dropped += len(early or ())
        now = self._clock()
        if not self._failing:
            log.warning("loopstat: %s; metrics are dropped until %s is reachable", reason, self.settings.address)
            self._failing = True
            self._next_lookup = now + self._retry
        self._clean_since = None

    def _went_out(self, count: int) -> None:
        self.sent += count
        if self._failing:
            # A refusal shows on the send after the refused datagram, so only a
            # stretch of sends with none refused proves delivery: one datagram
            # going out, even one sample's worth, proves nothing.
            now = self._clock()
            if self._clean_since is None:
                self._clean_since = now
            if now - self._clean_since >= self._recovery_seconds:
                self._failing = False
                self._retry = FIRST_RETRY_SECONDS
                log.info("loopstat: metrics reach %s again", self.settings.address)

    def datagrams(self, lines: List[Line]) -> List[Tuple[bytes, int]]:
        """Datagrams for ``lines`` and their line counts: lines joined by newlines, each within the transport's limit.

        At most MAX_DATAGRAM bytes over UDP, MAX_UNIX_DATAGRAM over a Unix socket.
        """
        out: List[Tuple[bytes, int]] = []
        batch: List[bytes] = []
        size = 0
        distributed = self._distributed
        for name, kind, value, *extra in lines:
            mtype = _TYPES[kind]
            if distributed and kind == "ms" and name in distributed:  # the first test: all it costs when off
                name, mtype = distributed[name], MType.DISTRIBUTION
            if extra:
                suffix, tags = self._with_line_tags(extra[0])
                line = self._bare(name + suffix, mtype, value) + tags
            else:
                line = self._build(name, mtype, value)
            if batch and size + 1 + len(line) > self._max_datagram:
                out.append((b"\n".join(batch), len(batch)))
                batch, size = [], 0
            size += len(line) + (1 if batch else 0)
            batch.append(line)
        if batch:
            out.append((b"\n".join(batch), len(batch)))
        return out

    def _with_line_tags(self, extra: LineTags) -> Tuple[str, bytes]:
        """What a line with tags of its own gets: a name suffix and its tags, as bytes.

        DogStatsD: the monitor's tags, then the line's, sanitised as the
        monitor's are; a line tag replaces a monitor tag of the same key.
        StatsD has no tags: each line tag's value becomes one more name
        component, every character but letters, digits and ``_`` as ``_``
        (``call:time.sleep`` makes ``blocking_calls.time_sleep``).
        """
        known = self._line_tags.get(extra)
        if known is not None:
            return known
        if self.settings.flavor == "statsd":
            rendered = ("".join("." + _NAME_UNSAFE.sub("_", value) for _, value in extra if value), b"")
        else:
            own = [sanitize(key, value) for key, value in extra]
            keys = {key.lower() for key, _ in own}
            kept = [(key, value) for key, value in self._pairs if key.lower() not in keys]
            rendered = ("", f"|#{joined(kept + own)}".encode() + self._origin)
        if len(self._line_tags) >= _LINE_TAGS_KEPT:
            self._line_tags.clear()
        self._line_tags[extra] = rendered
        return rendered

    def send(self, lines: List[Line]) -> None:
        """Send ``(name, type, value)`` lines now, in as few datagrams as fit; what the socket refuses is dropped."""
        transport = self._transport
        if transport is None or self._closed:
            early = self._early
            if early is not None and not self._closed and len(early) + len(lines) <= EARLY_LINES:
                early.extend(lines)
            else:
                self.dropped += len(lines)
            return
        datagrams = self.datagrams(lines)
        for index, (data, count) in enumerate(datagrams):
            try:
                transport.send(data, count)
            except OSError as exc:
                self.dropped += transport.lost(count)
                if exc.errno in FULL:
                    continue  # the socket's buffer (or the Agent's queue) is full: a burst, not an outage
                self.errors += 1
                self._fail(f"cannot send to {self.settings.address} ({type(exc).__name__}: {exc})")
                if self._unix:
                    # The Agent closed its end: only a new connection reaches the socket it binds next.
                    self._transport = None
                    transport.close()
                    self.dropped += sum(rest for _, rest in datagrams[index + 1 :])
                    return

    def abandon(self) -> None:
        """Let go in a forked child: close the child's copy of the socket, never send from it."""
        self.close()

    def close(self) -> None:
        """Close the socket; never waits, safe to call twice, on any thread, with or without the loop."""
        self._closed = True
        # Held for a first connection that never came: lost, and counted so.
        early, self._early = self._early, None
        self.dropped += len(early or ())
        if self._looking_up:
            lookups.cancel(self.settings.host, self._lookups)
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.close()
