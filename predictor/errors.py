"""The predictor's one error table.

Every failure a client can see has a reason (a stable metric label), an HTTP status and a
gRPC status. The REST handlers and the gRPC servicer both read this table, so the two
protocols can never disagree about what a mistake is called or how it is reported.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
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
    INVALID_ENCODING = ErrorKind("invalid_encoding", HTTPStatus.BAD_REQUEST, "INVALID_ARGUMENT")
    TOO_DEEPLY_NESTED = ErrorKind("too_deeply_nested", HTTPStatus.BAD_REQUEST, "INVALID_ARGUMENT")
    BINARY_SIZE_MISMATCH = ErrorKind(
        "binary_size_mismatch", HTTPStatus.BAD_REQUEST, "INVALID_ARGUMENT"
    )
    PAYLOAD_TOO_LARGE = ErrorKind(
        "payload_too_large", HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "RESOURCE_EXHAUSTED"
    )
    MODEL_NOT_FOUND = ErrorKind("model_not_found", HTTPStatus.NOT_FOUND, "NOT_FOUND")
    MODEL_NOT_READY = ErrorKind("model_not_ready", HTTPStatus.SERVICE_UNAVAILABLE, "UNAVAILABLE")
    INJECTED_FAULT = ErrorKind("injected_fault", HTTPStatus.INTERNAL_SERVER_ERROR, "UNAVAILABLE")
    INTERNAL = ErrorKind("internal", HTTPStatus.INTERNAL_SERVER_ERROR, "INTERNAL")

    @property
    def kind(self) -> ErrorKind:
        value: ErrorKind = self.value
        return value

    @property
    def is_client_error(self) -> bool:
        """The client asked wrongly: counted as ``client_error``, logged at INFO at most."""
        return self.kind.http_status < 500


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


# gRPC codes the table uses for client mistakes (INVALID_ARGUMENT, NOT_FOUND,
# RESOURCE_EXHAUSTED for a message over the size limit): derived, so a reason added to the
# table is counted the same way on both protocols.
GRPC_CLIENT_SIDE = frozenset(r.kind.grpc_status for r in Reason if r.is_client_error)

# gRPC codes that mean "the server failed" rather than "the client asked wrongly".
_GRPC_SERVER_SIDE = {
    "INTERNAL",
    "UNAVAILABLE",
    "UNKNOWN",
    "DATA_LOSS",
    "DEADLINE_EXCEEDED",
    "UNIMPLEMENTED",
    "ABORTED",
} - GRPC_CLIENT_SIDE


def outcome_of_grpc(code_name: str) -> str:
    if code_name == "OK":
        return "success"
    return "server_error" if code_name in _GRPC_SERVER_SIDE else "client_error"


class ClientErrorLog:
    """Client mistakes at INFO, at most one line per reason per ``interval`` seconds, with
    no traceback: a client that sends garbage in a loop must not flood the log (nor pay
    for formatting a traceback per request). Lines left out are counted in the next one."""

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self._last: dict[Reason, float] = {}
        self._skipped: dict[Reason, int] = {}

    def __call__(self, where: str, error: PredictorError) -> None:
        now = self.clock()
        last = self._last.get(error.reason)
        if last is not None and now - last < self.interval:
            self._skipped[error.reason] = self._skipped.get(error.reason, 0) + 1
            return
        self._last[error.reason] = now
        skipped = self._skipped.pop(error.reason, 0)
        more = f" (and {skipped} more since the last line)" if skipped else ""
        self.logger.info(
            "client error on %s: %s: %s%s", where, error.reason.kind.reason, error.message, more
        )
