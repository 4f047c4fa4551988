"""The metrics provider seam (Flagger's ``RunQuery``), and what every provider shares.

Implementations: :mod:`gate.providers.scrape` (the predictors' ``/metrics``, no
Prometheus needed) and :mod:`gate.providers.prometheus` (PromQL). Both select predictors
by model name and version, so stable and canary are told apart by what they serve.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from gate.core.analysis import WindowMeasurement

REQUESTS = "irisgate_predictor_requests_total"
LATENCY_BUCKET = "irisgate_predictor_request_duration_seconds_bucket"
PREDICTIONS = "irisgate_predictor_predictions_total"
# The predictor counts requests marked so apart (label traffic="generated"): the gate's own.
TRAFFIC_HEADER = "x-irisgate-traffic"
GENERATED = "generated"


class MetricsUnavailable(Exception):
    """The metrics backend could not be read; the analysis outcome is ``error``."""


@dataclass(frozen=True)
class Targets:
    model: str
    stable_version: str
    canary_version: str
    stable_url: str = ""  # predictor base URLs, for the scrape provider
    canary_url: str = ""
    generated: bool = False  # the gate sends traffic of its own: measure it apart


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
