"""The servers under test: how each starts, how we know it is ready, what it costs.

Eight kinds, all on 127.0.0.1 with ports picked free:

- ``irisgate``: ``python -m predictor`` with its default settings;
- ``router``: ``python -m gate.local.router`` in front of that same predictor (the path of
  every local request in the embedded default), so "direct" and "through the router" are
  the same predictor in the same run; its CPU figure is the router's own;
- ``haproxy``: HAProxy (Debian's package) in the router's place, as the reference a
  user would put there instead: a proxy written in C that also reads every request and
  could route it (:func:`haproxy`); left out with a note when it is not installed;
- ``kserve-plain``: the docs-style KServe custom model (``benchmarks/plain_kserve.py``);
- ``mlserver``: MLServer + mlserver-sklearn with adaptive batching (64 rows, 5 ms), from a
  venv of its own because its dependencies differ from ours (see :mod:`benchmarks.venvs`);
- ``bentoml``: BentoML with adaptive batching (64 rows) and 2 workers
  (``benchmarks/bentoml_service.py``), from its own venv, on BentoML's own JSON;
- ``mlflow``: ``mlflow models serve -w 2`` (uvicorn, 2 workers) on the same estimator
  saved as an MLflow model (``benchmarks/mlflow_model.py``), from its own venv, on MLflow's
  own JSON;
- ``kserve-constant``: the stack floor (``benchmarks/constant_kserve.py``).

BentoML and MLflow speak no v2 protocol: each is driven with the same one-row request in
its own JSON (:data:`WIRES`) and reported in the REST v2 table, the peers it competes with.

Every server runs in its own session so stopping it stops its workers too (workers that
start sessions of their own, as BentoML's do, are stopped one by one); CPU time and RSS
are read for the whole process tree.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import psutil
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc

from benchmarks.generators import MODEL_NAME, grpc_request, rest_body, rest_path
from gate.local.ports import free_port

HERE = Path(__file__).resolve().parent
PROTOCOLS = ("rest-v1", "rest-v2", "grpc")
EXPECTED_CLASS = 1  # the benchmark row is a versicolor

SERVER_KINDS = (
    "irisgate",
    "router",
    "haproxy",
    "kserve-plain",
    "mlserver",
    "bentoml",
    "mlflow",
    "kserve-constant",
)
LABELS = {
    "irisgate": "irisgate predictor",
    "router": "irisgate predictor via the router",
    "haproxy": "irisgate predictor via HAProxy (C, L7, 1 thread)",
    "kserve-plain": "plain KServe model",
    "mlserver": "MLServer + batching",
    "bentoml": "BentoML 1.4 (batching, 2 workers)",
    "mlflow": "MLflow 3.17 serve -w 2",
    "kserve-constant": "KServe constant (floor)",
}
_KSERVE_WIRE = "REST v1 + v2 (KServe), gRPC v2"
WIRES = {  # what each server speaks, for the report
    "irisgate": _KSERVE_WIRE,
    "router": _KSERVE_WIRE,
    "haproxy": _KSERVE_WIRE,
    "kserve-plain": _KSERVE_WIRE,
    "mlserver": "REST v2, gRPC v2",
    "bentoml": 'BentoML JSON: POST /predict {"features": [[row]]} -> [class]',
    "mlflow": 'MLflow JSON: POST /invocations {"inputs": [[row]]} -> {"predictions": [class]}',
    "kserve-constant": _KSERVE_WIRE,
}
V2_READY = f"/v2/models/{MODEL_NAME}/ready"


class ServerFailed(RuntimeError):
    pass


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
    ready_path: str = V2_READY  # GET answers 200 once the model is loaded
    rest_v2_wire: str = "rest-v2"  # what "rest-v2" is on the wire (a peer's own JSON)
    process: subprocess.Popen[bytes] | None = None
    grpc_answer_bytes: int = 0
    grpc_process_ports: tuple[int, ...] = ()  # irisgate's predictor: each process's own
    idle_rss_mb: list[float] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.kind}/{self.model}"

    def wire(self, protocol: str) -> str:
        """The request shape wrk sends for ``protocol`` (see generators.rest_body)."""
        return self.rest_v2_wire if protocol == "rest-v2" else protocol

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
        url = f"http://127.0.0.1:{self.http_port}{self.ready_path}"
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
                wire = self.wire(protocol)
                response = httpx.post(
                    f"http://127.0.0.1:{self.http_port}{rest_path(wire)}",
                    content=rest_body(wire),
                    headers={"content-type": "application/json"},
                    timeout=30,
                )
                if response.status_code != 200:
                    raise ServerFailed(f"{self.key} {wire}: {response.status_code} {response.text}")
                got = _answer(wire, response.json())
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
        workers = self._tree()[1:]  # some may have left the session (BentoML's do)
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        except ProcessLookupError:
            pass
        _, alive = psutil.wait_procs(workers, timeout=5)
        for proc in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()


def _answer(wire: str, body: Any) -> Any:
    """The class a REST answer names, in each wire format's shape."""
    try:
        if wire == "rest-v2":
            return body["outputs"][0]["data"][0]
        if wire == "rest-bentoml":
            return body[0]
        return body["predictions"][0]  # rest-v1, rest-mlflow
    except (KeyError, IndexError, TypeError):
        return body


def settle(
    fleet: list[Server], *, busy_cores: float = 0.05, window_s: float = 0.25, limit_s: float = 15.0
) -> float:
    """Wait until the fleet is idle (all its processes together below ``busy_cores`` of a
    core over ``window_s``), at most ``limit_s``; returns the seconds waited.

    A server that falls behind at 64 connections (plain KServe's forest answers ~70 req/s)
    still holds a queue of requests when the load generator stops and works through it for
    a second or more: without this the next server measured shared the cores with it, and
    whichever came next in the rotation showed the tail (the 140 ms p99 of 12-03's run)."""
    start = time.monotonic()
    before = sum(server.cpu_seconds() for server in fleet)
    while time.monotonic() - start < limit_s:
        time.sleep(window_s)
        now = sum(server.cpu_seconds() for server in fleet)
        if now - before < busy_cores * window_s:
            break
        before = now
    return time.monotonic() - start


@contextlib.contextmanager
def running(fleet: list[Server], label: str) -> Iterator[None]:
    """Every server started, then each ready and answering right (its ports printed after
    ``label``); every one stopped on the way out, whatever happened."""
    try:
        for server in fleet:
            server.start()
        for server in fleet:
            server.wait_ready(timeout_s=180)
            server.preflight()
            ports = f":{server.http_port}" + (f" / :{server.grpc_port}" if server.grpc_port else "")
            print(f"{label}: {server.key} ready on {ports}", flush=True)
        yield
    finally:
        for server in fleet:
            server.stop()


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


def process_count(predictor_args: list[str]) -> int:
    """The process count irisgate's predictor will run with these flags (the floor runs
    as many; each gets a gRPC port of its own)."""
    from predictor.__main__ import load_settings

    return load_settings(predictor_args).process_count()


def irisgate(model: str, artifact: Path, log_dir: Path, extra: list[str]) -> Server:
    """irisgate's predictor, with a gRPC port per process besides the shared one (what
    the router's shared connections need, as the local gate's predictors have)."""
    program = ["-m", "predictor"]
    process_ports: tuple[int, ...] = ()
    if "--grpc_process_ports" not in extra and "--enable_grpc" not in extra:
        process_ports = tuple(free_port() for _ in range(process_count(extra)))
        extra = [*extra, "--grpc_process_ports", ",".join(map(str, process_ports))]
    server = _kserve_flags(
        "irisgate", model, program, ["--model_dir", str(artifact), *extra], log_dir
    )
    server.grpc_process_ports = process_ports
    # Server readiness: with several processes, ready once every one serves (the model's
    # own readiness comes earlier, from the first); the router's pool connects after it.
    server.ready_path = "/v2/health/ready"
    return server


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
            "--stable-grpc-processes",
            ",".join(f"127.0.0.1:{port}" for port in predictor.grpc_process_ports),
        ],
        http,
        grpc_port,
        log_dir / f"router-{predictor.model}.log",
        env={"ROUTER_ADMIN_TOKEN": secrets.token_urlsafe(24)},  # nobody uses its admin API
    )


HAPROXY_CONFIG = """\
global
    nbthread 1
    maxconn 4096
defaults
    timeout connect 5s
    timeout client 75s
    timeout server 75s
    http-reuse never
frontend rest
    mode http
    bind 127.0.0.1:{http}
    default_backend rest_predictor
backend rest_predictor
    mode http
    server predictor 127.0.0.1:{predictor_http}
frontend grpc
    mode http
    bind 127.0.0.1:{grpc} proto h2
    default_backend grpc_predictor
backend grpc_predictor
    mode http
    server predictor 127.0.0.1:{predictor_grpc} proto h2
"""


@functools.cache
def haproxy_version() -> str | None:
    """``haproxy -v``'s version (e.g. '2.6.12'), or None when it is not installed (asked
    once a run: planning the fleet and writing the report both need it)."""
    if shutil.which("haproxy") is None:
        return None
    out = subprocess.run(["haproxy", "-v"], capture_output=True, text=True, check=False).stdout
    words = out.split()
    return words[2].split("-")[0] if len(words) > 2 and words[1] == "version" else "?"


def haproxy(predictor: Server, log_dir: Path) -> Server:
    """HAProxy in the router's place, in front of the same predictor.

    The reference for what the router costs: a mature proxy written in C that, like the
    router, reads each request (HTTP/1.1 for REST, HTTP/2 for gRPC: layer 7) and so could
    route it by weight. One thread, as the router has one event loop. ``http-reuse never``
    gives each client connection a backend connection of its own, as the router's REST
    pools do: the predictor's processes share their ports (SO_REUSEPORT) and the kernel
    spreads connections, not calls, so with ``http-reuse always`` (many clients' calls on
    one backend connection) gRPC through HAProxy measured 0.62x direct at 64 connections,
    against 0.75x with a connection per client (side by side, 5 and 3 rounds). The
    router's gRPC side shares connections too, but to each process's own port
    (``--grpc_process_ports``); HAProxy here is given the shared port only."""
    http, grpc_port = free_port(), free_port()
    config = log_dir / f"haproxy-{predictor.model}.cfg"
    config.write_text(
        HAPROXY_CONFIG.format(
            http=http,
            grpc=grpc_port,
            predictor_http=predictor.http_port,
            predictor_grpc=predictor.grpc_port,
        )
    )
    return Server(
        "haproxy",
        predictor.model,
        ["haproxy", "-db", "-f", str(config)],  # -db: in the foreground, logs to stderr
        http,
        grpc_port,
        log_dir / f"haproxy-{predictor.model}.log",
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


# Neither peer may phone home from the benchmark (usage tracking is on by default in both).
_NO_TRACKING = {"DO_NOT_TRACK": "true", "BENTOML_DO_NOT_TRACK": "true"}


def bentoml(model: str, artifact: Path, log_dir: Path, venv: Path) -> Server:
    """``bentoml serve`` of :class:`benchmarks.bentoml_service.IrisClassifier`, imported
    from the repository root, loading the artifact's ``model.joblib`` (``--arg model=``)."""
    http = free_port()
    return Server(
        "bentoml",
        model,
        [
            str(venv / "bin" / "bentoml"),
            "serve",
            "benchmarks.bentoml_service:IrisClassifier",
            "--arg",
            f"model={artifact / 'model.joblib'}",
            "--host",
            "127.0.0.1",
            "--port",
            str(http),
        ],
        http,
        0,
        log_dir / f"bentoml-{model}.log",
        protocols=("rest-v2",),
        env={
            **_NO_TRACKING,
            "BENTOML_HOME": str(log_dir / "bentoml-home"),  # not ~/bentoml
        },
        ready_path="/readyz",
        rest_v2_wire="rest-bentoml",
    )


def mlflow(model: str, artifact: Path, log_dir: Path, venv: Path) -> Server:
    """The artifact's estimator saved as an MLflow model by MLflow's own Python, then
    ``mlflow models serve -w 2 --env-manager local``. That execs ``uvicorn`` from PATH, so
    the venv's bin/ comes first in PATH (ours has a uvicorn too).

    As served, every keep-alive request after a connection's first waits ~40 ms for the
    client's delayed ACK: uvicorn's ``--workers`` path leaves Nagle on (Kludex/uvicorn#3149)
    and MLflow answers in two writes. That is what MLflow users get; it costs MLflow at
    c=1 and c=4, not at c=16 and c=64, where the forest's CPU time already bounds it."""
    folder = log_dir / f"mlflow-{model}"
    shutil.rmtree(folder, ignore_errors=True)  # save_model will not overwrite
    save = [
        str(venv / "bin" / "python"),
        str(HERE / "mlflow_model.py"),
        str(artifact / "model.joblib"),
        str(folder),
    ]
    env = {**os.environ, **_NO_TRACKING, "MLFLOW_DISABLE_TELEMETRY": "true"}
    saved = subprocess.run(save, capture_output=True, text=True, env=env, check=False)
    if saved.returncode != 0:
        raise ServerFailed(f"cannot save the {model} model for MLflow:\n{saved.stderr[-2000:]}")
    http = free_port()
    return Server(
        "mlflow",
        model,
        [
            str(venv / "bin" / "mlflow"),
            "models",
            "serve",
            "--model-uri",
            str(folder),
            "--workers",
            "2",
            "--env-manager",
            "local",
            "--host",
            "127.0.0.1",
            "--port",
            str(http),
        ],
        http,
        0,
        log_dir / f"mlflow-{model}.log",
        protocols=("rest-v2",),
        env={
            **_NO_TRACKING,
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        },
        ready_path="/ping",
        rest_v2_wire="rest-mlflow",
    )
