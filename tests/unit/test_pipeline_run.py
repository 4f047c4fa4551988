"""``python -m pipeline run``'s temporary task log: removed when the run ends deployed or
rejected, kept (and named) when it fails. KFP itself is a stand-in here; the real run's
temp folder is checked in tests/integration/test_pipeline_local.py."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from pipeline import local_run
from pipeline.__main__ import main
from pipeline.local_run import RunResult


@pytest.fixture
def temp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def fake_run(outcome: str) -> Any:
    def run_locally(
        arguments: dict[str, Any], log_path: Path, console: Console | None = None
    ) -> RunResult:
        log_path.write_text("task chatter\n")
        record = {"name": "iris", "version": "1", "path": "/r/iris/1", "reason": "low"}
        error = "ValueError: boom" if outcome == "failed" else ""
        return RunResult(outcome, {} if error else record, error=error, log_path=log_path)

    return run_locally


@pytest.mark.parametrize(("outcome", "code"), [("deployed", 0), ("rejected", 3)])
def test_a_finished_run_leaves_no_temporary_log(
    temp_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    outcome: str,
    code: int,
) -> None:
    monkeypatch.setattr(local_run, "run_locally", fake_run(outcome))
    assert main(["run", "--registry", str(tmp_path / "registry")]) == code
    assert list(temp_dir.iterdir()) == []
    assert "task logs" not in capsys.readouterr().err


def test_a_failed_run_keeps_its_log_and_names_it(
    temp_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(local_run, "run_locally", fake_run("failed"))
    assert main(["run", "--registry", str(tmp_path / "registry")]) == 1
    (log,) = temp_dir.iterdir()
    assert log.read_text() == "task chatter\n"
    assert "".join(str(log).split()) in "".join(capsys.readouterr().err.split())


def test_a_log_dir_keeps_every_log(
    temp_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local_run, "run_locally", fake_run("deployed"))
    logs = tmp_path / "logs"
    assert main(["run", "--registry", str(tmp_path / "registry"), "--log-dir", str(logs)]) == 0
    assert [p.read_text() for p in logs.glob("pipeline-*.log")] == ["task chatter\n"]
    assert list(temp_dir.iterdir()) == []
