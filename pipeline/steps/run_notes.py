"""Run notes: what deploy and reject tell the pipeline's exit handler.

A KFP exit task cannot take outputs from the tasks it watches (only their final state),
so deploy and reject leave a note in the registry, keyed by the run's id, and the notify
step reads it. The note is written when the step starts (so a failure names the step),
with the step's exception if it raises, and with the step's record when it is done.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_MODEL_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
RUNS_FOLDER = "runs"


def run_note_path(registry: str | Path, model_name: str, run_id: str) -> Path:
    """``REGISTRY/<model>/runs/<run id>.json``; both names are checked, as they become a path."""
    if not _RUN_ID.fullmatch(run_id):
        raise ValueError(f"run id {run_id!r} is not a plain name (A-Z a-z 0-9 . _ -)")
    if not _MODEL_NAME.fullmatch(model_name):
        raise ValueError(f"model name {model_name!r}: expected lowercase a-z 0-9 -, up to 63")
    return Path(registry) / model_name / RUNS_FOLDER / f"{run_id}.json"


def write_run_note(
    registry: str | Path,
    model_name: str,
    run_id: str,
    step: str,
    record: Mapping[str, Any],
    finished: bool,
) -> Path:
    """Replaces the run's note in one rename, so the reader never sees half a file."""
    path = run_note_path(registry, model_name, run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    note = {"step": step, "finished": finished, "record": dict(record)}
    descriptor, staging = tempfile.mkstemp(prefix=f".{path.stem}-", dir=path.parent)
    try:
        with os.fdopen(descriptor, "w") as file:
            file.write(json.dumps(note, indent=2) + "\n")
        os.chmod(staging, 0o644)  # mkstemp's 0600 would hide it from other readers
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
    return path


def read_run_note(registry: str | Path, model_name: str, run_id: str) -> dict[str, Any] | None:
    """The run's note, or None when there is none (or it cannot be read: it only informs)."""
    try:
        text = run_note_path(registry, model_name, run_id).read_text()
        note = json.loads(text)
    except (OSError, ValueError):
        return None
    return note if isinstance(note, dict) else None


@contextlib.contextmanager
def noting_run(
    registry: str | Path,
    model_name: str,
    run_id: str,
    step: str,
    started: Mapping[str, Any],
) -> Iterator[Callable[[Mapping[str, Any]], None]]:
    """The run note around a step: ``started`` now, the record the step hands to the
    yielded ``finish``, or, if the step raises, ``started`` plus the error (then re-raised)
    so the exit handler can say which step failed and why."""
    write_run_note(registry, model_name, run_id, step, started, finished=False)

    def finish(record: Mapping[str, Any]) -> None:
        write_run_note(registry, model_name, run_id, step, record, finished=True)

    try:
        yield finish
    except Exception as exc:
        failed = {**started, "error": f"{type(exc).__name__}: {exc}"[:500]}
        write_run_note(registry, model_name, run_id, step, failed, finished=False)
        raise
