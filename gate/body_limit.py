"""Request bodies are bounded before anything parses them.

FastAPI reads a JSON body whole, parses it and validates it before a route's dependencies
run, the token check included: without a bound, one POST of a few gigabytes (say a
feedback batch whose labels are lists of ten thousand rows) is held in memory by anyone
who can reach the port. This ASGI middleware answers 413 as soon as a body is declared
(``Content-Length``) or read (chunked) past ``max_bytes``, naming the limit, and never
lets more than that reach the app. Routes that bound their own bodies (payload events,
:mod:`gate.ingest_api`, up to 16 MiB) are left to do so.
"""

from __future__ import annotations

import json

from fastapi import HTTPException, status
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int, exempt: tuple[str, ...] = ()) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.exempt = exempt
        self.detail = f"request body over {max_bytes} bytes (GATE_MAX_BODY_BYTES)"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or str(scope["path"]).startswith(self.exempt):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        received = 0

        async def bounded() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # raised inside the app: its error handlers answer 413 (FastAPI passes
                    # an HTTPException raised while reading a body through as it is)
                    raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, self.detail)
            return message

        await self.app(scope, bounded, send)

    async def _refuse(self, send: Send) -> None:
        body = json.dumps({"detail": self.detail}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status.HTTP_413_CONTENT_TOO_LARGE,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


__all__ = ["BodyLimit"]
