"""Adaptive batching: concurrent requests share one model call.

scikit-learn's cost is mostly per call (a 64-row call costs about what a 1-row call does),
so rows from requests that arrive together are stacked into one call and the results
routed back. The batch is whatever is waiting when the model becomes free, capped at
``max_rows``; a lone request is never held back, and ``max_wait_ms`` (0 by default) lets a
busy server wait a little for company. The model runs in one worker thread, so the event
loop keeps accepting and decoding requests meanwhile: that is where batches come from.
Requests are validated before they get here, so a bad request fails alone.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np


@dataclass
class _Pending:
    matrix: np.ndarray
    future: asyncio.Future[np.ndarray]


class Batcher:
    """Serialises model calls through one worker; coalesces what queues up meanwhile."""

    def __init__(
        self,
        predict: Callable[[np.ndarray], np.ndarray],
        max_rows: int,
        max_wait_ms: float = 0.0,
        observe: Callable[[int, int], None] | None = None,
    ) -> None:
        if max_rows < 1:
            raise ValueError("max_rows must be at least 1")
        self._predict = predict
        self.max_rows = max_rows
        self.max_wait_s = max_wait_ms / 1000.0
        self._observe = observe
        self._queue: asyncio.Queue[_Pending] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")

    def __getstate__(self) -> dict[str, object]:
        # KServe's --workers pickles the model; each worker process starts its own loop.
        state = self.__dict__.copy()
        state.update(_queue=None, _worker=None, _executor=None)
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")

    async def submit(self, matrix: np.ndarray) -> np.ndarray:
        """Probabilities for ``matrix``'s rows, computed in some batch."""
        if self._queue is None or self._worker is None or self._worker.done():
            self._queue = asyncio.Queue()
            self._worker = asyncio.get_running_loop().create_task(self._run(self._queue))
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(matrix, future))
        return await future

    async def _collect(self, queue: asyncio.Queue[_Pending]) -> list[_Pending]:
        batch = [await queue.get()]
        rows = len(batch[0].matrix)
        deadline = asyncio.get_running_loop().time() + self.max_wait_s
        while rows < self.max_rows:
            if queue.empty():
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    break
                try:
                    waiting = await asyncio.wait_for(queue.get(), remaining)
                except TimeoutError:
                    break
            else:
                waiting = queue.get_nowait()
            if rows + len(waiting.matrix) > self.max_rows:
                queue.put_nowait(waiting)  # it opens the next batch
                break
            batch.append(waiting)
            rows += len(waiting.matrix)
        return batch

    async def _run(self, queue: asyncio.Queue[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect(queue)
            live = [p for p in batch if not p.future.done()]  # a caller may have gone
            if not live:
                continue
            stacked = live[0].matrix if len(live) == 1 else np.vstack([p.matrix for p in live])
            try:
                result = await loop.run_in_executor(self._executor, self._predict, stacked)
            except Exception as exc:  # the model failed: every caller of this batch hears it
                for pending in live:
                    if not pending.future.done():
                        pending.future.set_exception(exc)
                continue
            if self._observe is not None:
                self._observe(len(live), len(stacked))
            start = 0
            for pending in live:
                end = start + len(pending.matrix)
                if not pending.future.done():
                    pending.future.set_result(result[start:end])
                start = end

    async def aclose(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        if self._executor is not None:
            self._executor.shutdown(wait=False)
