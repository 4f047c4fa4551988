"""The accuracy gate: offline metrics plus a live replay of held-out data.

The replay sends the labelled held-out split through the candidate's real endpoint and
scores the answers. It catches what offline numbers cannot: a pickle that loads but
predicts differently, a preprocessing step lost between training and serving, a
predictor wired to the wrong artifact.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_fixed

from gate.core.spec import AnalysisSpec
from gate.object_store import ObjectStoreError, S3Config, fetch_object, is_s3, too_large
from gate.settings import GateSettings

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
LABEL = "species"
BATCH_ROWS = 64
DEFAULT_HOLDOUT_MAX_BYTES = 16 * 1024 * 1024


class ReplayError(Exception):
    """The replay could not be run or answered wrongly; the candidate never gets traffic."""


@dataclass(frozen=True)
class ReplayResult:
    accuracy: float
    rows: int
    correct: int
    retried_requests: int = 0


def judge_accuracy(spec: AnalysisSpec, offline: float, live: float) -> tuple[bool, str]:
    """Both figures must reach the threshold and agree within the tolerance."""
    threshold, tolerance = spec.accuracy_threshold, spec.accuracy_tolerance
    if offline < threshold:
        return False, f"offline accuracy {offline:.4f} is below the threshold {threshold:.4f}"
    if live < threshold:
        return False, f"live replay accuracy {live:.4f} is below the threshold {threshold:.4f}"
    gap = abs(offline - live)
    if gap > tolerance + 1e-9:  # 1.0 - 0.95 is 0.05000000000000004 in floating point
        return False, (
            f"live replay accuracy {live:.4f} differs from offline {offline:.4f} by "
            f"{gap:.4f} (> {tolerance:.4f}): training/serving skew"
        )
    return True, (
        f"accuracy gate passed: offline {offline:.4f}, live replay {live:.4f} "
        f"(threshold {threshold:.4f}, tolerance {tolerance:.4f})"
    )


def read_holdout(text: str) -> tuple[list[list[float]], list[int]]:
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows:
        raise ReplayError("held-out set is empty")
    missing = [c for c in [*FEATURES, LABEL] if c not in rows[0]]
    if missing:
        raise ReplayError(f"held-out set lacks columns {missing}")
    try:
        features = [[float(r[c]) for c in FEATURES] for r in rows]
        labels = [int(float(r[LABEL])) for r in rows]
    except ValueError as exc:
        raise ReplayError(f"held-out set has a bad value: {exc}") from exc
    return features, labels


@dataclass(frozen=True)
class HoldoutSource:
    """How held-out sets are read: at most ``max_bytes`` of one (a client-named location
    must not make the gate hold gigabytes), and where the S3 API is for ``s3://``."""

    max_bytes: int = DEFAULT_HOLDOUT_MAX_BYTES
    s3: S3Config = field(default_factory=S3Config)

    @classmethod
    def from_settings(cls, settings: GateSettings) -> HoldoutSource:
        return cls(
            max_bytes=settings.holdout_max_bytes,
            s3=S3Config(settings.s3_endpoint_url, settings.s3_region, settings.s3_timeout_s),
        )


async def load_holdout(
    location: str, client: httpx.AsyncClient, source: HoldoutSource | None = None
) -> str:
    """A local path, an http(s) URL or an ``s3://`` object (a pipeline's on a cluster),
    as UTF-8 text of at most ``source.max_bytes``. Where it may be is decided before, by
    :mod:`gate.confine`."""
    source = source or HoldoutSource()
    if is_s3(location):
        try:
            data = await fetch_object(location, source.s3, source.max_bytes)
        except ObjectStoreError as exc:
            raise ReplayError(f"cannot fetch held-out set {exc}") from exc
        return _text(location, data)
    if location.startswith(("http://", "https://")):
        return _text(location, await _fetch_http(location, client, source.max_bytes))
    if "://" in location:
        raise ReplayError(f"held-out set {location}: unsupported scheme (path, http(s), s3)")
    path = Path(location)
    if not path.is_file():
        raise ReplayError(f"held-out set {location} not found")
    size = path.stat().st_size
    if size > source.max_bytes:
        raise ReplayError(_too_large(location, f"{size} bytes", source.max_bytes))
    return _text(location, path.read_bytes())


async def _fetch_http(location: str, client: httpx.AsyncClient, max_bytes: int) -> bytes:
    """The body, refused once it passes ``max_bytes`` (declared or as it streams in)."""
    try:
        async with client.stream("GET", location) as response:
            response.raise_for_status()
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > max_bytes:
                raise ReplayError(_too_large(location, f"{declared} bytes", max_bytes))
            chunks: list[bytes] = []
            received = 0
            async for chunk in response.aiter_bytes():
                received += len(chunk)
                if received > max_bytes:
                    raise ReplayError(_too_large(location, "more than that", max_bytes))
                chunks.append(chunk)
    except httpx.HTTPError as exc:
        raise ReplayError(f"cannot fetch held-out set {location}: {exc!r}") from exc
    return b"".join(chunks)


def _text(location: str, data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ReplayError(f"held-out set {location} is not UTF-8 text: {exc.reason}") from exc


def _too_large(location: str, size: str, max_bytes: int) -> str:
    return f"held-out set {too_large(location, size, max_bytes)}"


def infer_body(rows: Sequence[Sequence[float]]) -> dict[str, Any]:
    """An Open Inference Protocol v2 request for held-out rows, asking for the classes."""
    return {
        "inputs": [
            {
                "name": "input-0",
                "datatype": "FP64",
                "shape": [len(rows), len(rows[0]) if rows else len(FEATURES)],
                "data": [v for row in rows for v in row],
            }
        ],
        "outputs": [{"name": "predict"}],
    }


class _ServerError(Exception):
    pass


async def _infer(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> httpx.Response:
    try:
        response = await client.post(url, json=body)
    except httpx.HTTPError as exc:
        raise ReplayError(f"candidate unreachable at {url}: {exc!r}") from exc
    if response.status_code >= 500:
        raise _ServerError(f"{response.status_code}: {response.text[:200]}")
    return response


async def replay(
    client: httpx.AsyncClient, base_url: str, model: str, text: str, attempts: int = 5
) -> ReplayResult:
    """Score the candidate on the held-out rows over Open Inference Protocol v2 REST.

    A server error is retried: availability is the canary analysis' business, with live
    traffic and its own limits; the replay judges accuracy. Retries are counted.
    """
    features, labels = read_holdout(text)
    predicted: list[int] = []
    retried = 0
    url = f"{base_url}/v2/models/{model}/infer"
    for start in range(0, len(features), BATCH_ROWS):
        batch = features[start : start + BATCH_ROWS]
        body = infer_body(batch)
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(attempts),
                wait=wait_fixed(0.05),
                retry=retry_if_exception_type(_ServerError),
                reraise=True,
            ):
                with attempt:
                    if attempt.retry_state.attempt_number > 1:
                        retried += 1
                    response = await _infer(client, url, body)
        except _ServerError as exc:
            raise ReplayError(f"candidate answered {exc} ({attempts} attempts)") from exc
        if response.status_code != 200:
            raise ReplayError(f"candidate answered {response.status_code}: {response.text[:200]}")
        outputs = {o["name"]: o for o in response.json().get("outputs", [])}
        if "predict" not in outputs or len(outputs["predict"]["data"]) != len(batch):
            raise ReplayError("candidate answer lacks a 'predict' output for every row")
        predicted.extend(int(v) for v in outputs["predict"]["data"])
    correct = sum(int(p == y) for p, y in zip(predicted, labels, strict=True))
    return ReplayResult(correct / len(labels), len(labels), correct, retried)
