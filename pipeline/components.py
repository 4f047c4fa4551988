"""KFP v2 lightweight components: thin adapters from KFP artifacts to :mod:`pipeline.steps`.

Each function body imports what it uses, because KFP ships only the function's source
to the step's container. Those containers are built from ``pipeline/Dockerfile`` (the
irisgate package with its ``pipeline`` extra), so ``pipeline.steps`` is importable there
as it is locally.

The functions are turned into components by :func:`make_components`, which decides the
base image and the per-step dependency list. Locally every step runs in the current
environment, so nothing is pip-installed at all (no network, no seconds lost per step).
"""

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from kfp import dsl
from kfp.dsl import ClassificationMetrics, Dataset, Input, Metrics, Model, Output

# Built from pipeline/Dockerfile and pushed where your cluster pulls from; --image overrides.
DEFAULT_IMAGE = "irisgate-pipeline:0.1.0"

# What each step imports, pinned like pyproject.toml. On a cluster these are already in
# the base image, so pip finds them satisfied; the list documents and enforces it.
STEP_REQUIREMENTS: dict[str, list[str]] = {
    "preprocess": ["pandas>=2.1", "scikit-learn==1.9.1"],
    # skops + cryptography: the artifact contract (safe model format, signed manifest).
    "train": [
        "pandas>=2.1",
        "scikit-learn==1.9.1",
        "pydantic>=2.7",
        "skops==0.16.0",
        "cryptography>=42",
    ],
    "evaluate": [
        "pandas>=2.1",
        "scikit-learn==1.9.1",
        "pydantic>=2.7",
        "skops==0.16.0",
        "cryptography>=42",
    ],
    "deploy": [
        "pandas>=2.1",
        "scikit-learn==1.9.1",
        "pydantic>=2.7",
        "httpx>=0.27",
        "skops==0.16.0",
        "cryptography>=42",
    ],
    "reject": ["pydantic>=2.7"],
}


def preprocess(
    data_csv: str,
    test_fraction: float,
    seed: int,
    label_noise: float,
    train_fraction: float,
    train_data: Output[Dataset],
    test_data: Output[Dataset],
) -> None:
    """Load (Iris or a user CSV), validate the schema, split stratified."""
    from pipeline.steps import Degradation, load_dataset, split_dataset

    frame = load_dataset(data_csv or None)
    train, test = split_dataset(
        frame, test_fraction, seed, Degradation(label_noise, train_fraction)
    )
    train.to_csv(train_data.path, index=False)
    test.to_csv(test_data.path, index=False)
    train_data.metadata.update(
        {"rows": len(train), "label_noise": label_noise, "train_fraction": train_fraction}
    )
    test_data.metadata.update({"rows": len(test)})


def train(
    train_data: Input[Dataset],
    model_name: str,
    classifier: str,
    c: float,
    max_iter: int,
    n_estimators: int,
    max_depth: int,
    seed: int,
    model: Output[Model],
) -> str:
    """Fit scaler + classifier on the training split; write the verified artifact."""
    from pipeline.steps import TrainParams, train_model

    params = TrainParams(
        classifier=classifier,
        c=c,
        max_iter=max_iter,
        n_estimators=n_estimators,
        max_depth=max_depth,
        seed=seed,
    )
    metadata = train_model(train_data.path, model.path, model_name, params)
    model.metadata.update(
        {"framework": "scikit-learn", "classifier": classifier, "sha256": metadata["sha256"]}
    )
    fingerprint: str = metadata["training_data_fingerprint"]
    return fingerprint


def evaluate(
    test_data: Input[Dataset],
    model: Input[Model],
    metrics: Output[Metrics],
    confusion: Output[ClassificationMetrics],
) -> float:
    """Accuracy, per-class precision/recall/F1 and the confusion matrix on held-out data."""
    from pipeline.steps import CLASSES, evaluate_model

    evaluation = evaluate_model(model.path, test_data.path)
    for name, value in evaluation.flat_metrics().items():
        metrics.log_metric(name, round(value, 6))
    confusion.log_confusion_matrix(CLASSES, evaluation.confusion)
    return evaluation.accuracy


def deploy(
    model: Input[Model],
    test_data: Input[Dataset],
    metrics: Input[Metrics],
    registry: str,
    gate_url: str,
) -> str:
    """Register the artifact and its held-out split under a new version; with a gate URL,
    hand the candidate to the gate (token from the GATE_API_TOKEN environment variable,
    a Kubernetes secret on a cluster, never a pipeline parameter)."""
    import json
    import os

    from pipeline.steps import hand_to_gate, register_model

    logged = {k: float(v) for k, v in metrics.metadata.items() if isinstance(v, (int, float))}
    record = register_model(model.path, test_data.path, registry, logged)
    if gate_url:
        record["rollout_id"] = hand_to_gate(
            gate_url, os.environ.get("GATE_API_TOKEN", ""), record, logged
        )
        record["gate_url"] = gate_url
    return json.dumps(record)


def reject(
    accuracy: float, threshold: float, registry: str, model_name: str, fingerprint: str
) -> str:
    """Record why the model stops here; deploy nothing."""
    import json

    from pipeline.steps import record_rejection

    return json.dumps(record_rejection(registry, model_name, accuracy, threshold, fingerprint))


@dataclass(frozen=True)
class ComponentImages:
    """Base image per step; one image serves all steps unless a step is overridden."""

    default: str = DEFAULT_IMAGE
    overrides: dict[str, str] = field(default_factory=dict)

    def for_step(self, step: str) -> str:
        return self.overrides.get(step, self.default)


class Components(NamedTuple):
    preprocess: Any
    train: Any
    evaluate: Any
    deploy: Any
    reject: Any


def make_components(images: ComponentImages | None = None, local: bool = False) -> Components:
    """Components for a cluster (images + dependency lists) or for the local runner."""
    images = images or ComponentImages()
    # The local runner ignores the image but warns unless it names Python; name the
    # interpreter the steps really run in.
    local_image = f"python:{sys.version_info.major}.{sys.version_info.minor}"

    def wrap(function: Callable[..., Any]) -> Any:
        step = function.__name__
        return dsl.component(
            function,
            base_image=local_image if local else images.for_step(step),
            packages_to_install=[] if local else STEP_REQUIREMENTS[step],
            install_kfp_package=not local,
        )

    return Components(wrap(preprocess), wrap(train), wrap(evaluate), wrap(deploy), wrap(reject))
