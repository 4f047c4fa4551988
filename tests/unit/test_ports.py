"""The port picker stays out of the range outgoing connections take their ports from."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from gate.local import ports


def test_ports_are_drawn_below_the_ephemeral_range_and_bind() -> None:
    low = ports.ephemeral_low()
    drawn = {ports.free_port() for _ in range(50)}
    assert all(ports.LOWEST <= port < low for port in drawn)
    assert len(drawn) > 40  # drawn at random, not one fixed port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", drawn.pop()))


def test_a_port_in_use_is_never_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        with socket.socket() as probe:  # a port free a moment ago, not one next door
            probe.bind(("127.0.0.1", 0))
            free = probe.getsockname()[1]
        draws = iter([busy, busy, free])
        monkeypatch.setattr(ports, "ephemeral_low", lambda: 65_536)
        monkeypatch.setattr(ports._draw, "randrange", lambda low, high: next(draws))
        assert ports.free_port() == free


def test_the_kernel_chooses_when_no_draw_binds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ports, "_binds", lambda host, port: False)
    port = ports.free_port(attempts=3)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


@pytest.mark.parametrize(
    ("text", "low"), [("20000\t60999\n", 20_000), ("", 32_768), ("x y", 32_768)]
)
def test_the_ephemeral_range_is_read_from_the_kernel(tmp_path: Path, text: str, low: int) -> None:
    source = tmp_path / "ip_local_port_range"
    source.write_text(text)
    assert ports.ephemeral_low(source) == low
    assert ports.ephemeral_low(tmp_path / "missing") == 32_768
