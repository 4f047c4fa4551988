"""The deploy step: register the verified artifact and its held-out split under a new
version, and hand the candidate to the gate when the run names one."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from predictor.artifact import register_artifact

HOLDOUT_FILE = "holdout.csv"


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
