"""The ``irisgate`` CLI without a gate (httpx.MockTransport), and the stream endpoint's
event loop without a server: parsing, exit codes, rendering, SSE framing and timing."""

from __future__ import annotations

import asyncio
import functools
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from rich.console import Console
from typer.testing import CliRunner

import gate.cli.client as client_module
from gate.app import create_app
from gate.cli.app import app
from gate.cli.client import TERMINAL_PHASES, GateClient, SSEvent, parse_sse
from gate.cli.render import age, rollout_line, rollout_view, rollouts_table, step_text
from gate.core.errors import NotFound
from gate.core.spec import TERMINAL, AnalysisSpec, Candidate
from gate.core.state import RolloutState
from gate.schemas import RolloutDetail, RolloutPublic
from gate.settings import GateSettings
from gate.stream_api import KEEPALIVE, rollout_events, sse_event
from tests.gate_fakes import FakeBackend, FakeProvider, write_holdout
from tests.helpers import REPO_ROOT

TOKEN = "cli-token-0123456789abcdef"
GATE = "http://gate.test"
Handler = Callable[[httpx.Request], httpx.Response]


def rollout(phase: str = "progressing", weight: int = 50, **changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "id": "r-1",
        "model": "iris",
        "phase": phase,
        "paused": False,
        "candidate": {"version": "2", "artifact_uri": "/reg/iris/2"},
        "stable_version": "1",
        "promoted": False,
        "canary_weight": weight,
        "step_index": 0,
        "steps": [50, 100],
        "failures": 0,
        "inconclusive": 0,
        "errors": 0,
        "message": f"step at {weight} %",
        "created_at": "2026-12-02T10:00:00+00:00",
        "updated_at": "2026-12-02T10:00:05+00:00",
        "decisions": [
            {
                "at": "2026-12-02T10:00:05.123+00:00",
                "phase": phase,
                "step_index": 0,
                "canary_weight": weight,
                "action": "step",
                "outcome": "pass",
                "reason": "every margin shown",
                "evidence": {},
            }
        ],
    }
    document.update(changes)
    return document


def sse(*states: dict[str, Any]) -> bytes:
    return b"".join(b"event: rollout\ndata: " + json.dumps(s).encode() + b"\n\n" for s in states)


class Recorder:
    """A MockTransport handler that records requests and answers from a script."""

    def __init__(self, answer: Handler) -> None:
        self.answer = answer
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        return self.answer(request)


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Callable[[Handler], Recorder]:
    """Point the CLI at a MockTransport: ``gate(handler)`` returns the recorder."""
    monkeypatch.delenv("GATE_API_TOKEN", raising=False)
    monkeypatch.setenv("IRISGATE_GATE_URL", GATE)

    def install(answer: Handler) -> Recorder:
        recorder = Recorder(answer)
        transport = httpx.MockTransport(recorder)
        monkeypatch.setattr(
            client_module, "GateClient", functools.partial(GateClient, transport=transport)
        )
        return recorder

    return install


def run(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(app, list(args), env=env)


# --- SSE parsing ---------------------------------------------------------------------------


def test_sse_parsing_follows_the_whatwg_rules() -> None:
    lines = [
        ": keep-alive",
        "",
        "event: rollout",
        'data: {"a":',
        "data:1}",
        "id: 7",
        "",
        "data:  two spaces keep one\r\n",
        "",
        "event: empty",  # no data: not dispatched
        "",
        "event: cut",
        "data: unterminated",  # the stream ended inside the event: dropped
    ]
    assert list(parse_sse(lines)) == [
        SSEvent("rollout", '{"a":\n1}', "7"),
        SSEvent("message", " two spaces keep one", "7"),
    ]


def test_the_cli_knows_the_gates_terminal_phases() -> None:
    assert {p.value for p in TERMINAL} == TERMINAL_PHASES


# --- exit codes and requests ---------------------------------------------------------------


def test_list_shows_a_table_or_the_apis_json(gate: Callable[[Handler], Recorder]) -> None:
    body = [rollout(), rollout("succeeded", 100, id="r-0")]
    recorder = gate(lambda request: httpx.Response(200, json=body))
    human = run("rollouts", "list", "--active")
    assert human.exit_code == 0, human.output
    assert "r-1" in human.output and "progressing" in human.output and "50 %" in human.output
    assert recorder.requests[0].url.params["active"] == "true"
    machine = run("rollouts", "list", "--output", "json")
    assert machine.exit_code == 0 and json.loads(machine.output) == body
    assert "active" not in recorder.requests[1].url.params


def test_a_refusal_exits_1_with_status_and_detail(gate: Callable[[Handler], Recorder]) -> None:
    gate(lambda request: httpx.Response(404, json={"detail": "no rollout nope"}))
    result = run("rollouts", "get", "nope")
    assert result.exit_code == 1
    assert "404 Not Found: no rollout nope" in result.output


def test_a_validation_error_names_the_fields(gate: Callable[[Handler], Recorder]) -> None:
    problems = [{"loc": ["body", "candidate", "version"], "msg": "too long", "type": "x"}]
    gate(lambda request: httpx.Response(422, json={"detail": problems}))
    result = run("rollouts", "get", "r-1")
    assert result.exit_code == 1
    assert "body.candidate.version: too long" in result.output


@pytest.mark.parametrize(
    "answer",
    [
        lambda request: httpx.Response(503, text="upstream down"),
        functools.partial(
            lambda request: (_ for _ in ()).throw(httpx.ConnectError("refused", request=request))
        ),
    ],
    ids=["5xx", "unreachable"],
)
def test_a_failed_or_unreachable_gate_exits_3(
    gate: Callable[[Handler], Recorder], answer: Handler
) -> None:
    gate(answer)
    result = run("rollouts", "list")
    assert result.exit_code == 3, result.output
    assert result.output.startswith("error: ")


def test_usage_errors_exit_2(gate: Callable[[Handler], Recorder]) -> None:
    recorder = gate(lambda request: httpx.Response(201, json=rollout()))
    assert run("rollouts", "create", "--version", "2").exit_code == 2
    bad = run(
        "rollouts", "create", "--model", "iris", "--version", "2", "--artifact-uri", "x",
        "--accuracy", "0.9", "--analysis", "[1]",
    )  # fmt: skip
    assert bad.exit_code == 2 and "JSON object" in bad.output
    assert run("feedback", "--model", "iris").exit_code == 2
    assert run("feedback", "--model", "iris", "--label", "no-class").exit_code == 2
    assert run("rollouts", "frobnicate", "r-1").exit_code == 2
    assert recorder.requests == []


def test_ctrl_c_exits_130(gate: Callable[[Handler], Recorder]) -> None:
    def interrupted(request: httpx.Request) -> httpx.Response:
        raise KeyboardInterrupt

    gate(interrupted)
    assert run("rollouts", "get", "r-1", "--watch").exit_code == 130


def test_create_sends_the_candidate_with_the_token_never_shown(
    gate: Callable[[Handler], Recorder], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = gate(lambda request: httpx.Response(201, json=rollout("validating", 0)))
    (tmp_path / "iris" / "2").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    result = run(
        "rollouts", "create", "--model", "iris", "--version", "2",
        "--artifact-uri", "iris/2", "--accuracy", "0.95",
        "--analysis", '{"steps": [50, 100]}', "--digest", "sha256:" + "ab" * 32,
        env={"GATE_API_TOKEN": TOKEN},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "created r-1 validating" in result.output and TOKEN not in result.output
    request = recorder.requests[0]
    assert (request.method, request.url.path) == ("POST", "/v1/rollouts")
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert json.loads(request.content) == {
        "model": "iris",
        "candidate": {
            "version": "2",
            "artifact_uri": str(tmp_path / "iris" / "2"),  # relative paths go absolute
            "offline_metrics": {"accuracy": 0.95},
            "digest": "sha256:" + "ab" * 32,
        },
        "analysis": {"steps": [50, 100]},
    }


@pytest.mark.parametrize("command", ["pause", "resume", "promote", "abort"])
def test_commands_post_to_the_rollout(gate: Callable[[Handler], Recorder], command: str) -> None:
    recorder = gate(lambda request: httpx.Response(200, json=rollout(paused=True)))
    result = run("rollouts", command, "r-1", "--token", TOKEN, "--gate-url", "http://other.test")
    assert result.exit_code == 0, result.output
    assert "r-1 progressing (paused) weight 50 %" in result.output
    request = recorder.requests[0]
    assert str(request.url) == f"http://other.test/v1/rollouts/r-1/{command}"
    assert request.headers["authorization"] == f"Bearer {TOKEN}"


def test_promote_full_and_approve_say_what_they_ask(
    gate: Callable[[Handler], Recorder],
) -> None:
    held = rollout(held_by="confirm-promotion", approvals=["confirm-promotion"])
    recorder = gate(lambda request: httpx.Response(200, json=held))
    assert run("rollouts", "promote", "r-1", "--full", "--token", TOKEN).exit_code == 0
    assert run("rollouts", "promote", "r-1", "--token", TOKEN).exit_code == 0
    approved = run("rollouts", "approve", "r-1", "--token", TOKEN)
    assert "(waiting for confirm-promotion)" in approved.output
    assert run("rollouts", "approve", "r-1", "--type", "rollback", "--token", TOKEN).exit_code == 0
    wrong = run("rollouts", "approve", "r-1", "--type", "later", "--token", TOKEN)
    assert wrong.exit_code == 2 and "--type" in wrong.output
    urls = [str(r.url) for r in recorder.requests]
    assert urls == [
        f"{GATE}/v1/rollouts/r-1/promote?full=true",
        f"{GATE}/v1/rollouts/r-1/promote",
        f"{GATE}/v1/rollouts/r-1/approve",
        f"{GATE}/v1/rollouts/r-1/approve",
    ]
    bodies = [r.content for r in recorder.requests[2:]]
    assert bodies == [b"", b'{"type":"rollback"}']


def test_feedback_reads_flags_and_files(
    gate: Callable[[Handler], Recorder], tmp_path: Path
) -> None:
    recorder = gate(lambda request: httpx.Response(200, json={"accepted": 4, "unknown": 1}))
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"req-3": 2, "req-4": "virginica"}))
    result = run(
        "feedback", "--model", "iris", "--label", "req-1=0", "--label", "req-2=setosa,1",
        "--file", str(labels), "-o", "json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"accepted": 4, "unknown": 1}
    assert json.loads(recorder.requests[0].content) == {
        "model": "iris",
        "labels": [
            {"id": "req-1", "label": 0},
            {"id": "req-2", "label": ["setosa", 1]},
            {"id": "req-3", "label": 2},
            {"id": "req-4", "label": "virginica"},
        ],
    }


# --- watch ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("final", "code"), [("succeeded", 0), ("rolled_back", 4)])
def test_watch_follows_the_stream_and_exits_by_the_final_phase(
    gate: Callable[[Handler], Recorder], final: str, code: int
) -> None:
    body = b": keep-alive\n\n" + sse(rollout(weight=50), rollout(final, 100))
    recorder = gate(
        lambda request: httpx.Response(
            200, content=body, headers={"content-type": "text/event-stream"}
        )
    )
    result = run("rollouts", "get", "r-1", "--watch")
    assert result.exit_code == code, result.output
    lines = result.output.splitlines()  # not a terminal: a line per state
    assert "weight 50 %" in lines[0] and final in lines[1]
    assert recorder.requests[0].url.path == "/v1/rollouts/r-1/stream"
    machine = run("rollouts", "get", "r-1", "--watch", "-o", "json")
    assert [json.loads(line)["phase"] for line in machine.output.splitlines()] == [
        "progressing",
        final,
    ]


def test_watch_reconnects_when_a_stream_ends_before_the_rollout(
    gate: Callable[[Handler], Recorder],
) -> None:
    bodies = iter([sse(rollout(weight=50)), sse(rollout("succeeded", 100))])
    recorder = gate(lambda request: httpx.Response(200, content=next(bodies)))
    result = run("rollouts", "get", "r-1", "--watch")
    assert result.exit_code == 0, result.output
    assert len(recorder.requests) == 2


def test_watch_of_an_unknown_rollout_is_a_refusal(gate: Callable[[Handler], Recorder]) -> None:
    gate(lambda request: httpx.Response(404, json={"detail": "no rollout r-9"}))
    result = run("rollouts", "get", "r-9", "--watch")
    assert result.exit_code == 1 and "no rollout r-9" in result.output


# --- rendering -----------------------------------------------------------------------------


def render(renderable: Any) -> str:
    console = Console(width=140, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(renderable)
    return console.export_text()


def test_the_rollout_view_shows_what_an_operator_watches() -> None:
    now = datetime(2026, 12, 2, 10, 2, 13, tzinfo=UTC)
    text = render(rollout_view(rollout(), now))
    for expected in (
        "r-1", "progressing", "50 %", "1/2 (50 %)", "steps 50 -> 100", "step at 50 %",
        "stable 1 -> candidate 2", "2m13s", "10:00:05", "every margin shown",
    ):  # fmt: skip
        assert expected in text, (expected, text)
    table = render(rollouts_table([rollout(paused=True)], now))
    assert "progressing (paused)" in table and "ID" in table
    promoted = rollout("succeeded", 0, stable_version="2", previous_version="1", promoted=True)
    assert "stable 1 -> candidate 2 (the stable now)" in render(rollout_view(promoted, now))
    assert re.search(r"r-1\s+iris\s+1\s+2\s+succeeded", render(rollouts_table([promoted], now)))


def test_steps_and_ages_read_like_kubectl() -> None:
    assert step_text(rollout(step_index=-1)) == "-/2"
    assert step_text(rollout(step_index=1)) == "2/2 (100 %)"
    now = datetime(2026, 12, 2, tzinfo=UTC)
    assert [age((now - timedelta(seconds=s)).isoformat(), now) for s in (5, 75, 7300, 90000)] == [
        "5s",
        "1m15s",
        "2h01m",
        "1d01h",
    ]
    assert rollout_line(rollout()) == "r-1 progressing weight 50 % step 1/2 (50 %): step at 50 %"


def test_help_starts_fast_and_loads_no_server_code() -> None:
    heavy = ("fastapi", "kubernetes", "httpx", "pydantic")
    probe = f"import sys, gate.cli.app; print(sorted(m for m in {heavy} if m in sys.modules))"
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=REPO_ROOT
    )
    assert loaded.stdout.strip() == "[]"
    started = time.monotonic()
    shown = subprocess.run(
        [sys.executable, "-m", "gate.cli", "--help"], capture_output=True, text=True, cwd=REPO_ROOT
    )
    assert shown.returncode == 0 and "Exit codes" in shown.stdout
    assert time.monotonic() - started < 3  # ~0.4 s on an idle machine; a loaded CI is slower


# --- the stream endpoint -------------------------------------------------------------------


def detail(phase: str = "progressing", updated: int = 0, decisions: int = 0) -> RolloutDetail:
    at = datetime(2026, 12, 2, tzinfo=UTC)
    state = RolloutState.model_validate(
        {
            "id": "r-1",
            "model": "iris",
            "candidate": Candidate.model_validate(
                {"version": "2", "artifact_uri": "/r/iris/2", "offline_metrics": {"accuracy": 0.9}}
            ),
            "spec": AnalysisSpec(),
            "phase": phase,
            "created_at": at,
            "updated_at": at + timedelta(seconds=updated),
        }
    )
    public = RolloutPublic.of(state).model_dump()
    entries: list[dict[str, Any]] = [
        {"at": at, "phase": phase, "step_index": 0, "canary_weight": 0, "action": "wait",
         "outcome": None, "reason": "", "evidence": {}}
        for _ in range(decisions)
    ]  # fmt: skip
    return RolloutDetail.model_validate({**public, "analysis": state.spec, "decisions": entries})


def collect(
    first: RolloutDetail,
    states: list[RolloutDetail | None],
    *,
    lifetime_s: float,
    poll_s: float = 0.5,
    keepalive_s: float = 15.0,
) -> list[bytes]:
    """The stream's chunks when the store reads ``states`` in turn (None: it is gone)."""
    pending = iter(states)

    async def load() -> RolloutDetail:
        state = next(pending, states[-1] if states else first)
        if state is None:
            raise NotFound("gone")
        return state

    async def connected() -> bool:
        return False

    async def drain() -> list[bytes]:
        events = rollout_events(
            first, load, connected, lifetime_s=lifetime_s, poll_s=poll_s, keepalive_s=keepalive_s
        )
        return [chunk async for chunk in events]

    return asyncio.run(drain())


def test_a_terminal_rollouts_stream_is_one_event() -> None:
    assert collect(detail("succeeded"), [], lifetime_s=60) == [sse_event(detail("succeeded"))]


def test_the_stream_sends_changes_only_and_ends_after_the_final_state() -> None:
    same, newer, decided, final = (
        detail(),
        detail(updated=1),
        detail(updated=1, decisions=1),
        detail("succeeded", updated=2, decisions=2),
    )
    chunks = collect(detail(), [same, newer, newer, decided, final], lifetime_s=60, poll_s=0.001)
    assert chunks == [sse_event(c) for c in (detail(), newer, decided, final)]
    data = json.loads(chunks[-1].decode().split("data: ", 1)[1])
    assert data["phase"] == "succeeded" and len(data["decisions"]) == 2


def test_a_quiet_stream_sends_keep_alives_and_ends_at_its_lifetime() -> None:
    started = time.monotonic()
    chunks = collect(detail(), [], lifetime_s=0.3, poll_s=0.01, keepalive_s=0.1)
    assert 0.25 < time.monotonic() - started < 2
    assert chunks[0] == sse_event(detail()) and 2 <= chunks.count(KEEPALIVE) <= 3
    assert set(chunks[1:]) == {KEEPALIVE}


def test_a_rollout_that_disappears_ends_its_stream() -> None:
    assert collect(detail(), [None], lifetime_s=60, poll_s=0.001) == [sse_event(detail())]


def test_the_whole_rollout_is_loaded_only_when_the_probe_moved() -> None:
    """Many watchers of a long rollout: each poll reads two indexed rows (the probe); the
    decisions with their evidence are loaded again only after a change."""
    probes = iter([("t0", 1), ("t0", 1), ("t0", 1), ("t1", 2), ("t1", 2), None])
    loads: list[RolloutDetail] = []
    changed = detail(updated=1, decisions=1)

    async def probe() -> object:
        return next(probes)

    async def load() -> RolloutDetail:
        loads.append(changed if len(loads) else detail())
        return loads[-1]

    async def connected() -> bool:
        return False

    async def drain() -> list[bytes]:
        events = rollout_events(detail(), load, connected, lifetime_s=60, poll_s=0.001, probe=probe)
        return [chunk async for chunk in events]

    chunks = asyncio.run(drain())
    assert len(loads) == 2  # the first poll, then the move: not once per poll
    assert chunks == [sse_event(detail()), sse_event(changed)]  # and None ended it


@pytest.fixture
def api(tmp_path: Path) -> Iterator[TestClient]:
    write_holdout(tmp_path / "registry" / "iris" / "2")
    settings = GateSettings(
        api_token=TOKEN,
        db_path=tmp_path / "gate.db",
        tick_interval_s=1000,
        registry_dir=tmp_path / "registry",
    )
    app_ = create_app(settings, backend=FakeBackend(), provider=FakeProvider())
    with TestClient(app_) as test_client:
        yield test_client


def test_the_stream_endpoint_sends_what_get_answers(api: TestClient, tmp_path: Path) -> None:
    created = api.post(
        "/v1/rollouts",
        headers={"Authorization": f"Bearer {TOKEN}"},
        json={
            "model": "iris",
            "candidate": {
                "version": "2",
                "artifact_uri": str(tmp_path / "registry" / "iris" / "2"),
                "offline_metrics": {"accuracy": 0.97},
            },
        },
    )
    assert created.status_code == 201, created.text
    rollout_id = created.json()["id"]
    aborted = api.post(
        f"/v1/rollouts/{rollout_id}/abort", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert aborted.status_code == 200 and aborted.json()["phase"] in TERMINAL_PHASES
    streamed = api.get(f"/v1/rollouts/{rollout_id}/stream")  # terminal: ends at once
    assert streamed.status_code == 200
    assert streamed.headers["content-type"].startswith("text/event-stream")
    (event,) = list(parse_sse(streamed.text.splitlines()))
    assert event.event == "rollout"
    assert json.loads(event.data) == api.get(f"/v1/rollouts/{rollout_id}").json()
    assert api.get("/v1/rollouts/nope/stream").status_code == 404
    assert api.get("/v1/rollouts/no%20pe/stream").status_code == 422
    assert api.get(f"/v1/rollouts/{rollout_id}/stream?timeout_s=0").status_code == 422
    operation = api.get("/openapi.json").json()["paths"]["/v1/rollouts/{rollout_id}/stream"]
    responses = operation["get"]["responses"]
    assert set(responses) == {"200", "404", "422"}
    assert set(responses["200"]["content"]) == {"text/event-stream"}
    assert set(responses["404"]["content"]) == {"application/json"}
