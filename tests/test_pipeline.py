"""The real pipeline: loopstat -> Etsy statsd 0.9.0 -> Graphite carbon-cache -> whisper files.

Four applications, one per flavor and loop, run side by side against one
statsd and one carbon-cache; each test then reads back what carbon stored for
one of them. statsd turns DogStatsD tags into Graphite tagged series
(``name;k=v``), which carbon stores under ``_tagged/`` by the SHA-256 of the name.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import pytest
import uvloop

import loopstat
from loopstat import Flavor
from tests.conftest import ENV_VARS
from tests.servers import (
    LOOPBACK,
    Carbon,
    Point,
    Statsd,
    carbon_python,
    running_carbon,
    running_statsd,
    series_file,
    tagged_series,
)

pytestmark = pytest.mark.e2e  # whole programs and real servers: run once, in the e2e env

LOOPS: Dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}
FLAVORS: Tuple[Flavor, ...] = ("statsd", "dogstatsd")
RUN_IDS: List[Tuple[Flavor, str]] = [(flavor, loop) for flavor in FLAVORS for loop in LOOPS]
TAGS = {"team": "payments", "env": "ci", "version": "1.2"}
#: Tasks each application starts besides its main task, which counts too.
APP_TASKS = 7
INTERVAL = 0.02
#: A block of 300 ms covers a sampler wake-up and overshoots it by at least 300 - 20 ms.
BLOCK_SECONDS = 0.3
BLOCK_MS = 250.0


@dataclass(frozen=True)
class AppRun:
    flavor: Flavor
    loop: str
    prefix: str
    #: The tags statsd received, which carbon stores with every series; none with flavor="statsd".
    tags: Dict[str, str]
    #: Wall-clock time (as statsd and carbon stamp points) when the application stopped sending.
    ended: float

    def series(self, name: str) -> str:
        """The Graphite series ``stats.<kind>.<prefix>.<metric>[.<stat>]`` of this run, tags included."""
        kind, metric = name.split(".", 1)
        return tagged_series(f"stats.{kind}.{self.prefix}.{metric}", self.tags)


async def _until(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {timeout}s"
        await asyncio.sleep(0.005)


async def _application(port: int, prefix: str, flavor: Flavor) -> None:
    """Run APP_TASKS tasks with a monitor, block the loop once, stop."""
    release = asyncio.Event()
    workers = [asyncio.ensure_future(release.wait()) for _ in range(APP_TASKS)]
    try:
        tags = TAGS if flavor == "dogstatsd" else None
        async with loopstat.install(
            LOOPBACK, port, prefix=prefix, tags=tags, flavor=flavor, interval=INTERVAL
        ) as monitor:
            await _until(lambda: monitor.tasks == APP_TASKS + 1, "the monitor sees the app's tasks")
            await asyncio.sleep(0.2)
            time.sleep(BLOCK_SECONDS)  # a blocking call on the loop
            await _until(lambda: monitor.lag >= BLOCK_MS, "the monitor sees the block")
            await asyncio.sleep(0.2)
    finally:
        release.set()
        await asyncio.gather(*workers)


def _run(port: int, flavor: Flavor, loop_name: str) -> AppRun:
    prefix = f"pipeline.t{uuid.uuid4().hex[:8]}.{flavor}.{loop_name}"
    loop = LOOPS[loop_name]()
    try:
        loop.run_until_complete(_application(port, prefix, flavor))
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        loop.close()
    return AppRun(flavor, loop_name, prefix, TAGS if flavor == "dogstatsd" else {}, time.time())


@pytest.fixture(scope="module")
def carbon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Carbon]:
    """One carbon-cache for the whole module."""
    with running_carbon(tmp_path_factory.mktemp("carbon")) as server:
        yield server


@pytest.fixture(scope="module")
def statsd(carbon: Carbon, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Statsd]:
    """One statsd flushing into ``carbon`` every second, for the whole module."""
    with running_statsd(tmp_path_factory.mktemp("statsd"), graphite_port=carbon.line_port) as server:
        yield server


@pytest.fixture(scope="module")
def runs(statsd: Statsd) -> Dict[Tuple[Flavor, str], AppRun]:
    """Every flavor on every loop, each in a thread of its own, all at once, under unique prefixes."""
    with pytest.MonkeyPatch.context() as env:
        for name in ENV_VARS:  # no DD_TAGS etc. from outside
            env.delenv(name, raising=False)
        with ThreadPoolExecutor(len(RUN_IDS)) as pool:
            futures = {key: pool.submit(_run, statsd.port, *key) for key in RUN_IDS}
            return {key: future.result() for key, future in futures.items()}


@pytest.fixture(params=RUN_IDS, ids=[f"{flavor}-{loop}" for flavor, loop in RUN_IDS])
def run(request: pytest.FixtureRequest, runs: Dict[Tuple[Flavor, str], AppRun]) -> AppRun:
    return runs[request.param]


def _has_points(points: List[Point]) -> bool:
    return bool(points)


def test_lag_and_tasks_are_stored_under_the_flavors_graphite_names(run: AppRun, carbon: Carbon) -> None:
    for name in ("gauges.lag", "timers.lag.upper", "gauges.tasks"):
        series = run.series(name)
        assert (";" in series) == (run.flavor == "dogstatsd"), series
        carbon.wait_points(series, _has_points)
    # Tags are all or nothing: a dogstatsd run leaves no untagged series, and the other way round.
    other = tagged_series(f"stats.gauges.{run.prefix}.lag", {} if run.tags else TAGS)
    assert not carbon.file(other).exists()


def test_task_gauge_is_the_number_of_application_tasks(run: AppRun, carbon: Carbon) -> None:
    points = carbon.wait_points(run.series("gauges.tasks"), _has_points)
    # Every sample, and so every flush, saw the app's tasks and its main task, nothing else.
    assert {value for _, value in points} == {APP_TASKS + 1}


def test_a_block_on_the_loop_shows_in_the_lag_timer_upper(run: AppRun, carbon: Carbon) -> None:
    upper = carbon.wait_points(run.series("timers.lag.upper"), lambda p: any(v >= BLOCK_MS for _, v in p))
    # Milliseconds, as StatsD timers are: not seconds, not microseconds.
    assert max(value for _, value in upper) < BLOCK_SECONDS * 1000 + 5000
    # The quiet samples around the block went through the same timer.
    lower = carbon.wait_points(run.series("timers.lag.lower"), _has_points)
    assert min(value for _, value in lower) < BLOCK_MS


def test_tagged_file_names_are_carbons_own(tmp_path: Path) -> None:
    # As statsd passes them on: tags in the order the client sent them.
    received = [
        "stats.gauges.p.lag;team=payments;env=ci;version=1.2",
        "stats.timers.p.lag.upper;b=2;a=1",
        "stats.gauges.p.tasks",
    ]
    ours = [
        series_file(tmp_path, tagged_series("stats.gauges.p.lag", {"team": "payments", "env": "ci", "version": "1.2"})),
        series_file(tmp_path, tagged_series("stats.timers.p.lag.upper", {"b": "2", "a": "1"})),
        series_file(tmp_path, "stats.gauges.p.tasks"),
    ]
    # carbon-cache normalises each name it receives (tags sorted), then encodes it to a path.
    script = (
        "import sys\n"
        "from carbon.util import TaggedSeries\n"
        "for name in sys.argv[1:]:\n"
        "    print(TaggedSeries.encode(TaggedSeries.parse(name).path, sep='/', hash_only=True) + '.wsp')\n"
    )
    carbons = subprocess.run(
        [carbon_python(), "-c", script, *received], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    assert carbons == [str(path.relative_to(tmp_path)) for path in ours]


def test_statsd_counted_no_bad_lines(runs: Dict[Tuple[Flavor, str], AppRun], carbon: Carbon, statsd: Statsd) -> None:
    ended = max(run.ended for run in runs.values())
    # Two flushes after the last application stopped: everything it sent has been counted.
    bad = carbon.wait_points("stats.counters.statsd.bad_lines_seen.count", lambda p: bool(p) and p[-1][0] >= ended + 2)
    assert {value for _, value in bad} == {0.0}
    received = carbon.wait_points("stats.counters.statsd.metrics_received.count", _has_points)
    assert sum(value for _, value in received) > 0
    assert statsd.stats()["messages.bad_lines_seen"] == 0, statsd.output()
