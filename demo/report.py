"""The demo's report: what was decided at each step and why, as JSON, HTML and a terminal
summary. Built from the gate's decision history (the evidence it recorded: the accuracy
gate, the shadow phase's paired answers, each canary analysis), the router's final split,
locust's statistics and the label poster's counters."""

from __future__ import annotations

import base64
import html
import io
import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from load_tests.slo import read_stats

OUTCOMES = {
    "succeeded": "promoted",
    "rolled_back": "rolled_back",
    "failed": "failed",
    "aborted": "aborted",
}
FAILED_IN_SHADOW = "failed_in_shadow"  # failed before any user got a candidate's answer
CLASS_NAMES = {"0": "setosa", "1": "versicolor", "2": "virginica"}
# the canary analysis' accuracy check says both figures only in its detail (analysis.py)
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
                "canary_requests": canary.get("requests"),
                "stable_requests": stable.get("requests"),
                "canary_error_rate": rate(canary),
                "stable_error_rate": rate(stable),
                "canary_p99_ms": _ms(canary.get("p99_s")),
                "stable_p99_ms": _ms(stable.get("p99_s")),
                "class_shift": _check(evidence, "class_shift"),
                "statistics": statistics(evidence.get("checks") or []),
                "accuracy": canary_accuracy(evidence.get("checks") or []),
                "canary_classes": canary.get("class_counts") or {},
                "stable_classes": stable.get("class_counts") or {},
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
    labelled = int(paired.get("labelled_rows") or 0)
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
        "stable_accuracy": _share(int(paired.get("stable_correct") or 0), labelled),
        "candidate_accuracy": _share(int(paired.get("candidate_correct") or 0), labelled),
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
    shadow: dict[str, Any] | None, ticks: list[dict[str, Any]], labels: dict[str, Any] | None
) -> dict[str, Any]:
    """What the delayed labels showed: on the shadow pairs (both models, the same
    requests) and in the canary steps (each on the requests it answered)."""
    in_shadow = None
    if shadow is not None and shadow["labelled_rows"]:
        in_shadow = {
            "rows": shadow["labelled_rows"],
            "stable": shadow["stable_accuracy"],
            "candidate": shadow["candidate_accuracy"],
        }
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


def build_report(
    scenario: str,
    pipeline_runs: dict[str, dict[str, Any]],
    detail: dict[str, Any] | None,
    routes: dict[str, Any] | None,
    load_csv: Path | None,
    labels_json: Path | None = None,
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
        report["weights"] = [
            {"time": d["at"], "canary_weight": d["canary_weight"], "action": d["action"]}
            for d in detail["decisions"]
        ]
    if load_csv is not None and load_csv.exists():
        report["load"] = [
            {
                "name": s.name,
                "requests": s.requests,
                "failures": s.failures,
                "rps": round(s.rps, 1),
                "median_ms": s.median_ms,
                "p99_ms": s.p99_ms,
            }
            for s in read_stats(load_csv)
        ]
    labels = None
    if labels_json is not None and labels_json.exists():
        labels = json.loads(labels_json.read_text())  # the label poster's counters
    report["live_accuracy"] = live_accuracy(report["shadow"], report["ticks"], labels)
    return report


# --- plots ------------------------------------------------------------------------------


def _png(figure: Any) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode()


def plots(report: dict[str, Any]) -> dict[str, str]:
    """Base64 PNGs, so the HTML needs nothing but itself."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    images: dict[str, str] = {}
    weights = report["weights"]
    ticks = report["ticks"]
    if weights:
        start = datetime.fromisoformat(weights[0]["time"])
        seconds = [(datetime.fromisoformat(w["time"]) - start).total_seconds() for w in weights]
        figure, axis = pyplot.subplots(figsize=(7, 3))
        axis.step(seconds, [w["canary_weight"] for w in weights], where="post", color="tab:orange")
        axis.set(
            xlabel="seconds since the rollout started",
            ylabel="canary weight (%)",
            ylim=(-5, 105),
            title="Canary weight over time",
        )
        axis.grid(alpha=0.3)
        images["weight"] = _png(figure)
        pyplot.close(figure)
    if ticks:
        labels = [f"{t['canary_weight']}%\n{t['outcome']}" for t in ticks]
        positions = range(len(ticks))
        for key, title, unit in (
            ("error_rate", "Server-error rate per analysis", "rate"),
            ("p99_ms", "Latency p99 per analysis", "ms"),
        ):
            figure, axis = pyplot.subplots(figsize=(7, 3))
            stable = [t[f"stable_{key}"] or 0 for t in ticks]
            canary = [t[f"canary_{key}"] or 0 for t in ticks]
            axis.bar([p - 0.2 for p in positions], stable, width=0.4, label="stable")
            axis.bar([p + 0.2 for p in positions], canary, width=0.4, label="canary")
            axis.set_xticks(list(positions), labels)
            axis.set(ylabel=unit, title=title)
            floor = 0.02 if key == "error_rate" else 1.0
            axis.set_ylim(bottom=0, top=max([*stable, *canary, floor]) * 1.15)
            axis.legend()
            axis.grid(alpha=0.3, axis="y")
            images[key] = _png(figure)
            pyplot.close(figure)
        totals: dict[str, dict[str, float]] = {"stable": {}, "canary": {}}
        for tick in ticks:
            for role in totals:
                for name, count in tick[f"{role}_classes"].items():
                    totals[role][name] = totals[role].get(name, 0) + count
        names = sorted(set(totals["stable"]) | set(totals["canary"]))
        if names:
            figure, axis = pyplot.subplots(figsize=(7, 3))
            for offset, role in ((-0.2, "stable"), (0.2, "canary")):
                total = sum(totals[role].values()) or 1
                axis.bar(
                    [i + offset for i in range(len(names))],
                    [totals[role].get(n, 0) / total for n in names],
                    width=0.4,
                    label=role,
                )
            axis.set_xticks(list(range(len(names))), names)
            axis.set(ylabel="share of predictions", title="Predicted-class distribution")
            axis.legend()
            images["classes"] = _png(figure)
            pyplot.close(figure)
    return images


# --- outputs ----------------------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def shadow_lines(shadow: dict[str, Any] | None) -> list[str]:
    """The shadow phase in a few sentences (the flip matrix is a table of its own)."""
    if shadow is None:
        return ["no shadow phase"]
    verdict = {"pass": "passed", "fail": "failed", "inconclusive": "undecided"}.get(
        shadow["outcome"] or "", str(shadow["outcome"])
    )
    low, high = shadow["interval"] or (None, None)
    return [
        f"shadow {verdict}: {shadow['requests']} live REST "
        f"requests replayed to the candidate, {shadow['rows']} rows paired, "
        f"{shadow['skipped']} requests skipped by the replay rate bound, "
        f"{shadow['candidate_errors']} failed on the candidate, "
        f"{shadow['not_comparable']} not comparable",
        f"disagreement with stable {_pct(shadow['disagreement'])} "
        f"({shadow['disagreements']} rows), interval [{_pct(low)}, {_pct(high)}], "
        f"margin {_pct(shadow['margin'])}",
        f"the candidate answered a replayed request in {_fmt(shadow['candidate_mean_ms'])} ms "
        "on average",
    ]


def accuracy_lines(live: dict[str, Any] | None) -> list[str]:
    """Live accuracy from the delayed labels, wherever the gate could join them."""
    live = live or {}
    lines = []
    if live.get("shadow"):
        shadow = live["shadow"]
        lines.append(
            f"live accuracy on the shadow pairs (the same {shadow['rows']} labelled rows): "
            f"stable {_pct(shadow['stable'])}, candidate {_pct(shadow['candidate'])}"
        )
    canary = live.get("canary")
    if canary and "canary" in canary:
        lines.append(
            f"live accuracy in the canary steps: canary {_pct(canary['canary'])} of "
            f"{canary['canary_rows']} labelled rows, stable {_pct(canary['stable'])} of "
            f"{canary['stable_rows']}"
        )
    elif canary:
        lines.append(f"live accuracy in the canary steps: {canary['detail']}")
    if not lines:
        lines.append("live accuracy: no labelled answer joined")
    labels = live.get("labels")
    if labels:
        text = (
            f"labels posted: {labels['posted']} of {labels['answered']} answered REST requests "
            f"({labels['unknown']} for answers the gate had not recorded), "
            f"{labels['failed_posts']} failed POSTs"
        )
        if labels.get("last_error"):
            text += f" (last: {labels['last_error']})"
        lines.append(text)
    return lines


def write_html(report: dict[str, Any], path: Path) -> None:
    images = plots(report)
    escape = html.escape
    rows = "".join(
        "<tr>"
        + "".join(
            f"<td>{escape(str(v if v is not None else '-'))}</td>"
            for v in (
                t["time"][11:19],
                f"{t['canary_weight']}%",
                t["outcome"],
                t["action"],
                t["canary_requests"],
                t["stable_requests"],
                t["canary_error_rate"],
                t["stable_error_rate"],
                t["canary_p99_ms"],
                t["stable_p99_ms"],
                None if t["class_shift"] is None else round(t["class_shift"], 4),
                t["statistics"],
                t["reason"],
            )
        )
        + "</tr>"
        for t in report["ticks"]
    )
    load_rows = "".join(
        f"<tr><td>{escape(s['name'])}</td><td>{s['requests']}</td><td>{s['failures']}</td>"
        f"<td>{s['rps']}</td><td>{s['median_ms']}</td><td>{s['p99_ms']}</td></tr>"
        for s in report["load"]
    )
    figures = "".join(
        f'<figure><img alt="{key}" src="data:image/png;base64,{data}"></figure>'
        for key, data in images.items()
    )
    gate = report.get("accuracy_gate") or {}
    rollout = report.get("rollout") or {}
    shadow = report.get("shadow")
    shadow_html = "".join(f"<p>{escape(line)}</p>" for line in shadow_lines(shadow))
    if shadow is not None:
        shadow_html += f"<p>{escape(shadow['reason'])}</p>"
        matrix = shadow["flips"]
        if matrix:
            names = list(matrix)
            head = "".join(f"<th>{escape(n)}</th>" for n in names)
            body = "".join(
                f"<tr><th>{escape(row)}</th>"
                + "".join(
                    f'<td class="{"same" if row == col else "flip"}">{matrix[row][col]}</td>'
                    for col in names
                )
                + "</tr>"
                for row in names
            )
            shadow_html += (
                "<table><caption>paired rows: stable's class (rows) x the candidate's "
                f"(columns)</caption><tr><th></th>{head}</tr>{body}</table>"
            )
        if shadow["statistics"]:
            shadow_html += f"<p>statistics: {escape(shadow['statistics'])}</p>"
    accuracy_html = "".join(
        f"<p>{escape(line)}</p>" for line in accuracy_lines(report.get("live_accuracy"))
    )
    document = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>irisgate demo: {escape(report["scenario"])}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:3px 6px;
font-size:13px}}th{{background:#eee}}figure{{display:inline-block;margin:0.5em}}
.outcome{{font-size:1.4em;font-weight:bold}}td.flip{{background:#fde2e1}}
caption{{font-size:13px;text-align:left}}</style></head><body>
<h1>irisgate demo - scenario <code>{escape(report["scenario"])}</code></h1>
<p class="outcome">Outcome: {escape(report["outcome"])}</p>
<p>{escape(str(rollout.get("message") or ""))}</p>
<h2>Accuracy gate</h2>
<p>{escape(str(gate.get("reason", "not reached")))}
({escape(str(gate.get("replayed_rows", "-")))} held-out rows replayed)</p>
<h2>Shadow</h2>{shadow_html}
<h2>Live accuracy (delayed labels)</h2>{accuracy_html}
<h2>Canary analysis</h2>{figures}
<table><tr><th>time</th><th>weight</th><th>outcome</th><th>action</th><th>canary req</th>
<th>stable req</th><th>canary err</th><th>stable err</th><th>canary p99 ms</th>
<th>stable p99 ms</th><th>class shift</th><th>statistics (estimate [interval] &lt; margin)</th>
<th>reason</th></tr>{rows}</table>
<h2>Final traffic split</h2><pre>{escape(json.dumps(report["final_split"], indent=2))}</pre>
<h2>Load test</h2><table><tr><th>request</th><th>count</th><th>failures</th><th>req/s</th>
<th>median ms</th><th>p99 ms</th></tr>{load_rows}</table>
<h2>Pipeline runs</h2><pre>{escape(json.dumps(report["pipeline"], indent=2))}</pre>
</body></html>
"""
    path.write_text(document)


def print_summary(report: dict[str, Any], console: Console) -> None:
    table = Table(
        title="what the gate decided, and why",
        caption="c = canary, s = stable; err = server-error rate; p99 in ms",
    )
    for column in (
        "weight",
        "outcome",
        "action",
        "c req",
        "s req",
        "c err",
        "s err",
        "c p99",
        "s p99",
        "shift",
    ):
        table.add_column(column, justify="right", no_wrap=True)
    for t in report["ticks"]:

        def show(value: Any) -> str:
            return (
                "-" if value is None else f"{value:.3g}" if isinstance(value, float) else str(value)
            )

        table.add_row(
            f"{t['canary_weight']}%",
            t["outcome"],
            t["action"],
            show(t["canary_requests"]),
            show(t["stable_requests"]),
            show(t["canary_error_rate"]),
            show(t["stable_error_rate"]),
            show(t["canary_p99_ms"]),
            show(t["stable_p99_ms"]),
            show(t["class_shift"]),
        )
    if report["ticks"]:
        console.print(table)
    gate = report.get("accuracy_gate")
    if gate:
        console.print(f"accuracy gate: {gate['reason']}")
    shadow = report.get("shadow")
    if shadow is not None:
        for line in shadow_lines(shadow):
            console.print(line)
        matrix = shadow["flips"]
        if matrix:
            flips = Table(title="shadow: stable's class (rows) x the candidate's (columns)")
            flips.add_column("")
            for name in matrix:
                flips.add_column(name, justify="right")
            for row, counts in matrix.items():
                flips.add_row(
                    row,
                    *(
                        str(n) if col == row or not n else f"[bold red]{n}[/]"
                        for col, n in counts.items()
                    ),
                )
            console.print(flips)
    for line in accuracy_lines(report.get("live_accuracy")):
        console.print(line)
    for load in report["load"]:
        if load["name"] == "Aggregated":
            console.print(
                f"load: {load['requests']} requests, {load['failures']} failures, "
                f"p99 {load['p99_ms']:.0f} ms"
            )
    colour = {
        "promoted": "green",
        "rolled_back": "yellow",
        "rejected": "yellow",
        FAILED_IN_SHADOW: "yellow",
    }.get(report["outcome"], "red")
    message = (
        (report.get("rollout") or {}).get("message")
        or report["pipeline"].get("candidate", {}).get("reason")
        or ""
    )
    console.print(f"[bold {colour}]outcome: {report['outcome']}[/] {message}")
