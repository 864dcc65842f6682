"""TensorRT 10 backend: a serialized engine (``.plan``) run with the native Python API.

The plan is the one :func:`training.export.build_tensorrt_plan` writes from the exported
ONNX (:mod:`cxrmodel.interface`): input ``image`` float32 ``[N, 1, R, R]``, outputs
``logit`` float32 ``[N, K]``, ``cam`` float32 ``[N, R/32, R/32]`` and ``embedding`` float32
``[N, C]``, with one optimisation profile of batch ``min..max`` at the fixed resolution
``R``. A plan is specific to the GPU
model and TensorRT version that built it; loading it anywhere else fails with a
:class:`~service.errors.ModelFileError` that quotes TensorRT's own reason.

Memory: device buffers (torch CUDA tensors) and pinned host buffers for the profile's
maximum batch are allocated once at load and bound to the execution context; every
:meth:`TensorRTBackend.infer` copies host -> device, enqueues the engine with
``execute_async_v3`` and copies device -> host on one private CUDA stream, then waits
for that stream only. Batches larger than the profile maximum are run in chunks; a chunk
smaller than the profile minimum is padded with zeros (``build_tensorrt_plan`` uses
minimum 1, so this only matters for plans built elsewhere).

``tensorrt`` and ``torch`` are imported lazily, so importing this module costs nothing and
works on machines without TensorRT or a GPU (where :func:`cxrmodel.tensorrt.tensorrt_status`,
the rule the plan builder uses too, says why and the constructor raises ``RuntimeError``
with an install hint).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cxrmodel.interface import CAM, EMBEDDING, INPUT, LOGIT
from cxrmodel.manifest import ModelFileError
from cxrmodel.resolution import STRIDE, check_resolution
from cxrmodel.tensorrt import INSTALL_HINT, import_tensorrt, tensorrt_status
from service.backends.base import (
    DEFAULT_METHOD,
    Backend,
    FloatArray,
    InferenceOutput,
    check_batch,
    split_outputs,
)

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

_BACKEND_HINT = f"{INSTALL_HINT}; or set SHARPCXR_BACKEND=onnxruntime"


@dataclass(frozen=True)
class EngineIO:
    """What an engine's I/O looks like, checked against the ONNX contract.

    ``min_batch`` / ``max_batch``: the batch range of optimisation profile 0 (equal for a
    static-batch engine); ``num_classes``: ``K`` of ``logit [N, K]``; ``grid``: ``G`` of
    ``cam [N, G, G]`` (``R / 32``); ``embedding_size``: ``C`` of ``embedding [N, C]``.
    """

    min_batch: int
    max_batch: int
    num_classes: int
    grid: int
    embedding_size: int


def _dims(shape: Any) -> tuple[int, ...]:
    """A ``trt.Dims`` (or any iterable of ints) as a tuple; ``-1`` marks a dynamic dim."""
    return tuple(int(d) for d in shape)


def inspect_engine(engine: Any, trt: Any, resolution: int) -> EngineIO:
    """Check ``engine``'s I/O tensors against the contract; :class:`ModelFileError` if not.

    The contract: exactly one input ``image`` float32 ``[N, 1, R, R]`` (``N`` dynamic or
    fixed), outputs ``logit`` float32 ``[N, K]``, ``cam`` float32 ``[N, R/32, R/32]`` and
    ``embedding`` float32 ``[N, C]``, all on the device. ``trt`` is the ``tensorrt``
    module (passed in so this is testable with a stand-in).
    """
    grid = resolution // STRIDE
    modes: dict[str, Any] = {}
    for i in range(int(engine.num_io_tensors)):
        name = str(engine.get_tensor_name(i))
        modes[name] = engine.get_tensor_mode(name)
    inputs = sorted(n for n, m in modes.items() if m == trt.TensorIOMode.INPUT)
    outputs = sorted(n for n, m in modes.items() if m == trt.TensorIOMode.OUTPUT)
    expected_outputs = sorted((LOGIT, CAM, EMBEDDING))
    if inputs != [INPUT] or outputs != expected_outputs:
        raise ModelFileError(
            f"the TensorRT engine has inputs {inputs} and outputs {outputs}; expected input "
            f"[{INPUT!r}] and outputs {expected_outputs} (rebuild the plan from an ONNX "
            "file written by `sharpcxr export`)"
        )
    for name in (INPUT, LOGIT, CAM, EMBEDDING):
        if engine.get_tensor_dtype(name) != trt.DataType.FLOAT:
            raise ModelFileError(
                f"the TensorRT engine's tensor {name!r} is {engine.get_tensor_dtype(name)}, "
                "expected float32 (FP16/INT8 belong inside the plan, not at its I/O)"
            )
        location = getattr(trt, "TensorLocation", None)
        if location is not None and engine.get_tensor_location(name) != location.DEVICE:
            raise ModelFileError(f"the TensorRT engine's tensor {name!r} is not on the device")

    image = _dims(engine.get_tensor_shape(INPUT))
    if len(image) != 4 or image[1:] != (1, resolution, resolution) or image[0] == 0:
        raise ModelFileError(
            f"the TensorRT engine's input {INPUT!r} has shape {list(image)}; expected "
            f"[N, 1, {resolution}, {resolution}] (is this the plan for resolution {resolution}?)"
        )
    if image[0] > 0:  # a static batch
        min_batch = max_batch = image[0]
    else:
        if int(getattr(engine, "num_optimization_profiles", 1)) < 1:
            raise ModelFileError("the TensorRT engine has a dynamic batch but no profile")
        lo, _, hi = (_dims(s) for s in engine.get_tensor_profile_shape(INPUT, 0))
        if lo[1:] != (1, resolution, resolution) or hi[1:] != (1, resolution, resolution):
            raise ModelFileError(
                f"the TensorRT engine's profile for {INPUT!r} spans {list(lo)}..{list(hi)};"
                f" expected [N, 1, {resolution}, {resolution}]"
            )
        min_batch, max_batch = lo[0], hi[0]
        if not 1 <= min_batch <= max_batch:
            raise ModelFileError(
                f"the TensorRT engine's batch profile {min_batch}..{max_batch} is invalid"
            )

    logit = _dims(engine.get_tensor_shape(LOGIT))
    cam = _dims(engine.get_tensor_shape(CAM))
    if len(logit) != 2 or logit[1] < 1 or logit[0] not in (-1, image[0]):
        raise ModelFileError(
            f"the TensorRT engine's output {LOGIT!r} has shape {list(logit)}; expected [N, C]"
        )
    if len(cam) != 3 or cam[1:] != (grid, grid) or cam[0] not in (-1, image[0]):
        raise ModelFileError(
            f"the TensorRT engine's output {CAM!r} has shape {list(cam)}; "
            f"expected [N, {grid}, {grid}] for resolution {resolution}"
        )
    embedding = _dims(engine.get_tensor_shape(EMBEDDING))
    if len(embedding) != 2 or embedding[1] < 1 or embedding[0] not in (-1, image[0]):
        raise ModelFileError(
            f"the TensorRT engine's output {EMBEDDING!r} has shape {list(embedding)}; "
            "expected [N, C]"
        )
    return EngineIO(min_batch=min_batch, max_batch=max_batch, num_classes=logit[1], grid=grid,
                    embedding_size=embedding[1])  # fmt: skip


_LOGGER_LOCK = threading.Lock()
_LOGGER: Any = None


def _get_logger(trt: Any) -> Any:
    """The process-wide ``trt.ILogger``: forwards to :mod:`logging` and keeps the last few
    error messages (quoted when a plan fails to deserialize).

    One instance for every runtime: TensorRT keeps the first logger it is given as its
    global logger and warns when later runtimes pass a different one.
    """
    global _LOGGER
    with _LOGGER_LOCK:
        if _LOGGER is not None:
            return _LOGGER
        severity = trt.ILogger.Severity
        levels = {
            severity.INTERNAL_ERROR: logging.CRITICAL,
            severity.ERROR: logging.ERROR,
            severity.WARNING: logging.WARNING,
            severity.INFO: logging.DEBUG,
            severity.VERBOSE: logging.DEBUG,
        }

        class _Logger(trt.ILogger):  # type: ignore[misc]
            def __init__(self) -> None:
                trt.ILogger.__init__(self)
                self.errors: list[str] = []

            def log(self, level: Any, msg: str) -> None:
                py_level = levels.get(level, logging.INFO)
                if py_level >= logging.ERROR:
                    self.errors.append(str(msg).strip())
                    del self.errors[:-5]  # keep the last few
                log.log(py_level, "TensorRT: %s", msg)

        _LOGGER = _Logger()
        return _LOGGER


class TensorRTBackend(Backend):
    """One TensorRT plan at one resolution on one GPU.

    ``plan_path``: a serialized TensorRT 10 engine for ``resolution`` (see the module
    docstring for its I/O); ``device_index``: the CUDA device to run on; ``precision``: an
    optional label for :attr:`name` (``"fp16"``, ``"int8"``, ``"fp32"``; the plan does not
    record it), else ``"plan"``. ``max_batch`` is the plan profile's maximum batch.

    Raises ``RuntimeError`` (with an install hint) without TensorRT 10 or CUDA,
    ``ValueError`` for a bad resolution or device index, and :class:`ModelFileError` when
    the plan is missing, does not deserialize here, or breaks the I/O contract.
    """

    def __init__(
        self,
        plan_path: Path,
        resolution: int,
        *,
        device_index: int = 0,
        precision: str | None = None,
    ) -> None:
        ok, reason = tensorrt_status()
        if not ok:
            raise RuntimeError(f"TensorRT backend unavailable: {reason}; {_BACKEND_HINT}")
        check_resolution(resolution)
        import torch

        if not 0 <= device_index < torch.cuda.device_count():
            raise ValueError(
                f"device_index {device_index} is out of range: torch sees "
                f"{torch.cuda.device_count()} CUDA device(s)"
            )
        plan_path = Path(plan_path)
        if not plan_path.is_file():
            raise ModelFileError(f"TensorRT plan not found: {plan_path}")
        trt = import_tensorrt()

        self.resolution = resolution
        self.name = f"tensorrt:{precision or 'plan'}"
        self._lock = threading.Lock()
        self._closed = False
        self._device = torch.device("cuda", device_index)
        self._device_name = torch.cuda.get_device_name(self._device)
        self._trt_version = str(trt.__version__)

        with torch.cuda.device(self._device):
            logger = _get_logger(trt)
            self._runtime: Any = trt.Runtime(logger)
            with _LOGGER_LOCK:  # the error list is shared: read back only our own errors
                logger.errors.clear()
                self._engine: Any = self._runtime.deserialize_cuda_engine(plan_path.read_bytes())
                detail = "; ".join(logger.errors) or "no reason given"
            if self._engine is None:
                raise ModelFileError(
                    f"TensorRT {self._trt_version} could not load {plan_path.name} on "
                    f"{self._device_name}: {detail}. A plan only loads with the TensorRT "
                    "version and GPU model that built it: rebuild it here (`sharpcxr export`)"
                )
            try:
                io = inspect_engine(self._engine, trt, resolution)
            except ModelFileError as exc:
                raise ModelFileError(f"{plan_path.name}: {exc}") from None
            self._io = io
            self.min_batch = io.min_batch
            self.max_batch = io.max_batch
            self._context: Any = self._engine.create_execution_context()
            if self._context is None:
                raise RuntimeError(
                    f"TensorRT could not create an execution context for {plan_path.name} "
                    "(out of GPU memory?)"
                )
            self._allocate(io)
        log.info(
            f"TensorRT {self._trt_version} engine loaded on {self._device_name} "
            f"(batch {io.min_batch}..{io.max_batch})",
            extra={"resolution": resolution, "backend": self.name, "batch_size": io.max_batch},
        )

    def _allocate(self, io: EngineIO) -> None:
        """Preallocate device and pinned host buffers for ``max_batch`` and bind them.

        Device: ``image`` float32 ``[B, 1, R, R]``, ``logit`` float32 ``[B, K]``, ``cam``
        float32 ``[B, G, G]``, ``embedding`` float32 ``[B, C]`` with ``B = max_batch``; host:
        pinned copies of the same.
        """
        import torch

        b, r, g = io.max_batch, self.resolution, io.grid
        shapes = {
            INPUT: (b, 1, r, r),
            LOGIT: (b, io.num_classes),
            CAM: (b, g, g),
            EMBEDDING: (b, io.embedding_size),
        }
        self._dev: dict[str, torch.Tensor] = {}
        self._host: dict[str, torch.Tensor] = {}
        for name, shape in shapes.items():
            self._dev[name] = torch.empty(shape, dtype=torch.float32, device=self._device)
            self._host[name] = torch.zeros(shape, dtype=torch.float32, pin_memory=True)
            if not self._context.set_tensor_address(name, int(self._dev[name].data_ptr())):
                raise RuntimeError(f"TensorRT refused the device address of {name!r}")
        make_stream: Any = torch.cuda.Stream  # untyped constructor in torch's hints
        self._stream: torch.cuda.Stream = make_stream(device=self._device)
        self._bound_batch = 0
        self._set_batch(b)
        # The outputs TensorRT infers for the largest batch must fit the buffers.
        for name in (LOGIT, CAM, EMBEDDING):
            got = _dims(self._context.get_tensor_shape(name))
            if got != shapes[name]:
                raise ModelFileError(
                    f"the TensorRT engine's output {name!r} is {list(got)} at batch {b}, "
                    f"expected {list(shapes[name])}"
                )
        torch.cuda.synchronize(self._device)

    def _set_batch(self, n: int) -> None:
        """Set the input shape ``[n, 1, R, R]`` on the context (only when it changes)."""
        if n != self._bound_batch:
            r = self.resolution
            if not self._context.set_input_shape(INPUT, (n, 1, r, r)):
                raise RuntimeError(f"TensorRT rejected input shape [{n}, 1, {r}, {r}]")
            self._bound_batch = n

    def infer(self, images: FloatArray, method: str = DEFAULT_METHOD) -> InferenceOutput:
        """Run the plan on ``images`` float32 ``[N, 1, R, R]`` (any ``N >= 1``; chunks of
        at most :attr:`max_batch`); returns logits float32 ``[N]``, cams float32
        ``[N, R/32, R/32]`` and embeddings float32 ``[N, C]``."""
        x = check_batch(images, self.resolution)
        n = x.shape[0]
        logits = np.empty((n, self._io.num_classes), dtype=np.float32)
        cams = np.empty((n, self._io.grid, self._io.grid), dtype=np.float32)
        embeddings = np.empty((n, self._io.embedding_size), dtype=np.float32)
        with self._lock:
            if self._closed:
                raise RuntimeError("this TensorRT backend has been closed")
            step = self._io.max_batch
            for start in range(0, n, step):
                stop = min(start + step, n)
                logit, cam, embedding = self._run_chunk(x[start:stop])
                logits[start:stop] = logit
                cams[start:stop] = cam
                embeddings[start:stop] = embedding
        return split_outputs(logits, cams, embeddings, n)

    def _run_chunk(self, chunk: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
        """One engine execution on ``chunk`` float32 ``[k, 1, R, R]``, ``k <= max_batch``;
        returns views of the pinned host buffers ``logit [k, K]``, ``cam [k, G, G]`` and
        ``embedding [k, C]``, valid until the next execution (the caller copies them out
        under the lock)."""
        import torch

        k = chunk.shape[0]
        run = max(k, self._io.min_batch)  # pad up to the profile minimum with zeros
        host_in = self._host[INPUT].numpy()
        host_in[:k] = chunk
        if run > k:
            host_in[k:run] = 0.0
        with torch.cuda.device(self._device), torch.cuda.stream(self._stream):
            self._set_batch(run)
            self._dev[INPUT][:run].copy_(self._host[INPUT][:run], non_blocking=True)
            if not self._context.execute_async_v3(self._stream.cuda_stream):
                raise RuntimeError("TensorRT execute_async_v3 failed (see the log)")
            for name in (LOGIT, CAM, EMBEDDING):
                self._host[name][:run].copy_(self._dev[name][:run], non_blocking=True)
            self._stream.synchronize()
        host = {name: self._host[name].numpy()[:k] for name in (LOGIT, CAM, EMBEDDING)}
        return host[LOGIT], host[CAM], host[EMBEDDING]

    def close(self) -> None:
        """Free the execution context, engine, runtime and buffers (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            stream = getattr(self, "_stream", None)
            if stream is not None:
                stream.synchronize()
            # Context before engine before runtime: the order TensorRT requires.
            self._context = None
            self._engine = None
            self._runtime = None
            self._dev = {}
            self._host = {}
