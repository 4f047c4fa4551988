"""The predictor's coalescing transport: one send per answer, nothing held or lost."""

from __future__ import annotations

import asyncio
from typing import Any

from predictor.transport import FLUSH_BYTES, CoalescingTransport


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


def _coalescing() -> tuple[CoalescingTransport, Recorder]:
    recorder = Recorder()
    transport: Any = recorder
    return CoalescingTransport(transport, asyncio.get_running_loop()), recorder


def test_a_head_and_body_written_in_one_turn_go_out_as_one_send() -> None:
    async def scenario() -> None:
        coalescing, recorder = _coalescing()
        coalescing.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        coalescing.write(b"")
        coalescing.write(b"{}")
        assert recorder.writes == []  # not before the turn ends
        await asyncio.sleep(0)
        assert recorder.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]
        coalescing.write(b"next")  # a later turn: its own send
        await asyncio.sleep(0)
        assert recorder.writes[1:] == [b"next"]

    asyncio.run(scenario())


def test_a_large_body_is_not_held_and_close_sends_what_is_left() -> None:
    async def scenario() -> None:
        coalescing, recorder = _coalescing()
        coalescing.write(b"head")
        coalescing.write(b"x" * FLUSH_BYTES)
        assert recorder.writes == [b"head" + b"x" * FLUSH_BYTES]  # at once
        coalescing.write(b"tail")
        coalescing.close()
        assert recorder.writes[1:] == [b"tail"] and recorder.closed
        await asyncio.sleep(0)  # the scheduled flush finds nothing left
        assert len(recorder.writes) == 2

    asyncio.run(scenario())
