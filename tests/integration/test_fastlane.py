"""The fast lanes answer what KServe's own paths answer, byte for byte.

Two real predictors on the same artifact, one with ``--fast_lane false``: every request of
a corpus of valid and invalid v1 and v2 requests goes to both, and status, headers (but
``date``) and bodies must be equal; every message of a corpus of valid and invalid gRPC
``ModelInfer`` requests goes to both, and status code, details and response bytes must be
equal. Also: the lanes take the requests they should (the error counters move the same
way), and a request they hand on still works."""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import orjson
import pytest
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

from tests.helpers import Predictor, make_artifact, run_predictor

pytestmark = pytest.mark.integration

ROW = [6.0, 2.9, 4.5, 1.5]
JSON = {"content-type": "application/json"}


def v2(data: Any, **extra: Any) -> dict[str, Any]:
    tensor = {"name": "x", "shape": [len(data) // 4, 4], "datatype": "FP32", "data": data}
    return {"inputs": [tensor], **extra}


CORPUS: list[tuple[str, str, bytes, dict[str, str]]] = [
    # v1, valid
    ("v1 one row", "/v1/models/iris:predict", orjson.dumps({"instances": [ROW]}), JSON),
    ("v1 three rows", "/v1/models/iris:predict", orjson.dumps({"instances": [ROW] * 3}), JSON),
    (
        "v1 outputs",
        "/v1/models/iris:predict",
        orjson.dumps({"instances": [ROW], "outputs": ["predict_proba", "label"]}),
        JSON,
    ),
    ("v1 no content type", "/v1/models/iris:predict", orjson.dumps({"instances": [ROW]}), {}),
    # v1, invalid
    ("v1 not json", "/v1/models/iris:predict", b"{not json", JSON),
    ("v1 NaN", "/v1/models/iris:predict", b'{"instances": [[NaN, 1, 2, 3]]}', JSON),
    ("v1 width", "/v1/models/iris:predict", orjson.dumps({"instances": [[1, 2, 3]]}), JSON),
    ("v1 empty", "/v1/models/iris:predict", orjson.dumps({"instances": []}), JSON),
    ("v1 rows", "/v1/models/iris:predict", orjson.dumps({"instances": [ROW] * 2000}), JSON),
    ("v1 strings", "/v1/models/iris:predict", orjson.dumps({"instances": [["a"] * 4]}), JSON),
    ("v1 no instances", "/v1/models/iris:predict", orjson.dumps({"rows": [ROW]}), JSON),
    ("v1 top-level list", "/v1/models/iris:predict", orjson.dumps([ROW]), JSON),
    (
        "v1 bad outputs",
        "/v1/models/iris:predict",
        orjson.dumps({"instances": [ROW], "outputs": "x"}),
        JSON,
    ),
    (
        "v1 unknown output",
        "/v1/models/iris:predict",
        orjson.dumps({"instances": [ROW], "outputs": ["nope"]}),
        JSON,
    ),
    ("v1 empty body", "/v1/models/iris:predict", b"", JSON),
    ("v1 unknown model", "/v1/models/nope:predict", orjson.dumps({"instances": [ROW]}), JSON),
    # v2, valid
    ("v2 one row", "/v2/models/iris/infer", orjson.dumps(v2(ROW)), JSON),
    ("v2 id", "/v2/models/iris/infer", orjson.dumps(v2(ROW * 2, id="abc-1")), JSON),
    (
        "v2 outputs",
        "/v2/models/iris/infer",
        orjson.dumps(v2(ROW, outputs=[{"name": "predict_proba"}, {"name": "label"}])),
        JSON,
    ),
    ("v2 parameters", "/v2/models/iris/infer", orjson.dumps(v2(ROW, parameters={"a": 1})), JSON),
    (
        "v2 FP64",
        "/v2/models/iris/infer",
        orjson.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": ROW}]}),
        JSON,
    ),
    (
        "v2 nested data",
        "/v2/models/iris/infer",
        orjson.dumps(
            {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [ROW]}]}
        ),
        JSON,
    ),
    # v2, invalid
    ("v2 not json", "/v2/models/iris/infer", b"{not json", JSON),
    ("v2 no inputs", "/v2/models/iris/infer", orjson.dumps({"id": "1"}), JSON),
    (
        "v2 shape",
        "/v2/models/iris/infer",
        orjson.dumps({"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": ROW}]}),
        JSON,
    ),
    (
        "v2 datatype",
        "/v2/models/iris/infer",
        orjson.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "NOPE", "data": ROW}]}),
        JSON,
    ),
    (
        "v2 strings",
        "/v2/models/iris/infer",
        orjson.dumps(
            {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": ["a"] * 4}]}
        ),
        JSON,
    ),
    (
        "v2 two inputs",
        "/v2/models/iris/infer",
        orjson.dumps({"inputs": [v2(ROW)["inputs"][0]] * 2}),
        JSON,
    ),
    (
        "v2 shape not ints",
        "/v2/models/iris/infer",
        orjson.dumps({"inputs": [{"name": "x", "shape": "1,4", "datatype": "FP32", "data": ROW}]}),
        JSON,
    ),
    (
        "v2 NaN",
        "/v2/models/iris/infer",
        b'{"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [NaN, 1, 2, 3]}]}',
        JSON,
    ),
    (
        "v2 unknown output",
        "/v2/models/iris/infer",
        orjson.dumps(v2(ROW, outputs=[{"name": "nope"}])),
        JSON,
    ),
    ("v2 empty body", "/v2/models/iris/infer", b"", JSON),
    ("v2 rows", "/v2/models/iris/infer", orjson.dumps(v2(ROW * 2000)), JSON),
    (
        "v2 text/plain",
        "/v2/models/iris/infer",
        orjson.dumps(v2(ROW)),
        {"content-type": "text/plain"},
    ),
    ("v2 no content type", "/v2/models/iris/infer", orjson.dumps(v2(ROW)), {}),
    ("v2 unknown model", "/v2/models/nope/infer", orjson.dumps(v2(ROW)), JSON),
    ("v2 version path", "/v2/models/iris/versions/1/infer", orjson.dumps(v2(ROW)), JSON),
]


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Predictor, Predictor]]:
    root = tmp_path_factory.mktemp("fastlane")
    artifact = make_artifact(root / "iris-1", classifier="forest")
    with contextlib.ExitStack() as stack:
        fast = stack.enter_context(run_predictor(artifact, root))
        plain = stack.enter_context(run_predictor(artifact, root, "--fast_lane", "false"))
        yield fast, plain


def _answer(
    url: str, path: str, body: bytes, headers: dict[str, str]
) -> tuple[int, list[tuple[str, str]], bytes]:
    response = httpx.post(url + path, content=body, headers=headers, timeout=30)
    kept = sorted((k, v) for k, v in response.headers.items() if k != "date")
    return response.status_code, kept, response.content


@pytest.mark.parametrize(("case", "path", "body", "headers"), CORPUS, ids=[c[0] for c in CORPUS])
def test_the_fast_lane_answers_byte_for_byte_what_fastapi_answers(
    pair: tuple[Predictor, Predictor], case: str, path: str, body: bytes, headers: dict[str, str]
) -> None:
    fast, plain = pair
    assert _answer(fast.url, path, body, headers) == _answer(plain.url, path, body, headers)


def tensor(
    data: list[float], shape: list[int] | None = None, datatype: str = "FP32", **extra: Any
) -> pb.ModelInferRequest.InferInputTensor:
    field = "fp64_contents" if datatype.upper() == "FP64" else "fp32_contents"
    return pb.ModelInferRequest.InferInputTensor(
        name="input-0",
        datatype=datatype,
        shape=[len(data) // 4, 4] if shape is None else shape,
        contents=pb.InferTensorContents(**{field: data}),
        **extra,
    )


def infer(*tensors: pb.ModelInferRequest.InferInputTensor, **extra: Any) -> bytes:
    fields = {"model_name": "iris", **extra}
    message: bytes = pb.ModelInferRequest(inputs=list(tensors), **fields).SerializeToString()
    return message


def outputs(*names: str) -> list[pb.ModelInferRequest.InferRequestedOutputTensor]:
    return [pb.ModelInferRequest.InferRequestedOutputTensor(name=name) for name in names]


FP32_ROW = struct.pack("<4f", *ROW)  # a raw tensor's bytes
GRPC_CORPUS: list[tuple[str, bytes]] = [
    # valid
    ("one row", infer(tensor(ROW))),
    ("three rows", infer(tensor(ROW * 3))),
    ("id", infer(tensor(ROW * 2), id="req-7")),
    ("all outputs", infer(tensor(ROW), outputs=outputs("label", "predict_proba", "predict"))),
    ("repeated output", infer(tensor(ROW), outputs=outputs("label", "label"))),
    ("FP64", infer(tensor(ROW, datatype="FP64"))),
    ("model version", infer(tensor(ROW), model_version="1")),
    ("shape -1", infer(tensor(ROW * 2, shape=[-1, 4]))),
    (
        "tensor name",
        infer(
            pb.ModelInferRequest.InferInputTensor(
                name="x",
                datatype="FP32",
                shape=[1, 4],
                contents=pb.InferTensorContents(fp32_contents=ROW),
            )
        ),
    ),
    # handed on to KServe's servicer
    (
        "raw input",
        infer(
            pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[1, 4]),
            raw_input_contents=[FP32_ROW],
        ),
    ),
    (
        "request parameters",
        infer(tensor(ROW), parameters={"a": pb.InferParameter(string_param="b")}),
    ),
    ("tensor parameters", infer(tensor(ROW, parameters={"a": pb.InferParameter(bool_param=True)}))),
    ("lowercase datatype", infer(tensor(ROW, datatype="fp32"))),
    ("unknown model", infer(tensor(ROW), model_name="nope")),
    # invalid
    ("no inputs", infer()),
    ("two inputs", infer(tensor(ROW), tensor(ROW))),
    ("shape", infer(tensor(ROW, shape=[2, 4]))),
    ("width", infer(tensor(ROW[:3], shape=[1, 3]))),
    ("no shape", infer(tensor(ROW, shape=[]))),
    ("no data", infer(tensor([], shape=[1, 4]))),
    ("NaN", infer(tensor([float("nan"), 1.0, 2.0, 3.0]))),
    ("infinity", infer(tensor([float("inf"), 1.0, 2.0, 3.0], datatype="FP64"))),
    ("rows", infer(tensor(ROW * 2000))),
    ("unknown output", infer(tensor(ROW), outputs=outputs("nope"))),
    ("datatype", infer(tensor(ROW, datatype="INT64"))),
    ("raw and contents", infer(tensor(ROW), raw_input_contents=[FP32_ROW])),
    ("not a message", b"\xff\xff\xff"),
]


def _grpc_answer(target: str, message: bytes) -> tuple[str, str | None, bytes | None]:
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        try:
            answer: bytes = call(message, timeout=30)
        except grpc.RpcError as exc:
            return exc.code().name, exc.details(), None
        return "OK", None, answer


@pytest.mark.parametrize(("case", "message"), GRPC_CORPUS, ids=[case for case, _ in GRPC_CORPUS])
def test_the_grpc_lane_answers_byte_for_byte_what_kserve_answers(
    pair: tuple[Predictor, Predictor], case: str, message: bytes
) -> None:
    fast, plain = pair
    answer = _grpc_answer(fast.grpc_target, message)
    assert answer == _grpc_answer(plain.grpc_target, message)
    if case in (
        "one row",
        "all outputs",
        "id",
    ):  # (a comparison of two empty answers proves little)
        assert answer[0] == "OK" and answer[2]


def _kserve_predict_calls(predictor: Predictor) -> float:
    """How many calls went through KServe's ``Model.__call__`` (its predict histogram)."""
    text = httpx.get(f"{predictor.url}/metrics", timeout=10).text
    return sum(
        float(line.rpartition(" ")[2])
        for line in text.splitlines()
        if line.startswith("request_predict_seconds_count")
    )


def test_the_grpc_lane_takes_plain_calls_and_hands_on_the_rest(
    pair: tuple[Predictor, Predictor],
) -> None:
    fast, plain = pair
    plain_message = dict(GRPC_CORPUS)["one row"]
    raw_message = dict(GRPC_CORPUS)["raw input"]
    before = {p.grpc_target: _kserve_predict_calls(p) for p in pair}
    for predictor in pair:
        for _ in range(5):
            assert _grpc_answer(predictor.grpc_target, plain_message)[0] == "OK"
    after_plain = {p.grpc_target: _kserve_predict_calls(p) for p in pair}
    assert after_plain[fast.grpc_target] == before[fast.grpc_target]  # the lane answered
    assert after_plain[plain.grpc_target] == before[plain.grpc_target] + 5
    assert _grpc_answer(fast.grpc_target, raw_message)[0] == "OK"
    assert _kserve_predict_calls(fast) == after_plain[fast.grpc_target] + 1  # handed on


def _errors(predictor: Predictor) -> dict[str, float]:
    text = httpx.get(f"{predictor.url}/metrics", timeout=10).text
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("irisgate_predictor_errors_total{"):
            labels, _, value = line.rpartition(" ")
            counts[labels] = float(value)
    return counts


def test_errors_are_counted_alike_on_both_paths(pair: tuple[Predictor, Predictor]) -> None:
    fast, plain = pair
    assert _errors(fast) == _errors(plain)


def test_the_fast_lane_is_on_by_default_and_off_with_the_flag(
    pair: tuple[Predictor, Predictor],
) -> None:
    fast, plain = pair
    assert "REST fast lane on for iris" in fast.output()
    assert "gRPC fast lane on for iris" in fast.output()
    assert "fast lane" not in plain.output()
