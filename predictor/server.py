"""KServe's ModelServer, adjusted where it falls short for us.

- binds to a chosen host (KServe 0.21 always binds 0.0.0.0 / [::]);
- maps every failure through :mod:`predictor.errors`, on REST and gRPC alike, so a client
  mistake is never a 500 and the two protocols report it with the same message;
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
from collections.abc import Awaitable, Callable, MutableMapping
from concurrent import futures
from time import perf_counter
from typing import Any

import grpc
import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
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

from predictor.errors import (
    PredictorError,
    Reason,
    outcome_of_grpc,
    outcome_of_http,
)
from predictor.inputs import SUPPORTED_DATATYPES
from predictor.metrics import PredictorMetrics, exposition_registry
from predictor.processes import ProcessGroup

logger = logging.getLogger(__name__)
INFERENCE_HEADER = "inference-header-content-length"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


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
    return PredictorError(Reason.INTERNAL, "internal error")


def describe_validation_error(exc: RequestValidationError) -> str:
    """FastAPI's schema error as one line a client can act on."""
    errors = exc.errors()
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        return f"request body is not valid JSON: {first.get('ctx', {}).get('error', '')}"
    where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "InferenceRequest"))
    return f"malformed request: {where}: {first.get('msg', 'invalid')}"


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


def request_from_rest_bytes(body: bytes, json_length: int, model_name: str) -> InferRequest:
    """Binary-tensor REST requests, decoded without reshaping so the model judges shapes."""
    try:
        header = orjson.loads(body[:json_length])
        inputs = []
        offset = json_length
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
                size = int(params["binary_data_size"])
                tensor._raw_data = body[offset : offset + size]
                offset += size
            inputs.append(tensor)
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
            # No header means the whole body is JSON: clients such as tritonclient send
            # JSON-only requests without a Content-Type.
            length = headers.get(INFERENCE_HEADER, str(len(body)))
            if not length.isdigit() or int(length) > len(body):
                raise PredictorError(
                    Reason.MALFORMED_REQUEST,
                    f"'{INFERENCE_HEADER}' must be the byte length of the JSON header "
                    f"(at most {len(body)}), got {length!r}",
                )
            return request_from_rest_bytes(body, int(length), model_name)
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

        start = perf_counter()
        try:
            await self.app(scope, receive, record_status)
        finally:
            self.metrics.observe_request(
                protocol, str(status), outcome_of_http(status), perf_counter() - start
            )


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
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.config.host = host
        self.config.access_log = access_log
        self.metrics = metrics
        self.reuse_port = reuse_port

    async def start(self) -> None:
        self.create_application()
        sockets = None
        if self.reuse_port:
            sockets = [reuse_port_socket(self.config.host, self.config.port)]
        await self._server.serve(sockets=sockets)

    @property
    def draining(self) -> bool:
        return bool(self._server.should_exit)

    def _add_middlewares(self, app: FastAPI) -> None:
        # uvicorn's protocols log whenever the access logger has handlers, whatever
        # Config.access_log says; this runs in every worker process.
        access = logging.getLogger("uvicorn.access")
        if not self.config.access_log:
            access.handlers.clear()
            access.propagate = False
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

    def _add_exception_handlers(self, app: FastAPI) -> None:
        metrics = self.metrics

        async def handle(request: Request, exc: Exception) -> JSONResponse:
            error = as_predictor_error(exc)
            if error.reason is Reason.INTERNAL:
                logger.error("internal error on %s", request.url.path, exc_info=exc)
            protocol = _protocol_of(request.url.path)
            if protocol is not None:
                metrics.count_error(protocol, error.reason.kind.reason)
            return JSONResponse({"error": error.message}, status_code=error.http_status)

        async def handle_validation(request: Request, exc: Exception) -> JSONResponse:
            assert isinstance(exc, RequestValidationError)
            return await handle(
                request, PredictorError(Reason.MALFORMED_REQUEST, describe_validation_error(exc))
            )

        for exc_class in (PredictorError, InvalidInput, ModelNotFound, ModelNotReady, Exception):
            app.add_exception_handler(exc_class, handle)
        app.add_exception_handler(RequestValidationError, handle_validation)


# --- gRPC --------------------------------------------------------------------------------


class IrisServicer(InferenceServicer):  # type: ignore[misc]
    def __init__(self, data_plane: DataPlane, extension: Any, metrics: PredictorMetrics) -> None:
        super().__init__(data_plane, extension)
        self.metrics = metrics

    async def ModelInfer(
        self,
        request: pb.ModelInferRequest,
        context: aio.ServicerContext,
    ) -> pb.ModelInferResponse:
        start = perf_counter()
        code = "OK"
        try:
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
        except Exception as exc:
            error = as_predictor_error(exc)
            if error.reason is Reason.INTERNAL:
                logger.error("internal error in ModelInfer", exc_info=exc)
            code = error.grpc_status
            self.metrics.count_error("grpc", error.reason.kind.reason)
            await context.abort(grpc.StatusCode[code], error.message)
            raise  # unreachable: abort raises
        finally:
            self.metrics.observe_request(
                "grpc", code, outcome_of_grpc(code), perf_counter() - start
            )


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
    ) -> None:
        self.reuse_port = reuse_port
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._data_plane, self._extension, self._metrics = data_plane, extension, metrics
        self._grace_period = grace_period
        self._max_message_bytes = max_message_bytes
        self._server: aio.Server | None = None

    async def start(self, max_workers: int) -> None:
        self._server = aio.server(
            futures.ThreadPoolExecutor(max_workers=max_workers),
            interceptors=(ExceptionToStatusInterceptor(),),
            options=[
                ("grpc.max_send_message_length", self._max_message_bytes),
                ("grpc.max_receive_message_length", self._max_message_bytes),
                # gRPC's own default is on: off unless sibling processes share the port,
                # so that a port already in use is an error, not a silent split.
                ("grpc.so_reuseport", int(self.reuse_port)),
            ],
        )
        grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            IrisServicer(self._data_plane, self._extension, self._metrics), self._server
        )
        if self._server.add_insecure_port(self.address) == 0:
            raise OSError(f"cannot bind gRPC to {self.address}")
        logger.info("gRPC server listening on %s", self.address)
        await self._server.start()
        await self._server.wait_for_termination()

    async def stop(self, sig: int | None = None) -> None:
        if self._server is not None:
            await self._server.stop(grace=self._grace_period)


# --- the model server -------------------------------------------------------------------


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
        reuse_port: bool = False,
        siblings: ProcessGroup | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(workers=1, **kwargs)
        self.host = host
        self.metrics = metrics
        self.access_log = access_log
        self.max_message_bytes = max_message_bytes
        self.reuse_port = reuse_port
        self.siblings = siblings
        self.dataplane = IrisDataPlane(model_registry=self.registered_models)

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
        )

    def start(self, models: list[Any]) -> None:
        self._register_and_check_atleast_one_model_is_ready(models)
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
            )
            self.servers.append(self._grpc_server.start(self.max_threads))
        if self.siblings is not None:
            self.servers.append(self.siblings.supervise(lambda: rest.draining))
        self.setup_event_loop()
        self.register_signal_handler()
        freeze_startup_objects()
        asyncio.run(self._serve())
