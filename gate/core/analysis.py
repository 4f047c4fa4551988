"""Canary analysis as a pure function: counters in, a verdict with its evidence out.

Every check is a pair of anytime-valid confidence sequences (:mod:`gate.core.sequential`)
over the rollout's evidence so far, canary against stable over the same windows, so the
gate may look at every tick without inflating its error rates:

- **fail** when a regression is *shown*: the canary's server-error rate is shown above
  stable's; its latency quantile, or the distance of its predicted-class mix from
  stable's, is shown beyond *half* the margin (two models never answer exactly alike,
  and a shift well inside the margin must not lose a race against a pass); or a hard
  ceiling is shown exceeded. The fail-side intervals share ``alpha`` across the checks (a
  union bound), so a healthy canary is failed with probability at most ``alpha`` over the
  whole rollout;
- **pass** when the canary is *shown within the margins* the rollout was configured
  with (server errors at most ``error_rate_margin`` above stable's, the latency quantile
  at most ``1 + latency_margin`` times stable's, a class mix at most
  ``class_shift_margin`` away in total variation). Each such interval has level
  ``1 - alpha`` on its own: a canary beyond one margin passes that check, and so is
  promoted, with probability at most ``alpha``. A step may pass this way early, at any
  tick;
- otherwise **inconclusive**, saying which check needs how much more traffic.

Most steps bound exposure rather than prove anything: at its deadline a step that
served canary traffic and showed no regression moves on (like Flagger's and Argo's
steps). One step proves: the last one below 100 % (:meth:`AnalysisSpec.proving_step`,
where stable still serves) moves on only when every margin is shown, and is extended
until then, up to ``inconclusive_limit``. So no evidence is never a promotion, and a
regression of the configured size is let through with probability at most ``alpha``.

Requests the gate generated itself (``generated_rate_per_s``) are judged apart, with
their own checks: their inputs are held-out rows, not live ones. A regression shown on
them fails like any other; a pass may rest on them only with ``generated_counts``, and
says so (``Verdict.passed_on``). Judging two kinds of evidence splits ``alpha`` between
them on each side, so both promises above still hold.

Evidence accumulates over the rollout (windows are folded into ``RolloutState.evidence``
when a step ends): stable keeps its earlier traffic when the canary takes 100 %. The
intervals assume requests are independent draws from one population during the
rollout; ``make gate-bench`` measures the error rates this gives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field, computed_field

from gate.core.sequential import (
    Interval,
    difference_cs,
    histogram_inverse,
    proportion_cs,
    quantile_cs,
    ratio_cs,
    total_variation_cs,
)
from gate.core.spec import AnalysisSpec, Outcome

FAIL_CHECKS = 6  # error rate, latency, class shift, accuracy and two ceilings share alpha


class RoleWindow(BaseModel):
    """What one predictor did (deltas over a window, or sums of windows)."""

    requests: float = 0.0
    server_errors: float = 0.0
    latency_buckets: dict[str, float] = Field(default_factory=dict)
    """Cumulative latency histogram in seconds, Prometheus style: ``le`` -> count."""
    class_counts: dict[str, float] = Field(default_factory=dict)

    @property
    def error_rate(self) -> float:
        return self.server_errors / self.requests if self.requests else 0.0

    def buckets(self) -> list[tuple[float, float]]:
        """The histogram as ``(upper bound, cumulative count)`` sorted by bound."""
        return sorted((float(le), count) for le, count in self.latency_buckets.items())

    def quantile_s(self, quantile: float) -> float | None:
        """Point estimate of a latency quantile (``histogram_quantile``'s interpolation)."""
        return _point(self.buckets(), quantile)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def p99_s(self) -> float | None:
        return self.quantile_s(0.99)

    def plus(self, other: RoleWindow) -> RoleWindow:
        """Counts of both, as if one window."""

        def add(first: dict[str, float], second: dict[str, float]) -> dict[str, float]:
            return {k: first.get(k, 0.0) + second.get(k, 0.0) for k in first.keys() | second}

        return RoleWindow(
            requests=self.requests + other.requests,
            server_errors=self.server_errors + other.server_errors,
            latency_buckets=add(self.latency_buckets, other.latency_buckets),
            class_counts=add(self.class_counts, other.class_counts),
        )


def _point(ordered: list[tuple[float, float]], quantile: float) -> float | None:
    """A quantile of sorted cumulative buckets, as Prometheus' ``histogram_quantile``
    estimates it (the highest finite bound when it falls into ``+Inf``)."""
    if not ordered or ordered[-1][1] <= 0:
        return None
    value = histogram_inverse(ordered, quantile * ordered[-1][1])
    if math.isinf(value):
        finite = [bound for bound, _ in ordered if math.isfinite(bound)]
        return finite[-1] if finite else None
    return value


class WindowMeasurement(BaseModel):
    stable: RoleWindow
    canary: RoleWindow
    window_s: float
    generated: WindowMeasurement | None = None
    """The requests the gate sent itself, apart (``None``: it sent none)."""

    def plus(self, other: WindowMeasurement) -> WindowMeasurement:
        generated = self.generated or other.generated
        if self.generated is not None and other.generated is not None:
            generated = self.generated.plus(other.generated)
        return WindowMeasurement(
            stable=self.stable.plus(other.stable),
            canary=self.canary.plus(other.canary),
            window_s=self.window_s + other.window_s,
            generated=generated,
        )


Bounds = tuple[float | None, float | None]


class Check(BaseModel):
    """One check's evidence: the estimate, the two intervals and what they were held to."""

    name: str
    outcome: Outcome
    estimate: float | None
    interval: Bounds | None = None
    """Pass side: confidence sequence at level 1 - alpha."""
    fail_interval: Bounds | None = None
    """Fail side: confidence sequence at level 1 - alpha / (number of checks)."""
    margin: float | None = None
    """Pass when ``interval`` lies below this."""
    fail_above: float
    """Fail when ``fail_interval`` lies above this."""
    alpha: float
    n_canary: float
    n_stable: float | None = None
    detail: str
    needs: str | None = None
    """When inconclusive: roughly what more evidence would decide it."""
    traffic: str = "live"
    """Whose requests: ``live``, or ``generated`` by the gate (judged apart)."""


class Verdict(BaseModel):
    outcome: Outcome
    reason: str
    checks: list[Check] = Field(default_factory=list)
    measurement: WindowMeasurement | None = None
    """The step's own window."""
    totals: WindowMeasurement | None = None
    """Everything the rollout measured so far (the analysed evidence)."""
    early: bool = False
    """Passed before the step's deadline."""
    passed_on: str | None = None
    """A pass's evidence: ``live`` requests, or requests ``generated`` by the gate."""


def bounds(interval: Interval) -> Bounds:
    """JSON-safe ends: an unbounded end (no evidence yet) is ``None``."""
    low, high = interval.low, interval.high
    return (low if math.isfinite(low) else None, high if math.isfinite(high) else None)


def _needs(estimate: float, interval: Interval, margin: float, n: float, unit: str) -> str:
    """Roughly how many canary requests would bring the interval inside the margin,
    if the estimate held (widths shrink about as 1/sqrt(n))."""
    room = margin - estimate
    if room <= 0:
        return f"the estimate {estimate:.4g}{unit} is beyond the margin {margin:.4g}{unit}"
    spread = interval.high - estimate
    if n <= 0:
        return "canary traffic"
    if not math.isfinite(spread):
        return "more canary requests (its interval is still open above)"
    ratio = spread / room
    if ratio > 1e4:
        return f"the estimate {estimate:.4g}{unit} is at the margin {margin:.4g}{unit}"
    total = n * ratio**2
    return f"about {max(total - n, 1):,.0f} more canary requests"


@dataclass(frozen=True)
class _Relative:
    """What one relative check is held to, and the evidence it has."""

    name: str
    margin: float
    fail_above: float
    alpha: float
    n_canary: float
    n_stable: float

    def _check(self, **fields: Any) -> Check:
        return Check(
            name=self.name,
            margin=self.margin,
            fail_above=self.fail_above,
            alpha=self.alpha,
            n_canary=self.n_canary,
            n_stable=self.n_stable,
            **fields,
        )

    def waiting(self, detail: str, needs: str) -> Check:
        """Not judged: a side has no data."""
        return self._check(outcome=Outcome.INCONCLUSIVE, estimate=None, detail=detail, needs=needs)

    def judged(
        self, estimate: float, passing: Interval, failing: Interval, detail: str, unit: str = ""
    ) -> Check:
        """Fail when ``failing`` is above ``fail_above``, pass when ``passing`` is below
        the margin, otherwise say what is missing."""
        if failing.above(self.fail_above):
            outcome, needs = Outcome.FAIL, None
        elif passing.below(self.margin):
            outcome, needs = Outcome.PASS, None
        else:
            outcome = Outcome.INCONCLUSIVE
            needs = _needs(estimate, passing, self.margin, self.n_canary, unit)
        return self._check(
            outcome=outcome,
            estimate=estimate,
            interval=bounds(passing),
            fail_interval=bounds(failing),
            detail=detail,
            needs=needs,
        )


def _ceiling(
    name: str, shown: Interval, limit: float, estimate: float | None, n: float, alpha: float
) -> Check:
    """A hard guard on the canary alone: it fails when shown above ``limit``, and never
    stands in the way of a pass."""
    return Check(
        name=name,
        outcome=Outcome.FAIL if shown.above(limit) else Outcome.PASS,
        estimate=estimate,
        fail_interval=bounds(shown),
        fail_above=limit,
        alpha=alpha,
        n_canary=n,
        detail=f"canary alone; hard ceiling {limit:g}",
    )


def _error_checks(
    spec: AnalysisSpec, canary: RoleWindow, stable: RoleWindow, alpha: float, fail_alpha: float
) -> list[Check]:
    c, s = (canary.server_errors, canary.requests), (stable.server_errors, stable.requests)
    ceiling = _ceiling(
        "error_rate_ceiling",
        proportion_cs(*c, fail_alpha),
        spec.max_error_rate,
        canary.error_rate,
        canary.requests,
        fail_alpha,
    )
    check = _Relative(
        "error_rate", spec.error_rate_margin, 0.0, alpha, canary.requests, stable.requests
    )
    if stable.requests <= 0:
        detail = "stable served no requests in this rollout: nothing to compare with"
        return [ceiling, check.waiting(detail, "stable traffic")]
    return [
        ceiling,
        check.judged(
            canary.error_rate - stable.error_rate,
            difference_cs(c, s, alpha),
            difference_cs(c, s, fail_alpha),
            f"canary {canary.error_rate:.4%} vs stable {stable.error_rate:.4%} server errors "
            "(difference)",
        ),
    ]


def _latency_checks(
    spec: AnalysisSpec, canary: RoleWindow, stable: RoleWindow, alpha: float, fail_alpha: float
) -> list[Check]:
    q = spec.latency_quantile
    c_buckets, s_buckets = canary.buckets(), stable.buckets()
    n_c = c_buckets[-1][1] if c_buckets else 0.0
    n_s = s_buckets[-1][1] if s_buckets else 0.0
    p99 = _point(c_buckets, 0.99)
    ceiling = _ceiling(
        "latency_p99_ceiling",
        quantile_cs(c_buckets, 0.99, fail_alpha).scaled(1000),
        spec.max_p99_ms,
        None if p99 is None else p99 * 1000,
        n_c,
        fail_alpha,
    )
    check = _Relative(
        f"latency_p{q * 100:g}",
        1 + spec.latency_margin,
        1 + spec.latency_margin / 2,
        alpha,
        n_c,
        n_s,
    )
    c_point, s_point = _point(c_buckets, q), _point(s_buckets, q)
    if n_s <= 0 or n_c <= 0 or not s_point or c_point is None:
        needs = "canary traffic" if n_c <= 0 else "stable traffic"
        return [ceiling, check.waiting("needs latency from both canary and stable", needs)]

    def ratio(level: float) -> Interval:
        return ratio_cs(quantile_cs(c_buckets, q, level / 2), quantile_cs(s_buckets, q, level / 2))

    return [
        ceiling,
        check.judged(
            c_point / s_point,
            ratio(alpha),
            ratio(fail_alpha),
            f"canary p{q * 100:g} {c_point * 1000:.2f} ms / stable {s_point * 1000:.2f} ms (ratio)",
            unit="x",
        ),
    ]


def _class_check(
    spec: AnalysisSpec, canary: RoleWindow, stable: RoleWindow, alpha: float, fail_alpha: float
) -> list[Check]:
    n_c, n_s = sum(canary.class_counts.values()), sum(stable.class_counts.values())
    if n_c <= 0 and n_s <= 0:
        return []  # the model reports no classes
    margin = spec.class_shift_margin
    check = _Relative("class_shift", margin, margin / 2, alpha, n_c, n_s)
    if n_c <= 0 or n_s <= 0:
        needs = "canary traffic" if n_c <= 0 else "stable traffic"
        return [check.waiting("needs predicted classes from both canary and stable", needs)]
    classes = canary.class_counts.keys() | stable.class_counts.keys()
    shares = (
        abs(canary.class_counts.get(k, 0.0) / n_c - stable.class_counts.get(k, 0.0) / n_s)
        for k in classes
    )
    return [
        check.judged(
            sum(shares) / 2,
            total_variation_cs(canary.class_counts, stable.class_counts, alpha),
            total_variation_cs(canary.class_counts, stable.class_counts, fail_alpha),
            "total-variation distance between the predicted-class mixes (share of answers "
            "that changed class)",
        )
    ]


class LabelEvidence(BaseModel):
    """Answers whose true labels arrived (``POST /v1/feedback``), over the rollout so far."""

    stable_rows: int = 0
    stable_correct: int = 0
    canary_rows: int = 0
    canary_correct: int = 0


def _accuracy_check(
    spec: AnalysisSpec, labels: LabelEvidence | None, alpha: float, fail_alpha: float
) -> list[Check]:
    """Live accuracy from delayed labels: the canary's drop below stable's. It fails when
    the drop is shown beyond half ``accuracy_margin``, passes when shown within it. Unless
    the rollout requires label evidence (``require_labels``), it can only fail: labels
    are often late or partial, and their absence must not hold a rollout."""
    labels = labels or LabelEvidence()
    n_c, n_s = labels.canary_rows, labels.stable_rows
    margin = spec.accuracy_margin
    check = _Relative("accuracy", margin, margin / 2, alpha, n_c, n_s)
    if n_c <= 0 or n_s <= 0:
        if not spec.require_labels:
            return []
        side = "canary" if n_c <= 0 else "stable"
        return [check.waiting(f"no labelled {side} answers yet", f"labels for {side} answers")]
    c_errors = (n_c - labels.canary_correct, n_c)
    s_errors = (n_s - labels.stable_correct, n_s)
    acc_c, acc_s = labels.canary_correct / n_c, labels.stable_correct / n_s
    judged = check.judged(
        acc_s - acc_c,
        difference_cs(c_errors, s_errors, alpha),
        difference_cs(c_errors, s_errors, fail_alpha),
        f"labelled accuracy: canary {acc_c:.2%} of {n_c}, stable {acc_s:.2%} of {n_s} (the drop)",
    )
    if not spec.require_labels and judged.outcome is Outcome.INCONCLUSIVE:
        judged = judged.model_copy(
            update={
                "outcome": Outcome.PASS,
                "needs": None,
                "detail": judged.detail + "; labels not required: only a drop shown fails",
            }
        )
    return [judged]


def analyze(
    spec: AnalysisSpec,
    measurement: WindowMeasurement | None,
    earlier: WindowMeasurement | None = None,
    *,
    must_show_margins: bool = True,
    deadline_reached: bool = True,
    labels: LabelEvidence | None = None,
) -> Verdict:
    """Judge the evidence so far: ``earlier`` (the rollout's finished windows) plus the
    current step's ``measurement``.

    Before the step's deadline only a decided outcome matters (a pass is early, a fail
    is at once); at the deadline an intermediate step with canary traffic and no
    regression shown moves on, while the proving step needs every margin shown.
    """
    if measurement is None:
        return Verdict(outcome=Outcome.ERROR, reason="metrics backend unavailable")
    totals = measurement if earlier is None else earlier.plus(measurement)
    alpha = 1 - spec.confidence
    generating = spec.generated_rate_per_s > 0
    # Generated requests are judged apart from live ones (their inputs differ), so each
    # side has its own tests: the fail side splits alpha over both, and so does the pass
    # side when a pass may come from either.
    fail_alpha = alpha / (FAIL_CHECKS * (2 if generating else 1))
    pass_alpha = alpha / 2 if generating and spec.generated_counts else alpha

    def judge(evidence: WindowMeasurement, traffic: str) -> list[Check]:
        canary, stable = evidence.canary, evidence.stable
        checks = [
            *_error_checks(spec, canary, stable, pass_alpha, fail_alpha),
            *_latency_checks(spec, canary, stable, pass_alpha, fail_alpha),
            *_class_check(spec, canary, stable, pass_alpha, fail_alpha),
        ]
        if traffic != "live":
            checks = [c.model_copy(update={"traffic": traffic}) for c in checks]
        return checks

    live = [*judge(totals, "live"), *_accuracy_check(spec, labels, pass_alpha, fail_alpha)]
    generated = judge(totals.generated, "generated") if generating and totals.generated else []
    verdict = Verdict(
        outcome=Outcome.INCONCLUSIVE,
        reason="",
        checks=[*live, *generated],
        measurement=measurement,
        totals=totals,
    )
    failed = [c for c in verdict.checks if c.outcome is Outcome.FAIL]
    if failed:
        names = ", ".join(f"{_named(c)} {_shown(c)}" for c in failed)
        verdict.outcome, verdict.reason = Outcome.FAIL, f"regression shown: {names}"
        return verdict
    window_generated = measurement.generated.canary.requests if measurement.generated else 0.0
    sources = [("live", live, measurement.canary.requests > 0, totals)]
    if spec.generated_counts and totals.generated is not None:
        sources.append(("generated", generated, window_generated > 0, totals.generated))
    for traffic, checks, stepped, evidence in sources:
        if stepped and checks and all(c.outcome is Outcome.PASS for c in checks):
            verdict.outcome, verdict.early = Outcome.PASS, not deadline_reached
            verdict.passed_on = traffic
            label = (
                "" if traffic == "live" else " on generated traffic (held-out rows the gate sent)"
            )
            verdict.reason = (
                f"all {len(checks)} checks shown within their margins{label} at "
                f"{spec.confidence:.0%} confidence ({evidence.canary.requests:.0f} canary, "
                f"{evidence.stable.requests:.0f} stable requests)"
            )
            return verdict
    stepped = any(source[2] for source in sources)
    open_checks = [c for c in live if c.outcome is Outcome.INCONCLUSIVE]
    if deadline_reached and not must_show_margins and stepped:
        verdict.outcome = Outcome.PASS
        verdict.passed_on = "live" if measurement.canary.requests > 0 else "generated"
        verdict.reason = (
            f"no regression shown in {totals.canary.requests:.0f} canary requests"
            f"{_and_generated(totals)}; not yet within margins: "
            f"{', '.join(c.name for c in open_checks)} (the last step below 100 % must show "
            "them)"
        )
        return verdict
    if not stepped:
        verdict.reason = (
            f"the canary served no requests in this step's {measurement.window_s:.0f} s"
        )
    else:
        verdict.reason = "not enough evidence yet: " + "; ".join(
            f"{c.name} needs {c.needs}" for c in open_checks
        )
    return verdict


def _named(check: Check) -> str:
    return check.name if check.traffic == "live" else f"{check.name} ({check.traffic})"


def _and_generated(totals: WindowMeasurement) -> str:
    if totals.generated is None or totals.generated.canary.requests <= 0:
        return ""
    return f" and {totals.generated.canary.requests:.0f} generated"


def _shown(check: Check) -> str:
    low = check.fail_interval[0] if check.fail_interval else None
    return f"{low if low is not None else math.nan:.4g} > {check.fail_above:.4g}"
