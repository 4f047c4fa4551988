"""The report for people: one self-contained HTML page (a Jinja2 template shipped in the
package, the charts inline) and a terminal summary that fits 80 columns. Both read the
data ``demo.report`` built; nothing here decides anything."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader
from rich.box import SIMPLE_HEAD
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from demo.plots import figures
from demo.report import FAILED_IN_SHADOW

# how each outcome reads, and its colour class (page) / style (terminal)
OUTCOME_TONE = {
    "promoted": "good",
    "rolled_back": "warn",
    "rejected": "warn",
    FAILED_IN_SHADOW: "warn",
}
TONE_STYLE = {"good": "green", "warn": "yellow", "bad": "red"}
VERDICTS = {"pass": "pass", "fail": "fail", "inconclusive": "not yet"}


# --- numbers as people read them --------------------------------------------------------


def _number(value: object) -> float | None:
    """A figure to show, or None for a missing one (a key the evidence lacks reaches the
    template as Jinja's Undefined: shown as "-", never an error)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def count(value: object) -> str:
    """A count of requests or rows: whole, with thousands separators (never ``34.0``)."""
    number = _number(value)
    return "-" if number is None else f"{round(number):,}"


def pct(value: object, digits: int = 1) -> str:
    number = _number(value)
    return "-" if number is None else f"{number:.{digits}%}"


def ms(value: object) -> str:
    """Milliseconds: whole from 10 ms up, one decimal below (so 2.0 beside 1.9, not 2)."""
    number = _number(value)
    if number is None:
        return "-"
    return f"{number:.0f}" if number >= 10 else f"{number:.1f}"


def fmt(value: object) -> str:
    number = _number(value)
    return "-" if number is None else f"{number:.3g}"


def ratio(canary: str, stable: str) -> str:
    """Two figures in one cell, canary first (the terminal table's columns)."""
    return f"{canary}/{stable}"


# --- sentences shared by the page and the terminal ----------------------------------------


def ending(report: dict[str, Any]) -> str:
    """The outcome in words that say what serves now: after a promotion the canary weight
    is 0 because the candidate *is* the stable."""
    rollout = report.get("rollout") or {}
    candidate = (rollout.get("candidate") or {}).get("version") or (
        report["pipeline"].get("candidate", {}).get("version")
    )
    previous = rollout.get("previous_version") or rollout.get("stable_version")
    stays = f"v{previous} stays the stable" if previous else "the stable keeps serving"
    endings = {
        "promoted": f"promoted: v{candidate} is the stable now, serving all traffic",
        "rolled_back": f"rolled back: {stays}",
        FAILED_IN_SHADOW: f"failed in shadow, before any user got its answers: {stays}",
        "rejected": "rejected by the pipeline's accuracy condition: nothing was deployed",
        "failed": f"failed: {stays}",
        "aborted": f"aborted: {stays}",
    }
    return endings.get(str(report["outcome"]), str(report["outcome"]))


def shadow_lines(shadow: dict[str, Any] | None) -> list[str]:
    """The shadow phase in a few sentences (the flip matrix is a table of its own)."""
    if shadow is None:
        return ["no shadow phase"]
    verdict = {"pass": "passed", "fail": "failed", "inconclusive": "undecided"}.get(
        shadow["outcome"] or "", str(shadow["outcome"])
    )
    low, high = shadow["interval"] or (None, None)
    return [
        f"shadow {verdict}: {count(shadow['requests'])} live REST "
        f"requests replayed to the candidate, {count(shadow['rows'])} rows paired, "
        f"{count(shadow['skipped'])} requests skipped by the replay rate bound, "
        f"{count(shadow['candidate_errors'])} failed on the candidate, "
        f"{count(shadow['not_comparable'])} not comparable",
        f"disagreement with stable {pct(shadow['disagreement'])} "
        f"({count(shadow['disagreements'])} rows), interval [{pct(low)}, {pct(high)}], "
        f"margin {pct(shadow['margin'])}",
        f"the candidate answered a replayed request in {fmt(shadow['candidate_mean_ms'])} ms "
        "on average",
    ]


def accuracy_lines(live: dict[str, Any] | None) -> list[str]:
    """Live accuracy from the delayed labels, wherever the gate could join them."""
    live = live or {}
    lines = []
    if live.get("shadow"):
        shadow = live["shadow"]
        seen = shadow.get("at_verdict", shadow["rows"])
        when = (
            "all of them by its verdict"
            if seen == shadow["rows"]
            else f"{count(seen)} of them by its verdict, the rest joined after it"
        )
        lines.append(
            f"live accuracy on the shadow pairs (the same {count(shadow['rows'])} labelled "
            f"rows, {when}): stable {pct(shadow['stable'])}, candidate "
            f"{pct(shadow['candidate'])}"
        )
    canary = live.get("canary")
    if canary and "canary" in canary:
        lines.append(
            f"live accuracy in the canary steps: canary {pct(canary['canary'])} of "
            f"{count(canary['canary_rows'])} labelled rows, stable {pct(canary['stable'])} of "
            f"{count(canary['stable_rows'])}"
        )
    elif canary:
        lines.append(f"live accuracy in the canary steps: {canary['detail']}")
    if not lines:
        lines.append("live accuracy: no labelled answer joined")
    labels = live.get("labels")
    if labels:
        text = (
            f"labels posted: {count(labels['posted'])} of {count(labels['answered'])} answered "
            f"REST requests ({count(labels['unknown'])} for answers the gate had not "
            f"recorded), {count(labels['failed_posts'])} failed POSTs"
        )
        if labels.get("last_error"):
            text += f" (last: {labels['last_error']})"
        lines.append(text)
    return lines


# --- the page -----------------------------------------------------------------------------


def _environment() -> Environment:
    """The templates ship in the package (package data), so an installed demo renders."""
    environment = Environment(
        loader=PackageLoader("demo", "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters.update(count=count, pct=pct, ms=ms, fmt=fmt)
    return environment


def _settings(analysis: dict[str, Any] | None) -> list[tuple[str, str]]:
    """The bounds the rollout was judged against, as the page's settings table."""
    if not analysis:
        return []
    rows = [
        ("canary steps", ", ".join(f"{s}%" for s in analysis.get("steps", []))),
        ("each step collects at least", f"{analysis.get('step_interval_s', 0):g} s"),
        ("confidence", pct(analysis.get("confidence"), 0)),
        ("server errors the canary may add", f"+{pct(analysis.get('error_rate_margin'))}"),
        ("canary error-rate ceiling", pct(analysis.get("max_error_rate"))),
        (
            "canary p95 may be slower than stable's by",
            f"x{1 + float(analysis.get('latency_margin', 0)):g}",
        ),
        ("canary p99 ceiling", f"{analysis.get('max_p99_ms', 0):g} ms"),
        ("answers that may change class", pct(analysis.get("class_shift_margin"), 0)),
        ("accuracy drop allowed on labels", pct(analysis.get("accuracy_margin"))),
        (
            "shadow: budget, disagreement margin",
            f"{analysis.get('shadow_s', 0):g} s, {pct(analysis.get('shadow_disagreement_margin'))}",
        ),
        ("failures before a rollback", str(analysis.get("failure_limit", "-"))),
    ]
    return [(name, value) for name, value in rows if value not in ("", "-")]


def _total(report: dict[str, Any]) -> dict[str, Any] | None:
    return next((row for row in report["load"] if row["name"] == "Aggregated"), None)


def render_html(report: dict[str, Any]) -> str:
    """The page as a string: ``report.html.j2`` filled with the report's data."""
    rollout = report.get("rollout") or {}
    template = _environment().get_template("report.html.j2")
    return template.render(
        report=report,
        rollout=rollout,
        tone=OUTCOME_TONE.get(report["outcome"], "bad"),
        ending=ending(report),
        figures=figures(report),
        settings=_settings(rollout.get("analysis")),
        shadow_lines=shadow_lines(report.get("shadow")),
        accuracy_lines=accuracy_lines(report.get("live_accuracy")),
        total=_total(report),
        verdicts=VERDICTS,
    )


def write_html(report: dict[str, Any], path: Path) -> None:
    path.write_text(render_html(report))


# --- the terminal -------------------------------------------------------------------------


def decision_table(report: dict[str, Any]) -> Table:
    """One row per analysis in seven narrow columns, canary and stable side by side in one
    cell: about 75 characters, whole at 80 columns (ten columns had their headers cut to
    ``weig… outco…``)."""
    table = Table(
        title="what the gate decided, and why",
        caption="c/s = canary/stable; err = server errors; p99 in ms; "
        "not yet: margins not shown yet, the step goes on",
        box=SIMPLE_HEAD,
        padding=(0, 1),
        show_edge=False,
    )
    for column in ("step", "verdict", "action", "req c/s", "err c/s", "p99 c/s", "shift"):
        table.add_column(column, justify="right", no_wrap=True)
    for t in report["ticks"]:
        table.add_row(
            f"{t['canary_weight']}%",
            VERDICTS.get(t["outcome"], str(t["outcome"])),
            t["action"],
            ratio(count(t["canary_requests"]), count(t["stable_requests"])),
            ratio(pct(t["canary_error_rate"]), pct(t["stable_error_rate"])),
            ratio(ms(t["canary_p99_ms"]), ms(t["stable_p99_ms"])),
            pct(t["class_shift"]),
        )
    return table


def load_table(report: dict[str, Any]) -> Table:
    """locust's rows with their protocol: the REST and gRPC "invalid input" rows are two
    rows, told apart."""
    table = Table(title="load test (locust)", box=SIMPLE_HEAD, padding=(0, 1), show_edge=False)
    table.add_column("protocol")
    table.add_column("request")
    for column in ("requests", "failed", "p99 ms"):
        table.add_column(column, justify="right", no_wrap=True)
    for row in report["load"]:
        table.add_row(
            row["protocol"] or "all",
            escape(row["name"]),
            count(row["requests"]),
            count(row["failures"]),
            ms(row["p99_ms"]),
        )
    return table


def print_summary(report: dict[str, Any], console: Console) -> None:
    if report["ticks"]:
        console.print(decision_table(report))
    gate = report.get("accuracy_gate")
    if gate:
        reason = str(gate["reason"])
        label = "" if reason.startswith("accuracy gate") else "accuracy gate: "
        console.print(escape(label + reason))
    shadow = report.get("shadow")
    if shadow is not None:
        for line in shadow_lines(shadow):
            console.print(escape(line))
        matrix = shadow["flips"]
        if matrix:
            flips = Table(title="shadow: stable (rows) x candidate (columns)", box=SIMPLE_HEAD)
            flips.add_column("")
            for name in matrix:
                flips.add_column(name, justify="right")
            for row, counts in matrix.items():
                flips.add_row(
                    escape(row),
                    *(
                        count(n) if col == row or not n else f"[bold red]{count(n)}[/]"
                        for col, n in counts.items()
                    ),
                )
            console.print(flips)
    for line in accuracy_lines(report.get("live_accuracy")):
        console.print(escape(line))
    if report["load"]:
        console.print(load_table(report))
    tone = OUTCOME_TONE.get(report["outcome"], "bad")
    message = (
        (report.get("rollout") or {}).get("message")
        or report["pipeline"].get("candidate", {}).get("reason")
        or ""
    )
    console.print(f"gate: {escape(message)}")
    console.print(f"[bold {TONE_STYLE[tone]}]outcome: {report['outcome']}[/] - {ending(report)}")
