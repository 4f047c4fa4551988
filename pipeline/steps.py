"""What each pipeline step does, as plain functions over files.

The KFP components in :mod:`pipeline.components` are thin adapters around these, so the
logic is tested without KFP and the same code runs locally and on a cluster.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from predictor.artifact import (
    fingerprint_dataset,
    load_artifact,
    register_artifact,
    write_artifact,
)

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
LABEL = "species"
CLASSES = ["setosa", "versicolor", "virginica"]
HOLDOUT_FILE = "holdout.csv"
CLASSIFIERS = ("logreg", "forest")


class DataError(ValueError):
    """Bad input data; the message names the file, the column and the line."""


# --- preprocess ----------------------------------------------------------------------------


def load_dataset(csv_path: str | None) -> pd.DataFrame:
    """The Iris data shipped with scikit-learn, or a user CSV checked against the schema."""
    if not csv_path:
        iris = load_iris()
        frame = pd.DataFrame(iris.data, columns=FEATURES)
        frame[LABEL] = iris.target.astype(np.int64)
        return frame
    return validate_frame(_read_csv(Path(csv_path)), csv_path)


def _read_csv(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a readable CSV file ({exc})") from exc


def validate_frame(raw: pd.DataFrame, source: str) -> pd.DataFrame:
    """Columns, numbers, missing values and classes; line numbers count the header as 1."""
    columns = [c.strip() for c in raw.columns]
    raw = raw.set_axis(columns, axis=1)
    for column in [*FEATURES, LABEL]:
        if column not in columns:
            raise DataError(f"{source}: missing column '{column}' (have: {', '.join(columns)})")
    if raw.empty:
        raise DataError(f"{source}: no data rows")
    frame = pd.DataFrame(index=raw.index)
    for column in FEATURES:
        values = raw[column].str.strip()
        for index, text in values.items():
            line = int(str(index)) + 2
            if text == "":
                raise DataError(f"{source}: line {line}: missing value in column '{column}'")
            try:
                number = float(text)
            except ValueError:
                raise DataError(
                    f"{source}: line {line}: column '{column}' value {text!r} is not a number"
                ) from None
            if not math.isfinite(number):
                raise DataError(
                    f"{source}: line {line}: column '{column}' value {text!r} "
                    "is not a finite number"
                )
        frame[column] = values.astype(np.float64)
    labels = raw[LABEL].str.strip()
    ids = {name: i for i, name in enumerate(CLASSES)} | {str(i): i for i in range(len(CLASSES))}
    for index, text in labels.items():
        if text not in ids:
            line = int(str(index)) + 2
            what = "missing value" if text == "" else f"unknown class {text!r}"
            raise DataError(
                f"{source}: line {line}: {what} in column '{LABEL}' (known: {', '.join(CLASSES)})"
            )
    frame[LABEL] = labels.map(ids).astype(np.int64)
    counts = frame[LABEL].value_counts()
    for class_id, name in enumerate(CLASSES):
        if counts.get(class_id, 0) < 2:
            raise DataError(
                f"{source}: class '{name}' needs at least 2 rows for a stratified "
                f"split, has {counts.get(class_id, 0)}"
            )
    return frame


@dataclass(frozen=True)
class Degradation:
    """Knobs that make an honestly weak model: the data really is worse, nothing is faked.

    ``label_noise`` replaces that fraction of training labels with random classes;
    ``train_fraction`` keeps only that fraction of the training split.
    """

    label_noise: float = 0.0
    train_fraction: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.label_noise <= 1.0:
            raise ValueError(f"label_noise must be within [0, 1], got {self.label_noise}")
        if not 0.0 < self.train_fraction <= 1.0:
            raise ValueError(f"train_fraction must be within (0, 1], got {self.train_fraction}")


def split_dataset(
    frame: pd.DataFrame, test_fraction: float, seed: int, degradation: Degradation = Degradation()
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Stratified split; degradation touches the training split only, never the test split."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be within (0, 1), got {test_fraction}")
    train, test = train_test_split(
        frame, test_size=test_fraction, random_state=seed, stratify=frame[LABEL]
    )
    rng = np.random.default_rng(seed)
    if degradation.train_fraction < 1.0:
        keep = max(len(CLASSES), round(len(train) * degradation.train_fraction))
        train = train.iloc[rng.permutation(len(train))[:keep]]
    if degradation.label_noise > 0.0:
        train = train.copy()
        noisy = rng.random(len(train)) < degradation.label_noise
        train.loc[noisy, LABEL] = rng.integers(0, len(CLASSES), int(noisy.sum()))
    return train.reset_index(drop=True), test.reset_index(drop=True)


def read_split(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    frame = pd.read_csv(path)
    return frame[FEATURES].to_numpy(dtype=np.float64), frame[LABEL].to_numpy(dtype=np.int64)


# --- train ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainParams:
    classifier: str = "logreg"
    c: float = 1.0
    max_iter: int = 500
    n_estimators: int = 100
    max_depth: int = 0  # 0: unlimited
    seed: int = 42

    def __post_init__(self) -> None:
        if self.classifier not in CLASSIFIERS:
            raise ValueError(
                f"classifier must be one of {', '.join(CLASSIFIERS)}, got {self.classifier!r}"
            )
        # scikit-learn would say so too, but minutes later and deep in a task log
        if not (math.isfinite(self.c) and self.c > 0):
            raise ValueError(f"c must be a finite number above 0, got {self.c}")
        for name in ("max_iter", "n_estimators"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_depth < 0:
            raise ValueError(f"max_depth must be 0 (unlimited) or more, got {self.max_depth}")
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"seed must be within [0, 2**32), got {self.seed}")


def build_estimator(params: TrainParams) -> Pipeline:
    """Normalisation and classifier in one Pipeline, so serving applies the same scaling."""
    classifier: Any
    if params.classifier == "logreg":
        classifier = LogisticRegression(
            C=params.c, max_iter=params.max_iter, random_state=params.seed
        )
    else:
        classifier = RandomForestClassifier(
            n_estimators=params.n_estimators,
            max_depth=params.max_depth or None,
            random_state=params.seed,
            n_jobs=1,
        )
    return Pipeline([("scale", StandardScaler()), ("classifier", classifier)])


def train_model(
    train_csv: str | Path, out_dir: str | Path, model_name: str, params: TrainParams
) -> dict[str, Any]:
    features, labels = read_split(train_csv)
    estimator = build_estimator(params).fit(features, labels)
    metadata = write_artifact(
        estimator,
        out_dir,
        name=model_name,
        version="0",  # the registry assigns the version
        feature_names=FEATURES,
        class_names=CLASSES,
        training_data_fingerprint=fingerprint_dataset(features, labels),
        metrics={"train_accuracy": float(estimator.score(features, labels))},
    )
    return metadata.model_dump(mode="json")


# --- evaluate ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Evaluation:
    accuracy: float
    per_class: dict[str, dict[str, float]]
    confusion: list[list[int]]

    def flat_metrics(self) -> dict[str, float]:
        flat = {"accuracy": self.accuracy}
        for name, scores in self.per_class.items():
            for metric, value in scores.items():
                flat[f"{name}_{metric}"] = value
        return flat


def evaluate_model(model_dir: str | Path, test_csv: str | Path) -> Evaluation:
    """Loads the model through the verifier, exactly as the predictor will."""
    estimator, _ = load_artifact(model_dir)
    features, labels = read_split(test_csv)
    predicted = estimator.predict(features)
    ids = list(range(len(CLASSES)))
    precision, recall, f1, _ = precision_recall_fscore_support(
        labels, predicted, labels=ids, zero_division=0
    )
    per_class = {
        name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i])}
        for i, name in enumerate(CLASSES)
    }
    matrix = confusion_matrix(labels, predicted, labels=ids)
    return Evaluation(float(accuracy_score(labels, predicted)), per_class, matrix.tolist())


# --- deploy / reject -----------------------------------------------------------------------


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
    import httpx

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
