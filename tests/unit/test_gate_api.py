"""The gate's HTTP API in-process: auth, validation, status codes, OpenAPI."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gate.api import create_app
from gate.settings import GateSettings
from tests.gate_fakes import FakeBackend, FakeProvider

TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def body(version: str = "2", **changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "model": "iris",
        "candidate": {
            "version": version,
            "artifact_uri": "/registry/iris/2",
            "offline_metrics": {"accuracy": 0.97},
        },
        "analysis": {"steps": [20, 100], "step_interval_s": 5},
    }
    document.update(changes)
    return document


def settings(tmp_path: Path, **changes: Any) -> GateSettings:
    return GateSettings(
        api_token=TOKEN, db_path=tmp_path / "gate.db", tick_interval_s=1000, **changes
    )


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    app = create_app(settings(tmp_path), backend=FakeBackend(), provider=FakeProvider())
    with TestClient(app) as test_client:
        yield test_client


def test_openapi_schema_describes_the_api(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert {
        "/v1/rollouts",
        "/v1/rollouts/{rollout_id}",
        "/v1/rollouts/{rollout_id}/pause",
        "/v1/rollouts/{rollout_id}/resume",
        "/v1/rollouts/{rollout_id}/promote",
        "/v1/rollouts/{rollout_id}/abort",
        "/healthz",
        "/readyz",
    } <= set(schema["paths"])
    assert {"RolloutCreate", "RolloutPublic", "RolloutDetail", "AnalysisOverrides"} <= set(
        schema["components"]["schemas"]
    )


def test_mutations_need_the_token(client: TestClient) -> None:
    assert client.post("/v1/rollouts", json=body()).status_code == 401
    wrong = client.post("/v1/rollouts", json=body(), headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert wrong.headers["www-authenticate"] == "Bearer"
    assert client.post("/v1/rollouts/x/abort").status_code == 401
    assert client.get("/v1/rollouts").status_code == 200  # reads are open


@pytest.mark.parametrize(
    ("document", "where"),
    [
        ({"model": "iris"}, "candidate"),
        (body(version="v2"), "version"),
        (body(candidate={"version": "2", "artifact_uri": "/x", "offline_metrics": {}}), "accuracy"),
        (body(surprise=True), "surprise"),
        (body(analysis={"steps": [50, 10]}), "steps must increase"),
        (body(model="Iris Model"), "model"),
    ],
)
def test_malformed_bodies_get_422_with_a_reason(
    client: TestClient, document: dict[str, Any], where: str
) -> None:
    response = client.post("/v1/rollouts", json=document, headers=AUTH)
    assert response.status_code == 422
    assert where in response.text


def test_invalid_json_is_422(client: TestClient) -> None:
    response = client.post(
        "/v1/rollouts", content=b"{nope", headers={**AUTH, "content-type": "application/json"}
    )
    assert response.status_code == 422


def test_create_list_get_and_conflict(client: TestClient) -> None:
    created = client.post("/v1/rollouts", json=body(), headers=AUTH)
    assert created.status_code == 201
    rollout = created.json()
    assert (rollout["phase"], rollout["steps"], rollout["canary_weight"]) == (
        "validating",
        [20, 100],
        0,
    )
    again = client.post("/v1/rollouts", json=body(version="3"), headers=AUTH)
    assert again.status_code == 409
    assert "already has an active rollout" in again.json()["detail"]
    listed = client.get("/v1/rollouts").json()
    assert [r["id"] for r in listed] == [rollout["id"]]
    detail = client.get(f"/v1/rollouts/{rollout['id']}").json()
    assert detail["analysis"]["steps"] == [20, 100]
    assert [d["action"] for d in detail["decisions"]] == ["create"]


def test_unknown_ids_are_404(client: TestClient) -> None:
    assert client.get("/v1/rollouts/nope").status_code == 404
    for name in ("pause", "resume", "promote", "abort"):
        assert client.post(f"/v1/rollouts/nope/{name}", headers=AUTH).status_code == 404


def test_commands_and_their_conflicts(client: TestClient) -> None:
    rollout = client.post("/v1/rollouts", json=body(), headers=AUTH).json()["id"]
    assert client.post(f"/v1/rollouts/{rollout}/resume", headers=AUTH).status_code == 409
    assert client.post(f"/v1/rollouts/{rollout}/promote", headers=AUTH).status_code == 409
    paused = client.post(f"/v1/rollouts/{rollout}/pause", headers=AUTH)
    assert paused.status_code == 200 and paused.json()["paused"] is True
    assert client.post(f"/v1/rollouts/{rollout}/resume", headers=AUTH).json()["paused"] is False
    aborted = client.post(f"/v1/rollouts/{rollout}/abort", headers=AUTH).json()
    assert aborted["phase"] == "aborted"
    assert client.post(f"/v1/rollouts/{rollout}/abort", headers=AUTH).status_code == 409
    actions = [d["action"] for d in client.get(f"/v1/rollouts/{rollout}").json()["decisions"]]
    assert actions == ["create", "pause", "resume", "rollback", "aborted"]


def test_health_readiness_and_metrics(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 503 and "no stable version" in ready.json()["reason"]
    client.post("/v1/rollouts", json=body(), headers=AUTH)
    text = client.get("/metrics").text
    assert 'irisgate_gate_decisions_total{action="create",model="iris",outcome="none"} 1.0' in text
    assert "irisgate_gate_rollout_phase" in text


def test_unknown_backend_or_provider_fails_fast(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown traffic backend 'locl'"):
        create_app(settings(tmp_path, traffic_backend="locl"))
    with pytest.raises(ValueError, match="unknown metrics provider 'prometeus'"):
        create_app(settings(tmp_path, metrics_provider="prometeus"))
    with pytest.raises(ValueError, match="needs GATE_PROMETHEUS_URL"):
        create_app(settings(tmp_path, metrics_provider="prometheus"))
