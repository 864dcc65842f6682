"""The encode stage: domain results -> the API's response model (DESIGN.md, HTTP API v1).

The one place that knows the response's shape: the imaging path returns domain objects
(:class:`imaging.header.HeaderFacts`, :class:`imaging.saliency.SaliencyResult` with its
:class:`~imaging.saliency.Box` es) and the pipeline an :class:`~service.pipeline.Answer`;
this module turns them into :mod:`service.schemas` models, encoding the mask (1-bit PNG
or COCO RLE) and the heatmap PNG on the way. Masks and boxes stay in the original image's
pixel grid.
"""

from __future__ import annotations

import base64
import struct
import time
from typing import TYPE_CHECKING

import cv2
import numpy as np
import numpy.typing as npt

from imaging.header import HeaderFacts
from imaging.rle import encode_coco_rle
from imaging.saliency import Box, SaliencyResult, heatmap_png, mask_png
from service.registry import ServedModel
from service.schemas import (
    AssessmentBlock,
    BoxOut,
    HeatmapBlock,
    ImageBlock,
    MaskBlock,
    ModelBlock,
    OodBlock,
    PredictResponse,
    Reason,
    SaliencyBlock,
    SaliencyMapBlock,
    Timings,
)

if TYPE_CHECKING:
    from service.pipeline import Answer, RequestContext


def _png_size(png: bytes) -> tuple[int, int]:
    """(rows, columns) from a PNG's IHDR chunk."""
    width, height = struct.unpack(">II", png[16:24])
    return int(height), int(width)


def saliency_map_png(saliency: npt.NDArray[np.float32], max_side: int) -> bytes:
    """The normalised saliency (float ``(rows, columns)`` in ``[0, 1]``, original grid) as
    an 8-bit grayscale PNG, area-downscaled so that its longer side is at most
    ``max_side`` (the aspect ratio kept, so it stretches back over the original grid)."""
    sal = np.asarray(saliency, dtype=np.float32)
    if max(sal.shape) > max_side:
        factor = max_side / max(sal.shape)
        size = (max(1, round(sal.shape[1] * factor)), max(1, round(sal.shape[0] * factor)))
        sal = np.asarray(cv2.resize(sal, size, interpolation=cv2.INTER_AREA), np.float32)
    ok, buf = cv2.imencode(
        ".png", cv2.convertScaleAbs(sal, alpha=255.0), [cv2.IMWRITE_PNG_COMPRESSION, 1]
    )
    if not ok:  # pragma: no cover - a 2-D uint8 array always encodes
        raise RuntimeError("PNG encoding failed")
    return bytes(buf.tobytes())


def saliency_block(
    result: SaliencyResult,
    method: str,
    mask_format: str,
    heatmap_of: npt.NDArray[np.float32] | None,
    heatmap_max_side: int,
    *,
    saliency_map: bool = False,
) -> SaliencyBlock:
    """The mask as PNG or RLE, the heatmap over ``heatmap_of`` (the display pixels) and
    the bare saliency map, when asked for."""
    rows, columns = result.mask.shape
    if mask_format == "rle":
        rle = encode_coco_rle(result.mask)
        mask = MaskBlock(format="rle", rows=rows, columns=columns, counts=rle["counts"])
    else:
        data = base64.b64encode(mask_png(result.mask)).decode("ascii")
        mask = MaskBlock(format="png", rows=rows, columns=columns, data=data)
    heatmap = None
    if heatmap_of is not None:
        png = heatmap_png(result.saliency, heatmap_of, max_side=heatmap_max_side)
        h_rows, h_columns = _png_size(png)
        heatmap = HeatmapBlock(
            rows=h_rows, columns=h_columns, data=base64.b64encode(png).decode("ascii")
        )
    map_block = None
    if saliency_map:
        png = saliency_map_png(result.saliency, heatmap_max_side)
        m_rows, m_columns = _png_size(png)
        map_block = SaliencyMapBlock(
            rows=m_rows, columns=m_columns, data=base64.b64encode(png).decode("ascii")
        )
    return SaliencyBlock(
        method=method,
        threshold=result.threshold,
        mask=mask,
        heatmap=heatmap,
        map=map_block,
    )


def box_out(box: Box) -> BoxOut:
    return BoxOut(
        x_min=box.x_min,
        y_min=box.y_min,
        x_max=box.x_max,
        y_max=box.y_max,
        score=box.score,
        area_px=box.area_px,
        area_mm2=box.area_mm2,
    )


def _heatmap_background(
    pixels: npt.NDArray[np.float32], saliency: SaliencyResult
) -> npt.NDArray[np.float32]:
    """The display pixels on the saliency's (original) grid: a JPEG 2000 image decoded at a
    reduced level is upsampled (bilinear; the heatmap is downscaled to at most
    ``HEATMAP_MAX_SIDE`` afterwards anyway), a full decode is returned as it is."""
    rows, columns = saliency.saliency.shape
    if pixels.shape == (rows, columns):
        return pixels
    return np.asarray(
        cv2.resize(pixels, (columns, rows), interpolation=cv2.INTER_LINEAR), dtype=np.float32
    )


def image_block(facts: HeaderFacts, decode_reduction: int = 1) -> ImageBlock:
    return ImageBlock(
        rows=facts.rows,
        columns=facts.columns,
        pixel_spacing_mm=list(facts.pixel_spacing_mm) if facts.pixel_spacing_mm else None,
        photometric_interpretation=facts.photometric_interpretation,
        transfer_syntax_uid=facts.transfer_syntax_uid,
        modality=facts.modality,
        bits_stored=facts.bits_stored,
        body_part_examined=facts.body_part_examined,
        view_position=facts.view_position,
        voi_fallback=facts.voi_fallback,
        decode_reduction=decode_reduction,
    )


def model_block(model: ServedModel) -> ModelBlock:
    entry = model.entry
    return ModelBlock(
        name=entry.name,
        version=entry.version,
        resolution=entry.resolution,
        backend=model.backend.name,
        sha256=model.sha256,
        architecture=entry.architecture.value,
        intended_use=entry.intended_use,
    )


def encode_response(
    *,
    ctx: RequestContext,
    model: ServedModel,
    answer: Answer,
    saliency: SaliencyResult | None,
    heatmap_max_side: int,
    seconds: dict[str, float],
    postprocess_started: float,
) -> PredictResponse:
    """The response of one model. ``seconds``: the earlier stages' own times;
    ``postprocess_started``: ``time.perf_counter()`` when explain began (explain and this
    encoding are ``timings_ms.postprocess``)."""
    decoded = ctx.decoded
    assert decoded is not None
    options = ctx.options
    block = None
    if saliency is not None:
        block = saliency_block(
            saliency,
            options.method,
            options.mask_format,
            _heatmap_background(decoded.pixels, saliency) if options.heatmap else None,
            heatmap_max_side,
            saliency_map=options.saliency_map,
        )
    now = time.perf_counter()
    timings = {k: round(v * 1000, 3) for k, v in seconds.items()}
    timings["postprocess"] = round((now - postprocess_started) * 1000, 3)
    timings["total"] = round((now - ctx.started) * 1000, 3)
    threshold = model.entry.threshold
    return PredictResponse(
        request_id=ctx.request_id,
        model=model_block(model),
        probability=answer.probability,
        threshold=threshold,
        positive=answer.probability >= threshold if answer.assessed else None,
        assessment=AssessmentBlock(
            status="assessed" if answer.assessed else "not_assessable",
            reasons=[Reason(code=r.code, message=r.message) for r in answer.reasons],
        ),
        ood=OodBlock(
            score=answer.ood_score,
            threshold=model.ood.threshold,
            in_distribution=answer.in_distribution,
            method=model.ood.method,
        ),
        image=image_block(decoded.facts, decoded.reduction),
        saliency=block,
        boxes=[box_out(b) for b in saliency.boxes] if saliency else [],
        timings_ms=Timings(**timings),
    )
