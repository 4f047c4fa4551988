"""The pipeline: preprocess -> train -> evaluate -> If(accuracy >= threshold) -> deploy | reject,
all inside an exit handler whose ``notify`` step posts the run's outcome however it ended.

Caching: preprocess, train and evaluate are pure functions of their inputs, so KFP may
reuse their outputs. deploy, reject and notify act on the world (a new registry version,
a hand-off to the gate, a chat message): a cached "success" would skip the action while
reporting it done, so their caching is off.
"""

from typing import Any

from kfp import dsl, kubernetes

from pipeline.cluster import REGISTRY_MOUNT_PATH, SIGNING_KEY_MOUNT_PATH, ClusterOptions
from pipeline.components import make_components
from pipeline.params import DEFAULTS
from pipeline.steps.common import GATE_TOKEN_ENV, SIGNING_KEY_ENV, WEBHOOK_URL_ENV

PIPELINE_NAME = "irisgate-train-evaluate-deploy"
EXIT_HANDLER_NAME = "irisgate-run"
SIDE_EFFECT_STEPS = ("deploy", "reject", "notify")


def build_pipeline(options: ClusterOptions | None = None, local: bool = False) -> Any:
    """A fresh pipeline function. ``local`` selects components for the local runner and
    leaves out the Kubernetes configuration (Secrets, volume), which it cannot apply:
    locally the same environment variables come from the caller's environment."""
    options = options or ClusterOptions()
    steps = make_components(options.images, local)

    @dsl.pipeline(  # type: ignore[untyped-decorator]
        name=PIPELINE_NAME,
        description="Train an Iris classifier, evaluate it on held-out data, deploy it only "
        "if its accuracy reaches the threshold, and post the outcome to a webhook.",
    )
    def iris_pipeline(
        registry: str,
        model_name: str = DEFAULTS.model_name,
        threshold: float = DEFAULTS.threshold,
        data_csv: str = DEFAULTS.data_csv,
        test_fraction: float = DEFAULTS.test_fraction,
        seed: int = DEFAULTS.seed,
        classifier: str = DEFAULTS.classifier,
        c: float = DEFAULTS.c,
        max_iter: int = DEFAULTS.max_iter,
        n_estimators: int = DEFAULTS.n_estimators,
        max_depth: int = DEFAULTS.max_depth,
        label_noise: float = DEFAULTS.label_noise,
        train_fraction: float = DEFAULTS.train_fraction,
        gate_url: str = DEFAULTS.gate_url,
    ) -> str:
        # The exit task may read only pipeline parameters and the body's final state; the
        # run id (the same placeholder in deploy/reject) finds the note they leave.
        report = steps.notify(
            registry=registry,
            model_name=model_name,
            threshold=threshold,
            run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        )
        report.set_display_name("notify")
        with dsl.ExitHandler(report, name=EXIT_HANDLER_NAME):
            prep = steps.preprocess(
                data_csv=data_csv,
                test_fraction=test_fraction,
                seed=seed,
                label_noise=label_noise,
                train_fraction=train_fraction,
            )
            prep.set_display_name("preprocess")
            fit = steps.train(
                train_data=prep.outputs["train_data"],
                model_name=model_name,
                classifier=classifier,
                c=c,
                max_iter=max_iter,
                n_estimators=n_estimators,
                max_depth=max_depth,
                seed=seed,
            )
            fit.set_display_name("train")
            score = steps.evaluate(test_data=prep.outputs["test_data"], model=fit.outputs["model"])
            score.set_display_name("evaluate")
            with dsl.If(score.outputs["Output"] >= threshold, name="accuracy-gate"):
                ship = steps.deploy(
                    model=fit.outputs["model"],
                    test_data=prep.outputs["test_data"],
                    metrics=score.outputs["metrics"],
                    registry=registry,
                    model_name=model_name,
                    gate_url=gate_url,
                    run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                )
                ship.set_display_name("deploy")
            with dsl.Else(name="below-threshold"):
                stop = steps.reject(
                    accuracy=score.outputs["Output"],
                    threshold=threshold,
                    registry=registry,
                    model_name=model_name,
                    fingerprint=fit.outputs["Output"],
                    run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                )
                stop.set_display_name("reject")
        for task in (ship, stop, report):
            task.set_caching_options(False)
        if not local:
            _on_kubernetes(
                options, signing=(fit, score, ship), deploy=ship, reject=stop, notify=report
            )
        # An exit handler's body cannot return outputs; the exit task can, and its summary
        # is what `python -m pipeline run` reports.
        outcome: str = report.output
        return outcome

    return iris_pipeline


def _on_kubernetes(
    options: ClusterOptions, signing: tuple[Any, ...], deploy: Any, reject: Any, notify: Any
) -> None:
    """Secrets as environment variables (optional: with no gate URL the token is not
    needed, and with no webhook nothing is posted; deploy says so if a gate URL is set
    and the token is missing), the signing key as a file where artifacts are signed or
    checked (required), and, if asked for, the volume for the run notes where they are
    written and read. No object-store credentials: deploy hands over the artifacts' URIs
    and reads nothing from the store itself (KFP's launcher downloads its inputs)."""
    key_file = f"{SIGNING_KEY_MOUNT_PATH}/{options.signing_key.key}"
    for task in signing:
        kubernetes.use_secret_as_volume(
            task, secret_name=options.signing_key.name, mount_path=SIGNING_KEY_MOUNT_PATH
        )
        task.set_env_variable(SIGNING_KEY_ENV, key_file)
    kubernetes.use_secret_as_env(
        deploy,
        secret_name=options.gate_token.name,
        secret_key_to_env={options.gate_token.key: GATE_TOKEN_ENV},
        optional=True,
    )
    kubernetes.use_secret_as_env(
        notify,
        secret_name=options.webhook_url.name,
        secret_key_to_env={options.webhook_url.key: WEBHOOK_URL_ENV},
        optional=True,
    )
    if options.registry_pvc:
        for task in (deploy, reject, notify):
            kubernetes.mount_pvc(
                task, pvc_name=options.registry_pvc, mount_path=REGISTRY_MOUNT_PATH
            )
