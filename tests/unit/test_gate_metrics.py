"""The scrape provider's parsing and window arithmetic, on the predictor's real exposition."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from gate.providers.prometheus import PrometheusProvider
from gate.providers.scrape import parse_counters, window_delta
from predictor.metrics import PredictorMetrics


def exposition(requests: int, errors: int, latency_s: float, version: str = "2") -> str:
    registry = CollectorRegistry()
    metrics = PredictorMetrics("iris", version, "canary", registry)
    for i in range(requests):
        failed = i < errors
        metrics.observe_request(
            "grpc" if i % 2 else "rest-v2",
            "500" if failed else "200",
            "server_error" if failed else "success",
            latency_s,
        )
    metrics.count_predictions(["setosa", "versicolor", "virginica"], [requests, 0, 1])
    return generate_latest(registry).decode()


def test_parse_and_delta() -> None:
    before = parse_counters(exposition(10, 1, 0.002), "iris", "2")
    after = parse_counters(exposition(110, 6, 0.002), "iris", "2")
    window = window_delta(after, before)
    assert (window.requests, window.server_errors) == (100, 5)
    assert window.class_counts == {"setosa": 100, "virginica": 0}
    assert window.p99_s is not None and 0.001 < window.p99_s <= 0.002


def test_other_versions_are_ignored() -> None:
    assert parse_counters(exposition(10, 0, 0.01, version="1"), "iris", "2")["requests"] == 0


def test_a_restarted_predictor_counts_from_zero() -> None:
    before = parse_counters(exposition(500, 0, 0.002), "iris", "2")
    after = parse_counters(exposition(40, 0, 0.002), "iris", "2")
    assert window_delta(after, before).requests == 40


def test_prometheus_queries_are_overridable_but_names_are_checked() -> None:
    provider = PrometheusProvider(
        "http://prom:9090", {"latency_buckets": "my_buckets{v='$version'}"}
    )
    assert provider.queries["latency_buckets"] == "my_buckets{v='$version'}"
    assert "increase(irisgate_predictor_requests_total" in provider.queries["requests"]
    with pytest.raises(ValueError, match="unknown prometheus query names"):
        PrometheusProvider("http://prom:9090", {"p95": "x"})
