"""One request's path, as named stages over one small request context::

    decode -> gate -> preprocess -> infer -> explain -> encode

* **decode** (``imaging.read_dicom``): DICOM bytes -> display pixels and header facts;
* **gate** (``imaging.gate``): may the model assess this image at all? (modality, body
  part, view, presentation intent, a display chain that leaves no contrast); with
  ``SHARPCXR_GATE=refuse`` a finding ends the request here with a 422;
* **preprocess** (``imaging.preprocess``): the model input at the model's resolution;
* **infer** (the resolution's batcher and backend): logit, raw CAM and embedding, then
  the model's own judgement: the calibrated probability, the out-of-distribution score
  and the assessment that combines it with the gate's findings;
* **explain** (``imaging.saliency``): CAM -> saliency, mask and boxes in the original grid;
* **encode** (:mod:`service.encode`): domain results -> the response model.

CPU-bound stages run in a thread pool sized to the cores, never on the event loop, so a
slow JPEG 2000 file or a large mask does not stall other requests; decode and gate share
one pool hop, explain and encode another. Every stage is timed here, in one place.
``/v1/compare`` decodes and gates once and runs the later stages once per model.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from functools import partial
from typing import Literal, ParamSpec, TypeVar

from cxrmodel.calibration import calibrated_probability
from imaging.dicom import DecodedImage, read_dicom
from imaging.gate import Finding, check_image
from imaging.preprocess import ModelInput, preprocess
from imaging.saliency import DEFAULT_THRESHOLD, SaliencyResult, explain
from service.batching import Arrival, Batcher, Inference
from service.encode import encode_response
from service.errors import GateRefusedError, OverloadedError, UnsupportedMethodError
from service.metrics import Metrics
from service.registry import Registry, ServedModel
from service.schemas import PredictResponse
from service.settings import GateMode

P = ParamSpec("P")
R = TypeVar("R")

OUT_OF_DISTRIBUTION = "out_of_distribution"


@dataclass(frozen=True)
class PredictOptions:
    """What the client asked for besides the image."""

    mask_format: Literal["png", "rle"] = "png"
    heatmap: bool = False
    saliency_map: bool = False
    method: str = "gradcam"
    explain: bool = True
    saliency_threshold: float = DEFAULT_THRESHOLD


@dataclass
class RequestContext:
    """What the stages of one request share. ``deadline`` is in ``time.monotonic()``
    seconds, ``started`` the request's ``time.perf_counter()``; ``seconds`` holds each
    shared stage's own time (decode, gate)."""

    request_id: str
    options: PredictOptions
    deadline: float
    started: float
    decoded: DecodedImage | None = None
    findings: list[Finding] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Answer:
    """One model's answer to one request, in domain terms.

    ``probability`` is calibrated; ``reasons`` are why the image is not assessable (the
    gate's findings in ``flag`` mode, and the OOD finding), empty when it is assessed.
    """

    probability: float
    ood_score: float
    in_distribution: bool
    reasons: tuple[Finding, ...]

    @property
    def assessed(self) -> bool:
        return not self.reasons


def _timed(fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> tuple[R, float]:
    """``(fn(*args, **kwargs), seconds it took)``: the stage's own time, not the pool wait."""
    started = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - started


#: ``read_dicom``'s signature: in this process, or in a worker (``DecodePool.decode``)
Decoder = Callable[..., DecodedImage]


def _decode_and_gate(
    body: bytes,
    max_pixels: int,
    gate: GateMode,
    min_side: int | None = None,
    decoder: Decoder = read_dicom,
) -> tuple[DecodedImage, list[Finding], float, float]:
    """The decode and gate stages in one pool hop: ``(decoded, findings, seconds, seconds)``.

    ``min_side``: the largest model resolution the request needs; a JPEG 2000 / HTJ2K
    image is decoded no finer than that (``DecodedImage.reduction``), others in full.
    ``decoder``: ``read_dicom`` here, or a :class:`service.decode_pool.DecodePool`'s
    ``decode`` (the gate's checks are numpy on the result and stay in this process)."""
    decoded, decode_s = _timed(decoder, body, max_pixels=max_pixels, min_side=min_side)
    if gate is GateMode.OFF:
        return decoded, [], decode_s, 0.0
    findings, gate_s = _timed(check_image, decoded.facts, decoded.pixels, decoded.contrast)
    return decoded, findings, decode_s, gate_s


def judge(
    model: ServedModel, inference: Inference, findings: Sequence[Finding], gate: GateMode
) -> Answer:
    """The model's own judgement of its output: calibrated probability, OOD score, and
    whether the answer means anything (``findings``: the gate's, in ``flag`` mode)."""
    score = float(model.statistics.score(inference.embedding[None, :])[0])
    threshold = model.ood.threshold
    in_distribution = score <= threshold
    reasons: list[Finding] = []
    if gate is not GateMode.OFF:
        reasons.extend(findings)
        if not in_distribution:
            reasons.append(Finding(
                OUT_OF_DISTRIBUTION,
                f"This image is unlike the images the model was trained on (out-of-"
                f"distribution score {score:.1f}, above its threshold {threshold:.1f}), so "
                "its answer means nothing here. The model's intended use says what it was "
                "trained on.",
            ))  # fmt: skip
    return Answer(
        probability=calibrated_probability(inference.logit, model.calibration.temperature),
        ood_score=score,
        in_distribution=in_distribution,
        reasons=tuple(reasons),
    )


class Pipeline:
    """Runs requests through the stages; owns nothing but references."""

    def __init__(
        self,
        registry: Registry,
        batchers: dict[int, Batcher],
        pool: Executor,
        metrics: Metrics,
        *,
        gate: GateMode,
        max_pixels: int,
        heatmap_max_side: int,
        max_decode_backlog: int,
        reduced_decode: str = "accurate",
        decoder: Decoder = read_dicom,
    ) -> None:
        self.registry = registry
        self.batchers = batchers
        self.pool = pool
        self.metrics = metrics
        self.gate_mode = gate
        self.max_pixels = max_pixels
        self.heatmap_max_side = heatmap_max_side
        self.max_decode_backlog = max_decode_backlog
        self.reduced_decode = reduced_decode
        self.decoder = decoder
        self.decoding = 0  # requests in or waiting for the decode pool (event-loop only)

    def models(self, resolutions: Sequence[int | None], method: str) -> list[ServedModel]:
        """The models for ``resolutions`` (``None``: the default), with the saliency
        ``method`` checked against each backend: the one place a method is checked."""
        models = [self.registry.get(r) for r in resolutions]
        for model in models:
            if method not in model.backend.methods:
                raise UnsupportedMethodError(method, model.backend.name, model.backend.methods)
        return models

    async def run(
        self, ctx: RequestContext, body: bytes, models: Sequence[ServedModel]
    ) -> list[PredictResponse]:
        """Every stage for every model: decode and gate once, the rest per model.

        Each model's batcher counts this request as coming from here until its image is
        queued, so a batcher waits for company only while some is on its way."""
        with contextlib.ExitStack() as stack:
            arrivals = [
                stack.enter_context(self.batchers[m.resolution].on_the_way()) for m in models
            ]
            await self.decode(ctx, body, min_side=self._min_side(models))
            self.gate(ctx, models)
            return list(
                await asyncio.gather(
                    *(self.answer(ctx, m, a) for m, a in zip(models, arrivals, strict=True))
                )
            )

    def _min_side(self, models: Sequence[ServedModel]) -> int | None:
        """How fine a JPEG 2000 image must be decoded for ``models``: the largest resolution
        (``fast``), twice it so the final resize still averages (``accurate``), or in full
        (``off``). Twice: the wavelet low-pass is sharper than area averaging, and one
        level of area averaging after it brings the input back within 0.022 of the full
        decode, against 0.06 without (README "JPEG 2000 and HTJ2K")."""
        if self.reduced_decode == "off":
            return None
        needed = max(m.resolution for m in models)
        return needed * 2 if self.reduced_decode == "accurate" else needed

    # ------------------------------------------------------------------ shared stages
    async def decode(self, ctx: RequestContext, body: bytes, min_side: int | None = None) -> None:
        """decode + gate's checks, off the event loop.

        Admission control: decoding is the first CPU stage, so a burst piles up here
        before any inference queue fills; past ``max_decode_backlog`` requests in or
        waiting for the pool, new ones get 503 rather than an ever-growing wait."""
        job = partial(
            _decode_and_gate, body, self.max_pixels, self.gate_mode, min_side, self.decoder
        )
        decoded, findings, decode_s, gate_s = await self._admitted(job)
        ctx.decoded, ctx.findings = decoded, findings
        ctx.seconds.update(decode=decode_s, gate=gate_s)

    async def decode_only(self, body: bytes) -> DecodedImage:
        """The display chain alone (no gate, no model), under the same admission control:
        what the viewer shows is what the models are given."""
        return await self._admitted(partial(self.decoder, body, max_pixels=self.max_pixels))

    async def _admitted(self, job: Callable[[], R]) -> R:
        """``job`` in the pool, or 503 when ``max_decode_backlog`` are in or waiting."""
        if self.decoding >= self.max_decode_backlog:
            raise OverloadedError("decode", self.max_decode_backlog)
        self.decoding += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self.pool, job)
        finally:
            self.decoding -= 1

    def gate(self, ctx: RequestContext, models: Sequence[ServedModel]) -> None:
        """``refuse`` mode: the gate's findings end the request (422, counted)."""
        if self.gate_mode is GateMode.REFUSE and ctx.findings:
            for model in models:
                for finding in ctx.findings:
                    self.metrics.count_assessment(model.resolution, "refused", finding.code)
            raise GateRefusedError(ctx.findings)

    # ------------------------------------------------------------------ per-model stages
    async def answer(
        self, ctx: RequestContext, model: ServedModel, arrival: Arrival | None = None
    ) -> PredictResponse:
        """preprocess -> infer -> explain -> encode for one model."""
        assert ctx.decoded is not None, "decode runs first"
        loop = asyncio.get_running_loop()
        model_input, preprocess_s = await loop.run_in_executor(
            self.pool,
            partial(_timed, preprocess, ctx.decoded.pixels, model.resolution, ctx.decoded.grid),
        )
        inference = await self.batchers[model.resolution].infer(
            model_input.image, ctx.options.method, ctx.deadline, arrival
        )
        # Only flag mode gets here with findings: off records none, refuse raised on them.
        answer = judge(model, inference, ctx.findings, self.gate_mode)
        if answer.assessed:
            self.metrics.count_assessment(model.resolution, "assessed", "none")
        for reason in answer.reasons:
            self.metrics.count_assessment(model.resolution, "not_assessable", reason.code)
        seconds = {
            **ctx.seconds,
            "preprocess": preprocess_s,
            "queue": inference.queue_s,
            "inference": inference.inference_s,
        }
        response = await loop.run_in_executor(
            self.pool,
            partial(self._explain_and_encode, ctx, model, model_input, inference, answer, seconds),
        )
        post_s = response.timings_ms.postprocess / 1000
        self.metrics.observe_stages(model.resolution, {**seconds, "postprocess": post_s})
        return response

    def _explain_and_encode(
        self,
        ctx: RequestContext,
        model: ServedModel,
        model_input: ModelInput,
        inference: Inference,
        answer: Answer,
        seconds: dict[str, float],
    ) -> PredictResponse:
        """explain + encode in one pool hop; ``timings_ms.postprocess`` is both."""
        assert ctx.decoded is not None
        started = time.perf_counter()
        saliency: SaliencyResult | None = None
        if ctx.options.explain:
            saliency = explain(
                inference.cam,
                model_input.geometry,
                ctx.options.saliency_threshold,
                ctx.decoded.facts.pixel_spacing_mm,
            )
        return encode_response(
            ctx=ctx,
            model=model,
            answer=answer,
            saliency=saliency,
            heatmap_max_side=self.heatmap_max_side,
            seconds=seconds,
            postprocess_started=started,
        )
