"""The pages the API serves itself: the page to try it (`/`, app/api/static/), and the API's
docs (`/docs`, Swagger UI; `/redoc`), their scripts from the fastapi-offline package (Swagger
UI: Apache 2.0; ReDoc: MIT), so that all of it works without internet."""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from ..core.config import DEMO_KEY, Settings, key_digest

STATIC = Path(__file__).parent / "static"
DOCS_ASSETS = Path(fastapi_offline.__file__).parent / "static"


# What a browser may do on these pages: everything from this origin only, never framed. The page
# has no inline script or style; Swagger UI and ReDoc start from an inline script, and ReDoc runs a
# worker from a blob.
_COMMON = "default-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'"
PAGE_HEADERS = {
    "Content-Security-Policy": f"{_COMMON}; script-src 'self'; style-src 'self'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
DOCS_HEADERS = PAGE_HEADERS | {
    "Content-Security-Policy": f"{_COMMON}; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "worker-src 'self' blob:"
}


def page_html(settings: Settings) -> str:
    """The page, told whether the API wants a key (so that, without one, it asks for it instead of
    calling the API for a 401) and, when the quick start's demo key is on, which one."""
    demo = settings.allow_demo_key and key_digest(DEMO_KEY) in settings.tenants_by_key()
    return (
        (STATIC / "index.html")
        .read_text()
        .replace('content="auth"', f'content="{settings.auth}"')
        .replace('content="demo"', f'content="{DEMO_KEY if demo else ""}"')
    )


def include(app: FastAPI, settings: Settings) -> None:
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.mount("/docs-assets", StaticFiles(directory=DOCS_ASSETS), name="docs-assets")
    html = page_html(settings)

    @app.get("/", include_in_schema=False)
    def page():
        return HTMLResponse(html, headers={"Cache-Control": "no-cache"} | PAGE_HEADERS)

    @app.get("/docs", include_in_schema=False)
    def swagger():
        response = get_swagger_ui_html(
            openapi_url=app.openapi_url,
            title=f"{app.title}: API",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/static/favicon.svg",
            swagger_ui_parameters={"persistAuthorization": False, "tryItOutEnabled": True},
        )
        response.headers.update(DOCS_HEADERS)
        return response

    @app.get("/redoc", include_in_schema=False)
    def redoc():
        response = get_redoc_html(
            openapi_url=app.openapi_url,
            title=f"{app.title}: API",
            redoc_js_url="/docs-assets/redoc.standalone.js",
            redoc_favicon_url="/static/favicon.svg",
            with_google_fonts=False,
        )
        response.headers.update(DOCS_HEADERS)
        return response
