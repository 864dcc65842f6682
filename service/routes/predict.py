"""``POST /v1/predict`` and ``POST /v1/compare`` (mounted under the ``/v1`` router)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response

from service.deps import PipelineDep, SettingsDep
from service.errors import DeadlineExceededError, InvalidParameterError, UnknownResolutionError
from service.logs import request_id_var
from service.pacs.related import encode_related
from service.pacs.results import result_rows
from service.pipeline import PredictOptions, RequestContext
from service.schemas import CompareResponse, ErrorResponse, PredictResponse
from service.settings import Settings
from service.upload import read_dicom_upload

router = APIRouter(tags=["inference"])

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
                },
                "encoding": {"file": {"contentType": "application/dicom"}},
            },
        },
        "description": "one single-frame grayscale radiograph as a DICOM Part 10 file",
    }
}
#: the description of a 401, the same on every protected route
UNAUTHORIZED = "missing or wrong API key (when keys are configured)"
#: the description of a 503, the same on every route behind the models
UNAVAILABLE = "overloaded, past its deadline or not ready (see Retry-After)"


def error_responses(descriptions: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries for error statuses, each with the JSON error body."""
    return {
        status: {"model": ErrorResponse, "description": description}
        for status, description in descriptions.items()
    }


#: what an upload (predict, compare, display) may be answered besides 200
ERRORS = error_responses({
    400: "not DICOM, corrupt or truncated, or a malformed request",
    401: UNAUTHORIZED,
    413: "upload over SHARPCXR_MAX_UPLOAD_MB",
    408: "the upload paused longer than SHARPCXR_UPLOAD_IDLE_TIMEOUT_S (upload_timeout)",
    415: "unsupported media type",
    422: "valid DICOM that cannot be assessed (including the gate's codes with "
    "SHARPCXR_GATE=refuse), or an unknown resolution / method",
    503: UNAVAILABLE,
})  # fmt: skip

MaskFormat = Annotated[
    Literal["png", "rle"], Query(description="png: base64 1-bit PNG; rle: COCO RLE counts")
]
Heatmap = Annotated[bool, Query(description="include a heatmap PNG over the image")]
SaliencyMap = Annotated[
    bool, Query(description="include the bare saliency as a grayscale PNG (for client overlays)")
]
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


def new_context(options: PredictOptions, settings: Settings) -> RequestContext:
    """The request context, its deadline counted from now."""
    return RequestContext(
        request_id=request_id_var.get(),
        options=options,
        deadline=time.monotonic() + settings.request_timeout_s,
        started=time.perf_counter(),
    )


def predict_options(
    mask_format: MaskFormat = "png",
    heatmap: Heatmap = False,
    saliency_map: SaliencyMap = False,
    method: Method = "gradcam",
    explain: Explain = True,
) -> PredictOptions:
    """The query parameters shared by predict and compare."""
    return PredictOptions(
        mask_format="rle" if mask_format == "rle" else "png",
        heatmap=heatmap,
        saliency_map=saliency_map,
        method=method.strip().lower(),
        explain=explain,
    )


OptionsDep = Annotated[PredictOptions, Depends(predict_options)]


def wants_dicom(accept: str | None) -> bool:
    """``Accept: multipart/related; type="application/dicom"``: the answer as DICOM objects."""
    for item in (accept or "").lower().split(","):
        media, *params = item.split(";")
        types = {v.strip().strip('"') for k, _, v in (p.partition("=") for p in params)
                 if k.strip() == "type"}  # fmt: skip
        if media.strip() == "multipart/related" and types == {"application/dicom"}:
            return True
    return False


PREDICT_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    200: {
        "description": "the answer as JSON, or with `Accept: multipart/related; "
        'type="application/dicom"` as DICOM objects: SEG (the mask; absent with explain=false), '
        "Comprehensive SR (TID 1500) and GSPS, in the source's study",
        "content": {'multipart/related; type="application/dicom"': {
            "schema": {"type": "string", "format": "binary"}}},
    },
}  # fmt: skip


@router.post(
    "/predict",
    response_model=PredictResponse,
    responses=PREDICT_RESPONSES,
    openapi_extra=DICOM_BODY,
    summary="Pneumothorax probability, Grad-CAM mask and boxes for one DICOM",
)
async def predict(
    request: Request,
    pipeline: PipelineDep,
    settings: SettingsDep,
    options: OptionsDep,
    resolution: Annotated[
        int | None, Query(description="model resolution; default from settings")
    ] = None,
) -> PredictResponse | Response:
    as_dicom = wants_dicom(request.headers.get("accept"))
    if as_dicom:  # the objects carry the mask themselves; RLE is the cheap encoding of it
        options = replace(options, mask_format="rle", heatmap=False, saliency_map=False)
    ctx = new_context(options, settings)
    models = pipeline.models([resolution], options.method)
    request.state.resolution_label = str(models[0].resolution)
    async with request_deadline(settings.request_timeout_s):
        body = await read_dicom_upload(request, settings.max_upload_mb)
        [response] = await pipeline.run(ctx, body, models)
        if not as_dicom:
            return response
        loop = asyncio.get_running_loop()
        rows = await loop.run_in_executor(pipeline.pool, result_rows, body, response)
    content_type, multipart = encode_related([row.data for row in rows])
    return Response(multipart, media_type=content_type)


def parse_resolutions(text: str | None, available: list[int]) -> list[int]:
    """``"256,512"`` -> ``[256, 512]`` (order kept, duplicates dropped); default: all."""
    if text is None or not text.strip():
        return list(available)
    wanted: list[int] = []
    for part in text.split(","):
        part = part.strip()
        # isascii: str.isdigit() is also True for "6³", which int() refuses (was a 500)
        if not (part.isascii() and part.isdigit()) or len(part) > 5:
            raise InvalidParameterError(  # the value is not echoed (README "Errors")
                "resolutions must be comma-separated integers of at most 5 digits, such as "
                "256,512,1024"
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
    pipeline: PipelineDep,
    settings: SettingsDep,
    options: OptionsDep,
    resolutions: Annotated[
        str | None,
        Query(
            max_length=100,
            pattern=r"^[0-9, ]*$",
            description="comma-separated, e.g. 256,512,1024; default: all",
        ),
    ] = None,
) -> CompareResponse:
    ctx = new_context(options, settings)
    wanted = parse_resolutions(resolutions, pipeline.registry.resolutions)
    models = pipeline.models(wanted, options.method)
    request.state.resolution_label = "multi"
    async with request_deadline(settings.request_timeout_s):
        body = await read_dicom_upload(request, settings.max_upload_mb)
        results = await pipeline.run(ctx, body, models)
    return CompareResponse(results=results)
