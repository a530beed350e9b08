"""A StatsD receiver on a loopback UDP port (or a Unix datagram socket) that parses every line it gets, strictly."""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

# One DogStatsD line as loopstat writes it: name:value|type, then optional tags.
LINE = re.compile(
    r"(?P<name>[A-Za-z][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*)"
    r":(?P<value>[0-9]+(?:\.[0-9]+)?)"
    r"\|(?P<type>g|ms|c)"
    r"(?:\|#(?P<tags>[^|#,\s]+(?:,[^|#,\s]+)*))?"
)


@dataclass(frozen=True)
class Line:
    name: str
    value: float
    type: str
    tags: Dict[str, str]


def parse(text: str) -> Optional[Line]:
    """Parse one line, or return None when it is not exactly one well-formed metric."""
    match = LINE.fullmatch(text)
    if match is None:
        return None
    tags: Dict[str, str] = {}
    if match["tags"]:
        for tag in match["tags"].split(","):
            key, sep, value = tag.partition(":")
            if not sep or not key or not value or key in tags:
                return None
            tags[key] = value
    return Line(match["name"], float(match["value"]), match["type"], tags)


class Receiver:
    """Collects datagrams on 127.0.0.1 from a thread of its own, so any loop can be under test.

    With ``path`` it binds a Unix datagram socket there instead, as the Datadog Agent does
    (``port`` is then 0).
    """

    def __init__(self, port: int = 0, path: Optional[str] = None) -> None:
        if path is None:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.bind(("127.0.0.1", port))
            self.port: int = self.sock.getsockname()[1]
        else:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.sock.bind(path)
            self.port = 0
        self.sock.settimeout(0.05)
        self.datagrams: List[bytes] = []
        #: The source port of each datagram, in step with ``datagrams``.
        self.ports: List[int] = []
        self.lines: List[Line] = []
        self.bad: List[str] = []
        self._lock = threading.Lock()
        self._open = True
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while self._open:
            try:
                data, source = self.sock.recvfrom(65535)
            except socket.timeout:
                continue
            except OSError:
                return
            with self._lock:
                self.datagrams.append(data)
                self.ports.append(source[1] if isinstance(source, tuple) else 0)
                for text in data.decode("utf-8", "replace").split("\n"):
                    line = parse(text)
                    if line is None:
                        self.bad.append(text)
                    else:
                        self.lines.append(line)

    def close(self) -> None:
        self._open = False
        self._thread.join()
        self.sock.close()

    def snapshot(self) -> List[Line]:
        with self._lock:
            return list(self.lines)

    def ports_of(self, prefix: bytes) -> set[int]:
        """Source ports of the datagrams whose first line starts with ``prefix``."""
        with self._lock:
            return {port for data, port in zip(self.datagrams, self.ports) if data.startswith(prefix)}

    def values(self, name: str, type: str) -> List[float]:
        return [line.value for line in self.snapshot() if line.name == name and line.type == type]

    async def wait_for(self, condition: Callable[[List[Line]], bool], timeout: float = 5.0) -> List[Line]:
        """Wait until ``condition`` holds for the lines received so far; return them."""
        deadline = time.monotonic() + timeout
        while True:
            lines = self.snapshot()
            if condition(lines):
                return lines
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met within {timeout}s; got {len(lines)} lines: {lines[-6:]}")
            await asyncio.sleep(0.01)

    def settle(self, condition: Callable[[List[Line]], bool], timeout: float = 5.0) -> List[Line]:
        """Like ``wait_for``, for tests without a loop."""
        deadline = time.monotonic() + timeout
        while not condition(self.snapshot()):
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met within {timeout}s; got {self.snapshot()[-6:]}")
            time.sleep(0.01)
        return self.snapshot()

    async def wait_count(self, name: str, type: str, count: int, timeout: float = 5.0) -> List[float]:
        """Wait for at least ``count`` lines of ``name``/``type``; return their values."""
        await self.wait_for(lambda lines: sum(1 for x in lines if x.name == name and x.type == type) >= count, timeout)
        return self.values(name, type)
