"""`python -m load_tests` against a real predictor: all three protocols, SLOs both ways."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from load_tests.slo import read_stats
from tests.helpers import REPO_ROOT, Predictor, free_port, make_artifact, run_predictor

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Predictor]:
    root = tmp_path_factory.mktemp("load")
    with run_predictor(make_artifact(root / "iris-1"), root) as running:
        yield running


def load_test(target: str, protocol: str, report: Path, *slo: str) -> int:
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "load_tests",
            "--host",
            target,
            "--protocol",
            protocol,
            "--users",
            "4",
            "--spawn-rate",
            "4",
            "--run-time",
            "3s",
            "--report-dir",
            str(report),
            "--invalid-share",
            "0.1",
            *slo,
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return completed.returncode


@pytest.mark.parametrize("protocol", ["rest-v1", "rest-v2", "grpc"])
def test_each_protocol_meets_a_generous_slo_and_counts_invalid_rejections(
    predictor: Predictor, tmp_path: Path, protocol: str
) -> None:
    target = predictor.grpc_target if protocol == "grpc" else predictor.url
    assert (
        load_test(target, protocol, tmp_path, "--max-p99-ms", "2000", "--max-error-rate", "0.01")
        == 0
    )
    rows = {row.name: row for row in read_stats(tmp_path / f"{protocol}_stats.csv")}
    assert rows["Aggregated"].requests > 50 and rows["Aggregated"].failures == 0
    invalid = rows["invalid input (expects rejection)"]
    assert invalid.requests > 0 and invalid.failures == 0
    assert (tmp_path / f"{protocol}.html").stat().st_size > 1000


def test_latency_slo_breach_exits_non_zero(predictor: Predictor, tmp_path: Path) -> None:
    assert load_test(predictor.url, "rest-v1", tmp_path, "--max-p99-ms", "0.001") == 1


def test_error_rate_slo_breach_exits_non_zero(tmp_path: Path) -> None:
    with run_predictor(
        make_artifact(tmp_path / "iris-1"), tmp_path, "--fault_error_rate", "0.5"
    ) as faulty:
        assert load_test(faulty.grpc_target, "grpc", tmp_path, "--max-error-rate", "0.1") == 1
        rows = read_stats(tmp_path / "grpc_stats.csv")
        assert rows[-1].error_rate > 0.2


def test_labelled_traffic_is_answered_like_uniform_rows(
    predictor: Predictor, tmp_path: Path
) -> None:
    code = load_test(
        predictor.url, "rest-v2", tmp_path, "--traffic", "labelled", "--max-error-rate", "0.01"
    )
    assert code == 0
    rows = {row.name: row for row in read_stats(tmp_path / "rest-v2_stats.csv")}
    assert rows["Aggregated"].requests > 50 and rows["Aggregated"].failures == 0


def test_labels_need_labelled_traffic(predictor: Predictor, tmp_path: Path) -> None:
    # uniform rows have no labels to post: locust refuses to start, the runner exits 2
    code = load_test(predictor.url, "rest-v1", tmp_path, "--labels-url", "http://127.0.0.1:9/x")
    assert code == 2
    assert "--labels-url needs --traffic labelled" in (tmp_path / "rest-v1-locust.log").read_text()


def test_a_dead_host_is_reported_as_connection_refused(tmp_path: Path) -> None:
    load_test(f"http://127.0.0.1:{free_port()}", "rest-v1", tmp_path)
    failures = (tmp_path / "rest-v1_failures.csv").read_text()
    assert "no response: ConnectionRefusedError: [Errno 111] Connection refused" in failures
    assert "'0: '" not in failures and "got 0'" not in failures


def test_a_terminated_load_test_stops_its_locust(tmp_path: Path) -> None:
    """``kill PID`` of ``python -m load_tests`` alone (no job control, so not the process
    group) stops locust too: it used to keep running with nobody to stop it."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "load_tests",
            "--host",
            f"http://127.0.0.1:{free_port()}",
            "--protocol",
            "rest-v1",
            "--users",
            "1",
            "--run-time",
            "5m",
            "--report-dir",
            str(tmp_path),
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # a signal to the parent reaches no one else
    )
    try:
        parent = psutil.Process(process.pid)
        deadline = time.monotonic() + 60
        while not (children := parent.children(recursive=True)):
            assert time.monotonic() < deadline, "locust never started"
            time.sleep(0.2)
        time.sleep(2)  # locust up and sending
        process.terminate()
        output, _ = process.communicate(timeout=60)
        assert process.returncode == 128 + signal.SIGTERM, output[-2000:]
        assert b"locust stopped too" in output
        _, alive = psutil.wait_procs(children, timeout=10)
        assert not alive, f"still running: {[p.cmdline() for p in alive]}"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def readme_locust_commands() -> list[str]:
    """README's web-UI command lines (``locust -f ...`` lines of its shell blocks)."""
    readme = (REPO_ROOT / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", readme, flags=re.S)
    return [
        line.split("#")[0].strip()
        for block in blocks
        for line in block.splitlines()
        if line.startswith("locust -f ")
    ]


def test_readmes_web_ui_commands_send_each_protocol_to_the_right_port(
    predictor: Predictor, tmp_path: Path
) -> None:
    """Run headless for a few seconds against a predictor (its ports in place of
    ``make up``'s): every request answered, none failed. Without a user class locust ran
    the gRPC user against the REST port too (11,220 of 11,220 calls failed)."""
    commands = readme_locust_commands()
    assert len(commands) == 2, commands
    ports = {
        "http://127.0.0.1:8000": predictor.url,
        "127.0.0.1:8001": predictor.grpc_target,
    }
    for index, command in enumerate(commands):
        for documented, actual in ports.items():
            command = command.replace(documented, actual)
        argv = shlex.split(command)
        locust = Path(sys.executable).with_name(argv[0])
        csv = tmp_path / f"run-{index}"
        headless = ["--headless", "-u", "2", "-r", "2", "-t", "3s", "--csv", str(csv)]
        completed = subprocess.run(
            [str(locust), *argv[1:], *headless],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert completed.returncode == 0, (command, completed.stderr[-2000:])
        total = read_stats(Path(f"{csv}_stats.csv"))[-1]
        assert total.requests > 0 and total.failures == 0, (command, total)
