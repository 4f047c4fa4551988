"""``python -m gate.router``: the local traffic splitter (what Knative does on a cluster).

One HTTP port proxies REST, one gRPC port proxies gRPC; inference calls go to the canary
with the configured probability and everything else (health, metadata) to stable. The
route table is an immutable object swapped in one assignment, so a weight change never
disturbs a request in flight: it keeps the backend it started with, and a removed
backend's connections are closed only after a grace period.

Admin API on the HTTP port, under ``/router/``:
``GET /router/routes``, ``PUT /router/routes``, ``GET /router/healthz``.
It sits on the hot path, so it is a bare ASGI app and a byte-level gRPC pass-through.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import random
import signal
import sys
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx
import uvicorn
from grpc import aio
from pydantic import BaseModel, Field, ValidationError

logger = logging.getLogger("gate.router")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
    "host",
    "content-length",
}
CLOSE_GRACE_S = 30.0


class BackendSpec(BaseModel):
    http: str = Field(description="base URL, e.g. http://127.0.0.1:8080")
    grpc: str = Field(description="host:port of the gRPC server")


class RoutesSpec(BaseModel):
    stable: BackendSpec | None = None
    canary: BackendSpec | None = None
    canary_weight: int = Field(0, ge=0, le=100)


@dataclass
class Backend:
    spec: BackendSpec
    http: httpx.AsyncClient
    channel: aio.Channel
    requests: int = 0
    errors: int = 0

    @classmethod
    def open(cls, spec: BackendSpec) -> Backend:
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=128)
        return cls(
            spec,
            httpx.AsyncClient(base_url=spec.http, limits=limits, timeout=60.0),
            aio.insecure_channel(spec.grpc),
        )

    async def close(self) -> None:
        await self.http.aclose()
        await self.channel.close()


@dataclass(frozen=True)
class RouteTable:
    stable: Backend | None = None
    canary: Backend | None = None
    canary_weight: int = 0
    _random: random.Random = field(default_factory=random.Random, compare=False)

    def pick(self, inference: bool) -> tuple[str, Backend | None]:
        if (
            inference
            and self.canary is not None
            and self.canary_weight > 0
            and self._random.random() * 100 < self.canary_weight
        ):
            return "canary", self.canary
        return "stable", self.stable

    def describe(self) -> dict[str, Any]:
        def one(backend: Backend | None) -> dict[str, Any] | None:
            if backend is None:
                return None
            return {
                **backend.spec.model_dump(),
                "requests": backend.requests,
                "errors": backend.errors,
            }

        return {
            "stable": one(self.stable),
            "canary": one(self.canary),
            "canary_weight": self.canary_weight,
        }


def _is_inference(path: str) -> bool:
    return path.endswith(":predict") or path.endswith("/infer")


class Router:
    def __init__(self, initial: RoutesSpec) -> None:
        self.table = RouteTable()
        self._pending_close: set[asyncio.Task[None]] = set()
        self._initial = initial

    # --- route table -----------------------------------------------------------------------
    def apply(self, spec: RoutesSpec) -> None:
        old = self.table
        if spec.canary is None and spec.canary_weight:
            raise ValueError("canary_weight > 0 needs a canary backend")
        if spec.stable is None and spec.canary is not None and spec.canary_weight < 100:
            raise ValueError("without a stable backend the canary weight must be 100")

        def reuse(wanted: BackendSpec | None) -> Backend | None:
            if wanted is None:
                return None
            for backend in (old.stable, old.canary):
                if backend is not None and backend.spec == wanted:
                    return backend
            return Backend.open(wanted)

        self.table = RouteTable(reuse(spec.stable), reuse(spec.canary), spec.canary_weight)
        kept = {id(b) for b in (self.table.stable, self.table.canary) if b is not None}
        for backend in (old.stable, old.canary):
            if backend is not None and id(backend) not in kept:
                task = asyncio.get_running_loop().create_task(self._close_later(backend))
                self._pending_close.add(task)
                task.add_done_callback(self._pending_close.discard)
        logger.info("routes: %s", json.dumps(self.table.describe()))

    async def _close_later(self, backend: Backend) -> None:
        await asyncio.sleep(CLOSE_GRACE_S)  # requests in flight finish on the old backend
        await backend.close()

    # --- HTTP --------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        path: str = scope["path"]
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        if path.startswith("/router/"):
            status, payload = self._admin(scope["method"], path, body)
            await _respond(
                send, status, json.dumps(payload).encode(), [(b"content-type", b"application/json")]
            )
            return
        _, backend = self.table.pick(_is_inference(path))
        if backend is None:
            await _respond(
                send,
                503,
                b'{"error": "no backend configured"}',
                [(b"content-type", b"application/json")],
            )
            return
        backend.requests += 1
        headers = [(k, v) for k, v in scope["headers"] if k.decode().lower() not in HOP_BY_HOP]
        target = path + (f"?{scope['query_string'].decode()}" if scope["query_string"] else "")
        try:
            response = await backend.http.request(
                scope["method"], target, headers=headers, content=body
            )
        except httpx.HTTPError as exc:
            backend.errors += 1
            await _respond(
                send,
                502,
                json.dumps({"error": f"upstream: {exc!r}"}).encode(),
                [(b"content-type", b"application/json")],
            )
            return
        if response.status_code >= 500:
            backend.errors += 1
        out = [
            (k.encode(), v.encode())
            for k, v in response.headers.items()
            if k.lower() not in HOP_BY_HOP
        ]
        await _respond(send, response.status_code, response.content, out)

    def _admin(self, method: str, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        if path == "/router/healthz":
            return 200, {"status": "ok"}
        if path != "/router/routes":
            return 404, {"error": f"unknown admin path {path}"}
        if method == "GET":
            return 200, self.table.describe()
        if method != "PUT":
            return 405, {"error": "use GET or PUT"}
        try:
            self.apply(RoutesSpec.model_validate_json(body))
        except (ValidationError, ValueError) as exc:
            return 400, {"error": str(exc)}
        return 200, self.table.describe()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.apply(self._initial)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    # --- gRPC --------------------------------------------------------------------------------
    def grpc_handler(self) -> grpc.GenericRpcHandler:
        router = self

        class Passthrough(grpc.GenericRpcHandler):  # type: ignore[misc]
            def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
                method = details.method

                async def forward(request: bytes, context: aio.ServicerContext) -> bytes:
                    _, backend = router.table.pick(method.endswith("/ModelInfer"))
                    if backend is None:
                        await context.abort(grpc.StatusCode.UNAVAILABLE, "no backend configured")
                    assert backend is not None
                    backend.requests += 1
                    call = backend.channel.unary_unary(method)
                    metadata = tuple(
                        (k, v)
                        for k, v in (context.invocation_metadata() or ())
                        if not k.startswith(":")
                    )
                    try:
                        reply: bytes = await call(
                            request, metadata=metadata, timeout=context.time_remaining()
                        )
                    except aio.AioRpcError as exc:
                        if exc.code() not in (
                            grpc.StatusCode.INVALID_ARGUMENT,
                            grpc.StatusCode.NOT_FOUND,
                        ):
                            backend.errors += 1
                        await context.abort(exc.code(), exc.details() or "")
                    return reply

                return grpc.unary_unary_rpc_method_handler(forward)

        return Passthrough()


async def _respond(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def serve(router: Router, host: str, http_port: int, grpc_port: int) -> None:
    grpc_server = aio.server()
    grpc_server.add_generic_rpc_handlers((router.grpc_handler(),))
    address = f"[{host}]:{grpc_port}" if ":" in host else f"{host}:{grpc_port}"
    if grpc_server.add_insecure_port(address) == 0:
        raise OSError(f"cannot bind gRPC to {address}")
    await grpc_server.start()
    config = uvicorn.Config(
        router,
        host=host,
        port=http_port,
        access_log=False,
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=10,
    )
    server = uvicorn.Server(config)
    logger.info("router on http://%s:%d and %s", host, http_port, address)
    try:
        await server.serve()  # returns on SIGTERM/SIGINT after draining HTTP
    finally:
        await grpc_server.stop(grace=10)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gate.router", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--stable-http", default="", help="stable predictor base URL")
    parser.add_argument("--stable-grpc", default="", help="stable predictor host:port")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    initial = RoutesSpec()
    if args.stable_http and args.stable_grpc:
        initial = RoutesSpec(stable=BackendSpec(http=args.stable_http, grpc=args.stable_grpc))
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(Router(initial), args.host, args.http_port, args.grpc_port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
