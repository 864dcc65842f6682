"""The one small interface every inference backend implements.

A backend owns one model at one resolution. The service hands it a batch of
preprocessed model inputs and gets back, per image, the pneumothorax logit, the raw
Grad-CAM at the model's feature grid and the embedding (the pooled features): the three
outputs of :mod:`cxrmodel.interface`. Everything else (decoding, letterbox geometry,
normalising the CAM, mask, boxes, the OOD score, calibration, encoding) is shared code,
so switching backends changes only these three arrays.

Pixel convention of ``images`` (checked by :func:`check_batch`): float32
``[N, 1, R, R]``, C-contiguous, normalised exactly as :func:`imaging.preprocess.preprocess`
does (``(display - 0.5) / 0.25``), row 0 at the top, higher = brighter.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from cxrmodel.manifest import ModelFileError

FloatArray = npt.NDArray[np.float32]

#: The saliency method every backend offers: Grad-CAM of the pneumothorax logit at the
#: last feature map after its ReLU (``features.relu5``), equal to the ONNX ``cam`` output.
DEFAULT_METHOD = "gradcam"


@dataclass(frozen=True)
class InferenceOutput:
    """A batch's results.

    ``logits``: float32 ``[N]``, the pneumothorax logit (class 0) of each image.
    ``cams``: float32 ``[N, G, G]`` with ``G = R / 32``: the raw, unnormalised saliency of
    each image over the whole ``R x R`` input (letterbox padding included);
    :func:`imaging.saliency.explain` normalises and maps it to the original grid.
    ``embeddings``: float32 ``[N, C]``, the pooled features the classifier read.
    """

    logits: FloatArray
    cams: FloatArray
    embeddings: FloatArray


class Backend(ABC):
    """One loaded model at one resolution; thread-compatible (one ``infer`` at a time).

    Subclasses set ``resolution`` and ``name`` and implement :meth:`infer`; a backend that
    offers saliency methods beyond Grad-CAM lists them in ``methods``. The caller checks a
    requested method against ``methods`` once, before queueing (``infer`` trusts it).
    """

    #: e.g. ``"onnxruntime:CPUExecutionProvider"``, ``"tensorrt:fp16"``, ``"torch:cpu"``.
    name: str
    resolution: int
    methods: tuple[str, ...] = (DEFAULT_METHOD,)
    #: The largest batch :meth:`infer` accepts (a TensorRT profile's maximum); ``None``
    #: means unbounded.
    max_batch: int | None = None

    @abstractmethod
    def infer(self, images: FloatArray, method: str = DEFAULT_METHOD) -> InferenceOutput:
        """Run the model on ``images`` float32 ``[N, 1, R, R]`` (see the module docstring)."""

    def warm(self, batch_sizes: tuple[int, ...], embedding_size: int) -> None:
        """Run zeros through the model at each batch size: lazy initialisation, kernel
        selection and memory-arena growth happen here, not on the first request. The
        outputs are checked against the manifest's ``embedding_size`` (a mismatch is a
        :class:`ModelFileError`: the statistics of the OOD score would not fit)."""
        r = self.resolution
        for n in batch_sizes:
            if self.max_batch is not None and n > self.max_batch:
                continue
            out = self.infer(np.zeros((n, 1, r, r), dtype=np.float32))
            if out.embeddings.shape != (n, embedding_size):
                raise ModelFileError(
                    f"the {self.name} model at {r} px gives embeddings of shape "
                    f"{list(out.embeddings.shape)}, the manifest says [N, {embedding_size}]; "
                    "re-export it with `sharpcxr export`"
                )

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing
        """Release what the backend holds (sessions, engines, device buffers)."""


def check_batch(images: npt.NDArray[Any], resolution: int) -> FloatArray:
    """Return ``images`` as C-contiguous float32 ``[N, 1, R, R]``; ``ValueError`` otherwise.

    A programming error on the service side (the pipeline builds these arrays), never a
    client error, hence ``ValueError`` rather than a domain error.
    """
    arr = np.asarray(images)
    if arr.dtype != np.float32:
        raise ValueError(f"images must be float32, got {arr.dtype}")
    if arr.ndim != 4 or arr.shape[1:] != (1, resolution, resolution) or arr.shape[0] < 1:
        raise ValueError(f"images must be [N, 1, {resolution}, {resolution}], got {arr.shape}")
    return np.ascontiguousarray(arr)


def split_outputs(
    logit: npt.NDArray[Any], cam: npt.NDArray[Any], embedding: npt.NDArray[Any], n: int
) -> InferenceOutput:
    """Validate raw model outputs (``logit [N, K]`` or ``[N]``, ``cam [N, G, G]``,
    ``embedding [N, C]``) into an :class:`InferenceOutput`, keeping label 0's logit."""
    logit = np.asarray(logit, dtype=np.float32)
    cam = np.asarray(cam, dtype=np.float32)
    embedding = np.asarray(embedding, dtype=np.float32)
    if logit.ndim == 2:
        logit = logit[:, 0]
    if (
        logit.shape != (n,)
        or cam.ndim != 3
        or cam.shape[0] != n
        or cam.shape[1] != cam.shape[2]
        or embedding.ndim != 2
        or embedding.shape[0] != n
    ):
        raise ValueError(
            f"unexpected model outputs: logit {logit.shape}, cam {cam.shape}, "
            f"embedding {embedding.shape}"
        )
    return InferenceOutput(
        logits=np.ascontiguousarray(logit),
        cams=np.ascontiguousarray(cam),
        embeddings=np.ascontiguousarray(embedding),
    )
