"""Shadow evaluation as a pure function: the candidate's answers next to stable's, per request.

Comparing canary and stable over *different* requests sees a worse model only through
aggregate shifts: a candidate that turns 15 % of one class into another moves the class
mix by a few points, well inside any margin that tolerates a retrained model's normal
variation. Paired on the *same* request, the same change is a disagreement on every
affected row, and the disagreement rate is a plain Bernoulli proportion.

So in the shadow phase the gate replays the live requests stable answered (KServe's
payload-logger events, :mod:`gate.providers.payloads`) to the candidate, and judges:

- **disagreement**: the share of rows whose predicted class differs from stable's, with an
  anytime-valid confidence sequence (Robbins' beta-binomial mixture, Howard et al. 2021,
  :func:`gate.core.sequential.proportion_cs`). It **fails** when the rate is shown above
  ``shadow_disagreement_margin`` (at level ``alpha / 2``), **passes** when shown below it
  (level ``alpha``), and is otherwise inconclusive;
- **replay errors**: the share of replayed requests the candidate answered with a server
  error, or refused while stable had answered 200; it fails when shown above
  ``max_error_rate`` (level ``alpha / 2``) and never stands in the way of a pass (the
  canary steps judge availability with live traffic).

The gate may look at every tick: the intervals hold at all sample sizes at once. Nothing
here is weighted towards a verdict: a candidate exactly at the margin passes or fails with
probability at most ``alpha`` either way, and a shadow phase whose budget runs out
undecided hands over to the canary steps, which judge again on the traffic the candidate
then answers. The flip matrix (stable class -> candidate class) and the mean absolute
probability shift (when both answers carry probabilities) are evidence for people; the
decision rests on the disagreement rate.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from gate.core.analysis import Check, bounds
from gate.core.sequential import (
    Interval,
    difference_cs,
    discordant_difference_cs,
    proportion_cs,
)
from gate.core.spec import AnalysisSpec, Outcome

FAIL_CHECKS = 3  # disagreement, replay errors and labelled accuracy share the fail alpha


class PairedEvidence(BaseModel):
    """What the shadow phase has paired so far (summed by the store over its pairs)."""

    requests: int = 0
    """Logged requests replayed to the candidate."""
    rows: int = 0
    """Rows both stable and the candidate classified."""
    disagreements: int = 0
    """Rows whose classes differ."""
    flips: dict[str, int] = Field(default_factory=dict)
    """``"stable class -> candidate class"``: rows, the diagonal included."""
    shift_rows: int = 0
    """Rows where both answers carried probabilities."""
    shift_sum: float = 0.0
    """Sum over those rows of the mean absolute probability difference."""
    candidate_errors: int = 0
    """Replayed requests the candidate answered with a server error, could not be
    reached for, or refused (4xx) although stable had answered them with 200."""
    not_comparable: int = 0
    """Replayed requests whose answers could not be paired (stable's logged answer or
    the candidate's could not be read as classes, or row counts differ)."""
    labelled_rows: int = 0
    """Paired rows whose true label arrived (``POST /v1/feedback``)."""
    candidate_correct: int = 0
    stable_correct: int = 0
    """Of the labelled rows: how many each model classified right (the same requests)."""
    only_stable_correct: int = 0
    only_candidate_correct: int = 0
    """Of the labelled rows: how many only one of the two classified right (the
    discordant rows a paired test uses)."""
    skipped: int = 0
    """Logged requests left out by the replay rate bound (``shadow_rate_per_s``)."""
    latency_ms_sum: float = 0.0
    """Sum of the candidate's answer times (replays are paced, so this is its latency
    on real inputs, not under the live load)."""

    @property
    def disagreement_rate(self) -> float | None:
        return self.disagreements / self.rows if self.rows else None

    @property
    def mean_shift(self) -> float | None:
        return self.shift_sum / self.shift_rows if self.shift_rows else None

    @property
    def error_rate(self) -> float | None:
        return self.candidate_errors / self.requests if self.requests else None


class ShadowVerdict(BaseModel):
    outcome: Outcome
    reason: str
    checks: list[Check] = Field(default_factory=list)
    paired: PairedEvidence | None = None
    early: bool = False
    """Decided before the shadow budget ran out."""


def judge_shadow(spec: AnalysisSpec, paired: PairedEvidence | None) -> ShadowVerdict:
    """Judge the pairs so far; see the module docstring for the rules."""
    if paired is None:
        return ShadowVerdict(outcome=Outcome.ERROR, reason="paired evidence unavailable")
    alpha = 1 - spec.confidence
    fail_alpha = alpha / FAIL_CHECKS
    margin = spec.shadow_disagreement_margin
    rows = float(paired.rows)
    pass_side = proportion_cs(paired.disagreements, rows, alpha)
    fail_side = proportion_cs(paired.disagreements, rows, fail_alpha)
    rate = paired.disagreement_rate
    if fail_side.above(margin):
        outcome = Outcome.FAIL
    elif pass_side.below(margin):
        outcome = Outcome.PASS
    else:
        outcome = Outcome.INCONCLUSIVE
    disagreement = Check(
        name="disagreement",
        outcome=outcome,
        estimate=rate,
        interval=bounds(pass_side),
        fail_interval=bounds(fail_side),
        margin=margin,
        fail_above=margin,
        alpha=alpha,
        n_canary=rows,
        detail=(
            f"{paired.disagreements} of {paired.rows} rows classified differently from "
            "stable on the same live requests"
        ),
        needs=None if outcome is not Outcome.INCONCLUSIVE else _needs(paired, margin, pass_side),
        traffic="shadow",
    )
    errors = proportion_cs(paired.candidate_errors, float(paired.requests), fail_alpha)
    error_check = Check(
        name="shadow_error_rate",
        outcome=Outcome.FAIL if errors.above(spec.max_error_rate) else Outcome.PASS,
        estimate=paired.error_rate,
        fail_interval=bounds(errors),
        fail_above=spec.max_error_rate,
        alpha=fail_alpha,
        n_canary=float(paired.requests),
        detail=(
            f"{paired.candidate_errors} of {paired.requests} replayed requests failed on the "
            f"candidate; hard ceiling {spec.max_error_rate:g}"
        ),
        traffic="shadow",
    )
    checks = [disagreement, error_check, *_accuracy(spec, paired, fail_alpha)]
    failed = [c for c in checks if c.outcome is Outcome.FAIL]
    if failed:
        shown = ", ".join(
            f"{c.name} {c.fail_interval[0] if c.fail_interval else float('nan'):.4g} > "
            f"{c.fail_above:.4g}"
            for c in failed
        )
        reason = f"shadow: regression shown on live requests: {shown}{_flips_text(paired)}"
        return ShadowVerdict(outcome=Outcome.FAIL, reason=reason, checks=checks, paired=paired)
    if outcome is Outcome.PASS:
        reason = (
            f"shadow: disagreement {rate or 0.0:.2%} shown below {margin:.2%} at "
            f"{spec.confidence:.0%} confidence ({paired.rows} rows of {paired.requests} live "
            "requests)"
        )
        return ShadowVerdict(outcome=Outcome.PASS, reason=reason, checks=checks, paired=paired)
    if paired.rows == 0:
        reason = "shadow: no live request paired yet"
    else:
        reason = f"shadow: not enough evidence yet: disagreement needs {disagreement.needs}"
    return ShadowVerdict(outcome=Outcome.INCONCLUSIVE, reason=reason, checks=checks, paired=paired)


def _accuracy(spec: AnalysisSpec, paired: PairedEvidence, fail_alpha: float) -> list[Check]:
    """Where true labels arrived for paired requests: both models' accuracy on the same
    requests. Like a canary's, it can only fail (a drop shown beyond half
    ``accuracy_margin``); the disagreement decides a pass. The two accuracies are
    compared as independent proportions, which ignores the pairing and so errs wide."""
    n = paired.labelled_rows
    if n <= 0:
        return []
    errors_c = (n - paired.candidate_correct, float(n))
    errors_s = (n - paired.stable_correct, float(n))
    shown = difference_cs(errors_c, errors_s, fail_alpha)
    limit = spec.accuracy_margin / 2
    acc_c, acc_s = paired.candidate_correct / n, paired.stable_correct / n
    return [
        Check(
            name="shadow_accuracy",
            outcome=Outcome.FAIL if shown.above(limit) else Outcome.PASS,
            estimate=acc_s - acc_c,
            fail_interval=bounds(shown),
            fail_above=limit,
            alpha=fail_alpha,
            n_canary=float(n),
            n_stable=float(n),
            detail=(
                f"labelled accuracy on the same {n} rows: candidate {acc_c:.2%}, stable "
                f"{acc_s:.2%} (the drop)"
            ),
            traffic="shadow",
        )
    ]


def judge_watch(spec: AnalysisSpec, paired: PairedEvidence | None) -> ShadowVerdict:
    """The post-promotion watch: the shadow phase turned around. The new stable answers
    users; their requests are replayed to the previous stable, kept warm, so in these
    pairs ``stable_*`` is the new stable and ``candidate_*`` the previous one. Where
    labels arrived, the new stable's accuracy drop below the previous one's on the same
    rows (a paired confidence sequence on the rows only one of them got right,
    :func:`gate.core.sequential.discordant_difference_cs`) fails the watch when shown
    beyond half ``accuracy_margin`` at level ``1 - confidence``, as a canary's labelled
    accuracy does. It can only fail: a watch
    that shows nothing until its end is over (``INCONCLUSIVE`` until then)."""
    if paired is None:
        return ShadowVerdict(outcome=Outcome.ERROR, reason="paired evidence unavailable")
    n = paired.labelled_rows
    if n <= 0:
        reason = f"watch: no labelled answer paired yet ({paired.requests} requests replayed)"
        return ShadowVerdict(outcome=Outcome.INCONCLUSIVE, reason=reason, paired=paired)
    alpha = 1 - spec.confidence
    shown = discordant_difference_cs(  # previous right only, minus new right only
        paired.only_candidate_correct, paired.only_stable_correct, float(n), alpha
    )
    limit = spec.accuracy_margin / 2
    acc_new, acc_old = paired.stable_correct / n, paired.candidate_correct / n
    outcome = Outcome.FAIL if shown.above(limit) else Outcome.INCONCLUSIVE
    detail = (
        f"labelled accuracy on the same {n} rows: new stable {acc_new:.2%}, previous {acc_old:.2%}"
    )
    check = Check(
        name="watch_accuracy",
        outcome=outcome,
        estimate=acc_old - acc_new,
        fail_interval=bounds(shown),
        fail_above=limit,
        alpha=alpha,
        n_canary=float(n),
        n_stable=float(n),
        detail=f"{detail} (the drop)",
        traffic="watch",
    )
    if outcome is Outcome.FAIL:
        reason = (
            f"watch: the new stable's accuracy is shown worse than the previous stable's: "
            f"drop >= {shown.low:.4g} > {limit:.4g} ({detail})"
        )
    else:
        reason = f"watch: no drop shown ({detail})"
    return ShadowVerdict(outcome=outcome, reason=reason, checks=[check], paired=paired)


def _needs(paired: PairedEvidence, margin: float, interval: Interval) -> str:
    rate = paired.disagreement_rate
    if rate is None:
        return "live requests to pair"
    if rate >= margin:
        return f"more rows (the estimate {rate:.2%} is at or above the margin {margin:.2%})"
    room, spread = margin - rate, interval.high - rate
    total = paired.rows * (spread / room) ** 2
    return f"about {max(total - paired.rows, 1):,.0f} more paired rows"


def _flips_text(paired: PairedEvidence) -> str:
    off = sorted(
        ((count, pair) for pair, count in paired.flips.items() if _off_diagonal(pair)),
        reverse=True,
    )
    if not off:
        return ""
    shown = ", ".join(f"{pair}: {count}" for count, pair in off[:3])
    return f" (class flips {shown})"


def _off_diagonal(pair: str) -> bool:
    stable, _, candidate = pair.partition("->")
    return stable != candidate


__all__ = ["PairedEvidence", "ShadowVerdict", "judge_shadow", "judge_watch"]
