"""The router's simple-request lane takes only what httptools would read the same way.

Whatever :func:`simple_post` accepts, llhttp (through httptools, the parser of the proxy's
other path) must parse as one complete, keep-alive POST with the same target, headers and
body, and the proxy must send the backend the same request either way. Generated
requests mix every hop-by-hop header, duplicates, odd whitespace, bad bytes and wrong
lengths; arbitrary bytes too.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httptools
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gate.local.http_proxy as http_proxy
from gate.local.simple_request import header_pairs, simple_post
from gate.local.upstream import HOP_BY_HOP
from tests.unit.test_proxy_writes import ANSWER, BODY, HEAD, Wired

LIMITS = (16 * 1024, 100, 64 * 1024, 1024 * 1024)


class Parsed:
    """What httptools reports for a buffer, message by message."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.parser = httptools.HttpRequestParser(self)

    def on_message_begin(self) -> None:
        self.messages.append({"url": b"", "headers": [], "body": b"", "complete": False})

    def on_url(self, url: bytes) -> None:
        self.messages[-1]["url"] += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.messages[-1]["headers"].append((name, value))

    def on_body(self, body: bytes) -> None:
        self.messages[-1]["body"] += body

    def on_message_complete(self) -> None:
        message = self.messages[-1]
        message["complete"] = True
        message["method"] = self.parser.get_method()
        message["keep_alive"] = self.parser.should_keep_alive()
        message["version"] = self.parser.get_http_version()


def agrees_with_httptools(data: bytes) -> None:
    simple = simple_post(data, *LIMITS)
    if simple is None:
        return
    parsed = Parsed()
    parsed.parser.feed_data(data)  # raises if llhttp finds it malformed: a failure here
    [message] = parsed.messages
    assert message["complete"] and message["method"] == b"POST"
    assert message["version"] == "1.1" and message["keep_alive"]
    assert message["url"] == simple.target
    assert message["body"] == simple.body
    headers = message["headers"]
    assert header_pairs(simple.received) == headers
    names = [name.lower() for name, _ in headers]
    assert names.count(b"content-length") == 1 and names.count(b"host") <= 1
    assert not {n for n in names if n in HOP_BY_HOP} - {b"content-length", b"host"}
    forwarded = header_pairs(simple.headers)
    assert forwarded == [(n, v) for n, v in headers if n.lower() != b"host"]


BENIGN_NAMES = [b"Content-Type", b"Accept", b"X-Request-Id", b"User-Agent", b"Host"]
ODD_NAMES = [
    b"content-length",
    b"Connection",
    b"Transfer-Encoding",
    b"Expect",
    b"Keep-Alive",
    b"Upgrade",
    b"TE",
    b"Trailer",
    b"Proxy-Authorization",
    b"Bad Name",
    b"",
    b"x\x00y",
]
NAMES = st.one_of(st.sampled_from(BENIGN_NAMES), st.sampled_from(ODD_NAMES))
VALUES = st.one_of(
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=12).map(str.encode),
    st.sampled_from([b"application/json", b"close", b"chunked", b"100-continue", b"h2c"]),
    st.binary(max_size=12),
    st.integers(0, 200).map(lambda n: b"%d" % n),
)
SPACE = st.sampled_from([b"", b" ", b" ", b"\t", b"  "])


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    """Half of them well-formed simple POSTs (with benign headers, any spacing), the other
    half anything: every hop-by-hop header, bad bytes, other versions, wrong lengths."""
    clean = draw(st.booleans())

    def pick(usual: bytes, *others: bytes) -> bytes:
        return usual if clean else draw(st.sampled_from([usual, *others]))

    method = pick(b"POST", b"GET", b"post", b"PUT")
    target = draw(
        st.sampled_from([b"/v2/models/iris/infer", b"/v1/models/iris:predict", b"/"])
        if clean
        else st.one_of(
            st.sampled_from([b"/v2/models/iris/infer", b"/a?b=1", b"/%41", b"*", b"/a#b"]),
            st.binary(max_size=10).map(lambda b: b"/" + b),
        )
    )
    version = pick(b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"http/1.1")
    body = draw(st.binary(max_size=40))
    fields = st.tuples(
        st.sampled_from(BENIGN_NAMES) if clean else NAMES,
        SPACE,
        VALUES.filter(lambda v: all(0x20 <= c < 0x7F for c in v)) if clean else VALUES,
        SPACE,
    )
    lines = [n + b":" + a + v + z + b"\r\n" for n, a, v, z in draw(st.lists(fields, max_size=5))]
    if clean:
        hosts = [line for line in lines if line.lower().startswith(b"host:")]
        lines = [line for line in lines if line not in hosts] + hosts[:1]
    length = pick(b"%d" % len(body), b"%d" % (len(body) + 1), b"", b"-1", b"1e2")
    if length:
        lines.insert(draw(st.integers(0, len(lines))), b"Content-Length: " + length + b"\r\n")
    tail = pick(b"", b"GET / HTTP/1.1\r\n\r\n", b"x")
    return (
        method + b" " + target + b" " + version + b"\r\n" + b"".join(lines) + b"\r\n" + body + tail
    )


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests())
def test_whatever_the_lane_takes_httptools_reads_the_same_way(data: bytes) -> None:
    agrees_with_httptools(data)


@settings(max_examples=600, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise_and_are_taken_only_when_httptools_agrees(
    data: bytes,
) -> None:
    agrees_with_httptools(b"POST /v2/models/iris/infer HTTP/1.1\r\n" + data)
    agrees_with_httptools(data)


def test_the_usual_request_is_taken_with_its_host_dropped() -> None:
    simple = simple_post(HEAD + BODY, *LIMITS)
    assert simple is not None
    assert simple.target == b"/v2/models/iris/infer" and simple.body == BODY
    assert simple.headers == b"content-type: application/json\r\ncontent-length: %d\r\n" % len(BODY)


@pytest.mark.parametrize(
    "data",
    [
        HEAD + BODY[:-1],  # the body is still coming
        HEAD + BODY + HEAD + BODY,  # pipelined
        HEAD.replace(b"content-length", b"transfer-encoding: chunked\r\nx") + BODY,
        HEAD.replace(b"host: client\r\n", b"connection: close\r\n") + BODY,
        HEAD.replace(b"host: client\r\n", b"expect: 100-continue\r\n") + BODY,
        HEAD.replace(b"host: client\r\n", b"host: a\r\nhost: b\r\n") + BODY,
        HEAD.replace(b"HTTP/1.1", b"HTTP/1.0") + BODY,
        HEAD.replace(b"/v2/models/iris/infer", b"/v2/models/ir%69s/infer") + BODY,
        HEAD.replace(b"content-type: application/json", b"content-type : x") + BODY,
        HEAD.replace(b"content-type: application/json", b"x: \x01") + BODY,
        HEAD.replace(b"POST", b"GET") + BODY,
    ],
    ids=[
        "partial body",
        "pipelined",
        "chunked",
        "connection",
        "expect",
        "two hosts",
        "http/1.0",
        "percent-encoded",
        "space before colon",
        "control byte",
        "not a POST",
    ],
)
def test_anything_else_takes_the_parsed_path(data: bytes) -> None:
    assert simple_post(data, *LIMITS) is None


def test_limits_send_oversized_heads_to_the_parsed_path_which_refuses_them() -> None:
    many = HEAD.replace(b"host: client\r\n", b"x: y\r\n" * 101) + BODY
    assert simple_post(many, *LIMITS) is None
    long_target = HEAD.replace(b"/v2/models/iris/infer", b"/" + b"a" * 16 * 1024) + BODY
    assert simple_post(long_target, *LIMITS) is None


def _upstream_request(data: bytes, lane: bool, monkeypatch: pytest.MonkeyPatch) -> bytes:
    if not lane:
        monkeypatch.setattr(http_proxy, "simple_post", lambda *args: None)
    sent: list[bytes] = []

    async def main() -> None:
        wired = Wired(asyncio.get_running_loop())
        try:
            wired.client.data_received(data)
            sent.extend(wired.upstream_transport.writes)
            wired.upstream.data_received(ANSWER)
            assert wired.client_transport.writes == [ANSWER]
        finally:
            await wired.close()

    asyncio.run(main())
    monkeypatch.undo()
    return b"".join(sent)


def _meaning(request: bytes) -> tuple[bytes, list[tuple[bytes, bytes]], bytes]:
    head, _, body = request.partition(b"\r\n\r\n")
    line, *fields = head.split(b"\r\n")
    pairs = sorted(
        (name.lower(), value.strip()) for name, _, value in (f.partition(b":") for f in fields)
    )
    return line, pairs, body


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests())
def test_the_backend_gets_the_same_request_either_way(data: bytes) -> None:
    if simple_post(data, *LIMITS) is None:
        return
    with pytest.MonkeyPatch.context() as monkeypatch:
        fast = _upstream_request(data, True, monkeypatch)
        parsed = _upstream_request(data, False, monkeypatch)
    assert _meaning(fast) == _meaning(parsed)
