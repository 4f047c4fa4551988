"""`python -m demo` end to end with shortened intervals, and its clean-up.

Each story costs 30-50 s, so each run carries more than one check: the faulty scenario runs
at a real terminal (a pseudo-terminal, 80 columns: the compact output, no KFP executor JSON,
complete task logs), and the `--up` stack that README's commands are run against is also
the one interrupted with Ctrl-C."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from demo.stack import claim_run_dir
from tests.gate_stack import add_model, kill_processes_mentioning, processes_mentioning
from tests.helpers import REPO_ROOT, free_port
from tests.terminal import run_in_terminal

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


def run_demo(
    run_dir: Path, scenario: str, *, terminal: bool = False
) -> tuple[int, dict[str, Any], str]:
    """The demo's exit code, report and output; with ``terminal``, at a pseudo-terminal
    (the output then is the screen's text, escapes removed)."""
    try:
        if terminal:
            screen = run_in_terminal(demo_command(run_dir, scenario), REPO_ROOT, timeout=420)
            code, output = screen.code, screen.text
        else:
            completed = subprocess.run(
                demo_command(run_dir, scenario),
                cwd=REPO_ROOT,
                capture_output=True,
                text=True,
                timeout=420,
            )
            code, output = completed.returncode, completed.stdout + completed.stderr
    finally:
        kill_processes_mentioning(str(run_dir))  # only if the demo's own clean-up failed
    report_path = run_dir / "report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    return code, report, output


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
    # locust's per-second history, per request type: the timeline draws REST and gRPC apart
    assert {(s["protocol"], s["name"]) for s in report["history"]} >= {
        ("REST", "/v1/models/iris:predict"),
        ("gRPC", "ModelInfer"),
    }
    assert report["weights"][-1]["candidate_share"] == 100  # became the stable, not 0
    html = (run_dir / "report.html").read_text()
    assert html.count("latency_p95") >= len(ticks)  # the statistics of every step
    assert html.count("data:image/svg+xml;base64,") == 3  # timeline, checks, classes
    assert "<h2>Shadow</h2>" in html and "live accuracy on the shadow pairs" in html
    assert "promoted: v2 is the stable now" in html
    assert json.loads((run_dir / "gate-rollout.json").read_text())["phase"] == "succeeded"
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
    assert '<td class="num flip">' in html
    assert "outcome: failed_in_shadow" in output
    assert_nothing_left(run_dir)


def test_faulty_scenario_rolls_back_and_reads_compactly_at_a_terminal(tmp_path: Path) -> None:
    run_dir = tmp_path / "faulty"
    code, report, output = run_demo(run_dir, "faulty", terminal=True)
    assert code == 0, output[-3000:]
    assert report["outcome"] == "rolled_back"
    failed = [t for t in report["ticks"] if t["outcome"] == "fail"]
    assert len(failed) == 2
    assert all(t["canary_error_rate"] > 0.01 for t in failed)
    assert "failure limit reached" in report["rollout"]["message"]

    # what the terminal showed: two pipeline runs, the watch line, the summary; it was
    # 691 lines of executor JSON when rich took stdout over on a tty
    for mark in ("KFP Executor", "executor_input", '"parameterValues"'):
        assert mark not in output, f"{mark!r} reached the screen"
    lines = [line.rsplit("\r", 1)[-1] for line in output.split("\n")]
    shown = [line for line in lines if line.strip()]
    assert len(shown) <= 80, "\n".join(shown)  # 65 with this run's paths
    assert all(len(line) <= 80 for line in shown), max(shown, key=len)
    # the decision table's headers whole at 80 columns (ten columns were cut to "weig…")
    header = ["step", "verdict", "action", "req", "c/s", "err", "c/s", "p99", "c/s", "shift"]
    assert any(line.split() == header for line in shown), "\n".join(shown)
    assert any(
        line.strip().startswith("rolled back") and "v1 stays stable" in line for line in shown
    )
    assert "outcome: rolled_back - rolled back: v1 stays the stable" in output
    # ... while each pipeline run's task log has its executors' whole output
    logs = sorted((run_dir / "logs").glob("pipeline-*.log"))
    assert len(logs) == 2
    for log in logs:
        assert log.read_text().count("Got executor_input") >= 4, log
    assert_nothing_left(run_dir)


def readme_block(marker: str) -> str:
    """The shell block README introduces with ``marker`` (an HTML comment)."""
    text = (REPO_ROOT / "README.md").read_text()
    after = text[text.index(marker) :]
    start = after.index("```sh\n") + len("```sh\n")
    return after[start : after.index("```", start)]


README_UP_BLOCK = "<!-- tests/integration/test_demo.py runs this block"


def test_readmes_commands_against_make_up_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    """README's "Use the stack" block, run as written against `python -m demo --up` (ports,
    run folder, token and venv swapped for this test's); then Ctrl-C. A registry with
    version 1 is made in-process first (the pipeline runs in the block), and the analysis is
    shortened, as the other tests do."""
    run_dir = tmp_path / "up"
    claim_run_dir(run_dir, clear=False)
    add_model(tmp_path / "models", run_dir / "registry", "iris", ("logreg",))
    ports = {name: free_port() for name in ("http", "grpc", "admin", "gate")}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "demo",
            "--up",
            "--run-dir",
            str(run_dir),
            "--router-http-port",
            str(ports["http"]),
            "--router-grpc-port",
            str(ports["grpc"]),
            "--router-admin-port",
            str(ports["admin"]),
            "--gate-port",
            str(ports["gate"]),
            "--steps",
            "50,100",
            "--step-interval",
            "3",
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    banner: list[str] = []
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and "Ctrl-C stops everything." not in banner:
            line = process.stdout.readline()
            if not line:
                break
            banner.append(line.rstrip("\n"))
        text = "\n".join(banner)
        assert "Ctrl-C stops everything." in text, text
        assert "serving iris version 1" in text  # what the router's stable answers as
        assert f"REST   http://127.0.0.1:{ports['http']}" in text
        (export,) = [line for line in banner if line.strip().startswith("export GATE_API_TOKEN=")]
        token = export.split("GATE_API_TOKEN=")[1].split()[0]

        block = readme_block(README_UP_BLOCK)
        for readme, ours in (
            ("127.0.0.1:8000", f"127.0.0.1:{ports['http']}"),
            ("127.0.0.1:8090", f"127.0.0.1:{ports['gate']}"),
            (".irisgate/up", str(run_dir)),
            ("paste-the-token-make-up-printed", token),
            ("source .venv/bin/activate", f"source {Path(sys.prefix)}/bin/activate"),
        ):
            assert readme in block, readme
            block = block.replace(readme, ours)
        started = time.monotonic()
        completed = subprocess.run(
            # -m: job control as in the terminal README speaks to, so `kill %1` stops the
            # whole background job (the load test and the locust it runs)
            ["bash", "-m", "-e", "-o", "pipefail", "-c", block],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        took = time.monotonic() - started
        output = completed.stdout + completed.stderr
        assert completed.returncode == 0, f"after {took:.0f} s:\n{output[-3000:]}"
        assert '"predictions"' in completed.stdout
        assert completed.stdout.rstrip().splitlines()[-1].split()[1] == "succeeded", output

        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
        kill_processes_mentioning(str(run_dir))
    assert process.returncode == 130, rest[-2000:]
    assert "every process stopped" in rest
    assert_nothing_left(run_dir)
