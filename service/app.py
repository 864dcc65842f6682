"""The FastAPI application: ``create_app(settings)``; ``uvicorn service.app:create_app
--factory`` or ``sharpcxr serve`` runs it.

Error mapping lives here, once: domain errors (:mod:`service.errors`,
:mod:`imaging.errors`), request validation and unknown routes all become DESIGN's JSON
error body with the request id; nothing else reaches the client.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from imaging.errors import ImagingError
from service.deps import require_api_key
from service.draining import DrainMiddleware
from service.errors import ServiceError, error_body, error_headers, error_status_and_code
from service.logs import configure_logging, request_id_var
from service.metrics import Metrics
from service.middleware import ObservabilityMiddleware
from service.routes import dicomweb, display, health, jobs, models, predict
from service.routes.predict import error_responses
from service.routes.viewer import mount_viewer
from service.runtime import ServiceRuntime
from service.settings import Settings, get_settings
from sharpcxr import __version__

log = logging.getLogger("sharpcxr.service")
RATE_LIMITED = (
    "over the per-key rate limit (rate_limited; SHARPCXR_RATE_LIMIT_PER_MINUTE): retry after "
    "Retry-After seconds"
)

DESCRIPTION = """
A DICOM goes in; a pneumothorax probability, a Grad-CAM saliency mask and bounding boxes
(in the original image's pixel grid) come out, from the model trained at the resolution
you ask for. **Models trained on synthetic phantoms are demos, not for clinical use**:
each model's `intended_use` says what it is.
"""


def _error_response(request: Request, exc: Exception) -> JSONResponse:
    status, code, message = error_status_and_code(exc)
    request.state.error_code = code
    log.info("refused", extra={"status": status, "code": code})
    return JSONResponse(
        error_body(code, message, request_id_var.get()),
        status_code=status,
        headers=error_headers(exc),
    )


async def _domain_error(request: Request, exc: Exception) -> JSONResponse:
    return _error_response(request, exc)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    # Name the parameter and the rule; never echo the submitted value.
    problems = "; ".join(
        f"{'.'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg', 'invalid')}"
        for err in exc.errors()
    )
    request.state.error_code = "invalid_parameter"
    return JSONResponse(
        error_body("invalid_parameter", f"invalid request parameters: {problems}",
                   request_id_var.get()),
        status_code=422,
    )  # fmt: skip


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    codes = {404: "not_found", 405: "method_not_allowed"}
    code = codes.get(exc.status_code, "http_error")
    request.state.error_code = code
    message = {
        404: "no such endpoint; see /docs for the API",
        405: "method not allowed on this endpoint; see /docs",
    }.get(exc.status_code, str(exc.detail))
    return JSONResponse(
        error_body(code, message, request_id_var.get()),
        status_code=exc.status_code,
        headers=dict(exc.headers or {}),
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; ``settings`` defaults to :func:`get_settings` (the environment)."""
    settings = settings or get_settings()
    configure_logging(settings.log_level)
    metrics = Metrics()
    runtime = ServiceRuntime(settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    app = FastAPI(
        title="sharpcxr",
        version=__version__,
        summary="Resolution-aware pneumothorax classification with Grad-CAM localisation",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # served by service.routes.viewer from vendored assets
        redoc_url=None,
    )
    app.state.runtime = runtime
    app.dependency_overrides[get_settings] = lambda: settings
    app.add_exception_handler(ServiceError, _domain_error)
    app.add_exception_handler(ImagingError, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    # One API router with the version prefix; authentication is its dependency, so every
    # /v1 route has it. Operational endpoints (health, metrics) stay open.
    # every authenticated route may be rate limited (require_api_key applies the limit)
    limited = error_responses({429: RATE_LIMITED})
    api = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)], responses=limited)
    api.include_router(predict.router)
    api.include_router(models.router)
    api.include_router(display.router)
    api.include_router(jobs.router)
    app.include_router(api)
    app.include_router(dicomweb.router, dependencies=[Depends(require_api_key)], responses=limited)
    app.include_router(health.router)
    mount_viewer(app)

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/viewer/")

    # inner first: the drain counts and refuses requests; observability wraps every answer
    app.add_middleware(DrainMiddleware, runtime=runtime)
    app.add_middleware(ObservabilityMiddleware, metrics=metrics, routes=app.router.routes)
    return app
