"""Export a :class:`~training.architectures.CXRClassifier` to ONNX and TensorRT.

ONNX I/O (DESIGN.md, "Model artifacts"):

* input ``image``: float32 ``[N, 1, R, R]`` (dynamic ``N``), normalised as
  :mod:`imaging.preprocess` does;
* output ``logit``: float32 ``[N, num_classes]`` (``[N, 1]`` for the pneumothorax models);
* output ``cam``: float32 ``[N, R/32, R/32]``, the raw (unnormalised) Grad-CAM of
  **class 0** computed in closed form inside the graph (multi-label models export the
  logits of every class but the CAM of class 0 only);
* output ``embedding``: float32 ``[N, C]``, the pooled features the classifier reads
  (the out-of-distribution score's input), from the same forward pass.

Names and shapes are the contract of :mod:`cxrmodel.interface`.

The file is a single self-contained ``.onnx`` (weights inline, no external data; DenseNet-121
is ~28 MB) exported with the dynamo exporter, checked with ``onnx.checker`` and carrying
``metadata_props``: ``resolution``, ``architecture``, ``downsample``, ``num_classes``,
``cam_class_index``, ``normalisation`` (JSON of :data:`imaging.preprocess.NORMALISATION`).
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import Tensor, nn

from cxrmodel.interface import CAM_CLASS_INDEX, INPUT, OUTPUTS
from cxrmodel.networks import CXRClassifier
from cxrmodel.resolution import check_resolution
from cxrmodel.tensorrt import INSTALL_HINT, import_tensorrt, tensorrt_status
from imaging.preprocess import NORMALISATION

log = logging.getLogger(__name__)


class _ExportHead(nn.Module):
    """``image [N, 1, R, R] -> (logit [N, K], cam [N, R/32, R/32], embedding [N, C])``."""

    def __init__(self, model: CXRClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.model.forward_explained(image, CAM_CLASS_INDEX)


def export_onnx(
    model: CXRClassifier, resolution: int, path: str | Path, *, opset: int = 18
) -> Path:
    """Write ``model`` (eval mode, float32, CPU) as ONNX for ``R = resolution``; returns the path.

    The caller's model is not modified (a CPU copy is exported).
    """
    check_resolution(resolution)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    net = copy.deepcopy(model).to(device="cpu", dtype=torch.float32).eval()
    net.set_gradient_checkpointing(False)
    head = _ExportHead(net).eval()
    # Batch 2, not 1: the exporter would specialise a size-1 dimension to a constant.
    example = torch.zeros(2, 1, resolution, resolution)
    with torch.no_grad():
        head(example)  # builds the FLC/ASAP operator buffers for this resolution
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.onnx.export(
        head,
        (example,),
        input_names=[INPUT],
        output_names=list(OUTPUTS),
        opset_version=opset,
        dynamo=True,
        external_data=False,
        dynamic_shapes={"image": {0: batch}},
        optimize=True,
        verbose=False,
    )
    if program is None:  # pragma: no cover - dynamo=True always returns a program
        raise RuntimeError("torch.onnx.export returned no program")
    proto = program.model_proto
    metadata = {
        "resolution": str(resolution),
        "architecture": net.architecture,
        "downsample": net.downsample,
        "num_classes": str(net.num_classes),
        "cam_class_index": str(CAM_CLASS_INDEX),
        "normalisation": json.dumps(NORMALISATION, sort_keys=True),
        "input": f"{INPUT} float32 [N,1,{resolution},{resolution}]",
        "outputs": f"logit float32 [N,{net.num_classes}]; cam float32 "
        f"[N,{resolution // 32},{resolution // 32}] raw Grad-CAM of class 0; embedding "
        f"float32 [N,{net.embedding_size}] pooled features",
    }
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto, full_check=True)
    tmp = path.with_name(path.name + ".tmp")
    onnx.save_model(proto, tmp)
    tmp.replace(path)
    return path


def onnx_metadata(path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file as a dict (no weights are parsed twice)."""
    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


def _make_calibrator(trt: Any, data: np.ndarray, batch_size: int) -> Any:
    """An ``IInt8EntropyCalibrator2`` feeding ``data`` float32 ``[K, 1, R, R]`` in batches.

    Batches are copied into one CUDA buffer owned by torch (no pycuda dependency); the
    calibration cache is kept in memory only.
    """
    base = getattr(trt, "IInt8EntropyCalibrator2", None)
    if base is None:
        raise RuntimeError(
            "this TensorRT build has no IInt8EntropyCalibrator2 (implicit INT8 calibration "
            "was removed); quantise explicitly (Q/DQ ONNX) instead"
        )

    class _Calibrator(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__()
            self.data = np.ascontiguousarray(data, dtype=np.float32)
            self.batch_size = batch_size
            self.index = 0
            self.device_buffer = torch.empty(
                (batch_size, *self.data.shape[1:]), dtype=torch.float32, device="cuda"
            )
            self.cache: bytes | None = None

        def get_batch_size(self) -> int:
            return self.batch_size

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self.index + self.batch_size > len(self.data):
                return None  # tells TensorRT calibration is complete
            batch = self.data[self.index : self.index + self.batch_size]
            self.device_buffer.copy_(torch.from_numpy(batch))
            torch.cuda.synchronize()
            self.index += self.batch_size
            return [int(self.device_buffer.data_ptr())]

        def read_calibration_cache(self) -> bytes | None:
            return self.cache

        def write_calibration_cache(self, cache: Any) -> None:
            self.cache = bytes(cache)

    return _Calibrator()


def build_tensorrt_plan(
    onnx_path: str | Path,
    plan_path: str | Path,
    *,
    resolution: int,
    fp16: bool = True,
    int8_calibration: np.ndarray | None = None,
    max_batch: int = 8,
) -> Path:
    """Build a serialized TensorRT 10 engine from an exported ONNX file; returns ``plan_path``.

    Optimisation profile for ``image``: batch 1 / ``max_batch`` / ``max_batch`` at the fixed
    ``resolution``. ``fp16`` sets ``BuilderFlag.FP16``; ``int8_calibration`` (float32
    ``[K, 1, R, R]``, preprocessed model inputs, ``K >= 1``) enables INT8 with entropy
    calibration (batches of ``min(K, max_batch)``). A plan is specific to the GPU model
    and TensorRT version that built it. Raises ``RuntimeError`` without TensorRT / CUDA.
    """
    available, reason = tensorrt_status()
    if not available:
        raise RuntimeError(f"cannot build a TensorRT plan: {reason}; {INSTALL_HINT}")
    trt = import_tensorrt()

    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    explicit = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)
    if explicit is not None:  # deprecated no-op in TensorRT 10 (always explicit), needed in 8
        flags |= 1 << int(explicit)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 4 << 30)
    shape_min = (1, 1, resolution, resolution)
    shape_max = (max_batch, 1, resolution, resolution)
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT, shape_min, shape_max, shape_max)
    config.add_optimization_profile(profile)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    if int8_calibration is not None:
        data = np.asarray(int8_calibration, dtype=np.float32)
        if data.ndim != 4 or data.shape[1:] != (1, resolution, resolution) or len(data) < 1:
            raise ValueError(
                f"int8_calibration must be [K, 1, {resolution}, {resolution}], got {data.shape}"
            )
        calib_batch = min(len(data), max_batch)
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = _make_calibrator(trt, data, calib_batch)
        # Calibration runs at one fixed shape: the profile's opt shape.
        calib_shape = (calib_batch, 1, resolution, resolution)
        calib_profile = builder.create_optimization_profile()
        calib_profile.set_shape(INPUT, calib_shape, calib_shape, calib_shape)
        config.set_calibration_profile(calib_profile)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path}")
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = plan_path.with_name(plan_path.name + ".tmp")
    with tmp.open("wb") as fh:
        fh.write(memoryview(serialized))
    tmp.replace(plan_path)
    return plan_path
