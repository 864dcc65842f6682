"""ONNX Runtime backend: the exported graph's ``logit``, in-graph ``cam`` and ``embedding``.

On ``device="cpu"`` the session uses the CPU execution provider with ``intra_op_threads``
threads (one inference at a time per model, so inter-op parallelism stays at 1) and the
CPU memory arena on, so repeated batch shapes reuse their buffers. On ``device="cuda"``
it asks for TensorRT, then CUDA, then CPU, keeping those that this onnxruntime build has;
``name`` reports the provider that actually runs the graph.
"""

from __future__ import annotations

import logging
from pathlib import Path

import onnxruntime as ort

from cxrmodel.interface import INPUT, OUTPUTS
from cxrmodel.manifest import ModelFileError
from cxrmodel.vocab import Device
from service.backends.base import (
    DEFAULT_METHOD,
    Backend,
    FloatArray,
    InferenceOutput,
    check_batch,
    split_outputs,
)

log = logging.getLogger(__name__)

_GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def choose_providers(device: Device, available: list[str] | None = None) -> list[str]:
    """Execution providers for ``device`` ("cpu" | "cuda") among ``available`` (default: what
    this onnxruntime build offers), best first.

    Raises ``RuntimeError`` when ``cuda`` is asked for and no GPU provider is installed (the
    service must not silently fall back to CPU when the operator configured a GPU).
    """
    available = ort.get_available_providers() if available is None else available
    if device == Device.CPU:
        return ["CPUExecutionProvider"]
    gpu = [p for p in _GPU_PROVIDERS if p in available]
    if not gpu:
        raise RuntimeError(
            "SHARPCXR_DEVICE=cuda but this onnxruntime has no CUDA or TensorRT execution "
            f"provider (available: {', '.join(available)}); install onnxruntime-gpu or set "
            "SHARPCXR_DEVICE=cpu"
        )
    return [*gpu, "CPUExecutionProvider"]


class OnnxRuntimeBackend(Backend):
    """One ``InferenceSession`` over an exported model file."""

    def __init__(
        self,
        onnx_path: Path,
        resolution: int,
        *,
        device: Device = Device.CPU,
        intra_op_threads: int = 1,
    ) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.enable_cpu_mem_arena = True
        options.enable_mem_pattern = True
        # Spinning worker threads burn the cores the decoders need between batches.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(
                str(onnx_path), sess_options=options, providers=choose_providers(device)
            )
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise ModelFileError(f"ONNX Runtime could not load {onnx_path.name}: {exc}") from exc
        self._check_io(onnx_path.name, resolution)
        self.resolution = resolution
        self.name = f"onnxruntime:{self.session.get_providers()[0]}"

    def _check_io(self, file_name: str, resolution: int) -> None:
        inputs = {i.name: i.shape for i in self.session.get_inputs()}
        outputs = {o.name for o in self.session.get_outputs()}
        shape = inputs.get(INPUT)
        if shape is None or list(shape[1:]) != [1, resolution, resolution]:
            raise ModelFileError(
                f"{file_name}: expected input {INPUT!r} [N, 1, {resolution}, {resolution}] "
                f"as the manifest says, found {inputs}"
            )
        if not set(OUTPUTS) <= outputs:
            raise ModelFileError(
                f"{file_name}: expected outputs {list(OUTPUTS)}, found {sorted(outputs)}; "
                "re-export with `sharpcxr export` (sharpcxr 0.5 added `embedding`)"
            )

    def infer(self, images: FloatArray, method: str = DEFAULT_METHOD) -> InferenceOutput:
        batch = check_batch(images, self.resolution)
        logit, cam, embedding = self.session.run(list(OUTPUTS), {INPUT: batch})
        return split_outputs(logit, cam, embedding, len(batch))

    def close(self) -> None:
        del self.session
