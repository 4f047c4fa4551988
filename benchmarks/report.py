"""From raw runs to medians, ratios, goal checks, and the JSON + Markdown report.

Pure: no processes, no clock. Every figure in the report is a median over rounds of the
same (server, model, protocol, concurrency) point. A ratio between two servers at a point is
the median over rounds of their per-round ratio (``Lookup.paired``): the host's speed drifts
by a third within a minute, and two measurements made one after the other in a round share
the host's state, so their ratio is free of the drift that a ratio of medians, taken from
measurements up to a minute apart, carries. Pairing removes drift between the two
measurements, not bias: if going first favours one side, every round's ratio keeps it; the
benchmark cancels that by alternating which side goes first (``round_order`` in
``benchmarks.__main__``). The ratio of medians stays beside it (goal texts, the JSON) to show
how far drift moved it.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Literal

SERVER_ORDER = (
    "irisgate",
    "router",
    "haproxy",
    "mlserver",
    "bentoml",
    "mlflow",
    "kserve-plain",
    "kserve-constant",
)
FLOOR = "kserve-constant"
ROUTER, DIRECT = "router", "irisgate"  # the same predictor, through the router and not
REFERENCE_PROXY = "haproxy"  # the same predictor through HAProxy: what the router is held to
PROXIES = (ROUTER, REFERENCE_PROXY)  # whose figures are also shown against direct
# The serving frameworks irisgate's predictor must beat by 2x, by their report names.
PEERS = {"mlserver": "MLServer", "bentoml": "BentoML", "mlflow": "MLflow"}
PEER_GOAL_CONCURRENCY = (16, 64)
Metric = Literal["rps", "p99_ms"]


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


@dataclass(frozen=True)
class PairedRatio:
    """``metric`` of ``server`` over ``other`` at one (model, protocol, concurrency) point."""

    server: str
    other: str
    metric: Metric
    model: str
    protocol: str
    concurrency: int
    per_round: tuple[tuple[int, float], ...]  # (round, ratio) where both have rps > 0
    median: float | None  # of per_round; None when they share no round
    of_medians: float | None
    value: float  # what the goals and tables use: median, else of_medians


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
    """Points, and the samples behind them by round, keyed by (server, model, protocol, c)."""

    def __init__(self, points: list[Point], samples: Iterable[Sample]) -> None:
        self._points = {(p.server, p.model, p.protocol, p.concurrency): p for p in points}
        self._rounds: dict[tuple[str, str, str, int], dict[int, Sample]] = defaultdict(dict)
        for s in samples:
            self._rounds[(s.server, s.model, s.protocol, s.concurrency)][s.round] = s

    def get(self, server: str, model: str, protocol: str, concurrency: int) -> Point | None:
        return self._points.get(_key(server, model, protocol, concurrency))

    def paired(
        self,
        server: str,
        other: str,
        model: str,
        protocol: str,
        concurrency: int,
        metric: Metric = "rps",
    ) -> PairedRatio | None:
        """The median of per-round ratios, falling back to the ratio of medians when the
        two share no round; None when neither exists."""
        mine = self.get(server, model, protocol, concurrency)
        theirs = self.get(other, model, protocol, concurrency)
        if mine is None or theirs is None:
            return None
        a = self._rounds.get(_key(server, model, protocol, concurrency), {})
        b = self._rounds.get(_key(other, model, protocol, concurrency), {})
        per_round = tuple(
            (r, _figure(a[r], metric) / _figure(b[r], metric))
            for r in sorted(a.keys() & b.keys())
            if a[r].rps > 0 and b[r].rps > 0 and _figure(b[r], metric) > 0
        )
        median = statistics.median(x for _, x in per_round) if per_round else None
        bottom = _figure(theirs, metric)
        of_medians = _figure(mine, metric) / bottom if bottom > 0 else None
        value = median if median is not None else of_medians
        if value is None:
            return None
        args = (server, other, metric, model, protocol, concurrency)
        return PairedRatio(*args, per_round, median, of_medians, value)

    def ratio(
        self, server: str, other: str, model: str, protocol: str, concurrency: int
    ) -> float | None:
        """req/s of ``server`` over ``other``, paired by round (see ``paired``)."""
        paired = self.paired(server, other, model, protocol, concurrency)
        return None if paired is None else paired.value


def _key(server: str, model: str, protocol: str, concurrency: int) -> tuple[str, str, str, int]:
    return (server, "any" if server == FLOOR else model, protocol, concurrency)


def _figure(measured: Sample | Point, metric: Metric) -> float:
    return measured.rps if metric == "rps" else measured.p99_ms


def _of_medians(paired: PairedRatio) -> str:
    """The unpaired figure beside a paired one in a goal's text: how far drift moved it."""
    return "" if paired.of_medians is None else f"; ratio of medians {paired.of_medians:.2f}x"


def evaluate_goals(
    points: list[Point],
    samples: Iterable[Sample],
    idle_rss: dict[str, list[float]],
    top_concurrency: int,
) -> list[Goal]:
    """The issue's goals, each with the figure that decides it."""
    look = Lookup(points, samples)
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
            f"p99 at c={c} <= 60 ms, every protocol and model",
            "not measured"
            if worst is None
            else f"worst {worst.p99_ms:.1f} ms ({worst.protocol}, {worst.model})",
            None if worst is None else worst.p99_ms <= 60.0,
        )
    )
    errors = sum(p.errors for p in ours)
    goals.append(Goal("no errors", f"{errors} errors", None if not ours else errors == 0))
    goals.append(
        _floor_goal(look, top, f"predictor REST v1 and v2, c={c}", ("rest-v1", "rest-v2"), 1.5)
    )
    goals.append(_floor_goal(look, top, f"predictor gRPC, c={c}", ("grpc",), 1.3))
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


def _floor_goal(
    look: Lookup, top: list[Point], where: str, protocols: tuple[str, ...], minimum: float
) -> Goal:
    """The predictor's req/s over the constant KServe floor; the lowest over models and
    ``protocols`` decides."""
    text = f"{where}: >= {minimum:g}x the constant KServe floor"
    ratios = [
        paired
        for p in top
        if p.protocol in protocols
        and (paired := look.paired(DIRECT, FLOOR, p.model, p.protocol, p.concurrency)) is not None
    ]
    lowest = min(ratios, key=lambda paired: paired.value, default=None)
    if lowest is None:
        return Goal(text, "not measured", None)
    return Goal(
        text,
        f"lowest {lowest.value:.2f}x ({lowest.protocol}, {lowest.model}{_of_medians(lowest)})",
        lowest.value >= minimum,
    )


def _best_peer_goal(look: Lookup, points: list[Point]) -> Goal:
    """REST v2 req/s (BentoML and MLflow: the same one-row request in their own JSON) of
    the predictor over each peer at each (model, c), for c in 16 and 64; the lowest of
    those ratios, the one against the fastest peer at the worst point, decides."""
    peers = ", ".join(PEERS.values())
    concurrency = " and ".join(f"c={c}" for c in PEER_GOAL_CONCURRENCY)
    text = (
        f"REST v2 req/s: irisgate predictor >= 2x the best peer ({peers}) "
        f"on every model at {concurrency}"
    )
    ratios = [
        (ratio, kind, ours)
        for ours in points
        if (ours.server, ours.protocol) == (DIRECT, "rest-v2")
        and ours.concurrency in PEER_GOAL_CONCURRENCY
        for kind in PEERS
        if (ratio := look.ratio(DIRECT, kind, ours.model, "rest-v2", ours.concurrency)) is not None
    ]
    if not ratios:
        return Goal(text, "not measured", None)
    ratio, kind, ours = min(ratios, key=lambda item: item[0])
    return Goal(
        text,
        f"lowest {ratio:.2f}x (vs {PEERS[kind]}, {ours.model}, c={ours.concurrency})",
        ratio >= 2.0,
    )


def _router_goals(look: Lookup, points: list[Point], c: int) -> list[Goal]:
    """What the router may cost: req/s and p99 at the top concurrency (paired by round),
    p50 at c=1."""
    measured = [
        (r, d)
        for r in points
        if r.server == ROUTER
        and r.protocol in ("rest-v2", "grpc")
        and (d := look.get(DIRECT, r.model, r.protocol, r.concurrency)) is not None
    ]
    top = []
    for r, _ in measured:
        if r.concurrency != c:
            continue
        rps = look.paired(ROUTER, DIRECT, r.model, r.protocol, c)
        p99 = look.paired(ROUTER, DIRECT, r.model, r.protocol, c, "p99_ms")
        if rps is not None and p99 is not None:
            top.append((rps, p99))
    text = f"router vs direct, REST v2 and gRPC, c={c}: >= 80% req/s, p99 <= 1.5x, 0 errors"
    if not top:
        goals = [Goal(text, "not measured", None)]
    else:
        slowest = min((rps for rps, _ in top), key=lambda paired: paired.value)
        widest = max((p99 for _, p99 in top), key=lambda paired: paired.value)
        errors = sum(r.errors for r, _ in measured)
        goals = [
            Goal(
                text,
                f"lowest {slowest.value:.2f}x req/s ({slowest.protocol}, {slowest.model}"
                f"{_of_medians(slowest)}); highest p99 {widest.value:.2f}x "
                f"({widest.protocol}, {widest.model}); {errors} errors",
                slowest.value >= 0.8 and widest.value <= 1.5 and errors == 0,
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
    samples: Iterable[Sample],
    idle_rss: dict[str, list[float]],
    goals: list[Goal],
    meta: dict[str, Any],
    labels: dict[str, str],
    wires: dict[str, str] | None = None,
) -> str:
    look = Lookup(points, samples)
    measured = {p.server for p in points}
    proxies = "HAProxy, the router, their" if REFERENCE_PROXY in measured else "the router, its"
    lines = [
        "# irisgate benchmark",
        "",
        f"{meta['when']} - {meta['machine']} - {meta['settings']}",
        "",
        "One Iris row per request, loopback; wrk (REST) and h2load (gRPC); medians of "
        f"{meta['rounds']} interleaved rounds. Ratios are req/s against the named server, "
        f"the median of per-round ratios; {proxies} predictor and the floor are measured "
        "one after the other, in alternating order, so theirs are ratios of close "
        "measurements.",
        "",
        "## Goals",
        "",
        "| goal | measured | met |",
        "|---|---|---|",
    ]
    for goal in goals:
        verdict = {True: "yes", False: "**no**", None: "-"}[goal.met]
        lines.append(f"| {goal.text} | {goal.measured} | {verdict} |")
    lines += _against_reference(look, points)
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
                f"| {ratio(FLOOR)} | {ratio(DIRECT) if p.server in PROXIES else ''} |"
            )
    lines += ["", "## Idle memory", "", "| server | model | RSS per process, MB |", "|---|---|---|"]
    for key, rss in sorted(idle_rss.items()):
        kind, model = key.split("/")
        sizes = ", ".join(f"{mb:.0f}" for mb in rss)
        lines.append(f"| {labels.get(kind, kind)} | {model} | {sizes} |")
    return "\n".join(lines) + "\n"


def _against_reference(look: Lookup, points: list[Point]) -> list[str]:
    """The router beside HAProxy in its place, at the top concurrency: how much of what a
    proxy costs is the router's own (no goal: a reference, measured in the same rounds)."""
    top = max((p.concurrency for p in points if p.server == REFERENCE_PROXY), default=None)
    if top is None:
        return []
    lines = [
        "",
        "## The router against HAProxy in its place",
        "",
        f"The same predictor at c={top}, through the router and through HAProxy (written in "
        "C, layer 7, one thread, a backend connection per client connection as the router "
        "has on REST; on gRPC the router shares two connections to each predictor process "
        "among all clients); req/s ratios, the median of per-round ratios.",
        "",
        "| model | protocol | router vs direct | HAProxy vs direct | router vs HAProxy |",
        "|---|---|---:|---:|---:|",
    ]
    chosen = [p for p in points if p.server == REFERENCE_PROXY and p.concurrency == top]
    for p in sorted(chosen, key=lambda p: (p.model, list(PROTOCOL_TITLES).index(p.protocol))):
        pairs = ((ROUTER, DIRECT), (REFERENCE_PROXY, DIRECT), (ROUTER, REFERENCE_PROXY))
        ratios = [look.ratio(server, other, p.model, p.protocol, top) for server, other in pairs]
        cells = " | ".join(_fmt_ratio(r) for r in ratios)
        lines.append(f"| {p.model} | {PROTOCOL_TITLES[p.protocol]} | {cells} |")
    return lines


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
        "paired": [asdict(r) for r in paired_ratios(points, samples)],
        "idle_rss_mb": idle_rss,
        "samples": [asdict(s) for s in samples],
    }


def paired_ratios(points: list[Point], samples: Iterable[Sample]) -> list[PairedRatio]:
    """Every ratio the goals and tables take from the predictor and the router, with its
    per-round figures, so a reader of the JSON can check each one."""
    look = Lookup(points, samples)
    wanted: list[tuple[str, str, Metric]] = [
        (DIRECT, other, "rps") for other in (*PEERS, "kserve-plain", FLOOR)
    ]
    wanted += [(proxy, DIRECT, metric) for proxy in PROXIES for metric in ("rps", "p99_ms")] + [
        (ROUTER, REFERENCE_PROXY, "rps")
    ]
    return [
        paired
        for p in points
        for server, other, metric in wanted
        if p.server == server
        and (paired := look.paired(server, other, p.model, p.protocol, p.concurrency, metric))
        is not None
    ]
