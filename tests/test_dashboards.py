"""dashboards/: every query names a metric loopstat really sends, both dashboards combine services by one rule,
every Grafana panel has its unit, and the Datadog one loads into the API client (rendering: test_grafana_render)."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any, Callable, Iterator, List, Set, Tuple

import pytest
from datadog_api_client import ApiClient, Configuration
from datadog_api_client.model_utils import OpenApiModel, UnparsedObject
from datadog_api_client.v1.model.dashboard import Dashboard

from loopstat._metrics import ACROSS, DISTRIBUTED, METRICS, UNITS

pytestmark = pytest.mark.e2e  # whole programs and real servers: run once, in the e2e env

DASHBOARDS = Path(__file__).parent.parent / "dashboards"
PREFIX = "loopstat"  # the dashboards are written for the default prefix
# What the Datadog Agent makes of one DogStatsD timing (histogram aggregates, by default).
DATADOG_TIMING_SUFFIXES = ("avg", "max", "median", "95percentile", "count")
# What Etsy statsd writes to Graphite for one timer (with percentThreshold 90, 95 and 99).
STATSD_TIMER_STATS = ("upper", "lower", "mean", "count", "sum", "upper_90", "upper_95", "upper_99", "mean_90")

Metric = Tuple[str, str]  # name without the prefix, StatsD type
# Datadog's percentiles of a distribution: over every sample of every pod.
PERCENTILES = ("p50", "p75", "p90", "p95", "p99")
# The metric of each name loopstat sends as a distribution with distributions=True.
DISTRIBUTION_OF = {name: metric for metric, name in DISTRIBUTED.items()}


@pytest.fixture(scope="module")
def sent() -> Set[Metric]:
    """Every (name, type) loopstat sends: the catalogue, which test_metrics checks against a real monitor."""
    return {(metric.name, metric.type) for metric in METRICS}


def load_datadog() -> Any:
    text = (DASHBOARDS / "datadog.json").read_text()
    client = ApiClient(Configuration())  # type: ignore[no-untyped-call]
    return client.deserialize(text, (Dashboard,), True)


def unparsed(value: Any, path: str = "dashboard") -> Iterator[str]:
    """Paths of every part the client could not parse (it marks them instead of raising)."""
    if isinstance(value, UnparsedObject) or (isinstance(value, OpenApiModel) and value._unparsed):
        yield path
    if isinstance(value, OpenApiModel):
        for key, item in value._data_store.items():
            yield from unparsed(item, f"{path}.{key}")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from unparsed(item, f"{path}[{index}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from unparsed(item, f"{path}.{key}")


def test_datadog_dashboard_loads_into_the_api_client_with_nothing_unparsed() -> None:
    dashboard = load_datadog()
    assert isinstance(dashboard, Dashboard)
    assert list(unparsed(dashboard)) == []
    assert len(dashboard.widgets) >= 7


def test_an_unknown_widget_is_caught_as_unparsed(tmp_path: Path) -> None:
    # Without this, a check that never finds anything would pass for the wrong reason.
    data = json.loads((DASHBOARDS / "datadog.json").read_text())
    broken = copy.deepcopy(data)
    broken["widgets"][1]["definition"]["type"] = "no_such_widget"
    client = ApiClient(Configuration())  # type: ignore[no-untyped-call]
    dashboard = client.deserialize(json.dumps(broken), (Dashboard,), True)
    assert list(unparsed(dashboard)) != []


def test_datadog_dashboard_has_service_and_env_template_variables_used_by_every_query() -> None:
    data = json.loads((DASHBOARDS / "datadog.json").read_text())
    assert [(v["name"], v["prefix"]) for v in data["template_variables"]] == [("service", "service"), ("env", "env")]
    queries = datadog_queries(data)
    assert queries
    assert all("{$service,$env}" in query for query in queries)


def datadog_queries(data: Any) -> List[str]:
    found: List[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if key in ("query", "q") and isinstance(item, str):
                    found.append(item)
                else:
                    walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(data)
    return found


def datadog_metric(query: str) -> Tuple[str, str, str]:
    """(metric, how it is aggregated, the form it reads: "timing", "distribution" or "") of one Datadog query.

    ``p95:loopstat.lag.distribution{…}`` is ``("lag", "p95", "distribution")``;
    ``max:loopstat.lag.95percentile{…}`` is ``("lag", "max", "timing")``.
    """
    (how, name) = re.findall(rf"^(\w+):{PREFIX}\.([\w.]+)\{{", query)[0]
    base, _, suffix = name.rpartition(".")
    if name in DISTRIBUTION_OF and (how in PERCENTILES or how in ("max", "avg", "min")):
        timing_form = suffix in DATADOG_TIMING_SUFFIXES and base in DISTRIBUTED
        if not timing_form:
            return DISTRIBUTION_OF[name], how, "distribution"
    if suffix in DATADOG_TIMING_SUFFIXES and any(m.name == base and m.type == "ms" for m in METRICS):
        return base, how, "timing"
    return name, how, ""


def test_every_datadog_query_names_a_metric_loopstat_sends(sent: Set[Metric]) -> None:
    data = json.loads((DASHBOARDS / "datadog.json").read_text())
    for query in datadog_queries(data):
        name, how, form = datadog_metric(query)
        if form:
            assert (name, "ms") in sent, query
        else:
            assert how not in PERCENTILES, query
            assert (name, "g") in sent or (name, "c") in sent, query


def test_every_timing_reads_as_a_distribution_across_pods_and_as_the_agent_s_per_host_timing() -> None:
    data = json.loads((DASHBOARDS / "datadog.json").read_text())
    for widget in data["widgets"]:
        forms = {datadog_metric(query)[::2] for query in datadog_queries(widget)}
        for metric, form in forms:
            if form:
                assert {(metric, "distribution"), (metric, "timing")} <= forms, (widget["definition"]["title"], metric)
    lag = {datadog_metric(query)[:2] for query in datadog_queries(data) if "lag.distribution" in query}
    assert ("lag", "p95") in lag, "lag's p95 over every pod"


def test_datadog_dashboard_shows_every_metric_loopstat_sends(sent: Set[Metric]) -> None:
    data = json.loads((DASHBOARDS / "datadog.json").read_text())
    text = " ".join(datadog_queries(data))
    for name, _ in sent:
        assert re.search(rf":{PREFIX}\.{re.escape(name)}[.{{]", text), f"{name} is not on the dashboard"


def graphite_paths(target: str) -> List[str]:
    return re.findall(r"(?:name=)?(stats(?:_counts)?\.[\w.$*]+)", target)


def graphite_targets() -> List[str]:
    data = json.loads((DASHBOARDS / "grafana-graphite.json").read_text())
    return [target["target"] for panel in data["panels"] for target in panel.get("targets", [])]


# Where Etsy statsd writes each StatsD type, with graphite.legacyNamespace false and true.
STATSD_HEADS = (("stats.gauges.", "g"), ("stats.timers.", "ms"), ("stats.counters.", "c"), ("stats_counts.", "c"))
STATSD_COUNTER_STATS = ("count", "rate")


def statsd_path(path: str) -> Tuple[str, str, str]:
    """(name, StatsD type, statistic) of a path Etsy statsd writes for loopstat.

    ``("lag", "ms", "upper")``, ``("tasks", "g", "")``, ``("stalls", "c", "count")``
    (``stats.counters.P.stalls.count``, or ``stats_counts.P.stalls`` in the legacy namespace).
    """
    # With flavor "statsd" a line's own tag ends the name (``blocking_calls.time_sleep``): a wildcard there.
    path = path.replace("$prefix", PREFIX).replace("$percentile", "95").replace(".*", "")
    for head, kind in STATSD_HEADS:
        if path.startswith(head + PREFIX + "."):
            name = path[len(head + PREFIX) + 1 :]
            if kind == "g":
                return name, kind, ""
            if head == "stats_counts.":
                return name, kind, "count"
            name, _, stat = name.rpartition(".")
            assert stat in (STATSD_TIMER_STATS if kind == "ms" else STATSD_COUNTER_STATS), path
            return name, kind, stat
    raise AssertionError(f"not a path statsd writes for loopstat: {path}")


def statsd_metric(path: str) -> Metric:
    """The (name, type) Etsy statsd wrote ``path`` for."""
    name, kind, _ = statsd_path(path)
    return name, kind


def test_every_graphite_path_is_one_statsd_writes_for_a_metric_loopstat_sends(sent: Set[Metric]) -> None:
    paths = [path for target in graphite_targets() for path in graphite_paths(target)]
    assert paths
    for path in paths:
        assert statsd_metric(path) in sent, path


def test_grafana_dashboard_covers_both_flavors_with_the_same_metrics() -> None:
    plain: Set[Metric] = set()
    tagged: Set[Metric] = set()
    for target in graphite_targets():
        for path in graphite_paths(target):
            (tagged if "seriesByTag" in target else plain).add(statsd_metric(path))
    assert plain == tagged
    assert ("lag", "ms") in plain
    assert ("utilization", "g") in plain


def test_grafana_dashboard_has_prefix_percentile_service_and_env_variables() -> None:
    data = json.loads((DASHBOARDS / "grafana-graphite.json").read_text())
    names = [variable["name"] for variable in data["templating"]["list"]]
    assert names == ["datasource", "prefix", "percentile", "service", "env"]


#: (metric, how it combines services and workers, what it is broken down by: "", "service" or "service,worker")
Combination = Tuple[str, str, str]
#: The breakdowns the dashboards have: none (a total), by service, by worker process within a service,
#: and stalls by cause (a tag of a fixed set of values).
BREAKDOWNS = ("", "service", "service,worker", "cause")


def datadog_combinations() -> Set[Combination]:
    data = json.loads((DASHBOARDS / "datadog.json").read_text())
    found: Set[Combination] = set()
    for query in datadog_queries(data):
        match = re.fullmatch(rf"(\w+):{PREFIX}\.([\w.]+)\{{[^}}]*\}}(?: by \{{([\w,]+)\}})?(\.as_count\(\))?", query)
        assert match, query
        by = match.group(3) or ""
        assert by in BREAKDOWNS, query
        name, how, form = datadog_metric(query)
        assert by != "cause" or name == "stalls", query
        if how in PERCENTILES:
            # A percentile over every pod's samples combines services by itself: only where the worst counts.
            assert (form, ACROSS[name]) == ("distribution", "max"), query
            continue
        found.add((name, how, by))
    return found


def grafana_combinations() -> Set[Combination]:
    """The same for the tagged targets: sumSeries/maxSeries for a total, groupByTags(…, 'service'[, 'worker']) else."""
    found: Set[Combination] = set()
    for target in graphite_targets():
        if "seriesByTag(" not in target:
            continue
        total = re.search(r"\b(\w+)Series\(seriesByTag\(", target)
        broken_down = re.search(r"groupByTags\(seriesByTag\(.*\), '(\w+)', '(service|cause)'(, 'worker')?\)", target)
        assert bool(total) != bool(broken_down), f"a total or a breakdown by service or cause: {target}"
        by = "" if total else "service,worker" if broken_down.group(3) else broken_down.group(2)  # type: ignore[union-attr]
        if by == "service,worker":
            # Only the series of workers: one without the tag (worker_tag off) is its service's whole.
            assert "'worker=~.+'" in target, target
        (path,) = set(graphite_paths(target))
        how = (total or broken_down).group(1)  # type: ignore[union-attr]
        found.add((statsd_path(path)[0], how, by))
    return found


def test_every_metric_loopstat_sends_has_a_rule_for_combining_services(sent: Set[Metric]) -> None:
    assert set(ACROSS) == {name for name, _ in sent}


@pytest.mark.parametrize("combinations", [datadog_combinations, grafana_combinations])
def test_every_metric_is_totalled_across_services_and_workers_by_its_rule(
    combinations: Callable[[], Set[Combination]], sent: Set[Metric]
) -> None:
    found = combinations()
    assert {metric for metric, _, _ in found} == {name for name, _ in sent}
    for metric, how, _ in found:
        assert how == ACROSS[metric], (metric, how)
    assert {metric for metric, _, by in found if not by} == set(ACROSS), "every metric has a total"


def test_both_dashboards_break_the_same_metrics_down_by_service_and_by_worker() -> None:
    datadog = {(metric, by) for metric, _, by in datadog_combinations() if by}
    assert datadog == {(metric, by) for metric, _, by in grafana_combinations() if by}
    assert {(name, "service") for name in ("lag", "utilization", "tasks", "stalls")} <= datadog
    assert ("stalls", "cause") in datadog
    assert {("lag", "service,worker"), ("tasks", "service,worker")} <= datadog


#: The Grafana unit of a panel by what it shows: timings ("ms" type) in ms, counts "short".
# Grafana's name for each unit of the metric catalogue.
GRAFANA_UNITS = {"ratio": "percentunit", "ms": "ms", "count": "short"}


def test_every_grafana_panel_has_the_unit_of_what_it_shows() -> None:
    data = json.loads((DASHBOARDS / "grafana-graphite.json").read_text())
    panels = [panel for panel in data["panels"] if panel["type"] != "row"]
    assert panels
    for panel in panels:
        shown = {statsd_path(path) for target in panel["targets"] for path in graphite_paths(target["target"])}
        units = {GRAFANA_UNITS["ms" if kind == "ms" else UNITS[name]] for name, kind, _ in shown}
        assert units == {panel["fieldConfig"]["defaults"].get("unit")}, panel["title"]


# The Datadog unit of a formula by what its queries read, as a canonical unit or a label.
DATADOG_UNITS = {"ms": ("canonical_unit", "millisecond"), "ratio": ("canonical_unit", "percent")}


def test_every_datadog_graph_has_the_unit_of_what_it_shows() -> None:
    data = json.loads((DASHBOARDS / "datadog.json").read_text())
    graphs = [widget["definition"] for widget in data["widgets"] if widget["definition"]["type"] != "note"]
    assert graphs
    for graph in graphs:
        for request in graph["requests"]:
            metrics = {query["name"]: datadog_metric(query["query"])[0] for query in request["queries"]}
            for formula in request["formulas"]:
                used = {metrics[name] for name in re.findall(r"\w+", formula["formula"]) if name in metrics}
                units = {UNITS[name] for name in used}
                assert len(units) == 1, (graph["title"], formula)
                unit = formula.get("number_format", {}).get("unit", {})
                (expected,) = units
                if expected == "count":
                    assert unit.get("type") == "custom_unit_label", (graph["title"], formula)
                    assert unit.get("label"), (graph["title"], formula)
                else:
                    assert (unit.get("type"), unit.get("unit_name")) == DATADOG_UNITS[expected], (
                        graph["title"],
                        formula,
                    )
                # A ratio (0 to 1) is shown in percent: multiplied by 100.
                assert (expected == "ratio") == formula["formula"].endswith("* 100"), formula


def grafana_overlaps(panels: List[Any]) -> List[Tuple[str, str]]:
    """Pairs of panel titles whose gridPos rectangles share a cell (Grafana would stack one on the other)."""
    found: List[Tuple[str, str]] = []
    for index, first in enumerate(panels):
        a = first["gridPos"]
        for second in panels[index + 1 :]:
            b = second["gridPos"]
            apart = (
                a["x"] + a["w"] <= b["x"]
                or b["x"] + b["w"] <= a["x"]
                or a["y"] + a["h"] <= b["y"]
                or b["y"] + b["h"] <= a["y"]
            )
            if not apart:
                found.append((first["title"], second["title"]))
    return found


def test_no_two_grafana_panels_overlap() -> None:
    panels = json.loads((DASHBOARDS / "grafana-graphite.json").read_text())["panels"]
    assert panels
    for panel in panels:
        grid = panel["gridPos"]
        assert min(grid["x"], grid["y"]) >= 0, panel["title"]
        assert min(grid["w"], grid["h"]) > 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, f"wider than Grafana's 24 columns: {panel['title']}"
    assert grafana_overlaps(panels) == []


def test_an_overlap_is_found_where_rectangles_share_a_cell_and_not_where_they_only_touch() -> None:
    # Without this, a check that never finds anything would pass for the wrong reason.
    def panel(title: str, x: int, y: int, w: int, h: int) -> Any:
        return {"title": title, "gridPos": {"x": x, "y": y, "w": w, "h": h}}

    assert grafana_overlaps([panel("a", 0, 0, 8, 8), panel("b", 7, 7, 8, 8)]) == [("a", "b")]
    assert grafana_overlaps([panel("a", 0, 0, 8, 8), panel("b", 8, 0, 8, 8), panel("c", 0, 8, 8, 8)]) == []
