"""What a loaded machine took from a test: the time a thread was ready to run but waited for a core."""

from __future__ import annotations

import threading


def runqueue_seconds() -> float:
    """Time the calling thread has waited for a CPU while runnable, in seconds (0.0 where Linux does not say)."""
    # /proc/<pid>/task/<tid>/schedstat: time on the CPU, time waiting on a run queue (ns), timeslices.
    try:
        with open(f"/proc/self/task/{threading.get_native_id()}/schedstat") as stats:
            return int(stats.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0
