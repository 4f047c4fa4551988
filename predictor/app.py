"""Assembles the predictor from settings: model, metrics, faults, server."""

from __future__ import annotations

import logging
import socket
import sys
from typing import Any

from kserve import logging as kserve_logging

from predictor import signing
from predictor.artifact import ArtifactError
from predictor.faults import FaultInjector
from predictor.model import IrisModel
from predictor.processes import GroupReadiness, ProcessGroup, die_with_parent
from predictor.server import IrisModelServer
from predictor.settings import PredictorSettings

logger = logging.getLogger("predictor")


def configure_logging(level: str) -> None:
    kserve_logging.configure_logging()
    logging.getLogger().setLevel(level.upper())
    for name in ("kserve", "predictor", "uvicorn"):
        logging.getLogger(name).setLevel(level.upper())
    # KServe's per-request latency line: a formatted log record on every call.
    logging.getLogger("kserve.trace").setLevel(logging.WARNING)
    if not logging.getLogger("predictor").handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger("predictor").addHandler(handler)
        logging.getLogger("predictor").propagate = False


class PortBusyError(Exception):
    """A port the predictor must listen on cannot be bound; ``str()`` is one line."""


def trusted_keys(settings: PredictorSettings) -> list[signing.TrustedKey]:
    """The configured public keys, else the local development key; none is an error."""
    path = settings.trusted_keys
    if path is None:
        path = signing.dev_public_key_path()
        if not path.is_file():
            raise ArtifactError(
                settings.model_dir,
                "no trusted public keys: set --trusted_keys / PREDICTOR_TRUSTED_KEYS",
            )
        logger.warning("trusting the local development key %s (no --trusted_keys given)", path)
    try:
        keys = signing.read_trusted_keys(path)
    except signing.SigningError as exc:
        raise ArtifactError(path, str(exc).removeprefix(f"{path}: ")) from exc
    logger.info("trusted signing keys: %s", ", ".join(key.name for key in keys))
    return keys


def check_ports_free(settings: PredictorSettings, *, reuse_port: bool) -> None:
    """Bind each port once before announcing anything, so a busy port is one clear line
    and its own exit code (the servers bind again a moment later)."""
    ports = [("REST", settings.http_port, reuse_port)]
    if settings.enable_grpc:
        ports.append(("gRPC", settings.grpc_port, reuse_port))
        for index, port in enumerate(settings.grpc_process_ports):  # each process's own
            ports.append((f"process {index}'s gRPC", port, False))
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    for protocol, port, shared in ports:
        if port == 0:
            continue
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if shared:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                sock.bind((settings.host, port))
            except OSError as exc:
                raise PortBusyError(
                    f"cannot bind {protocol} to {settings.host}:{port}: "
                    f"{exc.strerror or exc} (is another server running?)"
                ) from exc


def build_model(settings: PredictorSettings) -> IrisModel:
    """Load and verify the artifact; raises ArtifactError before anything listens."""
    faults = FaultInjector(
        settings.fault_error_rate, settings.fault_latency_ms, settings.fault_seed
    )
    model = IrisModel(
        settings.model_name,
        settings.model_dir,
        max_rows=settings.max_rows,
        metrics_role=settings.role,
        faults=faults,
        batch_max_rows=settings.batch_max_rows,
        batch_max_wait_ms=settings.batch_max_wait_ms,
        fast_path=settings.fast_path,
        trusted_keys=trusted_keys(settings),
        expected_digest=settings.model_digest,
        allow_pickle=settings.allow_pickle,
    )
    model.load()
    faults.announce()
    return model


def serve(settings: PredictorSettings) -> None:
    """Serve until SIGTERM/SIGINT: this process, plus its siblings when there are several."""
    configure_logging(settings.log_level)
    model = build_model(settings)  # a bad artifact stops everything before anything listens
    count = settings.process_count()
    check_ports_free(settings, reuse_port=count > 1)
    siblings = None
    if count > 1:
        siblings = ProcessGroup(serve_sibling, (settings.model_dump(mode="json"),), count)
        siblings.start()
    logger.info(
        "serving %s on http://%s:%d (REST) and %s:%d (gRPC) with %d process%s",
        settings.model_name,
        settings.host,
        settings.http_port,
        settings.host,
        settings.grpc_port,
        count,
        "es" if count > 1 else "",
    )
    try:
        _serve_here(
            settings,
            model,
            reuse_port=count > 1,
            siblings=siblings,
            readiness=None if siblings is None else (siblings.readiness, 0),
        )
    finally:
        if siblings is not None:
            siblings.join(settings.grace_period + 5)


def serve_sibling(settings_data: dict[str, Any], index: int, readiness: GroupReadiness) -> None:
    """A sibling server process (spawned): verifies and loads the artifact itself."""
    die_with_parent()
    settings = PredictorSettings(**settings_data)
    configure_logging(settings.log_level)
    try:
        model = build_model(settings)
    except ArtifactError as exc:
        logger.error("server process %d refusing to start: %s", index, exc)
        sys.exit(3)
    _serve_here(settings, model, reuse_port=True, siblings=None, readiness=(readiness, index))


def _serve_here(
    settings: PredictorSettings,
    model: IrisModel,
    *,
    reuse_port: bool,
    siblings: ProcessGroup | None,
    readiness: tuple[GroupReadiness, int] | None,
) -> None:
    assert model.metrics is not None
    server = IrisModelServer(
        host=settings.host,
        metrics=model.metrics,
        access_log=settings.access_log,
        max_message_bytes=settings.max_message_mb * 1024 * 1024,
        max_body_bytes=int(settings.max_body_mb * 1024 * 1024),
        max_json_depth=settings.max_json_depth,
        fast_lane=settings.fast_lane,
        reuse_port=reuse_port,
        siblings=siblings,
        readiness=readiness,
        http_port=settings.http_port,
        grpc_port=settings.grpc_port,
        process_grpc_port=(
            settings.grpc_process_ports[0 if readiness is None else readiness[1]]
            if settings.grpc_process_ports
            else None
        ),
        max_threads=settings.max_threads,
        event_loop=settings.event_loop,
        enable_grpc=settings.enable_grpc,
        enable_latency_logging=False,
        grace_period=settings.grace_period,
    )
    try:
        server.start([model])
    except OSError as exc:  # gRPC's bind, if the port was taken after check_ports_free
        raise PortBusyError(str(exc)) from exc
