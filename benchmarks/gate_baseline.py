"""Today's fixed-threshold canary analysis, as it was before anytime-valid statistics
(irisgate f67d09d, ``gate/core/analysis.py``), kept only so ``make gate-bench`` can put
the two side by side. Not used by the gate.

Thresholds on one window: server-error rate <= 1 % with >= 50 canary requests, p99 <=
250 ms and <= 3x stable's, Jensen-Shannon divergence of predicted classes <= 0.1; judged
once per step, at its deadline.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from gate.core.spec import Outcome


@dataclass(frozen=True)
class BaselineSpec:
    """The old defaults (``AnalysisSpec`` of f67d09d)."""

    min_requests: int = 50
    max_error_rate: float = 0.01
    max_error_rate_increase: float = 0.01
    max_p99_ms: float = 250.0
    max_p99_ratio: float = 3.0
    max_drift: float = 0.1
    failure_limit: int = 2
    inconclusive_limit: int = 5


@dataclass
class BaselineRole:
    requests: float = 0.0
    server_errors: float = 0.0
    p99_s: float | None = None
    class_counts: dict[str, float] | None = None

    @property
    def error_rate(self) -> float:
        return self.server_errors / self.requests if self.requests else 0.0


def js_divergence(first: Mapping[str, float], second: Mapping[str, float]) -> float:
    """Jensen-Shannon divergence in bits: 0 for equal distributions, 1 for disjoint ones."""
    keys = sorted(set(first) | set(second))
    total_a = sum(first.get(k, 0.0) for k in keys)
    total_b = sum(second.get(k, 0.0) for k in keys)
    if total_a <= 0 or total_b <= 0:
        return 0.0
    p = [first.get(k, 0.0) / total_a for k in keys]
    q = [second.get(k, 0.0) / total_b for k in keys]
    m = [(a + b) / 2 for a, b in zip(p, q, strict=True)]

    def kl(x: list[float]) -> float:
        return sum(a * math.log2(a / b) for a, b in zip(x, m, strict=True) if a > 0)

    return max(0.0, min(1.0, (kl(p) + kl(q)) / 2))


def baseline_analyze(
    spec: BaselineSpec,
    canary: BaselineRole,
    stable: BaselineRole,
    stable_reference: BaselineRole | None,
) -> Outcome:
    """The old ``analyze``'s outcome for one window (same checks, same order)."""
    if canary.requests < spec.min_requests:
        return Outcome.INCONCLUSIVE
    if stable.requests < spec.min_requests and stable_reference is not None:
        stable = stable_reference
    stable_known = stable.requests >= spec.min_requests
    passed = [canary.error_rate <= spec.max_error_rate]
    if stable_known:
        passed.append(canary.error_rate <= stable.error_rate + spec.max_error_rate_increase)
    if canary.p99_s is None:
        passed.append(False)
    else:
        passed.append(canary.p99_s * 1000 <= spec.max_p99_ms)
        if stable_known and stable.p99_s:
            passed.append(canary.p99_s / stable.p99_s <= spec.max_p99_ratio)
    if stable_known and sum((stable.class_counts or {}).values()) > 0:
        drift = js_divergence(canary.class_counts or {}, stable.class_counts or {})
        passed.append(drift <= spec.max_drift)
    return Outcome.PASS if all(passed) else Outcome.FAIL
