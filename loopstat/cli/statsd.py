"""StatsD lines parsed in one place, and a UDP receiver that parses every line it gets.

``parse`` reads what any StatsD or DogStatsD client may send, leniently, as
``loopstat watch`` shows it; ``parse_strict`` accepts only lines loopstat
could have written, and the test suite holds every datagram to it. ``read``
splits a datagram into lines either way. ``Receiver`` listens from a thread
of its own for tests and the bench (any loop, or none, can be under watch);
``loopstat watch`` reads on its own loop and feeds its board through ``read``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import socket
import threading
import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Set, Tuple, Union

TYPES = ("g", "c", "ms", "h", "d", "s")

#: Tags as (key, value) pairs in the order sent; the value is "" for a tag without one (``canary``).
Tags = Tuple[Tuple[str, str], ...]


@dataclass(frozen=True)
class Sample:
    """One metric line: a value of one type, for one name and tag set."""

    name: str
    type: str
    value: float
    tags: Tags = ()
    #: A gauge written as "+3" or "-3" changes the last value instead of replacing it.
    relative: bool = False
    #: Origin detection: the sender's container ID (``|c:``) and external environment (``|e:``), "" when absent.
    container: str = ""
    external: str = ""


class Other:
    """A DogStatsD event (``_e{``) or service check (``_sc|``): valid, but not a metric."""


Parsed = Union[Sample, Other, None]


def parse(line: str) -> Parsed:
    """Parse one line; None when it is not a well-formed StatsD or DogStatsD line."""
    if line.startswith(("_e{", "_sc|")):
        return Other()
    head, _, rest = line.partition("|")
    name, sep, text = head.partition(":")
    fields = rest.split("|")
    kind = fields[0]
    if not sep or not name or not text or kind not in TYPES or any(c in name for c in " #,"):
        return None
    rate = 1.0
    tags: Tags = ()
    origin = {"c:": "", "e:": ""}
    for field in fields[1:]:
        if field.startswith("@"):
            parsed_rate = _number(field[1:])
            if parsed_rate is None or not 0 < parsed_rate <= 1:
                return None
            rate = parsed_rate
        elif field.startswith("#"):
            tags = tuple((key, value) for key, _, value in (tag.partition(":") for tag in field[1:].split(",") if tag))
        elif field.startswith(("c:", "e:")):  # origin detection: container ID, external environment
            origin[field[:2]] = field[2:]
        elif not field.startswith(("T", "card:")):  # timestamp, tag cardinality
            return None
    if kind == "s":
        # A set counts distinct members; the view shows how often it was updated.
        return Sample(name, kind, 1.0, tags, container=origin["c:"], external=origin["e:"])
    value = _number(text)
    if value is None:
        return None
    if kind == "c":
        value /= rate  # a sampled counter stands for 1/rate increments
    return Sample(
        name,
        kind,
        value,
        tags,
        relative=kind == "g" and text[0] in "+-",
        container=origin["c:"],
        external=origin["e:"],
    )


def _number(text: str) -> Optional[float]:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


# A tag as loopstat writes it: "key:value" (the value may hold ":") or a bare "key", no part empty.
_TAG = r"[^|#,\s:]+(?::[^|#,\s]+)?"
# A line as loopstat writes it: a dotted name, a non-negative decimal, g/ms/c/d, then optional tags,
# then the origin fields in the protocol's order: a container ID (hex and "-", or "in-" and an inode),
# and the external environment (printable ASCII but "|" and spaces).
_WRITTEN = re.compile(
    r"[A-Za-z][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*"
    r":[0-9]+(?:\.[0-9]+)?"
    r"\|(?:g|ms|c|d)"
    rf"(?:\|#{_TAG}(?:,{_TAG})*)?"
    r"(?:\|c:(?:[0-9a-f_-]{1,64}|in-[0-9]{1,20}))?"
    r"(?:\|e:[!-{}~]{1,256})?"
)


def parse_strict(line: str) -> Optional[Sample]:
    """Parse a line only if loopstat could have written it, else None.

    No sample rate, sign, exponent, event, other type or field; tag keys
    unique even when lowercased (Datadog lowercases them, and loopstat merges
    them so).
    """
    sample = parse(line) if _WRITTEN.fullmatch(line) else None
    if not isinstance(sample, Sample) or len({key.lower() for key, _ in sample.tags}) < len(sample.tags):
        return None
    return sample


def read(datagram: bytes, strict: bool = False) -> List[Tuple[str, Parsed]]:
    """Each line of a datagram with what it parses as (None: a bad line).

    Leniently, lines end at any line break and blank ones are skipped, as
    agents read them. Strictly, every piece between two "\\n" is a line and
    an empty one is bad: loopstat never sends one.
    """
    text = datagram.decode("utf-8", "replace")
    if strict:
        return [(line, parse_strict(line)) for line in text.split("\n")]
    return [(line, parse(line)) for line in text.splitlines() if line.strip()]


#: Seconds the receiver thread waits on its socket before it checks whether it was closed.
POLL_SECONDS = 0.05
#: A test on the lines received so far.
Condition = Callable[[List[Sample]], bool]


class Receiver:
    """Receives datagrams on a UDP port and parses every line, from a daemon thread of its own.

    With ``strict``, lines are held to ``parse_strict``. Without ``keep``
    datagrams are only counted: the cheapest way to be a port someone
    listens on. ``buffer`` enlarges the socket's receive buffer, so a burst
    is not dropped while the thread waits for the GIL. With ``path`` it
    binds a Unix datagram socket there instead, as the Datadog Agent does
    (``port`` is then 0).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        strict: bool = False,
        keep: bool = True,
        buffer: int = 0,
        clock: Callable[[], float] = time.perf_counter,
        path: Optional[str] = None,
    ) -> None:
        if path is not None:  # a Unix datagram socket bound there, as the Datadog Agent's
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        else:
            self._sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
        try:
            if buffer:
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer)
            self._sock.bind((host, port) if path is None else path)
        except OSError:
            self._sock.close()
            raise
        self._sock.settimeout(POLL_SECONDS)
        self.port: int = 0 if path is not None else self._sock.getsockname()[1]
        self.strict = strict
        #: Datagrams received.
        self.count = 0
        # The rest is filled only with ``keep``.
        self.datagrams: List[bytes] = []
        #: The source port of each datagram, in step with ``datagrams``.
        self.ports: List[int] = []
        self.lines: List[Sample] = []
        #: ``clock()`` when each line arrived, in step with ``lines``.
        self.arrivals: List[float] = []
        self.bad: List[str] = []
        #: Well-formed events and service checks (never with ``strict``).
        self.other = 0
        self._keep = keep
        self._clock = clock
        self._lock = threading.Lock()
        self._open = True
        self._thread = threading.Thread(target=self._receive, name="loopstat-receiver", daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while True:
            try:
                data, source = self._sock.recvfrom(65535)
            except socket.timeout:
                if self._open:
                    continue
                return
            except OSError:
                return
            if not self._open:  # closed: woken by close()'s datagram, or closed as one came
                return
            at = self._clock()
            with self._lock:
                self.count += 1
                if self._keep:
                    # A Unix datagram's source is a path (or nothing), not an address with a port.
                    self._record(data, source[1] if isinstance(source, tuple) else 0, at)

    def _record(self, data: bytes, port: int, at: float) -> None:
        self.datagrams.append(data)
        self.ports.append(port)
        for text, parsed in read(data, self.strict):
            if parsed is None:
                self.bad.append(text)
            elif isinstance(parsed, Other):
                self.other += 1
            else:
                self.lines.append(parsed)
                self.arrivals.append(at)

    def close(self) -> None:
        """Stop receiving and close the port."""
        self._open = False
        # A datagram to itself wakes the thread at once, not a poll later.
        with contextlib.suppress(OSError):
            self._sock.sendto(b"", self._sock.getsockname())
        self._thread.join()
        self._sock.close()

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def snapshot(self) -> List[Sample]:
        """The lines parsed so far, in arrival order."""
        with self._lock:
            return list(self.lines)

    def arrived(self) -> List[Tuple[float, Sample]]:
        """The lines parsed so far, each with its arrival time."""
        with self._lock:
            return list(zip(self.arrivals, self.lines))

    def values(self, name: str, type: str) -> List[float]:
        """The values of the lines of one name and type, in arrival order."""
        return [line.value for line in self.snapshot() if line.name == name and line.type == type]

    def ports_of(self, prefix: bytes) -> Set[int]:
        """Source ports of the datagrams whose first line starts with ``prefix``."""
        with self._lock:
            return {port for data, port in zip(self.datagrams, self.ports) if data.startswith(prefix)}

    def check(self, condition: Condition, deadline: float) -> Optional[List[Sample]]:
        """The lines so far if ``condition`` holds for them, None if not yet; TimeoutError past ``deadline``.

        ``deadline`` is a ``time.monotonic()`` time.
        """
        lines = self.snapshot()
        if condition(lines):
            return lines
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met in time; got {len(lines)} lines, the last: {lines[-6:]}")
        return None

    def settle(self, condition: Condition, timeout: float = 5.0) -> List[Sample]:
        """Block until ``condition`` holds for the lines received so far; return them."""
        deadline = time.monotonic() + timeout
        while True:
            lines = self.check(condition, deadline)
            if lines is not None:
                return lines
            time.sleep(0.01)

    async def wait_for(self, condition: Condition, timeout: float = 5.0) -> List[Sample]:
        """``settle`` for a loop: polls without blocking it."""
        deadline = time.monotonic() + timeout
        while True:
            lines = self.check(condition, deadline)
            if lines is not None:
                return lines
            await asyncio.sleep(0.01)

    async def wait_count(self, name: str, type: str, count: int, timeout: float = 5.0) -> List[float]:
        """Wait for at least ``count`` lines of ``name``/``type``; return their values."""
        await self.wait_for(lambda lines: sum(1 for x in lines if x.name == name and x.type == type) >= count, timeout)
        return self.values(name, type)

    def quiet(self, quiet: float = 0.05, limit: float = 1.0) -> int:
        """Wait until no datagram has arrived for ``quiet`` seconds (at most ``limit``); return the count."""
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
