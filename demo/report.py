"""The demo's report: what was decided at each step and why, as JSON, HTML and a terminal
summary. Built from the gate's decision history (the evidence it recorded), the router's
final split and locust's statistics."""

from __future__ import annotations

import base64
import html
import io
import json
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
                "canary_classes": canary.get("class_counts") or {},
                "stable_classes": stable.get("class_counts") or {},
                "checks": evidence.get("checks") or [],
            }
        )
    return rows


def build_report(
    scenario: str,
    pipeline_runs: dict[str, dict[str, Any]],
    detail: dict[str, Any] | None,
    routes: dict[str, Any] | None,
    load_csv: Path | None,
) -> dict[str, Any]:
    if detail is None:
        outcome = (
            "rejected"
            if pipeline_runs.get("candidate", {}).get("outcome") == "rejected"
            else "failed"
        )
    else:
        outcome = OUTCOMES.get(detail["phase"], detail["phase"])
    report: dict[str, Any] = {
        "scenario": scenario,
        "outcome": outcome,
        "generated_at": datetime.now().astimezone().isoformat(),
        "pipeline": pipeline_runs,
        "rollout": None,
        "accuracy_gate": None,
        "ticks": [],
        "weights": [],
        "final_split": routes,
        "load": [],
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
    document = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>irisgate demo: {escape(report["scenario"])}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:3px 6px;
font-size:13px}}th{{background:#eee}}figure{{display:inline-block;margin:0.5em}}
.outcome{{font-size:1.4em;font-weight:bold}}</style></head><body>
<h1>irisgate demo - scenario <code>{escape(report["scenario"])}</code></h1>
<p class="outcome">Outcome: {escape(report["outcome"])}</p>
<p>{escape(str(rollout.get("message") or ""))}</p>
<h2>Accuracy gate</h2>
<p>{escape(str(gate.get("reason", "not reached")))}
({escape(str(gate.get("replayed_rows", "-")))} held-out rows replayed)</p>
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
    for load in report["load"]:
        if load["name"] == "Aggregated":
            console.print(
                f"load: {load['requests']} requests, {load['failures']} failures, "
                f"p99 {load['p99_ms']:.0f} ms"
            )
    colour = {"promoted": "green", "rolled_back": "yellow", "rejected": "yellow"}.get(
        report["outcome"], "red"
    )
    message = (
        (report.get("rollout") or {}).get("message")
        or report["pipeline"].get("candidate", {}).get("reason")
        or ""
    )
    console.print(f"[bold {colour}]outcome: {report['outcome']}[/] {message}")
