"""``GET /v1/rollouts/{id}/stream``: a rollout as server-sent events, for watchers (the
``irisgate rollouts get --watch`` CLI, a dashboard) that would otherwise poll the API.

Each ``event: rollout`` carries exactly what ``GET /v1/rollouts/{id}`` answers (one
helper builds both), so a client has one shape to parse however it reads. The gate's
state lives in SQLite and changes at tick granularity (0.5-2 s), so the stream polls the
store every ``POLL_S`` off the event loop (``asyncio.to_thread``) and sends only when the
rollout changed, instead of hooking a notification into the controller's transaction.

Why a stream always ends: a terminal rollout changes no more (its final state is sent,
then the stream closes: a client can wait on it), a watcher that went away must not cost
a poll forever, and a client with a bounded read (a fuzzer, a proxy) must get a complete
answer. So a stream of a terminal rollout is one event long, and every stream ends after
``timeout_s`` (Kubernetes' watch has ``timeoutSeconds`` for the same reason); a client
that still wants more connects again. Comments (``: keep-alive``) every ``KEEPALIVE_S``
keep proxies and idle-connection timeouts from cutting a quiet stream.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated

from fastapi import APIRouter, Query, Request
from starlette.responses import StreamingResponse

from gate.api import INVALID, NOT_FOUND, ControllerDep, Responses, RolloutId, rollout_detail
from gate.core.errors import NotFound
from gate.core.spec import TERMINAL
from gate.schemas import RolloutDetail

logger = logging.getLogger(__name__)

POLL_S = 0.5
KEEPALIVE_S = 15.0
MAX_LIFETIME_S = 3600
KEEPALIVE = b": keep-alive\n\n"


class EventStreamResponse(StreamingResponse):
    media_type = "text/event-stream"


STREAM_OK: Responses = {
    200: {
        "description": "server-sent events: `event: rollout` with the rollout as "
        "`GET /v1/rollouts/{rollout_id}` answers it, at once and on every change; a "
        "`: keep-alive` comment every 15 s; the stream ends after the final state of a "
        "terminal rollout, or after `timeout_s`",
        # One event's schema, the way FastAPI documents its own event streams (OpenAPI
        # 3.2's itemSchema); schemathesis checks every event, and its data, against it.
        "content": {
            "text/event-stream": {
                "itemSchema": {
                    "type": "object",
                    "required": ["event", "data"],
                    "properties": {
                        "event": {"type": "string", "const": "rollout"},
                        "data": {
                            "type": "string",
                            "contentMediaType": "application/json",
                            "contentSchema": {"$ref": "#/components/schemas/RolloutDetail"},
                        },
                    },
                }
            }
        },
    }
}

stream = APIRouter(prefix="/v1/rollouts", tags=["rollouts"])


def sse_event(detail: RolloutDetail) -> bytes:
    """One ``rollout`` event. The JSON is one line (newlines inside strings are escaped),
    so one ``data:`` field carries it."""
    return b"event: rollout\ndata: " + detail.model_dump_json().encode() + b"\n\n"


def _version(detail: RolloutDetail) -> tuple[object, int]:
    """What marks a change worth sending: every persisted transition moves ``updated_at``,
    and a decision can be recorded without one."""
    return detail.updated_at, len(detail.decisions)


async def rollout_events(
    first: RolloutDetail,
    load: Callable[[], Awaitable[RolloutDetail]],
    disconnected: Callable[[], Awaitable[bool]],
    *,
    lifetime_s: float,
    poll_s: float = POLL_S,
    keepalive_s: float = KEEPALIVE_S,
    clock: Callable[[], float] = time.monotonic,
    probe: Callable[[], Awaitable[object]] | None = None,
) -> AsyncIterator[bytes]:
    """The stream's body: ``first`` at once, then each changed state, until the rollout is
    terminal, the client has gone, the rollout can no longer be read (quarantined), or
    ``lifetime_s`` is over. I/O is injected so the timing is tested without a server.
    ``probe``: a cheap read that changes whenever the rollout does; the whole rollout
    (every decision with its evidence) is loaded only when it moved, so many watchers
    of a long rollout cost the store two indexed rows each per poll."""
    yield sse_event(first)
    seen = _version(first)
    probed: object = None
    terminal = first.phase in TERMINAL
    started = last_sent = clock()
    while not terminal and clock() - started < lifetime_s:
        await asyncio.sleep(min(poll_s, max(0.0, lifetime_s - (clock() - started))))
        if await disconnected():
            return
        moved = True
        if probe is not None:
            now_probed = await probe()
            if now_probed is None:
                return  # gone or quarantined since: nothing more to say about it
            moved, probed = now_probed != probed, now_probed
        try:
            detail = await load() if moved else None
        except NotFound:
            return  # quarantined since: nothing more to say about it
        if detail is not None and _version(detail) != seen:
            seen = _version(detail)
            terminal = detail.phase in TERMINAL
            last_sent = clock()
            yield sse_event(detail)
        elif clock() - last_sent >= keepalive_s:
            last_sent = clock()
            yield KEEPALIVE


@stream.get(
    "/{rollout_id}/stream",
    # Documentation only (the route returns its response): a class without a media type
    # keeps FastAPI from adding a whole-stream ``"schema": {"type": "string"}`` beside the
    # per-event itemSchema (schemathesis would hold the stream to it), and leaves the
    # errors' ``model`` filed under application/json, as they are sent.
    response_class=StreamingResponse,
    responses={**STREAM_OK, **NOT_FOUND, **INVALID},
)
async def stream_rollout(
    rollout_id: RolloutId,
    controller: ControllerDep,
    request: Request,
    timeout_s: Annotated[
        int,
        Query(
            ge=1,
            le=MAX_LIFETIME_S,
            description="the longest the stream stays open, in seconds (connect again "
            "for more); a terminal rollout's stream ends at once",
        ),
    ] = MAX_LIFETIME_S,
) -> EventStreamResponse:
    """The rollout as server-sent events, until it ends: what ``--watch`` follows."""
    # Read before answering: an unknown id is a 404, not a 200 stream with an error in it.
    first = await asyncio.to_thread(rollout_detail, controller, rollout_id)

    async def load() -> RolloutDetail:
        return await asyncio.to_thread(rollout_detail, controller, rollout_id)

    async def probe() -> object:
        return await asyncio.to_thread(controller.store.version, rollout_id)

    async def gone() -> bool:
        """The client left, or the gate is shutting down (``python -m gate`` sets
        ``stopping`` when the signal arrives, before uvicorn waits for open responses)."""
        return bool(getattr(request.app.state, "stopping", False)) or (
            await request.is_disconnected()
        )

    return EventStreamResponse(
        rollout_events(first, load, gone, lifetime_s=timeout_s, probe=probe),
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


__all__ = ["stream"]
