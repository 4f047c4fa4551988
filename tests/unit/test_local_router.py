"""The router's pure parts, no processes: model names from REST paths and raw gRPC bytes,
the route rules, the route table and the admin API driven as an ASGI app."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from pydantic import ValidationError

from gate.local.admin import AdminApp
from gate.local.asgi import Message
from gate.local.names import scanned_model_name
from gate.local.route_table import (
    BackendSpec,
    MalformedMessage,
    Routes,
    RoutesSpec,
    grpc_model_name,
    rest_target,
)

TOKEN = "unit-test-token-0123456789"
STABLE = {"http": "http://127.0.0.1:9001", "grpc": "127.0.0.1:9002"}
CANARY = {"http": "http://127.0.0.1:9003", "grpc": "127.0.0.1:9004"}


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v1/models/iris:predict", ("iris", True)),
        ("/v1/models/iris2:explain", ("iris2", False)),
        ("/v1/models/iris", ("iris", False)),
        ("/v2/models/iris/infer", ("iris", True)),
        ("/v2/models/iris/versions/3/infer", ("iris", True)),
        ("/v2/models/iris", ("iris", False)),
        ("/v2/models/iris/ready", ("iris", False)),
        ("/v2/health/ready", (None, False)),
        ("/v2", (None, False)),
        ("/", (None, False)),
        ("/v1/models/", ("", False)),
    ],
)
def test_rest_target(path: str, expected: tuple[str | None, bool]) -> None:
    assert rest_target(path) == expected


def _tensor() -> pb.ModelInferRequest.InferInputTensor:
    return pb.ModelInferRequest.InferInputTensor(
        name="x",
        datatype="FP32",
        shape=[1, 4],
        contents=pb.InferTensorContents(fp32_contents=[1] * 4),
    )


@pytest.mark.parametrize(
    ("message", "name"),
    [
        (pb.ModelInferRequest(model_name="iris2", id="r1", inputs=[_tensor()]), "iris2"),
        (pb.ModelInferRequest(model_name="iris", raw_input_contents=[b"\x00" * 5000]), "iris"),
        (pb.ModelMetadataRequest(name="iris", version="3"), "iris"),
        (pb.ModelReadyRequest(name="a" * 63), "a" * 63),
        (pb.ModelInferRequest(id="no-name", inputs=[_tensor()]), ""),
        (pb.ModelReadyRequest(), ""),
    ],
)
def test_grpc_model_name_reads_field_1(message: Any, name: str) -> None:
    assert grpc_model_name(message.SerializeToString()) == name


def test_grpc_model_name_when_field_1_comes_late() -> None:
    late = pb.ModelInferRequest(id="r", model_version="2").SerializeToString()
    assert grpc_model_name(late + pb.ModelInferRequest(model_name="iris").SerializeToString()) == (
        "iris"
    )


@pytest.mark.parametrize(
    "raw",
    [
        b"\x0a",  # key, no length
        b"\x0a\x05iri",  # length beyond the end
        b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",  # varint over 10 bytes
        b"\x08\x01",  # field 1 as a varint
        b"\x0b",  # wire type 3 (group)
        b"\x00\x01",  # field number 0
        b"\x0a\x02\xff\xfe",  # not UTF-8
        b"\x11\x00",  # 64-bit field cut short
        b"\x12\x00" * 65,  # no name within the scan bound
    ],
)
def test_grpc_model_name_rejects_malformed_bytes(raw: bytes) -> None:
    with pytest.raises(MalformedMessage):
        grpc_model_name(raw)


def test_grpc_model_name_never_fails_otherwise_on_random_bytes() -> None:
    rng = random.Random(7)
    for _ in range(5000):
        raw = bytes(rng.randrange(256) for _ in range(rng.randrange(40)))
        try:
            name = grpc_model_name(raw)
        except MalformedMessage:
            continue
        assert len(name) <= len(raw)


@given(
    length=st.integers(0, 0xFF),
    rest=st.binary(max_size=160)
    | st.text(max_size=140).map(lambda name: name.encode())
    | st.builds(lambda name, more: name.encode() + more, st.text(max_size=140), st.binary()),
)
def test_grpc_model_name_reads_a_leading_field_1_as_the_scan_does(length: int, rest: bytes) -> None:
    """The one-step read of a message that starts with field 1 and a one-byte length
    (every client's) answers what the field-by-field scan answers, name or error."""
    raw = b"\x0a" + bytes((length,)) + rest
    expected: str | type[MalformedMessage]
    try:
        expected = scanned_model_name(raw)
    except MalformedMessage:
        expected = MalformedMessage
    try:
        assert grpc_model_name(raw) == expected
    except MalformedMessage:
        assert expected is MalformedMessage


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"canary_weight": 10}, "needs a canary backend"),
        ({"canary": CANARY, "canary_weight": 50}, "must be 100"),
        ({"stable": STABLE, "canary_weight": 101}, "less than or equal to 100"),
        ({"stable": STABLE, "canary_weight": "10"}, "valid integer"),
        ({"stable": STABLE, "weight": 10}, "extra"),
        ({"stable": {**STABLE, "http": "ftp://h/"}}, "http://"),
        ({"stable": {**STABLE, "http": "http://u:p@h:1"}}, "credentials"),
        ({"stable": {**STABLE, "grpc": "h:70000"}}, "1..65535"),
        ({"stable": {**STABLE, "grpc": "h/x:1"}}, "host:port"),
        (
            {"stable": {**STABLE, "grpc_processes": ["h:1", "h x:2"]}},
            r"grpc_processes\.1\n.*host:port",
        ),
        ({"stable": {**STABLE, "grpc_processes": ["h:0"]}}, r"grpc_processes\.0\n.*1..65535"),
        ({"stable": {**STABLE, "grpc_processes": ["h:1", "h:1"]}}, "repeat"),
        (
            {"stable": {**STABLE, "grpc_processes": [f"h:{p}" for p in range(1, 66)]}},
            "at most 64 items",
        ),
        ({"stable": {**STABLE, "grpc_processes": ["h" * 300 + ":1"]}}, "at most 300 characters"),
        ({"stable": {**STABLE, "grpc_processes": "h:1"}}, "grpc_processes"),
    ],
)
def test_routes_spec_rules(body: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        RoutesSpec.model_validate(body)


def test_canary_without_stable_at_100_is_allowed_and_takes_everything() -> None:
    async def scenario() -> None:
        routes = Routes()
        table = routes.apply(
            "iris", RoutesSpec.model_validate({"canary": CANARY, "canary_weight": 100})
        )
        assert table.pick(inference=False)[0] == "canary"
        assert table.fallback("canary") is None
        await routes.aclose()

    asyncio.run(scenario())


def test_a_request_without_an_answer_head_goes_where_one_rule_says() -> None:
    async def scenario() -> None:
        routes = Routes()
        table = routes.apply(
            "iris",
            RoutesSpec.model_validate({"stable": STABLE, "canary": CANARY, "canary_weight": 30}),
        )
        stable, canary = table.stable, table.canary
        assert stable is not None and canary is not None
        # never reached the backend: the same one again, nothing counted
        assert table.after_no_answer(canary, "canary", unsent=True, replayable=True) == (
            canary,
            "canary",
        )
        assert (canary.errors, canary.stable_retries) == (0, 0)
        # a canary that could not answer: stable once, counted
        assert table.after_no_answer(canary, "canary", unsent=False, replayable=True) == (
            stable,
            "stable",
        )
        assert (canary.errors, canary.stable_retries, canary.reachable) == (1, 1, False)
        # stable has nowhere else to go; a request not kept cannot go anywhere
        assert table.after_no_answer(stable, "stable", unsent=False, replayable=True) is None
        assert table.after_no_answer(canary, "canary", unsent=True, replayable=False) is None
        assert (stable.errors, canary.errors, canary.stable_retries) == (1, 2, 1)
        await routes.aclose()

    asyncio.run(scenario())


def test_apply_keeps_open_backends_and_their_counters() -> None:
    async def scenario() -> None:
        routes = Routes()
        first = routes.apply("iris", RoutesSpec.model_validate({"stable": STABLE}))
        assert first.stable is not None
        first.stable.requests = 7
        second = routes.apply(
            "iris",
            RoutesSpec.model_validate({"stable": STABLE, "canary": CANARY, "canary_weight": 30}),
        )
        assert second.stable is first.stable
        assert second.fallback("canary") is first.stable
        assert second.fallback("stable") is None
        routes.apply("iris2", RoutesSpec.model_validate({"stable": CANARY}))
        assert list(routes.tables) == ["iris", "iris2"]
        assert routes.first() is routes.get("iris")
        described = routes.describe()["models"]["iris"]
        assert described["stable"]["requests"] == 7
        assert described["canary"]["stable_retries"] == 0
        assert described["canary_weight"] == 30
        with pytest.raises(ValueError, match="model name"):
            routes.apply("Iris", RoutesSpec())
        await routes.aclose()

    asyncio.run(scenario())


def test_pick_follows_the_weight() -> None:
    async def scenario() -> None:
        routes = Routes()
        spec = {"stable": STABLE, "canary": CANARY, "canary_weight": 25}
        table = routes.apply("iris", RoutesSpec.model_validate(spec))
        picks = [table.pick(inference=True)[0] for _ in range(4000)]
        assert 0.21 < picks.count("canary") / len(picks) < 0.29
        assert {table.pick(inference=False)[0] for _ in range(100)} == {"stable"}
        await routes.aclose()

    asyncio.run(scenario())


# --- the admin API as an ASGI app ----------------------------------------------------------


def call_admin(
    app: AdminApp, method: str, path: str, body: bytes = b"", token: str | None = TOKEN
) -> tuple[int, dict[bytes, bytes], Any]:
    headers = [(b"content-type", b"application/json")]
    if token is not None:
        headers.append((b"authorization", f"Bearer {token}".encode()))
    scope = {"type": "http", "method": method, "path": path, "headers": headers}
    sent: list[Message] = []
    chunks = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> Message:
        return chunks.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent[0]["status"], dict(sent[0]["headers"]), json.loads(sent[1]["body"])


def test_admin_app() -> None:
    app = AdminApp(Routes(), TOKEN)
    assert call_admin(app, "GET", "/router/healthz", token=None)[0] == 200
    status, headers, payload = call_admin(app, "GET", "/router/routes", token="x" * 20)
    assert (status, payload) == (401, {"error": "missing or wrong bearer token"})
    assert headers[b"www-authenticate"] == b"Bearer"
    assert call_admin(app, "GET", "/router/routes", token=None)[0] == 401
    assert call_admin(app, "GET", "/router/routes")[2] == {"models": {}}
    assert call_admin(app, "GET", "/router/routes/iris")[0] == 404
    assert call_admin(app, "DELETE", "/router/routes/iris")[0] == 405
    assert call_admin(app, "GET", "/router/elsewhere")[0] == 404
    status, _, payload = call_admin(app, "PUT", "/router/routes/iris", b"[1]")
    assert status == 400 and "object" in payload["error"].lower()
    too_big = b'{"canary_weight": 0, "x": "' + b"x" * 70000 + b'"}'
    assert call_admin(app, "PUT", "/router/routes/iris", too_big)[0] == 413


def test_admin_app_needs_a_long_token() -> None:
    with pytest.raises(ValueError, match="16"):
        AdminApp(Routes(), "short")


def test_backend_spec_strips_a_trailing_slash() -> None:
    assert BackendSpec(http="http://h:1/", grpc="[::1]:2").http == "http://h:1"


def test_a_shared_pool_sends_each_call_to_its_least_busy_connection() -> None:
    """With every process given the same number of connections, the least busy
    connection keeps the processes' shares of the calls in flight equal."""
    from gate.local import grpc_proxy as gp

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        pool = gp.GrpcPool("127.0.0.1:1", ("127.0.0.1:2", "127.0.0.1:3"))
        connections = []
        for process in (0, 0, 1, 1):
            connection = gp.UpstreamSide(pool, loop, process)
            connection.transport = object()  # type: ignore[assignment]
            pool._shared.append(connection)
            connections.append(connection)
        in_flight = {0: 0, 1: 0}
        for _ in range(40):
            chosen = pool.available(None)  # type: ignore[arg-type]
            assert chosen is not None
            chosen.calls[chosen.next_stream] = None  # type: ignore[assignment]
            chosen.next_stream += 2
            in_flight[chosen.process] += 1
        assert in_flight == {0: 20, 1: 20}
        assert sorted(len(c.calls) for c in connections) == [10, 10, 10, 10]
        connections[0].draining = True  # going away: never chosen again
        assert all(pool.available(None) is not connections[0] for _ in range(5))  # type: ignore[arg-type]
        pool.close()
        assert pool.available(None) is None  # type: ignore[arg-type]

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("flags", "problem"),
    [
        (["--stable-grpc-processes", "127.0.0.1:2"], "needs --stable-http and --stable-grpc"),
        (
            ["--stable-http", "http://h:1", "--stable-grpc", "h:2", "--stable-grpc-processes", "x"],
            "initial stable: grpc_processes.0: must be host:port",
        ),
        (
            [
                "--stable-http",
                "http://h:1",
                "--stable-grpc",
                "h:2",
                "--stable-grpc-processes",
                "h:3,h:3",
            ],
            "initial stable: grpc_processes: must not repeat a target",
        ),
    ],
)
def test_the_router_refuses_bad_process_targets_before_binding(
    flags: list[str],
    problem: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from gate.local.router import main

    monkeypatch.setenv("ROUTER_ADMIN_TOKEN", TOKEN)
    with pytest.raises(SystemExit) as exited:
        main(flags)
    assert exited.value.code == 2
    assert problem in capsys.readouterr().err


def test_a_backend_that_leaves_the_routes_stops_reopening_its_shared_connections() -> None:
    """Its pool closes after a grace period; meanwhile a lost connection is not reopened
    in the background (the predictor is likely being retired), while a routed backend's
    is."""
    from gate.local import grpc_proxy as gp

    shared = {**STABLE, "grpc_processes": [STABLE["grpc"]]}
    other = {**CANARY, "grpc_processes": [CANARY["grpc"]]}

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        routes = Routes()
        routes.apply("iris", RoutesSpec.model_validate({"stable": shared}))
        table = routes.get("iris")
        assert table is not None and table.stable is not None
        old = table.stable.grpc
        connections = []
        for pool in (old, old):
            connection = gp.UpstreamSide(pool, loop, 0)
            pool._shared.append(connection)
            connections.append(connection)
        old.forget(connections[0])  # lost while routed: reopened in the background
        repair = old._repair
        assert repair is not None and not repair.done()
        routes.apply("iris", RoutesSpec.model_validate({"stable": other}))
        await asyncio.sleep(0)
        assert repair.cancelled() and old._repair is None
        old.forget(connections[1])  # lost after leaving the routes
        assert old._repair is None
        await routes.aclose()

    asyncio.run(scenario())
