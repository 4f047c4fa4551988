"""The router's gRPC port: a byte-level pass-through, requests and replies never decoded.

``ModelInfer``, ``ModelMetadata`` and ``ModelReady`` are routed by the model name in
field 1 of the raw request; other methods (``ServerLive`` ...) go to the first model's
stable. An unknown model is NOT_FOUND. A canary ``ModelInfer`` that cannot connect is
retried once on stable and counted as a canary error; a status sent by a running canary
is passed on unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from grpc import aio

from gate.local.route_table import (
    Backend,
    MalformedMessage,
    Routes,
    RouteTable,
    grpc_model_name,
    shown,
)

# What grpc-core says when a call never got an answer from a server (grpcio 1.85, seen
# against a dead port and a SIGKILLed predictor): "failed to connect to all addresses;
# ... Connection refused" and, for a call in flight, "Stream removed (Socket closed)".
# An error a running server sends carries that server's own message (the predictor's
# injected fault is UNAVAILABLE "injected fault ...") and is never retried.
GRPC_NOT_CONNECTED = re.compile(
    r"failed to connect|connection refused|connection reset|socket closed|broken pipe"
    r"|connection aborted|endpoint closing",
    re.IGNORECASE,
)
GRPC_SERVICE = "/inference.GRPCInferenceService/"
MAX_CACHED_METHODS = 64  # method names come from clients: the cache is bounded
GRPC_MODEL_METHODS = {f"{GRPC_SERVICE}{m}" for m in ("ModelInfer", "ModelMetadata", "ModelReady")}


class GrpcFailure(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


def grpc_not_connected(exc: aio.AioRpcError) -> bool:
    """The call never reached a running server (safe to send elsewhere)."""
    if exc.code() != grpc.StatusCode.UNAVAILABLE:
        return False
    return GRPC_NOT_CONNECTED.search(exc.details() or "") is not None


class GrpcPassthrough(grpc.GenericRpcHandler):  # type: ignore[misc]
    """Every unary method of every service, forwarded as raw bytes."""

    def __init__(self, routes: Routes) -> None:
        self.routes = routes
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method: str = details.method
        handler = self._handlers.get(method)
        if handler is None:  # one handler per method, built once (this runs for every call)
            handler = grpc.unary_unary_rpc_method_handler(self._forwarder(method))
            if len(self._handlers) < MAX_CACHED_METHODS:
                self._handlers[method] = handler
        return handler

    def _forwarder(self, method: str) -> Callable[[bytes, aio.ServicerContext], Awaitable[bytes]]:
        async def forward(request: bytes, context: aio.ServicerContext) -> bytes:
            try:
                return await self._forward(method, request, context)
            except GrpcFailure as failure:
                await context.abort(failure.code, failure.details)
                raise  # abort raises; this line is never reached

        return forward

    def _table(self, method: str, request: bytes) -> RouteTable:
        if method in GRPC_MODEL_METHODS:
            try:
                model = grpc_model_name(request)
            except MalformedMessage as exc:
                raise GrpcFailure(
                    grpc.StatusCode.INVALID_ARGUMENT, f"malformed request: {exc}"
                ) from exc
            table = self.routes.get(model)
            if table is None and self.routes.tables:
                raise GrpcFailure(
                    grpc.StatusCode.NOT_FOUND, f"Model with name {shown(model)} does not exist."
                )
        else:
            table = self.routes.first()
        if table is None:
            raise GrpcFailure(grpc.StatusCode.UNAVAILABLE, "no backend configured")
        return table

    async def _forward(self, method: str, request: bytes, context: aio.ServicerContext) -> bytes:
        table = self._table(method, request)
        role, backend = table.pick(method.endswith("/ModelInfer"))
        if backend is None:
            raise GrpcFailure(grpc.StatusCode.UNAVAILABLE, "no backend configured")
        metadata = tuple(
            (k, v) for k, v in (context.invocation_metadata() or ()) if not k.startswith(":")
        )
        try:
            return await _grpc_call(backend, role, method, request, metadata, context)
        except aio.AioRpcError as exc:
            fallback = table.fallback(role)
            if fallback is None or not grpc_not_connected(exc):
                raise _failure(exc) from exc
            backend.stable_retries += 1
            try:
                return await _grpc_call(fallback, "stable", method, request, metadata, context)
            except aio.AioRpcError as retry_exc:
                raise _failure(retry_exc) from retry_exc


async def _grpc_call(
    backend: Backend,
    role: str,
    method: str,
    request: bytes,
    metadata: tuple[tuple[str, Any], ...],
    context: aio.ServicerContext,
) -> bytes:
    backend.requests += 1
    try:
        reply: bytes = await backend.call(method)(
            request, metadata=metadata, timeout=context.time_remaining()
        )
    except aio.AioRpcError as exc:
        if grpc_not_connected(exc):
            backend.mark(False, role)
        if exc.code() not in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND):
            backend.errors += 1  # a server-side failure (client mistakes are not errors)
        raise
    if not backend.reachable:
        backend.mark(True, role)
    return reply


def _failure(exc: aio.AioRpcError) -> GrpcFailure:
    code: grpc.StatusCode = exc.code()
    details: str = exc.details() or ""
    return GrpcFailure(code, details)
