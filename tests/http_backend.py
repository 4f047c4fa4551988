"""A tiny HTTP backend for the router's proxy tests: ``python -m tests.http_backend --port N``.

A raw ASGI app under uvicorn (httptools parser), on 127.0.0.1 only. Routes:

- ``POST /v2/models/echo/infer``: reads the whole body as it streams (never keeps it) and
  answers JSON ``{"bytes", "sha256", "headers", "peer_port"}``: the body's length and
  digest, the request headers (names lowercased, repeats joined with ", ") and the client
  port of the connection it came on (the router's upstream connection). With ``?delay=S``
  it waits S seconds before it starts reading.
- ``GET|HEAD /v2/models/echo/stream``: a chunked answer (no content-length): ``first``, a
  pause of :data:`STREAM_PAUSE_S`, then ``second``. HEAD gets the same head as GET would,
  ``transfer-encoding: chunked`` included, and no body.
- ``GET|HEAD /v2/models/echo/blob``: :data:`BLOB` with a content-length (no body for HEAD).
- ``GET /v2/models/echo/bytes?n=N``: N bytes of :func:`pattern` in 64 KiB chunks (chunked,
  sent as fast as the connection takes them: uvicorn waits while its writes are paused).
- ``POST /v2/models/echo/early``: 413 at once, without reading the body.
- ``GET /v2/health/ready``: 200.
- anything else: 404.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import uvicorn

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

PREFIX = "/v2/models/echo"
STREAM_PAUSE_S = 0.5
BLOB = b"0123456789abcdef" * 64  # 1 KiB
FIRST_CHUNK = b"first\n"
SECOND_CHUNK = b"second\n"


async def _json(send: Send, status: int, payload: dict[str, Any]) -> None:
    body = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _headers(scope: Scope) -> dict[str, str]:
    out: dict[str, str] = {}
    for raw_name, raw_value in scope["headers"]:
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        out[name] = f"{out[name]}, {value}" if name in out else value
    return out


def _query(scope: Scope) -> dict[str, str]:
    text: str = scope["query_string"].decode("latin-1")
    return dict(part.split("=", 1) for part in text.split("&") if "=" in part)


async def _infer(scope: Scope, receive: Receive, send: Send) -> None:
    delay = float(_query(scope).get("delay", "0"))
    if delay > 0:  # the body piles up wherever nothing holds it back
        await asyncio.sleep(delay)
    digest = hashlib.sha256()
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return  # the client (the router) gave up on this request
        chunk: bytes = message.get("body", b"")
        digest.update(chunk)
        size += len(chunk)
        if not message.get("more_body", False):
            break
    client = scope.get("client")
    await _json(
        send,
        200,
        {
            "bytes": size,
            "sha256": digest.hexdigest(),
            "headers": _headers(scope),
            "peer_port": client[1] if client else None,
        },
    )


async def _stream(method: str, send: Send) -> None:
    headers = [(b"content-type", b"text/plain")]
    if method == "HEAD":  # the head a GET gets (uvicorn adds the framing itself for GET)
        headers.append((b"transfer-encoding", b"chunked"))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    if method == "HEAD":
        await send({"type": "http.response.body", "body": b""})
        return
    await send({"type": "http.response.body", "body": FIRST_CHUNK, "more_body": True})
    await asyncio.sleep(STREAM_PAUSE_S)
    await send({"type": "http.response.body", "body": SECOND_CHUNK, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


def pattern(size: int) -> bytes:
    """The bytes ``/bytes`` sends: a counter, so a lost or repeated chunk shows."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += b"%015d\n" % counter
        counter += 1
    return bytes(out[:size])


DOWNLOAD_CHUNK = 64 * 1024
PATTERN = pattern(DOWNLOAD_CHUNK * 16)


async def _bytes(scope: Scope, send: Send) -> None:
    total = int(_query(scope).get("n", "0"))
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/octet-stream")],
        }
    )
    sent = 0
    while sent < total:
        start = sent % len(PATTERN)
        piece = PATTERN[start : start + min(DOWNLOAD_CHUNK, total - sent)]
        await send({"type": "http.response.body", "body": piece, "more_body": True})
        sent += len(piece)
    await send({"type": "http.response.body", "body": b""})


async def _blob(method: str, send: Send) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/octet-stream"),
                (b"content-length", str(len(BLOB)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": b"" if method == "HEAD" else BLOB})


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return  # lifespan is off; nothing else is served
    method: str = scope["method"]
    path: str = scope["path"]
    if path == f"{PREFIX}/infer" and method == "POST":
        await _infer(scope, receive, send)
    elif path == f"{PREFIX}/stream" and method in ("GET", "HEAD"):
        await _stream(method, send)
    elif path == f"{PREFIX}/blob" and method in ("GET", "HEAD"):
        await _blob(method, send)
    elif path == f"{PREFIX}/bytes" and method == "GET":
        await _bytes(scope, send)
    elif path == f"{PREFIX}/early" and method == "POST":
        await _json(send, 413, {"error": "request body too large"})
    elif path == "/v2/health/ready" and method in ("GET", "HEAD"):
        await _json(send, 200, {"ready": True})
    else:
        await _json(send, 404, {"error": f"no route for {method} {path}"})


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.http_backend", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        http="httptools",
        lifespan="off",
        ws="none",
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
