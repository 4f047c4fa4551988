"""The benchmark's arithmetic: medians over rounds, ratios paired by round, the goal
verdicts, and the order of turns that makes the pairs adjacent."""

from __future__ import annotations

import json
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import pytest

from benchmarks.__main__ import build_parser, round_order
from benchmarks.report import (
    FLOOR,
    Goal,
    Lookup,
    Sample,
    evaluate_goals,
    markdown,
    summarize,
    to_json,
)


def _sample(
    server: str, model: str, protocol: str, rps: float, p99: float = 50.0, **kw: int
) -> Sample:
    return Sample(
        server,
        model,
        protocol,
        kw.get("c", 64),
        kw.get("round", 1),
        int(rps * 5),
        kw.get("errors", 0),
        5.0,
        rps,
        p99 / 2,
        p99,
        0.8,
    )


def _goals(
    samples: list[Sample], rss: dict[str, list[float]] | None = None, c: int = 64
) -> dict[str, Goal]:
    return {g.text: g for g in evaluate_goals(summarize(samples), samples, rss or {}, c)}


def _run(ours_v2_forest: float, ours_p99: float = 60.0) -> list[Sample]:
    samples = []
    for round_no, jitter in enumerate((0.9, 1.0, 1.3), start=1):  # the median ignores 1.3
        for protocol in ("rest-v2", "grpc"):
            for model in ("forest", "logreg"):
                ours = ours_v2_forest if (protocol, model) == ("rest-v2", "forest") else 1500
                samples += [
                    _sample("irisgate", model, protocol, ours * jitter, ours_p99, round=round_no),
                    _sample("mlserver", model, protocol, 700 * jitter, round=round_no),
                    _sample("kserve-plain", model, protocol, 80 * jitter, round=round_no),
                ]
            samples.append(
                _sample("kserve-constant", "any", protocol, 1000 * jitter, round=round_no)
            )
    return samples


def test_medians_over_rounds_and_ratios_in_the_same_run() -> None:
    points = summarize(_run(1500))
    ours = next(
        p for p in points if (p.server, p.model, p.protocol) == ("irisgate", "forest", "rest-v2")
    )
    assert ours.rps == 1500 and ours.rounds == 3
    goals = _goals(_run(1500))
    assert goals["REST v2, forest, c=64: >= 2x MLServer"].measured == "2.14x"
    assert goals["REST v2, forest, c=64: >= 2x MLServer"].met is True
    assert goals["REST v2, forest, c=64: >= 15x plain KServe"].measured == "18.75x"
    rest = goals["predictor REST v1 and v2, c=64: >= 1.5x the constant KServe floor"]
    assert (rest.met, rest.measured) == (
        True,
        "lowest 1.50x (rest-v2, forest; ratio of medians 1.50x)",
    )
    assert goals["p99 at c=64 <= 60 ms, every protocol and model"].met is True  # 60.0: on the line
    assert goals["idle RSS per process <= 1.3x plain KServe"].met is None  # not measured


def test_a_missed_goal_says_by_how_much() -> None:
    rss = {"irisgate/forest": [330.0], "kserve-plain/forest": [250.0]}
    goals = _goals(_run(1200, ours_p99=140.0), rss)
    assert goals["REST v2, forest, c=64: >= 2x MLServer"].met is False
    assert goals["REST v2, forest, c=64: >= 2x MLServer"].measured == "1.71x"
    assert goals["p99 at c=64 <= 60 ms, every protocol and model"].met is False
    assert goals["p99 at c=64 <= 60 ms, every protocol and model"].measured.startswith(
        "worst 140.0 ms"
    )
    assert goals["idle RSS per process <= 1.3x plain KServe"].measured == "highest 1.32x (forest)"
    assert goals["idle RSS per process <= 1.3x plain KServe"].met is False


def test_errors_fail_the_no_error_goal_and_show_in_the_table() -> None:
    samples = [*_run(1500), _sample("irisgate", "forest", "rest-v1", 900, errors=3)]
    goals = _goals(samples)
    assert goals["no errors"].met is False and goals["no errors"].measured == "3 errors"
    meta = {"when": "now", "machine": "m", "settings": "s", "rounds": 3}
    text = markdown(summarize(samples), samples, {}, list(goals.values()), meta, {})
    assert "| forest | 64 | irisgate | 900 |" in text
    assert "| no errors | 3 errors | **no** |" in text


def _router_run(router_rps: float, router_p99: float, extra_p50_ms: float) -> list[Sample]:
    samples = []
    for protocol in ("rest-v2", "grpc"):
        for c, rps, p99 in ((64, 2000.0, 40.0), (1, 1000.0, 2.0)):
            direct = _sample("irisgate", "forest", protocol, rps, p99, c=c)
            samples.append(direct)
            slower = rps * router_rps if protocol == "grpc" else rps * 0.95
            samples.append(
                Sample(
                    "router",
                    "forest",
                    protocol,
                    c,
                    1,
                    int(slower * 5),
                    0,
                    5.0,
                    slower,
                    direct.p50_ms + (extra_p50_ms if c == 1 else 1.0),
                    p99 * router_p99,
                    0.2,
                )
            )
    return samples


ROUTER_TOP = "router vs direct, REST v2 and gRPC, c=64: >= 80% req/s, p99 <= 1.5x, 0 errors"


def test_the_router_is_judged_against_the_same_predictor_direct() -> None:
    ok = _goals(_router_run(0.85, 1.2, 0.3))
    top = ok[ROUTER_TOP]
    assert top.met is True
    assert top.measured == (
        "lowest 0.85x req/s (grpc, forest; ratio of medians 0.85x); "
        "highest p99 1.20x (grpc, forest); 0 errors"
    )
    added = ok["router vs direct, REST v2 and gRPC, c=1: adds <= 0.5 ms to p50"]
    assert (added.met, added.measured) == (True, "worst +0.30 ms (grpc, forest)")

    bad = _goals(_router_run(0.5, 1.2, 0.8))
    assert bad[top.text].met is False and bad[top.text].measured.startswith("lowest 0.50x")
    assert bad[added.text].met is False

    wide = _goals(_router_run(0.9, 1.6, 0.1))
    assert wide[top.text].met is False and "highest p99 1.60x" in wide[top.text].measured

    samples = _router_run(0.85, 1.2, 0.3)
    meta = {"when": "now", "machine": "m", "settings": "s", "rounds": 1}
    text = markdown(summarize(samples), samples, {}, list(ok.values()), meta, {})
    assert "| forest | 64 | router | 1,700 |" in text
    # vs direct: on the router's rows only (gRPC at c=1 and c=64, REST v2 likewise)
    assert text.count("| 0.85x |") == 2 and text.count("| 0.95x |") == 2


BEST_PEER = (
    "REST v2 req/s: irisgate predictor >= 2x the best peer (MLServer, BentoML, MLflow) "
    "on every model at c=16 and c=64"
)


def _peer_run(bentoml_logreg_c16: float) -> list[Sample]:
    """REST v2 at c=16 and c=64: ours 2000 req/s; MLServer 800, MLflow 300, BentoML 900
    except where the argument says; gRPC and c=1 figures that must not count."""
    samples = []
    for model in ("forest", "logreg"):
        for c in (1, 16, 64):
            bentoml = bentoml_logreg_c16 if (model, c) == ("logreg", 16) else 900.0
            for server, rps in (
                ("irisgate", 2000.0),
                ("mlserver", 800.0),
                ("bentoml", bentoml if c != 1 else 1900.0),  # c=1 is not judged
                ("mlflow", 300.0),
            ):
                samples.append(_sample(server, model, "rest-v2", rps, c=c))
        samples.append(_sample("mlserver", model, "grpc", 1900.0, c=64))  # REST v2 only
    return samples


def test_the_predictor_is_judged_against_the_fastest_peer_at_c16_and_c64() -> None:
    met = _goals(_peer_run(950.0))[BEST_PEER]
    # the lowest ratio is against the fastest peer at the worst point: 2000 / 950
    assert (met.met, met.measured) == (True, "lowest 2.11x (vs BentoML, logreg, c=16)")

    missed = _goals(_peer_run(1250.0))[BEST_PEER]
    assert (missed.met, missed.measured) == (False, "lowest 1.60x (vs BentoML, logreg, c=16)")

    # peers left out of the run (--servers) are left out of the comparison
    only_mlserver = [s for s in _peer_run(950.0) if s.server in ("irisgate", "mlserver")]
    goal = _goals(only_mlserver)[BEST_PEER]
    assert (goal.met, goal.measured) == (True, "lowest 2.50x (vs MLServer, forest, c=16)")


def test_the_peer_goal_is_not_measured_without_c16_or_c64_or_peers() -> None:
    smoke = [s for s in _peer_run(950.0) if s.concurrency == 1]
    goal = _goals(smoke, c=1)[BEST_PEER]
    assert (goal.met, goal.measured) == (None, "not measured")
    alone = [s for s in _peer_run(950.0) if s.server == "irisgate"]
    goal = _goals(alone)[BEST_PEER]
    assert (goal.met, goal.measured) == (None, "not measured")


def test_the_report_says_what_each_server_speaks() -> None:
    samples = _peer_run(950.0)
    meta = {"when": "now", "machine": "m", "settings": "s", "rounds": 1}
    wires = {"irisgate": "v2", "bentoml": "BentoML JSON", "mlflow": "MLflow JSON"}
    labels = {"bentoml": "BentoML 1.4 (batching, 2 workers)"}
    text = markdown(summarize(samples), samples, {}, [], meta, labels, wires)
    assert "| BentoML 1.4 (batching, 2 workers) | BentoML JSON |" in text
    assert "| mlflow | MLflow JSON |" in text and "| mlserver | ? |" in text
    rest_v2 = text.split("## REST v2")[1]
    assert "| forest | 16 | BentoML 1.4 (batching, 2 workers) | 900 |" in rest_v2


GRPC_FLOOR = "predictor gRPC, c=64: >= 1.3x the constant KServe floor"
REST_FLOOR = "predictor REST v1 and v2, c=64: >= 1.5x the constant KServe floor"


def _drift_run(ours: tuple[float, float, float]) -> list[Sample]:
    """gRPC, forest, c=64 over three rounds: both sides slow down by half in round 2, and
    in round 3 the floor is measured on a faster stretch of the host than the predictor."""
    floor = (2000.0, 1000.0, 1800.0)
    return [
        sample
        for round_no, (mine, theirs) in enumerate(zip(ours, floor, strict=True), start=1)
        for sample in (
            _sample("irisgate", "forest", "grpc", mine, round=round_no),
            _sample(FLOOR, "any", "grpc", theirs, round=round_no),
        )
    ]


def test_a_ratio_is_the_median_of_per_round_ratios_not_the_ratio_of_medians() -> None:
    samples = _drift_run((2600.0, 1300.0, 2000.0))  # 1.3x, 1.3x, 1.11x round by round
    paired = Lookup(summarize(samples), samples).paired("irisgate", FLOOR, "forest", "grpc", 64)
    assert paired is not None
    assert [r for r, _ in paired.per_round] == [1, 2, 3]
    assert paired.median == paired.value == pytest.approx(1.3)
    assert paired.of_medians == pytest.approx(2000 / 1800)  # the medians come from two rounds
    goal = _goals(samples)[GRPC_FLOOR]
    assert (goal.met, goal.measured) == (
        True,
        "lowest 1.30x (grpc, forest; ratio of medians 1.11x)",
    )

    missed = _goals(_drift_run((2580.0, 1290.0, 2000.0)))[GRPC_FLOOR]
    assert (missed.met, missed.measured) == (
        False,
        "lowest 1.29x (grpc, forest; ratio of medians 1.11x)",
    )


def test_without_a_common_round_the_ratio_is_the_ratio_of_medians() -> None:
    samples = [
        _sample("irisgate", "forest", "grpc", 1500.0, round=1),
        _sample(FLOOR, "any", "grpc", 1000.0, round=2),
    ]
    paired = Lookup(summarize(samples), samples).paired("irisgate", FLOOR, "forest", "grpc", 64)
    assert paired is not None
    assert (paired.per_round, paired.median, paired.value) == ((), None, 1.5)

    # a round where one side served nothing is left out of the pairs, not of the medians
    samples = [
        _sample("irisgate", "forest", "grpc", 1500.0, round=1),
        _sample("irisgate", "forest", "grpc", 0.0, round=2),
        _sample(FLOOR, "any", "grpc", 1000.0, round=1),
        _sample(FLOOR, "any", "grpc", 1000.0, round=2),
    ]
    paired = Lookup(summarize(samples), samples).paired("irisgate", FLOOR, "forest", "grpc", 64)
    assert paired is not None
    assert (paired.per_round, paired.median, paired.of_medians) == (((1, 1.5),), 1.5, 0.75)


@pytest.mark.parametrize(
    ("rest_v1_forest", "met", "measured"),
    [
        (1500.0, True, "lowest 1.50x (rest-v1, forest; ratio of medians 1.50x)"),
        (1490.0, False, "lowest 1.49x (rest-v1, forest; ratio of medians 1.49x)"),
    ],
)
def test_rest_must_reach_1_5x_the_floor_on_both_rest_protocols_and_every_model(
    rest_v1_forest: float, met: bool, measured: str
) -> None:
    samples = [_sample(FLOOR, "any", protocol, 1000.0) for protocol in ("rest-v1", "rest-v2")]
    samples += [
        _sample("irisgate", "forest", "rest-v1", rest_v1_forest),
        _sample("irisgate", "logreg", "rest-v1", 1700.0),
        _sample("irisgate", "forest", "rest-v2", 1600.0),
        _sample("irisgate", "logreg", "rest-v2", 1800.0),
        _sample("irisgate", "forest", "grpc", 1000.0),  # gRPC has a goal of its own
    ]
    goal = _goals(samples)[REST_FLOOR]
    assert (goal.met, goal.measured) == (met, measured)


@pytest.mark.parametrize(("p99", "met"), [(60.0, True), (60.1, False)])
def test_p99_at_the_top_concurrency_must_stay_within_60_ms(p99: float, met: bool) -> None:
    goal = _goals(_run(1500, ours_p99=p99))["p99 at c=64 <= 60 ms, every protocol and model"]
    assert goal.met is met


def test_the_router_goal_pairs_req_s_and_p99_by_round() -> None:
    """Round 3 caught the router on a slow stretch: by medians it would fail on both counts."""
    samples = []
    for round_no, (direct, routed, direct_p99, routed_p99) in enumerate(
        ((2000.0, 1800.0, 40.0, 48.0), (1000.0, 900.0, 80.0, 96.0), (1800.0, 1300.0, 40.0, 60.0)),
        start=1,
    ):
        samples.append(_sample("irisgate", "forest", "grpc", direct, direct_p99, round=round_no))
        samples.append(_sample("router", "forest", "grpc", routed, routed_p99, round=round_no))
    goal = _goals(samples)[ROUTER_TOP]
    assert goal.met is True
    assert goal.measured == (
        "lowest 0.90x req/s (grpc, forest; ratio of medians 0.72x); "
        "highest p99 1.20x (grpc, forest); 0 errors"
    )


def test_the_json_holds_every_paired_ratio_round_by_round() -> None:
    samples = [
        *_drift_run((2600.0, 1300.0, 2000.0)),
        _sample("router", "forest", "grpc", 2340.0, 60.0, round=1),
        _sample("haproxy", "forest", "grpc", 1950.0, 70.0, round=1),
        _sample("mlserver", "forest", "grpc", 1000.0, round=1),
    ]
    points = summarize(samples)
    meta = {"when": "now", "machine": "m", "settings": "s", "rounds": 3}
    report = json.loads(json.dumps(to_json(samples, points, {}, [], meta)))
    records = {(r["server"], r["other"], r["metric"]): r for r in report["paired"]}
    assert set(records) == {
        ("irisgate", FLOOR, "rps"),
        ("irisgate", "mlserver", "rps"),
        ("router", "irisgate", "rps"),
        ("router", "irisgate", "p99_ms"),
        ("haproxy", "irisgate", "rps"),
        ("haproxy", "irisgate", "p99_ms"),
        ("router", "haproxy", "rps"),
    }
    floor = records[("irisgate", FLOOR, "rps")]
    assert (floor["model"], floor["protocol"], floor["concurrency"]) == ("forest", "grpc", 64)
    assert [r for r, _ in floor["per_round"]] == [1, 2, 3]
    assert [round(x, 2) for _, x in floor["per_round"]] == [1.3, 1.3, 1.11]
    assert floor["median"] == pytest.approx(1.3) and floor["value"] == floor["median"]
    assert floor["of_medians"] == pytest.approx(2000 / 1800)
    router = records[("router", "irisgate", "rps")]
    assert router["per_round"] == [[1, 0.9]]  # the one round both were measured in
    assert records[("router", "irisgate", "p99_ms")]["per_round"] == [[1, 1.2]]
    assert records[("haproxy", "irisgate", "rps")]["per_round"] == [[1, 0.75]]
    assert records[("router", "haproxy", "rps")]["per_round"] == [[1, 1.2]]


def test_the_report_sets_the_router_beside_haproxy_at_the_top_concurrency() -> None:
    samples = _router_run(0.85, 1.2, 0.3)
    for protocol, ratio in (("rest-v2", 0.9), ("grpc", 0.68)):
        for c, rps in ((64, 2000.0), (1, 1000.0)):
            samples.append(_sample("haproxy", "forest", protocol, rps * ratio, 45.0, c=c))
    meta = {"when": "now", "machine": "m", "settings": "s", "rounds": 1}
    text = markdown(summarize(samples), samples, {}, [], meta, {})
    section = text.split("## The router against HAProxy in its place")[1].split("##")[0]
    assert "at c=64" in section
    rows = [line for line in section.splitlines() if line.startswith("| forest")]
    assert rows == [
        "| forest | REST v2 | 0.95x | 0.90x | 1.06x |",
        "| forest | gRPC (v2) | 0.85x | 0.68x | 1.25x |",
    ]
    # and on HAProxy's own rows of the gRPC table (c=1 and c=64), its ratio to direct
    assert "| forest | 64 | haproxy | 1,360 |" in text and text.count("| 0.68x |") == 1 + 2


def test_without_haproxy_the_report_has_no_reference_section() -> None:
    samples = _router_run(0.85, 1.2, 0.3)
    meta = {"when": "now", "machine": "m", "settings": "s", "rounds": 1}
    assert "HAProxy" not in markdown(summarize(samples), samples, {}, [], meta, {})


@dataclass(frozen=True)
class _Server:
    kind: str
    model: str


CORE_KINDS = ("haproxy", "router", "irisgate")


def _fleet(models: tuple[str, ...], core: tuple[str, ...] = CORE_KINDS) -> list[_Server]:
    """As plan_servers lays it out: per model the predictor, its proxies, then the rest."""
    kinds = ("irisgate", *core[:-1], "kserve-plain", "mlserver", "bentoml", "mlflow")
    return [_Server(k, m) for m in models for k in kinds] + [_Server(FLOOR, "any")]


def test_each_round_measures_the_core_block_adjacent_and_alternating() -> None:
    fleet = _fleet(("forest", "logreg"))
    core_kinds = {*CORE_KINDS, FLOOR}
    rests = []
    for round_no in (1, 2, 3, 4):
        order = round_order(fleet, round_no)
        assert sorted(order, key=fleet.index) == fleet  # nothing lost, nothing twice
        core, rest = order[:7], order[7:]
        assert {s.kind for s in core} == core_kinds
        assert all(s.kind not in core_kinds for s in rest)  # the peers come after the core
        rests.append(rest)
        step = 1 if round_no % 2 else -1  # router before its predictor, then after it
        for i, server in enumerate(order):
            if server.kind == "router":
                assert order[i + step] == _Server("irisgate", server.model)
                assert order[i - step] == _Server("haproxy", server.model)
        floor = order.index(_Server(FLOOR, "any"))
        assert "irisgate" in {order[floor - 1].kind, order[floor + 1].kind}
    assert [(s.kind, s.model) for s in round_order(fleet, 1)[:7]] == [
        ("haproxy", "forest"),
        ("router", "forest"),
        ("irisgate", "forest"),
        (FLOOR, "any"),
        ("haproxy", "logreg"),
        ("router", "logreg"),
        ("irisgate", "logreg"),
    ]
    assert round_order(fleet, 2)[:7] == round_order(fleet, 1)[:7][::-1]
    for before, after in pairwise(rests):
        assert after == before[1:] + before[:1]  # the rest rotate by one a round


@pytest.mark.parametrize("core", [CORE_KINDS, ("router", "irisgate")])
def test_with_one_model_the_floor_follows_its_predictor(core: tuple[str, ...]) -> None:
    """With or without HAProxy (not installed: left out of the fleet)."""
    fleet = _fleet(("logreg",), core)
    assert [s.kind for s in round_order(fleet, 1)[: len(core) + 1]] == [*core, FLOOR]
    assert [s.kind for s in round_order(fleet, 2)[: len(core) + 1]] == [FLOOR, *core[::-1]]
    assert len(round_order(fleet, 2)) == len(fleet)


def test_path_flags_are_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Servers run with working directories of their own: a relative ``--out`` (MLServer's
    model URI under it) or venv folder must not be read against theirs."""
    monkeypatch.chdir(tmp_path)
    args = build_parser().parse_args(
        ["--out", "out", "--mlserver-venv", "m", "--bentoml-venv", "b", "--mlflow-venv", "f"]
    )
    for path, name in (
        (args.out, "out"),
        (args.mlserver_venv, "m"),
        (args.bentoml_venv, "b"),
        (args.mlflow_venv, "f"),
    ):
        assert path == tmp_path.resolve() / name
