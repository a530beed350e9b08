"""Variants: the monitors compared, each attached to a running loop and detached again.

Peers are imported only by the variant that uses them, so that a process
running one variant carries no other's modules (this matters for RSS).
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import inspect
import logging
import threading
import time
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Dict, List, Optional

from bench import loops
from bench.udp import UdpTimer
from loopstat.probes.selector_clock import SelectorClock

VARIANTS = ("none", "naive", "loopstat", "loopstat-all", "aiodebug", "loopmon")
# Only the instruction counts compare these: loopstat's sampler with one probe at a time, and a
# peer that is a loop of its own rather than something attached to a running loop.
PROBE_VARIANTS = ("loopstat-lag", "loopstat-utilization", "loopstat-stalls", "loopstat-gc", "loopstat-blocking")
LOOP_VARIANTS = ("monitored-ioloop",)
# Only the instruction counts too: the baseline in a process that has started a thread (see ``Threaded``).
BASELINE_VARIANTS = ("threaded",)

DESCRIPTIONS = {
    "none": "no monitor (the baseline)",
    "threaded": "no monitor, in a process that has started and ended one thread (as one that used an executor has)",
    "naive": "a hand-written monitor: sleep overshoot with loop.time() every 0.25 s, len(all_tasks()); sends nothing",
    "loopstat": "loopstat.install() with its defaults",
    "loopstat-all": "loopstat.install() with every probe on (gc=True and blocking_calls=True too)",
    "aiodebug": "aiodebug 2.3: monitor_loop_lag.enable() with a UDP StatsD client, log_slow_callbacks.enable(0.05)",
    "loopmon": "loopmon 1.0: loopmon.create() (0.1 s) with a callback sending lag and tasks over UDP",
    "loopstat-lag": "loopstat's sampler alone (lag, tasks, cpu): every optional probe off",
    "loopstat-utilization": "the sampler and the utilization probe (selector clock on stdlib loops; uvloop: CPU time)",
    "loopstat-stalls": "the sampler and the stall watchdog (heartbeat and watchdog thread) at its default threshold",
    "loopstat-gc": "the sampler and the GC pause probe (a gc.callbacks hook)",
    "loopstat-blocking": "the sampler and the blocking-call probe (stand-ins for time.sleep, socket methods, …)",
    "monitored-ioloop": "monitored-ioloop 0.0.23: its loop subclass (every call_soon callback wrapped and timed), "
    "the callback keeping the latest state",
}

# install() arguments of loopstat's probe variants, on top of all probes off.
PROBES_OFF: Dict[str, Any] = {
    "stall_threshold": None,
    "utilization": False,
    "executor": False,
    "gc": False,
    "blocking_calls": False,
}
PROBE_ARGS_OF = {
    "loopstat": {},
    "loopstat-all": {
        "stall_threshold": 0.1,
        "utilization": True,
        "executor": True,
        "gc": True,
        "blocking_calls": True,
    },
    "loopstat-lag": PROBES_OFF,
    "loopstat-utilization": {**PROBES_OFF, "utilization": True},
    "loopstat-stalls": {**PROBES_OFF, "stall_threshold": 0.1},
    "loopstat-gc": {**PROBES_OFF, "gc": True},
    "loopstat-blocking": {**PROBES_OFF, "blocking_calls": True},
}

# install() arguments that older versions of loopstat lack (stall watchdog, utilization, executor, GC).
PROBE_ARGS = ("stall_threshold", "utilization", "executor", "gc")

NAIVE_INTERVAL = 0.25
# Every interval and threshold of a parked variant: nothing time-driven fires during a run,
# while its timers still sit in the loop's heap (which costs every iteration, as it would natively).
PARKED_SECONDS = 3600.0
SLOW_CALLBACK_SECONDS = 0.05


@dataclass(frozen=True)
class Sample:
    """A reading a monitor kept in memory rather than sent.

    ``at`` is ``time.perf_counter()`` when the reading was made, ``ms`` its value,
    ``where`` the code it names, if any.
    """

    at: float
    ms: float
    kind: str
    where: Optional[str] = None


def quiet_loopstat() -> None:
    """Keep loopstat's stall warnings out of the bench's output (they are read from the monitor)."""
    logging.getLogger("loopstat").addHandler(logging.NullHandler())


def probe_args_missing() -> List[str]:
    """The probe arguments the installed ``loopstat.install()`` does not take (an older loopstat)."""
    import loopstat

    params = inspect.signature(loopstat.install).parameters
    return [name for name in PROBE_ARGS if name not in params]


def missing(name: str) -> Optional[str]:
    """Why variant ``name`` cannot run here, or None when it can."""
    known = VARIANTS + BASELINE_VARIANTS + PROBE_VARIANTS + LOOP_VARIANTS
    if name not in known:
        return f"unknown variant {name!r} (known: {', '.join(known)})"
    if name == "loopstat-all" or name in PROBE_VARIANTS:
        absent = probe_args_missing()
        if absent:
            return f"loopstat.install() has no {', '.join(absent)} argument (an older loopstat)"
    package = {"aiodebug": "aiodebug", "loopmon": "loopmon", "monitored-ioloop": "monitored_ioloop"}.get(name)
    if package is not None and importlib.util.find_spec(package) is None:
        hint = "pip install monitored-ioloop" if name == "monitored-ioloop" else "pip install -e '.[bench]'"
        return f"{package} is not installed ({hint})"
    return None


class Attached:
    """A monitor running on the current loop; the base class is the ``none`` variant."""

    name = "none"

    def __init__(self) -> None:
        #: Readings kept in memory (naive's lag, aiodebug's slow callbacks, loopstat's stalls).
        self.samples: List[Sample] = []

    def poll(self) -> None:
        """Collect readings that are only visible by looking (loopstat's latest stall)."""

    async def detach(self) -> None:
        """Stop the monitor and undo anything it patched."""


class Threaded(Attached):
    """No monitor, after one thread has come and gone: the share of a watchdog thread that is not its work.

    Once a process has started a thread, glibc treats it as multi-threaded for good: every
    system call that is a cancellation point (the loop's ``epoll_wait``) costs a few dozen
    instructions more, whatever the threads do. A process that has used an executor or
    resolved a name on uvloop pays it with or without loopstat.
    """

    name = "threaded"

    def __init__(self) -> None:
        super().__init__()
        thread = threading.Thread(target=lambda: None, name="bench-threaded")
        thread.start()
        thread.join()


class Naive(Attached):
    """The usual hand-written monitor: a coroutine measuring sleep overshoot with ``loop.time()``."""

    name = "naive"

    def __init__(self, interval: float = NAIVE_INTERVAL) -> None:
        super().__init__()
        self.tasks = 0
        self._task = asyncio.get_running_loop().create_task(self._run(interval))

    async def _run(self, interval: float) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await asyncio.sleep(interval)
            lag = loop.time() - started - interval
            self.tasks = len(asyncio.all_tasks())
            self.samples.append(Sample(time.perf_counter(), lag * 1000.0, "lag"))

    async def detach(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


class Loopstat(Attached):
    """``loopstat.install()``: its defaults, every probe on, or the sampler with one probe (``PROBE_ARGS_OF``)."""

    def __init__(self, port: int, parked: bool = False, name: str = "loopstat") -> None:
        import loopstat

        super().__init__()
        self.name = name
        kwargs: Dict[str, Any] = dict(PROBE_ARGS_OF[name])
        if parked:
            kwargs["interval"] = PARKED_SECONDS
            if kwargs.get("stall_threshold", 0.0) is not None:
                kwargs["stall_threshold"] = PARKED_SECONDS
        self.monitor = loopstat.install(host="127.0.0.1", port=port, **kwargs)
        self._stalls = 0
        #: The stall watchdog's threshold in ms, or None without a watchdog.
        self.stall_threshold_ms: Optional[float] = None
        params = inspect.signature(loopstat.install).parameters
        if "stall_threshold" in params:
            threshold = kwargs.get("stall_threshold", params["stall_threshold"].default)
            self.stall_threshold_ms = None if threshold is None else float(threshold) * 1000.0
        #: Whether its blocking-call probe is on (by default, where no selector can be timed: uvloop).
        on = self.monitor.settings.blocking_calls
        self.counts_blocking_calls = SelectorClock.selector_of(asyncio.get_running_loop()) is None if on is None else on

    def poll(self) -> None:
        stalls = getattr(self.monitor, "stalls", 0)
        if stalls == self._stalls:
            return
        self._stalls = stalls
        stall = getattr(self.monitor, "last_stall", None)
        if stall is not None:
            ended = stall.ended - (time.time() - time.perf_counter())
            self.samples.append(Sample(ended, stall.duration, "stall", stall.location))

    async def detach(self) -> None:
        self.poll()
        await self.monitor.stop()


class Aiodebug(Attached):
    """aiodebug's lag monitor sending to UDP, and its slow-callback hook (a patch of ``Handle._run``)."""

    name = "aiodebug"

    def __init__(self, port: int, parked: bool = False) -> None:
        import aiodebug.log_slow_callbacks  # type: ignore[import-untyped]
        import aiodebug.monitor_loop_lag  # type: ignore[import-untyped]

        super().__init__()
        self.client = UdpTimer(port)
        self._loop = asyncio.get_running_loop()
        # aiodebug never undoes its patch; the bench does, so the next variant runs unpatched.
        self._saved_run = asyncio.events.Handle._run
        interval = PARKED_SECONDS if parked else NAIVE_INTERVAL  # aiodebug's default is 0.25 s too
        aiodebug.monitor_loop_lag.enable(self.client, interval, loop=self._loop)
        # Same text as its default log line ("Executing %s took %.3f seconds"), kept instead of logged.
        aiodebug.log_slow_callbacks.enable(SLOW_CALLBACK_SECONDS, on_slow_callback=self._slow)

    def _slow(self, handle: str, seconds: float) -> None:
        self.samples.append(Sample(time.perf_counter(), seconds * 1000.0, "slow callback", handle))

    async def detach(self) -> None:
        asyncio.events.Handle._run = self._saved_run  # type: ignore[method-assign]
        lag = [t for t in asyncio.all_tasks(self._loop) if t.get_name() == "aiodebug.monitor_loop_lag"]
        for task in lag:
            task.cancel()
        await asyncio.gather(*lag, return_exceptions=True)
        self.client.close()


class Loopmon(Attached):
    """loopmon's sleep monitor at its default interval, its callback sending lag and tasks over UDP."""

    name = "loopmon"

    def __init__(self, port: int, parked: bool = False) -> None:
        import loopmon

        super().__init__()
        self.client = UdpTimer(port)
        self._before = set(asyncio.all_tasks())
        if parked:
            self.monitor = loopmon.create(interval=PARKED_SECONDS, callbacks=[self._send])
        else:
            self.monitor = loopmon.create(callbacks=[self._send])
        self._tasks = asyncio.all_tasks() - self._before

    async def _send(self, lag: float, tasks: int, data_at: object) -> None:
        self.client.timing("loopmon.lag", lag * 1000.0)
        self.client.gauge("loopmon.tasks", tasks)

    async def detach(self) -> None:
        await self.monitor.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.client.close()


# (port, parked) -> the variant attached to the running loop
FACTORIES: Dict[str, Callable[[int, bool], Attached]] = {
    "none": lambda port, parked: Attached(),
    "threaded": lambda port, parked: Threaded(),
    "naive": lambda port, parked: Naive(PARKED_SECONDS if parked else NAIVE_INTERVAL),
    **{name: partial(Loopstat, name=name) for name in PROBE_ARGS_OF},
    "aiodebug": Aiodebug,
    "loopmon": Loopmon,
    # The loop itself is the monitor (see ``new_loop``).
    "monitored-ioloop": lambda port, parked: Attached(),
}


def attach(name: str, port: int, parked: bool = False) -> Attached:
    """Start variant ``name`` on the running loop, sending (if it sends) to 127.0.0.1:``port``.

    ``parked``: with every interval and threshold at ``PARKED_SECONDS``, so that
    only its per-operation cost shows.
    """
    reason = missing(name)
    if reason is not None:
        raise RuntimeError(f"variant {name}: {reason}")
    return FACTORIES[name](port, parked)


def new_loop(name: str, loop: str) -> asyncio.AbstractEventLoop:
    """A new loop of kind ``loop`` for variant ``name``: the variant's own loop class if it has one."""
    if name != "monitored-ioloop":
        return loops.new_loop(loop)
    latest: List[object] = [None]

    def keep(state: object) -> None:
        latest[0] = state

    # Imported by name: it is not in the bench extra, so the type checker may not have it.
    kind = "uvloop" if loop == "uvloop" else "asyncio"
    module: Any = importlib.import_module(f"monitored_ioloop.monitored_{kind}")
    made: asyncio.AbstractEventLoop = getattr(module, f"monitored_{kind}_loop_factory")(keep)()
    return made
