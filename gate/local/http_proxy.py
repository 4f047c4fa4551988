"""The router's client-facing REST port: an ASGI app that forwards to a model's backend.

The model comes from the path; inference calls (``:predict``, ``/infer``) take the
weighted pick, everything else goes to the model's stable. A canary call that cannot
connect is retried once on stable (inference has no side effects) and counted as a canary
error; an answer from a running canary, even a 5xx, is passed on unchanged. Bodies are
forwarded as raw bytes (no re-encoding); hop-by-hop headers are not forwarded, and the
upstream's ``date`` and ``server`` headers are passed on exactly once.
"""

from __future__ import annotations

import email.utils
import json
import time
from typing import Any

import httpx

from gate.local.asgi import Receive, Scope, Send, respond
from gate.local.route_table import Backend, Routes, rest_target, shown

HOP_BY_HOP = {
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"transfer-encoding",
    b"te",
    b"trailer",
    b"upgrade",
    b"proxy-authorization",
    b"proxy-authenticate",
    b"host",
    b"content-length",
}
ONCE = (b"date", b"server")  # a response carries the upstream's, exactly once
MAX_PROXY_BODY_BYTES = 64 * 1024 * 1024
JSON = [(b"content-type", b"application/json")]

# Raised by ``AsyncClient.send(..., stream=True)`` before any response head arrived, i.e.
# the backend is not there: "All connection attempts failed" (ConnectError) for a dead
# port, "Server disconnected without sending a response." (RemoteProtocolError) for a
# request in flight when it died. A malformed head from a running server would also be a
# RemoteProtocolError; predictors do not send those.
NOT_CONNECTED = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.RemoteProtocolError,
    httpx.ReadError,
    httpx.WriteError,
)


class _HttpDate:
    """The ``date`` header value, formatted at most once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def __call__(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = email.utils.formatdate(now, usegmt=True).encode()
        return self._value


http_date = _HttpDate()


class NotConnected(Exception):
    """The backend never answered: no connection, or it closed before a response head."""


class HttpProxy:
    """The client-facing REST port (ASGI)."""

    def __init__(self, routes: Routes) -> None:
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        if path == "/router" or path.startswith("/router/"):  # the admin API has its own port
            await _respond_json(send, 404, {"error": "not found"})
            return
        body = await _read_body(receive)
        if body is None:
            await _respond_json(send, 413, {"error": "request body too large"})
            return
        model, inference = rest_target(path)
        table = self.routes.first() if model is None else self.routes.get(model)
        if table is None:
            if model is None or not self.routes.tables:
                await _respond_json(send, 503, {"error": "no backend configured"})
            else:
                error = f"Model with name {shown(model)} does not exist."
                await _respond_json(send, 404, {"error": error})
            return
        role, backend = table.pick(inference)
        if backend is None:
            await _respond_json(send, 503, {"error": "no backend configured"})
            return
        raw_path: bytes = scope.get("raw_path") or path.encode()
        query: bytes = scope["query_string"]
        target = (raw_path + (b"?" + query if query else b"")).decode("latin-1")
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in HOP_BY_HOP]
        request = (scope["method"], target, headers, body)
        try:
            answer = await self._exchange(backend, role, request)
        except NotConnected as exc:
            backend.errors += 1
            fallback = table.fallback(role)
            if fallback is None:
                await _respond_json(send, 502, {"error": f"upstream: {exc}"})
                return
            backend.stable_retries += 1
            try:
                answer = await self._exchange(fallback, "stable", request)
            except (NotConnected, httpx.HTTPError) as retry_exc:
                fallback.errors += 1
                await _respond_json(send, 502, {"error": f"upstream: {retry_exc}"})
                return
        except httpx.HTTPError as exc:
            backend.errors += 1
            await _respond_json(send, 502, {"error": f"upstream: {exc!r}"})
            return
        await respond(send, *answer)

    @staticmethod
    async def _exchange(
        backend: Backend,
        role: str,
        request: tuple[str, str, list[tuple[bytes, bytes]], bytes],
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        method, target, headers, body = request
        backend.requests += 1
        outgoing = backend.http.build_request(method, target, headers=headers, content=body)
        try:
            response = await backend.http.send(outgoing, stream=True)
        except NOT_CONNECTED as exc:
            backend.mark(False, role)
            raise NotConnected(repr(exc)) from exc
        if not backend.reachable:
            backend.mark(True, role)
        try:
            content = b"".join([chunk async for chunk in response.aiter_raw()])
        finally:
            await response.aclose()
        if response.status_code >= 500:
            backend.errors += 1
        kept: list[tuple[bytes, bytes]] = []
        seen: set[bytes] = set()
        for key, value in response.headers.raw:
            name = key.lower()
            if name in HOP_BY_HOP or (name in ONCE and name in seen):
                continue
            seen.add(name)
            kept.append((key, value))
        if b"date" not in seen:
            kept.append((b"date", http_date()))
        return response.status_code, kept, content


async def _read_body(receive: Receive) -> bytes | None:
    body = bytearray()
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        if len(body) > MAX_PROXY_BODY_BYTES:
            return None
        more = message.get("more_body", False)
    return bytes(body)


async def _respond_json(send: Send, status: int, payload: dict[str, Any]) -> None:
    await respond(send, status, [*JSON, (b"date", http_date())], json.dumps(payload).encode())
