"""The operators' dashboard (``/ui/``) and the API docs (``/docs``, ``/redoc``), served
from files installed with the gate: nothing is fetched from a CDN.

Why the gate serves its own pages: it runs where operators steer rollouts, often with no
route to the internet (FastAPI's default docs load Swagger UI from a CDN, so they show a
blank page there), and one origin means the dashboard reads the API and its event stream
with no CORS and no second service to deploy. The dashboard is three files of our own in
:mod:`gate.ui` (HTML, JavaScript, CSS; no framework, no build step); Swagger UI and ReDoc
come from the ``fastapi-offline`` package, served by name from its install folder.

Every page answers with a Content-Security-Policy: scripts only from the gate itself and
no inline script (the dashboard has none; Swagger UI's one inline start-up script is
allowed by its hash), connections only to the gate. So text from a rollout (a model name,
a reason, a hook's answer) can never run as code, whatever it holds. The routes are left
out of the OpenAPI schema: they are pages, not API.
"""

from __future__ import annotations

import base64
import hashlib
import re
from importlib.metadata import version
from pathlib import Path
from typing import Annotated

import fastapi_offline
from fastapi import APIRouter, Request
from fastapi import Path as PathParam
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse

from gate.core.errors import NotFound

UI_DIR = Path(__file__).parent / "ui"
VENDOR_DIR = Path(fastapi_offline.__file__).parent / "static"
# The version in the assets' URLs: an upgrade of the package is a new URL, so browsers
# may keep these large files (2.8 MB) without asking again.
VENDOR_VERSION = version("fastapi-offline")

UI_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
# Swagger UI and ReDoc style their elements inline (React and styled-components), so the
# docs pages allow inline styles; scripts stay as strict as the dashboard's.
DOCS_CSP = (
    "default-src 'self'; script-src 'self'{hashes}; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
COMMON_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

# The only files served: a name is looked up here, never joined into a path.
UI_FILES = {
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
VENDOR_FILES = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "redoc.standalone.js": "text/javascript; charset=utf-8",
    "favicon.png": "image/png",
}

ui = APIRouter(include_in_schema=False)
docs = APIRouter(include_in_schema=False)


def _headers(csp: str, cache: str = "no-cache") -> dict[str, str]:
    """``no-cache`` for the dashboard's own files: a new gate version is seen at once."""
    return {**COMMON_HEADERS, "Content-Security-Policy": csp, "Cache-Control": cache}


def _file(path: Path, media_type: str, headers: dict[str, str]) -> FileResponse:
    """A file installed with the gate; a clear 404 (not a 500 from deep in Starlette) when
    an install left the package's data files out."""
    if not path.is_file():
        raise NotFound(f"{path.name} is not installed with the gate (looked in {path.parent})")
    return FileResponse(path, media_type=media_type, headers=headers)


@ui.get("/ui")
def dashboard_redirect() -> RedirectResponse:
    """To ``/ui/``, so the page's relative links (``app.js``, ``../v1/rollouts``) resolve
    under the gate's own path, also behind a proxy that adds a prefix."""
    return RedirectResponse("ui/", status_code=307)


@ui.get("/ui/")
def dashboard() -> FileResponse:
    """The dashboard's one page; the rollout pages are its hash routes (``#/rollouts/ID``)."""
    return _file(UI_DIR / "index.html", "text/html; charset=utf-8", _headers(UI_CSP))


@ui.get("/ui/rollouts/{rollout_id}")
def dashboard_rollout(
    rollout_id: Annotated[str, PathParam(pattern=r"^[A-Za-z0-9_-]{1,64}$")],
) -> RedirectResponse:
    """A link a person can paste (the CLI, a webhook message): the rollout's page."""
    return RedirectResponse(f"../#/rollouts/{rollout_id}", status_code=307)


@ui.get("/ui/{name}")
def dashboard_file(name: str) -> FileResponse:
    media_type = UI_FILES.get(name)
    if media_type is None:
        raise NotFound(f"no dashboard file {name[:100]}")
    return _file(UI_DIR / name, media_type, _headers(UI_CSP))


def inline_script_hashes(html: str) -> list[str]:
    """CSP sources (``'sha256-...'``) for each inline ``<script>`` of a page: FastAPI's
    Swagger UI page starts Swagger UI with one, and allowing exactly that text keeps
    every other inline script out."""
    bodies = re.findall(r"<script>(.*?)</script>", html, flags=re.DOTALL)
    return [
        f"'sha256-{base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()}'"
        for body in bodies
    ]


def _vendor_url(request: Request, name: str) -> str:
    return f"{request.scope.get('root_path', '')}/docs/assets/{name}?v={VENDOR_VERSION}"


@docs.get("/docs")
def swagger_ui(request: Request) -> HTMLResponse:
    """FastAPI's Swagger UI page, its assets from the gate instead of a CDN."""
    root = request.scope.get("root_path", "")
    page = get_swagger_ui_html(
        openapi_url=f"{root}{request.app.openapi_url}",
        title=f"{request.app.title} - Swagger UI",
        swagger_js_url=_vendor_url(request, "swagger-ui-bundle.js"),
        swagger_css_url=_vendor_url(request, "swagger-ui.css"),
        swagger_favicon_url=_vendor_url(request, "favicon.png"),
        # no badge from the public validator service: this page talks to the gate only
        swagger_ui_parameters={"validatorUrl": None},
    )
    html = bytes(page.body).decode()
    hashes = "".join(f" {h}" for h in inline_script_hashes(html))
    return HTMLResponse(html, headers=_headers(DOCS_CSP.format(hashes=hashes)))


@docs.get("/redoc")
def redoc(request: Request) -> HTMLResponse:
    """FastAPI's ReDoc page, its script from the gate and without Google's fonts."""
    root = request.scope.get("root_path", "")
    page = get_redoc_html(
        openapi_url=f"{root}{request.app.openapi_url}",
        title=f"{request.app.title} - ReDoc",
        redoc_js_url=_vendor_url(request, "redoc.standalone.js"),
        redoc_favicon_url=_vendor_url(request, "favicon.png"),
        with_google_fonts=False,
    )
    html = bytes(page.body).decode()
    hashes = "".join(f" {h}" for h in inline_script_hashes(html))
    return HTMLResponse(html, headers=_headers(DOCS_CSP.format(hashes=hashes)))


@docs.get("/docs/assets/{name}")
def docs_asset(name: str) -> FileResponse:
    media_type = VENDOR_FILES.get(name)
    if media_type is None:
        raise NotFound(f"no docs asset {name[:100]}")
    return _file(
        VENDOR_DIR / name, media_type, _headers(UI_CSP, "public, max-age=31536000, immutable")
    )


__all__ = ["docs", "ui"]
