"""The servers under test: how each starts, how we know it is ready, what it costs.

Five kinds, all on 127.0.0.1 with ports picked free:

- ``irisgate``: ``python -m predictor`` with its default settings;
- ``router``: ``python -m gate.local.router`` in front of that same predictor (the path of
  every local request in the embedded default), so "direct" and "through the router" are
  the same predictor in the same run; its CPU figure is the router's own;
- ``kserve-plain``: the docs-style KServe custom model (``benchmarks/plain_kserve.py``);
- ``mlserver``: MLServer + mlserver-sklearn with adaptive batching (64 rows, 5 ms), from a
  venv of its own because its dependencies differ from ours (see :mod:`benchmarks.mlserver`);
- ``kserve-constant``: the stack floor (``benchmarks/constant_kserve.py``).

Every server runs in its own session so stopping it stops its workers too; CPU time and
RSS are read for the whole process tree.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
import psutil
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc

from benchmarks.generators import MODEL_NAME, grpc_request, rest_body, rest_path

HERE = Path(__file__).resolve().parent
PROTOCOLS = ("rest-v1", "rest-v2", "grpc")
EXPECTED_CLASS = 1  # the benchmark row is a versicolor

SERVER_KINDS = ("irisgate", "router", "kserve-plain", "mlserver", "kserve-constant")
LABELS = {
    "irisgate": "irisgate predictor",
    "router": "irisgate predictor via the router",
    "kserve-plain": "plain KServe model",
    "mlserver": "MLServer + batching",
    "kserve-constant": "KServe constant (floor)",
}


class ServerFailed(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Server:
    kind: str
    model: str  # "forest", "logreg", or "any" for the constant floor
    command: list[str]
    http_port: int
    grpc_port: int
    log_path: Path
    protocols: tuple[str, ...] = PROTOCOLS
    env: dict[str, str] | None = None  # added to this process's environment
    process: subprocess.Popen[bytes] | None = None
    grpc_answer_bytes: int = 0
    idle_rss_mb: list[float] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.kind}/{self.model}"

    def start(self) -> None:
        with self.log_path.open("wb") as log:  # the child keeps its own copy of the fd
            self.process = subprocess.Popen(
                self.command,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=HERE.parent,
                env={**os.environ, **self.env} if self.env else None,
            )

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        url = f"http://127.0.0.1:{self.http_port}/v2/models/{MODEL_NAME}/ready"
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise ServerFailed(
                    f"{self.key} exited {self.process.returncode}:\n{self.log_tail()}"
                )
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise ServerFailed(f"{self.key} not ready after {timeout_s:.0f} s:\n{self.log_tail()}")

    def preflight(self) -> None:
        """One real request per protocol: the answer must be right before load is timed."""
        for protocol in self.protocols:
            if protocol == "grpc":
                with grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}") as channel:
                    stub = grpc_predict_v2_pb2_grpc.GRPCInferenceServiceStub(channel)
                    reply = stub.ModelInfer(grpc_request(), timeout=30)
                contents = reply.outputs[0].contents
                values = list(contents.int64_contents) or list(contents.int32_contents)
                if not values and reply.raw_output_contents:
                    values = [int.from_bytes(reply.raw_output_contents[0][:8], "little")]
                got = values[0] if values else None
                self.grpc_answer_bytes = 5 + reply.ByteSize()  # gRPC frame header + message
            else:
                response = httpx.post(
                    f"http://127.0.0.1:{self.http_port}{rest_path(protocol)}",
                    content=rest_body(protocol),
                    headers={"content-type": "application/json"},
                    timeout=30,
                )
                if response.status_code != 200:
                    raise ServerFailed(
                        f"{self.key} {protocol}: {response.status_code} {response.text}"
                    )
                body = response.json()
                got = (
                    body["predictions"][0]
                    if protocol == "rest-v1"
                    else body["outputs"][0]["data"][0]
                )
            if got != EXPECTED_CLASS:
                raise ServerFailed(f"{self.key} {protocol} answered {got!r}, not {EXPECTED_CLASS}")

    def _tree(self) -> list[psutil.Process]:
        assert self.process is not None
        try:
            root = psutil.Process(self.process.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def cpu_seconds(self) -> float:
        total = 0.0
        for proc in self._tree():
            try:
                times = proc.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
        return total

    def sample_idle_rss(self) -> None:
        rss = []
        for proc in self._tree():
            try:
                rss.append(proc.memory_info().rss / 2**20)
            except psutil.NoSuchProcess:
                continue
        self.idle_rss_mb = sorted(rss, reverse=True)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, grace_s: float = 20) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        except ProcessLookupError:
            pass


def _kserve_flags(
    kind: str, model: str, program: list[str], extra: list[str], log_dir: Path
) -> Server:
    """A server that takes KServe's flags (irisgate's predictor does too)."""
    http, grpc_port = free_port(), free_port()
    return Server(
        kind,
        model,
        [
            sys.executable,
            *program,
            "--model_name",
            MODEL_NAME,
            "--http_port",
            str(http),
            "--grpc_port",
            str(grpc_port),
            *extra,
        ],
        http,
        grpc_port,
        log_dir / f"{kind}-{model}.log",
    )


def irisgate(model: str, artifact: Path, log_dir: Path, extra: list[str]) -> Server:
    program = ["-m", "predictor"]
    return _kserve_flags(
        "irisgate", model, program, ["--model_dir", str(artifact), *extra], log_dir
    )


def router(predictor: Server, log_dir: Path) -> Server:
    """The local router with the predictor as its model's only (stable) backend."""
    http, grpc_port, admin = free_port(), free_port(), free_port()
    return Server(
        "router",
        predictor.model,
        [
            sys.executable,
            "-m",
            "gate.local.router",
            "--http-port",
            str(http),
            "--grpc-port",
            str(grpc_port),
            "--admin-port",
            str(admin),
            "--model",
            MODEL_NAME,
            "--stable-http",
            f"http://127.0.0.1:{predictor.http_port}",
            "--stable-grpc",
            f"127.0.0.1:{predictor.grpc_port}",
        ],
        http,
        grpc_port,
        log_dir / f"router-{predictor.model}.log",
        env={"ROUTER_ADMIN_TOKEN": secrets.token_urlsafe(24)},  # nobody uses its admin API
    )


def kserve_plain(model: str, artifact: Path, log_dir: Path) -> Server:
    program = [str(HERE / "plain_kserve.py")]
    return _kserve_flags("kserve-plain", model, program, ["--model_dir", str(artifact)], log_dir)


def kserve_constant(log_dir: Path, workers: int) -> Server:
    quiet = str(HERE / "quiet-logging.json")
    extra = ["--workers", str(workers), "--log_config_file", quiet]
    return _kserve_flags(
        "kserve-constant", "any", [str(HERE / "constant_kserve.py")], extra, log_dir
    )


def mlserver(model: str, artifact: Path, log_dir: Path, venv: Path) -> Server:
    """MLServer reads a folder: ``settings.json`` for the server, one ``model-settings.json``
    per model. Batching as MLServer documents it: ``max_batch_size`` / ``max_batch_time``."""
    http, grpc_port, metrics = free_port(), free_port(), free_port()
    folder = log_dir / f"mlserver-{model}"
    (folder / MODEL_NAME).mkdir(parents=True, exist_ok=True)
    (folder / "settings.json").write_text(
        json.dumps(
            {
                "host": "127.0.0.1",
                "http_port": http,
                "grpc_port": grpc_port,
                "metrics_port": metrics,
                "debug": False,
            }
        )
    )
    (folder / MODEL_NAME / "model-settings.json").write_text(
        json.dumps(
            {
                "name": MODEL_NAME,
                "implementation": "mlserver_sklearn.SKLearnModel",
                "max_batch_size": 64,
                "max_batch_time": 0.005,
                "parameters": {"uri": str(artifact / "model.joblib"), "version": "1"},
            }
        )
    )
    return Server(
        "mlserver",
        model,
        [str(venv / "bin" / "mlserver"), "start", str(folder)],
        http,
        grpc_port,
        log_dir / f"mlserver-{model}.log",
        protocols=("rest-v2", "grpc"),  # MLServer speaks the v2 protocol only
    )
