"""Adaptive batching: coalescing, result routing, caps, failures."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from predictor.batching import Batcher
from tests.helpers import train_iris

ROWS = np.random.default_rng(0).uniform([4.3, 2.0, 1.0, 0.1], [7.9, 4.4, 6.9, 2.5], (40, 4))


class SlowModel:
    """scikit-learn behind a short pause, recording every call's batch."""

    def __init__(self, pause_s: float = 0.02) -> None:
        self.model, _, _ = train_iris()
        self.pause_s = pause_s
        self.calls: list[int] = []
        self.threads: set[str] = set()

    def __call__(self, matrix: np.ndarray) -> np.ndarray:
        self.calls.append(len(matrix))
        self.threads.add(threading.current_thread().name)
        time.sleep(self.pause_s)
        return np.asarray(self.model.predict_proba(matrix))


def test_concurrent_requests_share_model_calls_and_get_their_own_rows() -> None:
    model = SlowModel()
    observed: list[tuple[int, int]] = []
    batcher = Batcher(model, max_rows=64, observe=lambda r, n: observed.append((r, n)))

    async def scenario() -> list[np.ndarray]:
        requests = [ROWS[i : i + 2] for i in range(0, 40, 2)]  # 20 requests of 2 rows
        results = await asyncio.gather(*(batcher.submit(m) for m in requests))
        await batcher.aclose()
        return list(results)

    results = asyncio.run(scenario())
    expected = model.model.predict_proba(ROWS)
    np.testing.assert_array_equal(np.vstack(results), expected)
    assert sum(model.calls) == 40
    assert len(model.calls) < 20  # coalesced
    assert max(model.calls) > 2
    assert sum(r for r, _ in observed) == 20
    assert model.threads == {next(iter(model.threads))}  # one worker thread
    assert next(iter(model.threads)).startswith("model")


def test_a_lone_request_is_served_alone_and_at_once() -> None:
    model = SlowModel(pause_s=0)
    batcher = Batcher(model, max_rows=64, max_wait_ms=0)
    result = asyncio.run(batcher.submit(ROWS[:1]))
    assert model.calls == [1]
    np.testing.assert_array_equal(result, model.model.predict_proba(ROWS[:1]))


def test_batches_respect_the_row_cap() -> None:
    model = SlowModel()
    batcher = Batcher(model, max_rows=8)

    async def scenario() -> None:
        await asyncio.gather(*(batcher.submit(ROWS[i : i + 3]) for i in range(0, 30, 3)))
        await batcher.submit(ROWS[:20])  # one request over the cap still gets served
        await batcher.aclose()

    asyncio.run(scenario())
    assert all(size <= 8 for size in model.calls[:-1])
    assert model.calls[-1] == 20


def test_a_model_failure_reaches_its_batch_and_the_batcher_recovers() -> None:
    failures = {"left": 1}
    model, _, _ = train_iris()

    def flaky(matrix: np.ndarray) -> np.ndarray:
        if failures["left"]:
            failures["left"] -= 1
            raise RuntimeError("model exploded")
        return np.asarray(model.predict_proba(matrix))

    batcher = Batcher(flaky, max_rows=64)

    async def scenario() -> np.ndarray:
        with pytest.raises(RuntimeError, match="model exploded"):
            await batcher.submit(ROWS[:1])
        return await batcher.submit(ROWS[:1])

    np.testing.assert_array_equal(asyncio.run(scenario()), model.predict_proba(ROWS[:1]))


def test_on_the_loop_batches_still_form_and_route_rows() -> None:
    """The fast path runs on the event loop: requests that arrive in the same loop
    iteration share a call, and each gets its own rows back."""
    model = SlowModel(pause_s=0)
    batcher = Batcher(model, max_rows=64, in_thread=False)

    async def scenario() -> list[np.ndarray]:
        requests = [ROWS[i : i + 2] for i in range(0, 40, 2)]
        results = await asyncio.gather(*(batcher.submit(m) for m in requests))
        await batcher.aclose()
        return list(results)

    results = asyncio.run(scenario())
    np.testing.assert_array_equal(np.vstack(results), model.model.predict_proba(ROWS))
    assert model.calls == [40]  # all twenty arrived in one iteration
    assert model.threads == {threading.current_thread().name}
