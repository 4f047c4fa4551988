"""Command lines: flag/env precedence for the predictor, and the packager end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import joblib
import pytest

from predictor.__main__ import EXIT_BAD_SETTINGS, load_settings, main
from predictor.artifact import verify_artifact
from predictor.package import main as package_main
from tests.helpers import REPO_ROOT, train_iris


def test_flags_override_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREDICTOR_HTTP_PORT", "9000")
    monkeypatch.setenv("PREDICTOR_ROLE", "canary")
    settings = load_settings(["--http_port", "9100", "--model_dir", "/tmp/m"])
    assert settings.http_port == 9100
    assert settings.role == "canary"
    assert settings.host == "127.0.0.1"
    assert str(settings.model_dir) == "/tmp/m"


def test_invalid_setting_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--fault_error_rate", "2"]) == EXIT_BAD_SETTINGS
    assert "fault_error_rate" in capsys.readouterr().err


def test_package_turns_a_notebook_model_into_a_verified_artifact(tmp_path: Path) -> None:
    model, _, _ = train_iris()
    notebook_file = tmp_path / "notebook.joblib"
    joblib.dump(model, notebook_file)
    out = tmp_path / "artifact"
    assert (
        package_main(
            [
                "--model",
                str(notebook_file),
                "--name",
                "iris",
                "--version",
                "4",
                "--out",
                str(out),
                "--metric",
                "accuracy=0.97",
            ]
        )
        == 0
    )
    metadata = verify_artifact(out)
    assert (metadata.version, metadata.metrics) == ("4", {"accuracy": 0.97})
    assert metadata.training_data_fingerprint.startswith("unknown:sha256:")
    assert (
        package_main(
            ["--model", str(notebook_file), "--name", "iris", "--version", "5", "--out", str(out)]
        )
        == 1
    )  # never overwrites


def test_package_rejects_bad_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, _, _ = train_iris()
    joblib.dump(model, tmp_path / "m.joblib")
    code = package_main(
        [
            "--model",
            str(tmp_path / "m.joblib"),
            "--name",
            "Iris!",
            "--version",
            "1",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert code == 1
    assert "invalid metadata field 'name'" in capsys.readouterr().err


def test_artifact_module_does_not_import_kserve() -> None:
    code = (
        "import sys, predictor.artifact, predictor.package; "
        "sys.exit(1 if 'kserve' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT).returncode == 0
