"""The router's lane for the usual gRPC call: one read holding a whole unary request, one
read holding its whole answer.

A client library or a load generator sends a unary ``ModelInfer`` as a HEADERS frame and
one DATA frame that ends the stream, written together, and the kernel hands both over in
one read; grpcio answers with HEADERS, one DATA frame and the trailers, also read at once.
Taken frame by frame (:class:`gate.local.h2.FrameReader`, a dispatch per frame, an
``Outbox`` and a pump pass per direction) that is ~55 us of Python a call in process,
against ~25 us for a REST request, and through the router gRPC reached 0.74x of direct
against 0.84-0.87x for REST (``make bench``, 2026-12-03).

These functions only recognise the shape, strictly: a read that starts with exactly that
sequence of frames on one stream, with exactly those flags (no padding, no priority, no
CONTINUATION), each frame within ``max_frame``, nothing before or between them. They
return the pieces, which the proxy forwards byte for byte, and how many bytes they took
(the rest of the read, such as the WINDOW_UPDATE grpcio sends after every answer, goes
through the frame-by-frame path after them, as it would have); or ``None``: then the whole
read takes the frame-by-frame path, which keeps every check and every refusal.
"""

from __future__ import annotations

import struct

from gate.local.h2 import DATA, END_HEADERS, END_STREAM, HEADERS, WINDOW_UPDATE
from gate.local.names import MalformedMessage, grpc_model_name

# A frame's header as one unpack: (length << 8 | type, flags, stream with its reserved bit)
_HEAD = struct.Struct(">IBI")
_STREAM = struct.Struct(">I")
_STREAM_MASK = 0x7FFF_FFFF  # the reserved bit is ignored, as the frame reader does
_HEADERS_ONLY = (HEADERS, END_HEADERS)
_LAST_DATA = (DATA, END_STREAM)
_DATA = (DATA, 0)
_TRAILERS = (HEADERS, END_HEADERS | END_STREAM)


def unary_request(data: bytes, max_frame: int) -> tuple[int, bytes, bytes, int, int] | None:
    """``(stream, header block, body, offset of the DATA frame, bytes taken)`` if ``data``
    starts with HEADERS (END_HEADERS) and a DATA frame with END_STREAM on the same stream
    (what follows is the frame-by-frame path's).

    Each frame's header is read with one unpack, inline: this runs once a call."""
    size = len(data)
    if size < 18:
        return None
    kind_length, flags, stream = _HEAD.unpack_from(data, 0)
    at = 9 + (kind_length >> 8)
    if (kind_length & 0xFF, flags) != _HEADERS_ONLY or at - 9 > max_frame or size - at < 9:
        return None
    kind_length, flags, data_stream = _HEAD.unpack_from(data, at)
    body = kind_length >> 8
    end = at + 9 + body
    if (
        (kind_length & 0xFF, flags) != _LAST_DATA
        or body > max_frame
        or end > size
        or (data_stream ^ stream) & _STREAM_MASK
    ):
        return None
    return stream & _STREAM_MASK, data[9:at], data[at + 9 : end], at, end


def unary_answer(data: bytes, max_frame: int) -> tuple[int, bytes, int, bytes, int, int] | None:
    """``(stream, header block, body size, trailer block, offset of the DATA frame, bytes
    taken)`` if ``data`` starts with HEADERS (END_HEADERS), a non-empty DATA frame
    without flags and HEADERS with END_HEADERS and END_STREAM, all on one stream (what
    follows, grpcio's WINDOW_UPDATE for the request, is the frame-by-frame path's)."""
    size = len(data)
    if size < 27:
        return None
    kind_length, flags, stream = _HEAD.unpack_from(data, 0)
    at = 9 + (kind_length >> 8)
    if (kind_length & 0xFF, flags) != _HEADERS_ONLY or at - 9 > max_frame or size - at < 9:
        return None
    kind_length, flags, data_stream = _HEAD.unpack_from(data, at)
    body = kind_length >> 8
    trailer_at = at + 9 + body
    if (
        (kind_length & 0xFF, flags) != _DATA
        or not 0 < body <= max_frame
        or size - trailer_at < 9
        or (data_stream ^ stream) & _STREAM_MASK
    ):
        return None
    kind_length, flags, trailer_stream = _HEAD.unpack_from(data, trailer_at)
    end = trailer_at + 9 + (kind_length >> 8)
    if (
        (kind_length & 0xFF, flags) != _TRAILERS
        or end - trailer_at - 9 > max_frame
        or end > size
        or (trailer_stream ^ stream) & _STREAM_MASK
    ):
        return None
    return stream & _STREAM_MASK, data[9:at], body, data[trailer_at + 9 : end], at, end


# One whole WINDOW_UPDATE frame: its first five bytes (length 4, type, no flags), its size
WINDOW_UPDATE_HEAD = (4).to_bytes(3, "big") + bytes((WINDOW_UPDATE, 0))
WINDOW_UPDATE_BYTES = 13
_WINDOW_UPDATE = struct.Struct(">5xII")


def window_update_fields(data: bytes) -> tuple[int, int]:
    """(stream, increment) of ``data``, one whole WINDOW_UPDATE frame (the caller checks
    its size and :data:`WINDOW_UPDATE_HEAD`), the reserved bits ignored as the frame reader
    and ``on_frame`` ignore them."""
    stream, increment = _WINDOW_UPDATE.unpack(data)
    return stream & _STREAM_MASK, increment & _STREAM_MASK


def alone(data: bytes, end: int) -> bool:
    """Nothing follows ``data[:end]`` in the read but, perhaps, one WINDOW_UPDATE frame
    (grpcio's after every answer). Then nothing else read now can be written with what
    the lane forwards, and it may be written at once, without the deferred flush."""
    rest = len(data) - end
    return rest == 0 or (rest == WINDOW_UPDATE_BYTES and data[end : end + 5] == WINDOW_UPDATE_HEAD)


def on_stream(data: bytes, end: int, offsets: tuple[int, ...], stream: int) -> bytearray:
    """``data[:end]``, whole frames, with the stream of the frames at ``offsets`` set to
    ``stream``: the frames the other connection gets, byte for byte what writing each one
    anew would make."""
    out = bytearray(data[:end])
    for at in offsets:
        _STREAM.pack_into(out, at + 5, stream)
    return out


def single_message_model(body: bytes, prefix_bytes: int) -> str | None:
    """The model a request body names when it is exactly one uncompressed gRPC message,
    read from its first ``prefix_bytes`` as the frame-by-frame path reads it; ``None``
    for anything else (compressed, several messages, cut short, unreadable)."""
    if len(body) < 5 or body[0] != 0 or int.from_bytes(body[1:5], "big") != len(body) - 5:
        return None
    try:
        return grpc_model_name(body[5 : 5 + prefix_bytes])
    except MalformedMessage:
        return None
