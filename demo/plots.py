"""The report's charts, drawn with matplotlib as SVG: text stays text (searchable, sharp at
any width) and the page needs nothing but itself.

- the timeline: the candidate's share of live traffic (100 % once it became the stable),
  the shadow phase shaded, and under it locust's per-second history (requests and
  failures per second, p95 latency, REST and gRPC apart), the gate's decisions as
  vertical lines, all on one clock;
- the checks: each analysis' estimate with its confidence interval against the margin (or
  the hard ceiling) it had to clear, so "why" is visible, not only the verdict;
- the predicted-class distribution, stable against canary.
"""

from __future__ import annotations

import base64
import io
import math
from datetime import datetime
from typing import Any

# check name -> (title, unit scale, unit): what each estimate means, in words
CHECK_TITLES = {
    "error_rate": "server-error rate, canary - stable",
    "error_rate_ceiling": "canary server-error rate (hard ceiling)",
    "latency_p95": "p95 latency, canary / stable",
    "latency_p99_ceiling": "canary p99 latency, ms (hard ceiling)",
    "class_shift": "class shift (share of answers that change class)",
    "accuracy": "accuracy drop on labels, stable - canary",
}
OUTCOME_COLOURS = {"pass": "tab:green", "fail": "tab:red", "inconclusive": "tab:gray"}
# the series the timeline draws: locust's names of the demo's real requests
TIMELINE_SERIES = {"/v1/models/iris:predict": "REST", "ModelInfer": "gRPC"}
SERIES_COLOURS = {"REST": "tab:blue", "gRPC": "tab:purple"}


def _svg(figure: Any) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode()


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def figures(report: dict[str, Any]) -> dict[str, str]:
    """Base64 SVGs by name (``timeline``, ``checks``, ``classes``), only those with data."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    drawn: dict[str, str] = {}
    # text as text: the SVG is a fraction of the size with glyphs as paths, and the page's
    # font renders it; the hash salt keeps the SVG ids the same from run to run
    with matplotlib.rc_context(
        {"svg.fonttype": "none", "svg.hashsalt": "irisgate", "font.size": 9}
    ):
        for name, draw in (("timeline", timeline), ("checks", checks), ("classes", classes)):
            figure = draw(report, pyplot)
            if figure is not None:
                drawn[name] = _svg(figure)
                pyplot.close(figure)
    return drawn


def _origin(report: dict[str, Any]) -> float | None:
    """The timeline's zero: when the rollout was created, else locust's first second."""
    created = (report.get("rollout") or {}).get("created_at")
    if created:
        return _epoch(created)
    points = [p["t"] for s in report.get("history") or [] for p in s["points"]]
    return float(min(points)) if points else None


def _shares(report: dict[str, Any], origin: float) -> tuple[list[float], list[int]]:
    seconds = [_epoch(w["time"]) - origin for w in report["weights"]]
    shares = [int(w["candidate_share"]) for w in report["weights"]]
    return seconds, shares


def _ending(report: dict[str, Any]) -> str:
    rollout = report.get("rollout") or {}
    candidate = (rollout.get("candidate") or {}).get("version", "?")
    previous = rollout.get("previous_version") or rollout.get("stable_version") or "?"
    endings = {
        "promoted": f"v{candidate} became the stable",
        "rolled_back": f"rolled back: v{previous} stays stable",
        "failed_in_shadow": f"failed in shadow: no user met v{candidate}",
        "failed": f"failed: v{previous} stays stable",
        "aborted": f"aborted: v{previous} stays stable",
    }
    return endings.get(str(report["outcome"]), str(report["outcome"]))


def timeline(report: dict[str, Any], pyplot: Any) -> Any:
    origin = _origin(report)
    if origin is None:
        return None
    series = [s for s in report.get("history") or [] if s["name"] in TIMELINE_SERIES]
    aggregated = next((s for s in report.get("history") or [] if s["name"] == "Aggregated"), None)
    panels = (["share"] if report["weights"] else []) + (["rate", "latency"] if series else [])
    if not panels:
        return None
    ratios = [1.0 if p == "share" else 1.3 for p in panels]
    figure, axes = pyplot.subplots(
        len(panels),
        1,
        figsize=(12, 1.6 + 1.5 * len(panels)),
        sharex=True,
        gridspec_kw={"height_ratios": ratios},
    )
    axes = list(axes) if len(panels) > 1 else [axes]
    by_panel = dict(zip(panels, axes, strict=True))
    end = max(
        [_epoch(w["time"]) - origin for w in report["weights"]]
        + [p["t"] - origin for s in series for p in s["points"]]
    )
    changes: list[float] = []
    if "share" in by_panel:
        axis = by_panel["share"]
        seconds, shares = _shares(report, origin)
        axis.step([*seconds, end], [*shares, shares[-1]], where="post", color="tab:orange")
        axis.fill_between([*seconds, end], [*shares, shares[-1]], step="post", alpha=0.15)
        _shade_shadow(axis, report, origin, end)
        axis.set(ylim=(-5, 118), ylabel="candidate's share\nof traffic (%)", yticks=[0, 50, 100])
        axis.set_title("The rollout: the candidate's share of live traffic", loc="left")
        axis.annotate(
            _ending(report),
            xy=(seconds[-1], shares[-1]),
            xytext=(-6, 8 if shares[-1] < 50 else -14),
            textcoords="offset points",
            ha="right",
            fontweight="bold",
        )
        changes = [seconds[i] for i in range(1, len(shares)) if shares[i] != shares[i - 1]]
    if series:
        rate, latency = by_panel["rate"], by_panel["latency"]
        for one in series:
            protocol = TIMELINE_SERIES[one["name"]]
            seconds = [p["t"] - origin for p in one["points"]]
            colour = SERIES_COLOURS[protocol]
            rate.plot(seconds, [p["rps"] for p in one["points"]], color=colour, label=protocol)
            latency.plot(
                seconds,
                # no requests in locust's window yet: a gap, not a drop to 0
                [math.nan if p["p95_ms"] is None else p["p95_ms"] for p in one["points"]],
                color=colour,
                label=f"{protocol} p95",
            )
        if aggregated is not None:
            rate.plot(
                [p["t"] - origin for p in aggregated["points"]],
                [p["failures_per_s"] for p in aggregated["points"]],
                color="tab:red",
                label="failures (all)",
            )
        rate.set(ylabel="requests / s")
        rate.set_title("Live traffic (locust, per second)", loc="left")
        latency.set(ylabel="ms", ylim=(0, None))
        latency.set_title("Latency seen by the clients (locust's recent p95)", loc="left")
        for axis in (rate, latency):
            axis.legend(loc="best", fontsize=8, ncols=3)
            for second in changes:
                axis.axvline(second, color="tab:orange", linestyle=":", linewidth=1)
    for axis in axes:
        axis.grid(alpha=0.3)
        axis.axvline(0, color="black", linewidth=0.6)
    axes[-1].set_xlabel("seconds since the rollout was created (dotted: the canary weight moved)")
    figure.tight_layout()
    return figure


def _shade_shadow(axis: Any, report: dict[str, Any], origin: float, end: float) -> None:
    """The shadow phase, shaded: the candidate answered copies, no user saw its answers."""
    weights = report["weights"]
    for index, weight in enumerate(weights):
        if weight["action"] != "shadow":
            continue
        start = _epoch(weight["time"]) - origin
        later = [_epoch(w["time"]) - origin for w in weights[index + 1 :]]
        axis.axvspan(start, later[0] if later else end, color="tab:blue", alpha=0.1)
        axis.text(start, 105, " shadow (copies of live requests)", fontsize=8, va="center")


def _interval(check: dict[str, Any]) -> tuple[float | None, float | None, float | None]:
    """The interval the verdict rests on and the bound it had to stay under: a relative
    check's interval against its margin, a ceiling's against its hard limit."""
    if check.get("margin") is not None:
        low, high = check.get("interval") or (None, None)
        return low, high, float(check["margin"])
    low, high = check.get("fail_interval") or (None, None)
    ceiling = check.get("fail_above")
    return low, high, None if ceiling is None else float(ceiling)


def _key(check: dict[str, Any]) -> str:
    """A check's panel: gate-generated traffic is judged apart from live traffic."""
    traffic = check.get("traffic", "live")
    return str(check["name"]) + ("" if traffic == "live" else f" ({traffic})")


def checks(report: dict[str, Any], pyplot: Any) -> Any:
    ticks = report["ticks"]
    names: list[str] = []
    for tick in ticks:
        for check in tick["checks"]:
            if _key(check) not in names:
                names.append(_key(check))
    if not names:
        return None
    columns = 3 if len(names) > 4 else 2
    rows = -(-len(names) // columns)
    figure, grid = pyplot.subplots(rows, columns, figsize=(12, 2.4 * rows), squeeze=False)
    labels = [f"{t['canary_weight']}%\n#{i + 1}" for i, t in enumerate(ticks)]
    for axis, key in zip(grid.flat, names, strict=False):
        name = key.split(" ")[0]
        bound_kind = "ceiling" if name.endswith("_ceiling") else "margin"
        bound_value = None
        for index, tick in enumerate(ticks):
            check = next((c for c in tick["checks"] if _key(c) == key), None)
            if check is None or check.get("estimate") is None:
                continue
            estimate = float(check["estimate"])
            low, high, bound = _interval(check)
            bound_value = bound if bound is not None else bound_value
            colour = OUTCOME_COLOURS.get(str(check.get("outcome")), "tab:gray")
            bottom = estimate - low if low is not None else 0.0
            top = high - estimate if high is not None else 0.0
            axis.errorbar(
                [index],
                [estimate],
                yerr=[[max(bottom, 0.0)], [max(top, 0.0)]],
                fmt="o",
                color=colour,
                capsize=3,
            )
        if bound_value is not None:
            axis.axhline(bound_value, color="tab:red", linestyle="--", linewidth=1)
            axis.annotate(
                f"{bound_kind} {bound_value:g}",
                xy=(1, bound_value),
                xycoords=("axes fraction", "data"),
                xytext=(-3, 3),
                textcoords="offset points",
                ha="right",
                color="tab:red",
                fontsize=8,
            )
        axis.set_xticks(range(len(ticks)), labels, fontsize=8)
        axis.set_xlim(-0.6, len(ticks) - 0.4)
        axis.set_title(CHECK_TITLES.get(name, name) + key[len(name) :], loc="left", fontsize=9)
        axis.grid(alpha=0.3, axis="y")
    for axis in list(grid.flat)[len(names) :]:
        axis.set_visible(False)
    figure.suptitle(
        "Each analysis: estimate and confidence interval (green pass, grey not yet shown, "
        "red fail) against the bound it had to clear",
        x=0.01,
        ha="left",
        fontsize=10,
    )
    figure.tight_layout()
    return figure


def classes(report: dict[str, Any], pyplot: Any) -> Any:
    totals: dict[str, dict[str, int]] = {"stable": {}, "canary": {}}
    for tick in report["ticks"]:
        for role, counts in totals.items():
            for name, count in tick[f"{role}_classes"].items():
                counts[name] = counts.get(name, 0) + count
    names = sorted(set(totals["stable"]) | set(totals["canary"]))
    if not names:
        return None
    figure, axis = pyplot.subplots(figsize=(6, 2.6))
    for offset, role in ((-0.2, "stable"), (0.2, "canary")):
        total = sum(totals[role].values()) or 1
        axis.bar(
            [i + offset for i in range(len(names))],
            [totals[role].get(n, 0) / total for n in names],
            width=0.4,
            label=f"{role} ({sum(totals[role].values()):,} answers)",
        )
    axis.set_xticks(range(len(names)), names)
    axis.set(ylabel="share of answers")
    axis.set_title("Predicted classes during the canary steps", loc="left")
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3, axis="y")
    figure.tight_layout()
    return figure
