"""UDP to a StatsD server or agent: its address found off the loop, its socket connected and non-blocking.

A host name is looked up in a daemon thread, one per host in the whole
process, as a lookup may take as long as the resolver likes. A connected UDP
socket sends no packet when it connects, and an absent agent shows as an
error on the next ``send()`` (Linux stores the ICMP refusal on it), so errors
are seen without a reader waking the loop.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from typing import Any, Deque, Dict, List, Optional, Tuple, Union

from loopstat import _fork, _threads

#: Where to send: the socket family and the address to connect to.
Address = Tuple[int, Tuple[Any, ...]]
Lookup = Union[Tuple[int, Tuple[Any, ...]], BaseException]


def lookup(host: str) -> Tuple[int, Tuple[Any, ...]]:
    """Resolve ``host`` to one (family, address with port 0), IPv4 first: agents listen on IPv4 by default."""
    infos = socket.getaddrinfo(host, 0, type=socket.SOCK_DGRAM)
    infos.sort(key=lambda info: info[0] != socket.AF_INET)
    return int(infos[0][0]), tuple(infos[0][4])


class Lookups:
    """Host lookups in flight in this process: at most one thread per host, whatever the number of sinks.

    A lookup can take as long as the resolver likes (30 s and more when DNS is
    down); sinks started and stopped meanwhile wait for the same answer
    instead of starting threads of their own.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: Dict[str, List[Deque[Lookup]]] = {}

    def start(self, host: str, inbox: Deque[Lookup]) -> None:
        """Have the result for ``host`` appended to ``inbox`` (deque appends are thread-safe)."""
        with self._lock:
            waiting = self._waiting.get(host)
            if waiting is not None:
                waiting.append(inbox)
                return
            self._waiting[host] = [inbox]
        try:
            _threads.Hidden("loopstat-lookup", self._work, host)
        except RuntimeError as exc:  # no thread to be had (interpreter ending, limits): report, never raise
            self._finish(host, exc)

    def cancel(self, host: str, inbox: Deque[Lookup]) -> None:
        """A sink that closed no longer wants the answer."""
        with self._lock:
            waiting = self._waiting.get(host, [])
            if any(x is inbox for x in waiting):
                waiting[:] = [x for x in waiting if x is not inbox]

    def _work(self, host: str) -> None:
        result: Lookup
        try:
            result = lookup(host)
        except Exception as exc:  # gaierror, UnicodeError, anything: report, never raise
            result = exc
        self._finish(host, result)

    def _finish(self, host: str, result: Lookup) -> None:
        with self._lock:
            inboxes = self._waiting.pop(host, [])
        for inbox in inboxes:
            inbox.append(result)

    def after_fork_in_child(self) -> None:
        # The lookup threads stayed in the parent; the lock may have been held at fork.
        self._lock = threading.Lock()
        self._waiting = {}


lookups = Lookups()


def after_fork_in_child() -> None:
    """Forget the parent's lookups (through loopstat/_fork.py)."""
    lookups.after_fork_in_child()


_fork.join(after_in_child=after_fork_in_child)


def ip_address(host: str) -> Optional[Address]:
    """The address of ``host`` if it is an IP address, which needs no lookup; None for a host name."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    return (socket.AF_INET if ip.version == 4 else socket.AF_INET6), (host, 0)


def connect(family: int, address: Tuple[Any, ...]) -> socket.socket:
    """A connected non-blocking UDP socket (no packet leaves); OSError if it cannot be had now."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return sock
