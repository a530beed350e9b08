"""The test suite's receiver: the shared one, holding every line to what loopstat may write."""

from __future__ import annotations

from loopstat.cli import statsd

#: One line as received.
Line = statsd.Sample


class Receiver(statsd.Receiver):
    """A strict receiver on 127.0.0.1: a line loopstat should never write lands in ``bad``."""

    def __init__(self, port: int = 0) -> None:
        super().__init__(port=port, strict=True)
