"""What the CLI shows people: rich tables for lists, one panel for a rollout (the same
panel the live ``--watch`` view redraws). Machine output (``--output json``) never comes
here. Pure functions of the API's JSON, so they are tested without a gate."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

LAST_DECISIONS = 8
PHASE_STYLE = {
    "succeeded": "bold green",
    "rolled_back": "bold red",
    "failed": "bold red",
    "aborted": "bold red",
    "rolling_back": "yellow",
    "promoting": "cyan",
    "watching": "cyan",
}


def age(since: str, now: datetime | None = None) -> str:
    """``2m13s``-style age of an ISO timestamp, as kubectl shows it."""
    try:
        then = datetime.fromisoformat(since)
    except ValueError:
        return "?"
    if then.tzinfo is None:
        then = then.replace(tzinfo=UTC)
    seconds = max(0, int(((now or datetime.now(UTC)) - then).total_seconds()))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def phase_text(rollout: dict[str, Any]) -> Text:
    return Text(phase_label(rollout), style=PHASE_STYLE.get(str(rollout.get("phase")), ""))


def phase_label(rollout: dict[str, Any]) -> str:
    """``progressing (paused)``, ``progressing (waiting for confirm-promotion)``."""
    label = str(rollout.get("phase", "?"))
    if rollout.get("paused"):
        label += " (paused)"
    if rollout.get("held_by"):
        label += f" (waiting for {rollout['held_by']})"
    return label


def step_text(rollout: dict[str, Any]) -> str:
    """``1/2 (50 %)``: which of the steps, 1-based; ``-`` before the first."""
    steps = list(rollout.get("steps") or [])
    index = int(rollout.get("step_index", -1))
    if index < 0 or not steps:
        return f"-/{len(steps)}"
    shown = min(index, len(steps) - 1)
    return f"{shown + 1}/{len(steps)} ({steps[shown]} %)"


def began_with(rollout: dict[str, Any]) -> str | None:
    """The stable the rollout began with (``stable_version`` is the one it leaves; a gate
    before ``previous_version`` existed only sent the first)."""
    version = rollout.get("previous_version", rollout.get("stable_version"))
    return str(version) if version is not None else None


def rollouts_table(rollouts: list[dict[str, Any]], now: datetime | None = None) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("ID", "MODEL", "STABLE", "CANDIDATE", "PHASE", "WEIGHT", "STEP", "AGE"):
        table.add_column(column, no_wrap=True)
    for rollout in rollouts:
        table.add_row(
            str(rollout.get("id", "")),
            str(rollout.get("model", "")),
            str(began_with(rollout) or "-"),
            str((rollout.get("candidate") or {}).get("version", "")),
            phase_text(rollout),
            f"{rollout.get('canary_weight', 0)} %",
            step_text(rollout),
            age(str(rollout.get("created_at", "")), now),
        )
    return table


def decisions_table(decisions: list[dict[str, Any]], limit: int = LAST_DECISIONS) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False, expand=False)
    for column in ("AT", "ACTION", "OUTCOME", "WEIGHT"):
        table.add_column(column, no_wrap=True)
    table.add_column("REASON", overflow="fold")
    for decision in decisions[-limit:]:
        at = str(decision.get("at", ""))
        table.add_row(
            at[11:19] if len(at) >= 19 else at,  # the time of day: a rollout spans minutes
            str(decision.get("action", "")),
            str(decision.get("outcome") or "-"),
            f"{decision.get('canary_weight', 0)} %",
            str(decision.get("reason", "")),
        )
    return table


def rollout_view(rollout: dict[str, Any], now: datetime | None = None) -> RenderableType:
    """One rollout: what ``get`` prints and ``get --watch`` redraws on every change."""
    summary = Table.grid(padding=(0, 2))
    summary.add_column(style="bold", no_wrap=True)
    summary.add_column()
    candidate = rollout.get("candidate") or {}
    summary.add_row("Rollout", str(rollout.get("id", "")))
    summary.add_row("Model", str(rollout.get("model", "")))
    summary.add_row(
        "Versions",
        f"stable {began_with(rollout) or '-'} -> candidate {candidate.get('version', '?')}"
        + (
            " (the stable now)" if rollout.get("stable_version") == candidate.get("version") else ""
        ),
    )
    summary.add_row("Phase", phase_text(rollout))
    summary.add_row("Weight", f"{rollout.get('canary_weight', 0)} %")
    steps = " -> ".join(str(s) for s in rollout.get("steps") or [])
    summary.add_row("Step", f"{step_text(rollout)}   steps {steps}")
    summary.add_row(
        "Counts",
        f"failures {rollout.get('failures', 0)}, inconclusive {rollout.get('inconclusive', 0)},"
        f" errors {rollout.get('errors', 0)}",
    )
    summary.add_row("Message", Text(str(rollout.get("message", ""))))
    summary.add_row("Age", age(str(rollout.get("created_at", "")), now))
    parts: list[RenderableType] = [summary]
    decisions = rollout.get("decisions")
    if decisions:
        parts += [Text(""), Text(f"Last decisions ({len(decisions)} in all)", style="bold")]
        parts.append(decisions_table(decisions))
    return Panel(Group(*parts), title=f"rollout {rollout.get('id', '')}", expand=False)


def rollout_line(rollout: dict[str, Any]) -> str:
    """One line per state, for ``--watch`` when stdout is not a terminal (a log)."""
    return (
        f"{rollout.get('id', '')} {phase_label(rollout)} weight {rollout.get('canary_weight', 0)}"
        f" % step {step_text(rollout)}: {rollout.get('message', '')}"
    )
