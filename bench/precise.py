"""The measurements that hold on a noisy machine: instruction counts, and idle loops over a long window."""

from __future__ import annotations

import dataclasses
import os
import platform
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

from bench import idle, instructions, report, variants
from bench.udp import Receiver

# Idle: warm-up and window in seconds, full and --quick.
IDLE_WINDOWS = {False: (2.0, 30.0), True: (0.3, 1.0)}
IDLE_VARIANTS = ["none", "loopstat"]


def progress(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def emit(text: str) -> None:
    print(text + "\n", flush=True)


def header(title: str, quick: bool, loop_names: List[str]) -> None:
    """What ran where: the command, the interpreter, the machine, the date."""
    import loopstat

    command = " ".join(["python -m bench", *sys.argv[1:]])
    emit(
        f"### {title}{' (--quick: smoke sizes, not a measurement)' if quick else ''}\n\n"
        f"`{command}` on {report.provenance()}, {platform.system()} {platform.machine()}, "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; loopstat {loopstat.__version__}; "
        f"loops: {', '.join(loop_names)}."
    )


def main(
    quick: bool,
    loop_names: List[str],
    workload_names: Sequence[str] = (),
    variant_names: Sequence[str] = (),
    layouts: Optional[int] = None,
    parallel: Optional[int] = None,
) -> int:
    """``python -m bench instructions``, on every workload and variant of the plan or the ones named."""
    plan = instructions.subset(instructions.QUICK if quick else instructions.FULL, workload_names, variant_names)
    plan = dataclasses.replace(plan, layouts=layouts or plan.layouts, jobs=parallel or plan.jobs)
    header("loopstat instruction counts", quick, loop_names)
    tool = instructions.valgrind() or "valgrind"
    version = subprocess.run([tool, "--version"], capture_output=True, text=True, check=False).stdout.strip()
    names = list(plan.counted)
    skipped = {n: reason for n in names if (reason := variants.missing(n)) is not None}
    for name, reason in skipped.items():
        progress(f"skipping {name}: {reason}")
    runnable = [n for n in names if n not in skipped]
    emit(
        f"Counted by `{tool} {' '.join(instructions.VALGRIND)}` ({version}), PYTHONHASHSEED=0. "
        f"Sizes (operations, small and big): {plan.sizes}; idle windows {plan.idle_ms} ms; "
        f"{plan.layouts} memory layout{'s' if plan.layouts > 1 else ''} per child (the same code starts with "
        "its objects at different places, which moves its count by tens to hundreds of instructions per operation: "
        "each figure is the median over the layouts, the lowest and highest in brackets, and a target whose "
        "limit lies within them is *within the noise*).\n\n"
        + report.variants_legend(names, skipped)
        + "\n\nA variant is *parked* for the per-operation counts: every interval and threshold is an hour, "
        "so nothing time-driven fires while its timers still sit in the loop's heap. *timers, instr/s busy* is "
        "the extra of the same big run with the real settings, over that run's wall seconds (timers fire by "
        "the wall clock, so this is their native rate). *At native speed* adds both as shares of the "
        "unmonitored workload: derivation below each table."
    )
    progress("native rates of the unmonitored workloads (the best of a few short runs each)")
    rounds, seconds = (1, 0.1) if quick else (3, 0.3)
    native = {(w, lp): instructions.native_rate(w, lp, rounds, seconds) for w in plan.sizes for lp in loop_names}
    instructions.prepare()
    jobs = instructions.jobs_of(plan, loop_names, runnable, [n for n in plan.idle if n in runnable])
    progress(f"instructions: {len(jobs)} children under valgrind, {plan.jobs} at a time")
    receiver = Receiver()
    try:
        counts = instructions.run_jobs(jobs, receiver.port, plan.jobs)
    finally:
        receiver.close()
    found = instructions.costs(counts, plan)
    emit(report.instruction_tables(found, native, names, skipped))
    rates = instructions.idle_rates(counts)
    if rates:
        emit(
            "#### Idle loop: instructions per second over `none` (slope between the two windows)\n\n"
            + report.idle_instructions_table(rates, names)
        )
    targets = report.instruction_targets(found, native)
    emit("#### Targets (at native speed)\n\n" + (report.targets_table(targets) if targets else "None apply."))
    return 0


def idle_main(quick: bool, loop_names: List[str], repeats: int) -> int:
    """``python -m bench idle``: CPU and wake-ups of idle loops, an agent listening."""
    warmup, window = IDLE_WINDOWS[quick]
    header("loopstat on an idle loop", quick, loop_names)
    progress(f"idle: {repeats} round(s) of a {window:g} s window after {warmup:g} s")
    receiver = Receiver()
    try:
        results = idle.run_all(IDLE_VARIANTS, loop_names, receiver.port, repeats, warmup, window)
    finally:
        receiver.close()
    targets: List[report.Target] = []
    skipped: Dict[str, str] = {}
    emit(
        f"#### Idle process: a {window:g} s window after {warmup:g} s, both variants and loops idling at once, "
        "the agent (a UDP receiver) listening\n\n" + report.idle_table(results, IDLE_VARIANTS, skipped, targets)
    )
    emit("#### Targets\n\n" + report.targets_table(targets))
    return 0
