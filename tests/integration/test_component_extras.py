"""What each image holds, proven without Docker: for the predictor and the gate, a fresh
venv gets exactly the files its Dockerfile copies and only its extra (pinned by
constraints.txt), then the component's entry point starts from outside the repository.
The pipeline's steps have an image each, tested the same way in
test_pipeline_step_images.py; here the ``pipeline`` extra is installed as CI's pipeline
job installs it, to compile the pipeline and submit it."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pipeline.components import STEPS
from predictor.signing import dev_public_key_path
from tests.helpers import (
    REPO_ROOT,
    free_port,
    make_artifact,
    start_command,
    wait_until,
)

pytestmark = pytest.mark.integration


def stage_build_context(component: str, target: Path) -> Path:
    """Replays the build stage's ``COPY`` lines of ``<component>/Dockerfile``."""
    text = (REPO_ROOT / component / "Dockerfile").read_text()
    build_stage = text.split("\nFROM ")[0] if text.startswith("FROM") else text.split("\nFROM ")[1]
    for line in build_stage.splitlines():
        if not line.startswith("COPY ") or "--from" in line:
            continue
        *sources, destination = shlex.split(line)[1:]
        if destination.endswith("/") or len(sources) > 1:
            folder = target / destination
            folder.mkdir(parents=True, exist_ok=True)
            for source in sources:
                origin = REPO_ROOT / source
                if origin.is_dir():
                    shutil.copytree(origin, folder / origin.name, dirs_exist_ok=True)
                else:
                    shutil.copy2(origin, folder / origin.name)
        else:
            origin = REPO_ROOT / sources[0]
            if origin.is_dir():
                shutil.copytree(
                    origin, target / destination, ignore=shutil.ignore_patterns("__pycache__")
                )
            else:
                shutil.copy2(origin, target / destination)
    return target


def stage_package(target: Path) -> Path:
    """What ``pip install ".[extra]"`` reads from a checkout: the project file, the readme,
    the constraints and the packages pyproject.toml includes."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    target.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md", "constraints.txt"):
        shutil.copy2(REPO_ROOT / name, target / name)
    for pattern in project["tool"]["setuptools"]["packages"]["find"]["include"]:
        package = pattern.removesuffix("*")
        shutil.copytree(
            REPO_ROOT / package, target / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    return target


def component_venv(
    component: str, root: Path, context: Path | None = None, extras: str = ""
) -> Path:
    """A venv with ``.[extras]`` (default: ``.[component]``) installed from ``context``
    (default: the build context the component's Dockerfile stages), pinned by
    constraints.txt as the image's ``pip install -c constraints.txt ".[extras]"`` is.
    Made with uv from the cache the other venv-making tests share (pip took 30-50 s a
    component here, uv a few seconds): what is tested is what gets installed from the
    staged files, not the installer."""
    context = context or stage_build_context(component, root / "context")
    venv = root / "venv"
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    assert uv, "uv comes with the dev extra"
    environment = {
        **os.environ,
        "UV_CACHE_DIR": str(REPO_ROOT / ".bench" / "uv-cache"),
        "UV_PYTHON_DOWNLOADS": "never",
        "UV_NO_PROGRESS": "1",
    }
    subprocess.run(
        [uv, "venv", "--quiet", "--python", sys.executable, str(venv)],
        check=True,
        timeout=120,
        env=environment,
    )
    python = venv / "bin" / "python"
    subprocess.run(
        [
            uv,
            "pip",
            "install",
            "--quiet",
            "--python",
            str(python),
            "-c",
            "constraints.txt",
            f".[{extras or component}]",
        ],
        cwd=context,
        check=True,
        timeout=900,
        env=environment,
    )
    return python


def imports(python: Path, module: str, cwd: Path) -> bool:
    code = f"import importlib.util, sys; sys.exit(0 if importlib.util.find_spec({module!r}) else 1)"
    return subprocess.run([str(python), "-c", code], cwd=cwd).returncode == 0


@pytest.fixture(scope="module")
def outside(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A working directory outside the repository, so nothing is imported from the source."""
    yield tmp_path_factory.mktemp("outside")


def test_predictor_image_contents_serve(tmp_path: Path, outside: Path) -> None:
    python = component_venv("predictor", tmp_path)
    assert not imports(python, "gate", outside) and not imports(python, "kfp", outside)
    assert not imports(python, "locust", outside)
    artifact = make_artifact(tmp_path / "iris-1")
    http_port, grpc_port = free_port(), free_port()
    running = start_command(
        [
            str(python),
            "-m",
            "predictor",
            "--model_dir",
            str(artifact),
            "--http_port",
            str(http_port),
            "--grpc_port",
            str(grpc_port),
            # as a container gets it mounted: the key the test artifact was signed with
            "--trusted_keys",
            str(dev_public_key_path().resolve()),
        ],
        tmp_path / "predictor.log",
        env={"PYTHONPATH": ""},
        cwd=outside,
    )
    url = f"http://127.0.0.1:{http_port}"
    try:
        wait_until(
            lambda: httpx.get(f"{url}/v2/health/ready").status_code == 200,
            90,
            "predictor from its extra",
            running.process,
            running.log,
        )
        answer = httpx.post(
            f"{url}/v1/models/iris:predict", json={"instances": [[5.1, 3.5, 1.4, 0.2]]}
        )
        assert answer.json() == {"predictions": [0]}
    finally:
        assert running.stop(signal.SIGTERM) == 0, running.output()[-2000:]


def test_gate_image_contents_serve(tmp_path: Path, outside: Path) -> None:
    # the Dockerfile's extras: the gate's, and s3 for held-out sets in KFP's object store
    assert '-c constraints.txt ".[gate,s3]"' in (REPO_ROOT / "gate" / "Dockerfile").read_text()
    python = component_venv("gate", tmp_path, extras="gate,s3")
    assert not imports(python, "predictor", outside) and not imports(python, "kserve", outside)
    assert imports(python, "kubernetes", outside)  # for the kserve backend
    assert imports(python, "boto3", outside) and not imports(python, "moto", outside)
    port = free_port()
    running = start_command(
        [str(python), "-m", "gate"],
        tmp_path / "gate.log",
        env={
            "PYTHONPATH": "",
            "GATE_API_TOKEN": "extra-test-token-0123",
            "GATE_PORT": str(port),
            "GATE_DB_PATH": str(tmp_path / "gate.db"),
            "GATE_TRAFFIC_BACKEND": "kserve",
            "GATE_KSERVE_SERVICES": '{"iris": ["iris"]}',
            "GATE_KSERVE_API_URL": f"http://127.0.0.1:{free_port()}",
            "GATE_METRICS_PROVIDER": "prometheus",
            "GATE_PROMETHEUS_URL": "http://127.0.0.1:9",
        },
        cwd=outside,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: httpx.get(f"{url}/healthz").status_code == 200,
            60,
            "gate from its extra",
            running.process,
            running.log,
        )
        assert httpx.get(f"{url}/readyz").status_code == 503  # no cluster to reach: honest
        assert "/v1/rollouts" in httpx.get(f"{url}/openapi.json").json()["paths"]
        for page in ("/ui/", "/ui/app.js", "/ui/style.css", "/docs"):  # package data installed
            assert httpx.get(f"{url}{page}").status_code == 200, page
    finally:
        assert running.stop(signal.SIGTERM) == 0, running.output()[-2000:]


def test_pipeline_extra_compiles_and_submits(tmp_path: Path, outside: Path) -> None:
    """CI's pipeline job: ``pip install -c constraints.txt ".[pipeline]"``, then compile for
    the step images and ``python -m pipeline.submit`` (here: its usage error without a
    KFP endpoint, proving it imports in that environment)."""
    python = component_venv("pipeline", tmp_path, stage_package(tmp_path / "checkout"))
    # the checkout's every package is installed, but only the pipeline extra's libraries
    assert not imports(python, "kserve", outside) and not imports(python, "fastapi", outside)
    env = {k: v for k, v in os.environ.items() if k not in ("KFP_HOST", "KFP_TOKEN")}
    env["PYTHONPATH"] = ""
    compiled = subprocess.run(
        [
            str(python),
            "-m",
            "pipeline",
            "compile",
            "--output",
            str(tmp_path / "p.yaml"),
            "--image-prefix",
            "registry.example.com/irisgate",
            "--tag",
            "abc123",
        ],
        cwd=outside,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert compiled.returncode == 0, compiled.stderr
    images = set(re.findall(r"image: (\S+)", (tmp_path / "p.yaml").read_text()))
    assert images == {f"registry.example.com/irisgate-pipeline-{s}:abc123" for s in STEPS}
    submit = subprocess.run(
        [
            str(python),
            "-m",
            "pipeline.submit",
            "--package",
            str(tmp_path / "p.yaml"),
            "--run-name",
            "r",
            "--registry",
            "/mnt/registry",
        ],
        cwd=outside,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert submit.returncode == 2 and "KFP_HOST is not set" in submit.stderr, submit.stderr
