"""A free loopback port for a server this process is about to start.

The usual trick, binding port 0 and closing the socket, hands out a port from the
kernel's ephemeral range, the same range every outgoing connection takes its source port
from. Between the close and the child's own bind, any connection made on the machine may
take that port, and the child then fails with "Address already in use" (a CI run of the
tests, which start servers by the hundred, lost a router that way). A port drawn below
the ephemeral range is never taken that way: only a process that binds it by number can,
so checking that it binds now is enough in practice.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LOWEST = 10_000
"""Below this sit the well-known and registered ports people run services on."""
DEFAULT_EPHEMERAL_LOW = 32_768  # Linux's default start of the range
_draw = random.SystemRandom()


def ephemeral_low(source: Path = EPHEMERAL_RANGE) -> int:
    """Where the kernel's ephemeral ports begin (Linux's default where it cannot say)."""
    try:
        return int(source.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return DEFAULT_EPHEMERAL_LOW


def free_port(host: str = "127.0.0.1", attempts: int = 200) -> int:
    """A port on ``host`` that binds now, drawn at random below the ephemeral range
    (see the module docstring); the kernel's own choice if that range is too narrow or
    taken."""
    high = ephemeral_low()
    if high - LOWEST >= 1_000:
        for _ in range(attempts):
            port = _draw.randrange(LOWEST, high)
            if _binds(host, port):
                return port
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _binds(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True
