"""Variants: the monitors compared, each attached to a running loop and detached again.

Peers are imported only by the variant that uses them, so that a process
running one variant carries no other's modules (this matters for RSS).
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

from bench.udp import UdpTimer

VARIANTS = ("none", "naive", "loopstat", "loopstat-all", "aiodebug", "loopmon")

DESCRIPTIONS = {
    "none": "no monitor (the baseline)",
    "naive": "the seed article's: sleep overshoot with loop.time() every 0.25 s, len(all_tasks()); sends nothing",
    "loopstat": "loopstat.install() with its defaults",
    "loopstat-all": "loopstat.install() with every probe on (gc=True too)",
    "aiodebug": "aiodebug 2.3: monitor_loop_lag.enable() with a UDP StatsD client, log_slow_callbacks.enable(0.05)",
    "loopmon": "loopmon 1.0: loopmon.create() (0.1 s) with a callback sending lag and tasks over UDP",
}

# install() arguments that arrive with issue 4 (stall watchdog, utilization, executor, GC).
PROBE_ARGS = ("stall_threshold", "utilization", "executor", "gc")

NAIVE_INTERVAL = 0.25
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


def probe_args_missing() -> List[str]:
    """The issue-4 arguments the installed ``loopstat.install()`` does not take yet."""
    import loopstat

    params = inspect.signature(loopstat.install).parameters
    return [name for name in PROBE_ARGS if name not in params]


def missing(name: str) -> Optional[str]:
    """Why variant ``name`` cannot run here, or None when it can."""
    if name not in VARIANTS:
        return f"unknown variant {name!r} (known: {', '.join(VARIANTS)})"
    if name == "loopstat-all":
        absent = probe_args_missing()
        if absent:
            return f"loopstat.install() has no {', '.join(absent)} argument yet (issue 4 not landed)"
    for package in {"aiodebug": "aiodebug", "loopmon": "loopmon"}.get(name, "").split():
        if importlib.util.find_spec(package) is None:
            return f"{package} is not installed (pip install -e '.[bench]')"
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


class Naive(Attached):
    """The seed article's monitor: a coroutine measuring sleep overshoot with ``loop.time()``."""

    name = "naive"

    def __init__(self) -> None:
        super().__init__()
        self.tasks = 0
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await asyncio.sleep(NAIVE_INTERVAL)
            lag = loop.time() - started - NAIVE_INTERVAL
            self.tasks = len(asyncio.all_tasks())
            self.samples.append(Sample(time.perf_counter(), lag * 1000.0, "lag"))

    async def detach(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


class Loopstat(Attached):
    """``loopstat.install()``, with its defaults or with every probe on."""

    def __init__(self, port: int, every_probe: bool) -> None:
        import loopstat

        super().__init__()
        self.name = "loopstat-all" if every_probe else "loopstat"
        kwargs: Dict[str, Any] = {}
        if every_probe:
            kwargs = {"stall_threshold": 0.1, "utilization": True, "executor": True, "gc": True}
        self.monitor = loopstat.install(host="127.0.0.1", port=port, **kwargs)
        self._stalls = 0
        #: The stall watchdog's threshold in ms, or None without a watchdog.
        self.stall_threshold_ms: Optional[float] = None
        params = inspect.signature(loopstat.install).parameters
        if "stall_threshold" in params:
            threshold = kwargs.get("stall_threshold", params["stall_threshold"].default)
            self.stall_threshold_ms = None if threshold is None else float(threshold) * 1000.0

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

    def __init__(self, port: int) -> None:
        import aiodebug.log_slow_callbacks  # type: ignore[import-untyped]
        import aiodebug.monitor_loop_lag  # type: ignore[import-untyped]

        super().__init__()
        self.client = UdpTimer(port)
        self._loop = asyncio.get_running_loop()
        # aiodebug never undoes its patch; the bench does, so the next variant runs unpatched.
        self._saved_run = asyncio.events.Handle._run
        aiodebug.monitor_loop_lag.enable(self.client, loop=self._loop)
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

    def __init__(self, port: int) -> None:
        import loopmon

        super().__init__()
        self.client = UdpTimer(port)
        self._before = set(asyncio.all_tasks())
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


FACTORIES: Dict[str, Callable[[int], Attached]] = {
    "none": lambda port: Attached(),
    "naive": lambda port: Naive(),
    "loopstat": lambda port: Loopstat(port, every_probe=False),
    "loopstat-all": lambda port: Loopstat(port, every_probe=True),
    "aiodebug": Aiodebug,
    "loopmon": Loopmon,
}


def attach(name: str, port: int) -> Attached:
    """Start variant ``name`` on the running loop, sending (if it sends) to 127.0.0.1:``port``."""
    reason = missing(name)
    if reason is not None:
        raise RuntimeError(f"variant {name}: {reason}")
    return FACTORIES[name](port)
