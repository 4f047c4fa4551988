"""Canary analysis as a pure function: measurements of one window in, a verdict out.

Canary and stable are always measured over the same window, so load, time of day and
shared infrastructure affect both alike; the relative checks then compare like with like.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from pydantic import BaseModel, Field

from gate.core.spec import AnalysisSpec, Outcome


class RoleWindow(BaseModel):
    """What one predictor did during the window (deltas, not totals)."""

    requests: float = 0.0
    server_errors: float = 0.0
    p99_s: float | None = None
    class_counts: dict[str, float] = Field(default_factory=dict)

    @property
    def error_rate(self) -> float:
        return self.server_errors / self.requests if self.requests else 0.0


class WindowMeasurement(BaseModel):
    stable: RoleWindow
    canary: RoleWindow
    window_s: float


class Check(BaseModel):
    name: str
    value: float | None
    threshold: float
    passed: bool
    detail: str


class Verdict(BaseModel):
    outcome: Outcome
    reason: str
    checks: list[Check] = Field(default_factory=list)
    measurement: WindowMeasurement | None = None


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


def analyze(
    spec: AnalysisSpec,
    measurement: WindowMeasurement | None,
    stable_reference: RoleWindow | None = None,
) -> Verdict:
    """Judge one window.

    ``stable_reference`` is stable's last window with enough traffic: at 100 % canary
    weight stable serves nothing, and the relative checks compare with what it did last.
    """
    if measurement is None:
        return Verdict(outcome=Outcome.ERROR, reason="metrics backend unavailable")
    canary = measurement.canary
    if canary.requests < spec.min_requests:
        return Verdict(
            outcome=Outcome.INCONCLUSIVE,
            reason=f"canary served {canary.requests:.0f} requests in "
            f"{measurement.window_s:.0f} s; a step needs {spec.min_requests}",
            measurement=measurement,
        )
    stable = measurement.stable
    if stable.requests < spec.min_requests and stable_reference is not None:
        stable = stable_reference
    stable_known = stable.requests >= spec.min_requests

    checks = [
        Check(
            name="error_rate",
            value=canary.error_rate,
            threshold=spec.max_error_rate,
            passed=canary.error_rate <= spec.max_error_rate,
            detail=f"canary {canary.server_errors:.0f}/{canary.requests:.0f} server errors",
        ),
    ]
    if stable_known:
        limit = stable.error_rate + spec.max_error_rate_increase
        checks.append(
            Check(
                name="error_rate_vs_stable",
                value=canary.error_rate - stable.error_rate,
                threshold=spec.max_error_rate_increase,
                passed=canary.error_rate <= limit,
                detail=f"stable {stable.error_rate:.4f}, canary {canary.error_rate:.4f}",
            )
        )
    if canary.p99_s is None:
        checks.append(
            Check(
                name="latency_p99",
                value=None,
                threshold=spec.max_p99_ms,
                passed=False,
                detail="no latency data for the canary",
            )
        )
    else:
        canary_ms = canary.p99_s * 1000
        checks.append(
            Check(
                name="latency_p99",
                value=canary_ms,
                threshold=spec.max_p99_ms,
                passed=canary_ms <= spec.max_p99_ms,
                detail=f"canary p99 {canary_ms:.1f} ms",
            )
        )
        if stable_known and stable.p99_s:
            ratio = canary.p99_s / stable.p99_s
            checks.append(
                Check(
                    name="latency_p99_ratio",
                    value=ratio,
                    threshold=spec.max_p99_ratio,
                    passed=ratio <= spec.max_p99_ratio,
                    detail=f"canary {canary_ms:.1f} ms vs stable {stable.p99_s * 1000:.1f} ms",
                )
            )
    if stable_known and sum(stable.class_counts.values()) > 0:
        drift = js_divergence(canary.class_counts, stable.class_counts)
        checks.append(
            Check(
                name="class_drift",
                value=drift,
                threshold=spec.max_drift,
                passed=drift <= spec.max_drift,
                detail="Jensen-Shannon divergence of predicted classes",
            )
        )
    failed = [c for c in checks if not c.passed]
    if failed:
        names = ", ".join(f"{c.name} {_fmt(c.value)} > {_fmt(c.threshold)}" for c in failed)
        return Verdict(
            outcome=Outcome.FAIL, reason=f"failed: {names}", checks=checks, measurement=measurement
        )
    note = "" if stable_known else " (stable had too little traffic for relative checks)"
    return Verdict(
        outcome=Outcome.PASS,
        reason=f"all {len(checks)} checks passed{note}",
        checks=checks,
        measurement=measurement,
    )


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"
