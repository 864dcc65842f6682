"""What became of instances received by STOW-RS or C-STORE (mounted under ``/v1``).

``GET /v1/jobs/{job_id}``, ``GET /v1/studies/{StudyInstanceUID}/results`` (JSON: per
instance the job, its predict response and the DICOM objects made) and
``GET /v1/results/{SOPInstanceUID}`` (one made object, ``application/dicom``).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Response

from service.deps import RunnerDep
from service.errors import NotFoundError
from service.routes.predict import UNAUTHORIZED, UNAVAILABLE, error_responses
from service.schemas import (
    DeliveryOut,
    JobErrorOut,
    JobListResponse,
    JobResponse,
    JobSummary,
    PredictResponse,
    ResultObjectOut,
    StudyResultsResponse,
)

router = APIRouter(tags=["jobs"])
log = logging.getLogger(__name__)

UID = Annotated[str, Path(max_length=64, pattern=r"^[0-9]+(\.[0-9]+)*$")]
JobId = Annotated[str, Path(max_length=32, pattern=r"^[0-9a-f]{32}$")]
JobState = Literal["queued", "processing", "done", "refused", "failed"]

#: what the worklist may be answered besides 200 (no body to refuse: no 400, 413, 415)
LIST_ERRORS = error_responses({
    401: UNAUTHORIZED,
    422: "a query parameter outside its range (invalid_parameter)",
    503: UNAVAILABLE,
})  # fmt: skip
#: ... and a route naming one job, study or result object: 404 when it is not held
READ_ERRORS = {
    **LIST_ERRORS,
    **error_responses({404: "no job, study or result object with this id is held (not_found)"}),
}


def _when(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def job_response(row: dict[str, Any]) -> JobResponse:
    """The API's view of a store row (:meth:`service.pacs.store.JobStore.job`)."""
    error = None
    if row["state"] in ("refused", "failed") and row["error_code"]:
        error = JobErrorOut(code=row["error_code"], message=row["error_message"] or "")
    result = None
    if row["response_json"]:
        result = PredictResponse.model_validate_json(row["response_json"])
    return JobResponse(
        job_id=row["id"],
        state=row["state"],
        source=row["source"],
        sop_instance_uid=row["sop_instance_uid"],
        sop_class_uid=row["sop_class_uid"],
        study_instance_uid=row["study_instance_uid"],
        series_instance_uid=row["series_instance_uid"],
        attempts=row["attempts"],
        created_at=_when(row["created_at"]),
        updated_at=_when(row["updated_at"]),
        error=error,
        result=result,
        objects=[
            ResultObjectOut(**o, url=f"/v1/results/{o['sop_instance_uid']}") for o in row["objects"]
        ],
        deliveries=[
            DeliveryOut(
                result_sop_instance_uid=d["result_uid"],
                destination=d["destination"],
                state=d["state"],
                attempts=d["attempts"],
                last_error=d["last_error"],
            )
            for d in row["deliveries"]
        ],
    )


def job_summary(row: dict[str, Any]) -> JobSummary:
    """The worklist's view of a store row (:meth:`service.pacs.store.JobStore.recent_jobs`)."""
    summary = JobSummary(
        job_id=row["id"],
        state=row["state"],
        source=row["source"],
        sop_instance_uid=row["sop_instance_uid"],
        study_instance_uid=row["study_instance_uid"],
        created_at=_when(row["created_at"]),
        updated_at=_when(row["updated_at"]),
        has_image=bool(row["has_image"]),
    )
    if row["state"] in ("refused", "failed") and row["error_code"]:
        summary.error = JobErrorOut(code=row["error_code"], message=row["error_message"] or "")
    if row["response_json"]:
        try:
            result = PredictResponse.model_validate_json(row["response_json"])
        except ValueError:  # stored by an older release: the row stays, without its gist
            log.warning("a stored answer no longer reads", extra={"code": "stale_result"})
            return summary
        summary.resolution = result.model.resolution
        summary.probability = result.probability
        summary.threshold = result.threshold
        summary.positive = result.positive
        summary.assessment = result.assessment.status
        summary.reasons = [r.code for r in result.assessment.reasons]
    return summary


@router.get(
    "/jobs",
    response_model=JobListResponse,
    responses=LIST_ERRORS,
    summary="The worklist: the most recently received instances and their answers",
)
async def list_jobs(
    runner: RunnerDep,
    limit: Annotated[int, Query(ge=1, le=500, description="at most this many")] = 100,
    state: Annotated[JobState | None, Query(description="only jobs in this state")] = None,
) -> JobListResponse:
    def listing() -> JobListResponse:  # reading and parsing off the event loop
        rows = runner.store.recent_jobs(limit, state)
        return JobListResponse(jobs=[job_summary(r) for r in rows])

    return await asyncio.to_thread(listing)


@router.get(
    "/jobs/{job_id}",
    response_model=JobResponse,
    responses=READ_ERRORS,
    summary="One received instance: its state, answer and DICOM results",
)
async def get_job(job_id: JobId, runner: RunnerDep) -> JobResponse:
    row = await asyncio.to_thread(runner.store.job, job_id)
    if row is None:
        raise NotFoundError("no job with this id")
    return job_response(row)


@router.get(
    "/studies/{study_uid}/results",
    response_model=StudyResultsResponse,
    responses=READ_ERRORS,
    summary="Every received instance of a study and its results",
)
async def study_results(study_uid: UID, runner: RunnerDep) -> StudyResultsResponse:
    rows = await asyncio.to_thread(runner.store.jobs_of_study, study_uid)
    if not rows:
        raise NotFoundError("no instance of this study was received")
    return StudyResultsResponse(
        study_instance_uid=study_uid, instances=[job_response(r) for r in rows]
    )


@router.get(
    "/results/{sop_instance_uid}",
    responses={**READ_ERRORS, 200: {"content": {"application/dicom": {}},
                               "description": "the SEG, SR or GSPS as a Part 10 file"}},
    response_class=Response,
    summary="One DICOM result object (SEG, SR or GSPS)",
)  # fmt: skip
async def result_object(sop_instance_uid: UID, runner: RunnerDep) -> Response:
    data = await asyncio.to_thread(runner.store.result_object, sop_instance_uid)
    if data is None:
        raise NotFoundError("no result object with this SOP Instance UID")
    return Response(data, media_type="application/dicom")
