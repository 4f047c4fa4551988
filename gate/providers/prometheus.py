"""``prometheus``: PromQL over Prometheus' HTTP API, over the same window for both roles."""

from __future__ import annotations

import math
from string import Template
from typing import Any

import httpx

from gate.core.analysis import RoleWindow, WindowMeasurement
from gate.providers.base import (
    LATENCY_BUCKET,
    PREDICTIONS,
    REQUESTS,
    MetricsProvider,
    MetricsUnavailable,
    Targets,
)

# live: every request not marked by the gate (series from before the label included)
MATCH = {"live": 'traffic!="generated"', "generated": 'traffic="generated"'}

SELECT = '{model="$model",version="$version",$traffic'
DEFAULT_QUERIES: dict[str, str] = {
    "requests": f"sum(increase({REQUESTS}{SELECT}}}[$window]))",
    "server_errors": f'sum(increase({REQUESTS}{SELECT},outcome="server_error"}}[$window]))',
    "latency_buckets": f"sum by (le) (increase({LATENCY_BUCKET}{SELECT}}}[$window]))",
    "classes": f"sum by (class_name) (increase({PREDICTIONS}{SELECT}}}[$window]))",
}


class PrometheusProvider(MetricsProvider):
    """PromQL over Prometheus' HTTP API. Queries are templates with ``$model``,
    ``$version``, ``$window`` (e.g. ``90s``) and ``$traffic`` (the label matcher that
    keeps live and gate-generated requests apart) and may be overridden one by one."""

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

    async def _role(self, model: str, version: str, window: str, kind: str) -> RoleWindow:
        values = {"model": model, "version": version, "window": window, "traffic": MATCH[kind]}
        classes = await self._vector("classes", "class_name", values)
        return RoleWindow(
            requests=await self._scalar("requests", values) or 0.0,
            server_errors=await self._scalar("server_errors", values) or 0.0,
            latency_buckets=await self._vector("latency_buckets", "le", values),
            class_counts=classes,
        )

    async def _vector(self, name: str, label: str, values: dict[str, str]) -> dict[str, float]:
        """A query's series by one label; NaN (no samples in the window) counts as 0."""
        result = await self.query(Template(self.queries[name]).substitute(values))
        vector: dict[str, float] = {}
        for row in result:
            value = float(row["value"][1])
            vector[row["metric"].get(label, "")] = 0.0 if math.isnan(value) else value
        return vector

    async def snapshot(self, targets: Targets) -> dict[str, Any]:
        return {}  # Prometheus keeps the history; the window is given as a range

    async def measure(
        self, targets: Targets, baseline: dict[str, Any] | None, window_s: float
    ) -> WindowMeasurement:
        window = f"{max(1, round(window_s))}s"

        async def measured(kind: str) -> WindowMeasurement:
            return WindowMeasurement(
                stable=await self._role(targets.model, targets.stable_version, window, kind),
                canary=await self._role(targets.model, targets.canary_version, window, kind),
                window_s=window_s,
            )

        live = await measured("live")
        if targets.generated:
            live.generated = await measured("generated")
        return live

    async def aclose(self) -> None:
        await self._client.aclose()
