"""The train step: scaler and classifier fitted on the training split, written through
the artifact contract (``predictor/artifact.py``: a skops file and a signed manifest)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from pipeline.steps.common import CLASSES, FEATURES, TrainParams
from pipeline.steps.splits import read_split
from predictor.artifact import fingerprint_dataset, write_artifact


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
    """Fit on ``train_csv`` and write the artifact to ``out_dir``; returns its manifest."""
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
