"""The torch backend's closed-form Grad-CAM path (issue #15): on CPU against ONNX Runtime's
in-graph CAM and pytorch-grad-cam; on CUDA (``pytest -m gpu``) bf16 autocast, channels-last
and CUDA graphs against float32 eager."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from cxrmodel.networks import build_model
from cxrmodel.vocab import Device
from imaging.localisation import mask_iou
from imaging.preprocess import preprocess
from imaging.saliency import explain
from service.backends.base import InferenceOutput
from service.backends.onnxruntime import OnnxRuntimeBackend
from service.backends.torch import METHODS, TorchBackend
from service.backends.torch_fast import (
    ClosedFormRunner,
    bucket_for,
    bucket_sizes,
    cuda_status,
    head_view,
    resolve_precision,
)
from service.registry import build_backend
from service.settings import Settings
from tests.service.conftest import model_file, phantom

needs_cuda = pytest.mark.skipif(not cuda_status()[0], reason=f"needs CUDA: {cuda_status()[1]}")


def _batch(resolution: int, n: int = 4) -> tuple[np.ndarray, list[Any]]:
    phantoms = [phantom(i, size=600, positive=i % 4 != 3) for i in range(n)]
    inputs = [preprocess(p.pixels, resolution) for p in phantoms]
    return np.stack([m.image for m in inputs]), inputs


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    """Largest difference relative to the reference's largest magnitude."""
    return float(np.abs(a - b).max() / max(1e-6, float(np.abs(b).max())))


def _assert_bf16_close(out: InferenceOutput, ref: InferenceOutput, inputs: list[Any]) -> None:
    """Reduced-precision features, float32 head: a few tenths of a percent per element."""
    logit_scale = max(1.0, float(np.abs(ref.logits).max()))
    assert np.abs(out.logits - ref.logits).max() <= 0.05 * logit_scale
    assert _rel(out.cams, ref.cams) <= 0.05 and _rel(out.embeddings, ref.embeddings) <= 0.05
    assert out.logits.dtype == out.cams.dtype == out.embeddings.dtype == np.float32
    for cam, cam_ref, mi in zip(out.cams, ref.cams, inputs, strict=True):
        s, s_ref = explain(cam, mi.geometry), explain(cam_ref, mi.geometry)
        assert mask_iou(s.mask, s_ref.mask) >= 0.9


# --- CPU: the closed form is the ONNX graph's arithmetic ------------------------------------


@pytest.mark.parametrize("resolution", [128, 256])
def test_closed_form_equals_onnx_outputs(models_dir: Path, resolution: int) -> None:
    onnx = OnnxRuntimeBackend(model_file(models_dir, resolution, "onnx"), resolution)
    fast = TorchBackend(model_file(models_dir, resolution, "pt"), resolution)
    assert fast.name == "torch:cpu"
    batch, _ = _batch(resolution)
    a, b = onnx.infer(batch), fast.infer(batch)
    assert np.abs(a.logits - b.logits).max() <= 1e-4
    assert a.cams.max() > 0 and _rel(b.cams, a.cams) <= 1e-4  # the raw CAM, not normalised
    assert _rel(b.embeddings, a.embeddings) <= 1e-4


@pytest.mark.parametrize("resolution", [128, 256])
def test_closed_form_equals_pytorch_grad_cam(models_dir: Path, resolution: int) -> None:
    pt = model_file(models_dir, resolution, "pt")
    fast = TorchBackend(pt, resolution)
    reference = TorchBackend(pt, resolution, closed_form_gradcam=False)
    assert reference.name == "torch:cpu:grad-cam"
    batch, inputs = _batch(resolution)
    a, b = reference.infer(batch), fast.infer(batch)
    assert np.abs(a.logits - b.logits).max() <= 1e-5
    assert _rel(b.embeddings, a.embeddings) <= 1e-5
    for cam_a, cam_b, mi in zip(a.cams, b.cams, inputs, strict=True):
        # pytorch-grad-cam min-max normalises at the grid; explain() normalises both alike
        sa, sb = explain(cam_a, mi.geometry), explain(cam_b, mi.geometry)
        assert np.abs(sa.saliency - sb.saliency).max() <= 1e-4
        assert mask_iou(sa.mask, sb.mask) >= 0.99


def test_gradcam_needs_no_backward_other_methods_still_do(
    models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pt = model_file(models_dir, 128, "pt")
    fast, reference = TorchBackend(pt, 128), TorchBackend(pt, 128, closed_form_gradcam=False)
    image = preprocess(phantom(1, size=300).pixels, 128).image[None]
    expected = {m: reference.infer(image, m).cams for m in ("hirescam", "gradcam++")}

    def no_backward(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("backward pass")

    monkeypatch.setattr(torch.autograd, "backward", no_backward)
    out = fast.infer(image)
    assert out.cams.shape == (1, 4, 4) and np.isfinite(out.cams).all()
    assert all(p.grad is None for p in fast.model.parameters())
    with pytest.raises(AssertionError, match="backward pass"):
        fast.infer(image, "hirescam")  # pytorch-grad-cam: forward + backward
    monkeypatch.undo()
    for method, cams in expected.items():  # the other methods are unchanged
        np.testing.assert_array_equal(fast.infer(image, method).cams, cams)
    assert fast.methods == tuple(METHODS)


def test_every_batch_size_gives_each_image_its_own_result(models_dir: Path) -> None:
    backend = TorchBackend(model_file(models_dir, 128, "pt"), 128)
    batch, _ = _batch(128, 8)
    full = backend.infer(batch)
    backend.warm((1, 8), full.embeddings.shape[1])
    for n in range(1, 9):
        part = backend.infer(batch[:n])
        assert part.cams.shape == (n, 4, 4)
        np.testing.assert_allclose(part.logits, full.logits[:n], rtol=0, atol=1e-5)
        np.testing.assert_allclose(part.cams, full.cams[:n], rtol=1e-4, atol=1e-6)


def test_registry_builds_the_closed_form_torch_backend(models_dir: Path) -> None:
    settings = Settings(models_dir=models_dir, backend="torch", intra_op_threads=1)
    backend = build_backend(model_file(models_dir, 128, "pt"), 128, settings)
    try:
        assert isinstance(backend, TorchBackend) and backend.name == "torch:cpu"
        backend.warm((1, 2), 49)
    finally:
        backend.close()


# --- CPU: the pieces the CUDA path is made of ---------------------------------------------


def test_head_view_is_the_models_own_head() -> None:
    torch.manual_seed(0)
    model = build_model("compact").eval()
    head = head_view(model)
    x = torch.randn(3, 1, 96, 96)
    with torch.inference_mode():
        expected = model.forward_explained(x)
        got = head.forward_explained(model.features(x))
    for e, g in zip(expected, got, strict=True):
        torch.testing.assert_close(g, e, rtol=0, atol=0)
    assert len(model.features) > 1 and len(head.features) == 0  # the model is untouched
    assert head.classifier is model.classifier  # shared parameters, not a copy


def test_cpu_autocast_bf16_path_within_tolerance(models_dir: Path) -> None:
    """The reduced-precision code path (autocast over the features, float32 head), run with
    CPU autocast: what CUDA runs, less the graphs."""
    pt = model_file(models_dir, 128, "pt")
    ref = TorchBackend(pt, 128)
    low = TorchBackend(pt, 128, precision="bf16")
    assert low.name == "torch:cpu:bf16"
    batch, inputs = _batch(128)
    _assert_bf16_close(low.infer(batch), ref.infer(batch), inputs)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_frequency_pooling_buffers_survive_inference_mode(tmp_path: Path, precision: str) -> None:
    """FLC/ASAP pooling builds its operators on the first forward pass: the closed form's
    inference-mode (and autocast) pass must not leave inference tensors, or bf16 ones, for
    pytorch-grad-cam's float32 forward + backward."""
    from cxrmodel.antialias import FrequencyPool2d
    from cxrmodel.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = build_model("compact", "flc").eval()
    pt = tmp_path / "flc.pt"
    save_checkpoint(pt, {"model_state": model.state_dict(), "model_config": model.config()})
    backend = TorchBackend(pt, 64, precision=precision)  # type: ignore[arg-type]
    x = np.random.default_rng(0).standard_normal((2, 1, 64, 64)).astype(np.float32)
    first = backend.infer(x)  # the closed form first
    buffers = [b for m in backend.model.modules() if isinstance(m, FrequencyPool2d)
               for b in m.buffers()]  # fmt: skip
    assert buffers and all(not b.is_inference() and b.dtype == torch.float32 for b in buffers)
    reference = backend.infer(x, "hirescam")  # autograd through the same buffers
    assert np.isfinite(reference.cams).all()
    with torch.no_grad():
        expected = model(torch.from_numpy(x))[:, 0].numpy()
    np.testing.assert_allclose(reference.logits, expected, atol=1e-5)
    np.testing.assert_allclose(first.logits, expected, atol=1e-5 if precision == "fp32" else 0.05)


def test_cpu_channels_last_matches_contiguous(models_dir: Path) -> None:
    pt = model_file(models_dir, 256, "pt")
    a = TorchBackend(pt, 256).infer(_batch(256, 2)[0])
    b = TorchBackend(pt, 256, channels_last=True).infer(_batch(256, 2)[0])
    np.testing.assert_allclose(b.logits, a.logits, atol=1e-5)
    assert _rel(b.cams, a.cams) <= 1e-5


def test_buckets() -> None:
    assert bucket_sizes(8) == (1, 2, 3, 4, 5, 6, 7, 8)
    assert bucket_sizes(1) == (1,)
    assert bucket_sizes(40) == (1, 2, 3, 4, 5, 6, 7, 8, 16, 32, 40)
    assert bucket_sizes(64)[-3:] == (16, 32, 64)
    with pytest.raises(ValueError):
        bucket_sizes(0)
    assert bucket_for(3, (1, 2, 4, 8)) == 4 and bucket_for(8, (1, 2, 4, 8)) == 8
    assert bucket_for(5, ()) == 5 and bucket_for(9, (1, 8)) == 16 and bucket_for(33, ()) == 64


def test_precision_names() -> None:
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) is None and resolve_precision("fp32", cpu) is None
    assert resolve_precision("bf16", cpu) is torch.bfloat16
    assert resolve_precision("fp16", cpu) is torch.float16
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("int8", cpu)  # type: ignore[arg-type]
    model = build_model("compact").eval()
    with pytest.raises(ValueError, match="cuda_graphs needs device cuda"):
        ClosedFormRunner(model, 64, cpu, cuda_graphs=True)


def test_cuda_requested_without_cuda_is_a_clear_refusal(
    models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    ok, why = cuda_status()
    assert not ok and "sees no CUDA device" in why
    with pytest.raises(RuntimeError, match=r"SHARPCXR_DEVICE=cuda but .*SHARPCXR_DEVICE=cpu"):
        TorchBackend(model_file(models_dir, 128, "pt"), 128, device=Device.CUDA)
    monkeypatch.setattr(torch.version, "cuda", None)
    assert "CPU-only build" in cuda_status()[1]
    with pytest.raises(RuntimeError, match="CPU-only build"):
        ClosedFormRunner(build_model("compact"), 64, torch.device("cuda"))


def test_gpu_benchmark_smoke_on_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks import bench_torch_gpu

    monkeypatch.setattr(bench_torch_gpu, "cuda_status", lambda: (False, "test"))
    out = tmp_path / "torch_gpu.json"
    assert bench_torch_gpu.main(["--smoke", "--out", str(out), "--threads", "1"]) == 0
    result = json.loads(out.read_text())
    assert result["smoke"] is True and result["command"].endswith("--threads 1")
    assert {r["variant"] for r in result["model"]} == {"eager-fp32", "cpu-channels-last"}
    assert {(r["resolution"], r["batch"]) for r in result["model"]} == {(64, 1), (64, 2)}
    assert all(r["model_ms"]["median_ms"] > 0 for r in result["model"])
    assert result["hardware"]["torch"] == torch.__version__
    assert len(result["ratios_over_eager_fp32"]) == 2


# --- CUDA (pytest -m gpu) -------------------------------------------------------------------


@pytest.fixture
def cuda_pair(models_dir: Path) -> Any:
    """The default CUDA backend (autocast, channels-last, graphs) and float32 eager."""
    pt = model_file(models_dir, 256, "pt")
    fast = TorchBackend(pt, 256, device=Device.CUDA)
    fp32 = TorchBackend(pt, 256, device=Device.CUDA, precision="fp32", cuda_graphs=False)
    yield fast, fp32
    fast.close()
    fp32.close()


@pytest.mark.gpu
@needs_cuda
def test_cuda_fast_path_agrees_with_fp32_and_onnx(models_dir: Path, cuda_pair: Any) -> None:
    fast, fp32 = cuda_pair
    low = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    assert fast.name == f"torch:cuda:{low}:cudagraph"
    assert fp32.name == "torch:cuda:fp32:eager"
    batch, inputs = _batch(256)
    ref = fp32.infer(batch)
    _assert_bf16_close(fast.infer(batch), ref, inputs)
    # float32 on the GPU (TF32 convolutions) against the CPU ONNX graph
    onnx = OnnxRuntimeBackend(model_file(models_dir, 256, "onnx"), 256).infer(batch)
    assert np.abs(ref.logits - onnx.logits).max() <= 5e-3 * max(1.0, np.abs(onnx.logits).max())
    assert _rel(ref.cams, onnx.cams) <= 5e-3 and _rel(ref.embeddings, onnx.embeddings) <= 5e-3


@pytest.mark.gpu
@needs_cuda
def test_cuda_graph_replay_equals_eager_at_every_batch_size(models_dir: Path) -> None:
    pt = model_file(models_dir, 128, "pt")
    graphs = TorchBackend(pt, 128, device=Device.CUDA)
    eager = TorchBackend(pt, 128, device=Device.CUDA, cuda_graphs=False)
    fp32 = TorchBackend(pt, 128, device=Device.CUDA, precision="fp32", cuda_graphs=False)
    try:
        batch, inputs = _batch(128, 8)
        graphs.warm((1, 8), 49)
        runner = graphs._closed_form
        assert runner is not None and runner.captured == (1, 2, 3, 4, 5, 6, 7, 8)
        for n in range(1, 9):
            a, b = graphs.infer(batch[:n]), eager.infer(batch[:n])
            assert a.cams.shape == (n, 4, 4) and a.embeddings.shape == (n, 49)
            # The same kernels (same shape, cuDNN's cached choice): equal up to rounding.
            np.testing.assert_allclose(a.logits, b.logits, rtol=1e-3, atol=1e-3)
            assert _rel(a.cams, b.cams) <= 1e-2 and _rel(a.embeddings, b.embeddings) <= 1e-2
            _assert_bf16_close(a, fp32.infer(batch[:n]), inputs[:n])
        # Replaying again after other sizes gives the same answer (no state leaks between
        # graphs sharing a pool; padding rows are dropped).
        np.testing.assert_array_equal(graphs.infer(batch[:3]).cams, graphs.infer(batch[:3]).cams)
        # A batch beyond the warmed buckets runs eagerly: no capture while serving.
        big = np.concatenate([batch, batch[:3]])
        out = graphs.infer(big)
        assert 16 not in runner.captured and out.logits.shape == (11,)
        np.testing.assert_allclose(out.logits[8:], out.logits[:3], rtol=1e-3, atol=1e-3)
    finally:
        for backend in (graphs, eager, fp32):
            backend.close()


@pytest.mark.gpu
@needs_cuda
def test_cuda_other_methods_and_reference_gradcam(models_dir: Path, cuda_pair: Any) -> None:
    fast, fp32 = cuda_pair
    image, inputs = _batch(256, 1)
    reference = TorchBackend(
        model_file(models_dir, 256, "pt"), 256, device=Device.CUDA, closed_form_gradcam=False
    )
    try:
        assert reference.name == "torch:cuda:grad-cam"
        a, b = reference.infer(image), fp32.infer(image)
        sa, sb = explain(a.cams[0], inputs[0].geometry), explain(b.cams[0], inputs[0].geometry)
        assert mask_iou(sa.mask, sb.mask) >= 0.95
        out = fast.infer(image, "hirescam")  # pytorch-grad-cam on the channels-last model
        assert out.cams.shape == (1, 8, 8) and np.isfinite(out.cams).all()
        assert fast.infer(image).logits.shape == (1,)  # the graphs still replay afterwards
    finally:
        reference.close()


@pytest.mark.gpu
@needs_cuda
def test_cuda_fp16_and_no_graph_variants(models_dir: Path) -> None:
    pt = model_file(models_dir, 128, "pt")
    batch, inputs = _batch(128)
    ref = TorchBackend(pt, 128, device=Device.CUDA, precision="fp32", cuda_graphs=False)
    half = TorchBackend(pt, 128, device=Device.CUDA, precision="fp16")
    try:
        assert half.name == "torch:cuda:fp16:cudagraph"
        _assert_bf16_close(half.infer(batch), ref.infer(batch), inputs)
    finally:
        ref.close()
        half.close()
