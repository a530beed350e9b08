"""Sink: sends metric lines through aiodogstatsd and survives every network fault.

aiodogstatsd 0.16 is small and unmaintained; three of its habits are handled
here, in the one module that touches it (its version is pinned in setup.cfg):

* it resolves the host inside ``connect()``, through the loop's default
  executor, and raises for an unknown host: the sink resolves in a daemon
  thread of its own and hands aiodogstatsd an IP address;
* its protocol ignores ``error_received``, so an absent agent is invisible:
  the sink installs a protocol that reports errors, to warn once per outage;
* its listener polls a queue every 0.5 s and awaits while it ends, so its
  ``close()`` may wait and a collected loop makes it fail: the sink's client
  has a listener that sleeps until a metric is queued and flushes without
  awaiting, and the sink cancels it to close.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import threading
import time
from collections import deque
from typing import Any, Callable, Deque, List, Optional, Set, Tuple, Union

import aiodogstatsd
from aiodogstatsd.client import DatagramProtocol
from aiodogstatsd.typedefs import CState

from loopstat.settings import MAX_DATAGRAM, Settings
from loopstat.tags import joined

log = logging.getLogger("loopstat")

# After an error, this long without another one (and with datagrams sent
# meanwhile) means the agent is back. Linux limits ICMP errors to about one
# a second towards other hosts, so anything shorter would call every
# rate-limited gap a recovery.
RECOVERY_SECONDS = 3.0
# Retry lookups of an unresolvable host, or of a host that keeps refusing
# (it may have moved), this often at first, doubling up to the cap.
FIRST_RETRY_SECONDS = 1.0
MAX_RETRY_SECONDS = 60.0

# Clients a forked child inherited from its parent (see Sink.abandon).
_inherited: List[Any] = []

# Lines held for the first connection, at most: a few seconds of samples.
EARLY_LINES = 200

Address = Tuple[str, int]
Lookup = Union[Address, BaseException]
#: One metric to send: (name without prefix, StatsD type, value).
Line = Tuple[str, str, float]


def lookup(host: str, port: int) -> Address:
    """Resolve ``host`` to one address, IPv4 first: agents listen on IPv4 by default."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    infos.sort(key=lambda info: info[0] != socket.AF_INET)
    return str(infos[0][4][0]), port


class _Protocol(DatagramProtocol):
    """aiodogstatsd's protocol, plus the errors the socket reports."""

    __slots__ = ("_on_error",)

    def __init__(self, on_error: Callable[[Exception], None]) -> None:
        super().__init__()
        self._on_error = on_error

    def error_received(self, exc: Exception) -> None:
        self._on_error(exc)


class _Client(aiodogstatsd.Client):
    def __init__(self, protocol: _Protocol, tags: bytes, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._protocol = protocol
        # Written here, not by aiodogstatsd: it cannot write a tag without value.
        self._tags = tags

    async def _listen(self) -> None:
        # Replaces aiodogstatsd's listener, which polls its queue and awaits
        # while ending: when a dropped loop is collected, ending must not need
        # the loop, so this one sleeps on a plain future and flushes without
        # awaiting. Sink.send() flushes as it queues (UDP never blocks), so it
        # only wakes to end.
        try:
            await asyncio.get_running_loop().create_future()  # until shut() cancels it
        finally:
            self.flush()
            if not self._listen_future_join.done():
                self._listen_future_join.set_result(True)

    def flush(self) -> None:
        """Send what is queued in as few datagrams as fit: a sample costs one system call, not one per line."""
        queue = self._pending_queue
        batch = b""
        while not queue.empty():
            line: bytes = queue.get_nowait() + self._tags
            if batch and len(batch) + 1 + len(line) > MAX_DATAGRAM:
                self._protocol.send(batch)
                batch = line
            else:
                batch = batch + b"\n" + line if batch else line
        if batch:
            self._protocol.send(batch)

    def listener(self) -> asyncio.Future[None]:
        return self._listen_future

    async def shut(self) -> None:
        """Flush what is queued, close the socket; never waits on the network."""
        self._state = CState.CLOSING
        listener = self._listen_future
        listener.cancel()
        await asyncio.wait([listener])
        await self._protocol.close()
        self._state = CState.DISCONNECTED

    def discard(self) -> None:
        """Send what is queued and release the socket, without running anything on the loop."""
        self._state = CState.DISCONNECTED
        transport = self._protocol._transport
        if transport is None:
            return
        self.flush()
        try:
            transport.close()
        except RuntimeError:
            # The loop is closed, so the transport could not schedule its own
            # cleanup; run it now, or the socket would wait for the collector.
            finish = getattr(transport, "_call_connection_lost", None)
            if finish is not None:
                finish(None)


class Sink:
    """Where a monitor's samples go: one aiodogstatsd client, kept connected."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.sent = 0
        self.dropped = 0
        self.errors = 0
        self._client: Optional[_Client] = None
        self._address: Optional[Address] = None
        # Filled by the lookup thread, emptied by the loop: deque's append and
        # popleft are atomic, so no result is lost between the two threads.
        self._lookups: Deque[Lookup] = deque()
        self._looking_up = False
        self._next_lookup = 0.0
        self._retry = FIRST_RETRY_SECONDS
        self._failing = False
        self._last_error = 0.0
        self._sent_since_error = 0
        self._closed = False
        # Lines sent before the first connection (a stall during startup):
        # held until it is made, dropped if it fails.
        self._early: Optional[List[Line]] = []

    def own_tasks(self) -> Set[asyncio.Future[Any]]:
        """Tasks the client runs on the loop, which are not the application's."""
        return {self._client.listener()} if self._client is not None else set()

    def start(self) -> None:
        """Begin resolving the agent's host; connecting happens in ``maintain``."""
        try:
            ipaddress.ip_address(self.settings.host)
        except ValueError:
            self._start_lookup()
        else:
            self._lookups.append((self.settings.host, self.settings.port))

    def _start_lookup(self) -> None:
        self._looking_up = True
        host, port = self.settings.host, self.settings.port

        def work() -> None:
            result: Lookup
            try:
                result = lookup(host, port)
            except Exception as exc:  # gaierror, UnicodeError, anything: report, never raise
                result = exc
            # The loop picks the result up at its next sample; a closed loop is
            # never touched from this thread.
            self._lookups.append(result)

        threading.Thread(target=work, name="loopstat-lookup", daemon=True).start()

    async def maintain(self) -> None:
        """Connect, reconnect or note a recovery; cheap when all is well."""
        now = time.monotonic()
        if self._failing:
            if self._sent_since_error and now - self._last_error >= RECOVERY_SECONDS and self._client:
                self._failing = False
                self._retry = FIRST_RETRY_SECONDS
                log.info("loopstat: metrics reach %s again", self.settings.address)
            elif not self._looking_up and now >= self._next_lookup:
                self._retry = min(self._retry * 2, MAX_RETRY_SECONDS)
                self._next_lookup = now + self._retry
                self._start_lookup()
        if not self._lookups or self._closed:
            return
        result = self._lookups.popleft()
        self._looking_up = False
        if isinstance(result, BaseException):
            self._fail(f"cannot resolve {self.settings.host!r} ({type(result).__name__}: {result})")
        elif result != self._address or self._client is None:
            await self._connect(result)

    async def _connect(self, address: Address) -> None:
        client = _Client(
            _Protocol(self._on_error),
            f"|#{joined(self.settings.tags)}".encode() if self.settings.tags else b"",
            host=address[0],
            port=address[1],
            namespace=self.settings.prefix or None,
        )
        try:
            await client.connect()
        except OSError as exc:
            self._fail(f"cannot open a socket to {address[0]}:{address[1]} ({exc})")
            return
        # As for the sampler: a loop closed under a pending listener is no error.
        client.listener()._log_destroy_pending = False  # type: ignore[attr-defined]
        old, self._client, self._address = self._client, client, address
        if old is not None:
            await old.shut()
        if self._failing:
            # A new address: find out afresh whether it works.
            self._last_error = time.monotonic()
            self._sent_since_error = 0
        log.debug("loopstat: sending to %s (%s:%d)", self.settings.address, *address)
        early, self._early = self._early, None
        if early:
            self.send(early)

    def _fail(self, reason: str) -> None:
        early, self._early = self._early, None
        self.dropped += len(early or ())
        now = time.monotonic()
        if not self._failing:
            log.warning("loopstat: %s; metrics are dropped until %s is reachable", reason, self.settings.address)
            self._failing = True
            self._next_lookup = now + self._retry
        self._last_error = now
        self._sent_since_error = 0

    def _on_error(self, exc: Exception) -> None:
        self.errors += 1
        self._fail(f"cannot send to {self.settings.address} ({type(exc).__name__}: {exc})")

    def send(self, lines: List[Line]) -> None:
        """Queue ``(name, type, value)`` lines; with no connection, count them as dropped."""
        client = self._client
        if client is None or self._closed:
            early = self._early
            if early is not None and not self._closed and len(early) + len(lines) <= EARLY_LINES:
                early.extend(lines)
            else:
                self.dropped += len(lines)
            return
        for name, kind, value in lines:
            if kind == "g":
                client.gauge(name, value=value)
            elif kind == "ms":
                client.timing(name, value=value)
            else:
                client.increment(name, value=value)
        client.flush()
        self.sent += len(lines)
        self._sent_since_error += len(lines)

    def abandon(self) -> None:
        """Let go of the client in a forked child without touching its socket.

        The child shares the parent's selector: closing the transport here
        would unregister the parent's socket. The client is parked, so it is
        never collected and never closed; its descriptor goes with the child.
        """
        self._closed = True
        if self._client is not None:
            _inherited.append(self._client)
            self._client = None

    def discard(self) -> None:
        """Close without the loop, which is closed or being collected."""
        self._closed = True
        client, self._client = self._client, None
        if client is not None:
            client.discard()

    async def close(self) -> None:
        """Flush and close; safe to call twice and while the loop shuts down."""
        self._closed = True
        client, self._client = self._client, None
        if client is not None:
            await client.shut()
