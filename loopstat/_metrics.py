"""The catalogue of metrics loopstat sends: one row each, read by the monitor, the datagram budget,
``loopstat watch``'s units, the dashboards' tests and the README's metrics table.

Adding a metric is one row here plus the probe that measures it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Literal, Tuple, Union

#: StatsD types loopstat writes: gauge, timing (milliseconds), counter.
MetricType = Literal["g", "ms", "c"]
#: Tags of one line of its own, ``(key, value)`` pairs: ``(("call", "time.sleep"),)``.
LineTags = Tuple[Tuple[str, str], ...]
# One line of a sample: (name after the prefix, StatsD type, value), optionally with tags of its own;
# the sink adds prefix and tags (the line's after the monitor's; with flavor "statsd" their values
# become the last parts of the name).
Line = Union[Tuple[str, MetricType, float], Tuple[str, MetricType, float, LineTags]]


@dataclass(frozen=True)
class Metric:
    """One metric: its name after the prefix, StatsD type, unit and meaning."""

    name: str
    type: MetricType
    #: "ms", "ratio" (0 to 1) or "count".
    unit: str
    #: The module of ``loopstat/probes`` that measures it.
    probe: str
    #: How dashboards combine it across services and workers: summed, or the worst of them.
    across: Literal["sum", "max"]
    doc: str
    #: For a timing: the name its samples take as a distribution ``d`` with ``distributions=True``,
    #: whose percentiles Datadog computes over every pod rather than per host. Datadog keeps one type
    #: per name, so a name a gauge already holds gets a suffix ("lag" is also a gauge).
    distribution: str = ""


METRICS: Tuple[Metric, ...] = (
    Metric("lag", "g", "ms", "lag", "max", "latest sleep overshoot (float, µs precision)"),
    Metric(
        "lag",
        "ms",
        "ms",
        "lag",
        "max",
        "every sample, so the agent keeps max and percentiles per flush",
        distribution="lag.distribution",
    ),
    Metric(
        "tasks",
        "g",
        "count",
        "tasks",
        "sum",
        "tasks on the loop that are not done, not counting loopstat's own (the application's main task counts)",
    ),
    Metric(
        "utilization",
        "g",
        "ratio",
        "utilization",
        "max",
        "share of the time since the previous sample that the loop spent running callbacks rather than "
        "waiting for events (uvloop: its thread's CPU time plus time in watched blocking calls)",
    ),
    Metric(
        "iteration",
        "g",
        "ms",
        "iteration",
        "max",
        "longest turn of the loop since the previous sample: the time it ran events, timers and callbacks without "
        "returning to its selector, the most any ready callback waited; sees every block, unlike lag "
        "(stdlib loops, with `utilization`; not on uvloop)",
    ),
    Metric(
        "cpu",
        "g",
        "ratio",
        "cpu",
        "max",
        "share of one core the loop's thread used since the previous sample (its CPU time over wall time); "
        "utilization minus cpu is time callbacks spent blocked off the CPU (synchronous I/O, sleeps, locks)",
    ),
    Metric(
        "throttled",
        "g",
        "ratio",
        "throttled",
        "max",
        "share of the wall time since its previous reading (at most once a second) that the process's cgroup was "
        "frozen by its CPU limit (CFS quota; cgroup v1 or v2); sent only where the cgroup has a CPU limit",
    ),
    Metric(
        "stalls",
        "c",
        "count",
        "stalls",
        "sum",
        "1 for each stall: the loop made no progress for longer than `stall_threshold`; tagged `cause:<name>`, "
        "one of `cpu`, `blocking_call`, `gc`, `throttled`, `gil`, `import`, `scheduler`, `unknown` (docs/measuring.md)",
    ),
    Metric("stall", "ms", "ms", "stalls", "max", "each stall's full duration, sent when it ends", distribution="stall"),
    Metric(
        "executor.queue",
        "g",
        "count",
        "executor",
        "sum",
        "work items waiting for a thread in the loop's default executor (once it exists and if it is a "
        "`ThreadPoolExecutor`)",
    ),
    Metric("executor.threads", "g", "count", "executor", "sum", "threads in that executor"),
    Metric(
        "gc.pause",
        "g",
        "ms",
        "gc",
        "max",
        "longest garbage-collector pause since the previous sample (`gc=True`)",
    ),
    Metric("gc.collections", "c", "count", "gc", "sum", "collections since the previous sample (`gc=True`)"),
    Metric(
        "blocking_calls",
        "c",
        "count",
        "blocking",
        "sum",
        "calls that block made on the loop's thread since the previous sample, tagged `call:<module.function>` "
        "(`time.sleep`, `socket.getaddrinfo`, `socket.socket.recv`, …; `blocking_calls`, on by default on uvloop)",
    ),
    Metric(
        "blocking_time",
        "ms",
        "ms",
        "blocking",
        "max",
        "time the loop's thread spent in those calls since the previous sample, tagged `call:…` (`blocking_calls`)",
        distribution="blocking_time",
    ),
    Metric(
        "busy",
        "g",
        "ratio",
        "profile",
        "max",
        "share of the last window (40 samples, 10 s at the default interval) the loop spent running the code at "
        "tag `site:<file:line in function>`, for its 5 busiest sites and `site:other` (`profile=True`)",
    ),
)

# The probes, in the order their lines appear in a sample: each a module of loopstat/probes.
PROBES: Tuple[str, ...] = tuple(dict.fromkeys(metric.probe for metric in METRICS))
#: Each metric name once, with how dashboards combine it across services.
ACROSS: Dict[str, str] = {metric.name: metric.across for metric in METRICS}
#: Each metric name once, with its unit; a distribution's name too.
UNITS: Dict[str, str] = {name: m.unit for m in METRICS for name in (m.name, m.distribution) if name}
#: Timings sent as distributions ``d`` with ``distributions=True``: each name with the name it then takes.
DISTRIBUTED: Dict[str, str] = {metric.name: metric.distribution for metric in METRICS if metric.distribution}
#: The longest name after the prefix, with its dot: it bounds the prefix and the line overhead.
LONGEST_SUFFIX = max(len("." + name) for metric in METRICS for name in (metric.name, metric.distribution))
#: Room kept in every line for tags of its own (``,call:subprocess.Popen.communicate``), after the monitor's.
LINE_TAG_ROOM = 48

_TYPES = {"g": "gauge `g`", "ms": "timing `ms`", "c": "counter `c`"}
_UNITS = {"ms": "ms", "ratio": "ratio 0\N{EN DASH}1", "count": "count"}


def _type(metric: Metric) -> str:
    if not metric.distribution:
        return _TYPES[metric.type]
    named = "" if metric.distribution == metric.name else f" `P.{metric.distribution}`"
    return f"{_TYPES[metric.type]} (distribution{named} `d` with `distributions=True`)"


def markdown_table() -> str:
    """The README's metrics table."""
    rows = ["| name | StatsD type | unit | value |", "|---|---|---|---|"]
    rows += [f"| `P.{m.name}` | {_type(m)} | {_UNITS[m.unit]} | {m.doc} |" for m in METRICS]
    return "\n".join(rows) + "\n"
