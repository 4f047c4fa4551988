"""``python -m load_tests``: a headless locust run with SLO checks and reports.

Exit codes: 0 all SLOs met, 1 an SLO breached (or nothing got through), 2 bad usage or
locust failed to run.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from rich.console import Console
from rich.table import Table

from load_tests.command import headless_command
from load_tests.labels import TOKEN_ENV
from load_tests.slo import judge, read_stats

USERS = {"rest-v1": "RestV1User", "rest-v2": "RestV2User", "grpc": "GrpcV2User"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m load_tests", description=__doc__)
    parser.add_argument(
        "--host",
        required=True,
        help="REST base URL (http://127.0.0.1:8080) or, for grpc, host:port",
    )
    parser.add_argument("--protocol", choices=sorted(USERS), required=True)
    parser.add_argument("--users", type=int, default=10, help="concurrent users (default 10)")
    parser.add_argument("--spawn-rate", type=float, default=10, help="users started per second")
    parser.add_argument("--run-time", default="30s", help="e.g. 30s, 2m (default 30s)")
    parser.add_argument("--max-p99-ms", type=float, default=None, help="SLO: p99 latency")
    parser.add_argument(
        "--max-error-rate", type=float, default=None, help="SLO: failed requests / all requests"
    )
    parser.add_argument(
        "--report-dir",
        type=Path,
        default=Path("load-test-report"),
        help="CSV and HTML reports land here (default: load-test-report)",
    )
    parser.add_argument("--model-name", default="iris")
    parser.add_argument("--batch-size", type=int, default=1, help="rows per request")
    parser.add_argument(
        "--invalid-share",
        type=float,
        default=0.02,
        help="share of deliberately invalid requests (default 0.02)",
    )
    parser.add_argument(
        "--traffic",
        choices=["uniform", "labelled"],
        default="uniform",
        help="uniform: random rows in the features' ranges (default); labelled: Iris "
        "flowers jittered, petal width drifted +0.15 cm (load_tests/pool.py)",
    )
    parser.add_argument(
        "--labels-url",
        default="",
        help="REST only: post the true labels of half the answered requests, 5 s later, "
        f"to this URL (a gate's /v1/feedback; token in {TOKEN_ENV}); needs --traffic "
        "labelled",
    )
    return parser


def locust_command(args: argparse.Namespace, prefix: Path) -> list[str]:
    host = args.host
    extra: list[str] = []
    if args.protocol == "grpc":
        target = host.split("://")[-1].rstrip("/")
        extra = ["--grpc-target", target]
        host = f"http://{target}"  # locust wants a URL; the gRPC user uses --grpc-target
    return headless_command(
        [USERS[args.protocol]],
        users=args.users,
        spawn_rate=args.spawn_rate,
        host=host,
        report_prefix=prefix,
        options=[
            "--run-time",
            args.run_time,
            "--stop-timeout",
            "5",
            "--model-name",
            args.model_name,
            "--batch-size",
            str(args.batch_size),
            "--invalid-share",
            str(args.invalid_share),
            "--traffic",
            args.traffic,
            *(["--labels-url", args.labels_url] if args.labels_url else []),
            *extra,
        ],
    )


def run_locust(command: Sequence[str], log: Path) -> tuple[int, int]:
    """(locust's exit code, the signal that stopped us or 0). Locust runs as a child that
    stops with us: a SIGTERM or SIGINT sent to this process alone (``kill`` from a script,
    a shell without job control) is passed on, and we wait for it to write its figures,
    instead of leaving it running with nobody to stop it."""
    received = 0
    with log.open("w") as handle:
        child = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT)

        def forward(signum: int, frame: FrameType | None) -> None:
            nonlocal received
            received = signum
            if child.poll() is None:
                child.send_signal(signum)

        previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            code = child.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if child.poll() is None:  # (an exception while waiting)
                child.kill()
                child.wait()
    return code, received


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console()
    args.report_dir.mkdir(parents=True, exist_ok=True)
    prefix = args.report_dir / args.protocol
    log = args.report_dir / f"{args.protocol}-locust.log"
    code, received = run_locust(locust_command(args, prefix), log)
    if received:
        console.print(f"[yellow]stopped by signal {received}; locust stopped too; see {log}[/]")
        return 128 + received
    stats_csv = Path(f"{prefix}_stats.csv")
    if code != 0 or not stats_csv.exists():
        console.print(f"[red]locust failed (exit {code}); see {log}[/]")
        return 2
    rows = read_stats(stats_csv)
    total = rows[-1]
    result = judge(total, args.max_p99_ms, args.max_error_rate)

    table = Table(title=f"{args.protocol} against {args.host}, {args.users} users, {args.run_time}")
    for column in ("request", "count", "failures", "req/s", "median ms", "p99 ms"):
        table.add_column(column, justify="left" if column == "request" else "right")
    for row in rows:
        table.add_row(
            row.name or "-",
            str(row.requests),
            str(row.failures),
            f"{row.rps:.1f}",
            f"{row.median_ms:.0f}",
            f"{row.p99_ms:.0f}",
        )
    console.print(table)
    slos = []
    if args.max_p99_ms is not None:
        slos.append(f"p99 <= {args.max_p99_ms:.0f} ms")
    if args.max_error_rate is not None:
        slos.append(f"error rate <= {args.max_error_rate}")
    verdict = (
        "[green]SLOs met[/]"
        if result.passed
        else "[red]SLO breached: " + "; ".join(result.breaches) + "[/]"
    )
    console.print(
        f"{verdict} ({', '.join(slos) or 'no SLO given'}); reports: "
        f"{prefix}_stats.csv, {prefix.with_suffix('.html')}"
    )
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
