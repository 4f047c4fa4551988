"""The app factory's own duties: readiness that tells the truth about the controller loop,
quarantined rows that never break a listing, fail-fast wiring."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gate.app import create_app
from gate.controller import RolloutController
from gate.settings import GateSettings
from gate.wiring import make_traffic
from tests.gate_fakes import FakeBackend, FakeProvider

TOKEN = "test-token-0123456789"


def settings(tmp_path: Path, **changes: object) -> GateSettings:
    values: dict[str, object] = {
        "api_token": TOKEN,
        "db_path": tmp_path / "gate.db",
        "tick_interval_s": 0.05,
        **changes,
    }
    return GateSettings.model_validate(values)


def test_readyz_goes_unready_when_the_controller_loop_stops_ticking(tmp_path: Path) -> None:
    app = create_app(settings(tmp_path), backend=FakeBackend(), provider=FakeProvider())
    with TestClient(app) as client:
        app.state.not_ready = ""  # as if the stable serves
        deadline = time.monotonic() + 5
        while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.get("/readyz").json() == {"status": "ready"}
        controller: RolloutController = app.state.controller
        healthy_rollouts = controller.store.rollouts

        def broken(active_only: bool = False) -> list[object]:
            raise OSError("disk I/O error")

        controller.store.rollouts = broken  # type: ignore[assignment,method-assign]
        controller.last_loop = time.monotonic() - 3600  # its last good pass, long ago
        time.sleep(0.2)  # passes fail meanwhile and do not count
        response = client.get("/readyz")
        assert response.status_code == 503
        assert "controller loop has not completed a pass in 10 s" in response.json()["reason"]
        controller.store.rollouts = healthy_rollouts  # type: ignore[method-assign]
        deadline = time.monotonic() + 5
        while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.get("/readyz").status_code == 200


def test_readyz_names_a_stable_that_does_not_serve(tmp_path: Path) -> None:
    backend = FakeBackend()
    backend.unreachable = True
    app = create_app(settings(tmp_path), backend=backend, provider=FakeProvider())
    with TestClient(app) as client:
        response = client.get("/readyz")
        assert response.status_code == 503
        assert response.json()["reason"]


def test_the_local_backend_needs_the_router_token(tmp_path: Path) -> None:
    from gate.store import SQLiteStore

    store = SQLiteStore(tmp_path / "g.db")
    with pytest.raises(ValueError, match="GATE_ROUTER_TOKEN"):
        make_traffic(settings(tmp_path), store)
    router, deployer = make_traffic(
        settings(tmp_path, router_token="router-token-0123456789"), store
    )
    assert type(router).__name__ == "LocalRouter" and type(deployer).__name__ == "LocalDeployer"


def test_a_quarantined_rollout_is_listed_with_its_reason_and_breaks_nothing(
    tmp_path: Path,
) -> None:
    from gate.core.spec import AnalysisSpec, Candidate
    from gate.core.state import RolloutState
    from gate.store import SQLiteStore

    store = SQLiteStore(tmp_path / "gate.db")
    now = datetime(2026, 1, 1, tzinfo=UTC)
    for rollout_id, model in (("good", "iris"), ("bad", "other")):
        store.create(
            RolloutState(
                id=rollout_id,
                model=model,
                spec=AnalysisSpec(),
                candidate=Candidate(
                    version="2", artifact_uri="/m", offline_metrics={"accuracy": 1}
                ),
                created_at=now,
                updated_at=now,
            )
        )
    store._db.execute("UPDATE rollouts SET state = '{\"id\": \"bad\"}' WHERE id = 'bad'")
    store.close()
    app = create_app(settings(tmp_path), backend=FakeBackend(), provider=FakeProvider())
    with TestClient(app) as client:
        assert [r["id"] for r in client.get("/v1/rollouts").json()] == ["good"]
        assert client.get("/v1/rollouts/bad").status_code == 404
        [entry] = client.get("/v1/quarantine").json()
        assert (entry["rollout_id"], entry["model"]) == ("bad", "other")
        assert "candidate: Field required" in entry["reason"]


def test_local_predictors_name_their_one_process_port_unless_told_to_run_more(
    tmp_path: Path,
) -> None:
    """The local deployer runs one process per predictor, so its gRPC port is that
    process's own and the router may share connections to it; a candidate the operator's
    flags give more processes is named by its shared port only."""
    from gate.local.deployer import LocalDeployer, LocalSettings
    from gate.store import SQLiteStore

    async def plans(extra: tuple[str, ...]) -> list[dict[str, Any]]:
        settings = LocalSettings(run_dir=tmp_path / "run", predictor_args=extra)
        deployer = LocalDeployer(settings, SQLiteStore(tmp_path / "gate.db"))
        try:
            return [deployer._plan("iris", "1", "/m", role) for role in ("stable", "canary")]
        finally:
            await deployer.aclose()

    for endpoint in asyncio.run(plans(())):
        assert endpoint["grpc_processes"] == [endpoint["grpc"]]
    for flags in (("--workers", "2"), ("--workers=auto",)):
        stable, canary = asyncio.run(plans(flags))
        assert stable["grpc_processes"] == [stable["grpc"]]  # a stable gets no operator flags
        assert canary["grpc_processes"] == []
