"""The image as the models see it, for the viewer (mounted under ``/v1``).

``POST /v1/display`` (a DICOM upload, as for predict) and ``GET /v1/jobs/{job_id}/display``
(an instance received by STOW-RS or C-STORE, while it is held) answer the service's own
display chain (:mod:`imaging.display`: modality LUT, VOI, MONOCHROME1 inverted) in the
original pixel grid, so that what a clinician looks at is what was assessed.

The body is ``application/octet-stream``: ``rows x columns`` little-endian ``uint16``,
row-major, row 0 at the top; ``value / 65535`` is the display value in ``[0, 1]``
(higher = brighter). It is sent as it is: gzip level 1 took 230 ms for a 12-bit 2048x2048
image to save a third of its 8 MB (the low bits of display values are noise to a
compressor), slower than sending it over any hospital network. Headers say the
geometry: ``X-Image-Rows``, ``X-Image-Columns``,
``X-Pixel-Spacing-Mm`` (``row,column``; absent without one) and ``X-VOI`` (which VOI
the chain applied). No gate runs: an image the gate refuses is shown all the same, beside
the refusal. Pixels are patient data, so the answer says ``Cache-Control: no-store``.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Path, Request, Response

from imaging.dicom import DecodedImage
from service.deps import PipelineDep, RunnerDep, SettingsDep
from service.errors import NotFoundError
from service.pipeline import Pipeline
from service.routes.jobs import READ_ERRORS
from service.routes.predict import DICOM_BODY, ERRORS, error_responses, request_deadline
from service.upload import read_dicom_upload

router = APIRouter(tags=["viewer"])

JobId = Annotated[str, Path(max_length=32, pattern=r"^[0-9a-f]{32}$")]

DISPLAY_OK: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "rows x columns little-endian uint16, row-major (value / 65535 = "
        "display value, higher = brighter)",
        "content": {"application/octet-stream": {"schema": {"type": "string",
                                                            "format": "binary"}}},
        "headers": {
            "X-Image-Rows": {"schema": {"type": "integer"}},
            "X-Image-Columns": {"schema": {"type": "integer"}},
            "X-Pixel-Spacing-Mm": {"schema": {"type": "string"},
                                   "description": "row,column spacing; absent without one"},
            "X-VOI": {"schema": {"type": "string"},
                      "description": "voi_lut_sequence | window | stored_range"},
        },
    },
}  # fmt: skip
#: an upload may be refused as for predict; a held image as a job may, or as its decode
DISPLAY_RESPONSES = {**ERRORS, **DISPLAY_OK}
JOB_DISPLAY_RESPONSES = {
    **READ_ERRORS,
    **error_responses({
        400: "the held image is corrupt or truncated after all (corrupt_dicom, ...)",
        422: "an invalid job id, or a held image the display chain cannot read",
    }),
    **DISPLAY_OK,
}  # fmt: skip


def display_body(decoded: DecodedImage) -> bytes:
    """The display pixels as little-endian uint16 bytes, row-major."""
    return bytes(np.rint(decoded.pixels * 65535.0).astype("<u2").tobytes())


async def display_response(pipeline: Pipeline, body: bytes) -> Response:
    decoded = await pipeline.decode_only(body)
    loop = asyncio.get_running_loop()
    data = await loop.run_in_executor(pipeline.pool, display_body, decoded)
    facts = decoded.facts
    headers = {
        "X-Image-Rows": str(facts.rows),
        "X-Image-Columns": str(facts.columns),
        "Cache-Control": "no-store",
    }
    if facts.voi_source:
        headers["X-VOI"] = str(facts.voi_source)
    if facts.pixel_spacing_mm is not None:
        headers["X-Pixel-Spacing-Mm"] = ",".join(repr(float(v)) for v in facts.pixel_spacing_mm)
    return Response(data, media_type="application/octet-stream", headers=headers)


@router.post(
    "/display",
    response_class=Response,
    responses=DISPLAY_RESPONSES,
    openapi_extra=DICOM_BODY,
    summary="The image through the service's display chain, in its own pixel grid",
)
async def display(request: Request, pipeline: PipelineDep, settings: SettingsDep) -> Response:
    async with request_deadline(settings.request_timeout_s):
        body = await read_dicom_upload(request, settings.max_upload_mb)
        return await display_response(pipeline, body)


@router.get(
    "/jobs/{job_id}/display",
    response_class=Response,
    responses=JOB_DISPLAY_RESPONSES,
    summary="A received instance through the display chain, while it is held",
)
async def job_display(
    job_id: JobId,
    pipeline: PipelineDep,
    runner: RunnerDep,
    settings: SettingsDep,
) -> Response:
    async with request_deadline(settings.request_timeout_s):
        data = await asyncio.to_thread(runner.store.received, job_id)
        if data is None:
            known = await asyncio.to_thread(runner.store.job, job_id)
            if known is None:
                raise NotFoundError("no job with this id")
            raise NotFoundError(
                "this job's image is no longer held (SHARPCXR_RETAIN_RECEIVED_HOURS); "
                "open it from the PACS"
            )
        return await display_response(pipeline, data)
