"""One request's path: ``read_dicom`` -> ``preprocess`` -> (batch) -> ``infer`` ->
``explain`` (saliency -> mask -> boxes) -> ``encode``.

CPU-bound steps (decoding, preprocessing, post-processing) run in a thread pool sized to
the cores, never on the event loop, so a slow JPEG 2000 file or a large mask does not
stall other requests; inference runs in the batchers (:mod:`service.batching`).
"""

from __future__ import annotations

import asyncio
import base64
import math
import struct
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from functools import partial
from typing import Literal, ParamSpec, TypeVar

from imaging.dicom import DecodedImage, read_dicom
from imaging.preprocess import ModelInput, preprocess
from imaging.rle import encode_coco_rle
from imaging.saliency import DEFAULT_THRESHOLD, explain, heatmap_png, mask_png
from service.batching import Batcher, Inference
from service.errors import OverloadedError
from service.metrics import Metrics
from service.registry import Registry, ServedModel
from service.schemas import (
    BoxOut,
    HeatmapBlock,
    ImageBlock,
    MaskBlock,
    ModelBlock,
    PredictResponse,
    SaliencyBlock,
    Timings,
)

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True)
class PredictOptions:
    """What the client asked for besides the image."""

    mask_format: Literal["png", "rle"] = "png"
    heatmap: bool = False
    method: str = "gradcam"
    explain: bool = True
    saliency_threshold: float = DEFAULT_THRESHOLD


@dataclass(frozen=True)
class Explanation:
    saliency: SaliencyBlock
    boxes: list[BoxOut]


def sigmoid(logit: float) -> float:
    """Numerically safe logistic function."""
    if logit >= 0:
        return 1.0 / (1.0 + math.exp(-logit))
    e = math.exp(logit)
    return e / (1.0 + e)


def _png_size(png: bytes) -> tuple[int, int]:
    """(rows, columns) from a PNG's IHDR chunk."""
    width, height = struct.unpack(">II", png[16:24])
    return int(height), int(width)


def postprocess(
    decoded: DecodedImage,
    model_input: ModelInput,
    inference: Inference,
    options: PredictOptions,
    heatmap_max_side: int,
) -> Explanation:
    """Raw CAM -> saliency, mask and boxes in the original grid -> API blocks."""
    facts = decoded.facts
    result = explain(
        inference.cam, model_input.geometry, options.saliency_threshold, facts.pixel_spacing_mm
    )
    rows, columns = result.mask.shape
    if options.mask_format == "rle":
        rle = encode_coco_rle(result.mask)
        mask = MaskBlock(format="rle", rows=rows, columns=columns, counts=rle["counts"])
    else:
        data = base64.b64encode(mask_png(result.mask)).decode("ascii")
        mask = MaskBlock(format="png", rows=rows, columns=columns, data=data)
    heatmap = None
    if options.heatmap:
        png = heatmap_png(result.saliency, decoded.pixels, max_side=heatmap_max_side)
        h_rows, h_columns = _png_size(png)
        heatmap = HeatmapBlock(
            rows=h_rows, columns=h_columns, data=base64.b64encode(png).decode("ascii")
        )
    saliency = SaliencyBlock(
        method=options.method, threshold=result.threshold, mask=mask, heatmap=heatmap
    )
    return Explanation(saliency=saliency, boxes=[BoxOut(**b.to_dict()) for b in result.boxes])


def image_block(decoded: DecodedImage) -> ImageBlock:
    f = decoded.facts
    return ImageBlock(
        rows=f.rows,
        columns=f.columns,
        pixel_spacing_mm=list(f.pixel_spacing_mm) if f.pixel_spacing_mm else None,
        photometric_interpretation=f.photometric_interpretation,
        transfer_syntax_uid=f.transfer_syntax_uid,
        modality=f.modality,
        bits_stored=f.bits_stored,
    )


def model_block(model: ServedModel) -> ModelBlock:
    return ModelBlock(
        name=model.name,
        version=model.version,
        resolution=model.resolution,
        backend=model.backend.name,
        sha256=model.sha256,
        architecture=model.architecture,
        intended_use=model.intended_use,
    )


def _timed(fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> tuple[R, float]:
    """``(fn(*args, **kwargs), seconds it took)``: the stage's own time, not the pool wait."""
    started = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - started


class Predictor:
    """Runs requests through the pipeline; owns nothing but references."""

    def __init__(
        self,
        registry: Registry,
        batchers: dict[int, Batcher],
        pool: Executor,
        metrics: Metrics,
        *,
        max_pixels: int,
        heatmap_max_side: int,
        max_decode_backlog: int,
    ) -> None:
        self.registry = registry
        self.batchers = batchers
        self.pool = pool
        self.metrics = metrics
        self.max_pixels = max_pixels
        self.heatmap_max_side = heatmap_max_side
        self.max_decode_backlog = max_decode_backlog
        self.decoding = 0  # requests in or waiting for the decode pool (event-loop only)

    async def decode(self, body: bytes) -> tuple[DecodedImage, float]:
        """DICOM bytes -> display pixels and header facts, off the event loop.

        Admission control: decoding is the first CPU stage, so a burst piles up here
        before any inference queue fills; past ``max_decode_backlog`` requests in or
        waiting for the pool, new ones get 503 rather than an ever-growing wait."""
        if self.decoding >= self.max_decode_backlog:
            raise OverloadedError("decode", self.max_decode_backlog)
        self.decoding += 1
        try:
            loop = asyncio.get_running_loop()
            decoded, seconds = await loop.run_in_executor(
                self.pool, partial(_timed, read_dicom, body, max_pixels=self.max_pixels)
            )
        finally:
            self.decoding -= 1
        return decoded, seconds

    async def predict(
        self,
        request_id: str,
        decoded: DecodedImage,
        decode_s: float,
        model: ServedModel,
        options: PredictOptions,
        deadline: float,
        started: float,
    ) -> PredictResponse:
        """One decoded image through one model; ``deadline`` in ``time.monotonic()``
        seconds, ``started`` the request's ``time.perf_counter()`` start."""
        loop = asyncio.get_running_loop()
        batcher = self.batchers[model.resolution]
        model_input, preprocess_s = await loop.run_in_executor(
            self.pool, partial(_timed, preprocess, decoded.pixels, model.resolution)
        )
        inference = await batcher.infer(model_input.image, options.method, deadline)
        explanation: Explanation | None = None
        post_s = 0.0
        if options.explain:
            explanation, post_s = await loop.run_in_executor(
                self.pool,
                partial(
                    _timed,
                    postprocess,
                    decoded,
                    model_input,
                    inference,
                    options,
                    self.heatmap_max_side,
                ),
            )
        stages = {
            "decode": decode_s,
            "preprocess": preprocess_s,
            "queue": inference.queue_s,
            "inference": inference.inference_s,
            "postprocess": post_s,
        }
        self.metrics.observe_stages(model.resolution, stages)
        probability = sigmoid(inference.logit)
        timings = {k: round(v * 1000, 3) for k, v in stages.items()}
        timings["total"] = round((time.perf_counter() - started) * 1000, 3)
        return PredictResponse(
            request_id=request_id,
            model=model_block(model),
            probability=probability,
            threshold=model.threshold,
            positive=probability >= model.threshold,
            image=image_block(decoded),
            saliency=explanation.saliency if explanation else None,
            boxes=explanation.boxes if explanation else [],
            timings_ms=Timings(**timings),
        )
