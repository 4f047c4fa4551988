"""Which model a request is for: from a REST path, or from the raw bytes of a gRPC request
(the router passes gRPC through without decoding it). Pure functions, no state."""

from __future__ import annotations

import re

MODEL_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def rest_target(path: str) -> tuple[str | None, bool]:
    """(the model a REST path names or None, whether it is an inference call).

    ``/v1/models/{m}[:verb]`` and ``/v2/models/{m}[/...]`` name a model; inference is
    ``:predict`` and ``.../infer``. Anything else (health, ``/v2``, ``/``) names none.
    """
    if path.startswith("/v1/models/"):
        name, _, verb = path[len("/v1/models/") :].partition(":")
        return name, verb == "predict"
    if path.startswith("/v2/models/"):
        name = path[len("/v2/models/") :].split("/", 1)[0]
        return name, path.endswith("/infer")
    return None, False


class MalformedMessage(ValueError):
    """The bytes are not a protobuf message this router can read a model name from."""


# ModelInferRequest, ModelMetadataRequest and ModelReadyRequest all carry the model name
# as field 1. Every protobuf serializer writes fields in number order, so it comes first;
# the scan is bounded anyway. A request naming two models is routed by the first, and
# the backend (which serves only that model) answers for the one it reads.
_MAX_FIELDS_SCANNED = 64
_FIELD_1_STRING = 1 << 3 | 2  # field 1, wire type 2 (length-delimited)


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = 0
    for shift in range(0, 70, 7):
        if pos >= len(data):
            raise MalformedMessage("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
    raise MalformedMessage("varint longer than 10 bytes")


def grpc_model_name(message: bytes) -> str:
    """Field 1 (a string) of a serialized request; "" if the message has none.

    The usual message starts with field 1 and a one-byte length (a name under 128 bytes):
    that is read at once, the same as the scan below would read it."""
    end = len(message)
    if end >= 2 and message[0] == _FIELD_1_STRING and message[1] < 0x80 and message[1] <= end - 2:
        try:
            return message[2 : 2 + message[1]].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedMessage("model name is not UTF-8") from exc
    return scanned_model_name(message)


def scanned_model_name(message: bytes) -> str:
    """:func:`grpc_model_name` for any message: field by field, up to field 1."""
    pos, end = 0, len(message)
    for _ in range(_MAX_FIELDS_SCANNED):
        if pos >= end:
            return ""
        key, pos = _varint(message, pos)
        number, wire_type = key >> 3, key & 0x7
        if number == 0:
            raise MalformedMessage("field number 0")
        if wire_type == 2:
            length, pos = _varint(message, pos)
            if length > end - pos:
                raise MalformedMessage("length beyond the end of the message")
            if number == 1:
                try:
                    return message[pos : pos + length].decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise MalformedMessage("model name is not UTF-8") from exc
            pos += length
            continue
        if number == 1:
            raise MalformedMessage("field 1 is not a string")
        if wire_type == 0:
            _, pos = _varint(message, pos)
        elif wire_type == 1:
            pos += 8
        elif wire_type == 5:
            pos += 4
        else:
            raise MalformedMessage(f"unsupported wire type {wire_type}")
        if pos > end:
            raise MalformedMessage("truncated field")
    raise MalformedMessage(f"no model name in the first {_MAX_FIELDS_SCANNED} fields")


def shown(name: str) -> str:
    """A client-supplied name as it may appear in an error message (bounded)."""
    return name if len(name) <= 64 else name[:64] + "..."
