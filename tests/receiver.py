"""The test suite's receiver: the shared one, holding every line to what loopstat may write."""

from __future__ import annotations

from typing import List, Optional

from loopstat.cli import statsd

#: One line as received.
Line = statsd.Sample

# How long a test waits for lines by default. The waits end as soon as the lines
# are there, so a generous deadline costs nothing, and it holds on a loaded machine.
TIMEOUT = 30.0


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
