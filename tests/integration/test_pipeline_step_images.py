"""Each pipeline step run as its image runs it, without Docker.

For every step: a fresh venv with exactly that step's ``requirements.txt`` (pinned by
constraints.txt, as its Dockerfile installs it), an import path holding exactly the files
its Dockerfile copies (read from the Dockerfile's COPY lines), and the compiled
component's own command (``sh -ec ... python3 -m kfp.dsl.executor_main ...``) run with
that venv first on PATH, as the image's ENV puts it. At run time there is no pip in the
venv, no package index (PIP_NO_INDEX) and no network (every proxy variable points at a
closed port; only loopback bypasses it). The steps are chained on real data: preprocess on
the Iris data -> train -> evaluate -> deploy into a temporary registry with no gate, then
reject, and notify to a webhook receiver on loopback and with no webhook.

The venvs are made by uv from one cache under the repository's ignored ``.bench/``, so
the six share their downloads and unpacked wheels. Measured on 2 cores with uv 0.13.8:
cold (empty cache, ~360 MB from the package index) 33 s for the whole module, 9 s of it
making the six venvs; warm 22 s, 1.2 s of it venvs. The rest is the seven step runs
(~2.5 s each: a fresh interpreter importing kfp and scikit-learn or httpx).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf import json_format
from kfp.local import executor_input_utils, executor_output_utils, placeholder_utils
from kfp.pipeline_spec import pipeline_spec_pb2
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from pipeline.__main__ import main as pipeline_cli
from pipeline.components import STEPS
from predictor import signing
from predictor.artifact import registry_versions, verify_artifact
from tests.helpers import REPO_ROOT, receiver
from tests.step_images import StepImage, read_step_image, stage_import_root

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
UV_CACHE = REPO_ROOT / ".bench" / "uv-cache"
IMAGE_PREFIX = "registry.example.com/irisgate"
# Nothing listens on port 9 (discard): whatever reaches for the network fails at once.
NO_NETWORK = "http://127.0.0.1:9"
STEP_TIMEOUT_S = 120

# What must not be importable in a step's image: the point of one image per step.
ABSENT = {
    "preprocess": ["skops", "httpx", "predictor"],
    "train": ["pandas", "httpx"],
    "evaluate": ["pandas", "httpx"],
    "deploy": ["pandas", "skops"],
    "reject": ["numpy", "pandas", "sklearn", "httpx", "predictor"],
    "notify": ["numpy", "pandas", "sklearn", "predictor"],
}


def constraints() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (REPO_ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version.strip()
    return pins


@dataclass(frozen=True)
class StepRuntime:
    """One step's stand-in image: its venv and its import root."""

    image: StepImage
    venv: Path
    import_root: Path
    seconds: float

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"


def make_venv(uv: str, image: StepImage, venv: Path) -> None:
    """``uv venv`` + ``uv pip install -r requirements.txt -c constraints.txt``, the
    Dockerfile's install. The base interpreter, never this test's venv (whose packages
    would leak in); no pip seeded, so nothing can install at run time."""
    base = os.path.realpath(sys.executable)
    env = {
        **os.environ,
        "UV_CACHE_DIR": str(UV_CACHE),
        "UV_PYTHON_DOWNLOADS": "never",  # a Python build download cannot be fetched here
        "UV_NO_PROGRESS": "1",
    }
    env.pop("VIRTUAL_ENV", None)
    subprocess.run(
        [uv, "venv", "--quiet", "--python", base, str(venv)],
        check=True,
        env=env,
        timeout=120,
    )
    install = [
        uv,
        "pip",
        "install",
        "--quiet",
        "--python",
        str(venv / "bin" / "python"),
        "-r",
        str(image.requirements),
        "-c",
        str(REPO_ROOT / "constraints.txt"),
    ]
    # From the cache alone when it has everything (0.2 s instead of 1.7 s: no index
    # revalidation); from the index when it does not (first run, or new pins).
    offline = subprocess.run([*install, "--offline"], env=env, capture_output=True, timeout=120)
    if offline.returncode != 0:
        subprocess.run(install, check=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def uv() -> str:
    found = shutil.which("uv", path=str(BIN)) or shutil.which("uv")
    assert found, "uv comes with the dev extra"
    return found


@pytest.fixture(scope="module")
def runtimes(uv: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, StepRuntime]:
    root = tmp_path_factory.mktemp("step-images")
    made: dict[str, StepRuntime] = {}
    for step in STEPS:
        image = read_step_image(step)
        started = time.monotonic()
        make_venv(uv, image, root / step / "venv")
        seconds = time.monotonic() - started
        import_root = stage_import_root(image, root / step / "import-root")
        made[step] = StepRuntime(image, root / step / "venv", import_root, seconds)
    print(
        "venvs (s): " + ", ".join(f"{s} {r.seconds:.1f}" for s, r in made.items()),
        file=sys.stderr,
    )
    return made


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The pipeline compiled for a cluster, as CI compiles it."""
    path = tmp_path_factory.mktemp("compiled") / "iris_pipeline.yaml"
    assert (
        pipeline_cli(
            ["compile", "--output", str(path), "--image-prefix", IMAGE_PREFIX, "--tag", "t1"]
        )
        == 0
    )
    spec: dict[str, Any] = next(yaml.safe_load_all(path.read_text()))
    return spec


def importable(runtime: StepRuntime, module: str) -> bool:
    """Whether the image's Python finds ``module``; run outside the repository, whose
    packages ``python -c`` would otherwise find in its working folder."""
    code = f"import importlib.util, sys; sys.exit(0 if importlib.util.find_spec({module!r}) else 1)"
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(runtime.import_root), "PYTHONNOUSERSITE": "1"}
    found = subprocess.run(
        [str(runtime.python), "-c", code], cwd=runtime.venv.parent, env=env, timeout=60
    )
    return found.returncode == 0


@pytest.mark.parametrize("step", STEPS)
def test_each_image_holds_its_requirements_pinned_and_nothing_more(
    uv: str, runtimes: dict[str, StepRuntime], step: str
) -> None:
    runtime = runtimes[step]
    image = runtime.image
    # the Dockerfile installs what this test installs
    assert {"constraints.txt", f"pipeline/steps/{step}/requirements.txt"} <= set(image.build_copies)
    assert "-r requirements.txt -c constraints.txt" in " ".join(image.install.split())
    listed = subprocess.run(
        [uv, "pip", "list", "--format", "json", "--python", str(runtime.python)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    installed = {canonicalize_name(p["name"]): p["version"] for p in json.loads(listed.stdout)}
    pins = constraints()
    # every package the image gets is pinned, so pip in Docker resolves to the same set
    unpinned = {
        name: v
        for name, v in installed.items()
        if name not in pins or Version(pins[name]) != Version(v)
    }
    assert unpinned == {}, f"not pinned by constraints.txt: {unpinned}"
    wanted = {
        canonicalize_name(Requirement(line).name)
        for line in image.requirements.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert "kfp" in wanted and wanted <= set(installed)
    assert not importable(runtime, "pip"), "pip must not be there to install at run time"
    for module in ABSENT[step]:
        assert not importable(runtime, module), f"{step}'s image should not hold {module}"
    assert importable(runtime, f"pipeline.steps.{step}")


# --- running the compiled components --------------------------------------------------------


@dataclass
class Chain:
    """What the chained steps share: a pipeline root, a registry, a signing key."""

    root: Path
    registry: Path
    signing_key: Path
    key: Ed25519PrivateKey


def run_step(
    compiled: dict[str, Any],
    runtime: StepRuntime,
    chain: Chain,
    arguments: dict[str, Any],
    env: dict[str, str] | None = None,
    task: str = "",
) -> dict[str, Any]:
    """The compiled component's command, its placeholders filled as KFP's launcher fills
    them, run in the step's stand-in image; returns the task's outputs."""
    step = runtime.image.step
    task = task or step
    component = json_format.ParseDict(
        compiled["components"][f"comp-{step}"], pipeline_spec_pb2.ComponentSpec()
    )
    container = compiled["deploymentSpec"]["executors"][f"exec-{step}"]["container"]
    command = [*container["command"], *container["args"]]
    assert container["image"] == f"{IMAGE_PREFIX}-pipeline-{step}:t1"
    assert not any("pip install" in part for part in command), "installs at run time"
    assert "python3 -m kfp.dsl.executor_main" in " ".join(command[:3])
    task_root = chain.root / "outputs" / task
    executor_input = executor_input_utils.construct_executor_input(
        component_spec=component,
        arguments=arguments,
        task_root=str(task_root),
        block_input_artifact=False,
    )
    filled = placeholder_utils.replace_placeholders(
        full_command=command,
        executor_input_dict=executor_input_utils.executor_input_to_dict(executor_input, component),
        pipeline_resource_name="irisgate-test",
        task_resource_name=task,
        pipeline_root=str(chain.root / "outputs"),
        unique_pipeline_id="1",
    )
    home = chain.root / "pods" / task  # a pod's own working folder, nothing shared
    (home / "tmp").mkdir(parents=True)
    proxies = {
        name: NO_NETWORK for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy")
    }
    pod_env = {
        # the image's ENV: the venv first on PATH (KFP's command calls "python3")
        "PATH": f"{runtime.venv / 'bin'}:/usr/local/bin:/usr/bin:/bin",
        "PYTHONPATH": str(runtime.import_root),
        "PYTHONUNBUFFERED": "1",
        "PYTHONNOUSERSITE": "1",
        "HOME": str(home),
        "TMPDIR": str(home / "tmp"),
        "LANG": "C.UTF-8",
        "PIP_NO_INDEX": "1",
        **proxies,
        "https_proxy": NO_NETWORK,
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
        # one signing key for the run, as a cluster must mount one: each pod would
        # otherwise make its own development key and evaluate would refuse train's model
        signing.SIGNING_KEY_ENV: str(chain.signing_key),
        **(env or {}),
    }
    process = subprocess.Popen(
        filled,
        cwd=home,
        env=pod_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # the shell and its python3 are stopped together
    )
    try:
        output, _ = process.communicate(timeout=STEP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"{task} did not finish in {STEP_TIMEOUT_S} s:\n{output[-4000:]}")
    assert process.returncode == 0, f"{task} failed:\n{output[-4000:]}"
    outputs: dict[str, Any] = executor_output_utils.get_outputs_for_task(executor_input, component)
    return outputs


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[Chain]:
    key = Ed25519PrivateKey.generate()
    key_file = tmp_path / "signing.pem"
    key_file.write_bytes(signing.private_key_pem(key))
    yield Chain(tmp_path, tmp_path / "registry", key_file, key)


def final_status(state: str) -> dict[str, Any]:
    return {
        "state": state,
        "pipelineJobResourceName": "irisgate-test",
        "pipelineTaskName": "exit-handler-1",
        "error": {},
    }


def test_the_steps_run_chained_offline_in_their_images(
    runtimes: dict[str, StepRuntime], compiled: dict[str, Any], chain: Chain
) -> None:
    prep = run_step(
        compiled,
        runtimes["preprocess"],
        chain,
        {
            "data_csv": "",  # the Iris data shipped inside scikit-learn's wheel
            "test_fraction": 0.3,
            "seed": 7,
            "label_noise": 0.0,
            "train_fraction": 1.0,
        },
    )
    assert prep["train_data"].metadata["rows"] == 105 and prep["test_data"].metadata["rows"] == 45
    fit = run_step(
        compiled,
        runtimes["train"],
        chain,
        {
            "train_data": prep["train_data"],
            "model_name": "iris",
            "classifier": "logreg",
            "c": 1.0,
            "max_iter": 500,
            "n_estimators": 100,
            "max_depth": 0,
            "seed": 7,
        },
    )
    assert fit["Output"].startswith("sha256:")
    assert Path(fit["model"].path, "model.json").is_file()
    score = run_step(
        compiled,
        runtimes["evaluate"],
        chain,
        {"test_data": prep["test_data"], "model": fit["model"]},
    )
    accuracy = score["Output"]
    assert accuracy >= 0.9
    assert score["metrics"].metadata["accuracy"] == pytest.approx(accuracy, abs=1e-6)
    deployed = json.loads(
        run_step(
            compiled,
            runtimes["deploy"],
            chain,
            {
                "model": fit["model"],
                "test_data": prep["test_data"],
                "metrics": score["metrics"],
                "registry": str(chain.registry),
                "model_name": "iris",
                "gate_url": "",
                "run_id": "run-deployed",
            },
        )["Output"]
    )
    assert deployed["outcome"] == "deployed" and deployed["version"] == "1"
    public = chain.key.public_key()
    trusted = [signing.TrustedKey(signing.key_id(public), public)]
    registered = verify_artifact(deployed["path"], trusted_keys=trusted)
    # the metrics go through KFP's Metrics artifact, rounded to 6 digits
    assert registered.metrics["accuracy"] == pytest.approx(accuracy, abs=1e-6)
    rejected = json.loads(
        run_step(
            compiled,
            runtimes["reject"],
            chain,
            {
                "accuracy": accuracy,
                "threshold": 0.999,
                "registry": str(chain.registry),
                "model_name": "iris",
                "fingerprint": fit["Output"],
                "run_id": "run-rejected",
            },
        )["Output"]
    )
    assert rejected["outcome"] == "rejected" and Path(rejected["path"]).is_file()
    assert registry_versions(chain.registry, "iris") == ["1"]  # a rejection registers nothing

    with receiver() as chat:
        summary = json.loads(
            run_step(
                compiled,
                runtimes["notify"],
                chain,
                {
                    "registry": str(chain.registry),
                    "model_name": "iris",
                    "threshold": 0.9,
                    "run_id": "run-deployed",
                    "status": final_status("SUCCEEDED"),
                },
                env={"PIPELINE_WEBHOOK_URL": chat.url},
                task="notify-deployed",
            )["Output"]
        )
    (message,) = chat.messages
    assert message["irisgate"] == summary
    assert summary["outcome"] == "deployed" and summary["accuracy"] == deployed["accuracy"]
    assert f"iris v1 deployed, accuracy {accuracy * 100:.1f} %" in message["text"]
    quiet = json.loads(
        run_step(
            compiled,
            runtimes["notify"],
            chain,
            {
                "registry": str(chain.registry),
                "model_name": "iris",
                "threshold": 0.999,
                "run_id": "run-rejected",
                "status": final_status("SUCCEEDED"),
            },
            task="notify-rejected",
        )["Output"]
    )
    assert quiet["outcome"] == "rejected" and quiet["reason"] == rejected["reason"]
