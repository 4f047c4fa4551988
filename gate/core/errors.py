"""The gate's error family: each error carries its HTTP status, one handler maps them.

Like MLServer's ``MLServerError(msg, status_code)``: code that refuses something raises
one of these with a message that names the field or the thing; the API turns it into
``{"detail": ...}`` with the status, and nothing else decides statuses.
"""

from __future__ import annotations


class GateError(Exception):
    """Base of every error the API answers with a 4xx; ``status`` is the HTTP code."""

    status = 400

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotFound(GateError):
    status = 404


class Conflict(GateError):
    """The request is valid but does not apply in the current state (HTTP 409)."""

    status = 409


class Refused(GateError):
    """A field is well-formed but not allowed here, e.g. an artifact outside the
    operator's allow-list (HTTP 422, naming the field like pydantic's errors do)."""

    status = 422

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}")
        self.field = field
