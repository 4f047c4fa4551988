"""Delayed true labels: the ground truth that reaches a real service minutes or days late.

Load-test users know each row's species (:mod:`load_tests.pool`); the poster sends the
labels of a share of the REST requests that got a 200 to the gate's ``POST /v1/feedback``
some seconds after the answer, keyed by the request's ``x-request-id``, in batches (what
is due once a second, at most 1,000 labels a POST). The gate joins them with the answers
stable and the candidate gave, for live accuracy.

The queue and the poster are plain Python with the clock and the HTTP call passed in, so
the batching and delay rules are tested without locust or a network; the locustfile runs
:meth:`LabelPoster.flush` from a background greenlet, never on a user's request path. A
failed POST is counted (its labels are lost, like a dropped feedback message), never fatal.
"""

from __future__ import annotations

import json
import random
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import requests

MAX_LABELS_PER_POST = 1_000  # the gate's bound (gate/schemas.py MAX_LABELS_PER_POST)
MAX_PENDING = 100_000  # labels waiting for their delay; beyond, new ones are dropped
TOKEN_ENV = "IRISGATE_LABELS_TOKEN"

Label = dict[str, Any]  # {"id": request id, "label": class id or one per row}


class LabelPostError(RuntimeError):
    """A POST of labels did not go through; the message says why."""


@dataclass
class LabelCounters:
    answered: int = 0
    """REST requests answered 200 with known labels."""
    chosen: int = 0
    """Of those, the ones whose labels are posted (``share``)."""
    dropped: int = 0
    """Chosen but not queued: too many were already waiting."""
    posts: int = 0
    """POSTs the gate answered 200."""
    posted: int = 0
    """Labels in those POSTs."""
    accepted: int = 0
    unknown: int = 0
    """The gate's answers summed: labels kept, and of those ids it had no answer for."""
    failed_posts: int = 0
    failed_labels: int = 0
    """POSTs that failed (no answer, or not 200) and the labels they carried."""
    last_error: str = ""
    pending: int = 0
    """Labels waiting for their delay when the counters were taken."""

    def summary(self) -> str:
        text = (
            f"labels: {self.posted} posted in {self.posts} POSTs ({self.accepted} accepted, "
            f"{self.unknown} of them unknown ids) of {self.chosen} chosen from "
            f"{self.answered} answered requests; {self.pending} pending"
        )
        if self.dropped:
            text += f"; {self.dropped} dropped (queue full)"
        if self.failed_posts:
            text += (
                f"; {self.failed_posts} POSTs failed ({self.failed_labels} labels), "
                f"last: {self.last_error}"
            )
        return text


class LabelQueue:
    """Which answered requests get their label posted, and when. The clock is the
    caller's (seconds, monotonic); due times only grow, so the queue stays in order."""

    def __init__(
        self,
        share: float,
        delay_s: float,
        rng: random.Random,
        *,
        max_batch: int = MAX_LABELS_PER_POST,
        max_pending: int = MAX_PENDING,
    ) -> None:
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"share must be within [0, 1], got {share}")
        if delay_s < 0:
            raise ValueError(f"delay_s must be >= 0, got {delay_s}")
        if not 1 <= max_batch <= MAX_LABELS_PER_POST:
            raise ValueError(f"max_batch must be within [1, {MAX_LABELS_PER_POST}]")
        self.share = share
        self.delay_s = delay_s
        self.rng = rng
        self.max_batch = max_batch
        self.max_pending = max_pending
        self.counters = LabelCounters()
        self._pending: deque[tuple[float, Label]] = deque()

    def __len__(self) -> int:
        return len(self._pending)

    def offer(self, request_id: str, labels: list[int], now: float) -> bool:
        """A request answered 200: keep its label for later with probability ``share``.
        One row's label goes as a class id, several rows' as a list."""
        self.counters.answered += 1
        if self.rng.random() >= self.share:
            return False
        self.counters.chosen += 1
        if len(self._pending) >= self.max_pending:
            self.counters.dropped += 1
            return False
        label: int | list[int] = labels[0] if len(labels) == 1 else list(labels)
        self._pending.append((now + self.delay_s, {"id": request_id, "label": label}))
        return True

    def take_due(self, now: float) -> list[list[Label]]:
        """Every label whose delay has passed, in POST-sized batches, oldest first."""
        due: list[Label] = []
        while self._pending and self._pending[0][0] <= now:
            due.append(self._pending.popleft()[1])
        return [due[i : i + self.max_batch] for i in range(0, len(due), self.max_batch)]


Send = Callable[[list[Label]], tuple[int, int]]
"""POSTs one batch; returns the gate's (accepted, unknown) or raises LabelPostError."""


class LabelPoster:
    """Sends what the queue has due; one call per second from a background greenlet."""

    def __init__(self, queue: LabelQueue, send: Send, report: Path | None = None) -> None:
        self.queue = queue
        self.send = send
        self.report = report

    def offer(self, request_id: str, labels: list[int], now: float) -> bool:
        """See :meth:`LabelQueue.offer`: called on the request path, it only queues."""
        return self.queue.offer(request_id, labels, now)

    @property
    def counters(self) -> LabelCounters:
        self.queue.counters.pending = len(self.queue)
        return self.queue.counters

    def flush(self, now: float) -> None:
        counters = self.queue.counters
        for batch in self.queue.take_due(now):
            try:
                accepted, unknown = self.send(batch)
            except LabelPostError as exc:
                counters.failed_posts += 1
                counters.failed_labels += len(batch)
                counters.last_error = str(exc)[:300]
                continue
            counters.posts += 1
            counters.posted += len(batch)
            counters.accepted += accepted
            counters.unknown += unknown
        self.write_report()

    def write_report(self) -> None:
        """The counters as JSON, for whoever ran the load (the demo's report)."""
        if self.report is None:
            return
        temporary = self.report.with_suffix(".tmp")
        temporary.write_text(json.dumps(asdict(self.counters), indent=2) + "\n")
        temporary.replace(self.report)  # a reader never sees half a file


def http_sender(
    session: requests.Session, url: str, token: str, model: str, timeout_s: float = 10.0
) -> Send:
    """``send`` over a ``requests.Session`` (cooperative under locust's gevent)."""

    def send(batch: list[Label]) -> tuple[int, int]:
        try:
            response = session.post(
                url,
                json={"model": model, "labels": batch},
                headers={"Authorization": f"Bearer {token}"},
                timeout=timeout_s,
            )
        except requests.RequestException as exc:  # the gate down, a timeout, a reset
            raise LabelPostError(f"{type(exc).__name__}: {exc}") from exc
        if response.status_code != 200:
            raise LabelPostError(f"HTTP {response.status_code}: {response.text[:200]}")
        try:
            result = response.json()
            return int(result["accepted"]), int(result["unknown"])
        except (ValueError, KeyError, TypeError) as exc:
            raise LabelPostError(f"unexpected answer: {response.text[:200]}") from exc

    return send


__all__ = [
    "MAX_LABELS_PER_POST",
    "TOKEN_ENV",
    "LabelCounters",
    "LabelPostError",
    "LabelPoster",
    "LabelQueue",
    "http_sender",
]
