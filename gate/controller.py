"""The rollout controller: one idempotent tick per rollout, like Flagger's advanceCanary.

read persisted state -> read the actual weight from the router -> gather evidence ->
decide (pure, :mod:`gate.core.decide`) -> persist state + decision + event (+ stable) in one
transaction -> carry out the decision's action.

State is persisted *before* anything is changed outside the store. If the gate dies
between the two, the next tick finds the router's weight differing from the persisted one
and converges it (``reconcile``), a planned candidate that never started is started, and
the deployer retires whatever no stable or active rollout names: no step is skipped,
none is judged twice, nothing is left running.

Nothing in a tick waits: a candidate that is not ready is a state with a deadline. Each
rollout ticks in its own task, so one slow rollout never delays another, and any
exception inside a tick becomes an ``error`` decision that counts against its limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import time
import uuid
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any, assert_never

import httpx

from gate.core.analysis import LabelEvidence, Verdict, analyze
from gate.core.decide import (
    Action,
    Command,
    Transition,
    ValidationVerdict,
    after_analysis,
    after_error,
    after_shadow,
    after_tick,
    after_validation,
    after_watch,
    approve,
    candidate_started,
    command,
    finish,
    hold,
    hook_rollback,
    let_through,
    pre_rollout_failed,
    reconcile,
)
from gate.core.errors import NotFound
from gate.core.hooks import HookResult, HookType, asked_rollback, of_type, refused
from gate.core.paired import PairedEvidence, ShadowVerdict, judge_shadow, judge_watch
from gate.core.spec import AnalysisOverrides, AnalysisSpec, Candidate, Outcome, Phase
from gate.core.state import RolloutState
from gate.generate import Generators, TrafficGenerator
from gate.hooks import HookRunner
from gate.observability import GateMetrics
from gate.payload_store import PayloadStore
from gate.providers.base import MetricsProvider, MetricsUnavailable, Targets
from gate.replay import (
    HoldoutSource,
    ReplayError,
    judge_accuracy,
    load_holdout,
    read_holdout,
    replay,
)
from gate.shadow import ShadowReplayer
from gate.store import SQLiteStore, Stable
from gate.tasks import RolloutTasks
from gate.traffic.base import Deployer, Router, TrafficError

logger = logging.getLogger(__name__)


class RolloutNotFound(NotFound, KeyError):
    def __init__(self, rollout_id: str) -> None:
        NotFound.__init__(self, f"no rollout {rollout_id}")


def utcnow() -> datetime:
    return datetime.now(UTC)


class CrashAfter:
    """Testing only: SIGKILL this process right after the n-th persisted decision with a
    given action (``GATE_CRASH_AFTER=step:2``), to prove a restart resumes correctly."""

    def __init__(self, spec: str) -> None:
        action, _, count = spec.partition(":")
        self.action = Action(action)
        self.remaining = int(count or 1)

    def persisted(self, action: Action) -> None:
        if action is self.action:
            self.remaining -= 1
            if self.remaining == 0:
                logger.warning("GATE_CRASH_AFTER=%s: killing the gate now", action.value)
                os.kill(os.getpid(), signal.SIGKILL)


class RolloutController:
    def __init__(
        self,
        store: SQLiteStore,
        router: Router,
        deployer: Deployer,
        provider: MetricsProvider,
        defaults: AnalysisSpec,
        metrics: GateMetrics | None = None,
        clock: Callable[[], datetime] = utcnow,
        http: httpx.AsyncClient | None = None,
        candidate_timeout_s: float = 120.0,
        crash_after: CrashAfter | None = None,
        generators: Generators | None = None,
        payloads: PayloadStore | None = None,
        hook_namespace: str = "default",
        holdout_source: HoldoutSource | None = None,
    ) -> None:
        self.store = store
        self.router = router
        self.deployer = deployer
        self.provider = provider
        self.defaults = defaults
        self.metrics = metrics
        self.clock = clock
        self.candidate_timeout_s = candidate_timeout_s
        self.crash_after = crash_after
        self._http = http or httpx.AsyncClient(timeout=30.0)
        self.holdout_source = holdout_source or HoldoutSource()
        """How held-out sets are read (size limit, the S3 API for s3://)."""
        self._locks: dict[str, asyncio.Lock] = {}
        self.generators = generators or Generators()
        self.payloads = payloads or PayloadStore(":memory:")
        """Live requests and answers (payload events) and the shadow phase's pairs."""
        self.hooks = HookRunner(self._http, hook_namespace)
        """Gating hooks (:mod:`gate.core.hooks`): asked at their moments of a tick."""
        self._hook_tasks: set[asyncio.Task[None]] = set()
        """Post-rollout hooks under way (cancelled when the gate stops)."""
        self.shadows = RolloutTasks("shadow replay")
        self.last_loop: float | None = None
        """monotonic time of the loop's last complete pass (``/readyz`` reads it)."""

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
                "action": Action.CREATE,
                "reason": state.message,
                "evidence": {
                    "candidate": candidate.model_dump(mode="json"),
                    "spec": spec.model_dump(mode="json"),
                },
            },
            ("start", self._event_payload(state, "start")),
        )
        self._observe(state, Action.CREATE, None)
        self._crash_point(Action.CREATE)
        return state

    def get(self, rollout_id: str) -> RolloutState:
        state = self.store.get(rollout_id)
        if state is None:
            raise RolloutNotFound(rollout_id)
        return state

    async def command(
        self, rollout_id: str, name: Command | str, full: bool = False
    ) -> RolloutState:
        """Apply a manual command now; promote and abort act at once. A command that does
        not apply raises CommandError (409); a traffic failure while acting is an error
        decision like any other, never a failed request. ``full``: promote to the end,
        not to the next step."""
        async with self._lock(rollout_id):
            state = self.get(rollout_id)
            transition = command(state, Command(name), self.clock(), full=full)
            evidence: dict[str, Any] = {"command": str(name)}
            if full:
                evidence["full"] = True
            self._save(transition, outcome=None, evidence=evidence)
            await self._guarded(rollout_id, self._act(transition))
            state = self.get(rollout_id)
            await self._background(state)
        return state

    async def approve(self, rollout_id: str, kind: HookType | None = None) -> RolloutState:
        """A user's answer to the gate's own approval hook; the next tick lets the held
        move through (CommandError, 409, when there is nothing of that type to approve)."""
        async with self._lock(rollout_id):
            state = self.get(rollout_id)
            transition = approve(state, kind, self.clock())
            approved = kind or state.held_by  # approve() refused the call when neither is set
            self._save(transition, None, {"approved": approved.value if approved else None})
            return transition.state

    # --- the loop ------------------------------------------------------------------------
    async def run(self, interval_s: float, stop: asyncio.Event) -> None:
        """Every interval, each active rollout without a tick in flight gets one, in a
        task of its own."""
        ticking: dict[str, asyncio.Task[None]] = {}
        try:
            while not stop.is_set():
                try:
                    for state in self.store.rollouts(active_only=True):
                        running = ticking.get(state.id)
                        if running is None or running.done():
                            ticking[state.id] = asyncio.create_task(self._tick_logged(state.id))
                    ticking = {k: t for k, t in ticking.items() if not t.done()}
                    self.last_loop = time.monotonic()
                except Exception:
                    logger.exception("controller loop pass failed")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=interval_s)
        finally:
            for task in ticking.values():
                task.cancel()
            await asyncio.gather(*ticking.values(), return_exceptions=True)

    async def _tick_logged(self, rollout_id: str) -> None:
        try:
            await self.tick(rollout_id)
        except Exception:  # tick records errors itself; this is the store failing
            logger.exception("tick failed for rollout %s", rollout_id)

    async def tick(self, rollout_id: str) -> RolloutState:
        async with self._lock(rollout_id):
            state = self.get(rollout_id)
            waiting = state.not_before is not None and self.clock() < state.not_before
            if not (state.terminal or state.paused or waiting):
                await self._guarded(rollout_id, self._advance(state))
                state = self.get(rollout_id)
            await self._background(state)
            return state

    async def _background(self, state: RolloutState) -> None:
        await self._generate(state)
        await self._replay_shadow(state)

    async def _replay_shadow(self, state: RolloutState) -> None:
        """The router sends payload events while a rollout is in its shadow phase, its
        steps or its watch (the answers delayed labels are joined with), asked again each
        tick so a restarted router or gate converges. A replayer runs exactly while its
        rollout is in an unpaused shadow phase (stable's requests to the candidate) or
        watch (the new stable's requests to the previous one, paired under
        :func:`watch_key`)."""
        if state.phase in (Phase.SHADOW, Phase.PROGRESSING, Phase.WATCHING):
            try:
                await self.router.set_mirror(state.model, True)
            except TrafficError as exc:  # no pairs then: the shadow budget runs out
                logger.warning("rollout %s: payload events not on: %s", state.id, exc)
        wanted = None if state.paused else _REPLAYS.get(state.phase)
        for key in (state.id, watch_key(state.id)):
            if wanted is None or key != wanted(state.id):
                await self.shadows.stop(key)
        if wanted is None or self.shadows.running(wanted(state.id)):
            return
        target = (
            self.deployer.candidate_url(state)
            if state.phase is Phase.SHADOW
            else self.deployer.previous_url(state)
        )
        if target is None:
            return  # the previous stable cannot be reached apart: the watch pairs nothing
        since = state.window_start or state.created_at
        since_seq = await asyncio.to_thread(self.payloads.seq_before, since.timestamp())
        replayer = ShadowReplayer(
            self.payloads,
            self._http,
            wanted(state.id),
            state.model,
            target,
            state.spec.shadow_rate_per_s,
            since_seq,
        )
        self.shadows.start(
            wanted(state.id),
            replayer,
            f"up to {state.spec.shadow_rate_per_s:g} logged requests/s to {replayer.base}",
        )

    async def _generate(self, state: RolloutState) -> None:
        """Generated traffic runs exactly while a rollout that asks for it progresses."""
        wanted = (
            state.phase is Phase.PROGRESSING
            and not state.paused
            and state.spec.generated_rate_per_s > 0
        )
        if not wanted:
            await self.generators.stop(state.id)
            return
        if self.generators.running(state.id):
            return
        try:
            text = await load_holdout(_holdout_location(state), self._http, self.holdout_source)
            rows, _ = read_holdout(text)
            targets = [self.deployer.candidate_url(state)]
            stable = self.deployer.stable_url(state)
        except (ReplayError, TrafficError) as exc:
            logger.warning("rollout %s: cannot generate traffic yet: %s", state.id, exc)
            return  # the next tick tries again
        generator = TrafficGenerator(
            self.generators.client,
            [*targets, stable] if stable else targets,
            state.model,
            rows,
            state.spec.generated_rate_per_s,
        )
        self.generators.start(state.id, generator, generator.describe())

    def _targets(self, state: RolloutState) -> Targets:
        targets = self.deployer.metrics_targets(state)
        return dataclasses.replace(targets, generated=state.spec.generated_rate_per_s > 0)

    async def _guarded(self, rollout_id: str, work: Coroutine[Any, Any, None]) -> None:
        """Run a tick's work; any exception becomes an ``error`` decision with its
        evidence, counted against the rollout's error limit."""
        try:
            await work
        except Exception as exc:
            expected = isinstance(exc, TrafficError | MetricsUnavailable)
            logger.warning(  # a traceback only for what nobody anticipated
                "rollout %s: %s: %s", rollout_id, type(exc).__name__, exc, exc_info=not expected
            )
            current = self.get(rollout_id)
            if current.terminal:
                return  # e.g. retiring failed after the end: the next start retires again
            transition = after_error(current, f"{type(exc).__name__}: {exc!s:.500}", self.clock())
            self._save(
                transition,
                outcome=Outcome.ERROR,
                evidence={"exception": type(exc).__name__, "message": f"{exc!s:.2000}"},
            )
            try:
                await self._act(transition)
            except Exception:  # the next tick tries again, within the same limits
                logger.exception("rollout %s: acting on the error failed", rollout_id)

    def _lock(self, rollout_id: str) -> asyncio.Lock:
        return self._locks.setdefault(rollout_id, asyncio.Lock())

    async def _advance(self, state: RolloutState) -> None:
        if state.phase in (Phase.SHADOW, Phase.PROGRESSING) and await self._rollback_asked(state):
            return
        match state.phase:
            case Phase.VALIDATING:
                await self._validate(state)
            case Phase.SHADOW:
                await self._judge_pairs(state, state.id, judge_shadow, after_shadow)
            case Phase.PROGRESSING:
                await self._progress(state)
            case Phase.WATCHING:  # after a promotion: the new stable against the previous
                await self._judge_pairs(state, watch_key(state.id), judge_watch, after_watch)
            case Phase.PROMOTING | Phase.ROLLING_BACK:
                await self._finish(state)
            case _:  # terminal phases never get here
                return

    # --- phases --------------------------------------------------------------------------
    async def _validate(self, state: RolloutState) -> None:
        if not state.candidate_started:
            planned = self.deployer.plan_candidate(state)
            transition = candidate_started(state, planned, self.clock(), self.candidate_timeout_s)
            await self._decide(state, transition, outcome=None, evidence={"planned": planned})
            return
        readiness = await self.deployer.candidate_ready(state)
        if readiness.facts:
            state = state.model_copy(
                update={"backend_state": {**state.backend_state, **readiness.facts}}
            )
            self.store.save(state)
        if not readiness.ready:
            outcome = Outcome.FAIL if readiness.gone else Outcome.INCONCLUSIVE
            verdict = ValidationVerdict(outcome=outcome, reason=readiness.problem)
        else:
            verdict = await self._accuracy_gate(state)
        judged = after_validation(state, verdict, self.clock())
        if judged is not None:  # None: still waiting for the candidate, nothing to record
            await self._decide(state, judged, outcome=verdict.outcome, evidence=verdict.evidence)

    async def _accuracy_gate(self, state: RolloutState) -> ValidationVerdict:
        offline = state.candidate.offline_metrics["accuracy"]
        evidence: dict[str, Any] = {
            "offline_accuracy": offline,
            "threshold": state.spec.accuracy_threshold,
            "tolerance": state.spec.accuracy_tolerance,
        }
        try:
            holdout = await load_holdout(_holdout_location(state), self._http, self.holdout_source)
            result = await replay(
                self._http, self.deployer.candidate_url(state), state.model, holdout
            )
        except ReplayError as exc:
            return ValidationVerdict(
                outcome=Outcome.FAIL, reason=f"accuracy gate: {exc}", evidence=evidence
            )
        evidence.update(
            live_accuracy=result.accuracy,
            replayed_rows=result.rows,
            correct=result.correct,
            replay_retried_requests=result.retried_requests,
        )
        passed, reason = judge_accuracy(state.spec, offline, result.accuracy)
        outcome = Outcome.PASS if passed else Outcome.FAIL
        return ValidationVerdict(outcome=outcome, reason=reason, evidence=evidence)

    async def _judge_pairs(
        self,
        state: RolloutState,
        key: str,
        judge: Callable[[AnalysisSpec, PairedEvidence | None], ShadowVerdict],
        after: Callable[[RolloutState, ShadowVerdict, datetime, bool], Transition | None],
    ) -> None:
        """The shadow phase and the watch: judge the pairs so far (kept under ``key``);
        the budget's end decides what inconclusive means."""
        now = self.clock()
        deadline_reached = state.step_deadline is None or now >= state.step_deadline
        paired = await asyncio.to_thread(self.payloads.paired_evidence, key)
        verdict = judge(state.spec, paired)
        transition = after(state, verdict, self.clock(), deadline_reached)
        if transition is None:
            return
        evidence = verdict.model_dump(mode="json", exclude={"outcome", "reason"})
        await self._decide(state, transition, outcome=verdict.outcome, evidence=evidence)

    async def _progress(self, state: RolloutState) -> None:
        now = self.clock()
        actual = await self.router.get_weight(state)
        if actual != state.canary_weight:
            await self._apply(
                reconcile(state, now),
                outcome=None,
                evidence={"actual_weight": actual, "desired_weight": state.canary_weight},
            )
            return
        if state.window_baseline is None:
            await self._snapshot(state)
            return
        if state.window_hooks is None and of_type(state.spec.hooks, HookType.ROLLOUT):
            state = await self._rollout_hooks(state)
            if state.window_hooks and (why := refused(state.window_hooks)):
                failed = Verdict(outcome=Outcome.FAIL, reason=why)
                await self._decide(
                    state, after_analysis(state, failed, self.clock()), Outcome.FAIL, {}
                )
                return
        deadline_reached = state.step_deadline is None or now >= state.step_deadline
        window_s = (now - state.window_start).total_seconds() if state.window_start else 0.0
        try:
            measurement = await self.provider.measure(
                self._targets(state), state.window_baseline, window_s
            )
            verdict = analyze(
                state.spec,
                measurement,
                state.evidence,
                must_show_margins=state.spec.proving_step(state.step_index),
                deadline_reached=deadline_reached,
                labels=await self._labels(state),
            )
        except MetricsUnavailable as exc:
            verdict = Verdict(outcome=Outcome.ERROR, reason=f"metrics: {exc}")
        transition = after_tick(state, verdict, self.clock(), deadline_reached)
        if transition is None:
            return  # looked, nothing decided yet: the window goes on
        evidence = verdict.model_dump(mode="json", exclude={"outcome", "reason"})
        # the decision row shows the state it led to; this is the step that was judged
        evidence["judged"] = {
            "step_index": state.step_index,
            "canary_weight": state.canary_weight,
            "window_start": state.window_start.isoformat() if state.window_start else None,
        }
        await self._decide(state, transition, outcome=verdict.outcome, evidence=evidence)

    async def _labels(self, state: RolloutState) -> LabelEvidence:
        """Labelled answers of stable and the canary logged since the rollout began."""
        since = await asyncio.to_thread(self.payloads.seq_before, state.created_at.timestamp())
        scored = await asyncio.to_thread(self.payloads.label_evidence, state.model, since)
        stable, canary = scored.get("default", (0, 0)), scored.get("canary", (0, 0))
        return LabelEvidence(
            stable_rows=stable[0],
            stable_correct=stable[1],
            canary_rows=canary[0],
            canary_correct=canary[1],
        )

    async def _finish(self, state: RolloutState) -> None:
        """Promote or roll back in the traffic layer, then record the terminal phase
        (with the new stable, in the same transaction), then retire what is unused."""
        stable: Stable | None = None
        if state.phase is Phase.PROMOTING:
            previous = self.store.stable(state.model)
            await self.router.promote(state)
            stable = self.deployer.promoted_stable(state)
            if previous is not None:  # what a watch compares with and may restore
                kept = {**state.backend_state, "previous": previous.model_dump(mode="json")}
                state = state.model_copy(update={"backend_state": kept})
        elif state.promoted:  # rolled back during the watch: the previous stable again
            stable = Stable.model_validate(state.backend_state["previous"])
            await self.deployer.ensure_serving(stable)
            await self.router.restore(state, stable)
        else:
            await self.router.rollback(state)
        await self._apply(finish(state, self.clock()), outcome=None, evidence={}, stable=stable)

    # --- gating hooks ----------------------------------------------------------------------
    async def _decide(
        self,
        before: RolloutState,
        transition: Transition,
        outcome: Outcome | None,
        evidence: dict[str, Any],
    ) -> None:
        """Record and carry out an analysed decision, unless the hooks of its moment say
        otherwise: confirm-rollout before the candidate starts, confirm-traffic-increase
        before each raise of the weight (and pre-rollout before the first), and
        confirm-promotion before an analysed promotion. A refusing confirm hook holds the
        rollout where ``before`` was; a refusing pre-rollout hook is a failed check."""
        answers: list[HookResult] = list(before.window_hooks or [])
        confirm = _CONFIRMS.get(transition.action)
        if confirm is not None and of_type(before.spec.hooks, confirm):
            asked = await self.hooks.call(before, confirm)
            answers += asked
            if why := refused(asked):
                held = hold(before, confirm, why, self.clock())
                if held is not None:
                    await self._apply(held, None, {"held": transition.action, **_hooks(answers)})
                return
            transition = let_through(transition, confirm)
        first_step = transition.action is Action.STEP and before.phase is not Phase.PROGRESSING
        if first_step and of_type(before.spec.hooks, HookType.PRE_ROLLOUT):
            asked = await self.hooks.call(before, HookType.PRE_ROLLOUT)
            answers += asked
            if why := refused(asked):
                failed = pre_rollout_failed(before, why, self.clock())
                await self._apply(failed, Outcome.FAIL, _hooks(answers))
                return
        await self._apply(transition, outcome, {**evidence, **_hooks(answers)})

    async def _rollback_asked(self, state: RolloutState) -> bool:
        """Flagger's rollback hooks, asked every tick of the shadow phase and the steps:
        a 2xx answer rolls back (fails, before any user got the candidate's answer)."""
        if not of_type(state.spec.hooks, HookType.ROLLBACK):
            return False
        asked = await self.hooks.call(state, HookType.ROLLBACK)
        why = asked_rollback(asked)
        if why is None:
            return False
        transition = hook_rollback(state, why, self.clock())
        await self._apply(transition, Outcome.FAIL, _hooks(asked))
        return True

    async def _rollout_hooks(self, state: RolloutState) -> RolloutState:
        """The window's rollout hooks, asked once, before its first judged look; their
        answers stay in the state for the decision that ends the window."""
        asked = await self.hooks.call(state, HookType.ROLLOUT)
        state = state.model_copy(update={"window_hooks": asked})
        self.store.save(state)
        return state

    def _post_rollout_soon(self, state: RolloutState) -> None:
        """Flagger's post-rollout hooks, after a promotion or a rollback, in a task of
        their own: their answers are recorded and change nothing, so nothing (an abort's
        answer, the next tick) waits for them."""
        if not of_type(state.spec.hooks, HookType.POST_ROLLOUT):
            return
        task = asyncio.create_task(self._post_rollout(state))
        self._hook_tasks.add(task)
        task.add_done_callback(self._hook_tasks.discard)

    async def _post_rollout(self, state: RolloutState) -> None:
        asked = await self.hooks.call(state, HookType.POST_ROLLOUT)
        why = refused(asked)
        reason = f"post-rollout hooks: {why}" if why else "post-rollout hooks answered 2xx"
        try:
            async with self._lock(state.id):  # after the decision that ended the rollout
                self.store.save(
                    self.get(state.id),
                    {"action": Action.HOOKS, "reason": reason, "evidence": _hooks(asked)},
                )
        except Exception:  # the store is closing: the answers are only logged
            logger.exception("rollout %s: post-rollout answers not recorded: %s", state.id, reason)

    async def _snapshot(self, state: RolloutState) -> None:
        """The window starts when its traffic split is in place."""
        try:
            baseline = await self.provider.snapshot(self._targets(state))
        except MetricsUnavailable as exc:
            logger.warning("rollout %s: baseline snapshot failed: %s", state.id, exc)
            return  # the next tick tries again; the window has not started
        now = self.clock()
        self.store.save(
            state.start_window(now).model_copy(
                update={"window_baseline": baseline, "updated_at": now}
            )
        )

    # --- persist, then act -----------------------------------------------------------------
    async def _apply(
        self,
        transition: Transition,
        outcome: Outcome | None,
        evidence: dict[str, Any],
        stable: Stable | None = None,
    ) -> None:
        """Persist the transition, then carry out its action."""
        self._save(transition, outcome, evidence, stable)
        await self._act(transition)

    async def _act(self, transition: Transition) -> None:
        """What each action does outside the store, after it was persisted."""
        state = transition.state
        match transition.action:
            case Action.CANDIDATE_STARTED:
                await self.deployer.start_candidate(state)
            case Action.SHADOW:
                await self.router.set_mirror(state.model, True)
            case Action.WATCH:
                await self.router.set_mirror(state.model, True)
                self._post_rollout_soon(state)
            case Action.STEP | Action.RETRY_STEP | Action.RECONCILE:
                await self.router.set_weight(state, state.canary_weight)
                await self._snapshot(state)
            case Action.PROMOTE | Action.ROLLBACK:
                await self._finish(state)
            case (
                Action.PROMOTED | Action.WATCHED | Action.ROLLED_BACK | Action.ABORTED | Action.FAIL
            ):
                try:
                    await self.router.set_mirror(state.model, False)
                except TrafficError as exc:  # never in the way of retiring: logged
                    logger.warning("rollout %s: payload events not off: %s", state.id, exc)
                await self.deployer.retire()
                if transition.action is not Action.WATCHED:
                    self._post_rollout_soon(state)
            case (
                Action.CREATE
                | Action.RETRY_VALIDATION
                | Action.EXTEND_STEP
                | Action.RETRY_ANALYSIS
                | Action.RETRY
                | Action.PAUSE
                | Action.RESUME
                | Action.HOLD
                | Action.APPROVE
                | Action.HOOKS
            ):
                pass
            case unreachable:  # mypy: every action is handled above
                assert_never(unreachable)

    def _save(
        self,
        transition: Transition,
        outcome: Outcome | None,
        evidence: dict[str, Any],
        stable: Stable | None = None,
    ) -> None:
        state = transition.state
        decision = {
            "action": transition.action,
            "outcome": outcome.value if outcome else None,
            "reason": state.message,
            "evidence": evidence,
        }
        event = None
        if transition.event:
            event = (transition.event, self._event_payload(state, transition.event))
        self.store.save(state, decision, event, stable=stable)
        self._observe(state, transition.action, outcome.value if outcome else None)
        logger.info(
            "rollout %s %s: %s (phase %s, weight %d)",
            state.id,
            transition.action.value,
            state.message,
            state.phase.value,
            state.canary_weight,
        )
        self._crash_point(transition.action)

    def _crash_point(self, action: Action) -> None:
        if self.crash_after is not None:
            self.crash_after.persisted(action)

    def _observe(self, state: RolloutState, action: Action, outcome: str | None) -> None:
        if self.metrics is not None:
            self.metrics.record(state, action.value, outcome)

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
        for task in self._hook_tasks:
            task.cancel()
        await asyncio.gather(*self._hook_tasks, return_exceptions=True)
        await self.generators.aclose()
        await self.shadows.stop_all()
        await self._http.aclose()


_CONFIRMS: dict[Action, HookType] = {
    Action.CANDIDATE_STARTED: HookType.CONFIRM_ROLLOUT,
    Action.STEP: HookType.CONFIRM_TRAFFIC_INCREASE,
    Action.PROMOTE: HookType.CONFIRM_PROMOTION,
}
"""The confirm hook each analysed move waits for (manual commands wait for none)."""


def _hooks(answers: list[HookResult]) -> dict[str, Any]:
    """Hook answers as decision evidence (nothing when no hook was asked)."""
    return {"hooks": [a.model_dump(mode="json") for a in answers]} if answers else {}


def watch_key(rollout_id: str) -> str:
    """Where a rollout's post-promotion watch keeps its pairs in the payload store (its
    shadow phase uses the rollout id itself)."""
    return f"{rollout_id}/watch"


_REPLAYS: dict[Phase, Callable[[str], str]] = {
    Phase.SHADOW: lambda rollout_id: rollout_id,
    Phase.WATCHING: watch_key,
}


def _holdout_location(state: RolloutState) -> str:
    if state.candidate.holdout_uri:
        return state.candidate.holdout_uri
    return f"{state.candidate.artifact_uri.rstrip('/')}/holdout.csv"


__all__ = ["CrashAfter", "RolloutController", "RolloutNotFound", "watch_key"]
