"""Run notes: what deploy and reject leave in the registry for the exit handler."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.steps.run_notes import noting_run, read_run_note, run_note_path, write_run_note
from predictor.artifact import registry_versions


def test_a_run_note_is_replaced_whole_and_readable_by_others(tmp_path: Path) -> None:
    assert read_run_note(tmp_path, "iris", "run-1") is None
    write_run_note(tmp_path, "iris", "run-1", "deploy", {"accuracy": 0.9}, finished=False)
    path = write_run_note(tmp_path, "iris", "run-1", "deploy", {"version": "2"}, finished=True)
    assert path == tmp_path / "iris" / "runs" / "run-1.json"
    assert read_run_note(tmp_path, "iris", "run-1") == {
        "step": "deploy",
        "finished": True,
        "record": {"version": "2"},
    }
    assert path.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in path.parent.iterdir()] == ["run-1.json"]  # no staging left
    assert registry_versions(tmp_path, "iris") == []  # notes are not versions


def test_an_unreadable_run_note_is_no_note(tmp_path: Path) -> None:
    path = run_note_path(tmp_path, "iris", "run-2")
    path.parent.mkdir(parents=True)
    path.write_text("{half")
    assert read_run_note(tmp_path, "iris", "run-2") is None
    path.write_text("[1]")
    assert read_run_note(tmp_path, "iris", "run-2") is None


@pytest.mark.parametrize(
    ("model_name", "run_id", "message"),
    [
        ("iris", "../x", "run id '../x' is not a plain name"),
        ("iris", "", "run id '' is not a plain name"),
        ("iris", ".hidden", "run id '.hidden' is not a plain name"),
        ("../iris", "run-1", "model name '../iris': expected lowercase"),
    ],
)
def test_run_note_names_cannot_leave_the_registry(
    tmp_path: Path, model_name: str, run_id: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        run_note_path(tmp_path, model_name, run_id)
    assert read_run_note(tmp_path, model_name, run_id) is None


def test_a_step_that_raises_leaves_its_error_in_the_note(tmp_path: Path) -> None:
    started = {"name": "iris", "accuracy": 0.97}
    with (
        pytest.raises(RuntimeError, match="gate down"),
        noting_run(tmp_path, "iris", "run-3", "deploy", started),
    ):
        assert read_run_note(tmp_path, "iris", "run-3") == {
            "step": "deploy",
            "finished": False,
            "record": started,
        }
        raise RuntimeError("gate down")
    note = read_run_note(tmp_path, "iris", "run-3")
    assert note == {
        "step": "deploy",
        "finished": False,
        "record": {**started, "error": "RuntimeError: gate down"},
    }
    with noting_run(tmp_path, "iris", "run-4", "reject", started) as finish:
        finish({"outcome": "rejected"})
    assert read_run_note(tmp_path, "iris", "run-4") == {
        "step": "reject",
        "finished": True,
        "record": {"outcome": "rejected"},
    }
