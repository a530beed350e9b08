"""Real loopback UDP at both ends: a receiver that drains a port, and a minimal StatsD client."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import List

from loopstat.cli import statsd
from loopstat.cli.statsd import Tags


@dataclass(frozen=True)
class Datagram:
    """One StatsD line as heard: ``at`` is ``time.perf_counter()`` on arrival."""

    at: float
    name: str
    type: str
    value: float
    tags: Tags = ()


class Receiver:
    """Drains a UDP port on 127.0.0.1 from a daemon thread, so senders never meet a closed port.

    The shared receiver of ``loopstat.cli.statsd``, seen as the bench reads
    it. With ``keep`` it also parses every line and stamps it with the
    arrival time; without, it only counts datagrams (cheapest, for overhead runs).
    """

    def __init__(self, keep: bool = False) -> None:
        # A burst must not be dropped by the kernel while the thread waits for the GIL.
        self._receiver = statsd.Receiver(keep=keep, buffer=1 << 20)
        self.port = self._receiver.port

    @property
    def count(self) -> int:
        """Datagrams received."""
        return self._receiver.count

    @property
    def bad(self) -> int:
        """Lines that did not parse (only counted with ``keep``)."""
        return len(self._receiver.bad)

    def lines(self) -> List[Datagram]:
        """Every line parsed so far, in arrival order."""
        return [Datagram(at, line.name, line.type, line.value, line.tags) for at, line in self._receiver.arrived()]

    def settle(self, quiet: float = 0.05, limit: float = 1.0) -> int:
        """Wait until nothing has arrived for ``quiet`` seconds (at most ``limit``); return the count."""
        return self._receiver.quiet(quiet, limit)

    def close(self) -> None:
        """Stop draining and close the port."""
        self._receiver.close()


class UdpTimer:
    """The smallest StatsD client aiodebug's lag monitor accepts: ``timing()`` (and ``gauge()``), one datagram each.

    Non-blocking and error-swallowing like a real StatsD client: a datagram
    that cannot go out is dropped, never raised into the loop.
    """

    def __init__(self, port: int) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        self._sock.connect(("127.0.0.1", port))
        self.sent = 0

    def timing(self, metric: str, value: float) -> None:
        """Send ``metric:value|ms``."""
        self._send(f"{metric}:{value:.3f}|ms")

    def gauge(self, metric: str, value: float) -> None:
        """Send ``metric:value|g``."""
        self._send(f"{metric}:{value:g}|g")

    def _send(self, line: str) -> None:
        try:
            self._sock.send(line.encode())
        except OSError:
            return
        self.sent += 1

    def close(self) -> None:
        self._sock.close()
