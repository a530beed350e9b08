"""The process's cgroup: the folder of a controller, and how long its CPU limit has throttled it.

Found as the kernel shows it: ``/proc/self/cgroup`` names the process's cgroup
per hierarchy (cgroup v1: ``4:cpu,cpuacct:/kubepods/…``; v2: ``0::/…``), and
``/proc/self/mountinfo`` says where each hierarchy is mounted and from which
root (a container sees its own cgroup as the mount's root). The CPU limit is
the nearest one from the process's folder up to the mount: v1
``cpu.cfs_quota_us`` (-1: none), v2 ``cpu.max`` (``max …``: none). Its
``cpu.stat`` counts throttled time: v1 ``throttled_time`` in nanoseconds, v2
``throttled_usec``. The kernel adds it per CPU, so with several threads
throttled at once it grows faster than the wall clock.

``cpu_quota_group`` makes a child group with a CPU quota (for the demo, the
bench and the tests: loopstat itself only reads).
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, Iterator, Literal, Optional, Tuple

CGROUP_PATH = "/proc/self/cgroup"
MOUNTINFO_PATH = "/proc/self/mountinfo"
log = logging.getLogger("loopstat")
# Files this long are not cgroup or /proc files: read no further.
_MAX_READ = 1 << 20

# How a file is read: its text, "" when it cannot be.
Read = Callable[[str], str]


def read(path: str) -> str:
    """The text of a /proc or cgroup file; "" if it cannot be read."""
    try:
        with open(path, encoding="utf-8", errors="replace") as file:
            return file.read(_MAX_READ)
    except OSError:
        return ""


def _cgroup_path(cgroup: str, controller: str) -> Optional[str]:
    """The process's path in the hierarchy of ``controller`` (v1), or in v2's (``controller`` "")."""
    for line in cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3 or not parts[0].isdigit():
            continue
        if controller == "" and parts[0] == "0" and parts[1] == "":
            return parts[2]
        if controller and controller in parts[1].split(","):
            return parts[2]
    return None


def _mount(mountinfo: str, controller: str) -> Optional[Tuple[str, str]]:
    """(root, mount point) of the hierarchy of ``controller`` (v1), or of cgroup v2 (``controller`` "")."""
    for line in mountinfo.splitlines():
        # "<id> <parent> <dev> <root> <mount point> <options> [optional…] - <type> <source> <super options>"
        before, dash, after = line.partition(" - ")
        fields, rest = before.split(" "), after.split(" ")
        if not dash or len(fields) < 5 or len(rest) < 3:
            continue
        if controller == "" and rest[0] == "cgroup2":
            return fields[3], fields[4]
        if controller and rest[0] == "cgroup" and controller in rest[2].split(","):
            return fields[3], fields[4]
    return None


def folder(cgroup: str, mountinfo: str, controller: str = "") -> Optional[str]:
    """The process's cgroup folder: of ``controller``'s v1 hierarchy, or of cgroup v2 (``controller`` "")."""
    path = _cgroup_path(cgroup, controller)
    mount = _mount(mountinfo, controller) if path is not None else None
    if path is None or mount is None:
        return None
    root, point = mount
    # A container's mount has its own cgroup as root: the path below that root is what lies under the mount point.
    if root != "/" and (path == root or path.startswith(root.rstrip("/") + "/")):
        path = path[len(root.rstrip("/")) :]
    return os.path.normpath(point + "/" + path.lstrip("/"))


def limited(version: Literal[1, 2], where: str, read: Read = read) -> bool:
    """Whether the cgroup at ``where`` has a CPU limit of its own."""
    if version == 1:
        quota = read(os.path.join(where, "cpu.cfs_quota_us")).strip()
        return quota.lstrip("-").isdigit() and quota != "-1"
    limit = read(os.path.join(where, "cpu.max")).split()
    return bool(limit) and limit[0] != "max"


def throttled_seconds(version: Literal[1, 2], stat: str) -> Optional[float]:
    """Seconds throttled in all, from the text of ``cpu.stat``; None when it has no such field."""
    field, scale = ("throttled_time", 1e-9) if version == 1 else ("throttled_usec", 1e-6)
    for line in stat.splitlines():
        name, _, value = line.partition(" ")
        if name == field and value.strip().isdigit():
            return int(value) * scale
    return None


@dataclass(frozen=True)
class Throttling:
    """Where the process's CPU limit is and how its throttled time is read."""

    version: Literal[1, 2]
    #: The folder of the nearest cgroup with a CPU limit, the process's own or above it.
    where: str

    def seconds(self, read: Read = read) -> Optional[float]:
        """Seconds throttled since the cgroup was made; None if ``cpu.stat`` cannot be read."""
        return throttled_seconds(self.version, read(os.path.join(self.where, "cpu.stat")))


def find_throttling(cgroup: str, mountinfo: str, read: Read = read) -> Optional[Throttling]:
    """The process's CPU limit (v1 ``cpu`` hierarchy first, else v2); None where it has none."""
    version: Literal[1, 2] = 1 if _cgroup_path(cgroup, "cpu") is not None else 2
    own = folder(cgroup, mountinfo, "cpu" if version == 1 else "")
    mount = _mount(mountinfo, "cpu" if version == 1 else "")
    if own is None or mount is None:
        return None
    top = os.path.normpath(mount[1])
    where = own
    while True:
        if limited(version, where, read):
            return Throttling(version, where)
        if where == top or not where.startswith(top + "/"):
            return None
        where = os.path.dirname(where)


def throttling(read: Read = read) -> Optional[Throttling]:
    """This process's CPU limit, from its /proc files; None where it has none or they cannot be read."""
    return find_throttling(read(CGROUP_PATH), read(MOUNTINFO_PATH), read)


class CgroupError(Exception):
    """No group with a CPU quota can be made here; the message says why in one short phrase."""


def quota_home(cgroup: str, mountinfo: str) -> Tuple[Literal[1, 2], str]:
    """(version, folder) where a child group with a CPU quota goes: the process's own v1 ``cpu`` folder, else v2's."""
    v1 = folder(cgroup, mountinfo, "cpu")
    home = v1 if v1 is not None else folder(cgroup, mountinfo)
    if home is None:
        raise CgroupError("no cgroup cpu controller was found")
    return (1 if v1 is not None else 2), home


def quota_unavailable() -> Optional[str]:
    """Why no group with a CPU quota can be made by this process (one short phrase); None where one can."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "it needs root, to make a cgroup with a CPU quota"
    try:
        version, home = quota_home(read(CGROUP_PATH), read(MOUNTINFO_PATH))
    except CgroupError as exc:
        return str(exc)
    quota = "cpu.cfs_quota_us" if version == 1 else "cpu.max"
    # v2's own folder has no cpu.max at the root: what a child gets is enabled by the parent's subtree_control.
    if not os.access(home, os.W_OK) or (version == 1 and not os.access(os.path.join(home, quota), os.W_OK)):
        return f"the cgroup cpu controller at {home} is not writable"
    return None


@dataclass
class QuotaGroup:
    """A child cgroup with a CPU quota: processes are moved in with ``add`` and back to ``parent`` with ``release``."""

    version: Literal[1, 2]
    #: The folder it was made in, where its processes go back to.
    parent: str
    path: str
    _removed: bool = field(default=False, repr=False)

    def _write(self, name: str, text: str, where: Optional[str] = None) -> None:
        with open(os.path.join(where or self.path, name), "w", encoding="ascii") as file:
            file.write(text)

    def add(self, pid: int) -> None:
        """Move the process ``pid`` (every thread of it) into the group."""
        self._write("cgroup.procs", str(pid))

    def release(self, pid: int) -> None:
        """Move the process ``pid`` back to the parent group."""
        self._write("cgroup.procs", str(pid), self.parent)

    def pids(self) -> Tuple[int, ...]:
        """The processes in the group now."""
        try:
            with open(os.path.join(self.path, "cgroup.procs"), encoding="ascii") as file:
                return tuple(int(pid) for pid in file.read().split())
        except OSError:
            return ()

    def remove(self) -> None:
        """Move the processes left back to the parent and delete the group; quiet, idempotent (it runs at exit too)."""
        if self._removed:
            return
        for pid in self.pids():
            with contextlib.suppress(OSError):  # gone meanwhile: rmdir below says if it matters
                self.release(pid)
        for attempt in range(50):  # a process that has just exited may still hold the group for a moment
            try:
                os.rmdir(self.path)
                break
            except FileNotFoundError:
                break
            except OSError as exc:
                if exc.errno != errno.EBUSY or attempt == 49:
                    log.warning("loopstat: could not remove the cgroup %s: %s", self.path, exc)
                    return
                time.sleep(0.1)
        self._removed = True
        atexit.unregister(self.remove)


@contextlib.contextmanager
def cpu_quota_group(
    quota_us: Optional[int],
    period_us: int = 100_000,
    name: str = "loopstat",
    home: Optional[Tuple[Literal[1, 2], str]] = None,
) -> Iterator[QuotaGroup]:
    """A new child group allowed ``quota_us`` of CPU per ``period_us`` (None: no limit), removed on the way out.

    It is made in ``home`` (version, folder), by default the process's own cpu group. Removed however the
    block ends, and at exit should an interrupt cut the removal short. CgroupError where none can be made.
    """
    if home is None:
        home = quota_home(read(CGROUP_PATH), read(MOUNTINFO_PATH))
    version, parent = home
    group = QuotaGroup(version, parent, os.path.join(parent, f"{name}-{uuid.uuid4().hex[:12]}"))
    try:
        os.mkdir(group.path)
    except OSError as exc:
        raise CgroupError(f"no cgroup could be made ({os.strerror(exc.errno or errno.EIO)})") from None
    atexit.register(group.remove)
    try:
        try:
            if version == 1:
                group._write("cpu.cfs_period_us", str(period_us))
                group._write("cpu.cfs_quota_us", str(-1 if quota_us is None else quota_us))
            else:
                group._write("cpu.max", f"{'max' if quota_us is None else quota_us} {period_us}")
        except OSError as exc:
            raise CgroupError(
                f"the cgroup's CPU quota could not be set ({os.strerror(exc.errno or errno.EIO)})"
            ) from None
        yield group
    finally:
        group.remove()
