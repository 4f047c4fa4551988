"""Canary analysis, table-driven: every outcome and every check, on counts."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gate.core.analysis import LabelEvidence, RoleWindow, WindowMeasurement, analyze
from gate.core.spec import AnalysisSpec, Outcome
from tests.gate_fakes import role

SPEC = AnalysisSpec()


def measure(canary: RoleWindow, stable: RoleWindow | None = None) -> WindowMeasurement:
    return WindowMeasurement(canary=canary, stable=stable or role(), window_s=30)


def shifted(requests: float = 20_000, share: float = 0.3) -> RoleWindow:
    """A canary that turns ``share`` of versicolor answers into virginica."""
    window = role(requests)
    third = requests / 3
    window.class_counts = {
        "setosa": third,
        "versicolor": third * (1 - share),
        "virginica": third * (1 + share),
    }
    return window


@pytest.mark.parametrize(
    ("name", "measurement", "outcome", "failed_checks"),
    [
        ("healthy canary with plenty of traffic", measure(role()), Outcome.PASS, []),
        ("metrics backend down", None, Outcome.ERROR, []),
        ("the canary served nothing", measure(role(0)), Outcome.INCONCLUSIVE, []),
        (
            "server errors +2 points",
            measure(role(errors=400)),
            Outcome.FAIL,
            ["error_rate_ceiling", "error_rate"],
        ),
        (
            "as bad as a failing stable: only the ceiling catches it",
            measure(role(errors=400), role(errors=400)),
            Outcome.FAIL,
            ["error_rate_ceiling"],
        ),
        ("latency x4", measure(role(median_ms=20)), Outcome.FAIL, ["latency_p95"]),
        (
            "slow for both: above the p99 ceiling",
            measure(role(median_ms=200), role(median_ms=200)),
            Outcome.FAIL,
            ["latency_p99_ceiling"],
        ),
        ("a shifted class mix", measure(shifted()), Outcome.FAIL, ["class_shift"]),
    ],
)
def test_outcomes(
    name: str, measurement: WindowMeasurement | None, outcome: Outcome, failed_checks: list[str]
) -> None:
    verdict = analyze(SPEC, measurement)
    assert verdict.outcome is outcome, verdict.reason
    assert [c.name for c in verdict.checks if c.outcome is Outcome.FAIL] == failed_checks
    json.loads(verdict.model_dump_json())  # evidence is plain JSON, unbounded ends included


def test_a_step_passes_early_only_when_every_margin_is_shown() -> None:
    verdict = analyze(SPEC, measure(role()), deadline_reached=False)
    assert verdict.outcome is Outcome.PASS and verdict.early
    assert "shown within their margins" in verdict.reason
    for check in verdict.checks:
        assert check.outcome is Outcome.PASS
        if check.interval is not None:
            assert check.margin is not None and check.interval[1] is not None
            assert check.interval[1] < check.margin


def test_thin_evidence_is_inconclusive_and_says_what_it_needs() -> None:
    thin = measure(role(300))
    early = analyze(SPEC, thin, must_show_margins=False, deadline_reached=False)
    assert early.outcome is Outcome.INCONCLUSIVE
    assert "error_rate needs about" in early.reason and "more canary requests" in early.reason
    exposure = analyze(SPEC, thin, must_show_margins=False, deadline_reached=True)
    assert exposure.outcome is Outcome.PASS and not exposure.early
    assert exposure.reason.startswith("no regression shown in 300 canary requests")
    proving = analyze(SPEC, thin, must_show_margins=True, deadline_reached=True)
    assert proving.outcome is Outcome.INCONCLUSIVE


def test_no_traffic_in_the_step_never_moves_on() -> None:
    verdict = analyze(SPEC, measure(role(0)), role_evidence(), must_show_margins=False)
    assert verdict.outcome is Outcome.INCONCLUSIVE
    assert "served no requests in this step" in verdict.reason


def role_evidence() -> WindowMeasurement:
    return WindowMeasurement(canary=role(300), stable=role(), window_s=60)


def test_earlier_windows_count_stable_keeps_its_traffic_at_100_percent() -> None:
    idle_stable = RoleWindow()
    alone = analyze(SPEC, measure(role(), idle_stable))
    assert alone.outcome is Outcome.INCONCLUSIVE
    assert "stable served no requests" in " ".join(c.detail for c in alone.checks)
    earlier = WindowMeasurement(canary=role(1_000), stable=role(), window_s=30)
    verdict = analyze(SPEC, measure(role(), idle_stable), earlier)
    assert verdict.outcome is Outcome.PASS
    assert verdict.totals is not None and verdict.totals.canary.requests == 21_000


def test_a_model_without_classes_skips_the_class_check() -> None:
    verdict = analyze(SPEC, measure(role(classes=False), role(classes=False)))
    assert verdict.outcome is Outcome.PASS
    assert "class_shift" not in {c.name for c in verdict.checks}


def test_margins_and_confidence_are_the_users_words() -> None:
    loose = SPEC.model_copy(update={"class_shift_margin": 0.5})
    assert analyze(loose, measure(shifted(share=0.05))).outcome is Outcome.PASS
    unsure = SPEC.model_copy(update={"confidence": 0.5})
    checks = {c.name: c for c in analyze(unsure, measure(role(2_000))).checks}
    sure = {c.name: c for c in analyze(SPEC, measure(role(2_000))).checks}
    assert checks["error_rate"].alpha == pytest.approx(0.5)
    wide, narrow = sure["error_rate"].interval, checks["error_rate"].interval
    assert wide is not None and narrow is not None
    assert wide[1] is not None and narrow[1] is not None and narrow[1] < wide[1]


def test_quantile_matches_prometheus_histogram_quantile() -> None:
    buckets = {"0.005": 50.0, "0.01": 90.0, "0.05": 99.0, "0.1": 100.0, "+Inf": 100.0}
    window = RoleWindow(requests=100, latency_buckets=buckets)
    assert window.quantile_s(0.5) == pytest.approx(0.005)
    assert window.quantile_s(0.99) == pytest.approx(0.05)
    assert window.quantile_s(0.95) == pytest.approx(0.01 + 0.04 * 5 / 9)
    assert RoleWindow(latency_buckets={"0.1": 0.0, "+Inf": 0.0}).p99_s is None
    assert RoleWindow(latency_buckets={"0.1": 1.0, "+Inf": 10.0}).p99_s == 0.1


def test_windows_add_up() -> None:
    total = role(100).plus(role(300, errors=3))
    assert (total.requests, total.server_errors) == (400, 3)
    assert total.latency_buckets["+Inf"] == 400
    assert sum(total.class_counts.values()) == pytest.approx(400)


counts = st.floats(min_value=0, max_value=1e9, allow_nan=False)


@st.composite
def windows(draw: st.DrawFn) -> RoleWindow:
    requests = draw(counts)
    cumulative = sorted(draw(st.lists(st.floats(0, requests), min_size=0, max_size=5)))
    bounds = sorted(draw(st.sets(st.sampled_from(["0.001", "0.01", "0.1", "1"]), max_size=4)))
    buckets = dict(zip(bounds, cumulative, strict=False))
    if buckets:
        buckets["+Inf"] = requests
    classes = draw(st.dictionaries(st.sampled_from("abcdefghij"), counts, max_size=10))
    return RoleWindow(
        requests=requests,
        server_errors=draw(st.floats(0, requests)),
        latency_buckets=buckets,
        class_counts=classes,
    )


@settings(max_examples=300, deadline=None)
@given(
    canary=windows(),
    stable=windows(),
    confidence=st.floats(0.5, 0.9999),
    quantile=st.floats(0.5, 0.999),
    margin=st.floats(0, 1),
    must_show=st.booleans(),
    deadline=st.booleans(),
)
def test_any_counts_and_any_settings_give_a_verdict_in_plain_json(
    canary: RoleWindow,
    stable: RoleWindow,
    confidence: float,
    quantile: float,
    margin: float,
    must_show: bool,
    deadline: bool,
) -> None:
    spec = AnalysisSpec(
        confidence=confidence,
        latency_quantile=quantile,
        error_rate_margin=margin,
        class_shift_margin=margin,
        latency_margin=max(margin, 1e-6),
    )
    verdict = analyze(
        spec,
        measure(canary, stable),
        must_show_margins=must_show,
        deadline_reached=deadline,
    )
    assert verdict.outcome in {Outcome.PASS, Outcome.FAIL, Outcome.INCONCLUSIVE}
    json.loads(verdict.model_dump_json())
    if canary.requests == 0:
        assert verdict.outcome is not Outcome.PASS  # no canary traffic is never a pass


GENERATING = AnalysisSpec(generated_rate_per_s=20.0)


def with_generated(live_canary: RoleWindow, generated: WindowMeasurement) -> WindowMeasurement:
    window = measure(live_canary)
    window.generated = generated
    return window


def test_generated_evidence_passes_only_when_the_user_lets_it_and_says_so() -> None:
    plenty = WindowMeasurement(canary=role(), stable=role(), window_s=30)
    thin_live = with_generated(role(20), plenty)
    refused = analyze(GENERATING, thin_live, deadline_reached=False)
    assert refused.outcome is Outcome.INCONCLUSIVE  # live evidence alone is thin
    generated = [c for c in refused.checks if c.traffic == "generated"]
    assert generated and all(c.outcome is Outcome.PASS for c in generated)
    allowed = GENERATING.model_copy(update={"generated_counts": True})
    verdict = analyze(allowed, thin_live, deadline_reached=False)
    assert verdict.outcome is Outcome.PASS and verdict.passed_on == "generated"
    assert "on generated traffic" in verdict.reason
    live_pass = analyze(allowed, with_generated(role(), plenty))
    assert live_pass.passed_on == "live"


def test_a_regression_shown_on_generated_traffic_always_fails() -> None:
    broken = WindowMeasurement(canary=role(errors=400), stable=role(), window_s=30)
    verdict = analyze(GENERATING, with_generated(role(20), broken))
    assert verdict.outcome is Outcome.FAIL
    assert "error_rate (generated)" in verdict.reason


def test_judging_two_kinds_of_evidence_splits_alpha() -> None:
    both = GENERATING.model_copy(update={"generated_counts": True})
    plenty = WindowMeasurement(canary=role(), stable=role(), window_s=30)
    one = {c.name: c.alpha for c in analyze(SPEC, measure(role())).checks}
    two = {
        c.name: c.alpha
        for c in analyze(both, with_generated(role(), plenty)).checks
        if c.traffic == "live"
    }
    assert two["error_rate"] == pytest.approx(one["error_rate"] / 2)  # pass side
    assert two["error_rate_ceiling"] == pytest.approx(one["error_rate_ceiling"] / 2)  # fail


def labelled(canary_accuracy: float, rows: int, stable_accuracy: float = 0.95) -> LabelEvidence:
    return LabelEvidence(
        stable_rows=rows,
        stable_correct=round(rows * stable_accuracy),
        canary_rows=rows,
        canary_correct=round(rows * canary_accuracy),
    )


def test_labelled_accuracy_fails_a_drop_and_never_holds_a_rollout_unless_required() -> None:
    healthy = measure(role())
    assert analyze(SPEC, healthy).outcome is Outcome.PASS  # no labels: no accuracy check
    dropped = analyze(SPEC, healthy, labels=labelled(0.90, 4_000))
    assert dropped.outcome is Outcome.FAIL and "accuracy" in dropped.reason
    thin = analyze(SPEC, healthy, labels=labelled(0.95, 50))
    assert thin.outcome is Outcome.PASS  # not shown either way: labels not required
    required = SPEC.model_copy(update={"require_labels": True})
    waiting = analyze(required, healthy)
    assert waiting.outcome is Outcome.INCONCLUSIVE and "labels for canary" in waiting.reason
    assert analyze(required, healthy, labels=labelled(0.95, 50)).outcome is Outcome.INCONCLUSIVE
    assert analyze(required, healthy, labels=labelled(0.95, 20_000)).outcome is Outcome.PASS
