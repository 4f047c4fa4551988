"""Confidence sequences: their error rates by simulation, looked at every tick.

Each simulation peeks after every batch, as the gate does, and counts runs in which the
interval *ever* missed the truth: that share must stay below alpha. A fixed-sample
interval peeked the same way is the negative control: it misses far more often, so
these tests can tell a valid sequence from an invalid one. Seeds are fixed.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm

from gate.core.sequential import (
    Interval,
    class_subsets,
    count_cs,
    difference_cs,
    histogram_inverse,
    proportion_cs,
    quantile_cs,
    ratio_cs,
    total_variation_cs,
)
from predictor.metrics import LATENCY_BUCKETS

ALPHA = 0.05
RUNS = 300
LOOKS = 60


def wald(successes: float, trials: float, alpha: float) -> Interval:
    """The textbook fixed-sample interval: valid for one look only."""
    rate = successes / trials
    half = norm.ppf(1 - alpha / 2) * math.sqrt(max(rate * (1 - rate), 1e-12) / trials)
    return Interval(rate - half, rate + half)


def ever_missed(rate: float, batch: int, interval: object, seed: int) -> float:
    rng = np.random.default_rng(seed)
    missed = 0
    for _ in range(RUNS):
        successes = np.cumsum(rng.binomial(batch, rate, size=LOOKS))
        for look, x in enumerate(successes, start=1):
            ci = interval(float(x), float(look * batch), ALPHA)  # type: ignore[operator]
            if not ci.low <= rate <= ci.high:
                missed += 1
                break
    return missed / RUNS


@pytest.mark.parametrize("rate", [0.002, 0.05, 1 / 3, 0.9])
def test_proportion_sequence_holds_at_every_look(rate: float) -> None:
    assert ever_missed(rate, 20, proportion_cs, seed=1) <= ALPHA


def test_a_peeked_fixed_sample_interval_does_not_negative_control() -> None:
    assert ever_missed(1 / 3, 20, wald, seed=1) > 2 * ALPHA


def test_difference_sequence_holds_for_unequal_streams() -> None:
    rng = np.random.default_rng(2)
    missed = 0
    for _ in range(RUNS):
        canary = np.cumsum(rng.binomial(10, 0.01, size=LOOKS))
        stable = np.cumsum(rng.binomial(90, 0.01, size=LOOKS))
        for look in range(LOOKS):
            ci = difference_cs(
                (float(canary[look]), 10.0 * (look + 1)),
                (float(stable[look]), 90.0 * (look + 1)),
                ALPHA,
            )
            if not ci.low <= 0.0 <= ci.high:
                missed += 1
                break
    assert missed / RUNS <= ALPHA


def lognormal_buckets(rng: np.random.Generator, n: int, median_s: float) -> np.ndarray:
    edges = np.array(LATENCY_BUCKETS)
    cdf = norm.cdf((np.log(edges) - math.log(median_s)) / 0.5)
    probabilities = np.diff(np.concatenate([[0.0], cdf, [1.0]]))
    return rng.multinomial(n, probabilities)


def as_cumulative(counts: np.ndarray) -> list[tuple[float, float]]:
    bounds = [*LATENCY_BUCKETS, math.inf]
    return list(zip(bounds, np.cumsum(counts).astype(float).tolist(), strict=True))


def test_quantile_sequence_holds_when_latency_is_even_within_buckets() -> None:
    """The interval's assumption (Prometheus' too): inside a bucket, observations are
    spread evenly. Then the true quantile is the interpolated one and coverage holds."""
    rng = np.random.default_rng(3)
    probabilities = np.diff(np.concatenate([[0.0], norm.cdf(np.log(LATENCY_BUCKETS) + 5), [1]]))
    cumulative = [
        (b, float(c)) for b, c in zip(LATENCY_BUCKETS, np.cumsum(probabilities), strict=False)
    ]
    truth = histogram_inverse([*cumulative, (math.inf, 1.0)], 0.95)
    missed = 0
    for _ in range(RUNS):
        counts = np.zeros(len(LATENCY_BUCKETS) + 1, dtype=np.int64)
        for _look in range(LOOKS):
            counts += rng.multinomial(20, probabilities)
            ci = quantile_cs(as_cumulative(counts), 0.95, ALPHA)
            if not ci.low <= truth <= ci.high:
                missed += 1
                break
    assert missed / RUNS <= ALPHA


def test_equal_latency_is_rarely_called_slower() -> None:
    """What the fail side asks of real (lognormal, not even within buckets) latency: with
    canary and stable alike the interpolation's bias is the same on both sides, and the
    ratio is shown above 1 in at most alpha of the runs."""
    rng = np.random.default_rng(5)
    shown = 0
    for _ in range(RUNS):
        canary = np.zeros(len(LATENCY_BUCKETS) + 1, dtype=np.int64)
        stable = np.zeros(len(LATENCY_BUCKETS) + 1, dtype=np.int64)
        for _look in range(LOOKS):
            canary += lognormal_buckets(rng, 10, 0.004)
            stable += lognormal_buckets(rng, 30, 0.004)
            ratio = ratio_cs(
                quantile_cs(as_cumulative(canary), 0.95, ALPHA / 2),
                quantile_cs(as_cumulative(stable), 0.95, ALPHA / 2),
            )
            if ratio.low > 1:
                shown += 1
                break
    assert shown / RUNS <= ALPHA


def test_identical_class_mixes_are_rarely_called_different() -> None:
    rng = np.random.default_rng(4)
    shown = 0
    names = ("a", "b", "c")
    for _ in range(RUNS):
        canary = np.zeros(3)
        stable = np.zeros(3)
        for _look in range(LOOKS):
            canary += rng.multinomial(10, [0.5, 0.3, 0.2])
            stable += rng.multinomial(30, [0.5, 0.3, 0.2])
            ci = total_variation_cs(
                dict(zip(names, canary, strict=True)), dict(zip(names, stable, strict=True)), ALPHA
            )
            if ci.low > 0:
                shown += 1
                break
    assert shown / RUNS <= ALPHA


def test_total_variation_bounds_contain_a_known_shift() -> None:
    canary = {"a": 4000.0, "b": 2000.0, "c": 4000.0}
    stable = {"a": 5000.0, "b": 2000.0, "c": 3000.0}  # TV = 0.1
    ci = total_variation_cs(canary, stable, ALPHA)
    assert ci.low < 0.1 < ci.high and ci.low > 0.05 and ci.high < 0.15


def test_no_data_decides_nothing() -> None:
    assert proportion_cs(0, 0, ALPHA) == Interval(0.0, 1.0)
    assert quantile_cs([], 0.95, ALPHA) == Interval(0.0, math.inf)
    assert total_variation_cs({}, {}, ALPHA) == Interval(0.0, 1.0)
    assert ratio_cs(Interval(0.0, math.inf), Interval(0.0, math.inf)) == Interval(0.0, math.inf)
    assert count_cs(0, 0.95, ALPHA) == (0.0, 0.0)


def test_edges() -> None:
    assert proportion_cs(10, 10, ALPHA).high == 1.0
    assert proportion_cs(0, 10, ALPHA).low == 0.0
    wide, narrow = proportion_cs(1, 100, ALPHA), proportion_cs(100, 10_000, ALPHA)
    assert wide.low < narrow.low < 0.01 < narrow.high < wide.high
    with pytest.raises(ValueError, match="alpha"):
        proportion_cs(1, 10, 0)
    buckets = [(0.01, 50.0), (0.02, 100.0), (math.inf, 100.0)]
    assert histogram_inverse(buckets, 75) == pytest.approx(0.015)
    assert histogram_inverse([(0.01, 50.0), (math.inf, 100.0)], 75) == math.inf
    assert len(class_subsets(["a", "b", "c"])) == 3
    assert len(class_subsets([str(i) for i in range(10)])) == 10  # one per class beyond 7
    assert class_subsets(["only"]) == []
