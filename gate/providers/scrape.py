"""``scrape``: reads each predictor's ``/metrics`` and subtracts a snapshot taken when
the window started (the embedded default: no Prometheus needed)."""

from __future__ import annotations

from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from gate.core.analysis import RoleWindow, WindowMeasurement
from gate.providers.base import (
    LATENCY_BUCKET,
    PREDICTIONS,
    REQUESTS,
    MetricsProvider,
    MetricsUnavailable,
    Targets,
)


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
        le: minus(v, base.get("buckets", {}).get(le, 0.0)) for le, v in current["buckets"].items()
    }
    return RoleWindow(
        requests=minus(current["requests"], base.get("requests", 0.0)),
        server_errors=minus(current["server_errors"], base.get("server_errors", 0.0)),
        latency_buckets=buckets,
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
