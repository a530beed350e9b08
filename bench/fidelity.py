"""Fidelity: inject blocks of known length into a loop and score what each monitor reported.

All monitoring variants watch the same loop at once, so they see the very same
blocks. loopstat's two variants cannot share a loop (one monitor per loop),
so rounds alternate between them; each round is a fresh loop. The ground truth
is the ``perf_counter()`` span of each call to ``blocking_work``, of three
kinds (``KINDS``): a pure-Python spin (on CPU), ``time.sleep`` (off CPU) and
one C call that holds the GIL throughout (``sum(range(n))``). Each round runs
the kinds one after another, so that a utilization window mostly holds one kind.

A report is matched to a block when their time spans overlap:

- a lag sample of L ms taken at t spans [t - L, t] (the part of the block
  after the sampler's deadline); samples under ``LAG_FLOOR_MS`` are not reports;
- loopstat's stall and aiodebug's slow callback span [end - duration, end];
- loopstat's utilization gauge covers the window since its previous sample:
  busy share x window, up to the injected time in that window, counts as seen
  (shared among the kinds in the window by their injected time);
- loopstat's ``blocking_calls`` counter tagged ``call:time.sleep`` is scored
  against the number of ``time.sleep`` blocks (most are under the stall threshold).
"""

from __future__ import annotations

import asyncio
import inspect
import math
import random
import time
from dataclasses import dataclass, field
from functools import cache, partial
from time import perf_counter
from typing import Dict, List, Optional, Sequence, Tuple

from bench import loops, stats, variants
from bench.udp import Datagram, Receiver

SIZES_MS = (5.0, 20.0, 50.0, 200.0)
KINDS = ("spin", "sleep", "C call")
# Tools watching every round; loopstat's two variants take turns.
SHARED = ("naive", "aiodebug", "loopmon")
TAKING_TURNS = ("loopstat", "loopstat-all")
TOOLS = ("naive", "loopstat", "loopstat-all", "aiodebug", "loopmon")
# Lag under this is the loop's ordinary jitter, not a report of a block.
LAG_FLOOR_MS = 1.0
# Wait between blocks (uniform): longer than loopstat's heartbeat (50 ms), so a
# stall is reported before the next block begins.
GAP_SECONDS = (0.1, 0.3)
SETTLE_SECONDS = 0.6
# Lag lines as each tool sends them over UDP.
LAG_METRICS = {
    "loopstat": "loopstat.lag",
    "loopstat-all": "loopstat.lag",
    "aiodebug": "aiodebug.monitor_loop_lag",
    "loopmon": "loopmon.lag",
}
UTILIZATION_METRIC = "loopstat.utilization"
BLOCKING_METRICS = ("loopstat.blocking_calls", "loopstat.blocking_time")
SLEEP_TAG = ("call", "time.sleep")


def blocking_work(ms: float, kind: str = "spin") -> None:
    """Hold the loop for ``ms`` milliseconds: a spin of pure Python, ``time.sleep``, or one C call holding the GIL."""
    if kind == "sleep":
        time.sleep(ms / 1000.0)
    elif kind == "C call":
        sum(range(int(ms * c_call_rate())))
    else:
        end = perf_counter() + ms / 1000.0
        while perf_counter() < end:
            pass


def _calling_lines() -> Dict[str, str]:
    """What a stall report must name for each kind of block: the line of ``blocking_work`` that made the call.

    A spin may be caught on any of its lines: for it, the function is enough.
    Read once at import, while the file on disk is the code that runs.
    """
    lines, first = inspect.getsourcelines(blocking_work)
    calls = {"sleep": "time.sleep(", "C call": "sum(range("}
    numbers = {kind: first + next(i for i, line in enumerate(lines) if call in line) for kind, call in calls.items()}
    return {
        kind: f"fidelity.py:{numbers[kind]} in blocking_work" if kind in numbers else " in blocking_work"
        for kind in KINDS
    }


CALLING_LINES = _calling_lines()


@cache
def c_call_rate() -> float:
    """How many numbers ``sum(range(n))`` adds in a millisecond here (best of three, measured once)."""
    n, best = 2_000_000, math.inf
    for _ in range(3):
        start = perf_counter()
        sum(range(n))
        best = min(best, perf_counter() - start)
    return n / (best * 1000.0)


@dataclass(frozen=True)
class Block:
    """One injected block: nominal size, and its real span in ``perf_counter()`` seconds."""

    size: float
    start: float
    end: float
    kind: str = "spin"
    # Thread CPU seconds during the block: what a CPU-time clock can see of it.
    cpu: float = 0.0

    @property
    def ms(self) -> float:
        return (self.end - self.start) * 1000.0


@dataclass(frozen=True)
class Report:
    """Something a tool said about a span of time: ``ms`` long, ending at ``end``."""

    start: float
    end: float
    ms: float
    kind: str
    where: Optional[str] = None


@dataclass
class Seen:
    """What one tool reported across its rounds."""

    blocks: List[Block] = field(default_factory=list)
    reports: List[Report] = field(default_factory=list)
    # (window start, window end, busy share)
    utilization: List[Tuple[float, float, float]] = field(default_factory=list)
    stall_threshold_ms: Optional[float] = None
    # time.sleep calls and ms that loopstat's blocking-call probe counted; None when it was off.
    sleeps_counted: Optional[float] = None
    sleep_ms_counted: Optional[float] = None


@dataclass(frozen=True)
class Score:
    """One tool's fidelity on one loop."""

    tool: str
    blocks: int
    seen_by_size: Dict[float, float]
    seen: float
    time_seen: float
    time_method: str
    error_median: float
    error_p99: float
    named: Optional[float]
    named_example: Optional[str]
    unnamed_example: Optional[str]
    busy_ratio: Optional[float]
    stall_threshold_ms: Optional[float]
    within_tolerance: Optional[float]
    # The same, by kind of block (``KINDS``).
    time_seen_by_kind: Dict[str, float]
    named_by_kind: Dict[str, Optional[float]]
    # Share of each kind's blocked time the loop's thread was on CPU.
    on_cpu_by_kind: Dict[str, float]
    # time.sleep blocks injected (all sizes), their ms, and what the blocking-call probe counted.
    sleeps: int
    sleep_ms: float
    sleeps_counted: Optional[float]
    sleep_ms_counted: Optional[float]


def _lag_reports(lines: Sequence[Datagram], metric: str) -> List[Report]:
    return [
        Report(line.at - line.value / 1000.0, line.at, line.value, "lag")
        for line in lines
        if line.name == metric and line.type == "ms" and line.value >= LAG_FLOOR_MS
    ]


def _utilization(lines: Sequence[Datagram]) -> List[Tuple[float, float, float]]:
    samples = [(line.at, line.value) for line in lines if line.name == UTILIZATION_METRIC and line.type == "g"]
    return [(a[0], b[0], b[1]) for a, b in zip(samples, samples[1:])]


def _sleeps(lines: Sequence[Datagram]) -> Tuple[float, float]:
    """time.sleep calls and ms counted by loopstat's blocking-call probe."""
    calls, ms = (
        sum(line.value for line in lines if line.name == name and SLEEP_TAG in line.tags) for name in BLOCKING_METRICS
    )
    return calls, ms


async def _round(
    sizes: List[Tuple[str, float]],
    tools: Sequence[str],
    port: int,
    rng: random.Random,
    settle: float,
    gaps: Tuple[float, float],
) -> Tuple[List[Block], Dict[str, variants.Attached]]:
    attached = {tool: variants.attach(tool, port) for tool in tools}
    blocks: List[Block] = []
    try:
        await asyncio.sleep(settle)
        for kind, size in sizes:
            await asyncio.sleep(rng.uniform(*gaps))
            for one in attached.values():
                one.poll()
            start, cpu = perf_counter(), time.thread_time()
            blocking_work(size, kind)
            blocks.append(Block(size, start, perf_counter(), kind, time.thread_time() - cpu))
        await asyncio.sleep(settle)
    finally:
        for one in attached.values():
            await one.detach()
    return blocks, attached


def run(
    loop: str,
    rounds: int,
    per_size: int,
    settle: float = SETTLE_SECONDS,
    gaps: Tuple[float, float] = GAP_SECONDS,
    seed: int = 5,
) -> Dict[str, Seen]:
    """``rounds`` fresh loops of kind ``loop``, each with ``per_size`` blocks of every size of every kind.

    Shuffled within each kind; the kinds in a random order.
    """
    rng = random.Random(seed)
    c_call_rate()
    usable = [t for t in TOOLS if variants.missing(t) is None]
    seen: Dict[str, Seen] = {tool: Seen() for tool in usable}
    receiver = Receiver(keep=True)
    try:
        for number in range(rounds):
            turn = [t for t in TAKING_TURNS if t in usable]
            tools = [t for t in SHARED if t in usable] + ([turn[number % len(turn)]] if turn else [])
            sizes: List[Tuple[str, float]] = []
            for kind in rng.sample(KINDS, len(KINDS)):
                these = [size for size in SIZES_MS for _ in range(per_size)]
                rng.shuffle(these)
                sizes += [(kind, size) for size in these]
            began = perf_counter()
            blocks, attached = loops.run(partial(_round, sizes, tools, receiver.port, rng, settle, gaps), loop)
            receiver.settle()
            lines = [line for line in receiver.lines() if line.at >= began]
            for tool, one in attached.items():
                got = seen[tool]
                got.blocks.extend(blocks)
                got.reports.extend(Report(s.at - s.ms / 1000.0, s.at, s.ms, s.kind, s.where) for s in one.samples)
                if tool in LAG_METRICS:
                    got.reports.extend(_lag_reports(lines, LAG_METRICS[tool]))
                if tool in TAKING_TURNS:
                    got.utilization.extend(_utilization(lines))
                    got.stall_threshold_ms = getattr(one, "stall_threshold_ms", None)
                    if getattr(one, "counts_blocking_calls", False):
                        calls, ms = _sleeps(lines)
                        got.sleeps_counted = (got.sleeps_counted or 0.0) + calls
                        got.sleep_ms_counted = (got.sleep_ms_counted or 0.0) + ms
    finally:
        receiver.close()
    return seen


def _overlap(a0: float, a1: float, b0: float, b1: float) -> float:
    return max(0.0, min(a1, b1) - max(a0, b0))


def _covered(block: Block, reports: Sequence[Report]) -> float:
    """Seconds of ``block`` inside the union of the reports' spans."""
    spans = sorted((max(r.start, block.start), min(r.end, block.end)) for r in reports)
    total, reach = 0.0, block.start
    for start, end in spans:
        start = max(start, reach)
        if end > start:
            total += end - start
            reach = end
    return total


def score(tool: str, got: Seen) -> Score:
    """Share of blocks and of blocked time seen, duration error, and naming, for one tool."""
    errors: List[float] = []
    tolerance_ok: List[bool] = []
    seen_by_size: Dict[float, List[bool]] = {size: [] for size in SIZES_MS}
    covered: Dict[str, float] = {kind: 0.0 for kind in KINDS}
    named: Dict[str, List[bool]] = {kind: [] for kind in KINDS}
    example: Optional[str] = None
    unnamed: Optional[str] = None
    names_code = tool in ("loopstat", "loopstat-all", "aiodebug")
    threshold = got.stall_threshold_ms
    # Blocks a stall watchdog must name by the line that made the call: twice its threshold
    # (aiodebug: its 50 ms slow-callback limit).
    must_name = 2 * threshold if threshold is not None else 200.0
    for block in got.blocks:
        matched = [r for r in got.reports if r.start < block.end and r.end > block.start]
        seen_by_size[block.size].append(bool(matched))
        covered[block.kind] += _covered(block, matched)
        if not matched:
            if names_code and block.size >= must_name:
                named[block.kind].append(False)
                unnamed = unnamed or "(no report)"
            continue
        events = [r for r in matched if r.kind != "lag"]
        reported = max(r.ms for r in (events or matched))
        error = abs(reported - block.ms)
        errors.append(error)
        if threshold is not None and block.size >= 2 * threshold:
            tolerance_ok.append(error <= 10.0 + 0.05 * block.ms)
        if names_code and block.size >= must_name:
            wheres = [r.where for r in events if r.where]
            named[block.kind].append(any(CALLING_LINES[block.kind] in w for w in wheres))
            if named[block.kind][-1]:
                example = example or wheres[0]
            else:
                if wheres:
                    unnamed = unnamed or wheres[0]
                elif events:
                    unnamed = unnamed or f"({events[0].kind} reported without a location)"
                else:
                    unnamed = unnamed or "(lag only, no stall reported)"
    injected = {kind: sum(b.end - b.start for b in got.blocks if b.kind == kind) for kind in KINDS}
    method = "spans"
    busy_ratio: Optional[float] = None
    if got.utilization:
        method = "utilization"
        covered = {kind: 0.0 for kind in KINDS}
        busy_total = 0.0
        for w0, w1, busy in got.utilization:
            inside = {kind: 0.0 for kind in KINDS}
            for b in got.blocks:
                inside[b.kind] += _overlap(w0, w1, b.start, b.end)
            held = sum(inside.values())
            if held:
                busy_total += busy * (w1 - w0)
                for kind in KINDS:
                    covered[kind] += min(busy * (w1 - w0), held) * inside[kind] / held
        busy_ratio = busy_total / sum(injected.values()) if got.blocks else None
    seen_all = [s for flags in seen_by_size.values() for s in flags]
    sleeps = [b for b in got.blocks if b.kind == "sleep"]
    return Score(
        tool=tool,
        blocks=len(got.blocks),
        seen_by_size={size: _share(flags) for size, flags in seen_by_size.items()},
        seen=_share(seen_all),
        time_seen=_ratio(sum(covered.values()), sum(injected.values())),
        time_method=method,
        error_median=stats.median(errors),
        error_p99=stats.percentile(errors, 99.0),
        named=_share([n for flags in named.values() for n in flags]) if names_code else None,
        named_example=example,
        unnamed_example=unnamed,
        busy_ratio=busy_ratio,
        stall_threshold_ms=threshold,
        within_tolerance=_share(tolerance_ok) if tolerance_ok else None,
        time_seen_by_kind={kind: _ratio(covered[kind], injected[kind]) for kind in KINDS},
        named_by_kind={kind: _share(named[kind]) if names_code else None for kind in KINDS},
        on_cpu_by_kind={
            kind: _ratio(sum(b.cpu for b in got.blocks if b.kind == kind), injected[kind]) for kind in KINDS
        },
        sleeps=len(sleeps),
        sleep_ms=sum(b.ms for b in sleeps),
        sleeps_counted=got.sleeps_counted,
        sleep_ms_counted=got.sleep_ms_counted,
    )


def _ratio(part: float, whole: float) -> float:
    return part / whole if whole else float("nan")


def _share(flags: Sequence[bool]) -> float:
    return sum(flags) / len(flags) if flags else float("nan")


# results[loop] = one Score per tool
Results = Dict[str, List[Score]]


def run_all(
    loop_names: List[str],
    rounds: int,
    per_size: int,
    settle: float = SETTLE_SECONDS,
    gaps: Tuple[float, float] = GAP_SECONDS,
) -> Results:
    """Fidelity of every tool on every loop."""
    return {
        loop: [score(tool, got) for tool, got in run(loop, rounds, per_size, settle, gaps).items()]
        for loop in loop_names
    }
