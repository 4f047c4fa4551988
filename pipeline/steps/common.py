"""What several steps share and any of them may import: the data's schema, the training
parameters, the environment variables the steps read. Standard library only, because every
step image copies this module, the notify image included."""

from __future__ import annotations

import math
from dataclasses import dataclass

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
LABEL = "species"
CLASSES = ["setosa", "versicolor", "virginica"]
CLASSIFIERS = ("logreg", "forest")

# Set from Kubernetes Secrets on a cluster (pipeline/definition.py maps them with
# kfp-kubernetes), from the caller's environment locally: the gate's API token, read by
# deploy; the webhook the run's outcome is posted to, read by notify.
GATE_TOKEN_ENV = "GATE_API_TOKEN"
WEBHOOK_URL_ENV = "PIPELINE_WEBHOOK_URL"
# The file holding the key artifacts are signed with (train) and checked with (evaluate,
# deploy): predictor.signing.SIGNING_KEY_ENV, named here so that compiling needs no
# cryptography (tests/unit/test_pipeline_cluster.py holds the two equal).
SIGNING_KEY_ENV = "IRISGATE_SIGNING_KEY"


class DataError(ValueError):
    """Bad input data; the message names the file, the column and the line."""


@dataclass(frozen=True)
class TrainParams:
    """The training step's knobs, checked when built: ``python -m pipeline run`` builds
    one before KFP starts, so a bad value fails in a second instead of deep in a task log."""

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
