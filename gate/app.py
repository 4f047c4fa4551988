"""The app factory: builds everything from settings, brings up the stables, runs the
controller loop and the webhook notifier for the app's lifetime."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from gate.api import install_error_handlers, operations, quarantine, rollouts
from gate.body_limit import BodyLimit
from gate.controller import CrashAfter, RolloutController
from gate.ingest_api import events, feedback
from gate.notify import WebhookNotifier
from gate.observability import GateMetrics
from gate.payload_store import PayloadStore
from gate.providers.base import MetricsProvider
from gate.replay import HoldoutSource
from gate.settings import GateSettings
from gate.store import SQLiteStore, Stable
from gate.stream_api import stream
from gate.traffic.base import Deployer, Router, TrafficBackend, TrafficError
from gate.ui_api import docs, ui
from gate.wiring import check_traffic_settings, make_provider, make_traffic

logger = logging.getLogger(__name__)


def register_initial_stables(settings: GateSettings, store: SQLiteStore) -> None:
    """Local backend: record the stables the operator named, where none is recorded yet."""
    directories = list(settings.stable_model_dirs)
    if settings.stable_model_dir is not None:
        directories.insert(0, settings.stable_model_dir)
    for directory in directories:
        metadata = json.loads((directory / "model.json").read_text())
        model = str(metadata["name"])
        if store.stable(model) is None:
            store.set_stable(
                Stable(
                    model=model,
                    version=str(metadata["version"]),
                    artifact_uri=str(directory.resolve()),
                    digest=f"sha256:{metadata['sha256']}" if "sha256" in metadata else None,
                )
            )


async def _bring_up_stables(
    app: FastAPI, router: Router, deployer: Deployer, models: list[str], stop: asyncio.Event
) -> None:
    """Every known stable serves and is routed; until then /readyz says which is not."""
    waiting = list(models)
    while waiting and not stop.is_set():
        for model in list(waiting):
            try:
                stable = await deployer.ensure_stable(model)
                if stable is not None:
                    await router.ensure_stable_route(stable)
            except Exception as exc:  # e.g. the Kubernetes API unreachable: retried
                reason = exc if isinstance(exc, TrafficError) else f"{type(exc).__name__}: {exc}"
                app.state.not_ready = f"stable of {model} not serving yet: {reason}"
                continue
            waiting.remove(model)
        if waiting:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=0.5)
    if models and not waiting:
        app.state.not_ready = ""


def create_app(
    settings: GateSettings,
    backend: TrafficBackend | None = None,
    provider: MetricsProvider | None = None,
) -> FastAPI:
    """Everything is built here, from settings: unknown backend names fail now.

    ``backend`` and ``provider`` replace the configured ones (tests pass fakes).
    """
    # what settings can refuse is refused before the store creates its folder
    if backend is None:
        check_traffic_settings(settings)
    provider = provider or make_provider(
        settings.metrics_provider, settings.prometheus_url, settings.prometheus_queries
    )
    store = SQLiteStore(settings.db_path)
    registry = CollectorRegistry()
    gate_metrics = GateMetrics(registry)
    router: Router
    deployer: Deployer
    router, deployer = (backend, backend) if backend else make_traffic(settings, store)
    controller = RolloutController(
        store,
        router,
        deployer,
        provider,
        settings.analysis_defaults(),
        gate_metrics,
        candidate_timeout_s=settings.candidate_timeout_s,
        crash_after=CrashAfter(settings.crash_after) if settings.crash_after else None,
        payloads=PayloadStore(
            settings.db_path, settings.payload_retention_s, settings.payload_max_rows
        ),
        hook_namespace=settings.kserve_namespace,
        holdout_source=HoldoutSource.from_settings(settings),
    )
    notifier = WebhookNotifier(
        settings.webhook_urls, store, gate_metrics, max_passes=settings.webhook_max_passes
    )
    if settings.traffic_backend == "local":
        register_initial_stables(settings, store)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        stop = asyncio.Event()
        try:  # a restarted gate first stops what it started and needs no more
            retired = await deployer.retire()
            if retired:
                logger.info("retired %d predictors left from before: %s", len(retired), retired)
        except Exception:
            logger.exception("retiring unused predictors failed; the next promotion retries")
        models = sorted({s.model for s in store.stables()})
        if settings.traffic_backend != "local" and settings.model_name not in models:
            models.append(settings.model_name)
        if not models:
            app.state.not_ready = f"no stable version of {settings.model_name} recorded"

        async def control() -> None:
            # Rollouts tick once every stable serves and is routed: a restarted gate must
            # not let a promotion race the re-routing of the stable it replaces.
            await _bring_up_stables(app, router, deployer, models, stop)
            await controller.run(settings.tick_interval_s, stop)

        tasks = [
            asyncio.create_task(control()),
            asyncio.create_task(notifier.run(settings.webhook_interval_s, stop)),
        ]
        try:
            yield
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            await controller.aclose()
            controller.payloads.close()
            await notifier.aclose()
            await provider.aclose()
            await router.aclose()
            if deployer is not backend:  # one object when a backend was passed in
                await deployer.aclose()
            store.close()

    app = FastAPI(
        title="irisgate gate",
        version="0.1.0",
        lifespan=lifespan,
        description="Accuracy gate and progressive canary analysis.",
        docs_url=None,  # FastAPI's pages load Swagger UI and ReDoc from a CDN; ours do not
        redoc_url=None,
    )
    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, exempt=("/v1/events",))
    app.state.settings = settings
    app.state.controller = controller
    app.state.registry = registry
    app.state.not_ready = "starting"
    app.state.stopping = False  # set by python -m gate when a shutdown begins
    app.include_router(rollouts)
    app.include_router(stream)
    app.include_router(quarantine)
    app.include_router(events)
    app.include_router(feedback)
    app.include_router(operations)
    app.include_router(ui)
    app.include_router(docs)
    return app
