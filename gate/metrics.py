"""Metric providers: where the canary and stable measurements come from.

``scrape`` reads the predictors' ``/metrics`` directly and subtracts a snapshot taken at
the start of the window (the embedded default: no Prometheus needed). ``prometheus`` asks
a Prometheus server with PromQL over the same window. Both select predictors by model
name and version, so stable and canary are told apart by what they serve.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from string import Template
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from gate.analysis import RoleWindow, WindowMeasurement

REQUESTS = "irisgate_predictor_requests_total"
LATENCY_BUCKET = "irisgate_predictor_request_duration_seconds_bucket"
PREDICTIONS = "irisgate_predictor_predictions_total"


class MetricsUnavailable(Exception):
    """The metrics backend could not be read; the analysis outcome is ``error``."""


@dataclass(frozen=True)
class Targets:
    model: str
    stable_version: str
    canary_version: str
    stable_url: str = ""  # predictor base URLs, for the scrape provider
    canary_url: str = ""


class MetricsProvider(ABC):
    name: str

    @abstractmethod
    async def snapshot(self, targets: Targets) -> dict[str, Any]:
        """State at the start of a window (whatever ``measure`` needs later)."""

    @abstractmethod
    async def measure(
        self, targets: Targets, baseline: dict[str, Any] | None, window_s: float
    ) -> WindowMeasurement:
        """Canary and stable over the window; raises MetricsUnavailable."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


def histogram_quantile(quantile: float, buckets: dict[float, float]) -> float | None:
    """Prometheus' histogram_quantile over cumulative bucket counts keyed by ``le``."""
    ordered = sorted(buckets.items())
    if not ordered or ordered[-1][1] <= 0:
        return None
    total = ordered[-1][1]
    rank = quantile * total
    previous_bound, previous_count = 0.0, 0.0
    for bound, count in ordered:
        if count >= rank:
            if math.isinf(bound):
                return previous_bound  # the highest finite bucket, as Prometheus does
            share = (
                (rank - previous_count) / (count - previous_count) if count > previous_count else 0
            )
            return previous_bound + (bound - previous_bound) * share
        previous_bound, previous_count = bound, count
    return previous_bound


# --- scrape --------------------------------------------------------------------------------


def parse_counters(text: str, model: str, version: str) -> dict[str, Any]:
    """The predictor series the analysis needs, summed over protocols."""
    requests = errors = 0.0
    buckets: dict[str, float] = {}
    classes: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if labels.get("model") != model or labels.get("version") != version:
                continue
            if sample.name == REQUESTS:
                requests += sample.value
                if labels.get("outcome") == "server_error":
                    errors += sample.value
            elif sample.name == LATENCY_BUCKET:
                buckets[labels["le"]] = buckets.get(labels["le"], 0.0) + sample.value
            elif sample.name == PREDICTIONS:
                name = labels["class_name"]
                classes[name] = classes.get(name, 0.0) + sample.value
    return {"requests": requests, "server_errors": errors, "buckets": buckets, "classes": classes}


def window_delta(current: dict[str, Any], baseline: dict[str, Any] | None) -> RoleWindow:
    """Counters now minus at window start; a restarted predictor (counters went down)
    counts from zero."""
    base = baseline or {}
    reset = current["requests"] < base.get("requests", 0.0)
    if reset:
        base = {}

    def minus(now: float, before: float) -> float:
        return max(0.0, now - before)

    buckets = {
        float(le): minus(v, base.get("buckets", {}).get(le, 0.0))
        for le, v in current["buckets"].items()
    }
    return RoleWindow(
        requests=minus(current["requests"], base.get("requests", 0.0)),
        server_errors=minus(current["server_errors"], base.get("server_errors", 0.0)),
        p99_s=histogram_quantile(0.99, buckets),
        class_counts={
            k: minus(v, base.get("classes", {}).get(k, 0.0)) for k, v in current["classes"].items()
        },
    )


class ScrapeProvider(MetricsProvider):
    name = "scrape"

    def __init__(self, timeout_s: float = 5.0) -> None:
        self._client = httpx.AsyncClient(timeout=timeout_s)

    async def _read(self, url: str, model: str, version: str) -> dict[str, Any]:
        try:
            response = await self._client.get(f"{url.rstrip('/')}/metrics")
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise MetricsUnavailable(f"cannot scrape {url}/metrics: {exc!r}") from exc
        return parse_counters(response.text, model, version)

    async def snapshot(self, targets: Targets) -> dict[str, Any]:
        return {
            "stable": await self._read(targets.stable_url, targets.model, targets.stable_version),
            "canary": await self._read(targets.canary_url, targets.model, targets.canary_version),
        }

    async def measure(
        self, targets: Targets, baseline: dict[str, Any] | None, window_s: float
    ) -> WindowMeasurement:
        now = await self.snapshot(targets)
        base = baseline or {}
        return WindowMeasurement(
            stable=window_delta(now["stable"], base.get("stable")),
            canary=window_delta(now["canary"], base.get("canary")),
            window_s=window_s,
        )

    async def aclose(self) -> None:
        await self._client.aclose()


# --- prometheus ----------------------------------------------------------------------------

DEFAULT_QUERIES: dict[str, str] = {
    "requests": f'sum(increase({REQUESTS}{{model="$model",version="$version"}}[$window]))',
    "server_errors": (
        f'sum(increase({REQUESTS}{{model="$model",version="$version",'
        f'outcome="server_error"}}[$window]))'
    ),
    "p99": (
        f"histogram_quantile(0.99, sum by (le) (rate({LATENCY_BUCKET}"
        f'{{model="$model",version="$version"}}[$window])))'
    ),
    "classes": (
        f"sum by (class_name) (increase({PREDICTIONS}"
        f'{{model="$model",version="$version"}}[$window]))'
    ),
}


class PrometheusProvider(MetricsProvider):
    """PromQL over Prometheus' HTTP API. Queries are templates with ``$model``,
    ``$version`` and ``$window`` (e.g. ``90s``) and may be overridden one by one."""

    name = "prometheus"

    def __init__(
        self, url: str, queries: dict[str, str] | None = None, timeout_s: float = 5.0
    ) -> None:
        unknown = set(queries or {}) - set(DEFAULT_QUERIES)
        if unknown:
            raise ValueError(f"unknown prometheus query names: {sorted(unknown)}")
        self.url = url.rstrip("/")
        self.queries = {**DEFAULT_QUERIES, **(queries or {})}
        self._client = httpx.AsyncClient(timeout=timeout_s)

    async def query(self, promql: str) -> list[dict[str, Any]]:
        try:
            response = await self._client.get(f"{self.url}/api/v1/query", params={"query": promql})
            response.raise_for_status()
            body = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise MetricsUnavailable(f"prometheus query failed: {exc!r}") from exc
        if body.get("status") != "success":
            raise MetricsUnavailable(f"prometheus error: {body.get('error', body)}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    async def _scalar(self, name: str, values: dict[str, str]) -> float | None:
        result = await self.query(Template(self.queries[name]).substitute(values))
        if not result:
            return None
        value = float(result[0]["value"][1])
        return None if math.isnan(value) else value

    async def _role(self, model: str, version: str, window: str) -> RoleWindow:
        values = {"model": model, "version": version, "window": window}
        classes = await self.query(Template(self.queries["classes"]).substitute(values))
        return RoleWindow(
            requests=await self._scalar("requests", values) or 0.0,
            server_errors=await self._scalar("server_errors", values) or 0.0,
            p99_s=await self._scalar("p99", values),
            class_counts={r["metric"].get("class_name", ""): float(r["value"][1]) for r in classes},
        )

    async def snapshot(self, targets: Targets) -> dict[str, Any]:
        return {}  # Prometheus keeps the history; the window is given as a range

    async def measure(
        self, targets: Targets, baseline: dict[str, Any] | None, window_s: float
    ) -> WindowMeasurement:
        window = f"{max(1, round(window_s))}s"
        return WindowMeasurement(
            stable=await self._role(targets.model, targets.stable_version, window),
            canary=await self._role(targets.model, targets.canary_version, window),
            window_s=window_s,
        )

    async def aclose(self) -> None:
        await self._client.aclose()


def make_provider(
    name: str, prometheus_url: str = "", queries: dict[str, str] | None = None
) -> MetricsProvider:
    """Fails fast on an unknown name: a typo must not fall back to a default."""
    if name == "scrape":
        return ScrapeProvider()
    if name == "prometheus":
        if not prometheus_url:
            raise ValueError("the prometheus provider needs GATE_PROMETHEUS_URL")
        return PrometheusProvider(prometheus_url, queries)
    raise ValueError(f"unknown metrics provider {name!r}; choose scrape or prometheus")
