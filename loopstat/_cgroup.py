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
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Literal, Optional, Tuple

CGROUP_PATH = "/proc/self/cgroup"
MOUNTINFO_PATH = "/proc/self/mountinfo"
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
