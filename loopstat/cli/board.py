"""Board: every metric the watch receiver has seen, fed by its UDP socket."""

from __future__ import annotations

import asyncio
import errno
import time
from typing import Callable, Dict, List, Optional, Set, Tuple

from loopstat.cli import statsd
from loopstat.cli.series import Series
from loopstat.tags import joined

Key = Tuple[str, str, Tuple[str, ...]]

#: Seconds without data after which a row is marked stale (at most half the drop time).
STALE_MARK = 5.0
#: Default seconds without data after which a row is dropped.
STALE_DROP = 60.0

#: The loop a sender watches, as its metrics tell it: only a stdlib selector loop sends ``iteration``
#: (loopstat times its selector); ``utilization`` (on by default) comes from every loop, on uvloop
#: from the thread's CPU time. A sender that sends neither (utilization off) is not named.
SELECTOR_LOOP = "asyncio (selector timed)"
NO_SELECTOR_LOOP = "uvloop or alike (no Python selector)"
# Samples of utilization without iteration before a loop is named as one without a selector:
# a sample's lines may come in two datagrams, the iteration line in the second.
NO_ITERATION_SAMPLES = 2


class Board:
    """Feeds datagrams into one ``Series`` per (name, type, tags); never raises on bad input."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, stale: float = STALE_DROP) -> None:
        self.series: Dict[Key, Series] = {}
        self.lines = 0
        self.bad = 0
        self.last_bad: Optional[str] = None
        #: Events and service checks: well-formed, but not shown.
        self.other = 0
        #: Seconds of silence after which a row is dropped, and after which it is marked stale.
        self.stale = stale
        self.stale_mark = min(STALE_MARK, stale / 2)
        #: Clock time of the latest line of each sender.
        self._senders: Dict[str, float] = {}
        self._clock = clock
        self._listeners: List[Callable[[float, statsd.Sample], None]] = []

    def listen(self, listener: Callable[[float, statsd.Sample], None]) -> None:
        """Call ``listener(now, sample)`` for every metric line received from now on."""
        self._listeners.append(listener)

    def feed(self, datagram: bytes) -> None:
        now = self._clock()
        for line, sample in statsd.read(datagram):
            self.lines += 1
            if sample is None:
                self.bad += 1
                self.last_bad = line[:120]
            elif isinstance(sample, statsd.Other):
                self.other += 1
            else:
                key = (sample.name, sample.type, tuple(sorted(joined([tag]) for tag in sample.tags)))
                series = self.series.get(key)
                if series is None:
                    series = self.series[key] = Series(*key)
                series.add(now, sample.value, sample.relative)
                self._senders[series.sender] = now
                for listener in self._listeners:
                    listener(now, sample)

    def silence(self, series: Series, now: float) -> float:
        """Seconds since a series was last heard of.

        Gauges come every sample; counters and timings only when something
        happens (a stall), so they are live as long as their sender is.
        """
        heard = series.updated if series.updated is not None else now
        if series.type != "g":
            heard = max(heard, self._senders.get(series.sender, heard))
        return now - heard

    def rows(self) -> List[Series]:
        """The series to show, by sender, then name, type and tags; drops those silent for ``stale`` seconds."""
        now = self._clock()
        for key, series in list(self.series.items()):
            if self.silence(series, now) >= self.stale:
                del self.series[key]
        senders = {series.sender for series in self.series.values()}
        self._senders = {sender: at for sender, at in self._senders.items() if sender in senders}
        return sorted(self.series.values(), key=lambda s: (s.sender, s.name, s.type, s.tags))

    def now(self) -> float:
        return self._clock()

    def loops(self) -> Dict[str, str]:
        """The loop each sender watches (``SELECTOR_LOOP`` or ``NO_SELECTOR_LOOP``), for senders whose metrics tell."""
        iteration: Set[str] = set()
        utilization: Dict[str, int] = {}
        for series in self.series.values():
            if series.type != "g":
                continue
            if _named(series.name, "iteration"):
                iteration.add(series.sender)
            elif _named(series.name, "utilization"):
                utilization[series.sender] = max(utilization.get(series.sender, 0), series.received)
        kinds = {sender: NO_SELECTOR_LOOP for sender, n in utilization.items() if n >= NO_ITERATION_SAMPLES}
        kinds.update((sender, SELECTOR_LOOP) for sender in iteration)
        return kinds


def _named(name: str, metric: str) -> bool:
    """Whether ``name`` is loopstat's ``metric`` under any prefix."""
    return name == metric or name.endswith("." + metric)


class ListenError(Exception):
    """The receiver cannot listen where it was asked to; the message is one line for a person."""


class _Protocol(asyncio.DatagramProtocol):
    """Feeds the board on the loop that draws it, so neither needs a lock; ``statsd.read`` parses."""

    def __init__(self, board: Board) -> None:
        self.board = board

    def datagram_received(self, data: bytes, addr: Tuple[str, int]) -> None:
        self.board.feed(data)

    def error_received(self, exc: Exception) -> None:
        pass  # a receiver sends nothing; ICMP errors are not ours to report


async def listen(board: Board, host: str, port: int) -> Tuple[asyncio.DatagramTransport, int]:
    """Bind a UDP socket on ``host:port`` feeding ``board``; return the transport and the port actually bound."""
    loop = asyncio.get_running_loop()
    try:
        transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(board), local_addr=(host, port))
    except OSError as exc:
        where = f"udp://{host}:{port}"
        if exc.errno == errno.EADDRINUSE:
            raise ListenError(
                f"cannot listen on {where}: the port is in use (is another receiver or agent running?)"
            ) from None
        reason = exc.strerror or str(exc)
        raise ListenError(f"cannot listen on {where}: {reason}") from None
    bound: int = transport.get_extra_info("sockname")[1]
    return transport, bound
