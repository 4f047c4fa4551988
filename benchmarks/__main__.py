"""``python -m benchmarks`` (``make bench``): irisgate's predictor against the baselines.

Starts every server side by side on loopback, checks each answers correctly, then drives
them in interleaved rounds: every server gets its turn at a point before any gets a second
one, and each turn starts once the whole fleet is idle (``servers.settle``: a server that
fell behind works off its queue after the load stops). Prints and writes a JSON + Markdown
report with medians, ratios and the goal checks.

The host's speed drifts by a third within a minute, so a ratio is only as good as the
nearness of its two measurements. The goals' ratios (router / its predictor, predictor /
the constant floor) are therefore taken within a round, from measurements made one after
the other: at each point the *core* block (per model the predictor then its router, the
floor between the first half of the models and the rest) runs as one stretch, reversed on
even rounds so neither side of a pair always goes first. The peers follow the core block,
rotating between rounds as before. See ``round_order`` and ``report.Lookup``.

``--smoke`` runs every code path in seconds (one short round, low concurrency); tests use
it so the benchmark cannot rot. Its figures mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any, Protocol, TypeVar

import joblib
import sklearn
from sklearn.datasets import load_iris

from benchmarks import servers
from benchmarks.generators import GeneratorMissing, require_generators, run_h2load, run_wrk
from benchmarks.report import (
    DIRECT,
    FLOOR,
    REFERENCE_PROXY,
    ROUTER,
    Sample,
    evaluate_goals,
    markdown,
    summarize,
    to_json,
)
from benchmarks.venvs import BENTOML, MLFLOW, MLSERVER, PeerVenv, ensure_venv
from pipeline.steps.common import CLASSES, FEATURES, TrainParams
from pipeline.steps.train import build_estimator
from predictor.artifact import SIGNATURE_FILE, fingerprint_dataset, write_artifact

REPO = Path(__file__).resolve().parent.parent
MODELS = ("forest", "logreg")
EXIT_MISSING_TOOL = 2


def _csv(
    kind: Callable[[str], Any], choices: Sequence[str] | None = None
) -> Callable[[str], list[Any]]:
    def parse(text: str) -> list[Any]:
        values = [kind(v.strip()) for v in text.split(",") if v.strip()]
        if choices is not None:
            unknown = [v for v in values if v not in choices]
            if unknown:
                raise argparse.ArgumentTypeError(
                    f"unknown {unknown}; choose from {', '.join(choices)}"
                )
        return values

    return parse


def _absolute(text: str) -> Path:
    """A path flag, made absolute at once: the servers get it with working directories of
    their own (MLServer read a relative ``--out``'s model URI against its model folder and
    refused to load)."""
    return Path(text).resolve()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmark irisgate's predictor, directly and through the local router, "
        "against a plain KServe model, MLServer and BentoML with adaptive batching, "
        "MLflow's model server and a constant-returning KServe model (the floor).",
    )
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument(
        "--duration", type=float, default=5.0, help="seconds per measurement (default 5)"
    )
    parser.add_argument(
        "--concurrency", type=_csv(int), default=[1, 16, 64], help="connections (default 1,16,64)"
    )
    parser.add_argument("--models", type=_csv(str, MODELS), default=list(MODELS))
    parser.add_argument(
        "--protocols", type=_csv(str, servers.PROTOCOLS), default=list(servers.PROTOCOLS)
    )
    parser.add_argument(
        "--servers", type=_csv(str, servers.SERVER_KINDS), default=list(servers.SERVER_KINDS)
    )
    parser.add_argument(
        "--predictor-args",
        default="",
        help="extra flags for irisgate's predictor, e.g. '--workers 2' (default: none)",
    )
    parser.add_argument("--out", type=_absolute, default=REPO / ".bench" / "results")
    parser.add_argument(
        "--mlserver-venv",
        type=_absolute,
        default=REPO / ".bench" / "mlserver-venv",
        help="where MLServer gets its own venv (made on first use)",
    )
    parser.add_argument(
        "--bentoml-venv",
        type=_absolute,
        default=REPO / ".bench" / "bentoml-venv",
        help="where BentoML gets its own venv (made on first use)",
    )
    parser.add_argument(
        "--mlflow-venv",
        type=_absolute,
        default=REPO / ".bench" / "mlflow-venv",
        help="where MLflow gets its own venv (made on first use)",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="every path in seconds: 1 round of 1 s at c=1,4 (figures mean nothing)",
    )
    return parser


PEER_MODEL_FILE = "model.joblib"


def make_artifacts(folder: Path, models: Sequence[str]) -> dict[str, Path]:
    """The models the pipeline would train, fitted on all of Iris, as verified artifacts."""
    features, labels = load_iris(return_X_y=True)
    paths = {}
    for model in models:
        path = folder / model
        complete = all((path / name).exists() for name in (SIGNATURE_FILE, PEER_MODEL_FILE))
        if not complete:  # new, or written by an older version of the artifact contract
            shutil.rmtree(path, ignore_errors=True)
            estimator = build_estimator(TrainParams(classifier=model)).fit(features, labels)
            write_artifact(
                estimator,
                path,
                name="iris",
                version="1",
                feature_names=FEATURES,
                class_names=CLASSES,
                training_data_fingerprint=fingerprint_dataset(features, labels),
                metrics={"train_accuracy": float(estimator.score(features, labels))},
            )
            # The peers load the same fitted estimator the way their docs show, from a
            # joblib file; irisgate's predictor reads only the signed file its manifest names.
            joblib.dump(estimator, path / PEER_MODEL_FILE)
        paths[model] = path
    return paths


# The peers that run from venvs of their own: kind -> what to install, where (an args field).
PEER_VENVS: dict[str, tuple[PeerVenv, str]] = {
    "mlserver": (MLSERVER, "mlserver_venv"),
    "bentoml": (BENTOML, "bentoml_venv"),
    "mlflow": (MLFLOW, "mlflow_venv"),
}


def plan_servers(args: argparse.Namespace, run_dir: Path) -> list[servers.Server]:
    artifacts = make_artifacts(run_dir / "artifacts", args.models)
    extra = args.predictor_args.split()
    chosen: list[servers.Server] = []
    venvs = {
        kind: ensure_venv(peer, getattr(args, field), run_dir / f"{kind}-install.log")
        for kind, (peer, field) in PEER_VENVS.items()
        if kind in args.servers
    }
    with_haproxy = "haproxy" in args.servers and servers.haproxy_version() is not None
    if "haproxy" in args.servers and not with_haproxy:
        print(
            "bench: haproxy not found, so the reference proxy is left out "
            "(on Debian/Ubuntu: apt-get install haproxy)",
            file=sys.stderr,
        )
    for model in args.models:
        if {"irisgate", "router", "haproxy"} & set(args.servers):
            predictor = servers.irisgate(model, artifacts[model], run_dir, extra)
            chosen.append(predictor)
            if "router" in args.servers:
                chosen.append(servers.router(predictor, run_dir))
            if with_haproxy:
                chosen.append(servers.haproxy(predictor, run_dir))
        if "kserve-plain" in args.servers:
            chosen.append(servers.kserve_plain(model, artifacts[model], run_dir))
        if "mlserver" in venvs:
            chosen.append(servers.mlserver(model, artifacts[model], run_dir, venvs["mlserver"]))
        if "bentoml" in venvs:
            chosen.append(servers.bentoml(model, artifacts[model], run_dir, venvs["bentoml"]))
        if "mlflow" in venvs:
            chosen.append(servers.mlflow(model, artifacts[model], run_dir, venvs["mlflow"]))
    if "kserve-constant" in args.servers:
        chosen.append(servers.kserve_constant(run_dir, servers.process_count(extra)))
    return chosen


def measure(
    server: servers.Server,
    protocol: str,
    concurrency: int,
    seconds: float,
    work_dir: Path,
    round_no: int = 0,
) -> Sample:
    cpu_before = server.cpu_seconds()
    if protocol == "grpc":
        result = run_h2load(
            server.grpc_port, concurrency, seconds, work_dir, server.grpc_answer_bytes
        )
    else:
        result = run_wrk(server.http_port, server.wire(protocol), concurrency, seconds, work_dir)
    cpu = server.cpu_seconds() - cpu_before
    return Sample(
        server.kind,
        server.model,
        protocol,
        concurrency,
        round_no,
        result.requests,
        result.errors,
        result.seconds,
        result.rps,
        result.p50_ms,
        result.p99_ms,
        1000 * cpu / result.requests if result.requests else 0.0,
    )


def run(args: argparse.Namespace) -> int:
    if args.smoke:
        args.rounds, args.duration, args.concurrency = 1, 1.0, [1, 4]
    try:
        require_generators()
    except GeneratorMissing as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return EXIT_MISSING_TOOL
    args.out.mkdir(parents=True, exist_ok=True)
    run_dir = args.out / "run"
    run_dir.mkdir(exist_ok=True)
    fleet = plan_servers(args, run_dir)
    with servers.running(fleet, "bench"):
        time.sleep(1)
        for server in fleet:
            server.sample_idle_rss()
        for server in fleet if not args.smoke else ():  # warm every path before timing
            for protocol in server.protocols:
                if protocol in args.protocols:
                    measure(server, protocol, max(args.concurrency), 1.0, run_dir)
        samples = run_rounds(fleet, args, run_dir)
    return write_report(args, fleet, samples)


class Measured(Protocol):
    """What ordering needs of a server: a ``servers.Server``, or a stand-in in tests."""

    @property
    def kind(self) -> str: ...
    @property
    def model(self) -> str: ...


MeasuredT = TypeVar("MeasuredT", bound=Measured)
CORE = (REFERENCE_PROXY, ROUTER, DIRECT)  # per model, in this order


def round_order(fleet: Sequence[MeasuredT], round_no: int) -> list[MeasuredT]:
    """The order of one round's turns at every point: the core block, then the rest.

    Core: per model HAProxy, the router, then the predictor they front, with the floor
    after the first half of the models, so each router is next to its predictor, HAProxy
    next to the router and the floor next to a predictor; the block is reversed on even
    rounds, so which side of each pair goes first alternates and an order bias cancels out
    over the rounds. The rest (peers, plain KServe) rotate by round number, so none is
    always measured straight after the core block.
    """
    models = list(dict.fromkeys(s.model for s in fleet if s.kind in CORE))
    half = (len(models) + 1) // 2

    def blocks(chosen: list[str]) -> list[MeasuredT]:
        return [s for m in chosen for kind in CORE for s in fleet if (s.kind, s.model) == (kind, m)]

    core = blocks(models[:half]) + [s for s in fleet if s.kind == FLOOR] + blocks(models[half:])
    if round_no % 2 == 0:
        core.reverse()
    rest = [s for s in fleet if s.kind not in (*CORE, FLOOR)]
    shift = (round_no - 1) % len(rest) if rest else 0
    return core + rest[shift:] + rest[:shift]


def run_rounds(
    fleet: list[servers.Server], args: argparse.Namespace, work_dir: Path
) -> list[Sample]:
    samples = []
    for round_no in range(1, args.rounds + 1):
        order = round_order(fleet, round_no)
        for protocol in args.protocols:
            for concurrency in args.concurrency:
                for server in order:
                    if protocol not in server.protocols:
                        continue
                    settled = servers.settle(fleet)  # nobody still working off a queue
                    sample = measure(
                        server, protocol, concurrency, args.duration, work_dir, round_no
                    )
                    samples.append(sample)
                    print(
                        f"bench: round {round_no}/{args.rounds} {protocol:7} c={concurrency:<3} "
                        f"{server.key:24} {sample.rps:8.0f} req/s  p99 {sample.p99_ms:7.1f} ms  "
                        f"errors {sample.errors}  cpu {sample.cpu_ms_per_request:.2f} ms/req  "
                        f"(settled {settled:.1f} s)",
                        flush=True,
                    )
    return samples


def write_report(
    args: argparse.Namespace, fleet: list[servers.Server], samples: list[Sample]
) -> int:
    points = summarize(samples)
    idle_rss = {server.key: server.idle_rss_mb for server in fleet}
    goals = evaluate_goals(points, samples, idle_rss, max(args.concurrency))
    meta = {
        "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} CPUs, "
        f"Python {platform.python_version()}",
        "settings": (
            f"kserve {version('kserve')}, "
            f"scikit-learn {sklearn.__version__} (every peer's too), "
            f"peers: {', '.join(_peer_versions(args.servers))}; "
            f"reference proxy: {_reference_proxy(args.servers)}; predictor flags: "
            f"{args.predictor_args or '(defaults)'} = "
            f"{servers.process_count(args.predictor_args.split())} processes, as the floor"
        ),
        "rounds": args.rounds,
        "duration_s": args.duration,
        "concurrency": args.concurrency,
        "smoke": args.smoke,
    }
    text = markdown(points, samples, idle_rss, goals, meta, servers.LABELS, servers.WIRES)
    (args.out / "results.md").write_text(text)
    (args.out / "results.json").write_text(
        json.dumps(to_json(samples, points, idle_rss, goals, meta), indent=2)
    )
    print()
    print(text)
    print(f"bench: wrote {args.out / 'results.md'} and {args.out / 'results.json'}")
    return 0


def _peer_versions(kinds: Sequence[str]) -> list[str]:
    """The pinned peer packages of this run, e.g. 'bentoml==1.4.40'."""
    pins = [peer.requirements[0] for kind, (peer, _) in PEER_VENVS.items() if kind in kinds]
    return pins or ["none"]


def _reference_proxy(kinds: Sequence[str]) -> str:
    """HAProxy's version when it is in the run, e.g. 'haproxy 2.6.12'."""
    version = servers.haproxy_version() if "haproxy" in kinds else None
    return "none" if version is None else f"haproxy {version}"


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
