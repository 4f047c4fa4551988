"""The evaluate step: the model, loaded through the verifier exactly as the predictor
loads it, scored on the held-out split."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

from pipeline.steps.common import CLASSES
from pipeline.steps.splits import read_split
from predictor.artifact import load_artifact


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
