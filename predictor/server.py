"""KServe's ModelServer, adjusted where it falls short for us.

- binds to a chosen host (KServe 0.21 always binds 0.0.0.0 / [::]);
- maps every failure through :mod:`predictor.errors`, on REST and gRPC alike, so a client
  mistake is never a 500 and the two protocols report it with the same message;
- refuses hostile bodies before anything parses them: over the size limit (from the
  Content-Length header, or while a chunked body streams in), nested too deep, not UTF-8,
  binary tensors whose sizes do not tile the body (:class:`RequestGuardMiddleware`);
- counts requests, latency and errors by protocol for the gate;
- drops KServe's per-request log lines (access log, timing trace), which cost about a
  quarter of the throughput.

Several processes (``--workers``) are several of these servers on the same ports, each in
its own process (:mod:`predictor.processes`).
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import socket
from collections.abc import AsyncIterator, Callable
from concurrent import futures
from dataclasses import dataclass
from time import perf_counter
from typing import Any

import grpc
import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from google.protobuf.message import DecodeError
from grpc import aio
from kserve import ModelServer
from kserve.errors import InvalidInput, ModelNotFound, ModelNotReady
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor
from kserve.protocol.grpc.servicer import InferenceServicer
from kserve.protocol.infer_type import (
    InferInput,
    InferRequest,
    InferResponse,
    RequestedOutput,
    get_content,
    to_http_parameters,
)
from kserve.protocol.rest.server import RESTServer
from kserve.protocol.rest.v1_endpoints import register_v1_endpoints
from kserve.protocol.rest.v2_endpoints import register_v2_endpoints
from kserve.utils.utils import to_headers
from prometheus_client import exposition
from starlette.exceptions import HTTPException

from predictor.errors import (
    ClientErrorLog,
    PredictorError,
    Reason,
    outcome_of_grpc,
    outcome_of_http,
)
from predictor.fastlane import (
    INFERENCE_HEADER,
    FastLane,
    Message,
    Receive,
    Scope,
    Send,
    replay_body,
)
from predictor.grpc_lane import GrpcLane
from predictor.inputs import SUPPORTED_DATATYPES, binary_tensor_slices, check_json_text
from predictor.metrics import (
    TRAFFIC_HEADER,
    PredictorMetrics,
    exposition_registry,
    mark_traffic,
    unmark_traffic,
)
from predictor.model import IrisModel
from predictor.processes import GroupReadiness, ProcessGroup
from predictor.transport import CoalescingHttpToolsProtocol

logger = logging.getLogger(__name__)

MIB = 1024 * 1024
# JSON parts larger than this are checked on a worker thread (numpy releases the GIL for
# most of the scan), so the event loop keeps serving small requests meanwhile.
CHECK_OFF_LOOP_BYTES = 256 * 1024


@dataclass(frozen=True)
class RequestLimits:
    """What one inference request may cost before anything parses it."""

    max_body_bytes: int = 1 * MIB
    max_json_depth: int = 32
    max_message_bytes: int = 16 * MIB  # gRPC


def refuse_payload(what: str, limit: int, size: int | None = None) -> PredictorError:
    measured = f" of {size} bytes" if size is not None else ""
    return PredictorError(
        Reason.PAYLOAD_TOO_LARGE, f"{what}{measured} is over the limit of {limit} bytes"
    )


def as_predictor_error(exc: BaseException) -> PredictorError:
    """Translate anything raised while serving into the one error table."""
    if isinstance(exc, PredictorError):
        return exc
    if isinstance(exc, ModelNotFound):
        return PredictorError(Reason.MODEL_NOT_FOUND, str(exc))
    if isinstance(exc, ModelNotReady):
        return PredictorError(Reason.MODEL_NOT_READY, str(exc))
    if isinstance(exc, InvalidInput):  # raised by KServe's own decoding
        return PredictorError(Reason.MALFORMED_REQUEST, str(exc))
    if isinstance(exc, HTTPException) and exc.status_code < 500:  # Starlette / FastAPI's own
        reason = Reason.PAYLOAD_TOO_LARGE if exc.status_code == 413 else Reason.MALFORMED_REQUEST
        return PredictorError(reason, str(exc.detail))
    return PredictorError(Reason.INTERNAL, "internal error")


def describe_validation_error(exc: RequestValidationError) -> str:
    """FastAPI's schema error as one line a client can act on."""
    errors = exc.errors()
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        return f"request body is not valid JSON: {first.get('ctx', {}).get('error', '')}"
    where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "InferenceRequest"))
    return f"malformed request: {where}: {first.get('msg', 'invalid')}"


TRAFFIC_HEADER_BYTES = TRAFFIC_HEADER.encode()


def _grpc_traffic(context: aio.ServicerContext) -> str | None:
    """The call's ``x-irisgate-traffic`` metadata, if any."""
    for key, value in context.invocation_metadata() or ():
        if key == TRAFFIC_HEADER:
            return str(value)
    return None


def _protocol_of(path: str) -> str | None:
    if path.startswith("/v1/models/") and path.endswith(":predict"):
        return "rest-v1"
    if path.startswith("/v2/models/") and path.endswith("/infer"):
        return "rest-v2"
    return None


def parse_v1_json(body: bytes) -> Any:
    """orjson on the fast path; the standard library only to report NaN/Infinity, which
    are not JSON but which clients do send, with the same message gRPC clients get."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        try:
            return json.loads(body)
        except ValueError:
            raise PredictorError(
                Reason.MALFORMED_REQUEST, f"request body is not valid JSON: {exc}"
            ) from exc


# --- v2 decoding that defers tensor data to the model ----------------------------------


def json_header_length(value: str | None, body_length: int) -> int:
    """The binary-data extension's JSON header length; no header: the whole body is JSON
    (clients such as tritonclient send JSON-only requests without a Content-Type)."""
    if value is None:
        return body_length
    if not value.isdigit() or int(value) > body_length:
        raise PredictorError(
            Reason.BINARY_SIZE_MISMATCH,
            f"'{INFERENCE_HEADER}' must be the byte length of the JSON header "
            f"(at most {body_length}), got {value!r}",
        )
    return int(value)


def request_from_rest_bytes(body: bytes, json_length: int, model_name: str) -> InferRequest:
    """Binary-tensor REST requests, decoded without reshaping so the model judges shapes.
    The declared binary sizes must account for every byte after the JSON header."""
    try:
        header = orjson.loads(body[:json_length])
        inputs = []
        binary = []
        for spec in header["inputs"]:
            params = spec.get("parameters") or {}
            tensor = InferInput(
                spec["name"],
                spec["shape"],
                spec["datatype"],
                data=spec.get("data"),
                parameters=params,
            )
            if spec.get("data") is None:
                binary.append((tensor, params["binary_data_size"]))
            inputs.append(tensor)
        sizes = [size for _, size in binary]
        for (tensor, _), where in zip(
            binary, binary_tensor_slices(sizes, json_length, len(body)), strict=True
        ):
            tensor._raw_data = body[where]
        outputs = [
            RequestedOutput(name=o["name"], parameters=o.get("parameters"))
            for o in header.get("outputs") or []
        ]
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise PredictorError(
            Reason.MALFORMED_REQUEST, f"malformed binary inference request: {exc}"
        ) from exc
    return InferRequest(
        model_name=model_name,
        request_id=header.get("id"),
        parameters=header.get("parameters"),
        infer_inputs=inputs,
        request_outputs=outputs or None,
    )


def request_from_grpc(request: pb.ModelInferRequest) -> InferRequest:
    """Like ``InferRequest.from_grpc`` but an unsupported datatype is left for the model
    to reject with the same message REST gets."""
    inputs = [
        InferInput(
            name=t.name,
            shape=list(t.shape),
            datatype=t.datatype,
            data=get_content(t.datatype, t.contents)
            if t.datatype.upper() in SUPPORTED_DATATYPES
            else [],
            parameters=to_http_parameters(t.parameters) if t.parameters else None,
        )
        for t in request.inputs
    ]
    outputs = [RequestedOutput(name=o.name) for o in request.outputs]
    return InferRequest(
        request_id=request.id,
        model_name=request.model_name,
        infer_inputs=inputs,
        raw_inputs=request.raw_input_contents,
        from_grpc=True,
        parameters=request.parameters,
        request_outputs=outputs or None,
        model_version=request.model_version,
    )


class IrisDataPlane(DataPlane):  # type: ignore[misc]
    group: GroupReadiness | None = None  # several processes: ready once all serve

    async def ready(self) -> bool:
        """KServe's server readiness, and, with several processes, every one of them
        serving (see :class:`predictor.processes.GroupReadiness`). Model readiness, which
        inference checks too, stays the model's own."""
        if self.group is not None and not self.group.all_serving():
            return False
        return bool(await super().ready())

    async def model_metadata(self, model_name: str) -> dict[str, Any]:
        """KServe's v2 model metadata plus ``versions``, which KServe leaves out ("model
        versioning is not supported yet"): the served artifact's version, so a client
        can tell which model answers (REST and gRPC both read it from here)."""
        metadata: dict[str, Any] = await super().model_metadata(model_name)
        model = self.get_model_from_registry(model_name)
        if isinstance(model, IrisModel) and model.metadata is not None:
            metadata["versions"] = [model.metadata.version]
        return metadata

    def decode(
        self, body: Any, headers: Any, protocol_version: str = "v1", model_name: str | None = None
    ) -> tuple[Any, dict[str, Any]]:
        if protocol_version == "v1" and isinstance(body, bytes):
            body = parse_v1_json(body)
        return super().decode(body, headers, protocol_version, model_name)  # type: ignore[no-any-return]

    def decode_inference_request(
        self, body: Any, headers: dict[str, str], model_name: str
    ) -> InferRequest:
        if isinstance(body, bytes):
            length = json_header_length(headers.get(INFERENCE_HEADER), len(body))
            return request_from_rest_bytes(body, length, model_name)
        request: InferRequest = InferRequest.from_inference_request(body, model_name)
        return request


# --- REST --------------------------------------------------------------------------------


class InferenceMetricsMiddleware:
    """Counts every inference request with its final status, whatever raised where."""

    def __init__(self, app: Any, metrics: PredictorMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        protocol = _protocol_of(scope["path"]) if scope["type"] == "http" else None
        if protocol is None:
            await self.app(scope, receive, send)
            return
        status = 500

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        kind = None
        for name, value in scope["headers"]:
            if name == TRAFFIC_HEADER_BYTES:
                kind = value
                break
        token = mark_traffic(kind)
        start = perf_counter()
        try:
            await self.app(scope, receive, record_status)
        finally:
            self.metrics.observe_request(
                protocol, str(status), outcome_of_http(status), perf_counter() - start
            )
            unmark_traffic(token)


class RequestGuardMiddleware:
    """Judges an inference body's bytes before FastAPI or KServe parse any of it.

    - over ``max_body_bytes``: 413 from the Content-Length header, before a byte of the
      body is read (with ``connection: close``, so the rest is never read either); a
      chunked body is counted as it streams in and refused as soon as it passes the limit;
    - the JSON part (v1: the body; v2: up to ``inference-header-content-length``) must be
      UTF-8 and nest at most ``max_json_depth`` levels (:func:`check_json_text`).

    Refusals use the error table like every other failure: same body, counted as client
    errors, logged at INFO at most (rate-limited). Sits inside
    :class:`InferenceMetricsMiddleware`, which records the status."""

    def __init__(
        self,
        app: Any,
        metrics: PredictorMetrics,
        limits: RequestLimits,
        client_errors: ClientErrorLog,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.limits = limits
        self.client_errors = client_errors

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        protocol = _protocol_of(scope["path"]) if scope["type"] == "http" else None
        if protocol is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            body = await self._read_body(headers, receive)
            if body is None:  # the client went away mid-body: nobody to answer
                return
            await self._check_json(protocol, headers, body)
        except PredictorError as error:
            await self._refuse(scope, protocol, error, send)
            return
        await self.app(scope, replay_body(body, receive), send)

    async def _read_body(self, headers: dict[str, str], receive: Receive) -> bytes | None:
        limit = self.limits.max_body_bytes
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise refuse_payload("request body", limit, int(declared))
        chunks = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise refuse_payload("request body", limit)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _check_json(self, protocol: str, headers: dict[str, str], body: bytes) -> None:
        text = body
        if protocol == "rest-v2":
            text = body[: json_header_length(headers.get(INFERENCE_HEADER), len(body))]
        depth = self.limits.max_json_depth
        if len(text) > CHECK_OFF_LOOP_BYTES:
            await asyncio.to_thread(check_json_text, text, depth)
        else:
            check_json_text(text, depth)

    async def _refuse(self, scope: Scope, protocol: str, error: PredictorError, send: Send) -> None:
        self.metrics.count_error(protocol, error.reason.kind.reason)
        self.client_errors(scope["path"], error)
        content = orjson.dumps({"error": error.message})
        response_headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(content)).encode()),
        ]
        if error.reason is Reason.PAYLOAD_TOO_LARGE:
            response_headers.append((b"connection", b"close"))  # the rest is never read
        start = {"type": "http.response.start", "status": error.http_status}
        await send({**start, "headers": response_headers})
        await send({"type": "http.response.body", "body": content, "more_body": False})


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A listening socket several processes can bind: the kernel spreads connections."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto given explicitly: asyncio sets TCP_NODELAY only on IPPROTO_TCP sockets, and
    # without it Nagle meets delayed ACKs and small responses wait ~40 ms.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class IrisRESTServer(RESTServer):  # type: ignore[misc]
    def __init__(
        self,
        *args: Any,
        host: str,
        metrics: PredictorMetrics,
        access_log: bool,
        reuse_port: bool,
        limits: RequestLimits,
        client_errors: ClientErrorLog,
        fast_lane_model: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.fast_lane_model = fast_lane_model
        self.config.http = CoalescingHttpToolsProtocol  # one send per answer
        self.config.host = host
        self.config.access_log = access_log
        self.metrics = metrics
        self.reuse_port = reuse_port
        self.limits = limits
        self.client_errors = client_errors

    async def start(self) -> None:
        self.create_application()
        sockets = None
        if self.reuse_port:
            sockets = [reuse_port_socket(self.config.host, self.config.port)]
        await self._server.serve(sockets=sockets)

    @property
    def draining(self) -> bool:
        return bool(self._server.should_exit)

    @property
    def listening(self) -> bool:
        return bool(self._server.started)  # uvicorn's: set once its sockets listen

    def _add_middlewares(self, app: FastAPI) -> None:
        # uvicorn's protocols log whenever the access logger has handlers, whatever
        # Config.access_log says; this runs in every worker process.
        access = logging.getLogger("uvicorn.access")
        if not self.config.access_log:
            access.handlers.clear()
            access.propagate = False
        if self.fast_lane_model is not None:  # innermost: after the guard, before FastAPI
            logger.info(
                "REST fast lane on for %s: inference routes served without FastAPI's routing",
                self.fast_lane_model,
            )
            app.add_middleware(
                FastLane,
                dataplane=self.dataplane,
                model_name=self.fast_lane_model,
                on_error=self.error_response,
            )
        # Added before the metrics middleware, so it runs inside it: its refusals count.
        app.add_middleware(
            RequestGuardMiddleware,
            metrics=self.metrics,
            limits=self.limits,
            client_errors=self.client_errors,
        )
        app.add_middleware(InferenceMetricsMiddleware, metrics=self.metrics)

    def _register_endpoints(self, app: FastAPI) -> None:
        # KServe's list without OpenAI/time-series probing, which imports heavy modules.
        app.add_api_route("/", self.dataplane.live)
        registry = exposition_registry()

        async def metrics_endpoint(request: Request) -> Response:
            encoder, content_type = exposition.choose_encoder(request.headers.get("accept", ""))
            return Response(content=encoder(registry), headers={"content-type": content_type})

        app.add_api_route("/metrics", metrics_endpoint, methods=["GET"])
        register_v1_endpoints(app, self.dataplane, self.model_repository_extension)
        register_v2_endpoints(app, self.dataplane, self.model_repository_extension)

    def error_response(self, path: str, exc: Exception) -> JSONResponse:
        """The one answer to an error, from the app's handlers and the fast lane alike."""
        error = as_predictor_error(exc)
        if error.reason is Reason.INTERNAL:
            logger.error("internal error on %s", path, exc_info=exc)
        elif error.reason.is_client_error:
            self.client_errors(path, error)
        protocol = _protocol_of(path)
        if protocol is not None:
            self.metrics.count_error(protocol, error.reason.kind.reason)
        status = error.http_status
        if isinstance(exc, HTTPException) and exc.status_code < 500:
            status = exc.status_code  # 404 for an unknown path, 405, ...: kept
        return JSONResponse({"error": error.message}, status_code=status)

    def _add_exception_handlers(self, app: FastAPI) -> None:
        async def handle(request: Request, exc: Exception) -> JSONResponse:
            return self.error_response(request.url.path, exc)

        async def handle_validation(request: Request, exc: Exception) -> JSONResponse:
            assert isinstance(exc, RequestValidationError)
            return await handle(
                request, PredictorError(Reason.MALFORMED_REQUEST, describe_validation_error(exc))
            )

        for exc_class in (
            PredictorError,
            InvalidInput,
            ModelNotFound,
            ModelNotReady,
            HTTPException,
            Exception,
        ):
            app.add_exception_handler(exc_class, handle)
        app.add_exception_handler(RequestValidationError, handle_validation)


# --- gRPC --------------------------------------------------------------------------------


def decode_infer_request(raw: bytes) -> pb.ModelInferRequest | PredictorError:
    """ModelInfer's request deserializer. A message that is not a valid ModelInferRequest
    (bad wire format, a string field that is not UTF-8) becomes an error value for the
    servicer to report like any other client mistake; gRPC's own handling of a raising
    deserializer would answer INTERNAL and log a traceback."""
    try:
        request: pb.ModelInferRequest = pb.ModelInferRequest.FromString(raw)
    except DecodeError as exc:
        return PredictorError(
            Reason.MALFORMED_REQUEST, f"request is not a valid ModelInferRequest: {exc}"
        )
    return request


GRPC_SERVICE = "inference.GRPCInferenceService"


class _CapturedHandlers:
    """Stands in for a server to collect the generated code's method handlers."""

    def __init__(self) -> None:
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        self.handlers.update(handlers)


class IrisServicer(InferenceServicer):  # type: ignore[misc]
    def __init__(
        self,
        data_plane: DataPlane,
        extension: Any,
        metrics: PredictorMetrics,
        max_message_bytes: int,
        client_errors: ClientErrorLog,
        lane: GrpcLane | None = None,
    ) -> None:
        super().__init__(data_plane, extension)
        self.metrics = metrics
        self.max_message_bytes = max_message_bytes
        self.client_errors = client_errors
        self.lane = lane

    def method_handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        """KServe's generated handlers, with ModelInfer served as client-streaming though
        clients call it unary (the wire is the same): a request over
        ``grpc.max_receive_message_length`` is refused by gRPC core with
        RESOURCE_EXHAUSTED before it is read, and a unary method would never run for it.
        Reading its one message itself, the servicer sees the refusal as "no message" and
        counts it like every other client error.

        ModelInfer answers every error itself; the other methods get KServe's
        exception-to-status conversion wrapped around them once, here, instead of as a
        server interceptor, which would rebuild a handler and two coroutines on every call
        (ModelInfer's included)."""
        captured = _CapturedHandlers()
        grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(self, captured)
        converter = QuietExceptionToStatusInterceptor()
        handlers = {
            name: _with_status_conversion(handler, f"/{GRPC_SERVICE}/{name}", converter)
            for name, handler in captured.handlers.items()
            if name != "ModelInfer"
        }
        handlers["ModelInfer"] = grpc.stream_unary_rpc_method_handler(
            self.ModelInferStream,
            request_deserializer=decode_infer_request,
            response_serializer=pb.ModelInferResponse.SerializeToString,
        )
        return handlers

    async def ModelInferStream(
        self,
        _requests: AsyncIterator[pb.ModelInferRequest | PredictorError],  # read via context
        context: aio.ServicerContext,
    ) -> pb.ModelInferResponse:
        token = mark_traffic(_grpc_traffic(context))
        start = perf_counter()
        code = "OK"
        try:
            # One message: a unary call. ``context.read()``, not ``anext(aiter(requests))``:
            # the async generator behind the iterator cost ~5 % of gRPC req/s.
            request = await context.read()
            if request is aio.EOF:
                # The call is over: cancelled by the client, or refused by gRPC core for
                # its size (RESOURCE_EXHAUSTED, already sent). Count it; nothing to send.
                code = "CANCELLED"
                if not context.cancelled():
                    error = refuse_payload("request message", self.max_message_bytes)
                    code = error.grpc_status
                    self.metrics.count_error("grpc", error.reason.kind.reason)
                    self.client_errors("grpc ModelInfer", error)
                return pb.ModelInferResponse()
            if isinstance(request, PredictorError):
                raise request
            if self.lane is not None and self.lane.takes(request):
                return await self.lane.infer(request)
            return await self.ModelInfer(request, context)
        except Exception as exc:
            error = as_predictor_error(exc)
            if error.reason is Reason.INTERNAL:
                logger.error("internal error in ModelInfer", exc_info=exc)
            elif error.reason.is_client_error:
                self.client_errors("grpc ModelInfer", error)
            code = error.grpc_status
            self.metrics.count_error("grpc", error.reason.kind.reason)
            await context.abort(grpc.StatusCode[code], error.message)
            raise  # unreachable: abort raises
        finally:
            self.metrics.observe_request(
                "grpc", code, outcome_of_grpc(code), perf_counter() - start
            )
            unmark_traffic(token)

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        """KServe's servicer copies the metadata field by field and drops ``versions``."""
        metadata = await self._data_plane.model_metadata(model_name=request.name)
        return pb.ModelMetadataResponse(
            name=metadata["name"],
            versions=metadata.get("versions", []),
            platform=metadata["platform"],
            inputs=metadata["inputs"],
            outputs=metadata["outputs"],
        )

    async def ModelInfer(
        self,
        request: pb.ModelInferRequest,
        context: aio.ServicerContext,
    ) -> pb.ModelInferResponse:
        self.validate_grpc_request(request)
        infer_request = request_from_grpc(request)
        response, _ = await self._data_plane.infer(
            request=infer_request,
            headers=to_headers(context),
            model_name=request.model_name,
        )
        assert isinstance(response, InferResponse)
        message: pb.ModelInferResponse = response.to_grpc()
        return message


class QuietExceptionToStatusInterceptor(ExceptionToStatusInterceptor):  # type: ignore[misc]
    """KServe's interceptor logs every exception with a traceback at ERROR, including the
    AbortError that ``context.abort`` raises after our servicer has already answered with
    the right status: one traceback per bad request. An abort is passed through quietly."""

    async def handle_exception(
        self, ex: Exception, request_or_iterator: Any, context: Any, method_name: str
    ) -> None:
        if isinstance(ex, aio.AbortError):
            raise ex
        await super().handle_exception(ex, request_or_iterator, context, method_name)


def _with_status_conversion(
    handler: grpc.RpcMethodHandler, method: str, converter: QuietExceptionToStatusInterceptor
) -> grpc.RpcMethodHandler:
    """A unary handler whose exceptions become statuses as KServe's interceptor makes them."""
    behavior = handler.unary_unary
    if behavior is None:  # KServe's service has unary methods only; ModelInfer aside
        raise TypeError(f"{method} is not a unary-unary method")

    async def converted(request: Any, context: aio.ServicerContext) -> Any:
        return await converter.intercept(behavior, request, context, method)

    return grpc.unary_unary_rpc_method_handler(
        converted,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class IrisGRPCServer:
    """KServe's GRPCServer with a bind host, our servicer and no per-call log line."""

    def __init__(
        self,
        host: str,
        port: int,
        data_plane: DataPlane,
        extension: Any,
        metrics: PredictorMetrics,
        grace_period: int,
        max_message_bytes: int,
        reuse_port: bool,
        client_errors: ClientErrorLog,
        lane: GrpcLane | None = None,
        process_port: int | None = None,
    ) -> None:
        self.reuse_port = reuse_port
        self.lane = lane
        self.address = _address(host, port)
        # this process's own port (--grpc_process_ports), besides the shared one
        self.process_address = _address(host, process_port) if process_port else None
        self._data_plane, self._extension, self._metrics = data_plane, extension, metrics
        self._grace_period = grace_period
        self._max_message_bytes = max_message_bytes
        self._client_errors = client_errors
        self._server: aio.Server | None = None
        self.listening = False

    async def start(self, max_workers: int) -> None:
        self._server = aio.server(
            futures.ThreadPoolExecutor(max_workers=max_workers),
            options=[
                ("grpc.max_send_message_length", self._max_message_bytes),
                ("grpc.max_receive_message_length", self._max_message_bytes),
                # gRPC's own default is on: off unless sibling processes share the port,
                # so that a port already in use is an error, not a silent split.
                ("grpc.so_reuseport", int(self.reuse_port)),
            ],
        )
        servicer = IrisServicer(
            self._data_plane,
            self._extension,
            self._metrics,
            self._max_message_bytes,
            self._client_errors,
            self.lane,
        )
        handlers = servicer.method_handlers()
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(GRPC_SERVICE, handlers),)
        )
        self._server.add_registered_method_handlers(GRPC_SERVICE, handlers)
        for address in (self.address, self.process_address):
            if address is not None and self._server.add_insecure_port(address) == 0:
                raise OSError(f"cannot bind gRPC to {address}")
        logger.info(
            "gRPC server listening on %s",
            self.address + (f" and {self.process_address}" if self.process_address else ""),
        )
        await self._server.start()
        self.listening = True
        await self._server.wait_for_termination()

    async def stop(self, sig: int | None = None) -> None:
        if self._server is not None:
            await self._server.stop(grace=self._grace_period)


# --- the model server -------------------------------------------------------------------


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop ``--event_loop`` names (``auto``: uvloop when installed).

    KServe's ``ModelServer.start`` runs REST and gRPC under ``asyncio.run`` and passes the
    flag only to a ``uvicorn.Config`` it never runs, so a single process serves on
    asyncio's loop whatever the flag says; here it is honoured. Measured side by side (two
    predictors, 2 processes each, alternating 3 s runs, 8 pairs, forest, 64 connections, on
    the benchmark's 2 cores): uvloop's median gain was +10 % req/s on REST v2 and +14 % on
    gRPC, whose completion queue is polled through the loop."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:  # (an explicit "uvloop" was refused by the settings)
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def freeze_startup_objects() -> None:
    """Move everything allocated so far (KServe, pandas, scikit-learn, the model: some
    200,000 objects) out of the garbage collector's reach. Otherwise every full collection
    walks them all, a pause of ~100 ms here that lands on whichever requests are in flight
    and shows as p99 latency."""
    gc.collect()
    gc.freeze()


class IrisModelServer(ModelServer):  # type: ignore[misc]
    """``kserve.ModelServer`` wired with the classes above: one process's REST and gRPC.

    Several processes (``--workers``) are several of these on the same ports; the parent's
    also supervises the others (:mod:`predictor.processes`)."""

    def __init__(
        self,
        *,
        host: str,
        metrics: PredictorMetrics,
        access_log: bool,
        max_message_bytes: int,
        max_body_bytes: int = RequestLimits.max_body_bytes,
        max_json_depth: int = RequestLimits.max_json_depth,
        fast_lane: bool = True,
        reuse_port: bool = False,
        siblings: ProcessGroup | None = None,
        readiness: tuple[GroupReadiness, int] | None = None,
        process_grpc_port: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(workers=1, **kwargs)
        self.process_grpc_port = process_grpc_port
        self.fast_lane = fast_lane
        self._fast_lane_model: str | None = None
        self.host = host
        self.metrics = metrics
        self.access_log = access_log
        self.max_message_bytes = max_message_bytes
        self.limits = RequestLimits(max_body_bytes, max_json_depth, max_message_bytes)
        self.client_errors = ClientErrorLog(logger)
        self.reuse_port = reuse_port
        self.siblings = siblings
        self.readiness = readiness
        self.dataplane = IrisDataPlane(model_registry=self.registered_models)
        if readiness is not None:
            self.dataplane.group = readiness[0]

    async def _mark_serving(self, group: GroupReadiness, index: int) -> None:
        """Mark this process serving once its REST and gRPC servers both listen."""
        rest, grpc_server = self._rest_server, self._grpc_server
        while not rest.listening or (self.enable_grpc and not grpc_server.listening):
            if rest.draining:
                return
            await asyncio.sleep(0.02)
        group.mark(index)

    def _make_rest_server(self) -> IrisRESTServer:
        return IrisRESTServer(
            "kserve.model_server:app",
            self.dataplane,
            self.model_repository_extension,
            self.http_port,
            workers=1,
            grace_period=self.grace_period,
            event_loop=self.event_loop,
            timeout_keep_alive=self.timeout_keep_alive,
            host=self.host,
            metrics=self.metrics,
            access_log=self.access_log,
            reuse_port=self.reuse_port,
            limits=self.limits,
            client_errors=self.client_errors,
            fast_lane_model=self._fast_lane_model,
        )

    def start(self, models: list[Any]) -> None:
        self._register_and_check_atleast_one_model_is_ready(models)
        lane: GrpcLane | None = None
        if self.fast_lane and len(models) == 1:
            self._fast_lane_model = models[0].name
            if isinstance(models[0], IrisModel):
                lane = GrpcLane(models[0])
                logger.info("gRPC fast lane on for %s", models[0].name)
        rest = self._rest_server = self._make_rest_server()
        self.servers.append(rest.start())
        if self.enable_grpc:
            self._grpc_server = IrisGRPCServer(
                self.host,
                self.grpc_port,
                self.dataplane,
                self.model_repository_extension,
                self.metrics,
                self.grace_period,
                self.max_message_bytes,
                self.reuse_port,
                self.client_errors,
                lane,
                self.process_grpc_port,
            )
            self.servers.append(self._grpc_server.start(self.max_threads))
        if self.siblings is not None:
            self.servers.append(self.siblings.supervise(lambda: rest.draining))
        if self.readiness is not None:
            self.servers.append(self._mark_serving(*self.readiness))
        self.setup_event_loop()
        self.register_signal_handler()
        freeze_startup_objects()
        factory = loop_factory(self.event_loop)
        with asyncio.Runner(loop_factory=factory) as runner:
            logger.info("event loop: %s", type(runner.get_loop()).__module__.split(".")[0])
            runner.run(self._serve())
