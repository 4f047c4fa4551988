"""locust users for KServe v1 REST, Open Inference Protocol v2 REST and v2 gRPC.

Headless: ``python -m load_tests`` (SLO checks, reports). Web UI:
``locust -f load_tests/locustfile.py --host http://127.0.0.1:8080``.
Extra options: ``--model-name``, ``--batch-size``, ``--invalid-share`` (fraction of
deliberately bad requests, which count as successes only when the server rejects them
with 400 / INVALID_ARGUMENT) and ``--grpc-target`` (host:port for the gRPC user).
"""

from __future__ import annotations

import random
import time
from typing import Any

import gevent
import grpc
import grpc.experimental.gevent as grpc_gevent
from locust import HttpUser, User, constant, constant_throughput, events, task
from locust.env import Environment

from load_tests.oip import grpc_predict_v2_pb2_grpc as pb_grpc
from load_tests.payloads import (
    grpc_request,
    invalid_grpc_request,
    invalid_rows,
    random_rows,
    v1_body,
    v2_body,
)

grpc_gevent.init_gevent()  # gRPC's own threads would block gevent's loop otherwise
# Imports above can take a while; refresh the loop's clock so --run-time counts from now.
gevent.get_hub().loop.update_now()

INVALID_NAME = "invalid input (expects rejection)"


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


def _settings(environment: Environment) -> tuple[str, int, float]:
    options = environment.parsed_options
    if options is None:
        return "iris", 1, 0.02
    return options.model_name, max(1, options.batch_size), options.invalid_share


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
        if self.rng.random() < self.invalid_share:
            with self.client.post(
                url, json=self.body(invalid_rows()), name=INVALID_NAME, catch_response=True
            ) as response:
                if response.status_code == 400:
                    response.success()
                else:
                    response.failure(f"expected 400, got {response.status_code}")
            return
        with self.client.post(
            url, json=self.body(random_rows(self.rng, self.batch)), catch_response=True
        ) as response:
            if response.status_code != 200:
                response.failure(f"{response.status_code}: {response.text[:200]}")


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
            grpc_request(self.model, random_rows(self.rng, self.batch)),
            "ModelInfer",
            grpc.StatusCode.OK,
        )
