"""The worker tag's slots, held by real processes: smallest free first, freed by death, never raised into the app."""

from __future__ import annotations

import functools
import os
import pwd
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

import loopstat
from loopstat import Flavor, _worker
from tests.receiver import Line, Receiver

# Claims a slot in the folder given, prints it, and holds it until killed.
HOLDER = """
import sys, time
from loopstat import _worker
held = _worker.claim(sys.argv[1])
print(held[0] if held else "none", flush=True)
time.sleep(120)
"""


@pytest.fixture
def holders() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


def hold(procs: list[subprocess.Popen[str]], directory: Path) -> tuple[subprocess.Popen[str], str]:
    """A new process holding a slot in ``directory``, and the slot it printed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(directory)], stdout=subprocess.PIPE, text=True, env=python_path()
    )
    procs.append(proc)
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def python_path() -> dict[str, str]:
    """This environment, with the worktree importable in a child (loopstat need not be installed)."""
    root = str(Path(__file__).resolve().parent.parent)
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))


def test_siblings_take_the_smallest_free_slots_and_a_dead_holders_slot_is_taken_again(
    tmp_path: Path, holders: list[subprocess.Popen[str]]
) -> None:
    group = tmp_path / "group"
    first = [hold(holders, group) for _ in range(3)]
    assert [slot for _, slot in first] == ["0", "1", "2"]
    killed, _ = first[1]
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    # The kernel dropped the dead holder's lock: its replacement gets its number, the next one a new number.
    assert [hold(holders, group)[1] for _ in range(2)] == ["1", "3"]


def test_all_slots_taken_gives_none(tmp_path: Path) -> None:
    held = _worker.claim(str(tmp_path), limit=2)
    assert held is not None
    try:
        assert _worker.claim(str(tmp_path), limit=1) is None
    finally:
        os.close(held[1])


FORKS = """
import os, sys, time
import loopstat  # its fork hook lets go of the parent's slot in the child
from loopstat import _worker
mine = _worker.slot()
if os.fork() == 0:
    sys.stdout.write(f"child {_worker.slot()} {os.getpid()}\\n")  # one write: the parent writes to the same pipe
    sys.stdout.flush()
    time.sleep(120)
    os._exit(0)
sys.stdout.write(f"parent {mine}\\n")
"""


def test_a_forked_child_holds_its_own_slot_and_frees_its_dead_parents(
    tmp_path: Path, holders: list[subprocess.Popen[str]]
) -> None:
    env = dict(python_path(), TMPDIR=str(tmp_path))
    parent = subprocess.Popen([sys.executable, "-c", FORKS], stdout=subprocess.PIPE, text=True, env=env)
    assert parent.stdout is not None
    child = 0
    try:
        lines = sorted(parent.stdout.readline().split() for _ in range(2))
        child = int(lines[0][2])
        assert parent.wait(timeout=30) == 0
        # Each in its own group: the parent among the test's children, the child among the parent's.
        assert [line[:2] for line in lines] == [["child", "0"], ["parent", "0"]]
        # The parent is dead, its child alive: without the fork hook the child's inherited copy would keep the lock.
        ours = tmp_path / f"loopstat-{os.getuid()}" / str(os.getpid())
        assert hold(holders, ours)[1] == "0"
    finally:
        parent.stdout.close()
        if parent.poll() is None:
            parent.kill()
        parent.wait()
        if child:
            os.kill(child, signal.SIGKILL)  # orphaned: no one else will


@pytest.fixture
def own_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """This process's slot claimed afresh, under ``tmp_path``; released at the end."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(_worker, "_tried", False)
    monkeypatch.setattr(_worker, "_held", None)
    yield tmp_path
    if _worker._held is not None:
        os.close(_worker._held[1])


def test_a_temporary_folder_that_is_a_file_is_passed_over(
    own_temp: Path, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    blocker = own_temp / "file"
    blocker.write_text("")
    tempfile.tempdir = str(blocker)
    fallback = tmp_path_factory.mktemp("fallback")
    monkeypatch.setenv("TMPDIR", str(fallback))
    assert _worker.slot() == 0
    assert (fallback / f"loopstat-{os.getuid()}" / str(os.getppid()) / "slot-0.lock").exists()


def test_no_usable_temporary_folder_gives_no_slot_one_debug_line_and_nothing_in_the_working_directory(
    own_temp: Path, monkeypatch: pytest.MonkeyPatch, loopstat_log: pytest.LogCaptureFixture
) -> None:
    work = own_temp / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    # Every candidate unusable: a file, a folder that is not there, and the working directory itself.
    (own_temp / "file").write_text("")
    tempfile.tempdir = str(own_temp / "file")
    monkeypatch.setenv("TMPDIR", str(own_temp / "absent"))
    monkeypatch.setenv("TEMP", str(work))
    monkeypatch.delenv("TMP", raising=False)
    monkeypatch.setattr(_worker, "_TEMPORARY", (str(work),))
    assert _worker.slot() is None
    assert _worker.tags((("service", "a"),)) == (("service", "a"),)
    assert [(r.levelname, "no worker tag" in r.getMessage()) for r in loopstat_log.records] == [("DEBUG", True)]
    assert list(work.iterdir()) == []


def test_a_link_planted_at_the_group_folder_is_refused_and_nothing_is_made_through_it(
    own_temp: Path, loopstat_log: pytest.LogCaptureFixture
) -> None:
    ours = own_temp / f"loopstat-{os.getuid()}"
    ours.mkdir(mode=0o700)
    elsewhere = own_temp / "elsewhere"
    elsewhere.mkdir()
    (ours / str(os.getppid())).symlink_to(elsewhere)
    assert _worker.slot() is None
    assert list(elsewhere.iterdir()) == []
    assert "is not a folder of this user's alone" in loopstat_log.text


def test_another_users_folder_is_refused_and_nothing_is_made_inside_it(
    own_temp: Path, loopstat_log: pytest.LogCaptureFixture
) -> None:
    if os.getuid() != 0:
        pytest.skip("only root can give a folder to another user")
    nobody = pwd.getpwnam("nobody")
    ours = own_temp / f"loopstat-{os.getuid()}"
    ours.mkdir(mode=0o700)
    os.chown(ours, nobody.pw_uid, nobody.pw_gid)
    assert _worker.slot() is None
    assert list(ours.iterdir()) == [], "nothing made inside another user's folder"
    assert "is not a folder of this user's alone" in loopstat_log.text


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_folders_of_dead_parents_are_removed_but_a_slot_still_held_stays(
    own_temp: Path, holders: list[subprocess.Popen[str]]
) -> None:
    ours = own_temp / f"loopstat-{os.getuid()}"
    ours.mkdir(mode=0o700)
    gone, orphaned = ours / str(dead_pid()), ours / str(dead_pid())
    for folder in (gone, orphaned):
        folder.mkdir(mode=0o700)
        (folder / "slot-0.lock").write_text("")
        (folder / "slot-1.lock").write_text("")
    # A worker whose parent died still holds slot 0 there.
    assert hold(holders, orphaned)[1] == "0"
    assert _worker.slot() == 0
    assert not gone.exists()
    assert sorted(path.name for path in orphaned.iterdir()) == ["slot-0.lock"]
    assert (ours / str(os.getppid())).is_dir()


@pytest.mark.parametrize("how", ["other user", "writable by all", "symlink"])
def test_a_slot_folder_not_this_users_alone_is_not_used(
    own_temp: Path, loopstat_log: pytest.LogCaptureFixture, how: str
) -> None:
    ours = own_temp / f"loopstat-{os.getuid()}"
    # What the folder's path leads to: a link's target, or the folder itself.
    inside = own_temp / "elsewhere"
    if how == "symlink":
        inside.mkdir()
        ours.symlink_to(inside)
    else:
        ours.mkdir()
        inside = ours
        if how == "other user":
            if os.getuid() != 0:
                pytest.skip("only root can give a folder to another user")
            os.chown(ours, 12345, 12345)
        else:
            ours.chmod(0o777)
    assert _worker.slot() is None
    assert "is not a folder of this user's alone" in loopstat_log.text
    assert list(inside.iterdir()) == [], "refused before anything was made through it or inside it"


def test_a_vanished_slot_folder_is_made_again(own_temp: Path) -> None:
    held = _worker.claim(str(own_temp / "group"))
    assert held is not None
    os.close(held[1])
    for path in (own_temp / "group").iterdir():
        path.unlink()
    (own_temp / "group").rmdir()
    again = _worker.claim(str(own_temp / "group"))
    assert again is not None
    assert again[0] == 0
    os.close(again[1])


async def test_install_with_worker_tag_sends_this_processs_slot_on_every_line(
    own_temp: Path, receiver: Receiver
) -> None:
    async with loopstat.install("127.0.0.1", receiver.port, tags={"service": "s"}, interval=0.02, worker_tag=True):
        lines = await receiver.wait_for(lambda lines: len(lines) >= 3)
    slot = _worker.slot()
    assert slot == 0
    # A stall's lines add their own tags (a loaded machine can stall the loop): the worker's are on every line.
    assert all(dict(line.tags).items() >= {("service", "s"), ("worker", "0")} for line in lines), lines
    assert all([name for name, _ in line.tags].count("worker") == 1 for line in lines), lines


def named_more_than(prefix: str, count: int, lines: Sequence[Line]) -> bool:
    return sum(line.name.startswith(prefix) for line in lines) > count


async def test_explicit_worker_tag_wins_and_statsd_flavor_and_the_default_send_none(
    own_temp: Path, receiver: Receiver
) -> None:
    async with loopstat.install("127.0.0.1", receiver.port, tags={"Worker": "w7"}, interval=0.02, worker_tag=True):
        explicit = await receiver.wait_for(lambda lines: len(lines) >= 3)
    assert all(line.tags == (("Worker", "w7"),) for line in explicit)
    flavors: tuple[tuple[Flavor, bool], ...] = (("statsd", True), ("dogstatsd", False))
    for flavor, worker_tag in flavors:
        # A prefix of its own: a loaded machine may deliver the previous monitor's last lines after this one began.
        async with loopstat.install(
            "127.0.0.1", receiver.port, prefix=flavor, interval=0.02, flavor=flavor, worker_tag=worker_tag
        ):
            lines = await receiver.wait_for(functools.partial(named_more_than, flavor + ".", 2))
        assert all(line.tags == () for line in lines if line.name.startswith(flavor + ".")), flavor
    assert _worker._held is None, "no slot claimed when nothing asked for the tag"


def test_without_fcntl_there_is_no_tag_and_no_warning(
    own_temp: Path, monkeypatch: pytest.MonkeyPatch, loopstat_log: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(_worker, "fcntl", None)  # as on Windows
    assert _worker.tags((("service", "a"),)) == (("service", "a"),)
    assert [record.levelname for record in loopstat_log.records] == ["DEBUG"]
    assert not list(own_temp.iterdir()), "no folder made"


def test_a_umask_of_0_still_makes_folders_for_this_user_alone(own_temp: Path) -> None:
    old = os.umask(0)
    try:
        assert _worker.slot() == 0
    finally:
        os.umask(old)
    ours = own_temp / f"loopstat-{os.getuid()}"
    assert [oct(path.stat().st_mode & 0o777) for path in (ours, ours / str(os.getppid()))] == ["0o700", "0o700"]


async def test_log_lines_of_a_process_holding_a_slot_name_the_worker_and_pid(
    own_temp: Path, receiver: Receiver, loopstat_log: pytest.LogCaptureFixture
) -> None:
    async with loopstat.install("127.0.0.1", receiver.port, interval=0.02, stall_threshold=0.1, worker_tag=True) as m:
        await receiver.wait_for(lambda lines: len(lines) >= 3)
        time.sleep(0.3)  # a stall: its warning is logged when it ends
        await receiver.wait_for(lambda lines: m.stalls >= 1)
    stalls = [r.getMessage() for r in loopstat_log.records if "the event loop was blocked" in r.getMessage()]
    assert stalls
    assert all(line.startswith(f"loopstat [worker 0, pid {os.getpid()}]: ") for line in stalls), stalls


async def test_log_lines_without_a_slot_keep_the_plain_prefix(
    own_temp: Path, receiver: Receiver, loopstat_log: pytest.LogCaptureFixture
) -> None:
    async with loopstat.install("127.0.0.1", receiver.port, interval=0.02, stall_threshold=0.1) as m:
        await receiver.wait_for(lambda lines: len(lines) >= 3)
        time.sleep(0.3)
        await receiver.wait_for(lambda lines: m.stalls >= 1)
    stalls = [r.getMessage() for r in loopstat_log.records if "the event loop was blocked" in r.getMessage()]
    assert stalls
    assert all(line.startswith("loopstat: ") for line in stalls), stalls
