"""The exit handler's message: the outcome from KFP's final state and the run note, the
Slack-compatible shape, and a delivery that retries a busy receiver and never raises.
No network: httpx's MockTransport stands in for the receiver."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import httpx
import pytest

from pipeline.steps.notify import (
    BEFORE_DEPLOY,
    check_webhook_url,
    notify_run,
    post_message,
    slack_message,
    summarise,
)

URL = "https://hooks.example.com/services/T000/B000/secret-token"
DEPLOYED = {
    "outcome": "deployed",
    "name": "iris",
    "version": "3",
    "accuracy": 0.977778,
    "path": "/mnt/registry/iris/3",
    "rollout_id": "r-42",
}
REJECTED = {
    "outcome": "rejected",
    "name": "iris",
    "accuracy": 0.61,
    "threshold": 0.9,
    "reason": "accuracy 0.6100 is below the threshold 0.9000",
}


def note(step: str, record: Mapping[str, Any], finished: bool = True) -> dict[str, Any]:
    return {"step": step, "finished": finished, "record": dict(record)}


@pytest.mark.parametrize(
    ("state", "run_note", "expected"),
    [
        ("SUCCEEDED", note("deploy", DEPLOYED), {"outcome": "deployed", "version": "3"}),
        ("SUCCEEDED", note("reject", REJECTED), {"outcome": "rejected", "accuracy": 0.61}),
        (
            "FAILED",
            note("deploy", {"name": "iris", "accuracy": 0.97}, finished=False),
            {"outcome": "failed", "failed_step": "deploy", "accuracy": 0.97},
        ),
        ("FAILED", None, {"outcome": "failed", "failed_step": BEFORE_DEPLOY}),
        # a finished note and a failed run: nothing in the body ran after deploy/reject
        ("FAILED", note("deploy", DEPLOYED), {"outcome": "failed", "failed_step": BEFORE_DEPLOY}),
        ("CANCELLED", None, {"outcome": "cancelled"}),
        ("SUCCEEDED", None, {"outcome": "unknown"}),  # the registry was not shared
        ("SUCCEEDED", note("deploy", {"name": "iris"}, finished=False), {"outcome": "unknown"}),
        ("SUCCEEDED", {"step": "deploy", "finished": True, "record": [1]}, {"outcome": "unknown"}),
    ],
)
def test_the_outcome_from_final_state_and_run_note(
    state: str, run_note: dict[str, Any] | None, expected: dict[str, Any]
) -> None:
    summary = summarise(state, run_note, "run-1", "irisgate-abc", "boom", threshold=0.9)
    assert {k: summary[k] for k in expected} == expected
    assert summary["run_id"] == "run-1" and summary["run"] == "irisgate-abc"
    assert summary["state"] == state and summary["threshold"] == 0.9
    assert ("error" in summary) == (state == "FAILED")


def test_a_deployed_message() -> None:
    message = slack_message(summarise("SUCCEEDED", note("deploy", DEPLOYED), "run-1"))
    assert message["text"] == (
        "[irisgate] pipeline run run-1: iris v3 deployed, accuracy 97.8 %; "
        "handed to the gate as rollout r-42"
    )
    (attachment,) = message["attachments"]
    assert attachment["color"] == "good" and attachment["title"] == "pipeline deployed"
    fields = {f["title"]: f["value"] for f in attachment["fields"]}
    assert fields["accuracy"] == "97.8 %" and fields["rollout"] == "r-42"
    assert message["irisgate"]["outcome"] == "deployed"


def test_a_rejected_message_names_accuracy_threshold_and_reason() -> None:
    message = slack_message(summarise("SUCCEEDED", note("reject", REJECTED), "run-2"))
    assert "iris rejected: accuracy 61.0 % is below the threshold 90.0 %" in message["text"]
    fields = {f["title"]: f["value"] for f in message["attachments"][0]["fields"]}
    assert fields["reason"] == REJECTED["reason"] and fields["threshold"] == "90.0 %"
    assert message["attachments"][0]["color"] == "warning"


def test_a_failed_message_names_the_step_and_the_error() -> None:
    started = note("deploy", {"name": "iris", "accuracy": 0.97}, finished=False)
    message = slack_message(summarise("FAILED", started, "run-3", error="gate unreachable"))
    assert message["text"] == "[irisgate] pipeline run run-3: failed in deploy: gate unreachable"
    assert message["attachments"][0]["color"] == "danger"
    raised = note("deploy", {"name": "iris", "error": "HandoffError: 503"}, finished=False)
    summary = summarise("FAILED", raised, "run-3", error="DAG failed")
    assert summary["error"] == "HandoffError: 503; DAG failed"
    early = slack_message(summarise("FAILED", None, "run-4"))
    assert early["text"].endswith(f"failed in {BEFORE_DEPLOY}")


def test_no_note_after_success_says_what_to_fix() -> None:
    message = slack_message(summarise("SUCCEEDED", None, "run-5"))
    assert "--registry-pvc" in message["text"]


def receiver(answers: list[int | Exception]) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    """Answers in order (the last one repeats); an exception is raised as the transport's."""
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = answers[min(len(seen), len(answers)) - 1]
        if isinstance(answer, Exception):
            raise answer
        return httpx.Response(answer)

    return httpx.MockTransport(handle), seen


def test_a_busy_receiver_gets_the_message_once_it_answers() -> None:
    transport, seen = receiver([503, 503, 200])
    waits: list[float] = []
    body = {"text": "hello"}
    assert post_message(URL, body, transport=transport, sleep=waits.append)
    assert len(seen) == 3 and all(r.read() == b'{"text":"hello"}' for r in seen)
    assert waits == [0.5, 1.0]  # exponential backoff from first_wait_s


def test_connection_errors_and_429_are_retried() -> None:
    transport, seen = receiver([httpx.ConnectError("refused"), 429, 204])
    assert post_message(URL, {}, transport=transport, sleep=lambda _: None)
    assert len(seen) == 3


def test_a_receiver_that_stays_down_is_given_up_on_without_raising(
    caplog: pytest.LogCaptureFixture,
) -> None:
    transport, seen = receiver([httpx.ConnectError("refused")])
    waits: list[float] = []
    with caplog.at_level(logging.WARNING):
        assert not post_message(URL, {}, attempts=4, transport=transport, sleep=waits.append)
    assert len(seen) == 4 and len(waits) == 3
    assert "giving up after 4 attempts" in caplog.text
    assert "hooks.example.com" in caplog.text and "secret-token" not in caplog.text


def test_backoff_is_capped() -> None:
    transport, _ = receiver([500])
    waits: list[float] = []
    post_message(URL, {}, attempts=8, max_wait_s=3.0, transport=transport, sleep=waits.append)
    assert waits == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0, 3.0]


def test_a_refusal_is_final(caplog: pytest.LogCaptureFixture) -> None:
    transport, seen = receiver([404])
    with caplog.at_level(logging.WARNING):
        assert not post_message(URL, {}, transport=transport, sleep=lambda _: None)
    assert len(seen) == 1 and "HTTP 404" in caplog.text


def test_no_webhook_posts_nothing_and_a_bad_one_is_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    posted: list[str] = []

    def post(url: str, body: Mapping[str, Any]) -> bool:
        posted.append(url)
        return True

    summary = summarise("SUCCEEDED", note("deploy", DEPLOYED), "run-1")
    assert not notify_run(summary, "", post)
    with caplog.at_level(logging.WARNING):
        assert not notify_run(summary, "ftp://hooks.example.com/secret-token", post)
    assert posted == [] and "secret-token" not in caplog.text
    assert notify_run(summary, URL, post) and posted == [URL]


@pytest.mark.parametrize(
    "url",
    [
        "",
        "hooks.example.com/x",
        "ftp://h/x",
        "https:///x",
        "https://h/a b",
        "http://h/" + "x" * 2048,
    ],
)
def test_webhook_urls_are_checked_without_repeating_them(url: str) -> None:
    with pytest.raises(ValueError) as caught:
        check_webhook_url(url)
    assert str(caught.value) == "PIPELINE_WEBHOOK_URL must be an http(s) URL with a host"


def test_a_good_webhook_url_passes() -> None:
    assert check_webhook_url(URL) == URL
    assert check_webhook_url("http://127.0.0.1:8080/hook") == "http://127.0.0.1:8080/hook"
