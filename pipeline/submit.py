"""``python -m pipeline.submit``: submit the compiled pipeline to Kubeflow Pipelines, wait
for the run to end, and say how it ended. The last step of CI (.github/workflows/ci.yaml):
push -> tests -> images -> this, so a commit's job fails when its pipeline run fails.

The endpoint and its token come from the environment (``KFP_HOST``, ``KFP_TOKEN``: CI
secrets, never on a command line or in the summary). The outcome goes to stdout and, with
``--summary`` (CI passes ``$GITHUB_STEP_SUMMARY``), as Markdown to that file. It is read
from the run's state and its steps' states: ``deploy`` succeeded means deployed,
``reject`` succeeded means rejected by the accuracy condition (a run that worked, so exit
0), anything else names the failed steps. The accuracy is in the chat message the
pipeline's own exit handler posts; KFP's run API does not return step outputs.

Exit codes: 0 the run succeeded, 1 it failed, was cancelled or did not end in time,
2 bad arguments or environment.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from pipeline.components import STEPS

HOST_ENV = "KFP_HOST"
TOKEN_ENV = "KFP_TOKEN"
EXIT_SUCCEEDED = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
DEFAULT_TIMEOUT_S = 3600


class KfpClient(Protocol):
    """The two calls of ``kfp.Client`` this module makes (a fake stands in for tests)."""

    def create_run_from_pipeline_package(
        self,
        pipeline_file: str,
        arguments: dict[str, Any] | None = None,
        run_name: str | None = None,
        experiment_name: str | None = None,
    ) -> Any: ...

    def wait_for_run_completion(self, run_id: str, timeout: int) -> Any: ...


@dataclass(frozen=True)
class RunOutcome:
    """How a run ended, for people (the summary) and for the exit code."""

    run_id: str
    run_name: str
    state: str
    """KFP's final state (SUCCEEDED, FAILED, ...), or TIMED_OUT when waiting gave up."""
    outcome: str
    """deployed, rejected, failed, cancelled, timed out, or unknown."""
    step_states: dict[str, str] = field(default_factory=dict)
    error: str = ""

    @property
    def succeeded(self) -> bool:
        return self.state == "SUCCEEDED"

    @property
    def failed_steps(self) -> list[str]:
        return [step for step, state in self.step_states.items() if state == "FAILED"]


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def outcome_of(run: Any, run_name: str = "") -> RunOutcome:
    """The outcome from a ``kfp_server_api.V2beta1Run``: its state, its error, and the
    states of the tasks named after the pipeline's steps (deploy and reject are the two
    branches, so whichever succeeded says what happened to the model)."""
    state = _text(getattr(run, "state", "")).upper() or "UNKNOWN"
    details = getattr(run, "run_details", None)
    steps: dict[str, str] = {}
    for task in getattr(details, "task_details", None) or []:
        name = _text(getattr(task, "display_name", ""))
        if name in STEPS:
            steps[name] = _text(getattr(task, "state", "")).upper()
    error = _text(getattr(getattr(run, "error", None), "message", ""))
    if state == "SUCCEEDED":
        outcome = (
            "deployed"
            if steps.get("deploy") == "SUCCEEDED"
            else "rejected"
            if steps.get("reject") == "SUCCEEDED"
            else "unknown"
        )
    elif state in ("CANCELED", "CANCELING"):
        outcome = "cancelled"
    else:
        outcome = "failed"
    return RunOutcome(
        run_id=_text(getattr(run, "run_id", "")),
        run_name=run_name,
        state=state,
        outcome=outcome,
        step_states=steps,
        error=error,
    )


def summary_markdown(outcome: RunOutcome, timeout_s: int | None = None) -> str:
    """The job summary: one headline, then the steps' states and any error."""
    headline = {
        "deployed": "deployed: the model passed the accuracy condition and was registered",
        "rejected": "rejected: the model's accuracy is below the threshold (run succeeded)",
        "cancelled": "cancelled",
        "timed out": f"did not finish within {timeout_s} s (still running on the cluster)",
        "unknown": "succeeded, but neither deploy nor reject reported success",
    }.get(outcome.outcome, "failed")
    if outcome.outcome == "failed" and outcome.failed_steps:
        headline += f" in {', '.join(outcome.failed_steps)}"
    mark = "white_check_mark" if outcome.succeeded else "x"
    lines = [
        f"### :{mark}: Kubeflow pipeline run: {headline}",
        "",
        f"- run: `{outcome.run_name or outcome.run_id}` (id `{outcome.run_id}`)",
        f"- state: `{outcome.state}`",
    ]
    if outcome.step_states:
        steps = ", ".join(f"{step} `{state}`" for step, state in outcome.step_states.items())
        lines.append(f"- steps: {steps}")
    if outcome.error:
        lines.append(f"- error: {outcome.error[:500]}")
    lines.append(
        "- the accuracy and the gate's rollout are in the message the run's notify step posts"
    )
    return "\n".join(lines) + "\n"


def submit_and_wait(
    client: KfpClient,
    package: Path,
    arguments: Mapping[str, Any],
    run_name: str,
    experiment: str,
    timeout_s: int,
) -> RunOutcome:
    """Submit, then block until the run ends or ``timeout_s`` passes (the run goes on)."""
    created = client.create_run_from_pipeline_package(
        str(package),
        arguments=dict(arguments),
        run_name=run_name,
        experiment_name=experiment,
    )
    run_id = _text(created.run_id)
    print(f"submitted run {run_name} (id {run_id}); waiting up to {timeout_s} s", flush=True)
    try:
        run = client.wait_for_run_completion(run_id, timeout_s)
    except TimeoutError:
        return RunOutcome(run_id, run_name, "TIMED_OUT", "timed out")
    return outcome_of(run, run_name)


def _gate_url(value: str) -> str:
    parts = urlsplit(value)
    if value and (parts.scheme not in ("http", "https") or not parts.hostname):
        raise argparse.ArgumentTypeError(f"expected an http(s) URL with a host, got {value!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.submit",
        description="Submit the compiled pipeline to Kubeflow Pipelines and wait for the run. "
        f"The endpoint and token come from {HOST_ENV} and {TOKEN_ENV}.",
    )
    parser.add_argument("--package", type=Path, required=True, help="compiled pipeline YAML")
    parser.add_argument("--run-name", required=True, help="the run's name in the KFP UI")
    parser.add_argument("--experiment", default="irisgate", help="default: irisgate")
    parser.add_argument(
        "--registry",
        required=True,
        help="the pipeline's registry parameter (with --registry-pvc: /mnt/registry)",
    )
    parser.add_argument(
        "--gate-url",
        type=_gate_url,
        default="",
        help="the gate the deploy step hands the candidate to (default: none)",
    )
    parser.add_argument(
        "--timeout",
        type=int,
        default=DEFAULT_TIMEOUT_S,
        help=f"seconds to wait for the run (default: {DEFAULT_TIMEOUT_S})",
    )
    parser.add_argument(
        "--summary",
        type=Path,
        default=None,
        help="append the outcome as Markdown to this file (CI: $GITHUB_STEP_SUMMARY)",
    )
    return parser


def connect(host: str, token: str) -> KfpClient:
    import kfp

    client: KfpClient = kfp.Client(host=host, existing_token=token or None)
    return client


def main(
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] = os.environ,
    make_client: Callable[[str, str], KfpClient] = connect,
) -> int:
    args = build_parser().parse_args(argv)
    host = environ.get(HOST_ENV, "")
    if not host:
        print(f"error: {HOST_ENV} is not set (the KFP API endpoint)", file=sys.stderr)
        return EXIT_USAGE
    if not args.package.is_file():
        print(f"error: --package {args.package}: no such file", file=sys.stderr)
        return EXIT_USAGE
    if args.timeout < 1:
        print("error: --timeout must be at least 1 second", file=sys.stderr)
        return EXIT_USAGE
    arguments = {"registry": args.registry, "gate_url": args.gate_url}
    outcome = submit_and_wait(
        make_client(host, environ.get(TOKEN_ENV, "")),
        args.package,
        arguments,
        args.run_name,
        args.experiment,
        args.timeout,
    )
    summary = summary_markdown(outcome, args.timeout)
    print(summary, end="")
    if args.summary is not None:
        with args.summary.open("a") as file:
            file.write(summary)
    return EXIT_SUCCEEDED if outcome.succeeded else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
