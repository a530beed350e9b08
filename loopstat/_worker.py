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

No private folder to be had (no writable temporary folder, one that is a
link or another user's) means no tag, with one DEBUG line, and so does no
``fcntl`` (Windows); the working directory is never used. Every slot taken
means no tag, with one warning. A pid instead would be unbounded. A live
parent's lock files stay (removing one would race with a sibling about to lock
it); the folders of dead parents are removed by the next process that claims
a slot, each slot file while that process holds its lock.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import tempfile
import threading
from typing import Optional, Tuple

from loopstat import _fork

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


# Where temporary files may go, after tempfile.tempdir and $TMPDIR/$TEMP/$TMP:
# tempfile's own list, without its last resort, the working directory.
_TEMPORARY = ("/tmp", "/var/tmp", "/usr/tmp")
_DIRECTORY = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def temporary_folder() -> str:
    """The first usable temporary folder that is not the working directory; OSError if there is none."""
    here = os.path.realpath(os.getcwd()) if os.path.isdir(os.curdir) else None
    names = ("TMPDIR", "TEMP", "TMP")
    for folder in (tempfile.tempdir, *(os.environ.get(name) for name in names), *_TEMPORARY):
        if not folder or not os.path.isabs(folder) or os.path.realpath(folder) == here:
            continue
        if os.path.isdir(folder) and os.access(folder, os.W_OK | os.X_OK):
            return folder
    raise OSError("no writable temporary folder (the working directory is never used)")


def group_directory() -> str:
    """Where this process and its siblings keep their slot files: one folder per parent process."""
    return os.path.join(temporary_folder(), f"loopstat-{os.getuid()}", str(os.getppid()))


def _not_ours(path: str) -> PermissionError:
    return PermissionError(f"{path} is not a folder of this user's alone")


def _open_private(directory: str) -> int:
    """A descriptor of ``directory``, made (with its parent) for this user only; OSError if it is not theirs alone.

    Each level is made and opened relative to the one above, never through a
    link (``O_NOFOLLOW``), and checked on the descriptor itself, so nothing is
    created through a link or in a folder another user could swap or read.
    """
    parent = os.path.dirname(directory)
    fd = os.open(os.path.dirname(parent), os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        for path in (parent, directory):
            name = os.path.basename(path)
            # mkdir never follows a link at its last component: one there makes it fail.
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o700, dir_fd=fd)
            try:
                child = os.open(name, _DIRECTORY, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
                    raise _not_ours(path) from None
                raise
            os.close(fd)
            fd = child
            info = os.fstat(fd)
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o022:
                raise _not_ours(path)
        return fd
    except BaseException:
        os.close(fd)
        raise


def _private(directory: str) -> None:
    """Create ``directory`` (and its parent) for this user only; OSError if it is someone else's or not a folder."""
    os.close(_open_private(directory))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # another user's process: alive
    return True


def remove_dead_groups(parent_fd: int, keep: str) -> None:
    """Remove the folders of parents that died: their slot files no process holds, then the folder if empty.

    A slot is removed only while this process holds its lock, so a process
    that still holds it (an orphaned worker) keeps its number.
    """
    for name in os.listdir(parent_fd):
        if not name.isdigit() or name == keep or _alive(int(name)):
            continue
        try:
            fd = os.open(name, _DIRECTORY, dir_fd=parent_fd)
        except OSError:
            continue
        try:
            for entry in os.listdir(fd):
                with contextlib.suppress(OSError):
                    slot_fd = os.open(entry, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0), dir_fd=fd)
                    try:
                        fcntl.flock(slot_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        os.unlink(entry, dir_fd=fd)
                    finally:
                        os.close(slot_fd)
        finally:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.rmdir(name, dir_fd=parent_fd)


def claim(directory: str, limit: int = MAX_SLOTS) -> Optional[Tuple[int, int]]:
    """The smallest free slot in ``directory`` and the open descriptor whose lock holds it; None if all are taken.

    The lock lasts while the descriptor is open in any process (a forked
    child shares it until it closes its copy). OSError if the folder cannot
    be made or used. Folders of dead parents beside it are removed.
    """
    if not _have_flock():
        raise OSError("no fcntl on this platform")
    folder = _open_private(directory)
    try:
        with contextlib.suppress(OSError):
            parent = os.open(os.pardir, _DIRECTORY & ~getattr(os, "O_NOFOLLOW", 0), dir_fd=folder)
            try:
                remove_dead_groups(parent, os.path.basename(directory))
            finally:
                os.close(parent)
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        for slot in range(limit):
            fd = os.open(f"slot-{slot}.lock", flags, 0o600, dir_fd=folder)
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
    finally:
        os.close(folder)


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
                # No private folder to be had: not the application's fault, and no reason to fill its log.
                log.debug("loopstat: no worker tag: cannot hold a slot in %s (%s)", directory or "?", exc)
        return None if _held is None else _held[0]


def held() -> Optional[int]:
    """This process's slot if it already holds one; never claims one."""
    held = _held
    return None if held is None else held[0]


def tags(pairs: Tuple[Tuple[str, str], ...]) -> Tuple[Tuple[str, str], ...]:
    """``pairs`` with this process's ``worker`` tag added, unless they have one already or no slot is had."""
    if any(key.lower() == TAG for key, _ in pairs):
        return pairs  # explicit tags win, as everywhere
    number = slot()
    return pairs if number is None else (*pairs, (TAG, str(number)))


def after_fork_in_child() -> None:
    """Let go of the parent's slot (through loopstat/_fork.py): the child claims its own when it needs one.

    Closing the child's copy of the descriptor matters: while any copy is open
    the lock stays, and a dead parent's slot would never be freed.
    """
    global _lock, _held, _tried
    _lock = threading.Lock()  # another thread may have held it at fork
    held, _held, _tried = _held, None, False
    if held is not None:
        with contextlib.suppress(OSError):
            os.close(held[1])


_fork.join(after_in_child=after_fork_in_child)
