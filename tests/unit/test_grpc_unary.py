"""The router's unary gRPC lane writes what the frame-by-frame path writes and leaves the
same state behind, for whatever reads arrive.

Two proxies on fake transports, one with the lane and one without (``unary`` takes
nothing, and a whole request is not written in one piece), are fed the same reads: calls
shaped as clients and grpcio send them and variations of them (other flags, padding,
stream ids, paths, models, compressed or cut bodies, extra frames, reads split anywhere),
answers likewise (other statuses, flags, empty or extra frames), and peers with small
windows or frames. After every read both must have written the same bytes to every
connection and agree on every counter, window and open call. The lane's own parsers are
checked against :class:`h2.FrameReader`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import hpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gate.local import grpc_proxy as gp
from gate.local import h2
from gate.local.grpc_unary import (
    alone,
    single_message_model,
    unary_answer,
    unary_request,
    window_update_fields,
)
from gate.local.route_table import BackendSpec, Routes, RoutesSpec

INFER = b"/inference.GRPCInferenceService/ModelInfer"


class Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()

    def write(self, data: Any) -> None:
        self.out += data

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False


def message(model: bytes, extra: int = 8) -> bytes:
    """A serialized request naming ``model`` (field 1), with a few more bytes (field 2)."""
    body = b"\x0a" + bytes((len(model),)) + model + b"\x12" + bytes((extra,)) + b"x" * extra
    return b"\x00" + len(body).to_bytes(4, "big") + body


@dataclass
class Proxy:
    """A client connection and one backend connection each for stable and canary."""

    loop: asyncio.AbstractEventLoop
    client: gp.ClientSide
    client_out: Transport
    upstreams: dict[str, gp.UpstreamSide]
    upstream_out: dict[str, Transport]
    routes: Routes
    lane: bool

    def run(self) -> None:
        """A few turns of the loop: the deferred flushes, and a new connection's attempt
        (refused at once: these tests make none)."""

        async def turns() -> None:
            for _ in range(4):
                await asyncio.sleep(0)

        self.loop.run_until_complete(turns())

    def feed(self, side: str, data: bytes) -> None:
        target = self.client if side == "client" else self.upstreams[side]
        with lane(self.lane):
            target.data_received(data)
            self.run()

    def take(self) -> tuple[bytes, ...]:
        out = [bytes(self.client_out.out)] + [bytes(t.out) for t in self.upstream_out.values()]
        self.client_out.out.clear()
        for transport in self.upstream_out.values():
            transport.out.clear()
        return tuple(out)

    def state(self) -> dict[str, Any]:
        table = self.routes.get("iris")
        assert table is not None
        client = self.client
        return {
            "client": endpoint_state(client),
            "last_stream": client.last_stream,
            "calls": {
                cid: (c.answered, c.over, c.request_ended, c.role, c.uid, c.kept_bytes)
                for cid, c in client.calls.items()
            },
            "upstreams": {role: endpoint_state(up) for role, up in self.upstreams.items()},
            "upstream_calls": {role: sorted(up.calls) for role, up in self.upstreams.items()},
            "backends": table.describe(),
        }


def endpoint_state(endpoint: gp.Endpoint) -> dict[str, Any]:
    return {
        "closed": endpoint.closed,
        "send_window": endpoint.send_window,
        "credit": endpoint._credit_connection,
        "stream_credit": dict(endpoint._credit),
        "outboxes": {
            s: (b.window, b.finished, list(b.chunks)) for s, b in endpoint.outboxes.items()
        },
        "blocked": sorted(endpoint.blocked),
    }


_REAL = (gp.ClientSide.unary, gp.UpstreamSide.unary)
_SENT_WHOLE = gp.Call._sent_whole


class lane:
    """With or without the lane (both of its sides, and the whole request's one write),
    for the duration of one read."""

    def __init__(self, on: bool) -> None:
        self.on = on

    def __enter__(self) -> None:
        if not self.on:
            gp.ClientSide.unary = lambda self, data: 0  # type: ignore[method-assign]
            gp.UpstreamSide.unary = lambda self, data: 0  # type: ignore[method-assign]
            gp.Call._sent_whole = lambda self, connection, block, body: False  # type: ignore[method-assign]

    def __exit__(self, *exc: object) -> None:
        gp.ClientSide.unary, gp.UpstreamSide.unary = _REAL  # type: ignore[method-assign]
        gp.Call._sent_whole = _SENT_WHOLE  # type: ignore[method-assign]


def make_proxy(
    with_lane: bool,
    client_settings: dict[int, int],
    backend_settings: dict[int, int],
    shared: bool = False,
) -> Proxy:
    """``shared``: the backends' connections are their pools' shared ones (the backends
    name a port per process), else each pool's connection for this client."""
    loop = asyncio.new_event_loop()
    routes = Routes()

    def spec(http: str, grpc: str) -> BackendSpec:
        return BackendSpec(http=http, grpc=grpc, grpc_processes=(grpc,) if shared else ())

    routes.apply(
        "iris",
        RoutesSpec(
            stable=spec("http://127.0.0.1:1", "127.0.0.1:2"),
            canary=spec("http://127.0.0.1:3", "127.0.0.1:4"),
            canary_weight=50,
        ),
    )
    table = routes.get("iris")
    assert table is not None and table.stable is not None and table.canary is not None
    table._random.seed(20261203)
    proxy_port = gp.GrpcProxy(routes, loop, 5.0)
    client = proxy_port()
    client_out = Transport()
    client.connection_made(client_out)
    client._timer.cancel()  # type: ignore[union-attr]
    client._timer = None
    upstreams, upstream_out = {}, {}
    for role, backend in (("stable", table.stable), ("canary", table.canary)):
        backend.grpc.connect = refuse  # type: ignore[method-assign]
        upstream = gp.UpstreamSide(backend.grpc, loop, 0 if shared else -1)
        upstream_out[role] = out = Transport()
        upstream.connection_made(out)
        if shared:  # what the pool's _open records
            backend.grpc._shared.append(upstream)
        else:
            upstream.owner = client
            client.upstreams.add(upstream)
            backend.grpc._by_client[client] = upstream
        upstreams[role] = upstream
    proxy = Proxy(loop, client, client_out, upstreams, upstream_out, routes, with_lane)
    proxy.feed("client", h2.settings_frame(client_settings) + h2.frame(h2.SETTINGS, h2.ACK, 0))
    for role in upstreams:
        proxy.feed(role, h2.settings_frame(backend_settings) + h2.frame(h2.SETTINGS, h2.ACK, 0))
    return proxy


async def refuse(client: gp.ClientSide) -> gp.UpstreamSide:
    raise gp.UpstreamError("no new connections in these tests")


@dataclass
class Encoders:
    """One HPACK encoder per direction, as a client and grpcio keep them (table size 0
    once the router's SETTINGS are acknowledged: the first block carries the update)."""

    request: hpack.Encoder = field(default_factory=hpack.Encoder)
    answers: dict[str, hpack.Encoder] = field(default_factory=dict)  # one per backend

    def __post_init__(self) -> None:
        self.request.header_table_size = 0

    def answer(self, role: str) -> hpack.Encoder:
        if role not in self.answers:
            self.answers[role] = hpack.Encoder()
            self.answers[role].header_table_size = 0
        return self.answers[role]


def request_block(enc: Encoders, path: bytes, encoding: bytes | None) -> bytes:
    fields = [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", path),
        (b":authority", b"127.0.0.1:9000"),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
    ]
    if encoding is not None:
        fields.append((b"grpc-encoding", encoding))
    return bytes(enc.request.encode(fields))


# --- what the generated reads vary --------------------------------------------------------


@st.composite
def call_reads(draw: st.DrawFn, enc: Encoders, stream: int) -> tuple[int, list[bytes]]:
    """(the stream the call opens, the reads that carry it)."""
    plain = draw(st.integers(0, 9)) < 7  # most calls exactly as clients send them
    path = INFER if plain else draw(st.sampled_from([INFER, INFER, b"/x/ServerLive", b"/y"]))
    model = b"iris" if plain else draw(st.sampled_from([b"iris", b"iris", b"nope", b""]))
    body = message(model, draw(st.integers(0, 60)))
    block = request_block(enc, path, None if plain else draw(st.sampled_from([None, b"gzip"])))
    head_flags, data_flags, data_stream = h2.END_HEADERS, h2.END_STREAM, stream
    if not plain:
        head_flags = draw(st.sampled_from([h2.END_HEADERS, h2.END_HEADERS | h2.END_STREAM]))
        data_flags = draw(st.sampled_from([h2.END_STREAM, 0, h2.END_STREAM | h2.PADDED]))
        if data_flags & h2.PADDED:
            body = b"\x02" + body + b"\0\0"
        stream = draw(st.sampled_from([stream, stream, max(stream - 2, 1), stream + 1]))
        data_stream = draw(st.sampled_from([stream, stream, stream + 2]))
        mangle = draw(st.sampled_from(["", "", "compressed", "short", "long", "cut"]))
        if mangle == "compressed":
            body = b"\x01" + body[1:]
        elif mangle == "short":
            body = body[:5] + body[7:]
        elif mangle == "long":
            body = body + b"\x18\x01"
        elif mangle == "cut":
            body = body[:3]
    data = h2.frame(h2.HEADERS, head_flags, stream, block) + h2.frame(
        h2.DATA, data_flags, data_stream, body
    )
    if not plain and draw(st.booleans()):
        data += draw(st.sampled_from([h2.window_update(0, 100), h2.frame(h2.PING, 0, 0, b"p" * 8)]))
    return stream, split(draw, data, plain)


@st.composite
def answer_reads(draw: st.DrawFn, enc: hpack.Encoder, uid: int) -> list[bytes]:
    plain = draw(st.integers(0, 9)) < 7  # the shape grpcio sends, whatever the statuses
    status = draw(st.sampled_from([b"200", b"200", b"200", b"503"]))
    grpc_status = draw(st.sampled_from([b"0", b"0", b"3", b"14"]))
    head = bytes(
        enc.encode(
            [
                (b":status", status),
                (b"content-type", b"application/grpc"),
                (b"grpc-accept-encoding", b"identity,deflate,gzip"),
            ]
        )
    )
    trailer = bytes(enc.encode([(b"grpc-status", grpc_status)]))
    body = b"\x00" + (20).to_bytes(4, "big") + b"\x0a\x04iris" + b"r" * 14
    data_flags, trailer_flags = 0, h2.END_HEADERS | h2.END_STREAM
    if not plain:
        body = draw(st.sampled_from([body, body, b"", body * 3]))
        data_flags = draw(st.sampled_from([0, 0, h2.END_STREAM]))
        trailer_flags = draw(st.sampled_from([trailer_flags, trailer_flags, h2.END_HEADERS]))
    data = (
        h2.frame(h2.HEADERS, h2.END_HEADERS, uid, head)
        + h2.frame(h2.DATA, data_flags, uid, body)
        + h2.frame(h2.HEADERS, trailer_flags, uid, trailer)
    )
    if draw(st.booleans()):  # as grpcio follows every answer (the lane takes it too)
        data += h2.window_update(draw(st.sampled_from([0, uid])), 40)
    elif not plain and draw(st.booleans()):  # near misses of that shape, and a second one
        stream = draw(st.sampled_from([0, uid, uid | 1 << 31]))
        data += draw(
            st.sampled_from(
                [
                    h2.frame(h2.WINDOW_UPDATE, 0x1, stream, (40).to_bytes(4, "big")),
                    h2.frame(h2.WINDOW_UPDATE, 0, stream, (40 | 1 << 31).to_bytes(4, "big")),
                    h2.frame(h2.WINDOW_UPDATE, 0, stream, (0).to_bytes(4, "big")),
                    h2.frame(h2.WINDOW_UPDATE, 0, stream, (40).to_bytes(5, "big")),
                    h2.window_update(0, 40) + h2.window_update(uid, 40),
                ]
            )
        )
    if not plain and draw(st.booleans()):
        data += h2.frame(h2.PING, 0, 0, b"q" * 8)
    return split(draw, data, plain)


def split(draw: st.DrawFn, data: bytes, plain: bool) -> list[bytes]:
    if plain or not draw(st.booleans()):
        return [data]
    at = draw(st.integers(1, len(data) - 1))
    return [data[:at], data[at:]]


def same(with_lane: Proxy, without: Proxy) -> None:
    assert with_lane.take() == without.take()
    assert with_lane.state() == without.state()


def feed_alike(proxies: list[Proxy], role: str, read: bytes) -> None:
    """One read fed to the lane's proxy and the reference, which must then agree."""
    for proxy in proxies:
        proxy.feed(role, read)
    same(*proxies)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
@given(data=st.data())
@pytest.mark.parametrize("shared", [False, True], ids=["per-client", "shared"])
def test_the_lane_writes_and_leaves_what_frame_by_frame_does(
    shared: bool, data: st.DataObject
) -> None:
    client_settings = data.draw(
        st.sampled_from(
            [
                {},
                {h2.INITIAL_WINDOW_SIZE: 30},
                {h2.INITIAL_WINDOW_SIZE: 0},
                {h2.MAX_FRAME_SIZE: 16_384},
            ]
        )
    )
    backend_settings = data.draw(
        st.sampled_from([{h2.MAX_CONCURRENT_STREAMS: 100}, {h2.INITIAL_WINDOW_SIZE: 40}, {}])
    )
    proxies = [make_proxy(True, client_settings, backend_settings, shared)]
    proxies.append(make_proxy(False, client_settings, backend_settings, shared))
    enc = Encoders()
    try:
        stream = 1
        for _ in range(data.draw(st.integers(1, 10))):
            opened, reads = data.draw(call_reads(enc, stream))
            stream = max(stream, opened) + 2
            for read in reads:
                feed_alike(proxies, "client", read)
            for role, upstream in proxies[1].upstreams.items():
                if not upstream.calls:
                    continue
                uid = max(upstream.calls)
                for read in data.draw(answer_reads(enc.answer(role), uid)):
                    feed_alike(proxies, role, read)
    finally:
        for proxy in proxies:
            proxy.loop.close()


@pytest.mark.parametrize("shared", [False, True], ids=["per-client", "shared"])
def test_plain_calls_take_the_lane_and_are_forwarded_byte_for_byte(shared: bool) -> None:
    """The generated comparison would pass if the lane never ran: plain calls must take
    it (``unary`` True on both sides) once each reader has decoded their blocks (the
    first block on a connection sets the table size, the second fills the cache), and
    come out as they went in, on the other connection's stream."""
    proxy = make_proxy(True, {}, {h2.MAX_CONCURRENT_STREAMS: 100}, shared)
    proxy.take()  # the prefaces and settings
    enc = Encoders()
    taken: list[bool] = []
    real_client, real_upstream = _REAL

    def client_unary(self: gp.ClientSide, data: bytes) -> int:
        took = real_client(self, data)
        taken.append(took == len(data))
        return took

    def upstream_unary(self: gp.UpstreamSide, data: bytes) -> int:
        took = real_upstream(self, data)
        taken.append(took == len(data))
        return took

    answers: dict[str, int] = {"stable": 0, "canary": 0}
    lanes = {"request": 0, "answer": 0}
    try:
        gp.ClientSide.unary, gp.UpstreamSide.unary = client_unary, upstream_unary  # type: ignore[method-assign]
        for call in range(10):
            stream = 2 * call + 1
            block = request_block(enc, INFER, None)
            body = message(b"iris")
            proxy.client.data_received(
                h2.frame(h2.HEADERS, h2.END_HEADERS, stream, block)
                + h2.frame(h2.DATA, h2.END_STREAM, stream, body)
            )
            proxy.run()
            assert taken.pop() == (call >= 2)
            role = "stable" if proxy.upstream_out["stable"].out else "canary"
            upstream = proxy.upstreams[role]
            uid = max(upstream.calls)
            sent = proxy.take()
            if call >= 2:
                lanes["request"] += 1
                assert sent[1 if role == "stable" else 2] == h2.frame(
                    h2.HEADERS, h2.END_HEADERS, uid, block
                ) + h2.frame(h2.DATA, h2.END_STREAM, uid, body)
            head = bytes(enc.answer(role).encode([(b":status", b"200")]))
            trailer = bytes(enc.answer(role).encode([(b"grpc-status", b"0")]))
            frames = [
                (h2.HEADERS, h2.END_HEADERS, head),
                (h2.DATA, 0, b"\x00\x00\x00\x00\x02\x0a\x00"),
                (h2.HEADERS, h2.END_HEADERS | h2.END_STREAM, trailer),
            ]
            upstream.data_received(b"".join(h2.frame(k, f, uid, p) for k, f, p in frames))
            proxy.run()
            assert taken.pop() == (answers[role] >= 2)
            if answers[role] >= 2:
                lanes["answer"] += 1
                assert proxy.take()[0] == b"".join(h2.frame(k, f, stream, p) for k, f, p in frames)
            answers[role] += 1
            proxy.take()
            assert not proxy.client.calls and not upstream.calls
    finally:
        gp.ClientSide.unary, gp.UpstreamSide.unary = _REAL  # type: ignore[method-assign]
        proxy.loop.close()
    assert lanes["request"] == 8 and lanes["answer"] >= 4, lanes


# --- the parsers against the frame reader ---------------------------------------------------


def frames_of(data: bytes) -> Iterator[h2.Frame]:
    reader = h2.FrameReader(h2.DEFAULT_MAX_FRAME)
    yield from reader.feed(data)
    assert reader.idle


TAILS = [b"", h2.window_update(0, 1), h2.window_update(9, 40) + b"\x00\x00", b"\x00"]


@given(
    st.binary(max_size=200),
    st.binary(max_size=200),
    st.just(h2.END_HEADERS) | st.integers(0, 255),  # the lane's shape, often
    st.just(h2.END_STREAM) | st.integers(0, 255),
    st.sampled_from(TAILS),
    st.integers(0, 3),
)
def test_unary_request_agrees_with_the_frame_reader(
    block: bytes, body: bytes, flags: int, other: int, tail: bytes, reserved: int
) -> None:
    """``reserved``: which frames have the stream's reserved bit set (ignored, as the frame
    reader ignores it)."""
    streams = [7 | (1 << 31 if reserved >> i & 1 else 0) for i in range(2)]
    frames = h2.frame(h2.HEADERS, flags, streams[0], block) + h2.frame(
        h2.DATA, other, streams[1], body
    )
    parsed = unary_request(frames + tail, h2.DEFAULT_MAX_FRAME)
    expected = flags == h2.END_HEADERS and other == h2.END_STREAM
    assert (parsed is not None) == expected
    if parsed is not None:
        read = list(frames_of(frames))
        assert parsed[:3] == (7, read[0].payload, read[1].payload)
        assert frames[parsed[3] :] == h2.frame(h2.DATA, other, streams[1], body)
        assert parsed[4] == len(frames)  # the tail is left to the frame reader
    for cut in (1, len(frames) - 1):
        assert unary_request(frames[:cut], h2.DEFAULT_MAX_FRAME) is None
    assert unary_request(h2.window_update(0, 1) + frames, h2.DEFAULT_MAX_FRAME) is None
    assert unary_request(frames, len(max(block, body, key=len)) - 1) is None or not (block or body)


@given(
    st.binary(max_size=100),
    st.binary(max_size=100),
    st.binary(max_size=100),
    st.integers(0, 2),
    st.sampled_from(TAILS),
    st.integers(0, 7),
)
def test_unary_answer_agrees_with_the_frame_reader(
    head: bytes, body: bytes, trailer: bytes, odd: int, tail: bytes, reserved: int
) -> None:
    streams = [9 | (1 << 31 if reserved >> i & 1 else 0) for i in range(3)]
    if odd:
        streams[odd] = 11
    frames = (
        h2.frame(h2.HEADERS, h2.END_HEADERS, streams[0], head)
        + h2.frame(h2.DATA, 0, streams[1], body)
        + h2.frame(h2.HEADERS, h2.END_HEADERS | h2.END_STREAM, streams[2], trailer)
    )
    parsed = unary_answer(frames + tail, h2.DEFAULT_MAX_FRAME)
    assert (parsed is not None) == (not odd and bool(body))
    if parsed is not None:
        read = list(frames_of(frames))
        assert parsed[:4] == (9, read[0].payload, len(read[1].payload), read[2].payload)
        assert parsed[5] == len(frames)
    for cut in (1, len(frames) - 1):
        assert unary_answer(frames[:cut], h2.DEFAULT_MAX_FRAME) is None
    assert unary_answer(frames, len(body) - 1) is None or not body


@pytest.mark.parametrize(
    ("body", "model"),
    [
        (message(b"iris"), "iris"),
        (b"\x01" + message(b"iris")[1:], None),  # compressed
        (message(b"iris") + message(b"iris"), None),  # two messages
        (message(b"iris")[:-1], None),  # cut short
        (b"\x00\x00\x00\x00\x03\x0a\x05i", None),  # unreadable
        (b"\x00\x00\x00\x00\x00", ""),  # no name: routed (NOT_FOUND) frame by frame
    ],
)
def test_single_message_model(body: bytes, model: str | None) -> None:
    assert single_message_model(body, 4096) == model


WINDOW_UPDATE_LIKE = st.builds(
    lambda kind, flags, stream, payload, extra: (
        h2.frame(kind, flags, 0, payload)[:5] + stream.to_bytes(4, "big") + payload + extra
    ),
    st.sampled_from([h2.WINDOW_UPDATE, h2.WINDOW_UPDATE, h2.PING]),
    st.sampled_from([0, 0, 0, 1, 0x80]),
    st.integers(0, 2**32 - 1),
    st.binary(min_size=3, max_size=5),
    st.sampled_from([b"", b"", b"\x00", h2.window_update(0, 1)]),
)


@given(st.one_of(st.binary(max_size=40), WINDOW_UPDATE_LIKE), st.integers(0, 40))
def test_alone_is_an_end_of_read_or_one_whole_window_update(rest: bytes, head: int) -> None:
    """``alone``: what follows a lane's frames is nothing, or exactly one WINDOW_UPDATE
    that the frame reader reads as such (4-byte payload, no flags); and that frame's
    fields are what ``on_frame`` would take from it, reserved bits dropped."""
    data = bytes(head) + rest
    reader = h2.FrameReader(h2.DEFAULT_MAX_FRAME)
    try:
        frames: list[h2.Frame] | None = reader.feed(rest)
    except h2.H2Error:
        frames = None
    if not reader.idle:
        frames = None
    one_update = (
        frames is not None
        and len(frames) == 1
        and (frames[0].type, frames[0].flags, len(frames[0].payload)) == (h2.WINDOW_UPDATE, 0, 4)
    )
    assert alone(data, head) == (not rest or one_update)
    if one_update:
        assert frames is not None
        increment = int.from_bytes(frames[0].payload, "big") & 0x7FFF_FFFF
        assert window_update_fields(rest) == (frames[0].stream, increment)


@pytest.mark.parametrize(
    ("rest", "expected"),
    [
        (b"", True),
        (h2.window_update(0, 65_535), True),
        (h2.window_update(7, 1), True),
        (h2.frame(h2.WINDOW_UPDATE, 0, (1 << 31) | 7, (1 << 31 | 5).to_bytes(4, "big")), True),
        (h2.frame(h2.WINDOW_UPDATE, 0x1, 0, (5).to_bytes(4, "big")), False),  # a flag
        (h2.frame(h2.WINDOW_UPDATE, 0, 0, (5).to_bytes(5, "big")), False),  # 5-byte payload
        (h2.window_update(0, 5)[:-1], False),  # cut short
        (h2.window_update(0, 5) + h2.window_update(0, 5), False),  # two
        (h2.frame(h2.PING, 0, 0, b"\0\0\0\0"), False),
    ],
)
def test_alone_cases(rest: bytes, expected: bool) -> None:
    assert alone(b"xyz" + rest, 3) is expected


def lane_and_reference() -> list[Proxy]:
    """Two proxies to feed the same reads: with the lane, and frame by frame."""
    return [
        make_proxy(True, {}, {h2.MAX_CONCURRENT_STREAMS: 100}),
        make_proxy(False, {}, {h2.MAX_CONCURRENT_STREAMS: 100}),
    ]


def plain_calls(proxies: list[Proxy], count: int) -> Iterator[tuple[str, bytes]]:
    """``count`` plain calls sent to both proxies (checked alike); for each, the backend
    role it went to and the plain answer (HEADERS, one message, trailers) on its stream,
    for the caller to feed."""
    enc = Encoders()
    for call in range(count):
        stream = 2 * call + 1
        read = h2.frame(h2.HEADERS, h2.END_HEADERS, stream, request_block(enc, INFER, None))
        read += h2.frame(h2.DATA, h2.END_STREAM, stream, message(b"iris"))
        feed_alike(proxies, "client", read)
        role, upstream = next((r, u) for r, u in proxies[1].upstreams.items() if u.calls)
        uid = max(upstream.calls)
        answer = bytes(enc.answer(role).encode([(b":status", b"200")]))
        trailer = bytes(enc.answer(role).encode([(b"grpc-status", b"0")]))
        yield (
            role,
            (
                h2.frame(h2.HEADERS, h2.END_HEADERS, uid, answer)
                + h2.frame(h2.DATA, 0, uid, b"\x00\x00\x00\x00\x02\x0a\x00")
                + h2.frame(h2.HEADERS, h2.END_HEADERS | h2.END_STREAM, uid, trailer)
            ),
        )


@pytest.mark.parametrize(
    "tail",
    [
        h2.window_update(0, 133),  # grpcio's: the connection window for the request
        "stream",  # the answered stream's own (over: nothing to do)
        h2.frame(h2.WINDOW_UPDATE, 0, 1 << 31, (1 << 31 | 7).to_bytes(4, "big")),  # reserved
        h2.frame(h2.WINDOW_UPDATE, 0, 0, bytes(4)),  # an increment of 0
    ],
)
def test_the_window_update_after_a_whole_answer_is_read_as_frame_by_frame(
    tail: bytes | str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """grpcio follows every answer with a WINDOW_UPDATE in the same read, which the lane
    takes without the frame reader: the same bytes out and the same windows after as the
    frame-by-frame path, whatever the frame's stream and bits."""
    taken: list[tuple[int, int]] = []
    real = window_update_fields

    def counted(data: bytes) -> tuple[int, int]:
        taken.append(real(data))
        return taken[-1]

    monkeypatch.setattr(gp, "window_update_fields", counted)
    proxies = lane_and_reference()
    try:
        for role, answer in plain_calls(proxies, 8):
            uid = int.from_bytes(answer[5:9], "big")
            after = h2.window_update(uid, 99) if tail == "stream" else cast(bytes, tail)
            feed_alike(proxies, role, answer + after)
    finally:
        for proxy in proxies:
            proxy.loop.close()
    assert len(taken) >= 4, taken  # the lane took the tail once the blocks were cached
    if tail == "stream":
        assert all(stream > 0 for stream, _ in taken)
    elif isinstance(tail, bytes) and tail[5] & 0x80:
        assert set(taken) == {(0, 7)}


def test_a_lane_write_goes_after_what_is_already_waiting_for_that_connection() -> None:
    """The lanes write at once only when nothing is queued for the connection; in one
    turn of the loop a client's PING is answered (queued), then the backend's answer
    arrives: on the wire the PING's ACK still comes first, as frame by frame."""
    proxies = lane_and_reference()
    try:
        for role, answer in plain_calls(proxies, 6):
            for proxy in proxies:
                with lane(proxy.lane):  # both reads in one turn of the loop
                    proxy.client.data_received(h2.frame(h2.PING, 0, 0, b"pingpong"))
                    proxy.upstreams[role].data_received(answer)
                    proxy.run()
            sent = proxies[0].client_out.out
            assert sent.startswith(h2.frame(h2.PING, h2.ACK, 0, b"pingpong")), bytes(sent)
            same(*proxies)
    finally:
        for proxy in proxies:
            proxy.loop.close()


def test_a_block_without_the_size_update_after_the_ack_is_read_not_refused() -> None:
    """grpcio was seen answering, after acknowledging our SETTINGS (table size 0), with a
    block that lacks the size update: it is decoded (not self-contained, so re-encoded
    when forwarded) and the backend connection stays open for the calls after it; with
    the lane as without it."""
    proxies = lane_and_reference()
    try:
        calls = plain_calls(proxies, 3)
        role, _ = next(calls)
        uid = max(proxies[0].upstreams[role].calls)
        stale = hpack.Encoder()  # never told of our table size: no update in its blocks
        head = bytes(stale.encode([(b":status", b"200"), (b"content-type", b"application/grpc")]))
        trailer = bytes(stale.encode([(b"grpc-status", b"4")]))
        assert not head.startswith(b"\x20")  # no dynamic table size update
        for proxy in proxies:
            proxy.take()
            proxy.feed(
                role,
                h2.frame(h2.HEADERS, h2.END_HEADERS, uid, head)
                + h2.frame(h2.DATA, 0, uid, b"\x00\x00\x00\x00\x02\x0a\x00")
                + h2.frame(h2.HEADERS, h2.END_HEADERS | h2.END_STREAM, uid, trailer),
            )
            upstream = proxy.upstreams[role]
            assert not upstream.closed and not proxy.client.closed
            frames = list(frames_of(proxy.take()[0]))
            assert [f.type for f in frames] == [h2.HEADERS, h2.DATA, h2.HEADERS]
            answer = [
                (bytes(n), bytes(v)) for n, v in hpack.Decoder().decode(frames[0].payload, raw=True)
            ]
            assert (b":status", b"200") in answer
            assert not upstream.headers.stateless  # the table is still the default's
        for role, answer_read in calls:  # the calls after it are answered, alike
            feed_alike(proxies, role, answer_read)
    finally:
        for proxy in proxies:
            proxy.loop.close()


def test_cached_blocks_are_not_skipped_once_the_peer_uses_a_dynamic_table() -> None:
    """A block cached while the table was 0 may add entries once the peer raises the table
    size (allowed up to 4,096): it is then decoded again, never skipped."""
    reader = h2.HeaderReader(64 * 1024)
    encoder = hpack.Encoder()
    encoder.header_table_size = 0
    fields = [(b":status", b"200"), (b"x-trace", b"abc")]
    first = bytes(encoder.encode(fields))  # carries the update to 0
    assert reader.read(first) == (tuple(fields), False)
    again = bytes(encoder.encode(fields))
    assert reader.read(again) == (tuple(fields), True)
    assert reader.cached(again) == tuple(fields) and reader.stateless
    encoder.header_table_size = 4096
    grown = bytes(encoder.encode(fields))
    assert reader.read(grown) == (tuple(fields), False)
    assert not reader.stateless and reader.cached(again) is None
    assert reader.read(again) == (tuple(fields), False)  # decoded: it may index entries
