"""The tests' one way to pick a loopback port for a server they start."""

from __future__ import annotations

import socket
from typing import Literal

KINDS = {"udp": socket.SOCK_DGRAM, "tcp": socket.SOCK_STREAM}


def free_port(kind: Literal["udp", "tcp"] = "udp") -> int:
    """A port of 127.0.0.1 on which nothing listens right now, for UDP or TCP."""
    with socket.socket(socket.AF_INET, KINDS[kind]) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
