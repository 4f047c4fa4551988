"""SQLite store (one active rollout per model, atomic saves) and webhook delivery."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from gate.core.decide import RolloutState
from gate.core.spec import AnalysisSpec, Candidate, Phase
from gate.notify import WebhookNotifier, slack_message
from gate.store import ActiveRolloutExists, SQLiteStore, Stable

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def rollout(rollout_id: str, model: str = "iris") -> RolloutState:
    return RolloutState(
        id=rollout_id,
        model=model,
        spec=AnalysisSpec(),
        created_at=NOW,
        updated_at=NOW,
        candidate=Candidate(version="2", artifact_uri="/m", offline_metrics={"accuracy": 1}),
    )


def event_payload(state: RolloutState) -> dict[str, object]:
    return {
        "model": state.model,
        "candidate_version": "2",
        "canary_weight": 10,
        "message": "step 1",
        "rollout_id": state.id,
        "phase": "progressing",
    }


def test_one_active_rollout_per_model(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "g.db")
    store.create(rollout("a"))
    with pytest.raises(ActiveRolloutExists):
        store.create(rollout("b"))
    store.create(rollout("c", model="other"))
    store.save(rollout("a").model_copy(update={"phase": Phase.SUCCEEDED}))
    store.create(rollout("b"))  # the model is free again
    assert sorted(r.id for r in store.rollouts(active_only=True)) == ["b", "c"]


def test_state_decision_and_event_persist_together(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    store = SQLiteStore(path)
    state = rollout("a")
    store.create(state)
    moved = state.model_copy(
        update={"phase": Phase.PROGRESSING, "canary_weight": 10, "step_index": 0}
    )
    store.save(
        moved,
        {"action": "step", "outcome": "pass", "reason": "ok", "evidence": {"x": 1}},
        ("step", event_payload(moved)),
    )
    store.close()
    reopened = SQLiteStore(path)
    assert reopened.get("a") == moved
    decision = reopened.decisions("a")[0]
    assert (decision.action, decision.canary_weight, decision.evidence) == ("step", 10, {"x": 1})
    assert [e.event for e in reopened.pending_events()] == ["step"]
    reopened.set_stable(Stable(model="iris", version="3", artifact_uri="/m/3", endpoint={"pid": 1}))
    assert reopened.stable("iris") == Stable(
        model="iris", version="3", artifact_uri="/m/3", endpoint={"pid": 1}
    )


def _notifier(store: SQLiteStore, handler: object, passes: int = 2) -> WebhookNotifier:
    notifier = WebhookNotifier(["http://hooks.test/a"], store, max_passes=passes, backoff_s=0.001)
    notifier._client = httpx.AsyncClient(transport=httpx.MockTransport(handler))  # type: ignore[arg-type]
    return notifier


def test_webhook_retries_then_delivers(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "g.db")
    state = rollout("a")
    store.create(state, event=("start", event_payload(state)))
    calls: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(json.loads(request.content))
        return httpx.Response(503 if len(calls) < 2 else 200)

    asyncio.run(_notifier(store, handler).deliver_pending())
    assert len(calls) == 2
    assert calls[-1]["text"].startswith("[irisgate] iris v2: rollout started")
    assert store.event_counts() == {"delivered": 1, "gave_up": 0, "pending": 0}


def test_webhook_down_gives_up_after_its_passes(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "g.db")
    state = rollout("a")
    store.create(state, event=("start", event_payload(state)))

    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    notifier = _notifier(store, handler, passes=2)
    asyncio.run(notifier.deliver_pending())
    assert store.event_counts() == {"delivered": 0, "gave_up": 0, "pending": 1}
    asyncio.run(notifier.deliver_pending())
    assert store.event_counts() == {"delivered": 0, "gave_up": 1, "pending": 0}


def test_slack_payload_shape(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "g.db")
    state = rollout("a")
    store.create(state, event=("rollback", event_payload(state)))
    message = slack_message(store.pending_events()[0])
    assert set(message) == {"text", "attachments", "irisgate"}
    assert message["attachments"][0]["color"] == "danger"
    assert message["irisgate"]["rollout_id"] == "a"


def test_an_unreadable_row_is_quarantined_not_a_failed_listing(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    store = SQLiteStore(path)
    store.create(rollout("good"))
    store.create(rollout("bad", model="other"))
    # a row written by an older gate, or edited by hand, that no longer validates
    store._db.execute(
        "UPDATE rollouts SET state = json_set(state, '$.candidate.offline_metrics', "
        "json('{}')) WHERE id = 'bad'"
    )
    assert [r.id for r in store.rollouts()] == ["good"]
    assert store.get("bad") is None
    [quarantined] = store.quarantined()
    assert (quarantined.rollout_id, quarantined.model) == ("bad", "other")
    assert "offline_metrics" in quarantined.reason
    assert [r.id for r in store.rollouts(active_only=True)] == ["good"]
    store.create(rollout("again", model="other"))  # the model is free again
    store.close()
    assert SQLiteStore(path).instance == store.instance  # one identity per database
