"""The deploy step: name the verified artifact and its held-out split under a new
version, and hand the candidate to the gate when the run names one.

Where the model lives depends on where the pipeline runs, and the artifact's own URI says
which (:func:`storage_uri`):

- local (``python -m pipeline run``, KFP's local runner): the URI is a plain path. The
  artifact and its held-out split are copied into the registry folder under the next free
  version (1, 2, ...), and the gate is handed that folder.
- cluster: the URI names KFP's artifact store (``minio://``, ``s3://``, ``gs://``). The
  model stays where train's task left it, and the gate (and through it KServe's storage
  initializer) is handed that URI, ``minio://`` spelled ``s3://`` since MinIO speaks the
  S3 API. The held-out split is preprocess's ``test_data`` where it lies. Both exist
  already: a step's own outputs are uploaded only after it returns, too late for the
  hand-off. The version is :func:`run_version`, unique per run.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from predictor.artifact import register_artifact, verify_artifact

HOLDOUT_FILE = "holdout.csv"
# KFP artifact-store schemes -> the scheme KServe's storage initializer and the gate read.
# minio:// is KFP's name for its bundled MinIO, an S3 API.
REMOTE_SCHEMES = {"minio": "s3", "s3": "s3", "gs": "gs"}
_URI_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
RUN_VERSION_DIGITS = 15


def storage_uri(uri: str) -> str | None:
    """The artifact-store URI a cluster's reader takes for a KFP artifact URI, or None for
    a plain path (the local runner's). ``minio://B/K`` -> ``s3://B/K``; ``s3://`` and
    ``gs://`` as they are. Any other scheme is refused: nothing downstream reads it."""
    match = _URI_SCHEME.match(uri)
    if match is None:
        return None
    scheme = match[1].lower()
    if scheme not in REMOTE_SCHEMES:
        raise ValueError(
            f"artifact URI {uri[:200]!r}: scheme {scheme}:// is not an object store the gate "
            f"and KServe read ({', '.join(s + '://' for s in REMOTE_SCHEMES)})"
        )
    rest = uri[match.end() :]
    if not rest.split("/", 1)[0] or "/" not in rest.strip("/"):
        raise ValueError(f"artifact URI {uri[:200]!r}: expected {scheme}://BUCKET/KEY")
    return f"{REMOTE_SCHEMES[scheme]}://{rest}"


def run_version(run_id: str) -> str:
    """A cluster run's model version: 15 decimal digits of the SHA-256 of the KFP run id.

    The gate takes versions as digits, and a cluster has no shared registry to count in,
    so the number comes from what is unique to the run: every attempt of the run's deploy
    step gets the same version (a retried pod hands over the same candidate), two runs
    get different ones (two in 45,000 runs share one with a chance of one in a million).
    It orders nothing: the gate orders rollouts by when they were created.
    """
    if not _RUN_ID.fullmatch(run_id):
        raise ValueError(f"run id {run_id!r} is not a plain name (A-Z a-z 0-9 . _ -)")
    number = int.from_bytes(hashlib.sha256(run_id.encode()).digest()[:8], "big")
    return f"{number % 10**RUN_VERSION_DIGITS:0{RUN_VERSION_DIGITS}d}"


def stored_model(
    model_dir: str | Path,
    model_uri: str,
    test_uri: str,
    run_id: str,
    metrics: Mapping[str, float],
) -> dict[str, Any]:
    """The cluster's record: the artifact where KFP stored it, its signature and digest
    checked on the copy KFP downloaded into this pod (the same bytes), nothing copied."""
    artifact, holdout = storage_uri(model_uri), storage_uri(test_uri)
    if artifact is None or holdout is None:
        raise ValueError(
            f"the model ({model_uri[:200]!r}) and the test split ({test_uri[:200]!r}) must "
            "both be in an object store, or both local"
        )
    metadata = verify_artifact(model_dir)
    return {
        "outcome": "deployed",
        "name": metadata.name,
        "version": run_version(run_id),
        "digest": metadata.digest,  # sha256:<hex> of the model file; the gate pins it
        "path": artifact,
        "accuracy": metrics.get("accuracy"),
        "holdout": holdout,
    }


def register_model(
    model_dir: str | Path, test_csv: str | Path, registry: str | Path, metrics: Mapping[str, float]
) -> dict[str, Any]:
    """Copies the artifact and its held-out split into the registry under a new version."""
    metadata, target = register_artifact(
        model_dir, registry, extra_files={HOLDOUT_FILE: Path(test_csv)}, metrics=metrics
    )
    return {
        "outcome": "deployed",
        "name": metadata.name,
        "version": metadata.version,
        "digest": metadata.digest,  # sha256:<hex> of the model file; the gate pins it
        "path": str(target),
        "accuracy": metrics.get("accuracy"),
        "holdout": str(target / HOLDOUT_FILE),
    }


class HandoffError(RuntimeError):
    """The gate did not accept the candidate; the version stays registered, unserved."""


def hand_to_gate(
    gate_url: str,
    token: str,
    record: Mapping[str, Any],
    metrics: Mapping[str, float],
    timeout_s: float = 30.0,
) -> str:
    """``POST /v1/rollouts``: the gate takes the candidate from here. Returns its id."""
    body = {
        "model": record["name"],
        "candidate": {
            "version": record["version"],
            "artifact_uri": record["path"],
            "digest": record["digest"],
            "offline_metrics": dict(metrics),
            "holdout_uri": record["holdout"],
        },
    }
    try:
        response = httpx.post(
            f"{gate_url.rstrip('/')}/v1/rollouts",
            json=body,
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout_s,
        )
    except httpx.HTTPError as exc:
        raise HandoffError(f"gate unreachable at {gate_url}: {exc!r}") from exc
    if response.status_code != 201:
        raise HandoffError(
            f"gate refused the candidate ({response.status_code}): {response.text[:300]}"
        )
    rollout_id: str = response.json()["id"]
    return rollout_id
