"""The Agent's Unix stream socket: each payload goes out after its length, 4 bytes little-endian.

A stream may take part of a payload: the rest waits in a small buffer and goes
first on the next send, so a frame is never cut; what does not fit there is
dropped (counted).
"""

from __future__ import annotations

import socket
import struct
from collections import deque
from typing import Deque, Tuple

from loopstat._transport import Counted, Datagrams

# Bytes of frames a stream socket has not taken yet, at most: a few samples' worth.
MAX_STREAM_BACKLOG = 64 * 1024
# A stream frame's length prefix, as the Agent reads it.
_FRAME_LENGTH = struct.Struct("<I")


class Frames(Datagrams):
    """A connected stream socket: payloads as length-prefixed frames, queued behind what it has not taken."""

    def __init__(self, sock: socket.socket, sent: Counted, dropped: Counted) -> None:
        super().__init__(sock, sent, dropped)
        # Frames (or their rest) not taken yet, and the lines of each, oldest first.
        self._backlog = bytearray()
        self._backlog_lines: Deque[Tuple[int, int]] = deque()

    def send(self, data: bytes, count: int) -> None:
        """Queue one frame behind what the stream has not taken, then give the stream what it takes now."""
        frame = _FRAME_LENGTH.pack(len(data)) + data
        if len(self._backlog) + len(frame) > MAX_STREAM_BACKLOG:
            self._dropped(count)  # the Agent reads too slowly: drop whole frames, never part of one
        else:
            self._backlog += frame
            self._backlog_lines.append((len(frame), count))
        taken = self.sock.send(self._backlog)
        del self._backlog[:taken]
        # Lines count as sent once their whole frame is taken.
        while self._backlog_lines and taken >= self._backlog_lines[0][0]:
            size, lines = self._backlog_lines.popleft()
            taken -= size
            self._sent(lines)
        if taken and self._backlog_lines:
            size, lines = self._backlog_lines[0]
            self._backlog_lines[0] = (size - taken, lines)

    def lost(self, count: int) -> int:
        """None yet: a refused frame waits in the backlog (dropped with it if the connection goes)."""
        return 0

    def close(self) -> None:
        self._dropped(sum(count for _, count in self._backlog_lines))
        self._backlog.clear()
        self._backlog_lines.clear()
        super().close()
