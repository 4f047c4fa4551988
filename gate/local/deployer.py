"""The local deployer: predictors as processes on this machine.

Intent first: a predictor's endpoint (its ports, log and a marker) is persisted - in the
rollout's ``backend_state`` for a candidate, in the stables table for a stable - *before*
the process is started. Each process carries the marker in its environment
(``IRISGATE_PROCESS=<store instance>/<id>``), so a gate restarted after SIGKILL finds
every process it ever started, keeps the ones a stable or an active rollout names and
stops the rest (:meth:`LocalDeployer.retire`). Predictors run in sessions of their own:
the stable keeps serving while the gate restarts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from gate.core.spec import TERMINAL
from gate.core.state import RolloutState
from gate.local.ports import free_port
from gate.providers.base import Targets
from gate.store import SQLiteStore, Stable
from gate.traffic.base import Deployer, Readiness, TrafficError

logger = logging.getLogger(__name__)

MARKER = "IRISGATE_PROCESS"
READY_PROBE_TIMEOUT_S = 1.0


@dataclass(frozen=True)
class LocalSettings:
    run_dir: Path  # predictor logs
    predictor_args: tuple[str, ...] = ()  # extra flags for every candidate (e.g. faults)
    predictor_args_by_model: dict[str, tuple[str, ...]] = field(default_factory=dict)
    python: str = sys.executable


class LocalDeployer(Deployer):
    """Predictor processes, found again by their marker after a restart."""

    def __init__(self, settings: LocalSettings, store: SQLiteStore) -> None:
        self.settings = settings
        self.store = store
        self._client = httpx.AsyncClient(timeout=READY_PROBE_TIMEOUT_S)
        self._launched: dict[str, subprocess.Popen[bytes]] = {}
        settings.run_dir.mkdir(parents=True, exist_ok=True)

    # --- processes ---------------------------------------------------------------------------
    def _marker(self, process_id: str) -> str:
        return f"{self.store.instance}/{process_id}"

    def _plan(self, model: str, version: str, model_dir: str, role: str) -> dict[str, Any]:
        """An endpoint to persist before anything is started."""
        process_id = uuid.uuid4().hex[:12]
        http_port, grpc_port = free_port(), free_port()
        log = self.settings.run_dir / f"predictor-{model}-v{version}-{role}-{process_id}.log"
        return {
            "process": process_id,
            "model_dir": model_dir,
            "role": role,
            "http": f"http://127.0.0.1:{http_port}",
            "grpc": f"127.0.0.1:{grpc_port}",
            # the one process's port (--workers 1): the router shares connections to it
            # (unless the operator's predictor flags ask for more processes)
            "grpc_processes": (
                [] if self._more_processes(model, role) else [f"127.0.0.1:{grpc_port}"]
            ),
            "log": str(log),
        }

    def _extra(self, model: str) -> tuple[str, ...]:
        """The operator's flags for a candidate of ``model`` (a stable gets none)."""
        return self.settings.predictor_args_by_model.get(model, self.settings.predictor_args)

    def _more_processes(self, model: str, role: str) -> bool:
        return role == "canary" and any(
            flag == "--workers" or flag.startswith("--workers=") for flag in self._extra(model)
        )

    def _launch(self, model: str, endpoint: dict[str, Any], extra: tuple[str, ...]) -> None:
        """Start the planned process unless one with its marker already runs."""
        process_id = endpoint["process"]
        running = self._launched.get(process_id)
        if running is not None and running.poll() is None:
            return
        if running is None and process_id in self._ours():
            return  # started before a restart, still serving
        command = [
            self.settings.python,
            "-m",
            "predictor",
            "--model_name",
            model,
            "--model_dir",
            endpoint["model_dir"],
            "--http_port",
            endpoint["http"].rsplit(":", 1)[1],
            "--grpc_port",
            endpoint["grpc"].rsplit(":", 1)[1],
            # one process per predictor: the local backend runs a stable and a canary
            # side by side on one machine, next to the router and the load
            "--workers",
            "1",
            "--role",
            endpoint["role"],
            *extra,
        ]
        logger.info("starting %s predictor: %s", endpoint["role"], shlex.join(command))
        environment = {**os.environ, MARKER: self._marker(process_id)}
        with Path(endpoint["log"]).open("ab") as handle:
            self._launched[process_id] = subprocess.Popen(
                command,
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=environment,
            )

    def _ours(self) -> dict[str, list[int]]:
        """process id -> pids, for every live process this store's gate started."""
        prefix = f"{self.store.instance}/"
        found: dict[str, list[int]] = {}
        for process in psutil.process_iter(["pid", "environ", "status"]):
            with contextlib.suppress(psutil.Error):
                marker = (process.info.get("environ") or {}).get(MARKER, "")
                if marker.startswith(prefix) and process.info.get("status") != (
                    psutil.STATUS_ZOMBIE
                ):
                    found.setdefault(marker[len(prefix) :], []).append(int(process.info["pid"]))
        return found

    def _exited(self, endpoint: dict[str, Any]) -> str | None:
        """Why the process this gate launched has exited, or None if it has not."""
        process = self._launched.get(endpoint["process"])
        if process is None or process.poll() is None:
            return None
        return f"predictor exited with {process.returncode}: {_last_line(endpoint['log'])}"

    async def _ready(self, endpoint: dict[str, Any]) -> bool:
        try:
            response = await self._client.get(f"{endpoint['http']}/v2/health/ready")
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    # --- interface -----------------------------------------------------------------------------
    async def ensure_stable(self, model: str) -> Stable | None:
        stable = self.store.stable(model)
        if stable is None:
            raise TrafficError(f"no stable version known for model {model}")
        endpoint = stable.endpoint
        if endpoint is None or "process" not in endpoint or self._exited(endpoint):
            endpoint = self._plan(model, stable.version, stable.artifact_uri, "stable")
            stable = stable.model_copy(update={"endpoint": endpoint})
            self.store.set_stable(stable)  # intent first
        self._launch(model, endpoint, _pinned(stable.digest))
        if await self._ready(endpoint):
            return stable
        problem = self._exited(endpoint)
        raise TrafficError(problem or f"stable predictor not ready yet; see {endpoint['log']}")

    def plan_candidate(self, state: RolloutState) -> dict[str, Any]:
        endpoint = self._plan(
            state.model, state.candidate.version, state.candidate.artifact_uri, "canary"
        )
        return {"canary": endpoint}

    async def start_candidate(self, state: RolloutState) -> None:
        endpoint = state.backend_state.get("canary")
        if not endpoint:
            raise TrafficError("no candidate planned")
        if not Path(state.candidate.artifact_uri).is_dir():
            raise TrafficError(
                f"candidate artifact {state.candidate.artifact_uri} is not a local directory"
            )
        self._launch(
            state.model, endpoint, (*_pinned(state.candidate.digest), *self._extra(state.model))
        )

    async def candidate_ready(self, state: RolloutState) -> Readiness:
        endpoint = state.backend_state.get("canary")
        if not endpoint:
            return Readiness(False, "no candidate planned", gone=True)
        problem = self._exited(endpoint)
        if problem:
            return Readiness(False, problem, gone=True)
        if await self._ready(endpoint):
            return Readiness(True)
        if endpoint["process"] not in self._launched:
            await self.start_candidate(state)  # a restarted gate: adopt it or start it again
        return Readiness(False, f"candidate predictor not ready; see {endpoint['log']}")

    def candidate_url(self, state: RolloutState) -> str:
        url: str = state.backend_state["canary"]["http"]
        return url

    def stable_url(self, state: RolloutState) -> str | None:
        stable = self.store.stable(state.model)
        url = (stable.endpoint or {}).get("http") if stable else None
        return str(url) if url else None

    def previous_url(self, state: RolloutState) -> str | None:
        endpoint = (state.backend_state.get("previous") or {}).get("endpoint") or {}
        url = endpoint.get("http")
        return str(url) if url else None

    async def ensure_serving(self, previous: Stable) -> None:
        endpoint = previous.endpoint
        if endpoint is None or "process" not in endpoint:
            raise TrafficError(f"previous stable v{previous.version} has no local endpoint")
        self._launch(previous.model, endpoint, _pinned(previous.digest))  # if it exited
        if not await self._ready(endpoint):
            problem = self._exited(endpoint)
            raise TrafficError(problem or f"previous stable not ready yet; see {endpoint['log']}")

    def promoted_stable(self, state: RolloutState) -> Stable:
        canary = state.backend_state.get("canary")
        if canary is None:
            raise TrafficError("no canary to promote")
        return Stable(
            model=state.model,
            version=state.candidate.version,
            artifact_uri=state.candidate.artifact_uri,
            endpoint={**canary, "role": "stable"},
            digest=state.candidate.digest,
        )

    async def retire(self) -> list[str]:
        wanted = {
            str((s.endpoint or {}).get("process")) for s in self.store.stables() if s.endpoint
        }
        for state in self.store.rollouts(active_only=True):
            if state.phase in TERMINAL:
                continue
            canary = state.backend_state.get("canary") or {}
            previous = (state.backend_state.get("previous") or {}).get("endpoint") or {}
            for process in (canary.get("process"), previous.get("process")):
                if process:  # the canary, and the previous stable a watch keeps warm
                    wanted.add(str(process))
        stopped = []
        for process_id, pids in self._ours().items():
            if process_id in wanted:
                continue
            logger.info("retiring predictor %s (pids %s)", process_id, pids)
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            stopped.append(process_id)
        for process_id in stopped:
            launched = self._launched.pop(process_id, None)
            if launched is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    launched.wait(timeout=0)  # reaped now if already gone, else later
        return stopped

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
        for process in self._launched.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=0)


def _pinned(digest: str | None) -> tuple[str, ...]:
    """The predictor refuses any model file but the one with this digest."""
    return ("--model_digest", digest) if digest else ()


def _last_line(path: str) -> str:
    try:
        lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
    except OSError:
        return ""
    refusals = [line for line in lines if "refusing to start" in line]
    return (refusals or lines or [""])[-1]
