"""The post-promotion watch: the pure transitions, the check's error rates by simulation,
and the controller over one event loop (the new stable's logged requests replayed to the
previous stable, labels joined, the previous one restored)."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from gate.api import rollout_detail
from gate.controller import RolloutController, watch_key
from gate.core.decide import Action, Command, after_error, after_watch, command, finish
from gate.core.paired import PairedEvidence, ShadowVerdict, judge_watch
from gate.core.spec import AnalysisSpec, Candidate, Outcome, Phase
from gate.core.state import RolloutState
from gate.payload_store import PAIRED, SCHEMA, PairRecord, PayloadStore
from tests.gate_fakes import FakeBackend, FakeClock
from tests.unit.test_shadow_replay import (
    LIVE_ROW,
    exchange_events,
    flipping_candidate,
    shadow_controller,
)

WATCH = AnalysisSpec(steps=[10, 100], shadow_s=0, watch_s=60)
NOW = FakeClock()()


def promoting(spec: AnalysisSpec = WATCH, stable: str | None = "1") -> RolloutState:
    return RolloutState(
        id="r1",
        model="iris",
        candidate=Candidate(version="2", artifact_uri="/m/2", offline_metrics={"accuracy": 1}),
        spec=spec,
        phase=Phase.PROMOTING,
        canary_weight=100,
        stable_version=stable,
        created_at=NOW,
        updated_at=NOW,
    )


def watching(spec: AnalysisSpec = WATCH) -> RolloutState:
    transition = finish(promoting(spec), NOW)
    assert transition.action is Action.WATCH and transition.event == "promotion"
    return transition.state


def verdict(outcome: Outcome) -> ShadowVerdict:
    return ShadowVerdict(outcome=outcome, reason=f"watch: {outcome.value}")


# --- transitions -------------------------------------------------------------------------------


def test_a_promotion_with_a_watch_keeps_the_rollout_active_until_the_budget_ends() -> None:
    state = watching()
    assert state.phase is Phase.WATCHING and state.promoted and not state.terminal
    assert state.step_deadline == NOW + timedelta(seconds=60)
    assert after_watch(state, verdict(Outcome.INCONCLUSIVE), NOW, False) is None
    over = after_watch(state, verdict(Outcome.INCONCLUSIVE), NOW, True)
    assert over is not None and over.action is Action.WATCHED and over.event == "watch"
    assert over.state.phase is Phase.SUCCEEDED and over.state.message.startswith("watch over")


def test_no_watch_without_a_budget_or_a_previous_stable() -> None:
    for state in (promoting(WATCH.model_copy(update={"watch_s": 0})), promoting(stable=None)):
        transition = finish(state, NOW)
        assert transition.action is Action.PROMOTED and transition.state.phase is Phase.SUCCEEDED
        assert transition.state.promoted


def test_a_drop_shown_rolls_back_or_is_only_announced() -> None:
    rolled = after_watch(watching(), verdict(Outcome.FAIL), NOW, False)
    assert rolled is not None and rolled.action is Action.ROLLBACK
    assert rolled.state.phase is Phase.ROLLING_BACK and rolled.state.promoted
    assert finish(rolled.state, NOW).state.phase is Phase.ROLLED_BACK
    kept_spec = WATCH.model_copy(update={"watch_rollback": False})
    kept = after_watch(watching(kept_spec), verdict(Outcome.FAIL), NOW, False)
    assert kept is not None and kept.action is Action.WATCHED and kept.event == "watch-failure"
    assert kept.state.phase is Phase.SUCCEEDED and "watch_rollback is off" in kept.state.message


def test_errors_during_the_watch_are_retried_then_end_it() -> None:
    state = watching()
    for _ in range(WATCH.error_limit - 1):
        retried = after_error(state, "payload store locked", NOW)
        assert retried.action is Action.RETRY_ANALYSIS and retried.state.phase is Phase.WATCHING
        state = retried.state
    ended = after_error(state, "payload store locked", NOW)
    assert ended.action is Action.WATCHED and ended.state.phase is Phase.SUCCEEDED
    assert "error limit" in ended.state.message


def test_commands_during_the_watch() -> None:
    accepted = command(watching(), Command.PROMOTE, NOW)
    assert accepted.action is Action.WATCHED and accepted.state.phase is Phase.SUCCEEDED
    aborted = command(watching(), Command.ABORT, NOW)
    assert aborted.state.phase is Phase.ROLLING_BACK and aborted.state.promoted
    paused = command(watching(), Command.PAUSE, NOW).state
    later = NOW + timedelta(seconds=50)
    resumed = command(paused, Command.RESUME, later).state
    assert resumed.step_deadline == later + timedelta(seconds=60)  # the budget starts again


# --- the check, by simulation --------------------------------------------------------------------


def simulate(
    drop: float, runs: int, rows: int, seed: int, independent: bool, acc_old: float = 0.9
) -> float:
    """Share of watches failed, looking every 100 labelled rows up to ``rows``. The
    previous stable is right on ``acc_old`` of the rows; the new one either independently
    with ``acc_old - drop`` (the worst case for a paired test: many discordant rows) or
    the same answers with ``drop / acc_old`` of its right ones turned wrong (a retrained
    model that mostly agrees)."""
    rng = np.random.default_rng(seed)
    failed = 0
    for _ in range(runs):
        old = rng.random(rows) < acc_old
        if independent:
            new = rng.random(rows) < acc_old - drop
        else:
            new = old & (rng.random(rows) >= drop / acc_old)
        only_old, only_new = np.cumsum(old & ~new), np.cumsum(new & ~old)
        for n in range(100, rows + 1, 100):
            paired = PairedEvidence(
                labelled_rows=n,
                only_stable_correct=int(only_new[n - 1]),  # the new stable is "stable" here
                only_candidate_correct=int(only_old[n - 1]),
            )
            if judge_watch(WATCH, paired).outcome is Outcome.FAIL:
                failed += 1
                break
    return failed / runs


@pytest.mark.parametrize("independent", [True, False])
def test_a_new_stable_exactly_at_the_limit_is_failed_at_most_alpha_of_the_time(
    independent: bool,
) -> None:
    limit = WATCH.accuracy_margin / 2  # the largest drop that must not fail
    failed = simulate(limit, runs=400, rows=5_000, seed=1, independent=independent)
    assert failed <= 1 - WATCH.confidence


@pytest.mark.parametrize(("independent", "rows"), [(True, 5_000), (False, 1_000)])
def test_a_five_point_drop_is_found(independent: bool, rows: int) -> None:
    assert simulate(0.05, runs=200, rows=rows, seed=2, independent=independent) >= 0.95


def test_no_labels_means_nothing_shown() -> None:
    assert judge_watch(WATCH, PairedEvidence(requests=50)).outcome is Outcome.INCONCLUSIVE
    assert judge_watch(WATCH, None).outcome is Outcome.ERROR


# --- the controller, over one event loop ---------------------------------------------------------


def run_watch(tmp_path: Path, label: str, spec: AnalysisSpec = WATCH) -> RolloutController:
    """v1 stable, v2 promoted with a watch; the new stable answered class 1 on the live
    row, the previous one (the mock) answers 2; every request gets ``label``."""
    controller, backend, clock, rollout = shadow_controller(
        tmp_path, spec, flipping_candidate(flip_live=True)
    )
    store = controller.store

    async def scenario() -> None:
        for _ in range(10):
            clock.advance(2)
            if (await controller.tick(rollout)).phase is Phase.WATCHING:
                break
        assert controller.get(rollout).phase is Phase.WATCHING
        assert store.stable("iris").version == "2"  # type: ignore[union-attr]
        assert backend.mirror == {"iris": True}
        for i in range(300):
            controller.payloads.ingest(exchange_events(f"live{i}", [LIVE_ROW], [1]))
        controller.payloads.add_labels("iris", [(f"live{i}", (label,)) for i in range(300)])
        for _ in range(200):
            await asyncio.sleep(0.02)
            clock.advance(0.5)  # 200 looks: past the 60 s watch
            if (await controller.tick(rollout)).terminal:
                break
        await controller.aclose()

    asyncio.run(scenario())
    return controller


def test_a_new_stable_shown_worse_on_labels_is_rolled_back_to_the_previous(
    tmp_path: Path,
) -> None:
    controller = run_watch(tmp_path, label="2")  # the previous stable was right
    rollout = controller.store.rollouts()[0]
    assert rollout.phase is Phase.ROLLED_BACK, rollout.message
    assert rollout.message.startswith("watch: the new stable's accuracy is shown worse")
    backend = controller.router
    assert isinstance(backend, FakeBackend) and backend.restored == ["1"]
    assert controller.store.stable("iris").version == "1"  # type: ignore[union-attr]
    assert backend.mirror == {"iris": False}
    judged = next(d for d in controller.store.decisions(rollout.id) if d.action == "rollback")
    assert judged.outcome == "fail"
    check = judged.evidence["checks"][0]
    assert check["name"] == "watch_accuracy" and check["fail_interval"][0] > 0.01
    assert controller.payloads.paired_evidence(watch_key(rollout.id)).labelled_rows >= 5
    detail = rollout_detail(controller, rollout.id)  # what GET /v1/rollouts/{id} shows
    assert detail.watch_pairs == controller.payloads.paired_evidence(watch_key(rollout.id))
    events = [e.event for e in controller.store.pending_events()]
    assert events[-2:] == ["promotion", "rollback"]


def test_a_drop_is_only_announced_when_rollback_is_off(tmp_path: Path) -> None:
    spec = WATCH.model_copy(update={"watch_rollback": False})
    controller = run_watch(tmp_path, label="2", spec=spec)
    rollout = controller.store.rollouts()[0]
    assert rollout.phase is Phase.SUCCEEDED and "kept" in rollout.message
    assert controller.store.stable("iris").version == "2"  # type: ignore[union-attr]
    assert [e.event for e in controller.store.pending_events()][-1] == "watch-failure"


@pytest.mark.parametrize("label", ["1"])
def test_a_new_stable_that_is_right_stays_when_the_watch_ends(tmp_path: Path, label: str) -> None:
    controller = run_watch(tmp_path, label=label)
    rollout = controller.store.rollouts()[0]
    assert rollout.phase is Phase.SUCCEEDED and rollout.message.startswith("watch over")
    assert controller.store.stable("iris").version == "2"  # type: ignore[union-attr]
    backend = controller.router
    assert isinstance(backend, FakeBackend) and backend.restored == []


def test_a_store_made_before_the_discordant_counts_gains_them(tmp_path: Path) -> None:
    old_schema = SCHEMA.replace("    only_stable INTEGER,\n    only_candidate INTEGER,\n", "")
    assert old_schema != SCHEMA
    with sqlite3.connect(tmp_path / "gate.db") as db:
        db.executescript(old_schema)
    store = PayloadStore(tmp_path / "gate.db")
    store.ingest(exchange_events("r0", [LIVE_ROW, LIVE_ROW], [1, 2]))
    exchange = store.exchanges("iris", 0, 1)[0]
    record = PairRecord(PAIRED, rows=2, stable_classes=("1", "2"), candidate_classes=("2", "2"))
    store.add_pair("w", "iris", exchange, record)
    store.add_labels("iris", [("r0", ("1", "2"))])
    evidence = store.paired_evidence("w")
    assert (evidence.labelled_rows, evidence.only_stable_correct) == (2, 1)
    assert (evidence.stable_correct, evidence.candidate_correct) == (2, 1)
    assert evidence.only_candidate_correct == 0
