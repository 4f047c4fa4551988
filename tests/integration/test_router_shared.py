"""The router's shared gRPC connections (a backend that names a port per process) against
real processes: a 2-process predictor with ``--grpc_process_ports``, a process killed
under load, a backend down and back, and a client that stops reading its answers."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import psutil
import pytest
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

from gate.local import h2
from gate.local.grpc_proxy import PROCESS_CONNECTIONS
from tests.helpers import Predictor, free_port, make_artifact, run_predictor, wait_until
from tests.integration.test_router import Load, Router, infer_request, run_router

pytestmark = pytest.mark.integration

INFER = "/inference.GRPCInferenceService/ModelInfer"


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_artifact(tmp_path_factory.mktemp("artifacts") / "iris-1", name="iris")


@pytest.fixture(scope="module")
def process_ports() -> list[int]:
    return [free_port(), free_port()]


@pytest.fixture(scope="module")
def predictor(artifact: Path, logs: Path, process_ports: list[int]) -> Iterator[Predictor]:
    ports = ",".join(map(str, process_ports))
    with run_predictor(artifact, logs, "--workers", "2", "--grpc_process_ports", ports) as p:
        yield p


def targets(ports: list[int]) -> list[str]:
    return [f"127.0.0.1:{port}" for port in ports]


@pytest.fixture(scope="module")
def router(predictor: Predictor, process_ports: list[int], logs: Path) -> Iterator[Router]:
    with run_router(
        logs,
        "--stable-http",
        predictor.url,
        "--stable-grpc",
        predictor.grpc_target,
        "--stable-grpc-processes",
        ",".join(targets(process_ports)),
    ) as running:
        yield running


def listener_pid(port: int) -> int | None:
    for conn in psutil.net_connections("tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port:
            return int(conn.pid) if conn.pid is not None else None
    return None


def router_connections(router: Router, port: int) -> int:
    """The router's established connections to ``port``."""
    process = psutil.Process(router.running.process.pid)
    return sum(
        1
        for conn in process.connections("tcp")
        if conn.status == psutil.CONN_ESTABLISHED and conn.raddr and conn.raddr.port == port
    )


def group_pids(predictor: Predictor) -> set[int]:
    root = psutil.Process(predictor.process.pid)
    return {root.pid, *(child.pid for child in root.children(recursive=True))}


def test_each_process_also_listens_on_its_own_port(
    predictor: Predictor, process_ports: list[int]
) -> None:
    pids = [listener_pid(port) for port in process_ports]
    assert None not in pids and len(set(pids)) == 2, pids
    assert set(pids) <= group_pids(predictor)
    for target in targets(process_ports):
        with grpc.insecure_channel(target) as channel:
            reply = GRPCInferenceServiceStub(channel).ModelInfer(infer_request("iris"), timeout=10)
        assert reply.model_name == "iris"


def test_the_router_keeps_two_connections_to_each_process(
    router: Router, process_ports: list[int]
) -> None:
    with grpc.insecure_channel(router.grpc_target) as channel:
        stub = GRPCInferenceServiceStub(channel)
        for _ in range(20):
            assert stub.ModelInfer(infer_request("iris"), timeout=10).model_name == "iris"
    for port in process_ports:
        assert router_connections(router, port) == PROCESS_CONNECTIONS
    assert router.routes("iris")["stable"]["grpc_processes"] == targets(process_ports)


def test_a_killed_process_costs_clients_nothing_and_is_reconnected(
    router: Router, predictor: Predictor, process_ports: list[int]
) -> None:
    """A sibling process killed under load: the calls in flight on its connections are
    sent again on the others, and once the predictor has restarted it the router has its
    connections to it again."""
    victim_port = process_ports[1]
    victim = listener_pid(victim_port)
    assert victim is not None and victim != predictor.process.pid
    with Load(router, ("grpc",), threads=4) as load:
        wait_until(lambda: load.sent["grpc"] >= 100, 30, "traffic before the kill")
        os.kill(victim, signal.SIGKILL)
        at_kill = load.sent["grpc"]
        wait_until(
            lambda: listener_pid(victim_port) not in (None, victim), 30, "the process restarted"
        )
        wait_until(
            lambda: router_connections(router, victim_port) == PROCESS_CONNECTIONS,
            30,
            "the router reconnected",
        )
        wait_until(lambda: load.sent["grpc"] >= at_kill + 200, 30, "traffic after the restart")
    assert load.failures == [], load.failures[:5]
    assert router.routes("iris")["stable"]["errors"] == 0


def test_a_backend_down_is_unavailable_at_once_and_served_again_once_back(
    artifact: Path, logs: Path
) -> None:
    http_port, grpc_port = free_port(), free_port()
    ports = (http_port, grpc_port)
    own = f"127.0.0.1:{grpc_port}"
    with (
        run_predictor(artifact, logs, ports=ports) as first,
        run_router(
            logs,
            "--stable-http",
            first.url,
            "--stable-grpc",
            own,
            "--stable-grpc-processes",
            own,
        ) as router,
        grpc.insecure_channel(router.grpc_target) as channel,
    ):
        stub = GRPCInferenceServiceStub(channel)
        assert stub.ModelInfer(infer_request("iris"), timeout=10).model_name == "iris"
        first.stop()
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(infer_request("iris"), timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert time.monotonic() - started < 5
        with run_predictor(artifact, logs, ports=ports):
            assert stub.ModelInfer(infer_request("iris"), timeout=10).model_name == "iris"
            wait_until(
                lambda: router_connections(router, grpc_port) == PROCESS_CONNECTIONS,
                30,
                "the router reconnected",
            )
        assert router.running.stop() == 0
        assert "Traceback" not in router.running.output()


# --- a client that stops reading ----------------------------------------------------------

BIG_ANSWER = 128 * 1024  # more than a shared connection's stream window (64 KiB)
STALLED_CLIENTS, STALLED_STREAMS = 3, 200  # 3 * 200 * 64 KiB: 37.5 MiB, over 2 * 16 MiB


class Backend:
    """A real gRPC server whose ModelInfer answers a request with id "big" with
    BIG_ANSWER bytes of message, any other with a small one; counts the calls."""

    def __init__(self) -> None:
        self.port = free_port()
        self.calls = 0
        self._lock = threading.Lock()
        handler = grpc.unary_unary_rpc_method_handler(self._infer)  # raw bytes both ways
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        self.server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "inference.GRPCInferenceService", {"ModelInfer": handler}
                ),
            )
        )
        self.server.add_insecure_port(f"127.0.0.1:{self.port}")

    def _infer(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        parsed = pb.ModelInferRequest.FromString(request)
        with self._lock:
            self.calls += 1
        size = BIG_ANSWER if parsed.id == "big" else 16
        answer = pb.ModelInferResponse(model_name="iris", id=parsed.id)
        answer.raw_output_contents.append(b"x" * size)
        return bytes(answer.SerializeToString())


@pytest.fixture
def big_backend() -> Iterator[Backend]:
    backend = Backend()
    backend.server.start()
    try:
        yield backend
    finally:
        backend.server.stop(0).wait(10)


class StalledClient:
    """A raw HTTP/2 client that sends ``streams`` calls for big answers and never gives
    the router any window to answer them with; it reads only to count the answers'
    HEADERS (which flow control does not hold back)."""

    def __init__(self, port: int, streams: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.frames = h2.FrameReader(h2.DEFAULT_MAX_FRAME)
        self.answered = 0
        block = h2.encode_literal(
            (
                (b":method", b"POST"),
                (b":scheme", b"http"),
                (b":path", INFER.encode()),
                (b":authority", b"router"),
                (b"content-type", b"application/grpc"),
                (b"te", b"trailers"),
            )
        )
        message = pb.ModelInferRequest(model_name="iris", id="big").SerializeToString()
        body = b"\x00" + len(message).to_bytes(4, "big") + message
        out = [h2.PREFACE, h2.settings_frame({h2.INITIAL_WINDOW_SIZE: 0})]
        for stream in range(1, 2 * streams, 2):
            out.append(h2.frame(h2.HEADERS, h2.END_HEADERS, stream, block))
            out.append(h2.frame(h2.DATA, h2.END_STREAM, stream, body))
        self.sock.sendall(b"".join(out))
        self.sock.settimeout(0.05)

    def count_answers(self) -> int:
        with contextlib.suppress(TimeoutError):
            while True:
                data = self.sock.recv(65536)
                if not data:
                    break
                for frame in self.frames.feed(data):
                    self.answered += frame[0] == h2.HEADERS
        return self.answered


def test_clients_that_stop_reading_stall_only_their_own_calls(
    big_backend: Backend, logs: Path
) -> None:
    """Their calls' answers fill their streams' windows on the router's two shared
    connections (64 KiB each, 37.5 MiB in all: more than both connection windows hold),
    yet another client's calls on the same connections are answered. Without the
    connection windows given back on receipt they are not (checked by hand)."""
    own = f"127.0.0.1:{big_backend.port}"
    with run_router(
        logs,
        "--stable-http",
        "http://127.0.0.1:9",
        "--stable-grpc",
        own,
        "--stable-grpc-processes",
        own,
    ) as router:
        port = int(router.grpc_target.rsplit(":", 1)[1])
        stalled = [StalledClient(port, STALLED_STREAMS) for _ in range(STALLED_CLIENTS)]
        try:
            wait_until(
                lambda: all(c.count_answers() == STALLED_STREAMS for c in stalled),
                60,
                "every stalled call's answer head",
            )
            time.sleep(0.5)  # the rest of the answers' first 64 KiB reach the router
            with grpc.insecure_channel(router.grpc_target) as channel:
                stub = GRPCInferenceServiceStub(channel)
                for _ in range(3):
                    request = pb.ModelInferRequest(model_name="iris", id="small")
                    reply = stub.ModelInfer(request, timeout=5)
                    assert reply.id == "small"
        finally:
            for client in stalled:
                client.sock.close()
        assert router_connections(router, big_backend.port) == PROCESS_CONNECTIONS
        assert router.running.stop() == 0


# --- a request that brings its backend down ----------------------------------------------


class CrashingBackend:
    """Two "processes" (a port each) that speak HTTP/2 just enough (their SETTINGS) and
    drop the connection at the first request they see: a request that brings a backend
    process down. Counts the requests."""

    def __init__(self) -> None:
        self.requests = 0
        self._lock = threading.Lock()
        self.listeners = [socket.create_server(("127.0.0.1", 0)) for _ in range(2)]
        self.ports = [listener.getsockname()[1] for listener in self.listeners]
        for listener in self.listeners:
            threading.Thread(target=self._serve, args=(listener,), daemon=True).start()

    def _serve(self, listener: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while True:
                sock, _ = listener.accept()
                threading.Thread(target=self._connection, args=(sock,), daemon=True).start()

    def _connection(self, sock: socket.socket) -> None:
        frames = h2.FrameReader(1 << 20)
        seen = b""
        with sock, contextlib.suppress(OSError):
            sock.sendall(h2.settings_frame({}))
            while data := sock.recv(65536):
                if len(seen) < len(h2.PREFACE):
                    seen += data
                    if len(seen) < len(h2.PREFACE):
                        continue
                    data = seen[len(h2.PREFACE) :]
                if any(frame[0] == h2.HEADERS for frame in frames.feed(data)):
                    with self._lock:
                        self.requests += 1
                    return  # the "crash": the connection closes, nothing answered


def test_a_call_that_brings_its_backend_down_is_sent_again_once_only(logs: Path) -> None:
    """Sent again after its pooled connection was lost (the backend may have closed it
    before reading the call), on the other process's connection, and lost again: counted
    as the backend's error then, not sent round every connection as they reopen."""
    crashing = CrashingBackend()
    try:
        with (
            run_router(
                logs,
                "--stable-http",
                "http://127.0.0.1:9",
                "--stable-grpc",
                f"127.0.0.1:{crashing.ports[0]}",
                "--stable-grpc-processes",
                ",".join(targets(crashing.ports)),
            ) as router,
            grpc.insecure_channel(router.grpc_target) as channel,
        ):
            stub = GRPCInferenceServiceStub(channel)

            def fails() -> None:
                with pytest.raises(grpc.RpcError) as caught:
                    stub.ModelInfer(infer_request("iris"), timeout=10)
                assert caught.value.code() == grpc.StatusCode.UNAVAILABLE

            fails()  # on the connection opened for it: its loss is an answer, sent once
            assert (crashing.requests, router.routes("iris")["stable"]["errors"]) == (1, 1)
            for call in range(1, 4):
                wait_until(
                    lambda: all(
                        router_connections(router, port) == PROCESS_CONNECTIONS
                        for port in crashing.ports
                    ),
                    30,
                    "the router's connections reopened",
                )
                fails()  # on a pooled connection: sent again once, on another pooled one
                assert crashing.requests == 1 + 2 * call
                assert router.routes("iris")["stable"]["errors"] == 1 + call
            assert router.running.stop() == 0
    finally:
        for listener in crashing.listeners:
            listener.close()
