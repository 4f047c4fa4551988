"""Shadow evaluation's pure parts: reading answers, pairing them, judging the pairs, and the
shadow phase's transitions."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from gate.core.answers import Unreadable, pair, protocol_of, read_answer
from gate.core.decide import (
    Action,
    Command,
    RolloutState,
    ValidationVerdict,
    after_error,
    after_shadow,
    after_validation,
    command,
)
from gate.core.paired import PairedEvidence, ShadowVerdict, judge_shadow
from gate.core.spec import AnalysisSpec, Candidate, Outcome, Phase

NOW = datetime(2026, 1, 1, tzinfo=UTC)
SPEC = AnalysisSpec(steps=[10, 50, 100], shadow_s=60, error_limit=2)


def v2(classes: list[int], proba: list[list[float]] | None = None) -> bytes:
    outputs: list[dict[str, object]] = [
        {"name": "predict", "datatype": "INT64", "shape": [len(classes)], "data": classes}
    ]
    if proba is not None:
        flat = [p for row in proba for p in row]
        outputs.append({"name": "predict_proba", "shape": [len(proba), 3], "data": flat})
    return json.dumps({"model_name": "iris", "outputs": outputs}).encode()


# --- answers ---------------------------------------------------------------------------------


def test_v2_and_v1_answers_read_as_classes_and_probabilities() -> None:
    answer = read_answer(v2([0, 2], [[0.9, 0.1, 0.0], [0.0, 0.2, 0.8]]))
    assert answer.classes == ("0", "2")
    assert answer.probabilities == ((0.9, 0.1, 0.0), (0.0, 0.2, 0.8))
    v1 = read_answer(b'{"predictions": [1, 1.0], "probabilities": [[0,1,0],[0.1,0.8,0.1]]}')
    assert v1.classes == ("1", "1")
    assert v1.probabilities is not None and v1.probabilities[1] == (0.1, 0.8, 0.1)
    labels = read_answer(b'{"outputs": [{"name": "label", "data": ["setosa"]}]}')
    assert labels.classes == ("setosa",) and labels.probabilities is None


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"outputs": [{"name": "other", "data": [1]}]}',
        b'{"predictions": 3}',
        b'{"predictions": [true]}',
        b'{"predictions": [[1]]}',
        b'{"error": "x"}',
    ],
)
def test_what_is_not_an_answer_is_refused_not_guessed(body: bytes) -> None:
    with pytest.raises(Unreadable):
        read_answer(body)


def test_the_request_says_its_protocol() -> None:
    assert protocol_of(b'{"inputs": []}') == "v2"
    assert protocol_of(b'{"instances": [[1, 2, 3, 4]]}') == "v1"
    for body in (b"{}", b"nope", b"[1]"):
        with pytest.raises(Unreadable):
            protocol_of(body)


def test_pairing_counts_flips_and_the_probability_shift() -> None:
    stable = read_answer(v2([0, 1, 1], [[1, 0, 0], [0, 1, 0], [0, 0.6, 0.4]]))
    candidate = read_answer(v2([0, 2, 1], [[1, 0, 0], [0, 0.4, 0.6], [0, 0.6, 0.4]]))
    paired = pair(stable, candidate)
    assert paired.rows == 3 and paired.disagreements == 1
    assert paired.flips == {"0->0": 1, "1->2": 1, "1->1": 1}
    assert paired.shift_rows == 3
    assert paired.shift_sum == pytest.approx((0.6 + 0.6) / 3)
    with pytest.raises(Unreadable, match="rows"):
        pair(stable, read_answer(v2([0])))


# --- judging the pairs -------------------------------------------------------------------


def evidence(rows: int, disagreements: int, errors: int = 0) -> PairedEvidence:
    return PairedEvidence(
        requests=rows, rows=rows, disagreements=disagreements, candidate_errors=errors
    )


def test_no_pairs_decide_nothing() -> None:
    verdict = judge_shadow(SPEC, PairedEvidence())
    assert verdict.outcome is Outcome.INCONCLUSIVE
    assert "no live request paired" in verdict.reason
    assert judge_shadow(SPEC, None).outcome is Outcome.ERROR


def test_clear_cases_decide_and_say_why() -> None:
    passed = judge_shadow(SPEC, evidence(2_000, 4))
    assert passed.outcome is Outcome.PASS and "shown below 2.00%" in passed.reason
    failed = judge_shadow(
        SPEC, evidence(2_000, 200).model_copy(update={"flips": {"1->2": 200, "1->1": 500}})
    )
    assert failed.outcome is Outcome.FAIL
    assert "disagreement" in failed.reason and "1->2: 200" in failed.reason
    erroring = judge_shadow(SPEC, evidence(2_000, 0, errors=300))
    assert erroring.outcome is Outcome.FAIL and "shadow_error_rate" in erroring.reason
    unsure = judge_shadow(SPEC, evidence(100, 1))
    assert unsure.outcome is Outcome.INCONCLUSIVE and "more paired rows" in unsure.reason


def sequential_outcome(rate: float, rng: np.random.Generator, looks: int, per_look: int) -> Outcome:
    """Look after every batch, as the controller does each tick; the first decision counts."""
    rows = disagreements = 0
    for _ in range(looks):
        rows += per_look
        disagreements += int(rng.binomial(per_look, rate))
        outcome = judge_shadow(SPEC, evidence(rows, disagreements)).outcome
        if outcome is not Outcome.INCONCLUSIVE:
            return outcome
    return Outcome.INCONCLUSIVE


def test_error_rates_hold_under_peeking_at_the_margin() -> None:
    """At exactly the margin neither side may be decided wrongly more than its alpha
    allows, however often the gate looks (anytime-valid intervals; a fixed-sample test
    looked at 200 times would exceed it many times over)."""
    rng = np.random.default_rng(7)
    margin = SPEC.shadow_disagreement_margin
    alpha = 1 - SPEC.confidence
    runs = 300
    outcomes = [sequential_outcome(margin, rng, 200, 20) for _ in range(runs)]
    passed = sum(o is Outcome.PASS for o in outcomes) / runs
    failed = sum(o is Outcome.FAIL for o in outcomes) / runs
    assert passed <= alpha + 0.03  # a candidate at the margin passes at most ~alpha
    assert failed <= alpha / 2 + 0.03  # a candidate at the margin is failed at most ~alpha/2


def test_power_a_flip_of_five_percent_is_stopped() -> None:
    rng = np.random.default_rng(11)
    outcomes = [sequential_outcome(0.05, rng, 120, 10) for _ in range(200)]
    assert sum(o is Outcome.FAIL for o in outcomes) / 200 >= 0.95
    healthy = [sequential_outcome(0.0, rng, 120, 10) for _ in range(200)]
    assert all(o is Outcome.PASS for o in healthy)


# --- the shadow phase's transitions -------------------------------------------------------


def state(**changes: object) -> RolloutState:
    base = RolloutState(
        id="r1",
        model="iris",
        spec=SPEC,
        created_at=NOW,
        updated_at=NOW,
        stable_version="1",
        candidate=Candidate(version="2", artifact_uri="/m/2", offline_metrics={"accuracy": 0.95}),
    )
    return base.model_copy(update=changes)


def shadowing() -> RolloutState:
    transition = after_validation(
        state(), ValidationVerdict(outcome=Outcome.PASS, reason="accurate"), NOW
    )
    assert transition is not None
    return transition.state


def test_a_passed_accuracy_gate_leads_to_the_shadow_with_its_budget() -> None:
    shadow = shadowing()
    assert shadow.phase is Phase.SHADOW and shadow.canary_weight == 0
    assert shadow.window_start == NOW
    assert shadow.step_deadline == NOW + timedelta(seconds=60)
    # no stable to compare with, or no budget: straight to the first step
    for skipped in (
        state(stable_version=None),
        state(spec=SPEC.model_copy(update={"shadow_s": 0.0})),
    ):
        moved = after_validation(skipped, ValidationVerdict(outcome=Outcome.PASS, reason="ok"), NOW)
        assert moved is not None and moved.action is Action.STEP
        assert moved.state.phase is Phase.PROGRESSING


def shadow_verdict(outcome: Outcome) -> ShadowVerdict:
    return ShadowVerdict(outcome=outcome, reason=f"shadow: {outcome.value}")


def test_shadow_outcomes() -> None:
    shadow = shadowing()
    later = NOW + timedelta(seconds=10)
    passed = after_shadow(shadow, shadow_verdict(Outcome.PASS), later, False)
    assert passed is not None and passed.action is Action.STEP
    assert passed.state.phase is Phase.PROGRESSING and passed.state.canary_weight == 10
    failed = after_shadow(shadow, shadow_verdict(Outcome.FAIL), later, False)
    assert failed is not None and failed.action is Action.FAIL
    assert failed.state.phase is Phase.FAILED and failed.state.canary_weight == 0
    assert after_shadow(shadow, shadow_verdict(Outcome.INCONCLUSIVE), later, False) is None
    spent = after_shadow(shadow, shadow_verdict(Outcome.INCONCLUSIVE), later, True)
    assert spent is not None and spent.action is Action.STEP
    assert "budget" in spent.state.message and "undecided" in spent.state.message
    error = after_shadow(shadow, shadow_verdict(Outcome.ERROR), later, False)
    assert error is not None and error.action is Action.RETRY_ANALYSIS
    assert error.state.errors == 1 and error.state.not_before is not None
    second = after_error(error.state, "payload store gone", later)
    assert second.action is Action.FAIL and "shadow error limit" in second.state.message


def test_commands_in_the_shadow() -> None:
    shadow = shadowing()
    paused = command(shadow, Command.PAUSE, NOW).state
    later = NOW + timedelta(seconds=600)
    resumed = command(paused, Command.RESUME, later).state
    assert resumed.phase is Phase.SHADOW
    assert resumed.step_deadline == later + timedelta(seconds=60)  # the budget restarts
    aborted = command(shadow, Command.ABORT, NOW)
    assert aborted.action is Action.ROLLBACK and aborted.state.aborted


def test_labelled_shadow_pairs_fail_a_candidate_shown_less_accurate() -> None:
    """Two models that disagree on 15 % of rows, within a (wide) margin of 30 %: the
    labels say who is right."""
    tolerant = SPEC.model_copy(update={"shadow_disagreement_margin": 0.3})
    worse = evidence(2_000, 300).model_copy(
        update={"labelled_rows": 2_000, "stable_correct": 1_950, "candidate_correct": 1_750}
    )
    verdict = judge_shadow(tolerant, worse)
    assert verdict.outcome is Outcome.FAIL and "shadow_accuracy" in verdict.reason
    better = worse.model_copy(update={"candidate_correct": 1_960})
    assert judge_shadow(tolerant, better).outcome is Outcome.PASS
