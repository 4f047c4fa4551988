"""`python -m pipeline run` end to end with KFP's local runner: both branches and a
failed step, each run's outcome posted once by the exit handler to a webhook receiver on
loopback, which is down (503) for the first attempts of the first run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from predictor.artifact import registry_versions, sha256_file, verify_artifact
from tests.helpers import REPO_ROOT, Receiver, receiver, run_predictor

pytestmark = pytest.mark.integration


def run_pipeline(
    *args: str, tmp_dir: Path | None = None, env: dict[str, str] | None = None
) -> tuple[int, dict[str, Any], str]:
    temp = {"TMPDIR": str(tmp_dir)} if tmp_dir is not None else {}
    # never the developer's own webhook or gate token
    outer = {
        k: v for k, v in os.environ.items() if k not in ("PIPELINE_WEBHOOK_URL", "GATE_API_TOKEN")
    }
    completed = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", "--json", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        # no package index: proves the local run installs nothing
        env={**outer, "PIP_NO_INDEX": "1", **temp, **(env or {})},
    )
    result = json.loads(completed.stdout) if completed.stdout.strip() else {}
    return completed.returncode, result, completed.stderr


def only_message(chat: Receiver) -> dict[str, Any]:
    (message,) = chat.messages
    chat.messages.clear()
    return message


def test_good_model_is_deployed_and_served(tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    with receiver(busy=2) as chat:
        code, result, stderr = run_pipeline(
            "--registry",
            str(registry),
            "--log-dir",
            str(tmp_path / "logs"),
            env={"PIPELINE_WEBHOOK_URL": chat.url},
        )
        assert code == 0, stderr
        assert result["outcome"] == "deployed"
        assert result["accuracy"] >= 0.9
        # chat was down for two attempts; the third delivered the message, once
        assert chat.attempts == 3
        message = only_message(chat)
        assert message["irisgate"]["outcome"] == "deployed"
        assert message["irisgate"]["accuracy"] == result["accuracy"]
        assert message["irisgate"]["version"] == "1"
        assert f"iris v1 deployed, accuracy {result['accuracy'] * 100:.1f} %" in message["text"]
        assert message["attachments"][0]["color"] == "good"
        run_note = registry / "iris" / "runs" / f"{result['run_id']}.json"
        assert json.loads(run_note.read_text())["finished"] is True
    version_dir = registry / "iris" / "1"
    assert Path(result["path"]) == version_dir
    metadata = verify_artifact(version_dir)
    assert metadata.version == "1" and metadata.metrics["accuracy"] == result["accuracy"]
    assert (version_dir / "holdout.csv").read_text().startswith("sepal_length")
    for step in ("preprocess", "train", "evaluate", "deploy", "notify"):
        assert f"ok {step}" in stderr
    assert list((tmp_path / "logs").glob("pipeline-*.log"))

    with run_predictor(version_dir, tmp_path) as served:
        answer = httpx.post(
            f"{served.url}/v1/models/iris:predict", json={"instances": [[5.1, 3.5, 1.4, 0.2]]}
        )
        assert answer.json() == {"predictions": [0]}

    # a second run is a new version; the first is untouched
    first_hash = sha256_file(version_dir / "model.skops")
    tmp_dir = tmp_path / "tmp"
    tmp_dir.mkdir()
    with receiver() as chat:
        code, second, stderr = run_pipeline(
            "--registry",
            str(registry),
            "--classifier",
            "forest",
            "--n-estimators",
            "30",
            tmp_dir=tmp_dir,
            env={"PIPELINE_WEBHOOK_URL": chat.url},
        )
        assert code == 0, stderr
        assert chat.attempts == 1
        assert only_message(chat)["irisgate"]["version"] == "2"
    # nothing left in the temp folder: no task log (kept only for a failed run), none of
    # the `mktemp -d` folders KFP's components write their program to
    assert list(tmp_dir.iterdir()) == []
    assert second["version"] == "2"
    assert registry_versions(registry, "iris") == ["1", "2"]
    assert sha256_file(version_dir / "model.skops") == first_hash
    assert verify_artifact(version_dir).version == "1"
    assert verify_artifact(registry / "iris" / "2").version == "2"


def test_weak_model_takes_the_else_branch(tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    with receiver() as chat:
        code, result, stderr = run_pipeline(
            "--registry", str(registry), "--weak", env={"PIPELINE_WEBHOOK_URL": chat.url}
        )
        message = only_message(chat)
    assert code == 3, stderr
    assert message["irisgate"]["outcome"] == "rejected"
    assert message["irisgate"]["accuracy"] == result["accuracy"]
    assert message["irisgate"]["threshold"] == 0.9
    assert (
        f"iris rejected: accuracy {result['accuracy'] * 100:.1f} % is below the threshold 90.0 %"
        in message["text"]
    )
    assert result["outcome"] == "rejected"
    assert result["accuracy"] < 0.9
    assert "below the threshold" in result["reason"]
    assert "ok reject" in stderr and "deploy" not in stderr.split("ok reject")[0]
    assert registry_versions(registry, "iris") == []
    assert json.loads(Path(result["path"]).read_text())["threshold"] == 0.9


def test_a_failed_step_is_posted_with_its_name(tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    with receiver() as chat, receiver(busy=10**6) as gate:  # a gate that refuses all
        code, result, stderr = run_pipeline(
            "--registry",
            str(registry),
            "--gate-url",
            gate.url.removesuffix("/hook"),
            env={"PIPELINE_WEBHOOK_URL": chat.url, "GATE_API_TOKEN": "t"},
        )
        message = only_message(chat)
    assert code == 1, stderr
    assert result["outcome"] == "failed"
    assert "gate refused the candidate (503)" in result["error"]
    assert gate.attempts == 1
    assert message["irisgate"]["outcome"] == "failed"
    assert message["irisgate"]["failed_step"] == "deploy"
    assert message["irisgate"]["accuracy"] >= 0.9  # known before deploy started
    assert "failed in deploy: HandoffError: gate refused the candidate (503)" in message["text"]
    assert message["attachments"][0]["color"] == "danger"


def test_bad_csv_fails_fast_with_a_clear_error(tmp_path: Path) -> None:
    data = tmp_path / "bad.csv"
    data.write_text("sepal_length,sepal_width,petal_length,species\n5.1,3.5,1.4,setosa\n")
    code, _, stderr = run_pipeline("--registry", str(tmp_path / "r"), "--data", str(data))
    assert code == 2
    assert "missing column 'petal_width'" in stderr
    assert not (tmp_path / "r").exists()
