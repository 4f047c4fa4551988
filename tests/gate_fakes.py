"""Small fakes for the gate's seams: a traffic backend, a metrics provider, a clock, and a
candidate that answers the replay over httpx's MockTransport."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from gate.core.analysis import RoleWindow, WindowMeasurement
from gate.core.state import RolloutState
from gate.providers.base import MetricsProvider, MetricsUnavailable, Targets
from gate.store import Stable
from gate.traffic.base import Readiness, TrafficBackend, TrafficError

HOLDOUT = [
    ([5.1, 3.5, 1.4, 0.2], 0),
    ([4.9, 3.0, 1.4, 0.2], 0),
    ([7.0, 3.2, 4.7, 1.4], 1),
    ([6.4, 3.2, 4.5, 1.5], 1),
    ([6.3, 3.3, 6.0, 2.5], 2),
    ([5.8, 2.7, 5.1, 1.9], 2),
]

# What KServe's agent sends for one logged request (pkg/logger/worker.go: binary mode via
# cloudevents sdk-go; extensions inferenceservicename, namespace, component, endpoint,
# metadata, recordedtime; the data is the body as it was, under the request's type).
KSERVE_HEADERS = {
    "ce-specversion": "1.0",
    "ce-id": "4d0b1e8e-3f0a-4c43-9a43-0b6c1f0e0a11",
    "ce-source": "http://localhost:9081/",
    "ce-type": "org.kubeflow.serving.inference.request",
    "ce-time": "2026-12-02T10:00:00.123456789Z",
    "ce-inferenceservicename": "iris",
    "ce-namespace": "models",
    "ce-component": "predictor",
    "ce-endpoint": "default",
    "ce-metadata": "{}",
    "ce-recordedtime": "2026-12-02T10:00:00.2Z",
    "content-type": "application/json",
}


def write_holdout(directory: Path) -> Path:
    """An artifact directory as the gate sees it: its held-out split and a manifest
    naming the model file's digest (the gate reads nothing else of it)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "model.json").write_text(json.dumps({"sha256": "ab" * 32}))
    lines = ["sepal_length,sepal_width,petal_length,petal_width,species"]
    lines += [",".join(str(v) for v in row) + f",{label}" for row, label in HOLDOUT]
    (directory / "holdout.csv").write_text("\n".join(lines) + "\n")
    return directory


def candidate_transport(wrong: bool = False) -> httpx.MockTransport:
    """A candidate predictor: right answers, or always class 0 (training/serving skew)."""
    truth = {tuple(row): label for row, label in HOLDOUT}

    def handle(request: httpx.Request) -> httpx.Response:
        tensor = json.loads(request.content)["inputs"][0]
        data = tensor["data"]
        rows = [tuple(data[i : i + 4]) for i in range(0, len(data), 4)]
        labels = [0 if wrong else truth[row] for row in rows]
        return httpx.Response(
            200,
            json={
                "outputs": [
                    {"name": "predict", "datatype": "INT64", "shape": [len(rows)], "data": labels}
                ]
            },
        )

    return httpx.MockTransport(handle)


class FakeClock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class FakeBackend(TrafficBackend):
    """Router and deployer in one; ``ready_after`` readiness checks before the candidate
    answers ready, ``None``: never."""

    name = "fake"

    def __init__(self) -> None:
        self.weight = 0
        self.weights_set: list[int] = []
        self.started = 0
        self.promoted = 0
        self.rolled_back = 0
        self.retired = 0
        self.unreachable = False
        self.ready_after: int | None = 0
        self.exited = False
        self.readiness_checks = 0
        self.mirror: dict[str, bool] = {}
        self.restored: list[str] = []

    def _check(self) -> None:
        if self.unreachable:
            raise TrafficError("router unreachable (fake)")

    async def ensure_stable(self, model: str) -> Stable | None:
        self._check()
        return None

    async def ensure_stable_route(self, stable: Stable) -> None:
        self._check()

    def plan_candidate(self, state: RolloutState) -> dict[str, Any]:
        return {"canary": {"http": "http://candidate"}}

    async def start_candidate(self, state: RolloutState) -> None:
        self._check()
        self.started += 1

    async def candidate_ready(self, state: RolloutState) -> Readiness:
        self._check()
        self.readiness_checks += 1
        if self.exited:
            return Readiness(False, "predictor exited with 3 (fake)", gone=True)
        if self.ready_after is None or self.readiness_checks <= self.ready_after:
            return Readiness(False, "not ready yet (fake)")
        return Readiness(True)

    def candidate_url(self, state: RolloutState) -> str:
        return "http://candidate"

    def stable_url(self, state: RolloutState) -> str | None:
        return "http://stable"

    async def get_weight(self, state: RolloutState) -> int:
        self._check()
        return self.weight

    async def set_mirror(self, model: str, on: bool) -> None:
        self._check()
        self.mirror[model] = on

    async def set_weight(self, state: RolloutState, weight: int) -> None:
        self._check()
        self.weight = weight
        self.weights_set.append(weight)

    async def promote(self, state: RolloutState) -> None:
        self._check()
        self.promoted += 1
        self.weight = 0

    def promoted_stable(self, state: RolloutState) -> Stable:
        return Stable(
            model=state.model,
            version=state.candidate.version,
            artifact_uri=state.candidate.artifact_uri,
        )

    async def rollback(self, state: RolloutState) -> None:
        self._check()
        self.rolled_back += 1
        self.weight = 0

    async def restore(self, state: RolloutState, previous: Stable) -> None:
        self._check()
        self.restored.append(previous.version)
        self.weight = 0

    def previous_url(self, state: RolloutState) -> str | None:
        return "http://previous"

    async def retire(self) -> list[str]:
        self.retired += 1
        return []

    def metrics_targets(self, state: RolloutState) -> Targets:
        return Targets(
            model=state.model, stable_version="1", canary_version=state.candidate.version
        )


def role(
    requests: float = 20_000, errors: float = 0, median_ms: float = 5, classes: bool = True
) -> RoleWindow:
    """A predictor's window: latency spread over three buckets around ``median_ms``
    (a quarter below, half in, a quarter above), classes in equal shares."""
    buckets = {
        f"{median_ms / 2000:g}": requests / 4,
        f"{median_ms / 1000:g}": requests / 2,
        f"{median_ms * 2 / 1000:g}": requests * 0.9,
        f"{median_ms * 4 / 1000:g}": requests,
        "+Inf": requests,
    }
    shares = {name: requests / 3 for name in ("setosa", "versicolor", "virginica")}
    return RoleWindow(
        requests=requests,
        server_errors=errors,
        latency_buckets=buckets if requests else {},
        class_counts=shares if classes and requests else {},
    )


def healthy(requests: float = 20_000, errors: float = 0, median_ms: float = 5) -> WindowMeasurement:
    """A window where the canary (``requests``, ``errors``) is judged against a healthy
    stable with plenty of traffic: enough to show every default margin."""
    return WindowMeasurement(stable=role(), canary=role(requests, errors, median_ms), window_s=30)


class FakeProvider(MetricsProvider):
    """Answers measurements from a script; ``None`` in the script means unreachable."""

    name = "fake"

    def __init__(self, script: list[WindowMeasurement | None] | None = None) -> None:
        self.script = list(script or [])
        self.default: WindowMeasurement | None = healthy()
        self.snapshots = 0
        self.measured = 0

    async def snapshot(self, targets: Targets) -> dict[str, Any]:
        self.snapshots += 1
        return {"snapshot": self.snapshots}

    async def measure(
        self, targets: Targets, baseline: dict[str, Any] | None, window_s: float
    ) -> WindowMeasurement:
        self.measured += 1
        result = self.script.pop(0) if self.script else self.default
        if result is None:
            raise MetricsUnavailable("prometheus down (fake)")
        return result
