"""What ``loopstat-run`` costs a Python process, in instructions: start-up, and ``asyncio.run()`` per call.

- Start-up: ``python -c pass`` in the environment ``loopstat-run`` gives its
  command (the bootstrap folder first on ``PYTHONPATH``) against the same
  interpreter without it.
- Per ``asyncio.run()`` of an empty coroutine: the slope between a program
  making ``small`` and ``big`` calls (each the least of a few runs), so
  start-up and loopstat's one-time import cancel out; with and without the
  bootstrap, loopstat-run's defaults.

Each figure is one child under ``valgrind --tool=cachegrind --cache-sim=no``,
PYTHONHASHSEED=0; bytecode is written first, as an installed package has it.
"""

from __future__ import annotations

import compileall
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from typing import Dict, List, Sequence

from bench import instructions
from bench.web import child_env
from loopstat.bootstrap import PYTHONPATH_DIR
from loopstat.cli import run

RUNS = "import asyncio, sys\nasync def empty(): pass\nfor _ in range(int(sys.argv[1])): asyncio.run(empty())\n"


@dataclass(frozen=True)
class Figures:
    """Instruction counts: start-up plain and under loopstat-run; per asyncio.run() call plain and under it."""

    start_plain: int
    start_run: int
    call_plain: float
    call_run: float

    @property
    def start_ratio(self) -> float:
        """Start-up under loopstat-run over plain start-up."""
        return self.start_run / self.start_plain


def environment(launched: bool, port: int) -> Dict[str, str]:
    """A child's environment, as loopstat-run makes it or plain; metrics go to ``port`` on loopback."""
    env = child_env()
    env.update(PYTHONHASHSEED="0", STATSD_HOST="127.0.0.1", STATSD_PORT=str(port))
    return run.child_environment(env) if launched else env


def count(argv: Sequence[str], env: Dict[str, str]) -> int:
    """Instructions of ``python argv`` under valgrind."""
    command = [instructions.valgrind() or "valgrind", *instructions.VALGRIND, sys.executable, *argv]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    found = re.search(r"I\s+refs:\s+([\d,]+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"{' '.join(argv)}: exit {done.returncode}\n{done.stderr[-2000:]}")
    return int(found.group(1).replace(",", ""))


def least(argv: Sequence[str], env: Dict[str, str], runs: int) -> int:
    """The fewest instructions of ``runs`` runs: a run's count varies by a few million (the kernel's answers)."""
    return min(count(argv, env) for _ in range(runs))


def measure(port: int, small: int = 20, big: int = 220, runs: int = 3) -> Figures:
    """Every figure, the bytecode of the bootstrap and of loopstat written first."""
    for folder in (PYTHONPATH_DIR, os.path.dirname(os.path.dirname(PYTHONPATH_DIR))):
        compileall.compile_dir(folder, quiet=1)
    plain, launched = environment(False, port), environment(True, port)
    start = [count(["-c", "pass"], env) for env in (plain, launched)]
    calls: List[float] = []
    for env in (plain, launched):
        few, many = (least(["-c", RUNS, str(n)], env, runs) for n in (small, big))
        calls.append((many - few) / (big - small))
    return Figures(start[0], start[1], calls[0], calls[1])


def table(figures: Figures) -> str:
    """The figures as a markdown table."""
    return (
        "| | plain | under `loopstat-run` | ratio, times |\n|---|---|---|---|\n"
        f"| `python -c pass`, instructions | {figures.start_plain:,} | {figures.start_run:,} | "
        f"{figures.start_ratio:.3f} |\n"
        f"| `asyncio.run()` of an empty coroutine, instructions per call | {figures.call_plain:,.0f} | "
        f"{figures.call_run:,.0f} | {figures.call_run / figures.call_plain:.2f} |\n"
    )


def main(port: int) -> str:
    """``python -m bench launcher``: the section as markdown."""
    figures = measure(port)
    return (
        f"#### `loopstat-run`: start-up and `asyncio.run()` per call, in instructions (Python {sys.version.split()[0]})"
        "\n\n" + table(figures)
    )
