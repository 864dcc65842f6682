"""``GET /v1/models``: what is loaded, how it performs, what it is for."""

from __future__ import annotations

from fastapi import APIRouter

from service.deps import AuthDep, RegistryDep
from service.schemas import ModelInfo, ModelsResponse

router = APIRouter(prefix="/v1", tags=["models"])


@router.get("/models", response_model=ModelsResponse, summary="Every loaded model")
async def list_models(_auth: AuthDep, registry: RegistryDep) -> ModelsResponse:
    return ModelsResponse(
        default_resolution=registry.default_resolution,
        models=[ModelInfo(**model.info()) for model in registry],
    )
