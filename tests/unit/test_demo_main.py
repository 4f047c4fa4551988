"""``python -m demo`` before and around the story: which run folders it may clear, busy
ports found before any work, and every failure ending with "every process stopped".
Nothing here starts a process: the pipeline and the stack are stand-ins that fail loudly
if reached."""

from __future__ import annotations

import json
import signal
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
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
from demo.up import served_version, up_banner
from tests.helpers import REPO_ROOT, free_port


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


def test_the_watch_line_after_a_promotion_reads_as_one() -> None:
    """A promoted rollout's canary weight is 0 (the candidate *is* stable): the watch line
    said ``succeeded canary 0%``, which reads like a failure."""
    rollout = {"candidate": {"version": "2"}, "previous_version": "1", "canary_weight": 0}
    assert demo_main.candidate_share({**rollout, "phase": "succeeded"}) == (
        100,
        "promoted",
        "v2 is stable, 100%",
    )
    assert demo_main.candidate_share({**rollout, "phase": "rolled_back"}) == (
        0,
        "rolled back",
        "v1 stays stable",
    )
    step = {**rollout, "phase": "progressing", "canary_weight": 25}
    assert demo_main.candidate_share(step) == (25, "progressing", "canary 25%")


def test_the_up_banner_names_the_ports_and_commands_readme_documents(tmp_path: Path) -> None:
    stack = Stack(tmp_path, Ports())
    banner = up_banner(stack, Path(".irisgate/up/registry"), "2", traffic_users=0)
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme[readme.index("### Use the stack `make up` starts") :]
    for port, where in (
        (8000, "REST   http://127.0.0.1:8000"),
        (8001, "gRPC   127.0.0.1:8001"),
        (8002, "router admin  http://127.0.0.1:8002"),
        (8090, "gate   http://127.0.0.1:8090"),
    ):
        assert where in banner
        assert f"| `{port}` |" in section, port
    assert "serving iris version 2" in banner
    assert f"export GATE_API_TOKEN={stack.token} " in banner
    assert "export GATE_API_TOKEN=paste-the-token-make-up-printed" in section
    assert "python -m pipeline run --registry .irisgate/up/registry --gate-url" in banner
    assert "no traffic yet" in banner and "--traffic" in banner
    busy = up_banner(stack, Path("r"), "2", traffic_users=4)
    assert "live traffic: locust's REST and gRPC users (4)" in busy
    assert "no traffic yet" not in busy


def test_the_banner_names_the_version_the_router_serves(tmp_path: Path) -> None:
    """The store decides which version serves (after a rollback the newest registry
    folder is the rejected candidate), so the banner asks the router's stable, not the
    registry."""
    answer = json.dumps({"name": "iris", "versions": ["2"], "platform": "sklearn"}).encode()

    class Metadata(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            found = self.path == "/v2/models/iris"
            self.send_response(200 if found else 404)
            self.send_header("Content-Length", str(len(answer) if found else 0))
            self.end_headers()
            if found:
                self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Metadata)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = int(server.server_address[1])
        assert served_version(Stack(tmp_path, Ports(router_http=port))) == "2"
        assert served_version(Stack(tmp_path, Ports(router_http=port)), "other") == "?"
    finally:
        server.shutdown()
        server.server_close()
    assert served_version(Stack(tmp_path, Ports(router_http=free_port()))) == "?"
