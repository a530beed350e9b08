"""The test suite's receivers, holding every line to what loopstat may write: ``Receiver`` on a real socket,
``Collected`` in memory for a monitor built with it (``Monitor(connection=...)``)."""

from __future__ import annotations

from typing import List, Optional, Union

from loopstat.cli import statsd

#: One line as received.
Line = statsd.Sample

# How long a test waits for lines by default. The waits end as soon as the lines
# are there, so a generous deadline costs nothing, and it holds on a loaded machine.
TIMEOUT = 30.0


class Collected:
    """What a monitor sends, kept in memory: the connection a test gives ``Monitor(connection=...)`` to read
    the lines without a socket, when it checks only what the probes produce (the sockets have tests of their own).
    """

    def __init__(self) -> None:
        #: The lines sent so far, parsed, in order.
        self.lines: List[Line] = []
        #: Lines loopstat should never write.
        self.bad: List[str] = []
        self.closed = False

    def send(self, data: Union[bytes, bytearray]) -> int:
        assert not self.closed, "sent on after close()"
        for text, parsed in statsd.read(bytes(data), strict=True):
            if isinstance(parsed, statsd.Sample):
                self.lines.append(parsed)
            else:
                self.bad.append(text)
        return len(data)

    def close(self) -> None:
        self.closed = True

    def values(self, name: str, type: str) -> List[float]:
        """The values of the lines of one name and type, in the order sent."""
        return [line.value for line in self.lines if line.name == name and line.type == type]


class Receiver(statsd.Receiver):
    """A strict receiver on 127.0.0.1: a line loopstat should never write lands in ``bad``.

    With ``path``, on a Unix datagram socket bound there, as the Datadog Agent's.
    """

    def __init__(self, port: int = 0, path: Optional[str] = None) -> None:
        super().__init__(port=port, path=path, strict=True)

    def settle(self, condition: statsd.Condition, timeout: float = TIMEOUT) -> List[Line]:
        return super().settle(condition, timeout)

    async def wait_for(self, condition: statsd.Condition, timeout: float = TIMEOUT) -> List[Line]:
        return await super().wait_for(condition, timeout)

    async def wait_count(self, name: str, type: str, count: int, timeout: float = TIMEOUT) -> List[float]:
        return await super().wait_count(name, type, count, timeout)
