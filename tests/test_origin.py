"""Origin detection: the container ID and external environment on every DogStatsD line, and never elsewhere.

The ID is read the way the Datadog clients read it; the real-process tests put
an application in a real cgroup named as Kubernetes names them (cgroup v1,
which needs root), or in a cgroup v2 group of its own inside a private cgroup
namespace (the inode), the others read files shaped like a real host's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest

import loopstat
from loopstat import _origin
from loopstat._metrics import DISTRIBUTED, METRICS, Line
from loopstat._options import MAX_DATAGRAM, MAX_EXTERNAL_ENV, Settings, resolve, run_arguments
from loopstat.cli import fmt
from loopstat.cli.statsd import parse_strict
from loopstat.sink import Sink
from tests.receiver import Receiver
from tests.servers import running_statsd

ID = "3f4c0b1e8a5d" + "7" * 52
ASSERTED_IDS = {
    # cgroup v1, Docker
    "12:memory:/docker/" + ID: ID,
    # cgroup v1, Kubernetes with the cgroupfs driver (Docker, containerd or CRI-O below it)
    "4:cpu,cpuacct:/kubepods/besteffort/pod6b8e4a7c-1f0d-4d2e-9a57-0c1b2d3e4f50/" + ID: ID,
    "9:pids:/kubepods/burstable/pod6b8e4a7c-1f0d-4d2e-9a57-0c1b2d3e4f50/" + ID + "/": ID,
    # cgroup v1 or v2 in the host's namespace, Kubernetes with the systemd driver: containerd, CRI-O, Docker
    "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod6b8e4a7c_1f0d_4d2e_9a57_0c1b2d3e4f50.slice/"
    "cri-containerd-" + ID + ".scope": ID,
    "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod6b8e4a7c_1f0d.slice/crio-" + ID + ".scope": ID,
    "0::/system.slice/docker-" + ID + ".scope": ID,
    # ECS on EC2 and Fargate: a task's 32 hex digits and a number
    "11:devices:/ecs/5a0d5ceddf6c44a1ad8b0e2b5f9a5a5e/5a0d5ceddf6c44a1ad8b0e2b5f9a5a5e-4263785942": (
        "5a0d5ceddf6c44a1ad8b0e2b5f9a5a5e-4263785942"
    ),
    # Kubernetes' Guaranteed pods, which have no QoS level (cgroupfs driver, cgroup v1)
    "4:memory:/kubepods/pod6b8e4a7c-1f0d-4d2e-9a57-0c1b2d3e4f50/" + ID: ID,
    # cgroup v2 in the host's namespace, Kubernetes with the cgroupfs driver
    "0::/kubepods/besteffort/pod6b8e4a7c-1f0d-4d2e-9a57-0c1b2d3e4f50/" + ID: ID,
    # cgroup v1, Kubernetes with the systemd driver: the same path in every hierarchy
    "11:memory:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod6b8e4a7c_1f0d.slice/docker-"
    + ID
    + ".scope": ID,
    # containerd without Kubernetes (its "default" namespace), and rootless Podman
    "0::/default/" + ID: ID,
    "0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-" + ID + ".scope": ID,
    # Cloud Foundry's Garden: a UUID
    "1:name=systemd:/garden/6f1d7a8e-0c2b-4b3a-9d4e-5f6a7b8c9d0e": "6f1d7a8e-0c2b-4b3a-9d4e-5f6a7b8c9d0e",
}
HOST_CGROUP = """12:memory:/user.slice/user-1000.slice/session-3.scope
4:cpu,cpuacct:/user.slice
1:name=systemd:/user.slice/user-1000.slice/session-3.scope
0::/user.slice/user-1000.slice/session-3.scope
"""
# cgroup v2 with a private cgroup namespace (Docker's default since 20.10): the path says nothing.
PRIVATE_V2_CGROUP = "0::/\n"
DOCKER_V2_MOUNTINFO = f"""1432 1347 0:151 / / rw,relatime master:611 - overlay overlay rw,lowerdir=/var/lib/docker/l/X
1436 1432 0:154 / /sys/fs/cgroup ro,nosuid,nodev,noexec,relatime - cgroup2 cgroup rw,nsdelegate
1437 1432 254:1 /docker/containers/{ID}/resolv.conf /etc/resolv.conf rw,relatime - ext4 /dev/vda1 rw
1438 1432 254:1 /docker/containers/{ID}/hostname /etc/hostname rw,relatime - ext4 /dev/vda1 rw
1439 1432 254:1 /docker/containers/{ID}/hosts /etc/hosts rw,relatime - ext4 /dev/vda1 rw
"""
SANDBOX = "a" * 64
CONTAINERD_V2_MOUNTINFO = f"""2202 2101 0:300 / / rw,relatime - overlay overlay rw
2210 2202 0:310 / /sys/fs/cgroup ro,nosuid,nodev,noexec,relatime - cgroup2 cgroup2 rw
2215 2202 259:1 /var/lib/containerd/io.containerd.grpc.v1.cri/sandboxes/{SANDBOX}/hostname /etc/hostname rw - ext4 a rw
"""


@pytest.mark.parametrize(("line", "expected"), list(ASSERTED_IDS.items()), ids=lambda x: x[:40])
def test_the_container_id_is_read_from_every_runtime_s_cgroup_path(line: str, expected: str) -> None:
    text = HOST_CGROUP.replace("4:cpu,cpuacct:/user.slice", line)
    assert _origin.from_cgroup(text) == expected


def test_a_process_outside_containers_has_no_container_id() -> None:
    assert _origin.from_cgroup(HOST_CGROUP) is None
    assert _origin.from_cgroup("9:pids:/kubepods/besteffort/pod6b8e4a7c-1f0d-4d2e-9a57-0c1b2d3e4f50\n") is None
    assert _origin.from_cgroup("4:memory:/process_api/83271653e5b3122ad9aa0d64c0c79db3\n") is None
    assert _origin.from_cgroup("garbage\n\n::\nx:y:/docker/" + ID) is None


def test_cgroup_v2_in_a_private_namespace_finds_the_id_in_the_mounted_hostname_file() -> None:
    assert _origin.from_cgroup(PRIVATE_V2_CGROUP) is None
    assert _origin.from_mountinfo(DOCKER_V2_MOUNTINFO) == ID


def test_containerd_s_sandbox_is_not_taken_for_the_container() -> None:
    assert _origin.from_mountinfo(CONTAINERD_V2_MOUNTINFO) is None


def test_without_an_id_the_cgroup_v2_folder_s_inode_is_sent(tmp_path: Path) -> None:
    folder = tmp_path / "kubepods.slice" / "kubepods-pod1.slice" / "cri-containerd-x.scope"
    folder.mkdir(parents=True)
    cgroup = "0::/kubepods.slice/kubepods-pod1.slice/cri-containerd-x.scope\n"
    mountinfo = f"30 23 0:26 / {tmp_path} rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"
    assert _origin.from_mountinfo(mountinfo) is None
    assert _origin.from_inode(cgroup, mountinfo) == f"in-{folder.stat().st_ino}"


def test_the_root_cgroup_s_inode_says_nothing_and_is_not_sent(tmp_path: Path) -> None:
    mountinfo = f"30 23 0:26 / {tmp_path} rw - cgroup2 cgroup2 rw\n"
    root = dataclasses.make_dataclass("Stat", [("st_ino", int)])(1)
    assert _origin.from_inode("0::/\n", mountinfo, stat=lambda path: root) is None
    assert _origin.from_inode("0::/\n", "no cgroup2 mount here\n") is None
    assert _origin.from_inode("1:cpu:/\n", mountinfo) is None


def _files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cgroup: str, mountinfo: str = "") -> None:
    """Make this process read ``cgroup`` and ``mountinfo`` as its own, from real files."""
    for name, text in (("CGROUP_PATH", cgroup), ("MOUNTINFO_PATH", mountinfo)):
        path = tmp_path / name.lower()
        path.write_text(text)
        monkeypatch.setattr(_origin, name, str(path))
    _origin.forget()


def test_unreadable_or_missing_proc_files_mean_no_id_and_no_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_origin, "CGROUP_PATH", str(tmp_path))  # a folder: open() fails
    monkeypatch.setattr(_origin, "MOUNTINFO_PATH", str(tmp_path / "absent"))
    monkeypatch.setattr(_origin, "NAMESPACE_PATH", str(tmp_path / "absent"))
    assert _origin.detect() is None


def test_a_failing_inode_lookup_means_no_id_and_no_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A cgroup2 mount whose folder is gone (a later kernel's layout, a race): stat() raises inside detect().
    _files(tmp_path, monkeypatch, "0::/gone\n", f"30 23 0:26 / {tmp_path / 'absent'} rw - cgroup2 cgroup2 rw\n")
    monkeypatch.setattr(_origin, "NAMESPACE_PATH", str(tmp_path / "absent"))
    assert _origin.detect() is None


def test_detection_tries_the_cgroup_path_then_mountinfo_then_the_inode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_origin, "NAMESPACE_PATH", str(tmp_path))  # a private cgroup namespace (not the host's inode)
    _files(tmp_path, monkeypatch, "0::/docker/" + ID + "\n", DOCKER_V2_MOUNTINFO.replace(ID, SANDBOX))
    assert _origin.detect() == ID, "the cgroup path first"
    _files(tmp_path, monkeypatch, PRIVATE_V2_CGROUP, DOCKER_V2_MOUNTINFO)
    assert _origin.detect() == ID, "then the hostname file's folder"
    folder = tmp_path / "pod.slice"
    folder.mkdir()
    _files(tmp_path, monkeypatch, "0::/pod.slice\n", f"30 23 0:26 / {tmp_path} rw - cgroup2 cgroup2 rw\n")
    assert _origin.detect() == f"in-{folder.stat().st_ino}", "then the inode"


@pytest.mark.skipif(
    not os.path.exists("/proc/self/ns/cgroup") or os.stat("/proc/self/ns/cgroup").st_ino != 0xEFFFFFFB,
    reason="needs a process in the host's cgroup namespace",
)
def test_in_the_host_s_cgroup_namespace_no_inode_is_sent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # There the cgroup path is the host's: a folder that is no container's, which the Agent could not resolve.
    monkeypatch.setattr(_origin, "NAMESPACE_PATH", "/proc/self/ns/cgroup")
    (tmp_path / "user.slice").mkdir()
    _files(tmp_path, monkeypatch, "0::/user.slice\n", f"30 23 0:26 / {tmp_path} rw - cgroup2 cgroup2 rw\n")
    assert _origin.detect() is None


def test_the_id_is_read_once_per_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _files(tmp_path, monkeypatch, "1:cpu:/docker/" + ID + "\n")
    assert _origin.container_id() == ID
    (tmp_path / "cgroup_path").write_text("1:cpu:/\n")
    assert _origin.container_id() == ID
    _origin.after_fork_in_child()
    assert _origin.container_id() is None


LINES: List[Line] = [
    ("lag", "g", 1.5),
    ("lag", "ms", 1.5),
    ("stall", "ms", 150.0),
    ("blocking_time", "ms", 3.0, (("call", "time.sleep"),)),
    ("tasks", "g", 3),
]


def _lines(settings: Settings) -> List[bytes]:
    sink = Sink(settings)
    return [line for data, _ in sink.datagrams(LINES) for line in data.split(b"\n")]


def _settings(environ: Optional[Dict[str, str]] = None, **arguments: Any) -> Settings:
    arguments.setdefault("tags", {"env": "prod"})
    arguments.setdefault("prefix", "app")
    return resolve("127.0.0.1", 8125, environ=environ or {}, **arguments)


def test_every_dogstatsd_line_ends_with_the_container_id_then_the_external_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _files(tmp_path, monkeypatch, "1:cpu:/docker/" + ID + "\n")
    lines = _lines(_settings({"DD_EXTERNAL_ENV": "it-false,cn-web,pu-6b8e4a7c"}, worker_tag=True))
    assert len(lines) == len(LINES)
    for line in lines:
        assert line.endswith(f"|c:{ID}|e:it-false,cn-web,pu-6b8e4a7c".encode()), line
        sample = parse_strict(line.decode())
        assert sample is not None
        assert (sample.container, sample.external) == (ID, "it-false,cn-web,pu-6b8e4a7c")
        assert ("env", "prod") in sample.tags


def test_origin_detection_off_sends_neither_field(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _files(tmp_path, monkeypatch, "1:cpu:/docker/" + ID + "\n")
    external = {"DD_EXTERNAL_ENV": "it-false,cn-web,pu-6b8e4a7c"}
    for settings in (
        _settings({**external, "DD_ORIGIN_DETECTION_ENABLED": "false"}),
        _settings(external, origin_detection=False),
    ):
        assert not settings.origin_detection
        assert all(b"|c:" not in line and b"|e:" not in line for line in _lines(settings))
    # The argument wins over the variable, both ways.
    assert _settings({"DD_ORIGIN_DETECTION_ENABLED": "false"}, origin_detection=True).origin_detection


def test_the_origin_fields_are_read_when_the_sink_is_made_not_for_each_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _files(tmp_path, monkeypatch, "1:cpu:/docker/" + ID + "\n")
    sink = Sink(_settings({"DD_EXTERNAL_ENV": "cn-web"}))
    _files(tmp_path, monkeypatch, "1:cpu:/docker/" + SANDBOX + "\n")
    assert _origin.container_id() == SANDBOX  # what a lookup for each line would now find
    lines = [line for _ in range(3) for data, _ in sink.datagrams(LINES) for line in data.split(b"\n")]
    assert all(line.endswith(f"|c:{ID}|e:cn-web".encode()) for line in lines)


def test_the_statsd_flavor_never_carries_origin_fields(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _files(tmp_path, monkeypatch, "1:cpu:/docker/" + ID + "\n")
    settings = _settings({"DD_EXTERNAL_ENV": "it-false"}, flavor="statsd", tags=None, origin_detection=True)
    assert all(b"|" not in line.split(b"|", 1)[1] for line in _lines(settings))


def test_without_a_container_id_only_the_external_environment_is_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _files(tmp_path, monkeypatch, HOST_CGROUP)
    lines = _lines(_settings({"DD_EXTERNAL_ENV": "cn-web"}))
    assert all(line.endswith(b"|e:cn-web") and b"|c:" not in line for line in lines)


@pytest.mark.parametrize("value", ["it-false|c:spoofed", "cn-web pu-1", "é", "a\nb", "x" * (MAX_EXTERNAL_ENV + 1)])
def test_an_external_environment_that_could_break_the_line_is_refused_by_name(
    value: str, loopstat_log: pytest.LogCaptureFixture
) -> None:
    # A shared variable loopstat cannot use is named in one warning and not used; an argument raises.
    assert _settings({"DD_EXTERNAL_ENV": value}).external_env is None
    [warning] = [record.getMessage() for record in loopstat_log.records]
    assert re.match(r"loopstat: DD_EXTERNAL_ENV: .* expected up to 256 printable ASCII characters but pipes", warning)
    with pytest.raises(ValueError, match=r"^external_env: "):
        _settings(external_env=value)


@pytest.mark.parametrize(("value", "on"), [("f", False), ("F", False), ("n", False), ("off", False), ("t", True)])
def test_the_origin_detection_variable_reads_as_datadogs_clients_read_it(
    value: str, on: bool, loopstat_log: pytest.LogCaptureFixture
) -> None:
    # A shared variable: "f" turns the Go and PHP clients' detection off, "n" datadogpy's; loopstat's too, no warning.
    assert _settings({"DD_ORIGIN_DETECTION_ENABLED": value}).origin_detection is on
    assert not loopstat_log.records


def test_a_bad_origin_detection_variable_is_refused_by_name(loopstat_log: pytest.LogCaptureFixture) -> None:
    assert _settings({"DD_ORIGIN_DETECTION_ENABLED": "maybe"}).origin_detection == _settings().origin_detection
    [warning] = [record.getMessage() for record in loopstat_log.records]
    assert warning.startswith("loopstat: DD_ORIGIN_DETECTION_ENABLED: 'maybe' is not valid; expected 1 or 0")


def test_the_longest_origin_fields_keep_every_line_within_a_datagram(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _files(tmp_path, monkeypatch, "1:cpu:/docker/" + ID + "\n")
    tags = {f"key{index}": "v" * 150 for index in range(20)}
    settings = _settings({"DD_EXTERNAL_ENV": "x" * MAX_EXTERNAL_ENV}, tags=tags, prefix="p" * 150)
    sink = Sink(settings)
    longest: List[Line] = [(metric.name, metric.type, 1e15) for metric in METRICS]
    for data, _ in sink.datagrams(longest):
        for line in data.split(b"\n"):
            assert len(line) <= MAX_DATAGRAM
            assert parse_strict(line.decode()) is not None, line


def test_distributions_send_only_the_catalogue_s_timings_as_d_under_names_no_gauge_holds() -> None:
    lines = _lines(_settings(distributions=True))
    sent = [(line.split(b":")[0].decode(), line.split(b"|")[1].decode()) for line in lines]
    assert sent == [
        ("app.lag", "g"),
        ("app.lag.distribution", "d"),
        ("app.stall", "d"),
        ("app.blocking_time", "d"),
        ("app.tasks", "g"),
    ]
    assert DISTRIBUTED == {"lag": "lag.distribution", "stall": "stall", "blocking_time": "blocking_time"}
    # Datadog keeps one type per name: no distribution takes a name another metric is sent under.
    others = {metric.name for metric in METRICS if not metric.distribution}
    assert not others & set(DISTRIBUTED.values())
    plain = [(line.split(b":")[0], line.split(b"|")[1]) for line in _lines(_settings())]
    assert plain == [
        (b"app.lag", b"g"),
        (b"app.lag", b"ms"),
        (b"app.stall", b"ms"),
        (b"app.blocking_time", b"ms"),
        (b"app.tasks", b"g"),
    ]


def test_distributions_with_the_statsd_flavor_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"^distributions: True needs flavor='dogstatsd'"):
        _settings(flavor="statsd", tags=None, distributions=True)
    assert run_arguments({"LOOPSTAT_DISTRIBUTIONS": "1"}) == {"distributions": True}


async def test_over_the_agent_s_unix_socket_lines_carry_the_origin_fields_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Over a socket the Agent may also read the sender's credentials; the fields cost nothing and work everywhere.
    _files(tmp_path, monkeypatch, "0::/system.slice/docker-" + ID + ".scope\n")
    monkeypatch.setenv("DD_EXTERNAL_ENV", "cn-web")
    path = str(tmp_path / "dsd.socket")
    with Receiver(path=path) as agent:
        async with loopstat.install(socket_path=path, interval=0.01, stall_threshold=None, distributions=True):
            lines = await agent.wait_for(lambda lines: len(lines) >= 8)
        assert agent.bad == []
    assert {(line.container, line.external) for line in lines} == {(ID, "cn-web")}
    assert "d" in {line.type for line in lines if line.name == "loopstat.lag.distribution"}


def test_loopstat_watch_shows_distributions_in_milliseconds() -> None:
    assert fmt.unit("app.lag.distribution", "d") == fmt.unit("app.stall", "d") == "ms"


# --- real processes in a real cgroup ---------------------------------------------------------------------------

CGROUP_ROOT = "/sys/fs/cgroup"

# The application: waits to be moved, sends ``count`` lines (to the port, or to ``socket_path`` among the
# arguments), and, with ``fork``, forks a child that moves itself into another cgroup and sends again under
# the prefix "forked".
APP = r"""
import asyncio, json, os, sys
import loopstat

port, count, loop = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
arguments, fork_into = json.loads(sys.argv[4]), json.loads(sys.argv[5])
run = asyncio.run
if loop == "uvloop":
    import uvloop
    run = uvloop.run  # no event-loop policy: deprecated from Python 3.14


async def main(prefix):
    address = {} if "socket_path" in arguments else {"host": "127.0.0.1", "port": port}
    monitor = loopstat.install(prefix=prefix, interval=0.01, **address, **arguments)
    while monitor.sent < count:
        await asyncio.sleep(0.01)
    await monitor.stop()


sys.stdin.readline()  # moved into the cgroup by now
run(main("app"))
if fork_into:
    pid = os.fork()
    if pid == 0:
        for procs in fork_into:
            with open(procs, "w") as file:
                file.write(str(os.getpid()))
        run(main("forked"))
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    sys.exit(os.waitstatus_to_exitcode(status))
"""


def _v1_hierarchies() -> List[str]:
    """The mount points of cgroup v1 hierarchies this process may create groups in and move processes into."""
    if os.geteuid() != 0:
        return []
    found = []
    with open("/proc/self/mountinfo") as file:
        for line in file:
            before, _, after = line.partition(" - ")
            fields, kind = before.split(" "), after.split(" ")
            # cpuset needs cpus and mems set before a process may join: the others need nothing.
            v1 = kind[0] == "cgroup" and fields[4].startswith(CGROUP_ROOT + "/") and "cpuset" not in kind[-1]
            if v1 and os.access(fields[4], os.W_OK):
                found.append(fields[4])
    return found


# Test environments run side by side (scripts/test runs two at a time) and share the kubepods and besteffort
# groups: one removing them while another's pod is inside fails (EBUSY) and leaves groups behind.
LOCK_PATH = os.path.join(tempfile.gettempdir(), "loopstat-tests-kubepods.lock")
LOCK_TIMEOUT = 300.0


@contextlib.contextmanager
def one_process_at_a_time(timeout: float = LOCK_TIMEOUT, waiting: Optional[threading.Event] = None) -> Iterator[None]:
    """The lock a test process holds while it has Kubernetes-named groups: waits for another's, never for ever.

    ``waiting`` is set when another process holds it.
    """
    with open(LOCK_PATH, "a") as file:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if waiting is not None:
                    waiting.set()
                if time.monotonic() > deadline:
                    raise TimeoutError(f"another test process held {LOCK_PATH} for {timeout:.0f} s") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(file, fcntl.LOCK_UN)


@contextlib.contextmanager
def kubernetes_cgroup(
    hierarchies: List[str], *container_ids: str, waiting: Optional[threading.Event] = None
) -> Iterator[List[List[str]]]:
    """``kubepods/besteffort/pod<uid>/<id>`` for each ID in each hierarchy; yields each ID's ``cgroup.procs`` files.

    Removes every group it made, a process left inside going back to the root group. Not nested: it holds
    ``one_process_at_a_time(waiting=waiting)`` throughout, so give it every ID at once.
    """
    pods = [["kubepods", "besteffort", f"pod{uuid.uuid4()}", container_id] for container_id in container_ids]
    made: List[str] = []
    with one_process_at_a_time(waiting=waiting):
        try:
            for root in hierarchies:
                for relative in pods:
                    path = root
                    for part in relative:
                        path = os.path.join(path, part)
                        if not os.path.isdir(path):
                            os.mkdir(path)
                            made.append(path)
            yield [[os.path.join(root, *relative, "cgroup.procs") for root in hierarchies] for relative in pods]
        finally:
            for path in reversed(made):  # the leaves first: a group with children cannot go
                with contextlib.suppress(OSError):
                    with open(os.path.join(path, "cgroup.procs")) as file:
                        pids = file.read().split()
                    for pid in pids:  # a process left behind goes back to the root group
                        with open(os.path.join(path.split("/kubepods")[0], "cgroup.procs"), "w") as file:
                            file.write(pid)
                os.rmdir(path)


needs_cgroup_v1 = pytest.mark.skipif(
    not _v1_hierarchies(),
    reason="needs root and a writable cgroup v1 hierarchy under /sys/fs/cgroup to place a process in a Kubernetes-"
    "named cgroup",
)


def _launch_app(
    port: int,
    procs: List[str],
    loop: str,
    environ: Dict[str, str],
    arguments: Optional[Dict[str, Any]] = None,
    fork_into: Tuple[str, ...] = (),
    count: int = 30,
    wrapper: Tuple[str, ...] = (),
) -> None:
    """Run APP (through ``wrapper``), moved into the groups of ``procs`` before it installs loopstat, until it
    sent ``count`` lines."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DD_", "STATSD_", "LOOPSTAT_"))}
    command = [*wrapper, sys.executable, "-c", APP, str(port), str(count), loop]
    command += [json.dumps(arguments or {}), json.dumps(list(fork_into))]
    with subprocess.Popen(
        command, stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**env, **environ}
    ) as app:
        assert app.stdin is not None
        try:
            for path in procs:
                with open(path, "w") as file:
                    file.write(str(app.pid))
            app.stdin.write("go\n")
            app.stdin.flush()
            _, errors = app.communicate(timeout=120)
        finally:
            if app.poll() is None:
                app.kill()
    assert app.returncode == 0, errors


def _run_app(
    receiver: Receiver,
    procs: List[str],
    loop: str,
    environ: Dict[str, str],
    arguments: Optional[Dict[str, Any]] = None,
    fork_into: Tuple[str, ...] = (),
    count: int = 30,
    wrapper: Tuple[str, ...] = (),
) -> None:
    _launch_app(receiver.port, procs, loop, environ, arguments, fork_into, count, wrapper)
    receiver.quiet()
    assert not receiver.bad, receiver.bad[:3]


@pytest.fixture(params=["asyncio", "uvloop"])
def loop_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@needs_cgroup_v1
def test_an_app_in_a_kubernetes_cgroup_sends_exactly_its_container_id_on_every_line(
    receiver: Receiver, loop_name: str
) -> None:
    container_id = secrets.token_hex(32)
    with kubernetes_cgroup(_v1_hierarchies(), container_id) as [procs]:
        _run_app(receiver, procs, loop_name, {})
    lines = receiver.snapshot()
    assert len(lines) >= 30
    assert {line.container for line in lines} == {container_id}
    assert {line.external for line in lines} == {""}
    assert all(data.endswith(f"|c:{container_id}".encode()) for raw in receiver.datagrams for data in raw.split(b"\n"))


@needs_cgroup_v1
def test_the_external_environment_follows_the_container_id(receiver: Receiver) -> None:
    container_id, pod = secrets.token_hex(32), str(uuid.uuid4())
    external = f"it-false,cn-web,pu-{pod}"
    with kubernetes_cgroup(_v1_hierarchies(), container_id) as [procs]:
        _run_app(receiver, procs, "asyncio", {"DD_EXTERNAL_ENV": external}, {"tags": {"team": "a"}})
    suffix = f"|c:{container_id}|e:{external}".encode()
    assert all(data.endswith(suffix) for raw in receiver.datagrams for data in raw.split(b"\n"))
    assert {(line.container, line.external) for line in receiver.snapshot()} == {(container_id, external)}
    assert all(("team", "a") in line.tags for line in receiver.snapshot())


@needs_cgroup_v1
def test_origin_detection_off_sends_no_container_id_from_a_kubernetes_cgroup(receiver: Receiver) -> None:
    with kubernetes_cgroup(_v1_hierarchies(), secrets.token_hex(32)) as [procs]:
        _run_app(receiver, procs, "asyncio", {"DD_ORIGIN_DETECTION_ENABLED": "false", "DD_EXTERNAL_ENV": "cn-web"})
    assert receiver.snapshot()
    assert not any(b"|c:" in raw or b"|e:" in raw for raw in receiver.datagrams)


@needs_cgroup_v1
def test_distributions_from_a_kubernetes_cgroup_send_lag_as_d_with_the_container_id(receiver: Receiver) -> None:
    container_id = secrets.token_hex(32)
    with kubernetes_cgroup(_v1_hierarchies(), container_id) as [procs]:
        _run_app(receiver, procs, "asyncio", {}, {"distributions": True})
    lines = receiver.snapshot()
    assert {line.type for line in lines if line.name == "app.lag"} == {"g"}
    assert {line.type for line in lines if line.name == "app.lag.distribution"} == {"d"}
    assert "ms" not in {line.type for line in lines}
    assert {line.container for line in lines} == {container_id}


@needs_cgroup_v1
def test_over_a_unix_socket_an_app_in_a_kubernetes_cgroup_sends_the_origin_fields_too(tmp_path: Path) -> None:
    # As datadogpy and the Go client: the fields go over a socket too, where the Agent may also read credentials.
    container_id, path = secrets.token_hex(32), str(tmp_path / "dsd.socket")
    with Receiver(path=path) as agent, kubernetes_cgroup(_v1_hierarchies(), container_id) as [procs]:
        _launch_app(0, procs, "asyncio", {"DD_EXTERNAL_ENV": "cn-web"}, {"socket_path": path})
        lines = agent.settle(lambda lines: len(lines) >= 30)
        assert agent.bad == []
    assert {(line.container, line.external) for line in lines} == {(container_id, "cn-web")}


@needs_cgroup_v1
def test_a_forked_child_moved_to_another_container_sends_its_own_id(receiver: Receiver) -> None:
    first, second = secrets.token_hex(32), secrets.token_hex(32)
    hierarchies = _v1_hierarchies()
    with kubernetes_cgroup(hierarchies, first, second) as [procs, other]:
        _run_app(receiver, procs, "asyncio", {}, fork_into=tuple(other))
    lines = receiver.snapshot()
    assert {line.container for line in lines if line.name.startswith("app.")} == {first}
    assert {line.container for line in lines if line.name.startswith("forked.")} == {second}


def _cgroup_paths(pid: int) -> str:
    with open(f"/proc/{pid}/cgroup") as file:
        return file.read()


@needs_cgroup_v1
def test_the_kubernetes_groups_a_test_makes_are_removed_even_with_a_process_left_inside() -> None:
    container_id = secrets.token_hex(32)
    with subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE) as left:
        assert left.stdin is not None
        try:
            with kubernetes_cgroup(_v1_hierarchies(), container_id) as [procs]:
                for path in procs:
                    with open(path, "w") as file:
                        file.write(str(left.pid))
                assert f"/{container_id}\n" in _cgroup_paths(left.pid)
            assert not any(os.path.exists(os.path.dirname(os.path.dirname(path))) for path in procs), "pods left"
            assert container_id not in _cgroup_paths(left.pid)
            assert left.poll() is None, "the process moved out is alive"
        finally:
            left.stdin.close()
            left.wait(timeout=60)


# Another test process: holds a Kubernetes-named group until told to let it go.
OTHER = r"""
import sys
from tests.test_origin import _v1_hierarchies, kubernetes_cgroup

with kubernetes_cgroup(_v1_hierarchies(), sys.argv[1]):
    print("in", flush=True)
    sys.stdin.readline()
"""


@needs_cgroup_v1
def test_two_test_processes_at_once_share_the_kubepods_groups_and_leave_none_behind() -> None:
    # As scripts/test runs two environments at once: each makes and removes groups under the same parents.
    hierarchies = _v1_hierarchies()
    shared = [os.path.join(root, "kubepods") for root in hierarchies]
    with one_process_at_a_time():
        before = [os.path.isdir(path) for path in shared]  # none, unless something other than a test made them
    errors: List[BaseException] = []
    entered, waiting, release = threading.Event(), threading.Event(), threading.Event()

    def ours() -> None:
        try:
            with kubernetes_cgroup(hierarchies, secrets.token_hex(32), waiting=waiting):
                entered.set()
                release.wait(120)
        except BaseException as exc:  # reported by the test below, not lost in the thread
            errors.append(exc)

    command = [sys.executable, "-c", OTHER, secrets.token_hex(32)]
    root = Path(__file__).parent.parent
    with subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=root
    ) as other:
        assert other.stdin is not None
        assert other.stdout is not None
        thread = threading.Thread(target=ours)
        try:
            assert other.stdout.readline() == "in\n", other.communicate(timeout=60)[1]
            thread.start()
            # Ours are made beside the other's (were groups not taken in turn), or wait for them to go.
            deadline = time.monotonic() + 60
            while not (entered.is_set() or waiting.is_set()) and time.monotonic() < deadline:
                time.sleep(0.01)
            other.stdin.write("go\n")
            other.stdin.flush()
            _, other_errors = other.communicate(timeout=120)
            assert other.returncode == 0, other_errors
        finally:
            if other.poll() is None:
                other.kill()
            release.set()
            if thread.ident is not None:  # started
                thread.join(timeout=120)
    assert not errors, errors
    assert entered.is_set()
    with one_process_at_a_time():
        assert [os.path.isdir(path) for path in shared] == before


@pytest.mark.e2e
@needs_cgroup_v1
def test_from_a_kubernetes_cgroup_etsy_statsd_reads_every_statsd_flavor_line(tmp_path: Path) -> None:
    # Origin detection left on and DD_EXTERNAL_ENV set, as in a pod: the statsd flavor sends neither field.
    environ = {"DD_EXTERNAL_ENV": "it-false,cn-web,pu-6b8e4a7c-1f0d-4d2e-9a57-0c1b2d3e4f50"}
    gauges = {f"app.{metric.name}" for metric in METRICS if metric.type == "g"}
    with running_statsd(tmp_path / "statsd") as statsd, kubernetes_cgroup(_v1_hierarchies(), ID) as [procs]:
        _launch_app(statsd.port, procs, "asyncio", environ, {"flavor": "statsd"})
        deadline = time.monotonic() + 30
        while "app.tasks" not in statsd.gauges() and time.monotonic() < deadline:
            time.sleep(0.05)
        stats = statsd.stats()
        assert stats["messages.bad_lines_seen"] == 0, statsd.output()
        sent = {name for name in statsd.gauges() if name.startswith("app.")}
        assert "app.tasks" in sent, sent
        assert sent <= gauges, sent
        # The check sees the fields: the dogstatsd flavor's lines carry them, and statsd counts those lines bad.
        _launch_app(statsd.port, procs, "asyncio", environ, {"flavor": "dogstatsd", "tags": None}, count=10)
        while statsd.stats()["messages.bad_lines_seen"] < 10 and time.monotonic() < deadline + 30:
            time.sleep(0.05)
        assert statsd.stats()["messages.bad_lines_seen"] >= 10, statsd.output()


def _cgroup2_mount() -> Optional[str]:
    """A cgroup v2 mount point this process may make groups in (hybrid hosts: ``/sys/fs/cgroup/unified``)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return None
    with open("/proc/self/mountinfo") as file:
        for line in file:
            before, _, after = line.partition(" - ")
            point = before.split(" ")[4]
            if after.split(" ")[0] == "cgroup2" and point.startswith(CGROUP_ROOT) and os.access(point, os.W_OK):
                return point
    return None


# As Docker's default on cgroup v2: the process in a cgroup of its own, in a cgroup namespace of its own, with
# cgroup2 mounted afresh in its own mount namespace ($0: the group, $1: the mount point, then the command).
PRIVATE_NAMESPACE = (
    'mount=$1; shift; echo $$ > "$0/cgroup.procs" && exec unshare --cgroup --mount --propagation private '
    'sh -c \'umount "$0" && mount -t cgroup2 none "$0" && exec "$@"\' "$mount" "$@"'
)


@pytest.mark.skipif(
    _cgroup2_mount() is None, reason="needs root, unshare and a writable cgroup v2 mount under /sys/fs/cgroup"
)
def test_in_a_private_cgroup_namespace_an_app_sends_its_cgroup_v2_folder_s_inode(receiver: Receiver) -> None:
    mount = _cgroup2_mount()
    assert mount is not None
    group = os.path.join(mount, f"loopstat-test-{secrets.token_hex(8)}")
    os.mkdir(group)
    try:
        inode = os.stat(group).st_ino  # the number the Agent reads from the host's side for that container
        wrapper = ("sh", "-c", PRIVATE_NAMESPACE, group, mount)
        _run_app(receiver, [], "asyncio", {"DD_EXTERNAL_ENV": "cn-web"}, wrapper=wrapper)
    finally:
        os.rmdir(group)
    assert receiver.snapshot()
    assert all(
        data.endswith(f"|c:in-{inode}|e:cn-web".encode()) for raw in receiver.datagrams for data in raw.split(b"\n")
    )
