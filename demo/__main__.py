"""``python -m demo``: train with the pipeline, then serve the deployed model locally.

This is the first half of the local story (pipeline -> verified artifact -> predictor);
the gate and the canary join it as they land.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from predictor.artifact import registry_versions


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__)
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=Path(".irisgate"),
        help="registry and logs live here (default: .irisgate)",
    )
    parser.add_argument("--http-port", type=int, default=8080)
    parser.add_argument("--grpc-port", type=int, default=8081)
    parser.add_argument(
        "--serve-seconds",
        type=float,
        default=0,
        help="stop after this long (default: serve until Ctrl-C)",
    )
    args = parser.parse_args(argv)
    registry = args.run_dir / "registry"
    logs = args.run_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)

    print("== 1/2 pipeline: preprocess -> train -> evaluate -> If(accuracy >= 0.9) -> deploy")
    code = subprocess.call(
        [
            sys.executable,
            "-m",
            "pipeline",
            "run",
            "--registry",
            str(registry),
            "--log-dir",
            str(logs),
        ]
    )
    if code != 0:
        print(f"pipeline did not deploy a model (exit {code}); logs in {logs}")
        return code
    version = registry_versions(registry, "iris")[-1]
    model_dir = registry / "iris" / version

    print(f"== 2/2 serving iris version {version} from {model_dir}")
    log_path = logs / "predictor.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "predictor",
                "--model_name",
                "iris",
                "--model_dir",
                str(model_dir),
                "--http_port",
                str(args.http_port),
                "--grpc_port",
                str(args.grpc_port),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{args.http_port}"
    print(f"REST  {url}   gRPC 127.0.0.1:{args.grpc_port}   log {log_path}")
    print(
        f"try:  curl -s -H 'Content-Type: application/json' {url}/v1/models/iris:predict "
        "-d '{\"instances\": [[5.1, 3.5, 1.4, 0.2]]}'"
    )
    print("Ctrl-C stops the predictor.")
    deadline = time.monotonic() + args.serve_seconds if args.serve_seconds else None
    try:
        while server.poll() is None and (deadline is None or time.monotonic() < deadline):
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            server.wait(30)
    if server.returncode not in (0, -signal.SIGTERM):
        print(f"predictor exited with {server.returncode}; see {log_path}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
