"""Payload events in, pairs out: the event formats, the payload store, the replayer and the
controller's shadow phase over one event loop."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import httpx
import pytest

from gate.api import rollout_detail
from gate.controller import RolloutController
from gate.core.spec import AnalysisSpec, Candidate, Phase
from gate.payload_store import CANDIDATE_ERROR, PAIRED, PayloadStore
from gate.providers.payloads import (
    RESPONSE_TYPE,
    EventError,
    PayloadEvent,
    parse_batch,
    parse_binary,
)
from gate.shadow import ShadowReplayer
from gate.store import SQLiteStore, Stable
from tests.gate_fakes import (
    HOLDOUT,
    KSERVE_HEADERS,
    FakeBackend,
    FakeClock,
    FakeProvider,
    write_holdout,
)

LIVE_ROW = [6.0, 2.9, 4.5, 1.5]  # not in the held-out set: only live traffic has it


def v2_request(rows: list[list[float]]) -> bytes:
    flat = [v for row in rows for v in row]
    tensor = {"name": "x", "datatype": "FP64", "shape": [len(rows), 4], "data": flat}
    return json.dumps({"inputs": [tensor]}).encode()


def v2_answer(classes: list[int]) -> bytes:
    return json.dumps({"outputs": [{"name": "predict", "data": classes}]}).encode()


def exchange_events(
    request_id: str, rows: list[list[float]], classes: list[int]
) -> list[PayloadEvent]:
    def event(kind: str, data: bytes) -> PayloadEvent:
        return PayloadEvent(kind, request_id, "iris", "default", "application/json", data, None)

    return [event("request", v2_request(rows)), event("response", v2_answer(classes))]


# --- the formats ---------------------------------------------------------------------------


def test_kserve_binary_event_is_read() -> None:
    event = parse_binary(KSERVE_HEADERS, b'{"instances": [[1, 2, 3, 4]]}')
    assert (event.kind, event.id, event.model, event.endpoint) == (
        "request",
        KSERVE_HEADERS["ce-id"],
        "iris",
        "default",
    )
    assert event.data == b'{"instances": [[1, 2, 3, 4]]}'
    assert event.time is not None and event.time.year == 2026
    answer = parse_binary({**KSERVE_HEADERS, "ce-type": RESPONSE_TYPE}, b"{}")
    assert answer.kind == "response"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"ce-specversion": "0.3"}, "ce-specversion"),
        ({"ce-type": "dev.knative.foo"}, "ce-type"),
        ({"ce-id": "a b"}, "ce-id"),
        ({"ce-id": "x" * 129}, "ce-id"),
        ({"ce-inferenceservicename": "../etc"}, "ce-inferenceservicename"),
        ({"ce-endpoint": "Default!"}, "ce-endpoint"),
        ({"ce-time": "yesterday"}, "ce-time"),
    ],
)
def test_a_malformed_binary_event_names_its_attribute(change: dict[str, str], field: str) -> None:
    with pytest.raises(EventError, match=f"^{field}"):
        parse_binary({**KSERVE_HEADERS, **change}, b"{}")
    missing = {k: v for k, v in KSERVE_HEADERS.items() if k != "ce-id"}
    with pytest.raises(EventError, match=r"^ce-id: required"):
        parse_binary(missing, b"{}")


def test_batch_mode_reads_base64_and_json_data() -> None:
    structured = {k[3:]: v for k, v in KSERVE_HEADERS.items() if k.startswith("ce-")}
    batch = [
        {
            **structured,
            "datacontenttype": "application/json",
            "data_base64": base64.b64encode(b'{"inputs": []}').decode(),
        },
        {**structured, "type": RESPONSE_TYPE, "data": {"outputs": []}},
    ]
    events = parse_batch(json.dumps(batch).encode())
    assert [e.kind for e in events] == ["request", "response"]
    assert events[0].data == b'{"inputs": []}' and events[1].data == b'{"outputs":[]}'
    for body, where in [
        (b"{}", "body"),
        (b"[1]", r"\[0\]"),
        (json.dumps([{**structured, "data_base64": "***"}]).encode(), r"\[0\].data_base64"),
        (json.dumps([structured]).encode(), r"\[0\].data"),
    ]:
        with pytest.raises(EventError, match=f"^{where}"):
            parse_batch(body)


# --- the store -------------------------------------------------------------------------------


def test_answers_before_requests_and_duplicates_make_one_exchange(tmp_path: Path) -> None:
    store = PayloadStore(tmp_path / "p.db")
    request, response = exchange_events("a", [LIVE_ROW], [1])
    store.ingest([response])
    assert store.exchanges("iris", 0, 10) == []  # half an exchange is not replayed
    store.ingest([request, request])
    (exchange,) = store.exchanges("iris", 0, 10)
    assert exchange.request_id == "a" and exchange.response == v2_answer([1])
    canary = PayloadEvent(
        kind="request",
        id="b",
        model="iris",
        endpoint="canary",
        content_type="application/json",
        data=b"{}",
        time=None,
    )
    store.ingest([canary])
    assert len(store.exchanges("iris", 0, 10)) == 1  # only stable's answers are replayed


def test_retention_by_age_and_by_count(tmp_path: Path) -> None:
    store = PayloadStore(tmp_path / "p.db", retention_s=60, max_payloads=1_000)
    for i in range(3):
        store.ingest(exchange_events(f"old{i}", [LIVE_ROW], [1]), now=1_000.0)
    store.ingest(exchange_events("new", [LIVE_ROW], [1]), now=1_100.0)
    assert store.prune(now=1_100.0) == 3
    assert [e.request_id for e in store.exchanges("iris", 0, 10)] == ["new"]
    for i in range(1_500):  # past the row cap: the oldest go
        store.ingest(exchange_events(f"n{i}", [LIVE_ROW], [1])[:1], now=1_100.0)
    store.prune(now=1_100.0)
    assert store.payload_count() <= 1_000


# --- the replayer ---------------------------------------------------------------------------


def flipping_candidate(flip_live: bool, fail: bool = False) -> httpx.MockTransport:
    """Right on the held-out rows (it passes the accuracy gate); on the live row it answers
    class 2 where stable answered 1 when ``flip_live``."""
    truth = {tuple(row): label for row, label in HOLDOUT}

    def handle(request: httpx.Request) -> httpx.Response:
        if fail and request.headers.get("x-irisgate-traffic") == "generated":
            return httpx.Response(500, json={"error": "boom"})
        data = json.loads(request.content)["inputs"][0]["data"]
        rows = [tuple(data[i : i + 4]) for i in range(0, len(data), 4)]
        labels = [truth.get(row, 2 if flip_live else 1) for row in rows]
        return httpx.Response(200, json={"outputs": [{"name": "predict", "data": labels}]})

    return httpx.MockTransport(handle)


def test_replays_pair_answers_and_resume_after_the_last_pair(tmp_path: Path) -> None:
    store = PayloadStore(tmp_path / "p.db")
    for i in range(5):
        store.ingest(exchange_events(f"r{i}", [LIVE_ROW, LIVE_ROW], [1, 1]))

    async def replay(transport: httpx.MockTransport, count: int) -> None:
        async with httpx.AsyncClient(transport=transport) as client:
            replayer = ShadowReplayer(store, client, "ro", "iris", "http://c", 1000.0, 0)
            for exchange in store.exchanges("iris", replayer.cursor, count):
                store.add_pair("ro", "iris", exchange, await replayer.replay(exchange))

    asyncio.run(replay(flipping_candidate(flip_live=True), 2))
    asyncio.run(replay(flipping_candidate(flip_live=True), 10))  # a restarted replayer
    evidence = store.paired_evidence("ro")
    assert (evidence.requests, evidence.rows, evidence.disagreements) == (5, 10, 10)
    assert evidence.flips == {"1->2": 10}
    assert store.exchanges("iris", store.cursor("ro", 0), 10) == []  # past the last


def test_candidate_failures_are_counted_not_paired(tmp_path: Path) -> None:
    store = PayloadStore(tmp_path / "p.db")
    store.ingest(exchange_events("r", [LIVE_ROW], [1]))

    async def replay() -> str:
        async with httpx.AsyncClient(transport=flipping_candidate(False, fail=True)) as client:
            replayer = ShadowReplayer(store, client, "ro", "iris", "http://c", 10.0, 0)
            (exchange,) = store.exchanges("iris", 0, 1)
            return (await replayer.replay(exchange)).outcome

    assert asyncio.run(replay()) == CANDIDATE_ERROR
    assert PAIRED != CANDIDATE_ERROR


# --- the controller's shadow phase -----------------------------------------------------------


def shadow_controller(
    tmp_path: Path, spec: AnalysisSpec, transport: httpx.MockTransport
) -> tuple[RolloutController, FakeBackend, FakeClock, str]:
    """v1 stable, a real payload store beside the gate's, a rollout of v2 created."""
    store = SQLiteStore(tmp_path / "gate.db")
    store.set_stable(Stable(model="iris", version="1", artifact_uri="/m/1"))
    backend, clock = FakeBackend(), FakeClock()
    controller = RolloutController(
        store,
        backend,
        backend,
        FakeProvider(),
        spec,
        clock=clock,
        http=httpx.AsyncClient(transport=transport),
        payloads=PayloadStore(tmp_path / "gate.db"),
    )
    artifact = write_holdout(tmp_path / "registry" / "iris" / "2")
    candidate = Candidate(
        version="2", artifact_uri=str(artifact), offline_metrics={"accuracy": 1.0}
    )
    return controller, backend, clock, controller.create("iris", candidate).id


def run_shadow(
    tmp_path: Path, flip_live: bool, exchanges: int = 400
) -> tuple[RolloutController, str]:
    spec = AnalysisSpec(steps=[10, 100], shadow_s=60, shadow_rate_per_s=1000)
    controller, backend, _, rollout = shadow_controller(
        tmp_path, spec, flipping_candidate(flip_live)
    )

    async def scenario() -> None:
        await controller.tick(rollout)
        assert (await controller.tick(rollout)).phase is Phase.SHADOW
        assert backend.mirror == {"iris": True} and backend.weights_set == []
        for i in range(exchanges):
            controller.payloads.ingest(exchange_events(f"live{i}", [LIVE_ROW], [1]))
        for _ in range(200):
            await asyncio.sleep(0.02)
            if (await controller.tick(rollout)).phase is not Phase.SHADOW:
                break
        await controller.aclose()

    asyncio.run(scenario())
    return controller, rollout


def test_a_candidate_that_flips_live_answers_fails_in_shadow(tmp_path: Path) -> None:
    controller, rollout = run_shadow(tmp_path, flip_live=True)
    state = controller.get(rollout)
    assert state.phase is Phase.FAILED
    assert "regression shown on live requests" in state.message and "1->2" in state.message
    backend = controller.router
    assert isinstance(backend, FakeBackend)
    assert backend.weights_set == [] and backend.mirror == {"iris": False}  # never a user
    decision = controller.store.decisions(rollout)[-1]
    assert decision.action == "fail" and decision.outcome == "fail"
    assert decision.evidence["paired"]["flips"]["1->2"] >= 1


def test_a_candidate_that_agrees_passes_shadow_and_steps_begin(tmp_path: Path) -> None:
    controller, rollout = run_shadow(tmp_path, flip_live=False)
    state = controller.get(rollout)
    assert state.phase is Phase.PROGRESSING and state.canary_weight == 10
    assert "shown below" in controller.store.decisions(rollout)[-1].reason


# --- delayed labels --------------------------------------------------------------------------


def test_labels_score_answers_whichever_comes_first(tmp_path: Path) -> None:
    store = PayloadStore(tmp_path / "p.db")
    store.ingest(exchange_events("early", [LIVE_ROW, LIVE_ROW], [1, 2]))
    assert store.add_labels("iris", [("early", ("1", "1")), ("later", ("2",))]) == (2, 1)
    store.ingest(exchange_events("later", [LIVE_ROW], [2]))  # its label was waiting
    assert store.label_evidence("iris", 0) == {"default": (3, 2)}
    assert store.add_labels("iris", [("early", ("1", "2"))]) == (1, 0)  # a correction
    assert store.label_evidence("iris", 0) == {"default": (3, 3)}
    store.add_labels("iris", [("later", ("1", "1"))])  # two labels for a one-row answer
    assert store.label_evidence("iris", 0) == {"default": (2, 2)}  # not scored
    assert store.label_evidence("other", 0) == {}


def test_labels_reach_the_shadow_pairs(tmp_path: Path) -> None:
    store = PayloadStore(tmp_path / "p.db")
    for i in range(4):
        store.ingest(exchange_events(f"r{i}", [LIVE_ROW], [1]))
    store.add_labels("iris", [("r0", ("1",)), ("r1", ("2",))])

    async def replay() -> None:
        async with httpx.AsyncClient(transport=flipping_candidate(flip_live=True)) as client:
            replayer = ShadowReplayer(store, client, "ro", "iris", "http://c", 1000.0, 0)
            for exchange in store.exchanges("iris", 0, 10):
                store.add_pair("ro", "iris", exchange, await replayer.replay(exchange))

    asyncio.run(replay())
    store.add_labels("iris", [("r2", ("1",))])
    evidence = store.paired_evidence("ro")
    # stable answered 1 and the candidate 2 on every row: labels 1, 2, 1
    assert (evidence.labelled_rows, evidence.stable_correct, evidence.candidate_correct) == (
        3,
        2,
        1,
    )


def test_the_rollout_shows_labels_that_joined_its_shadow_pairs_after_the_verdict(
    tmp_path: Path,
) -> None:
    """The shadow phase passed on its disagreement before any label; labels that arrive
    later still join its pairs, and ``GET /v1/rollouts/{id}`` shows the pairs as they are
    now beside the verdict's own evidence."""
    controller, rollout = run_shadow(tmp_path, flip_live=False)
    verdict = next(d for d in controller.store.decisions(rollout) if "paired" in d.evidence)
    assert verdict.evidence["paired"]["labelled_rows"] == 0
    controller.payloads.add_labels("iris", [(f"live{i}", ("1",)) for i in range(30)])

    detail = rollout_detail(controller, rollout)
    assert detail.shadow_pairs is not None and detail.watch_pairs is None
    # the replayer stops at the next tick: a pair in flight at the verdict may follow it
    assert detail.shadow_pairs.requests >= verdict.evidence["paired"]["requests"] >= 30
    # stable answered 1 on the live row and so did the candidate: both right on all 30
    assert (
        detail.shadow_pairs.labelled_rows,
        detail.shadow_pairs.stable_correct,
        detail.shadow_pairs.candidate_correct,
    ) == (30, 30, 30)
    assert detail.model_dump(mode="json")["shadow_pairs"]["labelled_rows"] == 30


def test_a_rollout_without_a_shadow_phase_has_no_pairs(tmp_path: Path) -> None:
    spec = AnalysisSpec(steps=[10, 100], shadow_s=0)
    controller, _, _, rollout = shadow_controller(tmp_path, spec, flipping_candidate(False))
    detail = rollout_detail(controller, rollout)
    assert detail.shadow_pairs is None and detail.watch_pairs is None
