"""The torch backend's fast Grad-CAM path: the model's closed-form CAM in one forward pass.

:meth:`cxrmodel.networks.CXRClassifier.forward_explained` gives the logit, the raw Grad-CAM
of class 0 and the embedding in one forward pass and no backward pass (the CAM's channel
weights are the classifier row ``W / (h w)``); it is the code the ONNX export traces, so
this path and the ONNX ``cam`` output are the same arithmetic. :class:`ClosedFormRunner`
runs it under ``torch.inference_mode()`` and, on CUDA, adds three things:

* **channels-last** (NHWC) parameters and input: cuDNN's tensor-core convolutions work on
  NHWC, so NCHW activations would be transposed around every convolution. With one input
  channel the input is the same bytes in either format.
* **autocast** (``torch.autocast("cuda", dtype=bfloat16)``, ``cache_enabled=False`` as
  graph capture requires) over ``model.features``: bf16 where the GPU supports it
  (``torch.cuda.is_bf16_supported()``), else fp16. The head (mean pool, classifier, the
  CAM's 1x1 convolution) then runs in float32 on the float32-converted feature map, through
  the model's own ``forward_explained`` on a *head view* (the same module with an empty
  ``features``; see :func:`head_view`): under autocast the classifier would round the
  logit to bf16 (~2 significant digits: up to 0.4 % of the calibrated probability's
  input), while the head costs nothing next to the features. All outputs are float32.
* **CUDA graphs**, one per batch size ("bucket"): static input and output buffers, three
  warm-up passes on the runner's own (non-default) stream, capture, then every request
  copies its batch into the bucket's input, replays and copies the outputs out. A batch
  of ``n`` images runs in the smallest captured bucket ``>= n`` (padding rows are stale
  input whose outputs are dropped: the network is in eval mode, each image is computed
  independently of the others in its batch). The buckets are every size up to 8 and the
  powers of two above, up to the service's ``MAX_BATCH_SIZE`` (:func:`bucket_sizes`), so
  the batcher's batches of 1..8 never pad and larger ones pad by less than 2x; they are
  captured by :meth:`ClosedFormRunner.prepare` (the backend's ``warm``, at start-up), and
  a batch beyond them captures its bucket on first use.

  All buckets of one runner share one graph memory pool, so the intermediates of all the
  graphs cost the largest graph's, not the sum. The PyTorch rule for sharing ("replayed in
  the order captured") protects a graph that reads another's outputs; here no graph reads
  another's memory and every replay's outputs are copied to the host before the next
  replay, so the only persistent tensors (inputs: outside the pool; parameters) are never
  overwritten, in any order. Capture uses ``capture_error_mode="thread_local"``: on CUDA
  each resolution has its own inference thread, and a lazy capture must not fail because
  another thread allocates meanwhile.

Why CUDA graphs and not ``torch.compile(mode="reduce-overhead")``: the launch overhead is
what a graph removes (DenseNet-121 is ~600 small kernels per forward; at 224 px and batch
1 the GPU waits on Python and the launch queue), and graphs do it with no compiler in the
serving image and a capture of milliseconds per bucket. ``torch.compile`` would add
Inductor's fusions (BN + ReLU + concat), but needs Triton and a C compiler at run time,
compiles for tens of seconds to minutes per resolution and batch size at every start
(the service warms each resolution before ``/readyz``), can recompile on a new batch size
in the middle of serving, and runs kernels that differ from the eager ones it would be
checked against. The convolutions, where the time goes at 512 and 1024 px, are cuDNN's
in both cases. ``cuda_graphs=False`` runs the same arithmetic eagerly.

On CPU the runner is the same closed form in float32, eager (``torch:cpu``); a reduced
``precision`` there runs CPU autocast (for tests: it exercises the head view off a GPU).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from cxrmodel.antialias import FrequencyPool2d
from cxrmodel.networks import CXRClassifier
from service.backends.base import FloatArray

log = logging.getLogger(__name__)

#: ``auto``: bf16 on a GPU that supports it, else fp16; fp32 on CPU.
Precision = Literal["auto", "fp32", "bf16", "fp16"]

_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}
_NAMES: dict[torch.dtype, str] = {v: k for k, v in _DTYPES.items()}

#: Forward passes on the side stream before a capture (cuDNN algorithm choice, allocator).
WARMUP_PASSES = 3
#: Every batch size up to this one gets its own graph; above it, powers of two.
DENSE_BUCKETS = 8

Outputs = tuple[FloatArray, FloatArray, FloatArray]


def cuda_status() -> tuple[bool, str]:
    """``(True, device name)`` when torch can run on a CUDA device, else ``(False, why)``."""
    if torch.version.cuda is None:
        return False, f"this torch ({torch.__version__}) is a CPU-only build"
    if not torch.cuda.is_available():
        return False, (
            f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA device "
            "(no GPU, no driver, or CUDA_VISIBLE_DEVICES hides it)"
        )
    return True, torch.cuda.get_device_name()


def require_cuda() -> None:
    """Raise ``RuntimeError`` saying why when torch cannot use a CUDA device: the service
    must not fall back to the CPU silently when the operator configured a GPU."""
    ok, why = cuda_status()
    if not ok:
        raise RuntimeError(
            f"SHARPCXR_DEVICE=cuda but {why}; install a CUDA build of torch on a GPU "
            "machine, or set SHARPCXR_DEVICE=cpu"
        )


def resolve_precision(precision: Precision, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``; ``None`` means float32 (no
    autocast). ``ValueError`` for an unknown name."""
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ValueError(f"precision must be auto, fp32, bf16 or fp16; got {precision!r}")
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return _DTYPES[precision]


def bucket_sizes(max_batch: int) -> tuple[int, ...]:
    """The batch sizes to capture for batches of ``1..max_batch``: every size up to
    :data:`DENSE_BUCKETS`, then powers of two, and ``max_batch`` itself."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    sizes = set(range(1, min(max_batch, DENSE_BUCKETS) + 1))
    power = DENSE_BUCKETS * 2
    while power < max_batch:
        sizes.add(power)
        power *= 2
    sizes.add(max_batch)
    return tuple(sorted(sizes))


def bucket_for(n: int, buckets: Iterable[int]) -> int:
    """The smallest bucket ``>= n``; beyond them all, ``n`` rounded up to a power of two
    (at most :data:`DENSE_BUCKETS` if ``n`` is that small)."""
    fitting = [b for b in buckets if b >= n]
    if fitting:
        return min(fitting)
    return n if n <= DENSE_BUCKETS else 1 << (n - 1).bit_length()


def head_view(model: CXRClassifier) -> CXRClassifier:
    """``model`` with an empty ``features`` (an identity ``nn.Sequential``), sharing every
    other submodule and parameter: ``head_view(m).forward_explained(A)`` is the head of
    ``m.forward_explained`` applied to a feature map ``A`` (the model's own code, not a
    copy of it). ``model`` itself is not changed."""
    head = copy.copy(model)  # a new Module object over the same attribute values ...
    head._modules = {**model._modules, "features": nn.Sequential()}  # ... but its own dict
    return head


def materialise_lazy_buffers(model: CXRClassifier, resolution: int, device: torch.device) -> None:
    """Build the operator matrices that FLC/ASAP pooling creates on its first forward pass
    (:class:`cxrmodel.antialias.FrequencyPool2d`), in float32 and outside inference mode.

    Built lazily inside ``torch.inference_mode()`` they would be inference tensors, which
    pytorch-grad-cam's forward pass (autograd on) may not save for its backward pass; built
    under autocast they would be bf16 for good, and the float32 methods would read them
    rounded. Built here, before any capture, the graphs also never allocate them. A no-op
    for models without frequency pooling."""
    if any(isinstance(m, FrequencyPool2d) for m in model.modules()):
        with torch.no_grad():
            model.features(torch.zeros((1, 1, resolution, resolution), device=device))


@dataclass
class CapturedGraph:
    """One captured batch size: replay reads ``inp`` and writes ``out``."""

    size: int
    graph: torch.cuda.CUDAGraph
    inp: Tensor
    out: tuple[Tensor, Tensor, Tensor]


class ClosedFormRunner:
    """``forward_explained`` of one model at one resolution, with the device options of the
    module docstring. ``__call__`` takes the checked float32 ``[N, 1, R, R]`` batch and
    returns float32 ``(logits [N, K], cam [N, G, G], embedding [N, C])`` as numpy."""

    def __init__(
        self,
        model: CXRClassifier,
        resolution: int,
        device: torch.device,
        *,
        precision: Precision = "auto",
        channels_last: bool | None = None,
        cuda_graphs: bool | None = None,
        class_index: int = 0,
    ) -> None:
        cuda = device.type == "cuda"
        if cuda:
            require_cuda()
        self.model = model
        self.resolution = resolution
        self.device = device
        self.class_index = class_index
        self.dtype = resolve_precision(precision, device)
        self.channels_last = cuda if channels_last is None else channels_last
        self.cuda_graphs = cuda if cuda_graphs is None else cuda_graphs
        if self.cuda_graphs and not cuda:
            raise ValueError("cuda_graphs needs device cuda")
        materialise_lazy_buffers(model, resolution, device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self._head = head_view(model)
        self._graphs: dict[int, CapturedGraph] = {}
        self._stream = torch.cuda.Stream(device) if cuda else None  # type: ignore[no-untyped-call]
        self._pool = torch.cuda.graph_pool_handle() if self.cuda_graphs else None
        self._input: Tensor | None = None  # the shared static input of the prepared buckets
        self._host: Tensor | None = None  # pinned staging buffer for host -> device copies
        if cuda:
            # Fixed shapes (one per bucket): let cuDNN time its algorithms once, in warm-up.
            torch.backends.cudnn.benchmark = True

    @property
    def label(self) -> str:
        """What runs: ``cpu``, ``cpu:bf16``, ``cuda:bf16:cudagraph``, ``cuda:fp32:eager``."""
        precision = "fp32" if self.dtype is None else _NAMES[self.dtype]
        if self.device.type != "cuda":
            return "cpu" if self.dtype is None else f"cpu:{precision}"
        return f"cuda:{precision}:{'cudagraph' if self.cuda_graphs else 'eager'}"

    @property
    def captured(self) -> tuple[int, ...]:
        """The batch sizes with a captured graph."""
        return tuple(sorted(self._graphs))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The device tensors ``(logits, cam, embedding)``, float32, for a device batch
        ``x`` (the arithmetic every path runs, captured or not)."""
        if self.dtype is None:
            return self.model.forward_explained(x, self.class_index)
        with torch.autocast(self.device.type, dtype=self.dtype, cache_enabled=False):
            features = self.model.features(x)
        return self._head.forward_explained(features.float(), self.class_index)

    def __call__(self, batch: FloatArray) -> Outputs:
        n = len(batch)
        if self._stream is None:
            with torch.inference_mode():
                return self._to_numpy(self.forward(self._prepare_input(torch.from_numpy(batch))))
        with torch.cuda.device(self.device), torch.cuda.stream(self._stream):
            if not self.cuda_graphs:
                with torch.inference_mode():
                    x = self._prepare_input(self._staged(batch).to(self.device, non_blocking=True))
                    return self._to_numpy(self.forward(x), n)
            graph = self._graphs.get(bucket_for(n, self._graphs))
            if graph is None:
                # Beyond the captured buckets (a batch above MAX_BATCH_SIZE's warm-up):
                # eager, not a capture, which would synchronise the whole device and empty
                # its cache under the other resolutions' threads.
                log.warning(
                    "batch %d above the captured CUDA graphs: run eagerly",
                    n,
                    extra={"resolution": self.resolution},
                )
                with torch.inference_mode():
                    x = self._prepare_input(self._staged(batch).to(self.device, non_blocking=True))
                    return self._to_numpy(self.forward(x), n)
            with torch.inference_mode():
                graph.inp[:n].copy_(self._staged(batch), non_blocking=True)
                graph.graph.replay()
                return self._to_numpy(graph.out, n)

    def prepare(self, max_batch: int) -> None:
        """Capture the graphs of :func:`bucket_sizes` ``(max_batch)`` (no-op without CUDA
        graphs); called at start-up so no request waits for a capture."""
        if not self.cuda_graphs:
            return
        sizes = [s for s in bucket_sizes(max_batch) if s not in self._graphs]
        if not sizes:
            return
        r = self.resolution
        with torch.cuda.device(self.device), torch.cuda.stream(self._stream):
            # One static input for all of them (bucket b reads its first b rows).
            self._input = self._empty_input(max(sizes))
            # Largest first: the pool the graphs share then holds the largest graph's
            # blocks, which the smaller ones reuse (smallest first would leave small
            # freed blocks the larger graphs cannot use).
            for size in sorted(sizes, reverse=True):
                self._capture(size, self._input[:size])
        log.info(
            "captured CUDA graphs",
            extra={"resolution": r, "batch_sizes": list(self.captured), "backend": self.label},
        )

    def graph_for(self, size: int) -> CapturedGraph:
        """The captured graph of batch size ``size``, captured now if it is missing. For
        tests and start-up only: serving runs eagerly past the captured buckets (see
        ``__call__``)."""
        graph = self._graphs.get(size)
        if graph is None:
            if not self.cuda_graphs:
                raise RuntimeError(f"no CUDA graphs on {self.label}")
            log.warning(
                "capturing a CUDA graph during serving (batch %d above the warmed buckets)",
                size,
                extra={"resolution": self.resolution},
            )
            with torch.cuda.device(self.device), torch.cuda.stream(self._stream):
                graph = self._capture(size, self._empty_input(size))
        return graph

    def close(self) -> None:
        if self._stream is not None:
            self._stream.synchronize()
        self._graphs.clear()
        self._input = self._host = None

    # --- internals ------------------------------------------------------------------------

    def _prepare_input(self, x: Tensor) -> Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _empty_input(self, size: int) -> Tensor:
        r = self.resolution
        with torch.inference_mode():
            return self._prepare_input(torch.zeros((size, 1, r, r), device=self.device))

    def _staged(self, batch: FloatArray) -> Tensor:
        """``batch`` in pinned host memory (an asynchronous copy source); the buffer is
        reused, which is safe because every call synchronises before it returns."""
        n = len(batch)
        if self._host is None or len(self._host) < n:
            self._host = torch.empty(batch.shape, dtype=torch.float32, pin_memory=True)
        staged = self._host[:n]
        np.copyto(staged.numpy(), batch)
        return staged

    def _capture(self, size: int, inp: Tensor) -> CapturedGraph:
        """Warm up on the runner's stream (the current one), then capture ``forward(inp)``."""
        assert self._stream is not None
        with torch.inference_mode():
            self._stream.wait_stream(torch.cuda.default_stream(self.device))
            for _ in range(WARMUP_PASSES):
                self.forward(inp)
            self._stream.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(
                graph, pool=self._pool, stream=self._stream, capture_error_mode="thread_local"
            ):
                out = self.forward(inp)
        captured = CapturedGraph(size, graph, inp, out)
        self._graphs[size] = captured
        return captured

    @staticmethod
    def _to_numpy(out: tuple[Tensor, Tensor, Tensor], n: int | None = None) -> Outputs:
        logits, cam, embedding = (t[:n].float().cpu().numpy() for t in out)
        return logits, cam, embedding
