"""The rollout controller: one idempotent tick per rollout, like Flagger's advanceCanary.

read persisted state -> read the actual weight from the traffic backend -> query metrics
-> decide (pure, :mod:`gate.decide`) -> persist state + decision + event -> apply.

State is persisted *before* traffic is changed. If the gate dies between the two, the
next tick finds the backend's weight differing from the persisted one and converges it
(recorded as ``reconcile``), so no step is skipped and none is judged twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx

from gate.analysis import Verdict, analyze
from gate.decide import (
    CommandError,
    RolloutState,
    Transition,
    after_analysis,
    begin_canary,
    command,
    fail_validation,
    finish,
)
from gate.metrics import MetricsProvider, MetricsUnavailable
from gate.observability import GateMetrics
from gate.replay import ReplayError, judge_accuracy, load_holdout, replay
from gate.spec import AnalysisOverrides, AnalysisSpec, Candidate, Outcome, Phase
from gate.store import SQLiteStore
from gate.traffic import TrafficBackend, TrafficError

logger = logging.getLogger(__name__)


class RolloutNotFound(KeyError):
    pass


def utcnow() -> datetime:
    return datetime.now(UTC)


class RolloutController:
    def __init__(
        self,
        store: SQLiteStore,
        backend: TrafficBackend,
        provider: MetricsProvider,
        defaults: AnalysisSpec,
        metrics: GateMetrics | None = None,
        clock: Callable[[], datetime] = utcnow,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.store = store
        self.backend = backend
        self.provider = provider
        self.defaults = defaults
        self.metrics = metrics
        self.clock = clock
        self._http = http or httpx.AsyncClient(timeout=30.0)
        self._locks: dict[str, asyncio.Lock] = {}

    # --- API-facing ----------------------------------------------------------------------
    def create(
        self, model: str, candidate: Candidate, overrides: AnalysisOverrides | None = None
    ) -> RolloutState:
        spec = overrides.apply(self.defaults) if overrides else self.defaults
        now = self.clock()
        stable = self.store.stable(model)
        state = RolloutState(
            id=uuid.uuid4().hex[:12],
            model=model,
            candidate=candidate,
            spec=spec,
            stable_version=stable.version if stable else None,
            message="created; accuracy gate pending",
            created_at=now,
            updated_at=now,
        )
        self.store.create(
            state,
            {
                "action": "create",
                "reason": state.message,
                "evidence": {"candidate": candidate.model_dump(), "spec": spec.model_dump()},
            },
            ("start", self._event_payload(state, "start")),
        )
        self._observe(state, "create", None)
        return state

    def get(self, rollout_id: str) -> RolloutState:
        state = self.store.get(rollout_id)
        if state is None:
            raise RolloutNotFound(rollout_id)
        return state

    async def command(self, rollout_id: str, name: str) -> RolloutState:
        async with self._lock(rollout_id):
            state = self.get(rollout_id)
            transition = command(state, name, self.clock())
            self._save(transition, outcome=None, evidence={"command": name})
            state = transition.state
        if state.phase in (Phase.PROMOTING, Phase.ROLLING_BACK):
            await self.tick(rollout_id)  # act on promote/abort at once
            state = self.get(rollout_id)
        return state

    # --- the loop ------------------------------------------------------------------------
    async def run(self, interval_s: float, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.tick_all()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval_s)

    async def tick_all(self) -> None:
        for state in self.store.rollouts(active_only=True):
            try:
                await self.tick(state.id)
            except Exception:  # one broken rollout must not stop the others
                logger.exception("tick failed for rollout %s", state.id)

    async def tick(self, rollout_id: str) -> RolloutState:
        async with self._lock(rollout_id):
            state = self.get(rollout_id)
            if state.terminal or state.paused:
                return state
            if state.phase is Phase.VALIDATING:
                await self._validate(state)
            elif state.phase is Phase.PROGRESSING:
                await self._progress(state)
            else:
                await self._finish(state)
            return self.get(rollout_id)

    def _lock(self, rollout_id: str) -> asyncio.Lock:
        return self._locks.setdefault(rollout_id, asyncio.Lock())

    # --- phases --------------------------------------------------------------------------
    async def _validate(self, state: RolloutState) -> None:
        offline = state.candidate.offline_metrics["accuracy"]
        evidence: dict[str, Any] = {
            "offline_accuracy": offline,
            "threshold": state.spec.accuracy_threshold,
            "tolerance": state.spec.accuracy_tolerance,
        }
        try:
            updates = await self.backend.start_candidate(state)
            if updates:
                state = state.model_copy(
                    update={"backend_state": {**state.backend_state, **updates}}
                )
                self.store.save(state)  # a restarted gate finds the candidate it started
            holdout = await load_holdout(_holdout_location(state), self._http)
            result = await replay(
                self._http, self.backend.candidate_url(state), state.model, holdout
            )
        except TrafficError as exc:
            # The infrastructure, not the candidate: retry, within the error limit.
            errors = state.errors + 1
            if errors < state.spec.error_limit:
                retry = state.model_copy(
                    update={
                        "errors": errors,
                        "updated_at": self.clock(),
                        "message": f"accuracy gate waiting: {exc}",
                    }
                )
                self._save(
                    Transition(state=retry, action="retry-validation"),
                    outcome=Outcome.ERROR.value,
                    evidence=evidence,
                )
                return
            transition = fail_validation(state, self.clock(), f"accuracy gate: {exc}")
            self._save(transition, outcome=Outcome.ERROR.value, evidence=evidence)
            await self._remove_candidate(transition.state)
            return
        except ReplayError as exc:
            transition = fail_validation(state, self.clock(), f"accuracy gate: {exc}")
            self._save(transition, outcome=Outcome.FAIL.value, evidence=evidence)
            await self._remove_candidate(transition.state)
            return
        evidence.update(
            live_accuracy=result.accuracy,
            replayed_rows=result.rows,
            correct=result.correct,
            replay_retried_requests=result.retried_requests,
        )
        passed, reason = judge_accuracy(state.spec, offline, result.accuracy)
        if not passed:
            transition = fail_validation(state, self.clock(), reason)
            self._save(transition, outcome=Outcome.FAIL.value, evidence=evidence)
            await self._remove_candidate(transition.state)
            return
        transition = begin_canary(state, self.clock(), reason)
        self._save(transition, outcome=Outcome.PASS.value, evidence=evidence)
        await self._apply_weight(transition.state)

    async def _progress(self, state: RolloutState) -> None:
        now = self.clock()
        try:
            actual = await self.backend.get_weight(state)
        except TrafficError as exc:
            await self._judge(
                state, Verdict(outcome=Outcome.ERROR, reason=f"traffic backend: {exc}")
            )
            return
        if actual != state.canary_weight:
            # Persisted intent wins; the window restarts because it saw other weights.
            restarted = state.start_window(now).model_copy(update={"updated_at": now})
            self._save(
                Transition(state=restarted, action="reconcile"),
                outcome=None,
                evidence={"actual_weight": actual, "desired_weight": state.canary_weight},
            )
            await self._apply_weight(restarted)
            return
        if state.window_baseline is None:
            await self._snapshot(state)
            return
        if state.step_deadline is not None and now < state.step_deadline:
            return
        window_s = (now - state.window_start).total_seconds() if state.window_start else 0.0
        try:
            measurement = await self.provider.measure(
                self.backend.metrics_targets(state), state.window_baseline, window_s
            )
            verdict = analyze(state.spec, measurement, state.stable_reference)
        except MetricsUnavailable as exc:
            verdict = Verdict(outcome=Outcome.ERROR, reason=f"metrics: {exc}")
        await self._judge(state, verdict)

    async def _judge(self, state: RolloutState, verdict: Verdict) -> None:
        transition = after_analysis(state, verdict, self.clock())
        evidence = verdict.model_dump(mode="json", exclude={"outcome", "reason"})
        # the decision row shows the state it led to; this is the step that was judged
        evidence["judged"] = {
            "step_index": state.step_index,
            "canary_weight": state.canary_weight,
            "window_start": state.window_start.isoformat() if state.window_start else None,
        }
        self._save(transition, outcome=verdict.outcome.value, evidence=evidence)
        if transition.action in ("step", "retry-step"):
            await self._apply_weight(transition.state)
        elif transition.action in ("promote", "rollback"):
            await self._finish(transition.state)

    async def _finish(self, state: RolloutState) -> None:
        try:
            if state.phase is Phase.PROMOTING:
                await self.backend.promote(state)
            else:
                await self.backend.rollback(state)
        except TrafficError as exc:
            logger.error(
                "rollout %s: %s failed, retrying next tick: %s", state.id, state.phase.value, exc
            )
            return
        self._save(finish(state, self.clock()), outcome=None, evidence={})

    async def _apply_weight(self, state: RolloutState) -> None:
        try:
            await self.backend.set_weight(state, state.canary_weight)
        except TrafficError as exc:
            logger.error(
                "rollout %s: setting weight %d failed (next tick retries): %s",
                state.id,
                state.canary_weight,
                exc,
            )
            return
        await self._snapshot(state)

    async def _snapshot(self, state: RolloutState) -> None:
        """The window starts when its traffic split is in place."""
        try:
            baseline = await self.provider.snapshot(self.backend.metrics_targets(state))
        except MetricsUnavailable as exc:
            logger.warning("rollout %s: baseline snapshot failed: %s", state.id, exc)
            return
        now = self.clock()
        self.store.save(
            state.start_window(now).model_copy(
                update={"window_baseline": baseline, "updated_at": now}
            )
        )

    async def _remove_candidate(self, state: RolloutState) -> None:
        try:
            await self.backend.rollback(state)
        except TrafficError as exc:
            logger.error("rollout %s: removing the candidate failed: %s", state.id, exc)

    # --- records -------------------------------------------------------------------------
    def _save(self, transition: Transition, outcome: str | None, evidence: dict[str, Any]) -> None:
        state = transition.state
        decision = {
            "action": transition.action,
            "outcome": outcome,
            "reason": state.message,
            "evidence": evidence,
        }
        event = None
        if transition.event:
            event = (transition.event, self._event_payload(state, transition.event))
        self.store.save(state, decision, event)
        self._observe(state, transition.action, outcome)
        logger.info(
            "rollout %s %s: %s (phase %s, weight %d)",
            state.id,
            transition.action,
            state.message,
            state.phase.value,
            state.canary_weight,
        )

    def _observe(self, state: RolloutState, action: str, outcome: str | None) -> None:
        if self.metrics is not None:
            self.metrics.record(state, action, outcome)

    @staticmethod
    def _event_payload(state: RolloutState, event: str) -> dict[str, Any]:
        return {
            "event": event,
            "rollout_id": state.id,
            "model": state.model,
            "candidate_version": state.candidate.version,
            "stable_version": state.stable_version,
            "phase": state.phase.value,
            "canary_weight": state.canary_weight,
            "step_index": state.step_index,
            "steps": state.spec.steps,
            "message": state.message,
        }

    async def aclose(self) -> None:
        await self._http.aclose()


def _holdout_location(state: RolloutState) -> str:
    if state.candidate.holdout_uri:
        return state.candidate.holdout_uri
    return f"{state.candidate.artifact_uri.rstrip('/')}/holdout.csv"


__all__ = ["CommandError", "RolloutController", "RolloutNotFound"]
