"""Transports: one connected non-blocking socket each, and how a payload goes out on it.

``udp`` finds the agent's address (a host name is looked up off the loop) and
opens its socket; ``unix`` opens the Agent's Unix socket, datagram or stream;
``unix_stream`` sends length-prefixed frames on a stream. The sink batches and
encodes the lines, and keeps the accounts and the fault log; a transport only
says which lines went out and which were lost.

A ``Connection`` given to ``Monitor(connection=...)`` takes the socket's place
(as its datagrams, each payload at once): the one way for a test to read what a
monitor sends without a socket (``tests/receiver.py``'s ``Collected``).
"""

from __future__ import annotations

import errno
from typing import Callable, Protocol, Union

#: Told the number of lines that went out, or that were lost.
Counted = Callable[[int], None]

#: Send errors that mean a full buffer, not an absent Agent: drop and go on.
FULL = (errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS)


class Connection(Protocol):
    """What a transport sends on: a connected socket, or what a test gives the monitor instead of one."""

    def send(self, __data: Union[bytes, bytearray]) -> int:
        """Send ``data``, or raise OSError; the bytes taken."""

    def close(self) -> None:
        """Release it; nothing is sent after."""


class Datagrams:
    """A connected datagram socket (UDP or Unix): each payload goes out as one datagram, or not at all."""

    def __init__(self, sock: Connection, sent: Counted, dropped: Counted) -> None:
        self.sock = sock
        self._sent = sent
        self._dropped = dropped

    def send(self, data: bytes, count: int) -> None:
        """Send one payload of ``count`` lines; OSError as the socket raises it."""
        self.sock.send(data)
        self._sent(count)

    def lost(self, count: int) -> int:
        """Lines lost with a payload of ``count`` lines that the socket refused: all of them."""
        return count

    def close(self) -> None:
        """Close the socket; lines held back, if any, count as dropped."""
        self.sock.close()
