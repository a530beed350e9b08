"""Causes: why a loop stalled, decided from what its thread and the process did while it lasted.

A pure function of the signals (``During``), read when the watchdog sees the
stall and when it ends (``loopstat/probes/signals.py``): the same figures give
the same cause. Each rule names the signal that explains most of the time
watched, in this order:

1. ``gc``: the garbage collector ran most of the stall;
   (a look by the watchdog that came only as the stall ended means the thread
   held the GIL, unless it was in watched calls most of that time or the
   cgroup's CPU limit froze the process as it looked: ``import`` if the stack
   is importing, else ``cpu``)
2. ``import``: the stack is inside the import system, whatever the module does;
3. ``blocking_call``: the thread was in the calls the blocking-call probe watches most of it;
4. ``throttled``: the cgroup's CPU limit froze it (throttled time, and the thread waited to run);
5. ``cpu``: the thread ran on the CPU most of it;
6. ``gil``: the thread was off the CPU while the process's other threads ran (longer than it waited for a CPU);
7. ``scheduler``: the thread was ready to run but waited for a CPU (its run queue delay);
8. ``blocking_call``: the thread was off the CPU, waiting, in a call no probe watches;
9. ``unknown``: none of these, or the signals were unavailable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional, Sequence, Tuple

from loopstat.probes.frames import Frame

Cause = Literal["cpu", "blocking_call", "gc", "throttled", "gil", "import", "scheduler", "unknown"]
#: Every cause, the only values of the ``cause`` tag.
CAUSES: Tuple[Cause, ...] = ("cpu", "blocking_call", "gc", "throttled", "gil", "import", "scheduler", "unknown")

# A signal explains a stall when it covers this share of the time watched.
MOST = 0.5
# Throttling and run-queue waits explain it from this share: the rest of the time the thread runs.
SOME = 0.25
# The import system's frames, as CPython names them (frozen since 3.x, a file when run from source).
_IMPORT_FILES = ("<frozen importlib._bootstrap>", "<frozen importlib._bootstrap_external>")
_IMPORT_SUFFIXES = ("importlib/_bootstrap.py", "importlib/_bootstrap_external.py")


@dataclass(frozen=True)
class During:
    """What happened during a stall, in seconds, None where unknown.

    Garbage collection is counted over the whole stall; the rest over the
    part the watchdog watched, from its look to the stall's end.
    """

    #: The stall's whole duration.
    duration: float
    #: The part watched; 0 when the stall ended before the watchdog could look.
    wall: float = 0.0
    #: How late the watchdog's look came: a loop thread that holds the GIL (in C code) keeps it out.
    kept_out: float = 0.0
    #: Time in garbage collections, over the whole stall.
    gc: Optional[float] = None
    #: CPU time of the loop's thread.
    cpu: Optional[float] = None
    #: Time the loop's thread was ready to run but waited for a CPU (``/proc/self/task/<tid>/schedstat``);
    #: it includes time frozen by a CPU limit.
    run_delay: Optional[float] = None
    #: CPU time of the process's other threads.
    others_cpu: Optional[float] = None
    #: Time the process's cgroup was throttled by its CPU limit (summed per CPU by the kernel).
    throttled: Optional[float] = None
    #: Time the loop's thread spent in the calls the blocking-call probe watches (None when it is off).
    blocked: Optional[float] = None
    #: The file of the module being imported when the watchdog looked ("" if unnamed), None if not importing.
    importing: Optional[str] = None


@dataclass(frozen=True)
class Verdict:
    """A stall's cause and the figures behind it, as the log line says them."""

    cause: Cause
    why: str


def importing(frames: Sequence[Frame]) -> Optional[str]:
    """The file of the module an import runs in ``frames`` (innermost last); "" if unnamed; None if no import."""
    inside = False
    module: Optional[str] = None
    for filename, _, function in frames:
        if filename in _IMPORT_FILES or filename.endswith(_IMPORT_SUFFIXES):
            inside = True
        elif inside and function == "<module>":
            module = filename
    if not inside:
        return None
    return module or ""


def _ms(seconds: float) -> str:
    return f"{seconds * 1000.0:.0f} ms"


def classify(during: During) -> Verdict:
    """The cause of a stall from what happened during it."""
    gc, wall, duration = during.gc, during.wall, during.duration
    if gc is not None and gc >= MOST * duration:
        return Verdict("gc", f"the garbage collector ran for {_ms(gc)} of it")
    module = f" ({during.importing})" if during.importing else ""
    if wall <= 0:
        return Verdict("unknown", "it ended before the watchdog could look")
    blocked = during.blocked
    # In a watched call (the GIL let go) from before the look was due to the end: the watchdog was kept
    # off the CPU by a loaded machine, not out of the GIL.
    in_a_call = blocked is not None and blocked >= MOST * (during.kept_out + wall)
    # Frozen by the cgroup's CPU limit as it looked: the limit froze the watchdog too (it is the process's).
    throttled = during.throttled
    frozen = throttled is not None and throttled >= SOME * wall
    if during.kept_out >= wall and not in_a_call and not frozen:
        # The watchdog got in only as the stall ended: the loop's thread held the GIL, running.
        if during.importing is not None:
            return Verdict("import", f"it was importing a module{module}")
        return Verdict("cpu", f"its thread held the GIL for {_ms(during.kept_out)} of it (in C code, most likely)")
    of = f" of the {_ms(wall)} watched"
    cpu, delay, others = during.cpu, during.run_delay, during.others_cpu
    if during.importing is not None:
        return Verdict("import", f"it was importing a module{module}")
    if blocked is not None and blocked >= MOST * wall:
        return Verdict("blocking_call", f"its thread was in blocking calls for {_ms(min(blocked, wall))}{of}")
    # Frozen by the limit, the thread waits in its run queue; off the CPU for other reasons, it does not.
    if throttled is not None and throttled >= SOME * wall and (delay is None or delay >= SOME * wall):
        return Verdict("throttled", f"the container was CPU-throttled for {_ms(min(throttled, wall))}{of}")
    if cpu is not None and cpu >= MOST * wall:
        return Verdict("cpu", f"its thread ran on the CPU for {_ms(cpu)}{of}")
    # Waiting for the GIL, the thread also waits for a CPU each time it gets it: the longer wait names the cause.
    if cpu is not None and others is not None and others >= MOST * wall and (delay is None or delay < others):
        return Verdict("gil", f"its thread waited for the GIL while other threads ran for {_ms(others)}{of}")
    if delay is not None and delay >= SOME * wall:
        return Verdict("scheduler", f"its thread waited {_ms(delay)}{of} for a CPU (the host is short of CPU)")
    if cpu is not None and cpu < SOME * wall:
        off = max(0.0, wall - cpu - (delay or 0.0))
        return Verdict("blocking_call", f"its thread was off the CPU, waiting in a call, for {_ms(off)}{of}")
    known = [
        f"{name} {_ms(value)}"
        for name, value in (("CPU", cpu), ("run queue", delay), ("other threads", others), ("GC", gc))
        if value is not None
    ]
    figures = f" ({', '.join(known)}{of})" if known else " (no signals to tell on this system)"
    return Verdict("unknown", f"no single cause{figures}")
