"""Frames: a loop thread's stack, read and told apart (Python's own code, loopstat's, a package's, yours).

Shared by the stall watchdog, the blocking-call probe and the profile: each
names the innermost frame of the application's code, the same way. The
watchdog and the profile read the loop thread's stack from threads of their
own, through ``sys._current_frames()``, a private function, called here only
(on CPython 3.11 through a faulthandler dump instead, stack_dump.py):
never on a free-threaded Python without the GIL (where that read may crash
the process), and never again in a process where it once failed.
"""

from __future__ import annotations

import functools
import linecache
import logging
import os
import stat
import sys
import sysconfig
import threading
from types import FrameType
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple

from loopstat import _fork
from loopstat.probes import stack_dump
from loopstat.probes.gc import _on_gc
from loopstat.probes.signals import _on_gc as _signals_on_gc

# The watchdog walks at most this many frames from the innermost: it holds the
# GIL while it walks, and the loop may want it back, whatever the depth.
STACK_WALK = 1000
# Frames kept in ``Stall.stack``: the innermost ones, where the loop is stuck,
# and, when the walk reached them, the outermost ones, which say who runs it.
STACK_INNER = 90
STACK_OUTER = 10
# ``Stall.stack`` is at most this many bytes (UTF-8), each of its lines at most
# LINE_CHARS characters.
STACK_BYTES = 64 * 1024
LINE_CHARS = 240
# Source lines are read only from regular files up to this size.
SOURCE_BYTES = 4 * 1024 * 1024

log = logging.getLogger(__name__)

# filename, line number, function
Frame = stack_dump.Frame
# (filename, function) of the frames around a callback, outermost first.
Outer = Tuple[Tuple[str, str], ...]


def free_threaded() -> bool:
    """True on a free-threaded Python build (3.13t and later) running without the GIL."""
    gil_enabled = getattr(sys, "_is_gil_enabled", None)
    if gil_enabled is not None:
        return not gil_enabled()
    return bool(sysconfig.get_config_var("Py_GIL_DISABLED"))


class StacksUnreadable(RuntimeError):
    """Other threads' stacks cannot be read in this process; the message says why."""


FREE_THREADED = "free-threaded Python without the GIL, where reading another thread's stack may crash the process"
# Why sys._current_frames() failed in this process (None while it has not): it is not called again.
_failed: Optional[str] = None
# Set once the stall watch has said that stalls go unlocated: said once per process.
_said = False
# What the watchdog found out, for the loop's thread to log (level, why): a log record made on
# the watchdog's hidden thread would register it with threading, as a dummy Thread.
_untold: Optional[Tuple[int, str]] = None
_lock = threading.Lock()


def stacks_of(
    thread_ids: Iterable[int], read: Callable[[], None] = lambda: None
) -> Dict[int, Tuple[List[Frame], bool]]:
    """The stacks of those threads that run Python code, as ``walk`` gives them; StacksUnreadable where
    they cannot be read. On CPython 3.11, ``read`` is called as soon as they are read, before anything
    lets the other threads run on."""
    wanted = set(thread_ids)
    if stack_dump.DUMPED:
        return _dumped(read, wanted)
    frames = current_frames()
    return {ident: walk(frames[ident]) for ident in wanted if ident in frames}


def _dumped(read: Callable[[], None], wanted: Set[int]) -> Dict[int, Tuple[List[Frame], bool]]:
    """The stacks of the ``wanted`` threads, read from a faulthandler dump (on CPython 3.11, where walking another
    thread's frames may crash the process: see stack_dump.py); StacksUnreadable where they cannot be."""
    if free_threaded():
        raise StacksUnreadable(FREE_THREADED)
    if _failed is not None:
        raise StacksUnreadable(_failed)
    try:
        return stack_dump.read_stacks(read, wanted)
    except stack_dump.DumpFailed as exc:
        raise _failure(str(exc)) from exc


def _failure(why: str) -> StacksUnreadable:
    """Stacks are not read again in this process: the reason, as StacksUnreadable."""
    global _failed
    _failed = why
    return StacksUnreadable(why)


def current_frames() -> Dict[int, FrameType]:
    """Every thread's innermost frame, by thread id; StacksUnreadable where they cannot be read."""
    if free_threaded():
        raise StacksUnreadable(FREE_THREADED)
    if _failed is not None:
        raise StacksUnreadable(_failed)
    try:
        return sys._current_frames()
    except Exception as exc:  # a later Python or another implementation may lack it, or refuse
        raise _failure(f"sys._current_frames() failed: {type(exc).__name__}: {exc}") from exc


def stall_stacks_readable() -> bool:
    """For the stall watch as it starts: False on a free-threaded build, said once per process at INFO."""
    if free_threaded():
        _unlocated(FREE_THREADED, logging.INFO)
        return False
    if stack_dump.DUMPED:
        try:
            stack_dump.ready()
        except stack_dump.DumpFailed as exc:  # said at the first stall
            _failure(str(exc))
    return True


def thread_stack(thread_id: int, read: Callable[[], None] = lambda: None) -> Tuple[List[Frame], bool]:
    """For the stall watchdog: the stack of another thread, as ``walk`` gives it; ([], True) where it
    cannot be read, which is said once per process, by ``tell()`` on a loop's thread."""
    try:
        stacks = stacks_of((thread_id,), read)
    except StacksUnreadable as exc:
        _unlocated(str(exc), logging.WARNING, later=True)
        return [], True
    return stacks.get(thread_id, ([], True))


def tell() -> None:
    """Log what the watchdog found out (stalls go unlocated), if anything; called on a loop's thread."""
    global _untold
    if _untold is None:
        return
    with _lock:
        untold, _untold = _untold, None
    if untold is not None:
        _log_unlocated(*untold)


def _unlocated(why: str, level: int, later: bool = False) -> None:
    """Say once per process that stalls go unlocated: now, or ``later`` through ``tell()``."""
    global _said, _untold
    with _lock:
        if _said:
            return
        _said = True
        if later:
            _untold = (level, why)
            return
    _log_unlocated(level, why)


def _log_unlocated(level: int, why: str) -> None:
    log.log(level, "loopstat: stalls are counted and timed without their location (%s)", why)


def after_fork_in_child() -> None:
    """Called in the child (through loopstat/_fork.py)."""
    global _lock
    _lock = threading.Lock()  # another thread may have held it at fork


_fork.join(after_in_child=after_fork_in_child)


def walk(frame: Optional[FrameType]) -> Tuple[List[Frame], bool]:
    """The stack ending at ``frame``, innermost last, at most ``STACK_WALK`` deep; True if whole."""
    frames: List[Frame] = []
    while frame is not None and len(frames) < STACK_WALK:
        code = frame.f_code
        frames.append((code.co_filename, frame.f_lineno or 0, code.co_name))
        frame = frame.f_back
    whole = frame is None
    frames.reverse()
    return frames, whole


def outer_of(frame: Optional[FrameType]) -> Outer:
    """(file, function) of ``frame`` and the frames around it, outermost first; () if too deep to walk."""
    frames, whole = walk(frame)
    return tuple((f[0], f[2]) for f in frames) if whole else ()


def where(frame: Optional[Frame]) -> Optional[str]:
    return None if frame is None else f"{_short(frame[0], _cwd())}:{frame[1]} in {frame[2]}"


PYTHON, LOOPSTAT_CODE, PACKAGE, APPLICATION = range(4)
_PACKAGES = ("site-packages", "dist-packages")
_STDLIB = tuple({os.path.join(sysconfig.get_paths()[name], "") for name in ("stdlib", "platstdlib")})
_LOOPSTAT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "")
# The stand-ins for blocking functions (blocking_calls=True) pass the application's
# calls on: in a stack they count as the function they stand for, Python's own.
_STAND_INS = os.path.join(_LOOPSTAT, "probes", "stand_ins.py")
# (file, function) of loopstat's code the collector runs inside whatever allocates: its GC hooks (gc=True, and
# the stall causes') and a dropped monitor's finalizer.
_GC_HOOKS = {(hook.__code__.co_filename, hook.__code__.co_name) for hook in (_on_gc, _signals_on_gc)}
_GC_HOOKS.add((os.path.join(_LOOPSTAT, "monitor.py"), "__del__"))


@functools.lru_cache(maxsize=1024)
def owner(filename: str) -> int:
    """Whose code a file holds: Python's own, loopstat's, an installed package's or the application's."""
    if filename == _STAND_INS:
        return PYTHON
    if filename.startswith(_LOOPSTAT):
        return LOOPSTAT_CODE
    if any(part in filename for part in _PACKAGES):
        return PACKAGE
    if filename.startswith("<frozen") or filename.startswith(_STDLIB):
        return PYTHON
    return APPLICATION


def loopstat_file(filename: str) -> bool:
    """Whether a file is loopstat's own, stand-ins included: such frames are never shown as the application's."""
    return filename.startswith(_LOOPSTAT)


def callback_frames(frames: Sequence[Frame], whole: bool, outer: Outer) -> Optional[Sequence[Frame]]:
    """The frames of the callback the loop is stuck in; None when it is stuck in the loop itself.

    ``outer`` are the frames around every callback of this run. A stack too
    deep to walk whole is all callback: its outer frames are out of sight.
    """
    if not whole or not outer:
        return frames
    shared = 0
    for frame, (filename, function) in zip(frames, outer):
        if (frame[0], frame[2]) != (filename, function):
            break
        shared += 1
    rest = frames[shared:]
    if shared == len(outer):
        return rest or None
    if shared and all(owner(f[0]) in (PYTHON, LOOPSTAT_CODE) for f in rest):
        return None  # in the loop's own machinery, between callbacks
    return frames  # a stack of another run: every frame may be to blame


def culprit(frames: Sequence[Frame]) -> Optional[Frame]:
    """The innermost frame of the application, else of an installed package, else the innermost.

    Installed packages come second to the application's own code, which is
    what called them; Python's own modules and loopstat's never count.
    """
    package = None
    for frame in reversed(frames):
        whose = owner(frame[0])
        if whose == APPLICATION:
            return frame
        if whose == PACKAGE and package is None:
            package = frame
    return package or (frames[-1] if frames else None)


def blame(frames: Sequence[Frame], whole: bool, outer: Outer) -> Tuple[Optional[Frame], bool]:
    """The frame to name for what a loop's thread is doing, and True if that is loopstat's own doing.

    (None, False) in the loop itself, between callbacks. loopstat's own: its
    code is the innermost that is not Python's (what it called in Python runs
    for it), or the callback has its code and none of the application's (what
    it called in a package runs for it). Not its GC hook, which runs inside
    whatever allocates: a long C call that allocates (``json.loads``) is seen there.
    """
    callback = callback_frames(frames, whole, outer)
    if callback is None:
        return None, False
    kinds = [owner(f[0]) if (f[0], f[2]) not in _GC_HOOKS else PYTHON for f in callback]
    # loopstat's GC hooks and finalizers (a dropped monitor's __del__) run inside whatever allocates:
    # what they call is theirs too, not the application's.
    finalizer = next(
        (
            i
            for i, f in enumerate(callback)
            if (f[0], f[2]) in _GC_HOOKS or (f[2] == "__del__" and owner(f[0]) == LOOPSTAT_CODE)
        ),
        None,
    )
    if finalizer is not None and APPLICATION in kinds[:finalizer]:
        kinds[finalizer:] = [PYTHON] * (len(kinds) - finalizer)
    innermost = next((i for i in reversed(range(len(callback))) if kinds[i] != PYTHON), None)
    if innermost is not None and kinds[innermost] == LOOPSTAT_CODE:
        return callback[innermost], True
    if APPLICATION not in kinds and LOOPSTAT_CODE in kinds:
        return callback[len(kinds) - 1 - kinds[::-1].index(LOOPSTAT_CODE)], True
    # A stand-in is named as the call it passes on: at the application's line that made it.
    return culprit([f for f in callback if not loopstat_file(f[0])]), False


def locate(frames: Sequence[Frame], outer: Outer = (), whole: bool = True) -> Optional[str]:
    """``file:line in function`` of the innermost application frame of the callback that blocked.

    None when the loop was stuck outside any callback (in the loop itself).
    """
    callback = callback_frames(frames, whole, outer)
    return None if callback is None else where(culprit(callback))


def _cwd() -> str:
    try:
        return os.path.join(os.getcwd(), "")
    except OSError:  # the working directory was deleted: nothing to shorten
        return ""


def _short(filename: str, cwd: str) -> str:
    return filename[len(cwd) :] if cwd and filename.startswith(cwd) else filename


def _source(filename: str, lineno: int, readable: Dict[str, bool]) -> str:
    """The source line, read only from a regular file of sane size; "" if there is none."""
    try:
        ok = readable.get(filename)
        if ok is None:
            info = os.stat(filename)
            ok = readable[filename] = stat.S_ISREG(info.st_mode) and info.st_size <= SOURCE_BYTES
        return linecache.getline(filename, lineno).strip() if ok else ""
    except Exception:  # vanished, unreadable, undecodable: the frame is shown without it
        readable[filename] = False
        return ""


def _cut(line: str) -> str:
    return line if len(line) <= LINE_CHARS else line[: LINE_CHARS - 3] + "..."


def format_stack(frames: Sequence[Frame], whole: bool = True) -> str:
    """Frames as a traceback, innermost last, deep stacks cut in the middle, at most ``STACK_BYTES``."""
    if not whole:
        kept_outer: Sequence[Frame] = ()
        # The walk stopped where it had to: STACK_WALK frames deep, stack_dump.DUMP_DEPTH on CPython 3.11.
        gap = f"  ... more than {len(frames) - STACK_INNER} outer frames left out (deeper than {len(frames)}) ..."
    elif len(frames) > STACK_INNER + STACK_OUTER:
        kept_outer = frames[:STACK_OUTER]
        gap = f"  ... {len(frames) - STACK_INNER - STACK_OUTER} frames left out ..."
    else:
        kept_outer, gap = frames, ""
    kept_inner = frames[-STACK_INNER:] if gap else ()
    readable: Dict[str, bool] = {}

    def lines_of(part: Sequence[Frame]) -> List[str]:
        lines = []
        for filename, lineno, function in part:
            lines.append(_cut(f'  File "{filename}", line {lineno}, in {function}'))
            source = _source(filename, lineno, readable)
            if source:
                lines.append(_cut(f"    {source}"))
        return lines

    outer_lines, inner_lines = lines_of(kept_outer), lines_of(kept_inner)
    if gap:
        outer_lines.append(gap)
    # Over the byte limit, the outermost lines go first: the innermost show where it is stuck.
    lines = outer_lines + inner_lines
    size = sum(len(line.encode("utf-8", "replace")) + 1 for line in lines)
    dropped = 0
    while size > STACK_BYTES - 100 and lines:
        size -= len(lines.pop(0).encode("utf-8", "replace")) + 1
        dropped += 1
    if dropped:
        lines.insert(0, f"  ... {dropped} outer lines left out to keep the stack under {STACK_BYTES} bytes ...")
    return "\n".join(lines)
