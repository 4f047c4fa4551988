"""What a failed REST request reports in locust's failure table.

locust gives a request that got no answer at all (refused, timed out, name not resolved)
status 0 and an empty body, and keeps the ``requests`` exception aside; reporting status
and body said ``0: `` and hid the reason. The reason is the innermost exception of the
chain requests and urllib3 wrap around the socket error. No locust import here: it
monkey-patches the process when imported.
"""

from __future__ import annotations


def failure_message(status_code: int, text: str, error: BaseException | None) -> str:
    """The failure as locust should count it: the connection error when nothing answered,
    else the status and the start of the body."""
    if status_code == 0 and error is not None:
        return f"no response: {root_cause(error)}"
    return f"{status_code}: {text[:200]}"


def root_cause(error: BaseException) -> str:
    """The innermost exception, e.g. ``ConnectionRefusedError: [Errno 111] Connection
    refused``: requests wraps urllib3's MaxRetryError, whose ``reason`` wraps the socket
    error as its cause."""
    seen: set[int] = set()
    current = error
    while id(current) not in seen:
        seen.add(id(current))
        reason = getattr(current, "reason", None)
        nested = reason if isinstance(reason, BaseException) else None
        nested = nested or current.__cause__ or current.__context__
        if nested is None:
            break
        current = nested
    return f"{type(current).__name__}: {current}"
