"""The shadow phase's replayer: live requests stable answered, sent again to the candidate.

Users are never answered by the candidate here: the logged request (KServe's payload
event, :mod:`gate.providers.payloads`) is replayed by the gate, byte for byte, over the
protocol it came in on (the body says which), marked as the gate's own traffic
(``x-irisgate-traffic: generated``, so the predictors count it apart from live traffic),
and the candidate's answer is paired with the answer stable gave the user
(:func:`gate.core.answers.pair`). Each pair is committed with the replayer's position, so a
restarted gate goes on where it stopped.

The rate is bounded (``shadow_rate_per_s``), never made up in bursts; when the log runs
ahead by more than :data:`MAX_BACKLOG_S` seconds' worth, the replayer jumps to the newest
exchanges and counts the ones it left out (``skipped``): a busy service is sampled, not
queued behind.
"""

from __future__ import annotations

import asyncio
import time

import httpx

from gate.core.answers import Unreadable, pair, protocol_of, read_answer
from gate.payload_store import (
    CANDIDATE_ERROR,
    NOT_COMPARABLE,
    PAIRED,
    LoggedExchange,
    PairRecord,
    PayloadStore,
)
from gate.providers.base import GENERATED, TRAFFIC_HEADER

REQUEST_TIMEOUT_S = 5.0
MAX_BACKLOG_S = 10.0
IDLE_S = 0.2


def replay_path(model: str, protocol: str) -> str:
    return f"/v2/models/{model}/infer" if protocol == "v2" else f"/v1/models/{model}:predict"


class ShadowReplayer:
    def __init__(
        self,
        store: PayloadStore,
        client: httpx.AsyncClient,
        rollout_id: str,
        model: str,
        candidate_url: str,
        rate_per_s: float,
        since_seq: int,
    ) -> None:
        self.store = store
        self.client = client
        self.rollout_id = rollout_id
        self.model = model
        self.base = candidate_url.rstrip("/")
        self.interval_s = 1.0 / rate_per_s
        self.batch = max(1, int(rate_per_s))
        self.backlog_cap = max(1, int(rate_per_s * MAX_BACKLOG_S))
        self.cursor = store.cursor(rollout_id, since_seq)
        self.replayed = 0
        self.skipped = 0

    def summary(self) -> str:
        return f"{self.replayed} replayed, {self.skipped} skipped"

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            await asyncio.to_thread(self._skip_ahead)
            exchanges = await asyncio.to_thread(
                self.store.exchanges, self.model, self.cursor, self.batch
            )
            if not exchanges:
                await asyncio.sleep(IDLE_S)
                due = loop.time()
                continue
            for exchange in exchanges:
                record = await self.replay(exchange)
                await asyncio.to_thread(
                    self.store.add_pair, self.rollout_id, self.model, exchange, record
                )
                self.cursor = exchange.seq
                self.replayed += 1
                due = max(due + self.interval_s, loop.time())  # late: no catching up
                await asyncio.sleep(due - loop.time())

    def _skip_ahead(self) -> None:
        waiting = self.store.backlog(self.model, self.cursor)
        if waiting <= self.backlog_cap:
            return
        newest = self.store.exchanges_from_end(self.model, self.backlog_cap)
        if newest is None:
            return
        left_out = waiting - self.backlog_cap
        self.store.skip(self.rollout_id, newest, left_out)
        self.cursor = newest
        self.skipped += left_out

    async def replay(self, exchange: LoggedExchange) -> PairRecord:
        """One logged request to the candidate, and the pair it makes."""
        try:
            stable = read_answer(exchange.response)
            path = replay_path(self.model, protocol_of(exchange.request))
        except Unreadable as exc:
            return PairRecord(NOT_COMPARABLE, detail=f"stable's logged exchange: {exc}")
        started = time.perf_counter()
        try:
            response = await self.client.post(
                self.base + path,
                content=exchange.request,
                headers={"content-type": exchange.content_type, TRAFFIC_HEADER: GENERATED},
                timeout=REQUEST_TIMEOUT_S,
            )
        except httpx.HTTPError as exc:
            return PairRecord(CANDIDATE_ERROR, detail=f"candidate unreachable: {exc!r}")
        latency_ms = (time.perf_counter() - started) * 1000
        if response.status_code != 200:
            # stable answered this request with 200: a refusal is the candidate's failure
            return PairRecord(
                CANDIDATE_ERROR,
                latency_ms=latency_ms,
                detail=f"candidate answered {response.status_code}: {response.text[:200]}",
            )
        try:
            paired = pair(stable, read_answer(response.content))
        except Unreadable as exc:
            return PairRecord(NOT_COMPARABLE, latency_ms=latency_ms, detail=str(exc))
        return PairRecord(
            PAIRED,
            rows=paired.rows,
            disagreements=paired.disagreements,
            flips=paired.flips,
            shift_rows=paired.shift_rows,
            shift_sum=paired.shift_sum,
            latency_ms=latency_ms,
            stable_classes=paired.stable_classes,
            candidate_classes=paired.candidate_classes,
        )


__all__ = ["ShadowReplayer", "replay_path"]
