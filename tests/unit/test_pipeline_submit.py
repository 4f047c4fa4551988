"""``python -m pipeline.submit`` with a fake KFP client: the run's outcome read from the
states KFP's run API returns, the job summary, the exit code, and usage errors. The
runs are the SDK's own ``kfp_server_api`` models, as ``kfp.Client`` returns them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kfp_server_api import (
    GoogleRpcStatus,
    V2beta1PipelineTaskDetail,
    V2beta1Run,
    V2beta1RunDetails,
)

from pipeline.submit import (
    EXIT_FAILED,
    EXIT_SUCCEEDED,
    EXIT_USAGE,
    RunOutcome,
    main,
    outcome_of,
    summary_markdown,
)


def run(state: str, tasks: dict[str, str], error: str = "") -> V2beta1Run:
    details = [V2beta1PipelineTaskDetail(display_name=n, state=s) for n, s in tasks.items()]
    # the DAG's own tasks come back too; they are not steps
    details.append(V2beta1PipelineTaskDetail(display_name="irisgate-run", state=state))
    return V2beta1Run(
        run_id="run-7",
        state=state,
        run_details=V2beta1RunDetails(task_details=details),
        error=GoogleRpcStatus(message=error) if error else None,
    )


BEFORE = {"preprocess": "SUCCEEDED", "train": "SUCCEEDED", "evaluate": "SUCCEEDED"}


class Created:
    run_id = "run-7"


class FakeClient:
    """Records the submission; answers the wait with a prepared run (or a timeout)."""

    def __init__(self, result: V2beta1Run | None) -> None:
        self.result = result
        self.submitted: dict[str, Any] = {}
        self.waited: tuple[str, int] | None = None

    def create_run_from_pipeline_package(
        self,
        pipeline_file: str,
        arguments: dict[str, Any] | None = None,
        run_name: str | None = None,
        experiment_name: str | None = None,
    ) -> Created:
        self.submitted = {
            "file": pipeline_file,
            "arguments": arguments,
            "run_name": run_name,
            "experiment": experiment_name,
        }
        return Created()

    def wait_for_run_completion(self, run_id: str, timeout: int) -> V2beta1Run:
        self.waited = (run_id, timeout)
        if self.result is None:
            raise TimeoutError("Run timeout")
        return self.result


@pytest.mark.parametrize(
    ("given", "outcome", "failed"),
    [
        (
            run("SUCCEEDED", {**BEFORE, "deploy": "SUCCEEDED", "notify": "SUCCEEDED"}),
            "deployed",
            [],
        ),
        (
            run("SUCCEEDED", {**BEFORE, "reject": "SUCCEEDED", "notify": "SUCCEEDED"}),
            "rejected",
            [],
        ),
        (
            run("FAILED", {"preprocess": "SUCCEEDED", "train": "FAILED", "notify": "SUCCEEDED"}),
            "failed",
            ["train"],
        ),
        (run("FAILED", {**BEFORE, "deploy": "FAILED"}, "gate refused"), "failed", ["deploy"]),
        (run("CANCELED", BEFORE), "cancelled", []),
        (run("SUCCEEDED", BEFORE), "unknown", []),
    ],
)
def test_outcome_from_the_run_and_its_steps(
    given: V2beta1Run, outcome: str, failed: list[str]
) -> None:
    read = outcome_of(given, "irisgate-abc")
    assert (read.outcome, read.failed_steps, read.run_id) == (outcome, failed, "run-7")
    assert "irisgate-run" not in read.step_states
    assert read.succeeded is (given.state == "SUCCEEDED")


def test_the_summary_says_what_happened_and_where_it_failed() -> None:
    failed = outcome_of(run("FAILED", {**BEFORE, "deploy": "FAILED"}, "HandoffError: 401"), "r1")
    text = summary_markdown(failed)
    assert text.startswith("### :x: Kubeflow pipeline run: failed in deploy")
    assert "HandoffError: 401" in text and "`r1`" in text and "deploy `FAILED`" in text
    deployed = summary_markdown(outcome_of(run("SUCCEEDED", {**BEFORE, "deploy": "SUCCEEDED"})))
    assert deployed.startswith("### :white_check_mark: Kubeflow pipeline run: deployed")
    waited = summary_markdown(RunOutcome("run-7", "r1", "TIMED_OUT", "timed out"), 600)
    assert "did not finish within 600 s" in waited


def package(tmp_path: Path) -> Path:
    path = tmp_path / "iris_pipeline.yaml"
    path.write_text("pipelineInfo: {}\n")
    return path


ENV = {"KFP_HOST": "https://kfp.example.com", "KFP_TOKEN": "t0ken"}


def test_main_submits_waits_and_appends_the_summary(tmp_path: Path) -> None:
    client = FakeClient(run("SUCCEEDED", {**BEFORE, "reject": "SUCCEEDED"}))
    connected: list[tuple[str, str]] = []

    def connect(host: str, token: str) -> FakeClient:
        connected.append((host, token))
        return client

    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    code = main(
        [
            "--package",
            str(package(tmp_path)),
            "--run-name",
            "irisgate-abc",
            "--registry",
            "/mnt/registry",
            "--gate-url",
            "https://gate.example.com",
            "--timeout",
            "900",
            "--summary",
            str(summary),
        ],
        environ=ENV,
        make_client=connect,
    )
    assert code == EXIT_SUCCEEDED  # rejected by the accuracy condition: the run worked
    assert connected == [("https://kfp.example.com", "t0ken")]
    assert client.submitted["arguments"] == {
        "registry": "/mnt/registry",
        "gate_url": "https://gate.example.com",
    }
    assert client.submitted["run_name"] == "irisgate-abc"
    assert client.waited == ("run-7", 900)
    written = summary.read_text()
    assert written.startswith("earlier step\n### :white_check_mark:") and "rejected" in written
    assert "kfp.example.com" not in written and "t0ken" not in written


@pytest.mark.parametrize(
    "result", [run("FAILED", {"preprocess": "FAILED"}), None], ids=["failed", "timed out"]
)
def test_a_failed_or_unfinished_run_fails_the_job(
    tmp_path: Path, result: V2beta1Run | None, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        ["--package", str(package(tmp_path)), "--run-name", "r", "--registry", "/r"],
        environ=ENV,
        make_client=lambda host, token: FakeClient(result),
    )
    assert code == EXIT_FAILED
    assert ":x:" in capsys.readouterr().out


def test_usage_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def never(host: str, token: str) -> FakeClient:
        raise AssertionError("no client without an endpoint")

    args = ["--package", str(package(tmp_path)), "--run-name", "r", "--registry", "/r"]
    assert main(args, environ={}, make_client=never) == EXIT_USAGE
    assert "KFP_HOST is not set" in capsys.readouterr().err
    missing = ["--package", str(tmp_path / "absent.yaml"), "--run-name", "r", "--registry", "/r"]
    assert main(missing, environ=ENV, make_client=never) == EXIT_USAGE
    with pytest.raises(SystemExit):
        main([*args, "--gate-url", "gate:8090"], environ=ENV, make_client=never)
