"""The gate with real processes on loopback: predictors, the router and the gate itself."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from gate.store import SQLiteStore
from tests.gate_stack import AUTH, TEST_MARGINS, TOKEN, WebhookSink, local_stack
from tests.helpers import REPO_ROOT, free_port

pytestmark = pytest.mark.integration

FAST: dict[str, Any] = {"step_interval_s": 2.0, "failure_limit": 2, **TEST_MARGINS}


def steps_taken(detail: dict[str, Any]) -> list[int]:
    return [d["canary_weight"] for d in detail["decisions"] if d["action"] == "step"]


def judged(detail: dict[str, Any], outcome: str) -> list[dict[str, Any]]:
    return [d for d in detail["decisions"] if d["outcome"] == outcome and "checks" in d["evidence"]]


def checks_of(decision: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in decision["evidence"]["checks"]}


def test_healthy_canary_is_promoted(tmp_path: Path) -> None:
    sink = WebhookSink()
    with local_stack(tmp_path, webhook_urls=[sink.url]) as stack:
        old_stable = stack.routes()["stable"]
        with stack.traffic() as traffic:
            rollout = stack.create("2", steps=[25, 100], **FAST)
            detail = stack.wait_phase(rollout, {"succeeded", "rolled_back", "failed"})
        assert detail["phase"] == "succeeded", detail["message"]
        assert steps_taken(detail) == [25, 100]
        gate_pass = next(d for d in detail["decisions"] if d["action"] == "step")
        assert gate_pass["evidence"]["live_accuracy"] >= 0.9
        assert gate_pass["evidence"]["replayed_rows"] == 45
        passes = judged(detail, "pass")
        assert len(passes) == 2
        for decision in passes:
            measured = decision["evidence"]["measurement"]
            assert measured["canary"]["requests"] >= 1
            checks = {c["name"]: c for c in decision["evidence"]["checks"]}
            assert set(checks) >= {"error_rate", "latency_p95", "class_shift"}
        proof = checks_of(passes[0])
        for name in ("error_rate", "latency_p95", "class_shift"):  # 25 %: shown within margins
            assert proof[name]["outcome"] == "pass"
            assert proof[name]["interval"][1] < proof[name]["margin"]
        assert [d["action"] for d in detail["decisions"]][-2:] == ["promote", "promoted"]
        routes = stack.routes()
        assert routes["canary"] is None and routes["stable"]["http"] != old_stable["http"]
        assert traffic.sent["grpc"] > 0 and traffic.sent["rest"] > 0
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(
            m["irisgate"]["event"] == "promotion" for m in sink.received
        ):
            time.sleep(0.2)
        events = [m["irisgate"]["event"] for m in sink.received]
        assert events[0] == "start" and "step" in events and events[-1] == "promotion"
    sink.close()


def test_canary_with_injected_errors_is_rolled_back_and_a_dead_webhook_blocks_nothing(
    tmp_path: Path,
) -> None:
    dead_hook = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    with local_stack(
        tmp_path, canary_args="--fault_error_rate 0.3", webhook_urls=[dead_hook]
    ) as stack:
        stable = stack.routes()["stable"]
        with stack.traffic():
            rollout = stack.create("2", steps=[50, 100], **FAST)
            detail = stack.wait_phase(rollout, {"succeeded", "rolled_back", "failed"})
        assert detail["phase"] == "rolled_back", detail["message"]
        assert "failure limit reached (2/2)" in detail["message"]
        failures = judged(detail, "fail")
        assert len(failures) == 2
        for decision in failures:
            checks = decision["evidence"]["checks"]
            failed = {c["name"] for c in checks if c["outcome"] == "fail"}
            assert failed & {"error_rate", "error_rate_ceiling"}, failed
            assert decision["evidence"]["measurement"]["canary"]["server_errors"] > 0
        assert steps_taken(detail) == [50]  # never went further
        routes = stack.routes()
        assert routes["canary"] is None and routes["stable"]["http"] == stable["http"]
        assert routes["stable"]["errors"] == 0
        counts = SQLiteStore(tmp_path / "gate.db").event_counts()
        assert counts["delivered"] == 0 and counts["pending"] + counts["gave_up"] >= 3


def test_canary_with_injected_latency_is_rolled_back(tmp_path: Path) -> None:
    with local_stack(tmp_path, canary_args="--fault_latency_ms 300") as stack:
        with stack.traffic():
            rollout = stack.create("2", steps=[50, 100], **FAST)
            detail = stack.wait_phase(rollout, {"succeeded", "rolled_back", "failed"})
        assert detail["phase"] == "rolled_back", detail["message"]
        failures = judged(detail, "fail")
        assert failures
        for decision in failures:
            checks = checks_of(decision)
            assert checks["latency_p99_ceiling"]["estimate"] >= 300
            shown = {name for name, c in checks.items() if c["outcome"] == "fail"}
            assert shown and shown <= {"latency_p99_ceiling", "latency_p95"}, shown


def test_no_live_traffic_generated_evidence_promotes_only_when_allowed(tmp_path: Path) -> None:
    """No client sends anything: the gate sends held-out rows itself, the predictors count
    them apart, and a pass resting on them says so; without permission it never passes."""
    generated = {"generated_rate_per_s": 60.0, "step_interval_s": 2.0, **TEST_MARGINS}
    with local_stack(tmp_path) as stack:
        refused = stack.create("2", steps=[50, 100], inconclusive_limit=2, **generated)
        detail = stack.wait_phase(refused, {"succeeded", "rolled_back", "failed"})
        assert detail["phase"] == "rolled_back", detail["message"]
        assert "inconclusive limit reached" in detail["message"]
        seen = [c for d in judged(detail, "inconclusive") for c in d["evidence"]["checks"]]
        assert any(c["traffic"] == "generated" and c["n_canary"] > 0 for c in seen)

        allowed = stack.create("2", steps=[50, 100], generated_counts=True, **generated)
        detail = stack.wait_phase(allowed, {"succeeded", "rolled_back", "failed"})
        assert detail["phase"] == "succeeded", detail["message"]
        for decision in judged(detail, "pass"):
            assert decision["evidence"]["passed_on"] == "generated"
            assert "on generated traffic" in decision["reason"]
            totals = decision["evidence"]["totals"]
            assert totals["canary"]["requests"] == 0  # no live request at all
            assert totals["generated"]["canary"]["requests"] > 0
            assert totals["generated"]["stable"]["requests"] > 0


def test_gate_killed_mid_rollout_resumes_without_skipping_or_repeating(tmp_path: Path) -> None:
    with local_stack(tmp_path) as stack:
        with stack.traffic():
            rollout = stack.create("2", steps=[20, 40, 60, 80, 100], **FAST)
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                detail = stack.rollout(rollout)
                if detail["phase"] == "progressing" and detail["step_index"] >= 1:
                    break
                time.sleep(0.2)
            assert stack.gate is not None
            stack.gate.stop(signal.SIGKILL)
            time.sleep(1.5)  # traffic keeps flowing through the router meanwhile
            stack.start_gate()
            detail = stack.wait_phase(rollout, {"succeeded", "rolled_back", "failed"})
        assert detail["phase"] == "succeeded", detail["message"]
        assert steps_taken(detail) == [20, 40, 60, 80, 100]
        assert [d["action"] for d in detail["decisions"]].count("promoted") == 1
        assert [d["action"] for d in detail["decisions"]].count("create") == 1


def test_second_rollout_for_the_same_model_is_refused_while_one_is_active(
    tmp_path: Path,
) -> None:
    with local_stack(tmp_path) as stack:
        stack.create("2", steps=[50, 100], **FAST)
        response = httpx.post(
            f"{stack.gate_url}/v1/rollouts",
            headers=AUTH,
            json={
                "model": "iris",
                "candidate": {
                    "version": "2",
                    "artifact_uri": str(stack.registry / "iris" / "2"),
                    "offline_metrics": {"accuracy": 0.95},
                },
            },
        )
        assert response.status_code == 409


def test_pipeline_hands_its_candidate_to_the_gate(tmp_path: Path) -> None:
    """The whole story: train -> accuracy condition -> registry -> gate -> canary -> stable."""
    analysis = {"steps": [50, 100], "step_interval_s": 2.0, **TEST_MARGINS}
    with local_stack(tmp_path, analysis=analysis) as stack:
        with stack.traffic():
            completed = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pipeline",
                    "run",
                    "--registry",
                    str(stack.registry),
                    "--gate-url",
                    stack.gate_url,
                    "--json",
                ],
                cwd=REPO_ROOT,
                capture_output=True,
                text=True,
                timeout=300,
                env={**os.environ, "GATE_API_TOKEN": TOKEN},
            )
            assert completed.returncode == 0, completed.stderr
            record = json.loads(completed.stdout)
            assert record["version"] == "3" and record["rollout_id"]
            detail = stack.wait_phase(record["rollout_id"], {"succeeded", "rolled_back", "failed"})
        assert detail["phase"] == "succeeded", detail["message"]
        assert detail["candidate"]["holdout_uri"].endswith("iris/3/holdout.csv")
        assert steps_taken(detail) == [50, 100]
