"""The test suite's receiver: the shared one, holding every line to what loopstat may write."""

from __future__ import annotations

from typing import Optional

from loopstat.cli import statsd

#: One line as received.
Line = statsd.Sample


class Receiver(statsd.Receiver):
    """A strict receiver on 127.0.0.1: a line loopstat should never write lands in ``bad``.

    With ``path``, on a Unix datagram socket bound there, as the Datadog Agent's.
    """

    def __init__(self, port: int = 0, path: Optional[str] = None) -> None:
        super().__init__(port=port, path=path, strict=True)
