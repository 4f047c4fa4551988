"""Traffic the gate generates itself when live traffic is thin (Flagger's loadtester, built in).

Rows of the artifact's held-out set go to the canary and to stable alike (each row to
both, so the two answer the same inputs), one request per row over Open Inference
Protocol v2 REST, at a bounded rate, marked ``x-irisgate-traffic: generated``. The
predictors count marked requests apart (``traffic="generated"``), so the analysis judges
them apart from live ones and every decision says which evidence it rests on; the
rollout's ``generated_counts`` says whether a pass may rest on them.

A generator never bursts to catch up (a slow predictor lowers the rate, never raises
it), gives every request a short timeout and stops with its rollout's progressing phase.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence

import httpx

from gate.providers.base import GENERATED, TRAFFIC_HEADER
from gate.replay import infer_body
from gate.tasks import RolloutTasks

REQUEST_TIMEOUT_S = 2.0


class TrafficGenerator:
    """Sends ``rows`` round and round to every target, ``rate_per_s`` requests a second
    in all (split evenly between the targets)."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        targets: Sequence[str],
        model: str,
        rows: Sequence[Sequence[float]],
        rate_per_s: float,
    ) -> None:
        if not targets or not rows or rate_per_s <= 0:
            raise ValueError("a generator needs targets, rows and a positive rate")
        self.client = client
        self.urls = [f"{t.rstrip('/')}/v2/models/{model}/infer" for t in targets]
        self.rows = rows
        self.round_s = len(self.urls) / rate_per_s  # one row to every target per round
        self.sent = 0
        self.failed = 0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        for row in itertools.cycle(self.rows):
            for url in self.urls:
                await self._send(url, row)
            due = max(due + self.round_s, loop.time())  # late: no catching up in a burst
            await asyncio.sleep(due - loop.time())

    def describe(self) -> str:
        rate = len(self.urls) / self.round_s
        return f"{rate:.3g} requests/s to {', '.join(self.urls)}"

    def summary(self) -> str:
        return f"{self.sent} sent, {self.failed} failed"

    async def _send(self, url: str, row: Sequence[float]) -> None:
        body = infer_body([row])
        self.sent += 1
        try:
            response = await self.client.post(
                url, json=body, headers={TRAFFIC_HEADER: GENERATED}, timeout=REQUEST_TIMEOUT_S
            )
            if response.status_code >= 500:
                self.failed += 1
        except httpx.HTTPError:
            self.failed += 1  # the predictor counts what it answered; this is for the log


class Generators(RolloutTasks):
    """One generator task per rollout at most, started and stopped by the controller."""

    def __init__(self, client: httpx.AsyncClient | None = None) -> None:
        super().__init__("generated traffic")
        self.client = client or httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S)

    async def aclose(self) -> None:
        await self.stop_all()
        await self.client.aclose()
