"""The gate's HTTP API: an app factory, one router for rollouts, health and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Response, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from pydantic import ValidationError

from gate.controller import RolloutController, RolloutNotFound
from gate.decide import CommandError
from gate.metrics import MetricsProvider, make_provider
from gate.notify import WebhookNotifier
from gate.observability import GateMetrics
from gate.schemas import DecisionPublic, ErrorPublic, RolloutCreate, RolloutDetail, RolloutPublic
from gate.settings import GateSettings
from gate.store import ActiveRolloutExists, SQLiteStore, Stable
from gate.traffic import TrafficBackend, TrafficError, make_backend

logger = logging.getLogger(__name__)
bearer = HTTPBearer(auto_error=False, description="GATE_API_TOKEN")


def get_controller(request: Request) -> RolloutController:
    controller: RolloutController = request.app.state.controller
    return controller


ControllerDep = Annotated[RolloutController, Depends(get_controller)]


def require_token(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> None:
    expected: str = request.app.state.settings.api_token.get_secret_value()
    if credentials is None or not hmac.compare_digest(
        credentials.credentials.encode(), expected.encode()
    ):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing or wrong bearer token",
            headers={"WWW-Authenticate": "Bearer"},
        )


TokenDep = Depends(require_token)
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorPublic},
    404: {"model": ErrorPublic},
    409: {"model": ErrorPublic},
}

rollouts = APIRouter(prefix="/v1/rollouts", tags=["rollouts"], responses=ERRORS)


@rollouts.post("", status_code=status.HTTP_201_CREATED, dependencies=[TokenDep])
def create_rollout(body: RolloutCreate, controller: ControllerDep) -> RolloutPublic:
    """Start a rollout: accuracy gate, then canary steps. One active rollout per model."""
    try:
        state = controller.create(body.model, body.candidate, body.analysis)
    except ActiveRolloutExists as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    except ValidationError as exc:  # overrides valid alone, invalid on top of the defaults
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, f"analysis.{where}: {first['msg']}"
        ) from exc
    return RolloutPublic.of(state)


@rollouts.get("")
def list_rollouts(controller: ControllerDep, active: bool = False) -> list[RolloutPublic]:
    return [RolloutPublic.of(s) for s in controller.store.rollouts(active_only=active)]


@rollouts.get("/{rollout_id}")
def get_rollout(rollout_id: str, controller: ControllerDep) -> RolloutDetail:
    """The rollout with its whole decision history and the evidence for each decision."""
    try:
        state = controller.get(rollout_id)
    except RolloutNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no rollout {rollout_id}") from exc
    decisions = [DecisionPublic.of(d) for d in controller.store.decisions(rollout_id)]
    return RolloutDetail(
        **RolloutPublic.of(state).model_dump(), analysis=state.spec, decisions=decisions
    )


async def _command(controller: RolloutController, rollout_id: str, name: str) -> RolloutPublic:
    try:
        return RolloutPublic.of(await controller.command(rollout_id, name))
    except RolloutNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no rollout {rollout_id}") from exc
    except CommandError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc


@rollouts.post("/{rollout_id}/pause", dependencies=[TokenDep])
async def pause_rollout(rollout_id: str, controller: ControllerDep) -> RolloutPublic:
    return await _command(controller, rollout_id, "pause")


@rollouts.post("/{rollout_id}/resume", dependencies=[TokenDep])
async def resume_rollout(rollout_id: str, controller: ControllerDep) -> RolloutPublic:
    return await _command(controller, rollout_id, "resume")


@rollouts.post("/{rollout_id}/promote", dependencies=[TokenDep])
async def promote_rollout(rollout_id: str, controller: ControllerDep) -> RolloutPublic:
    """Skip the remaining steps and promote the candidate now."""
    return await _command(controller, rollout_id, "promote")


@rollouts.post("/{rollout_id}/abort", dependencies=[TokenDep])
async def abort_rollout(rollout_id: str, controller: ControllerDep) -> RolloutPublic:
    """Roll back now: canary weight 0, candidate removed."""
    return await _command(controller, rollout_id, "abort")


operations = APIRouter(tags=["operations"])


@operations.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@operations.get("/readyz")
def readyz(request: Request, response: Response) -> dict[str, str]:
    """Ready once the stable predictor is known to serve."""
    problem: str = request.app.state.not_ready
    if problem:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        return {"status": "not ready", "reason": problem}
    return {"status": "ready"}


@operations.get("/metrics")
def metrics(request: Request) -> Response:
    registry: CollectorRegistry = request.app.state.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def register_initial_stable(settings: GateSettings, store: SQLiteStore) -> None:
    """Local backend: record the stable the operator named, if none is recorded yet."""
    if settings.stable_model_dir is None or store.stable(settings.model_name) is not None:
        return
    metadata = json.loads((settings.stable_model_dir / "model.json").read_text())
    store.set_stable(
        Stable(
            model=settings.model_name,
            version=str(metadata["version"]),
            artifact_uri=str(settings.stable_model_dir.resolve()),
        )
    )


async def _bring_up_stable(
    app: FastAPI, backend: TrafficBackend, model: str, stop: asyncio.Event
) -> None:
    while not stop.is_set():
        try:
            await backend.ensure_stable(model)
        except TrafficError as exc:
            app.state.not_ready = f"stable not serving yet: {exc}"
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)
            continue
        app.state.not_ready = ""
        return


def create_app(
    settings: GateSettings,
    backend: TrafficBackend | None = None,
    provider: MetricsProvider | None = None,
) -> FastAPI:
    """Everything is built here, from settings: unknown backend names fail now.

    ``backend`` and ``provider`` replace the configured ones (tests pass fakes).
    """
    store = SQLiteStore(settings.db_path)
    registry = CollectorRegistry()
    gate_metrics = GateMetrics(registry)
    backend = backend or make_backend(settings, store)
    provider = provider or make_provider(
        settings.metrics_provider, settings.prometheus_url, settings.prometheus_queries
    )
    controller = RolloutController(
        store, backend, provider, settings.analysis_defaults(), gate_metrics
    )
    notifier = WebhookNotifier(
        settings.webhook_urls, store, gate_metrics, max_passes=settings.webhook_max_passes
    )
    if settings.traffic_backend == "local":
        register_initial_stable(settings, store)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        stop = asyncio.Event()
        tasks = [
            asyncio.create_task(controller.run(settings.tick_interval_s, stop)),
            asyncio.create_task(notifier.run(settings.webhook_interval_s, stop)),
        ]
        if store.stable(settings.model_name) is not None or settings.traffic_backend != "local":
            tasks.append(
                asyncio.create_task(_bring_up_stable(app, backend, settings.model_name, stop))
            )
        else:
            app.state.not_ready = f"no stable version of {settings.model_name} recorded"
        try:
            yield
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            await controller.aclose()
            await notifier.aclose()
            await provider.aclose()
            await backend.aclose()
            store.close()

    app = FastAPI(
        title="irisgate gate",
        version="0.1.0",
        lifespan=lifespan,
        description="Accuracy gate and progressive canary analysis.",
    )
    app.state.settings = settings
    app.state.controller = controller
    app.state.registry = registry
    app.state.not_ready = "starting"
    app.include_router(rollouts)
    app.include_router(operations)
    return app
