"""The kserve traffic backend against a stand-in API server that enforces KServe's schema."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from kubernetes import client

from gate.controller import RolloutController
from gate.core.spec import AnalysisSpec, Candidate, Phase
from gate.store import SQLiteStore, Stable
from gate.traffic.base import TrafficError
from gate.traffic.kserve import KServeTrafficBackend
from tests.gate_fakes import FakeClock, FakeProvider, candidate_transport, write_holdout
from tests.kserve_standin import StandIn, crd_path, inference_service

pytestmark = pytest.mark.integration
SERVICES = ["iris-rest", "iris-grpc"]
DIGEST = "sha256:" + "ab" * 32


@pytest.fixture
def standin() -> Iterator[StandIn]:
    path = crd_path()
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("KServe CRD schema missing (../shared/schemas or IRISGATE_KSERVE_CRD)")
        pytest.skip("KServe CRD schema not found; set IRISGATE_KSERVE_CRD")
    server = StandIn(path, latest_url="http://iris-rest-latest.models.example")
    for name in SERVICES:
        server.add(inference_service(name, "gs://models/iris/1", "1"))
    server.serve()
    yield server
    server.stop()


def backend_for(standin: StandIn, store: SQLiteStore) -> KServeTrafficBackend:
    api = client.CustomObjectsApi(client.ApiClient(client.Configuration(host=standin.url)))
    return KServeTrafficBackend(api, "models", {"iris": SERVICES}, store)


def kserve_rollout(
    standin: StandIn, tmp_path: Path, spec: AnalysisSpec
) -> tuple[SQLiteStore, RolloutController, str, Callable[[float], Phase]]:
    """v1 serving on both services, recorded as stable; a rollout of v2 created."""
    store = SQLiteStore(tmp_path / "gate.db")
    backend = backend_for(standin, store)
    asyncio.run(backend.ensure_stable("iris"))
    assert store.stable("iris") == Stable(
        model="iris", version="1", artifact_uri="gs://models/iris/1"
    )
    clock = FakeClock()
    holdout = write_holdout(tmp_path / "holdout")
    controller = RolloutController(
        store,
        backend,
        backend,
        FakeProvider(),
        spec,
        clock=clock,
        http=httpx.AsyncClient(transport=candidate_transport()),
    )
    state = controller.create(
        "iris",
        Candidate(
            version="2",
            artifact_uri="gs://models/iris/2",
            offline_metrics={"accuracy": 0.97},
            holdout_uri=str(holdout / "holdout.csv"),
            digest=DIGEST,
        ),
    )

    def tick(advance: float = 0) -> Phase:
        clock.advance(advance)
        return asyncio.run(controller.tick(state.id)).phase

    return store, controller, state.id, tick


def test_rollout_drives_every_service_in_lock_step(standin: StandIn, tmp_path: Path) -> None:
    spec = AnalysisSpec(steps=[10, 50, 100], step_interval_s=30, shadow_s=0)
    store, controller, rollout, tick = kserve_rollout(standin, tmp_path, spec)

    assert tick(0) is Phase.VALIDATING  # candidate revision requested, not waited for
    assert tick(0) is Phase.PROGRESSING
    for name in SERVICES:
        predictor = standin.objects[name]["spec"]["predictor"]
        assert predictor["canaryTrafficPercent"] == 10
        assert predictor["containers"][0]["env"] == [
            {"name": "STORAGE_URI", "value": "gs://models/iris/2"},
            {"name": "PREDICTOR_MODEL_DIGEST", "value": DIGEST},  # pinned: nothing else loads
        ]
        traffic = standin.objects[name]["status"]["components"]["predictor"]["traffic"]
        assert [(t["latestRevision"], t["percent"]) for t in traffic] == [(True, 10), (False, 90)]
    assert controller.get(rollout).backend_state["latest_urls"]["iris-rest"] == (
        "http://iris-rest-latest.models.example"
    )
    tick(31)
    tick(31)
    assert tick(31) is Phase.SUCCEEDED
    for name in SERVICES:
        service = standin.objects[name]
        assert "canaryTrafficPercent" not in service["spec"]["predictor"]
        assert service["metadata"]["annotations"]["irisgate.io/model-version"] == "2"
        assert service["status"]["components"]["predictor"]["traffic"][0]["percent"] == 100
    assert store.stable("iris") == Stable(
        model="iris", version="2", artifact_uri="gs://models/iris/2", digest=DIGEST
    )
    weights = [
        p["spec"]["predictor"].get("canaryTrafficPercent", "absent")
        for name, p in standin.patches
        if name == "iris-grpc" and "spec" in p
    ]
    assert weights == [0, 10, 50, 100, None]  # null removes the field: promotion
    assert standin.rejected == []


def test_a_watched_promotion_is_undone_by_pinning_the_previous_revision(
    standin: StandIn, tmp_path: Path
) -> None:
    """Aborted during its watch, a promoted rollout goes back to v1 the way KServe's
    canary guide does it ("rollback and pin the previous model"), schema-checked."""
    spec = AnalysisSpec(steps=[100], step_interval_s=30, shadow_s=0, watch_s=600)
    store, controller, rollout, tick = kserve_rollout(standin, tmp_path, spec)
    for _ in range(4):
        if tick(31) is Phase.WATCHING:
            break
    assert controller.get(rollout).phase is Phase.WATCHING
    assert store.stable("iris").version == "2"  # type: ignore[union-attr]
    asyncio.run(controller.command(rollout, "abort"))
    assert controller.get(rollout).phase is Phase.ABORTED
    for name in SERVICES:
        service = standin.objects[name]
        assert service["spec"]["predictor"]["canaryTrafficPercent"] == 0
        assert service["metadata"]["annotations"]["irisgate.io/model-version"] == "1"
    assert store.stable("iris") == Stable(
        model="iris", version="1", artifact_uri="gs://models/iris/1"
    )
    assert standin.rejected == []


def test_services_that_disagree_are_reconciled(standin: StandIn, tmp_path: Path) -> None:
    from tests.unit.test_gate_decide import state as rollout_state

    backend = backend_for(standin, SQLiteStore(tmp_path / "gate.db"))
    rollout = rollout_state()
    rollout = rollout.model_copy(update={"backend_state": backend.plan_candidate(rollout)})
    asyncio.run(backend.start_candidate(rollout))
    assert asyncio.run(backend.get_weight(rollout)) == 0
    asyncio.run(backend._patch("iris-grpc", {"spec": {"predictor": {"canaryTrafficPercent": 30}}}))
    assert asyncio.run(backend.get_weight(rollout)) == -1  # the controller converges them
    asyncio.run(backend.set_weight(rollout, 30))
    assert asyncio.run(backend.get_weight(rollout)) == 30


@pytest.mark.parametrize(
    ("patch", "error"),
    [
        ({"spec": {"predictor": {"canaryTrafficPercent": "fifty"}}}, "canaryTrafficPercent"),
        ({"spec": {"predictor": {"canaryTrafficPrecent": 50}}}, "canaryTrafficPrecent"),
        ({"spec": {"predictor": {"minReplicas": "two"}}}, "minReplicas"),
    ],
)
def test_the_stand_in_refuses_what_kserve_would(
    standin: StandIn, tmp_path: Path, patch: dict[str, object], error: str
) -> None:
    backend = backend_for(standin, SQLiteStore(tmp_path / "gate.db"))
    with pytest.raises(TrafficError) as caught:
        asyncio.run(backend._patch("iris-rest", patch))
    assert "422" in str(caught.value) and error in str(caught.value)
    assert standin.objects["iris-rest"]["spec"]["predictor"].get("canaryTrafficPercent") is None


def test_missing_service_is_a_clear_error(standin: StandIn, tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "gate.db")
    api = client.CustomObjectsApi(client.ApiClient(client.Configuration(host=standin.url)))
    backend = KServeTrafficBackend(api, "models", {"iris": ["iris-missing"]}, store)
    with pytest.raises(TrafficError, match="cannot read InferenceService models/iris-missing: 404"):
        asyncio.run(backend.ensure_stable("iris"))


def test_the_stable_rest_service_gets_kserves_payload_logger(
    standin: StandIn, tmp_path: Path
) -> None:
    """``spec.predictor.logger`` on the REST service (the stand-in validates it with the
    CRD's schema), pointed at the gate's events endpoint with its key; set once, and never
    while a rollout moves traffic."""
    store = SQLiteStore(tmp_path / "gate.db")
    api = client.CustomObjectsApi(client.ApiClient(client.Configuration(host=standin.url)))
    url = "http://irisgate-gate.irisgate.svc.cluster.local:8090/v1/events/events-key-0123456789"
    backend = KServeTrafficBackend(api, "models", {"iris": SERVICES}, store, logger_url=url)
    asyncio.run(backend.ensure_stable("iris"))
    rest = standin.objects["iris-rest"]["spec"]["predictor"]
    assert rest["logger"] == {"mode": "all", "url": url}
    assert "logger" not in standin.objects["iris-grpc"]["spec"]["predictor"]  # not logged
    patches = len(standin.patches)
    asyncio.run(backend.ensure_stable("iris"))
    assert len(standin.patches) == patches  # already set: no new revision
    standin.objects["iris-rest"]["spec"]["predictor"]["canaryTrafficPercent"] = 10
    moved = KServeTrafficBackend(api, "models", {"iris": SERVICES}, store, logger_url=url + "x")
    asyncio.run(moved.ensure_stable("iris"))
    assert len(standin.patches) == patches  # a rollout is under way: left alone
    assert standin.rejected == []
