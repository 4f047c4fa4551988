"""``benchmarks.servers.settle``: the next measurement waits for a server still working."""

from __future__ import annotations

import sys
from pathlib import Path

from benchmarks.servers import Server, settle

BUSY_S = 1.0


def _server(tmp_path: Path, code: str) -> Server:
    server = Server("probe", "any", [sys.executable, "-c", code], 0, 0, tmp_path / "log")
    server.start()
    return server


def test_an_idle_fleet_is_not_waited_for(tmp_path: Path) -> None:
    idle = _server(tmp_path, "import time; time.sleep(30)")
    try:
        assert settle([idle], window_s=0.1) < 1.0
    finally:
        assert idle.process is not None
        idle.process.kill()
        idle.process.wait(5)


def test_a_busy_server_is_waited_for_until_it_stops(tmp_path: Path) -> None:
    busy = _server(
        tmp_path,
        f"import time\nend = time.monotonic() + {BUSY_S}\nwhile time.monotonic() < end: pass\n"
        "time.sleep(30)",
    )
    try:
        waited = settle([busy], window_s=0.1, limit_s=10)
        assert BUSY_S / 2 <= waited < 10  # it started busy, and stopped well before the limit
    finally:
        assert busy.process is not None
        busy.process.kill()
        busy.process.wait(5)
