"""One send per answer: uvicorn's HTTP protocol with its writes coalesced.

uvicorn writes a response's head on ``http.response.start`` and its body on
``http.response.body``: two ``send()`` system calls and, with ``TCP_NODELAY``, two TCP
segments for every small answer. On this project's 2-core machine a loopback send costs
~10-15 us of kernel time, about as much as everything else a proxy does per request, and
the router in front then needs two reads for one answer. Writes made in the same turn of
the event loop (an ASGI app sends its head and body without waiting in between) are
joined here and handed to the real transport once, at the end of that turn; a buffer over
:data:`FLUSH_BYTES` goes out at once, so a large body is never held.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

FLUSH_BYTES = 64 * 1024


class CoalescingTransport:
    """The parts of ``asyncio.Transport`` uvicorn's protocol uses, writes joined per turn."""

    __slots__ = ("_buffer", "_loop", "_scheduled", "_size", "transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self.transport = transport
        self._loop = loop
        self._buffer: list[bytes] = []
        self._size = 0
        self._scheduled = False

    def write(self, data: bytes) -> None:
        if not data:
            return
        self._buffer.append(data)
        self._size += len(data)
        if self._size >= FLUSH_BYTES:
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush_later)

    def _flush_later(self) -> None:
        self._scheduled = False
        self.flush()

    def flush(self) -> None:
        if self._buffer:
            data = self._buffer[0] if len(self._buffer) == 1 else b"".join(self._buffer)
            self._buffer.clear()
            self._size = 0
            if not self.transport.is_closing():
                self.transport.write(data)

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def abort(self) -> None:
        self._buffer.clear()
        self._size = 0
        self.transport.abort()

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.transport.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self.transport.pause_reading()

    def resume_reading(self) -> None:
        self.transport.resume_reading()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.flush()
        self.transport.set_protocol(protocol)

    def get_write_buffer_size(self) -> int:
        return self._size + self.transport.get_write_buffer_size()


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol on a :class:`CoalescingTransport`."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        coalescing = CoalescingTransport(transport, self.loop)
        super().connection_made(cast(asyncio.Transport, coalescing))  # (duck-typed)
