"""dashboards/grafana-graphite.json rendered by a real graphite-web: every target, with its
variables filled in every way Grafana fills them, returns data, and the right data.

loopstat (two tagged services and one plain-StatsD app) -> Etsy statsd 0.9.0
(``legacyNamespace: false``) -> carbon-cache with tags -> graphite-web 1.1 ``/render``.
A second statsd with ``legacyNamespace: true`` checks the substitution the dashboard
documents for that setting. Targets are read from the JSON, never listed here, so a
panel added without data fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import re
import shlex
import subprocess
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Tuple, Union

import pytest

import loopstat
from loopstat import Flavor, _cgroup
from tests.conftest import ENV_VARS
from tests.provision import command
from tests.servers import LOOPBACK, Carbon, GraphiteWeb, running_graphite, running_statsd
from tests.test_dashboards import graphite_paths, statsd_path

pytestmark = pytest.mark.e2e  # whole programs and real servers: run once, in the e2e env

DASHBOARD = Path(__file__).parent.parent / "dashboards" / "grafana-graphite.json"
INTERVAL = 0.05
#: A block well over the stall threshold, so that a loaded machine's hiccups are not stalls too.
STALL_THRESHOLD = 0.25
BLOCK_SECONDS = 0.6
#: The least a 600 ms block shows as, in lag (sampler overshoot) and as a stall.
BLOCK_MS = 500.0
ALL = "$__all"

#: Metrics only sent under a cgroup CPU limit, which the apps here run without (tests/test_throttled.py has one).
UNLIMITED = {"throttled"} if _cgroup.throttling() is None else set()

#: A variable's current value, as Grafana holds it: one value, several, or All.
Value = Union[str, Sequence[str]]


@dataclass(frozen=True)
class App:
    """An application run: what it really did, to compare the dashboard with."""

    flavor: Flavor
    tags: Mapping[str, str] = field(default_factory=dict)
    #: Tasks alive on its loop while monitored: its main task and the ones it started.
    tasks: int = 1
    #: Blocks of BLOCK_SECONDS on its loop, each one stall.
    blocks: int = 1
    #: Explicit gc.collect() calls while monitored.
    collections: int = 1


APPS = (
    # Two workers of one pre-fork service, each with its worker tag (worker_tag=True sends it).
    App("dogstatsd", {"service": "shop", "env": "prod", "worker": "0"}, tasks=4, blocks=1),
    App("dogstatsd", {"service": "shop", "env": "prod", "worker": "1"}, tasks=3, blocks=1),
    # An env that starts with the other's: an unanchored regex would match both.
    App("dogstatsd", {"service": "web", "env": "prod-canary"}, tasks=7, blocks=2),
    App("statsd", tasks=5, blocks=1),
)
LEGACY_APPS = (App("dogstatsd", {"service": "shop", "env": "prod", "worker": "0"}, tasks=3), App("statsd", tasks=2))


# --- Grafana's variable substitution, as documented -------------------------------------------

# $name, ${name} and ${name:format} (Grafana's templateSrv; [[name]] is deprecated and unused here).
_VARIABLE = re.compile(r"\$(\w+)|\$\{(\w+)(?::(\w+))?\}")
_REGEX_SPECIAL = re.compile(r"[\\^$*+?.()|\[\]{}/]")


def _format(values: Sequence[str], fmt: str) -> str:
    """One variable's values in a Grafana format: glob (Graphite's default), regex or pipe."""
    if fmt == "regex":
        escaped = [_REGEX_SPECIAL.sub(lambda m: "\\" + m.group(0), value) for value in values]
        return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"
    if fmt == "pipe":
        return "|".join(values)
    # glob, and any unknown format (Grafana falls back to glob)
    return values[0] if len(values) == 1 else "{" + ",".join(values) + "}"


def interpolate(text: str, variables: Mapping[str, Mapping[str, Any]], current: Mapping[str, Value]) -> str:
    """Fill ``text`` as Grafana's Graphite data source does before sending it.

    A custom all value (``allValue``) goes in as it is, unformatted; a value
    without a format gets Graphite's default, glob.
    """

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in current:
            return match.group(0)  # not a variable: Grafana leaves it
        value, fmt = current[name], match.group(3) or "glob"
        if value == ALL:
            all_value = variables[name].get("allValue")
            assert all_value, f"variable {name}: All without a custom all value is not modelled here"
            return str(all_value)
        return _format([value] if isinstance(value, str) else list(value), fmt)

    return _VARIABLE.sub(replace, text)


def test_interpolation_follows_grafanas_documented_formats() -> None:
    variables = {"s": {"allValue": ".+"}, "p": {}}
    assert interpolate("a.$p.${p}", variables, {"p": "x.y"}) == "a.x.y.x.y"
    assert interpolate("$s", variables, {"s": ["test1", "test2"]}) == "{test1,test2}"
    assert interpolate("${s:glob}", variables, {"s": ["test1"]}) == "test1"
    assert interpolate("${s:regex}", variables, {"s": ["test1.", "test2"]}) == "(test1\\.|test2)"
    assert interpolate("${s:regex}", variables, {"s": ["a+b"]}) == "a\\+b"
    assert interpolate("${s:pipe}", variables, {"s": ["test1.", "test2"]}) == "test1.|test2"
    assert interpolate("^${s:regex}$", variables, {"s": ALL}) == "^.+$"
    assert interpolate("$other ${s:bogus}", variables, {"s": ["a", "b"]}) == "$other {a,b}"


# --- the pipeline ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """Apps that sent under one prefix, and when they started."""

    prefix: str
    apps: Tuple[App, ...]
    started: float


async def _application(port: int, prefix: str, app: App) -> None:
    release = asyncio.Event()
    workers = [asyncio.ensure_future(release.wait()) for _ in range(app.tasks - 1)]
    loop = asyncio.get_running_loop()
    try:
        async with loopstat.install(
            LOOPBACK,
            port,
            prefix=prefix,
            tags=dict(app.tags) or None,
            flavor=app.flavor,
            interval=INTERVAL,
            stall_threshold=STALL_THRESHOLD,
            gc=True,
            blocking_calls=True,
            profile=True,
        ) as monitor:
            # The truth the dashboard must show: this task and its workers (loopstat's own is not counted).
            mine = {asyncio.current_task(), *workers}
            assert len(mine) == app.tasks
            assert mine <= asyncio.all_tasks()
            await loop.run_in_executor(None, time.sleep, 0.01)  # the default executor now exists
            for _ in range(app.collections):
                # The youngest generation only: a full collection of this process's heap (every app at once,
                # on a loaded machine) can outlast the stall threshold, a stall of its own beside the blocks.
                gc.collect(0)
            for _ in range(app.blocks):
                await asyncio.sleep(0.3)
                time.sleep(BLOCK_SECONDS)  # a blocking call on the loop
            before = monitor.top()
            spin_until = time.perf_counter() + 0.1  # code of its own, for the profile to find
            while time.perf_counter() < spin_until:
                pass
            # The end of a profile window (40 samples, however long a loaded machine makes them),
            # then a statsd flush (every second).
            deadline = loop.time() + 60
            while (not monitor.top() or monitor.top() == before) and loop.time() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            await asyncio.sleep(1.5)
            assert monitor.stalls == app.blocks, "the monitor saw one stall per block, no other"
    finally:
        release.set()
        await asyncio.gather(*workers)


def _run_app(port: int, prefix: str, app: App) -> None:
    loop = asyncio.new_event_loop()  # the stdlib loop: utilization is sent there
    try:
        loop.run_until_complete(_application(port, prefix, app))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        loop.close()


def _run_all(runs: Sequence[Tuple[int, str, App]]) -> None:
    """Every app in a thread of its own, all at once."""
    with pytest.MonkeyPatch.context() as env:
        for name in ENV_VARS:  # no DD_TAGS etc. from outside
            env.delenv(name, raising=False)
        with ThreadPoolExecutor(len(runs)) as pool:
            for future in [pool.submit(_run_app, *run) for run in runs]:
                future.result()


def _indexed(carbon: Carbon, web: GraphiteWeb) -> Tuple[int, int]:
    """Series stored by carbon, and series graphite-web's tag index knows."""
    stored = sum(1 for _ in carbon.data_dir.rglob("*.wsp"))
    return stored, len(web.get("/tags/findSeries", [("expr", "name=~.+")]))


def _wait_indexed(carbon: Carbon, web: GraphiteWeb, timeout: float = 30.0) -> None:
    """Until every series carbon stored is in graphite-web's tag index, and no new one came for a second.

    Carbon creates files and posts them to graphite-web asynchronously.
    """
    deadline = time.monotonic() + timeout
    previous = (-1, -1)
    while True:
        now = _indexed(carbon, web)
        if now == previous and now[0] == now[1] > 0:
            return
        assert time.monotonic() < deadline, f"stored vs indexed series still {now} after {timeout}s"
        previous = now
        time.sleep(1.0)


@dataclass
class Pipeline:
    web: GraphiteWeb
    current: Run
    legacy: Run


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    dashboard = json.loads(DASHBOARD.read_text())
    percentiles = [int(option["value"]) for option in _variables(dashboard)["percentile"]["options"]]
    root = tmp_path_factory.mktemp("graphite")
    with contextlib.ExitStack() as servers:
        carbon, web = servers.enter_context(running_graphite(root))
        statsd = servers.enter_context(
            running_statsd(root / "statsd", graphite_port=carbon.line_port, percent_threshold=percentiles)
        )
        legacy_statsd = servers.enter_context(
            running_statsd(
                root / "statsd-legacy",
                graphite_port=carbon.line_port,
                percent_threshold=percentiles,
                legacy_namespace=True,
            )
        )
        tag = uuid.uuid4().hex[:8]
        current = f"render.t{tag}.current"
        legacy = f"render.t{tag}.legacy"
        started = time.time()
        _run_all(
            [(statsd.port, current, app) for app in APPS] + [(legacy_statsd.port, legacy, app) for app in LEGACY_APPS]
        )
        time.sleep(1.5)  # the last flush reaches carbon
        _wait_indexed(carbon, web)
        yield Pipeline(web, Run(current, APPS, started), Run(legacy, LEGACY_APPS, started))


# --- the dashboard ----------------------------------------------------------------------------


def _variables(dashboard: Mapping[str, Any]) -> Dict[str, Mapping[str, Any]]:
    return {variable["name"]: variable for variable in dashboard["templating"]["list"]}


def _targets(dashboard: Mapping[str, Any]) -> List[Tuple[str, str]]:
    """(panel title, target) for every target of every panel, rows' collapsed panels included."""
    found: List[Tuple[str, str]] = []
    for panel in dashboard["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            found += [(inner["title"], target["target"]) for target in inner.get("targets", [])]
    return found


def _tag_variables(dashboard: Mapping[str, Any]) -> List[str]:
    """The variables whose options come from a tag's values (``tag_values(service)``)."""
    return [
        name
        for name, variable in _variables(dashboard).items()
        if str(variable.get("query", "")).startswith("tag_values(")
    ]


def _selections(web: GraphiteWeb, dashboard: Mapping[str, Any]) -> List[Dict[str, Value]]:
    """Each tag variable set to each of its values, to all of them and to All, the others at All."""
    selections: List[Dict[str, Value]] = []
    names = _tag_variables(dashboard)
    for name in names:
        tag = re.fullmatch(r"tag_values\((\w+)\)", _variables(dashboard)[name]["query"])
        assert tag, _variables(dashboard)[name]["query"]
        # What Grafana's Graphite data source asks for tag_values(tag).
        values = sorted(web.get("/tags/autoComplete/values", [("tag", tag.group(1))]))
        assert len(values) >= 2, f"{name}: {values}"
        others: Dict[str, Value] = {other: ALL for other in names if other != name}
        selections += [{name: [value], **others} for value in values]
        selections += [{name: values, **others}]
    selections.append({name: ALL for name in names})
    return selections


def _selected(apps: Sequence[App], selection: Mapping[str, Value]) -> List[App]:
    """The tagged apps a selection of tag values covers."""

    def chosen(app: App, tag: str) -> bool:
        value = selection[tag]
        return tag in app.tags if value == ALL else app.tags.get(tag) in value

    return [app for app in apps if app.tags and all(chosen(app, tag) for tag in selection)]


def _metric(target: str) -> Tuple[str, str]:
    """(metric, statistic) a target reads: ("lag", "upper"), ("tasks", ""), ("stalls", "count")."""
    paths = set(graphite_paths(target))
    assert len(paths) == 1, f"one metric per target: {target}"
    name, _, statistic = statsd_path(paths.pop())
    return name, statistic


@dataclass(frozen=True)
class Query:
    """One target as Grafana sends it, and the apps whose data it must show."""

    panel: str
    target: str
    apps: Tuple[App, ...]
    sent: str


def _queries(web: GraphiteWeb, dashboard: Mapping[str, Any], run: Run) -> List[Query]:
    variables = _variables(dashboard)
    percentiles = [option["value"] for option in variables["percentile"]["options"]]
    selections = _selections(web, dashboard)
    plain = tuple(app for app in run.apps if not app.tags)
    queries: List[Query] = []
    for panel, target in _targets(dashboard):
        tagged = "seriesByTag(" in target
        for selection in selections if tagged else [{}]:
            apps = tuple(_selected(run.apps, selection)) if tagged else plain
            if "'worker=~.+'" in target:  # a breakdown by worker shows the apps that have one only
                apps = tuple(app for app in apps if "worker" in app.tags)
            if not apps:
                continue  # a selection that matches no app: no data is right
            for percentile in percentiles if re.search(r"\$\{?percentile\b", target) else percentiles[:1]:
                current: Dict[str, Value] = {"prefix": run.prefix, "percentile": percentile, **selection}
                queries.append(Query(panel, target, apps, interpolate(target, variables, current)))
    return queries


#: What Grafana asks graphite-web for besides the target: a time range, and about one point per pixel.
Window = Mapping[str, str]


def _window(run: Run) -> Window:
    """The apps' run, one point per second: nothing consolidated."""
    return {"from": str(int(run.started) - 5), "until": str(int(time.time()) + 5), "maxDataPoints": "1000"}


#: The last hour in a narrow panel: graphite-web merges 30 one-second points into each point it returns.
LAST_HOUR: Window = {"from": "-1h", "until": "now", "maxDataPoints": "120"}


def _render(web: GraphiteWeb, query: Query, window: Window) -> List[Dict[str, Any]]:
    return web.render(query.sent, **window)


def _values(series: Mapping[str, Any]) -> List[float]:
    return [value for value, _ in series["datapoints"] if value is not None]


def _check(query: Query, result: List[Dict[str, Any]]) -> None:
    """Every series has data and shows what the apps it covers did."""
    where = f"{query.panel!r}: {query.sent}"
    metric, statistic = _metric(query.target)
    if metric in UNLIMITED:
        assert result == [], f"{metric} sent without a CPU limit, for {where}"
        return
    assert result, f"no series for {where}"
    services = {app.tags.get("service") for app in query.apps}
    for series in result:
        values = _values(series)
        assert values, f"{series['target']}: only nulls, for {where}"
        tags = series.get("tags", {})
        service, worker = tags.get("service"), tags.get("worker")
        assert service is None or service in services, f"{series['target']} ({service}) is not selected: {where}"
        # A service's line sums or maxes over its workers; a worker's line is that worker's alone.
        apps = [
            app
            for app in query.apps
            if (service is None or app.tags.get("service") == service)
            and (worker is None or app.tags.get("worker") == worker)
        ]
        if "'worker'" in query.target:
            assert worker is not None, f"{series['target']}: a breakdown by worker needs the tag, for {where}"
        what = f"{series['target']} {values} for {where}"
        if metric == "tasks":
            assert max(values) == sum(app.tasks for app in apps), what
        elif metric == "stalls":
            assert sum(values) == sum(app.blocks for app in apps), what
        elif (metric, statistic) in (("lag", "upper"), ("stall", "upper")):
            assert max(values) >= BLOCK_MS, what
        elif metric == "utilization":
            assert all(0 <= value <= 1 for value in values), what
        elif metric == "gc.collections":
            assert sum(values) >= sum(app.collections for app in apps), what
        elif metric == "executor.threads":
            assert max(values) >= len(apps), what
        elif metric == "blocking_calls":
            # time.sleep on the loop, once per block (the executor's sleep is on another thread).
            assert sum(values) == sum(app.blocks for app in apps), what
        elif (metric, statistic) == ("blocking_time", "upper"):
            assert max(values) >= BLOCK_MS, what
        elif metric == "busy":
            assert all(0 < value <= 1 for value in values), what


def _check_all(web: GraphiteWeb, queries: Sequence[Query], window: Window) -> None:
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda query: _render(web, query, window), queries))
    for query, result in zip(queries, results):
        _check(query, result)


def test_every_target_shows_what_the_apps_did_for_every_variable_choice(pipeline: Pipeline) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = _queries(pipeline.web, dashboard, pipeline.current)
    assert {query.target for query in queries} == {target for _, target in _targets(dashboard)}
    _check_all(pipeline.web, queries, _window(pipeline.current))


def test_a_wide_time_range_keeps_the_block_and_the_stall_count(pipeline: Pipeline) -> None:
    # graphite-web averages the points it merges unless told otherwise (consolidateBy):
    # a one-second lag spike or stall count must survive the merge.
    dashboard = json.loads(DASHBOARD.read_text())
    queries = _queries(pipeline.web, dashboard, pipeline.current)
    _check_all(pipeline.web, queries, LAST_HOUR)


def test_the_documented_substitution_serves_statsd_legacy_namespace(pipeline: Pipeline) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert "legacyNamespace: false" in dashboard["description"]
    command_line = re.search(r"sed -E '[^']+' grafana-graphite\.json", dashboard["description"])
    assert command_line, dashboard["description"]
    argv = shlex.split(command_line.group(0))
    argv[0] = command("sed")
    argv[-1] = str(DASHBOARD)
    legacy = json.loads(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)
    assert not [target for _, target in _targets(legacy) if "stats.counters." in target]
    queries = _queries(pipeline.web, legacy, pipeline.legacy)
    assert {query.target for query in queries} == {target for _, target in _targets(legacy)}
    _check_all(pipeline.web, queries, _window(pipeline.legacy))


def test_the_unchanged_dashboard_finds_no_counters_under_legacy_names(pipeline: Pipeline) -> None:
    # Without this, the substitution test would pass however the counters were named.
    dashboard = json.loads(DASHBOARD.read_text())
    counters = [query for query in _queries(pipeline.web, dashboard, pipeline.legacy) if "counters" in query.target]
    assert counters
    for query in counters:
        assert all(not _values(series) for series in _render(pipeline.web, query, _window(pipeline.legacy))), query.sent
