"""The worker tag: a small number that tells apart the sibling processes of a pre-fork server.

Every worker of ``gunicorn -w 4`` or ``uvicorn --workers 4`` sends the same
metric names with the same tags, so StatsD and the Agent keep one worker's
gauge per flush and lose the others. A pid would tell them apart, but every
restarted worker would make new series for ever. A slot stays bounded: each
process holds the smallest free number among the processes of the same parent
(the master), as an ``flock`` on ``<tmp>/loopstat-<uid>/<parent pid>/slot-<n>.lock``.
The kernel drops the lock when its holder dies, however it dies, so a
restarted worker takes the number its predecessor left: N workers make N
series, and at most 2N when a graceful reload starts the new workers before
the old ones exit.

Any failure (a temporary directory that is not writable or not ours, every
slot taken) means no tag, with one warning; no ``fcntl`` (Windows) means no
tag, with one DEBUG line. A pid instead would be unbounded. The lock files
stay behind, a few bytes each, for the system's temporary-file cleaning;
removing them would race with a sibling that is about to lock the same file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import tempfile
import threading
from typing import Optional, Tuple

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

#: The tag's key, as sent (``worker:0``).
TAG = "worker"
#: Slots tried at most: more workers than this under one master get no tag.
MAX_SLOTS = 256

_lock = threading.Lock()
# (slot, descriptor holding its lock) once claimed; None before, or when none could be had.
_held: Optional[Tuple[int, int]] = None
_tried = False


def _have_flock() -> bool:
    """False on Windows, which has no ``fcntl``."""
    return fcntl is not None


def group_directory() -> str:
    """Where this process and its siblings keep their slot files: one folder per parent process."""
    return os.path.join(tempfile.gettempdir(), f"loopstat-{os.getuid()}", str(os.getppid()))


def _private(directory: str) -> None:
    """Create ``directory`` (and its parent) for this user only; OSError if it is someone else's or not a folder."""
    # One level at a time: makedirs() gives the folders above the last one the
    # umask's mode, which may let everyone write.
    for path in (os.path.dirname(directory), directory):
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)
    # The parent lives in a shared temporary folder: another user may have made
    # it first, or put a link there, to read or block our slots.
    for path in (os.path.dirname(directory), directory):
        info = os.lstat(path)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o022:
            raise PermissionError(f"{path} is not a folder of this user's alone")


def claim(directory: str, limit: int = MAX_SLOTS) -> Optional[Tuple[int, int]]:
    """The smallest free slot in ``directory`` and the open descriptor whose lock holds it; None if all are taken.

    The lock lasts while the descriptor is open in any process (a forked
    child shares it until it closes its copy). OSError if the folder cannot
    be made or used.
    """
    if not _have_flock():
        raise OSError("no fcntl on this platform")
    _private(directory)
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    for slot in range(limit):
        fd = os.open(os.path.join(directory, f"slot-{slot}.lock"), flags, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        except BaseException:
            os.close(fd)
            raise
        return slot, fd
    return None


def slot() -> Optional[int]:
    """This process's slot among its siblings, claimed on the first call and held until it exits; None if none."""
    global _held, _tried
    with _lock:
        if not _tried and not _have_flock():
            _tried = True
            # Not a fault but the platform (Windows): no warning on every start under loopstat-run.
            log.debug("loopstat: no worker tag: no fcntl on this platform")
        if not _tried:
            _tried = True
            directory = ""
            try:
                directory = group_directory()
                _held = claim(directory)
                if _held is None:
                    log.warning("loopstat: no worker tag: all %d slots in %s are taken", MAX_SLOTS, directory)
            except Exception as exc:  # OSError, or anything odd: the application runs on, untagged
                log.warning("loopstat: no worker tag: cannot hold a slot in %s (%s)", directory or "?", exc)
        return None if _held is None else _held[0]


def tags(pairs: Tuple[Tuple[str, str], ...]) -> Tuple[Tuple[str, str], ...]:
    """``pairs`` with this process's ``worker`` tag added, unless they have one already or no slot is had."""
    if any(key.lower() == TAG for key, _ in pairs):
        return pairs  # explicit tags win, as everywhere
    number = slot()
    return pairs if number is None else (*pairs, (TAG, str(number)))


def after_fork_in_child() -> None:
    """Let go of the parent's slot (called by the monitor's fork hook): the child claims its own when it needs one.

    Closing the child's copy of the descriptor matters: while any copy is open
    the lock stays, and a dead parent's slot would never be freed.
    """
    global _lock, _held, _tried
    _lock = threading.Lock()  # another thread may have held it at fork
    held, _held, _tried = _held, None, False
    if held is not None:
        with contextlib.suppress(OSError):
            os.close(held[1])
