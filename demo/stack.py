"""The local stack's processes, supervised with mirakuru: router, gate, load generator.

mirakuru starts each process in its own process group, waits until it answers, and on
stop signals the group and then every process that inherited its marker environment
variable, which includes the predictors the gate starts in sessions of their own. So
Ctrl-C or a failure leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
from mirakuru import HTTPExecutor, SimpleExecutor
from mirakuru.exceptions import AlreadyRunning, ProcessExitedWithError, TimeoutExpired

from load_tests.command import headless_command
from load_tests.labels import TOKEN_ENV

REPO_ROOT = Path(__file__).resolve().parent.parent


class StackError(RuntimeError):
    """A process did not come up; the message says which and where its log is."""


# Written into a run folder the demo creates; only a folder holding it is reused or cleared.
RUN_DIR_MARKER = ".irisgate-demo"


def run_dir_problem(run_dir: Path) -> str:
    """Why the demo may not use ``run_dir`` (empty: it may). A story clears its run folder;
    a folder the demo did not make may hold someone's files, so it must be empty."""
    if not run_dir.exists():
        return ""
    if not run_dir.is_dir():
        return f"--run-dir {run_dir} is not a folder"
    if (run_dir / RUN_DIR_MARKER).is_file() or not any(run_dir.iterdir()):
        return ""
    return (
        f"--run-dir {run_dir} is not empty and was not created by the demo; "
        "choose a new or empty folder"
    )


def claim_run_dir(run_dir: Path, *, clear: bool) -> None:
    """Create ``run_dir`` (or adopt an empty one) with the marker; with ``clear``, empty a
    marked one first. Call only after :func:`run_dir_problem` said nothing."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if clear:
        for entry in run_dir.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    (run_dir / RUN_DIR_MARKER).write_text("a folder of `python -m demo`: it may clear it\n")


@dataclass(frozen=True)
class Ports:
    router_http: int = 8000
    router_grpc: int = 8001
    gate: int = 8090
    router_admin: int = 8002

    def busy_problem(self, host: str = "127.0.0.1") -> str:
        """The first port the stack needs that something else holds, as one line naming
        its flag (empty: all free). Checked before any work: found only when the router
        or the gate starts, a busy port costs a pipeline run and ends in mirakuru's
        AlreadyRunning."""
        for port, flag in (
            (self.router_http, "--router-http-port"),
            (self.router_grpc, "--router-grpc-port"),
            (self.router_admin, "--router-admin-port"),
            (self.gate, "--gate-port"),
        ):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                # as the servers bind: a port in TIME_WAIT is free, a listening one is not
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind((host, port))
                except OSError as exc:
                    return f"port {port} on {host} is busy ({exc.strerror}); free it or pass {flag}"
        return ""


@dataclass
class Stack:
    run_dir: Path
    ports: Ports
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    # the router's admin token: only the gate gets it (the pipeline gets ``token``)
    router_token: str = field(default_factory=lambda: secrets.token_hex(16))
    # the router sends payload events (live requests and answers) to the gate with it
    events_token: str = field(default_factory=lambda: secrets.token_hex(16))
    # the label poster's: it can add labels (POST /v1/feedback) and steer nothing
    feedback_token: str = field(default_factory=lambda: secrets.token_hex(16))
    executors: list[tuple[str, SimpleExecutor, IO[bytes]]] = field(default_factory=list)

    @property
    def logs(self) -> Path:
        return self.run_dir / "logs"

    @property
    def router_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.router_http}"

    @property
    def router_grpc(self) -> str:
        return f"127.0.0.1:{self.ports.router_grpc}"

    @property
    def router_admin_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.router_admin}"

    @property
    def gate_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.gate}"

    def _start(
        self, name: str, executor_class: type[SimpleExecutor], command: list[str], **kwargs: Any
    ) -> SimpleExecutor:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = (self.logs / f"{name}.log").open("ab")
        executor = executor_class(command, cwd=str(REPO_ROOT), stdout=log, stderr=log, **kwargs)
        self.executors.append((name, executor, log))
        try:
            executor.start()
        except AlreadyRunning as exc:  # its port was taken after the check in main()
            raise StackError(
                f"{name} did not start: something else answers on port "
                f"{getattr(executor, 'port', '?')}"
            ) from exc
        except (TimeoutExpired, ProcessExitedWithError) as exc:
            raise StackError(
                f"{name} did not start ({exc.__class__.__name__}); "
                f"see {self.logs / (name + '.log')}"
            ) from exc
        return executor

    def start_router(self) -> None:
        self._start(
            "router",
            HTTPExecutor,
            [
                sys.executable,
                "-m",
                "gate.local.router",
                "--http-port",
                str(self.ports.router_http),
                "--grpc-port",
                str(self.ports.router_grpc),
                "--admin-port",
                str(self.ports.router_admin),
                "--events-url",
                f"{self.gate_url}/v1/events",
            ],
            url=f"{self.router_admin_url}/router/healthz",
            method="GET",
            timeout=60,
            envvars={
                "ROUTER_ADMIN_TOKEN": self.router_token,
                "ROUTER_EVENTS_TOKEN": self.events_token,
            },
        )

    def start_gate(self, stable_dir: Path, analysis: dict[str, Any], canary_args: str = "") -> None:
        analysis_file = self.run_dir / "analysis.yaml"
        analysis_file.write_text(json.dumps(analysis, indent=2) + "\n")  # JSON is YAML
        env = {
            "GATE_API_TOKEN": self.token,
            "GATE_PORT": str(self.ports.gate),
            "GATE_DB_PATH": str(self.run_dir / "gate.db"),
            "GATE_ROUTER_ADMIN_URL": self.router_admin_url,
            "GATE_ROUTER_TOKEN": self.router_token,
            "GATE_EVENTS_TOKEN": self.events_token,
            "GATE_FEEDBACK_TOKEN": self.feedback_token,
            "GATE_RUN_DIR": str(self.logs),
            "GATE_STABLE_MODEL_DIR": str(stable_dir),
            "GATE_ANALYSIS_FILE": str(analysis_file),
            "GATE_TICK_INTERVAL_S": "1",
            "GATE_CANARY_ARGS": canary_args,
        }
        self._start(
            "gate",
            HTTPExecutor,
            [sys.executable, "-m", "gate"],
            url=f"{self.gate_url}/readyz",
            method="GET",
            timeout=120,
            envvars=env,
        )

    @property
    def labels_report(self) -> Path:
        """The label poster's counters (JSON), rewritten each second while locust runs."""
        return self.run_dir / "labels.json"

    def start_load(
        self,
        users: int,
        rps_per_user: float,
        *,
        rows_per_request: int = 1,
        labels_share: float = 0.5,
        labels_delay_s: float = 5.0,
    ) -> None:
        """REST v1 and gRPC users through the router, until stopped. They send labelled
        Iris rows measured the way today's clients measure them (load_tests.pool: the
        petal width drifted), and the true labels of ``labels_share`` of the REST
        requests go to the gate's /v1/feedback ``labels_delay_s`` after the answer."""
        command = headless_command(
            ["RestV1User", "GrpcV2User"],
            users=users,
            spawn_rate=users,
            host=self.router_url,
            report_prefix=self.run_dir / "load",
            options=[
                # a history row per request type each second (not only the total): the
                # report's timeline draws REST and gRPC apart
                "--csv-full-history",
                "--grpc-target",
                self.router_grpc,
                "--rps-per-user",
                str(rps_per_user),
                "--batch-size",
                str(rows_per_request),
                "--invalid-share",
                "0.02",
                "--traffic",
                "labelled",
                *(
                    [
                        "--labels-url",
                        f"{self.gate_url}/v1/feedback",
                        "--labels-share",
                        str(labels_share),
                        "--labels-delay-s",
                        str(labels_delay_s),
                        "--labels-report",
                        str(self.labels_report),
                    ]
                    if labels_share > 0
                    else []
                ),
            ],
        )
        # the feedback-only token through the environment, never on a command line
        self._start("locust", SimpleExecutor, command, envvars={TOKEN_ENV: self.feedback_token})

    def stop_load(self) -> None:
        self._stop(lambda name: name == "locust")

    def routes(self, model: str = "iris") -> dict[str, Any]:
        """The router's routes of one model: stable, canary, weight and counters."""
        routes: dict[str, Any] = httpx.get(
            f"{self.router_admin_url}/router/routes/{model}",
            headers={"Authorization": f"Bearer {self.router_token}"},
            timeout=5,
        ).json()
        return routes

    def rollout(self, rollout_id: str) -> dict[str, Any]:
        detail: dict[str, Any] = httpx.get(
            f"{self.gate_url}/v1/rollouts/{rollout_id}", timeout=5
        ).json()
        return detail

    def _stop(self, which: Any) -> None:
        for name, executor, log in reversed(self.executors):
            if not which(name):
                continue
            with contextlib.suppress(Exception):
                executor.stop()
            with contextlib.suppress(Exception):
                executor.kill()
            log.close()
        self.executors = [entry for entry in self.executors if not which(entry[0])]

    def stop(self) -> None:
        """Everything, newest first; predictors the gate started go with the gate."""
        self._stop(lambda name: True)

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
