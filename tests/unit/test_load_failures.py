"""The load test's failure text for a REST request nothing answered: the connection error
by name (it used to be ``0: ``), from the exceptions requests really raises."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
import requests

from load_tests.failures import failure_message
from tests.helpers import free_port


def error_of(url: str, timeout: float = 5) -> requests.RequestException:
    with pytest.raises(requests.RequestException) as raised:
        requests.post(url, json={}, timeout=timeout)
    return raised.value


@pytest.fixture
def silent_port() -> Iterator[int]:
    """Accepts connections (the kernel's backlog) and never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def test_a_closed_port_is_named_connection_refused() -> None:
    error = error_of(f"http://127.0.0.1:{free_port()}/v1/models/iris:predict")
    assert failure_message(0, "", error) == (
        "no response: ConnectionRefusedError: [Errno 111] Connection refused"
    )


def test_a_silent_server_is_named_a_timeout(silent_port: int) -> None:
    error = error_of(f"http://127.0.0.1:{silent_port}/", timeout=0.2)
    assert failure_message(0, "", error) == "no response: TimeoutError: timed out"


def test_an_answer_is_its_status_and_body() -> None:
    assert failure_message(503, "busy" * 100, None) == "503: " + ("busy" * 100)[:200]
