"""The gate's HTTP API: the rollout routes, health and metrics, and the one error handler
for the gate's error family. The app is built by :mod:`gate.app`."""

from __future__ import annotations

import hmac
import logging
import time
from typing import Annotated, Any

from fastapi import (
    APIRouter,
    Depends,
    FastAPI,
    HTTPException,
    Path,
    Query,
    Request,
    Response,
    status,
)
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from pydantic import SecretStr, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from gate.confine import confine_candidate, confine_hooks
from gate.controller import RolloutController, RolloutNotFound, watch_key
from gate.core.decide import Command, CommandError
from gate.core.errors import Conflict, GateError, NotFound
from gate.core.paired import PairedEvidence
from gate.schemas import (
    ApprovalCreate,
    DecisionPublic,
    ErrorPublic,
    RolloutCreate,
    RolloutDetail,
    RolloutPublic,
    ValidationErrorPublic,
    ValidationIssue,
)
from gate.settings import GateSettings
from gate.store import ActiveRolloutExists, Quarantined

logger = logging.getLogger(__name__)
bearer = HTTPBearer(auto_error=False, description="GATE_API_TOKEN")


def get_controller(request: Request) -> RolloutController:
    controller: RolloutController = request.app.state.controller
    return controller


ControllerDep = Annotated[RolloutController, Depends(get_controller)]


def get_settings(request: Request) -> GateSettings:
    settings: GateSettings = request.app.state.settings
    return settings


SettingsDep = Annotated[GateSettings, Depends(get_settings)]
RolloutId = Annotated[
    str,
    Path(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="rollout id, as returned by POST /v1/rollouts",
    ),
]


def check_token(
    given: str | None, *accepted: SecretStr | None, message: str = "missing or wrong bearer token"
) -> None:
    """401 unless ``given`` is one of the ``accepted`` tokens (compared in constant time;
    an unset token accepts nothing)."""
    if given is None or not any(
        token is not None and hmac.compare_digest(given.encode(), token.get_secret_value().encode())
        for token in accepted
    ):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, message, headers={"WWW-Authenticate": "Bearer"}
        )


def require_token(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> None:
    check_token(
        credentials.credentials if credentials else None, request.app.state.settings.api_token
    )


TokenDep = Depends(require_token)

# Every status a route can answer is listed on it (schemathesis holds the API to this).
Responses = dict[int | str, dict[str, Any]]
UNAUTHORIZED: Responses = {
    401: {"model": ErrorPublic, "description": "missing or wrong bearer token"}
}
NOT_FOUND: Responses = {404: {"model": ErrorPublic, "description": "no such rollout"}}
CONFLICT: Responses = {
    409: {"model": ErrorPublic, "description": "not possible in the rollout's current state"}
}
INVALID: Responses = {
    422: {"model": ValidationErrorPublic, "description": "the request does not match the schema"}
}
INVALID_OR_REFUSED: Responses = {
    422: {
        "model": ValidationErrorPublic | ErrorPublic,
        "description": "the request does not match the schema (a list of problems), or a "
        "well-formed field is not allowed here, e.g. an artifact outside the registry "
        "(one message naming the field)",
    }
}
UNREADABLE: Responses = {
    400: {"model": ErrorPublic, "description": "the body cannot be read (e.g. not UTF-8)"},
    413: {"model": ErrorPublic, "description": "the body is over GATE_MAX_BODY_BYTES"},
}
COMMAND_RESPONSES: Responses = {**UNAUTHORIZED, **NOT_FOUND, **CONFLICT, **INVALID}

rollouts = APIRouter(prefix="/v1/rollouts", tags=["rollouts"])


@rollouts.post(
    "",
    status_code=status.HTTP_201_CREATED,
    dependencies=[TokenDep],
    responses={**UNREADABLE, **UNAUTHORIZED, **CONFLICT, **INVALID_OR_REFUSED},
)
def create_rollout(
    body: RolloutCreate, controller: ControllerDep, settings: SettingsDep
) -> RolloutPublic:
    """Start a rollout: accuracy gate, then canary steps. One active rollout per model.

    The artifact must come from the operator's registry (or allowed storage) and the
    held-out set from the artifact itself or an allowed prefix (422 otherwise)."""
    candidate = confine_candidate(body.candidate, settings)
    confine_hooks(body.analysis, settings)
    try:
        state = controller.create(body.model, candidate, body.analysis)
    except ActiveRolloutExists as exc:
        raise Conflict(str(exc)) from exc
    except ValidationError as exc:  # overrides valid alone, invalid on top of the defaults
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, f"analysis.{where}: {first['msg']}"
        ) from exc
    return RolloutPublic.of(state)


@rollouts.get("", responses=INVALID)
def list_rollouts(
    controller: ControllerDep,
    active: Annotated[bool, Query(description="only rollouts still in progress")] = False,
) -> list[RolloutPublic]:
    return [RolloutPublic.of(s) for s in controller.store.rollouts(active_only=active)]


quarantine = APIRouter(prefix="/v1/quarantine", tags=["rollouts"])


@quarantine.get("")
def list_quarantined(controller: ControllerDep) -> list[Quarantined]:
    """Stored rollouts that could not be read back, with the reason: kept, never ticked,
    never a failed listing."""
    return controller.store.quarantined()


def rollout_detail(controller: RolloutController, rollout_id: str) -> RolloutDetail:
    """What ``GET /v1/rollouts/{id}`` answers; the stream endpoint sends the same, so a
    client parses one shape whichever way it reads. Blocking (SQLite): NotFound if none."""
    try:
        state = controller.get(rollout_id)
    except RolloutNotFound as exc:
        raise NotFound(f"no rollout {rollout_id}") from exc
    decisions = [DecisionPublic.of(d) for d in controller.store.decisions(rollout_id)]
    return RolloutDetail(
        **RolloutPublic.of(state).model_dump(),
        analysis=state.spec,
        decisions=decisions,
        shadow_pairs=_pairs(controller, rollout_id),
        watch_pairs=_pairs(controller, watch_key(rollout_id)),
    )


def _pairs(controller: RolloutController, key: str) -> PairedEvidence | None:
    """The pairs kept under ``key`` summed now, labels that arrived since the last
    decision included; None when the replayer never got that far."""
    paired = controller.payloads.paired_evidence(key)
    return paired if paired.requests or paired.skipped else None


@rollouts.get("/{rollout_id}", responses={**NOT_FOUND, **INVALID})
def get_rollout(rollout_id: RolloutId, controller: ControllerDep) -> RolloutDetail:
    """The rollout with its whole decision history and the evidence for each decision."""
    return rollout_detail(controller, rollout_id)


async def _command(
    controller: RolloutController, rollout_id: str, name: Command, full: bool = False
) -> RolloutPublic:
    try:
        return RolloutPublic.of(await controller.command(rollout_id, name, full=full))
    except RolloutNotFound as exc:
        raise NotFound(f"no rollout {rollout_id}") from exc
    except CommandError as exc:
        raise Conflict(str(exc)) from exc


@rollouts.post("/{rollout_id}/pause", dependencies=[TokenDep], responses=COMMAND_RESPONSES)
async def pause_rollout(rollout_id: RolloutId, controller: ControllerDep) -> RolloutPublic:
    return await _command(controller, rollout_id, Command.PAUSE)


@rollouts.post("/{rollout_id}/resume", dependencies=[TokenDep], responses=COMMAND_RESPONSES)
async def resume_rollout(rollout_id: RolloutId, controller: ControllerDep) -> RolloutPublic:
    return await _command(controller, rollout_id, Command.RESUME)


@rollouts.post("/{rollout_id}/promote", dependencies=[TokenDep], responses=COMMAND_RESPONSES)
async def promote_rollout(
    rollout_id: RolloutId,
    controller: ControllerDep,
    full: Annotated[
        bool, Query(description="promote to the end now, not to the next step")
    ] = False,
) -> RolloutPublic:
    """Argo Rollouts' promote: the next canary step (from the shadow phase: the first;
    from the last step: the promotion), or with ``full=true`` the promotion now. During a
    post-promotion watch: end the watch and keep the new stable. No hook is asked."""
    return await _command(controller, rollout_id, Command.PROMOTE, full)


@rollouts.post(
    "/{rollout_id}/approve",
    dependencies=[TokenDep],
    responses={**UNREADABLE, **COMMAND_RESPONSES},
)
async def approve_rollout(
    rollout_id: RolloutId, controller: ControllerDep, body: ApprovalCreate | None = None
) -> RolloutPublic:
    """Answer the rollout's own approval hook (a hook with ``url: approval``): the held
    move goes through at the next tick. Without a body, the type the rollout waits for
    (409 if it waits for none); with ``{"type": ...}`` approve ahead. An approval of a
    confirm type is used up by the move it lets through."""
    try:
        return RolloutPublic.of(await controller.approve(rollout_id, body.type if body else None))
    except RolloutNotFound as exc:
        raise NotFound(f"no rollout {rollout_id}") from exc
    except CommandError as exc:
        raise Conflict(str(exc)) from exc


@rollouts.post("/{rollout_id}/abort", dependencies=[TokenDep], responses=COMMAND_RESPONSES)
async def abort_rollout(rollout_id: RolloutId, controller: ControllerDep) -> RolloutPublic:
    """Roll back now: canary weight 0, candidate removed."""
    return await _command(controller, rollout_id, Command.ABORT)


operations = APIRouter(tags=["operations"])


@operations.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@operations.get(
    "/readyz",
    responses={503: {"description": "not ready, with the reason", "model": dict[str, str]}},
)
def readyz(request: Request, response: Response) -> dict[str, str]:
    """Ready once the stable predictors serve and the controller loop is ticking."""
    problem: str = request.app.state.not_ready
    controller: RolloutController = request.app.state.controller
    settings: GateSettings = request.app.state.settings
    stale_after = max(5 * settings.tick_interval_s, 10.0)
    if not problem and (
        controller.last_loop is None or time.monotonic() - controller.last_loop > stale_after
    ):
        problem = f"the controller loop has not completed a pass in {stale_after:g} s"
    if problem:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        return {"status": "not ready", "reason": problem}
    return {"status": "ready"}


@operations.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={200: {"description": "Prometheus text exposition"}},
)
def metrics(request: Request) -> Response:
    registry: CollectorRegistry = request.app.state.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE")


def install_error_handlers(app: FastAPI) -> None:
    """One handler for the gate's error family (its own status, ``{"detail": message}``),
    and FastAPI's 422 body made safe to render whatever the request held."""
    app.add_exception_handler(GateError, _gate_error_response)
    app.add_exception_handler(RequestValidationError, _validation_error_response)
    app.add_exception_handler(StarletteHTTPException, _http_error_response)


async def _gate_error_response(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, GateError):  # registered for GateError only
        raise exc
    return JSONResponse(ErrorPublic(detail=exc.detail).model_dump(), status_code=exc.status)


async def _validation_error_response(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's body without ``input`` and ``ctx``: FastAPI's own handler echoes the
    input, and a NaN or a lone surrogate in it made the 422 itself fail (a 500), while a
    1 MB field came back whole. Locations name the field (dict keys come from the client:
    cut and made encodable)."""
    if not isinstance(exc, RequestValidationError):  # registered for it only
        raise exc
    issues = [
        ValidationIssue(
            loc=[_printable(part) if isinstance(part, str) else part for part in error["loc"]],
            msg=_printable(str(error["msg"]), 500),
            type=str(error["type"]),
        )
        for error in exc.errors()
    ]
    body = ValidationErrorPublic(detail=issues)
    return JSONResponse(body.model_dump(), status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)


async def _http_error_response(request: Request, exc: Exception) -> Response:
    """FastAPI's own, except that a 405 lists every method of the path in ``Allow``:
    Starlette names only the first route it matched (``POST`` for ``/v1/rollouts``)."""
    if not isinstance(exc, StarletteHTTPException):  # registered for it only
        raise exc
    if exc.status_code == status.HTTP_405_METHOD_NOT_ALLOWED:
        allowed = [
            method
            for method in HTTP_METHODS
            if any(
                route.matches({**request.scope, "method": method})[0] is Match.FULL
                for route in request.app.router.routes
            )
        ]
        if allowed:
            exc.headers = {**(exc.headers or {}), "Allow": ", ".join(allowed)}
    return await http_exception_handler(request, exc)


def _printable(text: str, limit: int = 100) -> str:
    cut = text if len(text) <= limit else f"{text[:limit]}..."
    return cut.encode("utf-8", "backslashreplace").decode("utf-8")
