"""Turn request payloads into a validated ``float64`` matrix of shape [N, n_features].

Pure functions over plain Python and numpy values: the v1 body, and a v2 tensor described
by datatype, shape and data (JSON list, gRPC contents or raw bytes already decoded by
KServe). Both protocols end in :func:`check_matrix`, so a mistake gets the same message
whichever way it arrived. Before any of that, :func:`check_json_text` and
:func:`binary_tensor_slices` judge the raw bytes of a REST body, so that no parser ever
sees a text it would choke on (too deep for a recursive parser, not UTF-8) or a binary
layout that does not add up.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from predictor.errors import PredictorError, Reason

SUPPORTED_DATATYPES = {"FP32": np.float32, "FP64": np.float64}
OUTPUT_NAMES = ("predict", "predict_proba", "label")

# Bytes that matter for nesting: brackets, and quotes (brackets inside strings don't count).
_NESTING = np.zeros(256, dtype=bool)
_NESTING[list(b'[]{}"')] = True
_STEP = np.zeros(256, dtype=np.int32)
_STEP[list(b"[{")] = 1
_STEP[list(b"]}")] = -1
_QUOTE = ord('"')


def json_nesting_depth(text: bytes) -> int:
    """How deep a JSON text nests arrays and objects, without parsing it.

    Vectorised over the bytes (a few ns per byte, linear whatever the input): escape pairs
    are removed first (``\\\\`` then ``\\"``, left to right, as a parser reads them),
    then every remaining quote toggles "inside a string", and brackets outside strings
    step the depth. On an invalid text the figure may differ from what a parser would
    reach, but only after the point where that parser stops with an error."""
    unescaped = text.replace(b"\\\\", b"").replace(b'\\"', b"")
    codes = np.frombuffer(unescaped, dtype=np.uint8)
    marks = codes[_NESTING[codes]]
    if marks.size == 0:
        return 0
    steps = _STEP[marks]
    steps[(np.cumsum(marks == _QUOTE, dtype=np.int64) & 1) == 1] = 0
    return int(np.cumsum(steps).max(initial=0))


def check_json_text(text: bytes, max_depth: int) -> None:
    """A JSON body is UTF-8 (RFC 8259) and nests at most ``max_depth`` levels.

    Checked before parsing: the standard library's parser (FastAPI's, and ours for NaN)
    recurses, and a deep enough text ends in RecursionError, a 500 or a dropped connection."""
    try:
        text.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PredictorError(
            Reason.INVALID_ENCODING, f"request body is not valid UTF-8 (byte {exc.start})"
        ) from None
    if text.count(b"[") + text.count(b"{") <= max_depth:  # cannot nest deeper: skip the scan
        return
    depth = json_nesting_depth(text)
    if depth > max_depth:
        raise PredictorError(
            Reason.TOO_DEEPLY_NESTED,
            f"request body nests {depth} levels deep; the maximum is {max_depth}",
        )


def binary_tensor_slices(sizes: Sequence[Any], start: int, end: int) -> list[slice]:
    """Where each binary tensor lies in a REST body (the binary-data extension): the
    declared ``binary_data_size`` values must be whole numbers that tile the bytes after the
    JSON header exactly, no byte missing and none left over."""
    slices = []
    offset = start
    for index, size in enumerate(sizes):
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise PredictorError(
                Reason.BINARY_SIZE_MISMATCH,
                f"input {index}: binary_data_size must be a whole number of bytes, got {size!r}",
            )
        if offset + size > end:
            raise PredictorError(
                Reason.BINARY_SIZE_MISMATCH,
                f"input {index}: binary_data_size {size} runs past the end of the body "
                f"({end - offset} bytes left)",
            )
        slices.append(slice(offset, offset + size))
        offset += size
    if offset != end:
        raise PredictorError(
            Reason.BINARY_SIZE_MISMATCH,
            f"the body has {end - offset} bytes after the declared binary tensors",
        )
    return slices


def check_matrix(matrix: np.ndarray, n_features: int, max_rows: int) -> np.ndarray:
    """The checks every input passes, in the order a client would want to hear them."""
    if matrix.ndim != 2:
        raise PredictorError(
            Reason.WRONG_RANK,
            f"input must be a 2-D array of shape [N, {n_features}], got rank {matrix.ndim}",
        )
    rows, width = matrix.shape
    if rows == 0:
        raise PredictorError(Reason.EMPTY_INPUT, "input has no rows")
    if width != n_features:
        raise PredictorError(
            Reason.WRONG_WIDTH, f"each row must have {n_features} features, got {width}"
        )
    if rows > max_rows:
        raise PredictorError(
            Reason.TOO_MANY_ROWS, f"input has {rows} rows; the maximum is {max_rows}"
        )
    if matrix.dtype.kind not in "iuf":
        raise PredictorError(Reason.NON_NUMERIC, "input values must be numbers")
    values = matrix.astype(np.float64, copy=False)
    finite = np.isfinite(values)
    if not finite.all():
        bad_row = int(np.argwhere(~finite)[0][0])
        raise PredictorError(
            Reason.NON_FINITE, f"input contains NaN or infinite values (row {bad_row})"
        )
    return values


def _as_numeric_array(data: Any, n_features: int) -> np.ndarray:
    """np.asarray without silent coercion: strings like "5.1" must not become numbers."""
    try:
        array = np.asarray(data)
    except (ValueError, TypeError) as exc:  # ragged nesting
        raise PredictorError(
            Reason.WRONG_WIDTH,
            f"rows must all have {n_features} features (ragged input: {_short(exc)})",
        ) from exc
    if array.dtype.kind == "b" or array.dtype.kind not in "iuf":
        if array.size == 0:
            return array.astype(np.float64)
        raise PredictorError(Reason.NON_NUMERIC, "input values must be numbers")
    return array


def _short(exc: BaseException) -> str:
    text = str(exc).split("\n")[0]
    return text if len(text) <= 120 else text[:117] + "..."


def matrix_from_v1(body: Any, n_features: int, max_rows: int) -> np.ndarray:
    """KServe v1: ``{"instances": [[f1, f2, f3, f4], ...]}``."""
    if not isinstance(body, dict):
        raise PredictorError(Reason.MALFORMED_REQUEST, "request body must be a JSON object")
    if "instances" not in body:
        raise PredictorError(Reason.MALFORMED_REQUEST, 'request body must have "instances"')
    instances = body["instances"]
    if not isinstance(instances, list):
        raise PredictorError(Reason.MALFORMED_REQUEST, '"instances" must be a list of rows')
    if instances and not all(isinstance(row, list) for row in instances):
        raise PredictorError(
            Reason.WRONG_RANK,
            f"input must be a 2-D array of shape [N, {n_features}], got rank 1",
        )
    if len(instances) > max_rows:  # before converting a huge body
        raise PredictorError(
            Reason.TOO_MANY_ROWS, f"input has {len(instances)} rows; the maximum is {max_rows}"
        )
    array = _as_numeric_array(instances, n_features)
    if array.ndim == 1 and array.size == 0:
        array = array.reshape(0, n_features)
    return check_matrix(array, n_features, max_rows)


def matrix_from_tensor(
    datatype: str,
    shape: Sequence[int],
    read_data: Callable[[], Any],
    n_features: int,
    max_rows: int,
) -> np.ndarray:
    """Open Inference Protocol v2 tensor. ``read_data`` is deferred so the datatype and
    shape are judged before any data is decoded."""
    dtype = SUPPORTED_DATATYPES.get(datatype.upper())
    if dtype is None:
        raise PredictorError(
            Reason.UNSUPPORTED_DATATYPE,
            f"datatype {datatype} is not supported; use FP32 or FP64",
        )
    shape = [int(d) for d in shape]
    if len(shape) != 2:
        raise PredictorError(
            Reason.WRONG_RANK,
            f"input must be a 2-D array of shape [N, {n_features}], got rank {len(shape)}",
        )
    if any(d < 0 for d in shape):
        raise PredictorError(Reason.SHAPE_MISMATCH, f"shape {shape} has a negative dimension")
    if shape[0] > max_rows:
        raise PredictorError(
            Reason.TOO_MANY_ROWS, f"input has {shape[0]} rows; the maximum is {max_rows}"
        )
    try:
        raw = read_data()
    except (ValueError, TypeError) as exc:
        raise PredictorError(
            Reason.SHAPE_MISMATCH, f"tensor data does not match shape {shape}: {_short(exc)}"
        ) from exc
    if isinstance(raw, np.ndarray) and raw.dtype.kind in "iuf":
        flat = raw.reshape(-1)
    else:
        flat = _as_numeric_array(raw, n_features).reshape(-1)
    expected = math.prod(shape)
    if flat.size != expected:
        raise PredictorError(
            Reason.SHAPE_MISMATCH,
            f"shape {shape} needs {expected} values, got {flat.size}",
        )
    return check_matrix(flat.reshape(shape), n_features, max_rows)


def check_outputs(requested: Sequence[str]) -> tuple[str, ...]:
    """Requested v2 output names, defaulting to the class ids."""
    if not requested:
        return ("predict",)
    unknown = [name for name in requested if name not in OUTPUT_NAMES]
    if unknown:
        raise PredictorError(
            Reason.UNKNOWN_OUTPUT,
            f"unknown output {unknown[0]!r}; available: {', '.join(OUTPUT_NAMES)}",
        )
    return tuple(dict.fromkeys(requested))
