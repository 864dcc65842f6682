"""GPU paths: TensorRT plans (FP16, INT8) against torch, and the models on CUDA.

Run with ``pytest -m gpu``; every test skips with its reason where CUDA or TensorRT is
absent (the CPU development machine).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from cxrmodel.networks import CXRClassifier, build_model
from cxrmodel.tensorrt import tensorrt_status
from cxrmodel.vocab import Downsample
from tests.cxrmodel.test_networks import randomise
from training.export import build_tensorrt_plan, export_onnx

pytestmark = pytest.mark.gpu

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
needs_tensorrt = pytest.mark.skipif(
    not tensorrt_status()[0],
    reason="TensorRT 10 Python package and a CUDA device needed (pip install tensorrt)",
)


def _run_plan(plan: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    """Run a serialized engine on ``x`` with the TensorRT 10 tensor-address API."""
    import tensorrt as trt

    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(plan.read_bytes())
    context = engine.create_execution_context()
    context.set_input_shape("image", tuple(x.shape))
    buffers: dict[str, torch.Tensor] = {"image": torch.from_numpy(x).cuda()}
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        if engine.get_tensor_mode(name) == trt.TensorIOMode.OUTPUT:
            shape = tuple(context.get_tensor_shape(name))
            buffers[name] = torch.empty(shape, dtype=torch.float32, device="cuda")
        context.set_tensor_address(name, buffers[name].data_ptr())
    stream = torch.cuda.Stream()
    assert context.execute_async_v3(stream.cuda_stream)
    stream.synchronize()
    return {name: t.cpu().numpy() for name, t in buffers.items() if name != "image"}


def _export(model: CXRClassifier, resolution: int, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return export_onnx(model, resolution, path)


@needs_tensorrt
@pytest.mark.parametrize("downsample", list(Downsample))
def test_tensorrt_fp16_plan_matches_torch(tmp_path: Path, downsample: str) -> None:
    model = randomise(build_model("compact", downsample), seed=40)
    onnx_path = _export(model, 128, tmp_path / "m.onnx")
    plan = build_tensorrt_plan(onnx_path, tmp_path / "m.plan", resolution=128, max_batch=4)
    x = np.random.default_rng(0).standard_normal((3, 1, 128, 128)).astype(np.float32)
    out = _run_plan(plan, x)
    with torch.no_grad():
        logit, cam, _ = model.forward_explained(torch.from_numpy(x))
    assert out["logit"].shape == (3, 1) and out["cam"].shape == (3, 4, 4)
    scale = max(1.0, float(logit.abs().max()))
    assert np.abs(out["logit"] - logit.numpy()).max() <= 2e-2 * scale
    cam_scale = float(cam.abs().max()) + 1e-6
    assert np.abs(out["cam"] - cam.numpy()).max() <= 2e-2 * cam_scale


@needs_tensorrt
def test_tensorrt_int8_plan_builds_and_runs(tmp_path: Path) -> None:
    model = randomise(build_model("compact", "blurpool"), seed=41)
    onnx_path = _export(model, 64, tmp_path / "m.onnx")
    calibration = np.random.default_rng(1).standard_normal((16, 1, 64, 64)).astype(np.float32)
    plan = build_tensorrt_plan(
        onnx_path, tmp_path / "int8.plan", resolution=64, int8_calibration=calibration, max_batch=8
    )
    out = _run_plan(plan, calibration[:2])
    assert out["logit"].shape == (2, 1) and np.isfinite(out["logit"]).all()
    with pytest.raises(ValueError, match="int8_calibration"):
        build_tensorrt_plan(
            onnx_path, tmp_path / "bad.plan", resolution=64, int8_calibration=calibration[:, 0]
        )


@needs_cuda
@pytest.mark.parametrize("downsample", list(Downsample))
def test_models_on_cuda_match_cpu(downsample: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The lazily built FLC/ASAP operators follow the input's device."""
    # TF32 (cuDNN's default for convolutions) would dominate the difference.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    model = randomise(build_model("compact", downsample), seed=42)
    x = torch.randn(2, 1, 128, 128)
    with torch.no_grad():
        cpu: Any = model.forward_explained(x)
        gpu: Any = model.cuda().forward_explained(x.cuda())
    for a, b in zip(cpu, gpu, strict=True):
        assert torch.allclose(a, b.cpu(), atol=1e-4, rtol=1e-3)


@needs_cuda
def test_densenet121_checkpointing_fits_1024_on_cuda() -> None:
    model = build_model("densenet121", "flc").cuda().train()
    model.set_gradient_checkpointing(True)
    x = torch.randn(2, 1, 1024, 1024, device="cuda")
    torch.cuda.reset_peak_memory_stats()
    model(x).sum().backward()
    assert torch.cuda.max_memory_allocated() < 20 * 2**30


@needs_cuda
def test_tiny_study_on_cuda(tmp_path: Path) -> None:
    """The study end to end on the GPU (mixed precision, channels-last): same report."""
    import json

    from tests.training.test_study import _tiny
    from training.study.runner import run_study

    out = run_study(_tiny(tmp_path, device="cuda", shift_ablation=False))
    results = json.loads((out / "results.json").read_text())
    assert results["environment"]["device"] != "cpu"
    assert results["runs"]["standard"]["96"]["test"]["auroc"] is not None
