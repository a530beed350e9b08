"""The benchmark runner still runs: ``python -m bench all --quick`` ends well and prints every row."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("none", "naive", "loopstat", "loopstat-all", "aiodebug", "loopmon")
PEERS = ("aiodebug", "loopmon", "aiohttp", "uvloop")

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(p) is None for p in PEERS),
    reason="the bench extra is not installed (pip install -e '.[bench]')",
)


def rows(table: str) -> List[str]:
    """First cells of a markdown table's body."""
    return [line.split("|")[1].strip() for line in table.splitlines()[2:] if line.startswith("|")]


def test_quick_run_prints_every_variant() -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    done = subprocess.run(
        [sys.executable, "-m", "bench", "all", "--quick", "--loop", "asyncio,uvloop"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    sections = dict(re.findall(r"^#### (.+?)\n\n((?:\|.*\n?)+)", out, flags=re.MULTILINE))
    overhead = [t for title, t in sections.items() if title.startswith(("100 tasks", "one task", "HTTP"))]
    assert len(overhead) == 3, list(sections)
    for table in overhead:
        assert rows(table) == list(VARIANTS)
    (idle,) = (t for title, t in sections.items() if title.startswith("Idle"))
    assert [line.split("|")[2].strip() for line in idle.splitlines()[2:]] == list(VARIANTS)
    (fidelity,) = (t for title, t in sections.items() if title.startswith("Fidelity on"))
    assert rows(fidelity) == [v for v in VARIANTS if v != "none"]
    targets = sections["Targets"]
    assert "PASS" in targets or "MISS" in targets
    # Both loops ran the in-process workloads.
    assert "uvloop ratio" in out
    assert "asyncio ratio" in out
    assert "Traceback" not in done.stderr
