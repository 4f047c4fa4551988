"""`python -m pipeline run` end to end with KFP's local runner, both branches."""

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
from tests.helpers import REPO_ROOT, run_predictor

pytestmark = pytest.mark.integration


def run_pipeline(*args: str, tmp_dir: Path | None = None) -> tuple[int, dict[str, Any], str]:
    temp = {"TMPDIR": str(tmp_dir)} if tmp_dir is not None else {}
    completed = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", "--json", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        # no package index: proves the local run installs nothing
        env={**os.environ, "PIP_NO_INDEX": "1", **temp},
    )
    result = json.loads(completed.stdout) if completed.stdout.strip() else {}
    return completed.returncode, result, completed.stderr


def test_good_model_is_deployed_and_served(tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    code, result, stderr = run_pipeline(
        "--registry", str(registry), "--log-dir", str(tmp_path / "logs")
    )
    assert code == 0, stderr
    assert result["outcome"] == "deployed"
    assert result["accuracy"] >= 0.9
    version_dir = registry / "iris" / "1"
    assert Path(result["path"]) == version_dir
    metadata = verify_artifact(version_dir)
    assert metadata.version == "1" and metadata.metrics["accuracy"] == result["accuracy"]
    assert (version_dir / "holdout.csv").read_text().startswith("sepal_length")
    for step in ("preprocess", "train", "evaluate", "deploy"):
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
    code, second, stderr = run_pipeline(
        "--registry",
        str(registry),
        "--classifier",
        "forest",
        "--n-estimators",
        "30",
        tmp_dir=tmp_dir,
    )
    assert code == 0, stderr
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
    code, result, stderr = run_pipeline("--registry", str(registry), "--weak")
    assert code == 3, stderr
    assert result["outcome"] == "rejected"
    assert result["accuracy"] < 0.9
    assert "below the threshold" in result["reason"]
    assert "ok reject" in stderr and "deploy" not in stderr.split("ok reject")[0]
    assert registry_versions(registry, "iris") == []
    assert json.loads(Path(result["path"]).read_text())["threshold"] == 0.9


def test_bad_csv_fails_fast_with_a_clear_error(tmp_path: Path) -> None:
    data = tmp_path / "bad.csv"
    data.write_text("sepal_length,sepal_width,petal_length,species\n5.1,3.5,1.4,setosa\n")
    code, _, stderr = run_pipeline("--registry", str(tmp_path / "r"), "--data", str(data))
    assert code == 2
    assert "missing column 'petal_width'" in stderr
    assert not (tmp_path / "r").exists()
