"""The decision-quality benchmark cannot rot: its code paths on a few runs, and the
simulation it rests on behaves as its scenarios say. Its figures come from `make gate-bench`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.gate_bench import ANALYSES, SCENARIOS, Scenario, main, simulate
from benchmarks.gate_bench_shadow import (
    SHADOW_SCENARIOS,
    ShadowScenario,
    shadow_cell,
    simulate_shadow,
)
from gate.core.spec import AnalysisSpec

HEALTHY, *_ = SCENARIOS
SLOW = next(s for s in SCENARIOS if s.latency_factor == 4.0)


@pytest.mark.parametrize("analysis", ANALYSES)
def test_a_healthy_canary_at_200_per_second_is_promoted(analysis: str) -> None:
    run = simulate(analysis, HEALTHY, 200.0, seed=1)
    assert run.outcome == "promoted" and run.bad_answers < 50


def test_the_sequential_analysis_passes_early_and_catches_a_slow_canary_in_seconds() -> None:
    old, new = (simulate(a, HEALTHY, 200.0, seed=2) for a in ANALYSES)
    assert new.seconds < old.seconds  # 4 steps x 30 s for the fixed thresholds
    slow = simulate(ANALYSES[1], SLOW, 50.0, seed=3)
    assert slow.outcome == "rolled_back" and slow.seconds <= 10


def test_thin_traffic_is_never_promoted() -> None:
    run = simulate(ANALYSES[1], Scenario("healthy"), 2.0, seed=4)
    assert run.outcome == "rolled_back" and run.seconds > 600  # inconclusive limit


def test_the_benchmark_writes_its_tables(tmp_path: Path) -> None:
    assert main(["--runs", "1", "--rates", "200", "--workers", "1", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "gate.json").read_text())
    assert len(report["cells"]) == len(SCENARIOS) * len(ANALYSES)
    assert {row["check"] for row in report["meta"]["margins"]} == {
        "error_rate",
        "latency_p95",
        "class_shift",
    }
    assert "| healthy | 200 | sequential (new) |" in (tmp_path / "GATE.md").read_text()


def test_thin_traffic_with_generated_evidence_allowed_is_promoted_and_labelled() -> None:
    allowed = next(s for s in SCENARIOS if s.generated_rate)
    run = simulate(ANALYSES[1], allowed, 2.0, seed=5)
    assert run.outcome == "promoted" and run.on_generated


# --- shadow phase and delayed labels (benchmarks/gate_bench_shadow.py) -----------------------

SHADOW = {s.name: s for s in SHADOW_SCENARIOS}
FLIP_15 = next(s for s in SHADOW_SCENARIOS if s.flip_share == 0.15)
FLIP_40 = next(s for s in SHADOW_SCENARIOS if s.flip_share == 0.40)
RETRAINED = next(s for s in SHADOW_SCENARIOS if s.churn and not s.label_share)
DROP = next(s for s in SHADOW_SCENARIOS if s.accuracy_drop and not s.label_share)
DROP_LABELLED = next(s for s in SHADOW_SCENARIOS if s.accuracy_drop and s.label_share and s.shadow)


def test_the_scenarios_are_what_their_names_say() -> None:
    # 15 % of one of three equally likely classes is 5 % of rows, as is a 5-point drop
    assert FLIP_15.answer_shares(with_flips=True) == pytest.approx([0.90, 0.05, 0.05, 0.0])
    assert DROP.answer_shares(with_flips=True) == pytest.approx([0.90, 0.05, 0.05, 0.0])
    assert RETRAINED.answer_shares(with_flips=True) == pytest.approx(
        [0.9475, 0.0475, 0.0025, 0.0025]
    )
    assert len(SHADOW) == len(SHADOW_SCENARIOS)


def test_forty_percent_flips_are_stopped_in_shadow_before_any_user_gets_an_answer() -> None:
    for seed in range(10):
        run = simulate_shadow(FLIP_40, 200.0, seed=seed)
        assert run.outcome == "failed_in_shadow" and run.shadow == "failed"
        assert run.seconds <= 10 and run.candidate_requests == 0 and run.wrong_answers == 0
        assert 0 < run.pairs <= run.seconds * 50  # the replay is bounded by shadow_rate_per_s


def test_a_healthy_retrained_candidate_is_not_failed_in_shadow_and_is_promoted() -> None:
    for seed in range(5):
        run = simulate_shadow(RETRAINED, 50.0, seed=seed)
        assert run.shadow in ("passed", "budget") and run.shadow_seconds <= 120
        assert run.outcome == "promoted" and run.candidate_requests > 0


def test_an_accuracy_drop_without_labels_is_judged_in_shadow_exactly_like_the_flip() -> None:
    # both disagree with stable on 5 % of rows, and nothing else is drawn in shadow
    for seed in range(10):
        flip, drop = (simulate_shadow(s, 50.0, seed=seed) for s in (FLIP_15, DROP))
        assert drop == flip and drop.outcome == "failed_in_shadow"


def test_labels_that_arrive_in_time_fail_the_shadow_where_disagreement_alone_passes() -> None:
    spec = AnalysisSpec(shadow_disagreement_margin=0.4)  # so a 30-point drop passes on it
    now = ShadowScenario("now", accuracy_drop=0.3, label_share=1.0, label_delay_s=0.0)
    late = ShadowScenario("late", accuracy_drop=0.3, label_share=1.0, label_delay_s=30.0)
    never = ShadowScenario("never", accuracy_drop=0.3)
    for seed in range(3):
        paired = simulate_shadow(now, 50.0, seed, spec)
        assert paired.outcome == "failed_in_shadow" and paired.on_labels
        # 30 s late, they miss the shadow phase but stop the canary steps
        stepped = simulate_shadow(late, 50.0, seed, spec)
        assert stepped.shadow == "passed" and stepped.outcome == "rolled_back"
        assert stepped.on_labels and stepped.seconds > 30
        assert simulate_shadow(never, 50.0, seed, spec).outcome == "promoted"


def test_without_a_shadow_phase_the_steps_begin_at_once_and_no_pair_is_judged() -> None:
    no_shadow = next(s for s in SHADOW_SCENARIOS if not s.shadow)
    run = simulate_shadow(no_shadow, 200.0, seed=6)
    assert run.shadow == "none" and run.pairs == 0 and run.candidate_requests > 0
    assert run.wrong_answers > 0  # the candidate answered users with its 5-point drop


def test_the_shadow_cells_are_reproducible_and_written_on_their_own(tmp_path: Path) -> None:
    flip_40 = SHADOW_SCENARIOS.index(FLIP_40)
    cell = shadow_cell((flip_40, 200.0, 5, 7))
    assert cell == shadow_cell((flip_40, 200.0, 5, 7))
    assert cell["failed_in_shadow"] == cell["stopped"] == 1.0
    assert cell["max_candidate_requests_failed_in_shadow"] == 0
    argv = ["--only", "shadow", "--runs", "1", "--rates", "200", "--workers", "1"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "gate.json").read_text())
    assert report["cells"] == [] and report["meta"]["margins"] == []
    assert [c["scenario"] for c in report["shadow_cells"]] == [s.name for s in SHADOW_SCENARIOS]
    table = (tmp_path / "GATE.md").read_text()
    assert "## Shadow and labels" in table and "| fixed thresholds (today) |" not in table
    assert f"| {FLIP_40.name} | 200 | 100.0 % | 100.0 % (0) |" in table
