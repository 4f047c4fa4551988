"""HTTP/2 wire pieces for the router's gRPC port (RFC 9113, RFC 7541): frames and headers.

Only what a frame-level proxy needs: splitting a byte stream into frames, building the
frames it sends, and header blocks. Blocks are decoded with the ``hpack`` library (one
stateful decoder per connection, as the RFC requires); blocks the router writes are
literal fields without indexing, so they are correct on any connection and never touch
a peer's dynamic table. The router advertises a header table of size 0, so once a peer
has applied that, its blocks are self-contained too: such a block decodes the same way
every time (:class:`HeaderReader` caches it) and can be forwarded as it is.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

import hpack

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS = 0x0, 0x1, 0x2, 0x3, 0x4
PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0x5, 0x6, 0x7, 0x8, 0x9

END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20

HEADER_TABLE_SIZE, ENABLE_PUSH, MAX_CONCURRENT_STREAMS = 0x1, 0x2, 0x3
INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE, MAX_HEADER_LIST_SIZE = 0x4, 0x5, 0x6

NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x2, 0x3
REFUSED_STREAM, CANCEL, ENHANCE_YOUR_CALM = 0x7, 0x8, 0xB

DEFAULT_WINDOW = 65_535
DEFAULT_MAX_FRAME = 16_384
MAX_WINDOW = 2**31 - 1

Headers = tuple[tuple[bytes, bytes], ...]


class H2Error(Exception):
    """The peer broke the protocol: the connection ends with GOAWAY and this code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class Frame(NamedTuple):
    type: int
    flags: int
    stream: int
    payload: bytes


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return (
        len(payload).to_bytes(3, "big") + bytes((kind, flags)) + stream.to_bytes(4, "big") + payload
    )


def settings_frame(values: dict[int, int]) -> bytes:
    body = b"".join(k.to_bytes(2, "big") + v.to_bytes(4, "big") for k, v in values.items())
    return frame(SETTINGS, 0, 0, body)


def window_update(stream: int, increment: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, stream, increment.to_bytes(4, "big"))


def rst_stream(stream: int, code: int) -> bytes:
    return frame(RST_STREAM, 0, stream, code.to_bytes(4, "big"))


def goaway(last_stream: int, code: int, message: bytes = b"") -> bytes:
    return frame(GOAWAY, 0, 0, last_stream.to_bytes(4, "big") + code.to_bytes(4, "big") + message)


def header_frames(stream: int, block: bytes, end_stream: bool, max_frame: int) -> list[bytes]:
    """HEADERS (+ CONTINUATION) carrying one header block."""
    flags = END_STREAM if end_stream else 0
    if len(block) <= max_frame:
        return [frame(HEADERS, flags | END_HEADERS, stream, block)]
    pieces = [block[i : i + max_frame] for i in range(0, len(block), max_frame)]
    out = [frame(HEADERS, flags, stream, pieces[0])]
    out += [frame(CONTINUATION, 0, stream, p) for p in pieces[1:-1]]
    out.append(frame(CONTINUATION, END_HEADERS, stream, pieces[-1]))
    return out


class FrameReader:
    """Cuts a byte stream into frames; refuses frames over the size it advertised."""

    def __init__(self, max_frame: int) -> None:
        self.max_frame = max_frame
        self._buffer = bytearray()

    @property
    def idle(self) -> bool:
        """No part of a frame is waiting for the rest of it."""
        return not self._buffer

    def feed(self, data: bytes) -> list[Frame]:
        buffer = self._buffer
        buffer += data
        frames = []
        start = 0
        end = len(buffer)
        while end - start >= 9:
            length = int.from_bytes(buffer[start : start + 3], "big")
            if length > self.max_frame:
                raise H2Error(0x6, f"frame of {length} bytes over {self.max_frame}")  # SIZE
            if end - start < 9 + length:
                break
            stream = int.from_bytes(buffer[start + 5 : start + 9], "big") & 0x7FFF_FFFF
            payload = bytes(buffer[start + 9 : start + 9 + length])
            frames.append(Frame(buffer[start + 3], buffer[start + 4], stream, payload))
            start += 9 + length
        if start:
            del buffer[:start]
        return frames


def strip_padding(flags: int, payload: bytes, priority_allowed: bool) -> bytes:
    """A DATA or HEADERS payload without its padding (and HEADERS' priority fields)."""
    if flags & PADDED:
        if not payload:
            raise H2Error(PROTOCOL_ERROR, "padded frame without a pad length")
        pad = payload[0]
        if pad >= len(payload):
            raise H2Error(PROTOCOL_ERROR, "padding longer than the frame")
        payload = payload[1 : len(payload) - pad]
    if priority_allowed and flags & PRIORITY_FLAG:
        if len(payload) < 5:
            raise H2Error(PROTOCOL_ERROR, "priority fields missing")
        payload = payload[5:]
    return payload


def _length(value: int, prefix_bits: int, first: int) -> bytes:
    """HPACK integer with an N-bit prefix (RFC 7541 5.1)."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_literal(headers: Headers) -> bytes:
    """Literal header fields without indexing, new names, no Huffman (RFC 7541 6.2.2):
    larger than a peer's own encoding, but stateless and valid on any connection."""
    out = bytearray()
    for name, value in headers:
        out += b"\x00" + _length(len(name), 7, 0) + name + _length(len(value), 7, 0) + value
    return bytes(out)


class HeaderReader:
    """One connection's decoder. ``read`` returns the fields and whether the block was
    self-contained (no dynamic table in play), i.e. may be forwarded to another connection
    byte for byte.

    We advertise a table size of 0 but accept blocks that use up to HTTP/2's default 4,096
    bytes (hpack's default allowance): grpcio has been seen sending, right after its
    SETTINGS acknowledgment, a block without the size update RFC 7541 4.2 asks for
    (under load, on a stream whose deadline had passed). Refusing it closed the
    connection and failed every call on it. Such a block is decoded, and not
    self-contained. Blocks are cached (skippable, forwardable as they are) only while the
    table is 0."""

    CACHE_SIZE = 256

    def __init__(self, max_list_size: int) -> None:
        self._decoder = hpack.Decoder()
        self._decoder.max_header_list_size = max_list_size
        self._cache: OrderedDict[bytes, Headers] = OrderedDict()

    @property
    def stateless(self) -> bool:
        """The peer's dynamic table is 0: a self-contained block decodes the same at any
        time and changes nothing."""
        return self._decoder.header_table_size == 0

    def cached(self, block: bytes) -> Headers | None:
        """The fields of a self-contained block this reader decoded before, if the table is
        still 0, else None (reading such a block changes no decoder state, so skipping
        ``read`` is safe)."""
        return self._cache.get(block) if self.stateless else None

    def read(self, block: bytes) -> tuple[Headers, bool]:
        stateless = self.stateless
        cached = self._cache.get(block) if stateless else None
        if cached is not None:
            return cached, True
        try:
            fields = self._decoder.decode(block, raw=True)
        except hpack.HPACKError as exc:
            raise H2Error(0x9, f"header block does not decode: {exc}") from exc  # COMPRESSION
        headers: Headers = tuple((bytes(n), bytes(v)) for n, v in fields)
        if stateless and self.stateless:  # (and the block did not grow the table)
            self._cache[block] = headers
            if len(self._cache) > self.CACHE_SIZE:
                self._cache.popitem(last=False)
            return headers, True
        return headers, False


def header(headers: Headers, name: bytes) -> bytes | None:
    for key, value in headers:
        if key == name:
            return value
    return None
