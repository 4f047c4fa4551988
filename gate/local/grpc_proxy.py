"""The router's gRPC port: an HTTP/2 proxy that moves frames, never decoding a message.

Like the REST port (:mod:`gate.local.http_proxy`) it is an asyncio ``Protocol`` per
connection: each client stream becomes a stream on an HTTP/2 connection to the chosen
backend (:class:`GrpcPool`: one per client connection and backend, as the backend would
see without the router, so a backend's processes sharing its port share the calls; or,
for a backend that names a port per process, a few connections to each process shared by
every client). Flow control is end to end: a peer's window is replenished only for bytes
the other side has taken, so a slow party slows its sender instead of filling memory
(except a shared backend connection's own window, given back on receipt so that one
client cannot stall the others: its streams' windows still bound what waits for it).

``ModelInfer``, ``ModelMetadata`` and ``ModelReady`` are routed by the model name in field 1
of the request message (read from the first bytes of the first message, decompressed
first if the client compressed it); ``ModelInfer`` takes the weighted pick, other methods
(``ServerLive`` ...) go to the first model's stable. An unknown model is NOT_FOUND, an
unreadable message INVALID_ARGUMENT. A canary call that gets no answer head (no
connection, or the connection closed or went away first) is sent again to stable and
counted as a canary error, as long as the request seen so far was small enough to keep
(:data:`REPLAY_LIMIT_BYTES`); a call sent on a pooled connection the backend had just
closed (or lost) is sent again once, on another connection, and never a second time. A
status sent by a running backend is passed on
unchanged. Bounded: at most :data:`MAX_STREAMS` streams per client connection, header
lists of :data:`MAX_HEADER_LIST_BYTES`, the connection preface within the head timeout.

A read that starts with a whole unary request, or a whole answer, takes a lane
(:meth:`ClientSide.unary`, :meth:`UpstreamSide.unary`, shapes in
:mod:`gate.local.grpc_unary`): the same bytes out and the same state after as frame by
frame, at about half the interpreter time a call. The usual request goes out in one pass
(:meth:`Call.sent_at_once`) and the usual answer is judged by one lookup
(:attr:`UpstreamSide.plain_answers`). In process that saves ~4 us a call; in the router
under load, sharing two cores with the predictor, its CPU a call fell by ~20 us (README),
so fewer Python calls on this path count for more than a warm loop shows. A read that
held nothing else (:func:`gate.local.grpc_unary.alone`) is written on at once
(:meth:`Endpoint.write_now`), without a flush scheduled for the end of the loop's turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import zlib
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast
from urllib.parse import quote

from gate.local import h2
from gate.local.grpc_unary import (
    WINDOW_UPDATE_BYTES,
    WINDOW_UPDATE_HEAD,
    alone,
    on_stream,
    single_message_model,
    unary_answer,
    unary_request,
    window_update_fields,
)
from gate.local.h2 import H2Error, HeaderReader, Headers, header
from gate.local.names import MalformedMessage, grpc_model_name, shown

if TYPE_CHECKING:
    from gate.local.route_table import Backend, Routes, RouteTable

logger = logging.getLogger("gate.local.router")

GRPC_SERVICE = b"/inference.GRPCInferenceService/"
INFER = GRPC_SERVICE + b"ModelInfer"
GRPC_MODEL_METHODS = frozenset(
    GRPC_SERVICE + m for m in (b"ModelInfer", b"ModelMetadata", b"ModelReady")
)

# gRPC status codes the router sends or reads
OK, INVALID_ARGUMENT, NOT_FOUND, UNAVAILABLE = 0, 3, 5, 14
# grpc-status values that are not a backend failure (success, the client's own mistakes)
CLIENT_MISTAKES = frozenset(str(code).encode() for code in (OK, INVALID_ARGUMENT, NOT_FOUND))

STREAM_WINDOW = 1 << 20  # what each peer may send us per stream before we replenish
# ... on a shared backend connection: what waits unread for one client connection then
# stays within MAX_STREAMS * 64 KiB = CONNECTION_WINDOW, as with a connection per client
SHARED_STREAM_WINDOW = 64 * 1024
STREAM_ID_LIMIT = 2**31 - 2  # a connection whose next stream id reaches it is retired
CONNECTION_WINDOW = 16 << 20
MAX_STREAMS = 256
MAX_HEADER_LIST_BYTES = 64 * 1024
NAME_PREFIX_BYTES = 4096  # of the first message: enough to read the model name from
REPLAY_LIMIT_BYTES = 1 << 20
MAX_UNROUTED_BYTES = 4 << 20  # buffered before a call has a backend
CONNECT_TIMEOUT_S = 5.0
PROCESS_CONNECTIONS = 2  # shared connections per backend process (GrpcPool's shared mode)
REOPEN_DELAY_S = 0.1  # a lost shared connection is reopened after this, doubling on failure
MAX_REOPEN_DELAY_S = 5.0
OUR_SETTINGS = {
    h2.HEADER_TABLE_SIZE: 0,
    h2.ENABLE_PUSH: 0,
    h2.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
    h2.MAX_FRAME_SIZE: h2.DEFAULT_MAX_FRAME,
    h2.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST_BYTES,
}


class UpstreamError(Exception):
    """A call got no answer head from its backend."""


class Outbox:
    """Data for one stream in one direction, sent as the peer's windows allow; then the
    trailers or an empty END_STREAM."""

    __slots__ = ("chunks", "conn", "end", "finished", "on_sent", "stream", "trailer", "window")

    def __init__(self, conn: Endpoint, stream: int, on_sent: Endpoint | None) -> None:
        self.conn = conn
        self.stream = stream
        self.window = conn.peer_initial_window
        self.chunks: deque[bytes] = deque()
        self.end = False
        self.trailer: list[bytes] | None = None
        self.finished = False
        self.on_sent = on_sent  # the side whose window the sent bytes replenish

    def push(self, data: bytes, end: bool) -> None:
        if data:
            self.chunks.append(data)
        self.end = self.end or end
        self.conn.pump(self)

    def push_trailer(self, frames: list[bytes]) -> None:
        self.trailer = frames
        self.end = True
        self.conn.pump(self)


class Endpoint(asyncio.Protocol):
    """One HTTP/2 connection, either side: frames in, frames out, windows both ways."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.frames = h2.FrameReader(h2.DEFAULT_MAX_FRAME)
        self.headers = HeaderReader(MAX_HEADER_LIST_BYTES)
        self.peer_max_frame = h2.DEFAULT_MAX_FRAME
        self.peer_initial_window = h2.DEFAULT_WINDOW
        self.peer_max_streams = 2**31
        self.send_window = h2.DEFAULT_WINDOW
        self.outboxes: dict[int, Outbox] = {}
        self.blocked: dict[int, Outbox] = {}
        self.closed = False
        self._out: list[bytes | bytearray] = []
        self._flush_scheduled = False
        self._continued: tuple[int, int, bytearray] | None = None  # stream, flags, block
        self._credit_connection = 0
        self._credit: dict[int, int] = {}
        # the connection's window given back as bytes arrive, not as the other side takes
        # them (a connection shared by many clients' calls: see GrpcPool)
        self.window_on_receipt = False
        self.stream_window = STREAM_WINDOW  # the INITIAL_WINDOW_SIZE we advertise

    # --- output ----------------------------------------------------------------------------

    def write(self, data: bytes | bytearray) -> None:
        if self.closed:
            return
        self._out.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        if self._out and self.transport is not None and not self.closed:
            out, self._out = self._out, []
            self.transport.write(b"".join(out))

    def write_now(self, data: bytes | bytearray) -> None:
        """``write``, straight to the transport when nothing is waiting to be flushed
        (the order on the wire is the same): the lanes' one write a call, without a
        callback scheduled and run for it."""
        if self._out or self.closed or self.transport is None:
            self.write(data)
        else:
            self.transport.write(data)

    def pump(self, box: Outbox) -> None:
        """Send what the windows allow of one outbox."""
        if box.finished or self.closed:
            return
        chunks = box.chunks
        while chunks:
            chunk = chunks[0]
            size = min(len(chunk), self.send_window, box.window, self.peer_max_frame)
            if size <= 0:
                # to the back of the queue: the next window goes to the others first, so
                # one big upload cannot take every WINDOW_UPDATE of a shared connection
                self.blocked.pop(box.stream, None)
                self.blocked[box.stream] = box
                return
            if size < len(chunk):
                piece, chunks[0] = chunk[:size], chunk[size:]
            else:
                piece = chunks.popleft()
            last = not chunks and box.end and box.trailer is None
            self.write(h2.frame(h2.DATA, h2.END_STREAM if last else 0, box.stream, piece))
            self.send_window -= size
            box.window -= size
            if box.on_sent is not None:
                box.on_sent.replenish(box, size)
            if last:
                self._finished(box)
                return
        self.blocked.pop(box.stream, None)
        if box.end:
            if box.trailer is not None:
                for piece in box.trailer:
                    self.write(piece)
            else:
                self.write(h2.frame(h2.DATA, h2.END_STREAM, box.stream))
            self._finished(box)

    def _finished(self, box: Outbox) -> None:
        box.finished = True
        self.outboxes.pop(box.stream, None)
        self.blocked.pop(box.stream, None)
        self.stream_sent(box.stream)

    def replenish(self, box: Outbox, size: int) -> None:
        """``size`` bytes this side received (on the stream paired with ``box``) were sent on;
        give the peer its window back, in batches."""
        stream = self.paired_stream(box)
        if not self.window_on_receipt:
            self.give_back(size)
        if stream and self.still_receiving(stream):
            credit = self._credit.get(stream, 0) + size
            if credit >= self.stream_window // 2:
                self.write(h2.window_update(stream, credit))
                credit = 0
            self._credit[stream] = credit

    def give_back(self, size: int) -> None:
        """The connection's window back for ``size`` bytes, in batches (also for bytes that
        go nowhere: padding, a stream already over)."""
        self._credit_connection += size
        if self._credit_connection >= CONNECTION_WINDOW // 2:
            self.write(h2.window_update(0, self._credit_connection))
            self._credit_connection = 0

    def forget_credit(self, stream: int) -> None:
        self._credit.pop(stream, None)

    def abort_stream(self, stream: int, code: int) -> None:
        box = self.outboxes.pop(stream, None)
        if box is not None:
            box.finished = True
        self.blocked.pop(stream, None)
        self.forget_credit(stream)
        self.write(h2.rst_stream(stream, code))

    def close(self, code: int = h2.NO_ERROR, message: str = "") -> None:
        if self.closed or self.transport is None:
            return
        self.write(h2.goaway(self.last_peer_stream(), code, message.encode()[:256]))
        self.flush()
        self.closed = True
        self.transport.close()

    # --- input -------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        try:
            if self.frames.idle and self._continued is None:
                taken = self.unary(data)
                if taken:
                    if taken == len(data):
                        return
                    data = data[taken:]
                    if len(data) == WINDOW_UPDATE_BYTES and data[:5] == WINDOW_UPDATE_HEAD:
                        # what follows grpcio's every answer: the request's window back
                        self._window_update(*window_update_fields(data))
                        return
            for item in self.frames.feed(data):
                self.on_frame(item)
        except H2Error as exc:
            self.close(exc.code, str(exc))
        except Exception:
            logger.exception("gRPC proxy failure; closing the connection")
            self.close(h2.INTERNAL_ERROR, "internal proxy error")

    def on_frame(self, f: h2.Frame) -> None:
        kind, flags, stream, payload = f
        if self._continued is not None:
            cont_stream, cont_flags, block = self._continued
            if kind != h2.CONTINUATION or stream != cont_stream:
                raise H2Error(h2.PROTOCOL_ERROR, "expected CONTINUATION")
            block += payload
            if len(block) > MAX_HEADER_LIST_BYTES:
                raise H2Error(h2.ENHANCE_YOUR_CALM, "header block too large")
            if flags & h2.END_HEADERS:
                self._continued = None
                self.on_headers(stream, bytes(block), bool(cont_flags & h2.END_STREAM))
            return
        if kind == h2.DATA:
            if stream == 0:
                raise H2Error(h2.PROTOCOL_ERROR, "DATA on stream 0")
            data = h2.strip_padding(flags, payload, priority_allowed=False)
            if len(payload) > len(data):
                self.give_back(len(payload) - len(data))
            self.on_data(stream, data, bool(flags & h2.END_STREAM))
        elif kind == h2.HEADERS:
            if stream == 0:
                raise H2Error(h2.PROTOCOL_ERROR, "HEADERS on stream 0")
            first = h2.strip_padding(flags, payload, priority_allowed=True)
            if flags & h2.END_HEADERS:
                self.on_headers(stream, first, bool(flags & h2.END_STREAM))
            else:
                self._continued = (stream, flags, bytearray(first))
        elif kind == h2.SETTINGS:
            if not flags & h2.ACK:  # an ACK needs nothing (see h2.HeaderReader)
                self._apply_settings(payload)
        elif kind == h2.WINDOW_UPDATE:
            if len(payload) != 4:
                raise H2Error(h2.PROTOCOL_ERROR, "WINDOW_UPDATE size")
            self._window_update(stream, int.from_bytes(payload, "big") & 0x7FFF_FFFF)
        elif kind == h2.PING:
            if not flags & h2.ACK:
                self.write(h2.frame(h2.PING, h2.ACK, 0, payload))
        elif kind == h2.RST_STREAM:
            if len(payload) != 4:
                raise H2Error(h2.PROTOCOL_ERROR, "RST_STREAM size")
            box = self.outboxes.pop(stream, None)
            if box is not None:
                box.finished = True
            self.blocked.pop(stream, None)
            self.forget_credit(stream)
            self.on_reset(stream, int.from_bytes(payload, "big"))
        elif kind == h2.GOAWAY:
            if len(payload) < 8:
                raise H2Error(h2.PROTOCOL_ERROR, "GOAWAY size")
            last = int.from_bytes(payload[:4], "big") & 0x7FFF_FFFF
            self.on_goaway(last, int.from_bytes(payload[4:8], "big"))
        elif kind == h2.PUSH_PROMISE:
            raise H2Error(h2.PROTOCOL_ERROR, "push is disabled")
        elif kind == h2.CONTINUATION:
            raise H2Error(h2.PROTOCOL_ERROR, "CONTINUATION without HEADERS")
        # PRIORITY and unknown frame types are ignored, as the RFC asks

    def _apply_settings(self, payload: bytes) -> None:
        if len(payload) % 6:
            raise H2Error(h2.PROTOCOL_ERROR, "SETTINGS size")
        for i in range(0, len(payload), 6):
            key = int.from_bytes(payload[i : i + 2], "big")
            value = int.from_bytes(payload[i + 2 : i + 6], "big")
            if key == h2.INITIAL_WINDOW_SIZE:
                if value > h2.MAX_WINDOW:
                    raise H2Error(h2.FLOW_CONTROL_ERROR, "initial window too large")
                delta = value - self.peer_initial_window
                self.peer_initial_window = value
                for box in self.outboxes.values():
                    box.window += delta
            elif key == h2.MAX_FRAME_SIZE:
                if not h2.DEFAULT_MAX_FRAME <= value <= 16_777_215:
                    raise H2Error(h2.PROTOCOL_ERROR, "MAX_FRAME_SIZE out of range")
                self.peer_max_frame = value
            elif key == h2.MAX_CONCURRENT_STREAMS:
                self.peer_max_streams = value
        self.write(h2.frame(h2.SETTINGS, h2.ACK, 0))
        for box in list(self.blocked.values()):
            self.pump(box)

    def _window_update(self, stream: int, increment: int) -> None:
        if stream == 0:
            self.send_window += increment
            for box in list(self.blocked.values()):
                self.pump(box)
                if self.send_window <= 0:
                    break
            return
        target = self.outboxes.get(stream)
        if target is not None:
            target.window += increment
            self.pump(target)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True

    # --- what each side implements -----------------------------------------------------------

    def on_headers(self, stream: int, block: bytes, end: bool) -> None:
        raise NotImplementedError

    def on_data(self, stream: int, data: bytes, end: bool) -> None:
        raise NotImplementedError

    def on_reset(self, stream: int, code: int) -> None:
        raise NotImplementedError

    def on_goaway(self, last_stream: int, code: int) -> None:
        raise NotImplementedError

    def unary(self, data: bytes) -> int:
        """Take the start of ``data`` if it is one unary call's whole request (or answer)
        and everything needed to pass it on at once is in place
        (:mod:`gate.local.grpc_unary`), with the same bytes out and the same state after
        as frame by frame; returns how many bytes it took (the rest goes frame by frame).
        0, having changed nothing, leaves all of it to the frame-by-frame path."""
        return 0

    def stream_sent(self, stream: int) -> None:
        """Our side of ``stream`` is complete (END_STREAM written)."""

    def paired_stream(self, box: Outbox) -> int:
        """This side's stream whose bytes ``box`` (on the other side) carries."""
        raise NotImplementedError

    def still_receiving(self, stream: int) -> bool:
        raise NotImplementedError

    def last_peer_stream(self) -> int:
        return 0


def _takes_whole(connection: UpstreamSide, size: int, block_size: int) -> bool:
    """Whether a request body of ``size`` bytes and its header block go out as one HEADERS
    and one DATA frame: a body that the backend's connection and stream windows take and
    that, like the block, fits the backend's largest frame."""
    return (
        0 < size <= connection.send_window
        and size <= connection.peer_initial_window
        and size <= connection.peer_max_frame
        and block_size <= connection.peer_max_frame
    )


class Call:
    """One gRPC call: a client stream, and the backend stream it was sent to."""

    __slots__ = (
        "answered",
        "backend",
        "block",
        "cid",
        "client",
        "data_at",
        "down_box",
        "fresh",
        "headers",
        "kept",
        "kept_bytes",
        "over",
        "path",
        "pending",
        "pending_bytes",
        "read",
        "read_alone",
        "replayable",
        "request_ended",
        "resent",
        "role",
        "table",
        "uid",
        "up_box",
        "upstream",
    )

    def __init__(
        self,
        client: ClientSide,
        cid: int,
        headers: Headers,
        block: bytes | None,
        path: bytes | None = None,
    ) -> None:
        self.client = client
        self.cid = cid
        self.headers = headers
        self.block = block  # forwardable as it is (self-contained), else re-encoded
        self.path = path if path is not None else header(headers, b":path") or b""
        self.pending: list[bytes] = []  # request bytes not yet handed to a backend stream
        self.pending_bytes = 0
        self.kept: list[bytes] = []  # the request so far, for a second attempt
        self.kept_bytes = 0
        self.replayable = True
        self.read = b""  # the read that held the whole request, if one did
        self.read_alone = False  # and nothing else but perhaps a WINDOW_UPDATE
        self.data_at = 0
        self.request_ended = False
        self.table: RouteTable | None = None
        self.backend: Backend | None = None
        self.role = "stable"
        self.fresh = False
        self.resent = False  # sent again once after getting no answer: never twice
        self.upstream: UpstreamSide | None = None
        self.uid = 0
        self.up_box: Outbox | None = None
        self.down_box = Outbox(client, cid, None)
        self.answered = False
        self.over = False

    # --- the request -------------------------------------------------------------------------

    def request_data(self, data: bytes, end: bool) -> None:
        if self.request_ended:  # nothing follows END_STREAM (a client's late trailers)
            return
        self.request_ended = end
        if self.replayable:
            self.kept.append(data)
            self.kept_bytes += len(data)
            if self.kept_bytes > REPLAY_LIMIT_BYTES:
                self.replayable = False
                self.kept, self.kept_bytes = [], 0
        if self.up_box is not None:
            self.up_box.push(data, end)
            return
        self.pending.append(data)
        self.pending_bytes += len(data)
        if self.pending_bytes > MAX_UNROUTED_BYTES:
            self.fail(INVALID_ARGUMENT, "request too large to route")
            return
        if self.table is None:
            self.route()

    def route(self) -> None:
        routes = self.client.routes
        if self.path in GRPC_MODEL_METHODS:
            model = self._model_name()
            if model is None:
                return  # more of the message first
            table = routes.get(model)
            if table is None and routes.tables:
                self.fail(NOT_FOUND, f"Model with name {shown(model)} does not exist.")
                return
        else:
            table = routes.first()
        if table is None:
            self.fail(UNAVAILABLE, "no backend configured")
            return
        role, backend = table.pick(self.path == INFER)
        if backend is None:
            self.fail(UNAVAILABLE, "no backend configured")
            return
        self.table = table
        self.send_to(backend, role)

    def _model_name(self) -> str | None:
        """The model the first message names; None while too little of it has arrived."""
        data = b"".join(self.pending)
        if len(data) < 5:
            if self.request_ended:
                self.fail(INVALID_ARGUMENT, "malformed request: no request message")
            return None
        length = int.from_bytes(data[1:5], "big")
        body = data[5 : 5 + min(length, NAME_PREFIX_BYTES)]
        complete = len(body) == min(length, NAME_PREFIX_BYTES)
        if not complete and not self.request_ended:
            return None
        try:
            if data[0] & 1:  # compressed: read the name from the decompressed start
                body = self._decompressed(data[5 : 5 + length])
            return grpc_model_name(body)
        except (MalformedMessage, zlib.error, ValueError) as exc:
            self.fail(INVALID_ARGUMENT, f"malformed request: {exc}")
            return None

    def _decompressed(self, body: bytes) -> bytes:
        encoding = header(self.headers, b"grpc-encoding")
        if encoding == b"gzip":
            inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding == b"deflate":
            inflater = zlib.decompressobj()
        else:
            raise ValueError(f"unsupported grpc-encoding {encoding!r}")
        return inflater.decompress(body, NAME_PREFIX_BYTES)

    def send_to(self, backend: Backend, role: str) -> None:
        self.backend, self.role = backend, role
        backend.requests += 1
        connection = backend.grpc.available(self.client)
        if connection is not None:
            self.fresh = False
            self.attach(connection)
        else:
            self.fresh = True
            self.client.loop.create_task(self._connect(backend))

    async def _connect(self, backend: Backend) -> None:
        try:
            connection = await backend.grpc.connect(self.client)
        except UpstreamError as exc:
            if backend is self.backend and not self.over:
                self.upstream_failed(str(exc))
            return
        if backend is self.backend and not self.over:
            self.attach(connection)

    def attach(self, connection: UpstreamSide) -> None:
        self.upstream = connection
        self.uid = connection.open_stream(self)
        self.down_box.on_sent = connection  # what reaches the client frees the backend's window
        block = self.block if self.block is not None else h2.encode_literal(self.headers)
        data = self.kept if self.replayable else self.pending
        if self.request_ended and len(data) == 1 and self._sent_whole(connection, block, data[0]):
            self.pending, self.pending_bytes = [], 0
            return
        end_now = self.request_ended and not any(data)
        for piece in h2.header_frames(self.uid, block, end_now, connection.peer_max_frame):
            connection.write(piece)
        self.up_box = box = Outbox(connection, self.uid, self.client)
        if end_now:
            box.finished = True
            connection.stream_sent(self.uid)
        else:
            connection.outboxes[self.uid] = box
            box.chunks.extend(d for d in data if d)
            box.end = self.request_ended
            connection.pump(box)
        self.pending, self.pending_bytes = [], 0

    def _sent_whole(self, connection: UpstreamSide, block: bytes, body: bytes) -> bool:
        """A whole request that fits one HEADERS and one DATA frame and the backend's
        windows, written at once: what ``header_frames`` and a pump pass would write, and
        the client's connection window back as the pump's ``replenish`` gives it (the
        request is over, so no stream window)."""
        size = len(body)
        if not _takes_whole(connection, size, len(block)):
            return False
        uid = self.uid
        if self.read and block is self.block:
            forwarded = on_stream(self.read, len(self.read), (0, self.data_at), uid)
            self._wrote_whole(connection, forwarded, self.read_alone, size)
        else:
            self._wrote_whole(
                connection,
                h2.frame(h2.HEADERS, h2.END_HEADERS, uid, block)
                + h2.frame(h2.DATA, h2.END_STREAM, uid, body),
                False,
                size,
            )
        self.up_box = None  # (nothing more to send: request_data takes no more)
        connection.stream_sent(uid)
        return True

    def _wrote_whole(
        self, connection: UpstreamSide, forwarded: bytes | bytearray, now: bool, size: int
    ) -> None:
        """A whole request's frames written (at once when they are all the client's read
        held, see ``write_now``), its ``size`` bytes debited from the backend's window and
        the client's connection window given back as the pump's ``replenish`` would (the
        request is over, so no stream window). A shared connection gathers its writes to
        the end of the loop's turn instead, so that the calls of many clients leave in one
        write, which its backend process reads in one read (see GrpcPool)."""
        if now and not connection.shared:
            connection.write_now(forwarded)
        else:
            connection.write(forwarded)
        connection.send_window -= size
        self.client.give_back(size)

    def take_whole(self, body: bytes, read: bytes, data_at: int, alone: bool) -> None:
        """The whole request body, arrived at once (as ``request_data`` keeps it), and the
        read that held it (HEADERS, then DATA at ``data_at``): forwarded as it is, on the
        backend's stream, when the block is."""
        self.read, self.data_at, self.read_alone = read, data_at, alone
        self.request_ended = True
        if len(body) > REPLAY_LIMIT_BYTES:
            self.replayable = False
            self.pending, self.pending_bytes = [body], len(body)
        else:
            self.kept, self.kept_bytes = [body], len(body)

    def sent_at_once(
        self,
        connection: UpstreamSide,
        backend: Backend,
        role: str,
        body: bytes,
        read: bytes,
        data_at: int,
        end: int,
    ) -> bool:
        """The lane's usual case in one pass: a whole request (``read[:end]``, HEADERS
        then DATA at ``data_at``) that a pooled ``connection`` takes as it is, written on
        its stream; what ``take_whole``, ``send_to``, ``attach`` and ``_sent_whole`` write
        and change. False, having changed nothing, when any of them would do otherwise."""
        size = len(body)
        block = self.block
        assert block is not None  # the lane's block is always a cached, whole one
        if size > REPLAY_LIMIT_BYTES or not _takes_whole(connection, size, len(block)):
            return False
        self.request_ended = True
        self.kept, self.kept_bytes = [body], size
        self.backend, self.role = backend, role
        backend.requests += 1
        self.upstream = connection
        self.uid = uid = connection.open_stream(self)
        self.down_box.on_sent = connection  # what reaches the client frees the backend's window
        self._wrote_whole(
            connection, on_stream(read, end, (0, data_at), uid), alone(read, end), size
        )
        return True

    # --- the answer --------------------------------------------------------------------------

    def response_headers(
        self, headers: Headers, block: bytes, self_contained: bool, end: bool
    ) -> None:
        backend = self.backend
        assert backend is not None
        client = self.client
        forward = block if self_contained else h2.encode_literal(headers)
        if not self.answered:
            self.answered = True
            if not backend.reachable:
                backend.mark(True, self.role)
            if header(headers, b":status") != b"200":
                backend.errors += 1
            if end:  # trailers-only
                self._count_status(headers)
                self.kept, self.kept_bytes = [], 0
                self.down_box.push_trailer(
                    h2.header_frames(self.cid, forward, True, client.peer_max_frame)
                )
                return
            self.kept, self.kept_bytes = [], 0
            for piece in h2.header_frames(self.cid, forward, False, client.peer_max_frame):
                client.write(piece)
            client.outboxes[self.cid] = self.down_box
            return
        self._count_status(headers)
        self.down_box.push_trailer(h2.header_frames(self.cid, forward, True, client.peer_max_frame))

    def whole_answer(
        self,
        upstream: UpstreamSide,
        read: bytes,
        head: bytes,
        size: int,
        trailer: bytes,
        at: int,
        end: int,
        alone: bool,
    ) -> bool:
        """A whole 200 answer (headers, one message, trailers) from ``upstream``, passed on
        at once if the client's windows take it: what ``response_headers``,
        ``response_data`` and the trailers' ``response_headers`` write and change, in one
        pass. False, having changed nothing, otherwise. ``alone``: the read held nothing
        more for the client (so nothing else could join this write)."""
        client, box, backend = self.client, self.down_box, self.backend
        if (
            backend is None
            or box.on_sent is not upstream
            or self.answered
            or self.over
            or client.closed
            or box.finished
            or box.chunks
            or size > min(client.send_window, box.window)
            or max(size, len(head), len(trailer)) > client.peer_max_frame
        ):
            return False
        failed = upstream.plain_answers.get((head, trailer))
        if failed is None or not upstream.headers.stateless:
            headers = upstream.headers.cached(head)
            trailers = upstream.headers.cached(trailer)
            if headers is None or trailers is None or header(headers, b":status") != b"200":
                return False
            failed = header(trailers, b"grpc-status") not in CLIENT_MISTAKES
            upstream.remember_answer(head, trailer, failed)
        self.answered = True
        if not backend.reachable:
            backend.mark(True, self.role)
        self.kept, self.kept_bytes = [], 0
        cid, uid = self.cid, self.uid
        forwarded = on_stream(read, end, (0, at, at + 9 + size), cid)
        if alone:
            client.write_now(forwarded)
        else:
            client.write(forwarded)
        client.send_window -= size
        upstream.give_back(size)  # the pump's replenish: the stream's credit ends with it
        if self.up_box is None:  # sent whole: no outbox, no credit, only the call to drop
            upstream.calls.pop(uid, None)
        else:
            upstream.stream_over(uid)
        if failed:  # what _count_status counts
            backend.errors += 1
        box.end = box.finished = True
        client.stream_sent(cid)
        return True

    def _count_status(self, headers: Headers) -> None:
        status = header(headers, b"grpc-status")
        if status not in CLIENT_MISTAKES and self.backend is not None:
            self.backend.errors += 1

    def response_data(self, data: bytes, end: bool) -> None:
        self.down_box.push(data, end)

    def upstream_reset(self, code: int) -> None:
        """The backend reset the stream. Not processed (REFUSED_STREAM): send it again."""
        if not self.answered and code == h2.REFUSED_STREAM and self.replayable and not self.resent:
            self._again()
            return
        if self.backend is not None:
            self.backend.errors += 1
        self._end_client(code if code else h2.CANCEL)

    def upstream_failed(self, reason: str, unprocessed: bool = False) -> None:
        """No answer head: connection refused, closed, or went away before this stream."""
        backend, table = self.backend, self.table
        self.upstream, self.up_box = None, None
        if self.over or backend is None or table is None:
            return
        if self.answered:
            backend.errors += 1
            self._end_client(h2.INTERNAL_ERROR)
            return
        # not fresh: a pooled connection, which the backend may just have closed; once
        # only, so that a request that brings its backend down is not sent round forever
        unsent = (unprocessed or not self.fresh) and not self.resent
        target = table.after_no_answer(
            backend, self.role, unsent=unsent, replayable=self.replayable
        )
        if target is not None:
            self.resent = self.resent or target[0] is backend
            self.send_to(*target)
            return
        self.fail(UNAVAILABLE, f"upstream: {reason}")

    def _again(self) -> None:
        assert self.backend is not None
        self.resent = True
        self.upstream, self.up_box = None, None
        self.send_to(self.backend, self.role)

    # --- endings -----------------------------------------------------------------------------

    def fail(self, code: int, message: str) -> None:
        """Answer with a status of our own (trailers-only) and drop the backend stream."""
        if self.over:
            return
        self._cancel_upstream()
        if self.answered:
            self._end_client(h2.INTERNAL_ERROR)
            return
        self.answered = True
        fields = (
            (b":status", b"200"),
            (b"content-type", b"application/grpc"),
            (b"grpc-status", str(code).encode()),
            (b"grpc-message", quote(message, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~").encode()),
        )
        frames = h2.header_frames(
            self.cid, h2.encode_literal(fields), True, self.client.peer_max_frame
        )
        self.client.outboxes[self.cid] = self.down_box
        self.down_box.push_trailer(frames)

    def _end_client(self, code: int) -> None:
        self._cancel_upstream()
        self.client.abort_stream(self.cid, code)
        self.client.call_over(self)

    def _cancel_upstream(self) -> None:
        upstream, self.upstream = self.upstream, None
        if upstream is not None and self.uid in upstream.calls:
            upstream.calls.pop(self.uid, None)
            upstream.abort_stream(self.uid, h2.CANCEL)

    def client_gone(self) -> None:
        self.over = True
        self._cancel_upstream()


class ClientSide(Endpoint):
    """A client's connection to the router's gRPC port."""

    def __init__(self, proxy: GrpcProxy) -> None:
        super().__init__(proxy.loop)
        self.proxy = proxy
        self.routes = proxy.routes
        self.calls: dict[int, Call] = {}
        self.upstreams: set[UpstreamSide] = set()  # opened for this client's calls
        self.last_stream = 0
        self._preface = b""
        self._timer: asyncio.TimerHandle | None = None
        self._going_away = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.proxy.connections.add(self)
        self._timer = self.loop.call_later(self.proxy.head_timeout_s, self._no_preface)
        self.write(h2.settings_frame({**OUR_SETTINGS, h2.MAX_CONCURRENT_STREAMS: MAX_STREAMS}))
        self.write(h2.window_update(0, CONNECTION_WINDOW - h2.DEFAULT_WINDOW))

    def data_received(self, data: bytes) -> None:
        if self._timer is not None:  # still reading the preface
            self._preface += data
            if len(self._preface) < len(h2.PREFACE):
                if not h2.PREFACE.startswith(self._preface):
                    self.close(h2.PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                return
            if not self._preface.startswith(h2.PREFACE):
                self.close(h2.PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                return
            self._timer.cancel()
            self._timer = None
            data, self._preface = self._preface[len(h2.PREFACE) :], b""
        super().data_received(data)

    def _no_preface(self) -> None:
        self._timer = None
        self.close(h2.PROTOCOL_ERROR, "no connection preface in time")

    def on_headers(self, stream: int, block: bytes, end: bool) -> None:
        headers, self_contained = self.headers.read(block)
        call = self.calls.get(stream)
        if call is not None:  # trailers from a client: gRPC has none; end the request
            if end:
                call.request_data(b"", True)
            return
        if stream <= self.last_stream or not stream & 1:
            raise H2Error(h2.PROTOCOL_ERROR, f"stream {stream} cannot be opened")
        self.last_stream = stream
        if self._going_away or len(self.calls) >= MAX_STREAMS:
            self.write(h2.rst_stream(stream, h2.REFUSED_STREAM))
            return
        call = Call(self, stream, headers, block if self_contained else None)
        self.calls[stream] = call
        if end:
            call.request_ended = True
        if call.path in GRPC_MODEL_METHODS and not end:
            return  # routed once the model name has arrived
        call.route()

    def unary(self, data: bytes) -> int:
        if self._going_away or len(self.calls) >= MAX_STREAMS:
            return 0
        parsed = unary_request(data, self.frames.max_frame)
        if parsed is None:
            return 0
        stream, block, body, at, end = parsed
        if stream <= self.last_stream or not stream & 1:
            return 0
        headers = self.headers.cached(block)
        if headers is None or header(headers, b":path") != INFER:
            return 0
        model = single_message_model(body, NAME_PREFIX_BYTES)
        table = self.routes.get(model) if model is not None else None
        if table is None:
            return 0
        # from here on, as on_headers, on_data and route would
        self.last_stream = stream
        call = Call(self, stream, headers, block, INFER)
        self.calls[stream] = call
        call.table = table
        role, backend = table.pick(True)
        if backend is not None:
            connection = backend.grpc.available(self)
            if connection is not None and call.sent_at_once(
                connection, backend, role, body, data, at, end
            ):
                return end
        call.take_whole(body, data[:end] if end < len(data) else data, at, alone(data, end))
        if backend is None:
            call.fail(UNAVAILABLE, "no backend configured")
        else:
            call.send_to(backend, role)
        return end

    def on_data(self, stream: int, data: bytes, end: bool) -> None:
        call = self.calls.get(stream)
        if call is None or call.over or call.request_ended:
            self.give_back(len(data))
            return
        call.request_data(data, end)

    def on_reset(self, stream: int, code: int) -> None:
        call = self.calls.pop(stream, None)
        if call is not None:
            call.client_gone()

    def on_goaway(self, last_stream: int, code: int) -> None:
        self._going_away = True
        if not self.calls:
            self.close()

    def stream_sent(self, stream: int) -> None:
        call = self.calls.pop(stream, None)
        if call is not None:
            call.over = True
            if not call.request_ended:  # answered before the request ended: stop it
                self.write(h2.rst_stream(stream, h2.NO_ERROR))
            if call.upstream is not None and call.upstream.calls.get(call.uid) is call:
                call.upstream.calls.pop(call.uid, None)
                call.upstream.abort_stream(call.uid, h2.CANCEL)
        self.forget_credit(stream)
        if self._going_away and not self.calls:
            self.close()

    def call_over(self, call: Call) -> None:
        call.over = True
        self.calls.pop(call.cid, None)
        self.forget_credit(call.cid)

    def paired_stream(self, box: Outbox) -> int:
        call = box.conn.calls.get(box.stream) if isinstance(box.conn, UpstreamSide) else None
        return call.cid if call is not None else 0

    def still_receiving(self, stream: int) -> bool:
        call = self.calls.get(stream)
        return call is not None and not call.request_ended

    def last_peer_stream(self) -> int:
        return self.last_stream

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self._timer is not None:
            self._timer.cancel()
        self.proxy.connections.discard(self)
        calls, self.calls = self.calls, {}
        for call in calls.values():
            call.client_gone()
        upstreams, self.upstreams = self.upstreams, set()
        for upstream in upstreams:
            upstream.retire()


class UpstreamSide(Endpoint):
    """The router's connection to one backend's gRPC port."""

    def __init__(self, pool: GrpcPool, loop: asyncio.AbstractEventLoop, process: int = -1) -> None:
        super().__init__(loop)
        self.pool = pool
        self.process = process  # its backend process's index when shared, else -1
        self.shared = self.window_on_receipt = process >= 0
        if self.shared:
            self.stream_window = SHARED_STREAM_WINDOW
        self.opened_at = loop.time()
        self.calls: dict[int, Call] = {}
        self.next_stream = 1
        self.draining = False
        self.owner: ClientSide | None = None
        # (answer block, trailer block) -> whether the trailers count as a backend error,
        # for blocks read before (see Call.whole_answer)
        self.plain_answers: dict[tuple[bytes, bytes], bool] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        settings = {**OUR_SETTINGS, h2.INITIAL_WINDOW_SIZE: self.stream_window}
        self.write(h2.PREFACE + h2.settings_frame(settings))
        self.write(h2.window_update(0, CONNECTION_WINDOW - h2.DEFAULT_WINDOW))

    def remember_answer(self, head: bytes, trailer: bytes, failed: bool) -> None:
        """A whole answer's blocks as ``whole_answer`` judged them from the header cache
        (a 200 answer; whether its trailers count as an error), so the next identical
        answer, a backend's usual, is judged by one lookup. Bounded as the cache is."""
        if len(self.plain_answers) >= HeaderReader.CACHE_SIZE:
            self.plain_answers.clear()
        self.plain_answers[head, trailer] = failed

    def usable(self) -> bool:
        return (
            not self.closed
            and not self.draining
            and len(self.calls) < self.peer_max_streams
            and self.next_stream < STREAM_ID_LIMIT
        )

    def open_stream(self, call: Call) -> int:
        stream = self.next_stream
        self.next_stream += 2
        self.calls[stream] = call
        if self.next_stream >= STREAM_ID_LIMIT:  # out of stream ids: its pool opens another
            self.retire()
        return stream

    def on_headers(self, stream: int, block: bytes, end: bool) -> None:
        headers, self_contained = self.headers.read(block)
        call = self.calls.get(stream)
        if call is None:
            return
        if end:
            self.stream_over(stream)
        call.response_headers(headers, block, self_contained, end)
        self._close_if_drained()

    def unary(self, data: bytes) -> int:
        parsed = unary_answer(data, self.frames.max_frame)
        if parsed is None:
            return 0
        stream, head, size, trailer, at, end = parsed
        call = self.calls.get(stream)
        if call is None or not call.whole_answer(
            self, data, head, size, trailer, at, end, alone(data, end)
        ):
            return 0
        self._close_if_drained()
        return end

    def on_data(self, stream: int, data: bytes, end: bool) -> None:
        call = self.calls.get(stream)
        if call is None or self.window_on_receipt:
            # on a shared connection at once: a client that stops reading holds its own
            # streams' windows (at most STREAM_WINDOW each, MAX_STREAMS per client
            # connection), never the connection's that every other client's answers need
            self.give_back(len(data))
            if call is None:
                return
        if end:
            self.stream_over(stream)
        call.response_data(data, end)
        self._close_if_drained()

    def on_reset(self, stream: int, code: int) -> None:
        call = self.calls.pop(stream, None)
        if call is not None:
            call.upstream_reset(code)
        self._close_if_drained()

    def stream_over(self, stream: int) -> None:
        """The backend answered in full: nothing more goes up this stream either."""
        self.calls.pop(stream, None)
        box = self.outboxes.pop(stream, None)
        if box is not None:
            box.finished = True
        self.blocked.pop(stream, None)
        self.forget_credit(stream)

    def _close_if_drained(self) -> None:
        if self.draining and not self.calls:
            self.close()

    def retire(self) -> None:
        """No new calls; closed once those in flight are over."""
        self.draining = True
        self.pool.forget(self)
        self._close_if_drained()

    def on_goaway(self, last_stream: int, code: int) -> None:
        self.draining = True
        self.pool.forget(self)
        for stream in [s for s in self.calls if s > last_stream]:
            call = self.calls.pop(stream)
            call.upstream_failed("backend went away", unprocessed=True)
        self._close_if_drained()

    def stream_sent(self, stream: int) -> None:
        pass

    def paired_stream(self, box: Outbox) -> int:
        call = box.conn.calls.get(box.stream) if isinstance(box.conn, ClientSide) else None
        return call.uid if call is not None and call.upstream is self else 0

    def still_receiving(self, stream: int) -> bool:
        return stream in self.calls

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.pool.forget(self)
        if self.shared and not self.draining:
            # lost, not closed after a GOAWAY: its process has likely died, so its other
            # connections take no more calls (the calls below are sent again elsewhere)
            self.pool.suspect(self.process)
        if self.owner is not None:
            self.owner.upstreams.discard(self)
        calls, self.calls = self.calls, {}
        reason = f"connection closed: {exc}" if exc else "connection closed"
        for call in calls.values():
            call.upstream_failed(reason)


class GrpcPool:
    """HTTP/2 connections to one backend's gRPC server, in one of two modes.

    **One per client connection** (a backend known by its gRPC port only). Mirrors what the
    backend would see without the router: a backend with several processes on one port
    (SO_REUSEPORT) spreads connections, not streams, so funnelling every client into a few
    multiplexed connections would land them unevenly on its processes (measured: 6 and 1,
    7 and 1) and its p99 past 1.5x direct.

    **Shared** (the backend also names a port per process, ``processes``): every client's
    calls multiplexed over :data:`PROCESS_CONNECTIONS` connections to each process, each
    call to the connection with the fewest calls in flight, so the processes get equal
    shares. Their writes are gathered to the end of the loop's turn, so the calls of many
    clients leave in one write and are read in one read: measured side by side in front of
    a 2-process predictor at 64 connections, 0.85x direct gRPC throughput against 0.79x
    with a connection per client, p99 1.08x direct against 1.23x (README). A lost
    connection is reopened in the background (:data:`REOPEN_DELAY_S`, doubling to
    :data:`MAX_REOPEN_DELAY_S`) while the others serve; with none usable a call waits for
    one round of connecting, and gets UNAVAILABLE (or the canary's fallback) if that fails.
    The connection windows are given back as answers arrive (``window_on_receipt``), so a
    client that stops reading stalls only its own streams, whose windows are smaller
    (:data:`SHARED_STREAM_WINDOW`) so that what waits for one client connection stays
    within what its own connection window held in the other mode. A connection lost
    without a GOAWAY takes its process's other connections out of use (likely dead too),
    so the calls it held are sent again on another process's."""

    def __init__(self, target: str, processes: Sequence[str] = ()) -> None:
        self.host, self.port = _host_port(target)
        self.target = target
        self._by_client: dict[ClientSide, UpstreamSide] = {}
        self._closed = False
        self.processes = tuple(_host_port(process) for process in processes)
        self._shared: list[UpstreamSide] = []
        self._filling: asyncio.Task[str | None] | None = None
        self._opened: asyncio.Future[None] | None = None  # resolved as a connection opens
        self._repair: asyncio.Task[None] | None = None
        self._reopen_delay = REOPEN_DELAY_S
        self._routed = True  # in the routes: lost connections are reopened in the background

    def available(self, client: ClientSide) -> UpstreamSide | None:
        if self.processes:
            best: UpstreamSide | None = None
            fewest = 1 << 62
            for shared in self._shared:
                if len(shared.calls) < fewest and shared.usable():
                    best, fewest = shared, len(shared.calls)
            return best
        connection = self._by_client.get(client)
        if connection is not None and connection.usable():
            return connection
        return None

    async def connect(self, client: ClientSide) -> UpstreamSide:
        if self._closed:
            raise UpstreamError("backend was removed from the routes")
        if self.processes:
            return await self._connect_shared(client)
        connection = await self._dial(self.host, self.port, self.target)
        connection.owner = client
        client.upstreams.add(connection)
        if self._closed or client.closed:
            connection.retire()
            raise UpstreamError("backend was removed from the routes")
        current = self._by_client.get(client)
        if current is None or not current.usable():
            self._by_client[client] = connection
        return connection

    async def _connect_shared(self, client: ClientSide) -> UpstreamSide:
        """No shared connection is usable: a round of connecting (one for all the calls
        waiting), and the least busy connection as soon as one is open (a process slow to
        accept delays nobody), or the round's failure."""
        fill = self._fill()
        while (best := self.available(client)) is None and not fill.done():
            if self._opened is None:
                self._opened = asyncio.get_running_loop().create_future()
            await asyncio.wait((fill, self._opened), return_when=asyncio.FIRST_COMPLETED)
        if best is not None:
            return best
        if self._closed:
            raise UpstreamError("backend was removed from the routes")
        raise UpstreamError(fill.result() or f"no usable connection to {self.target}")

    def _fill(self) -> asyncio.Task[str | None]:
        """The round of connecting in progress, or a new one."""
        if self._filling is None:
            self._filling = asyncio.get_running_loop().create_task(self._open_missing())
        return self._filling

    async def _open_missing(self) -> str | None:
        """Open, all at once, what each process lacks of :data:`PROCESS_CONNECTIONS`; when
        none lacks any but none is usable (all at the backend's stream limit), one more to
        each process. Returns the last failure, None if all opened."""
        try:
            wanted = [
                index
                for index, live in enumerate(self._live())
                for _ in range(PROCESS_CONNECTIONS - live)
            ]
            if not wanted and not any(c.usable() for c in self._shared):
                wanted = list(range(len(self.processes)))
            results = await asyncio.gather(
                *(self._open(index) for index in wanted), return_exceptions=True
            )
            errors = [str(r) for r in results if isinstance(r, Exception)]
            return errors[-1] if errors else None
        finally:
            self._filling = None

    def _live(self) -> list[int]:
        """Shared connections in use, per process."""
        live = [0] * len(self.processes)
        for connection in self._shared:
            live[connection.process] += 1
        return live

    async def _dial(self, host: str, port: int, where: str, process: int = -1) -> UpstreamSide:
        """A new connection to ``host:port``, named ``where`` in the error (a process's,
        shared, when ``process`` >= 0)."""
        loop = asyncio.get_running_loop()
        try:
            _, connection = await asyncio.wait_for(
                loop.create_connection(lambda: UpstreamSide(self, loop, process), host, port),
                CONNECT_TIMEOUT_S,
            )
        except (OSError, TimeoutError) as exc:
            raise UpstreamError(f"cannot connect to {where}: {exc!r}") from exc
        return connection

    async def _open(self, index: int) -> UpstreamSide:
        host, port = self.processes[index]
        connection = await self._dial(host, port, f"{host}:{port}", index)
        if self._closed or connection.closed:
            connection.retire()
            raise UpstreamError(f"connection to {host}:{port} closed at once")
        self._shared.append(connection)
        if self._opened is not None:
            self._opened.set_result(None)
            self._opened = None
        return connection

    def forget(self, connection: UpstreamSide) -> None:
        """``connection`` takes no new calls (gone away, closed, retired)."""
        if connection.shared:
            if connection in self._shared:
                self._shared.remove(connection)
                if connection.loop.time() - connection.opened_at >= MAX_REOPEN_DELAY_S:
                    self._reopen_delay = REOPEN_DELAY_S  # it had served: start afresh
                self._repair_soon()
            return
        for client in [c for c, up in self._by_client.items() if up is connection]:
            del self._by_client[client]

    def suspect(self, process: int) -> None:
        """A connection to ``process`` was lost: its others take no new calls (closed
        once theirs are over) and are replaced as the lost one is."""
        for connection in [c for c in self._shared if c.process == process]:
            connection.retire()

    def unrouted(self) -> None:
        """The backend left the routes (its pool closes after a grace period): lost
        connections are no longer reopened ahead of calls, which would only retry a
        predictor that is being retired; calls still in flight may open one."""
        self._routed = False
        if self._repair is not None:
            self._repair.cancel()
            self._repair = None

    def _repair_soon(self) -> None:
        if self._closed or not self._routed or self._repair is not None:
            return
        with contextlib.suppress(RuntimeError):  # no running loop: shutting down
            self._repair = asyncio.get_running_loop().create_task(self._reopen())

    async def _reopen(self) -> None:
        """Reopen lost shared connections, backing off: each attempt waits twice as long
        as the one before, up to :data:`MAX_REOPEN_DELAY_S`, until a reopened connection
        has lived that long (a backend that accepts and then drops every connection is
        not hammered). One warning per streak of failed attempts."""
        failing = False
        try:
            # (close() and unrouted() cancel this task)
            while min(self._live()) < PROCESS_CONNECTIONS:
                await asyncio.sleep(self._reopen_delay)
                self._reopen_delay = min(self._reopen_delay * 2, MAX_REOPEN_DELAY_S)
                error = await asyncio.shield(self._fill())
                if error is None:
                    if failing:
                        logger.info("gRPC backend %s: connections reopened", self.target)
                    failing = False
                elif not failing:
                    failing = True
                    logger.warning(
                        "gRPC backend %s: %s; retrying with back-off up to %.0f s",
                        self.target,
                        error,
                        MAX_REOPEN_DELAY_S,
                    )
        finally:
            self._repair = None

    def close(self) -> None:
        """Idle connections close now; busy ones once their calls are over."""
        self._closed = True
        self.unrouted()  # (no more reopening)
        if self._opened is not None:
            self._opened.set_result(None)
            self._opened = None
        connections = [*self._by_client.values(), *self._shared]
        self._by_client, self._shared = {}, []
        for connection in connections:
            connection.retire()


def _host_port(target: str) -> tuple[str, int]:
    host, _, port = target.rpartition(":")
    return host.strip("[]"), int(port)


class GrpcProxy:
    """The client-facing gRPC port: the protocol factory and its open connections."""

    def __init__(
        self, routes: Routes, loop: asyncio.AbstractEventLoop, head_timeout_s: float
    ) -> None:
        self.routes = routes
        self.loop = loop
        self.head_timeout_s = head_timeout_s
        self.connections: set[ClientSide] = set()

    def __call__(self) -> ClientSide:
        return ClientSide(self)

    async def drain(self, grace_s: float) -> None:
        """Stop: GOAWAY to every client (calls in flight finish), cut after ``grace_s``."""
        for connection in list(self.connections):
            connection.on_goaway(connection.last_stream, h2.NO_ERROR)
            if not connection.closed:
                connection.write(h2.goaway(connection.last_stream, h2.NO_ERROR))
        deadline = self.loop.time() + grace_s
        while self.connections and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.abort()
