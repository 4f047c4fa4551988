"""The demo's report rendered from recorded runs (tests/demo_recorded.py): the page's
tables show what the inputs hold (whole counts, REST and gRPC apart, no JSON dumps), the
charts draw the promotion as the candidate becoming the stable and the bounds each check
had to clear, and the terminal summary is whole at 80 columns and ends in words that
match the outcome."""

from __future__ import annotations

import base64
import csv
import json
import tomllib
from fnmatch import fnmatch
from importlib import resources
from pathlib import Path

from rich.console import Console

from demo.render import print_summary, render_html
from demo.report import load_history
from tests.demo_recorded import RECORDED, page_images, page_tables, recorded_report
from tests.helpers import REPO_ROOT


def csv_rows(scenario: str, name: str) -> list[dict[str, str]]:
    with (RECORDED / scenario / name).open(newline="") as handle:
        return list(csv.DictReader(handle))


def svg_text(html: str, alt_starts: str) -> str:
    (src,) = [src for alt, src in page_images(html) if alt.startswith(alt_starts)]
    prefix = "data:image/svg+xml;base64,"
    assert src.startswith(prefix)
    return base64.b64decode(src[len(prefix) :]).decode()


def body_rows(table: list[list[str]]) -> list[list[str]]:
    return table[1:]  # the first row holds the headers


def test_the_promotion_reads_as_the_candidate_becoming_the_stable() -> None:
    report = recorded_report("good")
    assert report["outcome"] == "promoted"
    last = report["weights"][-1]
    # the router's canary weight drops to 0 at promotion; the candidate's share does not
    assert (last["action"], last["canary_weight"], last["candidate_share"]) == ("promoted", 0, 100)
    shares = [w["candidate_share"] for w in report["weights"]]
    assert shares == sorted(shares)  # never down: no dip that reads like a rollback

    html = render_html(report)
    assert "promoted: v2 is the stable now, serving all traffic" in html
    timeline = svg_text(html, "The rollout over time")
    assert "v2 became the stable" in timeline
    assert "shadow (copies of live requests)" in timeline
    for legend in ("REST", "gRPC", "failures (all)", "REST p95", "gRPC p95"):
        assert f">{legend}<" in timeline, legend


def test_the_checks_chart_draws_each_bound_the_rollout_had_to_clear() -> None:
    report = recorded_report("good")
    analysis = report["rollout"]["analysis"]
    checks = svg_text(render_html(report), "Each analysis")
    assert f"margin {analysis['error_rate_margin']:g}" in checks
    assert f"margin {analysis['class_shift_margin']:g}" in checks
    assert f"margin {1 + analysis['latency_margin']:g}" in checks  # canary/stable p95 ratio
    assert f"ceiling {analysis['max_error_rate']:g}" in checks
    assert f"ceiling {analysis['max_p99_ms']:g}" in checks
    for tick_label in {f"{t['canary_weight']}%" for t in report["ticks"]}:
        assert tick_label in checks


def test_tables_show_the_recorded_numbers_whole_and_the_protocols_apart() -> None:
    report = recorded_report("good")
    html = render_html(report)
    tables = page_tables(html)
    assert "<pre>" not in html and '"http":' not in html  # tables, not JSON dumps

    (load,) = tables["Load test (locust)"]
    shown = body_rows(load)
    recorded = csv_rows("good", "load_stats.csv")
    assert len(shown) == len(recorded)
    protocol = {"POST": "REST", "grpc": "gRPC", "": "all"}
    for row, cells in zip(recorded, shown, strict=True):
        assert cells[:4] == [
            protocol[row["Type"]],
            row["Name"],
            f"{int(row['Request Count']):,}",
            f"{int(row['Failure Count']):,}",
        ]
    invalid = [cells for cells in shown if cells[1].startswith("invalid input")]
    assert sorted(cells[0] for cells in invalid) == ["REST", "gRPC"]  # two rows, told apart

    (split,) = tables["Final traffic split"]
    routes = json.loads((RECORDED / "good" / "routes.json").read_text())
    stable, canary = body_rows(split)
    assert stable[0] == "stable" and stable[3:] == [
        f"{routes['stable']['requests']:,}",
        f"{routes['stable']['errors']:,}",
    ]
    assert canary == ["canary", "none (the candidate became the stable)"]

    (runs,) = tables["Pipeline runs"]
    pipeline = json.loads((RECORDED / "good" / "pipeline.json").read_text())
    for cells, role in zip(body_rows(runs), ("stable", "candidate"), strict=True):
        run = pipeline[role]
        assert cells[:4] == [role, run["outcome"], run["version"], f"{run['accuracy']:.1%}"]

    decisions = tables["Canary analysis"][0]
    assert len(body_rows(decisions)) == len(report["ticks"])
    for cells, tick in zip(body_rows(decisions), report["ticks"], strict=True):
        assert cells[1] == f"{tick['canary_weight']}%"
        assert cells[4] == f"{tick['canary_requests']:,}"  # whole requests, never "56.0"
        assert cells[5] == f"{tick['stable_requests']:,}"


def test_a_rollback_is_told_as_one_with_its_failed_checks() -> None:
    report = recorded_report("faulty")
    assert report["outcome"] == "rolled_back"
    assert report["weights"][-1]["candidate_share"] == 0
    html = render_html(report)
    assert "rolled back: v1 stays the stable" in html
    assert "rolled back: v1 stays stable" in svg_text(html, "The rollout over time")
    decisions = page_tables(html)["Canary analysis"][0]
    verdicts = [cells[2] for cells in body_rows(decisions)]
    assert verdicts.count("fail") == sum(t["outcome"] == "fail" for t in report["ticks"]) >= 1
    (load,) = page_tables(html)["Load test (locust)"]
    failures = {cells[1]: cells[3] for cells in body_rows(load) if cells[0] != "all"}
    recorded = {r["Name"]: r for r in csv_rows("faulty", "load_stats.csv") if r["Type"]}
    assert failures["ModelInfer"] == f"{int(recorded['ModelInfer']['Failure Count']):,}"


def summary_at_80(scenario: str) -> list[str]:
    console = Console(record=True, width=80, color_system=None)
    print_summary(recorded_report(scenario), console)
    return console.export_text().rstrip("\n").split("\n")


def test_the_terminal_summary_is_whole_at_80_columns() -> None:
    for scenario, last in (
        ("good", "outcome: promoted - promoted: v2 is the stable now, serving all traffic"),
        ("faulty", "outcome: rolled_back - rolled back: v1 stays the stable"),
    ):
        lines = summary_at_80(scenario)
        assert all(len(line) <= 80 for line in lines), scenario
        assert not any("…" in line for line in lines), scenario
        header = ["step", "verdict", "action", "req", "c/s", "err", "c/s", "p99", "c/s", "shift"]
        assert header in [line.split() for line in lines], scenario
        assert lines[-1] == last
        report = recorded_report(scenario)
        # each analysis a row, its counts whole: "423/350", never "423.0"
        for tick in report["ticks"]:
            cell = f"{tick['canary_requests']:,}/{tick['stable_requests']:,}"
            assert any(cell in line.split() for line in lines), cell


def test_locusts_history_becomes_a_series_per_request_type() -> None:
    series = load_history(RECORDED / "good" / "load_stats_history.csv")
    keys = [(s["protocol"], s["name"]) for s in series]
    assert keys[-1] == ("", "Aggregated")
    assert {("REST", "/v1/models/iris:predict"), ("gRPC", "ModelInfer")} <= set(keys)
    rows = csv_rows("good", "load_stats_history.csv")
    rest = next(s for s in series if s["name"] == "/v1/models/iris:predict")
    recorded = [r for r in rows if r["Name"] == "/v1/models/iris:predict"]
    assert [p["t"] for p in rest["points"]] == [int(r["Timestamp"]) for r in recorded]
    assert rest["points"][-1]["requests"] == int(recorded[-1]["Total Request Count"])


def test_the_template_ships_in_the_package() -> None:
    template = resources.files("demo") / "templates" / "report.html.j2"
    assert template.is_file()
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["demo"]
    assert any(fnmatch("templates/report.html.j2", pattern) for pattern in patterns)
    assert Path(str(template)).read_text().startswith("<!doctype html>")
