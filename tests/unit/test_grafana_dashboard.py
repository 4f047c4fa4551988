"""k8s/grafana/irisgate-dashboard.json queries only metrics the code exports.

The exported series are read from the code's own collectors, never from a list kept here:
the gate's :class:`GateMetrics` and the predictor's :class:`PredictorMetrics`, each in a
fresh registry, and the histograms KServe's ``kserve.metrics`` registers on the default
registry (which the predictor's ``/metrics`` serves). Every PromQL expression in the
dashboard (panels, panels of collapsed rows, template variables, annotations) is parsed
for the metric names it selects, and each must be one of those series.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Enum,
    Gauge,
    Histogram,
    Info,
    Summary,
)
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import Metric

from gate.observability import GateMetrics
from predictor.metrics import PredictorMetrics
from tests.helpers import REPO_ROOT

DASHBOARD = REPO_ROOT / "k8s" / "grafana" / "irisgate-dashboard.json"
DATASOURCE_VARIABLE = "DS_PROMETHEUS"
DATASOURCE_UIDS = {f"${{{DATASOURCE_VARIABLE}}}", f"${DATASOURCE_VARIABLE}"}

Dashboard = dict[str, Any]


# --- what the code exports -------------------------------------------------------------

# The series prometheus_client writes for a family of each type (a counter ``x`` is the
# series ``x_total``, a histogram ``x`` is ``x_bucket``, ``x_sum`` and ``x_count`` ...).
# A labelled metric has no samples until a child exists, so the names come from the
# family's type; test_the_suffixes_are_prometheus_clients checks them against real samples.
SERIES_SUFFIXES: dict[str, tuple[str, ...]] = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
    "summary": ("_count", "_sum", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "unknown": ("",),
}


def series_names(families: Iterable[Metric]) -> set[str]:
    names: set[str] = set()
    for family in families:
        names |= {family.name + suffix for suffix in SERIES_SUFFIXES[family.type]}
        names |= {sample.name for sample in family.samples}
    return names


def gate_families() -> list[Metric]:
    registry = CollectorRegistry()
    GateMetrics(registry)
    return list(registry.collect())


def predictor_families() -> list[Metric]:
    registry = CollectorRegistry()
    PredictorMetrics("iris", "1", "stable", registry).initialize(["setosa"])
    return list(registry.collect())


def kserve_families() -> list[Metric]:
    """KServe's module-level histograms (``request_predict_seconds`` ...), registered on the
    default registry when ``kserve.metrics`` is imported: the predictor serves that registry
    (or, with several processes, the same series merged from the multiprocess files)."""
    import kserve.metrics

    collectors = [m for m in vars(kserve.metrics).values() if isinstance(m, MetricWrapperBase)]
    assert collectors, "kserve.metrics defines no Prometheus metrics any more"
    families = [family for collector in collectors for family in collector.collect()]
    registered = {family.name for family in REGISTRY.collect()}
    unregistered = {family.name for family in families} - registered
    assert not unregistered, f"not on the default registry: {sorted(unregistered)}"
    return families


@cache
def exported_series() -> frozenset[str]:
    return frozenset(series_names([*gate_families(), *predictor_families(), *kserve_families()]))


# --- PromQL: the metric names an expression selects ------------------------------------

# PromQL's functions and aggregation operators: an identifier followed by "(" must be one.
PROMQL_FUNCTIONS = frozenset(
    {
        # aggregation operators
        "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
        "bottomk", "topk", "quantile", "limitk", "limit_ratio",
        # functions
        "abs", "absent", "absent_over_time", "acos", "acosh", "asin", "asinh", "atan",
        "atanh", "avg_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min",
        "cos", "cosh", "count_over_time", "day_of_month", "day_of_week", "day_of_year",
        "days_in_month", "deg", "delta", "deriv", "double_exponential_smoothing", "exp",
        "floor", "histogram_avg", "histogram_count", "histogram_fraction",
        "histogram_quantile", "histogram_stddev", "histogram_stdvar", "histogram_sum",
        "holt_winters", "hour", "idelta", "increase", "info", "irate", "label_join",
        "label_replace", "last_over_time", "ln", "log10", "log2", "mad_over_time",
        "max_over_time", "min_over_time", "minute", "month", "pi", "predict_linear",
        "present_over_time", "quantile_over_time", "rad", "rate", "resets", "round",
        "scalar", "sgn", "sin", "sinh", "sort", "sort_by_label", "sort_by_label_desc",
        "sort_desc", "sqrt", "stddev_over_time", "stdvar_over_time", "sum_over_time",
        "tan", "tanh", "time", "timestamp", "vector", "year",
        # the @ modifier's
        "start", "end",
    }
)  # fmt: skip
# Keywords and literals that are not metric names (binary operators, modifiers, numbers).
PROMQL_KEYWORDS = frozenset(
    {
        "and", "or", "unless", "atan2", "by", "without", "on", "ignoring",
        "group_left", "group_right", "bool", "offset", "inf", "nan",
    }
)  # fmt: skip

_STRING = r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`'
_STRINGS = re.compile(_STRING)
_NAME_MATCHER = re.compile(rf"__name__\s*(=~|!=|!~|=)\s*({_STRING})")
_COMMENTS = re.compile(r"#[^\n]*")
# Grafana's variables: $var, ${var}, ${var:format}, [[var]] ($__rate_interval, $__range ...)
_VARIABLES = re.compile(r"\$\{[^}]*\}|\$\w+|\[\[[^\]]*\]\]")
_LABEL_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\[\]]*\]")  # [5m], subqueries [1h:1m]
_LABEL_LISTS = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.IGNORECASE
)
# an identifier not inside a number or a duration (1e3, 0x1f, 5m, 1h30m)
_IDENTIFIER = re.compile(r"(?<![\w.:])([A-Za-z_:][\w:]*)(\s*\()?")


def parse_promql(expr: str) -> tuple[set[str], set[str]]:
    """The metric names an expression selects, and the functions it calls."""
    metrics: set[str] = set()
    for operator, literal in _NAME_MATCHER.findall(expr):
        if operator != "=":
            raise ValueError(f"cannot check a metric name matched by {operator}: {expr!r}")
        metrics.add(literal[1:-1])
    text = _STRINGS.sub(" ", expr)  # label values, label_replace's arguments ...
    text = _COMMENTS.sub(" ", text)
    text = _VARIABLES.sub(" ", text)
    text = _LABEL_MATCHERS.sub(" ", text)
    text = _RANGES.sub(" ", text)
    text = _LABEL_LISTS.sub(" ", text)
    functions: set[str] = set()
    for name, call in _IDENTIFIER.findall(text):
        if name.lower() in PROMQL_KEYWORDS:  # "and (" is no call
            continue
        (functions if call else metrics).add(name)
    return metrics, functions


_LABEL_VALUES = re.compile(
    r"label_values\(\s*(?:(?P<expr>.+)\s*,\s*)?(?P<label>[A-Za-z_]\w*)\s*\)", re.DOTALL
)
_QUERY_RESULT = re.compile(r"query_result\((?P<expr>.+)\)", re.DOTALL)


def variable_promql(query: str) -> list[str]:
    """The PromQL inside a Prometheus template variable's query (Grafana's own functions)."""
    query = query.strip()
    if match := _LABEL_VALUES.fullmatch(query):
        return [match["expr"].strip()] if match["expr"] else []
    if match := _QUERY_RESULT.fullmatch(query):
        return [match["expr"]]
    if re.fullmatch(r"label_names\(\s*\)", query):
        return []
    raise ValueError(f"cannot check the variable query {query!r}")


# --- the dashboard -----------------------------------------------------------------------


def load_dashboard(path: Path = DASHBOARD) -> Dashboard:
    dashboard: Dashboard = json.loads(path.read_text())
    return dashboard


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, with the panels a collapsed row holds."""
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def variable_query(variable: dict[str, Any]) -> str:
    query = variable.get("query", "")
    return str(query.get("query", "") if isinstance(query, dict) else query)


def dashboard_queries(dashboard: Dashboard) -> list[tuple[str, str]]:
    """(where, PromQL) for every expression the dashboard sends to Prometheus."""
    queries = [
        (f"panel {panel['id']} ({panel.get('title')}) {target.get('refId')}", target["expr"])
        for panel in all_panels(dashboard.get("panels", []))
        for target in panel.get("targets", [])
        if "expr" in target
    ]
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            texts = {variable_query(variable), variable.get("definition", "")} - {""}
            for text in sorted(texts):
                queries += [(f"variable {variable['name']}", e) for e in variable_promql(text)]
    for annotation in dashboard.get("annotations", {}).get("list", []):
        if annotation.get("expr"):
            queries.append((f"annotation {annotation.get('name')}", annotation["expr"]))
    return queries


def metric_problems(dashboard: Dashboard, exported: Iterable[str]) -> list[str]:
    known = set(exported)
    problems = []
    for where, expr in dashboard_queries(dashboard):
        try:
            metrics, functions = parse_promql(expr)
        except ValueError as error:
            problems.append(f"{where}: {error}")
            continue
        if not metrics:
            problems.append(f"{where}: selects no metric: {expr!r}")
        problems += [
            f"{where}: metric {name} is not exported by the code"
            for name in sorted(metrics - known)
        ]
        problems += [
            f"{where}: {name}() is not a PromQL function"
            for name in sorted(functions - PROMQL_FUNCTIONS)
        ]
    return problems


def references_datasource_variable(datasource: Any) -> bool:
    if isinstance(datasource, dict):
        return datasource.get("uid") in DATASOURCE_UIDS
    return datasource in DATASOURCE_UIDS


def structure_problems(dashboard: Dashboard) -> list[str]:
    problems = []
    panels = list(all_panels(dashboard.get("panels", [])))
    ids = [panel["id"] for panel in panels if "id" in panel]
    problems += [
        f"panel id {i} is used more than once" for i in sorted(set(ids)) if ids.count(i) > 1
    ]
    problems += [f"panel {panel.get('title')!r} has no id" for panel in panels if "id" not in panel]
    for panel in panels:
        where = f"panel {panel.get('id')} ({panel.get('title')})"
        if panel.get("type") == "row":
            if panel.get("panels") and not panel.get("collapsed"):
                problems.append(f"{where}: an open row's panels belong to the top level")
            continue
        if not references_datasource_variable(panel.get("datasource")):
            problems.append(f"{where}: datasource does not reference ${DATASOURCE_VARIABLE}")
        if not panel.get("targets"):
            problems.append(f"{where}: no queries")
        for target in panel.get("targets", []):
            if "datasource" in target and not references_datasource_variable(target["datasource"]):
                problems.append(f"{where} {target.get('refId')}: datasource is not the variable")
    variables = {v.get("name"): v for v in dashboard.get("templating", {}).get("list", [])}
    source = variables.get(DATASOURCE_VARIABLE, {})
    if source.get("type") != "datasource" or source.get("query") != "prometheus":
        problems.append(f"no Prometheus datasource variable {DATASOURCE_VARIABLE}")
    for name, variable in variables.items():
        if variable.get("type") == "query" and not references_datasource_variable(
            variable.get("datasource")
        ):
            problems.append(f"variable {name}: datasource does not reference the variable")
    if not variable_query(variables.get("model", {})).startswith("label_values("):
        problems.append("no model variable from a label_values() query")
    return problems


# --- the real dashboard ------------------------------------------------------------------


def test_the_dashboard_is_json_with_unique_ids_and_the_datasource_variable() -> None:
    dashboard = load_dashboard()
    assert dashboard["schemaVersion"] >= 39
    assert dashboard["uid"] and dashboard["title"]
    assert structure_problems(dashboard) == []


def test_every_expression_names_a_metric_the_code_exports() -> None:
    dashboard = load_dashboard()
    assert len(dashboard_queries(dashboard)) >= 10
    assert metric_problems(dashboard, exported_series()) == []


def test_a_made_up_metric_in_the_dashboard_is_reported() -> None:
    dashboard = copy.deepcopy(load_dashboard())
    panel = copy.deepcopy(
        next(p for p in all_panels(dashboard["panels"]) if p.get("type") == "timeseries")
    )
    panel["id"] = max(p["id"] for p in all_panels(dashboard["panels"])) + 1
    panel["targets"] = [{"refId": "A", "expr": 'sum(rate(irisgate_made_up_total{model="x"}[5m]))'}]
    row = next(p for p in dashboard["panels"] if p.get("collapsed"))
    row["panels"].append(panel)  # inside a collapsed row
    assert metric_problems(dashboard, exported_series()) == [
        f"panel {panel['id']} ({panel['title']}) A: metric irisgate_made_up_total is not "
        "exported by the code"
    ]


def test_a_duplicate_id_or_a_fixed_datasource_is_reported() -> None:
    dashboard = copy.deepcopy(load_dashboard())
    first, second = [p for p in dashboard["panels"] if p["type"] != "row"][:2]
    second["id"] = first["id"]
    second["datasource"] = {"type": "prometheus", "uid": "prometheus-prod"}
    assert structure_problems(dashboard) == [
        f"panel id {first['id']} is used more than once",
        f"panel {first['id']} ({second['title']}): datasource does not reference $DS_PROMETHEUS",
    ]


# --- the parser and the suffixes ---------------------------------------------------------


def test_a_made_up_metric_is_reported_missing() -> None:
    assert parse_promql("rate(not_a_metric_total[5m])") == ({"not_a_metric_total"}, {"rate"})
    problems = metric_problems(
        {
            "panels": [
                {
                    "id": 1,
                    "title": "t",
                    "targets": [{"refId": "A", "expr": "rate(not_a_metric_total[5m])"}],
                }
            ]
        },
        exported_series(),
    )
    assert problems == ["panel 1 (t) A: metric not_a_metric_total is not exported by the code"]


@pytest.mark.parametrize(
    ("expr", "metrics"),
    [
        ("rate(not_a_metric_total[5m])", {"not_a_metric_total"}),
        (
            'sum by (model, le) (rate(a_bucket{model=~"$model", x="b_total"}[$__rate_interval]))',
            {"a_bucket"},
        ),
        ("a / ignoring (class_name) group_left sum without(pod) (b) > bool 1e3", {"a", "b"}),
        ("a and on(x) b unless c or ON (y) d", {"a", "b", "c", "d"}),
        ("a and (b == 1) or (c)", {"a", "b", "c"}),
        ("sum(a offset 1h30m) * 0x1F - .5 + Inf - NaN", {"a"}),
        ("max_over_time(rate(a[5m])[1h:1m]) @ end()", {"a"}),
        ('label_replace(up, "dst", "$1", "src", "(.*)")', {"up"}),
        ('{__name__="a_total", job="x"}', {"a_total"}),
        ("sum(a) or vector(0) # a comment naming nothing_total", {"a"}),
        ("topk(${k}, a:recorded:rate5m)", {"a:recorded:rate5m"}),
        ("sum by (x) (a) / sum(b) by (x)", {"a", "b"}),
    ],
)
def test_the_parser_finds_only_metric_names(expr: str, metrics: set[str]) -> None:
    assert parse_promql(expr)[0] == metrics


def test_the_parser_reports_function_names() -> None:
    assert parse_promql("histogram_quantile(0.9, sum by (le) (rate(a[5m])))")[1] == {
        "histogram_quantile",
        "sum",
        "rate",
    }
    problems = metric_problems(
        {"panels": [{"id": 1, "title": "t", "targets": [{"refId": "A", "expr": "rat(up[5m])"}]}]},
        {"up"},
    )
    assert problems == ["panel 1 (t) A: rat() is not a PromQL function"]
    with pytest.raises(ValueError, match="cannot check"):
        parse_promql('{__name__=~"irisgate_.*"}')


@pytest.mark.parametrize(
    ("query", "exprs"),
    [
        ('label_values(m{namespace=~"$namespace"}, model)', ['m{namespace=~"$namespace"}']),
        ("label_values(rate(m[5m]) , pod)", ["rate(m[5m])"]),
        ("label_values(namespace)", []),
        ("query_result(topk(5, m))", ["topk(5, m)"]),
        ("label_names()", []),
    ],
)
def test_variable_queries(query: str, exprs: list[str]) -> None:
    assert variable_promql(query) == exprs


def test_the_suffixes_are_prometheus_clients() -> None:
    registry = CollectorRegistry()
    Counter("c", "c", ["a"], registry=registry).labels("x").inc()
    Gauge("g", "g", ["a"], registry=registry).labels("x").set(1)
    Histogram("h", "h", ["a"], registry=registry).labels("x").observe(1)
    Summary("s", "s", ["a"], registry=registry).labels("x").observe(1)
    Info("i", "i", registry=registry).info({"a": "x"})
    Enum("e", "e", states=["a", "b"], registry=registry)
    for family in registry.collect():
        samples = {sample.name for sample in family.samples}
        expected = series_names([Metric(family.name, "", family.type)])
        assert samples <= expected
        assert {n for n in expected if not n.endswith("_created")} <= samples, family.type
