"""Open operational endpoints: ``/healthz``, ``/readyz``, ``/metrics``."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from service.deps import RuntimeDep
from service.schemas import HealthResponse, ReadyResponse

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=HealthResponse, summary="The process is alive")
async def healthz() -> HealthResponse:
    return HealthResponse(status="ok")


@router.get(
    "/readyz",
    response_model=ReadyResponse,
    responses={503: {"model": ReadyResponse, "description": "loading, or draining after SIGTERM"}},
    summary="Models loaded and warmed",
)
async def readyz(runtime: RuntimeDep) -> Response:
    if runtime.draining:
        body = ReadyResponse(status="draining", detail=runtime.detail)
        return JSONResponse(body.model_dump(), status_code=503, headers={"Retry-After": "2"})
    if runtime.ready and runtime.registry is not None:
        body = ReadyResponse(status="ready", resolutions=runtime.registry.resolutions)
        return JSONResponse(body.model_dump())
    body = ReadyResponse(status="loading", detail=runtime.detail)
    return JSONResponse(body.model_dump(), status_code=503, headers={"Retry-After": "5"})


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(runtime: RuntimeDep) -> Response:
    return Response(generate_latest(runtime.metrics.registry), media_type=CONTENT_TYPE_LATEST)
