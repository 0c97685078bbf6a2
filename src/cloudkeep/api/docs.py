"""The /docs (Swagger UI) and /redoc pages, with their scripts served from this server.

FastAPI's default pages load Swagger UI, ReDoc, a favicon and Google Fonts from CDNs:
an offline machine gets a blank page, and a compromised CDN runs its script in an
origin that can call the API. The assets here come from the ``fastapi-offline``
package (Swagger UI 5 and ReDoc 2 dist files), served under ``/docs/assets``, and a
Content-Security-Policy keeps the pages from loading anything from another origin.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import FastAPI
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.staticfiles import StaticFiles
from starlette.responses import HTMLResponse

from cloudkeep.api.security import OPEN_PREFIX

__all__ = ["ASSETS_PATH", "install_docs"]

ASSETS_PATH = OPEN_PREFIX.rstrip("/")  # reachable without an app key, like the pages
_OAUTH2_REDIRECT = "/docs/oauth2-redirect"

# The pages need inline scripts and styles, ``new Function`` (ReDoc's schema compiler)
# and blob workers (ReDoc's search); every source stays this origin.
_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' 'unsafe-eval'; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; "
    "worker-src 'self' blob:; connect-src 'self'; frame-ancestors 'none'; "
    "base-uri 'self'; form-action 'self'"
)


def _secured(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = _CSP
    page.headers["X-Content-Type-Options"] = "nosniff"
    return page


def install_docs(app: FastAPI) -> None:
    """Mount the assets and add the pages; ``app`` must be built with docs_url=None."""
    assets = files("fastapi_offline") / "static"
    app.mount(ASSETS_PATH, StaticFiles(directory=str(assets)), name="docs-assets")
    favicon = f"{ASSETS_PATH}/favicon.png"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return _secured(
            get_swagger_ui_html(
                openapi_url="/openapi.json",
                title=f"{app.title} - Swagger UI",
                swagger_js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
                swagger_css_url=f"{ASSETS_PATH}/swagger-ui.css",
                swagger_favicon_url=favicon,
                oauth2_redirect_url=_OAUTH2_REDIRECT,
                # No badge fetched from validator.swagger.io.
                swagger_ui_parameters={"validatorUrl": None},
            )
        )

    @app.get(_OAUTH2_REDIRECT, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return _secured(get_swagger_ui_oauth2_redirect_html())

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return _secured(
            get_redoc_html(
                openapi_url="/openapi.json",
                title=f"{app.title} - ReDoc",
                redoc_js_url=f"{ASSETS_PATH}/redoc.standalone.js",
                redoc_favicon_url=favicon,
                with_google_fonts=False,
            )
        )
