"""Idle process: the CPU a variant burns and the wake-ups it causes while the loop has nothing to do.

``python -m bench.idle VARIANT LOOP STATSD_PORT WARMUP WINDOW`` attaches the
variant to an idle loop, waits ``WARMUP`` seconds, then measures the process's
CPU time and voluntary context switches (every thread) over ``WINDOW`` seconds
and prints a JSON line. All variants of a loop run at once, each in its own
process, over the same window. On a virtual machine each wake-up costs tens of
microseconds of kernel and scheduler time that the CPU figure may not show.
"""

from __future__ import annotations

import asyncio
import json
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Optional

from bench import loops, variants
from bench.web import ROOT, child_env


@dataclass(frozen=True)
class Idle:
    """CPU seconds per minute of wall time, resident memory in MiB, voluntary context switches per second."""

    cpu_per_minute: float
    rss_mib: float
    wakeups_per_second: float


def rss_mib() -> float:
    """Current resident set size (peak if /proc is not there)."""
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
        return pages * resource.getpagesize() / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def voluntary_switches() -> int:
    """Voluntary context switches of this process so far, every thread (Linux sums them in RUSAGE_SELF)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw


async def _idle(variant: str, statsd_port: int, warmup: float, window: float) -> Idle:
    attached = variants.attach(variant, statsd_port)
    await asyncio.sleep(warmup)
    # Voluntary switches: the thread blocked (waited for an event or a timeout), i.e. one wake-up each.
    cpu, wall, switches = time.process_time(), time.perf_counter(), voluntary_switches()
    await asyncio.sleep(window)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    result = Idle(cpu / wall * 60.0, rss_mib(), (voluntary_switches() - switches) / wall)
    await attached.detach()
    return result


# results[loop][variant] = one Idle per round
Results = Dict[str, Dict[str, List[Idle]]]


def run_all(
    names: List[str], loop_names: List[str], statsd_port: int, repeats: int, warmup: float, window: float
) -> Results:
    """Every variant of every loop idling at the same time, ``repeats`` times."""
    results: Results = {lp: {v: [] for v in names} for lp in loop_names}
    for _ in range(repeats):
        running = [
            (
                loop,
                variant,
                subprocess.Popen(
                    [sys.executable, "-m", "bench.idle", variant, loop, str(statsd_port), str(warmup), str(window)],
                    stdout=subprocess.PIPE,
                    text=True,
                    cwd=ROOT,
                    env=child_env(),
                ),
            )
            for loop in loop_names
            for variant in names
        ]
        for loop, variant, process in running:
            out, _ = process.communicate()
            if process.returncode != 0:
                raise RuntimeError(f"idle process for {variant} on {loop} failed (exit {process.returncode})")
            results[loop][variant].append(Idle(**json.loads(out)))
    return results


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of one idle process."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 5:
        print("usage: python -m bench.idle VARIANT LOOP STATSD_PORT WARMUP WINDOW", file=sys.stderr)
        return 2
    variants.quiet_loopstat()
    variant, loop, port, warmup, window = args[0], args[1], int(args[2]), float(args[3]), float(args[4])
    result = loops.run(lambda: _idle(variant, port, warmup, window), loop)
    print(json.dumps(result.__dict__), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
