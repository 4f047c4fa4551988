"""Gating hooks against a real gate (router, gate, predictors on loopback, live traffic)
and a real HTTP receiver: every hook type approves, denies, and hangs past its timeout.

| type                     | approves | denies | hangs |
|--------------------------|----------|--------|-------|
| confirm-rollout          | A        | B      | C     |
| pre-rollout              | A        | C      | C     |
| rollout                  | A        | D      | D     |
| confirm-traffic-increase | A        | C      | B     |
| confirm-promotion        | A (the gate's own approval, by the CLI) | B | B |
| post-rollout             | A        | C      | D     |
| rollback                 | E (2xx rolls back) | A (ignored) | A (ignored) |

One stack for the module; the rollouts run one after another (one active per model).
A confirm hook that denies or hangs holds the rollout with the reason, the gate stays
responsive, and the rollout moves on once the receiver says yes.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.gate_stack import (
    TERMINAL_PHASES,
    TEST_MARGINS,
    TOKEN,
    LocalStack,
    Traffic,
    build_registry,
    ended_afterwards,
)
from tests.helpers import REPO_ROOT

pytestmark = pytest.mark.integration

HANG = -1
STEPS: dict[str, Any] = {"steps": [50, 100], "step_interval_s": 2.0, **TEST_MARGINS}
IRISGATE = Path(sys.executable).with_name("irisgate")


class Receiver:
    """Answers each path with the status set for it (default 200), or never (``HANG``:
    holds the connection for a minute); keeps every payload with its path."""

    def __init__(self) -> None:
        self.modes: dict[str, int] = {}
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                receiver.calls.append((self.path, body))
                mode = receiver.modes.get(self.path, 200)
                if mode == HANG:
                    receiver.release.wait(60)
                    return
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.send_response(mode)
                    self.end_headers()
                    self.wfile.write(f"{self.path} says {mode}".encode())

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def hook(self, name: str, kind: str, path: str, **extra: Any) -> dict[str, Any]:
        return {"name": name, "type": kind, "url": f"{self.url}/{path}", **extra}

    def called(self, path: str) -> list[dict[str, Any]]:
        return [body for at, body in self.calls if at == f"/hooks/{path}"]

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    yield running
    running.close()


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, receiver: Receiver
) -> Iterator[tuple[LocalStack, Traffic]]:
    root = tmp_path_factory.mktemp("hooks")
    registry = build_registry(root, ("logreg",) * 6)
    stacked = LocalStack(root, registry)
    stacked.env["GATE_HOOK_ALLOWED_PREFIXES"] = json.dumps([receiver.url])
    try:
        stacked.start_router()
        stacked.start_gate()
        with stacked.traffic() as traffic:
            yield stacked, traffic
    finally:
        stacked.stop()


def wait_for(
    stack: LocalStack, rollout_id: str, what: Callable[[dict[str, Any]], bool], timeout: float = 90
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    detail: dict[str, Any] = {}
    while time.monotonic() < deadline:
        detail = stack.rollout(rollout_id)
        if what(detail):
            return detail
        time.sleep(0.3)
    raise TimeoutError(f"rollout {rollout_id}: {json.dumps(detail)[-3000:]}")


def held(kind: str, *reasons: str) -> Callable[[dict[str, Any]], bool]:
    def check(detail: dict[str, Any]) -> bool:
        return detail["held_by"] == kind and all(r in detail["message"] for r in reasons)

    return check


def ended(detail: dict[str, Any]) -> bool:
    return detail["phase"] in TERMINAL_PHASES


def hook_answers(detail: dict[str, Any], action: str) -> list[dict[str, Any]]:
    return [h for d in detail["decisions"] if d["action"] == action for h in d["evidence"]["hooks"]]


def assert_responsive(stack: LocalStack) -> None:
    """A tick waiting on a hook holds only its own rollout."""
    started = time.monotonic()
    assert httpx.get(f"{stack.gate_url}/readyz", timeout=5).status_code == 200
    assert httpx.get(f"{stack.gate_url}/v1/rollouts", timeout=5).status_code == 200
    assert time.monotonic() - started < 2


def test_a_every_hook_approves_and_a_user_approves_the_promotion(
    stack: tuple[LocalStack, Traffic], receiver: Receiver
) -> None:
    """A: Flagger's payload reaches each receiver; the promotion waits for a user, who
    approves it with the CLI; rollback hooks that deny or hang change nothing; the
    post-rollout answer is recorded after the end."""
    local, _ = stack
    receiver.modes.update({"/hooks/a-rollback-no": 403, "/hooks/a-rollback-hang": HANG})
    hooks = [
        receiver.hook("confirm", "confirm-rollout", "a-confirm"),
        receiver.hook("smoke", "pre-rollout", "a-pre", metadata={"cmd": "smoke --fast"}),
        receiver.hook("load", "rollout", "a-rollout"),
        receiver.hook("qa", "confirm-traffic-increase", "a-increase"),
        {"name": "release manager", "type": "confirm-promotion", "url": "approval"},
        receiver.hook("chat", "post-rollout", "a-post"),
        receiver.hook("kill switch", "rollback", "a-rollback-no"),
        receiver.hook("slow switch", "rollback", "a-rollback-hang", timeout_s=0.5),
    ]
    rollout_id = local.create("2", **STEPS, hooks=hooks)
    with ended_afterwards(local, rollout_id):
        waiting = wait_for(local, rollout_id, held("confirm-promotion", "not approved yet"))
        assert (waiting["phase"], waiting["canary_weight"]) == ("progressing", 100)
        assert_responsive(local)
        env = {**os.environ, "IRISGATE_GATE_URL": local.gate_url, "GATE_API_TOKEN": TOKEN}
        approved = subprocess.run(
            [str(IRISGATE), "rollouts", "approve", rollout_id, "-o", "json"],
            env=env, capture_output=True, text=True, timeout=30, cwd=REPO_ROOT, check=False,
        )  # fmt: skip
        assert approved.returncode == 0, approved.stderr
        assert json.loads(approved.stdout)["approvals"] == ["confirm-promotion"]
        done = wait_for(
            local, rollout_id, lambda d: "hooks" in [x["action"] for x in d["decisions"]]
        )
    assert done["phase"] == "succeeded" and done["stable_version"] == "2"
    assert done["previous_version"] == "1"
    (post,) = hook_answers(done, "hooks")
    assert (post["name"], post["ok"], post["status"]) == ("chat", True, 200)
    sent = receiver.called("a-pre")[0]
    assert {k: sent[k] for k in ("name", "namespace", "checksum", "type", "metadata")} == {
        "name": "iris",
        "namespace": "default",
        "checksum": rollout_id,
        "type": "pre-rollout",
        "metadata": {"cmd": "smoke --fast"},
    }
    assert sent["phase"] == "Progressing" and sent["irisgate"]["candidate_version"] == "2"
    assert receiver.called("a-confirm") and receiver.called("a-increase")
    assert len(receiver.called("a-rollout")) >= 2  # once per step window
    assert receiver.called("a-post")[0]["phase"] == "Succeeded"
    assert len(receiver.called("a-rollback-no")) >= 3  # every tick, ignored
    slow = [h for h in hook_answers(done, "promote") if h["name"] == "slow switch"]
    step_hooks = {h["type"] for h in hook_answers(done, "step")}
    assert {"confirm-traffic-increase", "pre-rollout", "rollout"} <= step_hooks
    assert slow == []  # rollback answers are evidence only when they roll back
    actions = [d["action"] for d in done["decisions"]]
    assert actions.count("hold") == 1 and "approve" in actions


def test_b_denying_and_hanging_confirm_hooks_hold_until_they_say_yes(
    stack: tuple[LocalStack, Traffic], receiver: Receiver
) -> None:
    """B: confirm-rollout denies (nothing starts), confirm-traffic-increase hangs past its
    timeout (no user is sent to the candidate), confirm-promotion denies and hangs; each
    holds with its reason until its receiver says yes."""
    local, _ = stack
    receiver.modes.update(
        {
            "/hooks/b-confirm": 403,
            "/hooks/b-increase": HANG,
            "/hooks/b-promo-no": 409,
            "/hooks/b-promo-hang": HANG,
        }
    )
    hooks = [
        receiver.hook("change window", "confirm-rollout", "b-confirm"),
        receiver.hook("qa", "confirm-traffic-increase", "b-increase", timeout_s=1),
        receiver.hook("sign-off", "confirm-promotion", "b-promo-no"),
        receiver.hook("slow sign-off", "confirm-promotion", "b-promo-hang", timeout_s=1),
    ]
    rollout_id = local.create("3", **STEPS, hooks=hooks)
    with ended_afterwards(local, rollout_id):
        wait_for(local, rollout_id, held("confirm-rollout", "'change window': HTTP 403"))
        time.sleep(2)
        assert local.routes()["canary"] is None  # the candidate was never started
        assert local.rollout(rollout_id)["phase"] == "validating"
        receiver.modes["/hooks/b-confirm"] = 200
        waiting = wait_for(
            local, rollout_id, held("confirm-traffic-increase", "'qa': no answer within 1 s")
        )
        assert waiting["canary_weight"] == 0 and local.routes()["canary_weight"] == 0
        assert_responsive(local)
        receiver.modes["/hooks/b-increase"] = 200
        wait_for(
            local,
            rollout_id,
            held("confirm-promotion", "'sign-off': HTTP 409", "'slow sign-off': no answer within"),
        )
        receiver.modes.update({"/hooks/b-promo-no": 200, "/hooks/b-promo-hang": 200})
        done = wait_for(local, rollout_id, ended)
    assert done["phase"] == "succeeded", done["message"]
    holds = [d["reason"] for d in done["decisions"] if d["action"] == "hold"]
    assert len(holds) == 3, holds  # one decision per reason, not one per tick


def test_c_pre_rollout_hooks_that_deny_or_hang_fail_the_rollout_before_any_user(
    stack: tuple[LocalStack, Traffic], receiver: Receiver
) -> None:
    """C: confirm-rollout hangs (held), then confirm-traffic-increase denies (held); once
    both say yes, the pre-rollout hooks deny and hang: two failed checks, the failure
    limit, and the candidate never answered a user. post-rollout denies: recorded."""
    local, _ = stack
    receiver.modes.update(
        {
            "/hooks/c-confirm": HANG,
            "/hooks/c-increase": 403,
            "/hooks/c-pre-no": 500,
            "/hooks/c-pre-hang": HANG,
            "/hooks/c-post": 503,
        }
    )
    hooks = [
        receiver.hook("change window", "confirm-rollout", "c-confirm", timeout_s=1),
        receiver.hook("qa", "confirm-traffic-increase", "c-increase"),
        receiver.hook("smoke", "pre-rollout", "c-pre-no"),
        receiver.hook("warm-up", "pre-rollout", "c-pre-hang", timeout_s=1),
        receiver.hook("chat", "post-rollout", "c-post"),
    ]
    rollout_id = local.create("4", **STEPS, hooks=hooks)
    with ended_afterwards(local, rollout_id):
        wait_for(local, rollout_id, held("confirm-rollout", "no answer within 1 s"))
        receiver.modes["/hooks/c-confirm"] = 200
        wait_for(local, rollout_id, held("confirm-traffic-increase", "'qa': HTTP 403"))
        receiver.modes["/hooks/c-increase"] = 200
        done = wait_for(
            local, rollout_id, lambda d: "hooks" in [x["action"] for x in d["decisions"]]
        )
    assert done["phase"] == "failed" and done["failures"] == 2
    assert done["message"].startswith("failure limit reached (2/2): pre-rollout hook 'smoke'")
    assert "'warm-up': no answer within 1 s" in done["message"]
    assert local.routes()["canary"] is None and local.routes()["canary_weight"] == 0
    (post,) = hook_answers(done, "hooks")
    assert (post["ok"], post["status"]) == (False, 503)
    assert receiver.called("c-post")[0]["phase"] == "Failed"


def test_d_rollout_hooks_that_deny_or_hang_roll_the_canary_back(
    stack: tuple[LocalStack, Traffic], receiver: Receiver
) -> None:
    """D: the step's rollout hooks deny and hang: each window's analysis fails, and at the
    failure limit the canary is rolled back; post-rollout hangs past its timeout and its
    answer is recorded as such, the rollout already ended."""
    local, _ = stack
    receiver.modes.update({"/hooks/d-load": 502, "/hooks/d-soak": HANG, "/hooks/d-post": HANG})
    hooks = [
        receiver.hook("load test", "rollout", "d-load"),
        receiver.hook("soak", "rollout", "d-soak", timeout_s=1),
        receiver.hook("chat", "post-rollout", "d-post", timeout_s=1),
    ]
    rollout_id = local.create("5", **STEPS, hooks=hooks)
    with ended_afterwards(local, rollout_id):
        done = wait_for(
            local, rollout_id, lambda d: "hooks" in [x["action"] for x in d["decisions"]]
        )
    assert done["phase"] == "rolled_back", done["message"]
    assert "rollout hook 'load test': HTTP 502" in done["message"]
    assert "rollout hook 'soak': no answer within 1 s" in done["message"]
    failed = [d for d in done["decisions"] if d["outcome"] == "fail"]
    assert len(failed) == 2 and {h["name"] for h in failed[0]["evidence"]["hooks"]} == {
        "load test",
        "soak",
    }
    (post,) = hook_answers(done, "hooks")
    assert (post["ok"], post["status"], post["reason"]) == (False, None, "no answer within 1 s")
    assert local.routes()["canary"] is None


def test_e_a_rollback_hook_that_says_yes_rolls_back(
    stack: tuple[LocalStack, Traffic], receiver: Receiver
) -> None:
    """E: Flagger's kill switch: a rollback hook answering 2xx during the steps."""
    local, _ = stack
    receiver.modes["/hooks/e-switch"] = 404
    hooks = [receiver.hook("kill switch", "rollback", "e-switch")]
    rollout_id = local.create("6", **{**STEPS, "step_interval_s": 600}, hooks=hooks)
    with ended_afterwards(local, rollout_id):
        wait_for(local, rollout_id, lambda d: d["canary_weight"] == 50)
        receiver.modes["/hooks/e-switch"] = 200
        done = wait_for(local, rollout_id, ended)
    assert done["phase"] == "rolled_back"
    assert done["message"].startswith("rollback hook 'kill switch' asked for a rollback")
    assert local.routes()["canary"] is None and done["stable_version"] == "3"
