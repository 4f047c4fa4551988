"""``python -m demo`` before and around the story: which run folders it may clear, busy
ports found before any work, and every failure ending with "every process stopped".
Nothing here starts a process: the pipeline and the stack are stand-ins that fail loudly
if reached."""

from __future__ import annotations

import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mirakuru import HTTPExecutor

from demo import __main__ as demo_main
from demo.stack import (
    RUN_DIR_MARKER,
    Ports,
    Stack,
    StackError,
    claim_run_dir,
    run_dir_problem,
)
from tests.helpers import free_port


@pytest.fixture(autouse=True)
def keep_signal_handlers() -> Iterator[None]:
    """main() installs its own SIGINT/SIGTERM handlers; give pytest its own back."""
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


@pytest.fixture
def pipeline_calls(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Records the pipeline runs main() starts, and fails them: work began."""
    calls: list[Any] = []

    def run_pipeline(*args: Any, **kwargs: Any) -> tuple[int, dict[str, Any]]:
        calls.append(args)
        raise RuntimeError("the pipeline stand-in was started")

    monkeypatch.setattr(demo_main, "run_pipeline", run_pipeline)
    return calls


@pytest.fixture
def listening() -> Iterator[int]:
    """A port something else listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def port_flags(**chosen: int) -> list[str]:
    ports = {
        "router-http-port": free_port(),
        "router-grpc-port": free_port(),
        "router-admin-port": free_port(),
        "gate-port": free_port(),
        **{name.replace("_", "-"): port for name, port in chosen.items()},
    }
    return [arg for name, port in ports.items() for arg in (f"--{name}", str(port))]


def test_a_full_folder_the_demo_did_not_create_is_refused_and_kept(
    tmp_path: Path, pipeline_calls: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    notes = tmp_path / "mine" / "notes.txt"
    notes.parent.mkdir()
    notes.write_text("do not delete")
    assert demo_main.main(["--run-dir", str(notes.parent), *port_flags()]) == 2
    assert notes.read_text() == "do not delete"
    assert sorted(p.name for p in notes.parent.iterdir()) == ["notes.txt"]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not empty and was not created by the demo" in err
    assert pipeline_calls == []


def test_the_demos_own_folder_is_cleared_and_an_empty_one_adopted(tmp_path: Path) -> None:
    fresh = tmp_path / "a" / "run"
    assert run_dir_problem(fresh) == ""
    claim_run_dir(fresh, clear=True)
    assert (fresh / RUN_DIR_MARKER).is_file()
    (fresh / "registry" / "iris").mkdir(parents=True)
    (fresh / "report.json").write_text("{}")
    (fresh / "link").symlink_to(tmp_path / "a")  # removed as a link, its target kept

    assert run_dir_problem(fresh) == ""
    claim_run_dir(fresh, clear=False)  # --up reuses its registry
    assert (fresh / "registry" / "iris").is_dir()
    claim_run_dir(fresh, clear=True)  # a story starts empty
    assert [p.name for p in fresh.iterdir()] == [RUN_DIR_MARKER]
    assert (tmp_path / "a").is_dir()

    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_dir_problem(empty) == ""
    a_file = tmp_path / "file"
    a_file.write_text("")
    assert "is not a folder" in run_dir_problem(a_file)


def test_a_busy_port_fails_before_any_work(
    tmp_path: Path,
    pipeline_calls: list[Any],
    listening: int,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run_dir = tmp_path / "run"
    code = demo_main.main(["--run-dir", str(run_dir), *port_flags(gate_port=listening)])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: port {listening} on 127.0.0.1 is busy")
    assert err.rstrip().endswith("pass --gate-port") and err.count("\n") == 1
    assert not run_dir.exists() and pipeline_calls == []


def test_ports_say_which_flag_moves_the_busy_one(listening: int) -> None:
    assert Ports(free_port(), free_port(), free_port(), free_port()).busy_problem() == ""
    problem = Ports(router_http=listening).busy_problem()
    assert f"port {listening}" in problem and "--router-http-port" in problem


def test_a_port_taken_after_the_check_is_a_stack_error(tmp_path: Path, listening: int) -> None:
    stack = Stack(tmp_path, Ports())
    with pytest.raises(StackError, match=f"something else answers on port {listening}"):
        stack._start(
            "router",
            HTTPExecutor,
            ["true"],
            url=f"http://127.0.0.1:{listening}/",
            timeout=5,
        )
    stack.stop()


def test_any_failure_ends_with_every_process_stopped(
    tmp_path: Path, pipeline_calls: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    assert demo_main.main(["--run-dir", str(run_dir), *port_flags()]) == 1
    out = "".join(capsys.readouterr().out.split())  # rich wraps long lines, even in paths
    logs = run_dir.resolve() / "logs"
    assert "demofailed:RuntimeError:thepipelinestand-inwasstarted" in out
    assert out.endswith(f"everyprocessstopped.Logs:{logs}")
    assert "pipeline stand-in" in (logs / "demo-traceback.log").read_text()
    assert len(pipeline_calls) == 1
