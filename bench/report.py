"""Report: markdown tables of the results, and the targets loopstat has to meet, PASS or MISS."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

from bench import fidelity, idle, stats, web, workloads
from bench.variants import DESCRIPTIONS

BASELINE = "none"
TARGET_VARIANT = "loopstat"


@dataclass(frozen=True)
class Target:
    """One target: what, where, the measured figure, the goal, and whether it was met."""

    what: str
    loop: str
    measured: str
    goal: str
    met: Optional[bool]


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
    """Median ratio to the baseline with its interquartile range."""
    if math.isnan(r.median):
        return "-"
    if r.rounds < 3:
        return f"{r.median:.3f}"
    return f"{r.median:.3f} ({r.low:.3f}-{r.high:.3f})"


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
        rows = []
        for name in names:
            if name in skipped:
                rows.append(_skip_row(name, len(header), skipped))
                continue
            row = [name]
            for loop, by_variant in by_loop.items():
                runs, base = by_variant[name], by_variant[BASELINE]
                r = stats.ratios([x.cpu for x in runs], [x.cpu for x in base])
                wall = stats.ratios([x.wall for x in runs], [x.wall for x in base])
                row += [rate(stats.median([x.wall for x in runs])), rate(stats.median([x.cpu for x in runs]))]
                row += [ratio(r), ratio(wall)]
                if name == TARGET_VARIANT:
                    goal = goals[workload]
                    targets.append(
                        Target(
                            f"overhead, {workload} (CPU rate)",
                            loop,
                            f"{(r.median - 1) * 100:+.1f}% (ratio {r.median:.3f})",
                            f"≥ {(goal - 1) * 100:.0f}% (ratio ≥ {goal})",
                            r.median >= goal,
                        )
                    )
            rows.append(row)
        out.append(f"#### {workloads.TITLES[workload]}\n\n{table(header, rows)}")
    return "\n\n".join(out)


def http_table(results: web.Results, names: Sequence[str], skipped: Dict[str, str], targets: List[Target]) -> str:
    """Requests/s and p99 latency per loop, each with its ratio to ``none``."""
    header = ["variant"]
    for loop in results:
        header += [f"{loop} req/s", "ratio", f"{loop} p99 ms", "ratio", f"{loop} server CPU µs/req", "ratio"]
    rows = []
    for name in names:
        if name in skipped:
            rows.append(_skip_row(name, len(header), skipped))
            continue
        row = [name]
        for loop, by_variant in results.items():
            runs, base = by_variant[name], by_variant[BASELINE]
            rps = stats.ratios([x.rps for x in runs], [x.rps for x in base])
            p99 = stats.ratios([x.p99_ms for x in runs], [x.p99_ms for x in base])
            row += [rate(stats.median([x.rps for x in runs])), ratio(rps)]
            row += [ms(stats.median([x.p99_ms for x in runs])), ratio(p99)]
            cpu = stats.ratios([x.server_cpu_us for x in runs], [x.server_cpu_us for x in base])
            row += [f"{stats.median([x.server_cpu_us for x in runs]):.0f}", ratio(cpu)]
            if name == TARGET_VARIANT:
                rps_text = f"{(rps.median - 1) * 100:+.1f}% (ratio {rps.median:.3f})"
                p99_text = f"{(p99.median - 1) * 100:+.1f}% (ratio {p99.median:.3f})"
                targets.append(Target("HTTP req/s", loop, rps_text, "≥ -0.5%", rps.median >= 0.995))
                targets.append(Target("HTTP p99 latency", loop, p99_text, "≤ +0.5%", p99.median <= 1.005))
                cpu_text = f"{(cpu.median - 1) * 100:+.1f}% (ratio {cpu.median:.3f})"
                targets.append(
                    Target(
                        "HTTP server CPU per request (steadier proxy)", loop, cpu_text, "≤ +0.5%", cpu.median <= 1.005
                    )
                )
        rows.append(row)
    errors = sum(x.errors for by_variant in results.values() for runs in by_variant.values() for x in runs)
    note = f"\n\nClient errors: {errors}." if errors else ""
    return table(header, rows) + note


def idle_table(results: idle.Results, names: Sequence[str], skipped: Dict[str, str], targets: List[Target]) -> str:
    """CPU per minute and RSS of an idle process, and what each adds to ``none``."""
    header = ["loop", "variant", "CPU s/min", "% of a core", "extra over none", "RSS MiB", "extra MiB"]
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
            extra = (cpu - base_cpu) / 60.0
            rows.append(
                [
                    loop,
                    name,
                    f"{cpu:.3f}",
                    f"{cpu / 60 * 100:.3f}%",
                    f"{extra * 100:+.3f}%",
                    f"{rss:.1f}",
                    f"{rss - base_rss:+.1f}",
                ]
            )
            if name == TARGET_VARIANT:
                targets.append(
                    Target("idle CPU", loop, f"{extra * 100:.3f}% of a core", "≤ 0.1% of a core", extra <= 0.001)
                )
    return table(header, rows)


def fidelity_tables(
    results: fidelity.Results, names: Sequence[str], skipped: Dict[str, str], targets: List[Target]
) -> str:
    """Per loop: blocks seen by size, blocked time seen, duration error, naming."""
    out = []
    sizes = " / ".join(f"{s:.0f}" for s in fidelity.SIZES_MS)
    header = [
        "tool",
        "blocks",
        f"seen, by size ({sizes} ms)",
        "blocks seen",
        "blocked time seen",
        "error median ms",
        "error p99 ms",
        "long blocks named",
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
            time_seen = percent(s.time_seen, 1) + (" (utilization)" if s.time_method == "utilization" else "")
            named = "cannot" if s.named is None else percent(s.named)
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
                ]
            )
            if s.named_example:
                notes.append(f"- `{name}` named: `{s.named_example}`")
            if s.unnamed_example:
                notes.append(f"- `{name}` did not name `blocking_work` in a long block: `{s.unnamed_example}`")
            if s.busy_ratio is not None:
                notes.append(
                    f"- `{name}`: busy time in the windows holding blocks = {s.busy_ratio:.3f} x injected time"
                )
            if name == TARGET_VARIANT:
                _fidelity_targets(s, loop, targets)
        text = f"#### Fidelity on {loop}\n\n{table(header, rows)}"
        out.append(text + ("\n\n" + "\n".join(notes) if notes else ""))
    return "\n\n".join(out)


def _fidelity_targets(s: fidelity.Score, loop: str, targets: List[Target]) -> None:
    targets.append(
        Target(
            "blocked time visible",
            loop,
            percent(s.time_seen, 1) + f" (via {s.time_method})",
            "≥ 95%",
            s.time_seen >= 0.95,
        )
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
    rows = [
        [t.what, t.loop, t.measured, t.goal, "-" if t.met is None else ("PASS" if t.met else "**MISS**")]
        for t in targets
    ]
    return table(["target (loopstat default vs none)", "loop", "measured", "goal", "result"], rows)
