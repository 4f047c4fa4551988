"""The REST fast lane answers what KServe's FastAPI path answers, byte for byte.

Two real predictors on the same artifact, one with ``--fast_lane false``: every request of
a corpus of valid and invalid v1 and v2 requests goes to both, and status, headers (but
``date``) and bodies must be equal. Also: the fast lane takes the requests it should (the
error counters move the same way), and a request it hands on still works."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

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
    assert "fast lane" not in plain.output()
