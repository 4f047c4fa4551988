"""Run the pipeline with KFP's local SubprocessRunner: no cluster, no Docker, no network.

KFP 2.17's local runner runs the exit handler (``dsl.ExitHandler`` with a
``PipelineTaskFinalStatus`` input) as a cluster does, after the body, whether it failed
or not; so the local run posts the same outcome message, to the webhook in the caller's
``PIPELINE_WEBHOOK_URL``, and reports the summary the exit task returns.

KFP's runner prints every task's log to stdout and deletes its workspace when it ends.
We give it throw-away folders (the registry lives elsewhere), send its chatter to a log
file, and turn its task start/finish lines into a compact progress display. The display
never takes stdout over: rich's live views redirect stdout by default (on a terminal
only), which sent the executors' output past the log file onto the screen, so a run read
differently on a terminal and in a pipe and its log missed what a failure needs. Each task's
process gets its own TMPDIR in the throw-away folder: KFP's lightweight components write
their program to ``mktemp -d`` and never remove it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

from pipeline.definition import build_pipeline

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_STARTED = re.compile(r"Executing task '([\w-]+)'")
_FINISHED = re.compile(r"Task '([\w-]+)' finished with status (\w+)")
_ERROR_LINE = re.compile(r"^\s*(?:[\w.]+(?:Error|Exception)|[\w.]+\.DataError): .+")


@dataclass
class StepEvent:
    step: str
    status: str  # RUNNING, SUCCESS or FAILURE
    seconds: float = 0.0


class TaskLogWatcher(io.TextIOBase):
    """A stdout stand-in: keeps everything in a log file and reports task transitions."""

    def __init__(self, log: TextIO, on_event: Callable[[StepEvent], None]) -> None:
        self._log = log
        self._on_event = on_event
        self._pending = ""
        self._started: dict[str, float] = {}

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._log.write(text)
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            self._scan(_ANSI.sub("", line))
        return len(text)

    def flush(self) -> None:
        self._log.flush()

    def _scan(self, line: str) -> None:
        if match := _STARTED.search(line):
            self._started[match[1]] = time.monotonic()
            self._on_event(StepEvent(match[1], "RUNNING"))
        elif match := _FINISHED.search(line):
            began = self._started.get(match[1], time.monotonic())
            self._on_event(StepEvent(match[1], match[2], time.monotonic() - began))


@dataclass
class RunResult:
    outcome: str  # deployed | rejected | failed
    record: dict[str, Any] = field(default_factory=dict)
    steps: list[StepEvent] = field(default_factory=list)
    seconds: float = 0.0
    error: str = ""
    log_path: Path | None = None


def last_error_line(log_text: str) -> str:
    lines = [_ANSI.sub("", line) for line in log_text.splitlines()]
    errors = [line.strip() for line in lines if _ERROR_LINE.match(line)]
    return errors[-1] if errors else ""


def run_locally(
    arguments: dict[str, Any], log_path: Path, console: Console | None = None
) -> RunResult:
    """Run the whole pipeline; never raises for a failed step (the result says so)."""
    from kfp import local

    console = console or Console(stderr=True)
    events: list[StepEvent] = []

    # Only the running steps are live (transient: gone once they finish, and drawn only on
    # a terminal); each finished step is a printed line, the same in a pipe.
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        redirect_stdout=False,
        redirect_stderr=False,
    )
    running: dict[str, TaskID] = {}

    def show(event: StepEvent) -> None:
        if event.status == "RUNNING":
            running[event.step] = progress.add_task(event.step, total=None)
            return
        if event.step in running:
            progress.remove_task(running.pop(event.step))
        events.append(event)
        mark = "[green]ok[/]" if event.status == "SUCCESS" else "[red]FAILED[/]"
        console.print(f"  {mark} {event.step} ({event.seconds:.1f} s)")

    scratch = Path(tempfile.mkdtemp(prefix="irisgate-kfp-"))
    started = time.monotonic()
    try:
        local.init(
            runner=local.SubprocessRunner(use_venv=False),
            pipeline_root=str(scratch / "outputs"),
            workspace_root=str(scratch / "workspace"),
        )
        pipeline = build_pipeline(local=True)
        with (
            log_path.open("w") as log,
            progress,
            contextlib.redirect_stdout(TaskLogWatcher(log, show)),
            _tasks_tmpdir(scratch / "tmp"),
        ):
            try:
                task = pipeline(**arguments)
            except RuntimeError as exc:
                failure = str(exc)
            else:
                failure = ""
        seconds = time.monotonic() - started
        if failure:
            detail = last_error_line(log_path.read_text()) or _ANSI.sub("", failure)
            return RunResult(
                "failed", steps=events, seconds=seconds, error=detail, log_path=log_path
            )
        # the exit handler's summary: the same outcome the webhook was sent
        record: dict[str, Any] = json.loads(task.output)
        if record.get("outcome") not in ("deployed", "rejected"):
            error = f"the run ended {record.get('outcome')} ({record.get('state')})"
            return RunResult("failed", record, events, seconds, error, log_path)
        return RunResult(record["outcome"], record, events, seconds, log_path=log_path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@contextlib.contextmanager
def _tasks_tmpdir(folder: Path) -> Iterator[None]:
    """TMPDIR for the task processes KFP starts while the block runs (they inherit this
    process's environment), restored after."""
    folder.mkdir(parents=True, exist_ok=True)
    previous = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(folder)
    try:
        yield
    finally:
        if previous is None:
            del os.environ["TMPDIR"]
        else:
            os.environ["TMPDIR"] = previous


def new_log_path(directory: Path | None) -> Path:
    """Where KFP's task logs go: a timestamped file in ``directory``, else a temp file
    (which ``python -m pipeline run`` removes unless the run failed)."""
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
        return directory / f"pipeline-{time.strftime('%Y%m%d-%H%M%S')}.log"
    descriptor, name = tempfile.mkstemp(prefix="irisgate-pipeline-", suffix=".log")
    os.close(descriptor)
    return Path(name)
