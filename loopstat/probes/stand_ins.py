"""The stand-ins for blocking functions: one registry for the whole process, shared by every loop's counter.

While at least one ``BlockingCalls`` probe is watched, each target function
is replaced by its stand-in; when the last goes, the originals come back.
Off the thread of a watched loop a stand-in costs one thread-id check and
passes the call on; on it, the call goes to that loop's probe to be counted.

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
import sys
import threading
import weakref
from dataclasses import dataclass
from threading import get_ident
from time import perf_counter
from types import FrameType, ModuleType
from typing import TYPE_CHECKING, Any, Callable, Dict, FrozenSet, List, Optional, Sequence, Tuple

from loopstat import _fork
from loopstat._stand_in import StandIn
from loopstat.probes.frames import APPLICATION, Frame, owner, walk

if TYPE_CHECKING:
    from loopstat.probes.blocking import BlockingCalls

# Under the blocking-calls probe's logger, as before the split: filters set on it keep working.
log = logging.getLogger("loopstat.probes.blocking")

# Whether one call blocks, from its arguments (``self`` first for methods).
Blocks = Callable[..., bool]


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


def watch(probe: BlockingCalls, targets: Sequence[Target]) -> None:
    """Count the blocking calls of ``probe``'s loop; the stand-ins for ``targets`` come if none are in place."""
    global _probes
    with _lock:
        _probes = (*_probes, weakref.ref(probe, _gone))
        rethread()
        if not _stand_ins and not _broken:
            _install(targets)


def unwatch(probe: BlockingCalls) -> None:
    """Stop counting for ``probe``; the originals come back once no probe is left."""
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
    rethread()
    if not _probes:
        _uninstall()


def rethread() -> None:
    """Learn again which threads run a watched loop (a probe saw its loop move to another thread)."""
    global _threads
    with _lock:
        alive = (ref() for ref in _probes)
        _threads = frozenset(probe.thread_id for probe in alive if probe is not None)


def _install(targets: Sequence[Target]) -> None:
    for target in targets:
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
    if probe is None or probe.inside:
        return inner(*args, **kwargs)
    result: Any = _NOTHING
    start = perf_counter()
    try:
        probe.inside = True  # in the try: whatever interrupts, the finally clears it
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
                probe.inside = True  # its log line's own writes do not count either
                _fail(target, error)
        finally:
            probe.inside = False


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
        if probe is not None and probe.loop is loop and not probe.closed:
            return probe
    return None
