"""The model artifact contract shared by the pipeline (writer) and the predictor (reader).

A model is a directory holding ``model.joblib`` and ``model.json``. The metadata names the
sha256 of the pickle and the scikit-learn version that wrote it, and both are checked
*before* anything is unpickled: unpickling runs arbitrary code, so a file that does not
match the hash its metadata promises is never opened.

This module must stay importable without kserve: the pipeline's components import it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import sklearn
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

MODEL_FILE = "model.joblib"
METADATA_FILE = "model.json"
FORMAT_VERSION = 1
_NAME_PATTERN = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_VERSION_PATTERN = re.compile(r"^[0-9]+$")


class ArtifactError(Exception):
    """An artifact that must not be served; ``str()`` is one line naming the file and reason."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason


class ArtifactMetadata(BaseModel):
    """What ``model.json`` holds. Unknown keys are refused so a typo is not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format_version: int = FORMAT_VERSION
    name: str
    version: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    sklearn_version: str
    framework: str = "scikit-learn"
    feature_names: list[str] = Field(min_length=1)
    class_names: list[str] = Field(min_length=2)
    metrics: dict[str, float] = Field(default_factory=dict)
    training_data_fingerprint: str
    created_at: datetime

    @field_validator("name")
    @classmethod
    def _name_is_dns_label(cls, value: str) -> str:
        # The name ends up in URLs, Prometheus labels and Kubernetes object names.
        if not _NAME_PATTERN.match(value):
            raise ValueError("must be a lowercase DNS label (a-z, 0-9, '-')")
        return value

    @field_validator("version")
    @classmethod
    def _version_is_integer(cls, value: str) -> str:
        if not _VERSION_PATTERN.match(value):
            raise ValueError("must be a positive integer string such as '3'")
        return value


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fingerprint_dataset(features: np.ndarray, labels: np.ndarray) -> str:
    """A stable digest of the training data, so a model can be traced to what it saw."""
    digest = hashlib.sha256()
    for array in (np.ascontiguousarray(features, dtype=np.float64), np.asarray(labels)):
        digest.update(str(array.shape).encode())
        digest.update(str(array.dtype).encode())
        digest.update(array.tobytes())
    return f"sha256:{digest.hexdigest()}"


def _major_minor(version: str) -> tuple[str, ...]:
    return tuple(version.split(".")[:2])


def _check_estimator(
    estimator: Any, feature_names: Sequence[str], class_names: Sequence[str], where: Path | str
) -> None:
    """Refuse estimators the predictor cannot serve truthfully (wrong width or classes)."""
    for attribute in ("predict", "predict_proba"):
        if not callable(getattr(estimator, attribute, None)):
            raise ArtifactError(where, f"estimator has no {attribute}() method")
    n_features = getattr(estimator, "n_features_in_", None)
    if n_features is None:
        raise ArtifactError(where, "estimator is not fitted (no n_features_in_)")
    if int(n_features) != len(feature_names):
        raise ArtifactError(
            where,
            f"estimator expects {n_features} features but metadata names {len(feature_names)}",
        )
    classes = getattr(estimator, "classes_", None)
    if classes is None or len(classes) != len(class_names):
        raise ArtifactError(where, f"estimator classes do not match class_names {class_names}")
    if [int(c) for c in classes] != list(range(len(class_names))):
        raise ArtifactError(where, "estimator classes must be the ids 0..N-1 of class_names")


def write_artifact(
    estimator: Any,
    out_dir: Path | str,
    *,
    name: str,
    version: str,
    feature_names: Sequence[str],
    class_names: Sequence[str],
    training_data_fingerprint: str,
    metrics: Mapping[str, float] | None = None,
) -> ArtifactMetadata:
    """Write ``estimator`` as an artifact directory; refuses to overwrite a non-empty one."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ArtifactError(
            out, "directory exists and is not empty; artifacts are never overwritten"
        )
    _check_estimator(estimator, feature_names, class_names, out)
    out.mkdir(parents=True, exist_ok=True)
    model_path = out / MODEL_FILE
    joblib.dump(estimator, model_path)
    try:
        metadata = ArtifactMetadata(
            name=name,
            version=str(version),
            sha256=sha256_file(model_path),
            sklearn_version=sklearn.__version__,
            feature_names=list(feature_names),
            class_names=list(class_names),
            metrics={k: float(v) for k, v in (metrics or {}).items()},
            training_data_fingerprint=training_data_fingerprint,
            created_at=datetime.now(UTC),
        )
    except ValidationError as exc:
        model_path.unlink()
        raise ArtifactError(out / METADATA_FILE, _first_error(exc)) from exc
    (out / METADATA_FILE).write_text(metadata.model_dump_json(indent=2) + "\n")
    return metadata


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    field = ".".join(str(part) for part in error["loc"]) or "document"
    return f"invalid metadata field '{field}': {error['msg']}"


def read_metadata(model_dir: Path | str) -> ArtifactMetadata:
    """Parse and validate ``model.json`` without touching the pickle."""
    path = Path(model_dir) / METADATA_FILE
    if not path.is_file():
        raise ArtifactError(path, "metadata file is missing")
    try:
        document = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(path, f"metadata is not valid JSON ({exc})") from exc
    if not isinstance(document, dict):
        raise ArtifactError(path, "metadata must be a JSON object")
    if document.get("format_version", FORMAT_VERSION) != FORMAT_VERSION:
        raise ArtifactError(path, f"unsupported format_version {document.get('format_version')!r}")
    try:
        return ArtifactMetadata.model_validate(document)
    except ValidationError as exc:
        raise ArtifactError(path, _first_error(exc)) from exc


def verify_artifact(model_dir: Path | str) -> ArtifactMetadata:
    """Check metadata, hash and scikit-learn version; never unpickles anything."""
    directory = Path(model_dir)
    if not directory.is_dir():
        raise ArtifactError(directory, "model directory does not exist")
    metadata = read_metadata(directory)
    model_path = directory / MODEL_FILE
    if not model_path.is_file():
        raise ArtifactError(model_path, "model file is missing")
    actual = sha256_file(model_path)
    if actual != metadata.sha256:
        raise ArtifactError(
            model_path,
            f"sha256 mismatch: metadata says {metadata.sha256[:12]}..., file is {actual[:12]}... "
            "(the file was modified or replaced)",
        )
    if _major_minor(metadata.sklearn_version) != _major_minor(sklearn.__version__):
        raise ArtifactError(
            model_path,
            f"written with scikit-learn {metadata.sklearn_version}, running "
            f"{sklearn.__version__}; major.minor must match",
        )
    return metadata


def load_artifact(model_dir: Path | str) -> tuple[Any, ArtifactMetadata]:
    """Verify, then unpickle. The only way the project loads a model."""
    metadata = verify_artifact(model_dir)
    model_path = Path(model_dir) / MODEL_FILE
    try:
        estimator = joblib.load(model_path)
    except Exception as exc:  # a verified file that still fails to load is corrupt at source
        raise ArtifactError(
            model_path, f"cannot unpickle model ({type(exc).__name__}: {exc})"
        ) from exc
    _check_estimator(estimator, metadata.feature_names, metadata.class_names, model_path)
    return estimator, metadata


# --- local model registry: <registry>/<model_name>/<version>/ -------------------------


def registry_versions(registry: Path | str, name: str) -> list[str]:
    """Versions present for ``name``, oldest first."""
    root = Path(registry) / name
    if not root.is_dir():
        return []
    return sorted((p.name for p in root.iterdir() if _VERSION_PATTERN.match(p.name)), key=int)


def register_artifact(
    source_dir: Path | str,
    registry: Path | str,
    extra_files: Mapping[str, Path] | None = None,
    metrics: Mapping[str, float] | None = None,
) -> tuple[ArtifactMetadata, Path]:
    """Copy a verified artifact into the registry under the next free version.

    The registry assigns the next free number so two runs never collide, and rewrites
    ``model.json`` with it (and with ``metrics`` merged in; the hash covers only the
    pickle). ``extra_files`` maps file names in the version folder to sources, e.g. the
    held-out split the gate replays. The copy lands in a temporary sibling and is renamed
    into place, so a crash never leaves a half-written version behind.
    """
    source = verify_artifact(source_dir)
    root = Path(registry) / source.name
    root.mkdir(parents=True, exist_ok=True)
    while True:
        existing = registry_versions(registry, source.name)
        version = str(int(existing[-1]) + 1) if existing else "1"
        staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=root))
        try:
            shutil.copy2(Path(source_dir) / MODEL_FILE, staging / MODEL_FILE)
            for name, extra in (extra_files or {}).items():
                shutil.copy2(extra, staging / name)
            merged = {**source.metrics, **{k: float(v) for k, v in (metrics or {}).items()}}
            metadata = source.model_copy(update={"version": version, "metrics": merged})
            (staging / METADATA_FILE).write_text(metadata.model_dump_json(indent=2) + "\n")
            target = root / version
            try:
                os.rename(staging, target)  # fails if another writer took the version
            except OSError:
                shutil.rmtree(staging, ignore_errors=True)
                continue
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        verify_artifact(target)
        return metadata, target
