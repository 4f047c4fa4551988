"""Input decoding, pure: every bad-input class with its reason and message."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from predictor.errors import PredictorError, Reason
from predictor.inputs import check_outputs, matrix_from_tensor, matrix_from_v1

ROW = [5.1, 3.5, 1.4, 0.2]


def v1(body: Any, max_rows: int = 10) -> np.ndarray:
    return matrix_from_v1(body, 4, max_rows)


def tensor(datatype: str, shape: list[int], data: Any, max_rows: int = 10) -> np.ndarray:
    return matrix_from_tensor(datatype, shape, lambda: data, 4, max_rows)


def test_valid_inputs_become_float64_matrices() -> None:
    assert v1({"instances": [ROW, ROW]}).shape == (2, 4)
    assert v1({"instances": [[5, 3, 1, 0]]}).dtype == np.float64
    assert tensor("FP32", [1, 4], ROW).tolist() == [ROW]
    assert tensor("fp64", [2, 4], [ROW, ROW]).shape == (2, 4)
    raw = np.array([ROW], dtype=np.float32)
    assert tensor("FP32", [1, 4], raw.reshape(-1)).shape == (1, 4)


@pytest.mark.parametrize(
    ("body", "reason", "message"),
    [
        ({"instances": []}, Reason.EMPTY_INPUT, "input has no rows"),
        ({"instances": [[1, 2, 3]]}, Reason.WRONG_WIDTH, "each row must have 4 features, got 3"),
        ({"instances": [ROW, [1, 2]]}, Reason.WRONG_WIDTH, "rows must all have 4 features"),
        (
            {"instances": ROW},
            Reason.WRONG_RANK,
            "input must be a 2-D array of shape [N, 4], got rank 1",
        ),
        (
            {"instances": [[ROW]]},
            Reason.WRONG_RANK,
            "input must be a 2-D array of shape [N, 4], got rank 3",
        ),
        ({"instances": [[1, 2, 3, "4"]]}, Reason.NON_NUMERIC, "input values must be numbers"),
        ({"instances": [[1, 2, 3, None]]}, Reason.NON_NUMERIC, "input values must be numbers"),
        (
            {"instances": [[1, 2, 3, float("inf")]]},
            Reason.NON_FINITE,
            "input contains NaN or infinite values (row 0)",
        ),
        ({"instances": [ROW] * 11}, Reason.TOO_MANY_ROWS, "input has 11 rows; the maximum is 10"),
        ({"rows": []}, Reason.MALFORMED_REQUEST, 'request body must have "instances"'),
        ({"instances": "x"}, Reason.MALFORMED_REQUEST, '"instances" must be a list'),
        ([ROW], Reason.MALFORMED_REQUEST, "request body must be a JSON object"),
    ],
)
def test_v1_errors(body: Any, reason: Reason, message: str) -> None:
    with pytest.raises(PredictorError) as caught:
        v1(body)
    assert caught.value.reason is reason
    assert caught.value.message.startswith(message)


@pytest.mark.parametrize(
    ("datatype", "shape", "data", "reason", "message"),
    [
        ("FP32", [0, 4], [], Reason.EMPTY_INPUT, "input has no rows"),
        ("FP32", [1, 3], [1, 2, 3], Reason.WRONG_WIDTH, "each row must have 4 features, got 3"),
        (
            "FP32",
            [4],
            ROW,
            Reason.WRONG_RANK,
            "input must be a 2-D array of shape [N, 4], got rank 1",
        ),
        ("FP32", [2, 4], ROW, Reason.SHAPE_MISMATCH, "shape [2, 4] needs 8 values, got 4"),
        ("FP32", [-1, 4], ROW, Reason.SHAPE_MISMATCH, "shape [-1, 4] has a negative dimension"),
        (
            "INT32",
            [1, 4],
            ROW,
            Reason.UNSUPPORTED_DATATYPE,
            "datatype INT32 is not supported; use FP32 or FP64",
        ),
        ("BYTES", [1, 4], ROW, Reason.UNSUPPORTED_DATATYPE, "datatype BYTES is not supported"),
        ("FP32", [1, 4], ["a", "b", "c", "d"], Reason.NON_NUMERIC, "input values must be numbers"),
        (
            "FP64",
            [1, 4],
            [1, float("nan"), 3, 4],
            Reason.NON_FINITE,
            "input contains NaN or infinite values (row 0)",
        ),
        ("FP32", [11, 4], ROW * 11, Reason.TOO_MANY_ROWS, "input has 11 rows; the maximum is 10"),
    ],
)
def test_tensor_errors(
    datatype: str, shape: list[int], data: Any, reason: Reason, message: str
) -> None:
    with pytest.raises(PredictorError) as caught:
        tensor(datatype, shape, data)
    assert caught.value.reason is reason
    assert caught.value.message.startswith(message)


def test_tensor_data_is_not_decoded_before_shape_checks() -> None:
    def explode() -> Any:
        raise AssertionError("data read for an oversized request")

    with pytest.raises(PredictorError, match="maximum"):
        matrix_from_tensor("FP32", [100, 4], explode, 4, 10)


def test_raw_buffer_of_wrong_size_is_a_shape_mismatch() -> None:
    def read() -> Any:
        return np.frombuffer(b"\0" * 7, dtype=np.float32)

    with pytest.raises(PredictorError) as caught:
        matrix_from_tensor("FP32", [1, 4], read, 4, 10)
    assert caught.value.reason is Reason.SHAPE_MISMATCH


def test_outputs() -> None:
    assert check_outputs([]) == ("predict",)
    assert check_outputs(["label", "predict", "label"]) == ("label", "predict")
    with pytest.raises(PredictorError) as caught:
        check_outputs(["probs"])
    assert caught.value.reason is Reason.UNKNOWN_OUTPUT


def test_every_client_error_maps_to_400_and_invalid_argument() -> None:
    client_side = [r for r in Reason if r.kind.http_status == 400]
    assert len(client_side) >= 10
    assert all(r.kind.grpc_status == "INVALID_ARGUMENT" for r in client_side)
    assert len({r.kind.reason for r in Reason}) == len(Reason)
