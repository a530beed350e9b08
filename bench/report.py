"""Report: markdown tables of the results, and the targets loopstat has to meet, PASS or MISS."""

from __future__ import annotations

import functools
import math
import os
import platform
import subprocess
import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from bench import fidelity, idle, instructions, stats, web, workloads
from bench.variants import DESCRIPTIONS

BASELINE = "none"
TARGET_VARIANT = "loopstat"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def provenance() -> str:
    """When and on what a run was made: date, Python (by version, not by path) and loopstat's commit."""
    try:
        done = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        commit = done.stdout.strip() if done.returncode == 0 else ""
    except OSError:  # no git: the figures still stand, without a commit to name
        commit = ""
    return (
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.python_implementation()} "
        f"{platform.python_version()}, commit {commit or 'unknown (not a git checkout)'}"
    )


@dataclass(frozen=True)
class Target:
    """One target: what, where, the measured figure, the goal, and whether it was met."""

    what: str
    loop: str
    measured: str
    goal: str
    met: Optional[bool]
    #: What an undecided verdict (``met`` None) means for this target.
    undecided: str = "undecided: the interval straddles the goal"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def rate(value: float) -> str:
    """A rate, short: 644k, 3.21k, 950."""
    if math.isnan(value):
        return "-"
    if value >= 100_000:
        return f"{value / 1000:.0f}k"
    if value >= 10_000:
        return f"{value / 1000:.1f}k"
    if value >= 1_000:
        return f"{value / 1000:.2f}k"
    return f"{value:.0f}"


def ratio(r: stats.Ratio) -> str:
    """A ratio to the baseline with its 95 % confidence interval, and "within noise" when that holds 1.0."""
    if math.isnan(r.estimate):
        return "-"
    if math.isnan(r.low):
        return f"{r.estimate:.3f} (no interval: {r.rounds} round)"
    return f"{r.estimate:.3f} [{r.low:.3f}, {r.high:.3f}]" + (" within noise" if r.within_noise else "")


def change(r: stats.Ratio) -> str:
    """A ratio as a change in percent, with its interval."""
    if math.isnan(r.low):
        return f"{(r.estimate - 1) * 100:+.1f}% (no interval)"
    text = f"{(r.estimate - 1) * 100:+.1f}% [{(r.low - 1) * 100:+.1f}%, {(r.high - 1) * 100:+.1f}%]"
    return text + (", within noise" if r.within_noise else "")


def judge(r: stats.Ratio, lowest: float = -math.inf, highest: float = math.inf) -> Optional[bool]:
    """Met when the whole interval lies within [lowest, highest], missed when none of it does; else undecided."""
    if math.isnan(r.low):
        return None
    if lowest <= r.low and r.high <= highest:
        return True
    if r.high < lowest or r.low > highest:
        return False
    return None


def percent(value: Optional[float], digits: int = 0) -> str:
    """A share as a percentage."""
    if value is None or math.isnan(value):
        return "-"
    return f"{value * 100:.{digits}f}%"


def ms(value: float) -> str:
    """Milliseconds with one decimal."""
    return "-" if math.isnan(value) else f"{value:.1f}"


def variants_legend(names: Sequence[str], skipped: Dict[str, str]) -> str:
    """What each variant is, and why any was skipped."""
    rows = [[f"`{n}`", DESCRIPTIONS[n] + (f" — **skipped**: {skipped[n]}" if n in skipped else "")] for n in names]
    return table(["variant", "what runs"], rows)


def _skip_row(name: str, columns: int, skipped: Dict[str, str]) -> List[str]:
    return [name, f"skipped: {skipped[name]}"] + ["-"] * (columns - 2)


def _variant_rows(
    names: Sequence[str],
    skipped: Dict[str, str],
    columns: int,
    loops: Iterable[str],
    cells: Callable[[str, str], List[str]],
) -> List[List[str]]:
    """One row per variant: its name, then ``cells(name, loop)`` for each loop; a skipped one says why."""
    rows = []
    for name in names:
        if name in skipped:
            rows.append(_skip_row(name, columns, skipped))
        else:
            rows.append([name, *(cell for loop in loops for cell in cells(name, loop))])
    return rows


def overhead_tables(
    results: workloads.Results, names: Sequence[str], skipped: Dict[str, str], targets: List[Target]
) -> str:
    """One table per in-process workload: per loop, median rates and the ratio to ``none``.

    The ratio is taken on the CPU rate (operations per CPU second of the
    process), which time stolen by other processes does not disturb.
    """
    out = []
    goals = {"yielding": 0.99, "ping-pong": 0.97}
    for workload, by_loop in results.items():
        header = ["variant"]
        for loop in by_loop:
            header += [f"{loop} /s", f"{loop} /CPU s", f"{loop} ratio (CPU)", f"{loop} ratio (wall)"]
        cells = functools.partial(_overhead_cells, workload, by_loop, goals[workload], targets)
        rows = _variant_rows(names, skipped, len(header), by_loop, cells)
        out.append(f"#### {workloads.TITLES[workload]}\n\n{table(header, rows)}")
    return "\n\n".join(out)


def _overhead_cells(
    workload: str,
    by_loop: Dict[str, Dict[str, List[workloads.Rate]]],
    goal: float,
    targets: List[Target],
    name: str,
    loop: str,
) -> List[str]:
    runs, base = by_loop[loop][name], by_loop[loop][BASELINE]
    r = stats.ratios([x.cpu for x in runs], [x.cpu for x in base])
    wall = stats.ratios([x.wall for x in runs], [x.wall for x in base])
    row = [rate(stats.median([x.wall for x in runs])), rate(stats.median([x.cpu for x in runs]))]
    row += [ratio(r), ratio(wall)] if name != BASELINE else ["baseline", "baseline"]
    if name == TARGET_VARIANT:
        what = f"overhead, {workload} (CPU rate)"
        goal_text = f"≥ {(goal - 1) * 100:.0f}% (ratio ≥ {goal})"
        targets.append(Target(what, loop, change(r), goal_text, judge(r, lowest=goal)))
    return row


def http_table(results: web.Results, names: Sequence[str], skipped: Dict[str, str], targets: List[Target]) -> str:
    """Requests/s and p99 latency per loop, each with its ratio to ``none``."""
    header = ["variant"]
    for loop in results:
        header += [f"{loop} req/s", "ratio", f"{loop} p99 ms", "ratio", f"{loop} server CPU µs/req", "ratio"]

    def cells(name: str, loop: str) -> List[str]:
        runs, base = results[loop][name], results[loop][BASELINE]
        rps = stats.ratios([x.rps for x in runs], [x.rps for x in base])
        p99 = stats.ratios([x.p99_ms for x in runs], [x.p99_ms for x in base])
        cpu = stats.ratios([x.server_cpu_us for x in runs], [x.server_cpu_us for x in base])
        shown = [ratio(rps), ratio(p99), ratio(cpu)] if name != BASELINE else ["baseline"] * 3
        row = [rate(stats.median([x.rps for x in runs])), shown[0]]
        row += [ms(stats.median([x.p99_ms for x in runs])), shown[1]]
        row += [f"{stats.median([x.server_cpu_us for x in runs]):.0f}", shown[2]]
        if name == TARGET_VARIANT:
            targets.append(Target("HTTP req/s", loop, change(rps), "≥ -0.5%", judge(rps, lowest=0.995)))
            targets.append(Target("HTTP p99 latency", loop, change(p99), "≤ +0.5%", judge(p99, highest=1.005)))
            what = "HTTP server CPU per request (steadier proxy)"
            targets.append(Target(what, loop, change(cpu), "≤ +0.5%", judge(cpu, highest=1.005)))
        return row

    rows = _variant_rows(names, skipped, len(header), results, cells)
    errors = sum(x.errors for by_variant in results.values() for runs in by_variant.values() for x in runs)
    note = f"\n\nClient errors: {errors}." if errors else ""
    return table(header, rows) + note


def spread(values: Sequence[float], form: str) -> str:
    """`` (lowest-highest)`` of several values, nothing for one."""
    if len(values) < 2:
        return ""
    return f" ({form.format(min(values))}-{form.format(max(values))})"


def idle_table(results: idle.Results, names: Sequence[str], skipped: Dict[str, str], targets: List[Target]) -> str:
    """CPU per minute, wake-ups and RSS of an idle process, and what each adds to ``none``.

    Medians over the rounds, with their range (lowest-highest) when there are several.
    """
    header = ["loop", "variant", "CPU s/min", "% of a core", "extra over none", "wake-ups/s", "RSS MiB", "extra MiB"]
    rows = []
    for loop, by_variant in results.items():
        base_cpu = stats.median([x.cpu_per_minute for x in by_variant[BASELINE]])
        base_rss = stats.median([x.rss_mib for x in by_variant[BASELINE]])
        for name in names:
            if name in skipped:
                rows.append([loop, *_skip_row(name, len(header) - 1, skipped)])
                continue
            cpu = stats.median([x.cpu_per_minute for x in by_variant[name]])
            rss = stats.median([x.rss_mib for x in by_variant[name]])
            wakeups = stats.median([x.wakeups_per_second for x in by_variant[name]])
            extra = (cpu - base_cpu) / 60.0
            rows.append(
                [
                    loop,
                    name,
                    f"{cpu:.3f}",
                    f"{cpu / 60 * 100:.3f}%"
                    + spread([x.cpu_per_minute / 60 * 100 for x in by_variant[name]], "{:.3f}%"),
                    f"{extra * 100:+.3f}%",
                    f"{wakeups:.1f}" + spread([x.wakeups_per_second for x in by_variant[name]], "{:.1f}"),
                    f"{rss:.1f}",
                    f"{rss - base_rss:+.1f}",
                ]
            )
            if name == TARGET_VARIANT:
                share = cpu / 60.0
                targets.append(Target("idle CPU", loop, f"{share * 100:.3f}% of a core", "≤ 0.15%", share <= 0.0015))
                targets.append(Target("idle wake-ups", loop, f"{wakeups:.1f}/s", "≤ 6/s", wakeups <= 6.0))
    return table(header, rows)


def fidelity_tables(
    results: fidelity.Results, names: Sequence[str], skipped: Dict[str, str], targets: List[Target]
) -> str:
    """Per loop: blocks seen by size, blocked time seen, duration error, naming, time.sleep calls counted."""
    out = []
    sizes = " / ".join(f"{s:.0f}" for s in fidelity.SIZES_MS)
    kinds = " / ".join(fidelity.KINDS)
    header = [
        "tool",
        "blocks",
        f"seen, by size ({sizes} ms)",
        "blocks seen",
        f"blocked time seen: all ({kinds})",
        "error median ms",
        "error p99 ms",
        f"long blocks named: all ({kinds})",
        "`time.sleep` calls counted (time in them)",
    ]
    for loop, scores in results.items():
        by_tool = {s.tool: s for s in scores}
        rows = []
        notes = []
        for name in names:
            if name == BASELINE:
                continue
            if name in skipped or name not in by_tool:
                rows.append(_skip_row(name, len(header), skipped or {name: "not run"}))
                continue
            s = by_tool[name]
            seen_sizes = " / ".join(percent(s.seen_by_size[size]) for size in fidelity.SIZES_MS)
            time_seen = percent(s.time_seen, 1) + _by_kind(s.time_seen_by_kind)
            time_seen += " via utilization" if s.time_method == "utilization" else ""
            named = "cannot" if s.named is None else percent(s.named) + _by_kind(s.named_by_kind)
            if s.sleeps_counted is not None:
                sleeps = f"{s.sleeps_counted:.0f} of {s.sleeps} ({s.sleep_ms_counted or 0:.0f} of {s.sleep_ms:.0f} ms)"
            elif name.startswith("loopstat"):
                sleeps = f"probe off (of {s.sleeps})"
            else:
                sleeps = f"cannot (of {s.sleeps})"
            rows.append(
                [
                    name,
                    str(s.blocks),
                    seen_sizes,
                    percent(s.seen),
                    time_seen,
                    ms(s.error_median),
                    ms(s.error_p99),
                    named,
                    sleeps,
                ]
            )
            if s.named_example:
                notes.append(f"- `{name}` named: `{s.named_example}`")
            if s.unnamed_example:
                notes.append(
                    f"- `{name}` did not name the line in `blocking_work` of a long block: `{s.unnamed_example}`"
                )
            if s.busy_ratio is not None:
                notes.append(
                    f"- `{name}`: busy time in the windows holding blocks = {s.busy_ratio:.3f} x injected time"
                )
            if name == TARGET_VARIANT:
                _fidelity_targets(s, loop, targets)
        if scores:
            on_cpu = ", ".join(f"{kind} {percent(scores[0].on_cpu_by_kind[kind])}" for kind in fidelity.KINDS)
            notes.append(f"- the loop's thread was on CPU for this share of the blocked time: {on_cpu}")
        text = f"#### Fidelity on {loop}\n\n{table(header, rows)}"
        out.append(text + ("\n\n" + "\n".join(notes) if notes else ""))
    return "\n\n".join(out)


def _by_kind(shares: Mapping[str, Optional[float]]) -> str:
    """`` (99 / 98 / 100)``: a share for each kind of block, in percent."""
    return " (" + " / ".join(percent(shares[kind]).rstrip("%") for kind in fidelity.KINDS) + ")"


def _fidelity_targets(s: fidelity.Score, loop: str, targets: List[Target]) -> None:
    for kind in fidelity.KINDS:
        seen = s.time_seen_by_kind[kind]
        targets.append(
            Target(
                f"blocked time visible ({kind})",
                loop,
                percent(seen, 1) + f" (via {s.time_method})",
                "≥ 95%",
                seen >= 0.95,
            )
        )
    if s.sleeps_counted is not None:
        counted = s.sleeps_counted / s.sleeps if s.sleeps else float("nan")
        targets.append(
            Target("time.sleep calls counted", loop, f"{s.sleeps_counted:.0f} of {s.sleeps}", "≥ 90%", counted >= 0.9)
        )
    threshold = s.stall_threshold_ms
    if threshold is None:
        targets.append(Target("long blocks named", loop, "no stall watchdog in this loopstat", "100%", False))
        return
    targets.append(
        Target(
            f"blocks ≥ {2 * threshold:.0f} ms named",
            loop,
            percent(s.named, 1),
            "100%",
            s.named is not None and s.named >= 1.0,
        )
    )
    within = s.within_tolerance
    targets.append(
        Target(
            f"duration error of blocks ≥ {2 * threshold:.0f} ms",
            loop,
            f"{percent(within, 1)} within 10 ms + 5%",
            "all within 10 ms + 5%",
            within is not None and within >= 1.0,
        )
    )


def targets_table(targets: Sequence[Target]) -> str:
    """Every target with PASS or MISS."""
    verdicts = {True: "PASS", False: "**MISS**"}
    rows = [[t.what, t.loop, t.measured, t.goal, t.undecided if t.met is None else verdicts[t.met]] for t in targets]
    return table(["target (loopstat default vs none)", "loop", "measured", "goal", "result"], rows)


COUNTED_TITLES = {
    "yielding": "100 tasks yielding with `await asyncio.sleep(0)` (an operation: one task's iteration)",
    "ping-pong": "one task ping-ponging through two `asyncio.Queue`s (an operation: a round trip)",
    "http": "aiohttp server and keep-alive client in one process (an operation: a request)",
}
PEERS = ("aiodebug", "loopmon", "monitored-ioloop")


def same_as(peer: str, loop: str) -> str:
    """The loopstat variant that measures what ``peer`` measures on ``loop``.

    loopmon samples lag and tasks, as loopstat's sampler alone does; so does aiodebug
    on uvloop, where its ``Handle._run`` hook never runs. On stdlib loops aiodebug
    also names slow callbacks, and monitored-ioloop times every callback: loopstat's
    defaults (utilization, stalls named by the watchdog) are the counterpart.
    """
    if peer == "loopmon" or (peer == "aiodebug" and loop == "uvloop"):
        return "loopstat-lag"
    return TARGET_VARIANT


def span(figure: stats.Spread, form: Callable[[float], str]) -> str:
    """A figure over layouts: the median, then the lowest and highest in brackets (just the median when they agree)."""
    if figure.low == figure.high:
        return form(figure.median)
    return f"{form(figure.median)} [{form(figure.low)}, {form(figure.high)}]"


def instruction_tables(
    found: instructions.Costs,
    native: Dict[Tuple[str, str], float],
    names: Sequence[str],
    skipped: Dict[str, str],
) -> str:
    """Per workload: instructions per operation, time-driven instructions per second, and both at native speed.

    ``native`` is (workload, loop) -> unmonitored operations per native CPU second. Each cell is the
    median over the memory layouts, with the lowest and highest in brackets.
    """
    out = []
    for workload in dict.fromkeys(w for w, _, _ in found):
        loop_names = list(dict.fromkeys(lp for w, lp, _ in found if w == workload))
        header = ["variant"]
        for loop in loop_names:
            header += [f"{loop} instr/op", "extra per op", "timers, instr/s busy", "at native speed"]
        notes = []
        for loop in loop_names:
            base = found.get((workload, loop, BASELINE))
            if base is None:
                notes.append(f"- {loop}: no `{BASELINE}` run, so no shares.")
                continue
            per_op = instructions.middle(base).per_op
            per_second = per_op * native[(workload, loop)]
            notes.append(
                f"- {loop}: `none` runs {per_op:,.0f} instructions per operation x "
                f"{native[(workload, loop)]:,.0f} operations per native CPU second = {per_second / 1e9:.2f} G "
                "instructions per second; at native speed = extra per op ÷ none per op + timers ÷ that."
            )
        cells = functools.partial(_instruction_cells, found, native, workload)
        rows = _variant_rows(names, skipped, len(header), loop_names, cells)
        layouts = max(len(each) for each in found.values())
        notes.append(
            f"- Each cell: the median over {layouts} memory layout{'s' if layouts > 1 else ''}, "
            "the lowest and highest in brackets (each layout a run of its own, `none` in the same layout)."
        )
        out.append(f"#### {COUNTED_TITLES[workload]}\n\n{table(header, rows)}\n\n" + "\n".join(notes))
    return "\n\n".join(out)


def _instruction_cells(
    found: instructions.Costs,
    native: Dict[Tuple[str, str], float],
    workload: str,
    name: str,
    loop: str,
) -> List[str]:
    key, base_key = (workload, loop, name), (workload, loop, BASELINE)
    if key not in found:
        return ["n/a", "-", "-", "-"]
    per_op = instructions.across(found, [key], lambda c: c.per_op)
    if base_key not in found:
        return [span(per_op, "{:,.0f}".format), "-", "-", "-"]
    rate = native[(workload, loop)]

    def shares(cost: instructions.Cost, base: instructions.Cost) -> Tuple[float, float]:
        return instructions.share(cost, base, base.per_op * rate)

    extra = instructions.across(found, [key, base_key], lambda c, b: c.per_op - b.per_op)
    op = instructions.across(found, [key, base_key], lambda c, b: shares(c, b)[0] * 100)
    busy = instructions.across(found, [key], lambda c: c.busy_per_second / 1e6)
    sec = instructions.across(found, [key, base_key], lambda c, b: shares(c, b)[1] * 100)
    total = instructions.across(found, [key, base_key], lambda c, b: sum(shares(c, b)) * 100)
    return [
        span(per_op, "{:,.0f}".format),
        f"{span(extra, '{:+,.0f}'.format)} ({op.median:+.2f}%)",
        f"{busy.median:.2f}M ({sec.median:.3f}%)",
        f"**{total.median:+.2f}%**" + ("" if total.low == total.high else f" [{total.low:+.2f}, {total.high:+.2f}]"),
    ]


def idle_instructions_table(rates: Dict[Tuple[str, str], float], names: Sequence[str]) -> str:
    """Instructions per second of an idle loop over ``none``, and per sample where a sampler alone runs."""
    loop_names = list(dict.fromkeys(lp for lp, _ in rates))
    intervals = {"naive": 0.25, "loopstat-lag": 0.25, "aiodebug": 0.25, "loopmon": 0.1}
    rows = []
    for name in names:
        if name == BASELINE or not any((lp, name) in rates for lp in loop_names):
            continue
        row = [name]
        for loop in loop_names:
            if (loop, name) not in rates:
                row.append("n/a")
                continue
            extra = rates[(loop, name)] - rates[(loop, BASELINE)]
            interval = intervals.get(name)
            per_sample = f" = {extra * interval / 1e3:,.0f}k per sample ({interval:g} s)" if interval else ""
            row.append(f"{extra / 1e3:,.0f}k{per_sample}")
        rows.append(row)
    return table(["variant"] + [f"{loop} instr/s over none" for loop in loop_names], rows)


def instruction_targets(found: instructions.Costs, native: Dict[Tuple[str, str], float]) -> List[Target]:
    """The cost targets (docs/performance.md) on the instruction counts, at native speed, decided on medians.

    A target whose limit lies within the range over layouts is "within the noise", neither met nor missed.
    """

    def at_native(workload: str, loop: str, *names: str) -> Optional[stats.Spread]:
        """Percent at native speed of the first name, minus that of the second if one is given."""
        keys = [(workload, loop, n) for n in (*names, BASELINE)]
        if any(k not in found for k in keys):
            return None

        def figure(*each: instructions.Cost) -> float:
            *costs, base = each
            shares = [sum(instructions.share(c, base, base.per_op * native[(workload, loop)])) for c in costs]
            return (shares[0] - (shares[1] if len(shares) > 1 else 0.0)) * 100

        return instructions.across(found, keys, figure)

    def points(figure: stats.Spread) -> str:
        return span(figure, "{:+.2f}".format)

    noise = "within the noise: the goal is inside the range over layouts"
    targets = []
    for workload, loop, name in found:
        if name != TARGET_VARIANT:
            continue
        ours = at_native(workload, loop, name)
        if ours is None:
            continue
        if workload == "ping-pong":
            extra, naive = at_native(workload, loop, name, "naive"), at_native(workload, loop, "naive")
            limit = 1.0 if loop == "asyncio" else 0.5
            if extra is not None and naive is not None:
                measured = f"{points(extra)} points over naive ({ours.median:+.2f}% vs {naive.median:+.2f}%)"
                goal = f"≤ +{limit:g} points"
                targets.append(Target("ping-pong vs naive", loop, measured, goal, stats.at_most(extra, limit), noise))
        else:
            targets.append(Target(workload, loop, f"{points(ours)}%", "≤ +0.5%", stats.at_most(ours, 0.5), noise))
        for peer in PEERS:
            match = same_as(peer, loop)
            theirs, mine = at_native(workload, loop, peer), at_native(workload, loop, match)
            below = at_native(workload, loop, match, peer)
            if theirs is not None and mine is not None and below is not None:
                measured = f"{mine.median:+.2f}% vs {theirs.median:+.2f}% (difference {points(below)} points)"
                met = stats.at_most(below, 0.0)
                targets.append(Target(f"{workload}: `{match}` below `{peer}`", loop, measured, "lower", met, noise))
    return targets
