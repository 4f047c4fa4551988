"""Load generators: wrk for REST, h2load for gRPC, each run once and parsed.

Both are C programs that keep the generator far cheaper than the server it drives; a
Python generator (locust) tops out near the rate it is meant to measure on two cores.
Each request carries one Iris row, the same bytes every time, so every server answers the
same question and every healthy answer has the same size.
"""

from __future__ import annotations

import json
import re
import shutil
import statistics
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

ROW = [6.8, 2.8, 4.8, 1.4]  # a versicolor: every model must answer 1
MODEL_NAME = "iris"
GRPC_PATH = "/inference.GRPCInferenceService/ModelInfer"
MARKER = "IRISGATE_BENCH "

INSTALL_HINT = (
    "the benchmark drives REST with wrk and gRPC with h2load; on Debian/Ubuntu: "
    "apt-get install wrk nghttp2-client (macOS: brew install wrk nghttp2)"
)


class GeneratorMissing(RuntimeError):
    pass


def require_generators() -> None:
    missing = [tool for tool in ("wrk", "h2load") if shutil.which(tool) is None]
    if missing:
        raise GeneratorMissing(f"{', '.join(missing)} not found: {INSTALL_HINT}")


@dataclass(frozen=True)
class RunResult:
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


# REST wire formats: KServe's v1 and v2 protocols, and two peers' own JSON shapes,
# "rest-bentoml" and "rest-mlflow" (they speak no v2; their figures sit in the REST v2
# table), every one carrying the same one row.
def rest_body(protocol: str) -> bytes:
    if protocol == "rest-v1":
        return json.dumps({"instances": [ROW]}).encode()
    if protocol == "rest-bentoml":  # the batchable API's one argument, a batch of one row
        return json.dumps({"features": [ROW]}).encode()
    if protocol == "rest-mlflow":  # MLflow's scoring server, tensor input
        return json.dumps({"inputs": [ROW]}).encode()
    tensor = {"name": "input-0", "shape": [1, 4], "datatype": "FP32", "data": ROW}
    return json.dumps({"inputs": [tensor]}).encode()


def rest_path(protocol: str) -> str:
    if protocol == "rest-v1":
        return f"/v1/models/{MODEL_NAME}:predict"
    if protocol == "rest-bentoml":
        return "/predict"
    if protocol == "rest-mlflow":
        return "/invocations"
    return f"/v2/models/{MODEL_NAME}/infer"


def grpc_request() -> pb.ModelInferRequest:
    tensor = pb.ModelInferRequest.InferInputTensor(
        name="input-0",
        datatype="FP32",
        shape=[1, 4],
        contents=pb.InferTensorContents(fp32_contents=ROW),
    )
    return pb.ModelInferRequest(model_name=MODEL_NAME, inputs=[tensor])


def grpc_frame(message: bytes) -> bytes:
    """gRPC's length-prefixed framing (uncompressed), as h2load must send it."""
    return b"\x00" + struct.pack(">I", len(message)) + message


_WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = {body}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{marker}{{"requests":%d,"duration_us":%d,"status_errors":%d,"socket_errors":%d,'
    .. '"p50_us":%d,"p99_us":%d}}\\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def _lua_string(data: bytes) -> str:
    return "'" + data.decode().replace("\\", "\\\\").replace("'", "\\'") + "'"


def run_wrk(
    port: int, protocol: str, concurrency: int, seconds: float, work_dir: Path
) -> RunResult:
    script = work_dir / f"{protocol}.lua"
    if not script.exists():
        body = _lua_string(rest_body(protocol))
        script.write_text(_WRK_SCRIPT.format(body=body, marker=MARKER))
    command = [
        "wrk",
        "-t1",
        f"-c{concurrency}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        f"http://127.0.0.1:{port}{rest_path(protocol)}",
    ]
    output = run_tool(command, seconds)
    line = next((ln for ln in output.splitlines() if ln.startswith(MARKER)), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary:\n{output}")
    data = json.loads(line[len(MARKER) :])
    return RunResult(
        requests=data["requests"],
        errors=data["status_errors"] + data["socket_errors"],
        seconds=data["duration_us"] / 1e6,
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
    )


_H2_REQUESTS = re.compile(
    r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, "
    r"(\d+) errored, (\d+) timeout"
)
_H2_STATUS = re.compile(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")
_H2_DATA = re.compile(r"traffic: .* headers \(.*\), [^(]*\((\d+)\) data")
_H2_FINISHED = re.compile(r"finished in ([\d.]+)(m?s)")


@dataclass(frozen=True)
class H2Summary:
    """What h2load's summary says: requests done and succeeded, those that failed
    (failed, errored or timed out), answers other than 2xx, DATA bytes received, seconds."""

    done: int
    succeeded: int
    failed: int
    not_2xx: int
    data_bytes: int
    seconds: float


def read_h2load(output: str) -> H2Summary:
    counts, status, data, finished = (
        pattern.search(output) for pattern in (_H2_REQUESTS, _H2_STATUS, _H2_DATA, _H2_FINISHED)
    )
    if counts is None or status is None or data is None or finished is None:
        raise RuntimeError(f"cannot parse h2load's output:\n{output}")
    return H2Summary(
        done=int(counts.group(2)),
        succeeded=int(counts.group(3)),
        failed=sum(int(counts.group(i)) for i in (4, 5, 6)),
        not_2xx=sum(int(status.group(i)) for i in (2, 3, 4)),
        data_bytes=int(data.group(1)),
        seconds=float(finished.group(1)) / (1000 if finished.group(2) == "ms" else 1),
    )


def run_h2load(
    port: int,
    concurrency: int,
    seconds: float,
    work_dir: Path,
    answer_bytes: int,
) -> RunResult:
    """h2load does not read gRPC's status trailers: a failed call is an HTTP 200 with no
    DATA frame. Every good answer has the same size (``answer_bytes``, framed), so answers
    short of the expected bytes are counted as errors."""
    frame = work_dir / "grpc-request.bin"
    if not frame.exists():
        frame.write_bytes(grpc_frame(grpc_request().SerializeToString()))
    log = work_dir / "h2load.log"
    log.unlink(missing_ok=True)  # h2load appends to an existing log
    command = [
        "h2load",
        f"-c{concurrency}",
        "-m1",
        "-t1",
        f"-D{max(1, round(seconds))}",
        "-H",
        "content-type: application/grpc",
        "-H",
        "te: trailers",
        "-d",
        str(frame),
        "--log-file",
        str(log),
        f"http://127.0.0.1:{port}{GRPC_PATH}",
    ]
    summary = read_h2load(run_tool(command, seconds))
    answered = summary.data_bytes // answer_bytes if answer_bytes else 0
    latencies = sorted(
        int(fields[2])
        for fields in (ln.split("\t") for ln in log.read_text().splitlines())
        if len(fields) == 3 and fields[1] == "200"
    )
    return RunResult(
        requests=summary.done,
        errors=summary.failed + max(0, summary.succeeded - answered),
        seconds=summary.seconds,
        p50_ms=_percentile(latencies, 50) / 1000,
        p99_ms=_percentile(latencies, 99) / 1000,
    )


def _percentile(values: list[int], q: float) -> float:
    if not values:
        return 0.0
    if len(values) == 1:
        return float(values[0])
    return float(statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1])


def run_tool(command: list[str], seconds: float) -> str:
    """Run a load generator for about ``seconds``; its stdout (a failure raises)."""
    completed = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    if completed.returncode != 0:
        raise RuntimeError(
            f"{command[0]} exited {completed.returncode}: {completed.stderr or completed.stdout}"
        )
    return completed.stdout
