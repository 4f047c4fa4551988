"""v2 model metadata (``GET /v2/models/<name>``, gRPC ``ModelMetadata``) lists the served
artifact's version, through KServe's own REST handler and our servicer, in-process."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from kserve.model_repository import ModelRepository
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.rest.v2_endpoints import V2Endpoints
from prometheus_client import CollectorRegistry

from predictor.errors import ClientErrorLog
from predictor.metrics import PredictorMetrics
from predictor.model import IrisModel
from predictor.server import IrisDataPlane, IrisServicer
from tests.helpers import make_artifact


@pytest.fixture(scope="module")
def data_plane(tmp_path_factory: pytest.TempPathFactory) -> IrisDataPlane:
    artifact = make_artifact(Path(tmp_path_factory.mktemp("meta")) / "iris-7", version="7")
    # its own metrics registry: the default one is shared by every test in the process
    metrics = PredictorMetrics("iris", "7", "stable", CollectorRegistry())
    model = IrisModel("iris", artifact, max_rows=1024, trusted_keys=None, metrics=metrics)
    model.load()
    registry = ModelRepository()
    registry.update(model)
    return IrisDataPlane(model_registry=registry)


def test_rest_metadata_lists_the_served_version(data_plane: IrisDataPlane) -> None:
    endpoints = V2Endpoints(data_plane, model_repository_extension=None)
    answer = asyncio.run(endpoints.model_metadata("iris"))
    assert answer.versions == ["7"]
    assert answer.model_dump(exclude_none=True)["name"] == "iris"


def test_grpc_metadata_lists_the_served_version(data_plane: IrisDataPlane) -> None:
    model = data_plane.get_model_from_registry("iris")
    assert isinstance(model, IrisModel) and model.metrics is not None
    servicer = IrisServicer(
        data_plane,
        None,
        model.metrics,
        1 << 20,
        ClientErrorLog(logging.getLogger("test")),
    )
    answer = asyncio.run(servicer.ModelMetadata(pb.ModelMetadataRequest(name="iris"), None))
    assert list(answer.versions) == ["7"]
    assert [tensor.name for tensor in answer.inputs] == ["input-0"]
