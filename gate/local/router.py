"""``python -m gate.local.router``: the local traffic splitter (what Knative does on a cluster).

One HTTP port proxies REST, one gRPC port proxies gRPC, per model: the model comes from
the REST path or from field 1 of the gRPC request. Inference calls go to that model's
canary with the configured probability, everything else (health, metadata) to its
stable; calls that name no model go to the first model's stable. A canary inference call
that cannot connect is retried once on stable (inference has no side effects) and counted
as a canary error; an answer from a running canary, even a 5xx, is passed on as it is.

The admin API (:mod:`gate.local.admin`) listens on its own loopback port and needs
``Authorization: Bearer $ROUTER_ADMIN_TOKEN``. The pieces: :mod:`gate.local.http_proxy`,
:mod:`gate.local.grpc_proxy` (byte-level, never decodes a message),
:mod:`gate.local.route_table`; this module binds them and runs all three servers on one
event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Generator, Sequence
from typing import Any

import uvicorn
from grpc import aio
from pydantic import ValidationError

from gate.local.admin import TOKEN_MIN_CHARS, AdminApp, validation_message
from gate.local.grpc_proxy import GrpcPassthrough
from gate.local.http_proxy import HttpProxy
from gate.local.route_table import MODEL_NAME, BackendSpec, Routes, RoutesSpec

logger = logging.getLogger("gate.local.router")


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signals alone: one handler stops every server."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def _config(app: Any, *, proxy: bool) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        access_log=False,
        log_level="warning",
        lifespan="off",
        ws="none",
        # the proxy passes the upstream's date and server on instead of adding its own
        server_header=not proxy,
        date_header=not proxy,
        timeout_graceful_shutdown=10,
    )


async def serve(
    routes: Routes,
    initial: tuple[str, RoutesSpec] | None,
    token: str,
    sockets: tuple[socket.socket, socket.socket],
    grpc_address: str,
) -> None:
    proxy = _Server(_config(HttpProxy(routes), proxy=True))
    admin = _Server(_config(AdminApp(routes, token), proxy=False))
    grpc_server = aio.server()
    grpc_server.add_generic_rpc_handlers((GrpcPassthrough(routes),))
    if grpc_server.add_insecure_port(grpc_address) == 0:
        raise OSError(f"cannot bind gRPC to {grpc_address}")
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task[None]] = []

    def stop() -> None:
        if stopping:  # a second signal: stop waiting for requests in flight
            proxy.force_exit = admin.force_exit = True
            return
        proxy.should_exit = admin.should_exit = True
        stopping.append(loop.create_task(grpc_server.stop(grace=10)))

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    if initial is not None:
        routes.apply(*initial)
    await grpc_server.start()
    http_sock, admin_sock = sockets
    logger.info(
        "router: REST %s, gRPC %s, admin %s",
        _address(http_sock),
        grpc_address,
        _address(admin_sock),
    )
    try:
        await asyncio.gather(
            proxy.serve(sockets=[http_sock]),
            admin.serve(sockets=[admin_sock]),
            grpc_server.wait_for_termination(),
        )
    finally:
        if not stopping:
            await grpc_server.stop(grace=None)
        await asyncio.gather(*stopping, return_exceptions=True)
        await routes.aclose()


def _address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _bind(host: str, port: int) -> socket.socket:
    # proto must say TCP: asyncio sets TCP_NODELAY only on accepted sockets whose proto
    # is IPPROTO_TCP, and socket.create_server's is 0 (then every response waits ~40 ms
    # for a delayed ACK).
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gate.local.router",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="environment: ROUTER_ADMIN_TOKEN (required, at least "
        f"{TOKEN_MIN_CHARS} characters): bearer token of the admin API",
    )
    parser.add_argument("--host", default="127.0.0.1", help="client-facing bind address")
    parser.add_argument("--http-port", type=int, default=8000, help="REST port (default 8000)")
    parser.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (default 8001)")
    parser.add_argument(
        "--admin-port",
        type=int,
        default=8002,
        help="admin API port, always on 127.0.0.1 (default 8002)",
    )
    parser.add_argument(
        "--model", default="iris", help="model the --stable-* routes belong to (default iris)"
    )
    parser.add_argument("--stable-http", default="", help="initial stable's REST base URL")
    parser.add_argument("--stable-grpc", default="", help="initial stable's gRPC host:port")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    token = os.environ.get("ROUTER_ADMIN_TOKEN", "")
    if len(token) < TOKEN_MIN_CHARS:
        print(
            f"router: ROUTER_ADMIN_TOKEN must be set (at least {TOKEN_MIN_CHARS} characters)",
            file=sys.stderr,
        )
        return 2
    if not MODEL_NAME.match(args.model):
        parser.error(f"--model must match {MODEL_NAME.pattern}")
    initial = None
    if args.stable_http or args.stable_grpc:
        if not (args.stable_http and args.stable_grpc):
            parser.error("--stable-http and --stable-grpc go together")
        try:
            stable = BackendSpec(http=args.stable_http, grpc=args.stable_grpc)
        except ValidationError as exc:
            parser.error(f"initial stable: {validation_message(exc)}")
        initial = (args.model, RoutesSpec(stable=stable))
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("httpx", "httpcore"):  # one INFO line per proxied request otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)
    grpc_host = f"[{args.host}]" if ":" in args.host else args.host
    try:
        http_sock = _bind(args.host, args.http_port)
    except OSError as exc:
        print(f"router: cannot bind {args.host}:{args.http_port}: {exc}", file=sys.stderr)
        return 1
    try:
        sockets = (http_sock, _bind("127.0.0.1", args.admin_port))
    except OSError as exc:
        http_sock.close()
        print(f"router: cannot bind 127.0.0.1:{args.admin_port}: {exc}", file=sys.stderr)
        return 1
    try:
        asyncio.run(serve(Routes(), initial, token, sockets, f"{grpc_host}:{args.grpc_port}"))
    except OSError as exc:
        print(f"router: {exc}", file=sys.stderr)
        return 1
    finally:
        for sock in sockets:
            sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
