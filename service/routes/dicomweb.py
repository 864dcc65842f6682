"""STOW-RS: ``POST /dicomweb/studies[/{StudyInstanceUID}]`` (PS3.18 10.5), jobs out.

The body is parsed as it streams in (:mod:`service.pacs.multipart`); each part is checked
(:func:`service.pacs.stow.check_part`) and, when it is an image the service can read,
stored durably as a job before the response says so. The response comes before any
inference: the results follow as DICOM objects (``GET /v1/studies/{uid}/results``, and the
configured destinations). A part that fails does not stop the others; its reason is in
FailedSOPSequence and in a ``Warning`` header.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect

from service.deps import RunnerDep, SettingsDep
from service.errors import BadRequestError
from service.pacs.multipart import iter_parts, parse_related_content_type
from service.pacs.stow import (
    DICOM_JSON,
    PROCESSING_FAILURE,
    FailedRef,
    PartRefused,
    StoredRef,
    check_part,
    store_response,
    warning_headers,
)
from service.routes.predict import UNAUTHORIZED, error_responses, request_deadline
from service.upload import stream_with_idle_timeout

router = APIRouter(prefix="/dicomweb", tags=["dicomweb"])
log = logging.getLogger(__name__)

STOW_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            'multipart/related; type="application/dicom"': {
                "schema": {"type": "string", "format": "binary"}
            }
        },
        "description": "one or more DICOM Part 10 instances, one per part (PS3.18 8.6.1.2)",
    }
}
STOW_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "every instance stored (a job each)",
          "content": {DICOM_JSON: {"schema": {"type": "object"}}}},
    202: {"description": "some stored; FailedSOPSequence and Warning headers say why not "
                         "the others", "content": {DICOM_JSON: {"schema": {"type": "object"}}}},
    409: {"description": "none stored; FailedSOPSequence says why",
          "content": {DICOM_JSON: {"schema": {"type": "object"}}}},
    **error_responses({
        400: "malformed multipart body (no boundary, no parts)",
        401: UNAUTHORIZED,
        408: "the upload paused longer than SHARPCXR_UPLOAD_IDLE_TIMEOUT_S (parts already "
        "stored stay stored)",
        413: "request over SHARPCXR_STOW_MAX_REQUEST_MB",
        415: 'not multipart/related; type="application/dicom"',
        503: "past SHARPCXR_STOW_TIMEOUT_S, or not ready (see Retry-After)",
    }),
}  # fmt: skip
#: ... and into one study: its UID in the path must be a UID
STOW_STUDY_RESPONSES = {
    **STOW_RESPONSES,
    **error_responses({422: "the study in the path is not a UID (invalid_parameter)"}),
}
StudyUID = Annotated[str, Path(max_length=64, pattern=r"^[0-9]+(\.[0-9]+)*$")]


async def _store(
    request: Request, runner: RunnerDep, settings: SettingsDep, study_uid: str | None
) -> JSONResponse:
    related = parse_related_content_type(request.headers.get("content-type"))
    stored: list[StoredRef] = []
    failed: list[FailedRef] = []
    async with request_deadline(settings.stow_timeout_s):
        parts = iter_parts(
            stream_with_idle_timeout(request),
            related.boundary,
            max_part_bytes=int(settings.max_upload_mb * 1024 * 1024),
            max_total_bytes=int(settings.stow_max_request_mb * 1024 * 1024),
        )
        try:
            async for part in parts:
                try:  # header parse (and a deflate check): CPU, off the event loop
                    instance = await asyncio.to_thread(
                        check_part, part, expected_study_uid=study_uid
                    )
                except PartRefused as refused:
                    failed.append(refused.failed(part.index))
                    continue
                try:
                    await asyncio.to_thread(runner.receive, instance, "stow")
                except Exception:
                    log.exception("instance not stored", extra={"code": "store_error"})
                    failed.append(FailedRef(
                        instance.sop_class_uid, instance.sop_instance_uid, PROCESSING_FAILURE,
                        part.index, "the instance could not be stored; send it again",
                    ))  # fmt: skip
                    continue
                stored.append(instance.ref())
        except ClientDisconnect:
            raise BadRequestError(
                "the client closed the connection before the upload finished"
            ) from None
    status, body = store_response(stored, failed, retrieve_base_url=None)
    request.state.error_code = None if status == 200 else f"stow_{status}"
    response = JSONResponse(body, status_code=status, media_type=DICOM_JSON)
    for value in warning_headers(failed):
        response.headers.append("Warning", value)
    return response


@router.post(
    "/studies",
    responses=STOW_RESPONSES,
    openapi_extra=STOW_BODY,
    summary="STOW-RS: store instances; each image becomes a job",
    response_class=JSONResponse,
)
async def store_instances(
    request: Request, runner: RunnerDep, settings: SettingsDep
) -> JSONResponse:
    return await _store(request, runner, settings, None)


@router.post(
    "/studies/{study_uid}",
    responses=STOW_STUDY_RESPONSES,
    openapi_extra=STOW_BODY,
    summary="STOW-RS into one study: instances of another study are refused (C409H)",
    response_class=JSONResponse,
)
async def store_study_instances(
    request: Request, runner: RunnerDep, settings: SettingsDep, study_uid: StudyUID
) -> JSONResponse:
    return await _store(request, runner, settings, study_uid)
