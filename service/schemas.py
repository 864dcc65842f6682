"""Response models of the HTTP API (DESIGN.md "HTTP API (v1)"), separate from internal types.

Coordinates of masks and boxes are in the original image's pixel grid (rows x columns of
the DICOM, row 0 at the top), never the model's; box corners are inclusive pixel indices.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field


class ModelBlock(BaseModel):
    name: str
    version: str
    resolution: int
    backend: str = Field(examples=["onnxruntime:CPUExecutionProvider"])
    sha256: str = Field(description="sha256 of the model file that served the request")
    architecture: str
    intended_use: str


class ImageBlock(BaseModel):
    rows: int
    columns: int
    pixel_spacing_mm: list[float] | None = Field(
        None, description="(row, column) spacing; null when the header has none"
    )
    photometric_interpretation: str
    transfer_syntax_uid: str | None
    modality: str | None
    bits_stored: int | None = None
    body_part_examined: str | None = None
    view_position: str | None = None
    voi_fallback: str | None = Field(
        None,
        description="set when the header's window left no contrast and the full stored "
        "range was used instead (what the model saw)",
    )
    decode_reduction: int = Field(
        1,
        description="1 when the full image was decoded; 2**r when a JPEG 2000 / HTJ2K "
        "image was decoded r wavelet levels short, because the model needed no finer "
        "(rows and columns above, and every coordinate in the answer, are the original's)",
    )


class MaskBlock(BaseModel):
    format: Literal["png", "rle"]
    rows: int
    columns: int
    data: str | None = Field(
        None, description="png: base64 of a 1-bit PNG (255 = salient), original grid"
    )
    counts: list[int] | None = Field(
        None,
        description="rle: COCO uncompressed RLE, column-major, starting with a run of zeros",
    )


class HeatmapBlock(BaseModel):
    format: Literal["png"] = "png"
    rows: int = Field(description="rows of the PNG (downscaled when the image is large)")
    columns: int
    data: str = Field(description="base64 RGB PNG, JET colour map blended over the image")


class SaliencyMapBlock(BaseModel):
    format: Literal["png"] = "png"
    rows: int = Field(description="rows of the PNG (downscaled when the image is large)")
    columns: int
    data: str = Field(
        description="base64 8-bit grayscale PNG of the normalised saliency (0 = none, "
        "255 = the peak), covering the whole image: stretch it over the original grid"
    )


class SaliencyBlock(BaseModel):
    method: str = Field(examples=["gradcam"])
    threshold: float = Field(description="saliency (normalised to [0, 1]) at or above is masked")
    mask: MaskBlock
    heatmap: HeatmapBlock | None = None
    map: SaliencyMapBlock | None = Field(
        None, description="the saliency itself, for clients that draw their own overlay"
    )


class BoxOut(BaseModel):
    x_min: int
    y_min: int
    x_max: int
    y_max: int
    score: float = Field(description="peak normalised saliency inside the component")
    area_px: int
    area_mm2: float | None


class Reason(BaseModel):
    code: str = Field(
        examples=["not_chest"],
        description="unsupported_modality | not_chest | lateral_view | not_for_presentation | "
        "blank_image | out_of_distribution",
    )
    message: str = Field(description="what is wrong, for a radiographer; no patient data")


class AssessmentBlock(BaseModel):
    status: Literal["assessed", "not_assessable"] = Field(
        description="not_assessable: the answer means nothing for this image; `positive` is "
        "null and the probability is shown for reference only"
    )
    reasons: list[Reason] = Field(description="why not assessable; empty when assessed")


class OodBlock(BaseModel):
    score: float = Field(description="the model's out-of-distribution score for this image")
    threshold: float = Field(description="scores above it are out of distribution")
    in_distribution: bool
    method: str = Field(examples=["mahalanobis"])


class Timings(BaseModel):
    decode: float
    gate: float
    preprocess: float
    queue: float
    inference: float
    postprocess: float
    total: float


class PredictResponse(BaseModel):
    request_id: str
    model: ModelBlock
    probability: float = Field(
        ge=0.0,
        le=1.0,
        description="calibrated pneumothorax probability (temperature scaling); when the "
        "assessment is not_assessable it is shown for reference only",
    )
    threshold: float = Field(description="operating point on the calibrated probability")
    positive: bool | None = Field(
        description="probability >= threshold; null when the image is not assessable"
    )
    assessment: AssessmentBlock
    ood: OodBlock
    image: ImageBlock
    saliency: SaliencyBlock | None = Field(
        None, description="null when the request asked for explain=false"
    )
    boxes: list[BoxOut]
    timings_ms: Timings


class CompareResponse(BaseModel):
    results: list[PredictResponse]


class CalibrationInfo(BaseModel):
    method: str
    temperature: float
    fitted_on: str
    ece: dict[str, dict[str, Any]] = Field(
        description="expected calibration error before/after, per data set"
    )


class OodInfo(BaseModel):
    method: str
    feature: str
    threshold: float
    threshold_rule: str
    fitted_on: str
    flagged: dict[str, dict[str, Any]] = Field(
        description="fraction of each data set scored out of distribution"
    )


class ModelInfo(BaseModel):
    name: str
    version: str
    resolution: int
    architecture: str
    downsample: str
    backend: str
    saliency_methods: list[str]
    sha256: str
    threshold: float
    threshold_rule: str
    labels: list[str]
    intended_use: str
    calibration: CalibrationInfo
    ood: OodInfo
    metrics: dict[str, Any]


class ModelsResponse(BaseModel):
    default_resolution: int
    models: list[ModelInfo]


class HealthResponse(BaseModel):
    status: Literal["ok"]


class ReadyResponse(BaseModel):
    status: Literal["ready", "loading", "draining", "failed"]
    resolutions: list[int] = []
    detail: str | None = None


class ErrorDetail(BaseModel):
    code: str
    message: str
    request_id: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


# ---------------------------------------------------------------- PACS jobs (DESIGN "DICOMweb")
class ResultObjectOut(BaseModel):
    kind: Literal["seg", "sr", "gsps"]
    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    url: str = Field(description="GET it as application/dicom (relative to the service)")


class DeliveryOut(BaseModel):
    result_sop_instance_uid: str
    destination: Literal["stow", "dimse"]
    state: Literal["pending", "sending", "delivered", "failed"]
    attempts: int
    last_error: str | None = Field(None, description="why the last attempt was not confirmed")


class JobErrorOut(BaseModel):
    code: str
    message: str


class JobResponse(BaseModel):
    job_id: str
    state: Literal["queued", "processing", "done", "refused", "failed"] = Field(
        description="refused: the image cannot be assessed (error says why); failed: the "
        "service could not process it"
    )
    source: Literal["stow", "dimse"]
    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    attempts: int
    created_at: datetime
    updated_at: datetime
    error: JobErrorOut | None = None
    result: PredictResponse | None = Field(
        None, description="the predict response (mask as COCO RLE) once done"
    )
    objects: list[ResultObjectOut] = Field(description="the DICOM objects made (SEG, SR, GSPS)")
    deliveries: list[DeliveryOut]


class JobSummary(BaseModel):
    """One row of the worklist: a received instance and the gist of its answer."""

    job_id: str
    state: Literal["queued", "processing", "done", "refused", "failed"]
    source: Literal["stow", "dimse"]
    sop_instance_uid: str
    study_instance_uid: str
    created_at: datetime
    updated_at: datetime
    has_image: bool = Field(
        description="the received instance is still held (SHARPCXR_RETAIN_RECEIVED_HOURS), "
        "so GET /v1/jobs/{job_id}/display can show it"
    )
    error: JobErrorOut | None = None
    resolution: int | None = None
    probability: float | None = None
    threshold: float | None = None
    positive: bool | None = None
    assessment: Literal["assessed", "not_assessable"] | None = None
    reasons: list[str] = Field(default_factory=list, description="the assessment's codes")


class JobListResponse(BaseModel):
    jobs: list[JobSummary] = Field(description="newest first")


class StudyResultsResponse(BaseModel):
    study_instance_uid: str
    instances: list[JobResponse]
