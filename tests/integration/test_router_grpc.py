"""The router's gRPC port as an HTTP/2 proxy, against real predictors and real gRPC clients:
messages larger than every flow-control window in both directions, many calls multiplexed on
one connection, compressed requests, cancelled calls, and clients that do not speak HTTP/2."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

from tests.helpers import Predictor, make_artifact, run_predictor
from tests.integration.test_router import Router, backend, infer_request, run_router

pytestmark = pytest.mark.integration

ROWS = 200_000  # 3.2 MB up, 1.6 MB back: far over the 64 KiB windows gRPC starts with
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="module")
def predictors(
    tmp_path_factory: pytest.TempPathFactory, logs: Path
) -> Iterator[dict[str, Predictor]]:
    root = tmp_path_factory.mktemp("artifacts")
    big = ("--max_rows", str(ROWS), "--max_message_mb", "64")
    with contextlib.ExitStack() as stack:
        yield {
            "iris": stack.enter_context(
                run_predictor(make_artifact(root / "iris-1", name="iris"), logs, *big)
            ),
            "iris2": stack.enter_context(
                run_predictor(make_artifact(root / "iris2-1", name="iris2"), logs, name="iris2")
            ),
        }


@pytest.fixture(scope="module", params=["per-client", "shared"])
def router(
    predictors: dict[str, Predictor], logs: Path, request: pytest.FixtureRequest
) -> Iterator[Router]:
    """Every test below on both of the router's gRPC pool modes: a backend connection per
    client, and connections shared by all clients (the backends name their one process's
    port)."""
    shared = request.param == "shared"
    stable = predictors["iris"]
    flags = ["--stable-http", stable.url, "--stable-grpc", stable.grpc_target]
    if shared:
        flags += ["--stable-grpc-processes", stable.grpc_target]
    with run_router(logs, *flags) as r:
        r.put("iris2", {"stable": backend(predictors["iris2"], shared)})
        yield r


BIG = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]


def big_request(rows: int) -> pb.ModelInferRequest:
    features = np.tile(np.array([6.0, 2.9, 4.5, 1.5], np.float32), (rows, 1))
    return pb.ModelInferRequest(
        model_name="iris",
        inputs=[pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[rows, 4])],
        raw_input_contents=[features.tobytes()],
    )


def test_messages_over_every_window_pass_both_ways_unchanged(
    router: Router, predictors: dict[str, Predictor]
) -> None:
    request = big_request(ROWS)
    replies = []
    for target in (predictors["iris"].grpc_target, router.grpc_target):
        with grpc.insecure_channel(target, options=BIG) as channel:
            replies.append(GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=60))
    direct, proxied = replies
    assert proxied.SerializeToString() == direct.SerializeToString()
    classes = np.frombuffer(proxied.raw_output_contents[0], dtype=np.int64)
    assert classes.shape == (ROWS,) and set(classes.tolist()) == {1}


def test_many_calls_multiplexed_on_one_connection(router: Router) -> None:
    async def main() -> list[str]:
        async with grpc.aio.insecure_channel(router.grpc_target) as channel:
            stub = GRPCInferenceServiceStub(channel)
            models = ["iris", "iris2"] * 50
            replies = await asyncio.gather(
                *(stub.ModelInfer(infer_request(m), timeout=30) for m in models)
            )
            return [r.model_name for r in replies]

    assert asyncio.run(main()) == ["iris", "iris2"] * 50


def test_a_compressed_request_is_routed_by_its_decompressed_model_name(router: Router) -> None:
    with grpc.insecure_channel(router.grpc_target, compression=grpc.Compression.Gzip) as channel:
        stub = GRPCInferenceServiceStub(channel)
        for model in ("iris2", "iris"):
            assert stub.ModelInfer(infer_request(model), timeout=10).model_name == model


def test_a_cancelled_call_leaves_the_connection_and_router_serving(router: Router) -> None:
    with grpc.insecure_channel(router.grpc_target, options=BIG) as channel:
        stub = GRPCInferenceServiceStub(channel)
        future = stub.ModelInfer.future(big_request(ROWS), timeout=60)
        future.cancel()
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(big_request(ROWS), timeout=0.001)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert stub.ModelInfer(infer_request("iris"), timeout=10).model_name == "iris"


def _exchange(port: int, payload: bytes, wait_s: float = 3.0) -> bytes:
    """Send bytes, read until the router closes the connection (or ``wait_s``)."""
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as sock:
        sock.sendall(payload)
        deadline = time.monotonic() + wait_s
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while time.monotonic() < deadline:
                chunk = sock.recv(65536)
                if not chunk:
                    return received + b"<closed>"
                received += chunk
    return received


def test_http1_on_the_grpc_port_is_refused_and_closed(router: Router) -> None:
    port = int(router.grpc_target.rsplit(":", 1)[1])
    answer = _exchange(port, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
    assert answer.endswith(b"<closed>")
    assert b"preface" in answer  # the GOAWAY's debug data says why


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return (
        len(payload).to_bytes(3, "big") + bytes((kind, flags)) + stream.to_bytes(4, "big") + payload
    )


frames = st.lists(
    st.builds(
        _frame,
        st.integers(0, 12),
        st.integers(0, 255),
        st.integers(0, 9),
        st.binary(max_size=64),
    ),
    max_size=8,
)


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(frames)
def test_random_frames_never_wedge_the_router(router: Router, sequence: list[bytes]) -> None:
    port = int(router.grpc_target.rsplit(":", 1)[1])
    _exchange(port, PREFACE + b"".join(sequence), wait_s=0.3)
    assert router.running.process.poll() is None


def test_after_all_that_the_router_serves_and_logged_no_traceback(
    router: Router, predictors: dict[str, Predictor]
) -> None:
    with grpc.insecure_channel(router.grpc_target) as channel:
        stub = GRPCInferenceServiceStub(channel)
        assert stub.ModelInfer(infer_request("iris"), timeout=10).model_name == "iris"
    assert "Traceback" not in router.running.output()
