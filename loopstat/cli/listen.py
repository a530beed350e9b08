"""Listen: the UDP socket of the watch receiver, feeding a board from the event loop."""

from __future__ import annotations

import asyncio
import errno
from typing import Tuple

from loopstat.cli.board import Board


class ListenError(Exception):
    """The receiver cannot listen where it was asked to; the message is one line for a person."""


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, board: Board) -> None:
        self.board = board

    def datagram_received(self, data: bytes, addr: Tuple[str, int]) -> None:
        self.board.feed(data)

    def error_received(self, exc: Exception) -> None:
        pass  # a receiver sends nothing; ICMP errors are not ours to report


async def listen(board: Board, host: str, port: int) -> Tuple[asyncio.DatagramTransport, int]:
    """Bind a UDP socket on ``host:port``; return the transport and the port actually bound."""
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
