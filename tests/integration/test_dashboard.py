"""The dashboard in a real browser (Debian's chromium driven by Playwright, no browser
download) against a real gate, router and predictors on loopback: a rollout followed
live from its page, paused and resumed with the token; a rollout rolled back by its
analysis, with the failing check and the reason on the page; hook results, an approval
and evidence the page has no view for (fed to the page by Playwright, as a newer gate
would send them); and the API docs served by the gate alone.

It also writes the README's screenshots (docs/dashboard-*.png). One stack for the
module; the rollouts run one after another (one active rollout per model).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import (
    Browser,
    Page,
    Request,
    Route,
    ViewportSize,
    expect,
)

from tests.browser import chromium
from tests.gate_stack import TEST_MARGINS, TOKEN, LocalStack, build_registry, ended_afterwards
from tests.helpers import REPO_ROOT

pytestmark = pytest.mark.integration

SCREENSHOTS = REPO_ROOT / "docs"
VIEWPORT: ViewportSize = {"width": 1280, "height": 800}
LIVE: dict[str, Any] = {"steps": [50, 100], "step_interval_s": 4.0, **TEST_MARGINS}
# Records every weight the page shows, so a test can tell it saw the weight move while
# the page stayed the same document (a reload would lose both the list and the marker).
RECORD_WEIGHTS = """() => {
  window.sameDocument = true;
  window.weights = [];
  const record = () => {
    const shown = document.querySelector("#weight")?.textContent;
    if (shown && window.weights.at(-1) !== shown) window.weights.push(shown);
  };
  const view = document.querySelector("#view");
  new MutationObserver(record).observe(view, { childList: true, subtree: true });
  record();
}"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    root = tmp_path_factory.mktemp("dashboard")
    stacked = LocalStack(root, build_registry(root, ("logreg", "logreg", "logreg")))
    try:
        stacked.start_router()
        stacked.start_gate()
        yield stacked
    finally:
        stacked.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


class Watched:
    """A page with what it did: uncaught script errors and every URL that answered."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.errors: list[str] = []
        self.answered: list[str] = []
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on("response", lambda response: self.answered.append(response.url))

    def only_from(self, gate_url: str) -> None:
        origin = urlsplit(gate_url).netloc
        others = [u for u in self.answered if urlsplit(u.removeprefix("blob:")).netloc != origin]
        assert not others, f"answered from elsewhere than the gate: {others}"
        assert not self.errors, f"script errors: {self.errors}"


@pytest.fixture
def watched(browser: Browser) -> Iterator[Watched]:
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(30_000)
    try:
        yield Watched(context.new_page())
    finally:
        context.close()


def screenshot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / name))


@pytest.mark.timeout(240)
def test_a_live_rollout_advances_on_its_page_and_is_paused_and_resumed(
    stack: LocalStack, watched: Watched
) -> None:
    page = watched.page
    with stack.traffic():
        rollout_id = stack.create("2", **LIVE)
        with ended_afterwards(stack, rollout_id):
            page.goto(f"{stack.gate_url}/ui/")
            page.get_by_role("link", name=rollout_id).click()
            expect(page.locator("#phase")).to_be_visible()
            page.evaluate(RECORD_WEIGHTS)

            page.get_by_label("API token").fill("wrong-token-0123456789")
            page.get_by_role("button", name="Use token").click()
            page.get_by_role("button", name="Pause").click()
            expect(page.locator("#command-result")).to_contain_text(
                "401 Unauthorized: missing or wrong bearer token"
            )
            page.get_by_label("API token").fill(TOKEN)
            page.get_by_role("button", name="Use token").click()
            expect(page.locator("#token-state")).to_have_text("token set for this tab")
            assert TOKEN not in page.url

            page.get_by_role("button", name="Pause").click()
            expect(page.locator("#phase")).to_contain_text("paused")
            expect(page.locator("#message")).to_have_text("paused by user")
            assert stack.rollout(rollout_id)["paused"] is True
            page.get_by_role("button", name="Resume").click()
            expect(page.locator("#phase")).not_to_contain_text("paused")
            expect(page.locator("#message")).not_to_have_text("paused by user")
            assert stack.rollout(rollout_id)["paused"] is False

            expect(page.locator("#weight")).to_have_text("50 %", timeout=90_000)
            expect(page.locator("#phase")).to_have_text("succeeded", timeout=90_000)
            expect(page.locator(".timeline li.failed")).to_have_count(0)
            expect(page.locator("#analyses .analysis").first).to_contain_text("pass")
            assert page.locator("#charts circle.canary").count() >= 3
            screenshot(page, "dashboard-rollout.png")

    weights = page.evaluate("window.weights")
    assert page.evaluate("window.sameDocument") is True, "the page was reloaded"
    assert weights[0] == "0 %" and "50 %" in weights, weights
    watched.only_from(stack.gate_url)


@pytest.mark.timeout(240)
def test_a_rolled_back_rollout_shows_its_failing_check_and_reason(
    stack: LocalStack, watched: Watched
) -> None:
    page = watched.page
    with stack.traffic():
        # a latency ceiling of 0.5 ms that no predictor here meets: the analysis fails it
        rollout_id = stack.create("3", **LIVE, max_p99_ms=0.5)
        with ended_afterwards(stack, rollout_id):
            page.goto(f"{stack.gate_url}/ui/rollouts/{rollout_id}")  # a link to paste
            expect(page.locator("#phase")).to_have_text("rolled back", timeout=120_000)
    detail = stack.rollout(rollout_id)
    assert detail["phase"] == "rolled_back", detail["message"]
    why = page.locator("#why")
    expect(why).to_contain_text("Why it was rolled back")
    expect(why).to_contain_text(detail["message"])  # "failure limit reached (2/2): ..."
    assert "latency_p99_ceiling" in detail["message"]
    failing = why.locator("tr[data-check='latency_p99_ceiling']")
    expect(failing).to_contain_text("fail")
    expect(failing).to_contain_text("0.5 ms")  # what it was held to
    expect(page.locator(".timeline li.failed")).to_have_text("50 %")
    screenshot(page, "dashboard-rolled-back.png")

    page.goto(f"{stack.gate_url}/ui/")
    expect(page.locator(f"tr[data-rollout='{rollout_id}']")).to_contain_text("rolled back")
    expect(page.locator("tr[data-rollout]")).to_have_count(2)
    screenshot(page, "dashboard-list.png")
    watched.only_from(stack.gate_url)


def synthetic_rollout() -> dict[str, Any]:
    """A rollout as a gate with hooks answers it: held for an approval, a hook's refusal
    in its evidence, and evidence keys this dashboard has no view for."""
    at = "2026-01-01T12:00:00Z"
    return {
        "id": "synthetic-1",
        "model": "iris",
        "phase": "progressing",
        "paused": False,
        "held_by": "confirm-promotion",
        "candidate": {"version": "9", "artifact_uri": "/registry/iris/9", "offline_metrics": {}},
        "stable_version": "8",
        "promoted": False,
        "canary_weight": 50,
        "step_index": 0,
        "steps": [50, 100],
        "failures": 0,
        "inconclusive": 0,
        "errors": 0,
        "message": "waiting: confirm-promotion hook release-gate refused",
        "created_at": at,
        "updated_at": at,
        "analysis": {"steps": [50, 100], "hooks": [{"name": "release-gate"}]},
        "decisions": [
            {
                "at": at,
                "phase": "progressing",
                "step_index": 0,
                "canary_weight": 50,
                "action": "hold",
                "outcome": None,
                "reason": "confirm-promotion hook release-gate refused",
                "evidence": {
                    "hooks": [
                        {
                            "name": "release-gate",
                            "type": "confirm-promotion",
                            "ok": False,
                            "status": 503,
                            "reason": "change freeze until Monday",
                            "duration_ms": 12.5,
                        }
                    ],
                    "novel_count": 7,
                    "novel_detail": {"from": "a newer gate", "items": [1, 2]},
                },
            }
        ],
    }


@pytest.mark.timeout(120)
def test_hook_results_an_approval_and_unknown_evidence(stack: LocalStack, watched: Watched) -> None:
    page = watched.page
    detail = synthetic_rollout()
    public = {k: v for k, v in detail.items() if k not in ("analysis", "decisions")}
    sent: list[tuple[str, str, str | None, str | None]] = []

    def answer(route: Route, request: Request) -> None:
        if request.url.endswith("/stream"):
            body = f"event: rollout\ndata: {json.dumps(detail)}\n\n"
            route.fulfill(status=200, content_type="text/event-stream", body=body)
        elif request.method == "POST":
            auth = request.headers.get("authorization")
            sent.append((request.method, request.url, auth, request.post_data))
            if request.url.endswith("/pause"):
                route.fulfill(status=409, json={"detail": "rollout synthetic-1 is already paused"})
            else:
                route.fulfill(status=200, json=public)
        else:
            route.fulfill(status=200, json=detail)

    page.route(lambda url: "/v1/rollouts/synthetic-1" in url, answer)
    page.goto(f"{stack.gate_url}/ui/#/rollouts/synthetic-1")
    expect(page.locator("#held")).to_have_text("held: confirm-promotion")
    hooks = page.locator("#hooks")
    expect(hooks).to_contain_text("Hook results")
    for text in ("release-gate", "confirm-promotion", "refused", "503", "change freeze", "12.5 ms"):
        expect(hooks).to_contain_text(text)
    page.locator("#history summary", has_text="evidence").click()
    expect(page.locator("#history")).to_contain_text("novel_count")
    page.locator("#history summary", has_text="novel_detail").click()
    expect(page.locator("#history pre")).to_contain_text('"from": "a newer gate"')

    page.get_by_label("API token").fill(TOKEN)
    page.get_by_role("button", name="Use token").click()
    page.get_by_role("button", name="Approve confirm-promotion").click()
    expect(page.locator("#command-result")).to_contain_text("Approve: done")
    page.get_by_role("button", name="Promote: next step").click()
    expect(page.locator("#command-result")).to_contain_text("Promote next step: done")
    page.get_by_role("button", name="Promote: full").click()
    expect(page.locator("#command-result")).to_contain_text("Promote full: done")
    page.get_by_role("button", name="Pause").click()
    expect(page.locator("#command-result")).to_contain_text(
        "409 Conflict: rollout synthetic-1 is already paused"
    )
    base = f"{stack.gate_url}/v1/rollouts/synthetic-1"
    bearer = f"Bearer {TOKEN}"
    assert sent == [
        ("POST", f"{base}/approve", bearer, '{"type":"confirm-promotion"}'),
        ("POST", f"{base}/promote", bearer, None),
        ("POST", f"{base}/promote?full=true", bearer, None),
        ("POST", f"{base}/pause", bearer, None),
    ]
    watched.only_from(stack.gate_url)


@pytest.mark.timeout(120)
def test_the_api_docs_load_from_the_gate_alone(stack: LocalStack, watched: Watched) -> None:
    page = watched.page
    page.goto(f"{stack.gate_url}/docs")
    expect(page.get_by_text("/v1/rollouts/{rollout_id}/pause")).to_be_visible()
    page.goto(f"{stack.gate_url}/redoc")
    expect(page.locator("h2", has_text="Create Rollout")).to_be_visible()
    watched.only_from(stack.gate_url)  # ReDoc's logo from its CDN is blocked by the CSP
