"""The demo's report from a rollout's decision history: the shadow section (pairs,
disagreement, flip matrix), live accuracy from labels, and the outcome names. The
evidence is made by the gate's own pure functions, so a change in its format shows here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from demo.render import print_summary, write_html
from demo.report import (
    FAILED_IN_SHADOW,
    build_report,
    canary_accuracy,
    flip_matrix,
)
from gate.core.analysis import LabelEvidence, _accuracy_check
from gate.core.paired import PairedEvidence, judge_shadow
from gate.core.spec import AnalysisSpec

SPEC = AnalysisSpec(shadow_disagreement_margin=0.04)
RUNS: dict[str, dict[str, Any]] = {"stable": {"outcome": "deployed"}, "candidate": {}}


def decision(
    second: int,
    action: str,
    *,
    phase: str = "shadow",
    weight: int = 0,
    outcome: str | None = None,
    reason: str = "",
    evidence: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "at": f"2026-12-02T10:00:{second:02d}+00:00",
        "phase": phase,
        "step_index": 0,
        "canary_weight": weight,
        "action": action,
        "outcome": outcome,
        "reason": reason,
        "evidence": evidence or {},
    }


def shadow_decision(second: int, paired: PairedEvidence, **kwargs: Any) -> dict[str, Any]:
    verdict = judge_shadow(SPEC, paired)
    return decision(
        second,
        kwargs.pop("action", "fail"),
        outcome=str(verdict.outcome),
        reason=verdict.reason,
        evidence=verdict.model_dump(mode="json", exclude={"outcome", "reason"}),
        **kwargs,
    )


def rollout(phase: str, decisions: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": "r1",
        "phase": phase,
        "message": decisions[-1]["reason"],
        "canary_weight": decisions[-1]["canary_weight"],
        "decisions": decisions,
    }


WORSE = PairedEvidence(
    requests=520,
    rows=2080,
    disagreements=130,
    flips={"0->0": 700, "1->1": 600, "1->2": 80, "2->1": 50, "2->2": 650},
    labelled_rows=700,
    stable_correct=665,
    candidate_correct=640,
    skipped=3,
    latency_ms_sum=1040.0,
)


def test_a_rollout_failed_in_shadow_has_its_own_outcome_flip_matrix_and_accuracy(
    tmp_path: Path,
) -> None:
    labels = tmp_path / "labels.json"
    labels.write_text(
        json.dumps({"answered": 900, "posted": 440, "unknown": 120, "failed_posts": 0})
    )
    detail = rollout(
        "failed",
        [
            decision(0, "create", phase="validating"),
            decision(5, "shadow"),
            shadow_decision(20, WORSE),
        ],
    )
    report = build_report("subtle", RUNS, detail, {"canary": None}, None, labels)

    assert report["outcome"] == FAILED_IN_SHADOW
    shadow = report["shadow"]
    assert shadow["reason"].startswith("shadow: regression shown on live requests")
    assert (shadow["requests"], shadow["rows"], shadow["skipped"]) == (520, 2080, 3)
    assert shadow["disagreement"] == pytest.approx(130 / 2080)
    assert shadow["margin"] == 0.04 and shadow["fail_interval"][0] > 0.04  # shown above
    assert shadow["flips"] == {
        "setosa": {"setosa": 700, "versicolor": 0, "virginica": 0},
        "versicolor": {"setosa": 0, "versicolor": 600, "virginica": 80},
        "virginica": {"setosa": 0, "versicolor": 50, "virginica": 650},
    }
    assert report["live_accuracy"]["shadow"] == {
        "rows": 700,
        "stable": 0.95,
        "candidate": 0.9143,
        "at_verdict": 700,
    }
    assert report["live_accuracy"]["canary"] is None
    assert report["live_accuracy"]["labels"]["posted"] == 440
    assert report["ticks"] == []

    console = Console(record=True, width=140)
    print_summary(report, console)
    text = console.export_text()
    assert "shadow failed: 520 live REST requests replayed" in text
    assert "disagreement with stable 6.2% (130 rows)" in text
    assert "answered a replayed request in 2 ms on average" in text
    assert "versicolor" in text and "virginica" in text
    assert "stable 95.0%, candidate 91.4%" in text
    assert f"outcome: {FAILED_IN_SHADOW}" in text

    write_html(report, tmp_path / "report.html")
    html = (tmp_path / "report.html").read_text()
    assert "<h2>Shadow</h2>" in html and "<h2>Live accuracy (delayed labels)</h2>" in html
    assert '<td class="num flip">80</td>' in html
    assert 'src="http' not in html and 'href="http' not in html  # nothing external


def test_canary_accuracy_reads_the_gates_accuracy_check() -> None:
    labels = LabelEvidence(
        stable_rows=2000, stable_correct=1900, canary_rows=200, canary_correct=192
    )
    check = _accuracy_check(AnalysisSpec(), labels, 0.05, 0.01)[0]
    found = canary_accuracy([check.model_dump(mode="json")])
    assert found is not None
    assert (found["canary"], found["canary_rows"], found["stable"], found["stable_rows"]) == (
        0.96,
        200,
        0.95,
        2000,
    )
    assert found["drop"] == pytest.approx(-0.01)
    assert canary_accuracy([]) is None


def test_a_promotion_after_a_shadow_pass_shows_both_live_accuracies() -> None:
    close = PairedEvidence(
        requests=600,
        rows=2400,
        disagreements=40,
        flips={"1->2": 25, "2->1": 15, "0->0": 800, "1->1": 780, "2->2": 780},
        labelled_rows=900,
        stable_correct=855,
        candidate_correct=864,
    )
    labels = LabelEvidence(
        stable_rows=2000, stable_correct=1900, canary_rows=200, canary_correct=192
    )
    check = _accuracy_check(AnalysisSpec(), labels, 0.05, 0.01)[0]
    step = decision(
        40,
        "step",
        phase="progressing",
        weight=100,
        outcome="pass",
        reason="all checks shown within their margins",
        evidence={
            "checks": [check.model_dump(mode="json")],
            "measurement": None,
            "judged": {"step_index": 0, "canary_weight": 50},
        },
    )
    detail = rollout(
        "succeeded",
        [
            decision(5, "shadow"),
            shadow_decision(20, close, action="step", weight=50),
            step,
            decision(41, "promoted", phase="succeeded"),
        ],
    )
    report = build_report("good", RUNS, detail, None, None)
    assert report["outcome"] == "promoted"
    assert report["shadow"]["outcome"] == "pass"
    assert report["live_accuracy"]["shadow"]["candidate"] == 0.96
    assert report["live_accuracy"]["canary"]["canary"] == 0.96
    assert report["ticks"][0]["accuracy"]["stable_rows"] == 2000
    console = Console(record=True, width=140)
    print_summary(report, console)
    text = console.export_text()
    assert "shadow passed" in text
    assert "live accuracy in the canary steps: canary 96.0% of 200 labelled rows" in text


def test_other_failures_keep_their_outcome_names() -> None:
    gate_failed = rollout(
        "failed",
        [decision(1, "fail", phase="failed", outcome="fail", reason="accuracy gate: too low")],
    )
    assert build_report("x", RUNS, gate_failed, None, None)["outcome"] == "failed"
    assert build_report("x", RUNS, rollout("rolled_back", [decision(1, "x")]), None, None)[
        "outcome"
    ] == ("rolled_back")
    rejected = {**RUNS, "candidate": {"outcome": "rejected"}}
    report = build_report("weak", rejected, None, None, None)
    assert report["outcome"] == "rejected" and report["shadow"] is None
    console = Console(record=True, width=140)
    print_summary(report, console)
    assert "live accuracy: no labelled answer joined" in console.export_text()


def test_flip_matrix_names_ids_and_keeps_names() -> None:
    assert flip_matrix({"0->2": 1}) == {
        "setosa": {"setosa": 0, "virginica": 1},
        "virginica": {"setosa": 0, "virginica": 0},
    }
    assert flip_matrix({"virginica->versicolor": 2, "odd": 5}) == {
        "versicolor": {"versicolor": 0, "virginica": 0},
        "virginica": {"versicolor": 2, "virginica": 0},
    }
    assert flip_matrix({}) == {}


def test_labels_that_joined_the_shadow_pairs_after_the_verdict_are_shown_as_such() -> None:
    """A shadow phase may pass on its disagreement before the first label arrives; the
    labels joined afterwards are in the rollout's ``shadow_pairs`` and the report says
    how many the verdict itself saw."""
    early = PairedEvidence(requests=120, rows=480, disagreements=4, flips={"0->0": 476})
    detail = rollout(
        "succeeded",
        [
            decision(5, "shadow"),
            shadow_decision(8, early, action="step", weight=50),
            decision(30, "promoted", phase="succeeded"),
        ],
    )
    later = early.model_copy(
        update={"labelled_rows": 200, "stable_correct": 188, "candidate_correct": 190}
    )
    report = build_report("good", RUNS, detail | {"shadow_pairs": later.model_dump()}, None, None)
    assert report["shadow"]["labelled_rows"] == 0
    assert report["live_accuracy"]["shadow"] == {
        "rows": 200,
        "stable": 0.94,
        "candidate": 0.95,
        "at_verdict": 0,
    }
    console = Console(record=True, width=200)
    print_summary(report, console)
    assert (
        "live accuracy on the shadow pairs (the same 200 labelled rows, 0 of them by its "
        "verdict, the rest joined after it): stable 94.0%, candidate 95.0%"
    ) in console.export_text()

    no_labels = build_report(
        "good", RUNS, detail | {"shadow_pairs": early.model_dump()}, None, None
    )
    assert no_labels["live_accuracy"]["shadow"] is None
