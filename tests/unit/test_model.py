"""IrisModel without any server: KServe types in, KServe types out."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from kserve.protocol.infer_type import InferInput, InferRequest, RequestedOutput
from prometheus_client import CollectorRegistry

from predictor.artifact import ArtifactError
from predictor.errors import PredictorError, Reason
from predictor.faults import FaultInjector
from predictor.metrics import PredictorMetrics
from predictor.model import IrisModel
from tests.helpers import make_artifact, train_iris

ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_artifact(tmp_path_factory.mktemp("m") / "iris-1")


def loaded(
    artifact: Path, faults: FaultInjector | None = None
) -> tuple[IrisModel, CollectorRegistry]:
    registry = CollectorRegistry()
    model = IrisModel(
        "iris",
        artifact,
        max_rows=16,
        metrics=PredictorMetrics("iris", "1", "stable", registry),
        faults=faults,
    )
    model.load()
    return model, registry


def test_v1_predictions_equal_scikit_learn(artifact: Path) -> None:
    model, registry = loaded(artifact)
    reference, _, _ = train_iris()
    answer = asyncio.run(model.predict({"instances": ROWS, "outputs": ["label"]}))
    assert answer["predictions"] == reference.predict(np.array(ROWS)).tolist()
    assert answer["labels"] == ["setosa", "virginica", "versicolor"]
    counted = registry.get_sample_value(
        "irisgate_predictor_predictions_total",
        {
            "model": "iris",
            "version": "1",
            "role": "stable",
            "class_name": "virginica",
            "traffic": "live",
        },
    )
    assert counted == 1


def test_v2_request_and_probabilities(artifact: Path) -> None:
    model, _ = loaded(artifact)
    reference, _, _ = train_iris()
    tensor = InferInput("input-0", [3, 4], "FP32", data=[v for row in ROWS for v in row])
    request = InferRequest(
        "iris",
        [tensor],
        request_id="7",
        request_outputs=[RequestedOutput("predict_proba"), RequestedOutput("predict")],
    )
    response = asyncio.run(model.predict(request))
    outputs = {o.name: o for o in response.outputs}
    assert [o.name for o in response.outputs] == ["predict_proba", "predict"]
    assert outputs["predict"].data == reference.predict(np.array(ROWS)).tolist()
    proba = np.array(outputs["predict_proba"].data).reshape(3, 3)
    expected = reference.predict_proba(np.array(ROWS, dtype=np.float32).astype(np.float64))
    np.testing.assert_allclose(proba, expected, rtol=1e-5, atol=1e-6)
    assert response.id == "7" and response.model_version == "1"


def test_metadata_describes_io(artifact: Path) -> None:
    model, _ = loaded(artifact)
    assert model.get_input_types() == [{"name": "input-0", "datatype": "FP32", "shape": [-1, 4]}]
    assert [o["name"] for o in model.get_output_types()] == ["predict", "predict_proba", "label"]


def test_bad_input_raises_predictor_error(artifact: Path) -> None:
    model, _ = loaded(artifact)
    with pytest.raises(PredictorError) as caught:
        asyncio.run(model.predict({"instances": [[1, 2, 3]]}))
    assert caught.value.reason is Reason.WRONG_WIDTH


def test_injected_faults(artifact: Path) -> None:
    model, _ = loaded(artifact, faults=FaultInjector(error_rate=1.0))
    with pytest.raises(PredictorError) as caught:
        asyncio.run(model.predict({"instances": ROWS}))
    assert caught.value.reason is Reason.INJECTED_FAULT
    assert caught.value.http_status == 500 and caught.value.grpc_status == "UNAVAILABLE"


def test_fault_rate_is_a_fraction() -> None:
    injector = FaultInjector(error_rate=0.3, seed=1)
    failures = 0
    for _ in range(1000):
        try:
            asyncio.run(injector.apply())
        except PredictorError:
            failures += 1
    assert 230 < failures < 370
    with pytest.raises(ValueError):
        FaultInjector(error_rate=1.5)


def test_load_refuses_tampered_artifact(tmp_path: Path) -> None:
    directory = make_artifact(tmp_path / "a")
    (directory / "model.skops").write_bytes(b"garbage")
    model = IrisModel(
        "iris",
        directory,
        max_rows=4,
        metrics=PredictorMetrics("iris", "1", "stable", CollectorRegistry()),
    )
    with pytest.raises(ArtifactError, match="sha256 mismatch"):
        model.load()
    assert not model.ready
