"""How many writes a proxied request costs: the request path's system calls.

A request whose head and body arrive in one read must leave in one write: two writes are
two sends here and two segments (often two reads) at the backend, measured as ~30 us more
CPU a request across router and predictor at 64 connections. Driven in process with
transports that record their writes; no sockets, so nothing here depends on timing.
"""

from __future__ import annotations

import asyncio
from typing import Any

from gate.local.http_proxy import HttpProxy
from gate.local.route_table import BackendSpec, Routes, RoutesSpec
from gate.local.upstream import UpstreamConnection

BODY = b'{"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}'
HEAD = (
    b"POST /v2/models/iris/infer HTTP/1.1\r\nhost: client\r\ncontent-type: application/json\r\n"
    b"content-length: %d\r\n\r\n" % len(BODY)
)
ANSWER = (
    b"HTTP/1.1 200 OK\r\ndate: Thu, 03 Dec 2026 06:00:00 GMT\r\nserver: uvicorn\r\n"
    b"content-length: 2\r\ncontent-type: application/json\r\n\r\n{}"
)


class RecordingTransport:
    def __init__(self, protocol: asyncio.Protocol) -> None:
        self.protocol = protocol
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.protocol.connection_lost(None)

    def abort(self) -> None:
        self.close()

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class Wired:
    """A client connection of the proxy and one idle pooled upstream connection."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.routes = Routes()
        spec = BackendSpec(http="http://127.0.0.1:9", grpc="127.0.0.1:9")
        self.routes.apply("iris", RoutesSpec(stable=spec, canary=None, canary_weight=0))
        table = self.routes.get("iris")
        assert table is not None and table.stable is not None
        self.pool = table.stable.http
        self.upstream = UpstreamConnection(self.pool)
        self.upstream_transport = RecordingTransport(self.upstream)
        self.upstream.connection_made(self.upstream_transport)  # type: ignore[arg-type]
        self.pool.release(self.upstream)
        self.proxy = HttpProxy(self.routes, loop)
        self.client = self.proxy()
        self.client_transport = RecordingTransport(self.client)
        self.client.connection_made(self.client_transport)  # type: ignore[arg-type]

    async def close(self) -> None:
        self.proxy.stopping = True
        await self.proxy.drain(0.1)
        await self.routes.aclose()


def run(scenario: Any) -> None:
    async def main() -> None:
        wired = Wired(asyncio.get_running_loop())
        try:
            scenario(wired)
        finally:
            await wired.close()

    asyncio.run(main())


def test_head_and_body_read_together_leave_in_one_write() -> None:
    def scenario(wired: Wired) -> None:
        wired.client.data_received(HEAD + BODY)
        [sent] = wired.upstream_transport.writes
        assert sent.startswith(b"POST /v2/models/iris/infer HTTP/1.1\r\nhost: 127.0.0.1:9\r\n")
        assert sent.endswith(b"\r\n\r\n" + BODY)
        wired.upstream.data_received(ANSWER)
        assert wired.client_transport.writes == [ANSWER]  # one write back, verbatim

    run(scenario)


def test_a_body_that_comes_later_is_streamed_as_it_comes() -> None:
    def scenario(wired: Wired) -> None:
        wired.client.data_received(HEAD)
        [head] = wired.upstream_transport.writes  # the head does not wait for the body
        assert head.endswith(b"\r\n\r\n")
        wired.client.data_received(BODY[:10])
        wired.client.data_received(BODY[10:])
        assert wired.upstream_transport.writes[1:] == [BODY[:10], BODY[10:]]
        wired.upstream.data_received(ANSWER)
        assert wired.client_transport.writes == [ANSWER]

    run(scenario)


def test_a_request_refused_in_the_same_read_sends_nothing_and_frees_its_connection() -> None:
    """Garbage after a whole request: the client gets its 400, the backend gets nothing,
    and the pooled connection the request had taken goes back to the pool."""

    def scenario(wired: Wired) -> None:
        wired.client.data_received(HEAD + BODY + b"NOT HTTP\r\n\r\n")
        assert wired.upstream_transport.writes == []
        [answer] = wired.client_transport.writes
        assert answer.startswith(b"HTTP/1.1 400 ")
        assert wired.client_transport.closed
        assert wired.pool.take_idle() is wired.upstream

    run(scenario)
