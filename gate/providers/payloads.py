"""Payload events in the format of KServe's InferenceService logger: the one way live
requests and answers reach the gate.

On a cluster, an InferenceService with ``spec.predictor.logger: {mode: all, url: <gate>}``
has KServe's agent send each request and each 200 answer as a CloudEvent in HTTP *binary*
mode (kserve/kserve ``pkg/logger/worker.go``): ``ce-specversion: 1.0``, ``ce-id`` (the
request's ``Ce-Id`` header or a new uuid: request and answer share it), ``ce-type``
``org.kubeflow.serving.inference.request`` or ``...response``, ``ce-source`` (the pod),
``ce-time``, the extensions ``ce-inferenceservicename``, ``ce-namespace``,
``ce-component``, ``ce-endpoint`` (``default`` or ``canary``), ``ce-metadata``,
``ce-recordedtime``, and the body as it was, under the request's ``Content-Type``.
Locally the router sends the same events, many per POST, in CloudEvents' JSON *batch*
mode (``application/cloudevents-batch+json``: structured events, the body in
``data_base64``), so its hot path pays one POST per batch rather than two per request.

Both modes become the same :class:`PayloadEvent` here. Everything is bounded and checked:
a malformed event is refused with the attribute named, and nothing of its batch is kept.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

REQUEST_TYPE = "org.kubeflow.serving.inference.request"
RESPONSE_TYPE = "org.kubeflow.serving.inference.response"
BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"
MAX_EVENTS_PER_POST = 1_024
MAX_DATA_BYTES = 256 * 1024
MAX_POST_BYTES = 16 * 1024 * 1024
ID_PATTERN = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,252}$")
ENDPOINT_PATTERN = re.compile(r"^[a-z0-9-]{0,63}$")


class EventError(ValueError):
    """A payload event that cannot be taken: the message names the attribute."""


@dataclass(frozen=True)
class PayloadEvent:
    kind: str  # "request" or "response"
    id: str
    model: str  # the InferenceService name (the router: the model name)
    endpoint: str  # "default" (stable) or "canary"
    content_type: str
    data: bytes
    time: datetime | None


def _kind(event_type: str, where: str) -> str:
    if event_type == REQUEST_TYPE:
        return "request"
    if event_type == RESPONSE_TYPE:
        return "response"
    raise EventError(f"{where}type: expected {REQUEST_TYPE} or {RESPONSE_TYPE}")


def _time(value: str | None, where: str) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise EventError(f"{where}time: not an RFC 3339 timestamp") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _build(attributes: Mapping[str, Any], data: bytes, where: str) -> PayloadEvent:
    def text(name: str, pattern: re.Pattern[str] | None = None, required: bool = True) -> str:
        value = attributes.get(name)
        if value is None and not required:
            return ""
        if not isinstance(value, str):
            raise EventError(f"{where}{name}: required, a string")
        if pattern is not None and not pattern.fullmatch(value):
            raise EventError(f"{where}{name}: does not match {pattern.pattern}")
        return value

    if text("specversion") != "1.0":
        raise EventError(f"{where}specversion: only CloudEvents 1.0 is understood")
    if len(data) > MAX_DATA_BYTES:
        raise EventError(f"{where}data: over {MAX_DATA_BYTES} bytes")
    content_type = text("datacontenttype", required=False)[:200] or "application/json"
    return PayloadEvent(
        kind=_kind(text("type"), where),
        id=text("id", ID_PATTERN),
        model=text("inferenceservicename", NAME_PATTERN),
        endpoint=text("endpoint", ENDPOINT_PATTERN, required=False) or "default",
        content_type=content_type,
        data=data,
        time=_time(text("time", required=False), where),
    )


def parse_binary(headers: Mapping[str, str], body: bytes) -> PayloadEvent:
    """One event in binary mode: attributes in ``ce-*`` headers (``headers`` keyed in
    lower case), the body is the data."""
    attributes: dict[str, Any] = {
        name[3:]: value for name, value in headers.items() if name.startswith("ce-")
    }
    if "content-type" in headers:
        attributes["datacontenttype"] = headers["content-type"]
    return _build(attributes, body, "ce-")


def parse_batch(body: bytes) -> list[PayloadEvent]:
    """Events in JSON batch mode: a JSON array of structured events."""
    try:
        document = json.loads(body)
    except ValueError as exc:
        raise EventError(f"body: not JSON ({exc})") from exc
    if not isinstance(document, list):
        raise EventError("body: a batch is a JSON array of events")
    if len(document) > MAX_EVENTS_PER_POST:
        raise EventError(f"body: over {MAX_EVENTS_PER_POST} events")
    events = []
    for index, item in enumerate(document):
        where = f"[{index}]."
        if not isinstance(item, dict):
            raise EventError(f"[{index}]: an event is a JSON object")
        if "data_base64" in item:
            encoded = item["data_base64"]
            if not isinstance(encoded, str):
                raise EventError(f"{where}data_base64: a string")
            try:
                data = base64.b64decode(encoded, validate=True)
            except binascii.Error as exc:
                raise EventError(f"{where}data_base64: not base64") from exc
        elif "data" in item:
            data = json.dumps(item["data"], separators=(",", ":")).encode()
        else:
            raise EventError(f"{where}data: required (data or data_base64)")
        events.append(_build(item, data, where))
    return events


__all__ = [
    "BATCH_CONTENT_TYPE",
    "REQUEST_TYPE",
    "RESPONSE_TYPE",
    "EventError",
    "PayloadEvent",
    "parse_batch",
    "parse_binary",
]
