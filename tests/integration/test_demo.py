"""`python -m demo` end to end with shortened intervals, and its clean-up."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.gate_stack import kill_processes_mentioning, processes_mentioning
from tests.helpers import REPO_ROOT, free_port

pytestmark = pytest.mark.integration


def commands_mentioning(text: str) -> list[str]:
    return [command for _, command in processes_mentioning(text)]


def demo_command(run_dir: Path, scenario: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "demo",
        "--scenario",
        scenario,
        "--run-dir",
        str(run_dir),
        "--router-http-port",
        str(free_port()),
        "--router-grpc-port",
        str(free_port()),
        "--router-admin-port",
        str(free_port()),
        "--gate-port",
        str(free_port()),
        "--steps",
        "50,100",
        "--step-interval",
        "3",
        "--labels-delay-s",
        "2",
        "--timeout",
        "240",
    ]


def run_demo(run_dir: Path, scenario: str) -> tuple[int, dict[str, Any], str]:
    try:
        completed = subprocess.run(
            demo_command(run_dir, scenario),
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=420,
        )
    finally:
        kill_processes_mentioning(str(run_dir))  # only if the demo's own clean-up failed
    report_path = run_dir / "report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    return completed.returncode, report, completed.stdout + completed.stderr


def assert_nothing_left(run_dir: Path) -> None:
    deadline = time.monotonic() + 15  # predictors drain for a moment after SIGTERM
    while time.monotonic() < deadline and commands_mentioning(str(run_dir)):
        time.sleep(0.3)
    assert commands_mentioning(str(run_dir)) == []


def test_good_scenario_promotes_and_writes_the_report(tmp_path: Path) -> None:
    run_dir = tmp_path / "good"
    code, report, output = run_demo(run_dir, "good")
    assert code == 0, output[-3000:]
    assert report["outcome"] == "promoted"
    assert report["accuracy_gate"]["live_accuracy"] >= 0.9
    # the shadow phase: the candidate answered copies of live requests, close to stable
    shadow = report["shadow"]
    assert shadow["outcome"] == "pass", shadow["reason"]
    assert shadow["reason"].startswith("shadow: disagreement")
    assert shadow["rows"] >= shadow["requests"] > 0
    assert shadow["disagreement"] < shadow["margin"] == 0.04
    assert set(shadow["flips"]) == {"setosa", "versicolor", "virginica"}
    # live accuracy from the delayed labels, on the same requests for both models
    live = report["live_accuracy"]
    assert live["shadow"]["rows"] > 0
    assert live["shadow"]["stable"] >= 0.85 and live["shadow"]["candidate"] >= 0.85
    assert live["labels"]["posted"] > 0 and live["labels"]["failed_posts"] == 0
    ticks = report["ticks"]
    # 50 % is the proving step: extended (inconclusive) until its margins are shown
    assert [(t["canary_weight"], t["outcome"]) for t in ticks][-2:] == [(50, "pass"), (100, "pass")]
    assert {(t["canary_weight"], t["outcome"]) for t in ticks[:-2]} <= {(50, "inconclusive")}
    for tick in ticks:
        for key in (
            "time",
            "canary_requests",
            "stable_requests",
            "canary_error_rate",
            "canary_p99_ms",
            "action",
        ):
            assert tick[key] is not None, key
        assert tick["canary_requests"] >= 1
    proof = ticks[-2]
    assert proof["class_shift"] is not None and proof["stable_p99_ms"] is not None
    # error rate, latency, class shift shown (and live accuracy, once canary labels arrived)
    for name in ("error_rate", "latency_p95", "class_shift"):
        assert name in proof["statistics"]
    assert proof["statistics"].count("✓") >= 3 and "✗" not in proof["statistics"]
    assert report["final_split"]["canary"] is None
    names = {row["name"] for row in report["load"]}
    assert {"/v1/models/iris:predict", "ModelInfer", "Aggregated"} <= names
    html = (run_dir / "report.html").read_text()
    assert html.count("latency_p95") >= len(ticks)  # the statistics of every step
    assert html.count("data:image/png;base64,") == 4
    assert "<h2>Shadow</h2>" in html and "live accuracy on the shadow pairs" in html
    assert_nothing_left(run_dir)


def test_subtle_scenario_fails_in_shadow_before_any_user_meets_the_candidate(
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / "subtle"
    code, report, output = run_demo(run_dir, "subtle")
    assert code == 0, output[-3000:]
    assert report["outcome"] == "failed_in_shadow"
    assert report["pipeline"]["candidate"]["accuracy"] >= 0.9  # it passed its held-out test
    assert report["accuracy_gate"]["outcome"] == "pass"
    assert report["rollout"]["phase"] == "failed"
    assert report["rollout"]["message"].startswith("shadow: regression shown on live requests")
    shadow = report["shadow"]
    assert shadow["outcome"] == "fail"
    assert shadow["disagreement"] > shadow["margin"]
    flips = shadow["flips"]
    assert set(flips) == {"setosa", "versicolor", "virginica"}
    assert flips["versicolor"]["virginica"] + flips["virginica"]["versicolor"] > 0
    # no user got a candidate's answer: no canary step, weight 0 throughout, no canary route
    assert report["ticks"] == []
    assert {w["canary_weight"] for w in report["weights"]} == {0}
    assert report["final_split"]["canary"] is None
    html = (run_dir / "report.html").read_text()
    assert '<td class="flip">' in html
    assert "outcome: failed_in_shadow" in output
    assert_nothing_left(run_dir)


def test_faulty_scenario_rolls_back(tmp_path: Path) -> None:
    run_dir = tmp_path / "faulty"
    code, report, output = run_demo(run_dir, "faulty")
    assert code == 0, output[-3000:]
    assert report["outcome"] == "rolled_back"
    failed = [t for t in report["ticks"] if t["outcome"] == "fail"]
    assert len(failed) == 2
    assert all(t["canary_error_rate"] > 0.01 for t in failed)
    assert "failure limit reached" in report["rollout"]["message"]
    assert_nothing_left(run_dir)


def test_interrupted_demo_leaves_no_process_behind(tmp_path: Path) -> None:
    run_dir = tmp_path / "interrupted"
    process = subprocess.Popen(
        demo_command(run_dir, "good"),
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:  # wait until the gate's predictors are up
            if any("--role stable" in c for c in commands_mentioning(str(run_dir))):
                break
            time.sleep(0.5)
        assert any("gate" in c for c in commands_mentioning(str(run_dir)))
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
        kill_processes_mentioning(str(run_dir))
    assert process.returncode == 130, output[-2000:]
    assert "every process stopped" in output
    assert_nothing_left(run_dir)
