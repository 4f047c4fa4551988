"""The gate's HTTP API in-process: auth, validation, confinement, status codes, OpenAPI."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from pydantic import ValidationError

from gate.app import create_app
from gate.core.spec import AnalysisSpec
from gate.core.state import RolloutState
from gate.schemas import RolloutCreate, RolloutPublic
from gate.settings import GateSettings
from tests.gate_fakes import FakeBackend, FakeProvider, write_holdout

TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
OUTSIDE = "/registry/iris/2"  # where a candidate's artifact is not: no such registry


def body(version: str = "2", artifact: str | Path = OUTSIDE, **changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "model": "iris",
        "candidate": {
            "version": version,
            "artifact_uri": str(artifact),
            "offline_metrics": {"accuracy": 0.97},
        },
        "analysis": {"steps": [20, 100], "step_interval_s": 5},
    }
    document.update(changes)
    return document


def with_candidate(artifact: Path, **changes: Any) -> dict[str, Any]:
    document = body(artifact=artifact)
    document["candidate"].update(changes)
    return document


def with_analysis(artifact: Path, **changes: Any) -> dict[str, Any]:
    document = body(artifact=artifact)
    document["analysis"].update(changes)
    return document


def settings(tmp_path: Path, **changes: Any) -> GateSettings:
    return GateSettings(
        api_token=TOKEN,
        db_path=tmp_path / "gate.db",
        tick_interval_s=1000,
        registry_dir=tmp_path / "registry",
        **changes,
    )


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    """Version 2 of iris in the gate's registry; version 3 beside it."""
    write_holdout(tmp_path / "registry" / "iris" / "3")
    return write_holdout(tmp_path / "registry" / "iris" / "2")


@pytest.fixture
def client(tmp_path: Path, artifact: Path) -> Iterator[TestClient]:
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


def test_openapi_schema_says_what_is_required_and_bounded(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    components = schema["components"]["schemas"]
    candidate = components.get("Candidate-Input", components.get("Candidate"))
    assert candidate["required"] == ["version", "artifact_uri", "offline_metrics"]
    fields = candidate["properties"]
    assert fields["version"]["maxLength"] == 18
    assert fields["artifact_uri"]["maxLength"] == 2048
    metrics = fields["offline_metrics"]
    assert metrics["required"] == ["accuracy"] and metrics["maxProperties"] == 64
    assert metrics["properties"]["accuracy"] == {"type": "number", "minimum": 0, "maximum": 1}
    assert metrics["propertyNames"]["pattern"] == "^[A-Za-z0-9_.-]+$"
    overrides = components["AnalysisOverrides"]["properties"]
    interval = overrides["step_interval_s"]["anyOf"][0]
    assert (interval["exclusiveMinimum"], interval["maximum"]) == (0, 86_400)
    assert overrides["steps"]["anyOf"][0]["maxItems"] == 100
    assert overrides["confidence"]["anyOf"][0]["maximum"] == 0.9999
    assert overrides["failure_limit"]["anyOf"][0]["maximum"] == 1000
    # AnalysisOverrides mirrors every bound of AnalysisSpec
    spec = components.get("AnalysisSpec-Input", components.get("AnalysisSpec"))
    for name, bounds in spec["properties"].items():
        bounds = {k: v for k, v in bounds.items() if k not in ("default", "title", "description")}
        assert overrides[name]["anyOf"][0] == bounds, name


def test_openapi_schema_lists_every_status(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    statuses = {
        (method.upper(), path): set(operation["responses"])
        for path, methods in paths.items()
        for method, operation in methods.items()
    }
    assert statuses[("POST", "/v1/rollouts")] == {"201", "400", "401", "409", "413", "422"}
    assert statuses[("GET", "/v1/rollouts")] == {"200", "422"}
    assert statuses[("GET", "/v1/rollouts/{rollout_id}")] == {"200", "404", "422"}
    for command in ("pause", "resume", "promote", "abort"):
        path = f"/v1/rollouts/{{rollout_id}}/{command}"
        assert statuses[("POST", path)] == {"200", "401", "404", "409", "422"}
    approve = ("POST", "/v1/rollouts/{rollout_id}/approve")
    assert statuses[approve] == {"200", "400", "401", "404", "409", "413", "422"}
    refused = paths["/v1/rollouts"]["post"]["responses"]["422"]["content"]["application/json"]
    assert len(refused["schema"]["anyOf"]) == 2  # a validation list, or one refusal message
    (active,) = paths["/v1/rollouts"]["get"]["parameters"]
    assert (active["name"], active["required"], active["schema"]["type"]) == (
        "active",
        False,
        "boolean",
    )
    rollout_id = paths["/v1/rollouts/{rollout_id}"]["get"]["parameters"][0]["schema"]
    assert rollout_id["maxLength"] == 64 and rollout_id["pattern"]
    assert "text/plain" in paths["/metrics"]["get"]["responses"]["200"]["content"]


def test_mutations_need_the_token(client: TestClient, artifact: Path) -> None:
    assert client.post("/v1/rollouts", json=body(artifact=artifact)).status_code == 401
    wrong = client.post(
        "/v1/rollouts", json=body(artifact=artifact), headers={"Authorization": "Bearer nope"}
    )
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
        (body(analysis={"steps": []}), "steps"),
        (body(analysis={"steps": [*range(1, 101), 100]}), "steps"),
        (body(analysis={"step_weight": 50, "max_weight": 20}), "must not exceed max_weight"),
        (body(analysis={"max_weight": 5}), "must not exceed max_weight"),
        (body(analysis={"steps": [10, 100], "step_weight": 10}), "not both"),
        (body(analysis={"confidence": 1.0}), "confidence"),
        (body(analysis={"error_rate_margin": "0.5"}), "error_rate_margin"),  # not a number
        (body(analysis={"min_requests": 50}), "min_requests"),  # gone: the tests decide
        (body(analysis={"failure_limit": True}), "failure_limit"),
        (body(analysis={"failure_limit": 1001}), "failure_limit"),
        (body(analysis={"max_p99_ms": 3_600_001}), "max_p99_ms"),
        (body(analysis={"latency_margin": 0}), "latency_margin"),
        (body(analysis={"class_shift_margin": 1.5}), "class_shift_margin"),
        (body(model="Iris Model"), "model"),
        (body(model="a" * 64), "model"),
    ],
)
def test_malformed_bodies_get_422_with_a_reason(
    client: TestClient, document: dict[str, Any], where: str
) -> None:
    response = client.post("/v1/rollouts", json=document, headers=AUTH)
    assert response.status_code == 422
    assert where in response.text
    assert client.get("/v1/rollouts").status_code == 200


def test_invalid_json_is_422_and_unreadable_bytes_400(client: TestClient) -> None:
    response = client.post(
        "/v1/rollouts", content=b"{nope", headers={**AUTH, "content-type": "application/json"}
    )
    assert response.status_code == 422
    response = client.post(
        "/v1/rollouts", content=b"s\xff\xfe{", headers={**AUTH, "content-type": "application/json"}
    )
    assert response.status_code == 400 and isinstance(response.json()["detail"], str)


def test_a_405_names_every_method_of_the_path(client: TestClient) -> None:
    for method in ("OPTIONS", "DELETE", "PUT"):
        response = client.request(method, "/v1/rollouts")
        assert (response.status_code, response.headers["allow"]) == (405, "GET, POST")
    assert client.request("DELETE", "/v1/rollouts/abc").headers["allow"] == "GET"
    assert client.get("/v1/rollouts/abc/pause").headers["allow"] == "POST"


def test_create_list_get_and_conflict(client: TestClient, artifact: Path) -> None:
    created = client.post("/v1/rollouts", json=body(artifact=artifact), headers=AUTH)
    assert created.status_code == 201, created.text
    rollout = created.json()
    assert (rollout["phase"], rollout["steps"], rollout["canary_weight"]) == (
        "validating",
        [20, 100],
        0,
    )
    third = artifact.parent / "3"
    again = client.post("/v1/rollouts", json=body(version="3", artifact=third), headers=AUTH)
    assert again.status_code == 409
    assert again.json()["detail"].startswith("model iris already has an active rollout")
    listed = client.get("/v1/rollouts").json()
    assert [r["id"] for r in listed] == [rollout["id"]]
    assert [r["id"] for r in client.get("/v1/rollouts?active=true").json()] == [rollout["id"]]
    detail = client.get(f"/v1/rollouts/{rollout['id']}").json()
    assert detail["analysis"]["steps"] == [20, 100]
    assert [d["action"] for d in detail["decisions"]] == ["create"]


def test_the_artifacts_own_holdout_and_weight_overrides_are_accepted(
    client: TestClient, artifact: Path
) -> None:
    document = with_candidate(artifact, holdout_uri=str(artifact / "holdout.csv"))
    document["analysis"] = {"step_weight": 30, "max_weight": 90}
    created = client.post("/v1/rollouts", json=document, headers=AUTH)
    assert created.status_code == 201, created.text
    assert created.json()["steps"] == [30, 60, 90]


def test_unknown_ids_are_404_and_junk_ids_422(client: TestClient) -> None:
    missing = client.get("/v1/rollouts/nope")
    assert missing.status_code == 404 and missing.json() == {"detail": "no rollout nope"}
    for name in ("pause", "resume", "promote", "abort"):
        assert client.post(f"/v1/rollouts/nope/{name}", headers=AUTH).status_code == 404
    for junk in ("a" * 65, "a%20b", "%C3%A9t%C3%A9", "a.b"):
        assert client.get(f"/v1/rollouts/{junk}").status_code == 422, junk
        assert client.post(f"/v1/rollouts/{junk}/abort", headers=AUTH).status_code == 422
    assert client.get("/v1/rollouts?active=maybe").status_code == 422


def test_commands_and_their_conflicts(client: TestClient, artifact: Path) -> None:
    rollout = client.post("/v1/rollouts", json=body(artifact=artifact), headers=AUTH).json()["id"]
    resume = client.post(f"/v1/rollouts/{rollout}/resume", headers=AUTH)
    assert resume.status_code == 409 and "not paused" in resume.json()["detail"]
    assert client.post(f"/v1/rollouts/{rollout}/promote", headers=AUTH).status_code == 409
    paused = client.post(f"/v1/rollouts/{rollout}/pause", headers=AUTH)
    assert paused.status_code == 200 and paused.json()["paused"] is True
    assert client.post(f"/v1/rollouts/{rollout}/resume", headers=AUTH).json()["paused"] is False
    aborted = client.post(f"/v1/rollouts/{rollout}/abort", headers=AUTH).json()
    assert aborted["phase"] == "aborted"
    assert client.post(f"/v1/rollouts/{rollout}/abort", headers=AUTH).status_code == 409
    actions = [d["action"] for d in client.get(f"/v1/rollouts/{rollout}").json()["decisions"]]
    assert actions == ["create", "pause", "resume", "rollback", "aborted"]


def test_approval_promotion_by_step_and_hook_urls(tmp_path: Path, artifact: Path) -> None:
    """``approve`` answers the rollout's own approval hook (409 when there is none or
    nothing waits), ``promote`` is one step unless ``full``, and a hook URL the operator
    did not allow is refused with the field named."""
    allowed = settings(tmp_path, hook_allowed_prefixes=["http://qa.test/gate/"])
    app = create_app(allowed, backend=FakeBackend(), provider=FakeProvider())
    with TestClient(app) as client:
        hooks = [{"name": "qa", "type": "confirm-promotion", "url": "approval"}]
        refused = with_analysis(
            artifact, hooks=[*hooks, {"name": "x", "type": "rollout", "url": "http://evil.test/"}]
        )
        answer = client.post("/v1/rollouts", json=refused, headers=AUTH)
        assert answer.status_code == 422
        assert answer.json()["detail"].startswith("analysis.hooks.1.url: must be 'approval'")
        remote = {"name": "check", "type": "rollback", "url": "http://qa.test/gate/check"}
        created = client.post(
            "/v1/rollouts", json=with_analysis(artifact, hooks=[*hooks, remote]), headers=AUTH
        )
        assert created.status_code == 201, created.text
        rollout = created.json()["id"]
        url = f"/v1/rollouts/{rollout}/approve"
        assert client.post(url).status_code == 401
        assert client.post("/v1/rollouts/nope/approve", headers=AUTH).status_code == 404
        nothing = client.post(url, headers=AUTH)
        assert nothing.status_code == 409 and "waits for no approval" in nothing.json()["detail"]
        wrong = client.post(url, json={"type": "confirm-rollout"}, headers=AUTH)
        assert wrong.status_code == 409 and "no confirm-rollout hook" in wrong.json()["detail"]
        not_a_type = client.post(url, json={"type": "later"}, headers=AUTH)
        assert not_a_type.status_code == 422 and not_a_type.json()["detail"][0]["loc"] == [
            "body",
            "type",
        ]
        ahead = client.post(url, json={"type": "confirm-promotion"}, headers=AUTH)
        assert ahead.status_code == 200 and ahead.json()["approvals"] == ["confirm-promotion"]
        promote = f"/v1/rollouts/{rollout}/promote"
        assert client.post(f"{promote}?full=maybe", headers=AUTH).status_code == 422
        assert client.post(promote, headers=AUTH).status_code == 409  # still validating
        detail = client.get(f"/v1/rollouts/{rollout}").json()
        assert [d["action"] for d in detail["decisions"]] == ["create", "approve"]
        assert detail["analysis"]["hooks"][1]["url"] == "http://qa.test/gate/check"


def test_health_readiness_and_metrics(client: TestClient, artifact: Path) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 503 and "no stable version" in ready.json()["reason"]
    client.post("/v1/rollouts", json=body(artifact=artifact), headers=AUTH)
    response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'irisgate_gate_decisions_total{action="create",model="iris",outcome="none"} 1.0' in text
    assert "irisgate_gate_rollout_phase" in text


def test_unknown_backend_or_provider_fails_fast(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown traffic backend 'locl'"):
        create_app(settings(tmp_path, traffic_backend="locl"))
    with pytest.raises(ValueError, match="needs GATE_ROUTER_TOKEN"):
        create_app(settings(tmp_path))
    router_token = "router-token-0123456789"
    with pytest.raises(ValueError, match="unknown metrics provider 'prometeus'"):
        create_app(settings(tmp_path, metrics_provider="prometeus", router_token=router_token))
    with pytest.raises(ValueError, match="needs GATE_PROMETHEUS_URL"):
        create_app(settings(tmp_path, metrics_provider="prometheus", router_token=router_token))
    assert list(tmp_path.iterdir()) == []  # refused before the store made its folder


# --- what an attacker sent, each once stored as a state nobody could read back ---------------


def post_raw(client: TestClient, text: str) -> Any:
    return client.post(
        "/v1/rollouts",
        content=text.encode(),
        headers={**AUTH, "content-type": "application/json"},
    )


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"offline_metrics": None}, "offline_metrics"),
        ({"offline_metrics": {"accuracy": "NaN"}}, "accuracy"),
        ({"offline_metrics": {"accuracy": "nan"}}, "accuracy"),
        ({"offline_metrics": {"accuracy": 2.0}}, "accuracy"),
        ({"offline_metrics": {"accuracy": -0.1}}, "accuracy"),
        ({"offline_metrics": {"accuracy": 0.9, "f1": "Infinity"}}, "f1"),
        ({"offline_metrics": {"accuracy": 0.9, "bad key": 1.0}}, "offline_metrics"),
        ({"offline_metrics": {"accuracy": 0.9, **{f"m{i}": 1.0 for i in range(64)}}}, "64"),
        ({"version": "9" * 5000}, "version"),
        ({"version": "9" * 19}, "version"),
        ({"version": "12\n"}, "version"),
        ({"artifact_uri": "/" + "a" * 1_000_000}, "artifact_uri"),
        ({"artifact_uri": ""}, "artifact_uri"),
        ({"artifact_uri": "{artifact}\u0000"}, "artifact_uri"),
        ({"artifact_uri": "{artifact}\n"}, "artifact_uri"),
        ({"artifact_uri": "{artifact}\ud800"}, "artifact_uri"),
        ({"holdout_uri": "/" + "h" * 1_000_000}, "holdout_uri"),
        ({"holdout_uri": "{artifact}/holdout.csv\r\n"}, "holdout_uri"),
    ],
)
def test_candidates_that_could_not_be_stored_are_refused(
    client: TestClient, artifact: Path, change: dict[str, Any], field: str
) -> None:
    document = with_candidate(artifact)
    for key, value in change.items():
        if value is None:
            del document["candidate"][key]
        else:
            document["candidate"][key] = (
                value.format(artifact=artifact) if isinstance(value, str) else value
            )
    response = post_raw(client, json.dumps(document))  # a lone surrogate as \ud800
    assert response.status_code == 422, response.text
    assert field in response.text
    assert client.get("/v1/rollouts").status_code == 200


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ('"offline_metrics": {{"accuracy": NaN}}', "accuracy"),
        ('"offline_metrics": {{"accuracy": Infinity}}', "accuracy"),
        ('"offline_metrics": {{"accuracy": 1e999}}', "accuracy"),
    ],
)
def test_non_finite_json_tokens_are_refused(
    client: TestClient, artifact: Path, text: str, field: str
) -> None:
    raw = (
        '{{"model": "iris", "candidate": {{"version": "2", "artifact_uri": "{artifact}", '
        + text
        + "}}}}"
    ).format(artifact=artifact)
    response = post_raw(client, raw)
    assert response.status_code == 422, response.text
    assert field in response.text
    assert client.get("/v1/rollouts").status_code == 200


@pytest.mark.parametrize(
    "change",
    [
        {"step_interval_s": "Infinity"},
        {"step_interval_s": "inf"},
        {"step_interval_s": 1e308},
        {"step_interval_s": 86_400.5},
        {"step_interval_s": 0},
        {"step_interval_s": -1},
        {"step_interval_s": "5"},
    ],
)
def test_intervals_that_break_the_clock_are_refused(
    client: TestClient, artifact: Path, change: dict[str, Any]
) -> None:
    response = client.post("/v1/rollouts", json=with_analysis(artifact, **change), headers=AUTH)
    assert response.status_code == 422, response.text
    assert "step_interval_s" in response.text
    raw = json.dumps(with_analysis(artifact, step_interval_s=1.0)).replace("1.0", "Infinity")
    assert post_raw(client, raw).status_code == 422
    assert client.get("/v1/rollouts").status_code == 200


@pytest.mark.parametrize(
    ("holdout", "field"),
    [
        ("http://127.0.0.1:9/x", "candidate.holdout_uri"),
        ("/etc/passwd", "candidate.holdout_uri"),
        ("{registry}/iris/3/holdout.csv", "candidate.holdout_uri"),
    ],
)
def test_holdouts_the_client_picks_are_refused(
    client: TestClient, artifact: Path, holdout: str, field: str
) -> None:
    document = with_candidate(artifact, holdout_uri=holdout.format(registry=artifact.parent.parent))
    response = client.post("/v1/rollouts", json=document, headers=AUTH)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail.startswith(f"{field}: ")
    assert client.get("/v1/rollouts").status_code == 200
    assert client.get("/v1/rollouts").json() == []


def test_artifacts_outside_the_registry_are_refused(
    client: TestClient, artifact: Path, tmp_path: Path
) -> None:
    outside = write_holdout(tmp_path / "elsewhere" / "iris" / "2")
    link = artifact.parent / "4"
    link.symlink_to(outside, target_is_directory=True)
    for location in (
        str(outside),
        str(link),
        f"{artifact}/../../../elsewhere/iris/2",
        "/etc",
        "http://127.0.0.1:9/iris/2",
        str(artifact.parent / "9"),
    ):
        response = client.post("/v1/rollouts", json=body(artifact=location), headers=AUTH)
        assert response.status_code == 422, (location, response.text)
        assert response.json()["detail"].startswith("candidate.artifact_uri: "), location
        assert client.get("/v1/rollouts").status_code == 200
    assert client.get("/v1/rollouts").json() == []


def test_the_refusal_comes_before_the_conflict(client: TestClient, artifact: Path) -> None:
    assert client.post("/v1/rollouts", json=body(artifact=artifact), headers=AUTH).is_success
    response = client.post("/v1/rollouts", json=body(artifact="/etc"), headers=AUTH)
    assert response.status_code == 422


# --- anything the API accepts is a state the store can write and read back -----------------

NOW = datetime(2026, 1, 1, tzinfo=UTC)
# Plausible values mixed with what broke the gate before: non-finite and huge numbers,
# numbers as strings, control characters, lone surrogates, very long text.
wild_text = st.one_of(
    st.text(st.characters(exclude_categories=[]), max_size=40),
    st.text(max_size=40),
    st.sampled_from(["NaN", "Infinity", "-inf", "1e308", "12", "/a/../b", "\ud800", ""]),
)
wild_number = st.one_of(
    st.floats(),
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.booleans(),
    st.sampled_from(["NaN", "Infinity", "5", "1e308"]),
    st.floats(min_value=0, max_value=1),
)


def maybe(values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), values)


candidates = st.fixed_dictionaries(
    {
        "version": st.one_of(st.from_regex(r"\A[0-9]{1,20}\Z"), wild_text),
        "artifact_uri": st.one_of(st.just("/registry/iris/2"), wild_text),
        "offline_metrics": st.one_of(
            st.dictionaries(st.one_of(st.just("accuracy"), wild_text), wild_number, max_size=4),
            st.builds(lambda a: {"accuracy": a}, wild_number),
        ),
    },
    optional={"holdout_uri": maybe(wild_text)},
)
overrides = st.fixed_dictionaries(
    {},
    optional={
        "steps": st.lists(st.one_of(st.integers(0, 101), wild_number), max_size=5),
        "step_weight": wild_number,
        "max_weight": wild_number,
        **{
            name: wild_number
            for name in AnalysisSpec.model_fields
            if name not in ("steps", "step_weight", "max_weight")
        },
    },
)


@hypothesis_settings(
    max_examples=300,
    deadline=None,
    database=None,  # keeps nothing between runs
    suppress_health_check=[HealthCheck.too_slow],
)
@given(candidate=candidates, analysis=maybe(overrides))
def test_whatever_the_api_accepts_round_trips_through_json(
    candidate: dict[str, Any], analysis: dict[str, Any] | None
) -> None:
    try:
        request = RolloutCreate.model_validate(
            {"model": "iris", "candidate": candidate, "analysis": analysis}
        )
        spec = request.analysis.apply(AnalysisSpec()) if request.analysis else AnalysisSpec()
    except ValidationError:
        return  # refused with a 422: nothing stored
    state = RolloutState(
        id="r1",
        model=request.model,
        candidate=request.candidate,
        spec=spec,
        created_at=NOW,
        updated_at=NOW,
    ).start_window(NOW)  # what decide does with the interval: must not overflow
    stored = state.model_dump_json()
    assert RolloutState.model_validate_json(stored) == state
    RolloutPublic.of(state).model_dump_json()  # and every answer about it serialises


def test_bodies_over_the_limit_are_refused_before_they_are_parsed(tmp_path: Path) -> None:
    limit = 64 * 1024
    app = create_app(
        settings(tmp_path, max_body_bytes=limit), backend=FakeBackend(), provider=FakeProvider()
    )
    big = json.dumps(body(padding="x" * limit)).encode()
    detail = f"request body over {limit} bytes (GATE_MAX_BODY_BYTES)"

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit counts what is read
        for start in range(0, len(big), 4096):
            yield big[start : start + 4096]

    with TestClient(app) as test_client:
        for path in ("/v1/rollouts", "/v1/feedback"):
            declared = test_client.post(path, content=big, headers=AUTH)
            assert (declared.status_code, declared.json()) == (413, {"detail": detail})
            streamed = test_client.post(path, content=chunks(), headers=AUTH)
            assert (streamed.status_code, streamed.json()) == (413, {"detail": detail})
        assert test_client.get("/v1/rollouts").json() == []  # nothing was created
        small = test_client.post("/v1/rollouts", json=body(), headers=AUTH)
        assert small.status_code == 422  # under the limit: read and judged as before
    assert app.openapi()["paths"]["/v1/feedback"]["post"]["responses"]["413"]
