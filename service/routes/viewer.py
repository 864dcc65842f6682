"""The clinician viewer (``/viewer``) and the API docs (``/docs``, ``/redoc``), served
from this service alone.

The viewer is static files under ``service/viewer/`` (no build step). Swagger UI and Redoc
are vendored under ``service/viewer/vendor/`` (their licences beside them), so both pages
work on a hospital network without internet access. The viewer's pages carry a Content
Security Policy that lets the browser talk to this service only: no script, style, image
or request can reach another host even if a bug tried.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

VIEWER_DIR = Path(__file__).resolve().parents[1] / "viewer"
VENDOR = "/viewer/vendor"
FAVICON = f"{VENDOR}/swagger-ui/favicon-32x32.png"

#: self only; blob: and data: for the canvases' own images (decoded PNGs)
VIEWER_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'self'; "
    "form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": VIEWER_CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class ViewerFiles(StaticFiles):
    """Static files with the viewer's security headers; revalidated on every load, so a
    new release is never mixed with a cached older script."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(SECURITY_HEADERS)
        response.headers.setdefault("Cache-Control", "no-cache")
        return response


def mount_viewer(app: FastAPI) -> None:
    """``/viewer`` (static files) and the local ``/docs`` and ``/redoc`` pages."""
    app.mount("/viewer", ViewerFiles(directory=VIEWER_DIR, html=True), name="viewer")
    app.include_router(docs_router(app))


def docs_router(app: FastAPI) -> APIRouter:
    router = APIRouter(include_in_schema=False)
    openapi_url = app.openapi_url or "/openapi.json"

    @router.get("/docs")
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} - API",
            swagger_js_url=f"{VENDOR}/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url=f"{VENDOR}/swagger-ui/swagger-ui.css",
            swagger_favicon_url=FAVICON,
            # the default validator badge asks validator.swagger.io about our spec
            swagger_ui_parameters={"validatorUrl": None, "persistAuthorization": False},
        )

    @router.get("/redoc")
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=openapi_url,
            title=f"{app.title} - API",
            redoc_js_url=f"{VENDOR}/redoc/redoc.standalone.js",
            redoc_favicon_url=FAVICON,
            with_google_fonts=False,
        )

    return router
