"""KFP v2 lightweight components: thin adapters from KFP artifacts to the steps' code in
``pipeline/steps/<step>/``.

Each function body imports what it uses, because KFP ships only the function's source
to the step's container. Each step has its own image (``pipeline/steps/<step>/Dockerfile``)
holding kfp, the step's ``requirements.txt`` and the step's package with the few shared
modules it imports, so a body imports only from its own step's package and from
``pipeline.steps.common`` / ``splits`` / ``run_notes``: anything else is missing in the
image. Nothing is installed when a step starts: no ``pip install``, no package index
needed inside the cluster (``install_kfp_package=False``, no ``packages_to_install``).

The functions are turned into components by :func:`make_components`, which names each
step's image. Locally every step runs in the current environment and installs nothing
either (no network, no seconds lost per step).
"""

import sys
from collections.abc import Callable
from typing import Any, NamedTuple

from kfp import dsl
from kfp.dsl import ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from pipeline.cluster import ComponentImages

STEPS = ("preprocess", "train", "evaluate", "deploy", "reject", "notify")
"""Every step, by its component's name; each has its own package, requirements and
Dockerfile in ``pipeline/steps/<step>/`` and its own image on a cluster."""


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
    from pipeline.steps.preprocess import Degradation, load_dataset, split_dataset

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
    from pipeline.steps.common import TrainParams
    from pipeline.steps.train import train_model

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
    from pipeline.steps.common import CLASSES
    from pipeline.steps.evaluate import evaluate_model

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
    model_name: str,
    gate_url: str,
    run_id: str,
) -> str:
    """Name the artifact and its held-out split under a new version; with a gate URL,
    hand the candidate to the gate (token from the GATE_API_TOKEN environment variable,
    a Kubernetes secret on a cluster, never a pipeline parameter). Leaves the run note the
    exit handler reports from, once when starting and once with the record.

    The model's artifact URI decides where it lives: a plain path (the local runner)
    registers a copy in ``registry`` under the next free version; an object-store URI
    (minio://, s3://, gs://: a cluster) hands over the model and test split where KFP
    stored them, under a version derived from the run id (pipeline/steps/deploy)."""
    import json
    import os

    from pipeline.steps.common import GATE_TOKEN_ENV
    from pipeline.steps.deploy import hand_to_gate, register_model, storage_uri, stored_model
    from pipeline.steps.run_notes import noting_run

    logged = {k: float(v) for k, v in metrics.metadata.items() if isinstance(v, (int, float))}
    started = {"name": model_name, "accuracy": logged.get("accuracy")}
    with noting_run(registry, model_name, run_id, "deploy", started) as finish:
        token = os.environ.get(GATE_TOKEN_ENV, "")
        if gate_url and not token:  # before registering: no version the gate never hears of
            raise ValueError(
                f"{GATE_TOKEN_ENV} is empty but gate_url is set: on a cluster, create the "
                "Secret the pipeline was compiled with (compile --gate-secret)"
            )
        if storage_uri(model.uri) is None:
            record = register_model(model.path, test_data.path, registry, logged)
        else:
            record = stored_model(model.path, model.uri, test_data.uri, run_id, logged)
        if gate_url:
            record["rollout_id"] = hand_to_gate(gate_url, token, record, logged)
            record["gate_url"] = gate_url
        finish(record)
    return json.dumps(record)


def reject(
    accuracy: float,
    threshold: float,
    registry: str,
    model_name: str,
    fingerprint: str,
    run_id: str,
) -> str:
    """Record why the model stops here; deploy nothing. Leaves the run note too."""
    import json

    from pipeline.steps.reject import record_rejection
    from pipeline.steps.run_notes import noting_run

    started = {"name": model_name, "accuracy": accuracy, "threshold": threshold}
    with noting_run(registry, model_name, run_id, "reject", started) as finish:
        record = record_rejection(registry, model_name, accuracy, threshold, fingerprint)
        finish(record)
    return json.dumps(record)


def notify(
    registry: str,
    model_name: str,
    threshold: float,
    run_id: str,
    status: dsl.PipelineTaskFinalStatus,
) -> str:
    """The exit handler: post the run's outcome to the webhook in PIPELINE_WEBHOOK_URL
    (a Kubernetes secret on a cluster) and return it as JSON. Never fails the run: chat
    being down, or no webhook configured, is logged and nothing more."""
    import json
    import logging
    import os

    from pipeline.steps.common import WEBHOOK_URL_ENV
    from pipeline.steps.notify import notify_run, summarise
    from pipeline.steps.run_notes import read_run_note

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    error = status.error_message or ""
    if error == f"Task {status.pipeline_task_name} failed.":  # kfp.local's: says nothing new
        error = ""
    summary = summarise(
        state=status.state,
        note=read_run_note(registry, model_name, run_id),
        run_id=run_id,
        run_name=status.pipeline_job_resource_name,
        error=error,
        threshold=threshold,
    )
    notify_run(summary, os.environ.get(WEBHOOK_URL_ENV, ""))
    return json.dumps(summary)


class Components(NamedTuple):
    preprocess: Any
    train: Any
    evaluate: Any
    deploy: Any
    reject: Any
    notify: Any


def make_components(images: ComponentImages | None = None, local: bool = False) -> Components:
    """Components for a cluster (one image per step) or for the local runner; neither
    installs anything when a step starts."""
    images = images or ComponentImages()
    # The local runner ignores the image but warns unless it names Python; name the
    # interpreter the steps really run in.
    local_image = f"python:{sys.version_info.major}.{sys.version_info.minor}"

    def wrap(function: Callable[..., Any]) -> Any:
        return dsl.component(
            function,
            base_image=local_image if local else images.for_step(function.__name__),
            install_kfp_package=False,
        )

    return Components(
        wrap(preprocess), wrap(train), wrap(evaluate), wrap(deploy), wrap(reject), wrap(notify)
    )
