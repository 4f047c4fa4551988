"""The compiled IR YAML: four steps, the condition with its operands, the artifact edges."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.__main__ import main
from pipeline.components import STEP_REQUIREMENTS


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    output = tmp_path_factory.mktemp("compiled") / "iris_pipeline.yaml"
    assert main(["compile", "--output", str(output), "--image", "example/pipeline:1"]) == 0
    document: dict[str, Any] = yaml.safe_load(output.read_text())
    return document


def _branches(spec: dict[str, Any]) -> dict[str, Any]:
    outer = spec["root"]["dag"]["tasks"]["condition-branches-1"]["componentRef"]["name"]
    tasks: dict[str, Any] = spec["components"][outer]["dag"]["tasks"]
    return tasks


def test_steps_and_executors(spec: dict[str, Any]) -> None:
    assert set(spec["root"]["dag"]["tasks"]) == {
        "preprocess",
        "train",
        "evaluate",
        "condition-branches-1",
    }
    executors = spec["deploymentSpec"]["executors"]
    assert set(executors) == {f"exec-{s}" for s in STEP_REQUIREMENTS}
    for step, requirements in STEP_REQUIREMENTS.items():
        container = executors[f"exec-{step}"]["container"]
        assert container["image"] == "example/pipeline:1"
        script = " ".join(container["command"])
        for requirement in requirements:
            assert requirement in script, (step, requirement)


def test_condition_compares_accuracy_with_threshold(spec: dict[str, Any]) -> None:
    branches = _branches(spec)
    deploy_branch = next(t for t in branches.values() if t["taskInfo"]["name"] == "accuracy-gate")
    reject_branch = next(t for t in branches.values() if t["taskInfo"]["name"] == "below-threshold")
    condition = deploy_branch["triggerPolicy"]["condition"]
    assert condition == (
        "inputs.parameter_values['pipelinechannel--evaluate-Output'] >= "
        "inputs.parameter_values['pipelinechannel--threshold']"
    )
    assert reject_branch["triggerPolicy"]["condition"] == f"!({condition})"
    defaults = spec["root"]["inputDefinitions"]["parameters"]
    assert defaults["threshold"]["defaultValue"] == 0.9
    assert "defaultValue" not in defaults["registry"]  # must be given


def test_artifact_edges(spec: dict[str, Any]) -> None:
    tasks = spec["root"]["dag"]["tasks"]
    train_input = tasks["train"]["inputs"]["artifacts"]["train_data"]["taskOutputArtifact"]
    assert train_input == {"outputArtifactKey": "train_data", "producerTask": "preprocess"}
    evaluate_inputs = tasks["evaluate"]["inputs"]["artifacts"]
    assert evaluate_inputs["model"]["taskOutputArtifact"] == {
        "outputArtifactKey": "model",
        "producerTask": "train",
    }
    assert evaluate_inputs["test_data"]["taskOutputArtifact"] == {
        "outputArtifactKey": "test_data",
        "producerTask": "preprocess",
    }
    outputs = spec["components"]["comp-evaluate"]["outputDefinitions"]
    assert outputs["artifacts"]["metrics"]["artifactType"]["schemaTitle"] == "system.Metrics"
    assert (
        outputs["artifacts"]["confusion"]["artifactType"]["schemaTitle"]
        == "system.ClassificationMetrics"
    )
    assert outputs["parameters"]["Output"]["parameterType"] == "NUMBER_DOUBLE"
    deploy_component = spec["components"]["comp-deploy"]["inputDefinitions"]["artifacts"]
    assert set(deploy_component) == {"model", "test_data", "metrics"}


@pytest.mark.parametrize(
    ("where", "problem"),
    [
        ("missing/x.yaml", "cannot write {output}: No such file or directory"),
        ("folder.yaml", "cannot write {output}: Is a directory"),
        ("x.txt", "--output {output}: expected a .yaml file name"),
    ],
)
def test_an_unwritable_output_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str, problem: str
) -> None:
    (tmp_path / "folder.yaml").mkdir()
    output = tmp_path / where
    assert main(["compile", "--output", str(output)]) == 2
    assert capsys.readouterr().err == f"error: {problem.format(output=output)}\n"
    assert not (tmp_path / "missing").exists() and not (tmp_path / "x.txt").exists()
