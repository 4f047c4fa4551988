"""The notify step, the pipeline's exit handler: the run's outcome in chat.

KFP gives an exit task only the final state of the tasks it watches (``SUCCEEDED``,
``FAILED`` or ``CANCELLED``, and on some backends an error message) and never which step
failed or what the steps returned. The rest comes from the run note that deploy or reject
leave in the registry (:mod:`pipeline.steps.run_notes`): the record of a finished
step, or the name of the step that started and did not finish.

The message is Slack-compatible (``text`` plus ``attachments``, like the gate's own
notifications in ``gate/notify.py``) and carries the summary under ``irisgate`` for
machines. Chat being down never fails a run: posting retries with backoff for a bounded
time, then logs and gives up. The webhook URL is a secret (Slack's carries its token), so
it is never logged, only its host.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx
from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
)

from pipeline.steps.common import WEBHOOK_URL_ENV

logger = logging.getLogger(__name__)

_MAX_URL = 2048

COLOURS = {"deployed": "good", "rejected": "warning", "failed": "danger", "cancelled": "#999999"}
BEFORE_DEPLOY = "preprocess, train or evaluate"


def check_webhook_url(url: str) -> str:
    """An http(s) URL with a host; the message never repeats the URL (it holds a token)."""
    parts = urlsplit(url)
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or len(url) > _MAX_URL
        or any(c.isspace() for c in url)
    ):
        raise ValueError(f"{WEBHOOK_URL_ENV} must be an http(s) URL with a host")
    return url


def _percent(value: Any) -> str:
    return f"{float(value) * 100:.1f} %" if isinstance(value, (int, float)) else "n/a"


def summarise(
    state: str,
    note: Mapping[str, Any] | None,
    run_id: str,
    run_name: str = "",
    error: str = "",
    threshold: float | None = None,
) -> dict[str, Any]:
    """The run's outcome from KFP's final state and the run note.

    ``outcome`` is ``deployed`` or ``rejected`` (the step's record is merged in),
    ``failed`` (with ``failed_step``: the step that started and did not finish, or the
    three steps before it when no note was written, and ``error``: that step's exception
    and whatever KFP said), ``cancelled``, or ``unknown`` (the run succeeded but left no
    note: the registry is not shared between the steps).
    """
    kept = note.get("record") if note else None
    record: dict[str, Any] = dict(kept) if isinstance(kept, Mapping) else {}
    summary: dict[str, Any] = {"run_id": run_id, "run": run_name or run_id, "state": state}
    if threshold is not None:
        summary["threshold"] = threshold
    finished = bool(note and note.get("finished"))
    if state == "SUCCEEDED" and finished and record.get("outcome") in ("deployed", "rejected"):
        return {**summary, **record}
    if state == "SUCCEEDED":
        return {**summary, **record, "outcome": "unknown"}
    if state == "CANCELLED":
        return {**summary, **record, "outcome": "cancelled"}
    step = str(note.get("step", "")) if note and not finished else ""
    record.pop("outcome", None)
    # the step's own exception (from its note) says more than KFP's state does
    reasons = [str(record.pop("error", "")) if step else "", error]
    return {
        **summary,
        **record,
        "outcome": "failed",
        "failed_step": step or BEFORE_DEPLOY,
        "error": "; ".join(r for r in reasons if r),
    }


def slack_message(summary: Mapping[str, Any]) -> dict[str, Any]:
    """``text`` for any receiver, ``attachments`` for Slack's detail, ``irisgate`` for code."""
    outcome = summary["outcome"]
    model = summary.get("name", "model")
    accuracy = _percent(summary.get("accuracy"))
    threshold = _percent(summary.get("threshold"))
    if outcome == "deployed":
        title = f"{model} v{summary.get('version', '?')} deployed, accuracy {accuracy}"
        if summary.get("rollout_id"):
            title += f"; handed to the gate as rollout {summary['rollout_id']}"
    elif outcome == "rejected":
        title = f"{model} rejected: accuracy {accuracy} is below the threshold {threshold}"
    elif outcome == "failed":
        title = f"failed in {summary['failed_step']}"
        if summary.get("error"):
            title += f": {summary['error']}"
    elif outcome == "cancelled":
        title = "cancelled"
    else:
        title = (
            "succeeded, but no step left its outcome in the registry (is the registry "
            "a volume shared by the steps? compile with --registry-pvc)"
        )
    fields = [
        {"title": label, "value": str(value), "short": True}
        for label, value in (
            ("model", summary.get("name")),
            ("version", summary.get("version")),
            ("accuracy", accuracy if "accuracy" in summary else None),
            ("threshold", threshold if "threshold" in summary else None),
            ("rollout", summary.get("rollout_id")),
            ("reason", summary.get("reason")),
            ("failed step", summary.get("failed_step")),
            ("run", summary.get("run")),
        )
        if value
    ]
    return {
        "text": f"[irisgate] pipeline run {summary['run_id']}: {title}",
        "attachments": [
            {
                "color": COLOURS.get(outcome, "#439FE0"),
                "title": f"pipeline {outcome}",
                "text": title,
                "fields": fields,
            }
        ],
        "irisgate": dict(summary),
    }


class _Retryable(Exception):
    """The receiver is there but busy (5xx, 429): worth another attempt."""


def post_message(
    url: str,
    body: Mapping[str, Any],
    *,
    attempts: int = 6,
    first_wait_s: float = 0.5,
    max_wait_s: float = 8.0,
    deadline_s: float = 60.0,
    timeout_s: float = 5.0,
    sleep: Callable[[float], None] = time.sleep,
    transport: httpx.BaseTransport | None = None,
) -> bool:
    """POST with retries; True once the receiver said 2xx. Never raises.

    Retries connection errors, timeouts, 5xx and 429 with exponential backoff, at most
    ``attempts`` times and for about ``deadline_s`` (plus one ``timeout_s``); a 4xx other
    than 429 is final (a wrong URL does not heal). Delivery is at least once: a receiver
    that takes the message but answers too late may get it again.
    """
    host = urlsplit(url).hostname or "?"
    retrying = Retrying(
        stop=stop_after_attempt(attempts) | stop_after_delay(deadline_s),
        wait=wait_exponential(multiplier=first_wait_s, max=max_wait_s),
        retry=retry_if_exception_type((httpx.TransportError, _Retryable)),
        sleep=sleep,
        before_sleep=lambda state: logger.warning(
            "webhook at %s: attempt %d failed (%s), retrying",
            host,
            state.attempt_number,
            state.outcome.exception() if state.outcome else "?",
        ),
    )
    try:
        with httpx.Client(timeout=timeout_s, transport=transport) as client:
            for attempt in retrying:
                with attempt:
                    response = client.post(url, json=dict(body))
                    if response.status_code == 429 or response.status_code >= 500:
                        raise _Retryable(f"HTTP {response.status_code}")
                    if not response.is_success:
                        logger.warning(
                            "webhook at %s refused the message (HTTP %d); not retrying",
                            host,
                            response.status_code,
                        )
                        return False
    except RetryError as exc:
        logger.warning(
            "webhook at %s: giving up after %d attempts (%s)",
            host,
            exc.last_attempt.attempt_number,
            exc.last_attempt.exception(),
        )
        return False
    except Exception as exc:  # chat must never fail the run
        logger.warning("webhook at %s: not delivered (%r)", host, exc)
        return False
    logger.info("webhook at %s: outcome delivered", host)
    return True


def notify_run(
    summary: Mapping[str, Any],
    webhook_url: str,
    post: Callable[[str, Mapping[str, Any]], bool] = post_message,
) -> bool:
    """Post the summary if a webhook is configured; True if it was delivered."""
    if not webhook_url:
        logger.info("no %s configured: nothing posted", WEBHOOK_URL_ENV)
        return False
    try:
        check_webhook_url(webhook_url)
    except ValueError as exc:
        logger.warning("%s; nothing posted", exc)
        return False
    return post(webhook_url, slack_message(summary))
