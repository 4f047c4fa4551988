"""Evidence that comes in: payload events (``POST /v1/events``, KServe's InferenceService
logger format) and delayed true labels (``POST /v1/feedback``).

Two senders: KServe's agent on a cluster (one CloudEvent per POST, binary mode, no way to
add a header, so its URL carries the key: ``.../v1/events/<GATE_EVENTS_TOKEN>``) and the
local router (batches, ``Authorization: Bearer <GATE_EVENTS_TOKEN>``). The events token is
not the API token: whoever can send events can only add evidence, never steer a rollout.
Bodies are bounded while they are read; a malformed event is a 400 naming the attribute,
and nothing of its POST is kept.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Request, status
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import BaseModel

from gate.api import INVALID, UNAUTHORIZED, UNREADABLE, bearer, check_token
from gate.controller import RolloutController
from gate.providers.payloads import (
    BATCH_CONTENT_TYPE,
    MAX_POST_BYTES,
    EventError,
    PayloadEvent,
    parse_batch,
    parse_binary,
)
from gate.schemas import ErrorPublic, FeedbackCreate, FeedbackResult
from gate.settings import GateSettings

events = APIRouter(prefix="/v1/events", tags=["evidence"])
feedback = APIRouter(prefix="/v1/feedback", tags=["evidence"])

EVENT_RESPONSES: dict[int | str, dict[str, object]] = {
    400: {"model": ErrorPublic, "description": "a malformed event: the attribute is named"},
    401: {"model": ErrorPublic, "description": "missing or wrong events token"},
    413: {"model": ErrorPublic, "description": f"body over {MAX_POST_BYTES} bytes"},
    503: {"model": ErrorPublic, "description": "ingestion is off: GATE_EVENTS_TOKEN unset"},
}
EventsKey = Annotated[str, Path(min_length=1, max_length=256, description="GATE_EVENTS_TOKEN")]


class Ingested(BaseModel):
    accepted: int
    """Events kept (a request and its answer are two)."""


def _check(request: Request, given: str | None) -> None:
    settings: GateSettings = request.app.state.settings
    if settings.events_token is None:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, "payload ingestion is off: set GATE_EVENTS_TOKEN"
        )
    check_token(given, settings.events_token, message="missing or wrong events token")


async def _body(request: Request) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_POST_BYTES:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, f"body over {MAX_POST_BYTES} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_POST_BYTES:
            raise HTTPException(
                status.HTTP_413_CONTENT_TOO_LARGE, f"body over {MAX_POST_BYTES} bytes"
            )
    return bytes(body)


async def _ingest(request: Request) -> Ingested:
    body = await _body(request)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        parsed: list[PayloadEvent]
        if content_type == BATCH_CONTENT_TYPE:
            parsed = parse_batch(body)
        else:
            parsed = [parse_binary({k.lower(): v for k, v in request.headers.items()}, body)]
    except EventError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from exc
    controller: RolloutController = request.app.state.controller
    accepted = await asyncio.to_thread(controller.payloads.ingest, parsed)
    return Ingested(accepted=accepted)


def _bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token else None


@events.post("", responses=EVENT_RESPONSES)
async def post_events(request: Request) -> Ingested:
    """Payload events with ``Authorization: Bearer <GATE_EVENTS_TOKEN>``: one CloudEvent
    in binary mode (``ce-*`` headers, the body as logged) or a JSON batch
    (``application/cloudevents-batch+json``, bodies in ``data_base64``)."""
    _check(request, _bearer(request))
    return await _ingest(request)


@events.post("/{key}", responses=EVENT_RESPONSES)
async def post_events_keyed(key: EventsKey, request: Request) -> Ingested:
    """The same, the token in the path: for KServe's logger, which sends no headers of
    ours (``spec.predictor.logger.url``)."""
    _check(request, key)
    return await _ingest(request)


def require_feedback_token(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> None:
    """The API token, or the feedback-only token (``GATE_FEEDBACK_TOKEN``)."""
    settings: GateSettings = request.app.state.settings
    check_token(
        credentials.credentials if credentials else None,
        settings.api_token,
        settings.feedback_token,
    )


@feedback.post(
    "",
    dependencies=[Depends(require_feedback_token)],
    responses={**UNREADABLE, **UNAUTHORIZED, **INVALID},
)
async def post_feedback(body: FeedbackCreate, request: Request) -> FeedbackResult:
    """True labels for request ids (one or many; sending one again replaces it). The gate
    joins them with the answers stable, the canary and a shadowed candidate gave, for live
    accuracy. Ids with no recorded answer are counted, not refused."""
    controller: RolloutController = request.app.state.controller
    accepted, unknown = await asyncio.to_thread(
        controller.payloads.add_labels, body.model, [(item.id, item.rows()) for item in body.labels]
    )
    return FeedbackResult(accepted=accepted, unknown=unknown)


__all__ = ["events", "feedback"]
