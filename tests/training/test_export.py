"""ONNX export: ONNX Runtime parity with torch and with pytorch-grad-cam; TensorRT guard."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import scale_cam_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from cxrmodel.manifest import sha256_file
from cxrmodel.networks import CXRClassifier, build_model
from cxrmodel.tensorrt import tensorrt_status
from imaging.preprocess import NORMALISATION
from imaging.saliency import normalise_cam
from tests.cxrmodel.test_networks import gradcam_at_grid, randomise
from training.export import build_tensorrt_plan, export_onnx, onnx_metadata

# (downsample, resolution) for the compact model. ASAP differs from FLC only in the
# operator's numbers (checked against torch.fft in tests/cxrmodel/test_networks.py); its ONNX parity
# runs in the slow DenseNet-121 test to keep the default suite short.
CASES = [
    ("standard", 64),
    ("standard", 128),
    ("blurpool", 64),
    ("blurpool", 128),
    ("flc", 64),
    ("flc", 128),
]


@pytest.fixture(scope="module")
def exported(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[tuple[str, int], tuple[CXRClassifier, Path]]:
    out = tmp_path_factory.mktemp("onnx")
    models: dict[tuple[str, int], tuple[CXRClassifier, Path]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter internals (FutureWarning/DeprecationWarning)
        for i, (downsample, resolution) in enumerate(CASES):
            model = randomise(build_model("compact", downsample), seed=10 + i)
            path = export_onnx(model, resolution, out / f"compact-{downsample}-{resolution}.onnx")
            models[(downsample, resolution)] = (model, path)
    return models


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _check_parity(model: CXRClassifier, path: Path, resolution: int, batch: int) -> None:
    session = _session(path)
    assert [i.name for i in session.get_inputs()] == ["image"]
    assert [o.name for o in session.get_outputs()] == ["logit", "cam", "embedding"]
    x = torch.randn(batch, 1, resolution, resolution, generator=torch.Generator().manual_seed(7))
    logit, cam, embedding = session.run(None, {"image": x.numpy()})
    g = resolution // 32
    assert logit.shape == (batch, 1) and logit.dtype == np.float32
    assert cam.shape == (batch, g, g) and cam.dtype == np.float32
    assert embedding.shape == (batch, model.embedding_size) and embedding.dtype == np.float32
    with torch.no_grad():
        torch_logit, torch_cam, _ = model.forward_explained(x)
        # The pooled features, computed independently of forward_explained.
        pooled = model.features(x).mean(dim=(2, 3)).numpy()
    assert np.abs(logit - torch_logit.numpy()).max() <= 1e-4
    assert np.abs(embedding - pooled).max() <= 1e-4 * max(1.0, float(np.abs(pooled).max()))
    assert np.abs(pooled).max() > 0  # non-trivial features
    assert np.abs(cam - torch_cam.numpy()).max() <= 1e-4 * max(1.0, float(np.abs(cam).max()))
    assert cam.max() > 0  # a non-trivial CAM, or the comparison below proves nothing

    # pytorch-grad-cam on the torch model, compared at the CAM grid (its per-layer
    # normalised CAM before any resize) ...
    reference = gradcam_at_grid(model, x)
    assert np.abs(normalise_cam(cam) - reference).max() <= 1e-3
    # ... and at the input size: its own bilinear resize (cv2) of both sides.
    with GradCAM(model, target_layers=[model.target_layer]) as gradcam:
        full = gradcam(input_tensor=x, targets=[ClassifierOutputTarget(0)] * batch)
    ours_full = scale_cam_image(scale_cam_image(cam, (resolution, resolution)))
    assert np.abs(ours_full - full).max() <= 1e-3


@pytest.mark.parametrize(("downsample", "resolution"), CASES)
def test_onnx_parity_with_torch_and_pytorch_grad_cam(
    exported: dict[tuple[str, int], tuple[CXRClassifier, Path]], downsample: str, resolution: int
) -> None:
    model, path = exported[(downsample, resolution)]
    _check_parity(model, path, resolution, batch=3)


def test_dynamic_batch_and_metadata(
    exported: dict[tuple[str, int], tuple[CXRClassifier, Path]],
) -> None:
    model, path = exported[("flc", 128)]
    _check_parity(model, path, 128, batch=1)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert not dims[0].HasField("dim_value") and dims[0].dim_param  # symbolic batch
    assert [d.dim_value for d in dims[1:]] == [1, 128, 128]
    # Self-contained: no initializer refers to external data, no side files.
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    assert sorted(p.name for p in path.parent.iterdir() if p.stem.startswith(path.stem)) == [
        path.name
    ]
    meta = onnx_metadata(path)
    assert meta["resolution"] == "128" and meta["architecture"] == "compact"
    assert meta["downsample"] == "flc" and meta["cam_class_index"] == "0"
    assert json.loads(meta["normalisation"]) == json.loads(json.dumps(NORMALISATION))


def test_multilabel_export_leaves_the_model_alone(tmp_path: Path) -> None:
    """Multi-label: all logits and the CAM of class 0; the caller's model is not touched."""
    model = randomise(build_model("compact", "blurpool", num_classes=3), seed=21).train()
    model.set_gradient_checkpointing(True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = export_onnx(model, 64, tmp_path / "multi.onnx")
    assert model.training
    with pytest.raises(ValueError, match="multiple of 32"):
        export_onnx(model, 100, tmp_path / "bad.onnx")
    model.eval()
    x = torch.randn(2, 1, 64, 64)
    logit, cam, _ = _session(path).run(None, {"image": x.numpy()})
    with torch.no_grad():
        ref_logit, ref_cam, _ = model.forward_explained(x, 0)
    assert logit.shape == (2, 3) and np.abs(logit - ref_logit.numpy()).max() <= 1e-4
    assert np.abs(cam - ref_cam.numpy()).max() <= 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("downsample", ["standard", "asap"])
def test_densenet121_onnx_parity(tmp_path: Path, downsample: str) -> None:
    model = randomise(build_model("densenet121", downsample), seed=30)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = export_onnx(model, 256, tmp_path / "densenet121.onnx")
    assert 20e6 < path.stat().st_size < 40e6  # ~28 MB of fp32 weights, inline
    _check_parity(model, path, 256, batch=2)


def test_sha256_file(tmp_path: Path) -> None:
    data = np.random.default_rng(0).bytes(3 << 20)  # spans several read chunks
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


@pytest.mark.skipif(tensorrt_status()[0], reason="TensorRT is installed: see test_gpu.py")
def test_tensorrt_unavailable_is_a_clear_error(tmp_path: Path) -> None:
    available, reason = tensorrt_status()
    assert not available and reason
    with pytest.raises(RuntimeError, match="pip install 'tensorrt>=10,<11'"):
        build_tensorrt_plan(tmp_path / "m.onnx", tmp_path / "m.plan", resolution=64)
