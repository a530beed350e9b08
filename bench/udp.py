"""Real loopback UDP at both ends: a receiver that drains a port, and a minimal StatsD client."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from typing import List, Optional


@dataclass(frozen=True)
class Datagram:
    """One StatsD line as heard: ``at`` is ``time.perf_counter()`` on arrival."""

    at: float
    name: str
    type: str
    value: float


def parse(text: str) -> Optional[tuple[str, str, float]]:
    """``name:value|type[|…]`` as (name, type, value), or None for anything else."""
    head, _, rest = text.partition("|")
    name, sep, value = head.partition(":")
    kind = rest.split("|", 1)[0]
    if not sep or not kind:
        return None
    try:
        return name, kind, float(value)
    except ValueError:
        return None


class Receiver:
    """Drains a UDP port on 127.0.0.1 from a daemon thread, so senders never meet a closed port.

    With ``keep`` it also parses every line and stamps it with the arrival
    time; without, it only counts datagrams (cheapest, for overhead runs).
    """

    def __init__(self, keep: bool = False) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        # A burst must not be dropped by the kernel while this thread waits for the GIL.
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.settimeout(0.1)
        self.port: int = self._sock.getsockname()[1]
        self.count = 0
        self.bad = 0
        self._keep = keep
        self._lines: List[Datagram] = []
        self._lock = threading.Lock()
        self._open = True
        self._thread = threading.Thread(target=self._drain, name="bench-receiver", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while self._open:
            try:
                data = self._sock.recv(65535)
            except socket.timeout:
                continue
            except OSError:
                return
            at = time.perf_counter()
            with self._lock:
                self.count += 1
                if not self._keep:
                    continue
                for text in data.decode("utf-8", "replace").split("\n"):
                    parsed = parse(text)
                    if parsed is None:
                        self.bad += 1
                    else:
                        self._lines.append(Datagram(at, *parsed))

    def lines(self) -> List[Datagram]:
        """Every line parsed so far, in arrival order."""
        with self._lock:
            return list(self._lines)

    def settle(self, quiet: float = 0.05, limit: float = 1.0) -> int:
        """Wait until nothing has arrived for ``quiet`` seconds (at most ``limit``); return the count."""
        deadline = time.monotonic() + limit
        last = -1
        while time.monotonic() < deadline:
            with self._lock:
                count = self.count
            if count == last:
                break
            last = count
            time.sleep(quiet)
        return self.count

    def close(self) -> None:
        """Stop draining and close the port."""
        self._open = False
        self._thread.join()
        self._sock.close()


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
