"""The router's client-facing REST port: a streaming HTTP/1.1 reverse proxy on asyncio.

Built for the request path (see issue "the embedded default's router at the predictor's
speed"): an asyncio ``Protocol`` per client connection parsed by httptools (the C parser
uvicorn uses), keep-alive connection pools per backend (:mod:`gate.local.upstream`),
bodies streamed in both directions as they arrive with back-pressure each way, and no
per-request logging or per-request objects beyond one :class:`ProxyExchange`. The usual
inference call, one read holding exactly one small POST, skips the parser's callbacks
(:mod:`gate.local.simple_request`); everything else is parsed. A request
whose head and body come in one read leaves in one write, and a whole answer that needs no
change goes back in one (one send each way, one segment for each peer to read).

Routing: the model comes from the path; inference calls (``:predict``, ``/infer``) take the
weighted pick, everything else goes to the model's stable. A canary call that cannot get an
answer head (no connection, or the connection closed first) is retried once on stable
(inference has no side effects) and counted as a canary error, as long as the body seen so
far is small enough to have been kept (:data:`REPLAY_LIMIT_BYTES`); a request sent on a
pooled keep-alive connection the backend had just closed is retried once on a new one. An
answer from a running backend, even a 5xx, is passed on unchanged. Hop-by-hop headers are
not forwarded; the upstream's ``date`` and ``server`` are passed on, ``date`` added if absent.

Mirroring (a model's ``mirror`` route, :mod:`gate.local.mirror`): an inference exchange of
such a model answered 200 becomes one record of bytes the proxy holds anyway: the request
body is what is kept for a retry on stable (:data:`REPLAY_LIMIT_BYTES`), the answer is the
verbatim read (with where its body starts) or the parsed body's pieces. After the answer
went to the client, the exchange is encoded into its two events and queued (a few
microseconds, evenly spread: see :mod:`gate.local.mirror`); nothing is awaited or logged,
and posting is the emitter's work, in batches. A request that does not qualify is only
counted.

Hostile clients cost little: request line and headers are bounded (414, 431), a head must
arrive within :data:`HEAD_TIMEOUT_S`, idle keep-alive connections close after
:data:`KEEPALIVE_S`, bodies over :data:`MAX_PROXY_BODY_BYTES` are refused (413), protocol
upgrades and malformed requests get 400 and a closed connection.
"""

from __future__ import annotations

import asyncio
import email.utils
import http
import json
import logging
import time
from collections import deque
from typing import Any, cast
from urllib.parse import unquote_to_bytes

import httptools

from gate.local.mirror import MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES, ModelMirror
from gate.local.route_table import Backend, Routes, RouteTable, rest_target, shown
from gate.local.simple_request import SimpleRequest, header_pairs, simple_post
from gate.local.upstream import (
    HOP_BY_HOP,
    RESPONSE_HOP_BY_HOP,
    UpstreamConnection,
    UpstreamError,
)

MAX_PROXY_BODY_BYTES = 64 * 1024 * 1024
REPLAY_LIMIT_BYTES = 1024 * 1024  # a request body kept for a retry on stable, at most
HOLD_BUFFER_BYTES = 1024 * 1024  # body buffered while connecting before reading pauses
MAX_TARGET_BYTES = 16 * 1024
MAX_HEADER_BYTES = 64 * 1024
MAX_HEADERS = 100
MAX_PIPELINED = 16
HEAD_TIMEOUT_S = 30.0
KEEPALIVE_S = 75.0
UPSTREAM_TIMEOUT_S = 60.0
SWEEP_S = 0.25  # how often timeouts are checked: they fire up to this late
logger = logging.getLogger("gate.local.router")


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
_REASONS = {status.value: status.phrase.encode() for status in http.HTTPStatus}


class Refused(Exception):
    """A request this proxy answers itself and then closes the connection."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def split_headers(
    headers: list[tuple[bytes, bytes]], hop_by_hop: frozenset[bytes]
) -> tuple[list[bytes], list[bytes], dict[bytes, bytes]]:
    """One pass over a head's headers: the lines to forward (``name: value\r\n``), their
    lower-case names, and the hop-by-hop values by lower-case name. Names a ``Connection``
    header lists are hop-by-hop too (RFC 9110 7.6.1) and are dropped from the lines."""
    lines: list[bytes] = []
    names: list[bytes] = []
    hop: dict[bytes, bytes] = {}
    for name, value in headers:
        lower = name.lower()
        if lower in hop_by_hop:
            hop[lower] = hop[lower] + b"," + value if lower in hop else value
        else:
            lines.append(name + b": " + value + b"\r\n")
            names.append(lower)
    listed = hop.get(b"connection")
    if listed is not None:
        options = {part.strip().lower() for part in listed.split(b",")}
        kept = [(n, line) for n, line in zip(names, lines, strict=True) if n not in options]
        names, lines = [n for n, _ in kept], [line for _, line in kept]
    return lines, names, hop


def request_framing(
    headers: list[tuple[bytes, bytes]],
) -> tuple[bytes, bool, bytes | None, bool]:
    """What a parsed request head means for forwarding it (see ``ProxyExchange``)."""
    forwarded, _, hop = split_headers(headers, HOP_BY_HOP)
    chunked = b"chunked" in hop.get(b"transfer-encoding", b"").lower()
    length = hop.get(b"content-length")
    if chunked:
        forwarded.append(b"transfer-encoding: chunked\r\n")
    elif length is not None:
        forwarded.append(b"content-length: " + length + b"\r\n")
    continues = hop.get(b"expect", b"").lower() == b"100-continue"
    return b"".join(forwarded), chunked, length, continues


def _json_response(status: int, payload: dict[str, Any], close: bool) -> bytes:
    body = json.dumps(payload).encode()
    head = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n" % (
        status,
        _REASONS.get(status, b""),
        len(body),
    )
    head += b"date: " + http_date() + b"\r\n"
    if close:
        head += b"connection: close\r\n"
    return head + b"\r\n" + body


def _target(url: bytes) -> tuple[bytes, str]:
    """(path and query as sent on, the percent-decoded path for routing)."""
    if url[:1] == b"/" and b"?" not in url and b"%" not in url and b"#" not in url:
        return url, url.decode("utf-8", "replace")  # the usual plain path: nothing to parse
    try:
        parsed = httptools.parse_url(url)
    except httptools.HttpParserInvalidURLError as exc:
        raise Refused(400, "malformed request target") from exc
    raw_path: bytes = parsed.path or b"/"
    target = raw_path + (b"?" + parsed.query if parsed.query else b"")
    return target, unquote_to_bytes(raw_path).decode("utf-8", "replace")


class Capture:
    """A mirrored exchange in progress (made only for a model whose mirror is on)."""

    __slots__ = ("mirror", "request_body", "request_time", "response_bytes", "response_chunks")

    def __init__(self, mirror: ModelMirror) -> None:
        self.mirror = mirror
        self.request_time = time.time()
        self.request_body = b""
        self.response_chunks: list[bytes] | None = None  # the parsed path's answer so far
        self.response_bytes = 0


class ProxyExchange:
    """One client request on its way to a backend and its answer on the way back."""

    __slots__ = (
        "answered",
        "backend",
        "body_bytes",
        "body_done",
        "capture",
        "chunked_in",
        "chunks",
        "client",
        "close_after",
        "deadline",
        "expects_continue",
        "finished",
        "forwarded",
        "fresh",
        "headers",
        "held",
        "keep_alive",
        "kept_bytes",
        "method",
        "out_chunked",
        "path",
        "replayable",
        "role",
        "table",
        "target",
        "upstream",
    )

    def __init__(
        self,
        client: ClientConnection,
        method: bytes,
        target: bytes,
        path: str,
        headers: list[tuple[bytes, bytes]] | bytes,
        keep_alive: bool,
        framing: tuple[bytes, bool, bytes | None, bool],
    ) -> None:
        """``framing``: the header lines to forward, whether the body comes chunked, its
        declared length, and whether the client expects ``100 Continue``
        (:func:`request_framing`, or the simple-request lane's own)."""
        self.client = client
        self.method = method
        self.target = target  # path and query, raw as the client sent them
        self.path = path  # percent-decoded, for routing
        self.keep_alive = keep_alive
        # read again only by a mirrored exchange: (name, value) pairs, or a checked block
        self.headers = headers
        self.capture: Capture | None = None
        self.forwarded, self.chunked_in, length, self.expects_continue = framing
        self.chunks: list[bytes] = []  # body bytes (as forwarded) not sent yet or kept for a retry
        self.kept_bytes = 0
        self.body_bytes = 0
        self.body_done = not self.chunked_in and length in (None, b"0")  # no body at all
        self.replayable = True
        self.upstream: UpstreamConnection | None = None
        self.table: RouteTable | None = None
        self.backend: Backend | None = None
        self.role = "stable"
        self.fresh = False  # the upstream connection was opened for this exchange
        self.answered = False
        self.finished = False
        self.out_chunked = False
        self.held = b""  # the response head, until the first body bytes or the read's end
        self.close_after = not keep_alive
        self.deadline = 0.0  # loop time by which the backend must answer (0: none)

    def header_pairs(self) -> list[tuple[bytes, bytes]]:
        headers = self.headers
        return header_pairs(headers) if isinstance(headers, bytes) else headers

    # --- the request ---------------------------------------------------------------------

    def begin(self) -> None:
        """Route the request (its head is complete; its body may still be coming)."""
        if self.path == "/router" or self.path.startswith("/router/"):
            self.answer_locally(404, {"error": "not found"})  # the admin API has its own port
            return
        routes = self.client.proxy.routes
        model, inference = rest_target(self.path)
        table = routes.first() if model is None else routes.get(model)
        if table is None:
            if model is None or not routes.tables:
                self.answer_locally(503, {"error": "no backend configured"})
            else:
                error = f"Model with name {shown(model)} does not exist."
                self.answer_locally(404, {"error": error})
            return
        role, backend = table.pick(inference)
        if backend is None:
            self.answer_locally(503, {"error": "no backend configured"})
            return
        self.table = table
        if inference and table.mirror and table.tap is not None:
            if self.chunked_in:  # its length is unknown until it has been forwarded
                table.tap.skip("chunked")
            else:
                self.capture = Capture(table.tap)
        self.send_to(backend, role)

    def send_to(self, backend: Backend, role: str) -> None:
        self.backend, self.role = backend, role
        backend.requests += 1
        connection = backend.http.take_idle()
        if connection is not None:
            self.fresh = False
            self.attach(connection)
        else:
            self.fresh = True
            self.client.loop.create_task(self._connect(backend))

    async def _connect(self, backend: Backend) -> None:
        try:
            connection = await backend.http.connect()
        except UpstreamError as exc:
            if backend is self.backend and not self.finished:
                self.upstream_failed(exc, answered=False)
            return
        if backend is not self.backend or self.finished:  # the client left meanwhile
            backend.http.release(connection)
            return
        self.attach(connection)

    def attach(self, connection: UpstreamConnection) -> None:
        if self.client.parsing and not self.body_done:
            # The rest of a small body is usually in the read being parsed: the request
            # starts once that read has been, so head and body leave in one write (one
            # send here, one segment for the backend to read) instead of two.
            self.client.deferred.append((self, connection))
            return
        self.start(connection)

    def start(self, connection: UpstreamConnection) -> None:
        """Send the head, and the body so far, on ``connection``."""
        assert self.backend is not None
        self.upstream = connection
        pool = self.backend.http
        head = b"%s %s%s HTTP/1.1\r\nhost: %s\r\n%s\r\n" % (
            self.method,
            pool.prefix,
            self.target,
            pool.authority,
            self.forwarded,
        )
        body = b"".join(self.chunks)
        if not self.replayable:
            self.chunks, self.kept_bytes = [], 0
        connection.start(self, head, body, head_only=self.method == b"HEAD")
        if self.client.write_paused:
            connection.pause_reading()
        self.client.release_hold("connecting")
        self.deadline = self.client.loop.time() + UPSTREAM_TIMEOUT_S

    def feed(self, data: bytes) -> None:
        if self.finished:
            return
        self.body_bytes += len(data)
        if self.body_bytes > MAX_PROXY_BODY_BYTES:
            self.fail(413, f"request body over {MAX_PROXY_BODY_BYTES} bytes")
            return
        if self.chunked_in:
            data = b"%x\r\n%s\r\n" % (len(data), data)
        self._forward(data)

    def feed_end(self) -> None:
        self.body_done = True
        if self.chunked_in and not self.finished:
            self._forward(b"0\r\n\r\n")

    def _forward(self, data: bytes) -> None:
        if self.upstream is not None:
            self.upstream.write(data)
        if self.replayable or self.upstream is None:
            self.chunks.append(data)
            self.kept_bytes += len(data)
            if self.kept_bytes > REPLAY_LIMIT_BYTES and self.replayable:
                self.replayable = False
                if self.upstream is not None:
                    self.chunks, self.kept_bytes = [], 0
            if self.upstream is None and self.kept_bytes > HOLD_BUFFER_BYTES:
                self.client.hold("connecting")

    # --- what the upstream connection reports ---------------------------------------------

    def response_head(
        self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]], framed: bool
    ) -> None:
        backend = self.backend
        assert backend is not None
        self.answered = True
        self._cancel_timer()
        if not backend.reachable:
            backend.mark(True, self.role)
        if status >= 500:
            backend.errors += 1
        if self.capture is not None and self._capture_request(self.capture, status):
            self.capture.response_chunks = []
        self.chunks, self.kept_bytes = [], 0
        if not self.body_done:  # answered before the whole body arrived: no reuse after
            self.close_after = True
            if self.upstream is not None:
                self.upstream.reusable = False
        lines, names, hop = split_headers(headers, RESPONSE_HOP_BY_HOP)
        lines.insert(0, b"HTTP/1.1 %d %s\r\n" % (status, reason or _REASONS.get(status, b"")))
        chunked = b"chunked" in hop.get(b"transfer-encoding", b"").lower()
        if (chunked or not framed) and self.method != b"HEAD":
            if self.client.http11:
                self.out_chunked = True
                lines.append(b"transfer-encoding: chunked\r\n")
            else:
                self.close_after = True  # HTTP/1.0: the body ends with the connection
        if b"date" not in names:
            lines.append(b"date: " + http_date() + b"\r\n")
        if self.close_after:
            lines.append(b"connection: close\r\n")
        lines.append(b"\r\n")
        # Held, to go out in one write with the body that usually came in the same read
        # (one send instead of two); flushed when the upstream's read has been parsed.
        self.held = b"".join(lines)

    def takes_verbatim(self) -> bool:
        """Whether a whole, clean response may go to this client byte for byte: nothing
        to add to its head (no ``connection: close``, no chunking, not a HEAD)."""
        return not self.close_after and self.body_done and self.method != b"HEAD"

    def verbatim_response(self, status: int, data: bytes) -> None:
        """A complete response, passed on as it came (its head has nothing to drop)."""
        backend = self.backend
        assert backend is not None
        self.answered = True
        if not backend.reachable:
            backend.mark(True, self.role)
        if status >= 500:
            backend.errors += 1
        self.client.write(data)
        capture = self.capture
        if capture is not None:
            self.capture = None
            if self._capture_request(capture, status):
                body_at = data.find(b"\r\n\r\n") + 4  # (the head is complete: found)
                if len(data) - body_at > MAX_RESPONSE_BYTES:
                    capture.mirror.skip("response_too_big")
                else:
                    capture.mirror.record(
                        self.header_pairs(),
                        self.role,
                        capture.request_body,
                        data,  # whole: the emitter reads from body_at, nothing is copied here
                        body_at,
                        capture.request_time,
                    )
        self.chunks, self.kept_bytes = [], 0
        self.upstream = None
        self._finish()

    def _capture_request(self, capture: Capture, status: int) -> bool:
        """At the answer's head: keep the request body if the exchange still qualifies,
        else count why not and stop capturing. The body is complete in ``chunks`` (kept
        for a retry: a body this small always is), and not chunk-encoded (never captured)."""
        if self.body_bytes > MAX_REQUEST_BYTES:
            reason = "request_too_big"
        elif status != 200:
            reason = "not_200"
        elif not self.body_done:  # answered before the body was in
            reason = "incomplete"
        else:
            capture.request_body = b"".join(self.chunks)
            return True
        capture.mirror.skip(reason)
        self.capture = None
        return False

    def response_body(self, data: bytes) -> None:
        out = b"%x\r\n%s\r\n" % (len(data), data) if self.out_chunked else data
        if self.held:
            out, self.held = self.held + out, b""
        self.client.write(out)
        capture = self.capture
        if capture is not None and capture.response_chunks is not None:
            capture.response_bytes += len(data)
            if capture.response_bytes > MAX_RESPONSE_BYTES:
                capture.mirror.skip("response_too_big")
                self.capture = None
            else:
                capture.response_chunks.append(data)

    def response_end(self) -> None:
        out = self.held + b"0\r\n\r\n" if self.out_chunked else self.held
        if out:
            self.held = b""
            self.client.write(out)
        capture = self.capture
        if capture is not None:
            self.capture = None
            capture.mirror.record(
                self.header_pairs(),
                self.role,
                capture.request_body,
                b"".join(capture.response_chunks or ()),
                0,
                capture.request_time,
            )
        self.upstream = None
        self._finish()

    def flush_head(self) -> None:
        if self.held:
            self.client.write(self.held)
            self.held = b""

    def upstream_failed(self, error: UpstreamError, answered: bool) -> None:
        backend, table = self.backend, self.table
        self.upstream = None
        self._cancel_timer()
        if self.finished or backend is None or table is None:
            return
        if answered:  # part of the answer is out: nothing to do but cut the client off
            backend.errors += 1
            self.close_after = True
            self._finish()
            return
        # not fresh: a pooled connection, which the backend may just have closed
        target = table.after_no_answer(
            backend, self.role, unsent=not self.fresh, replayable=self.replayable
        )
        if target is not None:
            self.send_to(*target)
            return
        self.fail(502, f"upstream: {error}")

    def pause_body(self) -> None:
        self.client.hold("upstream")

    def resume_body(self) -> None:
        self.client.release_hold("upstream")

    # --- endings ---------------------------------------------------------------------------

    def answer_locally(self, status: int, payload: dict[str, Any]) -> None:
        if not self.body_done:
            self.close_after = True
        self.client.write(_json_response(status, payload, self.close_after))
        self._finish()

    def fail(self, status: int, message: str) -> None:
        """End the exchange with an error of our own (or a cut connection if the backend
        already started answering)."""
        if self.finished:
            return
        if self.upstream is not None:
            self.upstream.abandon()
            self.upstream = None
        if self.answered:
            self.close_after = True
            self._finish()
        else:
            self.answer_locally(status, {"error": message})

    def client_gone(self) -> None:
        self.finished = True
        self._cancel_timer()
        self._capture_ends("incomplete")
        if self.upstream is not None:
            self.upstream.abandon()
            self.upstream = None

    def timed_out(self) -> None:
        self.deadline = 0.0
        if self.backend is not None:
            self.backend.errors += 1
        self.fail(504, f"upstream: no answer within {UPSTREAM_TIMEOUT_S:.0f} s")

    def _cancel_timer(self) -> None:
        self.deadline = 0.0

    def _capture_ends(self, reason: str) -> None:
        """A capture still open at the end: counted as skipped for ``reason``."""
        if self.capture is not None:
            self.capture.mirror.skip(reason)
            self.capture = None

    def _finish(self) -> None:
        if not self.finished:
            self.finished = True
            self._cancel_timer()
            # no answer from the backend (one of the router's own), or one cut off
            self._capture_ends("incomplete" if self.answered else "not_200")
            self.client.exchange_done(self)


class ClientConnection(asyncio.Protocol):
    """One client's connection: parses its requests and answers them in order."""

    def __init__(self, proxy: HttpProxy) -> None:
        self.proxy = proxy
        self.loop = proxy.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.http11 = True
        self.current: ProxyExchange | None = None  # being answered
        self.receiving: ProxyExchange | None = None  # its body is arriving
        self.queue: deque[ProxyExchange] = deque()  # pipelined, waiting their turn
        self.closing = False
        self.write_paused = False
        self._holds: set[str] = set()
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self._in_head = False
        self._eof = False
        self._done_reading = False
        self.deadline = 0.0  # loop time of this connection's head or idle timeout (0: none)
        self.parsing = False  # within data_received: a request's start waits for its end
        self.deferred: list[tuple[ProxyExchange, UpstreamConnection]] = []

    # --- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.proxy.connections.add(self)
        self._set_timer(self.proxy.keepalive_s)

    def data_received(self, data: bytes) -> None:
        if self._done_reading:
            return
        if self.current is None and self.receiving is None and not self._in_head:
            simple = simple_post(
                data, MAX_TARGET_BYTES, MAX_HEADERS, MAX_HEADER_BYTES, REPLAY_LIMIT_BYTES
            )
            if simple is not None:  # (the parser is between messages and stays there)
                self._take_simple(simple)
                return
        self.parsing = True
        try:
            self._parse(data)
        finally:
            self.parsing = False
        if self.deferred:
            deferred, self.deferred = self.deferred, []
            for exchange, connection in deferred:
                backend = exchange.backend
                if exchange.finished or backend is None or backend.http is not connection.pool:
                    connection.pool.release(connection)  # (refused or gone meanwhile)
                else:
                    exchange.start(connection)

    def _take_simple(self, simple: SimpleRequest) -> None:
        """A whole simple POST (see :mod:`gate.local.simple_request`): routed and sent on
        in one write, as the parsed path would, without its callbacks."""
        self._cancel_timer()
        self.http11 = True
        target = simple.target
        length = len(simple.body)
        exchange = ProxyExchange(
            self,
            b"POST",
            target,
            target.decode("utf-8", "replace"),
            simple.received,
            True,
            (simple.headers, False, b"%d" % length, False),
        )
        exchange.body_done = True
        if length:
            exchange.chunks.append(simple.body)
            exchange.kept_bytes = exchange.body_bytes = length
        self.current = exchange
        exchange.begin()

    def _parse(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(Refused(400, "protocol upgrades are not supported"))
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if not isinstance(cause, Refused):
                logger.error("proxy failure on a client request", exc_info=cause)
                cause = Refused(500, "internal proxy error")
            self._refuse(cause)
        except httptools.HttpParserError as exc:
            if not self._done_reading:  # bytes after a last request are ignored, not judged
                self._refuse(Refused(400, f"malformed request: {exc}"))

    def eof_received(self) -> bool:
        # A client that half-closes after its request still gets its answer.
        self._eof = True
        receiving, self.receiving = self.receiving, None
        if receiving is not None:  # the rest of its body can never come
            if receiving is not self.current:
                self.queue.remove(receiving)
                receiving.client_gone()
            elif not receiving.answered:  # (an answer under way is sent in full)
                receiving.fail(400, "request body incomplete")
        return self.current is not None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.proxy.connections.discard(self)
        self._cancel_timer()
        for exchange in (self.current, self.receiving, *self.queue):
            if exchange is not None:
                exchange.client_gone()
        self.current = self.receiving = None
        self.queue.clear()

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.current is not None and self.current.upstream is not None:
            self.current.upstream.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.current is not None and self.current.upstream is not None:
            self.current.upstream.resume_reading()

    # --- httptools callbacks -----------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._header_bytes = 0
        self._in_head = True
        if self.current is None:
            self._set_timer(self.proxy.head_timeout_s)

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > MAX_TARGET_BYTES:
            raise Refused(414, f"request target over {MAX_TARGET_BYTES} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))
        self._header_bytes += len(name) + len(value)
        if len(self._headers) > MAX_HEADERS or self._header_bytes > MAX_HEADER_BYTES:
            raise Refused(431, f"over {MAX_HEADERS} headers or {MAX_HEADER_BYTES} bytes of them")

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._cancel_timer()
        self.http11 = self.parser.get_http_version() == "1.1"
        if self.parser.should_upgrade():  # CONNECT, or Upgrade: never sent on
            raise Refused(400, "protocol upgrades and CONNECT are not supported")
        target, path = _target(self._url)
        exchange = ProxyExchange(
            self,
            self.parser.get_method(),
            target,
            path,
            self._headers,
            self.parser.should_keep_alive(),
            request_framing(self._headers),
        )
        self.receiving = exchange
        if self.current is None:
            # (HTTP/1.0 clients do not expect it, RFC 9110 10.1.1)
            if exchange.expects_continue and self.http11:
                self.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.current = exchange
            exchange.begin()
        else:
            if len(self.queue) >= MAX_PIPELINED:
                raise Refused(429, f"over {MAX_PIPELINED} pipelined requests")
            self.queue.append(exchange)
            self.hold("busy")  # pipelined: read on once the queue has been answered

    def on_body(self, body: bytes) -> None:
        if self.receiving is not None:
            self.receiving.feed(body)

    def on_message_complete(self) -> None:
        exchange, self.receiving = self.receiving, None
        if exchange is None:
            return
        exchange.feed_end()
        if not exchange.keep_alive:  # nothing after this request is read (nor parsed)
            self._done_reading = True
            self.hold("closing")

    # --- used by exchanges ---------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closing:
            self.transport.write(data)

    def hold(self, reason: str) -> None:
        if not self._holds and self.transport is not None and not self.closing:
            self.transport.pause_reading()
        self._holds.add(reason)

    def release_hold(self, reason: str) -> None:
        if reason in self._holds:
            self._holds.discard(reason)
            if not self._holds and self.transport is not None and not self.closing:
                self.transport.resume_reading()

    def exchange_done(self, exchange: ProxyExchange) -> None:
        if exchange is not self.current:
            return
        self.current = None
        # Its upstream connection no longer reports to it: a hold it asked for while the
        # upstream was slow to take the body would otherwise stop reading for good.
        self.release_hold("upstream")
        if exchange.close_after or self.closing or self._eof or self.proxy.stopping:
            self._close()
            return
        if self.queue:
            self.current = self.queue.popleft()
            self.current.begin()
            if not self.queue:
                self.release_hold("busy")
        elif self.receiving is None:
            self._set_timer(self.proxy.keepalive_s)

    def idle(self) -> bool:
        return self.current is None and self.receiving is None

    # --- internals -------------------------------------------------------------------------

    def _refuse(self, refused: Refused) -> None:
        if self.current is None or not self.current.answered:
            if self.current is not None:
                self.current.client_gone()
            self.write(_json_response(refused.status, {"error": refused.message}, close=True))
        self._close()

    def _close(self) -> None:
        if not self.closing and self.transport is not None:
            self.closing = True
            self.transport.close()

    def _set_timer(self, delay: float) -> None:
        self.deadline = self.loop.time() + delay

    def _cancel_timer(self) -> None:
        self.deadline = 0.0

    def timed_out(self) -> None:
        self.deadline = 0.0
        if self._in_head and self.current is None:
            self.write(_json_response(408, {"error": "request head not received in time"}, True))
        self._close()


class HttpProxy:
    """The client-facing REST port: the protocol factory and its open connections."""

    def __init__(
        self,
        routes: Routes,
        loop: asyncio.AbstractEventLoop,
        head_timeout_s: float = HEAD_TIMEOUT_S,
        keepalive_s: float = KEEPALIVE_S,
    ) -> None:
        self.routes = routes
        self.loop = loop
        self.head_timeout_s = head_timeout_s
        self.keepalive_s = keepalive_s
        self.connections: set[ClientConnection] = set()
        self.stopping = False
        self._sweeper = loop.call_later(SWEEP_S, self._sweep)

    def __call__(self) -> ClientConnection:
        return ClientConnection(self)

    def _sweep(self) -> None:
        """Every :data:`SWEEP_S`: the timeouts that are due (one timer for the whole port,
        none per request)."""
        now = self.loop.time()
        for connection in list(self.connections):
            if connection.deadline and now >= connection.deadline:
                connection.timed_out()
            exchange = connection.current
            if exchange is not None and exchange.deadline and now >= exchange.deadline:
                exchange.timed_out()
        self._sweeper = self.loop.call_later(SWEEP_S, self._sweep)

    async def drain(self, grace_s: float) -> None:
        """Stop: idle connections close now, busy ones after their answer; whatever is
        still open after ``grace_s`` is cut."""
        self.stopping = True
        deadline = self.loop.time() + grace_s
        while self.connections and self.loop.time() < deadline:
            for connection in list(self.connections):
                if connection.idle():
                    connection._close()
            await asyncio.sleep(0.05)
        self._sweeper.cancel()
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.abort()
