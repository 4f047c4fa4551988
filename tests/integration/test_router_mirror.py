"""The router's mirror between real processes on loopback: ``python -m gate.local.router``
with ``--events-url`` in front of a real predictor, posting to an event sink this module
runs (a small HTTP/1.1 server that records every POST; the load test's only reads them,
in a process of its own).

The events must be the ones KServe's InferenceService logger sends on a cluster
(kserve/kserve ``pkg/logger/worker.go``: ``CEInferenceRequest`` /
``CEInferenceResponse`` types, the ``Ce-Id`` header as the id, and the extension
attributes ``InferenceServiceAttr`` = ``inferenceservicename``, ``NamespaceAttr``,
``ComponentAttr``, ``EndpointAttr``, ``MetadataAttr`` and ``RecordedTimeAttr`` =
``recordedtime``; ``handler.go``: the request's content type for both events, the
response logged only for status 200), here in CloudEvents JSON batches."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import json
import math
import os
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import httptools
import httpx
import numpy as np
import psutil
import pytest
from scipy.stats import wilcoxon

from tests.helpers import (
    REPO_ROOT,
    Predictor,
    free_port,
    make_artifact,
    run_predictor,
    start_process,
    wait_until,
)
from tests.integration.test_router import AUTH, SETOSA, Router, run_router

pytestmark = pytest.mark.integration

EVENTS_TOKEN = "events-token-0123456789"
REQUEST_EVENT = "org.kubeflow.serving.inference.request"
RESPONSE_EVENT = "org.kubeflow.serving.inference.response"
V1 = "/v1/models/iris:predict"
V2 = "/v2/models/iris/infer"


# --- the event sink --------------------------------------------------------------------------


class _SinkConnection(asyncio.Protocol):
    def __init__(self, sink: EventSink) -> None:
        self.sink = sink
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.headers: dict[str, str] = {}
        self.body = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.sink.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.sink.connections.discard(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode().lower()] = value.decode()

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.sink.received(self.headers, bytes(self.body))
        self.headers, self.body = {}, bytearray()
        if self.sink.hang:
            return
        status = self.sink.status
        assert self.transport is not None
        self.transport.write(b"HTTP/1.1 %d X\r\ncontent-length: 0\r\n\r\n" % status)


class EventSink:
    """The gate's ingestion endpoint as far as the router can tell: an HTTP/1.1 server on
    loopback, in a thread of its own, that keeps every POST's headers and body and answers
    ``status``. ``down()`` closes it (connections refused) and ``up()`` opens it again."""

    def __init__(self) -> None:
        self.status = 200
        self.hang = False  # True: POSTs are read and never answered
        self.keep = True  # False: bodies are not kept (a load test's)
        self.posts: list[tuple[dict[str, str], bytes]] = []
        self.connections: set[_SinkConnection] = set()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1/events"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._lock = threading.Lock()

    def received(self, headers: dict[str, str], body: bytes) -> None:
        with self._lock:
            self.posts.append((headers, body if self.keep else b"[]"))

    def _call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)

    def up(self) -> None:
        async def listen() -> asyncio.Server:
            return await self._loop.create_server(
                lambda: _SinkConnection(self), "127.0.0.1", self.port
            )

        if not self._thread.is_alive():
            self._thread.start()
        self._server = self._call(listen())

    def down(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
                for connection in list(self.connections):
                    if connection.transport is not None:
                        connection.transport.abort()
                await self._server.wait_closed()
                self._server = None

        self._call(close())

    def stop(self) -> None:
        self.down()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def clear(self) -> None:
        with self._lock:
            self.posts.clear()

    def events(self) -> list[dict[str, Any]]:
        with self._lock:
            bodies = [body for _, body in self.posts]
        return [event for body in bodies for event in json.loads(body)]


# --- processes -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("router-mirror-logs")


@pytest.fixture(scope="module")
def sink() -> Iterator[EventSink]:
    running = EventSink()
    running.up()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory, logs: Path) -> Iterator[Predictor]:
    artifact = make_artifact(tmp_path_factory.mktemp("artifacts") / "iris-1")
    with run_predictor(artifact, logs) as running:
        yield running


def backend_of(predictor: Predictor) -> dict[str, str]:
    return {"http": predictor.url, "grpc": predictor.grpc_target}


@pytest.fixture(scope="module")
def router(predictor: Predictor, sink: EventSink, logs: Path) -> Iterator[Router]:
    with run_router(
        logs, "--events-url", sink.url, env={"ROUTER_EVENTS_TOKEN": EVENTS_TOKEN}
    ) as running:
        running.put("iris", {"stable": backend_of(predictor)})
        yield running


@pytest.fixture
def mirrored(predictor: Predictor, sink: EventSink, logs: Path) -> Iterator[Router]:
    """A router of its own (counters from zero), iris mirrored, and an empty sink."""
    with run_router(
        logs, "--events-url", sink.url, env={"ROUTER_EVENTS_TOKEN": EVENTS_TOKEN}
    ) as running:
        running.put("iris", {"stable": backend_of(predictor), "mirror": True})
        sink.clear()
        yield running


def mirror_stats(router: Router, model: str = "iris") -> dict[str, Any]:
    stats: dict[str, Any] = router.routes(model)["mirror_stats"]
    return stats


# --- a raw client ----------------------------------------------------------------------------


class _Answer:
    def __init__(self) -> None:
        self.complete = False
        self.parser = httptools.HttpResponseParser(self)

    def on_message_complete(self) -> None:
        self.complete = True


def raw_answer(url: str, request: bytes) -> bytes:
    """The bytes the router sends back for one raw request (on a new connection)."""
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        answer = _Answer()
        raw = bytearray()
        while not answer.complete:
            data = sock.recv(65536)
            if not data:
                break
            raw += data
            answer.parser.feed_data(data)
    return bytes(raw)


def post(path: str, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "host: router"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    lines.append(f"content-length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def date_of(raw: bytes) -> bytes:
    for line in raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"date:"):
            return line
    return b""


def body_of(raw: bytes) -> bytes:
    return raw.split(b"\r\n\r\n", 1)[1]


V1_BODY = json.dumps({"instances": [SETOSA]}).encode()
V2_BODY = json.dumps(
    {
        "id": "fixed",
        "inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP32", "data": SETOSA}],
    }
).encode()
JSON = {"content-type": "application/json"}


# --- the events ------------------------------------------------------------------------------


def parse_time(text: str) -> float:
    assert text.endswith("Z"), text
    return datetime.fromisoformat(text).timestamp()


def test_each_200_inference_exchange_becomes_the_two_kserve_events(
    mirrored: Router, predictor: Predictor, sink: EventSink
) -> None:
    """One request event and one response event per exchange answered 200, with KServe's
    field names (``pkg/logger/worker.go``) and the exact bytes that went each way."""
    router = mirrored
    exchanges = [
        (V1, V1_BODY, {**JSON, "ce-id": "ce-1", "x-request-id": "xr-ignored"}),
        (V2, V2_BODY, {**JSON, "x-request-id": "xr-2"}),
        (V1, V1_BODY, JSON),  # no id: the router makes one
        (V1, V1_BODY, {**JSON, "ce-id": "not ok!"}),  # replaced
    ]
    started = time.time()
    answers = [raw_answer(router.http_url, post(*exchange)) for exchange in exchanges]
    assert all(a.startswith(b"HTTP/1.1 200 ") for a in answers), answers
    # not mirrored: not inference, not 200 (a 400 from the predictor), not REST
    assert httpx.get(f"{router.http_url}/v2/models/iris").status_code == 200
    bad = httpx.post(f"{router.http_url}{V2}", json={"inputs": []})
    assert bad.status_code >= 400
    wait_until(lambda: mirror_stats(router)["sent"] == 4, 10, "events at the sink")
    headers, _ = sink.posts[0]
    assert headers["authorization"] == f"Bearer {EVENTS_TOKEN}"
    assert headers["content-type"] == "application/cloudevents-batch+json"
    events = sink.events()
    assert len(events) == 8
    by_id: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        by_id.setdefault(event["id"], []).append(event)
    ids = list(by_id)
    assert ids[:2] == ["ce-1", "xr-2"]
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids[2:]) and ids[2] != ids[3]
    for (_, body, _), answer, request_id in zip(exchanges, answers, ids, strict=True):
        request, response = by_id[request_id]
        assert request["type"] == REQUEST_EVENT and response["type"] == RESPONSE_EVENT
        assert base64.b64decode(request["data_base64"]) == body
        assert base64.b64decode(response["data_base64"]) == body_of(answer)
        for event in (request, response):
            assert event["specversion"] == "1.0"
            assert event["source"] == "irisgate-router"
            assert event["datacontenttype"] == "application/json"
            assert event["inferenceservicename"] == "iris"
            assert event["namespace"] == ""
            assert event["component"] == "predictor"
            assert event["endpoint"] == "default"
            assert event["metadata"] == "{}"
            assert started <= parse_time(event["recordedtime"]) <= time.time()
        assert started <= parse_time(request["time"]) <= parse_time(response["time"])
    stats = mirror_stats(router)
    assert stats["ids_replaced"] == 1
    assert stats["skipped"]["not_200"] == 1
    assert (stats["dropped"], stats["lost"], stats["failed_batches"]) == (0, 0, 0)


def test_the_canary_answers_as_endpoint_canary(
    mirrored: Router, predictor: Predictor, sink: EventSink
) -> None:
    # the same predictor as a second backend (its own gRPC target): the router cannot tell
    canary = {"http": predictor.url + "/", "grpc": f"localhost:{predictor.grpc_port}"}
    mirrored.put(
        "iris",
        {"stable": backend_of(predictor), "canary": canary, "canary_weight": 100, "mirror": True},
    )
    for _ in range(3):
        assert httpx.post(f"{mirrored.http_url}{V1}", content=V1_BODY).status_code == 200
    wait_until(lambda: len(sink.events()) == 6, 10, "events at the sink")
    assert {event["endpoint"] for event in sink.events()} == {"canary"}


def test_client_answers_are_byte_identical_with_mirror_on_and_off(
    router: Router, predictor: Predictor, sink: EventSink
) -> None:
    requests = [
        post(V1, V1_BODY, JSON),
        post(V2, V2_BODY, {**JSON, "ce-id": "c-1"}),
        post(
            V2, b'{"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1]}]}', JSON
        ),
        b"GET /v2/models/iris HTTP/1.1\r\nhost: router\r\n\r\n",
        # HTTP/1.0: the parsed path (the router adds connection: close)
        post(V1, V1_BODY, JSON).replace(b"HTTP/1.1", b"HTTP/1.0", 1),
    ]
    stable = backend_of(predictor)
    sink.clear()
    mirrored = 0  # answers with the mirror on that were inference and 200
    try:
        for request in requests:
            for _ in range(5):  # until both answers are dated the same second
                router.put("iris", {"stable": stable})
                off = raw_answer(router.http_url, request)
                router.put("iris", {"stable": stable, "mirror": True})
                on = raw_answer(router.http_url, request)
                if request.startswith(b"POST") and on.split(b" ", 2)[1] == b"200":
                    mirrored += 1
                if date_of(on) == date_of(off):
                    break
            assert date_of(on) and date_of(on) == date_of(off)
            assert on == off, (on, off)
    finally:
        router.put("iris", {"stable": stable})
    assert mirrored >= 3
    wait_until(lambda: len(sink.events()) == 2 * mirrored, 10, "the 200 inference answers")


def test_mirror_off_emits_nothing(router: Router, sink: EventSink) -> None:
    assert router.routes("iris")["mirror"] is False
    sink.clear()
    before = mirror_stats(router)
    for _ in range(20):
        assert httpx.post(f"{router.http_url}{V1}", content=V1_BODY).status_code == 200
    time.sleep(0.5)  # five times the flush delay
    assert sink.posts == []
    assert mirror_stats(router) == before


def test_a_failing_or_absent_gate_costs_clients_nothing(mirrored: Router, sink: EventSink) -> None:
    """Batches the gate refuses (500) or cannot take (down) are lost and counted, with one
    warning for the whole streak; the clients' answers do not change."""
    router = mirrored
    expected = httpx.post(f"{router.http_url}{V1}", content=V1_BODY).content
    wait_until(lambda: mirror_stats(router)["sent"] == 1, 10, "a first batch")

    def traffic(count: int) -> None:
        with httpx.Client(timeout=5) as client:
            for _ in range(count):
                answer = client.post(f"{router.http_url}{V1}", content=V1_BODY)
                assert (answer.status_code, answer.content) == (200, expected)

    try:
        sink.status = 500
        traffic(10)
        wait_until(lambda: mirror_stats(router)["failed_batches"] == 1, 10, "a refused batch")
        sink.down()
        traffic(10)  # queued while the router backs off (1 s), then sent into a closed port
        wait_until(lambda: mirror_stats(router)["lost"] == 20, 10, "batches not taken")
        stats = mirror_stats(router)
        assert stats["failed_batches"] >= 2 and stats["sent"] == 1 and stats["dropped"] == 0
        sink.status = 200
        sink.up()
        traffic(5)  # goes after the next back-off (2 s)
        wait_until(lambda: mirror_stats(router)["sent"] == 6, 10, "delivery again")
    finally:
        sink.status = 200
        if sink._server is None:
            sink.up()
    log = router.running.output()
    assert len(log.splitlines()) < 10, log  # a line per streak, none per batch
    assert log.count("dropping batches until it takes them again") == 1, log[-3000:]
    assert len(re.findall(r"takes events again \(\d+ batches, 20 records lost", log)) == 1


# --- the command line and the admin API ------------------------------------------------------


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("ROUTER_")}
    return subprocess.run(
        [sys.executable, "-m", "gate.local.router", "--http-port", str(free_port()), *args],
        env={**base, "ROUTER_ADMIN_TOKEN": "admin-token-0123456789", **(env or {})},
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "env", "problem"),
    [
        (
            ["--events-url", "ftp://gate/v1/events"],
            {"ROUTER_EVENTS_TOKEN": EVENTS_TOKEN},
            "http://",
        ),
        (
            ["--events-url", "http://u:p@gate/v1"],
            {"ROUTER_EVENTS_TOKEN": EVENTS_TOKEN},
            "credentials",
        ),
        (["--events-url", "http://gate/v1/events"], {}, "ROUTER_EVENTS_TOKEN must be set"),
        (["--events-url", "http://gate/v1/events"], {"ROUTER_EVENTS_TOKEN": "short"}, "16"),
    ],
)
def test_a_bad_events_url_or_token_exits_2(
    args: list[str], env: dict[str, str], problem: str
) -> None:
    done = run_cli(*args, env=env)
    assert done.returncode == 2, done.stderr
    assert problem in done.stderr


def test_help_documents_the_events_url_and_token() -> None:
    done = run_cli("--help")
    assert done.returncode == 0
    assert "--events-url" in done.stdout and "ROUTER_EVENTS_TOKEN" in done.stdout
    assert "gRPC is not mirrored" in done.stdout


def test_without_events_url_mirror_true_is_400(logs: Path, predictor: Predictor) -> None:
    with run_router(logs) as plain:
        response = httpx.put(
            f"{plain.admin_url}/router/routes/iris",
            json={"stable": backend_of(predictor), "mirror": True},
            headers=AUTH,
        )
        assert response.status_code == 400
        assert response.json() == {"error": "mirror: the router was started without --events-url"}
        described = plain.put("iris", {"stable": backend_of(predictor)})
        assert described["mirror"] is False and described["mirror_stats"] is None


def test_sigterm_sends_what_is_queued_and_exits_0(
    logs: Path, predictor: Predictor, sink: EventSink
) -> None:
    with run_router(
        logs, "--events-url", sink.url, env={"ROUTER_EVENTS_TOKEN": EVENTS_TOKEN}
    ) as running:
        running.put("iris", {"stable": backend_of(predictor), "mirror": True})
        sink.clear()
        with httpx.Client(timeout=5) as client:
            for _ in range(3):
                assert client.post(f"{running.http_url}{V1}", content=V1_BODY).status_code == 200
        started = time.monotonic()
        assert running.running.stop() == 0
        assert time.monotonic() - started < 2
        assert len(sink.events()) == 6
        assert "not sent at stop" not in running.running.output()


def test_at_sigterm_a_gate_that_does_not_answer_gets_2_s(
    logs: Path, predictor: Predictor, sink: EventSink
) -> None:
    with run_router(
        logs, "--events-url", sink.url, env={"ROUTER_EVENTS_TOKEN": EVENTS_TOKEN}
    ) as running:
        running.put("iris", {"stable": backend_of(predictor), "mirror": True})
        sink.clear()
        sink.hang = True
        try:
            with httpx.Client(timeout=5) as client:
                for _ in range(3):
                    answer = client.post(f"{running.http_url}{V1}", content=V1_BODY)
                    assert answer.status_code == 200
            wait_until(lambda: len(sink.posts) == 1, 5, "the POST the sink will not answer")
            started = time.monotonic()
            assert running.running.stop() == 0
            took = time.monotonic() - started
        finally:
            sink.hang = False
        assert 1.8 <= took < 5, took
        log = running.running.output()
        assert "mirror: 3 records not sent at stop" in log, log[-2000:]


# --- the cost on the request path ------------------------------------------------------------

CONCURRENCY = 16
WARMUP_PAIRS = 1  # not counted: the predictor's and the router's first seconds are slower
PAIRS = 10  # pairs of rounds (mirror on, mirror off) compared
MIN_PAIRS = 6  # fewer undisturbed pairs than this in LOAD_BUDGET_S: no verdict (skipped)
LOAD_BUDGET_S = 40.0
# A round during which processes other than this test's used this much CPU (in cores) is
# not compared, and neither is its pair: another process's bursts would otherwise decide.
MAX_FOREIGN_CORES = 0.25
# Requests per connection per round: 4,000 a round (~1.5 s), so that each round holds
# several of the stalls that make a p99 (the predictor's garbage collections, another
# process's time slice). Rounds with one stall or none would make a round's p99 a coin
# toss, and their median one too.
PER_CLIENT = 250
P99_ALLOWANCE = 1.10
# The verdict's level: a mirror whose true cost is exactly the allowance fails at most this
# often; see :func:`shows_more_than`.
ALPHA = 0.05

# The load test's gate: it reads each POST and answers 200 (nothing kept, nothing decoded),
# in a process of its own, so that neither its work nor the GIL it would hold lands on the
# load generator's side of the comparison.
QUIET_SINK = """
import asyncio, sys
import httptools

class Sink(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.parser = httptools.HttpRequestParser(self)

    def data_received(self, data):
        self.parser.feed_data(data)

    def on_message_complete(self):
        self.transport.write(b"HTTP/1.1 200 OK\\r\\ncontent-length: 0\\r\\n\\r\\n")

async def main():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Sink, "127.0.0.1", int(sys.argv[1]))
    await server.serve_forever()

asyncio.run(main())
"""


@contextlib.contextmanager
def quiet_sink(logs: Path) -> Iterator[tuple[str, int]]:
    """The sink's events URL and its process id (its CPU is this test's, not another's)."""
    port = free_port()
    running = start_process(["-c", QUIET_SINK, str(port)], logs / f"sink-{port}.log")

    def listening() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True

    try:
        wait_until(listening, 30, "event sink", running.process, running.log)
        yield f"http://127.0.0.1:{port}/v1/events", running.process.pid
    finally:
        running.stop()


async def _client(port: int, request: bytes, count: int, latencies: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for _ in range(count):
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            at = head.lower().index(b"content-length:") + len(b"content-length:")
            await reader.readexactly(int(head[at : head.index(b"\r\n", at)]))
            latencies.append(time.perf_counter() - started)
    finally:
        writer.close()


def load_round(url: str, request: bytes) -> list[float]:
    """CONCURRENCY keep-alive connections, PER_CLIENT requests each, one after another."""
    port = int(url.rsplit(":", 1)[1])
    latencies: list[float] = []

    async def clients() -> None:
        await asyncio.gather(
            *(_client(port, request, PER_CLIENT, latencies) for _ in range(CONCURRENCY))
        )

    gc.disable()  # the load generator's own collections are not the router's latency
    try:  # the router's loop, for the same reason: less of the client's time in the loop
        import uvloop

        uvloop.run(clients())
    except ImportError:
        asyncio.run(clients())
    finally:
        gc.enable()
    return latencies


def p99(latencies: list[float]) -> float:
    return statistics.quantiles(latencies, n=100, method="inclusive")[98]


class CpuMeter:
    """CPU seconds of this test's processes (and their children) and of the whole machine:
    what other processes took during a round is the difference."""

    def __init__(self, *pids: int) -> None:
        self.processes = [psutil.Process(pid) for pid in (os.getpid(), *pids)]

    def ours(self) -> float:
        total = 0.0
        for process in self.processes:
            for each in (process, *process.children(recursive=True)):
                with contextlib.suppress(psutil.Error):
                    times = each.cpu_times()
                    total += times.user + times.system
        return total

    @staticmethod
    def machine() -> float:
        times = psutil.cpu_times()
        return float(times.user + times.nice + times.system + getattr(times, "steal", 0.0))

    def foreign_cores(self, round_: Callable[[], list[float]]) -> tuple[list[float], float]:
        """Runs one round; (its latencies, the cores other processes used meanwhile)."""
        machine, ours, started = self.machine(), self.ours(), time.monotonic()
        latencies = round_()
        elapsed = time.monotonic() - started
        foreign = (self.machine() - machine) - (self.ours() - ours)
        return latencies, foreign / elapsed


def shows_more_than(allowance: float, ratios: Sequence[float]) -> float:
    """The p-value with which paired on/off ratios show the true ratio above ``allowance``
    (the test fails below ``ALPHA``): Wilcoxon's signed-rank test, one-sided, of the
    pairs' log ratios against ``log(allowance)`` (F. Wilcoxon, "Individual comparisons by
    ranking methods", Biometrics Bulletin 1945; exact null distribution for these few
    pairs, as scipy computes it; Hollander, Wolfe and Chicco, *Nonparametric Statistical
    Methods*, 3rd ed., section 3.1).

    Why a test and not the point estimate: on a shared 2-core machine one pair's p99
    ratio varies by +-15 % (CI's pairs: 0.92 to 1.43 in one run), so a median of 7 pairs
    put against 1.10 is a coin toss for any mirror near the line (CI: 1.105 and 1.107
    in two runs; 0.88-1.08 on a developer's machine). This rule fails a mirror costing
    exactly 10 % in at most ``ALPHA`` of runs and one costing 40 % almost always (both
    checked by simulation in ``test_the_p99_verdict_has_its_stated_error_rates``); a
    finer verdict needs more pairs than a CI run can spend. Log ratios, so that 0.8 and
    1.25 are as far from 1; signed ranks, so that one stalled round weighs as one pair."""
    shifted = [math.log(ratio / allowance) for ratio in ratios]
    return float(wilcoxon(shifted, alternative="greater", method="exact").pvalue)


def test_the_p99_verdict_has_its_stated_error_rates() -> None:
    """The verdict's error rates by simulation, for pair ratios spread as on CI (log
    ratios with a standard deviation of 0.15, and heavy-tailed ones: Student's t with 3
    degrees of freedom): a mirror at exactly the allowance fails at most ``ALPHA`` of
    runs (plus the simulation's own error), one at 1.4x fails at least 90 % of them."""
    rng = np.random.default_rng(20261203)
    runs, pairs = 1000, MIN_PAIRS + 2
    spreads = {
        "normal": rng.normal(0.0, 0.15, (runs, pairs)),
        "t3": 0.15 / math.sqrt(3) * rng.standard_t(3, (runs, pairs)),
    }
    for name, spread in spreads.items():
        for true_ratio, least, most in ((P99_ALLOWANCE, 0.0, ALPHA + 0.02), (1.4, 0.9, 1.0)):
            ratios = np.exp(math.log(true_ratio) + spread)
            failed = sum(shows_more_than(P99_ALLOWANCE, list(run)) < ALPHA for run in ratios)
            assert least <= failed / runs <= most, (name, true_ratio, failed / runs)


@pytest.mark.serial  # the pairs are rerun while other processes take CPU
def test_mirroring_adds_at_most_10_percent_to_p99(logs: Path, predictor: Predictor) -> None:
    """The same router and predictor, pairs of rounds with the mirror on and off, in ABBA
    order, compared pair by pair: each pair gives one p99 ratio (on / off), and the test
    fails when the pairs show the true ratio above 1.10 at the 5 % level
    (:func:`shows_more_than`). Both rounds of a pair run within ~3 s of each other, so a
    drift of the machine (a pair where both rounds are 25 % slower than the one before,
    as CI saw) falls on both sides of that pair's ratio; ranks keep a round some stall
    slowed from deciding. A pair during which other processes took CPU is run again: on
    a shared 2-core machine their bursts, not the mirror, would decide. With too few
    undisturbed pairs within the time budget there is no verdict (skipped, saying why)."""
    request = post(V2, V2_BODY, JSON)
    stable = backend_of(predictor)
    with (
        quiet_sink(logs) as (events_url, sink_pid),
        run_router(
            logs, "--events-url", events_url, env={"ROUTER_EVENTS_TOKEN": EVENTS_TOKEN}
        ) as running,
    ):
        meter = CpuMeter(running.running.process.pid, predictor.process.pid, sink_pid)
        pairs: list[dict[bool, float]] = []
        disturbed: list[float] = []
        mirrored_rounds = 0
        deadline = time.monotonic() + LOAD_BUDGET_S
        index = 0
        while len(pairs) < PAIRS and time.monotonic() < deadline:
            pair: dict[bool, float] = {}
            foreign = 0.0
            for mirror in (True, False) if index % 2 else (False, True):
                running.put("iris", {"stable": stable, "mirror": mirror})
                time.sleep(0.15)  # the last round's events go out before this one starts
                latencies, cores = meter.foreign_cores(
                    lambda: load_round(running.http_url, request)
                )
                mirrored_rounds += mirror
                pair[mirror] = p99(latencies)
                foreign = max(foreign, cores)
            index += 1
            if index <= WARMUP_PAIRS:
                continue
            if foreign > MAX_FOREIGN_CORES:
                disturbed.append(round(foreign, 2))
                continue
            pairs.append(pair)
        expected = PER_CLIENT * CONCURRENCY * mirrored_rounds
        wait_until(lambda: mirror_stats(running)["sent"] == expected, 5, "the last events")
        stats = mirror_stats(running)
    assert stats["dropped"] == stats["lost"] == 0
    shown = [f"{pair[True] * 1000:.2f}/{pair[False] * 1000:.2f}" for pair in pairs]
    if len(pairs) < MIN_PAIRS:
        pytest.skip(
            f"the machine was too busy to compare p99s to 10 %: other processes used "
            f"{disturbed} cores in {len(disturbed)} pairs, {len(pairs)} pairs undisturbed"
        )
    ratios = [pair[True] / pair[False] for pair in pairs]
    p_value = shows_more_than(P99_ALLOWANCE, ratios)
    summary = (
        f"p99 with the mirror {statistics.median(ratios):.3f}x without (median of "
        f"{len(pairs)} pairs), above {P99_ALLOWANCE}x with p = {p_value:.3f}; pairs (ms, "
        f"on/off) {shown}; disturbed pairs {disturbed}"
    )
    print(summary)
    assert p_value >= ALPHA, summary
