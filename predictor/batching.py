"""Adaptive batching: concurrent requests share one model call.

scikit-learn's cost is mostly per call (a 64-row call costs about what a 1-row call does),
so rows from requests that arrive together are stacked into one call and the results
routed back. The batch is whatever is waiting when the model becomes free, capped at
``max_rows``; a lone request is never held back, and ``max_wait_ms`` (0 by default) lets a
busy server wait a little for company. A slow model (scikit-learn itself) runs in one
worker thread, so the event loop keeps accepting and decoding requests meanwhile; a model
that answers in microseconds (the fast path) runs on the loop, where a thread hand-off
would cost more than the call; there, a batch is the requests that reached the batcher
in the same loop iteration. Requests are validated before they get here, so a bad request
fails alone.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np


@dataclass
class _Pending:
    matrix: np.ndarray
    future: asyncio.Future[np.ndarray]


class Batcher:
    """Coalesces concurrent requests into model calls, one call at a time.

    Callback-driven rather than a worker task: a request appends itself and, if no call is
    running or scheduled, schedules one for the next loop iteration (or ``max_wait_ms``
    later); everything that arrived by then goes in. When a threaded call finishes, the
    next batch is whatever queued meanwhile. A lone request costs one future and one
    scheduled callback, no task or queue.
    """

    def __init__(
        self,
        predict: Callable[[np.ndarray], np.ndarray],
        max_rows: int,
        max_wait_ms: float = 0.0,
        observe: Callable[[int, int], None] | None = None,
        *,
        in_thread: bool = True,
    ) -> None:
        if max_rows < 1:
            raise ValueError("max_rows must be at least 1")
        self._predict = predict
        self.max_rows = max_rows
        self.max_wait_s = max_wait_ms / 1000.0
        self._observe = observe
        self.in_thread = in_thread
        self._reset()
        self._executor: ThreadPoolExecutor | None = None

    def _reset(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop
        self._pending: deque[_Pending] = deque()
        self._scheduled: asyncio.Handle | None = None
        self._busy = False

    async def submit(self, matrix: np.ndarray) -> np.ndarray:
        """Probabilities for ``matrix``'s rows, computed in some batch."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._reset(loop)
        future: asyncio.Future[np.ndarray] = loop.create_future()
        self._pending.append(_Pending(matrix, future))
        if self._scheduled is None and not self._busy:
            self._schedule(loop)
        return await future

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.max_wait_s > 0:
            self._scheduled = loop.call_later(self.max_wait_s, self._flush)
        else:
            self._scheduled = loop.call_soon(self._flush)

    def _take(self) -> list[_Pending]:
        batch: list[_Pending] = []
        rows = 0
        while self._pending:
            waiting = self._pending[0]
            if waiting.future.done():  # the caller has gone
                self._pending.popleft()
                continue
            if batch and rows + len(waiting.matrix) > self.max_rows:
                break  # it opens the next batch
            batch.append(self._pending.popleft())
            rows += len(waiting.matrix)
        return batch

    def _flush(self) -> None:
        self._scheduled = None
        batch = self._take()
        if not batch:
            return
        stacked = batch[0].matrix if len(batch) == 1 else np.vstack([p.matrix for p in batch])
        if not self.in_thread:
            try:
                result = self._predict(stacked)
            except Exception as exc:  # the model failed: every caller of this batch hears it
                self._deliver(batch, None, exc)
            else:
                self._deliver(batch, result, None)
            return
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        assert self._loop is not None
        self._busy = True
        call = self._loop.run_in_executor(self._executor, self._predict, stacked)
        call.add_done_callback(lambda done: self._finished(batch, done))

    def _finished(self, batch: list[_Pending], done: asyncio.Future[np.ndarray]) -> None:
        self._busy = False
        if done.cancelled():
            self._deliver(batch, None, asyncio.CancelledError())
        elif done.exception() is not None:
            self._deliver(batch, None, done.exception())
        else:
            self._deliver(batch, done.result(), None)

    def _deliver(
        self, batch: list[_Pending], result: np.ndarray | None, error: BaseException | None
    ) -> None:
        if result is not None and self._observe is not None:
            self._observe(len(batch), sum(len(p.matrix) for p in batch))
        start = 0
        for pending in batch:
            end = start + len(pending.matrix)
            if not pending.future.done():
                if error is not None:
                    pending.future.set_exception(error)
                else:
                    assert result is not None
                    pending.future.set_result(result[start:end])
            start = end
        if self._pending and self._scheduled is None and self._loop is not None:
            self._schedule(self._loop)

    async def aclose(self) -> None:
        if self._scheduled is not None:
            self._scheduled.cancel()
            self._scheduled = None
        for pending in self._pending:
            pending.future.cancel()
        self._pending.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None
