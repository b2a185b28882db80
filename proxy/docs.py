"""The API documentation, offline: Swagger UI at ``/docs`` loads its JavaScript and CSS from
``/docs/assets``, the files the fastapi-offline package installs, never from a CDN (FastAPI's
"Custom Docs UI Static Assets (Self-Hosting)" recipe).

No ReDoc: its standalone build (the same package's) fetches a logo from cdn.redoc.ly on every
view, with no option to turn that off, and Swagger UI already shows the same document. No
OAuth2 redirect page either: the proxy declares no OAuth2 flow."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from starlette.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

ASSETS_PATH = "/docs/assets"
# fastapi-offline's package data: swagger-ui-bundle.js and swagger-ui.css (swagger-ui-dist 5),
# favicon.png (and redoc.standalone.js, unused). StaticFiles checks the directory at start.
ASSETS_PACKAGE = ("fastapi_offline", "static")


def add_docs_routes(app: FastAPI) -> None:
    """``/docs`` and its assets, for an app built with ``docs_url=None``, ``redoc_url=None`` and
    ``swagger_ui_oauth2_redirect_url=None``."""
    app.mount(ASSETS_PATH, StaticFiles(packages=[ASSETS_PACKAGE]), name="docs-assets")
    title = app.title

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{title} - Swagger UI",
            swagger_js_url=f"{root}{ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_PATH}/favicon.png",
            oauth2_redirect_url=None,
        )
