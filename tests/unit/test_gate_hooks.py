"""Gating hooks: the pure transitions (hold, let through, approve, pre-rollout failures,
rollback asked), the request schema and its allow-list, and the runner against a real
loopback HTTP receiver (Flagger's payload, a refused, slow or trickling answer)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from gate.confine import confine_hooks
from gate.core.decide import (
    Action,
    CommandError,
    Transition,
    approve,
    hold,
    hook_rollback,
    let_through,
    pre_rollout_failed,
)
from gate.core.errors import Refused
from gate.core.hooks import (
    APPROVAL,
    Hook,
    HookResult,
    HookType,
    asked_rollback,
    flagger_phase,
    refused,
)
from gate.core.spec import AnalysisOverrides, AnalysisSpec, Candidate, Phase
from gate.core.state import RolloutState
from gate.hooks import MAX_ANSWER_BYTES, HookRunner, payload
from gate.settings import GateSettings
from tests.gate_fakes import FakeClock
from tests.unit.test_gate_controller import Harness

NOW = FakeClock()()
TOKEN = "unit-token-0123456789"


def hook(kind: HookType, url: str = APPROVAL, name: str | None = None, **extra: Any) -> Hook:
    return Hook(name=name or kind.value, type=kind, url=url, **extra)


def rollout(*hooks: Hook, **changes: Any) -> RolloutState:
    spec = AnalysisSpec(steps=[10, 50, 100], failure_limit=2, hooks=list(hooks))
    base = RolloutState(
        id="r1",
        model="iris",
        candidate=Candidate(version="2", artifact_uri="/m/2", offline_metrics={"accuracy": 1}),
        spec=spec,
        stable_version="1",
        created_at=NOW,
        updated_at=NOW,
    )
    return base.model_copy(update=changes)


def answer(kind: HookType, ok: bool, name: str = "h") -> HookResult:
    return HookResult(name=name, type=kind, ok=ok, status=200 if ok else 403, reason="r")


# --- pure --------------------------------------------------------------------------------


def test_a_refusing_confirm_hook_holds_once_per_reason_and_the_move_clears_it() -> None:
    state = rollout(phase=Phase.PROGRESSING, step_index=0, canary_weight=10)
    held = hold(state, HookType.CONFIRM_TRAFFIC_INCREASE, "qa: HTTP 403", NOW)
    assert held is not None and held.action is Action.HOLD and held.event == "hold"
    assert held.state.held_by is HookType.CONFIRM_TRAFFIC_INCREASE
    assert (held.state.phase, held.state.canary_weight) == (Phase.PROGRESSING, 10)
    assert hold(held.state, HookType.CONFIRM_TRAFFIC_INCREASE, "qa: HTTP 403", NOW) is None
    assert hold(held.state, HookType.CONFIRM_TRAFFIC_INCREASE, "qa: HTTP 500", NOW) is not None
    approved = held.state.model_copy(
        update={"approvals": [HookType.CONFIRM_TRAFFIC_INCREASE, HookType.CONFIRM_PROMOTION]}
    )
    moved = let_through(
        Transition(state=approved, action=Action.STEP), HookType.CONFIRM_TRAFFIC_INCREASE
    )
    assert moved.state.held_by is None  # and the approval is used up: the next raise asks
    assert moved.state.approvals == [HookType.CONFIRM_PROMOTION]


def test_pre_rollout_refusals_count_as_failed_checks_up_to_the_limit() -> None:
    state = rollout(phase=Phase.SHADOW, held_by=HookType.CONFIRM_TRAFFIC_INCREASE)
    first = pre_rollout_failed(state, "pre-rollout hook 'smoke': HTTP 500", NOW)
    assert first.state.held_by is None  # the confirm hook let the move through
    assert first.action is Action.RETRY and first.state.phase is Phase.SHADOW
    assert first.state.failures == 1 and first.state.not_before is not None
    assert first.state.not_before > NOW
    second = pre_rollout_failed(first.state, "pre-rollout hook 'smoke': HTTP 500", NOW)
    assert (second.action, second.state.phase, second.state.canary_weight) == (
        Action.FAIL,
        Phase.FAILED,
        0,
    )
    assert second.state.message.startswith("failure limit reached (2/2): pre-rollout hook")


def test_a_rollback_hook_fails_before_the_steps_and_rolls_back_during_them() -> None:
    assert hook_rollback(rollout(phase=Phase.SHADOW), "why", NOW).state.phase is Phase.FAILED
    during = hook_rollback(rollout(phase=Phase.PROGRESSING, canary_weight=50), "why", NOW)
    assert (during.action, during.state.phase, during.state.canary_weight) == (
        Action.ROLLBACK,
        Phase.ROLLING_BACK,
        0,
    )


def test_approval_needs_an_approval_hook_of_that_type_and_a_live_rollout() -> None:
    gated = rollout(hook(HookType.CONFIRM_PROMOTION), phase=Phase.PROGRESSING)
    with pytest.raises(CommandError, match="waits for no approval"):
        approve(gated, None, NOW)
    ahead = approve(gated, HookType.CONFIRM_PROMOTION, NOW)
    assert ahead.state.approvals == [HookType.CONFIRM_PROMOTION] and ahead.event == "approval"
    again = approve(ahead.state, HookType.CONFIRM_PROMOTION, NOW)  # idempotent
    assert again.state.approvals == [HookType.CONFIRM_PROMOTION]
    waiting = gated.model_copy(update={"held_by": HookType.CONFIRM_PROMOTION})
    assert approve(waiting, None, NOW).state.approvals == [HookType.CONFIRM_PROMOTION]
    with pytest.raises(CommandError, match="no confirm-rollout hook with url 'approval'"):
        approve(gated, HookType.CONFIRM_ROLLOUT, NOW)
    remote = rollout(hook(HookType.CONFIRM_PROMOTION, "http://qa.test/"), phase=Phase.SHADOW)
    with pytest.raises(CommandError, match="no confirm-promotion hook"):
        approve(remote, HookType.CONFIRM_PROMOTION, NOW)  # a remote hook answers for itself
    with pytest.raises(CommandError, match="succeeded; nothing to approve"):
        approve(gated.model_copy(update={"phase": Phase.SUCCEEDED}), None, NOW)


def test_answers_read_as_flagger_reads_them() -> None:
    yes, no = answer(HookType.ROLLOUT, True, "a"), answer(HookType.ROLLOUT, False, "b")
    assert refused([yes]) is None and refused([]) is None
    assert refused([yes, no]) == "rollout hook 'b': r"
    assert asked_rollback([no]) is None
    assert asked_rollback([yes, no]) == "rollback hook 'a' asked for a rollback (r)"
    assert flagger_phase("progressing", None) == "Progressing"
    assert flagger_phase("progressing", HookType.CONFIRM_TRAFFIC_INCREASE) == "Waiting"
    assert flagger_phase("progressing", HookType.CONFIRM_PROMOTION) == "WaitingPromotion"
    assert flagger_phase("rolled_back", None) == "Failed"


# --- the request ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hooks", "problem"),
    [
        ([{"name": "a", "type": "confirm-later", "url": APPROVAL}], "hooks.0.type"),
        ([{"name": "a", "type": "rollout", "url": APPROVAL, "timeout_s": 0}], "timeout_s"),
        ([{"name": "a", "type": "rollout", "url": APPROVAL, "timeout_s": 61}], "timeout_s"),
        ([{"name": "a/b", "type": "rollout", "url": APPROVAL}], "hooks.0.name"),
        ([{"name": "a", "type": "rollout", "url": APPROVAL, "extra": 1}], "extra"),
        ([{"name": "a", "type": "rollout", "url": APPROVAL}] * 2, "hook names must be unique"),
        ([{"name": f"h{i}", "type": "rollout", "url": APPROVAL} for i in range(21)], "hooks"),
    ],
)
def test_hooks_are_validated_with_the_field_named(hooks: list[Any], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        AnalysisOverrides.model_validate({"hooks": hooks})


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        (APPROVAL, True),
        ("http://qa.test/gate/check", True),
        ("http://qa.test/gate", True),
        ("http://qa.test/gatekeeper", False),  # a whole path segment, not a string prefix
        ("http://qa.test@evil.test/gate/check", False),
        ("http://qa.test/gate/../admin", False),
        ("https://qa.test/gate/check", False),  # another scheme is another origin
        ("file:///etc/passwd", False),
        ("/v1/rollouts", False),
    ],
)
def test_hook_urls_must_be_allowed_by_the_operator(url: str, allowed: bool) -> None:
    settings = GateSettings(api_token=TOKEN, hook_allowed_prefixes=["http://qa.test/gate"])
    overrides = AnalysisOverrides.model_validate(
        {
            "hooks": [
                {"name": "ok", "type": "rollout", "url": APPROVAL},
                {"name": "x", "type": "rollout", "url": url},
            ]
        }
    )
    if allowed:
        confine_hooks(overrides, settings)
        return
    with pytest.raises(Refused, match=r"^analysis\.hooks\.1\.url: must be 'approval' or"):
        confine_hooks(overrides, settings)
    confine_hooks(None, settings)  # no overrides: the operator's own defaults


# --- the runner, against a real receiver ---------------------------------------------------


class Receiver:
    """Answers POST /<status> with that status, /slow after a sleep, /trickle one byte a
    second, and /big with a 1 MB body; keeps what it was sent."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.received.append(json.loads(body))
                path = self.path.strip("/")
                if path == "slow":
                    time.sleep(3)
                code = int(path) if path.isdigit() else 200
                self.send_response(code)
                self.end_headers()
                # the gate may stop reading (a bounded read, a timeout): not an error here
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self._answer(path, code)

            def _answer(self, path: str, code: int) -> None:
                if path == "trickle":
                    for _ in range(5):
                        self.wfile.write(b"x")
                        self.wfile.flush()
                        time.sleep(1)
                elif path == "big":
                    self.wfile.write(b"y" * 1_000_000)
                else:
                    self.wfile.write(f"answer {code}".encode())

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    yield running
    running.server.shutdown()
    running.server.server_close()


def call(state: RolloutState, kind: HookType) -> list[HookResult]:
    async def run() -> list[HookResult]:
        async with httpx.AsyncClient() as client:
            return await HookRunner(client, "serving").call(state, kind)

    return asyncio.run(run())


def test_the_receiver_gets_flaggers_payload_and_its_answer_decides(receiver: Receiver) -> None:
    state = rollout(
        hook(HookType.ROLLOUT, f"{receiver.url}/200", "ok", metadata={"cmd": "hey -z 1m"}),
        hook(HookType.ROLLOUT, f"{receiver.url}/503", "down"),
        hook(HookType.CONFIRM_PROMOTION, f"{receiver.url}/200", "other type"),
        phase=Phase.PROGRESSING,
        step_index=1,
        canary_weight=50,
    )
    answers = {a.name: a for a in call(state, HookType.ROLLOUT)}
    assert set(answers) == {"ok", "down"}  # only the type asked
    assert answers["ok"].ok and answers["ok"].status == 200
    assert answers["ok"].reason == "HTTP 200: answer 200"
    assert not answers["down"].ok and answers["down"].reason == "HTTP 503: answer 503"
    sent = next(r for r in receiver.received if r["metadata"])
    assert {k: sent[k] for k in ("name", "namespace", "phase", "checksum", "type")} == {
        "name": "iris",
        "namespace": "serving",
        "phase": "Progressing",
        "checksum": "r1",
        "type": "rollout",
    }
    assert sent["metadata"] == {"cmd": "hey -z 1m"}
    assert sent["irisgate"]["canary_weight"] == 50 and sent["irisgate"]["candidate_version"] == "2"
    assert payload(state, state.spec.hooks[0], "ns")["namespace"] == "ns"


def test_a_hook_never_holds_a_tick_past_its_timeout(receiver: Receiver) -> None:
    """Hanging, trickling, huge or absent answers: each a refusal with its reason, the
    hooks of one moment asked at once, none read past its bound."""
    state = rollout(
        hook(HookType.PRE_ROLLOUT, f"{receiver.url}/slow", "slow", timeout_s=0.5),
        hook(HookType.PRE_ROLLOUT, f"{receiver.url}/trickle", "trickle", timeout_s=0.5),
        hook(HookType.PRE_ROLLOUT, f"{receiver.url}/big", "big", timeout_s=5),
        hook(HookType.PRE_ROLLOUT, "http://127.0.0.1:9/", "refused", timeout_s=5),
    )
    started = time.monotonic()
    answers = {a.name: a for a in call(state, HookType.PRE_ROLLOUT)}
    assert time.monotonic() - started < 2.5  # one timeout, not their sum
    assert answers["slow"].reason == "no answer within 0.5 s" and answers["slow"].status is None
    assert answers["trickle"].reason == "no answer within 0.5 s"
    assert answers["big"].ok and len(answers["big"].reason) <= 220 < MAX_ANSWER_BYTES
    assert not answers["refused"].ok and answers["refused"].reason.startswith("ConnectError")


def test_the_approval_hook_is_answered_from_the_rollout_without_a_request() -> None:
    waiting = rollout(hook(HookType.CONFIRM_PROMOTION))
    (no,) = call(waiting, HookType.CONFIRM_PROMOTION)
    assert (no.ok, no.status) == (False, 403) and "irisgate rollouts approve r1" in no.reason
    approved = waiting.model_copy(update={"approvals": [HookType.CONFIRM_PROMOTION]})
    (yes,) = call(approved, HookType.CONFIRM_PROMOTION)
    assert (yes.ok, yes.reason) == (True, "approved by user")


# --- the controller, with the gate's own approval hook -------------------------------------


def gated(h: Harness, *kinds: HookType) -> str:
    candidate = Candidate(
        version="2", artifact_uri=str(h.artifact), offline_metrics={"accuracy": 0.95}
    )
    overrides = AnalysisOverrides(hooks=[hook(kind) for kind in kinds])
    return h.controller.create("iris", candidate, overrides).id


def approve_now(h: Harness, rollout_id: str, kind: HookType | None = None) -> RolloutState:
    return asyncio.run(h.controller.approve(rollout_id, kind))


def test_every_confirm_hook_holds_its_move_until_approved(tmp_path: Path) -> None:
    """Approval at each moment: before the candidate starts, before each raise of the
    weight (an approval is used up by the move it let through), before the promotion.
    Holding is recorded once, not once per tick; the held rollout is still judged."""
    h = Harness(tmp_path)
    rollout_id = gated(
        h, HookType.CONFIRM_ROLLOUT, HookType.CONFIRM_TRAFFIC_INCREASE, HookType.CONFIRM_PROMOTION
    )
    assert h.tick(rollout_id) is Phase.VALIDATING and h.backend.started == 0
    h.tick(rollout_id, advance=2)
    state = h.controller.get(rollout_id)
    assert state.held_by is HookType.CONFIRM_ROLLOUT and not state.candidate_started
    approve_now(h, rollout_id)
    assert h.validate(rollout_id) is Phase.VALIDATING  # started, judged: first raise held
    assert h.backend.started == 1 and h.backend.weight == 0
    assert h.controller.get(rollout_id).held_by is HookType.CONFIRM_TRAFFIC_INCREASE
    approve_now(h, rollout_id)
    assert h.tick(rollout_id, advance=2) is Phase.PROGRESSING and h.backend.weight == 10
    h.tick(rollout_id, advance=2)  # healthy: would move to 50, asks again
    assert h.backend.weight == 10 and h.controller.get(rollout_id).approvals == []
    approve_now(h, rollout_id, HookType.CONFIRM_TRAFFIC_INCREASE)
    h.tick(rollout_id, advance=2)
    assert h.backend.weight == 50
    approve_now(h, rollout_id, HookType.CONFIRM_TRAFFIC_INCREASE)
    h.tick(rollout_id, advance=2)
    assert h.backend.weight == 100
    h.tick(rollout_id, advance=2)
    h.tick(rollout_id, advance=2)
    assert h.controller.get(rollout_id).held_by is HookType.CONFIRM_PROMOTION
    assert h.backend.promoted == 0
    approve_now(h, rollout_id)
    assert h.tick(rollout_id, advance=2) is Phase.SUCCEEDED and h.backend.promoted == 1
    actions = [a for a, _, _ in h.actions(rollout_id)]
    # held: before the start, the first raise, 10 -> 50, the promotion (50 -> 100 was
    # approved ahead)
    assert actions.count("hold") == 4 and actions.count("approve") == 5
    step = next(d for d in h.store.decisions(rollout_id) if d.action == "step")
    assert step.evidence["hooks"][0]["type"] == "confirm-traffic-increase"
    assert step.evidence["hooks"][0]["ok"] is True


def test_refused_pre_rollout_and_rollout_hooks_are_failed_checks(tmp_path: Path) -> None:
    h = Harness(tmp_path / "pre")
    rollout_id = gated(h, HookType.PRE_ROLLOUT)
    h.validate(rollout_id)
    state = h.controller.get(rollout_id)
    assert (state.phase, state.failures, h.backend.weight) == (Phase.VALIDATING, 1, 0)
    h.tick(rollout_id, advance=60)  # asked again after the back-off: the limit
    state = h.controller.get(rollout_id)
    assert state.phase is Phase.FAILED and "pre-rollout hook 'pre-rollout'" in state.message
    assert h.backend.weights_set == []  # no user was ever sent to the candidate

    h = Harness(tmp_path / "rollout")
    rollout_id = gated(h, HookType.ROLLOUT)
    assert h.validate(rollout_id) is Phase.PROGRESSING
    h.tick(rollout_id, advance=2)  # the window's hooks refuse: the analysis fails
    h.tick(rollout_id, advance=2)  # the retried window's too: the failure limit
    assert h.tick(rollout_id, advance=2) is Phase.ROLLED_BACK
    failed = [d for d in h.store.decisions(rollout_id) if d.outcome == "fail"]
    assert len(failed) == 2 and failed[0].evidence["hooks"][0]["type"] == "rollout"
    assert "rollout hook 'rollout'" in h.controller.get(rollout_id).message


def test_an_approved_rollback_hook_rolls_back(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    rollout_id = gated(h, HookType.ROLLBACK)
    assert h.validate(rollout_id) is Phase.PROGRESSING
    approve_now(h, rollout_id, HookType.ROLLBACK)
    h.tick(rollout_id, advance=2)
    state = h.controller.get(rollout_id)
    assert state.phase is Phase.ROLLED_BACK and h.backend.weight == 0
    assert state.message.startswith("rollback hook 'rollback' asked for a rollback")
