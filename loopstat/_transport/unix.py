"""The Agent's Unix socket, datagram or stream: opened connected and non-blocking, nothing looked up.

Its faults are immediate: ``connect()`` fails while the socket file is absent
or not writable, and ``send()`` fails once the Agent has closed its end. A
``unix://`` path may be either type of socket, as Datadog's clients find out:
the datagram type is tried first.
"""

from __future__ import annotations

import errno
import socket

# A Unix socket's send buffer bounds its datagrams on some systems (macOS
# starts at 2 KiB); datadogpy raises it to this, as does loopstat.
MIN_UNIX_SEND_BUFFER = 32 * 1024

# The socket types to try for each kind of path: "datagram", "stream", or either ("auto").
_TYPES = {"datagram": (socket.SOCK_DGRAM,), "stream": (socket.SOCK_STREAM,)}
_EITHER = (socket.SOCK_DGRAM, socket.SOCK_STREAM)


def connect(kind: str, path: str) -> socket.socket:
    """A connected non-blocking socket to ``path`` of ``kind``; OSError if it cannot be had now (nothing waits)."""
    types = _TYPES.get(kind, _EITHER)
    for type_ in types[:-1]:
        try:
            return _open(type_, path)
        except OSError as exc:
            if exc.errno != errno.EPROTOTYPE:
                raise
            # unix://: the file is the other type of socket
    return _open(types[-1], path)


def _open(type_: int, path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, type_)
    try:
        sock.setblocking(False)
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) < MIN_UNIX_SEND_BUFFER:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, MIN_UNIX_SEND_BUFFER)
        # The file is checked and the Agent's socket found at once (a full backlog refuses with EAGAIN).
        sock.connect(path)
    except BaseException:
        sock.close()
        raise
    return sock
