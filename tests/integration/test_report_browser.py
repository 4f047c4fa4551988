"""The demo's report page in a real browser (Debian's chromium driven by Playwright, no
browser download), rendered from the recorded runs (tests/demo_recorded.py): every chart
decodes, the page uses the window's width without a sideways scroll, nothing is fetched
from anywhere. It writes README's screenshots, docs/report-*.png."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, ViewportSize

from demo.render import write_html
from tests.browser import chromium
from tests.demo_recorded import recorded_report
from tests.helpers import REPO_ROOT

pytestmark = pytest.mark.integration

SCREENSHOTS = REPO_ROOT / "docs"
VIEWPORT: ViewportSize = {"width": 1400, "height": 900}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(30_000)
    try:
        yield context.new_page()
    finally:
        context.close()


@pytest.mark.parametrize("scenario", ["good", "faulty"])
def test_the_report_page_renders_whole_and_uses_the_width(
    page: Page, tmp_path: Path, scenario: str
) -> None:
    report_file = tmp_path / "report.html"
    write_html(recorded_report(scenario), report_file)
    fetched: list[str] = []
    page.on("request", lambda request: fetched.append(request.url))
    page.goto(report_file.as_uri())

    images = page.evaluate(
        """() => [...document.images].map((i) => ({
            alt: i.alt, complete: i.complete, natural: i.naturalWidth, shown: i.clientWidth }))"""
    )
    assert len(images) == 3, images  # timeline, checks, classes: both runs had canary steps
    for image in images:
        assert image["complete"] and image["natural"] > 0, image  # the SVG decoded
    width = page.evaluate("document.documentElement.clientWidth")
    assert page.evaluate("document.documentElement.scrollWidth") <= width  # no sideways scroll
    timeline = next(i for i in images if i["alt"].startswith("The rollout over time"))
    assert timeline["shown"] >= 0.9 * width - 80  # the page's width, less its margins
    assert [u for u in fetched if not u.startswith(("file:", "data:"))] == []

    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"report-{scenario}.png"), full_page=True)
