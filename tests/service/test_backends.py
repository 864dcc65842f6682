"""Backends agree: torch + pytorch-grad-cam (the reference) vs ONNX Runtime's in-graph CAM."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cxrmodel.vocab import Device
from imaging.localisation import mask_iou
from imaging.preprocess import preprocess
from imaging.saliency import explain
from service.backends.onnxruntime import OnnxRuntimeBackend, choose_providers
from service.backends.torch import METHODS, TorchBackend
from tests.service.conftest import model_file, phantom


def _pair(models_dir: Path, resolution: int) -> tuple[OnnxRuntimeBackend, TorchBackend]:
    return (
        OnnxRuntimeBackend(model_file(models_dir, resolution, "onnx"), resolution),
        TorchBackend(model_file(models_dir, resolution, "pt"), resolution),
    )


@pytest.mark.parametrize("resolution", [128, 256])
def test_torch_gradcam_equals_onnx_in_graph_cam(models_dir: Path, resolution: int) -> None:
    ort_backend, torch_backend = _pair(models_dir, resolution)
    phantoms = [phantom(i, size=600) for i in range(3)] + [phantom(9, size=600, positive=False)]
    inputs = [preprocess(p.pixels, resolution) for p in phantoms]
    batch = np.stack([m.image for m in inputs])
    a, b = ort_backend.infer(batch), torch_backend.infer(batch)
    prob = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    assert np.abs(prob(a.logits) - prob(b.logits)).max() <= 1e-4
    # The embedding (the OOD score's input) agrees too: the same pooled features.
    assert np.abs(a.embeddings - b.embeddings).max() <= 1e-4 * max(1.0, np.abs(a.embeddings).max())
    for cam_a, cam_b, mi in zip(a.cams, b.cams, inputs, strict=True):
        sa, sb = explain(cam_a, mi.geometry), explain(cam_b, mi.geometry)
        assert np.abs(sa.saliency - sb.saliency).max() <= 1e-3
        assert mask_iou(sa.mask, sb.mask) >= 0.95


def test_torch_offers_other_methods_onnx_only_gradcam(models_dir: Path) -> None:
    ort_backend, torch_backend = _pair(models_dir, 128)
    image = preprocess(phantom(1, size=300).pixels, 128).image[None]
    for method in METHODS:
        out = torch_backend.infer(image, method)
        assert out.cams.shape == (1, 4, 4) and np.isfinite(out.cams).all(), method
    assert not np.allclose(
        torch_backend.infer(image, "eigencam").cams, torch_backend.infer(image, "gradcam").cams
    )
    assert ort_backend.methods == ("gradcam",) and "gradcam++" in torch_backend.methods
    with pytest.raises(ValueError, match="float32"):
        ort_backend.infer(image.astype(np.float64))


def test_provider_choice_for_cpu_and_cuda() -> None:
    cpu_only = ["AzureExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers(Device.CPU, cpu_only) == ["CPUExecutionProvider"]
    with pytest.raises(RuntimeError, match="SHARPCXR_DEVICE=cpu"):
        choose_providers(Device.CUDA, cpu_only)
    gpu = ["CUDAExecutionProvider", "CPUExecutionProvider", "TensorrtExecutionProvider"]
    assert choose_providers(Device.CUDA, gpu) == [
        "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"
    ]  # fmt: skip


@pytest.mark.parametrize("resolution", [128, 256])
def test_pytorch_grad_cam_reference_equals_onnx_in_graph_cam(
    models_dir: Path, resolution: int
) -> None:
    """``gradcam`` runs the closed form by default; pytorch-grad-cam (forward + backward)
    stays the reference it is held to."""
    ort_backend = OnnxRuntimeBackend(model_file(models_dir, resolution, "onnx"), resolution)
    reference = TorchBackend(
        model_file(models_dir, resolution, "pt"), resolution, closed_form_gradcam=False
    )
    assert reference.name == "torch:cpu:grad-cam"
    phantoms = [phantom(i, size=600) for i in range(3)] + [phantom(9, size=600, positive=False)]
    inputs = [preprocess(p.pixels, resolution) for p in phantoms]
    batch = np.stack([m.image for m in inputs])
    a, b = ort_backend.infer(batch), reference.infer(batch)
    assert np.abs(a.logits - b.logits).max() <= 1e-4
    assert np.abs(a.embeddings - b.embeddings).max() <= 1e-4 * max(1.0, np.abs(a.embeddings).max())
    for cam_a, cam_b, mi in zip(a.cams, b.cams, inputs, strict=True):
        sa, sb = explain(cam_a, mi.geometry), explain(cam_b, mi.geometry)
        assert np.abs(sa.saliency - sb.saliency).max() <= 1e-3
        assert mask_iou(sa.mask, sb.mask) >= 0.95
