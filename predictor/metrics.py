"""Prometheus metrics the gate reads. Names are part of the public contract (README).

Every series carries ``model``, ``version`` and ``role`` (stable|canary) so the gate can
compare the two predictors in the same window even when both are scraped by one
Prometheus. Requests, latency and predicted classes also carry ``traffic``: ``generated``
for the requests the gate itself sends (``x-irisgate-traffic: generated``, a header or
gRPC metadata), ``live`` for every other, so the gate keeps the two kinds of evidence
apart.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from contextvars import ContextVar, Token
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.multiprocess import MultiProcessCollector

from predictor.processes import METRICS_ENV

TRAFFIC_HEADER = "x-irisgate-traffic"
LIVE = "live"
GENERATED = "generated"
GENERATED_BYTES = GENERATED.encode()
# Which kind of request the current task serves; set around a request by the REST
# middleware and the gRPC handler, read where its metrics are counted.
_traffic: ContextVar[str] = ContextVar("irisgate_traffic", default=LIVE)


def mark_traffic(value: str | bytes | None) -> Token[str] | None:
    """Mark the current request ``generated`` when its header says so; give the token to
    :func:`unmark_traffic` once its metrics are counted. Live requests cost nothing."""
    if value in (GENERATED, GENERATED_BYTES):
        return _traffic.set(GENERATED)
    return None


def unmark_traffic(token: Token[str] | None) -> None:
    if token is not None:
        _traffic.reset(token)


REQUESTS = "irisgate_predictor_requests_total"
LATENCY = "irisgate_predictor_request_duration_seconds"
ERRORS = "irisgate_predictor_errors_total"
PREDICTIONS = "irisgate_predictor_predictions_total"
INFO = "irisgate_predictor_model_info"
BATCH_ROWS = "irisgate_predictor_batch_rows"
BATCH_REQUESTS = "irisgate_predictor_batch_requests"
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

# Buckets sized for a model that answers in about a millisecond: the gate's p99 checks
# need resolution between 1 ms and 1 s.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.004,
    0.006,
    0.008,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.15,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)


_REST_CODES = (
    ("200", "success"),
    ("400", "client_error"),
    ("404", "client_error"),
    ("413", "client_error"),
    ("500", "server_error"),
    ("503", "server_error"),
)
_GRPC_CODES = (
    ("OK", "success"),
    ("INVALID_ARGUMENT", "client_error"),
    ("NOT_FOUND", "client_error"),
    ("RESOURCE_EXHAUSTED", "client_error"),
    ("UNAVAILABLE", "server_error"),
    ("INTERNAL", "server_error"),
)
INITIAL_CODES = {"rest-v1": _REST_CODES, "rest-v2": _REST_CODES, "grpc": _GRPC_CODES}
INITIAL_REASONS = ("injected_fault", "internal")


class _Collectors:
    """The collectors themselves; label values live in PredictorMetrics."""

    def __init__(self, registry: CollectorRegistry) -> None:
        base = ("model", "version", "role")
        self.requests = Counter(
            REQUESTS,
            "Inference requests by protocol, status code and outcome.",
            [*base, "protocol", "code", "outcome", "traffic"],
            registry=registry,
        )
        self.latency = Histogram(
            LATENCY,
            "Inference request latency in seconds, as the server saw it.",
            [*base, "protocol", "traffic"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.errors = Counter(
            ERRORS,
            "Failed inference requests by protocol and reason.",
            [*base, "protocol", "reason"],
            registry=registry,
        )
        self.predictions = Counter(
            PREDICTIONS,
            "Predicted rows by class (for the gate's class-shift check).",
            [*base, "class_name", "traffic"],
            registry=registry,
        )
        self.batch_rows = Histogram(
            BATCH_ROWS,
            "Rows per model call (adaptive batching).",
            list(base),
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.batch_requests = Histogram(
            BATCH_REQUESTS,
            "Requests coalesced into one model call.",
            list(base),
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.info = Gauge(
            INFO,
            "Always 1; labels describe the served artifact.",
            [*base, "sha256"],
            registry=registry,
            multiprocess_mode="max",  # one series for all server processes, not one per pid
        )


class PredictorMetrics:
    """The predictor's own series, registered on an injected registry (the default one
    when serving; each test its own)."""

    def __init__(
        self,
        model: str,
        version: str,
        role: str,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.model, self.version, self.role = model, version, role
        shared = _Collectors(registry if registry is not None else REGISTRY)
        self.requests = shared.requests
        self.latency = shared.latency
        self.errors = shared.errors
        self.predictions = shared.predictions
        self.batch_rows = shared.batch_rows
        self.batch_requests = shared.batch_requests
        self.info = shared.info
        self._request_series: dict[tuple[str, str, str, str], tuple[Any, Any]] = {}
        self._batch_series: tuple[Any, Any] | None = None
        self._class_series: dict[tuple[str, str], Any] = {}

    def _labels(self) -> dict[str, str]:
        return {"model": self.model, "version": self.version, "role": self.role}

    def set_info(self, sha256: str) -> None:
        self.info.labels(**self._labels(), sha256=sha256).set(1)

    def initialize(self, class_names: Iterable[str]) -> None:
        """Create the usual series at zero before the first request.

        Prometheus' ``increase()`` cannot see the first jump of a series born inside its
        range, so a canary's first errors would go uncounted; zeroed series avoid that.
        """
        labels = self._labels()
        names = list(class_names)
        for protocol, outcomes in INITIAL_CODES.items():
            for kind in (LIVE, GENERATED):
                self.latency.labels(**labels, protocol=protocol, traffic=kind)
                for code, outcome in outcomes:
                    self.requests.labels(
                        **labels, protocol=protocol, code=code, outcome=outcome, traffic=kind
                    )
            for reason in INITIAL_REASONS:
                self.errors.labels(**labels, protocol=protocol, reason=reason)
        for name in names:
            for kind in (LIVE, GENERATED):
                self.predictions.labels(**labels, class_name=name, traffic=kind)

    # Resolving label values is most of a metric update's cost, so each series is looked up
    # once and kept (a handful of series; the dicts stay small).

    def observe_request(self, protocol: str, code: str, outcome: str, seconds: float) -> None:
        kind = _traffic.get()
        key = (protocol, code, outcome, kind)
        series = self._request_series.get(key)
        if series is None:
            labels = self._labels()
            series = (
                self.requests.labels(
                    **labels, protocol=protocol, code=code, outcome=outcome, traffic=kind
                ),
                self.latency.labels(**labels, protocol=protocol, traffic=kind),
            )
            self._request_series[key] = series
        series[0].inc()
        series[1].observe(seconds)

    def observe_batch(self, requests: int, rows: int) -> None:
        if self._batch_series is None:
            labels = self._labels()
            self._batch_series = (
                self.batch_requests.labels(**labels),
                self.batch_rows.labels(**labels),
            )
        self._batch_series[0].observe(requests)
        self._batch_series[1].observe(rows)

    def count_error(self, protocol: str, reason: str) -> None:
        self.errors.labels(**self._labels(), protocol=protocol, reason=reason).inc()

    def count_predictions(self, class_names: Iterable[str], counts: Iterable[int]) -> None:
        kind = _traffic.get()
        for name, count in zip(class_names, counts, strict=True):
            if count:
                series = self._class_series.get((name, kind))
                if series is None:
                    series = self.predictions.labels(
                        **self._labels(), class_name=name, traffic=kind
                    )
                    self._class_series[(name, kind)] = series
                series.inc(int(count))


def exposition_registry() -> CollectorRegistry:
    """What ``/metrics`` serves: this process's registry, or, when several server processes
    share the ports, every process's series merged from the multiprocess directory (so a
    scrape counts all requests whichever process answers it)."""
    if os.environ.get(METRICS_ENV):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return registry
    return REGISTRY
