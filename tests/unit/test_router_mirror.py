"""The router's mirror without processes: which exchanges become records and with what
(through the real proxy, in process, on loopback), the events they are encoded to, and the
emitter's queue, batching, back-off and stop (against a small HTTP server on loopback)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httptools
import pytest
from pydantic import ValidationError

from gate.local.admin import AdminApp
from gate.local.http_proxy import HttpProxy
from gate.local.mirror import (
    BATCH_CONTENT_TYPE,
    MAX_REQUEST_BYTES,
    MAX_RESPONSE_BYTES,
    REQUEST_EVENT,
    RESPONSE_EVENT,
    EventEmitter,
    MirrorCounters,
    QueuedEvents,
    encode_batch,
    new_id,
    request_facts,
)
from gate.local.route_table import BackendSpec, Routes, RoutesSpec
from tests.unit.test_local_router import call_admin

TOKEN = "events-token-0123456789"
ADMIN_TOKEN = "unit-test-token-0123456789"
EVENTS_URL = "http://gate.test/v1/events"
DATE = b"date: Wed, 02 Dec 2026 07:00:00 GMT\r\n"
INFER = "/v2/models/m/infer"


# --- request ids -----------------------------------------------------------------------------


def is_new_id(value: str) -> bool:
    return len(value) == 32 and all(c in "0123456789abcdef" for c in value)


@pytest.mark.parametrize(
    ("headers", "expected", "replaced"),
    [
        ([(b"Ce-Id", b"abc-1"), (b"x-request-id", b"xr-1")], "abc-1", False),
        ([(b"x-request-id", b"xr-1")], "xr-1", False),
        ([(b"ce-id", b""), (b"X-Request-ID", b"xr-2")], "xr-2", False),  # empty: absent
        ([(b"ce-id", b"A.b_c:d-0")], "A.b_c:d-0", False),
        ([(b"ce-id", b"x" * 128)], "x" * 128, False),
        ([(b"ce-id", b"x" * 129)], None, True),
        ([(b"ce-id", b"has space")], None, True),
        ([(b"ce-id", b'quote"')], None, True),
        ([(b"ce-id", "é".encode())], None, True),
        # a bad ce-id is replaced, not skipped over for x-request-id: it was the client's id
        ([(b"ce-id", b"a/b"), (b"x-request-id", b"ok")], None, True),
        ([], None, False),
    ],
)
def test_request_id(
    headers: list[tuple[bytes, bytes]], expected: str | None, replaced: bool
) -> None:
    got, was_replaced, _ = request_facts(headers)
    assert was_replaced is replaced
    if expected is None:
        assert is_new_id(got), got
    else:
        assert got == expected


def test_new_ids_differ_and_the_content_type_is_read() -> None:
    first = request_facts([(b"Content-Type", b"application/json; charset=utf-8")])
    second = request_facts([])
    assert first[0] != second[0]
    assert first[2] == "application/json; charset=utf-8"
    assert second[2] == ""


# --- the proxy's capture ---------------------------------------------------------------------


def answer(status: int, body: bytes, extra: bytes = b"") -> bytes:
    reason = {200: b"OK", 500: b"Internal Server Error", 404: b"Not Found"}[status]
    return (
        b"HTTP/1.1 %d %s\r\n" % (status, reason)
        + DATE
        + b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body)
        + extra
        + b"\r\n"
        + body
    )


class _BackendRequest:
    """httptools callbacks for one backend connection's requests."""

    def __init__(self, on_request: Callable[[bytes, bytes], None]) -> None:
        self.on_request = on_request
        self.url = b""
        self.body = bytearray()
        self.parser = httptools.HttpRequestParser(self)

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        url, body = self.url, bytes(self.body)
        self.url, self.body = b"", bytearray()
        self.on_request(url, body)


async def backend_server() -> tuple[asyncio.Server, int]:
    """Answers every request by its query: ``status=N``, ``size=N`` (a body of N bytes,
    else ``answer:`` + the request body), ``mode=split`` (head and body in two writes) or
    ``mode=chunked`` (a chunked answer), otherwise one write of a plain answer."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        pending: list[tuple[bytes, bytes]] = []
        request = _BackendRequest(lambda url, body: pending.append((url, body)))
        try:
            while data := await reader.read(65536):
                request.parser.feed_data(data)
                while pending:
                    url, body = pending.pop(0)
                    query = dict(
                        part.split("=", 1)
                        for part in url.decode().partition("?")[2].split("&")
                        if part
                    )
                    status = int(query.get("status", "200"))
                    size = int(query.get("size", "-1"))
                    payload = bytes(range(256)) * (size // 256 + 1) if size >= 0 else b""
                    payload = payload[:size] if size >= 0 else b"answer:" + body
                    mode = query.get("mode", "")
                    if mode == "chunked":
                        head = b"HTTP/1.1 200 OK\r\n" + DATE + b"transfer-encoding: chunked\r\n\r\n"
                        half = len(payload) // 2
                        writer.write(head + b"%x\r\n%s\r\n" % (half, payload[:half]))
                        await writer.drain()
                        await asyncio.sleep(0.01)
                        rest = payload[half:]
                        writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(rest), rest))
                    elif mode == "split":
                        whole = answer(status, payload)
                        cut = whole.index(b"\r\n\r\n") + 4
                        writer.write(whole[:cut])
                        await writer.drain()
                        await asyncio.sleep(0.01)
                        writer.write(whole[cut:])
                    else:
                        writer.write(answer(status, payload))
                    await writer.drain()
        except (ConnectionError, httptools.HttpParserError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


class _ClientResponse:
    def __init__(self) -> None:
        self.complete = False
        self.status = 0
        self.parser = httptools.HttpResponseParser(self)

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_message_complete(self) -> None:
        self.complete = True


@dataclass
class Mirrored:
    """One exchange from its request and response events."""

    id: str
    model: str
    endpoint: str
    content_type: str | None
    request_body: bytes
    response_body: bytes
    request_time: float
    response_time: float

    @classmethod
    def of(cls, request: dict[str, Any], response: dict[str, Any]) -> Mirrored:
        assert (request["type"], response["type"]) == (REQUEST_EVENT, RESPONSE_EVENT)
        same = ("id", "inferenceservicename", "endpoint", "recordedtime")
        assert all(request[key] == response[key] for key in same)
        assert request.get("datacontenttype") == response.get("datacontenttype")
        return cls(
            request["id"],
            request["inferenceservicename"],
            request["endpoint"],
            request.get("datacontenttype"),
            base64.b64decode(request["data_base64"]),
            base64.b64decode(response["data_base64"]),
            parse_time(request["time"]),
            parse_time(response["time"]),
        )


@dataclass
class Front:
    """The proxy in process, in front of the test backend."""

    routes: Routes
    emitter: EventEmitter
    port: int
    backend_port: int
    connections: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = field(
        default_factory=list
    )

    def spec(self, grpc_port: int = 1) -> BackendSpec:
        return BackendSpec(
            http=f"http://127.0.0.1:{self.backend_port}", grpc=f"127.0.0.1:{grpc_port}"
        )

    async def exchange(self, raw_request: bytes) -> tuple[int, bytes]:
        """Sends a raw request on a kept-alive connection; (status, the raw response)."""
        if not self.connections:
            self.connections.append(await asyncio.open_connection("127.0.0.1", self.port))
        reader, writer = self.connections[0]
        writer.write(raw_request)
        response = _ClientResponse()
        raw = bytearray()
        while not response.complete:
            data = await asyncio.wait_for(reader.read(1 << 20), 5)
            assert data, f"closed after {bytes(raw)!r}"
            raw += data
            response.parser.feed_data(data)
        return response.status, bytes(raw)

    def records(self) -> list[Mirrored]:
        """The queued records as the gate will see them (encoded, then decoded)."""
        events = json.loads(encode_batch(self.emitter.queue))
        return [Mirrored.of(*events[i : i + 2]) for i in range(0, len(events), 2)]

    def counters(self, model: str = "m") -> MirrorCounters:
        return self.emitter.model(model).counters


@asynccontextmanager
async def front(mirror: bool = True) -> AsyncIterator[Front]:
    server, backend_port = await backend_server()
    emitter = EventEmitter(EVENTS_URL, TOKEN)  # not started: records stay in its queue
    routes = Routes(emitter)
    loop = asyncio.get_running_loop()
    proxy = HttpProxy(routes, loop)
    listener = await loop.create_server(proxy, "127.0.0.1", 0)
    running = Front(routes, emitter, listener.sockets[0].getsockname()[1], backend_port)
    routes.apply("m", RoutesSpec(stable=running.spec(), mirror=mirror))
    try:
        yield running
    finally:
        for _, writer in running.connections:
            writer.close()
        listener.close()
        proxy.stopping = True
        await proxy.drain(1.0)
        await routes.aclose()
        server.close()
        await server.wait_closed()


def post(path: str, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "host: router"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if not any(name.lower() == "transfer-encoding" for name in headers or {}):
        lines.append(f"content-length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def test_a_200_answer_on_the_verbatim_path_becomes_one_record() -> None:
    async def scenario() -> None:
        async with front() as running:
            body = b'{"inputs": [1, 2, 3]}'
            before = time.time()
            status, raw = await running.exchange(
                post(INFER, body, {"content-type": "application/json", "ce-id": "req-7"})
            )
            after = time.time()
            assert status == 200
            assert raw == answer(200, b"answer:" + body)  # as the backend sent it
            [record] = running.records()
            assert record.id == "req-7"
            assert record.model == "m"
            assert record.endpoint == "default"
            assert record.content_type == "application/json"
            assert record.request_body == body
            assert record.response_body == b"answer:" + body  # the body only, not the head
            assert before - 1e-6 <= record.request_time <= record.response_time <= after + 1e-6
            assert running.counters().skipped == dict.fromkeys(running.counters().skipped, 0)

    asyncio.run(scenario())


@pytest.mark.parametrize("mode", ["split", "chunked"])
def test_the_parsed_path_records_the_answer_body(mode: str) -> None:
    """An answer that does not come in one read (or is chunked) takes the parsed path: the
    record has its body bytes as the backend sent them, without chunk framing."""

    async def scenario() -> None:
        async with front() as running:
            status, _ = await running.exchange(post(f"{INFER}?mode={mode}&size=3000", b"q"))
            assert status == 200
            [record] = running.records()
            expected = (bytes(range(256)) * 12)[:3000]
            assert record.response_body == expected
            assert record.request_body == b"q"
            assert record.content_type is None  # the request had none

    asyncio.run(scenario())


def test_client_answers_are_byte_identical_with_mirror_on_and_off() -> None:
    requests = [
        post(INFER, b'{"x": 1}', {"content-type": "application/json"}),
        post(f"{INFER}?mode=split&size=5000", b"abc"),
        post(f"{INFER}?mode=chunked&size=700", b"abc"),
        post(f"{INFER}?status=500", b"abc"),
        post(INFER, b"t" * 70_000),
        post("/v1/models/m:predict", b'{"instances": [[1]]}'),
        b"GET /v2/models/m/ready HTTP/1.1\r\nhost: r\r\n\r\n",
    ]

    async def answers(mirror: bool) -> list[bytes]:
        async with front(mirror) as running:
            return [(await running.exchange(request))[1] for request in requests]

    async def scenario() -> None:
        assert await answers(True) == await answers(False)

    asyncio.run(scenario())


def test_the_canary_answer_is_endpoint_canary_and_a_retry_on_stable_is_default() -> None:
    async def scenario() -> None:
        async with front() as running:
            canary = running.spec(grpc_port=2)  # the same server, a backend of its own
            running.routes.apply(
                "m",
                RoutesSpec(stable=running.spec(), canary=canary, canary_weight=100, mirror=True),
            )
            assert (await running.exchange(post(INFER, b"c")))[0] == 200
            # a canary that cannot be reached: the request is answered by stable
            dead = BackendSpec(http="http://127.0.0.1:1", grpc="127.0.0.1:3")
            running.routes.apply(
                "m", RoutesSpec(stable=running.spec(), canary=dead, canary_weight=100, mirror=True)
            )
            assert (await running.exchange(post(INFER, b"s")))[0] == 200
            assert [(r.endpoint, r.request_body) for r in running.records()] == [
                ("canary", b"c"),
                ("default", b"s"),
            ]

    asyncio.run(scenario())


def test_exchanges_that_do_not_qualify_are_counted_by_reason() -> None:
    async def scenario() -> None:
        async with front() as running:
            chunked = (
                b"POST " + INFER.encode() + b" HTTP/1.1\r\nhost: r\r\n"
                b"transfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
            )
            assert (await running.exchange(chunked))[0] == 200
            limit = b"r" * MAX_REQUEST_BYTES
            assert (await running.exchange(post(INFER, limit + b"r")))[0] == 200
            over = MAX_RESPONSE_BYTES + 1
            assert (await running.exchange(post(f"{INFER}?size={over}", b"a")))[0] == 200
            assert (await running.exchange(post(f"{INFER}?status=500", b"a")))[0] == 500
            assert (await running.exchange(post(f"{INFER}?status=404&mode=split", b"a")))[0] == 404
            # not inference: neither recorded nor counted
            assert (await running.exchange(post("/v2/models/m/ready", b"a")))[0] == 200
            assert running.records() == []
            # the limits themselves still qualify
            assert (await running.exchange(post(INFER, limit)))[0] == 200
            size = MAX_RESPONSE_BYTES
            assert (await running.exchange(post(f"{INFER}?size={size}", b"a")))[0] == 200
            bodies = [(len(r.request_body), len(r.response_body)) for r in running.records()]
            assert bodies == [(MAX_REQUEST_BYTES, len(b"answer:" + limit)), (1, size)]
            assert running.counters().skipped == {
                "chunked": 1,
                "request_too_big": 1,
                "response_too_big": 1,
                "not_200": 2,
                "incomplete": 0,
            }

    asyncio.run(scenario())


def test_an_unreachable_backend_is_skipped_as_not_200() -> None:
    async def scenario() -> None:
        async with front() as running:
            dead = BackendSpec(http="http://127.0.0.1:1", grpc="127.0.0.1:3")
            running.routes.apply("m", RoutesSpec(stable=dead, mirror=True))
            assert (await running.exchange(post(INFER, b"a")))[0] == 502
            assert running.records() == []
            assert running.counters().skipped["not_200"] == 1

    asyncio.run(scenario())


def test_an_invalid_client_id_is_replaced_and_counted() -> None:
    async def scenario() -> None:
        async with front() as running:
            await running.exchange(post(INFER, b"a", {"x-request-id": "a b"}))
            await running.exchange(post(INFER, b"b", {"x-request-id": "fine-1"}))
            first, second = running.records()
            assert is_new_id(first.id) and second.id == "fine-1"
            assert running.counters().ids_replaced == 1

    asyncio.run(scenario())


def test_mirror_off_records_and_counts_nothing() -> None:
    async def scenario() -> None:
        async with front(mirror=False) as running:
            await running.exchange(post(INFER, b"a"))
            await running.exchange(post(f"{INFER}?status=500", b"a"))
            assert running.records() == []
            assert running.counters().describe()["skipped"] == dict.fromkeys(
                running.counters().skipped, 0
            )

    asyncio.run(scenario())


# --- routes and the admin API ----------------------------------------------------------------

STABLE = {"http": "http://127.0.0.1:9001", "grpc": "127.0.0.1:9002"}
CANARY = {"http": "http://127.0.0.1:9003", "grpc": "127.0.0.1:9004"}


@pytest.mark.parametrize("value", ["true", 1, None])
def test_mirror_must_be_a_boolean(value: Any) -> None:
    with pytest.raises(ValidationError, match="mirror"):
        RoutesSpec.model_validate({"stable": STABLE, "mirror": value})


def test_turning_the_mirror_on_and_off_reopens_nothing_and_keeps_counters() -> None:
    async def scenario() -> None:
        routes = Routes(EventEmitter(EVENTS_URL, TOKEN))
        spec = {"stable": STABLE, "canary": CANARY, "canary_weight": 20}
        off = routes.apply("iris", RoutesSpec.model_validate(spec))
        assert off.stable is not None and off.canary is not None and off.tap is not None
        off.stable.requests = 5
        on = routes.apply("iris", RoutesSpec.model_validate({**spec, "mirror": True}))
        assert (on.stable, on.canary, on.tap) == (off.stable, off.canary, off.tap)
        off.tap.skip("not_200")
        described = on.describe()
        assert described["mirror"] is True
        assert described["stable"]["requests"] == 5
        assert described["mirror_stats"]["skipped"]["not_200"] == 1
        again = routes.apply("iris", RoutesSpec.model_validate(spec)).describe()
        assert again["mirror"] is False
        assert again["mirror_stats"]["skipped"]["not_200"] == 1  # counters outlive the switch
        assert routes.describe()["mirror"]["events_url"] == EVENTS_URL
        assert routes._pending_close == set()  # no backend is on its way out
        await routes.aclose()

    asyncio.run(scenario())


def test_mirror_without_events_url_is_400_naming_the_field() -> None:
    app = AdminApp(Routes(), ADMIN_TOKEN)
    body = json.dumps({"stable": STABLE, "mirror": True}).encode()
    status, _, payload = call_admin(app, "PUT", "/router/routes/iris", body, token=ADMIN_TOKEN)
    assert status == 400
    assert payload == {"error": "mirror: the router was started without --events-url"}
    assert call_admin(app, "GET", "/router/routes/iris", token=ADMIN_TOKEN)[0] == 404


# --- the events --------------------------------------------------------------------------------


def record(
    request_id: str | None = "r-1",
    request_body: bytes = b"req",
    response_body: bytes | memoryview = b"resp",
    content_type: str = "application/json",
    role: str = "stable",
    at: float = 1_700_000_000.25,
    recorded: float = 1_700_000_100.5,
) -> bytes:
    """One exchange's two events as the emitter's encoder makes them, answered 0.5 s after
    ``at``."""
    emitter = EventEmitter(EVENTS_URL, TOKEN)
    given = request_id.encode() if request_id is not None else b""
    return emitter.encoder.encode(
        emitter.model("iris"),
        given,
        content_type.encode("latin-1"),
        role,
        request_body,
        response_body,
        at,
        at + 0.5,
        recorded,
    )


def parse_time(text: str) -> float:
    assert text.endswith("Z"), text
    return datetime.fromisoformat(text).timestamp()


def test_a_batch_is_a_json_array_of_request_then_response_events() -> None:
    """Field names and values as KServe's logger sets them (pkg/logger/worker.go)."""
    every_byte = bytes(range(256)) * 3
    records = [
        record("r-1", every_byte, memoryview(b"HEAD\x00\xff" + every_byte)[4:], role="canary"),
        record("r-2", b"", b"{}", content_type='text/x; q="1" \u00e9'),
        record("r-3", b"x", b"y", content_type=""),
    ]
    mirror = EventEmitter(EVENTS_URL, TOKEN).model("iris")
    events = json.loads(encode_batch([QueuedEvents(mirror, each, 0.0) for each in records]))
    assert [(e["id"], e["type"]) for e in events] == [
        ("r-1", REQUEST_EVENT),
        ("r-1", RESPONSE_EVENT),
        ("r-2", REQUEST_EVENT),
        ("r-2", RESPONSE_EVENT),
        ("r-3", REQUEST_EVENT),
        ("r-3", RESPONSE_EVENT),
    ]
    first = events[0]
    assert set(first) == {
        "specversion",
        "id",
        "type",
        "source",
        "time",
        "datacontenttype",
        "data_base64",
        "inferenceservicename",
        "namespace",
        "component",
        "endpoint",
        "metadata",
        "recordedtime",
    }
    assert first["specversion"] == "1.0"
    assert first["source"] == "irisgate-router"
    assert first["inferenceservicename"] == "iris"
    assert (first["namespace"], first["component"], first["metadata"]) == ("", "predictor", "{}")
    assert [e["endpoint"] for e in events[:2]] == ["canary", "canary"]
    assert base64.b64decode(events[0]["data_base64"]) == every_byte
    assert base64.b64decode(events[1]["data_base64"]) == b"\x00\xff" + every_byte
    assert base64.b64decode(events[2]["data_base64"]) == b""
    # both events carry the request's content type (as KServe's do); none when it had none
    assert events[2]["datacontenttype"] == events[3]["datacontenttype"] == 'text/x; q="1" é'
    assert "datacontenttype" not in events[4] and "datacontenttype" not in events[5]
    assert parse_time(first["time"]) == pytest.approx(1_700_000_000.25, abs=1e-6)
    assert parse_time(events[1]["time"]) == pytest.approx(1_700_000_000.75, abs=1e-6)
    assert first["time"] == "2023-11-14T22:13:20.250000Z"
    assert {e["recordedtime"] for e in events} == {"2023-11-14T22:15:00.500000Z"}


# --- the emitter against a gate on loopback ------------------------------------------------------


class _GateConnection(asyncio.Protocol):
    def __init__(self, gate: Gate) -> None:
        self.gate = gate
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.headers: dict[str, str] = {}
        self.body = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.gate.connections.append(self)

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode().lower()] = value.decode()

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.gate.posts.append(
            Post(time.monotonic(), self.url.decode(), self.headers, json.loads(self.body))
        )
        self.url, self.headers, self.body = b"", {}, bytearray()
        if self.gate.hang:
            return  # never answers
        assert self.transport is not None
        self.transport.write(b"HTTP/1.1 %d X\r\ncontent-length: 0\r\n\r\n" % self.gate.status)


@dataclass
class Post:
    at: float
    target: str
    headers: dict[str, str]
    events: list[dict[str, Any]]


@dataclass
class Gate:
    """The gate's events endpoint: a small HTTP/1.1 server on loopback that keeps what it
    was sent and answers ``status`` (or never, with ``hang``)."""

    status: int = 202
    hang: bool = False
    posts: list[Post] = field(default_factory=list)
    connections: list[_GateConnection] = field(default_factory=list)
    server: asyncio.Server | None = None
    port: int = 0

    async def up(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: _GateConnection(self), "127.0.0.1", self.port
        )
        self.port = self.server.sockets[0].getsockname()[1]

    async def down(self) -> None:
        assert self.server is not None
        self.server.close()
        for connection in self.connections:
            if connection.transport is not None:
                connection.transport.abort()
        await self.server.wait_closed()
        self.server = None

    def emitter(self, **options: Any) -> EventEmitter:
        return EventEmitter(f"http://127.0.0.1:{self.port}/v1/events", TOKEN, **options)


@asynccontextmanager
async def gate_up(**settings: Any) -> AsyncIterator[Gate]:
    gate = Gate(**settings)
    await gate.up()
    try:
        yield gate
    finally:
        if gate.server is not None:
            await gate.down()


async def until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


def offer_records(emitter: EventEmitter, count: int, model: str = "iris") -> None:
    mirror = emitter.model(model)
    for index in range(count):
        headers = [(b"ce-id", f"id-{index}".encode())]
        mirror.record(headers, "stable", b"q", b"a", 0, time.time())


def test_a_full_batch_goes_at_once_with_the_token_and_batch_content_type() -> None:
    async def scenario() -> None:
        async with gate_up() as gate:
            emitter = gate.emitter(flush_after_s=30.0)
            emitter.start()
            started = time.monotonic()
            offer_records(emitter, 300)
            await until(lambda: len(gate.posts) == 1)
            first = gate.posts[0]
            assert first.at - started < 1.0  # not the 30 s flush delay
            assert len(first.events) == 512  # 256 records, two events each
            assert [e["id"] for e in first.events[:4]] == ["id-0", "id-0", "id-1", "id-1"]
            assert first.target == "/v1/events"
            assert first.headers["authorization"] == f"Bearer {TOKEN}"
            assert first.headers["content-type"] == BATCH_CONTENT_TYPE
            await asyncio.sleep(0.2)
            assert len(gate.posts) == 1  # the other 44 wait for their delay...
            assert emitter.queued_bytes == sum(len(each.events) for each in emitter.queue)
            await emitter.aclose(2.0)  # ... or the stop
            assert [len(post.events) for post in gate.posts] == [512, 88]
            assert emitter.queued_bytes == 0
            assert emitter.model("iris").counters.sent == 300
            assert len(gate.connections) == 1  # one keep-alive connection for both

    asyncio.run(scenario())


def test_a_lone_record_goes_100_ms_after_it_was_queued() -> None:
    async def scenario() -> None:
        async with gate_up() as gate:
            emitter = gate.emitter()
            emitter.start()
            await asyncio.sleep(0.05)  # the emitter idles with nothing queued
            queued = time.monotonic()
            offer_records(emitter, 1)
            await asyncio.sleep(0.05)
            offer_records(emitter, 1)  # a second record does not restart the wait
            await until(lambda: len(gate.posts) == 1)
            waited = gate.posts[0].at - queued
            assert 0.09 <= waited < 0.4, waited
            assert len(gate.posts[0].events) == 4
            await emitter.aclose(1.0)

    asyncio.run(scenario())


def test_a_full_queue_drops_and_counts_and_never_grows() -> None:
    async def scenario() -> None:
        async with gate_up(hang=True) as gate:  # takes a POST and never answers
            emitter = gate.emitter(capacity=50, batch_records=10, timeout_s=30.0)
            emitter.start()
            offer_records(emitter, 10)
            await until(lambda: len(gate.posts) == 1)  # 10 in flight, out of the queue
            offer_records(emitter, 80)
            counters = emitter.model("iris").counters
            assert len(emitter.queue) == 50
            assert counters.dropped == 30
            started = time.monotonic()
            await emitter.aclose(0.3)  # the POST hangs: the stop does not wait for it
            assert time.monotonic() - started < 1.0
            assert counters.lost == 60 and counters.sent == 0  # queued, and the hung batch
            assert len(emitter.queue) == 0

    asyncio.run(scenario())


def test_the_queue_is_bounded_in_bytes_too() -> None:
    """The bound is on the encoded events, what the queue holds."""
    emitter = EventEmitter(EVENTS_URL, TOKEN)  # not started
    mirror = emitter.model("iris")
    mirror.record([], "stable", b"q" * 1000, b"a" * 3000, 0, time.time())
    big = emitter.queued_bytes
    assert big > 4000 * 4 // 3  # (base64)
    emitter.capacity_bytes = 2 * big + big // 2  # two fit
    for _ in range(4):
        mirror.record([], "stable", b"q" * 1000, b"a" * 3000, 0, time.time())
    assert (len(emitter.queue), emitter.queued_bytes, mirror.counters.dropped) == (2, 2 * big, 3)
    mirror.record([], "stable", b"q", b"a", 0, time.time())  # a small one still fits
    assert len(emitter.queue) == 3
    assert 2 * big < emitter.queued_bytes <= emitter.capacity_bytes


def test_a_post_that_gets_no_answer_in_time_is_a_failure() -> None:
    async def scenario() -> None:
        async with gate_up(hang=True) as gate:
            emitter = gate.emitter(timeout_s=0.3, flush_after_s=0.01)
            emitter.start()
            offer_records(emitter, 2)
            counters = emitter.model("iris").counters
            await until(lambda: counters.lost == 2, timeout=2.0)
            assert counters.failed_batches == 1 and emitter.failed_batches == 1
            await emitter.aclose(0.5)

    asyncio.run(scenario())


def test_failures_lose_their_batch_back_off_doubling_and_warn_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        async with gate_up(status=500) as gate:
            emitter = gate.emitter(batch_records=1, backoff_s=(0.1, 0.2))
            emitter.start()
            offer_records(emitter, 5)
            await until(lambda: len(gate.posts) == 4)
            counters = emitter.model("iris").counters
            gaps = [b.at - a.at for a, b in itertools.pairwise(gate.posts)]
            assert gaps[0] >= 0.09 and gaps[1] >= 0.19 and gaps[2] >= 0.19, gaps  # capped
            assert gaps[1] < 0.35 and gaps[2] < 0.35, gaps
            assert counters.lost >= 4 and counters.failed_batches >= 4 and counters.sent == 0
            gate.status = 200  # the gate is back: the rest goes, and that is said once
            await until(lambda: counters.sent == 1)
            await gate.down()  # now it cannot be reached at all
            offer_records(emitter, 1)
            await until(lambda: counters.lost == 5)
            await emitter.aclose(1.0)
            assert emitter.failed_batches == 5

    with caplog.at_level(logging.INFO, logger="gate.local.router"):
        asyncio.run(scenario())
    lines = [r.getMessage() for r in caplog.records if r.name == "gate.local.router"]
    warnings = [line for line in lines if "dropping batches" in line]
    assert len(warnings) == 2, lines  # one per streak of failures, not one per batch
    assert "answered 500" in warnings[0] and "cannot connect" in warnings[1]
    assert sum("takes events again (4 batches, 4 records lost" in line for line in lines) == 1


def test_a_connection_the_gate_closed_while_idle_is_no_failure() -> None:
    """A gate's keep-alive timeout closes the pooled connection between two batches: the
    next batch goes on a new connection, nothing is lost."""

    async def scenario() -> None:
        async with gate_up() as gate:
            emitter = gate.emitter(flush_after_s=0.01)
            emitter.start()
            offer_records(emitter, 1)
            await until(lambda: len(gate.posts) == 1)
            for connection in gate.connections:  # closed the way a keep-alive timer does
                assert connection.transport is not None
                connection.transport.close()
            await asyncio.sleep(0.05)
            offer_records(emitter, 1)
            counters = emitter.model("iris").counters
            await until(lambda: counters.sent == 2)
            assert counters.lost == 0 and len(gate.connections) == 2
            await emitter.aclose(1.0)

    asyncio.run(scenario())


def test_the_stop_flushes_what_is_queued_then_ends() -> None:
    async def scenario() -> None:
        async with gate_up() as gate:
            emitter = gate.emitter(flush_after_s=30.0)
            emitter.start()
            offer_records(emitter, 3)
            started = time.monotonic()
            await emitter.aclose(2.0)
            assert time.monotonic() - started < 1.0
            assert len(gate.posts) == 1 and len(gate.posts[0].events) == 6
            assert emitter.model("iris").counters.sent == 3
            assert emitter._task is not None and emitter._task.done()

    asyncio.run(scenario())


def test_the_bytes_posted_decode_to_what_was_recorded() -> None:
    async def scenario() -> None:
        async with gate_up() as gate:
            emitter = gate.emitter(flush_after_s=0.01)
            emitter.start()
            payload = hashlib.sha256(b"seed").digest() * 100
            head = b"HTTP/1.1 200 OK\r\ncontent-length: 3200\r\n\r\n"
            emitter.model("iris").record(
                [(b"content-type", b"application/octet-stream")],
                "canary",
                payload,
                head + payload[::-1],
                len(head),
                1.0,
            )
            await until(lambda: len(gate.posts) == 1)
            request_event, response_event = gate.posts[0].events
            assert base64.b64decode(request_event["data_base64"]) == payload
            assert base64.b64decode(response_event["data_base64"]) == payload[::-1]
            assert request_event["endpoint"] == "canary"
            assert request_event["datacontenttype"] == "application/octet-stream"
            await emitter.aclose(1.0)

    asyncio.run(scenario())


@pytest.mark.parametrize("token", ["short", "sixteen chars ok", "x" * 15 + "\n"])
def test_the_events_token_must_be_long_and_header_safe(token: str) -> None:
    with pytest.raises(ValueError, match="16 printable"):
        EventEmitter(EVENTS_URL, token)


def test_new_ids_are_version_4_uuids() -> None:
    ids = {new_id() for _ in range(1000)}
    assert len(ids) == 1000
    for value in list(ids)[:50]:
        parsed = uuid.UUID(value)
        assert (parsed.version, parsed.variant, parsed.hex) == (4, uuid.RFC_4122, value)
