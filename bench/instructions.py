"""Instruction counts: what each monitor costs per operation and per second, exact on a noisy machine.

Every (workload, loop, variant) runs in a child process under
``valgrind --tool=cachegrind --cache-sim=no``, with this interpreter and
PYTHONHASHSEED=0; the figure read is the child's total instructions.

- Per operation: the variant *parked* (every interval and threshold an hour, so
  nothing time-driven fires while its timers still sit in the heap), at two run
  sizes; the slope between them is the cost per operation, start-up cancels out.
- Per second while busy: the bigger run again with the variant's real settings;
  the extra instructions over the parked run, divided by that run's wall seconds.
  Timers fire by the wall clock, so this is the native rate even though valgrind
  runs the workload many times slower.
- Per second while idle: an idle loop, the slope between two window lengths.
- At native speed: the per-operation share, plus the busy per-second instructions
  over the instructions the unmonitored workload executes per native CPU second
  (its per-operation count times its native rate, the best of a few short runs).

Memory layout: the same code gives per-operation counts a few hundred
instructions apart from one start-up to the next, as CPython's allocator does or
does not need a fresh pool within an operation. So every child runs in several
*layouts*: ``bench.counted`` keeps a different number of objects of every size
class before the run, and the environment differs in size. Each figure is the median over the layouts with the lowest
and highest beside it, and a target whose limit lies within that range is
"within the noise" rather than met or missed.

Each child is ``python -m bench.counted`` (see there).
"""

from __future__ import annotations

import compileall
import dataclasses
import json
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from bench import loops, stats, workloads
from bench.web import ROOT, child_env

VALGRIND = ("--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null")
# Bytes of environment each layout adds (odd, so that successive layouts differ in alignment too).
LAYOUT_ENV_BYTES = 1531
# Without time-driven work: their busy runs would only repeat the parked one.
TIMERLESS = ("none", "threaded", "monitored-ioloop")
COUNTED = (
    "none",
    "threaded",
    "naive",
    "loopstat",
    "loopstat-lag",
    "loopstat-utilization",
    "loopstat-stalls",
    "loopstat-gc",
    "loopstat-blocking",
    "aiodebug",
    "loopmon",
    "monitored-ioloop",
)
IDLE = ("none", "naive", "loopstat", "loopstat-lag", "loopstat-utilization", "loopstat-stalls", "aiodebug", "loopmon")


@dataclass(frozen=True)
class Plan:
    """Run sizes (operations, small and big, per workload), variants, idle windows (ms), parallel children.

    ``busy``: also run the big size with real settings, for the time-driven cost.
    ``baselines``: run ``none`` on every loop (else on the first only, to keep a smoke run short).
    ``layouts``: how many memory layouts each child runs in (see the module's docstring).
    """

    sizes: Dict[str, Tuple[int, int]]
    counted: Tuple[str, ...]
    idle: Tuple[str, ...]
    idle_ms: Tuple[int, int]
    jobs: int
    busy: bool = True
    baselines: bool = True
    layouts: int = 1


FULL = Plan(
    {"yielding": (3000, 12000), "ping-pong": (1500, 7500), "http": (50, 300)}, COUNTED, IDLE, (1000, 5000), 2, layouts=3
)
# A smoke run: loopstat on ping-pong on each loop, the baseline on the first; no busy runs, no idle.
# Three at a time: on a loaded machine the children get a bigger share; on an idle one it costs nothing.
QUICK = Plan({"ping-pong": (50, 200)}, ("none", "loopstat"), (), (0, 0), 3, busy=False, baselines=False)


def subset(plan: Plan, workload_names: Sequence[str] = (), variant_names: Sequence[str] = ()) -> Plan:
    """``plan`` cut down to the workloads and variants named (all of a kind when none is named).

    ``none`` always stays: every share is over it.
    """
    for name in workload_names:
        if name not in plan.sizes:
            raise ValueError(f"workload: {name!r} is not one of {', '.join(plan.sizes)}")
    for name in variant_names:
        if name not in COUNTED:
            raise ValueError(f"variant: {name!r} is not one of {', '.join(COUNTED)}")
    sizes = {w: s for w, s in plan.sizes.items() if not workload_names or w in workload_names}
    counted = plan.counted if not variant_names else tuple(v for v in COUNTED if v == "none" or v in variant_names)
    idle = plan.idle if not variant_names else tuple(v for v in plan.idle if v in counted)
    return dataclasses.replace(plan, sizes=sizes, counted=counted, idle=idle)


@dataclass(frozen=True)
class Job:
    """One child: ``size`` operations of ``workload`` (``size`` ms idle) on ``loop`` with ``variant`` in ``layout``."""

    mode: str
    workload: str
    loop: str
    variant: str
    size: int
    layout: int = 0


@dataclass(frozen=True)
class Count:
    """A child's total instructions, and the wall seconds of its measured part."""

    instructions: int
    seconds: float


def valgrind() -> Optional[str]:
    """The path of valgrind, or None."""
    return shutil.which("valgrind")


def jobs_of(plan: Plan, loop_names: Sequence[str], names: Sequence[str], idle_names: Sequence[str]) -> List[Job]:
    """Every child the plan needs, in every layout, biggest first (so the last to start are short).

    Idle windows run in the first layout only: their slope is per second of idling, which allocates little.
    """
    jobs = []
    for loop in loop_names:
        runs = [v for v in names if plan.baselines or loop == loop_names[0] or v != "none"]
        for layout in range(plan.layouts):
            for workload, (small, big) in plan.sizes.items():
                for variant in runs:
                    jobs += [Job("parked", workload, loop, variant, n, layout) for n in (small, big)]
                    if plan.busy and variant not in TIMERLESS:
                        jobs.append(Job("busy", workload, loop, variant, big, layout))
        for variant in idle_names:
            jobs += [Job("idle", "-", loop, variant, ms) for ms in plan.idle_ms]
    return sorted(jobs, key=lambda j: -j.size * (1000 if j.mode != "idle" else 1))


def count(job: Job, port: int) -> Count:
    """Run ``job`` under valgrind and read its instruction total."""
    env = child_env()
    env["PYTHONHASHSEED"] = "0"
    # A layout also changes the environment's size: where the stack starts, and what start-up allocates.
    env["BENCH_LAYOUT"] = "x" * (LAYOUT_ENV_BYTES * job.layout)
    args = [job.mode, job.workload, job.loop, job.variant, str(job.size), str(port), str(job.layout)]
    command = [valgrind() or "valgrind", *VALGRIND, sys.executable, "-m", "bench.counted", *args]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    found = re.search(r"I\s+refs:\s+([\d,]+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"{' '.join(args)}: exit {done.returncode}\n{done.stderr[-2000:]}")
    return Count(int(found.group(1).replace(",", "")), json.loads(done.stdout)["seconds"])


def run_jobs(jobs: Sequence[Job], port: int, parallel: int) -> Dict[Job, Count]:
    """Every job, ``parallel`` at a time (instruction counts do not mind a busy machine)."""
    with ThreadPoolExecutor(parallel) as pool:
        return dict(zip(jobs, pool.map(lambda job: count(job, port), jobs)))


def prepare() -> None:
    """Write every bytecode file first, so that no child pays for compiling one."""
    for folder in ("bench", "loopstat"):
        compileall.compile_dir(str(ROOT / folder), quiet=1)


def native_rate(workload: str, loop: str, rounds: int = 3, seconds: float = 0.3) -> float:
    """Operations per CPU second of ``workload`` unmonitored, the best of ``rounds`` (the least disturbed)."""
    body = workloads.BODIES[workload]
    return max(loops.run(lambda: workloads.timed(body, seconds, 0.05), loop).cpu for _ in range(rounds))


@dataclass(frozen=True)
class Cost:
    """What a variant costs on one workload and loop, in instructions."""

    #: Per operation, parked (slope between the two run sizes).
    per_op: float
    #: Time-driven work per wall second while the workload runs (0 for variants without timers).
    busy_per_second: float


#: (workload, loop, variant) -> its cost in each layout.
Costs = Mapping[Tuple[str, str, str], Sequence[Cost]]


def costs(counts: Dict[Job, Count], plan: Plan) -> Dict[Tuple[str, str, str], Tuple[Cost, ...]]:
    """(workload, loop, variant) -> its cost in each layout (in layout order), from the parked and busy children.

    Each layout is a whole measurement of its own: its slope between its two sizes, its busy run over its big one.
    """
    parked = {(j.workload, j.loop, j.variant, j.size, j.layout): c for j, c in counts.items() if j.mode == "parked"}
    busy = {(j.workload, j.loop, j.variant, j.layout): c for j, c in counts.items() if j.mode == "busy"}
    found: Dict[Tuple[str, str, str], Dict[int, Cost]] = {}
    for (workload, loop, variant, size, layout), big in parked.items():
        small_size, big_size = plan.sizes[workload]
        if size != big_size:
            continue
        small = parked[(workload, loop, variant, small_size, layout)]
        per_op = (big.instructions - small.instructions) / (big_size - small_size)
        timed = busy.get((workload, loop, variant, layout))
        rate = 0.0 if timed is None else (timed.instructions - big.instructions) / timed.seconds
        found.setdefault((workload, loop, variant), {})[layout] = Cost(per_op, rate)
    return {key: tuple(by_layout[n] for n in sorted(by_layout)) for key, by_layout in found.items()}


def middle(each: Sequence[Cost]) -> Cost:
    """The median cost over layouts: median per operation, median per second."""
    return Cost(stats.median([c.per_op for c in each]), stats.median([c.busy_per_second for c in each]))


def idle_rates(counts: Dict[Job, Count]) -> Dict[Tuple[str, str], float]:
    """(loop, variant) -> instructions per second of an idle loop (slope between the two windows)."""
    windows: Dict[Tuple[str, str], List[Count]] = {}
    for job, c in counts.items():
        if job.mode == "idle":
            windows.setdefault((job.loop, job.variant), []).append(c)
    out = {}
    for key, pair in windows.items():
        short, long = sorted(pair, key=lambda c: c.seconds)
        out[key] = (long.instructions - short.instructions) / (long.seconds - short.seconds)
    return out


def across(found: Costs, keys: Sequence[Tuple[str, str, str]], figure: Callable[..., float]) -> stats.Spread:
    """``figure`` of the costs of ``keys`` in each layout: its median, lowest and highest.

    ``figure`` takes layout 0 of every key, then layout 1, and so on: each layout is a
    run of its own, so the range is how far one run's figure may fall.
    """
    return stats.spread([figure(*same) for same in zip(*(found[key] for key in keys))])


def share(cost: Cost, base: Cost, native_per_second: float) -> Tuple[float, float]:
    """The variant's extra over ``base`` as shares of the workload at native speed: per operation, per second."""
    return (cost.per_op - base.per_op) / base.per_op, cost.busy_per_second / native_per_second
