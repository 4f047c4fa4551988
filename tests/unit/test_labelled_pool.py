"""The load tests' labelled traffic (load_tests.pool) and delayed label poster
(load_tests.labels): deterministic with a seed, drift applied, labels right, and the
poster's share, delay, batching and failure counting, without locust or a network."""

from __future__ import annotations

import json
import random
import statistics
from pathlib import Path
from typing import Any

import pytest
import requests
from sklearn.datasets import load_iris

from load_tests.labels import (
    MAX_LABELS_PER_POST,
    LabelPoster,
    LabelPostError,
    LabelQueue,
    http_sender,
)
from load_tests.pool import PETAL_WIDTH_SHIFT, DriftedIris

# --- the pool ---------------------------------------------------------------------------


def test_the_same_seed_draws_the_same_rows() -> None:
    pool = DriftedIris.from_iris()
    first = pool.sample(random.Random(3), 50)
    again = pool.sample(random.Random(3), 50)
    other = pool.sample(random.Random(4), 50)
    assert first == again
    assert first.rows != other.rows
    assert len(first.rows) == len(first.labels) == 50
    assert all(len(row) == 4 for row in first.rows)


def test_each_row_is_labelled_with_its_source_flowers_species() -> None:
    # one flower per species, no noise: the rows are those flowers, drifted
    flowers = [[5.0, 3.4, 1.5, 0.2], [5.9, 2.8, 4.3, 1.3], [6.5, 3.0, 5.8, 2.2]]
    pool = DriftedIris(flowers, [0, 1, 2], jitter_sd=0.0)
    drawn = pool.sample(random.Random(1), 60)
    for row, label in zip(drawn.rows, drawn.labels, strict=True):
        source = flowers[label]
        assert row[:3] == source[:3]
        assert row[3] == pytest.approx(source[3] + PETAL_WIDTH_SHIFT)
    assert set(drawn.labels) == {0, 1, 2}


def test_iris_labels_match_the_data_set() -> None:
    iris = load_iris()
    by_species: dict[int, list[list[float]]] = {0: [], 1: [], 2: []}
    for flower, species in zip(iris.data.tolist(), iris.target.tolist(), strict=True):
        by_species[species].append(flower)
    drawn = DriftedIris.from_iris(jitter_sd=0.0).sample(random.Random(2), 300)
    for row, label in zip(drawn.rows, drawn.labels, strict=True):
        undrifted = [*row[:3], round(row[3] - PETAL_WIDTH_SHIFT, 2)]
        assert any(undrifted == pytest.approx(f) for f in by_species[label])


def test_jitter_and_drift_move_the_measurements_as_documented() -> None:
    flower = [5.8, 3.0, 4.35, 1.2]
    pool = DriftedIris([flower], [1])
    rows = pool.sample(random.Random(5), 4000).rows
    for column in range(4):
        values = [row[column] for row in rows]
        shift = PETAL_WIDTH_SHIFT if column == 3 else 0.0
        assert statistics.fmean(values) == pytest.approx(flower[column] + shift, abs=0.01)
        assert statistics.stdev(values) == pytest.approx(0.15, abs=0.01)


def test_measurements_are_rounded_and_never_below_the_floor() -> None:
    pool = DriftedIris([[0.1, 0.1, 0.1, 0.1]], [0], jitter_sd=1.0, petal_width_shift=0.0)
    rows = pool.sample(random.Random(6), 200).rows
    values = [v for row in rows for v in row]
    assert min(values) == 0.1
    assert all(round(v, 2) == v for v in values)


@pytest.mark.parametrize(
    ("flowers", "species", "sd"),
    [([], [], 0.15), ([[1.0, 2.0, 3.0, 4.0]], [0, 1], 0.15), ([[1.0, 2.0]], [0], 0.15)],
)
def test_a_malformed_pool_is_refused(
    flowers: list[list[float]], species: list[int], sd: float
) -> None:
    with pytest.raises(ValueError):
        DriftedIris(flowers, species, jitter_sd=sd)


# --- the label queue ----------------------------------------------------------------------


class Always(random.Random):
    """random() fixed: below every share (0.0) or at/above it."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def random(self) -> float:
        return self.value


def test_labels_wait_for_their_delay() -> None:
    queue = LabelQueue(1.0, 5.0, Always(0.0))
    queue.offer("a", [1], now=100.0)
    queue.offer("b", [2], now=101.0)
    assert queue.take_due(104.9) == []
    assert queue.take_due(105.0) == [[{"id": "a", "label": 1}]]
    assert queue.take_due(106.5) == [[{"id": "b", "label": 2}]]
    assert len(queue) == 0


def test_several_rows_give_a_list_of_labels() -> None:
    queue = LabelQueue(1.0, 0.0, Always(0.0))
    queue.offer("x", [0, 2, 1], now=0.0)
    assert queue.take_due(0.0) == [[{"id": "x", "label": [0, 2, 1]}]]


def test_only_the_share_is_kept() -> None:
    queue = LabelQueue(0.3, 0.0, random.Random(7))
    kept = sum(queue.offer(str(i), [0], now=0.0) for i in range(10_000))
    assert 2_800 < kept < 3_200
    assert (queue.counters.answered, queue.counters.chosen) == (10_000, kept)
    assert LabelQueue(0.0, 0.0, random.Random(1)).offer("a", [0], 0.0) is False
    assert LabelQueue(1.0, 0.0, Always(0.999)).offer("a", [0], 0.0) is True


def test_due_labels_go_in_batches_of_at_most_a_thousand_oldest_first() -> None:
    queue = LabelQueue(1.0, 1.0, Always(0.0))
    for i in range(2_500):
        queue.offer(f"r{i}", [i % 3], now=float(i) / 1000)
    batches = queue.take_due(10.0)
    assert [len(b) for b in batches] == [MAX_LABELS_PER_POST, MAX_LABELS_PER_POST, 500]
    assert batches[0][0]["id"] == "r0" and batches[-1][-1]["id"] == "r2499"


def test_a_full_queue_drops_and_counts() -> None:
    queue = LabelQueue(1.0, 60.0, Always(0.0), max_pending=2)
    assert [queue.offer(str(i), [0], 0.0) for i in range(4)] == [True, True, False, False]
    assert queue.counters.dropped == 2 and len(queue) == 2


@pytest.mark.parametrize(
    ("share", "delay", "batch"), [(-0.1, 5.0, 10), (1.5, 5.0, 10), (0.5, -1.0, 10), (0.5, 5, 0)]
)
def test_bad_settings_are_refused(share: float, delay: float, batch: int) -> None:
    with pytest.raises(ValueError):
        LabelQueue(share, delay, random.Random(), max_batch=batch)


# --- the poster -----------------------------------------------------------------------------


class FakeGate:
    """``send`` that records batches; fails the POSTs whose index is in ``fail``."""

    def __init__(self, fail: set[int] | None = None) -> None:
        self.batches: list[list[dict[str, Any]]] = []
        self.fail = fail or set()

    def __call__(self, batch: list[dict[str, Any]]) -> tuple[int, int]:
        index = len(self.batches)
        self.batches.append(batch)
        if index in self.fail:
            raise LabelPostError("HTTP 503: gate busy")
        return len(batch), 1


def test_the_poster_sends_what_is_due_and_counts_the_answers(tmp_path: Path) -> None:
    gate = FakeGate()
    queue = LabelQueue(1.0, 5.0, Always(0.0))
    report = tmp_path / "labels.json"
    poster = LabelPoster(queue, gate, report)
    for i in range(1_200):
        queue.offer(f"r{i}", [1], now=0.0)
    queue.offer("late", [2], now=3.0)
    poster.flush(now=4.0)
    assert gate.batches == []
    poster.flush(now=5.0)
    assert [len(b) for b in gate.batches] == [1_000, 200]
    counters = poster.counters
    assert (counters.posts, counters.posted, counters.accepted, counters.unknown) == (
        2,
        1_200,
        1_200,
        2,
    )
    assert counters.pending == 1
    written = json.loads(report.read_text())
    assert written["posted"] == 1_200 and written["pending"] == 1
    assert "1200 posted in 2 POSTs" in counters.summary()


def test_a_failed_post_is_counted_and_the_poster_goes_on() -> None:
    gate = FakeGate(fail={0})
    queue = LabelQueue(1.0, 0.0, Always(0.0), max_batch=2)
    poster = LabelPoster(queue, gate)
    for i in range(5):
        queue.offer(str(i), [0], now=0.0)
    poster.flush(now=1.0)
    counters = poster.counters
    assert len(gate.batches) == 3
    assert (counters.failed_posts, counters.failed_labels, counters.posted) == (1, 2, 3)
    assert counters.last_error == "HTTP 503: gate busy"
    assert "1 POSTs failed (2 labels), last: HTTP 503: gate busy" in counters.summary()


class FakeResponse:
    def __init__(self, status: int, body: Any) -> None:
        self.status_code = status
        self.body = body
        self.text = json.dumps(body) if not isinstance(body, str) else body

    def json(self) -> Any:
        if isinstance(self.body, str):
            raise ValueError("not JSON")
        return self.body


class FakeSession:
    """What the sender uses of ``requests.Session``: ``post``."""

    def __init__(self, answer: FakeResponse | Exception) -> None:
        self.answer = answer
        self.calls: list[dict[str, Any]] = []

    def post(self, url: str, **kwargs: Any) -> Any:
        self.calls.append({"url": url, **kwargs})
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def test_the_http_sender_posts_the_gates_feedback_body() -> None:
    session = FakeSession(FakeResponse(200, {"accepted": 2, "unknown": 1}))
    send = http_sender(session, "http://gate/v1/feedback", "tok", "iris")
    assert send([{"id": "a", "label": 0}, {"id": "b", "label": [1, 2]}]) == (2, 1)
    call = session.calls[0]
    assert call["url"] == "http://gate/v1/feedback"
    assert call["headers"] == {"Authorization": "Bearer tok"}
    assert call["json"] == {
        "model": "iris",
        "labels": [{"id": "a", "label": 0}, {"id": "b", "label": [1, 2]}],
    }


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (FakeResponse(401, {"detail": "missing or wrong token"}), "HTTP 401"),
        (FakeResponse(200, "<html>"), "unexpected answer"),
        (FakeResponse(200, {"accepted": 1}), "unexpected answer"),
        (requests.ConnectionError("refused"), "ConnectionError: refused"),
    ],
)
def test_the_http_sender_turns_every_failure_into_a_label_post_error(
    answer: FakeResponse | Exception, message: str
) -> None:
    send = http_sender(FakeSession(answer), "http://gate/v1/feedback", "tok", "iris")
    with pytest.raises(LabelPostError, match=message):
        send([{"id": "a", "label": 0}])
