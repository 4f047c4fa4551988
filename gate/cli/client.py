"""The gate's HTTP API as the CLI needs it: plain calls, the server-sent-events stream,
and errors sorted by what a script should do about them (the exit codes).

Only httpx is imported: the CLI must start fast (no fastapi, no pydantic models), so it
works with the API's JSON as dicts.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

# The gate's terminal phases (gate.core.spec.TERMINAL; a unit test holds them equal):
# copied, not imported, so the CLI loads no pydantic models at start.
TERMINAL_PHASES = frozenset({"succeeded", "rolled_back", "failed", "aborted"})
COMMANDS = ("pause", "resume", "promote", "abort")


class CLIError(Exception):
    """An error the CLI reports in one line and turns into its exit code."""

    exit_code = 1


class Refused(CLIError):
    """The API answered 4xx: the request was wrong or not allowed now (exit 1)."""

    exit_code = 1

    def __init__(self, status: int, reason: str, detail: str) -> None:
        super().__init__(f"{status} {reason}: {detail}")
        self.status = status
        self.detail = detail


class Unreachable(CLIError):
    """The gate could not be reached, timed out, or failed (5xx): retrying may help
    (exit 3)."""

    exit_code = 3


def _detail(response: httpx.Response) -> str:
    """The API's ``detail``: a message, or (422) a list of field problems made readable."""
    try:
        detail = response.json()["detail"]
    except (ValueError, KeyError, TypeError):
        return response.text[:500] or response.reason_phrase
    if isinstance(detail, list):
        return "; ".join(
            f"{'.'.join(str(p) for p in item.get('loc', []))}: {item.get('msg', '')}"
            if isinstance(item, dict)
            else str(item)
            for item in detail
        )
    return str(detail)


def raise_for(response: httpx.Response) -> None:
    """4xx -> Refused, 5xx -> Unreachable (the gate's fault, not the request's)."""
    if response.status_code >= 500:
        raise Unreachable(
            f"the gate failed: {response.status_code} {response.reason_phrase}: {_detail(response)}"
        )
    if response.status_code >= 400:
        raise Refused(response.status_code, response.reason_phrase, _detail(response))


@dataclass
class SSEvent:
    event: str = "message"
    data: str = ""
    id: str | None = None


@dataclass
class _Pending:
    event: str = ""
    data: list[str] = field(default_factory=list)
    id: str | None = None


def parse_sse(lines: Iterable[str]) -> Iterator[SSEvent]:
    """Server-sent events from the stream's lines, per the WHATWG parsing rules: a blank
    line dispatches, ``:`` starts a comment (keep-alives), one space after the colon is
    dropped, several ``data`` lines join with newlines, an event without data is not
    dispatched, and what is left unterminated when the stream ends is dropped."""
    pending = _Pending()
    for raw in lines:
        line = raw.rstrip("\r\n")
        if not line:
            if pending.data:
                yield SSEvent(pending.event or "message", "\n".join(pending.data), pending.id)
            pending = _Pending(id=pending.id)
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            pending.event = value
        elif name == "data":
            pending.data.append(value)
        elif name == "id" and "\0" not in value:
            pending.id = value


class GateClient:
    """One gate. ``transport`` replaces the network (unit tests pass a MockTransport)."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout_s: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=timeout_s, transport=transport
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> GateClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise Unreachable(f"cannot reach the gate at {self.base_url}: {exc}") from exc
        raise_for(response)
        try:
            return response.json()
        except ValueError as exc:
            raise Unreachable(f"the gate answered something not JSON: {exc}") from exc

    def list_rollouts(self, active: bool = False) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call(
            "GET", "/v1/rollouts", params={"active": "true"} if active else None
        )
        return result

    def get_rollout(self, rollout_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"/v1/rollouts/{rollout_id}")
        return result

    def create_rollout(self, body: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", "/v1/rollouts", json=body)
        return result

    def command(self, rollout_id: str, name: str, full: bool = False) -> dict[str, Any]:
        if name not in COMMANDS:
            raise ValueError(f"unknown command {name!r}")
        params = {"full": "true"} if full else None
        result: dict[str, Any] = self._call(
            "POST", f"/v1/rollouts/{rollout_id}/{name}", params=params
        )
        return result

    def approve(self, rollout_id: str, hook_type: str | None = None) -> dict[str, Any]:
        body = {"type": hook_type} if hook_type else None
        result: dict[str, Any] = self._call("POST", f"/v1/rollouts/{rollout_id}/approve", json=body)
        return result

    def feedback(self, model: str, labels: list[dict[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = self._call(
            "POST", "/v1/feedback", json={"model": model, "labels": labels}
        )
        return result

    def watch(self, rollout_id: str, read_timeout_s: float = 45.0) -> Iterator[dict[str, Any]]:
        """Each state of the rollout from the stream endpoint, until it is terminal.

        The server ends every stream after its lifetime; a stream that ended before the
        rollout did is opened again. The read timeout is well above the server's 15 s
        keep-alive, so a silent connection means a gone gate (exit 3), not a quiet
        rollout."""
        timeout = httpx.Timeout(self._http.timeout.connect, read=read_timeout_s)
        while True:
            last: dict[str, Any] | None = None
            try:
                with self._http.stream(
                    "GET",
                    f"/v1/rollouts/{rollout_id}/stream",
                    timeout=timeout,
                    headers={"Accept": "text/event-stream"},
                ) as response:
                    if response.status_code >= 400:
                        response.read()
                        raise_for(response)
                    for event in parse_sse(response.iter_lines()):
                        if event.event != "rollout":
                            continue  # unknown event types: for newer servers' additions
                        try:
                            last = json.loads(event.data)
                        except ValueError as exc:
                            raise Unreachable(f"a malformed event from the gate: {exc}") from exc
                        yield last
            except httpx.HTTPError as exc:
                raise Unreachable(
                    f"lost the stream from the gate at {self.base_url}: {exc}"
                ) from exc
            if last is None:
                raise Unreachable("the gate closed the stream without sending the rollout")
            if last.get("phase") in TERMINAL_PHASES:
                return
