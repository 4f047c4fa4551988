"""Which upstream reads the router passes on byte for byte (``upstream._WholeResponse``).

Only a read that is exactly one complete, final, keep-alive response with a ``date``, a
``content-length`` and no header the proxy must drop; anything else takes the parsed path
(which rebuilds the head). A wrong "yes" would leak a hop-by-hop header or mis-frame the
client's connection, so every way of being unlike a plain answer is tried."""

from __future__ import annotations

import pytest

from gate.local.upstream import _WholeResponse

DATE = b"date: Wed, 02 Dec 2026 07:00:00 GMT\r\n"
PLAIN = (
    b"HTTP/1.1 200 OK\r\n" + DATE + b"server: uvicorn\r\ncontent-length: 2\r\n"
    b"content-type: application/json\r\n\r\n{}"
)


def test_a_plain_answer_goes_verbatim_again_and_again() -> None:
    whole = _WholeResponse()
    for _ in range(3):  # the parser is back at a message boundary after each
        assert whole.status(PLAIN) == 200
    error = PLAIN.replace(b"200 OK", b"503 Service Unavailable")
    assert whole.status(error) == 503


@pytest.mark.parametrize(
    ("case", "data"),
    [
        ("incomplete body", PLAIN[:-1]),
        ("incomplete head", PLAIN[:20]),
        ("two answers", PLAIN + PLAIN),
        ("interim 100 first", b"HTTP/1.1 100 Continue\r\n\r\n" + PLAIN),
        ("only a 100", b"HTTP/1.1 100 Continue\r\n\r\n"),
        ("no date", PLAIN.replace(DATE, b"")),
        (
            "chunked",
            b"HTTP/1.1 200 OK\r\n" + DATE + b"transfer-encoding: chunked\r\n\r\n"
            b"2\r\n{}\r\n0\r\n\r\n",
        ),
        ("no length", b"HTTP/1.1 200 OK\r\n" + DATE + b"\r\n{}"),
        ("connection close", PLAIN.replace(b"server:", b"connection: close\r\nserver:")),
        (
            "connection names one",
            PLAIN.replace(b"server:", b"Connection: x-a\r\nx-a: 1\r\nserver:"),
        ),
        ("keep-alive", PLAIN.replace(b"server:", b"Keep-Alive: timeout=5\r\nserver:")),
        ("upgrade", PLAIN.replace(b"server:", b"Upgrade: h2c\r\nserver:")),
        ("trailer", PLAIN.replace(b"server:", b"Trailer: x\r\nserver:")),
        ("HTTP/1.0", PLAIN.replace(b"HTTP/1.1", b"HTTP/1.0")),
        ("204", b"HTTP/1.1 204 No Content\r\n" + DATE + b"content-length: 0\r\n\r\n"),
        ("not HTTP", b"SSH-2.0-OpenSSH\r\n\r\n"),
    ],
)
def test_anything_else_takes_the_parsed_path(case: str, data: bytes) -> None:
    assert _WholeResponse().status(data) is None, case
