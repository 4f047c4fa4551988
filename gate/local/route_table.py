"""The router's route table: per model, which backends serve it, at what canary weight,
and whether its REST inference is mirrored to the gate.

Bookkeeping plus the connection pools each backend needs (REST:
:class:`gate.local.upstream.HttpPool`, gRPC: :class:`gate.local.grpc_proxy.GrpcPool`); no
servers here. The table is an immutable mapping replaced in one assignment, so a change
never disturbs a request in flight: it keeps the backend it started with (and mirrors or
not as its table said when it began). A backend that leaves the table has its connections
closed only after a grace period; turning the mirror on or off reopens nothing. Which
model a request is for is read by :mod:`gate.local.names` (re-exported here).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    field_validator,
    model_validator,
)

from gate.local.grpc_proxy import GrpcPool
from gate.local.mirror import EventEmitter, ModelMirror
from gate.local.names import (  # re-exported: the router's modules and tests read them here
    MODEL_NAME,
    MalformedMessage,
    grpc_model_name,
    rest_target,
    shown,
)
from gate.local.upstream import HttpPool

__all__ = [
    "MODEL_NAME",
    "Backend",
    "BackendSpec",
    "MalformedMessage",
    "RouteTable",
    "Routes",
    "RoutesSpec",
    "check_http_url",
    "grpc_model_name",
    "rest_target",
    "shown",
]

logger = logging.getLogger("gate.local.router")

CLOSE_GRACE_S = 30.0
MAX_PROCESSES = 64  # per-process gRPC targets of one backend (the predictor's --workers cap)
NO_EVENTS_URL = "the router was started without --events-url"


def check_http_url(value: str) -> str:
    """An http(s) URL with a host and nothing a client could smuggle in (raises
    ValueError): a backend's base URL, the gate's events URL."""
    if not value.isascii() or not value.isprintable() or " " in value:
        raise ValueError("must be printable ASCII without spaces")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// base URL with a host")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError("must not carry a query, fragment or credentials")
    return value


def check_host_port(value: str) -> str:
    """``host:port`` with a port in 1..65535 and nothing a URL could smuggle in (raises
    ValueError)."""
    host, _, port = value.rpartition(":")
    if not host or re.search(r"[\s/@]", host) or not port.isdigit():
        raise ValueError("must be host:port")
    if not 0 < int(port) < 65536:
        raise ValueError("port must be within 1..65535")
    return value


HostPort = Annotated[str, Field(max_length=300), AfterValidator(check_host_port)]


class BackendSpec(BaseModel):
    """Where one predictor answers."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    http: str = Field(max_length=2048, description="base URL, e.g. http://127.0.0.1:8080")
    grpc: HostPort = Field(description="host:port of the gRPC server")
    grpc_processes: tuple[HostPort, ...] = Field(
        (),
        max_length=MAX_PROCESSES,
        description="host:port of each of the gRPC server's processes, one port each "
        "(the predictor's --grpc_process_ports); given, the router multiplexes every "
        "client's calls over two connections to each process instead of opening one "
        "connection per client",
    )

    @field_validator("http")
    @classmethod
    def _http_base_url(cls, value: str) -> str:
        return check_http_url(value).rstrip("/")

    @field_validator("grpc_processes")
    @classmethod
    def _distinct(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise ValueError("must not repeat a target")
        return value


class RoutesSpec(BaseModel):
    """One model's wanted routes: the body of ``PUT /router/routes/{model}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    stable: BackendSpec | None = None
    canary: BackendSpec | None = None
    canary_weight: StrictInt = Field(0, ge=0, le=100)
    mirror: StrictBool = Field(
        False,
        description="send each REST inference exchange answered 200 to the gate's events "
        "URL (KServe InferenceService-logger events); needs the router's --events-url",
    )

    @model_validator(mode="after")
    def _consistent(self) -> RoutesSpec:
        if self.canary is None and self.canary_weight:
            raise ValueError("canary_weight > 0 needs a canary backend")
        if self.stable is None and self.canary is not None and self.canary_weight < 100:
            raise ValueError("without a stable backend the canary weight must be 100")
        return self


@dataclass(eq=False)
class Backend:
    """One predictor with its clients and its counters (for this router's lifetime)."""

    spec: BackendSpec
    model: str
    http: HttpPool
    grpc: GrpcPool
    requests: int = 0
    errors: int = 0
    stable_retries: int = 0  # canary requests that could not connect and went to stable
    reachable: bool = True  # only to log a change once, never per request

    @classmethod
    def open(cls, spec: BackendSpec, model: str) -> Backend:
        return cls(spec, model, HttpPool(spec.http), GrpcPool(spec.grpc, spec.grpc_processes))

    def mark(self, reachable: bool, role: str) -> None:
        if reachable != self.reachable:
            self.reachable = reachable
            where = f"{role} of {self.model} ({self.spec.http}, {self.spec.grpc})"
            if reachable:
                logger.info("%s is reachable again", where)
            else:
                logger.warning("%s cannot be reached", where)

    def close(self) -> None:
        self.http.close()
        self.grpc.close()

    def describe(self, role: str) -> dict[str, Any]:
        out: dict[str, Any] = {
            **self.spec.model_dump(),
            "requests": self.requests,
            "errors": self.errors,
        }
        if role == "canary":
            out["stable_retries"] = self.stable_retries
        return out


@dataclass(frozen=True)
class RouteTable:
    """One model's backends and split; never changed, only replaced."""

    stable: Backend | None = None
    canary: Backend | None = None
    canary_weight: int = 0
    mirror: bool = False
    tap: ModelMirror | None = None  # the model's mirror (its counters even while off)
    _random: random.Random = field(default_factory=random.Random, compare=False)

    def pick(self, inference: bool) -> tuple[str, Backend | None]:
        """Inference calls go to the canary with its weight; everything else to stable
        (to the canary when there is no stable, which the rules allow only at 100 %)."""
        if self.canary is not None and (
            self.stable is None
            or (
                inference
                and self.canary_weight > 0
                and self._random.random() * 100 < self.canary_weight
            )
        ):
            return "canary", self.canary
        return "stable", self.stable

    def fallback(self, role: str) -> Backend | None:
        """Where a canary request that could not connect goes instead, if anywhere."""
        if role == "canary" and self.stable is not None and self.stable is not self.canary:
            return self.stable
        return None

    def after_no_answer(
        self, backend: Backend, role: str, *, unsent: bool, replayable: bool
    ) -> tuple[Backend, str] | None:
        """Where a request that got no answer head goes next, both proxies' one rule, with
        its bookkeeping. ``unsent``: it never reached the backend (a pooled connection the
        backend had just closed, a stream its GOAWAY refused): the same backend again.
        Otherwise the backend is counted unreachable with an error and a canary request
        goes to stable once. Only a request whose bytes were kept (``replayable``) can go
        anywhere; None: the client gets an error."""
        if unsent and replayable:
            return backend, role
        backend.errors += 1
        backend.mark(False, role)
        fallback = self.fallback(role)
        if fallback is not None and replayable:
            backend.stable_retries += 1
            return fallback, "stable"
        return None

    def backends(self) -> tuple[Backend, ...]:
        return tuple(b for b in (self.stable, self.canary) if b is not None)

    def describe(self) -> dict[str, Any]:
        return {
            "stable": self.stable.describe("stable") if self.stable else None,
            "canary": self.canary.describe("canary") if self.canary else None,
            "canary_weight": self.canary_weight,
            "mirror": self.mirror,
            "mirror_stats": self.tap.describe() if self.tap is not None else None,
        }


class Routes:
    """model -> RouteTable, replaced as a whole on every change. ``emitter``: where
    mirrored exchanges go (None: the router has no --events-url, no model may mirror)."""

    def __init__(self, emitter: EventEmitter | None = None) -> None:
        self.emitter = emitter
        self.tables: Mapping[str, RouteTable] = MappingProxyType({})
        self._pending_close: set[asyncio.Task[None]] = set()

    def get(self, model: str) -> RouteTable | None:
        return self.tables.get(model)

    def first(self) -> RouteTable | None:
        """The first model configured: it answers calls that name no model
        (``/v2/health/ready``, ``ServerLive`` ...)."""
        return next(iter(self.tables.values()), None)

    def apply(self, model: str, spec: RoutesSpec) -> RouteTable:
        """Replace one model's routes; backends already open are kept with their counters.
        Needs a running event loop (old backends are closed later on it)."""
        if not MODEL_NAME.match(model):
            raise ValueError(f"model name must match {MODEL_NAME.pattern}")
        if spec.mirror and self.emitter is None:
            raise ValueError(f"mirror: {NO_EVENTS_URL}")
        old = self.tables.get(model, RouteTable())

        def reuse(wanted: BackendSpec | None) -> Backend | None:
            if wanted is None:
                return None
            for backend in old.backends():
                if backend.spec == wanted:
                    return backend
            return Backend.open(wanted, model)

        table = RouteTable(
            reuse(spec.stable),
            reuse(spec.canary),
            spec.canary_weight,
            mirror=spec.mirror,
            tap=self.emitter.model(model) if self.emitter is not None else None,
        )
        self.tables = MappingProxyType({**self.tables, model: table})
        kept = {id(b) for b in table.backends()}
        for backend in old.backends():
            if id(backend) not in kept:
                backend.grpc.unrouted()
                task = asyncio.get_running_loop().create_task(self._close_later(backend))
                self._pending_close.add(task)
                task.add_done_callback(self._pending_close.discard)
        logger.info("routes of %s: %s", model, json.dumps(table.describe()))
        return table

    def describe(self) -> dict[str, Any]:
        described: dict[str, Any] = {
            "models": {model: table.describe() for model, table in self.tables.items()}
        }
        if self.emitter is not None:
            described["mirror"] = self.emitter.describe()
        return described

    async def _close_later(self, backend: Backend) -> None:
        await asyncio.sleep(CLOSE_GRACE_S)  # requests in flight finish on the old backend
        backend.close()

    async def aclose(self) -> None:
        """At shutdown: every backend, including those waiting out their grace period."""
        for task in list(self._pending_close):
            task.cancel()
        current = {id(b): b for t in self.tables.values() for b in t.backends()}
        for backend in current.values():
            backend.close()
