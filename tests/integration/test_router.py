"""``python -m gate.local.router`` as a real process in front of real predictors on loopback:
the admin API's token, per-model routing over REST v1/v2 and gRPC, a canary killed under
load, response headers and logging."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import psutil
import pytest
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

from tests.helpers import (
    REPO_ROOT,
    Predictor,
    RunningProcess,
    free_port,
    make_artifact,
    run_predictor,
    start_process,
    wait_until,
)

pytestmark = pytest.mark.integration

TOKEN = "router-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SETOSA = [5.1, 3.5, 1.4, 0.2]
TOKEN_LINE = "router: ROUTER_ADMIN_TOKEN must be set (at least 16 characters)"


@dataclass
class Router:
    running: RunningProcess
    http_url: str
    grpc_target: str
    admin_url: str

    def put(self, model: str, body: dict[str, Any]) -> dict[str, Any]:
        response = httpx.put(f"{self.admin_url}/router/routes/{model}", json=body, headers=AUTH)
        assert response.status_code == 200, response.text
        routes: dict[str, Any] = response.json()
        return routes

    def routes(self, model: str) -> dict[str, Any]:
        response = httpx.get(f"{self.admin_url}/router/routes/{model}", headers=AUTH)
        assert response.status_code == 200, response.text
        routes: dict[str, Any] = response.json()
        return routes


@contextlib.contextmanager
def run_router(log_dir: Path, *extra: str, env: dict[str, str] | None = None) -> Iterator[Router]:
    http_port, grpc_port, admin_port = free_port(), free_port(), free_port()
    running = start_process(
        [
            "-m",
            "gate.local.router",
            "--http-port",
            str(http_port),
            "--grpc-port",
            str(grpc_port),
            "--admin-port",
            str(admin_port),
            *extra,
        ],
        log_dir / f"router-{http_port}.log",
        env={"ROUTER_ADMIN_TOKEN": TOKEN, **(env or {})},
    )
    router = Router(
        running,
        f"http://127.0.0.1:{http_port}",
        f"127.0.0.1:{grpc_port}",
        f"http://127.0.0.1:{admin_port}",
    )
    try:
        wait_until(
            lambda: httpx.get(f"{router.admin_url}/router/healthz").status_code == 200,
            30,
            "router",
            running.process,
            running.log,
        )
        yield router
    finally:
        running.stop()


def backend(predictor: Predictor, shared: bool = False) -> dict[str, Any]:
    """A predictor's routes; ``shared``: naming its (one) process's gRPC port, so the
    router shares its connections to it among all clients."""
    spec: dict[str, Any] = {"http": predictor.url, "grpc": predictor.grpc_target}
    if shared:
        spec["grpc_processes"] = [predictor.grpc_target]
    return spec


def infer_request(model: str) -> pb.ModelInferRequest:
    tensor = pb.ModelInferRequest.InferInputTensor(
        name="input-0",
        datatype="FP32",
        shape=[1, 4],
        contents=pb.InferTensorContents(fp32_contents=SETOSA),
    )
    return pb.ModelInferRequest(model_name=model, inputs=[tensor])


def v2_body() -> dict[str, Any]:
    return {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP32", "data": SETOSA}]}


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("artifacts")
    return {
        "iris": make_artifact(root / "iris-1", name="iris"),
        "iris2": make_artifact(root / "iris2-1", name="iris2"),
    }


@pytest.fixture(scope="module")
def predictors(artifacts: dict[str, Path], logs: Path) -> Iterator[dict[str, Predictor]]:
    """Two predictors of iris (stable, canary) and one of iris2."""
    with contextlib.ExitStack() as stack:
        yield {
            "iris": stack.enter_context(run_predictor(artifacts["iris"], logs)),
            "iris-canary": stack.enter_context(run_predictor(artifacts["iris"], logs)),
            "iris2": stack.enter_context(run_predictor(artifacts["iris2"], logs, name="iris2")),
        }


@pytest.fixture(scope="module")
def router(predictors: dict[str, Predictor], logs: Path) -> Iterator[Router]:
    stable = predictors["iris"]
    with run_router(
        logs, "--stable-http", stable.url, "--stable-grpc", stable.grpc_target
    ) as running:
        running.put("iris2", {"stable": backend(predictors["iris2"])})
        yield running


@pytest.fixture(scope="module")
def stub(router: Router) -> Iterator[GRPCInferenceServiceStub]:
    with grpc.insecure_channel(router.grpc_target) as channel:
        yield GRPCInferenceServiceStub(channel)


# --- the command line --------------------------------------------------------------------


@pytest.mark.parametrize("token", [None, "", "short-token"])
def test_without_a_good_token_it_exits_2_before_binding(token: str | None) -> None:
    env = {k: v for k, v in os.environ.items() if k != "ROUTER_ADMIN_TOKEN"}
    if token is not None:
        env["ROUTER_ADMIN_TOKEN"] = token
    port = free_port()
    done = subprocess.run(
        [sys.executable, "-m", "gate.local.router", "--http-port", str(port)],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == TOKEN_LINE
    assert done.stdout == ""


def test_help_needs_no_token() -> None:
    env = {k: v for k, v in os.environ.items() if k != "ROUTER_ADMIN_TOKEN"}
    done = subprocess.run(
        [sys.executable, "-m", "gate.local.router", "--help"],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0
    assert "--admin-port" in done.stdout
    assert "ROUTER_ADMIN_TOKEN" in done.stdout


# --- the admin API -----------------------------------------------------------------------


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-token-0123456789"}])
@pytest.mark.parametrize("method", ["GET", "PUT"])
def test_admin_without_the_token_is_401(
    router: Router, headers: dict[str, str], method: str
) -> None:
    before = router.routes("iris")
    for path in ("/router/routes", "/router/routes/iris", "/router/routes/iris9"):
        response = httpx.request(
            method, f"{router.admin_url}{path}", headers=headers, json={"canary_weight": 0}
        )
        assert response.status_code == 401
        assert response.json() == {"error": "missing or wrong bearer token"}
        assert response.headers["www-authenticate"] == "Bearer"
    assert router.routes("iris")["stable"] == before["stable"]
    assert httpx.get(f"{router.admin_url}/router/routes/iris9", headers=AUTH).status_code == 404


def test_the_client_port_has_no_admin_api(router: Router) -> None:
    for path in ("/router/routes", "/router/routes/iris", "/router/healthz"):
        response = httpx.get(f"{router.http_url}{path}", headers=AUTH)
        assert response.status_code == 404
        assert response.headers["content-type"] == "application/json"
        assert "error" in response.json()


def test_admin_reads_all_models_and_one(router: Router, predictors: dict[str, Predictor]) -> None:
    everything = httpx.get(f"{router.admin_url}/router/routes", headers=AUTH).json()
    assert set(everything["models"]) >= {"iris", "iris2"}
    one = router.routes("iris2")
    assert one == everything["models"]["iris2"] | {"stable": one["stable"]}
    assert one["stable"]["http"] == predictors["iris2"].url
    assert set(one["stable"]) == {"http", "grpc", "grpc_processes", "requests", "errors"}
    missing = httpx.get(f"{router.admin_url}/router/routes/nope", headers=AUTH)
    assert missing.status_code == 404


@pytest.mark.parametrize(
    ("model", "body", "named"),
    [
        ("iris3", b"{not json", "json"),
        ("iris3", b'{"canary_weight": 101}', "canary_weight"),
        ("iris3", b'{"canary_weight": 10}', "needs a canary"),
        ("iris3", b'{"canary_wieght": 10}', "canary_wieght"),
        ("iris3", b'{"stable": {"http": "file:///etc/passwd", "grpc": "h:1"}}', "stable.http"),
        ("iris3", b'{"stable": {"http": "http://h:1", "grpc": "nope"}}', "stable.grpc"),
        (
            "iris3",
            b'{"canary": {"http": "http://h:1", "grpc": "h:2"}, "canary_weight": 50}',
            "weight must be 100",
        ),
        ("Bad_Name", b"{}", "model name"),
    ],
)
def test_admin_rejects_bad_routes_naming_the_problem(
    router: Router, model: str, body: bytes, named: str
) -> None:
    response = httpx.put(
        f"{router.admin_url}/router/routes/{model}",
        content=body,
        headers={**AUTH, "content-type": "application/json"},
    )
    assert response.status_code == 400, response.text
    assert named.lower() in response.json()["error"].lower()
    assert httpx.get(f"{router.admin_url}/router/routes/{model}", headers=AUTH).status_code == 404


def test_admin_rejects_a_body_over_64_kib(router: Router) -> None:
    body = b'{"canary_weight": 0, "pad": "' + b"x" * (64 * 1024) + b'"}'
    response = httpx.put(f"{router.admin_url}/router/routes/iris3", content=body, headers=AUTH)
    assert response.status_code == 413


# --- per-model routing -------------------------------------------------------------------


def test_models_are_routed_independently_over_rest(
    router: Router, predictors: dict[str, Predictor]
) -> None:
    before = {m: router.routes(m)["stable"]["requests"] for m in ("iris", "iris2")}
    for model in ("iris", "iris2"):
        v1 = httpx.post(
            f"{router.http_url}/v1/models/{model}:predict", json={"instances": [SETOSA]}
        )
        assert v1.status_code == 200, v1.text
        assert v1.json() == {"predictions": [0]}
        v2 = httpx.post(f"{router.http_url}/v2/models/{model}/infer", json=v2_body())
        assert v2.status_code == 200, v2.text
        assert v2.json()["model_name"] == model
        metadata = httpx.get(f"{router.http_url}/v2/models/{model}")
        assert metadata.status_code == 200
        assert metadata.json()["name"] == model
        assert httpx.get(f"{router.http_url}/v2/models/{model}/ready").status_code == 200
    after = {m: router.routes(m)["stable"]["requests"] for m in ("iris", "iris2")}
    assert after == {m: before[m] + 4 for m in before}
    # calls that name no model go to the first model's stable
    assert httpx.get(f"{router.http_url}/v2/health/ready").status_code == 200
    assert router.routes("iris")["stable"]["requests"] == after["iris"] + 1
    assert router.routes("iris2")["stable"]["requests"] == after["iris2"]


def test_unknown_model_is_404_over_rest(router: Router) -> None:
    for response in (
        httpx.post(f"{router.http_url}/v1/models/nope:predict", json={"instances": [SETOSA]}),
        httpx.post(f"{router.http_url}/v2/models/nope/infer", json=v2_body()),
        httpx.get(f"{router.http_url}/v2/models/nope"),
    ):
        assert response.status_code == 404
        assert response.json() == {"error": "Model with name nope does not exist."}


def test_models_are_routed_independently_over_grpc(
    router: Router, stub: GRPCInferenceServiceStub
) -> None:
    before = {m: router.routes(m)["stable"]["requests"] for m in ("iris", "iris2")}
    for model in ("iris", "iris2"):
        reply = stub.ModelInfer(infer_request(model), timeout=10)
        assert reply.model_name == model
        assert stub.ModelMetadata(pb.ModelMetadataRequest(name=model), timeout=10).name == model
        assert stub.ModelReady(pb.ModelReadyRequest(name=model), timeout=10).ready
    assert stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live
    after = {m: router.routes(m)["stable"]["requests"] for m in ("iris", "iris2")}
    assert after == {"iris": before["iris"] + 4, "iris2": before["iris2"] + 3}
    calls: list[Callable[[], Any]] = [
        lambda: stub.ModelInfer(infer_request("nope"), timeout=10),
        lambda: stub.ModelMetadata(pb.ModelMetadataRequest(name="nope"), timeout=10),
        lambda: stub.ModelReady(pb.ModelReadyRequest(name="nope"), timeout=10),
    ]
    for call in calls:
        with pytest.raises(grpc.RpcError) as caught:
            call()
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert "nope" in (caught.value.details() or "")


def test_a_malformed_grpc_request_is_invalid_argument(router: Router) -> None:
    with grpc.insecure_channel(router.grpc_target) as channel:
        model_infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.RpcError) as caught:
            model_infer(b"\x0a\x05ir", timeout=10)  # a name longer than the message
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_canary_split_applies_to_its_model_only(
    router: Router, predictors: dict[str, Predictor], stub: GRPCInferenceServiceStub
) -> None:
    stable, canary = backend(predictors["iris"]), backend(predictors["iris-canary"])
    try:
        routes = router.put("iris", {"stable": stable, "canary": canary, "canary_weight": 100})
        assert set(routes["canary"]) == {
            "http",
            "grpc",
            "grpc_processes",
            "requests",
            "errors",
            "stable_retries",
        }
        iris2_before = router.routes("iris2")["stable"]["requests"]
        for _ in range(5):
            url = f"{router.http_url}/v1/models/iris:predict"
            assert httpx.post(url, json={"instances": [SETOSA]}).status_code == 200
            url2 = f"{router.http_url}/v1/models/iris2:predict"
            assert httpx.post(url2, json={"instances": [SETOSA]}).status_code == 200
            assert stub.ModelInfer(infer_request("iris"), timeout=10).model_name == "iris"
            # metadata still goes to stable
            assert httpx.get(f"{router.http_url}/v2/models/iris").status_code == 200
        routes = router.routes("iris")
        assert routes["canary"]["requests"] == 10
        assert routes["canary"]["errors"] == 0
        assert router.routes("iris2")["stable"]["requests"] == iris2_before + 5
        assert router.routes("iris2")["canary"] is None
    finally:
        router.put("iris", {"stable": stable})


# --- resilience --------------------------------------------------------------------------


class Load:
    """REST v1 and gRPC inference through the router, ``threads`` of each of ``kinds``
    (each with its own connection), recording failures."""

    def __init__(
        self, router: Router, kinds: tuple[str, ...] = ("rest", "grpc"), threads: int = 1
    ) -> None:
        self.router = router
        self.stop = threading.Event()
        self.failures: list[str] = []
        self.sent = dict.fromkeys(kinds, 0)
        self._lock = threading.Lock()
        targets = {"rest": self._rest, "grpc": self._grpc}
        self.threads = [
            threading.Thread(target=targets[kind], daemon=True)
            for kind in kinds
            for _ in range(threads)
        ]

    def _record(self, kind: str, call: Callable[[], None]) -> None:
        try:
            call()
            with self._lock:
                self.sent[kind] += 1
        except Exception as exc:  # every failure counts, whatever its type
            self.failures.append(f"{kind}: {exc!r}")
        time.sleep(0.002)

    def _rest(self) -> None:
        url = f"{self.router.http_url}/v1/models/iris:predict"
        with httpx.Client(timeout=10) as client:

            def call() -> None:
                response = client.post(url, json={"instances": [SETOSA]})
                if response.status_code != 200:
                    raise RuntimeError(f"{response.status_code} {response.text}")

            while not self.stop.is_set():
                self._record("rest", call)

    def _grpc(self) -> None:
        with grpc.insecure_channel(self.router.grpc_target) as channel:
            stub = GRPCInferenceServiceStub(channel)
            while not self.stop.is_set():
                self._record("grpc", lambda: stub.ModelInfer(infer_request("iris"), timeout=10))

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(20)


@pytest.mark.parametrize("shared", [False, True], ids=["per-client", "shared"])
def test_a_killed_canary_costs_clients_nothing(
    predictors: dict[str, Predictor], artifacts: dict[str, Path], logs: Path, shared: bool
) -> None:
    stable = predictors["iris"]
    with (
        run_predictor(artifacts["iris"], logs, "--fault_latency_ms", "200") as doomed,
        run_router(
            logs, "--stable-http", stable.url, "--stable-grpc", stable.grpc_target
        ) as router,
    ):
        router.put(
            "iris",
            {
                "stable": backend(stable, shared),
                "canary": backend(doomed, shared),
                "canary_weight": 50,
            },
        )
        with Load(router) as load:
            wait_until(lambda: min(load.sent.values()) >= 20, 30, "traffic before the kill")
            before = router.routes("iris")["canary"]
            os.killpg(doomed.process.pid, signal.SIGKILL)
            doomed.process.wait(10)
            sent_at_kill = dict(load.sent)
            wait_until(
                lambda: all(load.sent[k] >= sent_at_kill[k] + 100 for k in load.sent),
                60,
                "traffic after the kill",
            )
        canary = router.routes("iris")["canary"]
        assert load.failures == [], load.failures[:5]
        assert before["errors"] == 0 and before["requests"] > 0
        assert canary["errors"] > 0
        assert canary["stable_retries"] > 0
        assert canary["stable_retries"] <= canary["errors"]
        # each protocol on its own retries too (20 calls at 50 %: the canary is picked)
        with grpc.insecure_channel(router.grpc_target) as channel:
            stub = GRPCInferenceServiceStub(channel)
            calls: dict[str, Callable[[], Any]] = {
                "rest": lambda: httpx.post(
                    f"{router.http_url}/v1/models/iris:predict", json={"instances": [SETOSA]}
                ).raise_for_status(),
                "grpc": lambda: stub.ModelInfer(infer_request("iris"), timeout=10),
            }
            for call in calls.values():
                retries = router.routes("iris")["canary"]["stable_retries"]
                for _ in range(20):
                    call()
                assert router.routes("iris")["canary"]["stable_retries"] > retries
        assert "cannot be reached" in router.running.output()
        assert router.running.stop() == 0


def test_errors_from_a_running_canary_reach_the_client(
    predictors: dict[str, Predictor], artifacts: dict[str, Path], logs: Path, router: Router
) -> None:
    """Only a canary that cannot be reached is retried; its own 5xx and gRPC errors are
    the gate's evidence and pass through."""
    stable = backend(predictors["iris"])
    with run_predictor(artifacts["iris"], logs, "--fault_error_rate", "1.0") as faulty:
        router.put("iris", {"stable": stable, "canary": backend(faulty), "canary_weight": 100})
        try:
            with grpc.insecure_channel(router.grpc_target) as channel:
                stub = GRPCInferenceServiceStub(channel)
                for _ in range(3):
                    response = httpx.post(
                        f"{router.http_url}/v1/models/iris:predict", json={"instances": [SETOSA]}
                    )
                    assert response.status_code == 500
                    with pytest.raises(grpc.RpcError) as caught:
                        stub.ModelInfer(infer_request("iris"), timeout=10)
                    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
                    assert "injected fault" in (caught.value.details() or "")
            canary = router.routes("iris")["canary"]
            assert canary["requests"] == 6
            assert canary["errors"] == 6
            assert canary["stable_retries"] == 0
        finally:
            router.put("iris", {"stable": stable})


# --- headers, logging, shutdown ----------------------------------------------------------


def test_one_date_and_at_most_one_server_header(router: Router) -> None:
    responses = [
        httpx.post(f"{router.http_url}/v1/models/iris:predict", json={"instances": [SETOSA]}),
        httpx.get(f"{router.http_url}/v2/health/ready"),
        httpx.get(f"{router.http_url}/v2/models/nope"),  # the router's own answer
        httpx.get(f"{router.http_url}/router/routes"),
    ]
    for response in responses:
        assert len(response.headers.get_list("date")) == 1, response.headers
        assert len(response.headers.get_list("server")) <= 1, response.headers


def test_the_router_runs_as_a_batch_task_unless_told_otherwise(router: Router, logs: Path) -> None:
    """SCHED_BATCH (see ``set_scheduling``): every thread the router has, by default;
    the default policy with ``--scheduling normal``, and by default when it can mirror
    (``--events-url``)."""
    for thread in psutil.Process(router.running.process.pid).threads():
        assert os.sched_getscheduler(thread.id) == os.SCHED_BATCH
    assert "scheduling: batch" in router.running.output()
    mirroring = ("--events-url", "http://127.0.0.1:9/v1/events")
    events_token = {"ROUTER_EVENTS_TOKEN": "e" * 32}
    for extra, env in (
        (("--scheduling", "normal"), None),
        (mirroring, events_token),
    ):
        with run_router(logs, *extra, env=env) as plain:
            assert os.sched_getscheduler(plain.running.process.pid) == os.SCHED_OTHER
            assert "scheduling: normal" in plain.running.output()


def test_traffic_writes_no_log_lines_and_sigterm_exits_0(
    predictors: dict[str, Predictor], logs: Path
) -> None:
    stable = predictors["iris"]
    with run_router(
        logs, "--stable-http", stable.url, "--stable-grpc", stable.grpc_target
    ) as router:
        with (
            httpx.Client(timeout=10) as client,
            grpc.insecure_channel(router.grpc_target) as channel,
        ):
            stub = GRPCInferenceServiceStub(channel)
            rest_s = 0.0
            for index in range(200):
                if index % 2:
                    stub.ModelInfer(infer_request("iris"), timeout=10)
                else:
                    started = time.perf_counter()
                    url = f"{router.http_url}/v1/models/iris:predict"
                    assert client.post(url, json={"instances": [SETOSA]}).status_code == 200
                    rest_s += time.perf_counter() - started
        # ~2-3 ms a call here; a delayed ACK (no TCP_NODELAY) would make it 40+ ms
        assert rest_s < 100 * 0.015, f"{rest_s / 100 * 1000:.1f} ms per REST call"
        assert router.routes("iris")["stable"]["requests"] == 200
        assert router.running.stop() == 0
        lines = router.running.output().splitlines()
    assert len(lines) < 10, lines
