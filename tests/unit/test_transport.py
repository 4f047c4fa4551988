"""The predictor's coalescing transport: a head goes out with its body, nothing is lost,
and a lone request waits for nothing."""

from __future__ import annotations

import asyncio
from typing import Any

from predictor.transport import CoalescingTransport

HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


class Recorder:
    """Stands in for the socket transport: records what reaches it."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_write_buffer_size(self) -> int:
        return 0


def _coalescing(busy: bool) -> tuple[CoalescingTransport, Recorder]:
    recorder = Recorder()
    transport: Any = recorder
    return CoalescingTransport(transport, asyncio.get_running_loop(), lambda: busy), recorder


def test_alone_a_head_goes_out_with_its_body_at_once() -> None:
    async def scenario() -> None:
        coalescing, recorder = _coalescing(busy=False)
        coalescing.write(HEAD)
        assert recorder.writes == []
        coalescing.write(b"{}")
        assert recorder.writes == [HEAD + b"{}"]  # no waiting for the turn to end
        coalescing.write(b"more")  # after a sent head: straight through
        assert recorder.writes[1:] == [b"more"]
        await asyncio.sleep(0)
        assert len(recorder.writes) == 2  # the end of the turn found nothing left

    asyncio.run(scenario())


def test_with_others_in_flight_an_answer_leaves_at_the_end_of_the_turn() -> None:
    async def scenario() -> None:
        coalescing, recorder = _coalescing(busy=True)
        coalescing.write(HEAD)
        coalescing.write(b"{}")
        assert recorder.writes == []
        await asyncio.sleep(0)
        assert recorder.writes == [HEAD + b"{}"]

    asyncio.run(scenario())


def test_a_head_alone_is_sent_at_the_end_of_the_turn_and_interim_heads_at_once() -> None:
    async def scenario() -> None:
        coalescing, recorder = _coalescing(busy=False)
        coalescing.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        assert recorder.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]
        coalescing.write(HEAD)  # e.g. the answer to a HEAD request: no body follows
        await asyncio.sleep(0)
        assert recorder.writes[1:] == [HEAD]
        coalescing.write(HEAD)
        coalescing.close()  # closing sends what is held first
        assert recorder.writes[2:] == [HEAD] and recorder.closed

    asyncio.run(scenario())
