"""The scrape provider's parsing and window arithmetic, on the predictor's real exposition."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from gate.providers.prometheus import PrometheusProvider
from gate.providers.scrape import parse_counters, window_delta
from predictor.metrics import PredictorMetrics, mark_traffic, unmark_traffic


def record(metrics: PredictorMetrics, requests: int, errors: int, latency_s: float) -> None:
    for i in range(requests):
        failed = i < errors
        metrics.observe_request(
            "grpc" if i % 2 else "rest-v2",
            "500" if failed else "200",
            "server_error" if failed else "success",
            latency_s,
        )
    metrics.count_predictions(["setosa", "versicolor", "virginica"], [requests, 0, 1])


def exposition(
    requests: int, errors: int, latency_s: float, version: str = "2", generated: int = 0
) -> str:
    registry = CollectorRegistry()
    metrics = PredictorMetrics("iris", version, "canary", registry)
    metrics.initialize(["setosa", "versicolor", "virginica"])
    record(metrics, requests, errors, latency_s)
    token = mark_traffic(b"generated")  # what the REST middleware and gRPC handler do
    try:
        record(metrics, generated, 0, 0.2)
    finally:
        unmark_traffic(token)
    return generate_latest(registry).decode()


def live(text: str) -> dict[str, Any]:
    counts: dict[str, Any] = parse_counters(text, "iris", "2")["live"]
    return counts


def test_parse_and_delta() -> None:
    before = live(exposition(10, 1, 0.002))
    after = live(exposition(110, 6, 0.002))
    window = window_delta(after, before)
    assert (window.requests, window.server_errors) == (100, 5)
    assert window.class_counts == {"setosa": 100, "versicolor": 0, "virginica": 0}
    assert window.p99_s is not None and 0.001 < window.p99_s <= 0.002


def test_other_versions_are_ignored() -> None:
    assert live(exposition(10, 0, 0.01, version="1"))["requests"] == 0


def test_a_restarted_predictor_counts_from_zero() -> None:
    before = live(exposition(500, 0, 0.002))
    after = live(exposition(40, 0, 0.002))
    assert window_delta(after, before).requests == 40


def test_generated_requests_are_counted_apart() -> None:
    kinds = parse_counters(exposition(30, 3, 0.002, generated=12), "iris", "2")
    assert (kinds["live"]["requests"], kinds["live"]["server_errors"]) == (30, 3)
    generated = window_delta(kinds["generated"], None)
    assert (generated.requests, generated.server_errors) == (12, 0)
    assert generated.class_counts["setosa"] == 12
    assert generated.p99_s is not None and generated.p99_s > 0.15  # their own latency
    assert window_delta(kinds["live"], None).p99_s is not None
    assert window_delta(kinds["live"], None).p99_s < 0.01  # type: ignore[operator]


def test_a_baseline_from_before_the_split_counts_as_live() -> None:
    from gate.providers.scrape import of_kind

    old = {"requests": 5.0, "server_errors": 0.0, "buckets": {}, "classes": {}}
    assert of_kind(old, "live") is old and of_kind(old, "generated") is None


def test_prometheus_queries_are_overridable_but_names_are_checked() -> None:
    provider = PrometheusProvider(
        "http://prom:9090", {"latency_buckets": "my_buckets{v='$version'}"}
    )
    assert provider.queries["latency_buckets"] == "my_buckets{v='$version'}"
    assert "increase(irisgate_predictor_requests_total" in provider.queries["requests"]
    with pytest.raises(ValueError, match="unknown prometheus query names"):
        PrometheusProvider("http://prom:9090", {"p95": "x"})


def test_the_gate_and_the_predictor_agree_on_the_generated_marker() -> None:
    from gate.providers import base
    from predictor import metrics

    assert (base.TRAFFIC_HEADER, base.GENERATED) == (metrics.TRAFFIC_HEADER, metrics.GENERATED)
