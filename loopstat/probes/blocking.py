"""Blocking calls: calls that block, made on a watched loop's thread, counted, timed and named.

While at least one monitor asks for it, a stand-in takes the place of each
function in ``TARGETS`` (module attributes, and methods of ``socket.socket``,
``ssl.SSLSocket``, ``subprocess.Popen`` and ``pathlib.Path``), once for the whole process. Off
the thread of a watched loop a stand-in costs one thread-id check and passes
the call on. On it, the call counts if it can block (a socket only in blocking
mode: asyncio and uvloop run their own I/O on non-blocking sockets, so the
loop's machinery never counts) and if the loop running there is watched; then
it is timed, and its call site, the innermost application frame, is noted.
Calls made inside a counted call (``subprocess.run`` waiting in
``Popen.wait``) count once, as the outer one.

A module that took the function before the stand-in came (``from time import
sleep``) keeps calling the original: such calls are not seen.

One stand-in is made per function, for the life of the process, and it is
never wrapped: a stand-in that another tool saved and put back after the
stand-ins were taken out (pytest's ``monkeypatch`` around a monitored loop)
is recognised when they come back, and stands for the original again, one
layer deep. A fault of the stand-ins' own bookkeeping takes them out for good,
with one warning; the call that met it goes to the original.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import pathlib
import select
import socket
import subprocess
import sys
import threading
import time
import weakref
from dataclasses import dataclass
from threading import get_ident
from time import perf_counter
from types import FrameType, ModuleType
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Tuple

from loopstat import _fork
from loopstat._clock import Clock
from loopstat._metrics import Line
from loopstat._rate_limit import RateLimit
from loopstat._stand_in import StandIn
from loopstat.probes import Watched
from loopstat.probes.frames import APPLICATION, Frame, culprit, owner, walk, where
from loopstat.probes.selector_clock import SelectorClock

try:
    import ssl
except ImportError:  # Python built without OpenSSL
    ssl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

# A call site that keeps blocking is logged at most this often.
LOG_EVERY_SECONDS = 60.0
# Call sites remembered for that; beyond it the memory starts afresh.
MAX_SITES = 1000
# A file read whole through pathlib counts from this size: smaller ones (configuration,
# templates) come from the page cache in microseconds.
FILE_BYTES = 1024 * 1024

# Whether one call blocks, from its arguments (``self`` first for methods).
Blocks = Callable[..., bool]


def _sleeps(seconds: Any) -> bool:
    # time.sleep(0) gives up the GIL and nothing else.
    return not (isinstance(seconds, (int, float)) and seconds <= 0)


def _waits(process: Any, *args: Any, **kwargs: Any) -> bool:
    # The exit status already collected: wait() returns at once.
    return process.returncode is None


def _with_timeout(rlist: Any, wlist: Any, xlist: Any, timeout: Any = None) -> bool:
    return timeout is None or timeout > 0


def _streams(sock: Any, *args: Any, **kwargs: Any) -> bool:
    # A datagram goes out at once unless the send buffer is full: StatsD clients on
    # blocking UDP sockets would be counted at every metric they send.
    return bool(sock.type != socket.SOCK_DGRAM)


def _big(content: Any) -> bool:
    return len(content) >= FILE_BYTES


@dataclass(frozen=True)
class Target:
    """One function a stand-in takes the place of."""

    #: Its name as sent (``call:<name>``) and logged.
    call: str
    owner: object
    attribute: str
    #: Whether a call blocks; None: every call may.
    blocks: Optional[Blocks] = None
    #: A socket method: the call blocks if its socket is in blocking mode (``gettimeout()`` None or above 0;
    #: 0.0 is non-blocking, as the loops' own sockets are).
    on_socket: bool = False
    #: Whether a call that returned this counts; None: every call does, whatever it returns or raises.
    counts: Optional[Callable[[Any], bool]] = None


def _targets() -> Tuple[Target, ...]:
    targets = [Target("time.sleep", time, "sleep", _sleeps)]
    for name in ("getaddrinfo", "gethostbyname", "gethostbyname_ex", "gethostbyaddr", "getnameinfo"):
        targets.append(Target(f"socket.{name}", socket, name))
    for name in ("connect", "connect_ex", "accept", "recv", "recv_into", "recvfrom"):
        targets.append(Target(f"socket.socket.{name}", socket.socket, name, on_socket=True))
    for name in ("send", "sendall", "sendto"):
        targets.append(Target(f"socket.socket.{name}", socket.socket, name, _streams, on_socket=True))
    if ssl is not None:
        # An SSL socket reads and writes through its SSL object, not the methods above.
        for name in ("do_handshake", "recv", "recv_into", "send", "sendall"):
            targets.append(Target(f"ssl.SSLSocket.{name}", ssl.SSLSocket, name, on_socket=True))
    targets.append(Target("subprocess.run", subprocess, "run"))
    targets.append(Target("subprocess.Popen.wait", subprocess.Popen, "wait", _waits))
    targets.append(Target("subprocess.Popen.communicate", subprocess.Popen, "communicate"))
    # open() and the read methods of what it returns are C code, out of a stand-in's reach;
    # reading a whole file through pathlib is not.
    for name in ("read_bytes", "read_text"):
        targets.append(Target(f"pathlib.Path.{name}", pathlib.Path, name, counts=_big))
    if sys.platform != "win32":
        # On Windows a selector loop waits in select.select() itself, through the module attribute.
        targets.append(Target("select.select", select, "select", _with_timeout))
    return tuple(targets)


#: Every function watched, in a fixed order; their names are the only values of the ``call`` tag.
TARGETS = _targets()
#: The ``call`` tag's values.
CALLS: Tuple[str, ...] = tuple(target.call for target in TARGETS)


@dataclass
class _Site:
    """One call site of one blocking call: what it did since it was last logged."""

    count: int = 0
    seconds: float = 0.0


Site = Tuple[str, Optional[Frame]]


class BlockingCalls:
    """Counts the blocking calls made on one loop's thread; create it on that thread.

    ``read`` is called on the loop's thread too, as every call it counts is
    made there: nothing here needs a lock.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        fault: Callable[[], None],
        clock: Clock = time.monotonic,
        watched: Optional[Watched] = None,
    ) -> None:
        self.loop = loop
        #: The thread that runs the loop, as seen at the latest read.
        self.thread_id = get_ident()
        self._fault = fault
        # Each call site is logged at most once a minute, with what it did since.
        self._site_log: RateLimit[Site] = RateLimit(LOG_EVERY_SECONDS, MAX_SITES, clock)
        # Where the calls since the last read go at close, and where the time blocked
        # adds up at once for the other probes (utilization on uvloop); None: nowhere.
        self._watched = watched
        # True while a counted call (or this probe's own work) runs: calls made inside it do not count again.
        self._inside = False
        self._counts: Dict[str, int] = {}
        self._seconds: Dict[str, float] = {}
        self._sites: Dict[Site, _Site] = {}
        self._closed = False
        _watch(self)

    def note(self, call: str, seconds: float, frames: List[Frame]) -> None:
        """One blocking call of ``seconds`` made at ``frames`` (the stack, innermost last)."""
        self._counts[call] = self._counts.get(call, 0) + 1
        self._seconds[call] = self._seconds.get(call, 0.0) + seconds
        if self._watched is not None:
            self._watched.blocked += seconds
        key = (call, culprit(frames))
        site = self._sites.get(key)
        if site is None:
            if len(self._sites) >= MAX_SITES:
                self._sites.clear()
                self._site_log.clear()
            site = self._sites[key] = _Site()
        site.count += 1
        site.seconds += seconds

    def read(self, lines: List[Line]) -> None:
        """Append the calls since the previous read, per call; log the call sites due."""
        inside, self._inside = self._inside, True  # a log handler's own socket writes are not the application's
        try:
            ident = get_ident()
            if ident != self.thread_id:
                self.thread_id = ident  # the loop runs in another thread now
                _rethread()
            for call, count in self._counts.items():
                tags = (("call", call),)
                lines.append(("blocking_calls", "c", count, tags))
                lines.append(("blocking_time", "ms", round(self._seconds[call] * 1000.0, 3), tags))
            self._counts.clear()
            self._seconds.clear()
            self._log_sites()
        finally:
            self._inside = inside

    def _log_sites(self) -> None:
        for key, site in self._sites.items():
            if site.count and self._site_log.due(key) is not None:
                call, frame = key
                times = "1 time" if site.count == 1 else f"{site.count} times"
                spent = f"{site.seconds:.1f} s" if site.seconds >= 0.1 else f"{site.seconds * 1000:.1f} ms"
                log.warning(
                    "loopstat: blocking call %s on the event loop at %s (%s, %s in the last minute)",
                    call,
                    where(frame) or "an unknown place",
                    times,
                    spent,
                )
                site.count, site.seconds = 0, 0.0

    def close(self) -> None:
        """Stop counting and send the calls since the last read; the stand-ins go when no probe is left.

        Never raises, safe to repeat.
        """
        if self._closed:
            return
        self._closed = True
        try:
            _unwatch(self)
        except Exception:
            log.debug("loopstat: could not remove the blocking-call stand-ins", exc_info=True)
        try:
            if self._watched is not None and self._counts:
                lines: List[Line] = []
                self.read(lines)
                self._watched.send(lines)
        except Exception:
            log.debug("loopstat: could not send the last blocking calls", exc_info=True)


def attach(watched: Watched) -> Optional[BlockingCalls]:
    """Count blocking calls on ``watched.loop``'s thread (call on that thread); None when the option is off.

    Off by default on stdlib loops: there asyncio's own socket calls pass
    through the stand-ins (measured: +1.54 % instructions per aiohttp request, docs/performance.md).
    """
    on = watched.settings.blocking_calls
    if on is None:
        # Auto: on where no selector is timed (uvloop). There the loop's own I/O runs in C,
        # so the stand-ins cost nothing on its hot path, and utilization counts what they time;
        # on stdlib loops the loop's own socket calls would pass through them.
        on = SelectorClock.selector_of(watched.loop) is None
    if not on:
        return None
    return BlockingCalls(watched.loop, watched.fault, watched=watched)


# The registry. Stand-ins read ``_threads`` and ``_probes`` from any thread:
# both are replaced, never changed. Weak, so that a monitor and its loop
# dropped without being stopped can still be collected; a probe collected
# that way leaves the registry from its weak reference's callback, on
# whatever thread the collector runs, hence a reentrant lock.
_lock = threading.RLock()
_probes: Tuple[weakref.ref[BlockingCalls], ...] = ()
_threads: FrozenSet[int] = frozenset()
_stand_ins: List[StandIn] = []
# Every stand-in made, by (call, id of the original); and the original of each, by the stand-in's id.
# Kept for the life of the process (a few dozen entries), so that an id is never reused.
_made: Dict[Tuple[str, int], Tuple[Callable[..., Any], Callable[..., Any]]] = {}
_originals: Dict[int, Callable[..., Any]] = {}
# Set by the first fault of the stand-ins' own: no stand-in is put in place again in this process.
_broken = False


def _watch(probe: BlockingCalls) -> None:
    global _probes
    with _lock:
        _probes = (*_probes, weakref.ref(probe, _gone))
        _rethread()
        if not _stand_ins and not _broken:
            _install()


def _unwatch(probe: BlockingCalls) -> None:
    global _probes
    with _lock:
        _probes = tuple(ref for ref in _probes if ref() not in (probe, None))
        _settle()


def _gone(ref: weakref.ref[BlockingCalls]) -> None:
    global _probes
    with _lock:
        _probes = tuple(other for other in _probes if other is not ref)
        _settle()


def _settle() -> None:
    """With the lock held: the threads to watch now, and no stand-ins once no probe is left."""
    _rethread()
    if not _probes:
        _uninstall()


def _rethread() -> None:
    global _threads
    with _lock:
        alive = (ref() for ref in _probes)
        _threads = frozenset(probe.thread_id for probe in alive if probe is not None)


def _install() -> None:
    for target in TARGETS:
        there = getattr(target.owner, target.attribute, None)
        if there is None:
            continue
        # One of ours, put back by a tool that had saved it: it stands for its original again, unwrapped.
        original = _originals.get(id(there), there)
        made = StandIn.try_set(target.owner, target.attribute, _made_for(target, original), previous=original)
        if made is not None:  # an owner that refuses it (a type that cannot change) keeps its own
            _stand_ins.append(made)


def original_of(function: Callable[..., Any]) -> Callable[..., Any]:
    """What ``function`` stands for if it is one of loopstat's stand-ins; else ``function`` itself."""
    return _originals.get(id(function), function)


def _made_for(target: Target, original: Callable[..., Any]) -> Callable[..., Any]:
    """The stand-in for ``original``: the same one each time."""
    made = _made.get((target.call, id(original)))
    if made is None:
        stand_in = _stand_in(target, original)
        made = _made[(target.call, id(original))] = (original, stand_in)
        _originals[id(stand_in)] = original
    return made[1]


def _put_back(target: Target, original: Callable[..., Any]) -> None:
    """A stand-in called with no probe left: another tool put it back after the stand-ins were taken out
    (restoring what it had saved). The original takes its place again."""
    with contextlib.suppress(Exception):
        if _originals.get(id(getattr(target.owner, target.attribute, None))) is not original:
            return  # a stand-in kept by reference (``from time import sleep``), its place already the original's
        with _lock:
            if not _probes and _originals.get(id(getattr(target.owner, target.attribute, None))) is original:
                setattr(target.owner, target.attribute, original)


def _fail(target: Target, error: Exception) -> None:
    """A fault of the stand-ins' own: every stand-in passes calls on from now, and goes where it can; one warning."""
    global _broken, _threads
    first = not _broken
    _broken, _threads = True, frozenset()
    if first:
        log.warning(
            "loopstat: blocking calls are no longer counted (the stand-in for %s failed: %r); the other metrics go on",
            target.call,
            error,
        )
    with contextlib.suppress(Exception), _lock:
        _uninstall()


def _uninstall() -> None:
    # Last in, first out: each puts back what was there before it.
    while _stand_ins:
        _stand_ins.pop().remove()


def after_fork_in_child() -> None:
    """Called in a forked child: the parent's monitors do not run here; put the functions back."""
    global _lock, _probes, _threads
    _lock = threading.RLock()  # another thread may have held it at fork
    _probes, _threads = (), frozenset()
    _uninstall()


_fork.join(after_in_child=after_fork_in_child)


def _stand_in(target: Target, inner: Callable[..., Any]) -> Callable[..., Any]:
    """What takes the place of ``inner``: ``inner`` itself, timed when called on a watched loop's thread."""
    if not hasattr(type(inner), "__get__"):
        # A builtin (time.sleep) does not bind when kept as a class attribute; a function would.
        return _named(target, functools.update_wrapper(_Unbound(target, inner), inner))

    def stand_in(*args: Any, **kwargs: Any) -> Any:
        if get_ident() not in _threads:
            if not _probes:
                _put_back(target, inner)
            return inner(*args, **kwargs)
        return _on_a_loop_thread(target, inner, args, kwargs)

    def socket_stand_in(*args: Any, **kwargs: Any) -> Any:
        # The stdlib loop's every read and write comes here: its check is inline, one frame in all.
        if get_ident() in _threads:
            try:
                blocking = args[0].gettimeout() != 0.0  # None: blocking; above 0: up to a timeout
            except Exception:  # not called on a socket: the method says how, in its own words
                blocking = False
            if blocking:
                return _on_a_loop_thread(target, inner, args, kwargs)
        elif not _probes:
            _put_back(target, inner)
        return inner(*args, **kwargs)

    # Name, docstring and signature (through __wrapped__) of the function it stands for, and the
    # module and qualified name of the place it stands in: pickle finds it there, by reference.
    return _named(target, functools.update_wrapper(socket_stand_in if target.on_socket else stand_in, inner))


def _named(target: Target, made: Callable[..., Any]) -> Callable[..., Any]:
    """``made`` under the module and qualified name of the place it stands in (``socket.socket.recv``
    is ``_socket``'s method, ``socket.gethostbyname`` is ``_socket``'s function)."""
    owner = target.owner
    if isinstance(owner, ModuleType):
        made.__module__, made.__qualname__ = owner.__name__, target.attribute
    elif isinstance(owner, type):
        made.__module__, made.__qualname__ = owner.__module__, f"{owner.__qualname__}.{target.attribute}"
    return made


class _Unbound:
    """The stand-in for a builtin function: called as it is, never bound as a method."""

    def __init__(self, target: Target, inner: Callable[..., Any]) -> None:
        self._target = target
        self._inner = inner

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if get_ident() not in _threads:
            if not _probes:
                _put_back(self._target, self._inner)
            return self._inner(*args, **kwargs)
        return _on_a_loop_thread(self._target, self._inner, args, kwargs)

    def __repr__(self) -> str:
        return f"<loopstat stand-in for {self._inner!r}>"

    def __reduce__(self) -> str:
        # Pickled by name, as the builtin is: the module attribute it stands in.
        return self._target.attribute


def _on_a_loop_thread(target: Target, inner: Callable[..., Any], args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
    probe = None
    try:
        # Whether it blocks first: cheaper than finding the loop, and most calls that do not block stop here.
        blocks = target.blocks is None or target.blocks(*args, **kwargs)
    except Exception:  # arguments the function will refuse, in its own words
        blocks = False
    try:
        if blocks:
            probe = _probe_of_running_loop()
    except Exception as error:
        _fail(target, error)
        probe = None
    if probe is None or probe._inside:
        return inner(*args, **kwargs)
    result: Any = _NOTHING
    start = perf_counter()
    try:
        probe._inside = True  # in the try: whatever interrupts, the finally clears it
        result = inner(*args, **kwargs)
        return result
    finally:
        seconds = perf_counter() - start
        try:
            if target.counts is None or (result is not _NOTHING and target.counts(result)):
                # Read after the call: the frames that made it have not moved.
                probe.note(target.call, seconds, _stack(sys._getframe(2)))  # the stand-in's caller, outwards
        except Exception as error:
            with contextlib.suppress(Exception):
                probe._inside = True  # its log line's own writes do not count either
                _fail(target, error)
        finally:
            probe._inside = False


# What a call that raised returned.
_NOTHING: Any = object()


def _stack(caller: FrameType) -> List[Frame]:
    """The frames that made a call, innermost last, as far as its call site needs them.

    Made by the application itself (the usual case), the caller alone: it is
    the innermost application frame. From a package or Python's own modules,
    the whole stack, to find the application code that called them. (Walking
    costs about half a microsecond a frame: each one is made a Python object.)
    """
    code = caller.f_code
    if owner(code.co_filename) == APPLICATION:
        return [(code.co_filename, caller.f_lineno or 0, code.co_name)]
    return walk(caller)[0]


def _probe_of_running_loop() -> Optional[BlockingCalls]:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # the watched loop of this thread is not running now
        return None
    for ref in _probes:
        probe = ref()
        if probe is not None and probe.loop is loop and not probe._closed:
            return probe
    return None
