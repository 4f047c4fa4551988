"""The gate under faults, with real processes: SIGKILL after every kind of persisted
decision, two models at once, a canary that dies under traffic.

Each crash uses ``GATE_CRASH_AFTER`` (the gate SIGKILLs itself right after persisting the
named decision), so the kill lands exactly between "persisted" and "carried out": the
hardest moment for a restart.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.gate_stack import (
    AUTH,
    TEST_MARGINS,
    LocalStack,
    add_model,
    build_registry,
    processes_mentioning,
)

pytestmark = pytest.mark.integration

FAST: dict[str, Any] = {
    "step_interval_s": 1.5,
    **TEST_MARGINS,
    "failure_limit": 2,
    "error_limit": 3,
}
TERMINAL = {"succeeded", "rolled_back", "failed", "aborted"}
FAULTY = "--fault_error_rate 0.3"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_registry(tmp_path_factory.mktemp("registry-root"))


def predictors(registry: Path) -> list[tuple[int, str]]:
    """Live predictor processes serving from this registry."""
    return [(pid, c) for pid, c in processes_mentioning(str(registry)) if "-m predictor" in c]


def none_left(registry: Path, timeout: float = 10) -> list[tuple[int, str]]:
    """Predictors still alive after the stack stopped (a killed one takes a moment)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and predictors(registry):
        time.sleep(0.1)
    return predictors(registry)


def port_of(url: str) -> str:
    return url.rsplit(":", 1)[1]


class Load:
    """REST v1 requests through the router in a thread, counting every failure a client
    would see (unlike the stack's Traffic, which only counts successes)."""

    def __init__(self, url: str, model: str = "iris", pause_s: float = 0.01) -> None:
        self.url = f"{url}/v1/models/{model}:predict"
        self.pause_s = pause_s
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set():
                try:
                    response = client.post(self.url, json={"instances": [[6.1, 2.8, 4.7, 1.2]]})
                    if response.status_code == 200:
                        self.ok += 1
                    else:
                        self.failures.append(f"{response.status_code} {response.text[:100]}")
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                time.sleep(self.pause_s)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)


def create(stack: LocalStack, version: str, *, model: str = "iris", **analysis: Any) -> str | None:
    """POST a rollout; None if the gate died answering (a crash right after create)."""
    try:
        return stack.create(version, model=model, **analysis)
    except httpx.HTTPError:
        return None


def wait_dead(stack: LocalStack, timeout: float = 90) -> int:
    assert stack.gate is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = stack.gate.process.poll()
        if code is not None:
            return code
        time.sleep(0.1)
    raise TimeoutError(f"the gate did not crash as asked\n{stack.gate.output()[-3000:]}")


@pytest.mark.parametrize(
    ("crashes", "canary_args", "phase"),
    [
        (["create"], "", "succeeded"),
        (["candidate-started"], "", "succeeded"),
        (["step"], "", "succeeded"),  # first step persisted, weight not applied
        (["step", "reconcile"], "", "succeeded"),  # and again while converging
        (["step:2"], "", "succeeded"),
        (["promote"], "", "succeeded"),
        (["promoted"], "", "succeeded"),  # new stable recorded, old one not yet stopped
        (["rollback"], FAULTY, "rolled_back"),
        (["rolled-back"], FAULTY, "rolled_back"),
    ],
    ids=lambda v: "+".join(v) if isinstance(v, list) else (v or "healthy"),
)
def test_a_gate_killed_after_any_persisted_decision_resumes_it_exactly_once(
    registry: Path, tmp_path: Path, crashes: list[str], canary_args: str, phase: str
) -> None:
    stack = LocalStack(tmp_path, registry, canary_args=canary_args)
    try:
        stack.start_router()
        stack.env["GATE_CRASH_AFTER"] = crashes[0]
        stack.start_gate()
        stable_before = stack.routes()["stable"]["http"]
        with Load(stack.router_url) as load:
            failure_limit = 1 if canary_args else 2  # a faulty canary: rolled back at once
            rollout = create(
                stack, "2", steps=[50, 100], **{**FAST, "failure_limit": failure_limit}
            )
            for crash in [*crashes[1:], ""]:
                assert wait_dead(stack) == -signal.SIGKILL
                stack.env["GATE_CRASH_AFTER"] = crash
                stack.start_gate(wait_ready=not crash)  # the last one serves to the end
            if rollout is None:  # it died answering the create: the rollout was persisted
                [listed] = httpx.get(f"{stack.gate_url}/v1/rollouts", timeout=10).json()
                rollout = listed["id"]
            detail = stack.wait_phase(rollout, TERMINAL)
        assert detail["phase"] == phase, detail["message"]
        actions = [d["action"] for d in detail["decisions"]]
        steps = [d["canary_weight"] for d in detail["decisions"] if d["action"] == "step"]
        judged = [
            (d["evidence"]["judged"]["step_index"], d["outcome"])
            for d in detail["decisions"]
            if d["outcome"] in ("pass", "fail") and "judged" in d["evidence"]
        ]
        passed = [step for step, outcome in judged if outcome == "pass"]
        assert actions.count("create") == 1 and actions.count("candidate-started") == 1
        if phase == "succeeded":
            assert steps == [50, 100] and passed == [0, 1], (actions, judged)
            assert actions.count("promoted") == 1
        else:
            assert steps == [50] and judged == [(0, "fail")], (actions, judged)
            assert actions.count("rolled-back") == 1
        assert load.ok > 0
        # exactly one predictor left: the stable the router sends traffic to
        stable_now = stack.routes()["stable"]["http"]
        assert (stable_now != stable_before) is (phase == "succeeded")
        deadline = time.monotonic() + 20  # a retired predictor drains before it exits
        while time.monotonic() < deadline and len(predictors(registry)) > 1:
            time.sleep(0.2)
        left = predictors(registry)
        assert len(left) == 1 and f"--http_port {port_of(stable_now)}" in left[0][1], left
    finally:
        stack.stop()
    assert none_left(registry) == []


def test_two_models_at_once_a_candidate_that_never_gets_ready_delays_nothing(
    tmp_path: Path,
) -> None:
    registry = build_registry(tmp_path / "a")
    add_model(tmp_path / "a", registry, "iris2")
    stack = LocalStack(tmp_path, registry)
    stack.env.update(
        GATE_STABLE_MODEL_DIRS=json.dumps([str(registry / "iris2" / "1")]),
        GATE_CANARY_ARGS_BY_MODEL=json.dumps({"iris2": "--fault_start_delay_s 600"}),
        GATE_CANDIDATE_TIMEOUT_S="600",
    )
    try:
        stack.start_router()
        stack.start_gate()
        with Load(stack.router_url) as load, Load(stack.router_url, model="iris2") as load2:
            stuck = create(stack, "2", model="iris2", steps=[50, 100], **FAST)
            healthy = create(stack, "2", steps=[25, 50, 100], **FAST)
            assert stuck and healthy
            detail = stack.wait_phase(healthy, TERMINAL)
            assert detail["phase"] == "succeeded", detail["message"]
            assert stack.rollout(stuck)["phase"] == "validating"
            started = time.monotonic()
            aborted = httpx.post(
                f"{stack.gate_url}/v1/rollouts/{stuck}/abort", headers=AUTH, timeout=10
            )
            abort_s = time.monotonic() - started
        assert aborted.status_code == 200 and aborted.json()["phase"] == "aborted"
        assert abort_s < 1.0, abort_s
        # the healthy rollout's decisions (steps, and extensions of a step still short of
        # evidence) came at most one analysis interval apart, never held up
        judged = {"step", "extend-step", "retry-step", "promote"}
        times = [
            datetime.fromisoformat(d["at"]) for d in detail["decisions"] if d["action"] in judged
        ]
        gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
        assert gaps and max(gaps) <= FAST["step_interval_s"] + 4, gaps
        assert load.failures == [] and load2.failures == []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(
            "fault_start_delay_s" in c for _, c in predictors(registry)
        ):
            time.sleep(0.2)
        assert not any("fault_start_delay_s" in c for _, c in predictors(registry))
    finally:
        stack.stop()


def test_a_canary_killed_under_traffic_costs_clients_nothing_and_is_rolled_back(
    tmp_path: Path,
) -> None:
    registry = build_registry(tmp_path / "a")
    stack = LocalStack(tmp_path, registry)
    try:
        stack.start_router()
        stack.start_gate()
        with Load(stack.router_url, pause_s=0.005) as load:
            rollout = create(stack, "2", steps=[50, 100], **{**FAST, "step_interval_s": 4.0})
            assert rollout
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline and stack.routes()["canary_weight"] != 50:
                time.sleep(0.1)
            canary = stack.routes()["canary"]["http"]
            time.sleep(0.5)
            [pid] = [p for p, c in predictors(registry) if f"--http_port {port_of(canary)}" in c]
            os.kill(pid, signal.SIGKILL)
            detail = stack.wait_phase(rollout, TERMINAL)
            with contextlib.suppress(Exception):
                time.sleep(0.5)
        assert detail["phase"] == "rolled_back", detail["message"]
        assert load.failures == [], load.failures[:5]
        assert load.ok > 100
        assert stack.routes()["canary"] is None
    finally:
        stack.stop()
