"""``python -m bench [overhead|fidelity|all|instructions|idle|launcher|causes] [--quick] [--loop …] [--repeats N]``
(``instructions`` also takes ``--workload W,…``, ``--variant V,…``, ``--layouts N`` and ``--jobs N``).

Runs the variants side by side and prints markdown tables on stdout; progress
goes to stderr. Installs nothing: the peers come from the ``bench`` extra
(monitored-ioloop, for ``instructions`` only, from ``pip install monitored-ioloop``).
``instructions`` counts instructions under valgrind (deterministic), and so does
``launcher`` (what ``loopstat-run`` adds to start-up and to ``asyncio.run()``); ``causes``
scores the cause loopstat names for stalls of each known cause; ``idle``
measures CPU and wake-ups of idle loops over a long window; the others time
wall-clock runs, whose ratios come with 95 % confidence intervals.

``python -m bench peers [--project anyio,uvicorn]`` is apart: it downloads other
projects' sdists and runs their test suites plain and under ``loopstat-run``
(``bench/peers.py``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from bench import (
    blocks,
    causes,
    fidelity,
    idle,
    instructions,
    launcher,
    loops,
    peers,
    precise,
    report,
    variants,
    web,
    workloads,
)
from bench.precise import emit, progress
from bench.udp import Receiver


@dataclass(frozen=True)
class Plan:
    """How long and how often each part runs."""

    repeats: int
    run_seconds: float
    warmup_seconds: float
    http_repeats: int
    http_seconds: float
    http_warmup: float
    idle_repeats: int
    idle_warmup: float
    idle_window: float
    fidelity_rounds: int
    fidelity_per_size: int
    fidelity_settle: float
    fidelity_gaps: Tuple[float, float]
    # --quick runs the process-based parts and fidelity on the first loop only.
    all_loops_everywhere: bool


FULL = Plan(15, 0.2, 0.05, 5, 1.0, 0.3, 3, 1.0, 10.0, 10, 4, 0.6, fidelity.GAP_SECONDS, True)
QUICK = Plan(1, 0.1, 0.02, 1, 0.2, 0.05, 1, 0.2, 0.3, 2, 1, 0.3, (0.08, 0.12), False)


def parse(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[1])
    parser.add_argument(
        "what",
        nargs="?",
        default="all",
        choices=("overhead", "fidelity", "all", "instructions", "idle", "launcher", "causes"),
    )
    parser.add_argument("--quick", action="store_true", help="tiny counts: a smoke run, not a measurement")
    parser.add_argument("--loop", default="asyncio,uvloop", help="comma-separated loops (asyncio, uvloop)")
    parser.add_argument(
        "--repeats",
        type=int,
        help="interleaved rounds of every overhead comparison (default 15 in-process, 5 HTTP, 3 idle)",
    )
    parser.add_argument(
        "--workload", default="", help="instructions: comma-separated workloads only (yielding, ping-pong, http)"
    )
    parser.add_argument(
        "--variant", default="", help="instructions: comma-separated variants only (none is always counted)"
    )
    parser.add_argument(
        "--layouts", type=int, help="instructions: memory layouts each child runs in (default 3, --quick 1)"
    )
    parser.add_argument(
        "--jobs", type=int, help="instructions: children under valgrind at a time (default 2, --quick 3)"
    )
    args = parser.parse_args(argv)
    for option in ("layouts", "jobs"):
        if getattr(args, option) is not None and getattr(args, option) < 1:
            parser.error(f"--{option}: at least 1")
    args.workloads = [name.strip() for name in args.workload.split(",") if name.strip()]
    args.variants = [name.strip() for name in args.variant.split(",") if name.strip()]
    try:
        instructions.subset(instructions.FULL, args.workloads, args.variants)
    except ValueError as error:
        parser.error(f"--{error}")
    args.loops = [name.strip() for name in args.loop.split(",") if name.strip()]
    for name in args.loops:
        reason = loops.missing(name)
        if reason:
            parser.error(f"--loop: {reason}")
    if not args.loops:
        parser.error("--loop: name at least one loop")
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats: at least 1")
    if args.what in ("instructions", "launcher") and instructions.valgrind() is None:
        parser.error(f"{args.what}: valgrind is not installed (apt-get install valgrind)")
    return args


def main(argv: Optional[List[str]] = None) -> int:
    given = sys.argv[1:] if argv is None else argv
    if given[:1] == ["peers"]:
        return peers.main(given[1:])  # its own options: it runs other projects' test suites
    args = parse(argv)
    plan = QUICK if args.quick else FULL
    if args.repeats is not None:
        plan = dataclasses.replace(plan, repeats=args.repeats, http_repeats=args.repeats, idle_repeats=args.repeats)
    variants.quiet_loopstat()
    if args.what == "instructions":
        return precise.main(args.quick, args.loops, args.workloads, args.variants, args.layouts, args.jobs)
    if args.what == "launcher":
        receiver = Receiver()
        try:
            emit(launcher.main(receiver.port))
        finally:
            receiver.close()
        return 0
    if args.what == "idle":
        return precise.idle_main(args.quick, args.loops, args.repeats or 1)
    if args.what == "causes":
        count = args.repeats or (2 if args.quick else 10)
        precise.header("loopstat stall causes", args.quick, args.loops)
        precise.emit(
            f"#### Stall causes: {count} stalls of each cause per loop, classified right\n\n"
            + causes.table(args.loops, count)
        )
        if "asyncio" in args.loops:
            size = args.repeats or (4 if args.quick else 40)
            precise.emit(
                f"#### Short blocks at random moments: {size} of each size on asyncio, seen by each\n\n"
                + blocks.table(size)
            )
        return 0
    started = time.perf_counter()
    names = list(variants.VARIANTS)
    skipped: Dict[str, str] = {}
    for name in names:
        reason = variants.missing(name)
        if reason:
            skipped[name] = reason
            progress(f"skipping {name}: {reason}")
    runnable = [n for n in names if n not in skipped]
    other_loops = args.loops if plan.all_loops_everywhere else args.loops[:1]
    import loopstat

    emit(
        f"### loopstat benchmarks{' (--quick: smoke counts, not a measurement)' if args.quick else ''}\n\n"
        f"`python -m bench {' '.join(sys.argv[1:])}` on {report.provenance()}, "
        f"{platform.system()} {platform.machine()}, "
        f"{os.cpu_count()} cores; loopstat {loopstat.__version__}; loops: {', '.join(args.loops)}. "
        "Ratios are to `none` in the same round: the geometric mean of the per-round ratios, its 95 % "
        "confidence interval in brackets (a t-interval on their logarithms), and *within noise* when that "
        "interval includes 1.0.\n\n" + report.variants_legend(names, skipped)
    )
    targets: List[report.Target] = []
    receiver = Receiver()
    try:
        if args.what in ("overhead", "all"):
            progress(f"overhead: in-process workloads, {plan.repeats} rounds of {plan.run_seconds} s runs")
            results = workloads.run_all(
                runnable, args.loops, receiver.port, plan.repeats, plan.run_seconds, plan.warmup_seconds
            )
            emit(report.overhead_tables(results, names, skipped, targets))
            progress(f"overhead: HTTP, {plan.http_repeats} rounds of {plan.http_seconds} s loads")
            http = web.run_all(
                runnable,
                other_loops,
                receiver.port,
                plan.http_repeats,
                plan.http_seconds,
                plan.http_warmup,
            )
            emit(
                f"#### HTTP: aiohttp server (variant inside) and aiohttp client ({web.CONCURRENCY} concurrent "
                "requests, keep-alive) in separate processes on loopback\n\n"
                + report.http_table(http, names, skipped, targets)
            )
            progress(f"overhead: idle processes, {plan.idle_repeats} rounds of {plan.idle_window} s windows")
            quiet = idle.run_all(
                runnable, other_loops, receiver.port, plan.idle_repeats, plan.idle_warmup, plan.idle_window
            )
            emit(
                f"#### Idle process: CPU over a {plan.idle_window:g} s window scaled to a minute, and RSS "
                "(all variants idle at the same time, one process each)\n\n"
                + report.idle_table(quiet, names, skipped, targets)
            )
        if args.what in ("fidelity", "all"):
            progress(
                f"fidelity: {plan.fidelity_rounds} rounds of {plan.fidelity_per_size} blocks per size and kind "
                f"({', '.join(f'{s:g}' for s in fidelity.SIZES_MS)} ms)"
            )
            scores = fidelity.run_all(
                other_loops, plan.fidelity_rounds, plan.fidelity_per_size, plan.fidelity_settle, plan.fidelity_gaps
            )
            emit(
                "#### Fidelity: blocks injected by `blocking_work()` at random times, all tools watching; "
                f"three kinds ({', '.join(fidelity.KINDS)}: a Python spin, `time.sleep`, one `sum(range(n))` "
                "holding the GIL), each kind in turn within a round "
                f"(loopstat and loopstat-all take turns, so each sees half the blocks); a lag under "
                f"{fidelity.LAG_FLOOR_MS:g} ms is not a report\n\n"
                + report.fidelity_tables(scores, names, skipped, targets)
            )
    finally:
        receiver.close()
    emit("#### Targets\n\n" + report.targets_table(targets))
    elapsed = time.perf_counter() - started
    emit(f"Wall time: {elapsed:.0f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
