"""Smoke test of the soak benchmark: a few seconds, a couple of agent flaps, nothing reaching the app."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e  # whole programs and real servers: run once, in the e2e env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def soak(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m bench.soak`` from the repository root and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "bench.soak", "--flap-seconds", "1", "--down-seconds", "0.3", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def cell(output: str, measure: str) -> str:
    """The value column of one row of the markdown table."""
    match = re.search(rf"^\| {re.escape(measure)} \| (.*) \|$", output, re.MULTILINE)
    assert match, f"no row {measure!r} in:\n{output}"
    return match[1]


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_soak_survives_a_flapping_agent(loop: str) -> None:
    run = soak("--seconds", "3", "--loop", loop)
    assert run.returncode == 0, run.stdout + run.stderr
    out = run.stdout
    assert "| measure | value |\n|---|---|\n" in out
    assert cell(out, "loop") == loop
    assert cell(out, "**exceptions reaching the app**") == "**0**"
    assert int(cell(out, "datagrams counted by the receiver")) > 0
    assert int(cell(out, "metric lines sent by loopstat (a sample is one datagram)")) > 0
    flaps = re.match(r"up 1 s / down 0\.3 s: (\d+) SIGKILLs", cell(out, "agent flaps"))
    assert flaps, out
    assert int(flaps[1]) >= 1, out
    assert re.fullmatch(r"\*\*[+-]\d+ KiB\*\* .*", cell(out, "**RSS growth**"))


def test_soak_fails_when_an_exception_reaches_the_app() -> None:
    run = soak("--seconds", "1.5", "--raise-in-app")
    assert run.returncode == 1, run.stdout + run.stderr
    assert cell(run.stdout, "**exceptions reaching the app**") == "**1**"
    assert "injected by --raise-in-app" in run.stdout
