"""locust users for KServe v1 REST, Open Inference Protocol v2 REST and v2 gRPC.

Headless: ``python -m load_tests`` (SLO checks, reports). Web UI:
``locust -f load_tests/locustfile.py --host http://127.0.0.1:8080``.
Extra options: ``--model-name``, ``--batch-size``, ``--invalid-share`` (fraction of
deliberately bad requests, which count as successes only when the server rejects them
with 400 / INVALID_ARGUMENT) and ``--grpc-target`` (host:port for the gRPC user).

``--traffic labelled`` sends rows of the Iris data as today's clients measure them
(:mod:`load_tests.pool`: jittered, petal width drifted) instead of uniform random rows;
with ``--labels-url <gate>/v1/feedback`` (token in ``IRISGATE_LABELS_TOKEN``) a background
greenlet posts the true labels of ``--labels-share`` of the REST requests answered 200,
``--labels-delay-s`` later (:mod:`load_tests.labels`). Every REST request carries a unique
``x-request-id``, the key a label is joined on.
"""

from __future__ import annotations

import logging
import random
import sys
import time
import uuid
from pathlib import Path
from typing import Any, NoReturn

import gevent
import grpc
import grpc.experimental.gevent as grpc_gevent
import requests
from locust import HttpUser, User, constant, constant_throughput, events, task
from locust.env import Environment
from locust.runners import MasterRunner

from load_tests.failures import failure_message
from load_tests.labels import TOKEN_ENV, LabelPoster, LabelQueue, http_sender
from load_tests.oip import grpc_predict_v2_pb2_grpc as pb_grpc
from load_tests.payloads import (
    grpc_request,
    invalid_grpc_request,
    invalid_rows,
    random_rows,
    v1_body,
    v2_body,
)
from load_tests.pool import DriftedIris

grpc_gevent.init_gevent()  # gRPC's own threads would block gevent's loop otherwise
# Imports above can take a while; refresh the loop's clock so --run-time counts from now.
gevent.get_hub().loop.update_now()

INVALID_NAME = "invalid input (expects rejection)"
FLUSH_EVERY_S = 1.0  # the label poster's pace: at most one POST a second (or per 1,000)

# Built once per process by the init listener from the options, read by the users.
_pool: DriftedIris | None = None
_labels: LabelPoster | None = None


@events.init_command_line_parser.add_listener  # type: ignore[untyped-decorator]
def _options(parser: Any) -> None:
    parser.add_argument("--model-name", default="iris", help="model to call")
    parser.add_argument("--batch-size", type=int, default=1, help="rows per request")
    parser.add_argument(
        "--invalid-share",
        type=float,
        default=0.02,
        help="fraction of deliberately invalid requests",
    )
    parser.add_argument(
        "--grpc-target",
        default="",
        help="host:port of the gRPC server (default: --host's host:8081)",
    )
    parser.add_argument(
        "--rps-per-user",
        type=float,
        default=0.0,
        help="pace each user to this many requests/s (default: no pause)",
    )
    parser.add_argument(
        "--traffic",
        choices=["uniform", "labelled"],
        default="uniform",
        help="uniform: random rows in the features' ranges (no labels); labelled: Iris "
        "flowers jittered, petal width drifted +0.15 cm, each with its species",
    )
    parser.add_argument(
        "--labels-url",
        default="",
        help="post true labels to this URL (the gate's /v1/feedback); needs "
        f"--traffic labelled and the token in {TOKEN_ENV}",
    )
    parser.add_argument(
        "--labels-token",
        default="",
        env_var=TOKEN_ENV,
        is_secret=True,
        help=f"bearer token for --labels-url; prefer the environment variable {TOKEN_ENV}",
    )
    parser.add_argument(
        "--labels-share",
        type=float,
        default=0.5,
        help="share of REST requests answered 200 whose labels are posted (default 0.5)",
    )
    parser.add_argument(
        "--labels-delay-s",
        type=float,
        default=5.0,
        help="seconds between the answer and its label's POST (default 5)",
    )
    parser.add_argument(
        "--labels-report",
        default="",
        help="write the label poster's counters here as JSON (each second and at exit)",
    )


@events.init.add_listener  # type: ignore[untyped-decorator]
def _labelled_traffic(environment: Environment, **kwargs: Any) -> None:
    """The pool and the label poster, once per process; a bad combination exits 2."""
    global _pool, _labels
    options = environment.parsed_options
    if options is None or isinstance(environment.runner, MasterRunner):
        return  # the master sends no requests
    if options.traffic == "labelled":
        _pool = DriftedIris.from_iris()
    if not options.labels_url:
        gevent.get_hub().loop.update_now()  # loading the pool took a moment
        return
    if _pool is None:
        _exit("--labels-url needs --traffic labelled (uniform rows have no labels)")
    if not options.labels_url.startswith(("http://", "https://")):
        _exit(f"--labels-url must be an http(s) URL, got {options.labels_url!r}")
    if not options.labels_token:
        _exit(f"--labels-url needs a token: set {TOKEN_ENV}")
    try:
        queue = LabelQueue(options.labels_share, options.labels_delay_s, random.Random())
    except ValueError as exc:
        _exit(f"labels: {exc}")
    send = http_sender(
        requests.Session(), options.labels_url, options.labels_token, options.model_name
    )
    report = Path(options.labels_report) if options.labels_report else None
    _labels = LabelPoster(queue, send, report)
    gevent.spawn(_post_labels, _labels)
    gevent.get_hub().loop.update_now()


def _exit(problem: str) -> NoReturn:
    logging.error(problem)
    sys.exit(2)


def _post_labels(poster: LabelPoster) -> None:
    while True:
        gevent.sleep(FLUSH_EVERY_S)
        poster.flush(time.monotonic())


@events.quitting.add_listener  # type: ignore[untyped-decorator]
def _report_labels(environment: Environment, **kwargs: Any) -> None:
    if _labels is not None:
        _labels.flush(time.monotonic())  # what is due; the rest is reported as pending
        logging.info(_labels.counters.summary())


def _settings(environment: Environment) -> tuple[str, int, float]:
    options = environment.parsed_options
    if options is None:
        return "iris", 1, 0.02
    return options.model_name, max(1, options.batch_size), options.invalid_share


def _rows(rng: random.Random, batch: int) -> tuple[list[list[float]], list[int] | None]:
    """The next request's rows, and their labels when the traffic is labelled."""
    if _pool is None:
        return random_rows(rng, batch), None
    drawn = _pool.sample(rng, batch)
    return drawn.rows, drawn.labels


def _pacer(environment: Environment) -> Any:
    """locust's constant_throughput when --rps-per-user is given, else no pause."""
    rate = getattr(environment.parsed_options, "rps_per_user", 0.0) or 0.0
    return constant_throughput(rate) if rate > 0 else constant(0)


class _RestUser(HttpUser):
    abstract = True
    path = ""

    def on_start(self) -> None:
        self.model, self.batch, self.invalid_share = _settings(self.environment)
        self.rng = random.Random()
        self.pacer = _pacer(self.environment)

    def wait_time(self) -> float:
        pause: float = self.pacer(self)
        return pause

    def body(self, rows: list[list[float]]) -> dict[str, Any]:
        raise NotImplementedError

    @task
    def predict(self) -> None:
        url = self.path.format(model=self.model)
        headers = {"x-request-id": uuid.uuid4().hex}  # the key delayed labels are joined on
        if self.rng.random() < self.invalid_share:
            with self.client.post(
                url,
                json=self.body(invalid_rows()),
                headers=headers,
                name=INVALID_NAME,
                catch_response=True,
            ) as response:
                if response.status_code == 400:
                    response.success()
                else:
                    got = failure_message(response.status_code, response.text, response.error)
                    response.failure(f"expected 400, got {got}")
            return
        rows, labels = _rows(self.rng, self.batch)
        with self.client.post(
            url, json=self.body(rows), headers=headers, catch_response=True
        ) as response:
            if response.status_code != 200:
                response.failure(
                    failure_message(response.status_code, response.text, response.error)
                )
            elif labels is not None and _labels is not None:
                _labels.offer(headers["x-request-id"], labels, time.monotonic())


class RestV1User(_RestUser):
    """KServe v1: POST /v1/models/<model>:predict {"instances": [...]}."""

    path = "/v1/models/{model}:predict"

    def body(self, rows: list[list[float]]) -> dict[str, Any]:
        return v1_body(rows)


class RestV2User(_RestUser):
    """Open Inference Protocol v2 over REST: POST /v2/models/<model>/infer."""

    path = "/v2/models/{model}/infer"

    def body(self, rows: list[list[float]]) -> dict[str, Any]:
        return v2_body(rows)


class GrpcV2User(User):
    """Open Inference Protocol v2 over gRPC, timed and reported like HTTP requests."""

    def on_start(self) -> None:
        self.model, self.batch, self.invalid_share = _settings(self.environment)
        self.rng = random.Random()
        self.pacer = _pacer(self.environment)
        options = self.environment.parsed_options
        target = getattr(options, "grpc_target", "") or ""
        if not target:
            host = (self.host or "127.0.0.1:8081").split("://")[-1].rstrip("/")
            target = host if ":" in host else f"{host}:8081"
        self.channel = grpc.insecure_channel(target)
        self.stub = pb_grpc.GRPCInferenceServiceStub(self.channel)  # type: ignore[no-untyped-call]

    def wait_time(self) -> float:
        pause: float = self.pacer(self)
        return pause

    def on_stop(self) -> None:
        self.channel.close()

    def _call(self, request: Any, name: str, expect: grpc.StatusCode) -> None:
        start = time.perf_counter()
        exception: Exception | None = None
        length = 0
        try:
            reply = self.stub.ModelInfer(request, timeout=30)
            length = reply.ByteSize()
            if expect is not grpc.StatusCode.OK:
                exception = RuntimeError(f"expected {expect.name}, got OK")
        except grpc.RpcError as error:
            code = error.code()
            if code is not expect:
                exception = RuntimeError(f"{code.name}: {error.details()}")
        self.environment.events.request.fire(
            request_type="grpc",
            name=name,
            response_time=(time.perf_counter() - start) * 1000,
            response_length=length,
            exception=exception,
            context={},
        )

    @task
    def infer(self) -> None:
        if self.rng.random() < self.invalid_share:
            self._call(
                invalid_grpc_request(self.model), INVALID_NAME, grpc.StatusCode.INVALID_ARGUMENT
            )
            return
        self._call(
            grpc_request(self.model, _rows(self.rng, self.batch)[0]),
            "ModelInfer",
            grpc.StatusCode.OK,
        )
