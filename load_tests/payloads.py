"""Request bodies for the load tests: random valid Iris rows, and deliberately bad ones.

Plain Python and protobuf only; this module must not import kserve (locust's gevent
patching and kserve's imports do not mix in one process).
"""

from __future__ import annotations

import random
from typing import Any

from load_tests.oip import grpc_predict_v2_pb2 as pb

# Per-feature ranges of the Iris data set, so rows look like flowers.
LOW = (4.3, 2.0, 1.0, 0.1)
HIGH = (7.9, 4.4, 6.9, 2.5)


def random_rows(rng: random.Random, batch: int) -> list[list[float]]:
    return [
        [round(rng.uniform(lo, hi), 1) for lo, hi in zip(LOW, HIGH, strict=True)]
        for _ in range(batch)
    ]


def v1_body(rows: list[list[float]]) -> dict[str, Any]:
    return {"instances": rows}


def v2_body(rows: list[list[float]]) -> dict[str, Any]:
    return {
        "inputs": [
            {
                "name": "input-0",
                "datatype": "FP32",
                "shape": [len(rows), 4],
                "data": [v for row in rows for v in row],
            }
        ]
    }


def grpc_request(model: str, rows: list[list[float]]) -> pb.ModelInferRequest:
    tensor = pb.ModelInferRequest.InferInputTensor(
        name="input-0",
        datatype="FP32",
        shape=[len(rows), 4],
        contents=pb.InferTensorContents(fp32_contents=[v for row in rows for v in row]),
    )
    return pb.ModelInferRequest(model_name=model, inputs=[tensor])


def invalid_rows() -> list[list[float]]:
    """Three features per row: the server must answer 400 / INVALID_ARGUMENT."""
    return [[5.1, 3.5, 1.4]]


def invalid_grpc_request(model: str) -> pb.ModelInferRequest:
    tensor = pb.ModelInferRequest.InferInputTensor(
        name="input-0",
        datatype="FP32",
        shape=[1, 3],
        contents=pb.InferTensorContents(fp32_contents=[5.1, 3.5, 1.4]),
    )
    return pb.ModelInferRequest(model_name=model, inputs=[tensor])
