"""`python -m pipeline run` at a real terminal (a pseudo-terminal, 80 columns): the same
compact progress as in a pipe, never the KFP executor's JSON, while the task log keeps
every step's full executor output (what a failure needs).

Under `script` the run once printed 333 lines: rich's spinner took stdout over on a tty,
so the executor output went past the log file onto the screen."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT
from tests.terminal import run_in_terminal

pytestmark = pytest.mark.integration

STEPS = ("preprocess", "train", "evaluate", "deploy")
# what only the executor prints: its input and output documents
EXECUTOR_MARKS = ("KFP Executor", "executor_input", '"parameterValues"', "executor_output.json")
# header, a line per finished task (the body's steps, the condition, the exit handler) and
# the summary table: about 14 at 80 columns; the margin is for a wrapped path
MAX_LINES = 20


def test_a_run_at_a_terminal_is_compact_and_its_task_log_complete(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    screen = run_in_terminal(
        [
            sys.executable,
            "-m",
            "pipeline",
            "run",
            "--registry",
            str(tmp_path / "registry"),
            "--log-dir",
            str(logs),
        ],
        REPO_ROOT,
        # no package index: the local run installs nothing; never a developer's webhook
        env={"PIP_NO_INDEX": "1", "PIPELINE_WEBHOOK_URL": None, "GATE_API_TOKEN": None},
        timeout=300,
    )
    shown = screen.text
    assert screen.code == 0, shown[-3000:]
    for mark in EXECUTOR_MARKS:
        assert mark not in shown, f"{mark!r} reached the screen"
    lines = [line for line in screen.lines if line.strip()]
    assert len(lines) <= MAX_LINES, "\n".join(lines)
    for step in STEPS:
        assert any(line.strip().startswith(f"ok {step}") for line in lines), step
    assert any("deployed" in line for line in lines)
    assert any(line.split()[:2] == ["model", "iris"] for line in lines)
    assert all(len(line) <= 80 for line in lines)

    (log,) = logs.glob("pipeline-*.log")
    text = log.read_text()
    # every task's executor output is in the log: its input document and its output file
    for step in STEPS:
        assert f"'{step}'" in text
    assert text.count("Got executor_input") >= len(STEPS)
    assert text.count("Wrote executor output file") >= len(STEPS)
