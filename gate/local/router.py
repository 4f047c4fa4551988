"""``python -m gate.local.router``: the local traffic splitter (what Knative does on a cluster).

One HTTP port proxies REST, one gRPC port proxies gRPC, per model: the model comes from
the REST path or from field 1 of the gRPC request. Inference calls go to that model's
canary with the configured probability, everything else (health, metadata) to its
stable; calls that name no model go to the first model's stable. A canary inference call
that cannot connect is retried once on stable (inference has no side effects) and counted
as a canary error; an answer from a running canary, even a 5xx, is passed on as it is.

The admin API (:mod:`gate.local.admin`) listens on its own loopback port and needs
``Authorization: Bearer $ROUTER_ADMIN_TOKEN``. Both client ports are proxies on asyncio
protocols with no per-request logging, on one event loop (uvloop's when installed):
:mod:`gate.local.http_proxy` (streaming HTTP/1.1, keep-alive pools per backend) and
:mod:`gate.local.grpc_proxy` (HTTP/2 frames moved between connections, messages never
decoded); :mod:`gate.local.route_table` holds the routes. A request line and headers (an
HTTP/2 connection preface) must arrive within ``--head-timeout-s``; idle REST client
connections close after ``--keepalive-s``.

Mirroring (the gate's shadow phase replays live requests to a candidate and compares
answers per request id): with ``--events-url`` (the gate's ingestion endpoint, e.g.
http://127.0.0.1:8000/v1/events; the POSTs carry ``Authorization: Bearer
$ROUTER_EVENTS_TOKEN``), a model whose routes say ``"mirror": true`` has each REST
inference exchange (``:predict``, ``/infer``) its stable or canary answered 200 sent to the
gate as the two CloudEvents KServe's InferenceService logger sends on a cluster
(``org.kubeflow.serving.inference.request`` and ``.response``, with its extension
attributes ``inferenceservicename``, ``namespace``, ``component``, ``endpoint`` =
default|canary, ``metadata`` and ``recordedtime``, and the request's content type on both),
so the gate ingests local and cluster traffic one way. The id is the client's ``ce-id``,
else its ``x-request-id``, else a new one. Where KServe posts one event per call (binary
mode), the router posts CloudEvents JSON batches (``application/cloudevents-batch+json``,
bodies as ``data_base64``) of up to 256 exchanges, at most 100 ms after the first waits:
the encoding and posting share the proxy's event loop, and per-event calls would cost more
than the requests. A busy or absent gate never costs clients: only bodies up to 64 KiB
(request, not chunked) and 256 KiB (answer) are mirrored, at most 10,000 exchanges (and 64
MiB of them) wait, a failed POST's batch is dropped (not retried: it would age while newer
ones are dropped) and the next waits a back-off (1 s doubling to 30 s), with one warning
per streak of failures. Nothing is dropped silently: ``GET /router/routes/{model}`` shows
per model in ``mirror_stats`` the exchanges ``sent``, ``dropped`` (the queue was full),
``lost`` (in a failed POST, or still queued at stop), ``failed_batches``, ``ids_replaced``
(a client id over 128 characters or outside ``[A-Za-z0-9._:-]``) and ``skipped`` by reason
(``chunked``, ``request_too_big``, ``response_too_big``, ``not_200``, ``incomplete``), so
the gate can tell a thin sample from a quiet model. At a stop what is queued gets 2 s to go
out. gRPC is not mirrored: KServe's logger does not log gRPC either.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Generator, Sequence
from typing import Any

import uvicorn
from pydantic import ValidationError

from gate.local.admin import TOKEN_MIN_CHARS, AdminApp, validation_message
from gate.local.grpc_proxy import GrpcProxy
from gate.local.http_proxy import HEAD_TIMEOUT_S, KEEPALIVE_S, HttpProxy
from gate.local.mirror import STOP_FLUSH_S, EventEmitter
from gate.local.mirror import TOKEN_MIN_CHARS as EVENTS_TOKEN_MIN_CHARS
from gate.local.route_table import MODEL_NAME, BackendSpec, Routes, RoutesSpec, check_http_url

logger = logging.getLogger("gate.local.router")
GRACE_S = 10  # requests in flight at a stop signal get this long to finish


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signals alone: one handler stops every server."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def _config(app: Any) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        access_log=False,
        log_level="warning",
        lifespan="off",
        ws="none",
        timeout_graceful_shutdown=GRACE_S,
    )


async def serve(
    routes: Routes,
    initial: tuple[str, RoutesSpec] | None,
    token: str,
    sockets: tuple[socket.socket, socket.socket, socket.socket],
    timeouts: tuple[float, float] = (HEAD_TIMEOUT_S, KEEPALIVE_S),
) -> None:
    loop = asyncio.get_running_loop()
    http_sock, grpc_sock, admin_sock = sockets
    proxy = HttpProxy(routes, loop, *timeouts)
    grpc_proxy = GrpcProxy(routes, loop, timeouts[0])
    admin = _Server(_config(AdminApp(routes, token)))
    http_server = await loop.create_server(proxy, sock=http_sock, backlog=2048)
    grpc_server = await loop.create_server(grpc_proxy, sock=grpc_sock, backlog=2048)
    stopped = asyncio.Event()
    stopping: list[asyncio.Task[Any]] = []

    def stop() -> None:
        if stopping:  # a second signal: stop waiting for requests in flight
            admin.force_exit = True
            stopped.set()
            return
        admin.should_exit = True
        http_server.close()  # no new connections; those open finish what they started
        grpc_server.close()
        stopping.append(loop.create_task(grpc_proxy.drain(GRACE_S)))
        stopping.append(loop.create_task(proxy.drain(GRACE_S)))
        drained = asyncio.gather(*stopping, return_exceptions=True)
        drained.add_done_callback(lambda _: stopped.set())

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    if routes.emitter is not None:
        routes.emitter.start()
    if initial is not None:
        routes.apply(*initial)
    # What is loaded by now (modules, classes, pydantic schemas: ~100k objects) is never
    # garbage: frozen, a full collection does not walk it. Otherwise the mirror's records,
    # which outlive a request by up to 100 ms, trigger full collections of ~30 ms each,
    # a stall every client in flight sees in its p99.
    gc.freeze()
    logger.info(
        "router: REST %s, gRPC %s, admin %s",
        _address(http_sock),
        _address(grpc_sock),
        _address(admin_sock),
    )
    try:
        await asyncio.gather(
            _closing((http_server, grpc_server), stopped),
            admin.serve(sockets=[admin_sock]),
        )
    finally:
        await asyncio.gather(*stopping, return_exceptions=True)
        if routes.emitter is not None:  # after the drain: the last answers are queued too
            await routes.emitter.aclose(STOP_FLUSH_S)
        await routes.aclose()


async def _closing(servers: tuple[asyncio.Server, ...], stopped: asyncio.Event) -> None:
    """Serve until the connections are drained (or a second signal)."""
    try:
        await stopped.wait()
    finally:
        for server in servers:
            server.close()


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


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed (the gate's dependencies bring it on Linux and macOS): the
    proxy's per-request cost is mostly the event loop's."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def set_scheduling(policy: str, mirroring: bool) -> str:
    """Run the router as a ``SCHED_BATCH`` task (Linux; no privilege needed) when
    ``policy`` is ``batch``, or ``auto`` and no events URL is set (nothing can be
    mirrored); returns the policy in force, for the log.

    A proxy does a few microseconds of work per segment. Woken for each one ahead of
    whatever runs (the predictor it feeds, the client), it preempts them every time; on a
    saturated machine those context switches are a large part of its cost. As a batch
    task it is not woken ahead of a running task: it runs its turn and drains everything
    that arrived meanwhile. On an idle core it runs at once, so a lone request waits for
    nothing. Measured side by side (two routers in front of one 2-process predictor,
    alternating 3 s wrk runs, forest, REST v2, 2 cores): at 64 connections 20 % less
    router CPU a request, +10 % req/s and a lower p99 (36.6 against 40.4 ms); at one
    connection no difference (p50 0.66 against 0.65 ms).

    Not while mirroring: the event emitter's bursts (a batch of up to 256 exchanges
    encoded and posted on the same loop) then wait for the running task's slice too, and
    requests queued behind them see it. ``test_mirroring_adds_at_most_10_percent_to_p99``
    measured mirror-on/off p99 ratios of 1.12, 0.99 and 1.07 as a batch task against
    0.95, 0.94 and 1.08 with the default policy (16 clients)."""
    batch = getattr(os, "SCHED_BATCH", None)
    if policy == "normal" or (policy == "auto" and mirroring) or batch is None:
        return "normal"
    try:
        os.sched_setscheduler(0, batch, os.sched_param(0))
    except OSError as exc:  # (a seccomp profile may refuse it: serve all the same)
        return f"normal (SCHED_BATCH refused: {exc})"
    return "batch"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gate.local.router",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="environment: ROUTER_ADMIN_TOKEN (required, at least "
        f"{TOKEN_MIN_CHARS} characters): bearer token of the admin API; "
        "ROUTER_EVENTS_TOKEN (required with --events-url, at least "
        f"{EVENTS_TOKEN_MIN_CHARS} characters): bearer token the router sends to the events URL",
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
    parser.add_argument(
        "--head-timeout-s",
        type=float,
        default=HEAD_TIMEOUT_S,
        help="a REST request's line and headers must arrive within this many seconds "
        f"(default {HEAD_TIMEOUT_S:.0f})",
    )
    parser.add_argument(
        "--keepalive-s",
        type=float,
        default=KEEPALIVE_S,
        help="an idle client connection is closed after this many seconds "
        f"(default {KEEPALIVE_S:.0f})",
    )
    parser.add_argument(
        "--scheduling",
        choices=("auto", "batch", "normal"),
        default="auto",
        help="batch: the router runs as a SCHED_BATCH task on Linux, draining every "
        "pending request per turn instead of preempting the predictors for each; normal: "
        "the default policy; auto (default): batch unless --events-url is set",
    )
    parser.add_argument("--stable-http", default="", help="initial stable's REST base URL")
    parser.add_argument("--stable-grpc", default="", help="initial stable's gRPC host:port")
    parser.add_argument(
        "--stable-grpc-processes",
        default="",
        metavar="HOST:PORT,...",
        help="the initial stable's gRPC port of each of its processes (the predictor's "
        "--grpc_process_ports), comma-separated: calls are then multiplexed over two "
        "connections per process instead of one connection per client (default: none)",
    )
    parser.add_argument(
        "--events-url",
        default="",
        help="the gate's event ingestion URL (http:// or https://), where models with "
        '"mirror": true send their REST inference exchanges; without it no model can mirror',
    )
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
    if not (0 < args.head_timeout_s <= 3600 and 0 < args.keepalive_s <= 3600):
        parser.error("--head-timeout-s and --keepalive-s must be within (0, 3600]")
    if not MODEL_NAME.match(args.model):
        parser.error(f"--model must match {MODEL_NAME.pattern}")
    emitter = None
    if args.events_url:
        try:
            check_http_url(args.events_url)
        except ValueError as exc:
            parser.error(f"--events-url {exc}")
        try:
            emitter = EventEmitter(args.events_url, os.environ.get("ROUTER_EVENTS_TOKEN", ""))
        except ValueError:
            print(
                f"router: with --events-url, ROUTER_EVENTS_TOKEN must be set (at least "
                f"{EVENTS_TOKEN_MIN_CHARS} printable ASCII characters, no spaces)",
                file=sys.stderr,
            )
            return 2
    initial = None
    if args.stable_grpc_processes and not args.stable_grpc:
        parser.error("--stable-grpc-processes needs --stable-http and --stable-grpc")
    if args.stable_http or args.stable_grpc:
        if not (args.stable_http and args.stable_grpc):
            parser.error("--stable-http and --stable-grpc go together")
        processes = tuple(t.strip() for t in args.stable_grpc_processes.split(",") if t.strip())
        try:
            stable = BackendSpec(
                http=args.stable_http, grpc=args.stable_grpc, grpc_processes=processes
            )
        except ValidationError as exc:
            parser.error(f"initial stable: {validation_message(exc)}")
        initial = (args.model, RoutesSpec(stable=stable))
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logger.info("scheduling: %s", set_scheduling(args.scheduling, bool(args.events_url)))
    bound: list[socket.socket] = []
    for host, port in (
        (args.host, args.http_port),
        (args.host, args.grpc_port),
        ("127.0.0.1", args.admin_port),
    ):
        try:
            bound.append(_bind(host, port))
        except OSError as exc:
            for sock in bound:
                sock.close()
            print(f"router: cannot bind {host}:{port}: {exc}", file=sys.stderr)
            return 1
    sockets = (bound[0], bound[1], bound[2])
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            timeouts = (args.head_timeout_s, args.keepalive_s)
            runner.run(serve(Routes(emitter), initial, token, sockets, timeouts))
    except OSError as exc:
        print(f"router: {exc}", file=sys.stderr)
        return 1
    finally:
        for sock in sockets:
            sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
