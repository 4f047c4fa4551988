"""``python -m pipeline run|compile``: run the KFP pipeline locally, or compile it for a cluster."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from pipeline.cluster import (
    PLACEHOLDER_IMAGE_PREFIX,
    PLACEHOLDER_TAG,
    REGISTRY_MOUNT_PATH,
    ClusterConfigError,
    ClusterOptions,
    ComponentImages,
    SecretRef,
)
from pipeline.params import DEFAULTS
from pipeline.steps.common import GATE_TOKEN_ENV, WEBHOOK_URL_ENV

EXIT_DEPLOYED = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_REJECTED = 3
WEAK_LABEL_NOISE = 0.8


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser(
        "run",
        help="run the pipeline locally (KFP SubprocessRunner)",
        epilog=f"When the run ends, its outcome is posted to the webhook in {WEBHOOK_URL_ENV} "
        "if that is set (as the cluster's exit handler does).",
    )
    run.add_argument(
        "--registry",
        required=True,
        type=Path,
        help="model registry folder; deployed models land in REGISTRY/<model-name>/<version>/",
    )
    run.add_argument(
        "--model-name",
        default=DEFAULTS.model_name,
        help=f"model name (default: {DEFAULTS.model_name})",
    )
    run.add_argument(
        "--threshold",
        type=float,
        default=DEFAULTS.threshold,
        help=f"minimum held-out accuracy to deploy (default: {DEFAULTS.threshold})",
    )
    run.add_argument(
        "--data",
        type=Path,
        default=None,
        help="CSV with sepal_length,sepal_width,petal_length,petal_width,species "
        "(default: the Iris data shipped with scikit-learn)",
    )
    run.add_argument(
        "--test-fraction",
        type=float,
        default=DEFAULTS.test_fraction,
        help=f"held-out share for evaluation and the gate's replay "
        f"(default: {DEFAULTS.test_fraction})",
    )
    run.add_argument(
        "--seed",
        type=int,
        default=DEFAULTS.seed,
        help=f"split and training seed (default: {DEFAULTS.seed})",
    )
    run.add_argument(
        "--classifier",
        choices=["logreg", "forest"],
        default=DEFAULTS.classifier,
        help=f"logistic regression or random forest (default: {DEFAULTS.classifier})",
    )
    run.add_argument("--c", type=float, default=DEFAULTS.c, help="logreg inverse regularisation")
    run.add_argument("--max-iter", type=int, default=DEFAULTS.max_iter, help="logreg iterations")
    run.add_argument("--n-estimators", type=int, default=DEFAULTS.n_estimators, help="forest trees")
    run.add_argument(
        "--max-depth",
        type=int,
        default=DEFAULTS.max_depth,
        help="forest depth (0: unlimited)",
    )
    run.add_argument(
        "--label-noise",
        type=float,
        default=None,  # None: --weak decides, else DEFAULTS.label_noise
        help=f"fraction of training labels replaced at random (default: {DEFAULTS.label_noise})",
    )
    run.add_argument(
        "--train-fraction",
        type=float,
        default=DEFAULTS.train_fraction,
        help=f"fraction of the training split kept (default: {DEFAULTS.train_fraction})",
    )
    run.add_argument(
        "--weak",
        action="store_true",
        help=f"train an honestly weak model (label noise {WEAK_LABEL_NOISE}) to "
        "exercise the reject branch",
    )
    run.add_argument(
        "--gate-url",
        default=DEFAULTS.gate_url,
        help="hand a deployed candidate to this gate (POST /v1/rollouts); the token comes "
        "from GATE_API_TOKEN",
    )
    run.add_argument(
        "--log-dir",
        type=Path,
        default=None,
        help="keep KFP's task logs here (default: a temporary file, removed unless the run fails)",
    )
    run.add_argument("--json", action="store_true", help="print the result as JSON on stdout")

    compile_ = commands.add_parser("compile", help="compile to KFP IR YAML for a cluster")
    compile_.add_argument(
        "--output",
        type=Path,
        default=Path("iris_pipeline.yaml"),
        help="where to write the YAML (default: iris_pipeline.yaml)",
    )
    cluster = ClusterOptions()  # the defaults of the flags below, in one place
    images = compile_.add_mutually_exclusive_group()
    images.add_argument(
        "--image-prefix",
        default=None,
        help="each step runs in PREFIX-pipeline-<step>:TAG, e.g. --image-prefix "
        f"ghcr.io/acme/irisgate (default: the placeholder {PLACEHOLDER_IMAGE_PREFIX}, "
        "which no cluster can pull)",
    )
    images.add_argument(
        "--image",
        default=None,
        help="one fully qualified image for every step instead (REGISTRY/PATH:TAG)",
    )
    compile_.add_argument(
        "--tag",
        default=None,
        help=f"tag of the step images, e.g. the commit SHA (default: {PLACEHOLDER_TAG})",
    )
    compile_.add_argument(
        "--gate-secret",
        default=cluster.gate_token.name,
        help="Kubernetes Secret holding the gate's API token for the deploy step "
        f"(default: {cluster.gate_token.name})",
    )
    compile_.add_argument(
        "--gate-secret-key",
        default=cluster.gate_token.key,
        help=f"its key (default: {cluster.gate_token.key})",
    )
    compile_.add_argument(
        "--notify-secret",
        default=cluster.webhook_url.name,
        help="Kubernetes Secret holding the webhook URL the run's outcome is posted to "
        f"(default: {cluster.webhook_url.name}; missing: nothing is posted)",
    )
    compile_.add_argument(
        "--notify-secret-key",
        default=cluster.webhook_url.key,
        help=f"its key (default: {cluster.webhook_url.key})",
    )
    compile_.add_argument(
        "--signing-secret",
        default=cluster.signing_key.name,
        help="Kubernetes Secret holding the Ed25519 key (PKCS#8 PEM) train signs the model "
        f"with and evaluate and deploy check it with (default: {cluster.signing_key.name}; "
        "required: those steps do not start without it)",
    )
    compile_.add_argument(
        "--signing-secret-key",
        default=cluster.signing_key.key,
        help=f"its key (default: {cluster.signing_key.key})",
    )
    compile_.add_argument(
        "--registry-pvc",
        default=cluster.registry_pvc,
        help=f"PersistentVolumeClaim mounted at {REGISTRY_MOUNT_PATH} in deploy, reject and "
        f"notify for the run notes the exit handler reports from; run with "
        f"registry={REGISTRY_MOUNT_PATH}. Models stay in KFP's artifact store either way "
        "(default: none; each pod has its own folder, and a successful run's message says "
        "the outcome is unknown)",
    )
    return parser


def pipeline_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """The pipeline's parameters from ``run``'s flags: with no flags, exactly the compiled
    pipeline's defaults (tests/unit/test_pipeline_compile.py holds them to it)."""
    noise = (
        args.label_noise
        if args.label_noise is not None
        else (WEAK_LABEL_NOISE if args.weak else DEFAULTS.label_noise)
    )
    return {
        "registry": str(args.registry.resolve()),
        "model_name": args.model_name,
        "threshold": args.threshold,
        "data_csv": str(args.data.resolve()) if args.data else DEFAULTS.data_csv,
        "test_fraction": args.test_fraction,
        "seed": args.seed,
        "classifier": args.classifier,
        "c": args.c,
        "max_iter": args.max_iter,
        "n_estimators": args.n_estimators,
        "max_depth": args.max_depth,
        "label_noise": noise,
        "train_fraction": args.train_fraction,
        "gate_url": args.gate_url,
    }


def _check_inputs(arguments: dict[str, Any]) -> str:
    """Fail in a second, before KFP starts, on what the steps would reject anyway."""
    from pipeline.steps.common import DataError, TrainParams
    from pipeline.steps.notify import check_webhook_url
    from pipeline.steps.preprocess import Degradation, load_dataset

    try:
        Degradation(arguments["label_noise"], arguments["train_fraction"])
        TrainParams(
            classifier=arguments["classifier"],
            c=arguments["c"],
            max_iter=arguments["max_iter"],
            n_estimators=arguments["n_estimators"],
            max_depth=arguments["max_depth"],
            seed=arguments["seed"],
        )
        if not 0.0 < arguments["test_fraction"] < 1.0:
            raise ValueError("--test-fraction must be within (0, 1)")
        if not 0.0 <= arguments["threshold"] <= 1.0:
            raise ValueError("--threshold must be within [0, 1]")
        if arguments["gate_url"] and not os.environ.get(GATE_TOKEN_ENV):
            raise ValueError(f"--gate-url needs the gate's token in {GATE_TOKEN_ENV}")
        if os.environ.get(WEBHOOK_URL_ENV):  # the run's outcome is posted there
            check_webhook_url(os.environ[WEBHOOK_URL_ENV])
        if arguments["data_csv"]:
            load_dataset(arguments["data_csv"])
    except (DataError, ValueError) as exc:
        return str(exc)
    return ""


def command_run(args: argparse.Namespace) -> int:
    from pipeline.local_run import new_log_path, run_locally

    console = Console(stderr=True)
    arguments = pipeline_arguments(args)
    problem = _check_inputs(arguments)
    if problem:
        console.print(f"[red]error:[/] {problem}")
        return EXIT_USAGE
    console.print(f"[bold]irisgate pipeline[/] (KFP local runner) -> registry {args.registry}")
    result = run_locally(arguments, new_log_path(args.log_dir), console)
    if args.log_dir is None and result.outcome != "failed" and result.log_path is not None:
        # a temporary log is worth keeping only to explain a failure; one per run piled up
        result.log_path.unlink(missing_ok=True)
        result.log_path = None
    if args.json:
        print(
            json.dumps(
                {
                    "outcome": result.outcome,
                    "seconds": round(result.seconds, 1),
                    "error": result.error,
                    **result.record,
                }
            )
        )
    table = Table(show_header=False, box=None, padding=(0, 2))
    table.add_column()
    table.add_column(overflow="fold")  # paths wrap whole instead of ending in "…"
    table.add_row(
        "outcome",
        {
            "deployed": "[green]deployed[/]",
            "rejected": "[yellow]rejected by the accuracy condition[/]",
        }.get(result.outcome, "[red]failed[/]"),
    )
    if result.record:
        table.add_row("accuracy", f"{result.record.get('accuracy', float('nan')):.4f}")
        table.add_row("threshold", f"{args.threshold:.4f}")
        table.add_row("branch", "deploy" if result.outcome == "deployed" else "reject")
    if result.outcome == "deployed":
        table.add_row("model", f"{result.record['name']} version {result.record['version']}")
        table.add_row("artifact", result.record["path"])
        if "rollout_id" in result.record:
            table.add_row(
                "rollout",
                f"{result.record['rollout_id']} at "
                f"{result.record['gate_url']}/v1/rollouts/{result.record['rollout_id']}",
            )
    elif result.outcome == "rejected":
        table.add_row("reason", result.record["reason"])
        table.add_row("record", result.record["path"])
    else:
        table.add_row("error", result.error)
    table.add_row("took", f"{result.seconds:.1f} s")
    if result.log_path is not None:
        table.add_row("task logs", str(result.log_path))
    console.print(table)
    return {"deployed": EXIT_DEPLOYED, "rejected": EXIT_REJECTED}.get(result.outcome, EXIT_FAILED)


def cluster_options(args: argparse.Namespace) -> ClusterOptions:
    """The compile flags, checked; raises :class:`ClusterConfigError` naming the flag."""
    if args.image and args.tag is not None:
        raise ClusterConfigError("--tag goes with --image-prefix; --image carries its own tag")
    images = (
        ComponentImages(single=args.image)
        if args.image
        else ComponentImages(
            prefix=args.image_prefix or PLACEHOLDER_IMAGE_PREFIX,
            tag=PLACEHOLDER_TAG if args.tag is None else args.tag,
        )
    )
    return ClusterOptions(
        images=images,
        gate_token=SecretRef(args.gate_secret, args.gate_secret_key, "--gate-secret"),
        webhook_url=SecretRef(args.notify_secret, args.notify_secret_key, "--notify-secret"),
        signing_key=SecretRef(args.signing_secret, args.signing_secret_key, "--signing-secret"),
        registry_pvc=args.registry_pvc,
    )


def command_compile(args: argparse.Namespace) -> int:
    if args.output.suffix not in (".yaml", ".yml"):  # KFP raises a bare ValueError
        print(f"error: --output {args.output}: expected a .yaml file name", file=sys.stderr)
        return EXIT_USAGE
    try:
        options = cluster_options(args)
    except ClusterConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE

    from kfp import compiler

    from pipeline.definition import build_pipeline

    try:
        compiler.Compiler().compile(build_pipeline(options), str(args.output))
    except OSError as exc:  # KFP opens --output itself: a missing folder, no permission
        print(f"error: cannot write {args.output}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"wrote {args.output}")
    if options.images.is_placeholder:
        print(
            f"note: no --image-prefix: the steps name {options.images.for_step('<step>')}, "
            "a placeholder no cluster can pull",
            file=sys.stderr,
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "run":
        return command_run(args)
    return command_compile(args)


if __name__ == "__main__":
    sys.exit(main())
