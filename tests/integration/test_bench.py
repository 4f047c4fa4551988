"""``make bench`` cannot rot: its smoke mode runs every server and protocol end to end."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT

pytestmark = pytest.mark.integration

HAVE_GENERATORS = all(shutil.which(tool) for tool in ("wrk", "h2load"))
# HAProxy in the router's place: CI installs it (.ci/run); elsewhere the run leaves it out
WITH_HAPROXY = bool(shutil.which("haproxy") or os.environ.get("CI"))


@pytest.mark.skipif(
    not HAVE_GENERATORS and not os.environ.get("CI"),
    reason="wrk and h2load are not installed (CI installs them: .ci/run)",
)
# On a fresh checkout the three peer venvs are made first (with uv: 12 s for the three
# from an empty cache; with pip it was about 100 s on a quiet machine, 300 s on a loaded
# one): the test's bound is the command's own 900 s, not pytest-timeout's 300 s default.
@pytest.mark.timeout(900)
def test_smoke_run_measures_every_server_and_protocol(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--smoke",
            "--models",
            "logreg",
            "--out",
            str(out),
            # one venv per peer and checkout, made on first use (MLServer, BentoML and
            # MLflow from an empty uv cache: 3 + 5 + 4 s)
            "--mlserver-venv",
            str(REPO_ROOT / ".bench" / "mlserver-venv"),
            "--bentoml-venv",
            str(REPO_ROOT / ".bench" / "bentoml-venv"),
            "--mlflow-venv",
            str(REPO_ROOT / ".bench" / "mlflow-venv"),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    report = json.loads((out / "results.json").read_text())
    measured = {(p["server"], p["protocol"]) for p in report["points"]}
    assert measured == {
        (server, protocol)
        for server in ("irisgate", "router", "kserve-plain", "kserve-constant")
        + (("haproxy",) if WITH_HAPROXY else ())
        for protocol in ("rest-v1", "rest-v2", "grpc")
    } | {
        ("mlserver", "rest-v2"),
        ("mlserver", "grpc"),
        ("bentoml", "rest-v2"),
        ("mlflow", "rest-v2"),
    }
    for point in report["points"]:
        assert point["rps"] > 0 and point["p99_ms"] > 0, point
        assert point["errors"] == 0, point
    assert {g["text"].split(":")[0] for g in report["goals"]} >= {"REST v2, forest, c=4"}
    assert all(len(rss) >= 1 for rss in report["idle_rss_mb"].values())
    markdown = (out / "results.md").read_text()
    for heading in ("## Goals", "## REST v1", "## REST v2", "## gRPC (v2)", "## Idle memory"):
        assert heading in markdown
    assert "| BentoML 1.4 (batching, 2 workers) | BentoML JSON: POST /predict" in markdown
    assert "| MLflow 3.17 serve -w 2 | MLflow JSON: POST /invocations" in markdown
    if WITH_HAPROXY:
        assert "## The router against HAProxy in its place" in markdown
        assert "haproxy 2." in report["meta"]["settings"]
    # nothing left running: every server was stopped with its process tree
    assert (
        str(out) not in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    )


def test_missing_generators_are_named_with_how_to_install_them(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--smoke", "--out", str(tmp_path / "b")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PATH": str(empty)},
        check=False,
    )
    assert completed.returncode == 2
    assert "wrk, h2load not found" in completed.stderr
    assert "apt-get install wrk nghttp2-client" in completed.stderr
