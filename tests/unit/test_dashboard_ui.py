"""The dashboard's and the docs' pages in-process: what is served, with which headers,
and that every asset they name is the gate's own (the browser test, in
tests/integration/test_dashboard.py, drives the pages themselves)."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest
from fastapi.testclient import TestClient

import gate.ui_api
from gate.app import create_app
from gate.settings import GateSettings
from gate.ui_api import UI_DIR, inline_script_hashes
from tests.gate_fakes import FakeBackend, FakeProvider

BASE = "http://testserver"
# Namespace names in the SVG the dashboard draws: identifiers, never fetched.
NAMESPACES = {"http://www.w3.org/2000/svg"}
URL = re.compile(r"https?://[^\s\"'`<>)]+")
ASSET = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']""")


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = GateSettings.model_validate(
        {"api_token": "test-token-0123456789", "db_path": tmp_path / "gate.db"}
    )
    app = create_app(settings, backend=FakeBackend(), provider=FakeProvider())
    yield TestClient(app, base_url=BASE, follow_redirects=False)


def csp(response_headers: object) -> dict[str, list[str]]:
    """A Content-Security-Policy header as directive -> sources."""
    header = str(response_headers["content-security-policy"])  # type: ignore[index]
    directives = (part.split() for part in header.split(";") if part.strip())
    return {name: sources for name, *sources in directives}


def local_assets(client: TestClient, page: str, html: str) -> list[str]:
    """Every src/href of a page, resolved as a browser would; fails on another host."""
    urls = []
    for reference in ASSET.findall(html):
        if reference.startswith(("data:", "#")):
            continue
        url = urljoin(f"{BASE}{page}", reference)
        assert urlsplit(url).netloc == "testserver", f"{page} refers to {reference}"
        urls.append(url)
    return urls


def test_ui_redirects_to_the_page_that_loads_only_its_own_files(client: TestClient) -> None:
    redirect = client.get("/ui")
    assert redirect.status_code == 307 and redirect.headers["location"] == "ui/"
    page = client.get("/ui/")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.headers["x-content-type-options"] == "nosniff"
    policy = csp(page.headers)
    assert policy["default-src"] == ["'self'"]
    assert policy["script-src"] == ["'self'"] and policy["style-src"] == ["'self'"]
    assert policy["connect-src"] == ["'self'"] and policy["frame-ancestors"] == ["'none'"]
    assets = local_assets(client, "/ui/", page.text)
    assert {urlsplit(u).path for u in assets} >= {"/ui/app.js", "/ui/style.css", "/docs"}
    types = {"/ui/app.js": "text/javascript", "/ui/style.css": "text/css"}
    for path, media_type in types.items():
        response = client.get(path)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith(media_type)
        assert response.headers["x-content-type-options"] == "nosniff"
        assert "content-security-policy" in response.headers


def test_the_dashboard_files_name_no_other_host_and_run_no_inline_code() -> None:
    for name in ("index.html", "app.js", "style.css"):
        text = (UI_DIR / name).read_text()
        assert set(URL.findall(text)) <= NAMESPACES, name
        assert "@import" not in text and "url(" not in text.replace("data:", ""), name
    html = (UI_DIR / "index.html").read_text()
    scripts = re.findall(r"<script\b[^>]*>", html)
    assert scripts and all(" src=" in tag for tag in scripts)
    assert not re.search(r"\son[a-z]+\s*=", html) and " style=" not in html
    script = (UI_DIR / "app.js").read_text()
    # API text only ever becomes text nodes: no HTML parsing, no code from strings
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script, sink
    assert "localStorage" not in script  # the token lives for the tab only


def test_unknown_files_and_ids_are_refused(client: TestClient) -> None:
    missing = client.get("/ui/secrets.txt")
    assert missing.status_code == 404 and missing.json() == {
        "detail": "no dashboard file secrets.txt"
    }
    assert client.get("/ui/..%2Fapi.py").status_code == 404
    assert client.get("/docs/assets/core.py").status_code == 404
    rollout = client.get("/ui/rollouts/abc-123")
    assert rollout.status_code == 307 and rollout.headers["location"] == "../#/rollouts/abc-123"
    assert client.get("/ui/rollouts/a%22b").status_code == 422


def test_a_missing_install_says_so(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """An install without the package's data files: a 404 naming the file, not a 500."""
    monkeypatch.setattr(gate.ui_api, "UI_DIR", Path("/nonexistent"))
    response = client.get("/ui/")
    assert response.status_code == 404
    assert "index.html is not installed with the gate" in response.json()["detail"]


@pytest.mark.parametrize(
    ("page", "needs"),
    [
        ("/docs", {"swagger-ui-bundle.js", "swagger-ui.css", "favicon.png"}),
        ("/redoc", {"redoc.standalone.js", "favicon.png"}),
    ],
)
def test_the_api_docs_use_local_assets(client: TestClient, page: str, needs: set[str]) -> None:
    response = client.get(page)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert set(URL.findall(response.text)) == set(), "a CDN or font host in the page"
    assets = local_assets(client, page, response.text)
    assert {urlsplit(u).path.rsplit("/", 1)[-1] for u in assets} == needs
    for url in assets:
        asset = client.get(url)
        assert asset.status_code == 200, url
        assert len(asset.content) > 1000
        assert "immutable" in asset.headers["cache-control"]
    policy = csp(response.headers)
    assert policy["default-src"] == ["'self'"] and "'unsafe-inline'" not in policy["script-src"]
    # Swagger UI's start-up script is allowed by its hash, and only that script
    inline = re.findall(r"<script>(.*?)</script>", response.text, flags=re.DOTALL)
    digests = [
        f"'sha256-{base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()}'"
        for body in inline
    ]
    assert policy["script-src"] == ["'self'", *digests]
    assert inline_script_hashes(response.text) == digests
    if page == "/docs":
        assert len(inline) == 1 and "/openapi.json" in inline[0]
        assert '"validatorUrl": null' in inline[0]  # no badge from the public validator


def test_the_pages_stay_out_of_the_api_schema(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert "/v1/rollouts" in paths
    assert not [p for p in paths if p.startswith(("/ui", "/docs", "/redoc"))]
