"""Webhook notifications (Slack-compatible JSON), delivered from the store's outbox.

Events are written in the same transaction as the state change that caused them, and a
separate loop delivers them with retries and backoff. Delivery is at-least-once; a
receiver that is down delays nothing but its own messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import httpx
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from gate.observability import GateMetrics
from gate.store import OutboxEvent, SQLiteStore

logger = logging.getLogger(__name__)

COLOURS = {
    "start": "#439FE0",
    "shadow": "#439FE0",
    "step": "#439FE0",
    "pause": "#daa038",
    "resume": "#439FE0",
    "promotion": "good",
    "watch": "good",
    "watch-failure": "danger",
    "rollback": "danger",
    "failure": "danger",
    "hold": "#daa038",
    "approval": "#439FE0",
}
TITLES = {
    "start": "rollout started",
    "shadow": "shadow evaluation on live requests",
    "step": "canary step",
    "pause": "rollout paused",
    "resume": "rollout resumed",
    "promotion": "candidate promoted",
    "watch": "post-promotion watch over: no accuracy drop shown",
    "watch-failure": "post-promotion watch: the new stable's accuracy is shown worse",
    "rollback": "rollout rolled back",
    "failure": "candidate failed before any user got its answer (accuracy gate or shadow)",
    "hold": "rollout waiting for a confirm hook (approval)",
    "approval": "rollout approved by user",
}


def slack_message(event: OutboxEvent) -> dict[str, Any]:
    """``text`` + ``attachments`` for Slack-compatible receivers; ``irisgate`` for machines."""
    data = event.payload
    title = TITLES.get(event.event, event.event)
    text = (
        f"[irisgate] {data['model']} v{data['candidate_version']}: {title} "
        f"(canary {data['canary_weight']}%) - {data['message']}"
    )
    fields = [
        {"title": k, "value": str(data[k]), "short": True}
        for k in ("rollout_id", "phase", "canary_weight", "stable_version")
        if k in data
    ]
    return {
        "text": text,
        "attachments": [
            {
                "color": COLOURS.get(event.event, "#439FE0"),
                "title": title,
                "text": data["message"],
                "fields": fields,
            }
        ],
        "irisgate": data,
    }


class WebhookNotifier:
    def __init__(
        self,
        urls: list[str],
        store: SQLiteStore,
        metrics: GateMetrics | None = None,
        timeout_s: float = 5.0,
        attempts_per_pass: int = 3,
        max_passes: int = 5,
        backoff_s: float = 0.5,
    ) -> None:
        self.urls = urls
        self.store = store
        self.metrics = metrics
        self.attempts_per_pass = attempts_per_pass
        self.max_passes = max_passes
        self.backoff_s = backoff_s
        self._client = httpx.AsyncClient(timeout=timeout_s)

    async def _post(self, url: str, body: dict[str, Any]) -> None:
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(self.attempts_per_pass),
            wait=wait_exponential(multiplier=self.backoff_s, max=10),
            retry=retry_if_exception_type(httpx.HTTPError),
            reraise=True,
        ):
            with attempt:
                response = await self._client.post(url, json=body)
                response.raise_for_status()

    async def deliver_pending(self) -> None:
        for event in self.store.pending_events():
            if not self.urls:
                self.store.mark_event(event.seq, delivered=True)
                continue
            body = slack_message(event)
            results = await asyncio.gather(
                *(self._post(u, body) for u in self.urls), return_exceptions=True
            )
            failures = [
                f"{u}: {r!r}"
                for u, r in zip(self.urls, results, strict=True)
                if isinstance(r, BaseException)
            ]
            if not failures:
                self.store.mark_event(event.seq, delivered=True)
                self._count("delivered")
                continue
            give_up = event.attempts + 1 >= self.max_passes
            self.store.mark_event(
                event.seq, delivered=False, error="; ".join(failures), give_up=give_up
            )
            self._count("gave_up" if give_up else "failed")
            logger.warning(
                "webhook for %s/%s failed%s: %s",
                event.rollout_id,
                event.event,
                " (giving up)" if give_up else "",
                "; ".join(failures),
            )

    def _count(self, result: str) -> None:
        if self.metrics is not None:
            self.metrics.webhooks.labels(result).inc()

    async def run(self, interval_s: float, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.deliver_pending()
            except Exception:
                logger.exception("webhook delivery pass failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval_s)

    async def aclose(self) -> None:
        await self._client.aclose()
