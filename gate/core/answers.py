"""Read a classifier's answer from a response body, and pair two answers to one request.

The shadow phase replays the exact request a user sent (the same protocol, the same
outputs asked for) to the candidate, so both answers have the same shape and the pairing
compares like with like: the Open Inference Protocol's ``predict`` output (class ids) or
``label`` output (class names), or KServe v1's ``predictions``; probabilities
(``predict_proba`` in v2, ``probabilities`` in v1) when the request asked for them. A body
that is none of these cannot be paired and is counted as such, never guessed at.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

MAX_ROWS = 10_000  # rows read from one answer; beyond: not comparable


class Unreadable(ValueError):
    """The body is not an answer this module can read as classes."""


@dataclass(frozen=True)
class Answer:
    classes: tuple[str, ...]
    probabilities: tuple[tuple[float, ...], ...] | None = None


@dataclass(frozen=True)
class Pairing:
    """Two answers to one request, row by row."""

    rows: int
    disagreements: int
    flips: dict[str, int]
    shift_rows: int
    shift_sum: float
    stable_classes: tuple[str, ...]
    candidate_classes: tuple[str, ...]


def protocol_of(request_body: bytes) -> str:
    """``v1`` (``instances``) or ``v2`` (``inputs``): the logged event carries no path, so
    the request says which protocol it was sent over."""
    try:
        body = json.loads(request_body)
    except ValueError as exc:
        raise Unreadable(f"request is not JSON: {exc}") from exc
    if isinstance(body, dict) and "inputs" in body:
        return "v2"
    if isinstance(body, dict) and "instances" in body:
        return "v1"
    raise Unreadable("request has neither 'inputs' (v2) nor 'instances' (v1)")


def read_answer(body: bytes) -> Answer:
    try:
        document = json.loads(body)
    except ValueError as exc:
        raise Unreadable(f"answer is not JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise Unreadable("answer is not a JSON object")
    if isinstance(document.get("outputs"), list):
        return _read_v2(document["outputs"])
    if isinstance(document.get("predictions"), list):
        return _read_v1(document)
    raise Unreadable("answer has neither 'outputs' (v2) nor 'predictions' (v1)")


def _classes(values: Any) -> tuple[str, ...]:
    if not isinstance(values, list) or len(values) > MAX_ROWS:
        raise Unreadable("classes must be a list of at most 10,000 values")
    out = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise Unreadable("a class must be a number or a string")
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        out.append(str(value))
    return tuple(out)


def _matrix(values: Any, rows: int) -> tuple[tuple[float, ...], ...] | None:
    """Probabilities as rows; flat data (v2) is split by the row count."""
    if not isinstance(values, list) or not values or rows == 0:
        return None
    if all(isinstance(v, list) for v in values):
        matrix = values
    elif len(values) % rows == 0:
        width = len(values) // rows
        matrix = [values[i : i + width] for i in range(0, len(values), width)]
    else:
        return None
    try:
        out = tuple(tuple(float(p) for p in row) for row in matrix)
    except (TypeError, ValueError):
        return None
    return out if len(out) == rows else None


def _read_v2(outputs: list[Any]) -> Answer:
    named = {o.get("name"): o for o in outputs if isinstance(o, dict)}
    chosen = named.get("predict") or named.get("label")
    if chosen is None:
        raise Unreadable("v2 answer has no 'predict' or 'label' output")
    classes = _classes(chosen.get("data"))
    proba = named.get("predict_proba")
    return Answer(classes, _matrix(proba.get("data"), len(classes)) if proba else None)


def _read_v1(document: dict[str, Any]) -> Answer:
    classes = _classes(document["predictions"])
    return Answer(classes, _matrix(document.get("probabilities"), len(classes)))


def pair(stable: Answer, candidate: Answer) -> Pairing:
    """Row by row; answers with different row counts cannot be paired."""
    if len(stable.classes) != len(candidate.classes):
        raise Unreadable(
            f"stable answered {len(stable.classes)} rows, the candidate {len(candidate.classes)}"
        )
    flips: dict[str, int] = {}
    disagreements = 0
    for s, c in zip(stable.classes, candidate.classes, strict=True):
        key = f"{s}->{c}"
        flips[key] = flips.get(key, 0) + 1
        disagreements += s != c
    shift_rows, shift_sum = 0, 0.0
    if stable.probabilities is not None and candidate.probabilities is not None:
        for s_row, c_row in zip(stable.probabilities, candidate.probabilities, strict=True):
            if len(s_row) == len(c_row) and s_row:
                shift_rows += 1
                shift_sum += sum(abs(a - b) for a, b in zip(s_row, c_row, strict=True)) / len(s_row)
    return Pairing(
        rows=len(stable.classes),
        disagreements=disagreements,
        flips=flips,
        shift_rows=shift_rows,
        shift_sum=shift_sum,
        stable_classes=stable.classes,
        candidate_classes=candidate.classes,
    )


def score(classes: tuple[str, ...], labels: tuple[str, ...]) -> tuple[int, int] | None:
    """(labelled rows, correct rows) of an answer against its true labels, in the same
    form as the answer's classes (ids for ``predict``, names for ``label``); ``None`` when
    the counts differ (the label belongs to another request)."""
    if len(classes) != len(labels) or not classes:
        return None
    return len(labels), sum(c == y for c, y in zip(classes, labels, strict=True))


def paired_score(
    stable: tuple[str, ...], candidate: tuple[str, ...], labels: tuple[str, ...]
) -> tuple[int, int, int, int, int] | None:
    """Two models' answers to the same labelled request: (labelled rows, stable right,
    candidate right, only stable right, only candidate right); ``None`` when the counts
    differ. The last two are the discordant rows a paired test needs."""
    on_stable, on_candidate = score(stable, labels), score(candidate, labels)
    if on_stable is None or on_candidate is None:
        return None
    rights = [(s == y, c == y) for s, c, y in zip(stable, candidate, labels, strict=True)]
    only_stable = sum(s and not c for s, c in rights)
    only_candidate = sum(c and not s for s, c in rights)
    return len(labels), on_stable[1], on_candidate[1], only_stable, only_candidate


__all__ = [
    "Answer",
    "Pairing",
    "Unreadable",
    "pair",
    "paired_score",
    "protocol_of",
    "read_answer",
    "score",
]
