"""Shared test helpers: tiny models trained in place, and real processes on loopback."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from gate.local.ports import free_port as free_port  # re-exported: the tests pick ports here
from pipeline.steps.common import TrainParams
from pipeline.steps.train import build_estimator
from predictor.artifact import ModelFormat, fingerprint_dataset, write_artifact

REPO_ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = REPO_ROOT / ".github" / "workflows" / "ci.yaml"
IRIS_FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
IRIS_CLASSES = ["setosa", "versicolor", "virginica"]


def train_iris(classifier: str = "logreg") -> tuple[Pipeline, np.ndarray, np.ndarray]:
    """The pipeline's own estimators (scaler + logistic regression or a 100-tree forest)."""
    features, labels = load_iris(return_X_y=True)
    if classifier == "logreg":
        model = Pipeline([("scale", StandardScaler()), ("clf", LogisticRegression(max_iter=500))])
    else:
        model = build_estimator(TrainParams(classifier=classifier, seed=0))
    return model.fit(features, labels), features, labels


def make_artifact(
    out_dir: Path,
    version: str = "1",
    name: str = "iris",
    classifier: str = "logreg",
    *,
    signing_key: Ed25519PrivateKey | None = None,
    model_format: ModelFormat = "skops",
) -> Path:
    """A signed artifact; ``signing_key`` defaults to the writer's (the dev key in tests)."""
    model, features, labels = train_iris(classifier)
    write_artifact(
        model,
        out_dir,
        name=name,
        version=version,
        feature_names=IRIS_FEATURES,
        class_names=IRIS_CLASSES,
        training_data_fingerprint=fingerprint_dataset(features, labels),
        metrics={"accuracy": float(model.score(features, labels))},
        signing_key=signing_key,
        model_format=model_format,
    )
    return out_dir


def workflow_images() -> dict[str, str]:
    """The CI workflow's image build matrix: each image's name -> its Dockerfile."""
    workflow = yaml.safe_load(WORKFLOW.read_text())
    entries = workflow["jobs"]["images"]["strategy"]["matrix"]["include"]
    return {entry["image"]: entry["dockerfile"] for entry in entries}


def wait_until(
    check: Callable[[], bool],
    timeout: float,
    what: str,
    process: subprocess.Popen[bytes] | None = None,
    log: Path | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            output = log.read_text() if log and log.exists() else ""
            raise RuntimeError(f"{what}: process exited with {process.returncode}\n{output}")
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.1)
    output = log.read_text()[-4000:] if log and log.exists() else ""
    raise TimeoutError(f"{what}: not ready after {timeout} s\n{output}")


class RunningProcess:
    """A child process with its log file; always stopped by the context manager."""

    def __init__(self, process: subprocess.Popen[bytes], log: Path) -> None:
        self.process = process
        self.log = log

    def output(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return self.process.returncode


def start_process(
    args: Sequence[str],
    log: Path,
    env: dict[str, str] | None = None,
) -> RunningProcess:
    """``python <args>`` with this interpreter."""
    return start_command([sys.executable, *args], log, env)


def start_command(
    command: Sequence[str],
    log: Path,
    env: dict[str, str] | None = None,
    cwd: Path = REPO_ROOT,
) -> RunningProcess:
    handle = log.open("wb")
    process = subprocess.Popen(
        list(command),
        stdout=handle,
        stderr=subprocess.STDOUT,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )
    handle.close()
    return RunningProcess(process, log)


class Predictor(RunningProcess):
    def __init__(self, running: RunningProcess, http_port: int, grpc_port: int) -> None:
        super().__init__(running.process, running.log)
        self.http_port = http_port
        self.grpc_port = grpc_port
        self.url = f"http://127.0.0.1:{http_port}"
        self.grpc_target = f"127.0.0.1:{grpc_port}"


@contextlib.contextmanager
def run_predictor(
    model_dir: Path,
    log_dir: Path,
    *extra: str,
    name: str = "iris",
    timeout: float = 60.0,
    ports: tuple[int, int] | None = None,
) -> Iterator[Predictor]:
    """A predictor on free ports, or on ``ports`` (REST, gRPC): one started again where
    an earlier one served."""
    http_port, grpc_port = ports or (free_port(), free_port())
    running = start_process(
        [
            "-m",
            "predictor",
            "--model_name",
            name,
            "--model_dir",
            str(model_dir),
            "--http_port",
            str(http_port),
            "--grpc_port",
            str(grpc_port),
            # one process unless a test asks for more: tests of several processes say so
            *(() if "--workers" in extra else ("--workers", "1")),
            *extra,
        ],
        log_dir / f"predictor-{http_port}.log",
    )
    predictor = Predictor(running, http_port, grpc_port)
    try:
        wait_until(
            lambda: httpx.get(f"{predictor.url}/v2/health/ready", timeout=1).status_code == 200,
            timeout,
            "predictor",
            running.process,
            running.log,
        )
        wait_for_grpc(predictor.grpc_target, timeout)
        yield predictor
    finally:
        predictor.stop()


def wait_for_grpc(target: str, timeout: float = 30.0) -> None:
    import grpc

    with grpc.insecure_channel(target) as channel:
        grpc.channel_ready_future(channel).result(timeout=timeout)


@dataclass
class Receiver:
    """A webhook receiver (or a stand-in gate) that answers 503 to its first ``busy``
    requests and keeps the JSON bodies of those it accepted."""

    busy: int = 0
    attempts: int = 0
    messages: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)


@contextlib.contextmanager
def receiver(busy: int = 0) -> Iterator[Receiver]:
    state = Receiver(busy)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with state.lock:
                state.attempts += 1
                refuse = state.attempts <= state.busy
                if not refuse:
                    state.messages.append(json.loads(body))
            self.send_response(503 if refuse else 200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:  # quiet test output
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
