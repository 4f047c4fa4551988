"""The router's side of its backends: per backend, a pool of keep-alive HTTP/1.1 connections.

Each connection is an asyncio ``Protocol`` with httptools' response parser (the C parser
uvicorn uses): no per-request objects beyond the parser callbacks, bytes written to the
transport as they come. One exchange at a time per connection; a connection goes back to
the pool only after a complete response that allows keep-alive, and leaves it as soon as
the backend closes it (so an idle connection the backend timed out is not handed out).
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Protocol, cast
from urllib.parse import urlsplit

import httptools

CONNECT_TIMEOUT_S = 5.0
MAX_IDLE_PER_BACKEND = 256


class UpstreamError(Exception):
    """No answer from the backend: it could not be reached, or closed the connection
    (or sent something that is not HTTP) before a response head arrived."""


class Exchange(Protocol):
    """What a connection reports to the request it is carrying (see ``http_proxy``)."""

    def response_head(
        self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]], framed: bool
    ) -> None: ...

    def response_body(self, data: bytes) -> None: ...

    def response_end(self) -> None: ...

    def upstream_failed(self, error: UpstreamError, answered: bool) -> None: ...

    def pause_body(self) -> None: ...

    def resume_body(self) -> None: ...


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection to a backend."""

    def __init__(self, pool: HttpPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: Exchange | None = None
        self.closed = False
        self.reusable = True  # False once answered before its request was fully sent
        self._reason = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._answered = False  # the current exchange has its response head
        self._head_only = False  # a HEAD request: the response has no body to read
        self._framed = False  # the response carries content-length or chunked framing
        self._paused = False  # reading paused for the client's back-pressure

    # --- used by the exchange ----------------------------------------------------------

    def start(self, exchange: Exchange, head: bytes, body: bytes, head_only: bool) -> None:
        assert self.transport is not None and self.exchange is None
        self.exchange = exchange
        self.reusable = True
        self._answered = False
        self._head_only = head_only
        self._headers = []
        self._reason = b""
        self.transport.write(head + body if body else head)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed and not self._paused:
            self._paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed and self._paused:
            self._paused = False
            self.transport.resume_reading()

    def abandon(self) -> None:
        """The exchange gave up on this connection (timeout, client gone): close it."""
        self.exchange = None
        self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()

    # --- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError(f"backend sent a malformed response: {exc}"))

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        exchange, self.exchange = self.exchange, None
        if exchange is None:
            return
        if self._answered and not self._framed:
            exchange.response_end()  # a body delimited by the connection's close
            return
        reason = f": {exc}" if exc else ""
        exchange.upstream_failed(
            UpstreamError(f"backend closed the connection{reason}"), self._answered
        )

    def pause_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.pause_body()

    def resume_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.resume_body()

    # --- httptools callbacks -----------------------------------------------------------

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        exchange = self.exchange
        if exchange is None:  # an answer nobody asked for
            self.close()
            return
        status: int = self.parser.get_status_code()
        if status < 200:  # an interim 1xx: the real answer follows
            self._headers = []
            self._reason = b""
            return
        self._answered = True
        self._framed = (
            self._head_only
            or status in (204, 304)
            or any(
                name.lower() in (b"content-length", b"transfer-encoding")
                for name, _ in self._headers
            )
        )
        exchange.response_head(status, self._reason, self._headers, self._framed)
        if self._head_only:  # httptools would wait for content-length bytes that never come
            self.exchange = None
            self.close()
            exchange.response_end()

    def on_body(self, body: bytes) -> None:
        if self.exchange is not None:
            self.exchange.response_body(body)

    def on_message_complete(self) -> None:
        exchange = self.exchange
        if exchange is None or not self._answered:
            return
        self.exchange = None
        if self.reusable and self.parser.should_keep_alive():
            # The client's back-pressure may have paused reading as the last bytes went
            # out; a paused idle connection would never see its next answer (nor a close).
            self.resume_reading()
            self.pool.release(self)
        else:
            self.close()
        exchange.response_end()

    def _fail(self, error: UpstreamError) -> None:
        exchange, self.exchange = self.exchange, None
        self.close()
        if exchange is not None:
            exchange.upstream_failed(error, self._answered)


class HttpPool:
    """Keep-alive connections to one backend's REST port."""

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        self.host = parts.hostname or ""
        self.https = parts.scheme == "https"
        self.port = parts.port or (443 if self.https else 80)
        self.authority = parts.netloc.encode("latin-1")
        self.prefix = parts.path.rstrip("/").encode("latin-1")  # prepended to every path
        self._idle: list[UpstreamConnection] = []
        self._closed = False

    def take_idle(self) -> UpstreamConnection | None:
        """A pooled keep-alive connection, if one is open."""
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed:
                return connection
        return None

    async def connect(self) -> UpstreamConnection:
        """A new connection (raises :class:`UpstreamError`)."""
        if self._closed:
            raise UpstreamError("backend was removed from the routes")
        loop = asyncio.get_running_loop()
        try:
            _, connection = await asyncio.wait_for(
                loop.create_connection(
                    lambda: UpstreamConnection(self),
                    self.host,
                    self.port,
                    ssl=ssl.create_default_context() if self.https else None,
                ),
                CONNECT_TIMEOUT_S,
            )
        except (OSError, TimeoutError) as exc:
            raise UpstreamError(f"cannot connect to {self.authority.decode()}: {exc!r}") from exc
        return connection

    def release(self, connection: UpstreamConnection) -> None:
        if self._closed or connection.closed or len(self._idle) >= MAX_IDLE_PER_BACKEND:
            connection.close()
        else:
            self._idle.append(connection)

    def forget(self, connection: UpstreamConnection) -> None:
        if connection in self._idle:
            self._idle.remove(connection)

    def close(self) -> None:
        """Closes the idle connections; busy ones close when their exchange ends."""
        self._closed = True
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()
