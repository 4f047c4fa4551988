"""``python -m benchmarks.soak``: a long run at a steady share of capacity through the router.

Not part of CI (it takes ``--minutes``, 10 by default). Starts the predictor (``--model``,
default settings) with the local router in front, as the embedded default runs them,
measures what the router can carry (REST v2 and gRPC, 64 connections, 10 s each), then
drives both protocols at once, each at ``--share`` / 2 of its own capacity (80 % in all by
default) at a fixed request rate (h2load ``--rps``; ``--h1`` for REST), while sampling the
resident memory of every process (router, predictor and its worker processes).

Verdicts: no failed request (transport errors, non-2xx, gRPC answers short of a good
answer's size), and each process's RSS after ``--warmup-s`` within 10 % of its lowest
sample. Figures go to ``benchmarks/SOAK.md`` and ``benchmarks/soak.json``; exit 0 when
both verdicts hold, 1 when one does not, 2 when a load generator is missing.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import threading
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from benchmarks import servers
from benchmarks.generators import (
    GRPC_PATH,
    grpc_frame,
    grpc_request,
    read_h2load,
    rest_body,
    rest_path,
    run_tool,
)

REPO = Path(__file__).resolve().parent.parent
RSS_TOLERANCE = 0.10
CAPACITY_CONNECTIONS = 64
SOAK_CONNECTIONS = 32


@dataclass
class Load:
    protocol: str
    requests: int
    failed: int
    seconds: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def _h2load(
    protocol: str, port: int, connections: int, seconds: int, work: Path, rps: float, answer: int
) -> Load:
    """One h2load run; ``rps`` 0 means as fast as it goes, else per connection."""
    if protocol == "grpc":
        body = work / "grpc.bin"
        body.write_bytes(grpc_frame(grpc_request().SerializeToString()))
        flags = ["-H", "content-type: application/grpc", "-H", "te: trailers"]
        url = f"http://127.0.0.1:{port}{GRPC_PATH}"
    else:
        body = work / f"{protocol}.json"
        body.write_bytes(rest_body(protocol))
        flags = ["--h1", "-H", "content-type: application/json"]
        url = f"http://127.0.0.1:{port}{rest_path(protocol)}"
    command = ["h2load", f"-c{connections}", "-m1", "-t1", f"-D{seconds}", "-d", str(body)]
    if rps:
        command.append(f"--rps={rps:.2f}")
    summary = read_h2load(run_tool([*command, *flags, url], seconds))
    failed = summary.failed + summary.not_2xx  # answered, but not 2xx: failed too
    if protocol == "grpc" and answer:  # a failed call is a 200 without the answer's bytes
        failed += max(0, summary.succeeded - summary.data_bytes // answer)
    return Load(protocol, summary.done, failed, summary.seconds)


class RssSampler(threading.Thread):
    """Every ``period`` seconds: the RSS (MiB) of each process in the servers' trees."""

    def __init__(self, fleet: list[servers.Server], period: float) -> None:
        super().__init__(daemon=True)
        self.fleet = fleet
        self.period = period
        self.samples: list[tuple[float, dict[str, float]]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        start = time.monotonic()
        while not self.stop.wait(self.period):
            row: dict[str, float] = {}
            for server in self.fleet:
                assert server.process is not None
                try:
                    root = psutil.Process(server.process.pid)
                    tree = [root, *root.children(recursive=True)]
                except psutil.NoSuchProcess:
                    continue
                for proc in tree:
                    try:
                        row[f"{server.kind} pid {proc.pid}"] = proc.memory_info().rss / 2**20
                    except psutil.NoSuchProcess:
                        continue
            self.samples.append((time.monotonic() - start, row))


def rss_verdicts(
    samples: list[tuple[float, dict[str, float]]], warmup_s: float
) -> dict[str, dict[str, float]]:
    """Per process, after warm-up: lowest, highest, and the growth (highest / lowest - 1)."""
    after = [row for at, row in samples if at >= warmup_s]
    out: dict[str, dict[str, float]] = {}
    for name in sorted({n for row in after for n in row}):
        values = [row[name] for row in after if name in row]
        low, high = min(values), max(values)
        out[name] = {"low_mb": low, "high_mb": high, "growth": high / low - 1 if low else 0.0}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--share", type=float, default=0.8, help="of measured capacity")
    parser.add_argument("--model", choices=("forest", "logreg"), default="forest")
    parser.add_argument("--warmup-s", type=float, default=60.0)
    parser.add_argument("--sample-s", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks")
    args = parser.parse_args(argv)
    if shutil.which("h2load") is None:
        print("soak: h2load is missing (apt-get install nghttp2-client)", file=sys.stderr)
        return 2
    from benchmarks.__main__ import make_artifacts

    work = REPO / ".bench" / "soak"
    work.mkdir(parents=True, exist_ok=True)
    artifact = make_artifacts(work / "artifacts", [args.model])[args.model]
    predictor = servers.irisgate(args.model, artifact, work, [])
    router = servers.router(predictor, work)
    fleet = [predictor, router]
    seconds = max(10, round(args.minutes * 60))
    with servers.running(fleet, "soak"):
        answer = router.grpc_answer_bytes
        capacity = {
            p: _h2load(p, port, CAPACITY_CONNECTIONS, 10, work, 0, answer)
            for p, port in (("rest-v2", router.http_port), ("grpc", router.grpc_port))
        }
        print(
            "soak: capacity through the router: "
            + ", ".join(f"{p} {load.rps:,.0f} req/s" for p, load in capacity.items()),
            flush=True,
        )
        rates = {p: args.share / 2 * load.rps / SOAK_CONNECTIONS for p, load in capacity.items()}
        sampler = RssSampler(fleet, args.sample_s)
        sampler.start()
        results: dict[str, Load] = {}

        def drive(protocol: str, port: int) -> None:
            results[protocol] = _h2load(
                protocol, port, SOAK_CONNECTIONS, seconds, work, rates[protocol], answer
            )

        threads = [
            threading.Thread(target=drive, args=("rest-v2", router.http_port)),
            threading.Thread(target=drive, args=("grpc", router.grpc_port)),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        sampler.stop.set()
        sampler.join()
    return report(args, capacity, results, sampler.samples)


def report(
    args: argparse.Namespace,
    capacity: dict[str, Load],
    results: dict[str, Load],
    samples: list[tuple[float, dict[str, float]]],
) -> int:
    rss = rss_verdicts(samples, args.warmup_s)
    failed = sum(load.failed for load in results.values())
    flat = all(v["growth"] <= RSS_TOLERANCE for v in rss.values())
    meta: dict[str, Any] = {
        "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {psutil.cpu_count()} CPUs, "
        f"Python {platform.python_version()}",
        "model": args.model,
        "minutes": args.minutes,
        "share": args.share,
        "warmup_s": args.warmup_s,
    }
    lines = [
        "# irisgate soak: the predictor through the local router",
        "",
        f"{meta['when']} - {meta['machine']} - {args.model}, {args.minutes:g} min, both "
        f"protocols at once, each at {args.share / 2:.0%} of its own measured capacity "
        f"(h2load, {SOAK_CONNECTIONS} connections each, fixed rate)",
        "",
        "| protocol | capacity req/s | soak req/s | requests | failed |",
        "|---|---:|---:|---:|---:|",
    ]
    for protocol, load in results.items():
        lines.append(
            f"| {protocol} | {capacity[protocol].rps:,.0f} | {load.rps:,.0f} | "
            f"{load.requests:,} | {load.failed} |"
        )
    lines += [
        "",
        f"RSS after {args.warmup_s:.0f} s of warm-up, sampled every {args.sample_s:.0f} s:",
        "",
        "| process | lowest MiB | highest MiB | growth |",
        "|---|---:|---:|---:|",
    ]
    for name, v in rss.items():
        lines.append(f"| {name} | {v['low_mb']:.1f} | {v['high_mb']:.1f} | {v['growth']:.1%} |")
    verdict = f"failed requests: {failed}; RSS flat within {RSS_TOLERANCE:.0%}: {flat}"
    lines += ["", f"**{'pass' if failed == 0 and flat else 'FAIL'}**: {verdict}", ""]
    text = "\n".join(lines)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "SOAK.md").write_text(text)
    (args.out / "soak.json").write_text(
        json.dumps(
            {
                "meta": meta,
                "capacity": {p: asdict(load) for p, load in capacity.items()},
                "soak": {p: asdict(load) for p, load in results.items()},
                "rss": rss,
                "samples": samples,
            },
            indent=2,
        )
    )
    print(text)
    return 0 if failed == 0 and flat else 1


if __name__ == "__main__":
    sys.exit(main())
