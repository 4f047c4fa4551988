"""The controller tick by tick, with fakes at every seam; restarts over the same store."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from gate.controller import RolloutController
from gate.core.analysis import WindowMeasurement
from gate.core.decide import CommandError
from gate.core.spec import AnalysisOverrides, AnalysisSpec, Candidate, Phase
from gate.generate import Generators
from gate.store import SQLiteStore
from gate.traffic.base import TrafficError
from tests.gate_fakes import (
    FakeBackend,
    FakeClock,
    FakeProvider,
    candidate_transport,
    healthy,
    write_holdout,
)

SPEC = AnalysisSpec(
    steps=[10, 50, 100],
    step_interval_s=30,
    failure_limit=2,
    inconclusive_limit=3,
    error_limit=2,
)


class Harness:
    def __init__(self, tmp_path: Path, wrong_candidate: bool = False) -> None:
        self.tmp_path = tmp_path
        self.store = SQLiteStore(tmp_path / "gate.db")
        self.backend = FakeBackend()
        self.provider = FakeProvider()
        self.clock = FakeClock()
        self.wrong = wrong_candidate
        self.controller = self.new_controller()
        self.artifact = write_holdout(tmp_path / "registry" / "iris" / "2")

    def new_controller(self) -> RolloutController:
        """A fresh controller over the same store: what a restarted gate is."""
        http = httpx.AsyncClient(transport=candidate_transport(self.wrong))
        return RolloutController(
            self.store,
            self.backend,
            self.backend,
            self.provider,
            SPEC,
            clock=self.clock,
            http=http,
            candidate_timeout_s=60,
        )

    def create(self, accuracy: float = 0.95) -> str:
        candidate = Candidate(
            version="2", artifact_uri=str(self.artifact), offline_metrics={"accuracy": accuracy}
        )
        return self.controller.create("iris", candidate).id

    def tick(self, rollout_id: str, advance: float = 0) -> Phase:
        self.clock.advance(advance)
        return asyncio.run(self.controller.tick(rollout_id)).phase

    def validate(self, rollout_id: str) -> Phase:
        """Two ticks: the candidate is started (intent persisted first), then judged."""
        assert self.tick(rollout_id) is Phase.VALIDATING
        return self.tick(rollout_id)

    def actions(self, rollout_id: str) -> list[tuple[str, str | None, int]]:
        return [(d.action, d.outcome, d.canary_weight) for d in self.store.decisions(rollout_id)]


def test_healthy_canary_passes_every_step_early_then_promotes(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    rollout = h.create()
    assert h.validate(rollout) is Phase.PROGRESSING  # accuracy gate passed, first step applied
    assert h.backend.weight == 10
    h.tick(rollout, advance=2)  # every margin already shown: no need to wait 30 s
    assert h.backend.weight == 50
    h.tick(rollout, advance=2)
    assert h.backend.weight == 100
    assert h.tick(rollout, advance=2) is Phase.SUCCEEDED
    assert h.backend.promoted == 1
    assert h.actions(rollout) == [
        ("create", None, 0),
        ("candidate-started", None, 0),
        ("step", "pass", 10),
        ("step", "pass", 50),
        ("step", "pass", 100),
        ("promote", "pass", 100),
        ("promoted", None, 0),
    ]
    assert h.backend.weights_set == [10, 50, 100]
    evidence = h.store.decisions(rollout)[3].evidence
    assert evidence["early"] is True
    assert {c["name"]: c["outcome"] for c in evidence["checks"]}["error_rate"] == "pass"
    events = [e.event for e in h.store.pending_events()]
    assert events == ["start", "step", "step", "step", "promotion"]


def test_thin_evidence_moves_on_at_deadlines_but_never_promotes(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    rollout = h.create()
    h.validate(rollout)
    h.provider.default = healthy(requests=300)  # no regression, margins far from shown
    assert h.tick(rollout, advance=10) is Phase.PROGRESSING
    assert h.backend.weight == 10 and h.provider.measured == 1  # looked, nothing recorded
    assert [a for a, _, _ in h.actions(rollout)][-1] == "step"
    h.tick(rollout, advance=21)  # the 10 % step's deadline: exposure step, moves on
    assert h.backend.weight == 50
    assert "no regression shown" in h.controller.get(rollout).message
    for _ in range(2):  # 50 % is the last step below 100 %: it must show the margins
        assert h.tick(rollout, advance=31) is Phase.PROGRESSING
        assert h.backend.weight == 50
    assert h.tick(rollout, advance=31) is Phase.ROLLED_BACK
    assert h.backend.promoted == 0
    reason = h.controller.get(rollout).message
    assert "inconclusive limit reached (3/3)" in reason and "more canary requests" in reason


def test_skewed_candidate_fails_the_accuracy_gate_and_never_gets_traffic(tmp_path: Path) -> None:
    h = Harness(tmp_path, wrong_candidate=True)
    rollout = h.create()
    assert h.validate(rollout) is Phase.FAILED
    state = h.controller.get(rollout)
    assert "live replay accuracy 0.3333 is below the threshold" in state.message
    assert h.backend.weights_set == [] and h.backend.retired == 1
    evidence = h.store.decisions(rollout)[-1].evidence
    assert evidence["live_accuracy"] == pytest.approx(1 / 3)
    assert evidence["replayed_rows"] == 6


def test_weak_offline_accuracy_fails_the_gate(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    rollout = h.create(accuracy=0.7)
    assert h.validate(rollout) is Phase.FAILED
    assert "offline accuracy 0.7000 is below" in h.controller.get(rollout).message


def test_failures_reach_the_limit_and_roll_back(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    rollout = h.create()
    h.validate(rollout)
    h.provider.script = [healthy(errors=400), healthy(errors=400)]
    assert h.tick(rollout, advance=31) is Phase.PROGRESSING  # first failure: retry the step
    assert h.backend.weight == 10
    assert h.tick(rollout, advance=31) is Phase.ROLLED_BACK
    assert h.backend.rolled_back == 1 and h.backend.weight == 0
    assert [a for a, _, _ in h.actions(rollout)][-3:] == ["retry-step", "rollback", "rolled-back"]
    decision = h.store.decisions(rollout)[-2]
    assert decision.outcome == "fail" and "failure limit reached (2/2)" in decision.reason
    assert decision.evidence["measurement"]["canary"]["server_errors"] == 400
    assert decision.evidence["judged"]["canary_weight"] == 10


def test_no_data_extends_then_rolls_back_never_passes(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    rollout = h.create()
    h.validate(rollout)
    h.provider.default = healthy(requests=0)
    for _ in range(2):
        assert h.tick(rollout, advance=31) is Phase.PROGRESSING
    assert h.backend.weight == 10  # never moved on without evidence
    assert h.tick(rollout, advance=31) is Phase.ROLLED_BACK
    assert [o for _, o, _ in h.actions(rollout)].count("inconclusive") == 3


def test_metrics_backend_down_has_its_own_limit(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    rollout = h.create()
    h.validate(rollout)
    h.provider.script = [None, None]
    assert h.tick(rollout, advance=31) is Phase.PROGRESSING
    assert h.tick(rollout, advance=11) is Phase.ROLLED_BACK
    assert "error limit reached (2/2): metrics" in h.controller.get(rollout).message


def test_restart_resumes_without_repeating_or_skipping(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    rollout = h.create()
    h.validate(rollout)
    h.tick(rollout, advance=31)  # now at 50 %
    h.controller = h.new_controller()  # the gate restarted
    assert h.tick(rollout) is Phase.PROGRESSING
    assert h.backend.weights_set[:2] == [10, 50]  # nothing re-applied
    h.tick(rollout, advance=2)
    assert h.tick(rollout, advance=2) is Phase.SUCCEEDED
    steps = [w for a, _, w in h.actions(rollout) if a == "step"]
    assert steps == [10, 50, 100]


def test_crash_between_persist_and_apply_is_reconciled(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    rollout = h.create()
    h.validate(rollout)
    h.tick(rollout, advance=31)  # persisted and applied 50 %
    h.backend.weight = 10  # as if the gate died before the router heard about 50 %
    h.controller = h.new_controller()
    measured = h.provider.measured
    h.tick(rollout, advance=31)
    assert h.backend.weight == 50
    assert h.provider.measured == measured  # a window with the wrong weight is not judged
    last = h.store.decisions(rollout)[-1]
    assert (last.action, last.evidence) == (
        "reconcile",
        {"actual_weight": 10, "desired_weight": 50},
    )


def test_infrastructure_errors_during_validation_are_retried_after_a_back_off(
    tmp_path: Path,
) -> None:
    h = Harness(tmp_path)
    rollout = h.create()
    h.backend.unreachable = True
    assert h.tick(rollout) is Phase.VALIDATING
    decision = h.store.decisions(rollout)[-1]
    assert (decision.action, decision.outcome) == ("retry-validation", "error")
    assert decision.evidence["exception"] == "TrafficError"
    h.backend.unreachable = False
    assert h.tick(rollout) is Phase.VALIDATING  # back-off: not retried at once
    assert [a for a, _, _ in h.actions(rollout)][-1] == "retry-validation"
    assert h.tick(rollout, advance=1) is Phase.PROGRESSING


def test_a_candidate_that_never_gets_ready_fails_at_its_deadline_without_blocking(
    tmp_path: Path,
) -> None:
    h = Harness(tmp_path)
    h.backend.ready_after = None
    rollout = h.create()
    assert h.validate(rollout) is Phase.VALIDATING  # each tick returns at once
    assert h.tick(rollout, advance=59) is Phase.VALIDATING
    assert [a for a, _, _ in h.actions(rollout)] == ["create", "candidate-started"]
    assert h.tick(rollout, advance=2) is Phase.FAILED
    assert "not ready yet (fake) by the deadline" in h.controller.get(rollout).message
    assert h.backend.weights_set == [] and h.backend.retired == 1


def test_a_candidate_whose_process_exited_fails_at_once(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.backend.exited = True
    rollout = h.create()
    assert h.validate(rollout) is Phase.FAILED
    decision = h.store.decisions(rollout)[-1]
    assert (decision.action, decision.outcome) == ("fail", "fail")
    assert "predictor exited with 3" in decision.reason


class Exploding(FakeProvider):
    async def measure(self, *args: object, **kwargs: object) -> WindowMeasurement:
        raise OverflowError("date value out of range")


def test_any_exception_in_a_tick_is_an_error_decision_with_a_limit(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.provider = Exploding()
    h.controller = h.new_controller()
    rollout = h.create()
    h.validate(rollout)
    assert h.tick(rollout, advance=31) is Phase.PROGRESSING
    decision = h.store.decisions(rollout)[-1]
    assert (decision.action, decision.outcome) == ("retry-analysis", "error")
    assert decision.evidence == {
        "exception": "OverflowError",
        "message": "date value out of range",
    }
    assert h.tick(rollout, advance=11) is Phase.ROLLED_BACK  # error_limit is 2
    assert "error limit reached (2/2): OverflowError" in h.controller.get(rollout).message


def test_a_promotion_that_keeps_failing_rolls_back_at_the_error_limit(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    rollout = h.create()
    h.validate(rollout)
    h.backend.unreachable = True
    state = asyncio.run(h.controller.command(rollout, "promote", full=True))
    assert state.phase is Phase.PROMOTING and state.errors == 1  # the request itself is fine
    h.backend.unreachable = False

    async def promote_fails(state: object) -> None:
        raise TrafficError("router refused (fake)")

    h.backend.promote = promote_fails  # type: ignore[method-assign]
    assert h.tick(rollout, advance=1) is Phase.ROLLED_BACK
    assert [a for a, _, _ in h.actions(rollout)][-2:] == ["rollback", "rolled-back"]


def test_commands_after_the_end_are_conflicts(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    rollout = h.create()
    h.validate(rollout)
    asyncio.run(h.controller.command(rollout, "abort"))
    with pytest.raises(CommandError, match="is aborted; nothing to pause"):
        asyncio.run(h.controller.command(rollout, "pause"))
    assert CommandError("x").status == 409


def test_manual_commands(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    rollout = h.create()
    h.validate(rollout)
    asyncio.run(h.controller.command(rollout, "pause"))
    measured = h.provider.measured
    h.tick(rollout, advance=100)
    assert h.provider.measured == measured  # paused: nothing judged
    asyncio.run(h.controller.command(rollout, "resume"))
    state = asyncio.run(h.controller.command(rollout, "promote", full=True))
    assert state.phase is Phase.SUCCEEDED and h.backend.promoted == 1

    second = h.create()
    h.validate(second)
    assert asyncio.run(h.controller.command(second, "abort")).phase is Phase.ABORTED
    assert h.backend.weight == 0


def test_overrides_apply_per_rollout(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    candidate = Candidate(
        version="2", artifact_uri=str(h.artifact), offline_metrics={"accuracy": 0.95}
    )
    state = h.controller.create("iris", candidate, AnalysisOverrides(steps=[50, 100]))
    assert state.spec.steps == [50, 100] and state.spec.failure_limit == SPEC.failure_limit


def test_generated_traffic_runs_while_the_rollout_progresses(tmp_path: Path) -> None:
    """Held-out rows go to canary and stable, marked, paced, and stop with the rollout."""
    seen: list[tuple[str, str | None, float]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append((str(request.url), request.headers.get("x-irisgate-traffic"), time.monotonic()))
        return httpx.Response(200, json={"outputs": []})

    client = httpx.AsyncClient(transport=httpx.MockTransport(answer))
    h = Harness(tmp_path)
    h.controller = RolloutController(
        h.store,
        h.backend,
        h.backend,
        h.provider,
        SPEC.model_copy(update={"generated_rate_per_s": 40.0}),
        clock=h.clock,
        http=httpx.AsyncClient(transport=candidate_transport(False)),
        candidate_timeout_s=60,
        generators=Generators(client),
    )
    rollout = h.create()
    h.provider.default = healthy(requests=300)  # thin: the step lasts its 30 s

    async def scenario() -> None:
        controller = h.controller
        await controller.tick(rollout)  # candidate started
        await controller.tick(rollout)  # accuracy gate passed: progressing
        await controller.tick(rollout)  # generation starts
        assert controller.generators.running(rollout)
        await asyncio.sleep(0.5)
        await controller.command(rollout, "abort")
        assert not controller.generators.running(rollout)
        count = len(seen)
        await asyncio.sleep(0.2)
        assert len(seen) == count  # stopped with the rollout
        await controller.aclose()

    asyncio.run(scenario())
    urls = {url for url, _, _ in seen}
    assert urls == {"http://candidate/v2/models/iris/infer", "http://stable/v2/models/iris/infer"}
    assert {marked for _, marked, _ in seen} == {"generated"}
    assert 10 <= len(seen) <= 24  # 40 requests/s for about half a second, no burst
