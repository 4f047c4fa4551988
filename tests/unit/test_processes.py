"""Several server processes: CPU count, shared sockets, the shared metrics directory."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import pytest
from prometheus_client import values

from predictor import processes
from predictor.processes import available_cpus, shared_metrics_dir
from predictor.server import reuse_port_socket


def test_reuse_port_sockets_share_a_port_and_serve_without_nagle() -> None:
    """asyncio turns Nagle off only on IPPROTO_TCP sockets; left on, small responses wait
    ~40 ms for delayed ACKs (it halved throughput before this was caught)."""
    first = reuse_port_socket("127.0.0.1", 0)
    port = first.getsockname()[1]
    reuse_port_socket("127.0.0.1", port).close()  # a sibling can bind the same port
    flags: list[int] = []

    async def scenario() -> None:
        def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            sock = writer.get_extra_info("socket")
            flags.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(accepted, sock=first)
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(100):
            if flags:
                break
            await asyncio.sleep(0.01)
        writer.close()
        server.close()

    asyncio.run(scenario())
    assert flags and flags[0] != 0


def test_cpu_count_follows_the_cgroup_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: {0, 1, 2, 3})
    monkeypatch.setattr(processes, "_cgroup_cpu_quota", lambda: 1.5)
    assert available_cpus() == 2
    monkeypatch.setattr(processes, "_cgroup_cpu_quota", lambda: 0.25)
    assert available_cpus() == 1
    monkeypatch.setattr(processes, "_cgroup_cpu_quota", lambda: None)
    assert available_cpus() == 4


def test_one_process_needs_no_metrics_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(processes.METRICS_ENV, raising=False)
    with shared_metrics_dir(1):
        assert processes.METRICS_ENV not in os.environ


def test_a_temporary_metrics_directory_lives_as_long_as_the_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(processes.METRICS_ENV, raising=False)
    before = values.ValueClass
    with shared_metrics_dir(2):
        folder = Path(os.environ[processes.METRICS_ENV])
        assert folder.is_dir()
        assert values.ValueClass is not before  # the multiprocess files' values
    assert not folder.exists()
    assert processes.METRICS_ENV not in os.environ
    # metrics made after the server (a later test's) do not look for the folder
    assert values.ValueClass is before


def test_a_given_metrics_directory_is_emptied_of_a_previous_runs_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "counter_123.db").write_bytes(b"stale")
    (tmp_path / "keep.txt").write_text("not ours")
    monkeypatch.setenv(processes.METRICS_ENV, str(tmp_path))
    before = values.ValueClass
    with shared_metrics_dir(2):
        assert not (tmp_path / "counter_123.db").exists()
        assert values.ValueClass is not before
    assert (tmp_path / "keep.txt").exists()
    assert values.ValueClass is before
