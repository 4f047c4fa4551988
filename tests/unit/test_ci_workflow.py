"""The CI workflow against the code: it builds exactly one image per pipeline step (plus
the predictor and the gate) under the names ``compile --image-prefix`` gives them, and its
last job submits the run with the gate URL, waits for it and reports through
``python -m pipeline.submit``. (actionlint runs on it in tests/integration/test_k8s.py.)"""

from __future__ import annotations

import shlex
from typing import Any

import pytest
import yaml

from pipeline.__main__ import build_parser as compile_parser
from pipeline.cluster import ComponentImages
from pipeline.components import STEPS
from pipeline.submit import build_parser as submit_parser
from tests.helpers import REPO_ROOT, WORKFLOW, workflow_images


@pytest.fixture(scope="module")
def workflow() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(WORKFLOW.read_text())
    return loaded


def run_lines(job: dict[str, Any], needle: str) -> list[str]:
    """The shell commands of a job's steps that contain ``needle``, continuations joined."""
    found = []
    for step in job["steps"]:
        script = step.get("run", "").replace("\\\n", " ")
        found += [line.strip() for line in script.splitlines() if needle in line]
    return found


def test_the_image_matrix_is_exactly_the_steps_the_predictor_and_the_gate() -> None:
    matrix = workflow_images()
    expected = {"irisgate-predictor": "predictor/Dockerfile", "irisgate-gate": "gate/Dockerfile"}
    expected |= {f"irisgate-pipeline-{s}": f"pipeline/steps/{s}/Dockerfile" for s in STEPS}
    assert matrix == expected
    assert all((REPO_ROOT / dockerfile).is_file() for dockerfile in matrix.values())


def test_the_pushed_names_are_the_ones_compile_gives_the_steps(workflow: dict[str, Any]) -> None:
    build = workflow["jobs"]["images"]["steps"][-1]["with"]
    assert build["file"] == "${{ matrix.dockerfile }}"
    assert build["tags"] == "${{ secrets.IMAGE_REGISTRY }}/${{ matrix.image }}:${{ github.sha }}"
    job = workflow["jobs"]["pipeline"]
    (compile_line,) = run_lines(job, "python -m pipeline compile")
    args = compile_parser().parse_args(shlex.split(compile_line)[3:])
    env = next(s["env"] for s in job["steps"] if "pipeline compile" in s.get("run", ""))
    assert (args.image_prefix, args.tag) == ("$IMAGE_PREFIX", "$TAG")
    assert env == {
        "IMAGE_PREFIX": "${{ secrets.IMAGE_REGISTRY || 'registry.invalid' }}/irisgate",
        "TAG": "${{ github.sha }}",
    }
    registry, sha = "registry.example.com/acme", "3f2c1ab"
    images = ComponentImages(prefix=f"{registry}/irisgate", tag=sha)
    for step in STEPS:
        assert images.for_step(step) == f"{registry}/irisgate-pipeline-{step}:{sha}"
        assert f"irisgate-pipeline-{step}" in workflow_images()


def test_the_last_job_submits_with_the_gate_url_waits_and_reports(
    workflow: dict[str, Any],
) -> None:
    job = workflow["jobs"]["pipeline"]
    assert job["needs"] == "images"
    (step,) = [s for s in job["steps"] if "pipeline.submit" in s.get("run", "")]
    assert step["if"] == "github.ref == 'refs/heads/main'"
    assert step["env"]["GATE_URL"] == "${{ secrets.GATE_URL }}"
    assert {"KFP_HOST", "KFP_TOKEN"} <= set(step["env"])  # never on the command line
    (line,) = run_lines(job, "python -m pipeline.submit")
    gate = "https://gate.example.com"  # what the shell expands "$GATE_URL" to
    args = submit_parser().parse_args(shlex.split(line.replace('"$GATE_URL"', gate))[3:])
    assert args.gate_url == gate
    assert str(args.summary) == "$GITHUB_STEP_SUMMARY"
    assert str(args.package) == "iris_pipeline.yaml" and args.registry == "/mnt/registry"
    # the run's wait fits inside the job's own limit, with room for the setup
    assert args.timeout < job["timeout-minutes"] * 60 - 300
