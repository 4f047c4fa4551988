"""Command lines: flag/env precedence for the predictor, and the packager end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import pytest

from predictor.__main__ import EXIT_BAD_SETTINGS, load_settings, main
from predictor.artifact import MODEL_FILE, load_artifact, verify_artifact
from predictor.package import main as package_main
from tests.helpers import IRIS_CLASSES, IRIS_FEATURES, REPO_ROOT, train_iris


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
    assert main(["--model_digest", "md5:abc"]) == EXIT_BAD_SETTINGS
    assert "model_digest" in capsys.readouterr().err
    assert main(["--workers", "0"]) == EXIT_BAD_SETTINGS  # a rule across settings
    assert "invalid settings: workers must be between 1 and 64" in capsys.readouterr().err


def test_grpc_process_ports_one_per_process(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = ["--http_port", "9000", "--grpc_port", "9001", "--workers", "2"]
    settings = load_settings([*flags, "--grpc_process_ports", "9002,9003"])
    assert settings.grpc_process_ports == [9002, 9003]
    monkeypatch.setenv("PREDICTOR_GRPC_PROCESS_PORTS", "[9004, 9005]")
    assert load_settings(flags).grpc_process_ports == [9004, 9005]
    monkeypatch.delenv("PREDICTOR_GRPC_PROCESS_PORTS")
    assert load_settings(flags).grpc_process_ports == []
    free = ["--http_port", "0", "--grpc_port", "0", "--workers", "1"]  # two zeros: no clash
    assert load_settings([*free, "--grpc_process_ports", "9002"]).grpc_process_ports == [9002]
    for ports, problem in [
        ("9002", "1 ports for 2 server processes"),
        ("9002,9002", "must differ"),
        ("9002,9001", "must differ"),
        ("9000,9003", "must differ"),
        ("9002,70000", "within 1..65535"),
    ]:
        assert main([*flags, "--grpc_process_ports", ports]) == EXIT_BAD_SETTINGS
        err = capsys.readouterr().err
        assert "grpc_process_ports" in err and problem in err, err
    off = [*flags, "--enable_grpc", "false", "--grpc_process_ports", "9002,9003"]
    assert main(off) == EXIT_BAD_SETTINGS
    assert "gRPC is off" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        load_settings([*flags, "--grpc_process_ports", "a,b"])
    assert "comma-separated ports" in capsys.readouterr().err


def test_trust_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    digest = "sha256:" + "a" * 64
    settings = load_settings(["--allow_pickle", "--model_digest", digest, "--trusted_keys", "k"])
    assert (settings.allow_pickle, settings.model_digest) == (True, digest)
    assert str(settings.trusted_keys) == "k"
    assert load_settings(["--allow_pickle", "false"]).allow_pickle is False
    monkeypatch.setenv("PREDICTOR_ALLOW_PICKLE", "true")
    monkeypatch.setenv("PREDICTOR_TRUSTED_KEYS", "/etc/irisgate/keys/trusted.pub")
    settings = load_settings([])
    assert settings.allow_pickle is True
    assert str(settings.trusted_keys) == "/etc/irisgate/keys/trusted.pub"
    assert load_settings([]).model_digest is None


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
    assert (metadata.format, metadata.class_names) == ("skops", IRIS_CLASSES)
    assert (out / MODEL_FILE).is_file() and not (out / "model.joblib").exists()
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


def _holdout_csv(path: Path, features: np.ndarray, labels: list[str]) -> Path:
    lines = [",".join([*IRIS_FEATURES, "species"])]
    lines += [
        ",".join([*(str(v) for v in row), label])
        for row, label in zip(features, labels, strict=True)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_package_string_labels_and_holdout(tmp_path: Path) -> None:
    """The notebook case: fitted on names; class ids 0..N-1 map to classes_ in order."""
    model, features, ids = train_iris("forest")
    names = [["virginica", "setosa", "versicolor"][i] for i in ids]  # not alphabetical ids
    model.fit(features, names)
    notebook_file = tmp_path / "nb.joblib"
    joblib.dump(model, notebook_file)
    holdout = _holdout_csv(tmp_path / "held.csv", features[::10], names[::10])
    out = tmp_path / "artifact"
    argv = ["--model", str(notebook_file), "--name", "nb", "--version", "1", "--out", str(out)]
    assert package_main([*argv, "--holdout", str(holdout)]) == 0
    estimator, metadata = load_artifact(out)
    assert metadata.class_names == sorted(set(names)) == list(model.classes_)
    assert estimator.classes_.tolist() == [0, 1, 2]
    rows = np.vstack([features, np.random.default_rng(1).normal(0, 4, (100, 4))])
    assert np.array_equal(estimator.predict_proba(rows), model.predict_proba(rows))
    labels = [metadata.class_names[i] for i in estimator.predict(rows)]
    assert labels == model.predict(rows).tolist()
    written = (out / "holdout.csv").read_text().splitlines()
    assert written[0] == ",".join([*IRIS_FEATURES, "species"])
    assert len(written) == 1 + len(names[::10])
    first_id = int(written[1].split(",")[-1])
    assert metadata.class_names[first_id] == names[0]


def test_package_refuses_a_bad_holdout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, features, _ = train_iris()
    joblib.dump(model, tmp_path / "m.joblib")
    argv = ["--model", str(tmp_path / "m.joblib"), "--name", "iris", "--version", "1"]
    no_label = tmp_path / "no_label.csv"
    no_label.write_text(",".join(IRIS_FEATURES) + "\n1,2,3,4\n")
    assert package_main([*argv, "--out", str(tmp_path / "a"), "--holdout", str(no_label)]) == 1
    assert "missing column 'species'" in capsys.readouterr().err
    unknown = _holdout_csv(tmp_path / "unknown.csv", features[:2], ["setosa", "daisy"])
    assert package_main([*argv, "--out", str(tmp_path / "b"), "--holdout", str(unknown)]) == 1
    assert "line 3: unknown class 'daisy'" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
