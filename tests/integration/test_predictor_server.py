"""`python -m predictor` as a real process on loopback: REST v1, REST v2, gRPC."""

from __future__ import annotations

import asyncio
import json
import math
import signal
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import psutil
import pytest
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import (
    Predictor,
    free_port,
    make_artifact,
    run_predictor,
    start_process,
    train_iris,
    wait_until,
)

pytestmark = pytest.mark.integration

MAX_ROWS = 8
SETOSA = [5.1, 3.5, 1.4, 0.2]
VIRGINICA = [6.7, 3.0, 5.2, 2.3]


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_artifact(tmp_path_factory.mktemp("artifact") / "iris-1")


@pytest.fixture(scope="module")
def predictor(artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Predictor]:
    with run_predictor(
        artifact, tmp_path_factory.mktemp("logs"), "--max_rows", str(MAX_ROWS)
    ) as running:
        yield running


@pytest.fixture(scope="module")
def stub(predictor: Predictor) -> Iterator[GRPCInferenceServiceStub]:
    with grpc.insecure_channel(predictor.grpc_target) as channel:
        yield GRPCInferenceServiceStub(channel)


def expected_classes(rows: list[list[float]]) -> list[int]:
    model, _, _ = train_iris()
    return [int(c) for c in model.predict(np.array(rows))]


# --- happy paths ----------------------------------------------------------------------


def test_v1_predict_returns_class_ids(predictor: Predictor) -> None:
    response = httpx.post(
        f"{predictor.url}/v1/models/iris:predict", json={"instances": [SETOSA, VIRGINICA]}
    )
    assert response.status_code == 200
    assert response.json() == {"predictions": expected_classes([SETOSA, VIRGINICA])}


def test_v1_predict_with_labels_and_probabilities(predictor: Predictor) -> None:
    body = {"instances": [SETOSA], "outputs": ["label", "predict_proba"]}
    answer = httpx.post(f"{predictor.url}/v1/models/iris:predict", json=body).json()
    assert answer["labels"] == ["setosa"]
    assert len(answer["probabilities"][0]) == 3
    assert math.isclose(sum(answer["probabilities"][0]), 1.0, abs_tol=1e-5)


def test_v2_rest_json(predictor: Predictor) -> None:
    body = {
        "id": "r1",
        "inputs": [
            {"name": "input-0", "shape": [2, 4], "datatype": "FP64", "data": SETOSA + VIRGINICA}
        ],
        "outputs": [{"name": "predict"}, {"name": "label"}, {"name": "predict_proba"}],
    }
    answer = httpx.post(f"{predictor.url}/v2/models/iris/infer", json=body).json()
    outputs = {o["name"]: o for o in answer["outputs"]}
    assert answer["id"] == "r1"
    assert answer["model_version"] == "1"
    assert outputs["predict"]["datatype"] == "INT64"
    assert outputs["predict"]["data"] == expected_classes([SETOSA, VIRGINICA])
    assert outputs["label"]["data"] == ["setosa", "virginica"]
    assert outputs["predict_proba"]["shape"] == [2, 3]
    assert outputs["predict_proba"]["datatype"] == "FP32"


def test_v2_rest_default_output_is_predict(predictor: Predictor) -> None:
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [SETOSA]}]}
    answer = httpx.post(f"{predictor.url}/v2/models/iris/infer", json=body).json()
    assert [o["name"] for o in answer["outputs"]] == ["predict"]
    assert answer["outputs"][0]["data"] == [0]


def test_v2_grpc_contents_and_raw(stub: GRPCInferenceServiceStub) -> None:
    request = pb.ModelInferRequest(
        model_name="iris",
        inputs=[
            pb.ModelInferRequest.InferInputTensor(
                name="x",
                datatype="FP32",
                shape=[2, 4],
                contents=pb.InferTensorContents(fp32_contents=SETOSA + VIRGINICA),
            )
        ],
        outputs=[
            pb.ModelInferRequest.InferRequestedOutputTensor(name="predict"),
            pb.ModelInferRequest.InferRequestedOutputTensor(name="label"),
        ],
    )
    response = stub.ModelInfer(request, timeout=10)
    outputs = {o.name: o for o in response.outputs}
    assert list(outputs["predict"].contents.int64_contents) == expected_classes([SETOSA, VIRGINICA])
    assert list(outputs["label"].contents.bytes_contents) == [b"setosa", b"virginica"]

    raw = np.array([SETOSA], dtype=np.float64).tobytes()
    raw_request = pb.ModelInferRequest(
        model_name="iris",
        inputs=[pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP64", shape=[1, 4])],
        raw_input_contents=[raw],
    )
    raw_response = stub.ModelInfer(raw_request, timeout=10)
    assert np.frombuffer(raw_response.raw_output_contents[0], dtype=np.int64).tolist() == [0]


def test_kserve_own_clients(predictor: Predictor) -> None:
    from kserve import (
        InferenceGRPCClient,
        InferenceRESTClient,
        InferInput,
        InferRequest,
        RESTConfig,
    )

    async def scenario() -> None:
        tensor = InferInput("input-0", [2, 4], "FP32")
        tensor.set_data_from_numpy(
            np.array([SETOSA, VIRGINICA], dtype=np.float32), binary_data=False
        )
        request = InferRequest(model_name="iris", infer_inputs=[tensor])
        expected = expected_classes([SETOSA, VIRGINICA])

        v2 = InferenceRESTClient(RESTConfig(protocol="v2", retries=0, timeout=10))
        result = await v2.infer(predictor.url, request, model_name="iris")
        assert result.outputs[0].as_numpy().tolist() == expected
        assert await v2.is_model_ready(predictor.url, "iris")
        await v2.close()

        v1 = InferenceRESTClient(RESTConfig(protocol="v1", retries=0, timeout=10))
        answer = await v1.infer(
            predictor.url, {"instances": [SETOSA, VIRGINICA]}, model_name="iris"
        )
        assert answer == {"predictions": expected}
        await v1.close()

        binary = InferInput("input-0", [2, 4], "FP32")
        binary.set_data_from_numpy(
            np.array([SETOSA, VIRGINICA], dtype=np.float32), binary_data=True
        )
        async with InferenceGRPCClient(predictor.grpc_target, retries=0, timeout=10) as client:
            answer_grpc = await client.infer(InferRequest(model_name="iris", infer_inputs=[binary]))
            assert answer_grpc.outputs[0].as_numpy().tolist() == expected
            assert await client.is_model_ready("iris")

    asyncio.run(scenario())


def test_tritonclient_binary_and_json(predictor: Predictor) -> None:
    # tritonclient.grpc is left out: its protos clash with KServe's in one process
    # (both define inference.*); KServe's own gRPC client is exercised above.
    import tritonclient.http as triton_http

    rows = np.array([SETOSA, VIRGINICA], dtype=np.float32)
    expected = expected_classes(rows.tolist())
    client = triton_http.InferenceServerClient(f"127.0.0.1:{predictor.http_port}")
    for binary in (True, False):
        tensor = triton_http.InferInput("input-0", [2, 4], "FP32")
        tensor.set_data_from_numpy(rows, binary_data=binary)
        wanted = [
            triton_http.InferRequestedOutput("predict", binary_data=binary),
            triton_http.InferRequestedOutput("predict_proba", binary_data=binary),
        ]
        result = client.infer("iris", [tensor], outputs=wanted)
        assert result.as_numpy("predict").tolist() == expected
        assert result.as_numpy("predict_proba").shape == (2, 3)
    client.close()


def test_metadata_and_health(predictor: Predictor, stub: GRPCInferenceServiceStub) -> None:
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/iris/ready", "/v1/models/iris"):
        assert httpx.get(predictor.url + path).status_code == 200, path
    metadata = httpx.get(f"{predictor.url}/v2/models/iris").json()
    assert metadata["inputs"] == [{"name": "input-0", "datatype": "FP32", "shape": [-1, 4]}]
    assert {o["name"]: o["datatype"] for o in metadata["outputs"]} == {
        "predict": "INT64",
        "predict_proba": "FP32",
        "label": "BYTES",
    }
    assert metadata["versions"] == ["1"]  # the artifact's version (KServe's own says null)
    grpc_metadata = stub.ModelMetadata(pb.ModelMetadataRequest(name="iris"), timeout=5)
    assert list(grpc_metadata.versions) == ["1"]
    assert [i.name for i in grpc_metadata.inputs] == ["input-0"]
    assert list(grpc_metadata.outputs[1].shape) == [-1, 3]
    assert stub.ServerLive(pb.ServerLiveRequest(), timeout=5).live
    assert stub.ServerReady(pb.ServerReadyRequest(), timeout=5).ready
    assert stub.ModelReady(pb.ModelReadyRequest(name="iris"), timeout=5).ready


# --- bad input: every class, both protocols, same message ------------------------------


def _grpc_tensor(datatype: str, shape: list[int], values: list[float]) -> Any:
    contents = {"FP32": "fp32_contents", "FP64": "fp64_contents", "INT8": "int_contents"}
    return pb.ModelInferRequest.InferInputTensor(
        name="x",
        datatype=datatype,
        shape=shape,
        contents=pb.InferTensorContents(**{contents[datatype]: values}),
    )


def _rest_tensor(datatype: str, shape: list[int], values: list[Any]) -> dict[str, Any]:
    return {"name": "x", "datatype": datatype, "shape": shape, "data": values}


NAN = float("nan")
# (case, datatype, shape, values, message); each is sent as REST v2 JSON and as gRPC.
TENSOR_CASES = [
    ("empty", "FP32", [0, 4], [], "input has no rows"),
    ("wrong width", "FP32", [1, 3], [1.0, 2.0, 3.0], "each row must have 4 features, got 3"),
    (
        "wrong rank",
        "FP32",
        [4],
        [1.0, 2.0, 3.0, 4.0],
        "input must be a 2-D array of shape [N, 4], got rank 1",
    ),
    (
        "rank 3",
        "FP32",
        [1, 1, 4],
        [1.0, 2.0, 3.0, 4.0],
        "input must be a 2-D array of shape [N, 4], got rank 3",
    ),
    ("shape mismatch", "FP32", [2, 4], [1.0] * 7, "shape [2, 4] needs 8 values, got 7"),
    (
        "unsupported datatype",
        "INT8",
        [1, 4],
        [1, 2, 3, 4],
        "datatype INT8 is not supported; use FP32 or FP64",
    ),
    (
        "too many rows",
        "FP64",
        [MAX_ROWS + 1, 4],
        [1.0] * 4 * (MAX_ROWS + 1),
        f"input has {MAX_ROWS + 1} rows; the maximum is {MAX_ROWS}",
    ),
]


def _grpc_error(stub: GRPCInferenceServiceStub, request: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request, timeout=10)
    error: Any = caught.value
    return error.code(), error.details()


@pytest.mark.parametrize(
    ("case", "datatype", "shape", "values", "message"),
    TENSOR_CASES,
    ids=[c[0] for c in TENSOR_CASES],
)
def test_bad_tensor_same_answer_on_rest_and_grpc(
    predictor: Predictor,
    stub: GRPCInferenceServiceStub,
    case: str,
    datatype: str,
    shape: list[int],
    values: list[float],
    message: str,
) -> None:
    rest = httpx.post(
        f"{predictor.url}/v2/models/iris/infer",
        json={"inputs": [_rest_tensor(datatype, shape, values)]},
    )
    assert (rest.status_code, rest.json()["error"]) == (400, message)
    code, details = _grpc_error(
        stub,
        pb.ModelInferRequest(model_name="iris", inputs=[_grpc_tensor(datatype, shape, values)]),
    )
    assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT, message)


def test_nan_and_inf_rejected_on_every_protocol(
    predictor: Predictor, stub: GRPCInferenceServiceStub
) -> None:
    message = "input contains NaN or infinite values (row 1)"
    rows = [SETOSA, [1.0, NAN, 2.0, 3.0]]
    # v1 clients send the non-JSON tokens NaN / Infinity
    v1 = httpx.post(
        f"{predictor.url}/v1/models/iris:predict",
        content=b'{"instances": [[5.1, 3.5, 1.4, 0.2], [1, NaN, 2, Infinity]]}',
        headers={"content-type": "application/json"},
    )
    assert (v1.status_code, v1.json()["error"]) == (400, message)
    # v2 binary tensor over REST (the only way to carry NaN in a valid v2 REST body)
    raw = np.array(rows, dtype=np.float32).tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [2, 4],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ]
        }
    ).encode()
    v2 = httpx.post(
        f"{predictor.url}/v2/models/iris/infer",
        content=header + raw,
        headers={
            "inference-header-content-length": str(len(header)),
            "content-type": "application/octet-stream",
        },
    )
    assert (v2.status_code, v2.json()["error"]) == (400, message)
    code, details = _grpc_error(
        stub,
        pb.ModelInferRequest(
            model_name="iris", inputs=[_grpc_tensor("FP32", [2, 4], [*SETOSA, 1.0, math.inf, 2, 3])]
        ),
    )
    assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT, message)


def test_v1_bad_inputs(predictor: Predictor) -> None:
    cases = [
        ({"instances": []}, "input has no rows"),
        ({"instances": [[1, 2, 3]]}, "each row must have 4 features, got 3"),
        ({"instances": [[1, 2, 3, 4], [1, 2, 3]]}, "rows must all have 4 features"),
        ({"instances": [1, 2, 3, 4]}, "input must be a 2-D array of shape [N, 4], got rank 1"),
        ({"instances": [[1, 2, 3, "a"]]}, "input values must be numbers"),
        ({"instances": [[1, 2, 3, None]]}, "input values must be numbers"),
        ({"rows": [[1, 2, 3, 4]]}, 'request body must have "instances"'),
        (
            {"instances": [SETOSA] * (MAX_ROWS + 1)},
            f"input has {MAX_ROWS + 1} rows; the maximum is {MAX_ROWS}",
        ),
        (
            {"instances": [SETOSA], "outputs": ["colour"]},
            "unknown output 'colour'; available: predict, predict_proba, label",
        ),
    ]
    for body, message in cases:
        response = httpx.post(f"{predictor.url}/v1/models/iris:predict", json=body)
        assert response.status_code == 400, body
        assert response.json()["error"].startswith(message), (body, response.json())


def test_non_numeric_v2_json(predictor: Predictor) -> None:
    body = {"inputs": [_rest_tensor("FP32", [1, 4], ["5.1", "3.5", "1.4", "0.2"])]}
    response = httpx.post(f"{predictor.url}/v2/models/iris/infer", json=body)
    assert (response.status_code, response.json()["error"]) == (400, "input values must be numbers")


def test_malformed_json_is_400_on_both_rest_paths(predictor: Predictor) -> None:
    for path in ("/v1/models/iris:predict", "/v2/models/iris/infer"):
        response = httpx.post(
            predictor.url + path, content=b"{not json", headers={"content-type": "application/json"}
        )
        assert response.status_code == 400, path
        assert response.json()["error"].startswith("request body is not valid JSON"), path
    missing = httpx.post(f"{predictor.url}/v2/models/iris/infer", json={"id": "x"})
    assert missing.status_code == 400
    assert "inputs" in missing.json()["error"]


def test_wrong_input_count_and_unknown_output(
    predictor: Predictor, stub: GRPCInferenceServiceStub
) -> None:
    two = [_rest_tensor("FP32", [1, 4], SETOSA), _rest_tensor("FP32", [1, 4], SETOSA)]
    rest = httpx.post(f"{predictor.url}/v2/models/iris/infer", json={"inputs": two})
    assert (rest.status_code, rest.json()["error"]) == (
        400,
        "expected exactly one input tensor, got 2",
    )
    code, details = _grpc_error(
        stub,
        pb.ModelInferRequest(model_name="iris", inputs=[_grpc_tensor("FP32", [1, 4], SETOSA)] * 2),
    )
    assert (code, details) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "expected exactly one input tensor, got 2",
    )

    unknown = "unknown output 'proba'; available: predict, predict_proba, label"
    rest = httpx.post(
        f"{predictor.url}/v2/models/iris/infer",
        json={"inputs": [_rest_tensor("FP32", [1, 4], SETOSA)], "outputs": [{"name": "proba"}]},
    )
    assert (rest.status_code, rest.json()["error"]) == (400, unknown)
    code, details = _grpc_error(
        stub,
        pb.ModelInferRequest(
            model_name="iris",
            inputs=[_grpc_tensor("FP32", [1, 4], SETOSA)],
            outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="proba")],
        ),
    )
    assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT, unknown)


def test_unknown_model_is_404_and_not_found(
    predictor: Predictor, stub: GRPCInferenceServiceStub
) -> None:
    rest = httpx.post(
        f"{predictor.url}/v2/models/nope/infer",
        json={"inputs": [_rest_tensor("FP32", [1, 4], SETOSA)]},
    )
    assert rest.status_code == 404
    v1 = httpx.post(f"{predictor.url}/v1/models/nope:predict", json={"instances": [SETOSA]})
    assert v1.status_code == 404
    code, details = _grpc_error(
        stub, pb.ModelInferRequest(model_name="nope", inputs=[_grpc_tensor("FP32", [1, 4], SETOSA)])
    )
    assert code == grpc.StatusCode.NOT_FOUND
    assert details == rest.json()["error"] == "Model with name nope does not exist."


def test_process_survives_bad_input(predictor: Predictor) -> None:
    assert predictor.process.poll() is None
    assert httpx.get(f"{predictor.url}/v2/health/live").status_code == 200


# --- metrics -------------------------------------------------------------------------


def _samples(predictor: Predictor, name: str) -> list[tuple[dict[str, str], float]]:
    text = httpx.get(f"{predictor.url}/metrics").text
    return [
        (s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    ]


def _total(samples: list[tuple[dict[str, str], float]], **labels: str) -> float:
    return sum(v for found, v in samples if all(found.get(k) == w for k, w in labels.items()))


def test_metrics_count_requests_errors_and_classes(
    predictor: Predictor, stub: GRPCInferenceServiceStub
) -> None:
    before_requests = _samples(predictor, "irisgate_predictor_requests_total")
    before_errors = _samples(predictor, "irisgate_predictor_errors_total")
    before_classes = _samples(predictor, "irisgate_predictor_predictions_total")

    for _ in range(3):
        httpx.post(f"{predictor.url}/v1/models/iris:predict", json={"instances": [VIRGINICA]})
    httpx.post(f"{predictor.url}/v1/models/iris:predict", json={"instances": [[1, 2]]})
    httpx.post(
        f"{predictor.url}/v2/models/iris/infer",
        json={"inputs": [_rest_tensor("FP32", [1, 4], SETOSA)]},
    )
    stub.ModelInfer(
        pb.ModelInferRequest(
            model_name="iris", inputs=[_grpc_tensor("FP32", [2, 4], SETOSA + SETOSA)]
        ),
        timeout=10,
    )
    _grpc_error(
        stub,
        pb.ModelInferRequest(
            model_name="iris", inputs=[_grpc_tensor("INT8", [1, 4], [1, 2, 3, 4])]
        ),
    )

    after_requests = _samples(predictor, "irisgate_predictor_requests_total")
    after_errors = _samples(predictor, "irisgate_predictor_errors_total")
    after_classes = _samples(predictor, "irisgate_predictor_predictions_total")

    def delta(after: Any, before: Any, **labels: str) -> float:
        return _total(after, **labels) - _total(before, **labels)

    base = {"model": "iris", "version": "1", "role": "stable"}
    assert delta(after_requests, before_requests, protocol="rest-v1", code="200", **base) == 3
    assert (
        delta(
            after_requests, before_requests, protocol="rest-v1", code="400", outcome="client_error"
        )
        == 1
    )
    assert delta(after_requests, before_requests, protocol="rest-v2", code="200") == 1
    assert delta(after_requests, before_requests, protocol="grpc", code="OK") == 1
    assert (
        delta(
            after_requests,
            before_requests,
            protocol="grpc",
            code="INVALID_ARGUMENT",
            outcome="client_error",
        )
        == 1
    )
    assert delta(after_errors, before_errors, protocol="rest-v1", reason="wrong_width") == 1
    assert delta(after_errors, before_errors, protocol="grpc", reason="unsupported_datatype") == 1
    assert delta(after_classes, before_classes, class_name="virginica") == 3
    assert delta(after_classes, before_classes, class_name="setosa") == 3
    latency = _samples(predictor, "irisgate_predictor_request_duration_seconds_count")
    assert _total(latency, protocol="grpc") >= 2
    info = _samples(predictor, "irisgate_predictor_model_info")
    assert info and info[0][0]["version"] == "1" and len(info[0][0]["sha256"]) == 64


def test_requests_the_gate_generates_are_counted_apart(
    predictor: Predictor, stub: GRPCInferenceServiceStub
) -> None:
    """``x-irisgate-traffic: generated`` (header or gRPC metadata) moves a request's
    counts, latency and classes to ``traffic="generated"``; nothing else does."""
    names = (
        "irisgate_predictor_requests_total",
        "irisgate_predictor_predictions_total",
        "irisgate_predictor_request_duration_seconds_count",
    )
    before = {name: _samples(predictor, name) for name in names}
    marked = {"x-irisgate-traffic": "generated"}
    for path, body in (
        ("/v1/models/iris:predict", {"instances": [VIRGINICA]}),
        ("/v2/models/iris/infer", {"inputs": [_rest_tensor("FP32", [1, 4], VIRGINICA)]}),
    ):
        assert httpx.post(f"{predictor.url}{path}", json=body, headers=marked).status_code == 200
    request = pb.ModelInferRequest(model_name="iris", inputs=[_grpc_tensor("FP32", [1, 4], SETOSA)])
    stub.ModelInfer(request, metadata=tuple(marked.items()), timeout=10)
    httpx.post(
        f"{predictor.url}/v1/models/iris:predict",
        json={"instances": [VIRGINICA]},
        headers={"x-irisgate-traffic": "something else"},  # live, like any other
    )
    after = {name: _samples(predictor, name) for name in names}

    def delta(name: str, **labels: str) -> float:
        return _total(after[name], **labels) - _total(before[name], **labels)

    requests, classes, latency = names
    for protocol in ("rest-v1", "rest-v2", "grpc"):
        assert delta(requests, protocol=protocol, traffic="generated") == 1, protocol
        assert delta(latency, protocol=protocol, traffic="generated") == 1, protocol
    assert delta(requests, protocol="rest-v1", traffic="live") == 1
    assert delta(classes, class_name="virginica", traffic="generated") == 2
    assert delta(classes, class_name="setosa", traffic="generated") == 1
    assert delta(classes, class_name="virginica", traffic="live") == 1


# --- start-up refusal, faults, role, workers, shutdown ----------------------------------


def test_tampered_artifact_refused_at_start(tmp_path: Path) -> None:
    artifact = make_artifact(tmp_path / "iris-1")
    with (artifact / "model.skops").open("ab") as handle:
        handle.write(b"\0")
    running = start_process(
        [
            "-m",
            "predictor",
            "--model_dir",
            str(artifact),
            "--http_port",
            str(free_port()),
            "--grpc_port",
            str(free_port()),
        ],
        tmp_path / "tampered.log",
    )
    assert running.process.wait(60) == 3
    output = running.output()
    assert "refusing to start" in output
    assert "model.skops: sha256 mismatch" in output


def test_fault_injection_and_canary_role(artifact: Path, tmp_path: Path) -> None:
    with run_predictor(
        artifact,
        tmp_path,
        "--role",
        "canary",
        "--fault_error_rate",
        "1.0",
        "--fault_latency_ms",
        "50",
    ) as canary:
        assert "FAULT INJECTION IS ON" in canary.output()
        start = time.monotonic()
        response = httpx.post(f"{canary.url}/v1/models/iris:predict", json={"instances": [SETOSA]})
        assert response.status_code == 500
        assert time.monotonic() - start >= 0.05
        with grpc.insecure_channel(canary.grpc_target) as channel:
            code, _ = _grpc_error(
                GRPCInferenceServiceStub(channel),
                pb.ModelInferRequest(
                    model_name="iris", inputs=[_grpc_tensor("FP32", [1, 4], SETOSA)]
                ),
            )
        assert code == grpc.StatusCode.UNAVAILABLE
        errors = _samples(canary, "irisgate_predictor_errors_total")
        assert _total(errors, role="canary", reason="injected_fault") == 2
        requests = _samples(canary, "irisgate_predictor_requests_total")
        assert _total(requests, role="canary", outcome="server_error") == 2


def test_the_event_loop_flag_is_honoured(
    predictor: Predictor, artifact: Path, tmp_path: Path
) -> None:
    """``auto`` (every other test's predictor) serves on uvloop; KServe's spelling
    ``--event-loop asyncio`` on asyncio's loop, both protocols alike."""
    assert "event loop: uvloop" in predictor.output()
    with run_predictor(artifact, tmp_path, "--event-loop", "asyncio") as plain:
        assert "event loop: asyncio" in plain.output()
        response = httpx.post(f"{plain.url}/v1/models/iris:predict", json={"instances": [SETOSA]})
        assert response.json() == {"predictions": [0]}
        with grpc.insecure_channel(plain.grpc_target) as channel:
            answer = GRPCInferenceServiceStub(channel).ModelInfer(
                pb.ModelInferRequest(
                    model_name="iris", inputs=[_grpc_tensor("FP32", [1, 4], SETOSA)]
                )
            )
        assert list(answer.outputs[0].contents.int64_contents) == [0]


def _siblings(served: Predictor, count: int) -> list[psutil.Process]:
    """The spawned sibling server processes, once ``count`` processes serve gRPC."""
    wait_until(
        lambda: served.output().count("gRPC server listening") >= count,
        60,
        "sibling processes",
        served.process,
        served.log,
    )
    children = psutil.Process(served.process.pid).children()
    return [c for c in children if "spawn_main" in " ".join(c.cmdline())]


def _listening_ports(process: psutil.Process) -> set[int]:
    return {c.laddr.port for c in process.connections(kind="tcp") if c.status == "LISTEN"}


def test_several_processes_share_both_ports_and_merge_their_metrics(
    artifact: Path, tmp_path: Path
) -> None:
    with run_predictor(artifact, tmp_path, "--workers", "2") as served:
        [sibling] = _siblings(served, 2)
        ports = {served.http_port, served.grpc_port}
        assert ports <= _listening_ports(psutil.Process(served.process.pid))
        assert ports <= _listening_ports(sibling)
        for _ in range(60):  # a new connection each time: the kernel spreads them
            response = httpx.post(
                f"{served.url}/v1/models/iris:predict", json={"instances": [SETOSA]}
            )
            assert response.json() == {"predictions": [0]}
        for _ in range(20):
            with grpc.insecure_channel(served.grpc_target) as channel:
                reply = GRPCInferenceServiceStub(channel).ModelInfer(
                    pb.ModelInferRequest(
                        model_name="iris", inputs=[_grpc_tensor("FP32", [1, 4], VIRGINICA)]
                    ),
                    timeout=10,
                )
            assert list(reply.outputs[0].contents.int64_contents) == [2]
        for _ in range(6):  # whichever process answers the scrape, it counts everything
            requests = _samples(served, "irisgate_predictor_requests_total")
            assert _total(requests, protocol="rest-v1", code="200") == 60
            assert _total(requests, protocol="grpc", code="OK") == 20
            info = _samples(served, "irisgate_predictor_model_info")
            assert [value for _, value in info] == [1.0]  # one series, not one per process


def test_ready_means_every_process_serves_so_pooled_connections_spread(
    artifact: Path, tmp_path: Path
) -> None:
    """A keep-alive client (the router's pool) that connects as soon as the server is
    ready must reach both processes: ready only once each listens."""
    with run_predictor(artifact, tmp_path, "--workers", "2") as served:  # waits for ready
        sockets = [socket.create_connection(("127.0.0.1", served.http_port)) for _ in range(32)]
        try:
            parent = psutil.Process(served.process.pid)
            processes = [
                parent,
                *(c for c in parent.children() if "spawn_main" in " ".join(c.cmdline())),
            ]

            def accepted() -> list[int]:
                return [
                    sum(
                        1
                        for c in p.connections(kind="tcp")
                        if c.status == "ESTABLISHED" and c.laddr.port == served.http_port
                    )
                    for p in processes
                ]

            wait_until(
                lambda: sum(accepted()) == 32,
                10,
                "accepted connections",
                served.process,
                served.log,
            )
            counts = accepted()
            assert len(counts) == 2 and min(counts) > 0, counts  # all 32 on one: 2 in 2**31
        finally:
            for sock in sockets:
                sock.close()


def test_a_sibling_that_dies_is_replaced_and_all_stop_together(
    artifact: Path, tmp_path: Path
) -> None:
    with run_predictor(artifact, tmp_path, "--workers", "2") as served:
        [sibling] = _siblings(served, 2)
        sibling.kill()
        [replacement] = _siblings(served, 3)
        assert replacement.pid != sibling.pid
        assert "exited with -9; restarting it in 1 s" in served.output()
        response = httpx.post(f"{served.url}/v1/models/iris:predict", json={"instances": [SETOSA]})
        assert response.status_code == 200
        served.process.send_signal(signal.SIGTERM)
        assert served.process.wait(40) == 0
        replacement.wait(10)
        assert not replacement.is_running()


def test_siblings_do_not_outlive_a_killed_parent(artifact: Path, tmp_path: Path) -> None:
    with run_predictor(artifact, tmp_path, "--workers", "2") as served:
        [sibling] = _siblings(served, 2)
        served.process.kill()
        served.process.wait(10)
        sibling.wait(30)  # PR_SET_PDEATHSIG: SIGTERM, then a normal drain
        assert not sibling.is_running()


def test_sigterm_drains_in_flight_requests_and_exits_zero(artifact: Path, tmp_path: Path) -> None:
    with run_predictor(artifact, tmp_path, "--fault_latency_ms", "1500") as slow:
        results: dict[str, Any] = {}

        def call_rest() -> None:
            results["rest"] = httpx.post(
                f"{slow.url}/v1/models/iris:predict", json={"instances": [SETOSA]}, timeout=20
            )

        def call_grpc() -> None:
            with grpc.insecure_channel(slow.grpc_target) as channel:
                results["grpc"] = GRPCInferenceServiceStub(channel).ModelInfer(
                    pb.ModelInferRequest(
                        model_name="iris", inputs=[_grpc_tensor("FP32", [1, 4], SETOSA)]
                    ),
                    timeout=20,
                )

        threads = [threading.Thread(target=call_rest), threading.Thread(target=call_grpc)]
        for thread in threads:
            thread.start()
        time.sleep(0.5)  # both requests are now in flight, sleeping in the model
        slow.process.send_signal(15)
        time.sleep(0.3)
        with pytest.raises(httpx.TransportError):  # no longer accepting
            httpx.post(
                f"{slow.url}/v1/models/iris:predict", json={"instances": [SETOSA]}, timeout=2
            )
        for thread in threads:
            thread.join(20)
        assert slow.process.wait(30) == 0
        assert results["rest"].status_code == 200
        assert results["rest"].json() == {"predictions": [0]}
        assert list(results["grpc"].outputs[0].contents.int64_contents) == [0]


def test_binary_rest_shape_mismatch_matches_grpc_raw(
    predictor: Predictor, stub: GRPCInferenceServiceStub
) -> None:
    raw = struct.pack("<7f", *([1.0] * 7))
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [2, 4],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ]
        }
    ).encode()
    rest = httpx.post(
        f"{predictor.url}/v2/models/iris/infer",
        content=header + raw,
        headers={"inference-header-content-length": str(len(header))},
    )
    code, details = _grpc_error(
        stub,
        pb.ModelInferRequest(
            model_name="iris",
            inputs=[pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[2, 4])],
            raw_input_contents=[raw],
        ),
    )
    assert rest.status_code == 400
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert rest.json()["error"] == details == "shape [2, 4] needs 8 values, got 7"


@pytest.fixture(scope="module")
def forest_predictor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Predictor]:
    artifact = make_artifact(tmp_path_factory.mktemp("forest") / "iris-1", classifier="forest")
    with run_predictor(artifact, tmp_path_factory.mktemp("forest-logs")) as running:
        yield running


@pytest.mark.parametrize("classifier", ["logreg", "forest"])
def test_batched_predictions_equal_scikit_learn_under_concurrent_mixed_traffic(
    classifier: str, request: pytest.FixtureRequest
) -> None:
    """Adaptive batching and the fast path are on by default: concurrent valid requests
    share model calls, invalid ones fail alone, and every answer is scikit-learn's for that
    request's rows: class ids on every protocol, and probabilities to the last bit of
    their float32 on v2."""
    predictor: Predictor = request.getfixturevalue(
        "predictor" if classifier == "logreg" else "forest_predictor"
    )
    assert "fast path on" in predictor.log.read_text()
    model, _, _ = train_iris(classifier)
    rng = np.random.default_rng(7)
    rows = rng.uniform([4.3, 2.0, 1.0, 0.1], [7.9, 4.4, 6.9, 2.5], (240, 4)).round(2)
    before = _samples(predictor, "irisgate_predictor_batch_requests_sum")
    calls_before = _samples(predictor, "irisgate_predictor_batch_requests_count")

    async def one(client: httpx.AsyncClient, stub: Any, i: int) -> tuple[str, Any]:
        chunk = rows[i * 2 : i * 2 + 2]
        if i % 10 == 3:  # a bad request among the good ones
            response = await client.post(
                f"{predictor.url}/v1/models/iris:predict", json={"instances": [[1.0, 2.0, 3.0]]}
            )
            return "invalid", (response.status_code, response.json()["error"])
        if i % 3 == 0:
            request = pb.ModelInferRequest(
                model_name="iris", inputs=[_grpc_tensor("FP64", [2, 4], chunk.reshape(-1).tolist())]
            )
            reply = await stub.ModelInfer(request, timeout=30)
            return "valid", (i, list(reply.outputs[0].contents.int64_contents))
        if i % 3 == 1:
            response = await client.post(
                f"{predictor.url}/v1/models/iris:predict", json={"instances": chunk.tolist()}
            )
            return "valid", (i, response.json()["predictions"])
        response = await client.post(
            f"{predictor.url}/v2/models/iris/infer",
            json={
                "inputs": [_rest_tensor("FP64", [2, 4], chunk.reshape(-1).tolist())],
                "outputs": [{"name": "predict"}, {"name": "predict_proba"}],
            },
        )
        outputs = response.json()["outputs"]
        probabilities = np.array(outputs[1]["data"], dtype=np.float32).reshape(2, 3)
        np.testing.assert_array_equal(
            probabilities, model.predict_proba(chunk).astype(np.float32), err_msg=str(i)
        )
        return "valid", (i, outputs[0]["data"])

    async def scenario() -> list[tuple[str, Any]]:
        limits = httpx.Limits(max_connections=64)
        async with (
            httpx.AsyncClient(limits=limits, timeout=30) as client,
            grpc.aio.insecure_channel(predictor.grpc_target) as channel,
        ):
            stub = GRPCInferenceServiceStub(channel)
            return await asyncio.gather(*(one(client, stub, i) for i in range(120)))

    results = asyncio.run(scenario())
    valid = [value for kind, value in results if kind == "valid"]
    invalid = [value for kind, value in results if kind == "invalid"]
    assert len(invalid) == 12
    assert all(v == (400, "each row must have 4 features, got 3") for v in invalid)
    for i, predicted in valid:
        assert predicted == model.predict(rows[i * 2 : i * 2 + 2]).tolist(), i
    coalesced = _total(_samples(predictor, "irisgate_predictor_batch_requests_sum")) - _total(
        before
    )
    calls = _total(_samples(predictor, "irisgate_predictor_batch_requests_count")) - _total(
        calls_before
    )
    assert coalesced == len(valid)  # every valid request went through the batcher
    assert calls < len(valid)  # and some shared a model call
