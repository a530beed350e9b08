"""Run every stage of the test suite, whatever fails, and sum up: ``python3 -m tests.stages [--under-load]``.

``scripts/test`` calls this once the interpreters are on ``PATH``, tox is in
``.venv-tox/`` and the servers are provisioned. The stages run two at a time
(they mostly wait on real clocks and sockets), each one's output printed whole
when it ends: ``e2e`` first, the longest, beside the library environments one
after the other, then ``lint`` and ``type``; each stage starts as soon as a
runner is free. A stage that fails does not stop the others: the summary
lists every stage with its result and time, and the exit status is 1 if any failed.

``--under-load`` runs one CPU-spinning process per core beside the stages, as a
busy developer machine or CI runner has: every real-clock test must pass so.
The spinners end with this process, however it ends. Arguments after ``--``
replace the stages with one: ``tox ARGUMENTS``.

Standard library only: it runs before any test dependency is installed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import List, Optional

TOX = os.path.join(".venv-tox", "bin", "tox")

#: First: the longest stage (whole programs, mostly real-clock waits), beside the library's environments.
FIRST = ("e2e",)
#: The library's environments.
LIBRARY = ("py39", "py310", "py311", "py312", "py313")
#: Later Pythons: run only where their interpreter is on PATH.
LATER = ("py314", "py315")
#: Last: the short checks, as soon as a runner is free.
AFTER = ("lint", "type")

# Each spinner stops as soon as the run (its argument) is no longer its parent, so
# that none outlives a killed run, even one killed while the spinner was starting.
SPIN = "import os, sys\nwhile os.getppid() == int(sys.argv[1]):\n    pass\n"


@dataclass
class Stage:
    """One command of the suite, and how it went."""

    name: str
    command: Sequence[str]
    #: An executable that must be on PATH, or the stage is skipped.
    needs: Optional[str] = None
    result: str = "not run"
    seconds: Optional[float] = None

    @property
    def failed(self) -> bool:
        return self.result.startswith("FAIL")


def tox_stage(env: str) -> Stage:
    needs = f"python3.{env[3:]}" if env in LATER else None
    return Stage(env, [TOX, "run", "-e", env], needs=needs)


def default_stages() -> tuple[list[Stage], list[Stage]]:
    """``e2e`` and the library environments, then the stages after them (the queue's order)."""
    return [tox_stage(env) for env in FIRST + LIBRARY + LATER], [tox_stage(env) for env in AFTER]


def run_stage(stage: Stage, lock: threading.Lock, capture: bool) -> None:
    """Run one stage; with ``capture``, print its output whole when it ends (under ``lock``)."""
    if stage.needs is not None and shutil.which(stage.needs) is None:
        stage.result = f"skipped: no {stage.needs} on PATH"
        with lock:
            print(f"=== {stage.name}: {stage.result}", flush=True)
        return
    with lock:
        print(f"=== {stage.name}: {' '.join(stage.command)}", flush=True)
    started = time.monotonic()
    with tempfile.TemporaryFile("w+") as log:
        try:
            code = subprocess.call(stage.command, stdout=log if capture else None, stderr=subprocess.STDOUT)
        except OSError as error:
            print(f"{stage.name}: {error}", file=log if capture else sys.stdout)
            code = 127
        stage.seconds = time.monotonic() - started
        # Any non-zero exit is a failure, pytest's 5 ("no tests collected") included.
        stage.result = "ok" if code == 0 else f"FAIL (exit {code})"
        with lock:
            if capture:
                log.seek(0)
                print(f"=== {stage.name} output:", flush=True)
                shutil.copyfileobj(log, sys.stdout)
            print(f"=== {stage.name}: {stage.result} in {stage.seconds:.0f} s", flush=True)


def run_in_pairs(stages: Sequence[Stage], width: int, lock: threading.Lock) -> None:
    """Run ``stages`` ``width`` at a time, in order."""
    pending = list(stages)
    workers: List[threading.Thread] = []

    def worker() -> None:
        while True:
            with lock:
                if not pending:
                    return
                stage = pending.pop(0)
            run_stage(stage, lock, capture=width > 1)

    for _ in range(width):
        thread = threading.Thread(target=worker, daemon=True)
        thread.start()
        workers.append(thread)
    for thread in workers:
        thread.join()


@contextlib.contextmanager
def spinning(count: int) -> Iterator[list[subprocess.Popen[bytes]]]:
    """``count`` processes that each keep a core busy, all ended on the way out."""
    spinners = [subprocess.Popen([sys.executable, "-c", SPIN, str(os.getpid())]) for _ in range(count)]
    try:
        yield spinners
    finally:
        for proc in spinners:
            proc.kill()
        for proc in spinners:
            proc.wait()


def duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"


def summary(stages: Sequence[Stage], total: float, load: int) -> str:
    failed = [stage.name for stage in stages if stage.failed]
    verdict = f"FAILED: {', '.join(failed)}" if failed else "all passed"
    width = max(len(stage.name) for stage in [*stages, Stage("total", [])])
    # Times line up after the longest result that has one.
    column = max([len("all passed")] + [len(stage.result) for stage in stages if stage.seconds is not None])
    lines = ["", f"Summary{f' (beside {load} CPU-spinning processes)' if load else ''}:"]
    for stage in stages:
        took = "" if stage.seconds is None else f"  {duration(stage.seconds)}"
        lines.append(f"  {stage.name:<{width}}  {stage.result:<{column if took else 0}}{took}")
    lines.append(f"  {'total':<{width}}  {verdict:<{column}}  {duration(total)}")
    return "\n".join(lines)


def run(paired: Sequence[Stage], after: Sequence[Stage], *, width: int = 2, load: int = 0) -> int:
    """Run every stage, print the summary, and return 1 if any failed (0 otherwise).

    One queue, ``width`` at a time, each stage started as soon as a runner is
    free: with the default stages, e2e (the longest) runs beside the library
    environments from the start, and lint and type beside whatever is left.
    """
    lock = threading.Lock()
    started = time.monotonic()
    stages = [*paired, *after]
    try:
        with spinning(load):
            # A single stage (``-- ARGUMENTS``) prints as it goes.
            run_in_pairs(stages, width if len(stages) > 1 else 1, lock)
    finally:
        print(summary([*paired, *after], time.monotonic() - started, load), flush=True)
    return 1 if any(stage.failed for stage in [*paired, *after]) else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m tests.stages", description="Run every stage of the test suite.")
    parser.add_argument("--under-load", action="store_true", help="with one CPU-spinning process per core beside")
    parser.add_argument("tox", nargs="*", help="after --: run `tox ARGUMENTS` as the only stage")
    options = parser.parse_args(argv)
    # A TERM (from CI, or `timeout`) ends the run as Ctrl-C does: through the finally clauses.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    load = (os.cpu_count() or 1) if options.under_load else 0
    paired: List[Stage]
    after: List[Stage]
    if options.tox:
        paired, after = [], [Stage("tox", [TOX, *options.tox])]
    else:
        paired, after = default_stages()
    try:
        return run(paired, after, load=load)
    except KeyboardInterrupt:
        return 130  # the summary, up to the interruption, is out already


if __name__ == "__main__":
    sys.exit(main())
