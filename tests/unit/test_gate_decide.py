"""The rollout state machine, table-driven: steps, limits, promotion, commands."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from gate.core.analysis import RoleWindow, Verdict, WindowMeasurement
from gate.core.decide import (
    Action,
    Command,
    CommandError,
    RolloutState,
    ValidationVerdict,
    after_analysis,
    after_error,
    after_tick,
    after_validation,
    candidate_started,
    command,
    finish,
)
from gate.core.hooks import HookType
from gate.core.spec import AnalysisSpec, Candidate, Outcome, Phase

NOW = datetime(2026, 1, 1, tzinfo=UTC)
LATER = NOW + timedelta(seconds=7)
SPEC = AnalysisSpec(
    steps=[10, 50, 100],
    step_interval_s=30,
    failure_limit=2,
    inconclusive_limit=3,
    error_limit=2,
)


def state(**changes: object) -> RolloutState:
    base = RolloutState(
        id="r1",
        model="iris",
        spec=SPEC,
        created_at=NOW,
        updated_at=NOW,
        candidate=Candidate(version="2", artifact_uri="/m/2", offline_metrics={"accuracy": 0.95}),
    )
    return base.model_copy(update=changes)


def verdict(outcome: Outcome, stable_requests: float = 100) -> Verdict:
    measured = WindowMeasurement(
        stable=RoleWindow(requests=stable_requests), canary=RoleWindow(requests=50), window_s=30
    )
    return Verdict(outcome=outcome, reason=outcome.value, measurement=measured)


def progressing(step: int = 0, **changes: object) -> RolloutState:
    return state(
        phase=Phase.PROGRESSING, step_index=step, canary_weight=SPEC.steps[step], **changes
    ).start_window(NOW)


def validating(**changes: object) -> RolloutState:
    return candidate_started(state(**changes), {"canary": {"http": "x"}}, NOW, 60).state


def test_accuracy_gate_pass_starts_first_step_and_fail_ends_without_traffic() -> None:
    started = after_validation(
        validating(), ValidationVerdict(outcome=Outcome.PASS, reason="ok"), NOW
    )
    assert started is not None
    assert (started.state.phase, started.state.canary_weight, started.action) == (
        Phase.PROGRESSING,
        10,
        Action.STEP,
    )
    assert started.state.step_deadline == NOW + timedelta(seconds=30)
    failed = after_validation(
        validating(), ValidationVerdict(outcome=Outcome.FAIL, reason="too weak"), NOW
    )
    assert failed is not None
    assert (failed.state.phase, failed.state.canary_weight, failed.event, failed.action) == (
        Phase.FAILED,
        0,
        "failure",
        Action.FAIL,
    )


def test_a_candidate_not_ready_is_waited_for_until_its_deadline() -> None:
    waiting = validating()
    assert waiting.candidate_deadline == NOW + timedelta(seconds=60)
    not_ready = ValidationVerdict(outcome=Outcome.INCONCLUSIVE, reason="not ready")
    assert after_validation(waiting, not_ready, NOW + timedelta(seconds=59)) is None
    late = after_validation(waiting, not_ready, NOW + timedelta(seconds=60))
    assert late is not None and late.state.phase is Phase.FAILED
    assert "not ready by the deadline" in late.state.message


def test_accuracy_gate_errors_retry_after_a_back_off_up_to_the_limit() -> None:
    error = ValidationVerdict(outcome=Outcome.ERROR, reason="router down")
    first = after_validation(validating(), error, NOW)
    assert first is not None and first.action is Action.RETRY_VALIDATION
    assert first.state.not_before == NOW + timedelta(seconds=1)
    second = after_validation(first.state, error, NOW)
    assert second is not None and second.state.phase is Phase.FAILED  # error_limit is 2
    assert "error limit reached (2/2): router down" in second.state.message


@pytest.mark.parametrize(
    ("phase", "errors", "action", "next_phase"),
    [
        (Phase.VALIDATING, 0, Action.RETRY_VALIDATION, Phase.VALIDATING),
        (Phase.VALIDATING, 1, Action.FAIL, Phase.FAILED),
        (Phase.PROGRESSING, 0, Action.RETRY_ANALYSIS, Phase.PROGRESSING),
        (Phase.PROGRESSING, 1, Action.ROLLBACK, Phase.ROLLING_BACK),
        (Phase.PROMOTING, 0, Action.RETRY, Phase.PROMOTING),
        (Phase.PROMOTING, 1, Action.ROLLBACK, Phase.ROLLING_BACK),
        # a rollback is never given up: traffic must leave a candidate judged bad
        (Phase.ROLLING_BACK, 0, Action.RETRY, Phase.ROLLING_BACK),
        (Phase.ROLLING_BACK, 7, Action.RETRY, Phase.ROLLING_BACK),
    ],
)
def test_an_error_anywhere_counts_against_the_error_limit(
    phase: Phase, errors: int, action: Action, next_phase: Phase
) -> None:
    before = progressing(0, errors=errors).model_copy(update={"phase": phase})
    transition = after_error(before, "OverflowError: boom", NOW)
    assert (transition.action, transition.state.phase) == (action, next_phase)
    assert transition.state.errors == errors + 1
    assert "OverflowError: boom" in transition.state.message
    if action is Action.RETRY:
        assert transition.state.not_before == NOW + timedelta(seconds=min(2.0**errors, 30))


@pytest.mark.parametrize(
    ("before", "outcome", "phase", "step", "weight", "action"),
    [
        (progressing(0), Outcome.PASS, Phase.PROGRESSING, 1, 50, "step"),
        (progressing(2), Outcome.PASS, Phase.PROMOTING, 2, 100, "promote"),
        (progressing(1), Outcome.FAIL, Phase.PROGRESSING, 1, 50, "retry-step"),
        (progressing(1, failures=1), Outcome.FAIL, Phase.ROLLING_BACK, 1, 0, "rollback"),
        (progressing(1), Outcome.INCONCLUSIVE, Phase.PROGRESSING, 1, 50, "extend-step"),
        (
            progressing(1, inconclusive=2),
            Outcome.INCONCLUSIVE,
            Phase.ROLLING_BACK,
            1,
            0,
            "rollback",
        ),
        (progressing(1), Outcome.ERROR, Phase.PROGRESSING, 1, 50, "retry-analysis"),
        (progressing(1, errors=1), Outcome.ERROR, Phase.ROLLING_BACK, 1, 0, "rollback"),
    ],
)
def test_after_analysis(
    before: RolloutState, outcome: Outcome, phase: Phase, step: int, weight: int, action: str
) -> None:
    later = NOW + timedelta(seconds=31)
    transition = after_analysis(before, verdict(outcome), later)
    assert transition.state.phase is phase
    assert (transition.state.step_index, transition.state.canary_weight) == (step, weight)
    assert transition.action == action


def test_extension_keeps_the_window_and_counts() -> None:
    before = progressing(1)
    later = NOW + timedelta(seconds=31)
    extended = after_analysis(before, verdict(Outcome.INCONCLUSIVE), later).state
    assert extended.window_start == before.window_start  # the data so far still counts
    assert extended.step_deadline == later + timedelta(seconds=30)
    assert extended.inconclusive == 1
    passed = after_analysis(extended, verdict(Outcome.PASS), later).state
    assert passed.inconclusive == 0 and passed.window_start == later


def test_failed_window_restarts_and_failures_accumulate_across_steps() -> None:
    later = NOW + timedelta(seconds=31)
    failed_once = after_analysis(progressing(0), verdict(Outcome.FAIL), later).state
    assert failed_once.window_start == later and failed_once.failures == 1
    moved = after_analysis(failed_once, verdict(Outcome.PASS), later).state
    assert moved.failures == 1 and moved.step_index == 1
    rolled = after_analysis(moved, verdict(Outcome.FAIL), later)
    assert rolled.action == "rollback" and "failure limit reached (2/2)" in rolled.state.message


def test_errors_are_consecutive_only() -> None:
    later = NOW + timedelta(seconds=31)
    once = after_analysis(progressing(0), verdict(Outcome.ERROR), later).state
    assert once.errors == 1
    assert after_analysis(once, verdict(Outcome.INCONCLUSIVE), later).state.errors == 0


def test_a_decided_window_joins_the_evidence_an_extended_one_stays_open() -> None:
    later = NOW + timedelta(seconds=31)

    def judged(outcome: Outcome) -> Verdict:
        window = verdict(outcome)
        totals = window.measurement
        assert totals is not None
        return window.model_copy(update={"totals": totals})

    moved = after_analysis(progressing(0), judged(Outcome.PASS), later).state
    assert moved.evidence is not None and moved.evidence.stable.requests == 100
    extended = after_analysis(moved, judged(Outcome.INCONCLUSIVE), later).state
    assert extended.evidence == moved.evidence  # the window goes on: not counted twice


def test_a_look_before_the_deadline_records_only_a_decision() -> None:
    early = NOW + timedelta(seconds=5)
    assert after_tick(progressing(0), verdict(Outcome.INCONCLUSIVE), early, False) is None
    passed = after_tick(progressing(0), verdict(Outcome.PASS), early, False)
    assert passed is not None and passed.action is Action.STEP
    failed = after_tick(progressing(0), verdict(Outcome.FAIL), early, False)
    assert failed is not None and failed.action is Action.RETRY_STEP
    at_deadline = after_tick(progressing(0), verdict(Outcome.INCONCLUSIVE), early, True)
    assert at_deadline is not None and at_deadline.action is Action.EXTEND_STEP


@pytest.mark.parametrize(
    ("phase", "final", "action", "event"),
    [
        (Phase.PROMOTING, Phase.SUCCEEDED, "promoted", "promotion"),
        (Phase.ROLLING_BACK, Phase.ROLLED_BACK, "rolled-back", "rollback"),
    ],
)
def test_finish(phase: Phase, final: Phase, action: str, event: str) -> None:
    transition = finish(state(phase=phase, canary_weight=50), NOW)
    assert (transition.state.phase, transition.action, transition.event) == (final, action, event)
    assert transition.state.canary_weight == 0


def test_commands() -> None:
    paused = command(progressing(1), Command.PAUSE, NOW).state
    assert paused.paused
    with pytest.raises(CommandError, match="already paused"):
        command(paused, Command.PAUSE, NOW)
    later = NOW + timedelta(seconds=99)
    resumed = command(paused, Command.RESUME, later).state
    assert not resumed.paused and resumed.window_start == later
    with pytest.raises(CommandError, match="not paused"):
        command(resumed, Command.RESUME, NOW)
    with pytest.raises(CommandError, match="only a rollout in its shadow phase or steps"):
        command(state(), Command.PROMOTE, NOW)
    aborted = command(progressing(1), Command.ABORT, NOW).state
    assert (aborted.phase, aborted.aborted, aborted.canary_weight) == (Phase.ROLLING_BACK, True, 0)
    assert finish(aborted, NOW).state.phase is Phase.ABORTED
    with pytest.raises(CommandError, match="succeeded"):
        command(state(phase=Phase.SUCCEEDED), Command.ABORT, NOW)
    with pytest.raises(ValueError, match="is not a valid Command"):
        command(progressing(0), Command("explode"), NOW)


def test_promote_is_the_next_step_and_full_is_the_end() -> None:
    """Argo Rollouts' promote: one step on (the window starts again at the new weight),
    from the last step the promotion; ``full`` promotes now. A paused or held rollout is
    let go: the user decided."""
    paused = progressing(0).model_copy(update={"paused": True, "held_by": HookType.ROLLOUT})
    step = command(paused, Command.PROMOTE, LATER)
    assert (step.action, step.state.phase, step.state.step_index) == ("step", Phase.PROGRESSING, 1)
    assert step.state.canary_weight == SPEC.steps[1] and step.state.window_start == LATER
    assert not step.state.paused and step.state.held_by is None
    assert "step 2" in step.state.message and step.event == "step"
    last = command(progressing(len(SPEC.steps) - 1), Command.PROMOTE, NOW)
    assert (last.action, last.state.phase) == ("promote", Phase.PROMOTING)
    full = command(progressing(0), Command.PROMOTE, NOW, full=True)
    assert (full.action, full.state.phase) == ("promote", Phase.PROMOTING)
    shadow = state(phase=Phase.SHADOW)
    first = command(shadow, Command.PROMOTE, NOW)
    assert (first.state.phase, first.state.step_index, first.state.canary_weight) == (
        Phase.PROGRESSING,
        0,
        SPEC.steps[0],
    )
    assert command(shadow, Command.PROMOTE, NOW, full=True).state.phase is Phase.PROMOTING


def test_spec_validation_and_overrides() -> None:
    from gate.core.spec import AnalysisOverrides

    with pytest.raises(ValueError, match="steps must increase"):
        AnalysisSpec(steps=[50, 10])
    with pytest.raises(ValueError):
        AnalysisSpec(steps=[0, 150])
    spec = AnalysisOverrides(step_weight=20, max_weight=60).apply(SPEC)
    assert spec.steps == [20, 40, 60] and spec.failure_limit == SPEC.failure_limit
    with pytest.raises(ValueError, match="not both"):
        AnalysisOverrides(steps=[10], step_weight=10)


def test_an_error_early_in_a_step_waits_but_never_shortens_the_step() -> None:
    started = progressing(0).start_window(NOW)
    assert started.step_deadline is not None
    early = NOW + timedelta(seconds=2)
    moved = after_tick(started, verdict(Outcome.ERROR), early, False)
    assert moved is not None and moved.action is Action.RETRY_ANALYSIS
    assert moved.state.step_deadline == started.step_deadline  # still 30 s after the start
    assert moved.state.not_before == early + timedelta(seconds=10)
    late = started.step_deadline + timedelta(seconds=1)
    again = after_tick(started, verdict(Outcome.ERROR), late, True)
    assert again is not None and again.state.step_deadline == late + timedelta(seconds=10)
