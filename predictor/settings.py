"""Predictor settings: KServe's flag names, plus ours, each also settable as PREDICTOR_<NAME>."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class PredictorSettings(BaseSettings):
    """Built once in ``main()``; nothing reads the environment on the request path."""

    model_config = SettingsConfigDict(
        env_prefix="PREDICTOR_", extra="forbid", use_attribute_docstrings=True
    )

    model_name: str = "iris"
    """Name in the URL paths (``/v1/models/<name>:predict``) and in metric labels."""
    model_dir: Path = Path("/mnt/models")
    """Artifact directory (model file, ``model.json``, ``model.json.sig``); KServe mounts
    storageUri here."""
    trusted_keys: Path | None = None
    """Public keys whose signature on ``model.json`` is accepted: a file, one base64 raw
    Ed25519 key per line (``# comments`` allowed). Unset: ``.irisgate/keys/dev.pub`` if it
    exists (the local development key), else nothing is trusted and nothing is served."""
    model_digest: str | None = Field(None, pattern=r"^sha256:[0-9a-f]{64}$")
    """Pinned model file digest (``sha256:<hex>``); a different model file is refused."""
    allow_pickle: bool = False
    """Load pickle (format ``joblib``) artifacts. A pickle runs code when loaded: only for
    artifacts you would run as a program. Logged as a warning."""
    host: str = "127.0.0.1"
    """Address REST and gRPC bind to. Loopback by default; containers pass 0.0.0.0."""
    http_port: int = Field(8080, ge=0, le=65535)
    """REST port (KServe v1 and Open Inference Protocol v2)."""
    grpc_port: int = Field(8081, ge=0, le=65535)
    """gRPC port (Open Inference Protocol v2)."""
    grpc_process_ports: list[int] = Field(default_factory=list, max_length=64)
    """A gRPC port of its own for each server process, besides the shared ``grpc_port``:
    process i also listens on the i-th (as many ports as processes; in the environment a
    JSON list). A proxy that multiplexes many clients' calls over a few connections (the
    local router) needs them, since the kernel spreads connections to the shared port
    unevenly when there are only a few."""
    enable_grpc: bool = True
    """Serve gRPC. Knative allows one port per container, so a REST-only deployment turns it off."""
    workers: int | Literal["auto"] = "auto"
    """Server processes, each serving REST and gRPC on the shared ports (SO_REUSEPORT);
    ``auto``: one per CPU this container may use (its cgroup CPU limit)."""
    event_loop: Literal["auto", "asyncio", "uvloop"] = "auto"
    """Event loop of every server process (KServe's --event-loop): ``auto`` is uvloop when
    installed (the predictor extra brings it outside Windows), else asyncio's. Stock KServe
    0.21 hands the flag to uvicorn only for ``--workers`` REST processes; its gRPC server
    runs on asyncio's loop whatever the flag says."""
    max_threads: int = Field(4, ge=1)
    """gRPC thread pool size (KServe's --max_threads)."""
    role: Literal["stable", "canary"] = "stable"
    """Label on every metric, so the gate can compare stable with canary."""
    max_rows: int = Field(1024, ge=1)
    """Most rows one request may carry; more is a 400 / INVALID_ARGUMENT."""
    batch_max_rows: int = Field(256, ge=0)
    """Adaptive batching: most rows stacked into one model call; 0 turns batching off."""
    batch_max_wait_ms: float = Field(0.0, ge=0.0)
    """Adaptive batching: how long a model call may wait for more requests (0: never)."""
    fast_path: bool = True
    """Predict with array maths checked equal to scikit-learn at load; else scikit-learn."""
    fast_lane: bool = True
    """Serve the REST inference routes without FastAPI's routing and request models, and
    plain gRPC ModelInfer calls without KServe's servicer types (same answers, byte for
    byte); false: every request goes through KServe's FastAPI app and servicer."""
    max_message_mb: int = Field(16, ge=1)
    """Largest gRPC message accepted or sent, in MiB."""
    max_body_mb: float = Field(1.0, gt=0.0, le=1024.0)
    """Largest REST inference body accepted, in MiB; more is a 413, refused from the
    Content-Length header (or while a chunked body streams in) before it is read."""
    max_json_depth: int = Field(32, ge=4, le=512)
    """Deepest JSON nesting accepted in an inference body; deeper is a 400."""
    fault_error_rate: float = Field(0.0, ge=0.0, le=1.0)
    """Fraction of requests failed on purpose (500 / UNAVAILABLE). For rollback rehearsals."""
    fault_latency_ms: float = Field(0.0, ge=0.0)
    """Latency added to every request on purpose, in ms. For rollback rehearsals."""
    fault_seed: int | None = None
    """Seed for the fault injector, for repeatable rehearsals."""
    fault_start_delay_s: float = Field(0.0, ge=0.0, le=86_400.0)
    """Seconds to wait before loading the model and binding: a predictor slow to get
    ready, for rehearsals of the gate's readiness deadline."""
    access_log: bool = False
    """One log line per request. Off by default: it costs about a quarter of the throughput."""
    grace_period: int = Field(30, ge=0)
    """Seconds in-flight requests get to finish after SIGTERM."""
    log_level: str = "INFO"
    """Python log level for the predictor, KServe and uvicorn loggers."""

    @model_validator(mode="after")
    def _check_event_loop(self) -> PredictorSettings:
        if self.event_loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
            raise ValueError("event_loop uvloop: uvloop is not installed (pip install uvloop)")
        return self

    @model_validator(mode="after")
    def _check_workers(self) -> PredictorSettings:
        if isinstance(self.workers, int) and not 1 <= self.workers <= 64:
            raise ValueError("workers must be between 1 and 64, or auto")
        if self.process_count() > 1 and 0 in (self.http_port, self.grpc_port):
            raise ValueError("several workers share fixed ports: give --http_port and --grpc_port")
        return self

    @model_validator(mode="after")
    def _check_process_ports(self) -> PredictorSettings:
        ports = self.grpc_process_ports
        if not ports:
            return self
        if not self.enable_grpc:
            raise ValueError("grpc_process_ports: gRPC is off (enable_grpc false)")
        if len(ports) != self.process_count():
            raise ValueError(
                f"grpc_process_ports: {len(ports)} ports for {self.process_count()} "
                "server processes (one port each)"
            )
        if not all(0 < port < 65536 for port in ports):
            raise ValueError("grpc_process_ports: each port must be within 1..65535")
        taken = {self.http_port, self.grpc_port} - {0}  # (0: a free port, never a clash)
        if len({*ports, *taken}) != len(ports) + len(taken):
            raise ValueError(
                "grpc_process_ports: ports must differ from each other, --http_port and --grpc_port"
            )
        return self

    def process_count(self) -> int:
        if self.workers == "auto":
            from predictor.processes import available_cpus

            return min(available_cpus(), 64)
        return self.workers
