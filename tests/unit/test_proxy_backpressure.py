"""Back-pressure that outlives the exchange that asked for it must not stop a connection.

Both cases were seen as a hang in CI (three pipelined requests after a 40 MB download to a
slow client got no answer at all): a pause asked for by one exchange, still in force when
the next exchange uses the same connection. Driven here deterministically, in process, on
loopback: a tiny backend that answers every request head with a fixed response.
"""

from __future__ import annotations

import asyncio

from gate.local.http_proxy import HttpProxy
from gate.local.route_table import BackendSpec, Routes, RoutesSpec
from gate.local.upstream import HttpPool, UpstreamConnection, UpstreamError

ANSWER = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
REQUEST = b"GET /v2/health/ready HTTP/1.1\r\nhost: x\r\n\r\n"


async def _backend(go: asyncio.Event | None = None) -> tuple[asyncio.Server, int]:
    """Answers each request head, once ``go`` is set."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                if go is not None:
                    await go.wait()
                writer.write(ANSWER)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


class _Exchange:
    """Records what the connection reports; can pause it the way a slow client does."""

    def __init__(self, pause_on_body: UpstreamConnection | None = None) -> None:
        self.pause_on_body = pause_on_body
        self.body = b""
        self.done = asyncio.Event()

    def response_head(
        self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]], framed: bool
    ) -> None:
        assert status == 200

    def response_body(self, data: bytes) -> None:
        self.body += data
        if self.pause_on_body is not None:  # the client's write buffer just filled up
            self.pause_on_body.pause_reading()

    def response_end(self) -> None:
        self.done.set()

    def flush_head(self) -> None:
        pass

    def takes_verbatim(self) -> bool:
        return False  # the parsed path, whose body callback can pause like a slow client

    def verbatim_response(self, status: int, data: bytes) -> None:
        raise AssertionError("not asked for")

    def upstream_failed(self, error: UpstreamError, answered: bool) -> None:
        raise AssertionError(f"upstream failed: {error}")

    def pause_body(self) -> None:
        pass

    def resume_body(self) -> None:
        pass


def test_a_connection_paused_by_its_last_answer_serves_the_next_one() -> None:
    async def scenario() -> None:
        server, port = await _backend()
        pool = HttpPool(f"http://127.0.0.1:{port}")
        try:
            connection = await pool.connect()
            first = _Exchange(pause_on_body=connection)
            connection.start(first, REQUEST, b"", head_only=False)
            await asyncio.wait_for(first.done.wait(), 5)
            assert pool.take_idle() is connection  # kept for reuse...
            second = _Exchange()
            connection.start(second, REQUEST, b"", head_only=False)
            await asyncio.wait_for(second.done.wait(), 5)  # ...and still reading
            assert second.body == b"ok"
        finally:
            pool.close()
            server.close()
            await server.wait_closed()

    asyncio.run(scenario())


def test_a_hold_for_a_slow_upstream_ends_with_its_exchange() -> None:
    """The upstream asked the client side to stop reading (its send buffer was full) and
    then answered: the client's next request must still be read."""

    async def scenario() -> None:
        go = asyncio.Event()
        server, port = await _backend(go)
        loop = asyncio.get_running_loop()
        routes = Routes()
        spec = BackendSpec(http=f"http://127.0.0.1:{port}", grpc="127.0.0.1:1")
        routes.apply("m", RoutesSpec(stable=spec, canary=None, canary_weight=0))
        proxy = HttpProxy(routes, loop)
        front = await loop.create_server(proxy, "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", front.sockets[0].getsockname()[1]
        )
        try:
            writer.write(REQUEST)
            while not proxy.connections or next(iter(proxy.connections)).current is None:
                await asyncio.sleep(0.001)
            client = next(iter(proxy.connections))
            exchange = client.current
            assert exchange is not None
            exchange.pause_body()  # what the upstream connection's pause_writing does
            go.set()
            assert await asyncio.wait_for(reader.readuntil(b"ok"), 5)
            writer.write(REQUEST)  # the next request on the same connection
            assert await asyncio.wait_for(reader.readuntil(b"ok"), 5)
        finally:
            writer.close()
            front.close()
            proxy.stopping = True
            await proxy.drain(1.0)
            await routes.aclose()
            server.close()
            await server.wait_closed()

    asyncio.run(scenario())
