"""The simulated traffic both of ``make gate-bench``'s simulations draw from.

Poisson arrivals, each request sent to the canary with the step's weight; stable answers
with 0.1 % server errors, lognormal latency (median 4 ms, sigma 0.5) observed into the
predictor's own histogram buckets, and Iris' three classes in equal shares. A
:class:`Scenario` changes the canary only. The canary-step cells
(:mod:`benchmarks.gate_bench`) and the shadow cells (:mod:`benchmarks.gate_bench_shadow`)
share it, so their figures rest on the same traffic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.stats import norm

from benchmarks.gate_baseline import BaselineRole
from gate.core.analysis import RoleWindow
from predictor.metrics import LATENCY_BUCKETS

TICK_S = 2.0
HORIZON_S = 3600.0
STABLE_ERROR_RATE = 0.001
LATENCY_MEDIAN_S = 0.004
LATENCY_SIGMA = 0.5
CLASSES = ("setosa", "versicolor", "virginica")
LE = [*(f"{b:g}" for b in LATENCY_BUCKETS), "+Inf"]


@dataclass(frozen=True)
class Scenario:
    name: str
    extra_error_rate: float = 0.0
    latency_factor: float = 1.0
    flip_share: float = 0.0  # of versicolor answers, turned into virginica
    generated_rate: float = 0.0  # requests/s the gate sends itself, allowed to count

    def bad_answers(self, requests: int, errors: int, flips: int) -> int:
        if self.latency_factor != 1.0:
            return requests
        return errors + flips


def bucket_probabilities(factor: float) -> np.ndarray:
    """P(latency in each bucket) for the lognormal, scaled by ``factor``, last = +Inf."""
    edges = np.array(LATENCY_BUCKETS)
    cdf = norm.cdf((np.log(edges) - math.log(LATENCY_MEDIAN_S * factor)) / LATENCY_SIGMA)
    return np.diff(np.concatenate([[0.0], cdf, [1.0]]))


@dataclass
class Role:
    """One predictor's counters over the current window."""

    requests: int = 0
    errors: int = 0
    buckets: np.ndarray = field(default_factory=lambda: np.zeros(len(LE), dtype=np.int64))
    classes: np.ndarray = field(default_factory=lambda: np.zeros(3, dtype=np.int64))

    def window(self) -> RoleWindow:
        cumulative = np.cumsum(self.buckets)
        return RoleWindow(
            requests=float(self.requests),
            server_errors=float(self.errors),
            latency_buckets={le: float(c) for le, c in zip(LE, cumulative, strict=True)},
            class_counts={name: float(c) for name, c in zip(CLASSES, self.classes, strict=True)},
        )

    def baseline(self) -> BaselineRole:
        window = self.window()
        return BaselineRole(
            requests=window.requests,
            server_errors=window.server_errors,
            p99_s=window.p99_s,
            class_counts=window.class_counts,
        )


class Traffic:
    """Requests of one tick, drawn for both roles."""

    def __init__(self, scenario: Scenario, rate: float, rng: np.random.Generator) -> None:
        self.scenario, self.rate, self.rng = scenario, rate, rng
        self.stable_latency = bucket_probabilities(1.0)
        self.canary_latency = bucket_probabilities(scenario.latency_factor)

    def serve(self, role: Role, requests: int, canary: bool) -> tuple[int, int]:
        """Add ``requests`` to ``role``; returns (server errors, flipped answers)."""
        rng = self.rng
        rate = STABLE_ERROR_RATE + (self.scenario.extra_error_rate if canary else 0.0)
        errors = int(rng.binomial(requests, rate))
        answered = requests - errors
        role.requests += requests
        role.errors += errors
        role.buckets += rng.multinomial(
            requests, self.canary_latency if canary else self.stable_latency
        )
        truth = rng.multinomial(answered, [1 / 3] * 3)
        flips = int(rng.binomial(truth[1], self.scenario.flip_share)) if canary else 0
        role.classes += truth + np.array([0, -flips, flips])
        return errors, flips
