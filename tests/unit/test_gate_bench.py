"""The decision-quality benchmark cannot rot: its code paths on a few runs, and the
simulation it rests on behaves as its scenarios say. Its figures come from `make gate-bench`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.gate_bench import ANALYSES, SCENARIOS, Scenario, main, simulate

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
