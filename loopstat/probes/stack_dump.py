"""Stack dump: other threads' stacks read through ``faulthandler.dump_traceback()``, on CPython 3.11.

On CPython 3.11, following ``f_back`` from a frame object of another thread
that runs on can read a frame that thread has already popped, and crash the
process (a segfault in PyFrame_GetBack, reported on 3.11.5 and later, and seen
by tests/stack_storm.py): there ``frames`` reads stacks here instead, by
faulthandler, in one C call that holds the GIL throughout and makes no frame
object, written into a file of loopstat's own and parsed back. What fails here
raises DumpFailed; ``frames`` turns it into StacksUnreadable and stops reading
stacks in that process.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import re
import sys
import tempfile
from typing import Callable, Dict, List, Optional, Set, Tuple

from loopstat import _fork

# filename, line number, function (``frames.Frame``, defined here: frames imports this module)
Frame = Tuple[str, int, str]

# Whether stacks are read here: at most DUMP_DEPTH frames a thread, names longer than 500 characters cut.
DUMPED = sys.implementation.name == "cpython" and sys.version_info[:2] == (3, 11)
DUMP_DEPTH = 100
_HEADER = re.compile(r"(?:Current thread|Thread) (0x[0-9a-fA-F]+) \(most recent call first\):")
_DUMP_LINE = re.compile(r'  File (?:"(.*)"|\?\?\?), line (\d+|\?\?\?) in (.*)')
# What faulthandler writes for a character outside printable ASCII.
_ESCAPE = re.compile(r"\\x([0-9a-f]{2})|\\u([0-9a-f]{4})|\\U([0-9a-f]{8})")
# The dump file's descriptor is moved to at least this number (at most half the process's limit): an
# application that closes descriptors it does not own and opens files of its own gets the lowest free
# numbers, not loopstat's.
FD_FLOOR = 1000
# Files the stacks are dumped into, each a descriptor (no file object to warn at exit) with the process that
# opened it and its (device, inode): taken by one reader at a time, and given back for the next dump.
DumpFile = Tuple[int, int, Tuple[int, int]]
_dump_files: List[DumpFile] = []


class DumpFailed(Exception):
    """Stacks could not be read through a dump; the message says what failed and why."""

    def __init__(self, what: str, exc: BaseException) -> None:
        super().__init__(f"{what}: {type(exc).__name__}: {exc}")


def read_stacks(read: Callable[[], None], wanted: Set[int]) -> Dict[int, Tuple[List[Frame], bool]]:
    """The stacks of the ``wanted`` threads, read by ``faulthandler.dump_traceback()``, as ``parse_dump`` gives
    them; ``read`` is called as soon as they are dumped. DumpFailed where they cannot be read."""
    dump_file = _take()
    try:
        # The dump first: the calls on the file after it let the loop's thread run on (they release the GIL).
        faulthandler.dump_traceback(dump_file[1], all_threads=True)
    except Exception as exc:  # a later faulthandler refuses, or the file is gone
        raise DumpFailed("faulthandler.dump_traceback() failed", exc) from exc
    try:
        read()  # the caller's: what it raises is its own
    finally:
        text = _read_back(dump_file)
    try:
        return parse_dump(text, wanted)
    except Exception as exc:  # a later faulthandler writes otherwise
        raise DumpFailed("faulthandler's dump could not be read", exc) from exc


def _take() -> DumpFile:
    """A file of this process to dump into; taken without a lock: waiting for another reader (the profile's)
    would let the loop's thread run on before the dump."""
    while _dump_files:
        dump_file = _dump_files.pop()
        if dump_file[0] == os.getpid():  # else a parent's, left in a child when fork support is off
            return dump_file
    return _open_dump_file()


def _read_back(dump_file: DumpFile) -> str:
    """What was dumped into the file; the file is given back, rewound, if it is still the one opened."""
    pid, fd, identity = dump_file
    try:
        info = os.fstat(fd)
        if pid != os.getpid() or (info.st_dev, info.st_ino) != identity:
            # The application closed it and the number now names a file of its own: never touched again.
            raise OSError(f"descriptor {fd} is no longer loopstat's")
        size = os.lseek(fd, 0, os.SEEK_CUR)
        text = os.pread(fd, size, 0).decode("ascii", "replace")
        os.lseek(fd, 0, os.SEEK_SET)  # overwritten by the next dump, read up to where that one ends
    except Exception as exc:
        raise DumpFailed("faulthandler's dump could not be read back", exc) from exc
    _dump_files.append(dump_file)
    return text


def _open_dump_file() -> DumpFile:
    """A new file to dump into: in memory where Linux has memfd_create, else an unlinked temporary file."""
    try:
        memfd_create = getattr(os, "memfd_create", None)
        if memfd_create is not None:
            fd = int(memfd_create("loopstat-stacks", os.MFD_CLOEXEC))
        else:
            fd, path = tempfile.mkstemp(prefix="loopstat-stacks-")
            os.unlink(path)
        fd = _moved_high(fd)
        info = os.fstat(fd)
    except Exception as exc:  # no descriptor left, a read-only temporary directory
        raise DumpFailed("no file to dump the stacks into", exc) from exc
    return os.getpid(), fd, (info.st_dev, info.st_ino)


def fd_floor() -> Optional[int]:
    """The number a dump file's descriptor is moved to or above; None where it cannot be moved."""
    try:
        import resource  # Unix only
    except ImportError:
        return None
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return FD_FLOOR if soft == resource.RLIM_INFINITY or soft < 0 else min(FD_FLOOR, soft // 2)


def _moved_high(fd: int) -> int:
    """``fd``, or a duplicate of it numbered at least ``fd_floor()`` (close-on-exec) with ``fd`` closed."""
    try:
        floor = fd_floor()
        if floor is None or fd >= floor:
            return fd
        import fcntl  # Unix only, as is fd_floor()

        high = int(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, floor))
    except Exception:  # every number above the floor taken, a limit lowered meanwhile: the low one serves
        return fd
    os.close(fd)
    return high


def ready() -> None:
    """A file to dump into, opened now (not in a stall's capture, where opening it lets the loop run on)."""
    _dump_files.append(_take())


def parse_dump(text: str, wanted: Optional[Set[int]] = None) -> Dict[int, Tuple[List[Frame], bool]]:
    """The stacks in a faulthandler dump of all threads (or of the ``wanted`` ones), by thread id, innermost
    last; True if whole.

    ValueError for a line faulthandler does not write, or a dump without a thread.
    """
    threads = 0
    stacks: Dict[int, Tuple[List[Frame], bool]] = {}
    frames: List[Frame] = []
    whole = True
    ident: Optional[int] = None
    skipped = False
    for line in [*text.splitlines(), ""]:  # the last "" ends the last thread
        if ident is not None and line.startswith("  "):
            if skipped:
                continue  # another thread's: not read, which takes time the loop's thread may be waiting for
            found = _DUMP_LINE.fullmatch(line)
            if found is not None:
                filename, number, function = found.groups()
                line_number = int(number) if number.isdigit() else 0
                frames.append((_unescape(filename or "???"), line_number, _unescape(function)))
            elif line == "  ...":  # deeper than faulthandler goes
                whole = False
            elif line not in ("  <no Python frame>", "  Garbage-collecting"):  # the latter: said of the dumping thread
                raise ValueError(f"unexpected line in a stack: {line[:80]!r}")
            continue
        if ident is not None and not skipped:
            frames.reverse()
            stacks[ident] = (frames, whole)
        header = _HEADER.fullmatch(line)
        if header is None and line not in ("", "..."):  # "...": more threads than faulthandler dumps
            raise ValueError(f"unexpected line: {line[:80]!r}")
        ident = int(header.group(1), 16) if header is not None else None
        if ident is not None:
            threads += 1
        skipped = wanted is not None and ident not in wanted
        frames, whole = [], True
    if not threads:
        raise ValueError("no thread in the dump")
    return stacks


def _unescape(name: str) -> str:
    """A name as faulthandler wrote it, with the characters it escaped put back; not on Windows, where a path's
    own backslashes would be mistaken for escapes."""
    if "\\" not in name or os.sep != "/":
        return name
    return _ESCAPE.sub(lambda found: chr(int(next(g for g in found.groups() if g), 16)), name)


def after_fork_in_child() -> None:
    """Called in the child (through loopstat/_fork.py)."""
    # The parent's dump files, shared with it (their offsets too): the child opens its own.
    parents, _dump_files[:] = list(_dump_files), []
    for _, fd, _ in parents:
        with contextlib.suppress(OSError):
            os.close(fd)


_fork.join(after_in_child=after_fork_in_child)
