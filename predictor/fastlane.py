"""The REST fast lane: KServe's two inference endpoints without FastAPI around them.

Per request, FastAPI routes through every registered path, builds a ``Request``, solves
the endpoint's dependencies, validates the body through a generated model and wraps the
call in its exception middleware. For ``POST /v1/models/{model}:predict`` and
``POST /v2/models/{model}/infer`` of the served model this middleware makes the same
calls KServe's endpoint functions make (``kserve.protocol.rest.v1_endpoints.predict``,
``v2_endpoints.infer``: ``model_ready``, ``decode``, ``infer``, ``encode``, the same
pydantic request and response models, the same ``ORJSONResponse``) directly, so the
answers are the same bytes (``tests/integration/test_fastlane.py`` compares them).

Anything the lane does not take as it is goes to KServe's app unchanged, body replayed:
another model name, a v2 binary-data or non-JSON request, and every request whose body
does not validate (so FastAPI's own error answer is the one the client gets). An error
raised after validation is answered by the same function the app's exception handlers
use. Everything else (health, metadata, metrics, errors' wording) stays KServe's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi.encoders import jsonable_encoder
from fastapi.responses import ORJSONResponse, Response
from kserve.constants.constants import PredictorProtocol
from kserve.errors import ModelNotReady
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.rest.v2_datamodels import InferenceRequest, InferenceResponse
from pydantic import ValidationError

# ASGI's types, and the v2 binary-data extension's header (the REST server uses them too)
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ErrorResponder = Callable[[str, Exception], Response]

INFERENCE_HEADER = "inference-header-content-length"


class FastLane:
    """ASGI middleware in front of KServe's app, for one model's inference routes."""

    def __init__(
        self, app: Any, dataplane: DataPlane, model_name: str, on_error: ErrorResponder
    ) -> None:
        self.app = app
        self.dataplane = dataplane
        self.model_name = model_name
        self.on_error = on_error
        self.v1_path = f"/v1/models/{model_name}:predict"
        self.v2_path = f"/v2/models/{model_name}/infer"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path")
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or path
            not in (
                self.v1_path,
                self.v2_path,
            )
        ):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        if path == self.v2_path and (
            INFERENCE_HEADER in headers
            or not headers.get("content-type", "").startswith("application/json")
        ):
            await self.app(scope, receive, send)  # binary or JSON without a content type
            return
        body = await _read_body(receive)
        if body is None:  # the client left
            return
        try:
            if path == self.v1_path:
                response = await self._v1(body, headers)
            else:
                request = self._v2_request(body)
                if request is None:
                    await self.app(scope, replay_body(body, receive), send)
                    return
                response = await self._v2(request, headers)
        except Exception as exc:  # answered as the app's exception handlers answer
            response = self.on_error(path, exc)
        await response(scope, receive, send)

    async def _ready(self) -> None:
        if not await self.dataplane.model_ready(self.model_name, True):
            raise ModelNotReady(self.model_name)

    async def _v1(self, body: bytes, headers: dict[str, str]) -> Response:
        """``V1Endpoints.predict``'s calls, in its order."""
        await self._ready()
        infer_request, req_attributes = self.dataplane.decode(body=body, headers=headers)
        response, response_headers = await self.dataplane.infer(
            model_name=self.model_name, request=infer_request, headers=headers
        )
        response, res_headers = self.dataplane.encode(
            model_name=self.model_name,
            response=response,
            headers=headers,
            req_attributes=req_attributes,
        )
        response_headers.update(res_headers)
        response_headers.pop("content-length", None)
        if isinstance(response, bytes | str):
            return Response(content=response, headers=response_headers)
        return ORJSONResponse(content=response, headers=response_headers)

    @staticmethod
    def _v2_request(body: bytes) -> InferenceRequest | None:
        """The body as FastAPI would validate it, or None to let FastAPI answer."""
        try:
            return InferenceRequest.model_validate_json(body)
        except ValidationError:
            return None

    async def _v2(self, request: InferenceRequest, headers: dict[str, str]) -> Response:
        """``V2Endpoints.infer``'s calls, in its order, and FastAPI's serialization of
        its return value (``jsonable_encoder`` into the app's ``ORJSONResponse``)."""
        await self._ready()
        infer_request, _ = self.dataplane.decode(
            request,
            headers,
            protocol_version=PredictorProtocol.REST_V2.value,
            model_name=self.model_name,
        )
        response, response_headers = await self.dataplane.infer(
            model_name=self.model_name, request=infer_request, headers=headers
        )
        response, res_headers = self.dataplane.encode(
            model_name=self.model_name, response=response, headers=headers, req_attributes={}
        )
        response_headers.update(res_headers)
        response_headers.pop("content-length", None)
        response_headers.pop("content-type", None)
        if isinstance(response, bytes):
            return Response(content=response, headers=response_headers or None)
        content = jsonable_encoder(InferenceResponse.model_validate(response))
        return ORJSONResponse(content, headers=response_headers or None)


async def _read_body(receive: Receive) -> bytes | None:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def replay_body(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives an already-read body once, then the client's own messages
    (disconnect notices)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
