"""The demo's report as data (``report.json``): what was decided at each step and why.
Built from the gate's decision history (the evidence it recorded: the accuracy gate, the
shadow phase's paired answers, each canary analysis), the router's final split, locust's
statistics and per-second history, and the label poster's counters. ``demo.render`` turns
it into the HTML page and the terminal summary, ``demo.plots`` draws its charts."""

from __future__ import annotations

import csv
import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

OUTCOMES = {
    "succeeded": "promoted",
    "rolled_back": "rolled_back",
    "failed": "failed",
    "aborted": "aborted",
}
FAILED_IN_SHADOW = "failed_in_shadow"  # failed before any user got a candidate's answer
CLASS_NAMES = {"0": "setosa", "1": "versicolor", "2": "virginica"}
# the canary analysis' accuracy check says both figures only in its detail (analysis.py)
# locust's request types: HTTP methods are the REST users, "grpc" the gRPC user
PROTOCOLS = {"POST": "REST", "GET": "REST", "grpc": "gRPC"}
ACCURACY_DETAIL = re.compile(
    r"canary (?P<canary>[\d.]+)% of (?P<canary_rows>\d+), "
    r"stable (?P<stable>[\d.]+)% of (?P<stable_rows>\d+)"
)


def _check(evidence: dict[str, Any], name: str) -> float | None:
    for check in evidence.get("checks") or []:
        if check["name"] == name:
            value = check.get("estimate")
            return None if value is None else float(value)
    return None


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def statistics(checks: list[dict[str, Any]]) -> str:
    """The relative checks of one decision in one line: estimate, interval, margin, and
    what the interval showed (✓ within the margin, ✗ regression shown, ? not yet)."""
    marks = {"pass": "✓", "fail": "✗", "inconclusive": "?"}
    parts = []
    for check in checks:
        if check.get("margin") is None:
            continue  # hard ceilings: only ever a failure, listed in the reason then
        low, high = check.get("interval") or (None, None)
        name = check["name"]
        if check.get("traffic", "live") != "live":
            name += f" ({check['traffic']})"
        parts.append(
            f"{name} {_fmt(check.get('estimate'))} [{_fmt(low)}, {_fmt(high)}] "
            f"< {_fmt(check['margin'])} {marks.get(check['outcome'], '?')}"
        )
    return "; ".join(parts)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def _count(value: float | None) -> int | None:
    """A request or row count: the gate's measurements carry them as floats (Prometheus
    counters), the report shows whole requests."""
    return None if value is None else round(value)


def _counts(counts: dict[str, float] | None) -> dict[str, int]:
    return {name: round(count) for name, count in (counts or {}).items()}


def ticks_of(detail: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per analysis the gate made, with the measurements it judged."""
    rows = []
    for decision in detail.get("decisions", []):
        evidence = decision.get("evidence") or {}
        measured = evidence.get("measurement")
        if "judged" not in evidence:
            continue
        judged = evidence["judged"]
        canary = (measured or {}).get("canary") or {}
        stable = (measured or {}).get("stable") or {}

        def rate(role: dict[str, Any]) -> float | None:
            requests = role.get("requests") or 0
            return round(role.get("server_errors", 0) / requests, 4) if requests else None

        rows.append(
            {
                "time": decision["at"],
                "canary_weight": judged["canary_weight"],
                "step_index": judged["step_index"],
                "outcome": decision["outcome"],
                "action": decision["action"],
                "reason": decision["reason"],
                "window_s": (measured or {}).get("window_s"),
                "canary_requests": _count(canary.get("requests")),
                "stable_requests": _count(stable.get("requests")),
                "canary_error_rate": rate(canary),
                "stable_error_rate": rate(stable),
                "canary_p99_ms": _ms(canary.get("p99_s")),
                "stable_p99_ms": _ms(stable.get("p99_s")),
                "class_shift": _check(evidence, "class_shift"),
                "statistics": statistics(evidence.get("checks") or []),
                "accuracy": canary_accuracy(evidence.get("checks") or []),
                "canary_classes": _counts(canary.get("class_counts")),
                "stable_classes": _counts(stable.get("class_counts")),
                "checks": evidence.get("checks") or [],
            }
        )
    return rows


def class_name(value: str) -> str:
    """Iris class ids as names; a name (a ``label`` output) stays as it is."""
    return CLASS_NAMES.get(value, value)


def flip_matrix(flips: dict[str, int]) -> dict[str, dict[str, int]]:
    """``{"1->2": rows}`` as ``{stable class: {candidate class: rows}}``, named, every
    class seen on either side in both dimensions (zeros included)."""
    pairs: list[tuple[str, str, int]] = []
    for key, count in flips.items():
        stable, arrow, candidate = key.partition("->")
        if arrow:
            pairs.append((class_name(stable), class_name(candidate), int(count)))
    seen = {s for s, _, _ in pairs} | {c for _, c, _ in pairs}
    named = list(CLASS_NAMES.values())
    order = [n for n in named if n in seen] + sorted(seen - set(named))
    matrix = {row: dict.fromkeys(order, 0) for row in order}
    for stable, candidate, count in pairs:
        matrix[stable][candidate] += count
    return matrix


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def labelled_accuracy(paired: dict[str, Any]) -> tuple[int, float | None, float | None]:
    """Paired evidence's labelled rows and both models' accuracy on them."""
    labelled = int(paired.get("labelled_rows") or 0)
    return (
        labelled,
        _share(int(paired.get("stable_correct") or 0), labelled),
        _share(int(paired.get("candidate_correct") or 0), labelled),
    )


def shadow_of(detail: dict[str, Any]) -> dict[str, Any] | None:
    """The shadow phase's last verdict (the one that ended it) with its paired evidence."""
    decision = next(
        (
            d
            for d in reversed(detail.get("decisions", []))
            if isinstance((d.get("evidence") or {}).get("paired"), dict)
        ),
        None,
    )
    if decision is None:
        return None
    evidence = decision["evidence"]
    paired = evidence["paired"]
    checks = {c["name"]: c for c in evidence.get("checks") or []}
    disagreement = checks.get("disagreement") or {}
    labelled, stable_accuracy, candidate_accuracy = labelled_accuracy(paired)
    return {
        "outcome": decision["outcome"],
        "reason": decision["reason"],
        "requests": paired.get("requests", 0),
        "rows": paired.get("rows", 0),
        "disagreements": paired.get("disagreements", 0),
        "disagreement": disagreement.get("estimate"),
        "interval": disagreement.get("interval"),
        "fail_interval": disagreement.get("fail_interval"),
        "margin": disagreement.get("margin"),
        "flips": flip_matrix(paired.get("flips") or {}),
        "skipped": paired.get("skipped", 0),
        "not_comparable": paired.get("not_comparable", 0),
        "candidate_errors": paired.get("candidate_errors", 0),
        # replays are paced: the candidate's own answer time on live inputs, not under load
        "candidate_mean_ms": (
            round(paired.get("latency_ms_sum", 0.0) / paired["requests"], 1)
            if paired.get("requests")
            else None
        ),
        "labelled_rows": labelled,
        "stable_accuracy": stable_accuracy,
        "candidate_accuracy": candidate_accuracy,
        "statistics": statistics(evidence.get("checks") or []),
    }


def canary_accuracy(checks: list[dict[str, Any]]) -> dict[str, Any] | None:
    """A canary analysis' ``accuracy`` check (labelled answers since the rollout began):
    both accuracies, their row counts and the drop; None when no labels were joined."""
    check = next((c for c in checks if c["name"] == "accuracy"), None)
    if check is None:
        return None
    found: dict[str, Any] = {
        "drop": check.get("estimate"),
        "outcome": check.get("outcome"),
        "detail": check.get("detail", ""),
    }
    match = ACCURACY_DETAIL.search(found["detail"])
    if match is not None:
        found |= {
            "canary": round(float(match["canary"]) / 100, 4),
            "canary_rows": int(match["canary_rows"]),
            "stable": round(float(match["stable"]) / 100, 4),
            "stable_rows": int(match["stable_rows"]),
        }
    return found


def live_accuracy(
    shadow: dict[str, Any] | None,
    ticks: list[dict[str, Any]],
    labels: dict[str, Any] | None,
    pairs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What the delayed labels showed: on the shadow pairs (both models, the same
    requests) and in the canary steps (each on the requests it answered).

    ``pairs``: the shadow pairs as the gate holds them at the end of the run
    (``shadow_pairs`` of the rollout). The verdict may come before the first label: a
    disagreement shown below the margin passes, and labels can only fail a shadow phase.
    Labels go on joining its pairs after it, so the end's figures cover more rows;
    ``at_verdict`` says how many the verdict itself saw."""
    at_verdict = int(shadow["labelled_rows"]) if shadow is not None else 0
    rows, stable, candidate = labelled_accuracy(pairs or {})
    if not rows and shadow is not None:  # no labelled pairs now: the verdict's own, if any
        rows, stable, candidate = (
            at_verdict,
            shadow["stable_accuracy"],
            shadow["candidate_accuracy"],
        )
    in_shadow = (
        {"rows": rows, "stable": stable, "candidate": candidate, "at_verdict": at_verdict}
        if rows
        else None
    )
    in_steps = next((t["accuracy"] for t in reversed(ticks) if t.get("accuracy")), None)
    return {"shadow": in_shadow, "canary": in_steps, "labels": labels}


def _outcome(detail: dict[str, Any] | None, pipeline_runs: dict[str, dict[str, Any]]) -> str:
    if detail is None:
        rejected = pipeline_runs.get("candidate", {}).get("outcome") == "rejected"
        return "rejected" if rejected else "failed"
    if detail["phase"] == "failed" and any(
        d["outcome"] == "fail" and isinstance((d.get("evidence") or {}).get("paired"), dict)
        for d in detail.get("decisions", [])
    ):
        return FAILED_IN_SHADOW
    phase = str(detail["phase"])
    return OUTCOMES.get(phase, phase)


def weights_of(detail: dict[str, Any]) -> list[dict[str, Any]]:
    """Each decision's canary weight and the candidate's share of live traffic. The two
    part at a promotion: the canary route goes (weight 0) because the candidate became the
    stable, so its share is 100 % until a rollback (the dashboard draws the same line)."""
    rows = []
    promoted = False
    for decision in detail.get("decisions", []):
        action = decision["action"]
        if action in ("promoted", "watch"):
            promoted = True
        elif action in ("rollback", "rolled-back", "aborted"):
            promoted = False
        weight = int(decision["canary_weight"])
        rows.append(
            {
                "time": decision["at"],
                "phase": decision.get("phase"),
                "action": action,
                "canary_weight": weight,
                "candidate_share": 100 if promoted else weight,
            }
        )
    return rows


def _int(text: str) -> int:
    try:
        return int(float(text))
    except ValueError:
        return 0


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:  # locust writes "N/A" for a percentile with no requests yet
        return None


def load_rows(stats_csv: Path) -> list[dict[str, Any]]:
    """locust's ``<prefix>_stats.csv``, one row per request type with its protocol: the
    REST and gRPC users both have an "invalid input" row, told apart only by it."""
    with stats_csv.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [
        {
            "protocol": PROTOCOLS.get(row["Type"], row["Type"]),
            "name": row["Name"],
            "requests": _int(row["Request Count"]),
            "failures": _int(row["Failure Count"]),
            "rps": round(_float(row["Requests/s"]) or 0.0, 1),
            "median_ms": _float(row["Median Response Time"]),
            "p99_ms": _float(row["99%"]),
        }
        for row in rows
    ]


def load_history(history_csv: Path) -> list[dict[str, Any]]:
    """locust's ``<prefix>_stats_history.csv`` (a row a second; per request type with
    ``--csv-full-history``) as one series per request type, ``Aggregated`` last. Rates and
    percentiles are locust's current values (its last seconds), so they move with the
    rollout; the timestamps are Unix seconds."""
    series: dict[tuple[str, str], list[dict[str, Any]]] = {}
    with history_csv.open(newline="") as handle:
        for row in csv.DictReader(handle):
            key = (PROTOCOLS.get(row["Type"], row["Type"]), row["Name"])
            series.setdefault(key, []).append(
                {
                    "t": _int(row["Timestamp"]),
                    "users": _int(row["User Count"]),
                    "rps": _float(row["Requests/s"]) or 0.0,
                    "failures_per_s": _float(row["Failures/s"]) or 0.0,
                    "p50_ms": _float(row["50%"]),
                    "p95_ms": _float(row["95%"]),
                    "p99_ms": _float(row["99%"]),
                    "requests": _int(row["Total Request Count"]),
                    "failures": _int(row["Total Failure Count"]),
                }
            )
    ordered = sorted(series, key=lambda key: (key[1] == "Aggregated", key))
    return [
        {"protocol": protocol, "name": name, "points": series[(protocol, name)]}
        for protocol, name in ordered
    ]


def build_report(
    scenario: str,
    pipeline_runs: dict[str, dict[str, Any]],
    detail: dict[str, Any] | None,
    routes: dict[str, Any] | None,
    load_csv: Path | None,
    labels_json: Path | None = None,
    history_csv: Path | None = None,
) -> dict[str, Any]:
    outcome = _outcome(detail, pipeline_runs)
    report: dict[str, Any] = {
        "scenario": scenario,
        "outcome": outcome,
        "generated_at": datetime.now().astimezone().isoformat(),
        "pipeline": pipeline_runs,
        "rollout": None,
        "accuracy_gate": None,
        "shadow": None,
        "ticks": [],
        "weights": [],
        "final_split": routes,
        "load": [],
        "history": [],
        "live_accuracy": None,
    }
    if detail is not None:
        report["rollout"] = {
            k: detail.get(k)
            for k in (
                "id",
                "phase",
                "message",
                "candidate",
                "stable_version",
                "previous_version",
                "steps",
                "analysis",
                "created_at",
                "updated_at",
            )
        }
        gate = next(
            (
                d
                for d in detail["decisions"]
                if "live_accuracy" in d["evidence"] or "offline_accuracy" in d["evidence"]
            ),
            None,
        )
        if gate is not None:
            report["accuracy_gate"] = {
                **gate["evidence"],
                "outcome": gate["outcome"],
                "reason": gate["reason"],
            }
        report["shadow"] = shadow_of(detail)
        report["ticks"] = ticks_of(detail)
        report["weights"] = weights_of(detail)
    if load_csv is not None and load_csv.exists():
        report["load"] = load_rows(load_csv)
    if history_csv is not None and history_csv.exists():
        report["history"] = load_history(history_csv)
    labels = None
    if labels_json is not None and labels_json.exists():
        labels = json.loads(labels_json.read_text())  # the label poster's counters
    report["live_accuracy"] = live_accuracy(
        report["shadow"],
        report["ticks"],
        labels,
        (detail or {}).get("shadow_pairs") if report["shadow"] is not None else None,
    )
    return report
