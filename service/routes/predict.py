"""``POST /v1/predict`` and ``POST /v1/compare``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request

from imaging.dicom import DecodedImage
from service.deps import AuthDep, PredictorDep, SettingsDep
from service.errors import DeadlineExceededError, InvalidParameterError, UnknownResolutionError
from service.logs import request_id_var
from service.pipeline import PredictOptions, Predictor
from service.schemas import CompareResponse, ErrorResponse, PredictResponse
from service.upload import read_dicom_upload

router = APIRouter(prefix="/v1", tags=["inference"])

#: The request body is read by hand (size enforced while streaming), so describe it here.
DICOM_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/dicom": {
                "schema": {"type": "string", "format": "binary"},
            },
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}},
                }
            },
        },
        "description": "one single-frame grayscale radiograph as a DICOM Part 10 file",
    }
}
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in {
        400: "not DICOM, corrupt or truncated, or a malformed request",
        401: "missing or wrong API key (when keys are configured)",
        413: "upload over SHARPCXR_MAX_UPLOAD_MB",
        415: "unsupported media type",
        422: "valid DICOM that cannot be assessed, or an unknown resolution / method",
        503: "overloaded, past its deadline or not ready (see Retry-After)",
    }.items()
}

MaskFormat = Annotated[
    Literal["png", "rle"], Query(description="png: base64 1-bit PNG; rle: COCO RLE counts")
]
Heatmap = Annotated[bool, Query(description="include a heatmap PNG over the image")]
Method = Annotated[
    str,
    Query(
        max_length=40,
        description="saliency method; gradcam everywhere, others (gradcam++, hirescam, "
        "eigencam, ...) with the torch backend",
    ),
]
Explain = Annotated[bool, Query(description="false: probability only, no mask, boxes or heatmap")]


@asynccontextmanager
async def request_deadline(timeout_s: float) -> AsyncIterator[None]:
    """The whole request (upload included) within ``timeout_s``, else 503 with Retry-After."""
    try:
        async with asyncio.timeout(timeout_s):
            yield
    except TimeoutError:
        raise DeadlineExceededError(timeout_s) from None


async def upload_and_decode(
    request: Request, predictor: Predictor, limit_mb: float
) -> tuple[DecodedImage, float]:
    body = await read_dicom_upload(request, limit_mb)
    return await predictor.decode(body)


def predict_options(
    mask_format: MaskFormat = "png",
    heatmap: Heatmap = False,
    method: Method = "gradcam",
    explain: Explain = True,
) -> PredictOptions:
    """The query parameters shared by predict and compare."""
    return PredictOptions(
        mask_format="rle" if mask_format == "rle" else "png",
        heatmap=heatmap,
        method=method.strip().lower(),
        explain=explain,
    )


OptionsDep = Annotated[PredictOptions, Depends(predict_options)]


@router.post(
    "/predict",
    response_model=PredictResponse,
    responses=ERRORS,
    openapi_extra=DICOM_BODY,
    summary="Pneumothorax probability, Grad-CAM mask and boxes for one DICOM",
)
async def predict(
    request: Request,
    _auth: AuthDep,
    predictor: PredictorDep,
    settings: SettingsDep,
    options: OptionsDep,
    resolution: Annotated[
        int | None, Query(description="model resolution; default from settings")
    ] = None,
) -> PredictResponse:
    started = time.perf_counter()
    deadline = time.monotonic() + settings.request_timeout_s
    model = predictor.registry.get(resolution)
    request.state.resolution_label = str(model.resolution)
    model.backend.check_method(options.method)
    async with request_deadline(settings.request_timeout_s):
        decoded, decode_s = await upload_and_decode(request, predictor, settings.max_upload_mb)
        return await predictor.predict(
            request_id_var.get(), decoded, decode_s, model, options, deadline, started
        )


def parse_resolutions(text: str | None, available: list[int]) -> list[int]:
    """``"256,512"`` -> ``[256, 512]`` (order kept, duplicates dropped); default: all."""
    if text is None or not text.strip():
        return list(available)
    wanted: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or len(part) > 5:
            raise InvalidParameterError(
                f"resolutions must be comma-separated integers such as 256,512,1024; "
                f"got {part[:20]!r}"
            )
        if int(part) not in wanted:
            wanted.append(int(part))
    unknown = [r for r in wanted if r not in available]
    if unknown:
        raise UnknownResolutionError(unknown, available)
    return wanted


@router.post(
    "/compare",
    response_model=CompareResponse,
    responses=ERRORS,
    openapi_extra=DICOM_BODY,
    summary="The same DICOM through several resolutions",
)
async def compare(
    request: Request,
    _auth: AuthDep,
    predictor: PredictorDep,
    settings: SettingsDep,
    options: OptionsDep,
    resolutions: Annotated[
        str | None,
        Query(max_length=100, description="comma-separated, e.g. 256,512,1024; default: all"),
    ] = None,
) -> CompareResponse:
    started = time.perf_counter()
    deadline = time.monotonic() + settings.request_timeout_s
    registry = predictor.registry
    wanted = parse_resolutions(resolutions, registry.resolutions)
    request.state.resolution_label = "multi"
    models = [registry.get(r) for r in wanted]
    for model in models:
        model.backend.check_method(options.method)
    async with request_deadline(settings.request_timeout_s):
        decoded, decode_s = await upload_and_decode(request, predictor, settings.max_upload_mb)
        request_id = request_id_var.get()
        results = await asyncio.gather(
            *(
                predictor.predict(request_id, decoded, decode_s, model, options, deadline, started)
                for model in models
            )
        )
    return CompareResponse(results=list(results))
