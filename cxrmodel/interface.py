"""The exported graph's interface: tensor names, dtypes and shapes (DESIGN.md, ONNX I/O).

* input ``image``: float32 ``[N, 1, R, R]``, normalised as :mod:`imaging.preprocess` does;
* output ``logit``: float32 ``[N, K]``, the logits of the model's ``K`` labels (the
  pneumothorax models have ``K = 1``);
* output ``cam``: float32 ``[N, R/32, R/32]``, the raw Grad-CAM of label 0 computed in
  closed form inside the graph;
* output ``embedding``: float32 ``[N, C]``, the globally average-pooled last feature map
  (the classifier's input), from the same forward pass; the out-of-distribution score is
  computed from it (:mod:`cxrmodel.ood`).

The ONNX file, a TensorRT plan built from it and the torch backend all keep this
interface, so the service's code after inference does not depend on the backend.
"""

from __future__ import annotations

from cxrmodel.resolution import cam_grid

INPUT = "image"
LOGIT = "logit"
CAM = "cam"
EMBEDDING = "embedding"
OUTPUTS = (LOGIT, CAM, EMBEDDING)
#: the label whose Grad-CAM the ``cam`` output holds
CAM_CLASS_INDEX = 0


def input_shape(resolution: int) -> list[int | None]:
    """``[None, 1, R, R]`` (``None``: the dynamic batch)."""
    return [None, 1, resolution, resolution]


def output_shapes(
    resolution: int, num_labels: int, embedding_size: int
) -> dict[str, list[int | None]]:
    """The three outputs' shapes, ``None`` for the dynamic batch."""
    grid = cam_grid(resolution)
    return {
        LOGIT: [None, num_labels],
        CAM: [None, grid, grid],
        EMBEDDING: [None, embedding_size],
    }
