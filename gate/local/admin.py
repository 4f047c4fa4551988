"""The router's admin API: a tiny ASGI app on its own loopback port, behind a bearer token.

``GET /router/healthz`` (no token), ``GET /router/routes``, ``GET /router/routes/{model}``,
``PUT /router/routes/{model}``. Only the gate calls it; clients never reach this port.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from pydantic import ValidationError

from gate.local.asgi import Receive, Scope, Send, respond
from gate.local.route_table import Routes, RoutesSpec, shown

MAX_BODY_BYTES = 64 * 1024
TOKEN_MIN_CHARS = 16


class AdminError(Exception):
    """An answer other than 200: its status, message and extra headers."""

    def __init__(
        self, status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or []


def validation_message(exc: ValidationError) -> str:
    """``field.path: reason; ...`` without pydantic's URLs and input echoes."""
    problems = []
    for error in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(part) for part in error["loc"])
        reason = str(error["msg"]).removeprefix("Value error, ")
        problems.append(f"{where}: {reason}" if where else reason)
    return "; ".join(problems)


class AdminApp:
    def __init__(self, routes: Routes, token: str) -> None:
        if len(token) < TOKEN_MIN_CHARS:
            raise ValueError(f"the admin token needs at least {TOKEN_MIN_CHARS} characters")
        self.routes = routes
        self._expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        try:
            status, payload = await self._handle(scope, receive)
            extra: list[tuple[bytes, bytes]] = []
        except AdminError as exc:
            status, payload, extra = exc.status, {"error": exc.message}, exc.headers
        headers = [(b"content-type", b"application/json"), *extra]
        await respond(send, status, headers, json.dumps(payload).encode())

    async def _handle(self, scope: Scope, receive: Receive) -> tuple[int, dict[str, Any]]:
        method: str = scope["method"]
        path: str = scope["path"]
        if path == "/router/healthz":  # readiness probe: no token
            _allow(method, "GET")
            return 200, {"status": "ok"}
        self._authorize(scope)
        if path == "/router/routes":
            _allow(method, "GET")
            return 200, self.routes.describe()
        if not path.startswith("/router/routes/"):
            raise AdminError(404, "not found")
        model = path[len("/router/routes/") :]
        _allow(method, "GET", "PUT")
        if method == "GET":
            table = self.routes.get(model)
            if table is None:
                raise AdminError(404, f"no routes for model {shown(model)}")
            return 200, table.describe()
        body = await _read_body(scope, receive)
        try:
            spec = RoutesSpec.model_validate_json(body)
        except ValidationError as exc:
            raise AdminError(400, validation_message(exc)) from exc
        try:
            table = self.routes.apply(model, spec)
        except ValueError as exc:
            raise AdminError(400, str(exc)) from exc
        return 200, table.describe()

    def _authorize(self, scope: Scope) -> None:
        given = b""
        for name, value in scope["headers"]:
            if name.lower() == b"authorization":
                given = value
        # the scheme is case-insensitive; the token is compared in constant time
        if given[:7].lower() == b"bearer ":
            given = b"Bearer " + given[7:]
        if not hmac.compare_digest(given, self._expected):
            raise AdminError(
                401, "missing or wrong bearer token", [(b"www-authenticate", b"Bearer")]
            )


def _allow(method: str, *allowed: str) -> None:
    if method not in allowed:
        raise AdminError(
            405, f"use {' or '.join(allowed)}", [(b"allow", ", ".join(allowed).encode())]
        )


async def _read_body(scope: Scope, receive: Receive) -> bytes:
    for name, value in scope["headers"]:
        if name.lower() == b"content-length" and value.isdigit() and int(value) > MAX_BODY_BYTES:
            raise AdminError(413, f"body larger than {MAX_BODY_BYTES} bytes")
    body = bytearray()
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise AdminError(400, "client disconnected")
        body += message.get("body", b"")
        if len(body) > MAX_BODY_BYTES:
            raise AdminError(413, f"body larger than {MAX_BODY_BYTES} bytes")
        more = message.get("more_body", False)
    return bytes(body)
