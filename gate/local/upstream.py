"""The router's side of its backends: per backend, a pool of keep-alive HTTP/1.1 connections.

Each connection is an asyncio ``Protocol`` with httptools' response parser (the C parser
uvicorn uses): no per-request objects beyond the parser callbacks, bytes written to the
transport as they come. One exchange at a time per connection; a connection goes back to
the pool only after a complete response that allows keep-alive, and leaves it as soon as
the backend closes it (so an idle connection the backend timed out is not handed out).
"""

from __future__ import annotations

import asyncio
import re
import ssl
from typing import Protocol, cast
from urllib.parse import urlsplit

import httptools

CONNECT_TIMEOUT_S = 5.0
MAX_IDLE_PER_BACKEND = 256
_FRAMING = (b"content-length", b"transfer-encoding")  # a body that ends without a close


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

    def flush_head(self) -> None: ...

    def takes_verbatim(self) -> bool: ...

    def verbatim_response(self, status: int, data: bytes) -> None: ...

    def upstream_failed(self, error: UpstreamError, answered: bool) -> None: ...

    def pause_body(self) -> None: ...

    def resume_body(self) -> None: ...


# Not passed on by a proxy (RFC 9110 7.6.1), nor its framing or the host it was sent to.
HOP_BY_HOP = frozenset(
    {
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
        b"expect",
    }
)
RESPONSE_HOP_BY_HOP = HOP_BY_HOP - {b"content-length"}  # an answer keeps its length
# A response carrying any of these (or no ``date``) takes the parsed path, which drops them.
# (One search: a loop of ``in`` tests over the names cost 3 us a response, 0.3 us this.)
_NOT_VERBATIM = re.compile(
    b"|".join(re.escape(b"\n" + name + b":") for name in sorted(RESPONSE_HOP_BY_HOP))
)


class _Completion:
    """A response parser's callbacks when only framing matters: a C parse, two calls."""

    __slots__ = ("begun", "complete", "keep_alive", "parser")

    def __init__(self) -> None:
        self.begun = 0
        self.complete = self.keep_alive = False
        self.parser = httptools.HttpResponseParser(self)

    def on_message_begin(self) -> None:
        self.begun += 1

    def on_message_complete(self) -> None:
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive()  # (reset once the message ends)


class _WholeResponse:
    """Recognises a read that is exactly one complete, final, keep-alive response whose
    headers can go to the client as they are (the usual answer of a predictor: head and
    body in one segment). Such a response is passed on verbatim, without the header
    callbacks and the rebuilt head of the parsed path. llhttp checks the framing; any
    doubt (incomplete, more than one message, a 1xx, a header to drop) -> ``None``."""

    def __init__(self) -> None:
        self._state = _Completion()

    def status(self, data: bytes) -> int | None:
        state = self._state
        state.begun, state.complete = 0, False
        try:
            state.parser.feed_data(data)
        except httptools.HttpParserError:
            return None
        if not state.complete or state.begun != 1 or not state.keep_alive:
            return None
        status: int = state.parser.get_status_code()
        if status < 200 or status in (204, 304):
            return None
        head = data[: data.find(b"\r\n\r\n") + 2].lower()
        if b"\ndate:" not in head or b"\ncontent-length:" not in head:
            return None
        if _NOT_VERBATIM.search(head) is not None:
            return None
        return status


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
        self._first_read = False  # the next read is the first since the request went out
        self._whole: _WholeResponse | None = None

    # --- used by the exchange ----------------------------------------------------------

    def start(self, exchange: Exchange, head: bytes, body: bytes, head_only: bool) -> None:
        assert self.transport is not None and self.exchange is None
        self.exchange = exchange
        self.reusable = True
        self._answered = False
        self._head_only = head_only
        self._headers = []
        self._reason = b""
        self._first_read = not head_only
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
        exchange = self.exchange
        if self._first_read and exchange is not None:
            self._first_read = False
            if exchange.takes_verbatim() and self._verbatim(exchange, data):
                return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError(f"backend sent a malformed response: {exc}"))
            return
        if exchange is not None and exchange is self.exchange:
            exchange.flush_head()  # a head whose body has not come yet goes out now

    def _verbatim(self, exchange: Exchange, data: bytes) -> bool:
        """Pass a whole response on as it came (see :class:`_WholeResponse`)."""
        whole = self._whole
        if whole is None:
            whole = self._whole = _WholeResponse()
        status = whole.status(data)
        if status is None:
            self._whole = None  # it may be midway through a message: a new one next time
            return False
        self.exchange = None
        if self.reusable:
            self.resume_reading()
            self.pool.release(self)
        else:
            self.close()
        exchange.verbatim_response(status, data)
        return True

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
        framed = self._head_only or status in (204, 304)
        if not framed:
            for name, _ in self._headers:
                if name.lower() in _FRAMING:
                    framed = True
                    break
        self._framed = framed
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
