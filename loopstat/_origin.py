"""Origin detection: the container ID DogStatsD lines carry as ``|c:``, so the Agent knows the sender's pod.

Over UDP the Agent sees only an address, which every container of a node may
share; the official clients therefore append the sender's container, found in
the process's cgroup, and the Agent adds that container's ``kube_*``,
``pod_name`` and ``container_name`` tags. The ID is looked for as they look:

1. in ``/proc/self/cgroup``, as the last part of a cgroup path (cgroup v1, or
   v2 in the host's cgroup namespace): Docker's ``/docker/<id>``, systemd's
   ``docker-<id>.scope``, ``cri-containerd-<id>.scope``, ``crio-<id>.scope``,
   Kubernetes' ``/kubepods/<qos>/pod<uid>/<id>``, ECS tasks' ``<32 hex>-<n>``;
2. in ``/proc/self/mountinfo``, as the folder of the ``hostname`` file the
   runtime mounts (``…/containers/<id>/hostname``): cgroup v2 with a private
   cgroup namespace shows only ``0::/`` in ``/proc/self/cgroup``;
3. failing both, outside the host's cgroup namespace, as the inode of the
   process's cgroup v2 folder (``in-<inode>``), which the Agent maps back.

It is read once per process (again in a forked child, which may have been
moved) and never raises: no ID means no field.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from typing import Callable, Optional

from loopstat import _cgroup, _fork

log = logging.getLogger(__name__)

CGROUP_PATH = "/proc/self/cgroup"
MOUNTINFO_PATH = "/proc/self/mountinfo"
NAMESPACE_PATH = "/proc/self/ns/cgroup"
# Linux numbers the initial cgroup namespace so (include/linux/proc_ns.h): in it, paths are the host's.
HOST_CGROUP_NAMESPACE_INODE = 0xEFFFFFFB

# A container ID as runtimes name it: 64 hex digits (Docker, containerd, CRI-O),
# a UUID (Garden, some runtimes with "_" separators), or an ECS task's 32 hex digits and a number.
_ID = r"[0-9a-f]{64}|[0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}|[0-9a-f]{32}-[0-9]{1,31}"
# The last part of a cgroup path: a runtime's prefix ("docker-", "cri-containerd-", "crio-"), the ID, ".scope".
_LAST_PART = re.compile(rf"(?:.*[^0-9a-f])?({_ID})(?:\.scope)?")
# A mountinfo root or mount point: ".../<folder>/<id>/hostname"; containerd's "sandboxes" folder is the pause container.
_HOSTNAME = re.compile(rf"/([^\s/]+)/({_ID})/\S*hostname$")


def from_cgroup(text: str) -> Optional[str]:
    """The container ID in ``/proc/self/cgroup`` text, from the first line whose path ends in one."""
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3 or not parts[0].isdigit():
            continue
        last = parts[2].rstrip("/").rpartition("/")[2]
        match = _LAST_PART.fullmatch(last)
        if match:
            return match.group(1)
    return None


def from_mountinfo(text: str) -> Optional[str]:
    """The container ID in ``/proc/self/mountinfo`` text: the folder of a mounted ``hostname`` file."""
    for line in text.splitlines():
        fields = line.split(" ")
        for path in fields[3:5]:  # the mount's root, then its mount point
            match = _HOSTNAME.search(path)
            if match and match.group(1) != "sandboxes":
                return match.group(2)
    return None


def cgroup2_folder(cgroup: str, mountinfo: str) -> Optional[str]:
    """Where the process's cgroup v2 folder is: the cgroup2 mount point joined with the ``0::`` path."""
    return _cgroup.folder(cgroup, mountinfo)


def from_inode(cgroup: str, mountinfo: str, stat: Callable[[str], os.stat_result] = os.stat) -> Optional[str]:
    """``in-<inode>`` of the process's cgroup v2 folder; None for the root cgroup (inode 1 or 2) or none found."""
    folder = cgroup2_folder(cgroup, mountinfo)
    if folder is None:
        return None
    inode = stat(folder).st_ino
    return f"in-{inode}" if inode > 2 else None


def _in_host_namespace() -> bool:
    try:
        return os.stat(NAMESPACE_PATH).st_ino == HOST_CGROUP_NAMESPACE_INODE
    except OSError:
        return False  # no cgroup namespaces (an old kernel): as the official clients, try the inode


def detect() -> Optional[str]:
    """This process's container ID (or ``in-<inode>``), None when it has none or it cannot be read."""
    try:
        cgroup = _cgroup.read(CGROUP_PATH)
        found = from_cgroup(cgroup)
        if found is None:
            mountinfo = _cgroup.read(MOUNTINFO_PATH)
            found = from_mountinfo(mountinfo)
            if found is None and not _in_host_namespace():
                found = from_inode(cgroup, mountinfo)
    except Exception as exc:  # anything odd in /proc: no origin field, never an error for the application
        log.debug("loopstat: no container ID: %s: %s", type(exc).__name__, exc)
        return None
    log.debug("loopstat: container ID %s", found or "none")
    return found


_lock = threading.Lock()
_container_id: Optional[str] = None
_known = False


def container_id() -> Optional[str]:
    """``detect()``, once per process."""
    global _container_id, _known
    with _lock:
        if not _known:
            _container_id, _known = detect(), True
        return _container_id


def forget() -> None:
    """Read the ID afresh on the next call (for tests, and after a fork)."""
    global _container_id, _known
    with _lock:
        _container_id, _known = None, False


def after_fork_in_child() -> None:
    """Read the ID again in a forked child (through loopstat/_fork.py): it may run in another cgroup."""
    global _lock
    _lock = threading.Lock()  # another thread may have held it at fork
    forget()


_fork.join(after_in_child=after_fork_in_child)
