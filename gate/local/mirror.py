"""The router's mirror: live REST inference exchanges sent to the gate as the events KServe's
InferenceService logger sends (kserve/kserve ``pkg/logger``), so the gate ingests local
and cluster traffic one way.

The proxy hands over each qualifying exchange (see :class:`ModelMirror`); this module owns
everything after that: its two events, encoded at once (:class:`EventEncoder`), a bounded
queue that drops and counts when full, so the gate being slow or down never grows the
router's memory, and one task per router process (:class:`EventEmitter`) that posts the
queue in CloudEvents JSON batches. KServe posts one event per HTTP call in binary mode; a
batch of up to :data:`BATCH_RECORDS` exchanges per call keeps the emitter's share of the
proxy's event loop small at thousands of requests a second. Each event carries the fields
KServe's ``worker.go`` sets, under the same names.

Why encode at once, on the request path, rather than a batch at a time in the task: the
cost is the same, but spread evenly (a few microseconds after each mirrored answer was
written to its client) instead of a millisecond's burst per batch, which every request in
flight at that moment waited for: the bursts, not the work, were what mirroring added to
the proxy's p99 (+15-20 % at saturation, against +5 % encoded at once).
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import json
import logging
import random
import re
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gate.local.upstream import HttpPool, UpstreamConnection, UpstreamError

logger = logging.getLogger("gate.local.router")

REQUEST_EVENT = "org.kubeflow.serving.inference.request"
RESPONSE_EVENT = "org.kubeflow.serving.inference.response"
SOURCE = "irisgate-router"
BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"
MAX_REQUEST_BYTES = 64 * 1024  # a larger request body is not mirrored (skipped)
MAX_RESPONSE_BYTES = 256 * 1024  # nor an exchange with a larger answer
MAX_ID_CHARS = 128
QUEUE_RECORDS = 10_000  # records waiting at most; more are dropped and counted
QUEUE_BYTES = 64 * 1024 * 1024  # and the body bytes they hold (10,000 large ones: 3 GiB)
BATCH_RECORDS = 256  # records (two events each) per POST at most
FLUSH_AFTER_S = 0.1  # a record waits at most this long for its batch to fill
POST_TIMEOUT_S = 5.0
BACKOFF_FIRST_S = 1.0  # after a failed POST; doubles while they keep failing
BACKOFF_MAX_S = 30.0
STOP_FLUSH_S = 2.0  # at stop, what is queued gets this long to go out
SKIP_REASONS = ("chunked", "request_too_big", "response_too_big", "not_200", "incomplete")

TOKEN_MIN_CHARS = 16
_TOKEN = re.compile(rf"[\x21-\x7e]{{{TOKEN_MIN_CHARS},}}")  # (it goes into a header as is)
_VALID_ID = re.compile(rb"[A-Za-z0-9._:-]{1,%d}" % MAX_ID_CHARS)
_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)


def new_id() -> str:
    """A random (version 4) UUID as 32 hex digits, like ``uuid.uuid4().hex`` at a fraction
    of its cost: no UUID object, and no system call (an id must be unique, not secret)."""
    return f"{random.getrandbits(128) & _UUID4_CLEAR | _UUID4_SET:032x}"


def header_facts(headers: Iterable[tuple[bytes, bytes]]) -> tuple[bytes, bytes]:
    """(the client's request id, its content type) as sent: the first ``ce-id`` (KServe's
    id header), else the first ``x-request-id``; b"" when absent."""
    ce_id = request_id = content_type = b""
    for name, value in headers:
        size = len(name)  # (most names have neither length: no lower() for them)
        if size == 12:
            lower = name.lower()
            if lower == b"content-type":
                content_type = content_type or value
            elif lower == b"x-request-id":
                request_id = request_id or value
        elif size == 5 and name.lower() == b"ce-id":
            ce_id = ce_id or value
    return ce_id or request_id, content_type


def event_id(given: bytes) -> tuple[str, bool]:
    """(the events' id, whether the client's was replaced): the client's id, or a new one
    when it gave none, or one too long or with odd characters, so that what the gate keys
    its comparison on stays a bounded, printable token (and needs no escaping in JSON)."""
    if not given:
        return new_id(), False
    if _VALID_ID.fullmatch(given) is None:
        return new_id(), True
    return given.decode("ascii"), False


def request_facts(headers: Iterable[tuple[bytes, bytes]]) -> tuple[str, bool, str]:
    """(events' id, whether the client's id was replaced, content type) of a request."""
    given, content_type = header_facts(headers)
    return (*event_id(given), content_type.decode("latin-1"))


@dataclass(eq=False)
class MirrorCounters:
    """One model's mirror bookkeeping, for the router's lifetime."""

    sent: int = 0  # records the gate accepted
    dropped: int = 0  # records refused because the queue was full (records or bytes)
    lost: int = 0  # records in a batch the gate did not accept (or left at stop)
    failed_batches: int = 0  # failed POSTs that carried records of this model
    ids_replaced: int = 0  # client ids too long or with odd characters
    skipped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SKIP_REASONS, 0))

    def describe(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "dropped": self.dropped,
            "lost": self.lost,
            "failed_batches": self.failed_batches,
            "ids_replaced": self.ids_replaced,
            "skipped": dict(self.skipped),
        }


class QueuedEvents:
    """One mirrored exchange's two events, encoded, waiting for their batch: one small
    object and no containers, since it lives until its batch is posted and kept
    containers would make the proxy's garbage collections more frequent, each one a stall
    of every request in flight."""

    __slots__ = ("events", "mirror", "queued_time")

    def __init__(self, mirror: ModelMirror, events: bytes, queued_time: float) -> None:
        self.mirror = mirror
        self.events = events  # the request event and the response event, comma-separated
        self.queued_time = queued_time  # wall-clock seconds


class ModelMirror:
    """One model's side of the mirror: what the proxy calls, and the model's counters. One
    per model for the router's lifetime, so counters survive route changes."""

    def __init__(self, model: str, emitter: EventEmitter) -> None:
        self.model = model
        self.emitter = emitter
        self.counters = MirrorCounters()

    def skip(self, reason: str) -> None:
        self.counters.skipped[reason] += 1

    def record(
        self,
        headers: Sequence[tuple[bytes, bytes]],
        role: str,
        request_body: bytes,
        response: bytes,
        response_at: int,
        request_time: float,
    ) -> None:
        """Queue one answered exchange (a 200 whose bodies are within the limits), ``role``
        ("stable" or "canary") being who answered; the answer's body is
        ``response[response_at:]`` (a verbatim answer is passed whole, not copied)."""
        emitter = self.emitter
        if emitter.full():
            self.counters.dropped += 1
            return
        given_id, content_type = header_facts(headers)
        now = time.time()
        body = memoryview(response)[response_at:] if response_at else response
        events = emitter.encoder.encode(
            self, given_id, content_type, role, request_body, body, request_time, now, now
        )
        if not emitter.offer(QueuedEvents(self, events, now)):
            self.counters.dropped += 1

    def describe(self) -> dict[str, Any]:
        return self.counters.describe()


def _date_time(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


class EventEncoder:
    """Exchanges to structured CloudEvents, two each (request, then response), with the
    attributes KServe's logger sets (``pkg/logger/worker.go``). KServe gives both events
    the request's content type; ``metadata`` is the JSON of the headers it is told to copy,
    none here. One encoder per emitter: it keeps what exchanges share.

    This runs on the request path, so it is written for speed (a few microseconds an
    exchange, a fifth of ``json.dumps`` of dicts): what varies per event is an id checked
    to be a plain token (:func:`event_id`), times and base64, none of which needs
    escaping; the rest is made once per model, endpoint and content type (the one
    JSON-quoted value); a time's date and hour are formatted once per second."""

    def __init__(self) -> None:
        self._heads: dict[tuple[ModelMirror, str, bytes], tuple[str, str]] = {}
        self._second = -1
        self._date_time = ""

    def _pair(self, mirror: ModelMirror, role: str, content_type: bytes) -> tuple[str, str]:
        endpoint = "canary" if role == "canary" else "default"
        # (the attribute must be a media type when present: none for a request without)
        media = ""
        if content_type:
            media = f',"datacontenttype":{json.dumps(content_type.decode("latin-1"))}'

        common = (
            f'{{"specversion":"1.0","source":"{SOURCE}",'
            f'"inferenceservicename":"{mirror.model}","namespace":"",'
            f'"component":"predictor","endpoint":"{endpoint}","metadata":"{{}}"{media},"type":'
        )
        pair = f'{common}"{REQUEST_EVENT}","id":"', f'{common}"{RESPONSE_EVENT}","id":"'
        self._heads[mirror, role, content_type] = pair
        return pair

    def _stamp(self, seconds: float) -> str:
        """``seconds`` as a CloudEvents time (UTC, microseconds, ``Z``)."""
        whole = int(seconds)
        if whole != self._second:
            self._second, self._date_time = whole, _date_time(whole)
        return f"{self._date_time}.{int((seconds - whole) * 1_000_000):06d}Z"

    def encode(
        self,
        mirror: ModelMirror,
        given_id: bytes,
        content_type: bytes,
        role: str,
        request_body: bytes,
        response_body: bytes | memoryview,
        request_time: float,
        response_time: float,
        recorded_time: float,
    ) -> bytes:
        """One exchange's request and response events, comma-separated (a slice of a
        batch's JSON array): ``given_id`` is the client's ``ce-id`` or ``x-request-id``
        as sent (b"" if none), ``content_type`` the request's, times in wall-clock
        seconds."""
        request_id, replaced = event_id(given_id)
        if replaced:
            mirror.counters.ids_replaced += 1
        pair = self._heads.get((mirror, role, content_type))
        if pair is None:
            pair = self._pair(mirror, role, content_type)
        asked = self._stamp(request_time)
        answered = self._stamp(response_time)
        recorded = answered if recorded_time == response_time else self._stamp(recorded_time)
        b64 = binascii.b2a_base64
        return (
            f'{pair[0]}{request_id}","recordedtime":"{recorded}","time":"{asked}",'
            f'"data_base64":"{b64(request_body, newline=False).decode()}"}},'
            f'{pair[1]}{request_id}","recordedtime":"{recorded}","time":"{answered}",'
            f'"data_base64":"{b64(response_body, newline=False).decode()}"}}'
        ).encode()


def encode_batch(queued: Iterable[QueuedEvents]) -> bytes:
    """The body of one POST: a JSON array of events (CloudEvents JSON batch mode)."""
    return b"[" + b",".join([each.events for each in queued]) + b"]"


class _Delivery:
    """One POST on a pooled connection, as :class:`gate.local.upstream.UpstreamConnection`
    reports it (its ``Exchange``): the status, or the reason there is none."""

    def __init__(self, answer: asyncio.Future[int]) -> None:
        self.answer = answer
        self.status = 0

    def response_head(
        self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]], framed: bool
    ) -> None:
        self.status = status

    def response_body(self, data: bytes) -> None:
        pass

    def response_end(self) -> None:
        if not self.answer.done():
            self.answer.set_result(self.status)

    def flush_head(self) -> None:
        pass

    def takes_verbatim(self) -> bool:
        return True  # a whole answer in one read: its status is all that is wanted

    def verbatim_response(self, status: int, data: bytes) -> None:
        if not self.answer.done():
            self.answer.set_result(status)

    def upstream_failed(self, error: UpstreamError, answered: bool) -> None:
        if not self.answer.done():
            self.answer.set_exception(error)

    def pause_body(self) -> None:
        pass

    def resume_body(self) -> None:
        pass


def _wake(waiter: asyncio.Future[bool], timed_out: bool = False) -> None:
    if not waiter.done():
        waiter.set_result(timed_out)


class EventEmitter:
    """The queue of records and the one task that posts it to the gate.

    Flushes when :data:`BATCH_RECORDS` records wait or :data:`FLUSH_AFTER_S` after the
    oldest waiting record was queued. A failed POST (no connection, timeout, non-2xx) loses
    its batch (counted) and the next waits a back-off (1 s doubling to 30 s): retrying a
    batch would only let it age while newer records are dropped. One warning per streak
    of failures, none per batch.

    POSTs go on keep-alive connections of the proxy's own pool
    (:class:`gate.local.upstream.HttpPool`, httptools): an httpx POST costs about 1 ms of
    the proxy's event loop, this a small fraction of it."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        capacity: int = QUEUE_RECORDS,
        capacity_bytes: int = QUEUE_BYTES,
        batch_records: int = BATCH_RECORDS,
        flush_after_s: float = FLUSH_AFTER_S,
        timeout_s: float = POST_TIMEOUT_S,
        backoff_s: tuple[float, float] = (BACKOFF_FIRST_S, BACKOFF_MAX_S),
    ) -> None:
        self.url = url
        self.capacity = capacity
        self.capacity_bytes = capacity_bytes
        self.queued_bytes = 0
        self.batch_records = batch_records
        self.flush_after_s = flush_after_s
        self.encoder = EventEncoder()
        self.queue: deque[QueuedEvents] = deque()
        self.sent_batches = 0
        self.failed_batches = 0
        if not _TOKEN.fullmatch(token):
            raise ValueError(
                f"the events token needs at least {TOKEN_MIN_CHARS} printable ASCII characters"
            )
        self._timeout_s = timeout_s
        self._backoff_s = backoff_s
        self._backoff = 0.0  # the current back-off, 0 while POSTs succeed
        self._failing = 0  # failed batches in the current streak
        self._lost_in_streak = 0
        self._models: dict[str, ModelMirror] = {}
        self._pool = HttpPool(url)
        self._head = (
            b"POST %s HTTP/1.1\r\nhost: %s\r\nauthorization: Bearer %s\r\n"
            b"content-type: %s\r\ncontent-length: "
            % (
                self._pool.prefix or b"/",
                self._pool.authority,
                token.encode(),
                BATCH_CONTENT_TYPE.encode(),
            )
        )
        self._task: asyncio.Task[None] | None = None
        self._in_flight: list[QueuedEvents] = []  # the batch being posted
        self._records_waiter: asyncio.Future[bool] | None = None  # woken by records
        self._stop_waiter: asyncio.Future[bool] | None = None  # woken by stop
        self._stopping = False

    def model(self, model: str) -> ModelMirror:
        """The model's mirror (one per model for this emitter's lifetime)."""
        mirror = self._models.get(model)
        if mirror is None:
            mirror = self._models[model] = ModelMirror(model, self)
        return mirror

    # --- the proxy's side: no awaiting, no allocation beyond the record ------------------

    def full(self) -> bool:
        """Whether the queue holds as many records as it may (not worth encoding one)."""
        return len(self.queue) >= self.capacity

    def offer(self, record: QueuedEvents) -> bool:
        """Queue a record; False if the queue is full, in records or in bytes (the caller
        counts the drop)."""
        queue = self.queue
        size = len(record.events)
        if len(queue) >= self.capacity or self.queued_bytes + size > self.capacity_bytes:
            return False
        self.queued_bytes += size
        queue.append(record)
        waiter = self._records_waiter
        if waiter is not None and (len(queue) == 1 or len(queue) >= self.batch_records):
            self._records_waiter = None
            _wake(waiter)
        return True

    # --- the task -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the task (on the running loop)."""
        if self._task is not None:
            return
        self._task = asyncio.get_running_loop().create_task(self._run(), name="mirror")
        self._task.add_done_callback(_report_crash)

    async def aclose(self, grace_s: float = STOP_FLUSH_S) -> None:
        """Stop: what is queued gets ``grace_s`` to go out; what is left is counted lost."""
        self._stopping = True
        for waiter in (self._records_waiter, self._stop_waiter):
            if waiter is not None:
                _wake(waiter)
        task = self._task
        if task is not None:
            await asyncio.wait({task}, timeout=grace_s)
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        left = len(self.queue) + len(self._in_flight)
        for record in (*self._in_flight, *self.queue):
            record.mirror.counters.lost += 1
        self.queue.clear()
        self.queued_bytes = 0
        self._in_flight = []
        if left:
            logger.warning("mirror: %d records not sent at stop", left)
        self._pool.close()

    async def _run(self) -> None:
        queue = self.queue
        while True:
            if not queue:
                if self._stopping:
                    return
                await self._pause(None, records=True)
                continue
            if len(queue) < self.batch_records and not self._stopping:
                waited = time.time() - queue[0].queued_time
                delay = min(max(self.flush_after_s - waited, 0.0), self.flush_after_s)
                # (a clock step cannot hold a record back: a full pause ends in a flush)
                if delay > 0 and not await self._pause(delay, records=True):
                    continue  # woken early by a full batch or a stop: look again
            count = min(len(queue), self.batch_records)
            batch = self._in_flight = [queue.popleft() for _ in range(count)]
            self.queued_bytes -= sum(len(record.events) for record in batch)
            delivered = await self._post(batch)
            self._in_flight = []
            if not delivered:
                if self._stopping:  # no time to wait for the gate: the rest is lost
                    return
                await self._pause(self._backoff, records=False)

    async def _pause(self, delay: float | None, records: bool) -> bool:
        """Until ``delay`` passes (True), a stop, or (``records``) a first record or a full
        batch (False)."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        self._stop_waiter = waiter
        if records:
            self._records_waiter = waiter
        timer = loop.call_later(delay, _wake, waiter, True) if delay is not None else None
        try:
            return False if self._stopping else await waiter
        finally:
            self._stop_waiter = self._records_waiter = None
            if timer is not None:
                timer.cancel()

    async def _send(self, body: bytes) -> int:
        """POST one body; its answer's status (raises UpstreamError or TimeoutError). A
        pooled connection the gate closed while it was idle (its keep-alive timeout) is no
        failure: the body goes again, once, on a new connection."""
        request = self._head + b"%d\r\n\r\n" % len(body)
        async with asyncio.timeout(self._timeout_s):
            connection = self._pool.take_idle()
            if connection is not None:
                try:
                    return await self._exchange(connection, request, body)
                except UpstreamError:
                    pass
            return await self._exchange(await self._pool.connect(), request, body)

    async def _exchange(self, connection: UpstreamConnection, request: bytes, body: bytes) -> int:
        answer: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        connection.start(_Delivery(answer), request, body, head_only=False)
        try:
            return await answer
        except BaseException:  # failed, timed out or cancelled: that connection is done
            connection.abandon()
            raise

    async def _post(self, batch: list[QueuedEvents]) -> bool:
        body = encode_batch(batch)
        problem = ""
        try:
            status = await self._send(body)
            if not 200 <= status < 300:
                problem = f"answered {status}"
        except (UpstreamError, TimeoutError, OSError) as exc:
            problem = f"failed: {exc!r}"
        if not problem:
            self._delivered(batch)
            return True
        self._lost(batch, problem)
        return False

    def _delivered(self, batch: list[QueuedEvents]) -> None:
        self.sent_batches += 1
        for record in batch:
            record.mirror.counters.sent += 1
        if self._failing:
            logger.info(
                "mirror: %s takes events again (%d batches, %d records lost meanwhile)",
                self.url,
                self._failing,
                self._lost_in_streak,
            )
        self._failing = self._lost_in_streak = 0
        self._backoff = 0.0

    def _lost(self, batch: list[QueuedEvents], problem: str) -> None:
        self.failed_batches += 1
        for mirror in {record.mirror for record in batch}:
            mirror.counters.failed_batches += 1
        for record in batch:
            record.mirror.counters.lost += 1
        if not self._failing:
            logger.warning(
                "mirror: POST to %s %s; dropping batches until it takes them again",
                self.url,
                problem,
            )
        self._failing += 1
        self._lost_in_streak += len(batch)
        first, most = self._backoff_s
        self._backoff = min(self._backoff * 2, most) if self._backoff else first

    def describe(self) -> dict[str, Any]:
        return {
            "events_url": self.url,
            "queued": len(self.queue),
            "queued_bytes": self.queued_bytes,
            "sent_batches": self.sent_batches,
            "failed_batches": self.failed_batches,
        }


def _report_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("mirror: the emitter stopped", exc_info=task.exception())
