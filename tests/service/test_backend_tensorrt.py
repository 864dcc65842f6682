"""The TensorRT backend: capability checks and the engine contract everywhere, and a real
plan against ONNX Runtime where a GPU and TensorRT are present (``pytest -m gpu``)."""

from __future__ import annotations

import sys
import types
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from cxrmodel.manifest import ModelFileError
from cxrmodel.tensorrt import tensorrt_status
from service.backends.tensorrt import EngineIO, TensorRTBackend, inspect_engine

needs_tensorrt = pytest.mark.skipif(
    not tensorrt_status()[0],
    reason="TensorRT 10 Python package and a CUDA device needed (pip install tensorrt)",
)


# --- without TensorRT ---------------------------------------------------------------------


@pytest.mark.skipif(tensorrt_status()[0], reason="TensorRT is installed: see the gpu tests")
def test_unavailable_here_with_reason_and_install_hint(tmp_path: Path) -> None:
    ok, reason = tensorrt_status()
    assert ok is False and reason
    with pytest.raises(RuntimeError, match="pip install 'tensorrt>=10,<11'") as info:
        TensorRTBackend(tmp_path / "missing.plan", 128)
    assert reason in str(info.value)
    assert "SHARPCXR_BACKEND=onnxruntime" in str(info.value)


def test_missing_package_is_reported(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` fail
    ok, reason = tensorrt_status()
    assert not ok and "tensorrt Python package" in reason
    with pytest.raises(RuntimeError, match="pip install 'tensorrt>=10,<11'"):
        TensorRTBackend(tmp_path / "m.plan", 128)


def _fake_trt(version: str) -> types.ModuleType:
    module = types.ModuleType("tensorrt")
    module.__version__ = version  # type: ignore[attr-defined]
    return module


def test_old_tensorrt_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_trt("8.6.1"))
    ok, reason = tensorrt_status()
    assert not ok and "8.6.1" in reason and "10" in reason


def test_tensorrt_11_is_refused_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    """TensorRT 11 removed the builder flags the plan builder uses: refused up front."""
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_trt("11.0.0"))
    ok, reason = tensorrt_status()
    assert not ok and "11.0.0" in reason and "BuilderFlag.FP16" in reason


def test_no_cuda_is_reported(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_trt("10.9.0"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    ok, reason = tensorrt_status()
    assert not ok and "CUDA" in reason
    with pytest.raises(RuntimeError, match="CUDA"):
        TensorRTBackend(tmp_path / "m.plan", 128)


# --- the engine contract, against a stand-in engine -----------------------------------------

_TRT = types.SimpleNamespace(
    TensorIOMode=types.SimpleNamespace(INPUT="in", OUTPUT="out"),
    DataType=types.SimpleNamespace(FLOAT="float32", HALF="float16"),
    TensorLocation=types.SimpleNamespace(DEVICE="device", HOST="host"),
)


class _FakeEngine:
    """Just the ``ICudaEngine`` queries :func:`inspect_engine` makes."""

    def __init__(
        self,
        tensors: dict[str, tuple[str, tuple[int, ...]]],
        profile: tuple[tuple[int, ...], tuple[int, ...]] = ((1, 1, 128, 128), (8, 1, 128, 128)),
        dtype: dict[str, str] | None = None,
    ) -> None:
        self.tensors = tensors
        self.profile = (profile[0], profile[1], profile[1])  # (min, opt, max)
        self.dtype = dtype or {}
        self.num_io_tensors = len(tensors)
        self.num_optimization_profiles = 1

    def get_tensor_name(self, i: int) -> str:
        return list(self.tensors)[i]

    def get_tensor_mode(self, name: str) -> str:
        return self.tensors[name][0]

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self.tensors[name][1]

    def get_tensor_dtype(self, name: str) -> str:
        return self.dtype.get(name, "float32")

    def get_tensor_location(self, name: str) -> str:
        return "device"

    def get_tensor_profile_shape(self, name: str, index: int) -> tuple[tuple[int, ...], ...]:
        assert name == "image" and index == 0
        return self.profile


def _engine(**changes: Any) -> _FakeEngine:
    tensors = {
        "image": ("in", (-1, 1, 128, 128)),
        "logit": ("out", (-1, 1)),
        "cam": ("out", (-1, 4, 4)),
        "embedding": ("out", (-1, 49)),
    }
    tensors.update(changes.pop("tensors", {}))
    return _FakeEngine(tensors, **changes)


def test_contract_accepts_the_exported_layout() -> None:
    io = inspect_engine(_engine(), _TRT, 128)
    assert io == EngineIO(min_batch=1, max_batch=8, num_classes=1, grid=4, embedding_size=49)
    static = _engine(
        tensors={
            "image": ("in", (2, 1, 128, 128)),
            "logit": ("out", (2, 14)),
            "cam": ("out", (2, 4, 4)),
            "embedding": ("out", (2, 1024)),
        }
    )
    assert inspect_engine(static, _TRT, 128) == EngineIO(2, 2, 14, 4, 1024)


@pytest.mark.parametrize(
    ("engine", "resolution", "message"),
    [
        (_engine(tensors={"input": ("in", (-1, 1, 128, 128))}), 128, "expected input"),
        (_FakeEngine({"image": ("in", (-1, 1, 128, 128)), "logit": ("out", (-1, 1))}), 128, "cam"),
        (_engine(tensors={"embedding": ("out", (-1,))}), 128, "'embedding' has shape"),
        (_engine(), 256, "resolution 256"),
        (_engine(tensors={"cam": ("out", (-1, 8, 8))}), 128, "expected \\[N, 4, 4\\]"),
        (_engine(tensors={"logit": ("out", (-1,))}), 128, "expected \\[N, C\\]"),
        (_engine(tensors={"image": ("in", (-1, 3, 128, 128))}), 128, "\\[N, 1, 128, 128\\]"),
        (_engine(dtype={"image": "float16"}), 128, "expected float32"),
        (_engine(profile=((0, 1, 128, 128), (4, 1, 128, 128))), 128, "batch profile"),
        (_engine(profile=((1, 1, 128, 128), (4, 1, 64, 64))), 128, "profile"),
    ],
)
def test_contract_violations_are_model_file_errors(
    engine: _FakeEngine, resolution: int, message: str
) -> None:
    with pytest.raises(ModelFileError, match=message):
        inspect_engine(engine, _TRT, resolution)


# --- a real plan (GPU + TensorRT) -----------------------------------------------------------


@pytest.fixture(scope="module")
def plan_128(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """A compact model exported to ONNX and built into an FP32 plan at R=128, batch 1..4."""
    from cxrmodel.networks import build_model
    from tests.cxrmodel.test_networks import randomise
    from training.export import build_tensorrt_plan, export_onnx

    root = tmp_path_factory.mktemp("trt")
    model = randomise(build_model(architecture="compact"), seed=11)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onnx_path = export_onnx(model, 128, root / "m.onnx")
    plan = build_tensorrt_plan(onnx_path, root / "m.plan", resolution=128, fp16=False, max_batch=4)
    yield onnx_path, plan


@pytest.mark.gpu
@needs_tensorrt
def test_plan_matches_onnxruntime_with_chunking(plan_128: tuple[Path, Path]) -> None:
    import onnxruntime as ort

    onnx_path, plan = plan_128
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    backend = TensorRTBackend(plan, 128, precision="fp32")
    try:
        assert backend.name == "tensorrt:fp32" and backend.max_batch == 4
        rng = np.random.default_rng(3)
        for n in (1, 3, backend.max_batch + 1, 2 * backend.max_batch + 3):
            x = rng.standard_normal((n, 1, 128, 128)).astype(np.float32)
            out = backend.infer(x)
            logit, cam, embedding = session.run(None, {"image": x})
            assert out.logits.shape == (n,) and out.logits.dtype == np.float32
            assert out.cams.shape == (n, 4, 4) and out.cams.dtype == np.float32
            # FP32 plans still use TF32 tensor cores by default: ~1e-3 relative.
            scale = max(1.0, float(np.abs(logit).max()))
            assert np.abs(out.logits - logit[:, 0]).max() <= 5e-3 * scale
            cam_scale = max(1e-6, float(np.abs(cam).max()))
            assert np.abs(out.cams - cam).max() <= 5e-3 * cam_scale
            assert cam.max() > 0  # a non-trivial CAM, or the comparison proves little
            emb_scale = max(1e-6, float(np.abs(embedding).max()))
            assert np.abs(out.embeddings - embedding).max() <= 5e-3 * emb_scale
        backend.warm((1, 2, 4, 64), embedding.shape[1])  # 64 > max_batch: skipped
    finally:
        backend.close()
    backend.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        backend.infer(np.zeros((1, 1, 128, 128), dtype=np.float32))


@pytest.mark.gpu
@needs_tensorrt
def test_plan_refusals(plan_128: tuple[Path, Path], tmp_path: Path) -> None:
    _, plan = plan_128
    with pytest.raises(ModelFileError, match="resolution 256"):
        TensorRTBackend(plan, 256)
    with pytest.raises(ModelFileError, match="not found"):
        TensorRTBackend(tmp_path / "absent.plan", 128)
    corrupt = tmp_path / "corrupt.plan"
    corrupt.write_bytes(b"not a plan" * 100)
    with pytest.raises(ModelFileError, match=r"could not load corrupt\.plan"):
        TensorRTBackend(corrupt, 128)
    backend = TensorRTBackend(plan, 128)
    try:
        assert backend.name == "tensorrt:plan"
        with pytest.raises(ValueError, match="float32"):
            backend.infer(np.zeros((1, 1, 128, 128), dtype=np.float64))
    finally:
        backend.close()
