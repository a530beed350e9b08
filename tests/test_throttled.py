"""P.throttled: the share of wall time the process's cgroup was frozen by its CPU limit.

The real-process tests put a CPU-bound application in a real cgroup v1 group
with a CFS quota (needs root) and compare with the kernel's own count; cgroup
v2 is read from files shaped like a real v2 host's.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import pytest

from loopstat import _cgroup
from loopstat._metrics import Line
from loopstat.probes.throttled import READ_EVERY_SECONDS, Throttled
from tests.receiver import Receiver

# A Kubernetes pod's container under cgroup v2 with the systemd driver, as a real host shows it.
V2_CGROUP = "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/cri-containerd-abc.scope\n"
V2_MOUNTINFO = "30 23 0:26 / {root} rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"
V2_POD = "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice"
V2_CPU_STAT = """usage_usec 8313416
user_usec 6511238
system_usec 1802178
core_sched.force_idle_usec 0
nr_periods 3204
nr_throttled 406
throttled_usec {throttled}
nr_bursts 0
burst_usec 0
"""
V1_CPU_STAT = "nr_periods 120\nnr_throttled 98\nthrottled_time {throttled}\nnr_bursts 0\nburst_time 0\n"
V1_CGROUP = "12:memory:/kubepods/pod1/abc\n4:cpu,cpuacct:/kubepods/pod1/abc\n0::/\n"
V1_MOUNTINFO = "37 31 0:33 / {root} rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,cpu,cpuacct\n"


def _v2_host(root: Path, pod_limit: str, container_limit: str = "max 100000") -> Path:
    """A v2 hierarchy at ``root`` with a pod and its container, each with its cpu.max; returns the container's."""
    pod = root / V2_POD
    container = pod / "cri-containerd-abc.scope"
    container.mkdir(parents=True)
    (pod / "cpu.max").write_text(pod_limit + "\n")
    (container / "cpu.max").write_text(container_limit + "\n")
    return container


def test_cgroup_v2_throttled_time_is_read_from_the_nearest_folder_with_a_cpu_limit(tmp_path: Path) -> None:
    _v2_host(tmp_path, "50000 100000")  # the pod's limit; the container has none of its own
    pod = tmp_path / V2_POD
    (pod / "cpu.stat").write_text(V2_CPU_STAT.format(throttled=2_500_000))
    found = _cgroup.find_throttling(V2_CGROUP, V2_MOUNTINFO.format(root=tmp_path))
    assert found == _cgroup.Throttling(2, str(pod))
    assert found.seconds() == pytest.approx(2.5)


def test_cgroup_v2_with_no_cpu_limit_anywhere_means_no_throttling(tmp_path: Path) -> None:
    _v2_host(tmp_path, "max 100000")
    assert _cgroup.find_throttling(V2_CGROUP, V2_MOUNTINFO.format(root=tmp_path)) is None


def test_cgroup_v1_throttled_time_is_in_nanoseconds_under_a_container_s_own_mount_root(tmp_path: Path) -> None:
    # Inside a container the hierarchy's root is the container's own group: its path is the mount point itself.
    (tmp_path / "cpu.cfs_quota_us").write_text("20000\n")
    (tmp_path / "cpu.stat").write_text(V1_CPU_STAT.format(throttled=1_250_000_000))
    mountinfo = V1_MOUNTINFO.replace(" / ", " /kubepods/pod1/abc ").format(root=tmp_path)
    found = _cgroup.find_throttling(V1_CGROUP, mountinfo)
    assert found == _cgroup.Throttling(1, str(tmp_path))
    assert found.seconds() == pytest.approx(1.25)


def test_cgroup_v1_without_a_quota_means_no_throttling(tmp_path: Path) -> None:
    group = tmp_path / "kubepods" / "pod1" / "abc"
    group.mkdir(parents=True)
    for folder in (tmp_path, tmp_path / "kubepods", tmp_path / "kubepods" / "pod1", group):
        (folder / "cpu.cfs_quota_us").write_text("-1\n")
    assert _cgroup.find_throttling(V1_CGROUP, V1_MOUNTINFO.format(root=tmp_path)) is None


def test_no_cgroup_files_mean_no_throttling() -> None:
    assert _cgroup.find_throttling("", "") is None
    assert _cgroup.find_throttling("garbage\n::\n", "no mounts here\n") is None
    assert _cgroup.throttled_seconds(2, "throttled_usec many\n") is None


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_share_is_of_the_wall_time_since_the_previous_read_at_most_once_a_second(tmp_path: Path) -> None:
    stat = tmp_path / "cpu.stat"
    stat.write_text(V2_CPU_STAT.format(throttled=1_000_000))
    clock = FakeClock()
    probe = Throttled(_cgroup.Throttling(2, str(tmp_path)), now=clock)
    lines: List[Line] = []
    clock.now += READ_EVERY_SECONDS / 2
    stat.write_text(V2_CPU_STAT.format(throttled=1_400_000))
    probe.read(lines)
    assert lines == [], "read again before a second passed"
    clock.now += READ_EVERY_SECONDS * 1.5  # two seconds since the first read, 0.8 s of them throttled
    stat.write_text(V2_CPU_STAT.format(throttled=1_800_000))
    probe.read(lines)
    assert lines == [("throttled", "g", 0.4)]
    clock.now += 1.0
    stat.write_text(V2_CPU_STAT.format(throttled=4_800_000))  # three CPUs throttled at once: the kernel sums them
    probe.read(lines)
    assert lines[-1] == ("throttled", "g", 1.0)


def test_an_unreadable_cpu_stat_sends_nothing_and_the_next_readable_one_starts_afresh(tmp_path: Path) -> None:
    stat = tmp_path / "cpu.stat"
    stat.write_text(V2_CPU_STAT.format(throttled=1_000_000))
    clock = FakeClock()
    probe = Throttled(_cgroup.Throttling(2, str(tmp_path)), now=clock)
    lines: List[Line] = []
    stat.unlink()
    clock.now += 1.0
    probe.read(lines)
    stat.write_text(V2_CPU_STAT.format(throttled=1_500_000))
    clock.now += 1.0
    probe.read(lines)
    assert lines == []
    assert probe.share is None
    clock.now += 1.0
    stat.write_text(V2_CPU_STAT.format(throttled=1_600_000))
    probe.read(lines)
    assert lines == [("throttled", "g", 0.1)]


# --- a real process in a real cgroup with a CPU quota ----------------------------------------------------------

# The application: waits to be moved, then runs a CPU-bound monitored loop for ``seconds``, saying when it starts
# and ends on stdout.
APP = r"""
import asyncio, sys, time
import loopstat

port, seconds = int(sys.argv[1]), float(sys.argv[2])


async def main():
    async with loopstat.install("127.0.0.1", port, interval=0.25, stall_threshold=None):
        print("started", flush=True)
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            spin = time.perf_counter() + 0.002
            while time.perf_counter() < spin:
                pass
            await asyncio.sleep(0)
        print("done", flush=True)
        await asyncio.sleep(0.3)


sys.stdin.readline()  # moved into the group by now
asyncio.run(main())
"""


needs_cpu_quota = pytest.mark.skipif(
    _cgroup.quota_unavailable() is not None, reason=f"no cgroup with a CPU quota: {_cgroup.quota_unavailable()}"
)


def _throttled_seconds(group: _cgroup.QuotaGroup) -> float:
    seconds = _cgroup.Throttling(group.version, group.path).seconds()
    assert seconds is not None, f"{group.path}/cpu.stat has no throttled time"
    return seconds


def _run_in(group: _cgroup.QuotaGroup, receiver: Receiver, seconds: float) -> Dict[str, float]:
    """Run the application in ``group``; the kernel's throttled time and the wall time from its start to its end."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DD_", "STATSD_", "LOOPSTAT_"))}
    command = [sys.executable, "-c", APP, str(receiver.port), str(seconds)]
    with subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    ) as app:
        assert app.stdin is not None
        assert app.stdout is not None
        try:
            group.add(app.pid)
            app.stdin.write("go\n")
            app.stdin.flush()
            assert app.stdout.readline() == "started\n"
            started, throttled = time.perf_counter(), _throttled_seconds(group)
            assert app.stdout.readline() == "done\n"
            ended, throttled = time.perf_counter(), _throttled_seconds(group) - throttled
            _, errors = app.communicate(timeout=60)
        finally:
            if app.poll() is None:
                app.kill()
    assert app.returncode == 0, errors
    receiver.quiet()
    return {"wall": ended - started, "throttled": throttled}


@needs_cpu_quota
def test_p_throttled_matches_the_kernel_s_throttled_time_under_a_real_cpu_quota(receiver: Receiver) -> None:
    with _cgroup.cpu_quota_group(
        20_000, name="loopstat-test"
    ) as group:  # 20 ms of CPU per 100 ms: a spinning thread is frozen ~80 % of it
        kernel = _run_in(group, receiver, seconds=4.0)
    shares = receiver.values("loopstat.throttled", "g")
    assert len(shares) >= 3, shares
    expected = kernel["throttled"] / kernel["wall"]
    assert expected > 0.1, f"the quota throttled too little to compare: {kernel}"
    # Each share covers about a second of the run; their mean covers the run.
    assert abs(sum(shares) / len(shares) - expected) <= 0.1, (shares, kernel)


@needs_cpu_quota
def test_p_throttled_is_not_sent_without_a_cpu_limit(receiver: Receiver) -> None:
    with _cgroup.cpu_quota_group(None, name="loopstat-test") as group:
        _run_in(group, receiver, seconds=1.5)
    assert receiver.values("loopstat.utilization", "g"), "the application sent nothing at all"
    assert receiver.values("loopstat.throttled", "g") == []


def _own_cpu_folder() -> str:
    return _cgroup.quota_home(_cgroup.read(_cgroup.CGROUP_PATH), _cgroup.read(_cgroup.MOUNTINFO_PATH))[1]


def _interrupted_with(pid: int, groups: List[_cgroup.QuotaGroup]) -> None:
    """Put ``pid`` in a new quota group, check it is there under the quota, and get a Ctrl-C."""
    with _cgroup.cpu_quota_group(20_000, name="loopstat-test") as group:
        groups.append(group)
        group.add(pid)
        assert group.pids() == (pid,)
        with open(os.path.join(group.path, "cpu.cfs_quota_us" if group.version == 1 else "cpu.max")) as file:
            assert file.read().split()[0] == "20000"
        raise KeyboardInterrupt


@needs_cpu_quota
def test_a_quota_group_is_removed_with_its_process_moved_back_when_the_block_is_interrupted() -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    groups: List[_cgroup.QuotaGroup] = []
    try:
        with pytest.raises(KeyboardInterrupt):
            _interrupted_with(sleeper.pid, groups)
        [group] = groups
        assert not os.path.exists(group.path)
        with open(os.path.join(group.parent, "cgroup.procs")) as file:
            assert str(sleeper.pid) in file.read().split(), "the process left behind went back to the parent"
    finally:
        sleeper.kill()
        sleeper.wait()


def test_where_no_group_can_be_made_the_error_says_why(tmp_path: Path) -> None:
    with pytest.raises(_cgroup.CgroupError, match=r"^no cgroup cpu controller was found$"):
        _cgroup.quota_home("0::/\n", "no cgroup mounts\n")
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    with (
        pytest.raises(_cgroup.CgroupError, match=r"^no cgroup could be made \(Not a directory\)$"),
        _cgroup.cpu_quota_group(20_000, home=(1, str(not_a_folder))),
    ):
        pass


@needs_cpu_quota
def test_a_quota_the_kernel_refuses_is_a_clear_error_and_leaves_no_group() -> None:
    before = set(os.listdir(_own_cpu_folder()))
    # Below the kernel's 1 ms minimum.
    with (
        pytest.raises(_cgroup.CgroupError, match=r"^the cgroup's CPU quota could not be set \(Invalid argument\)$"),
        _cgroup.cpu_quota_group(1, name="loopstat-test"),
    ):
        pass
    assert set(os.listdir(_own_cpu_folder())) == before
