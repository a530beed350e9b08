"""The option table: each setting declared once, with its type, default, bounds, variables and doc.

``Settings`` is the table: one field per option. ``install()`` checks its
arguments through it, ``resolve()`` (``environ.py``) fills the rest from the
environment in the order each row gives, ``loopstat-run`` reads its
``LOOPSTAT_*`` variables and writes its ``--help`` from it (``docs.py``), and
the tests check the README's configuration table and their list of variables
against it. Adding an option is one field here plus the code that uses it (and
its ``install()`` parameter).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Literal, Optional, Tuple, TypeVar, get_args

from loopstat._options.validators import (
    HOST,
    PORT,
    SOCKET_PATH,
    Choice,
    ExternalEnv,
    Prefix,
    Seconds,
    Switch,
    TagList,
    Validator,
)

T = TypeVar("T")

# DogStatsD's guidance for UDP: larger datagrams may be fragmented or dropped.
MAX_DATAGRAM = 1432
# Over a Unix socket nothing fragments; the Agent reads each datagram into a
# buffer of dogstatsd_buffer_size bytes (8192 by default) and cuts what is
# longer, so datadogpy sends up to 8192 bytes there too.
MAX_UNIX_DATAGRAM = 8192
# DogStatsD's origin fields: "|c:" and a container ID (64 hex digits at most,
# or "in-" and a cgroup inode), then "|e:" and the external environment.
MAX_CONTAINER_FIELD = len("|c:") + 64
ORIGIN_VARIABLE = "DD_ORIGIN_DETECTION_ENABLED"
Flavor = Literal["dogstatsd", "statsd"]
FLAVORS: Tuple[str, ...] = get_args(Flavor)

# At 1 ms the sampler already wakes the loop 1,000 times a second; below it,
# asyncio.sleep() returns at once and the sampler runs on every loop turn.
MIN_INTERVAL = 0.001
# The watchdog wakes every threshold / 10: at 10 ms that is 1,000 times a
# second, and ordinary GC pauses and scheduling noise start to count as stalls.
MIN_STALL_THRESHOLD = 0.01

DEFAULT_HOST = "localhost"
# The Datadog Agent's and Etsy statsd's port (aiodogstatsd's own default is 9125).
DEFAULT_PORT = 8125
DEFAULT_PREFIX = "loopstat"
DEFAULT_INTERVAL = 0.25
# asyncio's own slow_callback_duration.
DEFAULT_STALL_THRESHOLD = 0.1

URL_VARIABLE = "DD_DOGSTATSD_URL"
# Datadog's unified service tagging, then the pod's id the Kubernetes admission
# controller sets for origin detection (read as datadogpy reads it): each
# variable is one tag.
TAG_VARIABLES = {
    "DD_SERVICE": "service",
    "DD_ENV": "env",
    "DD_VERSION": "version",
    "DD_ENTITY_ID": "dd.internal.entity_id",
}


@dataclass(frozen=True)
class Option:
    """One row of the table."""

    name: str
    default: object
    validator: Validator[Any]
    doc: str
    #: install()'s own variables, strongest first.
    env: Tuple[str, ...]
    #: The variable loopstat-run reads it from, if any.
    run: Optional[str]
    #: Its value under loopstat-run when that variable is not set.
    run_default: object


_SAME: Any = object()


def _row(
    default: T,
    validator: Validator[Any],
    doc: str,
    env: Tuple[str, ...] = (),
    run: Optional[str] = None,
    run_default: Any = _SAME,
) -> T:
    run_default = default if run_default is _SAME else run_default
    return field(default=default, metadata={"option": (validator, doc, env, run, run_default)})


@dataclass(frozen=True)
class Settings:
    """Everything a monitor needs, resolved from arguments and environment; each field is one option."""

    host: str = _row(DEFAULT_HOST, HOST, "agent host", (URL_VARIABLE, "DD_AGENT_HOST", "STATSD_HOST"))
    port: int = _row(DEFAULT_PORT, PORT, "agent port", (URL_VARIABLE, "DD_DOGSTATSD_PORT", "STATSD_PORT"))
    #: The Agent's Unix datagram socket; when set, host and port are not used.
    socket_path: Optional[str] = _row(None, SOCKET_PATH, "agent Unix socket, instead of host and port", (URL_VARIABLE,))
    prefix: str = _row(DEFAULT_PREFIX, Prefix(), "metric prefix", ("STATSD_PREFIX",), "LOOPSTAT_PREFIX")
    #: ``(key, value)`` pairs as sent; value "" for a tag without value.
    tags: Tuple[Tuple[str, str], ...] = _row(
        (), TagList(TAG_VARIABLES), "tags on every line", (*TAG_VARIABLES, "DD_TAGS", "DATADOG_TAGS"), "LOOPSTAT_TAGS"
    )
    interval: float = _row(DEFAULT_INTERVAL, Seconds(MIN_INTERVAL), "sample interval", run="LOOPSTAT_INTERVAL")
    flavor: Literal["dogstatsd", "statsd"] = _row("dogstatsd", Choice(*FLAVORS), "line format", run="LOOPSTAT_FLAVOR")
    #: Seconds without progress that make a stall; None: no stall watchdog.
    stall_threshold: Optional[float] = _row(
        DEFAULT_STALL_THRESHOLD,
        Seconds(MIN_STALL_THRESHOLD, off=True),
        "stall threshold: seconds without progress",
        run="LOOPSTAT_STALL_THRESHOLD",
    )
    utilization: bool = _row(True, Switch(), "utilization gauge", run="LOOPSTAT_UTILIZATION")
    executor: bool = _row(True, Switch(), "executor gauges", run="LOOPSTAT_EXECUTOR")
    gc: bool = _row(False, Switch(), "GC pause and collection metrics", run="LOOPSTAT_GC")
    profile: bool = _row(False, Switch(), "where busy time goes: `P.busy` by code site", run="LOOPSTAT_PROFILE")
    #: Tag each process with ``worker:<slot>``, a number its siblings under one parent do not hold.
    worker_tag: bool = _row(
        False,
        Switch(),
        "`worker:<slot>` tag telling apart the processes of a pre-fork server (dogstatsd only)",
        run="LOOPSTAT_WORKER_TAG",
        run_default=True,
    )
    #: None: on for loops without a Python selector (uvloop), where it is cheap and utilization needs it.
    blocking_calls: Optional[bool] = _row(
        None,
        Switch(auto=True),
        "blocking calls on the loop's thread counted and named (auto: on uvloop)",
        run="LOOPSTAT_BLOCKING_CALLS",
    )
    #: Send lag, stall and blocking-time samples as distributions (``d``), not timings (``ms``).
    distributions: bool = _row(
        False,
        Switch(),
        "lag, stall and blocking-time samples as distributions `d`, for percentiles across every pod (dogstatsd only)",
        run="LOOPSTAT_DISTRIBUTIONS",
    )
    #: Append the container ID (``|c:``) and external environment (``|e:``) that tell the Agent the sender's pod.
    origin_detection: bool = _row(
        True,
        Switch(letters=True),
        "origin detection: the container ID (from `/proc/self/cgroup`) and the external environment in "
        "DogStatsD's `c:` and `e:` fields, after the tags (dogstatsd only; off for servers other than the "
        "Datadog Agent, such as Etsy statsd)",
        (ORIGIN_VARIABLE,),
    )
    external_env: Optional[str] = _row(
        None,
        ExternalEnv(),
        "external environment, sent in the `e:` field with origin detection (Datadog's admission controller sets it)",
        ("DD_EXTERNAL_ENV",),
    )

    @property
    def address(self) -> str:
        """Where metrics go, for messages: ``host:port``, ``[v6]:port`` or ``unix:///path``."""
        if self.socket_path is not None:
            return self.socket_path if "://" in self.socket_path else f"unix://{self.socket_path}"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


#: The table, in install()'s order.
OPTIONS: Tuple[Option, ...] = tuple(Option(f.name, f.default, *f.metadata["option"]) for f in fields(Settings))
BY_NAME = {option.name: option for option in OPTIONS}
#: Every variable install() reads.
VARIABLES: Tuple[str, ...] = tuple(dict.fromkeys(name for option in OPTIONS for name in option.env))
#: Every variable loopstat-run reads for install()'s arguments.
RUN_VARIABLES: Tuple[str, ...] = tuple(option.run for option in OPTIONS if option.run)
