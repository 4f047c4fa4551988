"""``python -m demo``: the whole story on one machine, no cluster, no Docker.

pipeline (v1 passes the accuracy condition, becomes stable) -> router + gate (which
starts the stable predictor) -> locust sends live REST and gRPC traffic through the
router (Iris flowers measured with a new instrument that reads petal width +0.15 cm,
and, 5 s after the answer, the true labels of half the REST requests to the gate) ->
pipeline again for a candidate v2, handed to the gate -> accuracy gate -> shadow (the
candidate answers copies of live REST requests, compared with stable's per request) ->
canary steps -> promoted or rolled back -> report (terminal, report.json, report.html).

``--up`` instead keeps a stack serving until Ctrl-C, for your own clients.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Column

from demo.render import print_summary, write_html
from demo.report import build_report
from demo.stack import Ports, Stack, StackError, claim_run_dir, run_dir_problem
from demo.up import served_version, up_banner

SCENARIOS: dict[str, dict[str, Any]] = {
    # candidate pipeline flags, canary predictor flags, the outcome the story should reach,
    # and the scenario's own defaults for analysis settings (an explicit flag wins)
    "good": {"candidate": ["--c", "5"], "canary_args": "", "expect": "promoted"},
    "weak": {"candidate": ["--weak"], "canary_args": "", "expect": "rejected"},
    "faulty": {
        "candidate": ["--c", "5"],
        "canary_args": "--fault_error_rate 0.2",
        "expect": "rolled_back",
        # The story is the canary rollback on live errors. With a shadow phase the
        # replayed requests would show the errors first and the rollout would fail
        # before any user met the candidate (try: --scenario faulty --shadow-s 45).
        "analysis": {"shadow_s": 0.0},
    },
    "slow": {
        "candidate": ["--c", "5"],
        "canary_args": "--fault_latency_ms 400",
        "expect": "rolled_back",
    },
    # Over-regularised: 0.933 on the held-out split (the pipeline's 0.9 condition and the
    # gate's replay pass), but on the drifted live rows it answers ~6 % of them unlike
    # stable, mostly versicolor -> virginica; live accuracy ~0.91 against stable's ~0.95.
    # C = 0.1 scores 0.822 on the held-out split (rejected); 0.2 is the nearest that passes.
    "subtle": {"candidate": ["--c", "0.2"], "canary_args": "", "expect": "failed_in_shadow"},
}
TERMINAL = {"succeeded", "rolled_back", "failed", "aborted"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--scenario",
        choices=sorted(SCENARIOS),
        default="good",
        help="good: promoted; weak: rejected by the pipeline; faulty: canary "
        "with injected errors, rolled back; slow: injected latency, rolled back; subtle: "
        "passes its held-out test, worse on live traffic, failed in shadow",
    )
    parser.add_argument(
        "--up",
        action="store_true",
        help="train if needed, start predictor, router and gate, serve until Ctrl-C",
    )
    parser.add_argument(
        "--traffic",
        action="store_true",
        help="with --up: send the demo's live traffic (locust, REST and gRPC, labels to the "
        "gate) until Ctrl-C, so a rollout has requests to judge",
    )
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=Path(".irisgate/demo"),
        help="registry, logs and reports (default: .irisgate/demo); a story empties it "
        "first, so it must be new, empty or made by the demo",
    )
    parser.add_argument("--router-http-port", type=int, default=8000)
    parser.add_argument("--router-grpc-port", type=int, default=8001)
    parser.add_argument(
        "--router-admin-port", type=int, default=8002, help="router admin API (loopback)"
    )
    parser.add_argument("--gate-port", type=int, default=8090)
    parser.add_argument("--steps", default="10,25,50,100", help="canary steps in percent")
    parser.add_argument(
        "--step-interval",
        type=float,
        default=8.0,
        help="seconds each step collects metrics (default 8)",
    )
    # The gate's own defaults (+0.5 points, +25 %, 10 %) need a few thousand canary
    # requests; the demo's traffic shows these wider margins within a minute or two.
    parser.add_argument(
        "--error-rate-margin",
        type=float,
        default=0.02,
        help="server errors the canary may add over stable (default 0.02 = +2 points)",
    )
    parser.add_argument(
        "--latency-margin",
        type=float,
        default=3.0,
        help="how much slower the canary's p95 may be than stable's (default 3.0 = 4x: "
        "at a millisecond, two processes on a busy laptop differ by 2x)",
    )
    parser.add_argument(
        "--class-shift-margin",
        type=float,
        default=0.2,
        help="share of answers that may change class (default 0.2)",
    )
    parser.add_argument(
        "--shadow-s",
        type=float,
        default=None,
        help="shadow budget in seconds: live REST requests are replayed to the candidate "
        "before it answers any user (default 45; 0 for the faulty scenario; 0: no shadow)",
    )
    parser.add_argument(
        "--shadow-margin",
        type=float,
        default=0.04,
        help="share of rows the candidate may answer unlike stable on the same requests "
        "(default 0.04: two good models disagree on ~2 %% of the demo's traffic, the "
        "subtle candidate on ~6 %%)",
    )
    parser.add_argument("--users", type=int, default=4, help="locust users (REST and gRPC)")
    parser.add_argument(
        "--rps-per-user", type=float, default=15.0, help="requests per second per user (default 15)"
    )
    parser.add_argument(
        "--rows-per-request",
        type=int,
        default=4,
        help="flowers per request (default 4); the shadow phase compares rows, so more "
        "rows decide it sooner",
    )
    parser.add_argument(
        "--labels-share",
        type=float,
        default=0.5,
        help="share of REST requests whose true labels are posted to the gate (default 0.5; "
        "0: none)",
    )
    parser.add_argument(
        "--labels-delay-s",
        type=float,
        default=5.0,
        help="seconds between an answer and its label (default 5)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=900.0,
        help="give up on the rollout after this many seconds",
    )
    return parser


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def analysis_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The gate's analysis defaults for this run: the scenario's own, then the command
    line's."""
    scenario: dict[str, Any] = SCENARIOS[args.scenario].get("analysis", {})
    shadow_s = args.shadow_s if args.shadow_s is not None else scenario.get("shadow_s", 45.0)
    return {
        "steps": [int(s) for s in args.steps.split(",")],
        "step_interval_s": args.step_interval,
        "error_rate_margin": args.error_rate_margin,
        "latency_margin": args.latency_margin,
        "class_shift_margin": args.class_shift_margin,
        "shadow_s": shadow_s,
        "shadow_disagreement_margin": args.shadow_margin,
    }


def run_pipeline(
    registry: Path,
    logs: Path,
    extra: list[str],
    env: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    """The pipeline as its own process; its progress goes to this terminal (stderr)."""
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            "run",
            "--registry",
            str(registry),
            "--log-dir",
            str(logs),
            "--json",
            *extra,
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
        check=False,
    )
    lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
    return completed.returncode, json.loads(lines[-1]) if lines else {}


def latest_version(registry: Path) -> Path | None:
    root = registry / "iris"
    versions = sorted((p for p in root.glob("*") if p.name.isdigit()), key=lambda p: int(p.name))
    return versions[-1] if versions else None


def candidate_share(detail: dict[str, Any]) -> tuple[int, str, str]:
    """The candidate's share of live traffic, the phase's name and a few words for the
    watch line. After a promotion the canary route is gone (weight 0) because the
    candidate *is* stable: shown as 100 %, so the last line reads as the success it is."""
    version = (detail.get("candidate") or {}).get("version", "?")
    previous = detail.get("previous_version") or "the stable"
    phase = str(detail["phase"])
    if phase == "succeeded":
        return 100, "promoted", f"v{version} is stable, 100%"
    if phase in TERMINAL:
        return 0, phase.replace("_", " "), f"v{previous} stays stable"
    weight = int(detail.get("canary_weight") or 0)
    if phase == "shadow":
        return weight, phase, "no user sees it yet"
    return weight, phase, f"canary {weight}%"


def watch(stack: Stack, rollout_id: str, timeout: float, console: Console) -> dict[str, Any]:
    """A progress bar of the candidate's share of traffic, the phase and the last
    decision; stdout is left alone, so it reads the same on a terminal and in a pipe (one
    final line there)."""
    columns = (
        TextColumn("[bold]{task.fields[phase]:<12}"),
        BarColumn(bar_width=20),
        TextColumn("{task.fields[share]}"),
        TimeElapsedColumn(),
        # cut to the line rather than wrapped: one line on an 80-column terminal
        TextColumn("{task.description}", table_column=Column(no_wrap=True, overflow="ellipsis")),
    )
    deadline = time.monotonic() + timeout
    detail: dict[str, Any] = {}
    with Progress(
        *columns, console=console, redirect_stdout=False, redirect_stderr=False
    ) as progress:
        bar = progress.add_task("", total=100, phase="validating", share="")
        while time.monotonic() < deadline:
            detail = stack.rollout(rollout_id)
            share, phase, words = candidate_share(detail)
            terminal = detail["phase"] in TERMINAL
            progress.update(
                bar,
                completed=share,
                phase=phase,
                share=words,
                # the message repeats the report's last line at the end; during the run it
                # says what the gate waits for
                description="" if terminal else detail["message"],
            )
            if terminal:
                return detail
            time.sleep(0.5)
    raise StackError(f"rollout {rollout_id} did not finish within {timeout:.0f} s")


def _start_load(stack: Stack, args: argparse.Namespace) -> None:
    """The demo's live traffic (locust), as the flags ask: a story's, or ``--up --traffic``."""
    stack.start_load(
        args.users,
        args.rps_per_user,
        rows_per_request=args.rows_per_request,
        labels_share=args.labels_share,
        labels_delay_s=args.labels_delay_s,
    )


def story(args: argparse.Namespace, stack: Stack, console: Console) -> int:
    scenario = SCENARIOS[args.scenario]
    registry, logs = args.run_dir / "registry", stack.logs
    console.rule(f"[bold]irisgate demo: scenario {args.scenario}")
    console.print("[bold]1/4[/] pipeline: model v1 -> accuracy condition -> registry")
    code, stable_run = run_pipeline(registry, logs, [])
    if code != 0:
        raise StackError(f"the first pipeline run did not deploy (exit {code})")
    analysis = analysis_settings(args)
    console.print(
        "[bold]2/4[/] starting router, gate (it starts the stable predictor) and live traffic"
    )
    stack.start_router()
    stack.start_gate(Path(stable_run["path"]), analysis, scenario["canary_args"])
    _start_load(stack, args)
    console.print(f"      REST {stack.router_url}  gRPC {stack.router_grpc}  gate {stack.gate_url}")
    console.print("[bold]3/4[/] pipeline: candidate v2, handed to the gate")
    code, candidate_run = run_pipeline(
        registry,
        logs,
        [*scenario["candidate"], "--gate-url", stack.gate_url],
        {"GATE_API_TOKEN": stack.token},
    )
    detail = None
    if code == 0:
        console.print("[bold]4/4[/] accuracy gate, shadow and canary analysis")
        detail = watch(stack, candidate_run["rollout_id"], args.timeout, console)
    elif code != 3:
        raise StackError(f"the candidate pipeline run failed (exit {code})")
    routes = stack.routes()
    stack.stop_load()  # locust writes its CSVs as it stops
    if detail is not None:  # the gate's own record, the report's evidence, kept beside it
        (args.run_dir / "gate-rollout.json").write_text(json.dumps(detail, indent=2) + "\n")
    report = build_report(
        args.scenario,
        {"stable": stable_run, "candidate": candidate_run},
        detail,
        routes,
        args.run_dir / "load_stats.csv",
        stack.labels_report,
        args.run_dir / "load_stats_history.csv",
    )
    (args.run_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    write_html(report, args.run_dir / "report.html")
    print_summary(report, console)
    console.print(
        f"reports: {args.run_dir / 'report.json'}, {args.run_dir / 'report.html'}; logs: {logs}"
    )
    return 0 if report["outcome"] == scenario["expect"] else 1


def serve_until_interrupted(args: argparse.Namespace, stack: Stack, console: Console) -> int:
    registry = args.run_dir / "registry"
    stable = latest_version(registry)
    if stable is None:
        code, run = run_pipeline(registry, stack.logs, [])
        if code != 0:
            raise StackError(f"the pipeline did not deploy a model (exit {code})")
        stable = Path(run["path"])
    analysis = analysis_settings(args)
    stack.start_router()
    # the newest version seeds an empty store; a store that has a stable keeps serving it
    stack.start_gate(stable, analysis)
    if args.traffic:
        _start_load(stack, args)
    users = args.users if args.traffic else 0
    console.print(up_banner(stack, registry, served_version(stack), users), soft_wrap=True)
    while True:
        time.sleep(1)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console()
    ports = Ports(
        router_http=args.router_http_port,
        router_grpc=args.router_grpc_port,
        gate=args.gate_port,
        router_admin=args.router_admin_port,
    )
    # Both checked before anything is written or started; `make up` promises fixed ports.
    problem = run_dir_problem(args.run_dir) or ports.busy_problem()
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    claim_run_dir(args.run_dir, clear=not args.up)  # a story starts from an empty registry
    # explicit: a process started in the background by a shell inherits SIGINT ignored
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    stack = Stack(args.run_dir.resolve(), ports)
    try:
        with stack:
            if args.up:
                return serve_until_interrupted(args, stack, console)
            return story(args, stack, console)
    except KeyboardInterrupt:
        console.print(f"[yellow]interrupted; every process stopped. Logs: {stack.logs}[/]")
        return 130
    except StackError as exc:
        console.print(f"[red]demo failed: {exc}[/]\nevery process stopped. Logs: {stack.logs}")
        return 1
    except Exception as exc:
        # Anything else (the gate unreachable mid-story, a full disk) still ends with the
        # promise that nothing is left running; the traceback goes beside the logs.
        stack.logs.mkdir(parents=True, exist_ok=True)
        trace = stack.logs / "demo-traceback.log"
        trace.write_text(traceback.format_exc())
        console.print(
            f"[red]demo failed: {type(exc).__name__}: {escape(str(exc))}[/] "
            f"(traceback: {trace})\n"
            f"every process stopped. Logs: {stack.logs}"
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
