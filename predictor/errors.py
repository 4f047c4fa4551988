"""The predictor's one error table.

Every failure a client can see has a reason (a stable metric label), an HTTP status and a
gRPC status. The REST handlers and the gRPC servicer both read this table, so the two
protocols can never disagree about what a mistake is called or how it is reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from http import HTTPStatus


@dataclass(frozen=True)
class ErrorKind:
    reason: str
    http_status: int
    grpc_status: str  # name of a grpc.StatusCode member; grpc is not imported here


class Reason(Enum):
    """Why a request failed. The value is the ``reason`` label on the errors metric."""

    EMPTY_INPUT = ErrorKind("empty_input", HTTPStatus.BAD_REQUEST, "INVALID_ARGUMENT")
    WRONG_WIDTH = ErrorKind("wrong_width", HTTPStatus.BAD_REQUEST, "INVALID_ARGUMENT")
    WRONG_RANK = ErrorKind("wrong_rank", HTTPStatus.BAD_REQUEST, "INVALID_ARGUMENT")
    NON_NUMERIC = ErrorKind("non_numeric", HTTPStatus.BAD_REQUEST, "INVALID_ARGUMENT")
    NON_FINITE = ErrorKind("non_finite", HTTPStatus.BAD_REQUEST, "INVALID_ARGUMENT")
    SHAPE_MISMATCH = ErrorKind("shape_mismatch", HTTPStatus.BAD_REQUEST, "INVALID_ARGUMENT")
    UNSUPPORTED_DATATYPE = ErrorKind(
        "unsupported_datatype", HTTPStatus.BAD_REQUEST, "INVALID_ARGUMENT"
    )
    TOO_MANY_ROWS = ErrorKind("too_many_rows", HTTPStatus.BAD_REQUEST, "INVALID_ARGUMENT")
    WRONG_INPUT_COUNT = ErrorKind("wrong_input_count", HTTPStatus.BAD_REQUEST, "INVALID_ARGUMENT")
    UNKNOWN_OUTPUT = ErrorKind("unknown_output", HTTPStatus.BAD_REQUEST, "INVALID_ARGUMENT")
    MALFORMED_REQUEST = ErrorKind("malformed_request", HTTPStatus.BAD_REQUEST, "INVALID_ARGUMENT")
    MODEL_NOT_FOUND = ErrorKind("model_not_found", HTTPStatus.NOT_FOUND, "NOT_FOUND")
    MODEL_NOT_READY = ErrorKind("model_not_ready", HTTPStatus.SERVICE_UNAVAILABLE, "UNAVAILABLE")
    INJECTED_FAULT = ErrorKind("injected_fault", HTTPStatus.INTERNAL_SERVER_ERROR, "UNAVAILABLE")
    INTERNAL = ErrorKind("internal", HTTPStatus.INTERNAL_SERVER_ERROR, "INTERNAL")

    @property
    def kind(self) -> ErrorKind:
        value: ErrorKind = self.value
        return value


class PredictorError(Exception):
    """A failure with a reason from the table and a message meant for the client."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message

    @property
    def http_status(self) -> int:
        return self.reason.kind.http_status

    @property
    def grpc_status(self) -> str:
        return self.reason.kind.grpc_status


def outcome_of_http(status: int) -> str:
    """Coarse outcome label shared by both protocols (what the gate's error rate counts)."""
    if status < 400:
        return "success"
    return "client_error" if status < 500 else "server_error"


# gRPC codes that mean "the server failed" rather than "the client asked wrongly".
_GRPC_SERVER_SIDE = {
    "INTERNAL",
    "UNAVAILABLE",
    "UNKNOWN",
    "DATA_LOSS",
    "DEADLINE_EXCEEDED",
    "RESOURCE_EXHAUSTED",
    "UNIMPLEMENTED",
    "ABORTED",
}


def outcome_of_grpc(code_name: str) -> str:
    if code_name == "OK":
        return "success"
    return "server_error" if code_name in _GRPC_SERVER_SIDE else "client_error"
