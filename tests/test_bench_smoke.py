"""The benchmark runner still runs: ``python -m bench all|instructions|idle --quick`` end well and print every row.

Smoke runs, not measurements: no figure is judged here, only that each table is there and whole.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

from bench.causes import INJECTED
from tests.provision import command

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("none", "naive", "loopstat", "loopstat-all", "aiodebug", "loopmon")
PEERS = ("aiodebug", "loopmon", "aiohttp", "uvloop")

pytestmark = [
    pytest.mark.e2e,  # whole programs: run once, in the e2e env
    pytest.mark.skipif(
        any(importlib.util.find_spec(p) is None for p in PEERS),
        reason="the bench extra is not installed (pip install -e '.[bench]')",
    ),
]


def rows(table: str) -> List[str]:
    """First cells of a markdown table's body."""
    return [line.split("|")[1].strip() for line in table.splitlines()[2:] if line.startswith("|")]


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m bench ARGS --quick`` on both loops, finished and without a traceback."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    done = subprocess.run(
        [sys.executable, "-m", "bench", *args, "--quick", "--loop", "asyncio,uvloop"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    return done


def sections(out: str) -> dict[str, str]:
    """Markdown tables by the ``####`` title above them."""
    return dict(re.findall(r"^#### (.+?)\n\n((?:\|.*\n?)+)", out, flags=re.MULTILINE))


def test_quick_run_prints_every_variant() -> None:
    done = bench("all")
    out = done.stdout
    sections_ = sections(out)
    overhead = [t for title, t in sections_.items() if title.startswith(("100 tasks", "one task", "HTTP"))]
    assert len(overhead) == 3, list(sections_)
    for table in overhead:
        assert rows(table) == list(VARIANTS)
    (idle,) = (t for title, t in sections_.items() if title.startswith("Idle"))
    assert [line.split("|")[2].strip() for line in idle.splitlines()[2:]] == list(VARIANTS)
    (fidelity,) = (t for title, t in sections_.items() if title.startswith("Fidelity on"))
    assert rows(fidelity) == [v for v in VARIANTS if v != "none"]
    # Every kind of block was injected; loopstat-all counts time.sleep calls (its blocking-call probe is on).
    assert "(spin / sleep / C call)" in fidelity.splitlines()[0]
    (every_probe,) = (line for line in fidelity.splitlines() if line.startswith("| loopstat-all |"))
    assert re.search(r"\| \d+ of \d+ \(", every_probe), every_probe
    targets = sections_["Targets"]
    assert "PASS" in targets or "MISS" in targets
    # One round has no interval: no wall-clock target is decided on it.
    assert "undecided" in targets
    # Both loops ran the in-process workloads.
    assert "uvloop ratio" in out
    assert "asyncio ratio" in out


def test_quick_instruction_counts_print_a_cost_per_operation_on_both_loops() -> None:
    command("valgrind")  # from the provisioning step; if it is missing, this fails saying how to get it
    out = bench("instructions").stdout
    assert re.search(r"Python 3\.\d+\.\d+", out)
    table = next(body for title, body in sections(out).items() if title.startswith("one task"))
    assert "asyncio instr/op" in table
    assert "uvloop instr/op" in table
    assert rows(table) == ["none", "loopstat"]
    loopstat = [cell.strip() for cell in table.splitlines()[3].split("|")]
    # A positive count per operation on both loops; --quick runs the baseline on the first loop only.
    assert int(loopstat[2].replace(",", "")) > 0
    assert int(loopstat[6].replace(",", "")) > 0
    assert loopstat[5].endswith("%**")
    assert "asyncio: `none` runs" in out
    assert "operations per native CPU second" in out


def test_quick_idle_run_prints_cpu_and_wakeups_for_both_loops() -> None:
    found = sections(bench("idle").stdout)
    (table,) = (body for title, body in found.items() if title.startswith("Idle process"))
    assert "wake-ups/s" in table
    cells = [line.split("|")[1:3] for line in table.splitlines()[2:]]
    assert [[c.strip() for c in pair] for pair in cells] == [
        ["asyncio", "none"],
        ["asyncio", "loopstat"],
        ["uvloop", "none"],
        ["uvloop", "loopstat"],
    ]
    assert found["Targets"].count("idle wake-ups") == 2


def test_quick_causes_run_scores_every_injected_cause_on_both_loops() -> None:
    found = sections(bench("causes").stdout)
    (table,) = (body for title, body in found.items() if title.startswith("Stall causes"))
    assert rows(table) == [f"`{cause}`" for cause in INJECTED]
    for line in table.splitlines()[2:]:
        cells = [cell.strip() for cell in line.split("|")[2:4]]
        assert all(re.fullmatch(r"\d+/2|not here", cell) for cell in cells), line
    (short,) = (body for title, body in found.items() if title.startswith("Short blocks"))
    assert rows(short) == ["10 ms", "20 ms", "50 ms", "80 ms"]
    assert all(re.fullmatch(r"(\| \d+/4 ){3}\|", line.split("ms ", 1)[1]) for line in short.splitlines()[2:]), short
