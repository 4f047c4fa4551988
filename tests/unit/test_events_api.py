"""``POST /v1/events`` in-process: the events token, both CloudEvents modes, bounds, and
errors that name the attribute."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from gate.app import create_app
from gate.providers.payloads import BATCH_CONTENT_TYPE, MAX_POST_BYTES, REQUEST_TYPE
from gate.settings import GateSettings
from tests.gate_fakes import KSERVE_HEADERS, FakeBackend, FakeProvider

API_TOKEN = "test-token-0123456789"
EVENTS_TOKEN = "events-token-0123456789"


FEEDBACK_TOKEN = "feedback-token-0123456789"


def app_client(tmp_path: Path, events_token: str | None) -> TestClient:
    settings = GateSettings(
        api_token=API_TOKEN,
        events_token=events_token,
        feedback_token=FEEDBACK_TOKEN,
        db_path=tmp_path / "gate.db",
        tick_interval_s=1000,
        registry_dir=tmp_path / "registry",
    )
    return TestClient(create_app(settings, backend=FakeBackend(), provider=FakeProvider()))


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with app_client(tmp_path, EVENTS_TOKEN) as test_client:
        yield test_client


def batch(count: int) -> bytes:
    structured = {k[3:]: v for k, v in KSERVE_HEADERS.items() if k.startswith("ce-")}
    events = [
        {**structured, "id": f"r{i}", "data_base64": base64.b64encode(b'{"inputs": []}').decode()}
        for i in range(count)
    ]
    return json.dumps(events).encode()


def test_kserve_logger_posts_with_the_token_in_its_url(client: TestClient) -> None:
    response = client.post(
        f"/v1/events/{EVENTS_TOKEN}", content=b'{"inputs": []}', headers=KSERVE_HEADERS
    )
    assert response.status_code == 200 and response.json() == {"accepted": 1}
    assert client.app.state.controller.payloads.payload_count() == 1  # type: ignore[attr-defined]


def test_router_batches_with_a_bearer_token(client: TestClient) -> None:
    response = client.post(
        "/v1/events",
        content=batch(3),
        headers={
            "content-type": BATCH_CONTENT_TYPE,
            "authorization": f"Bearer {EVENTS_TOKEN}",
        },
    )
    assert response.json() == {"accepted": 3}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"authorization": f"Bearer {API_TOKEN}"},  # the API token is not the events token
        {"authorization": "Bearer wrong-token-0123456789"},
        {"authorization": f"Basic {EVENTS_TOKEN}"},
    ],
)
def test_no_events_without_the_events_token(client: TestClient, headers: dict[str, str]) -> None:
    response = client.post("/v1/events", content=b"{}", headers={**KSERVE_HEADERS, **headers})
    assert response.status_code == 401
    assert client.post("/v1/events/wrong", content=b"{}", headers=KSERVE_HEADERS).status_code == 401


def test_ingestion_is_off_without_a_token(tmp_path: Path) -> None:
    with app_client(tmp_path, None) as off:
        response = off.post("/v1/events/anything", content=b"{}", headers=KSERVE_HEADERS)
        assert response.status_code == 503 and "GATE_EVENTS_TOKEN" in response.text


def test_malformed_events_are_refused_naming_the_attribute(client: TestClient) -> None:
    bad = {**KSERVE_HEADERS, "ce-type": "com.example.other"}
    response = client.post(f"/v1/events/{EVENTS_TOKEN}", content=b"{}", headers=bad)
    assert response.status_code == 400 and "ce-type" in response.text
    mixed = json.loads(batch(2))
    mixed[1]["inferenceservicename"] = "a/b"
    response = client.post(
        f"/v1/events/{EVENTS_TOKEN}",
        content=json.dumps(mixed).encode(),
        headers={"content-type": BATCH_CONTENT_TYPE},
    )
    assert response.status_code == 400 and "[1].inferenceservicename" in response.text
    assert client.app.state.controller.payloads.payload_count() == 0  # type: ignore[attr-defined]


def test_bodies_are_bounded(client: TestClient) -> None:
    response = client.post(
        f"/v1/events/{EVENTS_TOKEN}",
        content=b"x" * (MAX_POST_BYTES + 1),
        headers={**KSERVE_HEADERS, "ce-type": REQUEST_TYPE},
    )
    assert response.status_code == 413


def test_feedback_takes_labels_with_the_api_token(client: TestClient) -> None:
    body = {"model": "iris", "labels": [{"id": "r-1", "label": 1}, {"id": "r-2", "label": "x"}]}
    assert client.post("/v1/feedback", json=body).status_code == 401
    events = {"authorization": f"Bearer {EVENTS_TOKEN}"}
    assert client.post("/v1/feedback", json=body, headers=events).status_code == 401
    auth = {"authorization": f"Bearer {API_TOKEN}"}
    response = client.post("/v1/feedback", json=body, headers=auth)
    assert response.status_code == 200 and response.json() == {"accepted": 2, "unknown": 2}
    again = client.post("/v1/feedback", json=body, headers=auth)
    assert again.json() == {"accepted": 2, "unknown": 2}  # idempotent
    labels_only = {"authorization": f"Bearer {FEEDBACK_TOKEN}"}
    assert client.post("/v1/feedback", json=body, headers=labels_only).status_code == 200
    steer = client.post("/v1/rollouts/abc/pause", headers=labels_only)
    assert steer.status_code == 401  # the feedback token steers nothing


@pytest.mark.parametrize(
    ("labels", "where"),
    [
        ([], ["body", "labels"]),
        ([{"id": "a b", "label": 1}], ["body", "labels", 0, "id"]),
        ([{"id": "a", "label": True}], ["body", "labels", 0, "label"]),
        ([{"id": "a", "label": 1.5}], ["body", "labels", 0, "label"]),
        ([{"id": "a", "label": []}], ["body", "labels", 0, "label"]),
        ([{"id": "a"}], ["body", "labels", 0, "label"]),
        ([{"id": "a", "label": 1, "extra": 2}], ["body", "labels", 0, "extra"]),
        ([{"id": "a", "label": 1}] * 1001, ["body", "labels"]),
    ],
)
def test_malformed_feedback_names_the_field(
    client: TestClient, labels: list[object], where: list[object]
) -> None:
    response = client.post(
        "/v1/feedback",
        json={"model": "iris", "labels": labels},
        headers={"authorization": f"Bearer {API_TOKEN}"},
    )
    assert response.status_code == 422
    assert any(issue["loc"][: len(where)] == where for issue in response.json()["detail"])


def test_feedback_reads_integral_numbers_as_class_ids(client: TestClient) -> None:
    body = {"model": "iris", "labels": [{"id": "f", "label": 2.0}, {"id": "g", "label": [1.0, 0]}]}
    response = client.post(
        "/v1/feedback", json=body, headers={"authorization": f"Bearer {API_TOKEN}"}
    )
    assert response.status_code == 200, response.text
    unreadable = client.post(
        "/v1/feedback",
        content=b"\x11\xff\xfe",
        headers={"authorization": f"Bearer {API_TOKEN}", "content-type": "application/json"},
    )
    assert unreadable.status_code in (400, 422)
