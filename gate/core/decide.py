"""The rollout state machine, pure: (state, verdict or command, now) -> next state + action.

Every transition of a rollout is here, the accuracy gate's included, as a function that
returns a :class:`Transition`: the state to persist and the typed :class:`Action` the
controller carries out *after* persisting it. So a gate killed at any moment restarts
from a state that says exactly what it was doing, and the controller holds no rules of
its own (it dispatches on the action with an exhaustive ``match``).

Outcomes follow Argo Rollouts: pass, fail, inconclusive (not enough evidence yet) and
error (the evidence could not be gathered), each with its own limit. Any unexpected
failure inside a tick is an error too (:func:`after_error`), so no rollout can be retried
forever without a recorded decision and a limit.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

from gate.core.analysis import Verdict
from gate.core.errors import Conflict
from gate.core.hooks import APPROVABLE, APPROVAL, HookType, of_type
from gate.core.paired import ShadowVerdict
from gate.core.spec import Outcome, Phase
from gate.core.state import RolloutState

MAX_BACKOFF_S = 30.0


class Action(StrEnum):
    """What a decision did; the controller's next move and the history's vocabulary."""

    CREATE = "create"
    CANDIDATE_STARTED = "candidate-started"  # deployed with no traffic; readiness awaited
    RETRY_VALIDATION = "retry-validation"  # accuracy gate could not run: try again later
    FAIL = "fail"  # accuracy gate or shadow failed: the candidate never answers a user
    SHADOW = "shadow"  # live requests replayed to the candidate, answers compared
    STEP = "step"  # next canary weight
    RETRY_STEP = "retry-step"  # a failed analysis below the limit: judge the step again
    EXTEND_STEP = "extend-step"  # inconclusive: the window goes on
    RETRY_ANALYSIS = "retry-analysis"  # evidence missing (error): try again soon
    RECONCILE = "reconcile"  # the traffic layer disagreed with the persisted weight
    PROMOTE = "promote"
    PROMOTED = "promoted"
    WATCH = "watch"  # promoted; the previous stable kept warm and compared on labels
    WATCHED = "watched"  # the watch is over: the previous stable can go
    ROLLBACK = "rollback"
    ROLLED_BACK = "rolled-back"
    ABORTED = "aborted"
    RETRY = "retry"  # promoting, rolling back or a pre-rollout hook failed: again later
    PAUSE = "pause"
    RESUME = "resume"
    HOLD = "hold"  # a confirm-* hook refused the next move: asked again each tick
    APPROVE = "approve"  # a user answered the gate's own approval hook
    HOOKS = "hooks"  # hook answers recorded (post-rollout), nothing else changed


class Command(StrEnum):
    """Manual control, as Argo Rollouts' ``kubectl argo rollouts`` offers it."""

    PAUSE = "pause"
    RESUME = "resume"
    PROMOTE = "promote"
    ABORT = "abort"


class Transition(BaseModel):
    state: RolloutState
    action: Action
    event: str | None = None  # webhook event name, if the change is worth announcing


class ValidationVerdict(BaseModel):
    """The accuracy gate's outcome for one attempt.

    ``inconclusive`` means the candidate is not ready yet: waiting is a state with a
    deadline (``RolloutState.candidate_deadline``), not a blocked tick.
    """

    outcome: Outcome
    reason: str
    evidence: dict[str, Any] = Field(default_factory=dict)


class CommandError(Conflict):
    """A manual command that does not apply in the rollout's current phase (HTTP 409)."""


def backoff(errors: int) -> timedelta:
    """1, 2, 4 ... seconds after consecutive errors, at most 30: retries without a busy loop."""
    return timedelta(seconds=min(2.0 ** max(errors - 1, 0), MAX_BACKOFF_S))


# --- accuracy gate ----------------------------------------------------------------------


def candidate_started(
    state: RolloutState, backend_state: dict[str, Any], now: datetime, ready_timeout_s: float
) -> Transition:
    """The deployer accepted the candidate; it has ``ready_timeout_s`` to become ready."""
    started = state.model_copy(
        update={
            "candidate_started": True,
            "candidate_deadline": now + timedelta(seconds=ready_timeout_s),
            "backend_state": {**state.backend_state, **backend_state},
            "message": "candidate started; waiting for it to be ready",
            "updated_at": now,
        }
    )
    return Transition(state=started, action=Action.CANDIDATE_STARTED)


def after_validation(
    state: RolloutState, verdict: ValidationVerdict, now: datetime
) -> Transition | None:
    """What one attempt of the accuracy gate means; ``None``: keep waiting, nothing to record."""
    if verdict.outcome is Outcome.PASS:
        if state.spec.shadow_s > 0 and state.stable_version is not None:
            return _start_shadow(state, now, f"{verdict.reason}; shadow evaluation begins")
        return _first_step(state, now, verdict.reason)
    if verdict.outcome is Outcome.FAIL:
        return _fail(state, now, verdict.reason)
    if verdict.outcome is Outcome.INCONCLUSIVE:
        deadline = state.candidate_deadline
        if deadline is None or now < deadline:
            return None
        return _fail(state, now, f"accuracy gate: {verdict.reason} by the deadline {deadline}")
    errors = state.errors + 1
    if errors >= state.spec.error_limit:
        return _fail(
            state.model_copy(update={"errors": errors}),
            now,
            f"accuracy gate error limit reached ({errors}/{state.spec.error_limit}): "
            f"{verdict.reason}",
        )
    return _retry(
        state, errors, now, f"accuracy gate waiting: {verdict.reason}", Action.RETRY_VALIDATION
    )


def _first_step(state: RolloutState, now: datetime, message: str) -> Transition:
    first = state.model_copy(
        update={
            "phase": Phase.PROGRESSING,
            "step_index": 0,
            "canary_weight": state.spec.steps[0],
            "errors": 0,
            "not_before": None,
            "message": message,
            "updated_at": now,
        }
    )
    return Transition(state=first.start_window(now), action=Action.STEP, event="step")


def _start_shadow(state: RolloutState, now: datetime, message: str) -> Transition:
    """The shadow phase's window: pairs of requests logged from ``now`` on count, until
    ``now + shadow_s`` at the latest."""
    shadow = state.model_copy(
        update={
            "phase": Phase.SHADOW,
            "canary_weight": 0,
            "errors": 0,
            "not_before": None,
            "window_start": now,
            "window_baseline": None,
            "step_deadline": now + timedelta(seconds=state.spec.shadow_s),
            "message": message,
            "updated_at": now,
        }
    )
    return Transition(state=shadow, action=Action.SHADOW, event="shadow")


# --- shadow evaluation --------------------------------------------------------------------


def after_shadow(
    state: RolloutState, verdict: ShadowVerdict, now: datetime, deadline_reached: bool
) -> Transition | None:
    """What one look at the paired answers means. Like a step's analysis it may look every
    tick (the intervals are anytime-valid); undecided at the budget's end, the canary
    steps begin and judge again on the traffic the candidate then answers. ``None``:
    nothing to record."""
    match verdict.outcome:
        case Outcome.PASS:
            return _first_step(state, now, f"{verdict.reason}; canary steps begin")
        case Outcome.FAIL:
            return _fail(state, now, verdict.reason)
        case Outcome.INCONCLUSIVE:
            if not deadline_reached:
                return None
            return _first_step(
                state,
                now,
                f"shadow budget of {state.spec.shadow_s:g} s spent undecided ({verdict.reason}); "
                "canary steps begin",
            )
        case Outcome.ERROR:
            errors = state.errors + 1
            if errors >= state.spec.error_limit:
                return _fail(
                    state.model_copy(update={"errors": errors}),
                    now,
                    f"shadow error limit reached ({errors}/{state.spec.error_limit}): "
                    f"{verdict.reason}",
                )
            return _retry(state, errors, now, verdict.reason, Action.RETRY_ANALYSIS)


def _retry(
    state: RolloutState, errors: int, now: datetime, message: str, action: Action
) -> Transition:
    """Try again after a back-off; the error count goes on towards the limit."""
    retry = state.model_copy(
        update={
            "errors": errors,
            "not_before": now + backoff(errors),
            "message": message,
            "updated_at": now,
        }
    )
    return Transition(state=retry, action=action)


def _fail(state: RolloutState, now: datetime, reason: str) -> Transition:
    failed = state.model_copy(
        update={
            "phase": Phase.FAILED,
            "canary_weight": 0,
            "held_by": None,
            "message": reason,
            "updated_at": now,
        }
    )
    return Transition(state=failed, action=Action.FAIL, event="failure")


# --- canary steps -----------------------------------------------------------------------


def after_tick(
    state: RolloutState, verdict: Verdict, now: datetime, deadline_reached: bool
) -> Transition | None:
    """What one look at the evidence means. The analysis may look every tick (its
    intervals are anytime-valid): a pass or a fail counts at once, an error too; not
    enough evidence only counts at the step's deadline. ``None``: nothing to record."""
    if verdict.outcome is Outcome.INCONCLUSIVE and not deadline_reached:
        return None
    return after_analysis(state, verdict, now)


def after_analysis(state: RolloutState, verdict: Verdict, now: datetime) -> Transition:
    """What one judged look means for the rollout."""
    spec = state.spec
    updates: dict[str, Any] = {"updated_at": now, "message": verdict.reason, "not_before": None}
    if verdict.totals is not None and verdict.outcome in (Outcome.PASS, Outcome.FAIL):
        updates["evidence"] = verdict.totals  # the window ends: its data joins the rest

    if verdict.outcome is Outcome.PASS:
        updates.update(inconclusive=0, errors=0)
        following = state.step_index + 1
        if following >= len(spec.steps):
            done = state.model_copy(update={**updates, "phase": Phase.PROMOTING})
            return Transition(state=done, action=Action.PROMOTE)
        moved = state.model_copy(
            update={**updates, "step_index": following, "canary_weight": spec.steps[following]}
        )
        return Transition(state=moved.start_window(now), action=Action.STEP, event="step")

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
        return Transition(state=retried.start_window(now), action=Action.RETRY_STEP)

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
        return Transition(state=state.model_copy(update=updates), action=Action.EXTEND_STEP)

    errors = state.errors + 1
    updates["errors"] = errors
    if errors >= spec.error_limit:
        return _rollback(
            state,
            updates,
            f"error limit reached ({errors}/{spec.error_limit}): {verdict.reason}",
        )
    # Look again soon, not every tick: each look that fails to gather evidence counts.
    # An error early in a step never shortens it.
    retry_at = now + timedelta(seconds=min(spec.step_interval_s, 10.0))
    deadline = max(state.step_deadline, retry_at) if state.step_deadline else retry_at
    updates.update(step_deadline=deadline, not_before=retry_at)
    return Transition(state=state.model_copy(update=updates), action=Action.RETRY_ANALYSIS)


def reconcile(state: RolloutState, now: datetime) -> Transition:
    """The traffic layer shows another weight: persisted intent wins, and the window
    restarts because it saw other weights."""
    return Transition(
        state=state.start_window(now).model_copy(update={"updated_at": now}),
        action=Action.RECONCILE,
    )


def _rollback(state: RolloutState, updates: dict[str, Any], reason: str) -> Transition:
    rolled = state.model_copy(
        update={
            **updates,
            "phase": Phase.ROLLING_BACK,
            "canary_weight": 0,
            "not_before": None,
            "held_by": None,
            "message": reason,
        }
    )
    return Transition(state=rolled, action=Action.ROLLBACK)


# --- errors anywhere ----------------------------------------------------------------------


def after_error(state: RolloutState, reason: str, now: datetime) -> Transition:
    """Anything that went wrong in a tick, expected or not, as an ``error`` outcome.

    It counts against the rollout's ``error_limit`` wherever it happens: the accuracy gate
    fails, a canary rolls back, a promotion that cannot complete rolls back. A rollback
    that cannot complete is retried (with back-off, each attempt recorded): giving up would
    leave traffic on a candidate that was judged bad.
    """
    if state.phase is Phase.VALIDATING:
        transition = after_validation(
            state, ValidationVerdict(outcome=Outcome.ERROR, reason=reason), now
        )
        assert transition is not None  # an error always leads somewhere
        return transition
    if state.phase is Phase.PROGRESSING:
        return after_analysis(state, Verdict(outcome=Outcome.ERROR, reason=reason), now)
    if state.phase is Phase.SHADOW:
        transition = after_shadow(
            state, ShadowVerdict(outcome=Outcome.ERROR, reason=reason), now, False
        )
        assert transition is not None  # an error always leads somewhere
        return transition
    if state.phase is Phase.WATCHING:
        transition = after_watch(
            state, ShadowVerdict(outcome=Outcome.ERROR, reason=reason), now, False
        )
        assert transition is not None  # an error always leads somewhere
        return transition
    errors = state.errors + 1
    if state.phase is Phase.PROMOTING and errors >= state.spec.error_limit:
        return _rollback(
            state,
            {"errors": errors, "updated_at": now},
            f"promotion failed, error limit reached ({errors}/{state.spec.error_limit}): {reason}",
        )
    return _retry(
        state, errors, now, f"{state.phase.value} failed, retrying: {reason}", Action.RETRY
    )


# --- the end ------------------------------------------------------------------------------


def finish(state: RolloutState, now: datetime) -> Transition:
    """After the traffic layer promoted or rolled back: the terminal phase, or after a
    promotion with ``watch_s`` and a previous stable to compare with, the watch."""
    if state.phase is Phase.PROMOTING and state.spec.watch_s > 0 and state.stable_version:
        watching = state.model_copy(
            update={
                "phase": Phase.WATCHING,
                "promoted": True,
                "canary_weight": 0,
                "errors": 0,
                "not_before": None,
                "window_start": now,
                "window_baseline": None,
                "step_deadline": now + timedelta(seconds=state.spec.watch_s),
                "updated_at": now,
                "message": (
                    f"version {state.candidate.version} promoted to stable; watching it against "
                    f"version {state.stable_version} for {state.spec.watch_s:g} s"
                ),
            }
        )
        return Transition(state=watching, action=Action.WATCH, event="promotion")
    if state.phase is Phase.PROMOTING:
        done = state.model_copy(
            update={
                "phase": Phase.SUCCEEDED,
                "promoted": True,
                "canary_weight": 0,
                "errors": 0,
                "not_before": None,
                "updated_at": now,
                "message": f"version {state.candidate.version} promoted to stable",
            }
        )
        return Transition(state=done, action=Action.PROMOTED, event="promotion")
    final = Phase.ABORTED if state.aborted else Phase.ROLLED_BACK
    done = state.model_copy(
        update={"phase": final, "canary_weight": 0, "not_before": None, "updated_at": now}
    )
    return Transition(
        state=done,
        action=Action.ABORTED if state.aborted else Action.ROLLED_BACK,
        event="rollback",
    )


# --- the post-promotion watch ------------------------------------------------------------


def after_watch(
    state: RolloutState, verdict: ShadowVerdict, now: datetime, deadline_reached: bool
) -> Transition | None:
    """What one look at the watch's pairs means (:func:`gate.core.paired.judge_watch`:
    it can only fail). ``None``: nothing to record yet."""
    match verdict.outcome:
        case Outcome.FAIL if state.spec.watch_rollback:
            return _rollback(
                state, {"updated_at": now, "errors": 0}, f"{verdict.reason}; rolling back"
            )
        case Outcome.FAIL:
            return _watched(
                state, now, f"{verdict.reason}; kept (watch_rollback is off)", "watch-failure"
            )
        case Outcome.PASS | Outcome.INCONCLUSIVE:
            if not deadline_reached:
                return None
            return _watched(
                state, now, f"watch over after {state.spec.watch_s:g} s: {verdict.reason}", "watch"
            )
        case Outcome.ERROR:
            errors = state.errors + 1
            if errors >= state.spec.error_limit:
                message = (
                    f"watch ended at the error limit ({errors}/{state.spec.error_limit}): "
                    f"{verdict.reason}"
                )
                return _watched(state.model_copy(update={"errors": errors}), now, message, None)
            return _retry(state, errors, now, verdict.reason, Action.RETRY_ANALYSIS)


def _watched(state: RolloutState, now: datetime, message: str, event: str | None) -> Transition:
    done = state.model_copy(
        update={
            "phase": Phase.SUCCEEDED,
            "errors": 0,
            "not_before": None,
            "paused": False,
            "updated_at": now,
            "message": message,
        }
    )
    return Transition(state=done, action=Action.WATCHED, event=event)


# --- gating hooks -----------------------------------------------------------------------


def hold(state: RolloutState, kind: HookType, reason: str, now: datetime) -> Transition | None:
    """A confirm-* hook refused the move: the rollout stays where it is and asks again
    next tick. ``None`` when it already waits for the same reason (one decision per
    change, not one per tick)."""
    message = f"waiting: {reason}"
    if state.held_by is kind and state.message == message:
        return None
    held = state.model_copy(update={"held_by": kind, "message": message, "updated_at": now})
    return Transition(state=held, action=Action.HOLD, event="hold")


def let_through(transition: Transition, kind: HookType) -> Transition:
    """The move the ``kind`` hooks allowed: no longer held, and an approval of that type
    is used up (the next raise of the weight asks again)."""
    state = transition.state
    approvals = [a for a in state.approvals if a is not kind]
    return transition.model_copy(
        update={"state": state.model_copy(update={"held_by": None, "approvals": approvals})}
    )


def pre_rollout_failed(state: RolloutState, reason: str, now: datetime) -> Transition:
    """A pre-rollout hook refused the first step: a failed check (Flagger counts it with
    the analysis' failures). Below the limit the rollout stays where it was and tries
    again after a step interval; at the limit it fails having answered no user."""
    failures = state.failures + 1
    counted = state.model_copy(update={"failures": failures, "held_by": None})
    if failures >= state.spec.failure_limit:
        return _fail(
            counted, now, f"failure limit reached ({failures}/{state.spec.failure_limit}): {reason}"
        )
    again = now + timedelta(seconds=min(state.spec.step_interval_s, 30.0))
    retry = counted.model_copy(
        update={"not_before": again, "message": f"{reason}; asked again", "updated_at": now}
    )
    return Transition(state=retry, action=Action.RETRY)


def hook_rollback(state: RolloutState, reason: str, now: datetime) -> Transition:
    """A rollback hook said yes: before the first step the rollout fails (no user got a
    candidate's answer), during the steps it rolls back."""
    if state.phase is Phase.PROGRESSING:
        return _rollback(state, {"updated_at": now}, reason)
    return _fail(state, now, reason)


def approve(state: RolloutState, kind: HookType | None, now: datetime) -> Transition:
    """A user answers the gate's own approval hook of type ``kind`` (default: the one the
    rollout waits for). Approving ahead is allowed; a type the rollout has no approval
    hook of is a conflict, as is approving a finished rollout."""
    if state.terminal:
        raise CommandError(f"rollout {state.id} is {state.phase.value}; nothing to approve")
    wanted = kind or state.held_by
    if wanted is None:
        raise CommandError(
            f"rollout {state.id} waits for no approval; name the hook type to approve ahead"
        )
    if wanted not in APPROVABLE or not any(
        hook.url == APPROVAL for hook in of_type(state.spec.hooks, wanted)
    ):
        raise CommandError(
            f"rollout {state.id} has no {wanted.value} hook with url '{APPROVAL}' to approve"
        )
    approvals = state.approvals if wanted in state.approvals else [*state.approvals, wanted]
    approved = state.model_copy(
        update={
            "approvals": approvals,
            "message": f"{wanted.value} approved by user",
            "updated_at": now,
        }
    )
    return Transition(state=approved, action=Action.APPROVE, event="approval")


# --- manual control -----------------------------------------------------------------------


def _promoted_by_user(state: RolloutState, now: datetime, full: bool) -> Transition:
    following = state.step_index + 1
    base = {"paused": False, "held_by": None, "errors": 0, "not_before": None, "updated_at": now}
    if full or following >= len(state.spec.steps):
        promoted = state.model_copy(
            update={**base, "phase": Phase.PROMOTING, "message": "promoted by user"}
        )
        return Transition(state=promoted, action=Action.PROMOTE)
    weight = state.spec.steps[following]
    moved = state.model_copy(
        update={
            **base,
            "phase": Phase.PROGRESSING,
            "step_index": following,
            "canary_weight": weight,
            "message": f"promoted by user to step {following + 1} ({weight} %)",
        }
    )
    return Transition(state=moved.start_window(now), action=Action.STEP, event="step")


def command(state: RolloutState, name: Command, now: datetime, full: bool = False) -> Transition:
    """Manual control: pause, resume, promote, abort. ``promote`` is Argo Rollouts': the
    next step (from the shadow phase: the first), or with ``full`` straight to the end."""
    if state.terminal:
        raise CommandError(f"rollout {state.id} is {state.phase.value}; nothing to {name.value}")
    base = {"updated_at": now}
    match name:
        case Command.PAUSE:
            if state.paused:
                raise CommandError(f"rollout {state.id} is already paused")
            paused = state.model_copy(update={**base, "paused": True, "message": "paused by user"})
            return Transition(state=paused, action=Action.PAUSE, event="pause")
        case Command.RESUME:
            if not state.paused:
                raise CommandError(f"rollout {state.id} is not paused")
            resumed = state.model_copy(
                update={**base, "paused": False, "message": "resumed by user"}
            )
            if resumed.phase is Phase.PROGRESSING:
                resumed = resumed.start_window(now)  # a paused window is not evidence
            elif resumed.phase in (Phase.SHADOW, Phase.WATCHING):  # its budget starts again
                budget = (
                    state.spec.shadow_s if resumed.phase is Phase.SHADOW else state.spec.watch_s
                )
                deadline = now + timedelta(seconds=budget)  # the pairs so far still count
                resumed = resumed.model_copy(update={"step_deadline": deadline})
            return Transition(state=resumed, action=Action.RESUME, event="resume")
        case Command.PROMOTE:
            if state.phase is Phase.WATCHING:  # accept the new stable: the watch ends
                return _watched(state, now, "watch ended by user: new stable kept", None)
            if state.phase not in (Phase.PROGRESSING, Phase.SHADOW):
                raise CommandError(
                    f"rollout {state.id} is {state.phase.value}; only a rollout in its "
                    "shadow phase or steps (or a watched promotion) can be promoted"
                )
            return _promoted_by_user(state, now, full)
        case Command.ABORT:
            if state.phase in (Phase.PROMOTING, Phase.ROLLING_BACK):
                raise CommandError(f"rollout {state.id} is already {state.phase.value}")
            aborted = state.model_copy(
                update={
                    **base,
                    "phase": Phase.ROLLING_BACK,
                    "paused": False,
                    "aborted": True,
                    "held_by": None,
                    "canary_weight": 0,
                    "errors": 0,
                    "not_before": None,
                    "message": "aborted by user",
                }
            )
            return Transition(state=aborted, action=Action.ROLLBACK)


__all__ = [
    "Action",
    "Command",
    "CommandError",
    "RolloutState",
    "Transition",
    "ValidationVerdict",
    "after_analysis",
    "after_error",
    "after_shadow",
    "after_tick",
    "after_validation",
    "after_watch",
    "approve",
    "candidate_started",
    "command",
    "finish",
    "hold",
    "hook_rollback",
    "let_through",
    "pre_rollout_failed",
    "reconcile",
]
