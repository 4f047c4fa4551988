"""schemathesis against the live gate: no request wedges it, every answer is documented.

The gate runs as a real process (``python -m gate``, local backend, no router listening),
two rollouts are created so the per-rollout operations meet real states, and schemathesis
reads ``/openapi.json`` and runs every phase (examples, coverage, fuzzing, stateful) with
every check. The test fails on any finding: a 5xx, a status or body the schema does not
list, schema-invalid data accepted, schema-valid data refused.

One check is narrowed, not dropped: ``positive_data_acceptance`` expects every
schema-valid request to succeed, but some rules cannot be written in JSON Schema - the
artifact must lie in the operator's registry (only the file system can say), steps must
increase, ``steps`` excludes ``step_weight``. A schema-valid request may be refused only
by such a rule, and only in its documented shape: a confinement refusal naming
``candidate.artifact_uri``/``holdout_uri``/``digest``, or a validation body whose every
issue is a ``value_error`` (a cross-field rule). Anything else is reported as before.
This module is also the SCHEMATHESIS_HOOKS module that registers that check.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from schemathesis.specs.openapi.checks import positive_data_acceptance

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
TOKEN = "fuzz-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
MAX_EXAMPLES = 200  # per operation and phase: ~3,100 cases in ~30 s on 2 cores
MIN_CASES = 1_000
SEED = 20261201
DOCUMENTED_REFUSALS = ("candidate.artifact_uri: ", "candidate.holdout_uri: ", "candidate.digest: ")
CHECK = "positive_data_acceptance_or_documented_refusal"


@schemathesis.check
def positive_data_acceptance_or_documented_refusal(ctx: Any, response: Any, case: Any) -> Any:
    """``positive_data_acceptance``, except a 422 from a rule JSON Schema cannot state."""
    if response.status_code == 422:
        try:
            detail = response.json()["detail"]
        except (ValueError, KeyError, TypeError):
            detail = None
        if isinstance(detail, str) and detail.startswith(DOCUMENTED_REFUSALS):
            return None
        if (
            isinstance(detail, list)
            and detail
            and all(isinstance(i, dict) and i.get("type") == "value_error" for i in detail)
        ):
            return None
    return positive_data_acceptance(ctx, response, case)


def create(gate_url: str, model: str, artifact: Path) -> str:
    response = httpx.post(
        f"{gate_url}/v1/rollouts",
        headers=AUTH,
        json={
            "model": model,
            "candidate": {
                "version": "2",
                "artifact_uri": str(artifact),
                "offline_metrics": {"accuracy": 0.97},
            },
            "analysis": {"steps": [50, 100], "step_interval_s": 1},
        },
        timeout=10,
    )
    assert response.status_code == 201, response.text
    rollout_id: str = response.json()["id"]
    return rollout_id


def schemathesis_config(path: Path, rollout_ids: list[str]) -> Path:
    """Known rollout ids are drawn half of the time for ``rollout_id``, so pause, resume,
    promote and abort meet real rollouts as well as ids that do not exist.

    ``/readyz`` answers 503 (documented) for as long as no stable serves, which is the
    whole run here: no router listens. Its 503 is that answer, not a server error."""
    values = ", ".join(json.dumps(i) for i in rollout_ids)
    path.write_text(
        f"""
[dictionaries.rollouts]
values = [{values}]

[parameters]
"path.rollout_id" = {{ dictionary = "rollouts", probability = 0.5 }}

[[operations]]
include-path = "/readyz"
checks.not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx", "503"]
"""
    )
    return path


STREAM = "/v1/rollouts/{rollout_id}/stream"
# A stream of an active rollout stays open for as long as the client reads (up to its
# timeout_s): each such case lasts the whole request timeout. The stream operation gets a
# run of its own with a short timeout and fewer examples; every other operation the full
# run (with it, the run took 5+ minutes instead of about 2).
STREAM_EXAMPLES = 25
STREAM_REQUEST_TIMEOUT_S = 2.0


def run_schemathesis(
    gate_url: str,
    config: Path,
    reports: Path,
    operations: list[str],
    max_examples: int = MAX_EXAMPLES,
    request_timeout_s: float = 10.0,
) -> dict[str, Any]:
    """One schemathesis run; ``operations`` filters them (``--include-path ...``)."""
    command = [
        str(SCHEMATHESIS),
        "--config-file",
        str(config),
        "--no-color",
        "run",
        f"{gate_url}/openapi.json",
        "--checks",
        "all",
        "--exclude-checks",
        "positive_data_acceptance",  # replaced by the narrowed check above
        "-H",
        f"Authorization: Bearer {TOKEN}",
        *operations,
        "--max-examples",
        str(max_examples),
        "--seed",
        str(SEED),
        "--continue-on-failure",
        "--request-timeout",
        str(request_timeout_s),
        "--generation-database",
        "none",
        "--report",
        "json,junit",
        "--report-dir",
        str(reports),
    ]
    started = time.monotonic()
    completed = subprocess.run(
        command,
        cwd=reports.parent,  # its cache (.schemathesis/) stays out of the checkout
        env={**os.environ, "SCHEMATHESIS_HOOKS": __name__, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=480,  # ~100 s on a quiet machine; a loaded one takes several times that
        check=False,
    )
    took = time.monotonic() - started
    summary = completed.stdout[completed.stdout.rfind("=== SUMMARY") :]
    print(summary or completed.stdout[-4000:], f"\n(schemathesis took {took:.1f} s)")
    (report,) = reports.glob("json-*.json")
    result: dict[str, Any] = json.loads(report.read_text())
    result["output"] = completed.stdout + completed.stderr
    return result


def test_schemathesis_finds_nothing_in_the_gate(tmp_path: Path) -> None:
    # imported here: schemathesis imports this module for its check, and needs none of it
    from tests.gate_fakes import write_holdout
    from tests.gate_stack import kill_processes_mentioning
    from tests.helpers import free_port, start_process, wait_until

    registry = tmp_path / "registry"
    artifacts = [write_holdout(registry / model / "2") for model in ("fuzz-a", "fuzz-b")]
    port = free_port()
    gate_url = f"http://127.0.0.1:{port}"
    env = {
        "GATE_API_TOKEN": TOKEN,
        "GATE_PORT": str(port),
        "GATE_DB_PATH": str(tmp_path / "gate.db"),
        "GATE_TRAFFIC_BACKEND": "local",
        "GATE_REGISTRY_DIR": str(registry),
        "GATE_RUN_DIR": str(tmp_path / "predictors"),
        "GATE_ROUTER_ADMIN_URL": f"http://127.0.0.1:{free_port()}",  # nobody listens
        "GATE_ROUTER_TOKEN": "router-token-0123456789",
        "GATE_EVENTS_TOKEN": "events-token-0123456789",
        "GATE_TICK_INTERVAL_S": "0.5",
    }
    gate = start_process(["-m", "gate"], tmp_path / "gate.log", env=env)
    try:
        wait_until(
            lambda: httpx.get(f"{gate_url}/healthz", timeout=1).status_code == 200,
            60,
            "gate",
            gate.process,
            gate.log,
        )
        rollout_ids = [create(gate_url, a.parent.name, a) for a in artifacts]
        assert httpx.post(f"{gate_url}/v1/rollouts/{rollout_ids[1]}/pause", headers=AUTH).is_success

        config = schemathesis_config(tmp_path / "schemathesis.toml", rollout_ids)
        result = run_schemathesis(
            gate_url, config, tmp_path / "reports", ["--exclude-path", STREAM]
        )
        streams = run_schemathesis(
            gate_url,
            config,
            tmp_path / "reports-stream",
            ["--include-path", STREAM],
            STREAM_EXAMPLES,
            STREAM_REQUEST_TIMEOUT_S,
        )

        assert result["test_cases"]["generated"] >= MIN_CASES, result["test_cases"]
        assert streams["test_cases"]["generated"] >= STREAM_EXAMPLES, streams["test_cases"]
        for run in (result, streams):
            cases = run["test_cases"]
            assert run["complete"], run["output"][-4000:]
            assert (run["failures"], run["errors"]) == ([], []), run["output"][-8000:]
            assert cases["with_failures"] == 0 and run["exit_code"] == 0, run["output"][-8000:]
        assert gate.process.poll() is None, "the gate died under fuzzing"
        listed = httpx.get(f"{gate_url}/v1/rollouts", timeout=10)
        assert listed.status_code == 200
        assert {r["id"] for r in listed.json()} >= set(rollout_ids)
        assert "Exception in ASGI application" not in gate.output(), gate.output()[-8000:]
    finally:
        code = gate.stop()
        kill_processes_mentioning(str(registry))  # predictors the gate started
    assert code == 0, gate.output()[-4000:]
