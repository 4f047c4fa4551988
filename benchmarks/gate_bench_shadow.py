"""``make gate-bench``'s shadow and label cells: the whole rollout after the accuracy gate.

A rollout starts where a passed accuracy gate leaves it (the real
:func:`gate.core.decide.after_validation`, with a stable version, so in
``Phase.SHADOW``), and is driven tick by tick (2 s) by the real state machine:

- **shadow**: every live request is answered by stable (the canary weight is the state's,
  0); the gate replays ``min(arrivals, shadow_rate_per_s x tick)`` of them to the
  candidate, and each replayed row is a pair: both answers agree, or stable's alone is
  right, or the candidate's alone is (``ShadowScenario.answer_shares``). The candidate
  answers a replayed request with a server error as often as stable does (0.1 %). The
  pairs so far are judged by :func:`gate.core.paired.judge_shadow` and
  :func:`gate.core.decide.after_shadow` every tick, until it fails, passes, or its
  budget (``shadow_s``) is spent;
- **canary steps**: as the canary-step cells simulate them
  (:mod:`benchmarks.gate_traffic`, class flips applied to the canary's answers), judged
  by :func:`gate.core.analysis.analyze` and :func:`gate.core.decide.after_tick`, with the
  labels that arrived so far as :class:`gate.core.analysis.LabelEvidence`.

Labels: a share of requests gets its true label ``label_delay_s`` after the tick that
served it (all of a tick's labels at once, up to 2 s later than exact). A label joins
the shadow pair of its request (paired accuracy, ``PairedEvidence.labelled_rows``), and
stable's or the canary's live answer; as the gate's controller counts them, stable's
labelled answers are summed from the rollout's start (its shadow phase included), the
canary's from its first step. Stable is right on 95 % of rows.

Scenarios change the candidate only. A class flip turns a share of versicolor answers
into virginica (classes are equally likely, so 15 % of one class is 5 % of all rows); an
accuracy drop answers another class on rows stable got right, with the class mix
unchanged (the wrong class is either other one), so on the canary's live traffic only
labels can see it; a healthy retrained candidate answers a share of rows differently
from stable, half of them where stable was right, half where it was wrong (its accuracy
unchanged).
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from benchmarks.gate_traffic import (
    HORIZON_S,
    STABLE_ERROR_RATE,
    TICK_S,
    Role,
    Scenario,
    Traffic,
)
from gate.core.analysis import Check, LabelEvidence, WindowMeasurement, analyze
from gate.core.decide import Action, ValidationVerdict, after_shadow, after_tick, after_validation
from gate.core.paired import PairedEvidence, judge_shadow
from gate.core.spec import AnalysisSpec, Candidate, Outcome, Phase
from gate.core.state import RolloutState

STABLE_ACCURACY = 0.95
LABEL_DELAY_S = 30.0
LABEL_CHECKS = frozenset({"accuracy", "shadow_accuracy"})
SEED_BASE = 1_000  # shadow cells draw seeds apart from the canary-step cells'

# Row kinds, by who answered right: both (alike), neither (alike), stable only, candidate only.
BOTH, NEITHER, STABLE_ONLY, CANDIDATE_ONLY = range(4)


@dataclass(frozen=True)
class ShadowScenario:
    name: str
    flip_share: float = 0.0
    """Of versicolor answers, turned into virginica (seen by the canary's class mix)."""
    accuracy_drop: float = 0.0
    """Of all rows: stable right, the candidate answers another class (mix unchanged)."""
    churn: float = 0.0
    """Of all rows: answered differently from stable, as often right as stable."""
    label_share: float = 0.0
    """Of requests: their true label arrives, ``label_delay_s`` after the request."""
    label_delay_s: float = LABEL_DELAY_S
    shadow: bool = True
    """False: the rollout has no shadow phase (``shadow_s`` 0), to show what the canary
    steps and labels do alone."""

    def __post_init__(self) -> None:
        if self.flip_share and self.label_share:
            # a flipped answer's correctness depends on its true class, not modelled here
            raise ValueError("labels are modelled for class-neutral changes only")

    def answer_shares(self, with_flips: bool) -> np.ndarray:
        """Shares of rows of each kind (``BOTH`` ... ``CANDIDATE_ONLY``); a flip is a row
        stable got right (in shadow, where classes are not drawn)."""
        fixes = self.churn / 2
        breaks = self.accuracy_drop + fixes + (self.flip_share / 3 if with_flips else 0.0)
        return np.array([STABLE_ACCURACY - breaks, 1 - STABLE_ACCURACY - fixes, breaks, fixes])

    @property
    def class_neutral(self) -> bool:
        """Whether answers change without a class shift (drawn row by row)."""
        return bool(self.accuracy_drop or self.churn)


SHADOW_SCENARIOS = (
    ShadowScenario("healthy, agrees with stable on every row"),
    ShadowScenario("healthy retrained, 0.5 % of rows answered differently", churn=0.005),
    ShadowScenario(
        "healthy retrained (0.5 % differ), labels for 50 % after 30 s",
        churn=0.005,
        label_share=0.5,
    ),
    ShadowScenario("class flip 15 % (5 % of rows)", flip_share=0.15),
    ShadowScenario("class flip 40 % (13 % of rows)", flip_share=0.40),
    ShadowScenario("accuracy -5 points, no labels", accuracy_drop=0.05),
    ShadowScenario(
        "accuracy -5 points, labels for 50 % after 30 s", accuracy_drop=0.05, label_share=0.5
    ),
    ShadowScenario(
        "accuracy -5 points, labels for 50 % after 30 s, no shadow phase",
        accuracy_drop=0.05,
        label_share=0.5,
        shadow=False,
    ),
)


@dataclass
class ShadowRun:
    outcome: str  # failed_in_shadow, rolled_back, promoted, undecided
    seconds: float
    shadow: str
    """How the shadow phase ended: failed, passed (early), budget (spent undecided), or
    none (the spec has none)."""
    shadow_seconds: float
    pairs: int  # paired rows judged when the shadow phase ended
    candidate_requests: int  # live requests the candidate answered before the decision
    wrong_answers: int  # of them: wrong where stable's answer would have been right
    on_labels: bool = False  # a check on labels was among the failed ones that stopped it


@dataclass
class _Labels:
    """Labelled answers so far, by whose answer; labels on their way wait in ``pending``."""

    stable: tuple[int, ...] = (0, 0)  # rows, correct
    canary: tuple[int, ...] = (0, 0)
    paired: tuple[int, ...] = (0, 0, 0)  # rows, stable correct, candidate correct
    pending: deque[tuple[float, str, tuple[int, ...]]] = field(default_factory=deque)

    def expect(self, due: float, kind: str, counts: tuple[int, ...]) -> None:
        if counts[0]:
            self.pending.append((due, kind, counts))

    def arrive(self, now: float) -> None:
        """Labels whose delay has elapsed join their answers."""
        while self.pending and self.pending[0][0] <= now:
            _, kind, counts = self.pending.popleft()
            total = tuple(a + b for a, b in zip(getattr(self, kind), counts, strict=True))
            setattr(self, kind, total)

    def evidence(self) -> LabelEvidence:
        return LabelEvidence(
            stable_rows=self.stable[0],
            stable_correct=self.stable[1],
            canary_rows=self.canary[0],
            canary_correct=self.canary[1],
        )


def start_shadow(spec: AnalysisSpec, now: datetime) -> RolloutState:
    """A rollout whose accuracy gate just passed, with a stable to compare with: in its
    shadow phase (at its first step when ``spec.shadow_s`` is 0)."""
    validating = RolloutState(
        id="bench",
        model="iris",
        candidate=Candidate(
            version="2", artifact_uri="registry/iris/2", offline_metrics={"accuracy": 0.97}
        ),
        spec=spec,
        stable_version="1",
        created_at=now,
        updated_at=now,
    )
    verdict = ValidationVerdict(outcome=Outcome.PASS, reason="accuracy gate (not simulated)")
    transition = after_validation(validating, verdict, now)
    assert transition is not None
    return transition.state


def _failed(checks: Sequence[Check]) -> set[str]:
    return {c.name for c in checks if c.outcome is Outcome.FAIL}


def _replay(
    rng: np.random.Generator,
    paired: PairedEvidence,
    logged: int,
    cap: int,
    shares: np.ndarray,
    label_share: float,
) -> tuple[int, int, int]:
    """One tick of the replayer: at most ``cap`` of the ``logged`` requests are paired
    (the rest skipped). Returns the labelled pairs to come: (rows, stable correct,
    candidate correct)."""
    replayed = min(logged, cap)
    failures = int(rng.binomial(replayed, STABLE_ERROR_RATE))
    kinds = rng.multinomial(replayed - failures, shares)
    paired.requests += replayed
    paired.rows += replayed - failures
    paired.disagreements += int(kinds[STABLE_ONLY] + kinds[CANDIDATE_ONLY])
    paired.candidate_errors += failures
    paired.skipped += logged - replayed
    if not label_share:
        return (0, 0, 0)
    got = rng.binomial(kinds, label_share)
    return (
        int(got.sum()),
        int(got[BOTH] + got[STABLE_ONLY]),
        int(got[BOTH] + got[CANDIDATE_ONLY]),
    )


def simulate_shadow(
    scenario: ShadowScenario, rate: float, seed: int, spec: AnalysisSpec | None = None
) -> ShadowRun:
    """One rollout from its shadow phase, tick by tick, until failed, promoted, rolled
    back or the horizon."""
    rng = np.random.default_rng(seed)
    spec = spec or AnalysisSpec()
    if not scenario.shadow:
        spec = spec.model_copy(update={"shadow_s": 0.0})
    traffic = Traffic(Scenario(scenario.name, flip_share=scenario.flip_share), rate, rng)
    shares = scenario.answer_shares(with_flips=True)
    canary_shares = scenario.answer_shares(with_flips=False)
    label_share, delay = scenario.label_share, scenario.label_delay_s
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    state = start_shadow(spec, t0)
    stable, canary = Role(), Role()
    labels = _Labels()
    paired = PairedEvidence()
    shadow_end = None if state.phase is Phase.SHADOW else ("none", 0.0, 0)
    served = wrong = 0
    replay_cap = int(spec.shadow_rate_per_s * TICK_S)
    for tick in range(1, int(HORIZON_S / TICK_S) + 1):
        seconds = tick * TICK_S
        now = t0 + timedelta(seconds=seconds)
        total = int(rng.poisson(rate * TICK_S))
        to_canary = int(rng.binomial(total, state.canary_weight / 100))
        stable_errors, _ = traffic.serve(stable, total - to_canary, canary=False)
        errors, flips = traffic.serve(canary, to_canary, canary=True)
        served += to_canary
        wrong += flips
        # Draw only what the scenario needs: scenarios that differ only in what they do
        # not draw (an accuracy drop without labels, a flip) then share a random stream.
        if to_canary and (scenario.class_neutral or label_share):
            kinds = rng.multinomial(to_canary - errors, canary_shares)
            wrong += int(kinds[STABLE_ONLY])
            if label_share:
                got = rng.binomial(kinds, label_share)
                right = int(got[BOTH] + got[CANDIDATE_ONLY])
                labels.expect(seconds + delay, "canary", (int(got.sum()), right))
        if label_share:
            rows = int(rng.binomial(total - to_canary - stable_errors, label_share))
            right = int(rng.binomial(rows, STABLE_ACCURACY))
            labels.expect(seconds + delay, "stable", (rows, right))
        deadline = state.step_deadline is not None and now >= state.step_deadline
        if state.phase is Phase.SHADOW:
            logged = total - to_canary
            coming = _replay(rng, paired, logged, replay_cap, shares, label_share)
            labels.expect(seconds + delay, "paired", coming)
            labels.arrive(seconds)
            paired.labelled_rows, paired.stable_correct, paired.candidate_correct = labels.paired
            judged = judge_shadow(spec, paired)
            shadow = after_shadow(state, judged, now, deadline)
            if shadow is None:
                continue
            state = shadow.state
            if shadow.action is Action.FAIL:
                on_labels = bool(_failed(judged.checks) & LABEL_CHECKS)
                return ShadowRun(
                    "failed_in_shadow", seconds, "failed", seconds, paired.rows, served, wrong,
                    on_labels,
                )  # fmt: skip
            early = "passed" if judged.outcome is Outcome.PASS else "budget"
            shadow_end = (early, seconds, paired.rows)
            stable, canary = Role(), Role()  # the first step's window begins
            continue
        labels.arrive(seconds)
        window_s = (now - state.window_start).total_seconds() if state.window_start else 0.0
        verdict = analyze(
            spec,
            WindowMeasurement(stable=stable.window(), canary=canary.window(), window_s=window_s),
            state.evidence,
            must_show_margins=spec.proving_step(state.step_index),
            deadline_reached=deadline,
            labels=labels.evidence() if label_share else None,
        )
        transition = after_tick(state, verdict, now, deadline)
        if transition is None:
            continue
        state = transition.state
        if transition.action in (Action.STEP, Action.RETRY_STEP):
            stable, canary = Role(), Role()
        elif transition.action in (Action.PROMOTE, Action.ROLLBACK):
            assert shadow_end is not None
            outcome = "promoted" if transition.action is Action.PROMOTE else "rolled_back"
            on_labels = bool(_failed(verdict.checks) & LABEL_CHECKS)
            return ShadowRun(outcome, seconds, *shadow_end, served, wrong, on_labels)
    ended = shadow_end or ("budget", HORIZON_S, paired.rows)
    return ShadowRun("undecided", HORIZON_S, *ended, served, wrong)


def run_seed(seed: int, scenario_index: int, run: int) -> int:
    return seed * 1_000_003 + (SEED_BASE + scenario_index) * 10_007 + run


def shadow_cell(job: tuple[int, float, int, int]) -> dict[str, Any]:
    """``runs`` rollouts of one scenario at one rate, summarised."""
    scenario_index, rate, runs, seed = job
    scenario = SHADOW_SCENARIOS[scenario_index]
    results = [
        simulate_shadow(scenario, rate, run_seed(seed, scenario_index, i)) for i in range(runs)
    ]
    decided = [r for r in results if r.outcome != "undecided"]
    in_shadow = [r for r in results if r.outcome == "failed_in_shadow"]

    def share(values: Sequence[bool]) -> float:
        return sum(values) / len(results)

    def median(values: Sequence[float]) -> float | None:
        return statistics.median(values) if values else None

    return {
        "scenario": scenario.name,
        "rate": rate,
        "runs": runs,
        "label_share": scenario.label_share,
        "label_delay_s": scenario.label_delay_s,
        "failed_in_shadow": share([r.outcome == "failed_in_shadow" for r in results]),
        "shadow_passed_early": share([r.shadow == "passed" for r in results]),
        "shadow_budget_spent": share([r.shadow == "budget" for r in results]),
        "rolled_back": share([r.outcome == "rolled_back" for r in results]),
        "promoted": share([r.outcome == "promoted" for r in results]),
        "undecided": share([r.outcome == "undecided" for r in results]),
        "stopped": share([r.outcome in ("failed_in_shadow", "rolled_back") for r in results]),
        "stopped_on_labels": share([r.on_labels for r in results]),
        "median_decision_s": median([r.seconds for r in decided]),
        "median_shadow_s": median([r.shadow_seconds for r in results]),
        "median_shadow_pairs": median([r.pairs for r in results]),
        "median_candidate_requests": median([r.candidate_requests for r in decided]),
        "max_candidate_requests_failed_in_shadow": (
            max(r.candidate_requests for r in in_shadow) if in_shadow else None
        ),
        "median_wrong_answers": median([r.wrong_answers for r in decided]),
    }


def shadow_jobs(runs: int, seed: int, rates: Sequence[float]) -> list[tuple[int, float, int, int]]:
    return [(index, rate, runs, seed) for index in range(len(SHADOW_SCENARIOS)) for rate in rates]


__all__ = [
    "SHADOW_SCENARIOS",
    "ShadowRun",
    "ShadowScenario",
    "shadow_cell",
    "shadow_jobs",
    "simulate_shadow",
    "start_shadow",
]
