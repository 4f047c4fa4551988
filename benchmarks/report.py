"""From raw runs to medians, ratios, goal checks, and the JSON + Markdown report.

Pure: no processes, no clock. Every figure in the report is a median over rounds of the
same (server, model, protocol, concurrency) point; ratios compare medians taken in the same
run, so the machine's noise hits both sides alike.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

SERVER_ORDER = (
    "irisgate",
    "router",
    "mlserver",
    "bentoml",
    "mlflow",
    "kserve-plain",
    "kserve-constant",
)
FLOOR = "kserve-constant"
ROUTER, DIRECT = "router", "irisgate"  # the same predictor, through the router and not
# The serving frameworks irisgate's predictor must beat by 2x, by their report names.
PEERS = {"mlserver": "MLServer", "bentoml": "BentoML", "mlflow": "MLflow"}
PEER_GOAL_CONCURRENCY = (16, 64)


@dataclass(frozen=True)
class Sample:
    server: str
    model: str
    protocol: str
    concurrency: int
    round: int
    requests: int
    errors: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_ms_per_request: float


@dataclass(frozen=True)
class Point:
    server: str
    model: str
    protocol: str
    concurrency: int
    rounds: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_ms_per_request: float


@dataclass(frozen=True)
class Goal:
    text: str
    measured: str
    met: bool | None  # None: not measured in this run


def summarize(samples: Iterable[Sample]) -> list[Point]:
    groups: dict[tuple[str, str, str, int], list[Sample]] = defaultdict(list)
    for s in samples:
        groups[(s.server, s.model, s.protocol, s.concurrency)].append(s)
    points = [
        Point(
            server,
            model,
            protocol,
            concurrency,
            rounds=len(group),
            rps=statistics.median(s.rps for s in group),
            p50_ms=statistics.median(s.p50_ms for s in group),
            p99_ms=statistics.median(s.p99_ms for s in group),
            errors=sum(s.errors for s in group),
            cpu_ms_per_request=statistics.median(s.cpu_ms_per_request for s in group),
        )
        for (server, model, protocol, concurrency), group in groups.items()
    ]
    return sorted(points, key=_order)


def _rank(server: str) -> int:
    return SERVER_ORDER.index(server) if server in SERVER_ORDER else len(SERVER_ORDER)


def _order(p: Point) -> tuple[Any, ...]:
    return (p.protocol, p.model, p.concurrency, _rank(p.server))


class Lookup:
    def __init__(self, points: list[Point]) -> None:
        self._points = {(p.server, p.model, p.protocol, p.concurrency): p for p in points}

    def get(self, server: str, model: str, protocol: str, concurrency: int) -> Point | None:
        if server == FLOOR:
            model = "any"
        return self._points.get((server, model, protocol, concurrency))

    def ratio(
        self, server: str, other: str, model: str, protocol: str, concurrency: int
    ) -> float | None:
        mine = self.get(server, model, protocol, concurrency)
        theirs = self.get(other, model, protocol, concurrency)
        if mine is None or theirs is None or theirs.rps <= 0:
            return None
        return mine.rps / theirs.rps


def evaluate_goals(
    points: list[Point], idle_rss: dict[str, list[float]], top_concurrency: int
) -> list[Goal]:
    """The issue's goals, each with the figure that decides it."""
    look = Lookup(points)
    c = top_concurrency
    goals: list[Goal] = []

    def ratio_goal(text: str, other: str, model: str, protocol: str, minimum: float) -> None:
        value = look.ratio("irisgate", other, model, protocol, c)
        goals.append(
            Goal(
                text,
                "not measured" if value is None else f"{value:.2f}x",
                _at_least(value, minimum),
            )
        )

    ratio_goal(f"REST v2, forest, c={c}: >= 2x MLServer", "mlserver", "forest", "rest-v2", 2.0)
    ratio_goal(
        f"REST v2, forest, c={c}: >= 15x plain KServe", "kserve-plain", "forest", "rest-v2", 15.0
    )
    ratio_goal(f"REST v2, logreg, c={c}: >= 1.5x MLServer", "mlserver", "logreg", "rest-v2", 1.5)
    ratio_goal(f"gRPC, forest, c={c}: >= 2x MLServer", "mlserver", "forest", "grpc", 2.0)
    goals.append(_best_peer_goal(look, points))

    ours = [p for p in points if p.server == "irisgate"]
    top = [p for p in ours if p.concurrency == c]
    worst = max(top, key=lambda p: p.p99_ms, default=None)
    goals.append(
        Goal(
            f"p99 at c={c} <= 100 ms, every protocol and model",
            "not measured"
            if worst is None
            else f"worst {worst.p99_ms:.1f} ms ({worst.protocol}, {worst.model})",
            None if worst is None else worst.p99_ms <= 100.0,
        )
    )
    errors = sum(p.errors for p in ours)
    goals.append(Goal("no errors", f"{errors} errors", None if not ours else errors == 0))
    floor_ratios = [(look.ratio("irisgate", FLOOR, p.model, p.protocol, c), p) for p in top]
    measured = [(r, p) for r, p in floor_ratios if r is not None]
    lowest = min(measured, key=lambda item: item[0], default=None)
    goals.append(
        Goal(
            f">= 80% of the constant KServe floor (c={c})",
            "not measured"
            if lowest is None
            else f"lowest {lowest[0]:.0%} ({lowest[1].protocol}, {lowest[1].model})",
            None if lowest is None else lowest[0] >= 0.8,
        )
    )
    goals += _router_goals(look, points, c)
    rss_ratios = []
    for key, rss in idle_rss.items():
        kind, model = key.split("/")
        plain = idle_rss.get(f"kserve-plain/{model}")
        if kind == "irisgate" and plain and rss:
            rss_ratios.append((max(rss) / max(plain), model))
    highest = max(rss_ratios, default=None)
    goals.append(
        Goal(
            "idle RSS per process <= 1.3x plain KServe",
            "not measured" if highest is None else f"highest {highest[0]:.2f}x ({highest[1]})",
            None if highest is None else highest[0] <= 1.3,
        )
    )
    return goals


def _best_peer_goal(look: Lookup, points: list[Point]) -> Goal:
    """REST v2 req/s (BentoML and MLflow: the same one-row request in their own JSON) of
    the predictor over the fastest peer at each (model, c), for c in 16 and 64; the lowest
    of those ratios decides."""
    peers = ", ".join(PEERS.values())
    concurrency = " and ".join(f"c={c}" for c in PEER_GOAL_CONCURRENCY)
    text = (
        f"REST v2 req/s: irisgate predictor >= 2x the best peer ({peers}) "
        f"on every model at {concurrency}"
    )
    ratios = []
    for ours in points:
        if (ours.server, ours.protocol) != (DIRECT, "rest-v2"):
            continue
        if ours.concurrency not in PEER_GOAL_CONCURRENCY:
            continue
        rivals = [
            (theirs, kind)
            for kind in PEERS
            if (theirs := look.get(kind, ours.model, "rest-v2", ours.concurrency)) is not None
        ]
        if not rivals:
            continue
        best, kind = max(rivals, key=lambda pair: pair[0].rps)
        if best.rps > 0:
            ratios.append((ours.rps / best.rps, kind, ours))
    if not ratios:
        return Goal(text, "not measured", None)
    ratio, kind, ours = min(ratios, key=lambda item: item[0])
    return Goal(
        text,
        f"lowest {ratio:.2f}x (vs {PEERS[kind]}, {ours.model}, c={ours.concurrency})",
        ratio >= 2.0,
    )


def _router_goals(look: Lookup, points: list[Point], c: int) -> list[Goal]:
    """What the router may cost: req/s and p99 at the top concurrency, p50 at c=1."""
    pairs = [
        (p, look.get(DIRECT, p.model, p.protocol, p.concurrency))
        for p in points
        if p.server == ROUTER and p.protocol in ("rest-v2", "grpc")
    ]
    measured = [(r, d) for r, d in pairs if d is not None and d.rps > 0 and d.p99_ms > 0]
    top = [(r, d) for r, d in measured if r.concurrency == c]
    text = f"router vs direct, REST v2 and gRPC, c={c}: >= 80% req/s, p99 <= 1.5x, 0 errors"
    if not top:
        goals = [Goal(text, "not measured", None)]
    else:
        slowest = min(top, key=lambda rd: rd[0].rps / rd[1].rps)
        widest = max(top, key=lambda rd: rd[0].p99_ms / rd[1].p99_ms)
        errors = sum(r.errors for r, _ in measured)
        rps_ratio = slowest[0].rps / slowest[1].rps
        p99_ratio = widest[0].p99_ms / widest[1].p99_ms
        goals = [
            Goal(
                text,
                f"lowest {rps_ratio:.2f}x req/s ({slowest[0].protocol}, {slowest[0].model}); "
                f"highest p99 {p99_ratio:.2f}x ({widest[0].protocol}, {widest[0].model}); "
                f"{errors} errors",
                rps_ratio >= 0.8 and p99_ratio <= 1.5 and errors == 0,
            )
        ]
    single = [(r, d) for r, d in measured if r.concurrency == 1]
    text = "router vs direct, REST v2 and gRPC, c=1: adds <= 0.5 ms to p50"
    if not single:
        return [*goals, Goal(text, "not measured", None)]
    worst = max(single, key=lambda rd: rd[0].p50_ms - rd[1].p50_ms)
    added = worst[0].p50_ms - worst[1].p50_ms
    where = f"({worst[0].protocol}, {worst[0].model})"
    return [*goals, Goal(text, f"worst {added:+.2f} ms {where}", added <= 0.5)]


def _at_least(value: float | None, minimum: float) -> bool | None:
    return None if value is None else value >= minimum


# --- rendering ---------------------------------------------------------------------------

PROTOCOL_TITLES = {"rest-v1": "REST v1", "rest-v2": "REST v2", "grpc": "gRPC (v2)"}


def _fmt_ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}x"


def markdown(
    points: list[Point],
    idle_rss: dict[str, list[float]],
    goals: list[Goal],
    meta: dict[str, Any],
    labels: dict[str, str],
    wires: dict[str, str] | None = None,
) -> str:
    look = Lookup(points)
    lines = [
        "# irisgate benchmark",
        "",
        f"{meta['when']} - {meta['machine']} - {meta['settings']}",
        "",
        "One Iris row per request, loopback; wrk (REST) and h2load (gRPC); medians of "
        f"{meta['rounds']} interleaved rounds. Ratios are req/s against the named server "
        "in the same run.",
        "",
        "## Goals",
        "",
        "| goal | measured | met |",
        "|---|---|---|",
    ]
    for goal in goals:
        verdict = {True: "yes", False: "**no**", None: "-"}[goal.met]
        lines.append(f"| {goal.text} | {goal.measured} | {verdict} |")
    measured = {p.server for p in points}
    if wires:
        lines += [
            "",
            "## What each server speaks",
            "",
            "Servers that speak no v2 protocol get the same one-row request in their own "
            "JSON, and their figures sit in the REST v2 table beside the v2 servers.",
            "",
            "| server | wire format |",
            "|---|---|",
        ]
        for kind in sorted(measured, key=_rank):
            lines.append(f"| {labels.get(kind, kind)} | {wires.get(kind, '?')} |")
    for protocol in ("rest-v1", "rest-v2", "grpc"):
        rows = [p for p in points if p.protocol == protocol]
        if not rows:
            continue
        lines += [
            "",
            f"## {PROTOCOL_TITLES[protocol]}",
            "",
            "| model | c | server | req/s | p50 ms | p99 ms | errors | CPU ms/req "
            "| vs plain | vs MLServer | vs floor | vs direct |",
            "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for p in rows:
            model = p.model if p.server != FLOOR else "(none)"

            def ratio(other: str, p: Point = p) -> str:
                if other == p.server:
                    return ""
                return _fmt_ratio(look.ratio(p.server, other, p.model, p.protocol, p.concurrency))

            lines.append(
                f"| {model} | {p.concurrency} | {labels.get(p.server, p.server)} "
                f"| {p.rps:,.0f} | {p.p50_ms:.2f} | {p.p99_ms:.1f} | {p.errors} "
                f"| {p.cpu_ms_per_request:.2f} | {ratio('kserve-plain')} | {ratio('mlserver')} "
                f"| {ratio(FLOOR)} | {ratio(DIRECT) if p.server == ROUTER else ''} |"
            )
    lines += ["", "## Idle memory", "", "| server | model | RSS per process, MB |", "|---|---|---|"]
    for key, rss in sorted(idle_rss.items()):
        kind, model = key.split("/")
        sizes = ", ".join(f"{mb:.0f}" for mb in rss)
        lines.append(f"| {labels.get(kind, kind)} | {model} | {sizes} |")
    return "\n".join(lines) + "\n"


def to_json(
    samples: list[Sample],
    points: list[Point],
    idle_rss: dict[str, list[float]],
    goals: list[Goal],
    meta: dict[str, Any],
) -> dict[str, Any]:
    return {
        "meta": meta,
        "goals": [asdict(g) for g in goals],
        "points": [asdict(p) for p in points],
        "idle_rss_mb": idle_rss,
        "samples": [asdict(s) for s in samples],
    }
