"""A real local stack for gate tests: registry, router, gate, live traffic, webhook sink."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np

from pipeline.steps.common import TrainParams
from pipeline.steps.deploy import register_model
from pipeline.steps.evaluate import evaluate_model
from pipeline.steps.preprocess import load_dataset, split_dataset
from pipeline.steps.train import train_model
from tests.helpers import RunningProcess, free_port, start_process, wait_until

TOKEN = "integration-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# Margins the tests' traffic (about a hundred requests a second for a few seconds) can
# show; the gate's defaults need thousands of canary requests (see make gate-bench).
TEST_MARGINS: dict[str, Any] = {
    "error_rate_margin": 0.05,
    "latency_margin": 4.0,
    "class_shift_margin": 0.3,
}
ROUTER_TOKEN = "router-admin-token-0123456789"
EVENTS_TOKEN = "router-events-token-0123456789"
# No shadow phase unless a test asks for one (``shadow_s``): most tests are about the
# steps, and a shadow phase without mirrored traffic waits out its whole budget.
STACK_DEFAULTS: dict[str, Any] = {"shadow_s": 0}
ROUTER_AUTH = {"Authorization": f"Bearer {ROUTER_TOKEN}"}
NO_ROUTES = {"stable": None, "canary": None, "canary_weight": 0}


def build_registry(root: Path, classifiers: tuple[str, ...] = ("logreg", "logreg")) -> Path:
    """Versions 1..N of iris in a registry, each with its held-out split, in-process."""
    registry = root / "registry"
    add_model(root, registry, "iris", classifiers)
    return registry


def add_model(
    root: Path, registry: Path, name: str, classifiers: tuple[str, ...] = ("logreg", "logreg")
) -> None:
    """Versions 1..N of model ``name`` (trained on Iris) in the registry."""
    root.mkdir(parents=True, exist_ok=True)
    train, test = split_dataset(load_dataset(None), 0.3, 7)
    train.to_csv(root / "train.csv", index=False)
    test.to_csv(root / "test.csv", index=False)
    for index, classifier in enumerate(classifiers):
        model_dir = root / f"model-{name}-{index}"
        train_model(
            root / "train.csv",
            model_dir,
            name,
            TrainParams(classifier=classifier, c=1.0 + index, n_estimators=20),
        )
        evaluation = evaluate_model(model_dir, root / "test.csv")
        register_model(model_dir, root / "test.csv", registry, evaluation.flat_metrics())


def offline_accuracy(version_dir: Path) -> float:
    return float(json.loads((version_dir / "model.json").read_text())["metrics"]["accuracy"])


def processes_mentioning(text: str) -> list[tuple[int, str]]:
    """Live processes other than this one whose command line or environment names ``text``,
    as (pid, command line). Predictors started by a gate live in sessions of their own and
    the gate and router name their run folder only in their environment."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            environment = (entry / "environ").read_bytes().decode(errors="replace")
            state = (entry / "stat").read_text().split()[2]
        except (OSError, IndexError):
            continue
        if (text in command or text in environment) and state != "Z":
            found.append((int(entry.name), command))
    return found


def kill_processes_mentioning(text: str) -> None:
    for pid, _ in processes_mentioning(text):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


class WebhookSink:
    """Collects webhook POSTs, like a Slack incoming webhook would."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["content-length"])
                sink.received.append(json.loads(self.rfile.read(length)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


class Traffic:
    """REST v1 and gRPC requests through the router, until stopped."""

    def __init__(self, http_url: str, grpc_target: str, rate_per_s: float = 120) -> None:
        self.http_url = http_url
        self.grpc_target = grpc_target
        self.pause_s = 1.0 / rate_per_s
        self.stop_event = threading.Event()
        self.sent = {"rest": 0, "grpc": 0}
        self.threads = [
            threading.Thread(target=self._rest, daemon=True),
            threading.Thread(target=self._grpc, daemon=True),
        ]

    def _rows(self, rng: np.random.Generator) -> list[list[float]]:
        low, high = [4.3, 2.0, 1.0, 0.1], [7.9, 4.4, 6.9, 2.5]
        return [[round(float(v), 2) for v in rng.uniform(low, high)]]

    def _rest(self) -> None:
        rng = np.random.default_rng(1)
        with httpx.Client(timeout=10) as client:
            while not self.stop_event.is_set():
                with contextlib.suppress(httpx.HTTPError):
                    client.post(
                        f"{self.http_url}/v1/models/iris:predict",
                        json={"instances": self._rows(rng)},
                    )
                    self.sent["rest"] += 1
                time.sleep(self.pause_s)

    def _grpc(self) -> None:
        from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
        from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

        rng = np.random.default_rng(2)
        with grpc.insecure_channel(self.grpc_target) as channel:
            stub = GRPCInferenceServiceStub(channel)
            while not self.stop_event.is_set():
                tensor = pb.ModelInferRequest.InferInputTensor(
                    name="input-0",
                    datatype="FP32",
                    shape=[1, 4],
                    contents=pb.InferTensorContents(fp32_contents=self._rows(rng)[0]),
                )
                with contextlib.suppress(grpc.RpcError):
                    stub.ModelInfer(
                        pb.ModelInferRequest(model_name="iris", inputs=[tensor]), timeout=10
                    )
                    self.sent["grpc"] += 1
                time.sleep(self.pause_s)

    def __enter__(self) -> Traffic:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        for thread in self.threads:
            thread.join(15)


class LocalStack:
    def __init__(
        self,
        root: Path,
        registry: Path,
        canary_args: str = "",
        webhook_urls: list[str] | None = None,
        analysis: dict[str, Any] | None = None,
    ) -> None:
        self.root = root
        self.registry = registry
        self.router_http, self.router_grpc = free_port(), free_port()
        self.router_admin = free_port()
        self.gate_port = free_port()
        self.router_url = f"http://127.0.0.1:{self.router_http}"
        self.router_admin_url = f"http://127.0.0.1:{self.router_admin}"
        self.gate_url = f"http://127.0.0.1:{self.gate_port}"
        self.env = {
            "GATE_API_TOKEN": TOKEN,
            "GATE_PORT": str(self.gate_port),
            "GATE_DB_PATH": str(root / "gate.db"),
            "GATE_ROUTER_ADMIN_URL": self.router_admin_url,
            "GATE_ROUTER_TOKEN": ROUTER_TOKEN,
            "GATE_EVENTS_TOKEN": EVENTS_TOKEN,
            "GATE_RUN_DIR": str(root / "predictors"),
            "GATE_STABLE_MODEL_DIR": str(registry / "iris" / "1"),
            "GATE_TICK_INTERVAL_S": "0.5",
            "GATE_WEBHOOK_INTERVAL_S": "0.5",
            "GATE_CANARY_ARGS": canary_args,
            "GATE_WEBHOOK_URLS": json.dumps(webhook_urls or []),
        }
        defaults = {**STACK_DEFAULTS, **(analysis or {})}
        (root / "analysis.yaml").write_text(json.dumps(defaults))  # JSON is YAML
        self.env["GATE_ANALYSIS_FILE"] = str(root / "analysis.yaml")
        self.router: RunningProcess | None = None
        self.gate: RunningProcess | None = None
        self._gate_starts = 0

    def start_router(self) -> None:
        self.router = start_process(
            [
                "-m",
                "gate.local.router",
                "--http-port",
                str(self.router_http),
                "--grpc-port",
                str(self.router_grpc),
                "--admin-port",
                str(self.router_admin),
                "--events-url",
                f"{self.gate_url}/v1/events",
            ],
            self.root / "router.log",
            env={"ROUTER_ADMIN_TOKEN": ROUTER_TOKEN, "ROUTER_EVENTS_TOKEN": EVENTS_TOKEN},
        )
        wait_until(
            lambda: httpx.get(f"{self.router_admin_url}/router/healthz").status_code == 200,
            30,
            "router",
            self.router.process,
            self.router.log,
        )

    def start_gate(self, wait_ready: bool = True) -> None:
        """Start the gate; wait for /readyz unless it is expected to crash first."""
        self._gate_starts += 1
        self.gate = start_process(
            ["-m", "gate"], self.root / f"gate-{self._gate_starts}.log", env=self.env
        )
        if not wait_ready:
            return
        wait_until(
            lambda: httpx.get(f"{self.gate_url}/readyz").status_code == 200,
            90,
            "gate",
            self.gate.process,
            self.gate.log,
        )

    def post_rollout(self, version: str, *, model: str = "iris", **analysis: Any) -> httpx.Response:
        """POST a rollout of a registry version, its offline accuracy from its manifest."""
        version_dir = self.registry / model / version
        return httpx.post(
            f"{self.gate_url}/v1/rollouts",
            headers=AUTH,
            json={
                "model": model,
                "candidate": {
                    "version": version,
                    "artifact_uri": str(version_dir),
                    "offline_metrics": {"accuracy": offline_accuracy(version_dir)},
                },
                "analysis": analysis,
            },
            timeout=10,
        )

    def create(self, version: str, *, model: str = "iris", **analysis: Any) -> str:
        response = self.post_rollout(version, model=model, **analysis)
        assert response.status_code == 201, response.text
        rollout_id: str = response.json()["id"]
        return rollout_id

    def rollout(self, rollout_id: str) -> dict[str, Any]:
        detail: dict[str, Any] = httpx.get(
            f"{self.gate_url}/v1/rollouts/{rollout_id}", timeout=10
        ).json()
        return detail

    def wait_phase(self, rollout_id: str, phases: set[str], timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        detail: dict[str, Any] = {}
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                detail = self.rollout(rollout_id)
                if detail["phase"] in phases:
                    return detail
            time.sleep(0.3)
        log = self.gate.output()[-3000:] if self.gate else ""
        raise TimeoutError(f"rollout {rollout_id} not in {phases}: {detail}\n{log}")

    def routes(self, model: str = "iris") -> dict[str, Any]:
        """The router's routes of one model (stable, canary, weight, counters); all None
        until the gate has set some."""
        response = httpx.get(
            f"{self.router_admin_url}/router/routes/{model}", headers=ROUTER_AUTH, timeout=10
        )
        if response.status_code == 404:
            return dict(NO_ROUTES)
        response.raise_for_status()
        routes: dict[str, Any] = response.json()
        return routes

    def traffic(self) -> Traffic:
        return Traffic(self.router_url, f"127.0.0.1:{self.router_grpc}")

    def stop(self) -> None:
        for process in (self.gate, self.router):
            if process is not None:
                process.stop()
        kill_processes_mentioning(str(self.registry))


TERMINAL_PHASES = {"succeeded", "rolled_back", "failed", "aborted"}


@contextlib.contextmanager
def ended_afterwards(stack: LocalStack, rollout_id: str) -> Iterator[None]:
    """A test that fails half-way leaves no active rollout to refuse (409) the next
    test's: the rollout is aborted, if it has not ended, whatever happened."""
    try:
        yield
    finally:
        end_rollout(stack, rollout_id)


def end_rollout(stack: LocalStack, rollout_id: str) -> None:
    """Abort the rollout, if it has not ended, and wait for it to (errors ignored: this
    cleans up after a test, whatever state it left)."""
    with contextlib.suppress(httpx.HTTPError, TimeoutError):
        httpx.post(f"{stack.gate_url}/v1/rollouts/{rollout_id}/abort", headers=AUTH, timeout=10)
        stack.wait_phase(rollout_id, TERMINAL_PHASES, 30)


@contextlib.contextmanager
def local_stack(root: Path, **kwargs: Any) -> Iterator[LocalStack]:
    registry = build_registry(root)
    stack = LocalStack(root, registry, **kwargs)
    try:
        stack.start_router()
        stack.start_gate()
        yield stack
    finally:
        stack.stop()
