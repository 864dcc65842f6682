"""``GET /v1/models``: what is loaded, how it performs, what it is for."""

from __future__ import annotations

from fastapi import APIRouter

from service.deps import RegistryDep
from service.registry import ServedModel
from service.routes.predict import UNAUTHORIZED, error_responses
from service.schemas import CalibrationInfo, ModelInfo, ModelsResponse, OodInfo

router = APIRouter(tags=["models"])


def model_info(model: ServedModel) -> ModelInfo:
    """Identity, backend, operating point, calibration, OOD rule, intended use, and the
    manifest's metrics with the data they were measured on."""
    entry, calibration, ood = model.entry, model.calibration, model.ood
    return ModelInfo(
        name=entry.name,
        version=entry.version,
        resolution=entry.resolution,
        architecture=entry.architecture.value,
        downsample=entry.downsample.value,
        backend=model.backend.name,
        saliency_methods=list(model.backend.methods),
        sha256=model.sha256,
        threshold=entry.threshold,
        threshold_rule=entry.threshold_rule,
        labels=entry.labels,
        intended_use=entry.intended_use,
        calibration=CalibrationInfo(
            method=calibration.method,
            temperature=calibration.temperature,
            fitted_on=calibration.fitted_on,
            ece=calibration.ece,
        ),
        ood=OodInfo(
            method=ood.method,
            feature=ood.feature,
            threshold=ood.threshold,
            threshold_rule=ood.threshold_rule,
            fitted_on=ood.fitted_on,
            flagged=ood.flagged,
        ),
        metrics=entry.metrics,
    )


@router.get(
    "/models",
    response_model=ModelsResponse,
    responses=error_responses({401: UNAUTHORIZED, 503: "the models are still loading"}),
    summary="Every loaded model",
)
async def list_models(registry: RegistryDep) -> ModelsResponse:
    return ModelsResponse(
        default_resolution=registry.default_resolution,
        models=[model_info(model) for model in registry],
    )
