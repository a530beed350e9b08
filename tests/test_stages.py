"""The suite's stage runner (tests/stages.py, behind ``bash scripts/test``), on stand-in stage commands."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import stages
from tests.stages import Stage


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def touching(path: Path, code: int = 0) -> list[str]:
    """A stage command that leaves ``path`` behind and exits with ``code``."""
    return python(f"import pathlib, sys; pathlib.Path({str(path)!r}).touch(); sys.exit({code})")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purpose: it no longer runs.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_until_gone(pid: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while alive(pid):
        assert time.monotonic() < deadline, f"spinner {pid} still runs"
        time.sleep(0.05)


def test_a_failing_library_stage_still_lets_every_later_stage_run_and_the_run_fails(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    paired = [Stage("py39", touching(tmp_path / "py39")), Stage("py310", touching(tmp_path / "py310", code=1))]
    after = [Stage(name, touching(tmp_path / name)) for name in ("e2e", "lint", "type")]

    assert stages.run(paired, after) == 1

    assert sorted(path.name for path in tmp_path.iterdir()) == ["e2e", "lint", "py310", "py39", "type"]
    summary = capfd.readouterr().out.split("Summary:")[1].strip().splitlines()
    assert [line.split()[:2] for line in summary[:5]] == [
        ["py39", "ok"],
        ["py310", "FAIL"],
        ["e2e", "ok"],
        ["lint", "ok"],
        ["type", "ok"],
    ]
    assert summary[1].split()[:4] == ["py310", "FAIL", "(exit", "1)"]
    assert summary[5].split()[:3] == ["total", "FAILED:", "py310"]


def test_every_stage_ok_exits_0_and_the_summary_gives_each_its_time(capfd: pytest.CaptureFixture[str]) -> None:
    assert stages.run([Stage("py311", python("pass"))], [Stage("lint", python("pass"))]) == 0
    summary = capfd.readouterr().out.split("Summary:")[1].strip().splitlines()
    assert [line.split()[:2] for line in summary] == [["py311", "ok"], ["lint", "ok"], ["total", "all"]]
    assert all(line.endswith(" s") for line in summary)


def test_pytest_finding_no_tests_counts_as_a_failure(capfd: pytest.CaptureFixture[str]) -> None:
    # pytest exits 5 when it collected nothing: a stage that tested nothing has not passed.
    assert stages.run([], [Stage("py312", python("import sys; sys.exit(5)"))]) == 1
    assert re.search(r"py312 +FAIL \(exit 5\)", capfd.readouterr().out)


def test_a_command_that_cannot_start_is_a_failed_stage_and_the_others_still_run(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    missing = Stage("type", [str(tmp_path / "no-such-tox")])
    assert stages.run([], [missing, Stage("lint", touching(tmp_path / "lint"))]) == 1
    assert (tmp_path / "lint").exists()
    assert re.search(r"type +FAIL \(exit 127\)", capfd.readouterr().out)


def test_a_stage_whose_python_is_not_on_path_is_skipped_and_says_so(capfd: pytest.CaptureFixture[str]) -> None:
    later = Stage("py399", python("import sys; sys.exit(1)"), needs="python3.99")
    assert stages.run([later], []) == 0
    assert re.search(r"py399 +skipped: no python3.99 on PATH\n", capfd.readouterr().out)


def test_the_later_pythons_run_only_where_their_interpreter_is_on_path() -> None:
    paired, after = stages.default_stages()
    assert [(stage.name, stage.needs) for stage in paired] == [
        ("e2e", None),
        ("py39", None),
        ("py310", None),
        ("py311", None),
        ("py312", None),
        ("py313", None),
        ("py314", "python3.14"),
        ("py315", "python3.15"),
    ]
    assert [stage.name for stage in after] == ["lint", "type"]


def meeting(folder: Path, mine: str, other: str) -> list[str]:
    """A stage command that leaves ``mine`` behind and waits for ``other``: it ends (status 0) only if both run
    at once, else it gives up with status 1 after a minute."""
    return python(
        "import pathlib, sys, time\n"
        f"pathlib.Path({str(folder / mine)!r}).touch()\n"
        "deadline = time.monotonic() + 60\n"
        f"while not pathlib.Path({str(folder / other)!r}).exists():\n"
        "    if time.monotonic() > deadline: sys.exit(1)\n"
        "    time.sleep(0.01)\n"
    )


def test_library_stages_run_two_at_a_time(tmp_path: Path) -> None:
    pair = [Stage("py39", meeting(tmp_path, "a", "b")), Stage("py310", meeting(tmp_path, "b", "a"))]
    assert stages.run(pair, []) == 0


def test_the_later_stages_start_as_soon_as_a_runner_is_free(tmp_path: Path) -> None:
    # A stage of the second list starts beside one of the first still running, not after them all.
    last, later = [Stage("py313", meeting(tmp_path, "a", "b"))], [Stage("e2e", meeting(tmp_path, "b", "a"))]
    assert stages.run(last, later) == 0


def test_the_spinners_are_ended_whatever_happens() -> None:
    started: list[subprocess.Popen[bytes]] = []

    def a_faulty_run() -> None:
        with stages.spinning(2) as spinners:
            started.extend(spinners)
            raise RuntimeError("a stage runner fault")

    with pytest.raises(RuntimeError):
        a_faulty_run()
    assert len(started) == 2
    for proc in started:
        wait_until_gone(proc.pid)


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def test_each_spinner_keeps_the_cpu_busy_while_the_stages_run() -> None:
    with stages.spinning(2) as spinners:
        deadline = time.monotonic() + 30
        while min(cpu_ticks(proc.pid) for proc in spinners) < 20:  # 0.2 s of CPU each, at 100 ticks a second
            assert all(proc.poll() is None for proc in spinners), "a spinner ended"
            assert time.monotonic() < deadline, "the spinners do not spin"
            time.sleep(0.05)


def test_a_spinner_ends_when_the_run_that_started_it_is_killed(tmp_path: Path) -> None:
    # SIGKILL runs no clean-up: the spinner itself sees its parent gone.
    run = "import time\nfrom tests import stages\nwith stages.spinning(1) as s:\n    print(s[0].pid, flush=True)\n"
    runner = subprocess.Popen(
        python(run + "    time.sleep(600)\n"),
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parent.parent,
    )
    assert runner.stdout is not None
    pid = int(runner.stdout.readline())
    assert alive(pid)
    runner.send_signal(signal.SIGKILL)
    runner.wait()
    runner.stdout.close()
    wait_until_gone(pid)
