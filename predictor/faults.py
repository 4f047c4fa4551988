"""Fault injection, for rehearsing a rollback: off unless asked for, and loud when on."""

from __future__ import annotations

import asyncio
import logging
import random

from predictor.errors import PredictorError, Reason

logger = logging.getLogger(__name__)


class FaultInjector:
    """Fails a fraction of requests and/or delays every request.

    A failure surfaces as HTTP 500 / gRPC UNAVAILABLE (reason ``injected_fault``), the way
    a crashing model would, so the gate's error-rate check sees a real server error.
    """

    def __init__(
        self, error_rate: float = 0.0, latency_ms: float = 0.0, seed: int | None = None
    ) -> None:
        if not 0.0 <= error_rate <= 1.0:
            raise ValueError(f"fault error rate must be within [0, 1], got {error_rate}")
        if latency_ms < 0:
            raise ValueError(f"fault latency must be >= 0 ms, got {latency_ms}")
        self.error_rate = error_rate
        self.latency_s = latency_ms / 1000.0
        self._random = random.Random(seed)

    @property
    def enabled(self) -> bool:
        return self.error_rate > 0 or self.latency_s > 0

    def announce(self) -> None:
        if self.enabled:
            logger.warning(
                "FAULT INJECTION IS ON: %.1f%% of requests fail, %.0f ms added latency. "
                "Never run this in production.",
                self.error_rate * 100,
                self.latency_s * 1000,
            )

    async def apply(self) -> None:
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        if self.error_rate and self._random.random() < self.error_rate:
            raise PredictorError(Reason.INJECTED_FAULT, "injected fault (fault injection is on)")
