"""The reject step: write down why the model stops here. Registers nothing, so it needs
nothing beyond the standard library (and kfp to run it)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def record_rejection(
    registry: str | Path, model_name: str, accuracy: float, threshold: float, fingerprint: str
) -> dict[str, Any]:
    """Writes why a model was not deployed; registers no version."""
    now = datetime.now(UTC)
    record = {
        "outcome": "rejected",
        "name": model_name,
        "accuracy": accuracy,
        "threshold": threshold,
        "reason": f"accuracy {accuracy:.4f} is below the threshold {threshold:.4f}",
        "training_data_fingerprint": fingerprint,
        "rejected_at": now.isoformat(),
    }
    folder = Path(registry) / model_name / "rejected"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{now.strftime('%Y%m%dT%H%M%S%fZ')}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    record["path"] = str(path)
    return record
