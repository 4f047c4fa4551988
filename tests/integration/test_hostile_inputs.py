"""Hostile requests against a real predictor process: each is refused cheaply with the error
body, counted as a client error (never ``server_error``), logged without a traceback, and
none of them slows down the small requests served alongside."""

from __future__ import annotations

import json
import select
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import Predictor, make_artifact, run_predictor

pytestmark = pytest.mark.integration

MAX_BODY = 1024 * 1024  # the predictor's default --max_body_mb (1 MiB)
MAX_DEPTH = 32  # the default --max_json_depth
MAX_MESSAGE = 16 * 1024 * 1024  # the default --max_message_mb (gRPC)
HUGE = 50_000_000
SETOSA = [5.1, 3.5, 1.4, 0.2]
V1 = "/v1/models/iris:predict"
V2 = "/v2/models/iris/infer"
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Predictor]:
    artifact = make_artifact(tmp_path_factory.mktemp("artifact") / "iris-1")
    with run_predictor(artifact, tmp_path_factory.mktemp("logs")) as running:
        yield running


@pytest.fixture(scope="module")
def stub(predictor: Predictor) -> Iterator[GRPCInferenceServiceStub]:
    options = [("grpc.max_send_message_length", -1)]
    with grpc.insecure_channel(predictor.grpc_target, options=options) as channel:
        yield GRPCInferenceServiceStub(channel)


def outcomes(predictor: Predictor) -> dict[str, float]:
    """Requests by outcome, all protocols together."""
    totals: dict[str, float] = {}
    text = httpx.get(f"{predictor.url}/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "irisgate_predictor_requests_total":
                outcome = sample.labels["outcome"]
                totals[outcome] = totals.get(outcome, 0.0) + sample.value
    return totals


def error_count(predictor: Predictor, protocol: str, reason: str) -> float:
    text = httpx.get(f"{predictor.url}/metrics").text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "irisgate_predictor_errors_total"
        and sample.labels["protocol"] == protocol
        and sample.labels["reason"] == reason
    )


class Counted:
    """Asserts, around a block, how many client errors it caused and that no request was
    counted as a server error, and that the log has no traceback and no ERROR line."""

    def __init__(self, predictor: Predictor, client_errors: int) -> None:
        self.predictor = predictor
        self.expected = client_errors

    def __enter__(self) -> Counted:
        self.before = outcomes(self.predictor)
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None:
            return
        after = outcomes(self.predictor)
        delta = {k: after.get(k, 0.0) - self.before.get(k, 0.0) for k in after}
        assert delta.get("server_error", 0.0) == 0, delta
        assert delta.get("client_error", 0.0) == self.expected, delta
        log = self.predictor.output()
        assert "Traceback" not in log
        assert " ERROR " not in log
        assert self.predictor.process.poll() is None


def rest_error(response: httpx.Response, status: int, starts: str) -> None:
    assert response.status_code == status, response.text[:200]
    assert list(response.json()) == ["error"], response.text[:200]
    assert response.json()["error"].startswith(starts), response.json()


def binary_request(
    rows: list[list[float]], declared: int | None = None, extra: bytes = b""
) -> tuple[bytes, dict[str, str]]:
    raw = np.array(rows, dtype=np.float32).tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [len(rows), 4],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw) if declared is None else declared},
                }
            ]
        }
    ).encode()
    headers = {"inference-header-content-length": str(len(header))}
    return header + raw + extra, headers


def raw_upload(
    port: int, path: str, total: int, *, chunked: bool, pause: float = 0.002
) -> tuple[int | None, bytes, float]:
    """POST ``total`` bytes in 64 KiB pieces over a raw socket, reading the answer as soon
    as there is one (a server that refuses early need not read the rest). Returns the
    status, the response body and the seconds until the answer came."""
    start = time.perf_counter()
    sock = socket.create_connection(("127.0.0.1", port))
    try:
        framing = "transfer-encoding: chunked" if chunked else f"content-length: {total}"
        sock.sendall(f"POST {path} HTTP/1.1\r\nhost: x\r\n{framing}\r\n\r\n".encode())
        sent = 0
        piece = b'{"instances": [[1, 2, 3, 4]], "pad": "' + b"a" * (64 * 1024)
        while sent < total and not select.select([sock], [], [], 0)[0]:
            data = f"{len(piece):x}\r\n".encode() + piece + b"\r\n" if chunked else piece
            try:
                sock.sendall(data)
            except OSError:
                break
            sent += len(piece)
            time.sleep(pause)
        sock.settimeout(10)
        response = b""
        try:
            while b"\r\n\r\n" not in response or not response.endswith(b"}"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                response += chunk
        except OSError:
            pass
        took = time.perf_counter() - start
    finally:
        sock.close()
    if not response.startswith(b"HTTP/1.1 "):
        return None, response, took
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), body, took


# --- REST ------------------------------------------------------------------------------


def test_deep_json_is_a_400_on_both_rest_paths(predictor: Predictor) -> None:
    deep = b"[" * 10_000 + b"]" * 10_000
    bodies = {
        V1: [b'{"instances": ' + deep + b"}", b'{"instances": [[1, 2, 3, 4]], "x": ' + deep + b"}"],
        V2: [b'{"inputs": ' + deep + b"}", b'{"inputs": [], "parameters": {"a": ' + deep + b"}}"],
    }
    with Counted(predictor, 6):
        for path, texts in bodies.items():
            for text in texts:
                response = httpx.post(predictor.url + path, content=text, headers=JSON)
                rest_error(response, 400, "request body nests 1000")
            just_over = b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1)
            response = httpx.post(predictor.url + path, content=just_over, headers=JSON)
            rest_error(response, 400, f"request body nests {MAX_DEPTH + 1} levels deep")
    # brackets inside strings are not nesting: a valid request with such a string passes
    fine = {"instances": [SETOSA], "note": "[" * 5000}
    assert httpx.post(predictor.url + V1, json=fine).json() == {"predictions": [0]}


def test_depth_in_the_binary_header_is_checked(predictor: Predictor) -> None:
    header = b'{"inputs": ' + b"[" * 2000 + b"]" * 2000 + b"}"
    with Counted(predictor, 1):
        response = httpx.post(
            predictor.url + V2,
            content=header + b"\0" * 16,
            headers={"inference-header-content-length": str(len(header))},
        )
        rest_error(response, 400, "request body nests 2001 levels deep")


def test_invalid_utf8_is_a_400_with_the_error_body(predictor: Predictor) -> None:
    binary, headers = binary_request([SETOSA])
    bad_header = binary.replace(b'"x"', b'"\xff"', 1)
    with Counted(predictor, 3):
        for path, body in [
            (V1, b'{"instances": [[1, 2, 3, 4]], "x": "\xff\xfe"}'),
            (V2, b'{"inputs": [{"name": "\xc3\x28", "shape": [1, 4], "datatype": "FP32"}]}'),
        ]:
            response = httpx.post(predictor.url + path, content=body, headers=JSON)
            rest_error(response, 400, "request body is not valid UTF-8")
        response = httpx.post(predictor.url + V2, content=bad_header, headers=headers)
        rest_error(response, 400, "request body is not valid UTF-8")


def test_binary_sizes_must_tile_the_body(predictor: Predictor) -> None:
    with Counted(predictor, 5):
        too_big, headers = binary_request([SETOSA], declared=1_000_000)
        response = httpx.post(predictor.url + V2, content=too_big, headers=headers)
        rest_error(response, 400, "input 0: binary_data_size 1000000 runs past the end")
        too_small, headers = binary_request([SETOSA], declared=8)
        response = httpx.post(predictor.url + V2, content=too_small, headers=headers)
        rest_error(response, 400, "the body has 8 bytes after the declared binary tensors")
        trailing, headers = binary_request([SETOSA], extra=b"\0" * 100)
        response = httpx.post(predictor.url + V2, content=trailing, headers=headers)
        rest_error(response, 400, "the body has 100 bytes after the declared binary tensors")
        body, _ = binary_request([SETOSA])
        for length in (str(len(body) + 1), "-3"):
            response = httpx.post(
                predictor.url + V2,
                content=body,
                headers={"inference-header-content-length": length},
            )
            rest_error(response, 400, "'inference-header-content-length' must be")
    good, headers = binary_request([SETOSA])
    response = httpx.post(predictor.url + V2, content=good, headers=headers)
    assert response.status_code == 200
    assert response.json()["outputs"][0]["data"] == [0]


def test_50_mb_bodies_are_refused_before_they_are_read(predictor: Predictor) -> None:
    with Counted(predictor, 6):
        for path in (V1, V2):
            body = b'{"instances": [[1, 2, 3, 4]], "pad": "' + b"a" * HUGE + b'"}'
            start = time.perf_counter()
            response = httpx.post(predictor.url + path, content=body, headers=JSON, timeout=60)
            took = time.perf_counter() - start
            rest_error(response, 413, f"request body of {len(body)} bytes is over the limit")
            print(f"\n{path}: 50 MB body with Content-Length refused in {took * 1000:.0f} ms")
            for chunked in (False, True):
                status, body, took = raw_upload(predictor.http_port, path, HUGE, chunked=chunked)
                assert status == 413, body[:200]
                error = json.loads(body)
                assert list(error) == ["error"]
                assert error["error"].endswith(f"over the limit of {MAX_BODY} bytes")
                kind = "chunked" if chunked else "raw, Content-Length"
                print(f"{path}: 50 MB body ({kind}) refused in {took * 1000:.0f} ms")
    # just under the limit is read and judged like any body
    near = {"instances": [SETOSA], "pad": "a" * (MAX_BODY - 100)}
    assert httpx.post(predictor.url + V1, json=near).json() == {"predictions": [0]}


def test_other_client_errors_use_the_error_body(predictor: Predictor) -> None:
    response = httpx.get(f"{predictor.url}/no/such/path")
    assert (response.status_code, response.json()) == (404, {"error": "Not Found"})
    response = httpx.post(predictor.url + V2, content=b"{not json", headers=JSON)
    rest_error(response, 400, "request body is not valid JSON")


# --- gRPC ------------------------------------------------------------------------------


def grpc_error(call: Any, request: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=30)
    error: Any = caught.value
    return error.code(), error.details()


def tensor_request(raw: list[bytes], shape: list[int]) -> pb.ModelInferRequest:
    return pb.ModelInferRequest(
        model_name="iris",
        inputs=[pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=shape)],
        raw_input_contents=raw,
    )


def test_grpc_hostile_requests(predictor: Predictor, stub: GRPCInferenceServiceStub) -> None:
    with Counted(predictor, 5):
        code, details = grpc_error(stub.ModelInfer, tensor_request([b"\0" * HUGE], [1, 4]))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert str(MAX_MESSAGE) in details
        code, details = grpc_error(stub.ModelInfer, tensor_request([b"\0" * 15], [1, 4]))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert details.startswith("tensor data does not match shape [1, 4]")
        code, details = grpc_error(stub.ModelInfer, tensor_request([b"\0" * 32], [1, 4]))
        assert (code, details) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "shape [1, 4] needs 4 values, got 8",
        )
        with grpc.insecure_channel(predictor.grpc_target) as channel:
            raw_call = channel.unary_unary(
                "/inference.GRPCInferenceService/ModelInfer",
                request_serializer=lambda b: b,
                response_deserializer=lambda b: b,
            )
            valid = tensor_request([b"\0" * 16], [1, 4])
            valid.model_name = "irXs"
            not_utf8 = valid.SerializeToString().replace(b"irXs", b"ir\xffs")
            code, details = grpc_error(raw_call, not_utf8)
            assert code == grpc.StatusCode.INVALID_ARGUMENT
            assert details.startswith("request is not a valid ModelInferRequest")
            code, details = grpc_error(raw_call, b"\xff\xff\xff\xff")
            assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert error_count(predictor, "grpc", "payload_too_large") == 1
    assert error_count(predictor, "grpc", "malformed_request") == 2
    ok = stub.ModelInfer(tensor_request([np.array(SETOSA, np.float32).tobytes()], [1, 4]))
    assert np.frombuffer(ok.raw_output_contents[0], dtype=np.int64).tolist() == [0]


# --- no delay for others -----------------------------------------------------------------


def test_small_requests_stay_fast_during_50_mb_uploads(
    predictor: Predictor, stub: GRPCInferenceServiceStub
) -> None:
    stop = threading.Event()
    refusals: list[tuple[int | None, float]] = []

    def upload() -> None:
        chunked = False
        while not stop.is_set():
            status, _, took = raw_upload(
                predictor.http_port, V1, HUGE, chunked=chunked, pause=0.001
            )
            refusals.append((status, took))
            chunked = not chunked

    uploaders = [threading.Thread(target=upload) for _ in range(2)]
    latencies: list[float] = []
    with httpx.Client(base_url=predictor.url, timeout=10) as client:
        for _ in range(20):  # warm up the connection
            client.post(V1, json={"instances": [SETOSA]})
        for thread in uploaders:
            thread.start()
        try:
            deadline = time.perf_counter() + 4.0
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                response = client.post(V1, json={"instances": [SETOSA]})
                latencies.append(time.perf_counter() - start)
                assert response.status_code == 200
                time.sleep(0.002)
        finally:
            stop.set()
            for thread in uploaders:
                thread.join(30)
    ms = sorted(x * 1000 for x in latencies)
    p50, p99 = statistics.median(ms), ms[int(len(ms) * 0.99) - 1]
    refused = [took for status, took in refusals if status == 413]
    print(
        f"\n{len(ms)} small requests during {len(refusals)} 50 MB uploads "
        f"({len(refused)} answered 413, median {statistics.median(refused) * 1000:.1f} ms "
        f"to refuse): p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {ms[-1]:.2f} ms"
    )
    assert refused and len(refused) == len(refusals)
    assert p99 < 50.0
    assert predictor.process.poll() is None


def test_the_limits_are_the_operators_to_set(tmp_path_factory: pytest.TempPathFactory) -> None:
    """``--max_body_mb`` and ``--max_json_depth`` reach the server (not only the defaults)."""
    artifact = make_artifact(tmp_path_factory.mktemp("artifact") / "iris-1")
    with run_predictor(
        artifact,
        tmp_path_factory.mktemp("logs"),
        "--max_body_mb",
        "0.01",
        "--max_json_depth",
        "4",
    ) as small:
        rows = {"instances": [SETOSA] * 1000}  # ~22 KB: fine by default, over 0.01 MB here
        rest_error(httpx.post(f"{small.url}{V1}", json=rows), 413, "")
        nested = {"instances": [[[[[SETOSA]]]]]}  # depth 6 > 4
        rest_error(httpx.post(f"{small.url}{V1}", json=nested), 400, "")
        ok = httpx.post(f"{small.url}{V1}", json={"instances": [SETOSA]})
        assert ok.status_code == 200, ok.text
