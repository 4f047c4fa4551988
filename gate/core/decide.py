"""The rollout state machine, pure: (state, verdict or command, now) -> next state + action.

The controller persists the returned state before it touches traffic, so a gate killed
at any moment restarts from a state that says exactly which step it is on.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, Field

from gate.analysis import RoleWindow, Verdict
from gate.spec import TERMINAL, AnalysisSpec, Candidate, Outcome, Phase


class RolloutState(BaseModel):
    id: str
    model: str
    candidate: Candidate
    spec: AnalysisSpec
    phase: Phase = Phase.VALIDATING
    paused: bool = False
    aborted: bool = False
    step_index: int = -1
    canary_weight: int = 0
    failures: int = 0
    inconclusive: int = 0
    errors: int = 0
    window_start: datetime | None = None
    step_deadline: datetime | None = None
    window_baseline: dict[str, Any] | None = None
    stable_version: str | None = None
    stable_reference: RoleWindow | None = None
    backend_state: dict[str, Any] = Field(default_factory=dict)
    message: str = ""
    created_at: datetime
    updated_at: datetime

    @property
    def terminal(self) -> bool:
        return self.phase in TERMINAL

    def start_window(self, now: datetime) -> RolloutState:
        return self.model_copy(
            update={
                "window_start": now,
                "window_baseline": None,
                "step_deadline": now + timedelta(seconds=self.spec.step_interval_s),
            }
        )


class Transition(BaseModel):
    state: RolloutState
    action: str  # what the controller must do next, and what the history records
    event: str | None = None  # webhook event name, if the change is worth announcing


class CommandError(ValueError):
    """A manual command that does not apply in the rollout's current phase (HTTP 409)."""


def begin_canary(state: RolloutState, now: datetime, reason: str) -> Transition:
    """The accuracy gate passed: first step."""
    first = state.model_copy(
        update={
            "phase": Phase.PROGRESSING,
            "step_index": 0,
            "canary_weight": state.spec.steps[0],
            "message": reason,
            "updated_at": now,
        }
    )
    return Transition(state=first.start_window(now), action="step", event="step")


def fail_validation(state: RolloutState, now: datetime, reason: str) -> Transition:
    failed = state.model_copy(
        update={"phase": Phase.FAILED, "canary_weight": 0, "message": reason, "updated_at": now}
    )
    return Transition(state=failed, action="fail", event="failure")


def after_analysis(state: RolloutState, verdict: Verdict, now: datetime) -> Transition:
    """What one judged window means for the rollout."""
    spec = state.spec
    updates: dict[str, Any] = {"updated_at": now, "message": verdict.reason}
    measured = verdict.measurement
    if measured is not None and measured.stable.requests >= spec.min_requests:
        updates["stable_reference"] = measured.stable

    if verdict.outcome is Outcome.PASS:
        updates.update(inconclusive=0, errors=0)
        following = state.step_index + 1
        if following >= len(spec.steps):
            done = state.model_copy(update={**updates, "phase": Phase.PROMOTING})
            return Transition(state=done, action="promote")
        moved = state.model_copy(
            update={**updates, "step_index": following, "canary_weight": spec.steps[following]}
        )
        return Transition(state=moved.start_window(now), action="step", event="step")

    if verdict.outcome is Outcome.FAIL:
        failures = state.failures + 1
        updates.update(failures=failures, errors=0)
        if failures >= spec.failure_limit:
            return _rollback(
                state,
                updates,
                f"failure limit reached ({failures}/{spec.failure_limit}): {verdict.reason}",
            )
        retried = state.model_copy(update=updates)
        return Transition(state=retried.start_window(now), action="retry-step")

    if verdict.outcome is Outcome.INCONCLUSIVE:
        inconclusive = state.inconclusive + 1
        updates.update(inconclusive=inconclusive, errors=0)
        if inconclusive >= spec.inconclusive_limit:
            return _rollback(
                state,
                updates,
                f"inconclusive limit reached ({inconclusive}/"
                f"{spec.inconclusive_limit}): {verdict.reason}",
            )
        # Extend: keep the window (its data still counts) and wait one more interval.
        updates["step_deadline"] = now + timedelta(seconds=spec.step_interval_s)
        return Transition(state=state.model_copy(update=updates), action="extend-step")

    errors = state.errors + 1
    updates["errors"] = errors
    if errors >= spec.error_limit:
        return _rollback(
            state,
            updates,
            f"metrics error limit reached ({errors}/{spec.error_limit}): {verdict.reason}",
        )
    updates["step_deadline"] = now + timedelta(seconds=min(spec.step_interval_s, 10.0))
    return Transition(state=state.model_copy(update=updates), action="retry-analysis")


def _rollback(state: RolloutState, updates: dict[str, Any], reason: str) -> Transition:
    rolled = state.model_copy(
        update={**updates, "phase": Phase.ROLLING_BACK, "canary_weight": 0, "message": reason}
    )
    return Transition(state=rolled, action="rollback")


def finish(state: RolloutState, now: datetime) -> Transition:
    """After the backend promoted or rolled back: the terminal phase."""
    if state.phase is Phase.PROMOTING:
        done = state.model_copy(
            update={
                "phase": Phase.SUCCEEDED,
                "canary_weight": 0,
                "updated_at": now,
                "message": f"version {state.candidate.version} promoted to stable",
            }
        )
        return Transition(state=done, action="promoted", event="promotion")
    final = Phase.ABORTED if state.aborted else Phase.ROLLED_BACK
    done = state.model_copy(update={"phase": final, "canary_weight": 0, "updated_at": now})
    return Transition(
        state=done, action="aborted" if state.aborted else "rolled-back", event="rollback"
    )


def command(state: RolloutState, name: str, now: datetime) -> Transition:
    """Manual control: pause, resume, promote, abort."""
    if state.terminal:
        raise CommandError(f"rollout {state.id} is {state.phase.value}; nothing to {name}")
    base = {"updated_at": now}
    if name == "pause":
        if state.paused:
            raise CommandError(f"rollout {state.id} is already paused")
        paused = state.model_copy(update={**base, "paused": True, "message": "paused by user"})
        return Transition(state=paused, action="pause", event="pause")
    if name == "resume":
        if not state.paused:
            raise CommandError(f"rollout {state.id} is not paused")
        resumed = state.model_copy(update={**base, "paused": False, "message": "resumed by user"})
        if resumed.phase is Phase.PROGRESSING:
            resumed = resumed.start_window(now)  # a paused window is not evidence
        return Transition(state=resumed, action="resume", event="resume")
    if name == "promote":
        if state.phase is not Phase.PROGRESSING:
            raise CommandError(
                f"rollout {state.id} is {state.phase.value}; only a "
                "progressing canary can be promoted"
            )
        promoted = state.model_copy(
            update={
                **base,
                "phase": Phase.PROMOTING,
                "paused": False,
                "message": "promoted by user",
            }
        )
        return Transition(state=promoted, action="promote")
    if name == "abort":
        if state.phase in (Phase.PROMOTING, Phase.ROLLING_BACK):
            raise CommandError(f"rollout {state.id} is already {state.phase.value}")
        aborted = state.model_copy(
            update={
                **base,
                "phase": Phase.ROLLING_BACK,
                "paused": False,
                "aborted": True,
                "canary_weight": 0,
                "message": "aborted by user",
            }
        )
        return Transition(state=aborted, action="rollback")
    raise CommandError(f"unknown command {name!r}")
