"""``python -m benchmarks.gate_bench`` (``make gate-bench``): how good are the gate's decisions?

A decision-quality benchmark, not a unit test. It drives the real analysis
(:func:`gate.core.analysis.analyze`) and the real state machine
(:func:`gate.core.decide.after_tick`) with simulated traffic, tick by tick as the
controller does (one look every 2 s, the default ``GATE_TICK_INTERVAL_S``), and puts it
beside today's fixed-threshold analysis (:mod:`benchmarks.gate_baseline`, judged once per
step at its deadline, as it was) on the *same* simulated traffic.

Traffic (:mod:`benchmarks.gate_traffic`): Poisson arrivals at the given rate, each
request sent to the canary with the step's weight; stable answers with 0.1 % server
errors, lognormal latency (median 4 ms, sigma 0.5) observed into the predictor's own
histogram buckets, and Iris' three classes in equal shares. Scenarios change the canary
only: server errors +1 / +3 points, latency x1.5 / x4 (every quantile), and a share of
versicolor answers turned into virginica.

Per cell it reports P(promoted), P(rolled back), P(undecided within the horizon), the
median time to the decision, the canary requests and the bad answers served before it
(server errors, flipped answers; for the latency scenarios every canary answer was slow).

The "Shadow and labels" cells (:mod:`benchmarks.gate_bench_shadow`) run the whole
rollout after the accuracy gate instead: the shadow phase (live requests replayed to the
candidate, answers compared per request), then the canary steps, with true labels that
arrive late. Today's analysis had neither, so they have no baseline beside them.
``--only canary`` or ``--only shadow`` runs one of the two sets.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.gate_baseline import BaselineRole, BaselineSpec, baseline_analyze
from benchmarks.gate_bench_shadow import (
    LABEL_DELAY_S,
    SHADOW_SCENARIOS,
    STABLE_ACCURACY,
    shadow_cell,
    shadow_jobs,
)
from benchmarks.gate_traffic import (
    CLASSES,
    HORIZON_S,
    LATENCY_MEDIAN_S,
    LATENCY_SIGMA,
    LE,
    STABLE_ERROR_RATE,
    TICK_S,
    Role,
    Scenario,
    Traffic,
    bucket_probabilities,
)
from gate.core.analysis import RoleWindow, Verdict, WindowMeasurement, analyze
from gate.core.decide import Action, after_analysis, after_tick
from gate.core.spec import AnalysisSpec, Candidate, Outcome, Phase
from gate.core.state import RolloutState

ANALYSES = ("fixed thresholds (today)", "sequential (new)")


# "at the margin": a regression exactly as large as the default margin, which the
# sequential analysis promises to promote in at most 1 - confidence (5 %) of rollouts.
SCENARIOS = (
    Scenario("healthy"),
    Scenario("server errors +0.5 point (at the margin)", extra_error_rate=0.005),
    Scenario("server errors +1 point", extra_error_rate=0.01),
    Scenario("server errors +3 points", extra_error_rate=0.03),
    Scenario("latency x1.25 (at the margin)", latency_factor=1.25),
    Scenario("latency x1.5", latency_factor=1.5),
    Scenario("latency x4", latency_factor=4.0),
    Scenario("class flip 5 %", flip_share=0.05),
    Scenario("class flip 15 %", flip_share=0.15),
    Scenario("class flip 30 % (at the margin)", flip_share=0.30),
    Scenario("class flip 40 %", flip_share=0.40),
    Scenario("healthy, 20 generated req/s allowed to count", generated_rate=20.0),
)
RATES = (2.0, 10.0, 50.0, 200.0)
PARTS = ("canary", "shadow")


@dataclass
class Run:
    outcome: str  # promoted, rolled_back, undecided
    seconds: float
    canary_requests: int
    bad_answers: int
    on_generated: bool = False  # promoted on the gate's own requests (labelled so)


def _start(spec: AnalysisSpec, now: datetime) -> RolloutState:
    """A rollout that passed its accuracy gate: progressing, at the first step."""
    state = RolloutState(
        id="bench",
        model="iris",
        candidate=Candidate(
            version="2", artifact_uri="registry/iris/2", offline_metrics={"accuracy": 0.97}
        ),
        spec=spec,
        phase=Phase.PROGRESSING,
        step_index=0,
        canary_weight=spec.steps[0],
        created_at=now,
        updated_at=now,
    )
    return state.start_window(now)


def simulate(analysis: str, scenario: Scenario, rate: float, seed: int) -> Run:
    """One rollout, tick by tick, until promoted, rolled back or the horizon."""
    rng = np.random.default_rng(seed)
    traffic = Traffic(scenario, rate, rng)
    sequential = analysis == ANALYSES[1]
    spec = AnalysisSpec() if sequential else AnalysisSpec(inconclusive_limit=5)
    if scenario.generated_rate and sequential:  # today's analysis has no such thing
        spec = spec.model_copy(
            update={"generated_rate_per_s": scenario.generated_rate, "generated_counts": True}
        )
    old = BaselineSpec()
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    state = _start(spec, t0)
    stable, canary = Role(), Role()
    generated = (Role(), Role())  # stable, canary: held-out rows the gate sent to both
    reference: BaselineRole | None = None
    served = bad = 0
    ticks = int(HORIZON_S / TICK_S)
    for tick in range(1, ticks + 1):
        now = t0 + timedelta(seconds=tick * TICK_S)
        total = int(rng.poisson(rate * TICK_S))
        to_canary = int(rng.binomial(total, state.canary_weight / 100))
        traffic.serve(stable, total - to_canary, canary=False)
        errors, flips = traffic.serve(canary, to_canary, canary=True)
        served += to_canary
        bad += scenario.bad_answers(to_canary, errors, flips)
        if spec.generated_rate_per_s:  # split evenly, not served to any user
            sent = int(rng.poisson(spec.generated_rate_per_s * TICK_S))
            traffic.serve(generated[0], sent // 2, canary=False)
            traffic.serve(generated[1], sent - sent // 2, canary=True)
        deadline = state.step_deadline is not None and now >= state.step_deadline
        window_s = (now - state.window_start).total_seconds() if state.window_start else 0.0
        if sequential:
            measured = WindowMeasurement(
                stable=stable.window(), canary=canary.window(), window_s=window_s
            )
            if spec.generated_rate_per_s:
                measured.generated = WindowMeasurement(
                    stable=generated[0].window(), canary=generated[1].window(), window_s=window_s
                )
            verdict = analyze(
                spec,
                measured,
                state.evidence,
                must_show_margins=spec.proving_step(state.step_index),
                deadline_reached=deadline,
            )
            transition = after_tick(state, verdict, now, deadline)
        else:
            if not deadline:
                continue
            stable_window = stable.baseline()
            outcome = baseline_analyze(old, canary.baseline(), stable_window, reference)
            if stable_window.requests >= old.min_requests:
                reference = stable_window
            transition = after_analysis(state, Verdict(outcome=outcome, reason=""), now)
        if transition is None:
            continue
        state = transition.state
        if transition.action in (Action.STEP, Action.RETRY_STEP):
            stable, canary = Role(), Role()
            generated = (Role(), Role())
        elif transition.action is Action.PROMOTE:
            on_generated = sequential and verdict.passed_on == "generated"
            return Run("promoted", tick * TICK_S, served, bad, on_generated)
        elif transition.action is Action.ROLLBACK:
            return Run("rolled_back", tick * TICK_S, served, bad)
    return Run("undecided", HORIZON_S, served, bad)


def _cell(job: tuple[str, int, float, int, int]) -> dict[str, Any]:
    analysis, scenario_index, rate, runs, seed = job
    scenario = SCENARIOS[scenario_index]
    results = [
        simulate(analysis, scenario, rate, seed * 1_000_003 + scenario_index * 10_007 + i)
        for i in range(runs)
    ]
    decided = [r for r in results if r.outcome != "undecided"]

    def share(outcome: str) -> float:
        return sum(r.outcome == outcome for r in results) / len(results)

    def median(values: Sequence[float]) -> float | None:
        return statistics.median(values) if values else None

    return {
        "analysis": analysis,
        "scenario": scenario.name,
        "rate": rate,
        "runs": runs,
        "promoted": share("promoted"),
        "promoted_on_generated": sum(r.on_generated for r in results) / len(results),
        "rolled_back": share("rolled_back"),
        "undecided": share("undecided"),
        "median_decision_s": median([r.seconds for r in decided]),
        "median_canary_requests": median([r.canary_requests for r in decided]),
        "median_bad_answers": median([r.bad_answers for r in decided]),
    }


MARGINS: dict[str, tuple[str, tuple[float, ...]]] = {
    "error_rate": ("error_rate_margin", (0.005, 0.01, 0.02, 0.05)),
    "latency_p95": ("latency_margin", (0.25, 0.5, 1.0)),
    "class_shift": ("class_shift_margin", (0.1, 0.2, 0.3)),
}


def _expected(requests: float) -> RoleWindow:
    """Stable's expected counts for ``requests``, no noise."""
    cumulative = np.cumsum(bucket_probabilities(1.0)) * requests
    return RoleWindow(
        requests=requests,
        server_errors=STABLE_ERROR_RATE * requests,
        latency_buckets={le: float(c) for le, c in zip(LE, cumulative, strict=True)},
        class_counts={name: requests / 3 for name in CLASSES},
    )


def requests_to_show(check: str, field_name: str, margin: float) -> int | None:
    """The fewest canary requests (with as many for stable, both healthy) at which the
    analysis shows ``check`` within ``margin``: what a user's traffic must supply."""
    spec = AnalysisSpec.model_validate({field_name: margin})
    for n in np.unique(np.geomspace(20, 1_000_000, 600).astype(int)):
        window = WindowMeasurement(
            canary=_expected(float(n)), stable=_expected(float(n)), window_s=1.0
        )
        verdict = analyze(spec, window)
        if any(c.name == check and c.outcome is Outcome.PASS for c in verdict.checks):
            return int(n)
    return None


def margin_table() -> list[dict[str, Any]]:
    return [
        {"check": check, "margin": margin, "canary_requests": requests_to_show(check, name, margin)}
        for check, (name, margins) in MARGINS.items()
        for margin in margins
    ]


def _jobs(
    runs: int, seed: int, rates: Sequence[float]
) -> Iterator[tuple[str, int, float, int, int]]:
    for index in range(len(SCENARIOS)):
        for rate in rates:
            for analysis in ANALYSES:
                yield analysis, index, rate, runs, seed


def _pct(value: float) -> str:
    return f"{value * 100:.1f} %"


def _promoted(cell: dict[str, Any]) -> str:
    text = _pct(cell["promoted"])
    if cell["promoted_on_generated"]:
        text += f" ({_pct(cell['promoted_on_generated'])} on generated)"
    return text


def _num(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _shadow_stopped(cell: dict[str, Any]) -> str:
    text = _pct(cell["failed_in_shadow"])
    if cell["max_candidate_requests_failed_in_shadow"] is not None:
        text += f" ({cell['max_candidate_requests_failed_in_shadow']:,})"
    return text


def shadow_markdown(cells: Sequence[dict[str, Any]], meta: dict[str, Any]) -> list[str]:
    """The "Shadow and labels" section."""
    spec = meta["spec"]
    lines = [
        "## Shadow and labels",
        "",
        f"The whole rollout after a passed accuracy gate, {meta['runs']} runs per cell, "
        "default `AnalysisSpec`: the shadow phase (every live request answered by stable; up "
        f"to {spec['shadow_rate_per_s']:g} of them a second replayed to the candidate and "
        f"the two answers compared; budget {spec['shadow_s']:g} s, disagreement margin "
        f"{spec['shadow_disagreement_margin'] * 100:g} %), then the canary steps, on the "
        f"canary-step table's traffic. Stable is right on {STABLE_ACCURACY * 100:g} % of "
        "rows. A class flip is seen by the canary's class mix; an accuracy drop is not "
        "(the wrong class is either other one): in the steps only labels can see it. A "
        "healthy retrained candidate answers 0.5 % of rows differently, as often right as "
        f"stable. Labels arrive {LABEL_DELAY_S:g} s after their request and join the "
        "shadow's pairs and stable's and the canary's live answers (accuracy margin "
        f"{spec['accuracy_margin'] * 100:g} points, labels not required). Today's analysis "
        "had neither a shadow phase nor labels: on the same flips its results are the class "
        "flip rows of the canary-step table, and an accuracy drop that keeps the class mix "
        "is a healthy canary to it.",
        "",
        "Stopped: failed in shadow or rolled back in the steps. In shadow: failed there; in "
        "brackets, the most live requests the candidate answered in those runs. Pairs: "
        "paired rows judged when the shadow phase ended. Answered by candidate, wrong "
        "answers (the candidate's, where stable's would have been right): medians over "
        "decided runs. Stopped on labels: a check on labels was among those that failed "
        "at the decision.",
        "",
        "| scenario | req/s | stopped | in shadow | shadow passed early "
        "| shadow budget spent | rolled back in steps | promoted | undecided "
        "| median s to decision | pairs in shadow | answered by candidate "
        "| wrong answers | stopped on labels |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for cell in cells:
        lines.append(
            f"| {cell['scenario']} | {cell['rate']:g} | {_pct(cell['stopped'])} "
            f"| {_shadow_stopped(cell)} | {_pct(cell['shadow_passed_early'])} "
            f"| {_pct(cell['shadow_budget_spent'])} | {_pct(cell['rolled_back'])} "
            f"| {_pct(cell['promoted'])} | {_pct(cell['undecided'])} "
            f"| {_num(cell['median_decision_s'])} | {_num(cell['median_shadow_pairs'])} "
            f"| {_num(cell['median_candidate_requests'])} "
            f"| {_num(cell['median_wrong_answers'])} | {_pct(cell['stopped_on_labels'])} |"
        )
    return lines


def markdown(
    cells: Sequence[dict[str, Any]],
    meta: dict[str, Any],
    shadow_cells: Sequence[dict[str, Any]] = (),
) -> str:
    lines = [
        "# Gate decision quality (`make gate-bench`)",
        "",
        f"{meta['runs']} simulated rollouts per cell, seed {meta['seed']}, default "
        f"`AnalysisSpec` (steps {meta['steps']}, {meta['step_interval_s']:g} s per step, "
        f"one look every {TICK_S:g} s); stable: {STABLE_ERROR_RATE:.1%} server errors, "
        f"lognormal latency (median {LATENCY_MEDIAN_S * 1000:g} ms, sigma "
        f"{LATENCY_SIGMA:g})."
        + (" Both analyses see the same traffic." if cells else "")
        + f" Run {meta['finished']} in {meta['seconds']:.0f} s.",
    ]
    if cells:
        lines += [
            "",
            "| scenario | req/s | analysis | promoted | rolled back | undecided "
            "| median s to decision | canary requests | bad answers |",
            "|---|---:|---|---:|---:|---:|---:|---:|---:|",
        ]
    for cell in cells:
        lines.append(
            f"| {cell['scenario']} | {cell['rate']:g} | {cell['analysis']} "
            f"| {_promoted(cell)} | {_pct(cell['rolled_back'])} "
            f"| {_pct(cell['undecided'])} | {_num(cell['median_decision_s'])} "
            f"| {_num(cell['median_canary_requests'])} | {_num(cell['median_bad_answers'])} |"
        )
    if meta["margins"]:
        lines += [
            "",
            "Canary requests (and as many for stable) before a healthy canary is shown within "
            "a margin, at the default confidence:",
            "",
            "| check | margin | canary requests |",
            "|---|---:|---:|",
        ]
    for row in meta["margins"]:
        lines.append(f"| {row['check']} | {row['margin']:g} | {_num(row['canary_requests'])} |")
    if shadow_cells:
        lines += ["", *shadow_markdown(shadow_cells, meta)]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gate_bench", description=__doc__)
    parser.add_argument("--runs", type=int, default=400, help="rollouts per cell (default 400)")
    parser.add_argument("--seed", type=int, default=20261202)
    parser.add_argument("--rates", default=",".join(f"{r:g}" for r in RATES))
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--only",
        choices=PARTS,
        help="run one set of cells: canary (the steps, beside today's analysis) or shadow "
        "(shadow phase and labels); the files written then hold that set alone",
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks"), help="GATE.md, gate.json")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    rates = [float(r) for r in args.rates.split(",")]
    parts = [args.only] if args.only else list(PARTS)
    started = time.monotonic()
    jobs = list(_jobs(args.runs, args.seed, rates)) if "canary" in parts else []
    shadow = shadow_jobs(args.runs, args.seed, rates) if "shadow" in parts else []
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        pending = pool.map(_cell, jobs), pool.map(shadow_cell, shadow)  # both queued at once
        cells, shadow_cells = list(pending[0]), list(pending[1])
    spec = AnalysisSpec()
    meta = {
        "runs": args.runs,
        "seed": args.seed,
        "parts": parts,
        "steps": spec.steps,
        "step_interval_s": spec.step_interval_s,
        "spec": spec.model_dump(),
        "baseline_spec": asdict(BaselineSpec()),
        "shadow_scenarios": [asdict(s) for s in SHADOW_SCENARIOS] if shadow else [],
        "stable_accuracy": STABLE_ACCURACY,
        "finished": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "seconds": time.monotonic() - started,
        "margins": margin_table() if jobs else [],
    }
    table = markdown(cells, meta, shadow_cells)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "GATE.md").write_text(table)
    report = {"meta": meta, "cells": cells, "shadow_cells": shadow_cells}
    (args.out / "gate.json").write_text(json.dumps(report, indent=1))
    sys.stdout.write(table)
    return 0


__all__ = [
    "ANALYSES",
    "RATES",
    "SCENARIOS",
    "Run",
    "Scenario",  # defined with the traffic it shapes, benchmarks.gate_traffic
    "main",
    "margin_table",
    "markdown",
    "simulate",
]


if __name__ == "__main__":
    raise SystemExit(main())
