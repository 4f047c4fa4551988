"""Input decoding, pure: every bad-input class with its reason and message."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import pytest

from predictor.errors import (
    ClientErrorLog,
    PredictorError,
    Reason,
    outcome_of_grpc,
    outcome_of_http,
)
from predictor.inputs import (
    binary_tensor_slices,
    check_json_text,
    check_outputs,
    json_nesting_depth,
    matrix_from_tensor,
    matrix_from_v1,
)

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


# --- raw bytes, before any parser ---------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "depth"),
    [
        (b"", 0),
        (b"1", 0),
        (b'{"instances": [[1, 2, 3, 4]]}', 3),
        (b"[" * 10_000 + b"]" * 10_000, 10_000),
        (b'["[[[[", "{{{"]', 1),  # brackets inside strings do not nest
        (b'["a\\"[[[", 1]', 1),  # an escaped quote does not end the string
        (b'["a\\\\", [[1]]]', 3),  # an escaped backslash does not escape the quote
        (b'["\\\\\\"[[", [1]]', 2),
        (b'{"a": {"b": {"c": []}}, "d": [[[[]]]]}', 5),
    ],
)
def test_json_nesting_depth(text: bytes, depth: int) -> None:
    assert json_nesting_depth(text) == depth


def test_json_nesting_depth_is_linear_on_hostile_texts() -> None:
    hostile = [
        b'"' + b'\\"' * 1_000_000,  # one unterminated string full of escaped quotes
        b'"a",' * 500_000,  # many tiny strings
        b"[]" * 1_000_000,
    ]
    for text in hostile:
        start = time.perf_counter()
        json_nesting_depth(text)
        assert time.perf_counter() - start < 0.5, text[:10]


def test_check_json_text() -> None:
    check_json_text(b'{"instances": [[1, 2, 3, 4]]}', 32)
    check_json_text(b"[" * 32 + b"]" * 32, 32)
    with pytest.raises(PredictorError) as caught:
        check_json_text(b"[" * 33 + b"]" * 33, 32)
    assert caught.value.reason is Reason.TOO_DEEPLY_NESTED
    assert caught.value.message == "request body nests 33 levels deep; the maximum is 32"
    with pytest.raises(PredictorError) as caught:
        check_json_text(b'{"instances": "\xff"}', 32)
    assert caught.value.reason is Reason.INVALID_ENCODING
    assert caught.value.message == "request body is not valid UTF-8 (byte 15)"


def test_binary_tensor_slices_tile_the_body_exactly() -> None:
    assert binary_tensor_slices([16, 8], 10, 34) == [slice(10, 26), slice(26, 34)]
    assert binary_tensor_slices([], 10, 10) == []
    cases: list[tuple[list[Any], str]] = [
        ([17], "input 0: binary_data_size 17 runs past the end of the body (16 bytes left)"),
        ([8], "the body has 8 bytes after the declared binary tensors"),
        ([-1], "input 0: binary_data_size must be a whole number of bytes, got -1"),
        (["16"], "input 0: binary_data_size must be a whole number of bytes, got '16'"),
        ([True], "input 0: binary_data_size must be a whole number of bytes, got True"),
    ]
    for sizes, message in cases:
        with pytest.raises(PredictorError) as caught:
            binary_tensor_slices(sizes, 10, 26)
        assert caught.value.reason is Reason.BINARY_SIZE_MISMATCH
        assert caught.value.message == message


def test_too_large_is_413_and_resource_exhausted_and_a_client_error() -> None:
    kind = Reason.PAYLOAD_TOO_LARGE.kind
    assert (kind.http_status, kind.grpc_status) == (413, "RESOURCE_EXHAUSTED")
    assert outcome_of_http(413) == outcome_of_grpc("RESOURCE_EXHAUSTED") == "client_error"
    for reason in Reason:
        expected = "client_error" if reason.is_client_error else "server_error"
        assert outcome_of_http(reason.kind.http_status) == expected, reason
        assert outcome_of_grpc(reason.kind.grpc_status) == expected, reason


def test_client_error_log_is_rate_limited_per_reason(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    log = ClientErrorLog(logging.getLogger("test.client_errors"), 1.0, clock=lambda: now[0])
    deep = PredictorError(Reason.TOO_DEEPLY_NESTED, "too deep")
    with caplog.at_level(logging.INFO, logger="test.client_errors"):
        for _ in range(50):
            log("/v1", deep)
        log("/v1", PredictorError(Reason.INVALID_ENCODING, "not utf-8"))
        now[0] += 1.5
        log("/v1", deep)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "client error on /v1: too_deeply_nested: too deep",
        "client error on /v1: invalid_encoding: not utf-8",
        "client error on /v1: too_deeply_nested: too deep (and 49 more since the last line)",
    ]
    assert all(r.levelno == logging.INFO and r.exc_info is None for r in caplog.records)
