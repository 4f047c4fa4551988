"""Canary analysis, table-driven: every outcome and every check."""

from __future__ import annotations

import pytest

from gate.core.analysis import RoleWindow, WindowMeasurement, analyze, js_divergence
from gate.core.spec import AnalysisSpec, Outcome
from gate.providers.base import histogram_quantile

SPEC = AnalysisSpec(
    min_requests=50,
    max_error_rate=0.01,
    max_error_rate_increase=0.01,
    max_p99_ms=100,
    max_p99_ratio=2.0,
    max_drift=0.1,
)
CLASSES = {"setosa": 40.0, "versicolor": 30.0, "virginica": 30.0}


def window(
    requests: float = 100,
    errors: float = 0,
    p99_ms: float | None = 10,
    classes: dict[str, float] | None = None,
) -> RoleWindow:
    return RoleWindow(
        requests=requests,
        server_errors=errors,
        p99_s=None if p99_ms is None else p99_ms / 1000,
        class_counts=CLASSES if classes is None else classes,
    )


def measure(canary: RoleWindow, stable: RoleWindow | None = None) -> WindowMeasurement:
    return WindowMeasurement(canary=canary, stable=stable or window(), window_s=30)


@pytest.mark.parametrize(
    ("name", "measurement", "outcome", "failed_checks"),
    [
        ("healthy canary", measure(window()), Outcome.PASS, []),
        ("metrics backend down", None, Outcome.ERROR, []),
        ("too little canary traffic", measure(window(requests=49)), Outcome.INCONCLUSIVE, []),
        (
            "errors above the bound",
            measure(window(errors=5)),
            Outcome.FAIL,
            ["error_rate", "error_rate_vs_stable"],
        ),
        (
            "errors as bad as a failing stable still break the absolute bound",
            measure(window(errors=5), window(errors=5)),
            Outcome.FAIL,
            ["error_rate"],
        ),
        (
            "slow canary, absolute",
            measure(window(p99_ms=150), window(p99_ms=100)),
            Outcome.FAIL,
            ["latency_p99"],
        ),
        (
            "slow canary, relative",
            measure(window(p99_ms=30), window(p99_ms=10)),
            Outcome.FAIL,
            ["latency_p99_ratio"],
        ),
        ("no latency data", measure(window(p99_ms=None)), Outcome.FAIL, ["latency_p99"]),
        (
            "drifting predictions",
            measure(window(classes={"setosa": 90.0, "versicolor": 5.0, "virginica": 5.0})),
            Outcome.FAIL,
            ["class_drift"],
        ),
    ],
)
def test_outcomes(
    name: str, measurement: WindowMeasurement | None, outcome: Outcome, failed_checks: list[str]
) -> None:
    verdict = analyze(SPEC, measurement)
    assert verdict.outcome is outcome, verdict.reason
    assert [c.name for c in verdict.checks if not c.passed] == failed_checks


def test_inconclusive_is_never_a_pass_even_when_what_little_there_is_looks_fine() -> None:
    verdict = analyze(SPEC, measure(window(requests=10)))
    assert verdict.outcome is Outcome.INCONCLUSIVE
    assert "needs 50" in verdict.reason


def test_idle_stable_uses_its_last_reference_for_relative_checks() -> None:
    idle = window(requests=0, p99_ms=None, classes={})
    reference = window(p99_ms=5)
    verdict = analyze(SPEC, measure(window(p99_ms=20), idle), stable_reference=reference)
    assert verdict.outcome is Outcome.FAIL
    assert [c.name for c in verdict.checks if not c.passed] == ["latency_p99_ratio"]
    without = analyze(SPEC, measure(window(p99_ms=20), idle))
    assert without.outcome is Outcome.PASS
    assert "too little traffic for relative checks" in without.reason
    assert {c.name for c in without.checks} == {"error_rate", "latency_p99"}


def test_js_divergence_bounds() -> None:
    assert js_divergence(CLASSES, CLASSES) == 0.0
    assert js_divergence({"a": 1.0}, {"b": 1.0}) == pytest.approx(1.0)
    assert 0 < js_divergence({"a": 60.0, "b": 40.0}, {"a": 40.0, "b": 60.0}) < 0.1
    assert js_divergence({}, CLASSES) == 0.0


def test_histogram_quantile_matches_prometheus() -> None:
    buckets = {0.005: 50.0, 0.01: 90.0, 0.05: 99.0, 0.1: 100.0, float("inf"): 100.0}
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.005)
    assert histogram_quantile(0.99, buckets) == pytest.approx(0.05)
    assert histogram_quantile(0.95, buckets) == pytest.approx(0.01 + 0.04 * 5 / 9)
    assert histogram_quantile(0.99, {0.1: 0.0, float("inf"): 0.0}) is None
    assert histogram_quantile(0.99, {0.1: 1.0, float("inf"): 10.0}) == 0.1
