"""Traffic backends: how the gate starts a candidate, moves traffic and retires the loser.

One interface, two implementations: ``local`` (predictor processes + the local router,
here) and ``kserve`` (InferenceService ``canaryTrafficPercent``, in
:mod:`gate.kserve_traffic`). Backends keep what they need to find their resources again
in the rollout's ``backend_state``, which the store persists, so a restarted gate finds
the canary it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from gate.decide import RolloutState
from gate.metrics import Targets
from gate.store import SQLiteStore, Stable

logger = logging.getLogger(__name__)


class TrafficError(Exception):
    """The backend could not do what was asked; the message says what and why."""


class TrafficBackend(ABC):
    name: str

    @abstractmethod
    async def ensure_stable(self, model: str) -> None:
        """Make sure the current stable serves (local: start it if it is not running)."""

    @abstractmethod
    async def start_candidate(self, state: RolloutState) -> dict[str, Any]:
        """Deploy the candidate with no traffic; returns ``backend_state`` updates."""

    @abstractmethod
    def candidate_url(self, state: RolloutState) -> str:
        """REST base URL of the candidate itself (not through the split), for the replay."""

    @abstractmethod
    async def get_weight(self, state: RolloutState) -> int:
        """The canary weight the traffic layer really applies now."""

    @abstractmethod
    async def set_weight(self, state: RolloutState, weight: int) -> None: ...

    @abstractmethod
    async def promote(self, state: RolloutState) -> None:
        """Candidate takes all traffic and becomes stable; the old stable is retired."""

    @abstractmethod
    async def rollback(self, state: RolloutState) -> None:
        """Canary weight 0 and the candidate removed. Must be idempotent."""

    @abstractmethod
    def metrics_targets(self, state: RolloutState) -> Targets: ...

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release clients."""


# --- local ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LocalSettings:
    router_url: str  # the router's HTTP base URL; its admin API is under /router/
    run_dir: Path  # predictor logs
    predictor_args: tuple[str, ...] = ()  # extra flags for every candidate (e.g. faults)
    python: str = sys.executable
    start_timeout_s: float = 90.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child still "exists"; reap it if it is ours
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return done == 0


class LocalTrafficBackend(TrafficBackend):
    """Predictors as local processes, traffic split by ``python -m gate.router``."""

    name = "local"

    def __init__(self, settings: LocalSettings, store: SQLiteStore) -> None:
        self.settings = settings
        self.store = store
        self._client = httpx.AsyncClient(timeout=10.0)
        settings.run_dir.mkdir(parents=True, exist_ok=True)

    # processes -------------------------------------------------------------------------
    async def _launch(
        self, model: str, version: str, model_dir: str, role: str, extra: tuple[str, ...] = ()
    ) -> dict[str, Any]:
        http_port, grpc_port = free_port(), free_port()
        log = self.settings.run_dir / f"predictor-{model}-v{version}-{role}-{http_port}.log"
        command = [
            self.settings.python,
            "-m",
            "predictor",
            "--model_name",
            model,
            "--model_dir",
            model_dir,
            "--http_port",
            str(http_port),
            "--grpc_port",
            str(grpc_port),
            # one process per predictor: the local backend runs a stable and a canary
            # side by side on one machine, next to the router and the load
            "--workers",
            "1",
            "--role",
            role,
            *extra,
        ]
        logger.info("starting %s predictor: %s", role, shlex.join(command))
        with log.open("ab") as handle:
            # own session: a gate killed with SIGKILL leaves its predictors serving
            process = subprocess.Popen(
                command, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
            )
        endpoint = {
            "pid": process.pid,
            "http": f"http://127.0.0.1:{http_port}",
            "grpc": f"127.0.0.1:{grpc_port}",
            "log": str(log),
        }
        await self._wait_ready(endpoint, process)
        return endpoint

    async def _wait_ready(
        self, endpoint: dict[str, Any], process: subprocess.Popen[bytes] | None = None
    ) -> None:
        deadline = asyncio.get_running_loop().time() + self.settings.start_timeout_s
        while asyncio.get_running_loop().time() < deadline:
            if process is not None and process.poll() is not None:
                raise TrafficError(
                    f"predictor exited with {process.returncode}: {_last_line(endpoint['log'])}"
                )
            if await self._ready(endpoint):
                return
            await asyncio.sleep(0.2)
        _terminate(endpoint.get("pid"))
        raise TrafficError(
            f"predictor not ready after {self.settings.start_timeout_s} s; see {endpoint['log']}"
        )

    async def _ready(self, endpoint: dict[str, Any] | None) -> bool:
        if not endpoint or not pid_alive(endpoint.get("pid")):
            return False
        try:
            response = await self._client.get(f"{endpoint['http']}/v2/health/ready")
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    # router ------------------------------------------------------------------------------
    async def _routes(self) -> dict[str, Any]:
        try:
            response = await self._client.get(f"{self.settings.router_url}/router/routes")
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise TrafficError(
                f"router unreachable at {self.settings.router_url}: {exc!r}"
            ) from exc
        routes: dict[str, Any] = response.json()
        return routes

    async def _put_routes(
        self, stable: dict[str, Any] | None, canary: dict[str, Any] | None, weight: int
    ) -> None:
        def spec(endpoint: dict[str, Any] | None) -> dict[str, str] | None:
            return (
                None if endpoint is None else {"http": endpoint["http"], "grpc": endpoint["grpc"]}
            )

        body = {"stable": spec(stable), "canary": spec(canary), "canary_weight": weight}
        try:
            response = await self._client.put(
                f"{self.settings.router_url}/router/routes", json=body
            )
        except httpx.HTTPError as exc:
            raise TrafficError(f"router unreachable: {exc!r}") from exc
        if response.status_code != 200:
            raise TrafficError(f"router refused {body}: {response.text}")

    # interface ---------------------------------------------------------------------------
    async def ensure_stable(self, model: str) -> None:
        stable = self.store.stable(model)
        if stable is None:
            raise TrafficError(f"no stable version known for model {model}")
        endpoint = stable.endpoint
        if endpoint is None or not await self._ready(endpoint):
            endpoint = await self._launch(model, stable.version, stable.artifact_uri, "stable")
            self.store.set_stable(stable.model_copy(update={"endpoint": endpoint}))
        routes = await self._routes()
        current = routes.get("stable") or {}
        if current.get("http") != endpoint["http"]:
            canary = routes.get("canary")
            await self._put_routes(
                endpoint, canary, routes.get("canary_weight", 0) if canary else 0
            )

    async def start_candidate(self, state: RolloutState) -> dict[str, Any]:
        await self.ensure_stable(state.model)
        canary = state.backend_state.get("canary")
        if await self._ready(canary):
            return {}
        if not Path(state.candidate.artifact_uri).is_dir():
            raise TrafficError(
                f"candidate artifact {state.candidate.artifact_uri} is not a "
                "local directory (the local backend serves registry paths)"
            )
        endpoint = await self._launch(
            state.model,
            state.candidate.version,
            state.candidate.artifact_uri,
            "canary",
            self.settings.predictor_args,
        )
        return {"canary": endpoint}

    def candidate_url(self, state: RolloutState) -> str:
        url: str = state.backend_state["canary"]["http"]
        return url

    async def get_weight(self, state: RolloutState) -> int:
        routes = await self._routes()
        canary = routes.get("canary") or {}
        ours = state.backend_state.get("canary") or {}
        if not ours or canary.get("http") != ours.get("http"):
            return 0
        return int(routes.get("canary_weight", 0))

    async def set_weight(self, state: RolloutState, weight: int) -> None:
        stable = self.store.stable(state.model)
        canary = state.backend_state.get("canary")
        if stable is None or stable.endpoint is None or canary is None:
            raise TrafficError("stable or canary predictor unknown; cannot route")
        if not pid_alive(canary.get("pid")):
            raise TrafficError(f"canary predictor (pid {canary.get('pid')}) is not running")
        await self._put_routes(stable.endpoint, canary, weight)

    async def promote(self, state: RolloutState) -> None:
        canary = state.backend_state.get("canary")
        if canary is None:
            raise TrafficError("no canary to promote")
        old = self.store.stable(state.model)
        await self._put_routes(canary, None, 0)
        self.store.set_stable(
            Stable(
                model=state.model,
                version=state.candidate.version,
                artifact_uri=state.candidate.artifact_uri,
                endpoint=canary,
            )
        )
        if old is not None and old.endpoint and old.endpoint.get("pid") != canary.get("pid"):
            _terminate(old.endpoint.get("pid"))

    async def rollback(self, state: RolloutState) -> None:
        stable = self.store.stable(state.model)
        canary = state.backend_state.get("canary")
        routes = await self._routes()
        if routes.get("canary") is not None and stable is not None and stable.endpoint:
            await self._put_routes(stable.endpoint, None, 0)
        if canary is not None and (
            stable is None
            or stable.endpoint is None
            or stable.endpoint.get("pid") != canary.get("pid")
        ):
            _terminate(canary.get("pid"))

    def metrics_targets(self, state: RolloutState) -> Targets:
        stable = self.store.stable(state.model)
        canary = state.backend_state.get("canary") or {}
        return Targets(
            model=state.model,
            stable_version=stable.version if stable else "",
            canary_version=state.candidate.version,
            stable_url=(stable.endpoint or {}).get("http", "") if stable else "",
            canary_url=canary.get("http", ""),
        )

    async def aclose(self) -> None:
        await self._client.aclose()


def _terminate(pid: int | None) -> None:
    if pid and pid_alive(pid):
        logger.info("retiring predictor pid %d", pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)


def _last_line(path: str) -> str:
    try:
        lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
    except OSError:
        return ""
    refusals = [line for line in lines if "refusing to start" in line]
    return (refusals or lines or [""])[-1]


def make_backend(settings: Any, store: SQLiteStore) -> TrafficBackend:
    """Fails fast on an unknown name: a typo must not fall back to a default."""
    if settings.traffic_backend == "local":
        return LocalTrafficBackend(
            LocalSettings(
                router_url=settings.router_url.rstrip("/"),
                run_dir=Path(settings.run_dir),
                predictor_args=tuple(shlex.split(settings.canary_args)),
            ),
            store,
        )
    if settings.traffic_backend == "kserve":
        from gate.kserve_traffic import KServeTrafficBackend

        backend: TrafficBackend = KServeTrafficBackend.from_settings(settings, store)
        return backend
    raise ValueError(
        f"unknown traffic backend {settings.traffic_backend!r}; choose local or kserve"
    )
