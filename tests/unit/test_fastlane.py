"""Which requests the REST fast lane answers itself and which it hands to KServe's app,
driven in-process with the real model and data plane (the app behind it records calls)."""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.responses import JSONResponse, Response
from kserve.model_repository import ModelRepository

from predictor.fastlane import FastLane
from predictor.model import IrisModel
from predictor.server import IrisDataPlane
from tests.helpers import make_artifact

ROW = [6.0, 2.9, 4.5, 1.5]
V2 = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": ROW}]}


class Recorder:
    """KServe's app stand-in: answers 299 so a handed-on request is recognisable."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bytes]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        body = (await receive()).get("body", b"")
        self.calls.append((scope["path"], body))
        await Response(b"app", status_code=299)(scope, receive, send)


@pytest.fixture(scope="module")
def lane(tmp_path_factory: pytest.TempPathFactory) -> tuple[FastLane, Recorder]:
    artifact = make_artifact(Path(tmp_path_factory.mktemp("lane")) / "iris-1")
    model = IrisModel("iris", artifact, max_rows=1024, trusted_keys=None)
    model.load()
    registry = ModelRepository()
    registry.update(model)
    app = Recorder()

    def on_error(path: str, exc: Exception) -> Response:
        return JSONResponse({"error": f"{type(exc).__name__}: {exc}"}, status_code=418)

    return FastLane(app, IrisDataPlane(model_registry=registry), "iris", on_error), app


def call(
    lane: FastLane,
    path: str,
    body: bytes,
    content_type: str = "application/json",
    method: str = "POST",
) -> tuple[int, bytes]:
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "headers": [(b"content-type", content_type.encode())] if content_type else [],
    }
    sent: list[MutableMapping[str, Any]] = []
    messages: list[MutableMapping[str, Any]] = [
        {"type": "http.request", "body": body, "more_body": False}
    ]

    async def receive() -> MutableMapping[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    asyncio.run(lane(scope, receive, send))
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def test_valid_requests_for_the_served_model_never_reach_the_app(
    lane: tuple[FastLane, Recorder],
) -> None:
    fast, app = lane
    before = len(app.calls)
    status, body = call(fast, "/v1/models/iris:predict", orjson.dumps({"instances": [ROW]}))
    assert (status, orjson.loads(body)) == (200, {"predictions": [1]})
    status, body = call(fast, "/v2/models/iris/infer", orjson.dumps(V2))
    assert status == 200 and orjson.loads(body)["outputs"][0]["data"] == [1]
    assert len(app.calls) == before


@pytest.mark.parametrize(
    ("path", "body", "content_type", "method"),
    [
        ("/v2/models/iris/infer", b"{not json", "application/json", "POST"),  # FastAPI's 400
        ("/v2/models/iris/infer", orjson.dumps({"id": "1"}), "application/json", "POST"),
        ("/v2/models/iris/infer", orjson.dumps(V2), "application/octet-stream", "POST"),
        ("/v2/models/iris/infer", orjson.dumps(V2), "", "POST"),  # tritonclient's JSON
        ("/v2/models/nope/infer", orjson.dumps(V2), "application/json", "POST"),
        ("/v1/models/nope:predict", b"{}", "application/json", "POST"),
        ("/v2/models/iris", b"", "", "GET"),
        ("/v1/models/iris:predict", b"", "", "GET"),
    ],
)
def test_what_the_lane_does_not_take_goes_to_the_app_with_its_body(
    lane: tuple[FastLane, Recorder], path: str, body: bytes, content_type: str, method: str
) -> None:
    fast, app = lane
    status, answer = call(fast, path, body, content_type, method)
    assert (status, answer) == (299, b"app")
    assert app.calls[-1] == (path, body)


def test_errors_after_validation_use_the_apps_error_answer(lane: tuple[FastLane, Recorder]) -> None:
    fast, app = lane
    before = len(app.calls)
    status, body = call(fast, "/v1/models/iris:predict", orjson.dumps({"instances": [[1, 2]]}))
    assert status == 418 and b"PredictorError" in body
    wide = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}
    status, body = call(fast, "/v2/models/iris/infer", orjson.dumps(wide))
    assert status == 418 and b"PredictorError" in body
    assert len(app.calls) == before
