"""The compiled IR YAML, as a cluster would get it: the steps inside the exit handler, the
condition with its operands, the artifact edges, caching only where it is safe, one fully
qualified image per step, no pip at run time, Secrets and the optional run-notes volume in
the Kubernetes platform spec, no volume or object-store credentials needed by default,
defaults equal to the local CLI's, and a clean SDK round trip."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from kfp import compiler, components

from pipeline.__main__ import build_parser, main, pipeline_arguments
from pipeline.cluster import REGISTRY_MOUNT_PATH, SIGNING_KEY_MOUNT_PATH, is_fully_qualified
from pipeline.components import STEPS
from pipeline.definition import SIDE_EFFECT_STEPS
from pipeline.steps.common import SIGNING_KEY_ENV
from predictor import signing as signing_module

PREFIX = "registry.example.com:5000/acme/irisgate"
TAG = "3f2c1ab"
CLUSTER_FLAGS = [
    "--image-prefix",
    PREFIX,
    "--tag",
    TAG,
    "--gate-secret",
    "gate-creds",
    "--gate-secret-key",
    "token",
    "--notify-secret",
    "chat",
    "--notify-secret-key",
    "url",
    "--signing-secret",
    "keys",
    "--signing-secret-key",
    "ed25519.pem",
    "--registry-pvc",
    "models",
]


def compile_to(path: Path, *flags: str) -> list[dict[str, Any]]:
    assert main(["compile", "--output", str(path), *flags]) == 0
    return list(yaml.safe_load_all(path.read_text()))


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("compiled") / "iris_pipeline.yaml"
    compile_to(path, *CLUSTER_FLAGS)
    return path


@pytest.fixture(scope="module")
def spec(compiled: Path) -> dict[str, Any]:
    document: dict[str, Any] = next(yaml.safe_load_all(compiled.read_text()))
    return document


@pytest.fixture(scope="module")
def kubernetes(compiled: Path) -> dict[str, Any]:
    _, platform = yaml.safe_load_all(compiled.read_text())
    executors: dict[str, Any] = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    return executors


def all_tasks(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every task of every DAG, by task name (the steps sit in nested DAGs)."""
    found: dict[str, dict[str, Any]] = {}
    dags = [spec["root"]["dag"]] + [c["dag"] for c in spec["components"].values() if "dag" in c]
    for dag in dags:
        found.update(dag["tasks"])
    return found


def body(spec: dict[str, Any]) -> dict[str, Any]:
    tasks: dict[str, Any] = spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    return tasks


def branches(spec: dict[str, Any]) -> dict[str, Any]:
    (group,) = (t for n, t in body(spec).items() if n.startswith("condition-branches-"))
    outer = group["componentRef"]["name"]
    tasks: dict[str, Any] = spec["components"][outer]["dag"]["tasks"]
    return tasks


def test_the_body_runs_inside_an_exit_handler_with_notify_as_its_exit_task(
    spec: dict[str, Any],
) -> None:
    root = spec["root"]["dag"]["tasks"]
    assert set(root) == {"exit-handler-1", "notify"}
    assert root["exit-handler-1"]["taskInfo"]["name"] == "irisgate-run"
    notify = root["notify"]
    assert notify["dependentTasks"] == ["exit-handler-1"]
    assert notify["triggerPolicy"] == {"strategy": "ALL_UPSTREAM_TASKS_COMPLETED"}
    assert notify["inputs"]["parameters"]["status"] == {
        "taskFinalStatus": {"producerTask": "exit-handler-1"}
    }
    status_type = spec["components"]["comp-notify"]["inputDefinitions"]["parameters"]["status"]
    assert status_type["parameterType"] == "TASK_FINAL_STATUS"
    steps = {n for n in body(spec) if not n.startswith("condition-branches-")}
    assert steps == {"preprocess", "train", "evaluate"} and len(body(spec)) == 4
    # deploy, reject and notify find the same run note by the run's id
    run_id = {"runtimeValue": {"constant": "{{$.pipeline_job_uuid}}"}}
    tasks = all_tasks(spec)
    for step in SIDE_EFFECT_STEPS:
        assert tasks[step]["inputs"]["parameters"]["run_id"] == run_id, step
    # the local runner's result is the exit task's summary
    assert spec["root"]["dag"]["outputs"]["parameters"]["Output"]["valueFromParameter"] == {
        "outputParameterKey": "Output",
        "producerSubtask": "notify",
    }


def test_caching_is_off_exactly_for_the_steps_with_side_effects(spec: dict[str, Any]) -> None:
    tasks = all_tasks(spec)
    caching = {
        name: task["cachingOptions"].get("enableCache", False)
        for name, task in tasks.items()
        if "cachingOptions" in task
    }
    assert set(caching) == set(STEPS)
    assert {name for name, on in caching.items() if not on} == set(SIDE_EFFECT_STEPS)
    assert {"preprocess", "train", "evaluate"} <= {name for name, on in caching.items() if on}


def test_every_step_has_its_own_fully_qualified_image_and_installs_nothing(
    spec: dict[str, Any],
) -> None:
    executors = spec["deploymentSpec"]["executors"]
    assert set(executors) == {f"exec-{step}" for step in STEPS}
    images = {name: e["container"]["image"] for name, e in executors.items()}
    assert images == {f"exec-{s}": f"{PREFIX}-pipeline-{s}:{TAG}" for s in STEPS}
    assert len(set(images.values())) == len(STEPS)
    assert all(is_fully_qualified(image) for image in images.values())
    for name, executor in executors.items():
        script = " ".join(executor["container"]["command"] + executor["container"]["args"])
        assert not re.search(r"\b(pip3?|ensurepip|uv)\b", script), name
        assert "kfp.dsl.executor_main" in script, name


def test_without_flags_the_images_are_a_qualified_placeholder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = compile_to(tmp_path / "p.yaml")[0]
    images = [e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()]
    assert sorted(images) == sorted(f"registry.invalid/irisgate-pipeline-{s}:latest" for s in STEPS)
    assert all(is_fully_qualified(image) for image in images)
    assert "placeholder" in capsys.readouterr().err


def test_one_image_for_every_step_with_image(tmp_path: Path) -> None:
    image = "ghcr.io/acme/irisgate-pipeline@sha256:" + "a" * 64
    spec = compile_to(tmp_path / "p.yaml", "--image", image)[0]
    assert {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()} == {
        image
    }


def test_secrets_and_the_run_notes_volume_are_in_the_kubernetes_platform_spec(
    kubernetes: dict[str, Any],
) -> None:
    assert set(kubernetes) == {
        "exec-train",
        "exec-evaluate",
        "exec-deploy",
        "exec-reject",
        "exec-notify",
    }
    assert kubernetes["exec-deploy"]["secretAsEnv"] == [
        {
            "keyToEnv": [{"envVar": "GATE_API_TOKEN", "secretKey": "token"}],
            "optional": True,
            "secretName": "gate-creds",
            "secretNameParameter": {"runtimeValue": {"constant": "gate-creds"}},
        }
    ]
    assert kubernetes["exec-notify"]["secretAsEnv"] == [
        {
            "keyToEnv": [{"envVar": "PIPELINE_WEBHOOK_URL", "secretKey": "url"}],
            "optional": True,
            "secretName": "chat",
            "secretNameParameter": {"runtimeValue": {"constant": "chat"}},
        }
    ]
    assert "secretAsEnv" not in kubernetes["exec-reject"]
    for name in ("exec-deploy", "exec-reject", "exec-notify"):
        (mount,) = kubernetes[name]["pvcMount"]
        assert mount["mountPath"] == REGISTRY_MOUNT_PATH
        assert mount["pvcNameParameter"] == {"runtimeValue": {"constant": "models"}}


def test_the_signing_key_is_one_required_file_where_artifacts_are_signed_or_checked(
    spec: dict[str, Any], kubernetes: dict[str, Any]
) -> None:
    """Without one key shared by train, evaluate and deploy, each pod would make its own
    development key and evaluate would refuse the model train signed."""
    signing = {name for name, executor in kubernetes.items() if executor.get("secretAsVolume")}
    assert signing == {"exec-train", "exec-evaluate", "exec-deploy"}
    for name in signing:
        assert kubernetes[name]["secretAsVolume"] == [
            {
                "mountPath": SIGNING_KEY_MOUNT_PATH,
                "optional": False,
                "secretName": "keys",
                "secretNameParameter": {"runtimeValue": {"constant": "keys"}},
            }
        ]
    env = {
        name: executor["container"].get("env")
        for name, executor in spec["deploymentSpec"]["executors"].items()
    }
    key_file = {"name": SIGNING_KEY_ENV, "value": f"{SIGNING_KEY_MOUNT_PATH}/ed25519.pem"}
    assert env == {name: [key_file] if name in signing else None for name in env}
    assert SIGNING_KEY_ENV == signing_module.SIGNING_KEY_ENV


def test_default_secret_names_and_no_volume_unless_asked(tmp_path: Path) -> None:
    _, platform = compile_to(tmp_path / "p.yaml")
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(executors) == {"exec-train", "exec-evaluate", "exec-deploy", "exec-notify"}
    assert {
        name: e["secretAsVolume"][0]["secretName"]
        for name, e in executors.items()
        if "secretAsVolume" in e
    } == dict.fromkeys(("exec-train", "exec-evaluate", "exec-deploy"), "irisgate-signing")
    names = {
        name: (e["secretAsEnv"][0]["secretName"], e["secretAsEnv"][0]["keyToEnv"][0]["secretKey"])
        for name, e in executors.items()
        if "secretAsEnv" in e
    }
    assert names == {
        "exec-deploy": ("irisgate-gate", "api-token"),
        "exec-notify": ("irisgate-notify", "webhook-url"),
    }
    assert not any("pvcMount" in e for e in executors.values())


def test_cluster_mode_needs_no_volume_and_no_object_store_credentials(tmp_path: Path) -> None:
    """On a cluster the model stays in KFP's artifact store: deploy hands the gate the URIs
    of train's model and preprocess's test split (inputs that exist when it runs, not an
    output of its own, which KFP uploads only after it returns), reading nothing from the
    store itself, so it needs no credentials for it, and no registry volume."""
    spec, platform = compile_to(tmp_path / "p.yaml")
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert not any("pvcMount" in e for e in executors.values())
    mapped = [
        pair["envVar"]
        for e in executors.values()
        for secret in e.get("secretAsEnv", [])
        for pair in secret["keyToEnv"]
    ]
    assert not [name for name in mapped if name.startswith("AWS_")]
    deploy = spec["deploymentSpec"]["executors"]["exec-deploy"]["container"]
    source = " ".join(deploy["command"] + deploy["args"])
    assert "storage_uri(model.uri)" in source and "test_data.uri" in source
    outputs = spec["components"]["comp-deploy"].get("outputDefinitions", {})
    assert "artifacts" not in outputs  # nothing of its own to hand over


def test_every_default_equals_the_local_cli_default(spec: dict[str, Any]) -> None:
    compiled = spec["root"]["inputDefinitions"]["parameters"]
    assert "defaultValue" not in compiled["registry"]  # must be given
    defaults = {name: p["defaultValue"] for name, p in compiled.items() if "defaultValue" in p}
    assert set(defaults) == set(compiled) - {"registry"}
    args = build_parser().parse_args(["run", "--registry", "r"])
    # what a flag-less local run submits is what the cluster uses when a parameter is left out
    submitted = pipeline_arguments(args)
    assert set(submitted) == set(compiled)
    assert {k: submitted[k] for k in defaults} == defaults
    # and the flags' own defaults, where a flag maps to a parameter one to one
    for name, value in defaults.items():
        flag_default = getattr(args, name, None)
        if flag_default is not None:
            assert flag_default == value, name
    assert defaults["seed"] == 7 and defaults["threshold"] == 0.9


def test_condition_compares_accuracy_with_threshold(spec: dict[str, Any]) -> None:
    tasks = branches(spec)
    deploy_branch = next(t for t in tasks.values() if t["taskInfo"]["name"] == "accuracy-gate")
    reject_branch = next(t for t in tasks.values() if t["taskInfo"]["name"] == "below-threshold")
    condition = deploy_branch["triggerPolicy"]["condition"]
    assert condition == (
        "inputs.parameter_values['pipelinechannel--evaluate-Output'] >= "
        "inputs.parameter_values['pipelinechannel--threshold']"
    )
    assert reject_branch["triggerPolicy"]["condition"] == f"!({condition})"


def test_artifact_edges(spec: dict[str, Any]) -> None:
    tasks = body(spec)
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


def test_the_yaml_loads_back_and_recompiles_to_the_same_ir(compiled: Path, tmp_path: Path) -> None:
    loaded = components.load_component_from_file(str(compiled))
    again = tmp_path / "again.yaml"
    compiler.Compiler().compile(loaded, str(again))
    before = list(yaml.safe_load_all(compiled.read_text()))
    after = list(yaml.safe_load_all(again.read_text()))
    assert after[0] == before[0]  # the pipeline spec
    assert after[1:] == before[1:]  # the Kubernetes platform spec


@pytest.mark.parametrize(
    ("flags", "problem"),
    [
        (["--tag", "v1 beta"], "--tag 'v1 beta': expected 1-128 of"),
        (["--tag=-x"], "--tag '-x': expected 1-128 of"),
        (["--tag", "x" * 129], "--tag 'xxxx"),
        (["--image-prefix", "irisgate"], "--image-prefix 'irisgate': expected REGISTRY-HOST/PATH"),
        (["--image-prefix", "acme/irisgate"], "--image-prefix 'acme/irisgate': expected"),
        (["--image-prefix", "ghcr.io/Acme/irisgate"], "--image-prefix 'ghcr.io/Acme/irisgate'"),
        (["--image-prefix", "ghcr.io/acme/irisgate:1"], "--image-prefix 'ghcr.io/acme/irisgate:1'"),
        (["--image", "example/pipeline:1"], "--image 'example/pipeline:1': expected a fully"),
        (["--image", "ghcr.io/acme/pipeline"], "--image 'ghcr.io/acme/pipeline': expected"),
        (["--image", "ghcr.io/a/p:1", "--tag", "2"], "--tag goes with --image-prefix"),
        (["--gate-secret", "Gate_Token"], "--gate-secret 'Gate_Token': expected a Kubernetes"),
        (["--gate-secret-key", "a/b"], "--gate-secret-key 'a/b': expected a Secret key"),
        (["--notify-secret=-chat"], "--notify-secret '-chat': expected a Kubernetes name"),
        (["--notify-secret-key", ""], "--notify-secret-key '': expected a Secret key"),
        (["--registry-pvc", "Models"], "--registry-pvc 'Models': expected a Kubernetes name"),
    ],
)
def test_a_bad_flag_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], problem: str
) -> None:
    output = tmp_path / "p.yaml"
    assert main(["compile", "--output", str(output), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {problem}"), err
    assert err.count("\n") == 1
    assert not output.exists()


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
