"""Torch backend: the reference. Eager model from the ``.pt`` checkpoint; ``gradcam`` from
the model's closed form in one forward pass, every method also from pytorch-grad-cam.

``method="gradcam"`` runs :class:`service.backends.torch_fast.ClosedFormRunner`:
``forward_explained`` (logit, CAM and embedding in one forward pass, no backward pass, the
arithmetic of the ONNX graph) under ``torch.inference_mode()``; on CUDA with channels-last,
bf16 (or fp16) autocast and one CUDA graph per batch size (see that module for the
choices and why). ``name`` says what runs it: ``torch:cpu``, ``torch:cuda:bf16:cudagraph``,
``torch:cuda:fp32:eager``. ``closed_form_gradcam=False`` sends ``gradcam`` through
pytorch-grad-cam as well (the reference the closed form is tested against).

For pytorch-grad-cam, every method is pytorch-grad-cam's own class on the model's target layer
(``features.relu5``, the last feature map after its ReLU) with ``ClassifierOutputTarget(0)``
(the pneumothorax logit), evaluated at the feature grid ``R/32`` rather than resized to
the input: the resize and everything after it (normalisation, mapping to the original
image, mask, boxes) is the shared :mod:`imaging` code, as for the ONNX backend's in-graph
CAM. So ``gradcam`` here and the ONNX ``cam`` differ only by float rounding, and the other
methods can be compared with it on equal terms. The embedding is the pooled activation
of the same target layer, which pytorch-grad-cam records in its forward pass.

Methods that run one forward pass per channel (ScoreCAM, AblationCAM) are left out: at
1024 px on DenseNet-121 that is a thousand forward passes per request.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pytorch_grad_cam import (
    EigenCAM,
    EigenGradCAM,
    GradCAM,
    GradCAMElementWise,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    XGradCAM,
)
from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

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
from service.backends.torch_fast import ClosedFormRunner, Precision, require_cuda

log = logging.getLogger(__name__)

#: ``method=`` value -> pytorch-grad-cam class.
METHODS: dict[str, type[BaseCAM]] = {
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "hirescam": HiResCAM,
    "xgradcam": XGradCAM,
    "layercam": LayerCAM,
    "eigencam": EigenCAM,
    "eigengradcam": EigenGradCAM,
    "gradcamelementwise": GradCAMElementWise,
}


def _at_grid(cam_class: type[BaseCAM], grid: int) -> BaseCAM:
    """A subclass of ``cam_class`` whose "target size" is the CAM grid itself.

    ``BaseCAM.compute_cam_per_layer`` ends with ``scale_cam_image(cam, target_size)``
    (ReLU'd, min-max normalised, resized); a target size equal to the grid keeps the
    normalisation and skips the resize.
    """

    def target_size(self: BaseCAM, input_tensor: torch.Tensor) -> tuple[int, int]:
        return grid, grid

    return type(f"Grid{cam_class.__name__}", (cam_class,), {"get_target_width_height": target_size})


class TorchBackend(Backend):
    """A :class:`cxrmodel.networks.CXRClassifier` rebuilt from a checkpoint.

    ``closed_form_gradcam``: ``gradcam`` through :class:`ClosedFormRunner` (default) or
    pytorch-grad-cam. The runner's options (defaults: what the device does best):
    ``precision`` (``auto``: bf16, or fp16 on GPUs without bf16, on CUDA; fp32 on CPU),
    ``channels_last`` (on CUDA) and ``cuda_graphs`` (on CUDA; ``False`` runs eagerly).
    The pytorch-grad-cam methods always run float32 and eagerly.
    """

    methods = tuple(METHODS)

    def __init__(
        self,
        checkpoint_path: Path,
        resolution: int,
        *,
        device: Device = Device.CPU,
        intra_op_threads: int = 1,
        closed_form_gradcam: bool = True,
        precision: Precision = "auto",
        channels_last: bool | None = None,
        cuda_graphs: bool | None = None,
    ) -> None:
        # Imported here: the ONNX Runtime path of the service needs no torch model code.
        from cxrmodel.checkpoint import model_from_checkpoint

        if device == Device.CUDA:
            require_cuda()
        torch.set_num_threads(intra_op_threads)
        try:
            # weights_only: the served .pt holds tensors and a plain model config, and the
            # manifest's sha256 is not a signature, so unpickling must not run code
            state = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
            model = model_from_checkpoint(state)
        except Exception as exc:
            raise ModelFileError(
                f"could not rebuild the model from {checkpoint_path.name}: {exc}"
            ) from exc
        self.device = torch.device(device.value)
        self.model = model.to(self.device).eval()
        self.resolution = resolution
        self.grid = resolution // 32
        self._classes = {name: _at_grid(cls, self.grid) for name, cls in METHODS.items()}
        self._closed_form: ClosedFormRunner | None = None
        if closed_form_gradcam:
            self._closed_form = ClosedFormRunner(
                self.model,
                resolution,
                self.device,
                precision=precision,
                channels_last=channels_last,
                cuda_graphs=cuda_graphs,
            )
            self.name = f"torch:{self._closed_form.label}"
        else:
            self.name = f"torch:{self.device.type}:grad-cam"

    def warm(self, batch_sizes: tuple[int, ...], embedding_size: int) -> None:
        """Capture the CUDA graphs of every batch size up to the largest warmed one (the
        service's ``MAX_BATCH_SIZE``), then run :meth:`Backend.warm`."""
        if self._closed_form is not None and batch_sizes:
            self._closed_form.prepare(max(batch_sizes))
        super().warm(batch_sizes, embedding_size)

    def infer(self, images: FloatArray, method: str = DEFAULT_METHOD) -> InferenceOutput:
        checked = check_batch(images, self.resolution)
        if method == DEFAULT_METHOD and self._closed_form is not None:
            logits, cams, embeddings = self._closed_form(checked)
            return split_outputs(logits, cams, embeddings, len(checked))
        return self._grad_cam(checked, method)

    def _grad_cam(self, checked: FloatArray, method: str) -> InferenceOutput:
        batch = torch.from_numpy(checked).to(self.device)
        targets: list[Any] = [ClassifierOutputTarget(0)] * len(batch)
        # The context manager removes the hooks it registered on the target layer.
        with self._classes[method](self.model, target_layers=[self.model.target_layer]) as cam:
            cams = np.asarray(cam(input_tensor=batch, targets=targets), dtype=np.float32)
            logits = cam.outputs.detach().float().cpu().numpy()
            # The target layer's activations [N, C, G, G] from this forward pass, pooled.
            features = cam.activations_and_grads.activations[0]
            embeddings = features.float().mean(dim=(2, 3)).cpu().numpy()
        self.model.zero_grad(set_to_none=True)
        return split_outputs(logits, cams, embeddings, len(batch))

    def close(self) -> None:
        if self._closed_form is not None:
            self._closed_form.close()
            self._closed_form = None
        del self.model
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
